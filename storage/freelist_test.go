package storage_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/docker-mirror/docker-mirror/storage"
)

// A pass's commits, and other writes' meanwhile, leave bbolt's freelist
// out; the end of the last pass running writes it, and ending twice is
// ending once.
func TestPassLeavesTheFreelistOut(t *testing.T) {
	ix := newIndex(t)
	path := ix.Path()
	write := func(i int) {
		t.Helper()
		recordTag(t, ix, hub, "library/a", fmt.Sprint("v", i), digest.FromString(fmt.Sprint(i)), t0)
	}
	want := func(written bool, when string) {
		t.Helper()
		if got := freelistWritten(t, path); got != written {
			t.Fatalf("%s: freelist written %v, want %v", when, got, written)
		}
	}
	write(0)
	want(true, "a write outside a pass")

	end := ix.BeginPass()
	write(1)
	want(false, "a write in a pass")
	other := ix.BeginPass()
	end()
	want(false, "one of two passes ended")
	write(2)
	want(false, "a write in the pass still running")
	other()
	want(true, "the last pass ended")
	other()
	end()
	write(3)
	want(true, "a write after the passes, each ended twice")

	before := ix.WriteTotals().Commits
	end = ix.BeginPass()
	end()
	want(true, "a pass that wrote nothing ended")
	if n := ix.WriteTotals().Commits - before; n != 0 {
		t.Errorf("a pass that wrote nothing committed %d times", n)
	}
}

// A crash during a pass leaves an index whose last commit has no
// freelist: it opens (bbolt rebuilds the freelist from the pages and
// writes it), serves every record committed, and passes bbolt's check.
func TestCrashDuringPassOpensClean(t *testing.T) {
	ix := newIndex(t)
	const n = 200
	for i := range n {
		recordTag(t, ix, hub, "library/a", fmt.Sprint("v", i), digest.FromString(fmt.Sprint(i)), t0)
	}
	end := ix.BeginPass()
	defer end()
	for i := range n / 2 { // frees pages, which the freelist must then hold
		must(t, ix.DeleteTag(hub, "library/a", fmt.Sprint("v", i)))
	}
	// What a crash leaves: the file as its last commit synced it.
	crashed := filepath.Join(t.TempDir(), "index.db")
	copyFile(t, ix.Path(), crashed)
	if freelistWritten(t, crashed) {
		t.Fatal("the pass's last commit wrote the freelist")
	}

	again := openIndex(t, crashed)
	for i := range n {
		_, ok, err := again.Tag(hub, "library/a", fmt.Sprint("v", i))
		if err != nil || ok != (i >= n/2) {
			t.Fatalf("tag v%d after the crash: found %v, error %v", i, ok, err)
		}
	}
	if !freelistWritten(t, crashed) {
		t.Error("the open after the crash did not write the freelist")
	}
	recordTag(t, again, hub, "library/b", "v1", digest.FromString("b"), t0)
	must(t, again.Close())

	db, err := bolt.Open(crashed, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	must(t, db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			t.Errorf("bbolt check after the crash: %v", err)
		}
		return nil
	}))
}

// An index closed during a pass writes the freelist first: the next open
// reads it rather than every page.
func TestCloseDuringPassWritesTheFreelist(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	ix := openIndex(t, path)
	end := ix.BeginPass()
	recordTag(t, ix, hub, "library/a", "v1", digest.FromString("a"), t0)
	must(t, ix.Close())
	if !freelistWritten(t, path) {
		t.Error("closed during a pass without writing the freelist")
	}
	end() // on a closed index: logged, not fatal
	if !freelistWritten(t, path) {
		t.Error("the end of the pass after the close changed the file")
	}
}

func freelistWritten(t *testing.T, path string) bool {
	t.Helper()
	written, err := storage.FreelistWritten(path)
	if err != nil {
		t.Fatal(err)
	}
	return written
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	must(t, os.WriteFile(to, b, 0o600))
}

// FreelistWritten names the file it cannot read as a bbolt file.
func TestFreelistWrittenRefusesOtherFiles(t *testing.T) {
	dir := t.TempDir()
	short, other := filepath.Join(dir, "short"), filepath.Join(dir, "other")
	must(t, os.WriteFile(short, []byte("bbolt?"), 0o600))
	must(t, os.WriteFile(other, make([]byte, 8192), 0o600))
	for _, path := range []string{short, other, filepath.Join(dir, "missing")} {
		if written, err := storage.FreelistWritten(path); err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("FreelistWritten(%s) = %v, %v; want an error naming it", path, written, err)
		}
	}
}
