package storage

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
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
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
