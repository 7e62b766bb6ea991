package storage

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// The indexes of n tags (fillTags) the mapped-pages tests start from are
// built once per test run, into a directory TestMain removes, and copied
// for each test: a fill of 60,000 tags takes ~10 s under -race, and seven
// tests start from one.
var (
	templatesMu  sync.Mutex
	templatesDir string
	templates    = map[int]string{}
)

func TestMain(m *testing.M) {
	code := m.Run()
	if templatesDir != "" {
		_ = os.RemoveAll(templatesDir)
	}
	os.Exit(code)
}

// copyFilled writes to path an index of n tags (fillTags), closed: a copy
// of the one built for the first test that asked.
func copyFilled(t *testing.T, n int, path string) {
	t.Helper()
	templatesMu.Lock()
	defer templatesMu.Unlock()
	src, ok := templates[n]
	if !ok {
		if templatesDir == "" {
			dir, err := os.MkdirTemp("", "docker-mirror-storage-")
			if err != nil {
				t.Fatal(err)
			}
			templatesDir = dir
		}
		src = filepath.Join(templatesDir, fmt.Sprintf("tags-%d.db", n))
		ix, err := OpenIndex(src)
		if err != nil {
			t.Fatal(err)
		}
		fillTags(t, ix, 0, n)
		if err := ix.Close(); err != nil {
			t.Fatal(err)
		}
		templates[n] = src
	}
	raw, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	out, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	// A page per write, as bbolt's commit writes them: the page cache then
	// holds the copy in small folios, as it held a fill. One large write
	// leaves large folios, each mapped whole by one fault, and the tests
	// that count what faults map fail (measured: 508 leaves mapped where
	// 16 are allowed).
	for ps := os.Getpagesize(); len(raw) > 0; raw = raw[min(ps, len(raw)):] {
		if _, err := out.Write(raw[:min(ps, len(raw))]); err != nil {
			t.Fatal(err)
		}
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// fillTags writes n tag records (~100 bytes each) in one transaction, in
// key order: the file is the same in any order (the transaction's nodes
// split at its commit), but an insert before the end of a large node moves
// the rest of it, and the race detector took ~10 s over a fill of 60,000
// so.
func fillTags(t *testing.T, ix *Index, from, n int) {
	t.Helper()
	now := time.Now()
	type tag struct {
		key []byte
		i   int
	}
	var tags []tag
	for i := from; i < from+n; i++ {
		tags = append(tags, tag{tagKey("docker.io", fmt.Sprintf("library/r%d", i/100), fmt.Sprintf("v%d", i)), i})
	}
	slices.SortFunc(tags, func(a, b tag) int { return bytes.Compare(a.key, b.key) })
	if err := ix.db.Update(func(tx *bolt.Tx) error {
		for _, tg := range tags {
			d := digest.FromString(strconv.Itoa(tg.i))
			if err := put(tx, bucketTags, tg.key, TagRecord{Digest: d, FetchedAt: now, CheckedAt: now}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
