package server

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/storage"
)

func TestStoreIdentity(t *testing.T) {
	data := t.TempDir()
	other := filepath.Join(t.TempDir(), "store")
	for _, c := range []struct {
		name    string
		storage map[string]map[string]any
		dest    string
		want    storage.StoreIdentity
	}{
		{"default", nil, "", storage.StoreIdentity{Kind: "filesystem"}},
		{"filesystem in the data directory", map[string]map[string]any{"filesystem": {"rootdirectory": data + "/"}}, "", storage.StoreIdentity{Kind: "filesystem"}},
		{"filesystem elsewhere", map[string]map[string]any{"filesystem": {"rootdirectory": other}}, "", storage.StoreIdentity{Kind: "filesystem", Location: other}},
		{"s3", map[string]map[string]any{"s3": {"bucket": "cache", "region": "eu-west-1", "rootdirectory": "/mirror/"}}, "", storage.StoreIdentity{Kind: "s3aws", Location: "s3://cache/mirror"}},
		{"destination", nil, "https://registry.example.com/mirror/", storage.StoreIdentity{Kind: storage.KindRegistry, Location: "https://registry.example.com/mirror"}},
		// Named without a scheme, the same registry: the same identity.
		{"destination without a scheme", nil, "registry.example.com/mirror", storage.StoreIdentity{Kind: storage.KindRegistry, Location: "https://registry.example.com/mirror"}},
	} {
		cfg := config.Default()
		cfg.Data, cfg.Storage, cfg.Destination.URL = data, c.storage, c.dest
		if got := StoreIdentity(cfg); got != c.want {
			t.Errorf("%s: %+v, want %+v", c.name, got, c.want)
		}
	}
}

// A server records its store in the index at every start.
func TestNewRecordsStore(t *testing.T) {
	cfg := config.Default()
	cfg.Data = t.TempDir()
	s, err := New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if id, err := s.Index.Store(); err != nil || id != (storage.StoreIdentity{Kind: "filesystem"}) {
		t.Errorf("recorded store = %+v, %v", id, err)
	}
}

// A --destination server's data directory started without --destination
// is refused, naming the flag, before the collector could judge its index
// against the embedded store.
func TestNewRefusesDestinationIndexForEmbeddedStore(t *testing.T) {
	cfg := config.Default()
	cfg.Data = t.TempDir()
	s, err := New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	dest := storage.StoreIdentity{Kind: storage.KindRegistry, Location: "https://registry.example.com/mirror"}
	if err := s.Index.SetStore(dest); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := New(t.Context(), cfg); err == nil || !strings.Contains(err.Error(), "start with --destination https://registry.example.com/mirror") {
		t.Fatalf("New on a destination's data directory = %v", err)
	}
	ix, err := storage.OpenIndex(IndexPath(cfg))
	if err != nil {
		t.Fatal(err)
	}
	defer ix.Close()
	if id, _ := ix.Store(); id != dest {
		t.Errorf("the refused start recorded %+v", id)
	}
}
