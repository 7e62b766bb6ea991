package server

import (
	"bytes"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/docker-mirror/docker-mirror/storage"
)

// writeFiles creates files (slash paths relative to dir) with some text.
func writeFiles(t *testing.T, dir string, files ...string) {
	t.Helper()
	for _, f := range files {
		p := filepath.Join(dir, filepath.FromSlash(f))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("someone else's "+f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// listFiles returns every file and directory under dir, as slash paths.
func listFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out = append(out, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// A --data directory that holds other files and no sign of the mirror
// (neither its marker nor an index) is refused, with one line saying why
// and what to do, and nothing in it is touched: not even tmp/ or
// _uploads/, which older versions emptied at every start.
func TestNewRefusesForeignDataDirectory(t *testing.T) {
	cfg := testConfig(t)
	foreign := []string{"notes.txt", "tmp/keep.txt", "tmp/blob-123", "_uploads/ABCDEFGHIJKLMNOPQRSTUVWXYZ", "blobs/x"}
	writeFiles(t, cfg.Data, foreign...)
	before := listFiles(t, cfg.Data)

	_, err := New(t.Context(), cfg)
	if err == nil {
		t.Fatal("a foreign, non-empty data directory was accepted")
	}
	msg := err.Error()
	if strings.Contains(msg, "\n") || !strings.Contains(msg, cfg.Data) || !strings.Contains(msg, "empty") {
		t.Errorf("error %q: want one line naming the directory and saying to use an empty one", msg)
	}
	if after := listFiles(t, cfg.Data); strings.Join(after, " ") != strings.Join(before, " ") {
		t.Errorf("the refused directory changed:\nbefore %v\nafter  %v", before, after)
	}
}

// A new or empty directory is taken, and gets the marker that says it is
// the mirror's; the spool is under the mirror's own directory. A fresh
// ext4 volume's lost+found does not count.
func TestNewTakesEmptyDataDirectory(t *testing.T) {
	for _, existing := range []bool{false, true} {
		cfg := testConfig(t)
		if existing {
			if err := os.MkdirAll(filepath.Join(cfg.Data, "lost+found"), 0o700); err != nil {
				t.Fatal(err)
			}
		}
		s, err := New(t.Context(), cfg)
		if err != nil {
			t.Fatalf("existing=%v: %v", existing, err)
		}
		s.Close()
		if b, err := os.ReadFile(MarkerPath(cfg)); err != nil || !strings.Contains(string(b), "docker-mirror") {
			t.Errorf("existing=%v: marker %q, %v", existing, b, err)
		}
		if fi, err := os.Stat(SpoolPath(cfg)); err != nil || !fi.IsDir() {
			t.Errorf("existing=%v: spool directory: %v", existing, err)
		}
		if _, err := os.Stat(filepath.Join(cfg.Data, "tmp")); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("existing=%v: DIR/tmp was created (%v); the spool belongs under the mirror's own directory", existing, err)
		}
		// Taken once, the directory is the mirror's from then on.
		s, err = New(t.Context(), cfg)
		if err != nil {
			t.Fatalf("existing=%v: second start: %v", existing, err)
		}
		s.Close()
	}
}

// A data directory of an older version (an index, no marker) is the
// mirror's: it starts, gets the marker, and loses only the leftovers
// older versions wrote (spool files DIR/tmp/blob-N, uploads
// DIR/_uploads/<26 base32 characters>), nothing else.
func TestNewMigratesOldLayout(t *testing.T) {
	cfg := testConfig(t)
	if err := os.MkdirAll(cfg.Data, 0o755); err != nil {
		t.Fatal(err)
	}
	ix, err := storage.OpenIndex(IndexPath(cfg))
	if err != nil {
		t.Fatal(err)
	}
	ix.Close()
	writeFiles(t, cfg.Data, "tmp/blob-123", "tmp/blob-4567", "tmp/keep.txt",
		"_uploads/ABCDEFGHIJKLMNOPQRSTUVWXYZ", "_uploads/keep.txt")

	s, err := New(t.Context(), cfg)
	if err != nil {
		t.Fatalf("old layout refused: %v", err)
	}
	s.Close()
	if _, err := os.Stat(MarkerPath(cfg)); err != nil {
		t.Errorf("no marker after the migration: %v", err)
	}
	for _, gone := range []string{"tmp/blob-123", "tmp/blob-4567", "_uploads/ABCDEFGHIJKLMNOPQRSTUVWXYZ"} {
		if _, err := os.Stat(filepath.Join(cfg.Data, gone)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("leftover %s of the old layout is still there (%v)", gone, err)
		}
	}
	for _, kept := range []string{"tmp/keep.txt", "_uploads/keep.txt"} {
		if _, err := os.Stat(filepath.Join(cfg.Data, kept)); err != nil {
			t.Errorf("%s, not the mirror's, was removed: %v", kept, err)
		}
	}
}

// A data directory of the mirror's whose index.db was deleted, or left
// empty, starts on a new index, and says so once, naming the file: what
// the store holds is unknown to it. A new directory's first start says
// nothing of the kind.
func TestNewSaysTheIndexWasLost(t *testing.T) {
	for _, lose := range []string{"deleted", "empty"} {
		cfg := testConfig(t)
		var logs bytes.Buffer
		s, err := New(t.Context(), cfg, WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
		if strings.Contains(logs.String(), "index.db") {
			t.Errorf("%s: a new directory's first start spoke of its index: %s", lose, logs.String())
		}
		if lose == "deleted" {
			err = os.Remove(IndexPath(cfg))
		} else {
			err = os.Truncate(IndexPath(cfg), 0)
		}
		if err != nil {
			t.Fatal(err)
		}
		logs.Reset()
		if s, err = New(t.Context(), cfg, WithLogger(slog.New(slog.NewTextHandler(&logs, nil)))); err != nil {
			t.Fatalf("%s: %v", lose, err)
		}
		s.Close()
		if n := strings.Count(logs.String(), "level=WARN"); n != 1 || !strings.Contains(logs.String(), IndexPath(cfg)) {
			t.Errorf("%s index: logged %d warnings, want one naming %s:\n%s", lose, n, IndexPath(cfg), logs.String())
		}
	}
}
