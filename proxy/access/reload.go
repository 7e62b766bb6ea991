package access

import (
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
)

// Checker decides whether a request may use an endpoint of a level: a
// *Policy, or a *File that reloads one.
type Checker interface {
	Check(r *http.Request, level Level) error
}

var (
	_ Checker = (*Policy)(nil)
	_ Checker = (*File)(nil)
)

// File is the policy of an htpasswd file that can be reloaded while it is
// in use, so that a user removed from the file (or whose password
// changed) loses access without a restart. A reload replaces the whole
// policy at once: requests see the old users or the new ones, never a
// mix, and the old policy's cache of verified passwords goes with it.
type File struct {
	path          string
	admins        []string
	anonymousPull bool
	opts          []Option
	policy        atomic.Pointer[Policy]

	// mu serialises reloads; seen is the file as last loaded or tried
	// (nil: missing), so that a change is acted on, and reported, once.
	mu   sync.Mutex
	seen os.FileInfo
}

// LoadFile loads the htpasswd file at path as Load does, keeping what it
// needs to reload it. (A reload starts a new policy: its caches and
// failed-login counts start afresh.)
func LoadFile(path string, admins []string, anonymousPull bool, opts ...Option) (*File, error) {
	f := &File{path: path, admins: admins, anonymousPull: anonymousPull, opts: opts}
	if err := f.Reload(); err != nil {
		return nil, err
	}
	return f, nil
}

// Path is the htpasswd file's path.
func (f *File) Path() string { return f.path }

// Check checks r against the users loaded last.
func (f *File) Check(r *http.Request, level Level) error {
	return f.policy.Load().Check(r, level)
}

// Reload reads the file again (on SIGHUP). On error the users loaded
// before stay.
func (f *File) Reload() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	// Stat before reading: a change made while reading is seen again by
	// the next ReloadIfChanged.
	f.seen, _ = os.Stat(f.path)
	return f.load()
}

// ReloadIfChanged reloads the file if its size, modification time or
// identity (a new file renamed over it) changed since it was last loaded
// or tried; a server calls it every few seconds. reloaded says whether
// new users took effect; an error (a malformed or missing file, the users
// loaded before staying) is returned once per change.
func (f *File) ReloadIfChanged() (reloaded bool, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fi, _ := os.Stat(f.path)
	if sameVersion(f.seen, fi) {
		return false, nil
	}
	f.seen = fi
	if err := f.load(); err != nil {
		return false, err
	}
	return true, nil
}

// load reads the file into a new policy and swaps it in; f.mu is held.
func (f *File) load() error {
	opts := f.opts
	if f.policy.Load() != nil {
		opts = append(slices.Clip(opts), reloadedFile)
	}
	p, err := Load(f.path, f.admins, f.anonymousPull, opts...)
	if err != nil {
		return err
	}
	f.policy.Store(p)
	return nil
}

// reloadedFile marks a reload: an admin removed from the file loses
// access as any user does. (At start an admin who is no user is a
// mistake in the configuration, refused; on a reload, refusing the file
// would keep the removed admin's password valid.)
func reloadedFile(p *Policy) { p.reloading = true }

// sameVersion reports whether two looks at a file saw the same version of
// it (both nil: missing both times).
func sameVersion(a, b os.FileInfo) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}
