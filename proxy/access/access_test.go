package access

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/docker-mirror/docker-mirror/proxy/errcode"
)

func TestParseLevel(t *testing.T) {
	t.Parallel()
	valid := []struct {
		in   string
		want Level
	}{
		{"", Anyone},
		{"anonymous", Anyone},
		{"users", User},
		{"admins", Admin},
	}
	for _, tc := range valid {
		t.Run("valid/"+tc.in, func(t *testing.T) {
			t.Parallel()
			got, err := ParseLevel(tc.in)
			if err != nil || got != tc.want {
				t.Fatalf("ParseLevel(%q) = %v, %v; want %v, nil", tc.in, got, err, tc.want)
			}
		})
	}
	for _, in := range []string{"anyone", "user", "admin", "puller", "Users", "ADMINS", " users", "admins ", "none"} {
		t.Run("invalid/"+in, func(t *testing.T) {
			t.Parallel()
			if got, err := ParseLevel(in); err == nil {
				t.Fatalf("ParseLevel(%q) = %v, nil; want an error", in, got)
			} else if !strings.Contains(err.Error(), "anonymous, users or admins") {
				t.Fatalf("ParseLevel(%q) error %q does not list the valid levels", in, err)
			}
		})
	}
}

// hash returns a bcrypt hash of password at the lowest cost.
func hash(t testing.TB, password string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

// writeHtpasswd writes lines to an htpasswd file and returns its path.
func writeHtpasswd(t testing.TB, lines ...string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoad(t *testing.T) {
	t.Parallel()
	alice, bob := hash(t, "alice-pw"), hash(t, "bob-pw")
	// htpasswd -B writes $2y$, Go's bcrypt $2a$: both must load and verify.
	bob2y := "$2y$" + strings.TrimPrefix(bob, "$2a$")
	tests := []struct {
		name    string
		lines   []string
		admins  []string
		wantErr []string // substrings of the error; nil for success
	}{
		{name: "users", lines: []string{"alice:" + alice, "bob:" + bob}, admins: []string{"alice"}},
		{name: "htpasswd -B prefix", lines: []string{"alice:" + alice, "bob:" + bob2y}},
		{name: "comments and blank lines", lines: []string{
			"# users of the mirror", "", "alice:" + alice, "   ", "  # indented comment", "\tbob:" + bob + "  ", "",
		}, admins: []string{"bob"}},
		{name: "CRLF line ends", lines: []string{"alice:" + alice + "\r", "bob:" + bob + "\r"}},
		{name: "empty file", lines: nil},
		{name: "no colon", lines: []string{"alice:" + alice, "# ok", "bob"}, wantErr: []string{"line 3", "user:bcrypt-hash"}},
		{name: "no user", lines: []string{":" + alice}, wantErr: []string{"line 1"}},
		{name: "plain text password", lines: []string{"alice:" + alice, "bob:secret"}, wantErr: []string{"line 2"}},
		{name: "SHA1 hash", lines: []string{"", "bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g="}, wantErr: []string{"line 2"}},
		{name: "MD5 hash", lines: []string{"bob:$apr1$abc$def"}, wantErr: []string{"line 1"}},
		{name: "admin not a user", lines: []string{"alice:" + alice}, admins: []string{"alice", "carol"}, wantErr: []string{`"carol" is not a user`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := writeHtpasswd(t, tc.lines...)
			p, err := Load(path, tc.admins, false)
			if tc.wantErr != nil {
				if err == nil {
					t.Fatal("Load succeeded; want an error")
				}
				for _, s := range append(tc.wantErr, path) {
					if !strings.Contains(err.Error(), s) {
						t.Fatalf("Load error %q does not contain %q", err, s)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if p == nil {
				t.Fatal("Load returned a nil policy")
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	t.Parallel()
	_, err := Load(filepath.Join(t.TempDir(), "nope"), nil, false)
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Load of a missing file: %v; want os.ErrNotExist", err)
	}
}

// TestLoadVerifies checks that the entries loaded, including htpasswd's
// $2y$ prefix, comments and surrounding blanks, authenticate.
func TestLoadVerifies(t *testing.T) {
	t.Parallel()
	bob := hash(t, "bob-pw")
	path := writeHtpasswd(t, "# comment", "", "  alice:"+hash(t, "alice-pw")+"  ", "bob:$2y$"+strings.TrimPrefix(bob, "$2a$"))
	p, err := Load(path, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ user, pass string }{{"alice", "alice-pw"}, {"bob", "bob-pw"}} {
		if err := p.Check(request(c.user, c.pass), User); err != nil {
			t.Errorf("%s: %v", c.user, err)
		}
	}
}

// request returns a request with Basic credentials, or none if user is "".
func request(user, pass string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/v2/", nil)
	if user != "" {
		r.SetBasicAuth(user, pass)
	}
	return r
}

// wantCheck checks err against the expected outcome: nil, or a registry
// error with code (and a Basic challenge for UNAUTHORIZED).
func wantCheck(t *testing.T, err error, code errcode.Code) {
	t.Helper()
	if code == "" {
		if err != nil {
			t.Fatalf("Check = %v; want nil", err)
		}
		return
	}
	var e *errcode.Error
	if !errors.As(err, &e) {
		t.Fatalf("Check = %v (%T); want an *errcode.Error %s", err, err, code)
	}
	if e.Code != code {
		t.Fatalf("Check code = %s; want %s (%v)", e.Code, code, err)
	}
	challenge := e.Header.Get("WWW-Authenticate")
	switch code {
	case errcode.Unauthorized:
		if e.Status() != http.StatusUnauthorized || challenge != `Basic realm="docker-mirror"` {
			t.Fatalf("Check = %d with challenge %q; want 401 with a Basic challenge", e.Status(), challenge)
		}
	case errcode.Denied:
		if e.Status() != http.StatusForbidden || challenge != "" {
			t.Fatalf("Check = %d with challenge %q; want 403 without a challenge", e.Status(), challenge)
		}
	}
}

func TestCheck(t *testing.T) {
	t.Parallel()
	path := writeHtpasswd(t, "alice:"+hash(t, "alice-pw"), "bob:"+hash(t, "bob-pw"))
	policies := map[bool]*Policy{}
	for _, anon := range []bool{false, true} {
		p, err := Load(path, []string{"alice"}, anon)
		if err != nil {
			t.Fatal(err)
		}
		policies[anon] = p
	}

	type creds struct{ user, pass string }
	var (
		none     = creds{}
		admin    = creds{"alice", "alice-pw"}
		user     = creds{"bob", "bob-pw"}
		wrong    = creds{"bob", "alice-pw"}
		unknown  = creds{"carol", "carol-pw"}
		noPass   = creds{"bob", ""}
		ok       = errcode.Code("")
		unauth   = errcode.Unauthorized
		denied   = errcode.Denied
		credName = map[creds]string{none: "none", admin: "admin", user: "user", wrong: "wrong-password", unknown: "unknown-user", noPass: "empty-password"}
	)
	// want[level][creds] for anonymous pulls off and on.
	type outcome struct{ off, on errcode.Code }
	want := map[Level]map[creds]outcome{
		Anyone: {
			none: {ok, ok}, admin: {ok, ok}, user: {ok, ok},
			// Anyone is not checked at all, not even bad credentials.
			wrong: {ok, ok}, unknown: {ok, ok}, noPass: {ok, ok},
		},
		Puller: {
			none: {unauth, ok}, admin: {ok, ok}, user: {ok, ok},
			wrong: {unauth, unauth}, unknown: {unauth, unauth}, noPass: {unauth, unauth},
		},
		User: {
			none: {unauth, unauth}, admin: {ok, ok}, user: {ok, ok},
			wrong: {unauth, unauth}, unknown: {unauth, unauth}, noPass: {unauth, unauth},
		},
		Admin: {
			none: {unauth, unauth}, admin: {ok, ok}, user: {denied, denied},
			wrong: {unauth, unauth}, unknown: {unauth, unauth}, noPass: {unauth, unauth},
		},
	}
	levelName := map[Level]string{Anyone: "anyone", Puller: "puller", User: "user", Admin: "admin"}
	for level, byCreds := range want {
		for c, o := range byCreds {
			for _, anon := range []bool{false, true} {
				name := levelName[level] + "/" + credName[c] + "/anonymous-pull=" + map[bool]string{false: "off", true: "on"}[anon]
				code := o.off
				if anon {
					code = o.on
				}
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					wantCheck(t, policies[anon].Check(request(c.user, c.pass), level), code)
				})
			}
		}
	}
}

func TestCheckDeniedNamesUser(t *testing.T) {
	t.Parallel()
	p, err := Load(writeHtpasswd(t, "alice:"+hash(t, "a"), "bob:"+hash(t, "b")), []string{"alice"}, false)
	if err != nil {
		t.Fatal(err)
	}
	err = p.Check(request("bob", "b"), Admin)
	if e := errcode.As(err); e.Code != errcode.Denied || !strings.Contains(e.Message, `"bob"`) {
		t.Fatalf("Check = %v; want DENIED naming bob", err)
	}
}

func TestNilPolicyAllowsEverything(t *testing.T) {
	t.Parallel()
	var p *Policy
	for _, level := range []Level{Anyone, Puller, User, Admin} {
		for _, r := range []*http.Request{request("", ""), request("nobody", "wrong")} {
			if err := p.Check(r, level); err != nil {
				t.Errorf("nil policy, level %d: %v", level, err)
			}
		}
	}
}

// TestVerifiedCache checks that remembering a verified password does not
// let a different password in, before or after, and that the right one
// keeps working.
func TestVerifiedCache(t *testing.T) {
	t.Parallel()
	p, err := Load(writeHtpasswd(t, "alice:"+hash(t, "right"), "bob:"+hash(t, "bobs")), nil, false)
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		user, pass string
		want       errcode.Code
	}{
		{"alice", "wrong", errcode.Unauthorized},
		{"alice", "right", ""},
		{"alice", "right", ""}, // from the cache
		{"alice", "wrong", errcode.Unauthorized},
		{"alice", "", errcode.Unauthorized},
		{"alice", "right ", errcode.Unauthorized},
		{"bob", "right", errcode.Unauthorized}, // alice's password is not bob's
		{"alice", "bobs", errcode.Unauthorized},
		{"bob", "bobs", ""},
		{"alice", "right", ""},
	}
	for i, s := range steps {
		err := p.Check(request(s.user, s.pass), User)
		if s.want == "" {
			if err != nil {
				t.Fatalf("step %d (%s/%q): %v; want nil", i, s.user, s.pass, err)
			}
			continue
		}
		if e := errcode.As(err); err == nil || e.Code != s.want {
			t.Fatalf("step %d (%s/%q): %v; want %s", i, s.user, s.pass, err, s.want)
		}
	}
}
