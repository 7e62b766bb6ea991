package access

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/proxy/errcode"
)

// A malformed bcrypt entry (too short, a bad cost) is refused at load,
// naming the file and the line, instead of failing every login later.
func TestLoadRefusesMalformedBcrypt(t *testing.T) {
	t.Parallel()
	good := hash(t, "alice-pw")
	for name, entry := range map[string]string{
		"truncated":    "bob:" + good[:40],
		"prefix only":  "bob:$2y$",
		"bad cost":     "bob:$2a$99$" + good[7:],
		"cost letters": "bob:$2a$xx$" + good[7:],
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			path := writeHtpasswd(t, "alice:"+good, entry)
			_, err := Load(path, nil, false)
			if err == nil {
				t.Fatalf("%q loaded", entry)
			}
			for _, want := range []string{path, "line 2"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not name %q", err, want)
				}
			}
		})
	}
}

// rewrite replaces the content of an htpasswd file and sets its
// modification time, so that a change is seen without waiting for the
// clock.
func rewrite(t *testing.T, path string, mtime time.Time, lines ...string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, mtime, mtime); err != nil {
		t.Fatal(err)
	}
}

// Reload takes a user removed from the file away at once, and a changed
// password too (the cache of verified passwords goes with the old table).
func TestFileReload(t *testing.T) {
	t.Parallel()
	alice, bob := hash(t, "alice-pw"), hash(t, "bob-pw")
	path := writeHtpasswd(t, "alice:"+alice, "bob:"+bob)
	f, err := LoadFile(path, []string{"alice"}, false)
	if err != nil {
		t.Fatal(err)
	}
	wantCheck(t, f.Check(request("bob", "bob-pw"), User), "")
	wantCheck(t, f.Check(request("alice", "alice-pw"), Admin), "")

	rewrite(t, path, time.Now(), "alice:"+hash(t, "new-pw"))
	if err := f.Reload(); err != nil {
		t.Fatal(err)
	}
	wantCheck(t, f.Check(request("bob", "bob-pw"), User), errcode.Unauthorized)
	wantCheck(t, f.Check(request("alice", "alice-pw"), User), errcode.Unauthorized)
	wantCheck(t, f.Check(request("alice", "new-pw"), Admin), "")
}

// ReloadIfChanged reloads when the file's size, modification time or
// identity (replaced by a rename) changed, and only then; a malformed or
// missing file keeps the users loaded before, and is reported once per
// change.
func TestFileReloadIfChanged(t *testing.T) {
	t.Parallel()
	alice, bob := hash(t, "alice-pw"), hash(t, "bob-pw")
	path := writeHtpasswd(t, "alice:"+alice, "bob:"+bob)
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	rewrite(t, path, base, "alice:"+alice, "bob:"+bob)
	f, err := LoadFile(path, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	check := func(step string, wantReload, wantErr bool) {
		t.Helper()
		reloaded, err := f.ReloadIfChanged()
		if reloaded != wantReload || (err != nil) != wantErr {
			t.Fatalf("%s: ReloadIfChanged = %v, %v; want reloaded=%v, error=%v", step, reloaded, err, wantReload, wantErr)
		}
	}
	check("unchanged", false, false)

	// Same size, new time: bob's entry replaced by cat's.
	rewrite(t, path, base.Add(time.Second), "alice:"+alice, "cat:"+hash(t, "cat-pw"))
	check("a new modification time", true, false)
	wantCheck(t, f.Check(request("bob", "bob-pw"), User), errcode.Unauthorized)
	check("unchanged again", false, false)

	// Replaced by a rename, same size and time: still seen.
	tmp := filepath.Join(filepath.Dir(path), "htpasswd.new")
	rewrite(t, tmp, base.Add(time.Second), "alice:"+alice, "bob:"+bob)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	check("replaced by a rename", true, false)
	wantCheck(t, f.Check(request("bob", "bob-pw"), User), "")

	// Malformed: the users stay; the error is reported once.
	rewrite(t, path, base.Add(2*time.Second), "alice:"+alice, "bob:not-bcrypt")
	check("malformed", false, true)
	check("still malformed, unchanged", false, false)
	wantCheck(t, f.Check(request("bob", "bob-pw"), User), "")

	// Missing: the same.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	check("missing", false, true)
	check("still missing", false, false)
	wantCheck(t, f.Check(request("alice", "alice-pw"), User), "")

	// Back, without bob.
	rewrite(t, path, base.Add(3*time.Second), "alice:"+alice)
	check("fixed", true, false)
	wantCheck(t, f.Check(request("bob", "bob-pw"), User), errcode.Unauthorized)
}

// An admin removed from the file loses access like any user: the reload
// takes the new file (the other changes in it too) instead of failing
// and keeping the removed admin's password valid.
func TestReloadRemovesAnAdmin(t *testing.T) {
	t.Parallel()
	alice, bob := hash(t, "alice-pw"), hash(t, "bob-pw")
	path := writeHtpasswd(t, "alice:"+alice, "bob:"+bob, "carol:"+hash(t, "carol-pw"))
	f, err := LoadFile(path, []string{"alice", "bob"}, false)
	if err != nil {
		t.Fatal(err)
	}
	wantCheck(t, f.Check(request("alice", "alice-pw"), Admin), "")

	rewrite(t, path, time.Now(), "bob:"+bob)
	if err := f.Reload(); err != nil {
		t.Fatalf("Reload after removing an admin: %v", err)
	}
	wantCheck(t, f.Check(request("alice", "alice-pw"), Admin), errcode.Unauthorized)
	wantCheck(t, f.Check(request("carol", "carol-pw"), User), errcode.Unauthorized)
	wantCheck(t, f.Check(request("bob", "bob-pw"), Admin), "")

	// Added back, she is an admin again.
	rewrite(t, path, time.Now().Add(time.Second), "alice:"+alice, "bob:"+bob)
	if err := f.Reload(); err != nil {
		t.Fatal(err)
	}
	wantCheck(t, f.Check(request("alice", "alice-pw"), Admin), "")
}
