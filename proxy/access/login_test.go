package access

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/docker-mirror/docker-mirror/proxy/errcode"
)

// comparisons counts the password checks of a policy and the costs of
// the hashes they were made against.
type comparisons struct {
	mu    sync.Mutex
	n     int
	costs []int
}

func (c *comparisons) compare(hash, password []byte) error {
	cost, _ := bcrypt.Cost(hash)
	c.mu.Lock()
	c.n++
	c.costs = append(c.costs, cost)
	c.mu.Unlock()
	return bcrypt.CompareHashAndPassword(hash, password)
}

func (c *comparisons) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// fakeClock is a clock that moves only when told.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// loginPolicy is a policy of alice (password "right", bcrypt cost 5) with
// counted comparisons, a fake clock and a logger writing to log.
func loginPolicy(t *testing.T, log *bytes.Buffer) (*Policy, *comparisons, *fakeClock) {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte("right"), 5)
	if err != nil {
		t.Fatal(err)
	}
	cmp, clock := &comparisons{}, &fakeClock{t: time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)}
	if log == nil {
		log = &bytes.Buffer{}
	}
	p, err := Load(writeHtpasswd(t, "alice:"+string(h)), nil, false,
		WithCompare(cmp.compare), WithClock(clock.now), WithLogger(slog.New(slog.NewTextHandler(log, nil))))
	if err != nil {
		t.Fatal(err)
	}
	return p, cmp, clock
}

// from is a request with Basic credentials from a client address.
func from(addr, user, pass string) *http.Request {
	r := request(user, pass)
	r.RemoteAddr = addr
	return r
}

// An unknown user costs the same bcrypt comparison as a wrong password,
// against a hash of the same cost: the answer's timing does not tell
// whether the user exists.
func TestUnknownUserCostsAComparison(t *testing.T) {
	t.Parallel()
	p, cmp, _ := loginPolicy(t, nil)
	wantCheck(t, p.Check(from("192.0.2.1:1", "mallory", "guess"), User), errcode.Unauthorized)
	wantCheck(t, p.Check(from("192.0.2.1:1", "alice", "guess"), User), errcode.Unauthorized)
	if cmp.count() != 2 {
		t.Fatalf("%d comparisons for an unknown user and a wrong password, want 2 (one each)", cmp.count())
	}
	if cmp.costs[0] != 5 || cmp.costs[1] != 5 {
		t.Errorf("comparison costs %v, want [5 5]: the unknown user's hash must cost what real entries cost", cmp.costs)
	}
}

// A wrong password is remembered for a while: the same one again costs no
// bcrypt comparison (a client retrying it, or a flood of it), another one
// does, and the right password still works. After negativeTTL, it is
// checked again.
func TestNegativeCache(t *testing.T) {
	t.Parallel()
	p, cmp, clock := loginPolicy(t, nil)
	steps := []struct {
		user, pass string
		want       errcode.Code
		compares   int // total after the step
	}{
		{"alice", "wrong", errcode.Unauthorized, 1},
		{"alice", "wrong", errcode.Unauthorized, 1},
		{"alice", "wrong2", errcode.Unauthorized, 2},
		{"mallory", "wrong", errcode.Unauthorized, 3},
		{"mallory", "wrong", errcode.Unauthorized, 3},
		{"alice", "right", "", 4},
		{"alice", "right", "", 4}, // verified before
		{"alice", "wrong", errcode.Unauthorized, 4},
	}
	for i, s := range steps {
		wantCheck(t, p.Check(from(fmt.Sprintf("192.0.2.%d:1", i), s.user, s.pass), User), s.want)
		if got := cmp.count(); got != s.compares {
			t.Fatalf("step %d (%s/%s): %d comparisons in all, want %d", i, s.user, s.pass, got, s.compares)
		}
	}
	clock.advance(negativeTTL + time.Second)
	wantCheck(t, p.Check(from("192.0.2.99:1", "alice", "wrong"), User), errcode.Unauthorized)
	if got := cmp.count(); got != 5 {
		t.Fatalf("after the negative TTL: %d comparisons, want 5", got)
	}
}

// After FailedLoginsPerMinute failures from one address, the next attempt from
// it is answered 429 with Retry-After, without a bcrypt comparison, even
// with the right password; another address still logs in; a user already
// verified is not held up; the address may try again once the window has
// passed.
func TestFailedLoginLimit(t *testing.T) {
	t.Parallel()
	p, cmp, clock := loginPolicy(t, nil)
	const attacker = "198.51.100.7:4000"
	wantCheck(t, p.Check(from("192.0.2.1:1", "alice", "right"), User), "") // alice verified from elsewhere
	for i := range FailedLoginsPerMinute {
		wantCheck(t, p.Check(from(attacker, "alice", "guess-"+strconv.Itoa(i)), User), errcode.Unauthorized)
	}
	before := cmp.count()
	for _, pass := range []string{"guess-x", "guess-0", "right-but-not"} {
		err := p.Check(from(attacker, "alice", pass), User)
		e := errcode.As(err)
		if e.Code != errcode.TooManyRequests || e.Status() != http.StatusTooManyRequests {
			t.Fatalf("attempt %d from %s: %v; want 429 TOOMANYREQUESTS", FailedLoginsPerMinute+1, attacker, err)
		}
		if s, err := strconv.Atoi(e.Header.Get("Retry-After")); err != nil || s < 1 || s > 60 {
			t.Errorf("Retry-After %q, want 1..60 seconds", e.Header.Get("Retry-After"))
		}
	}
	if cmp.count() != before {
		t.Errorf("refused attempts ran %d bcrypt comparisons", cmp.count()-before)
	}
	// Another port of the same host is the same client; another host is not.
	wantCheck(t, p.Check(from("198.51.100.7:4001", "mallory", "x"), User), errcode.TooManyRequests)
	wantCheck(t, p.Check(from("198.51.100.8:4000", "alice", "right"), User), "")
	// Verified credentials cost no comparison and are not held up.
	wantCheck(t, p.Check(from(attacker, "alice", "right"), User), "")

	clock.advance(time.Minute)
	wantCheck(t, p.Check(from(attacker, "alice", "guess-again"), User), errcode.Unauthorized)
}

// IPv6 clients are limited per /64, which one host usually holds whole.
func TestFailedLoginLimitIPv6(t *testing.T) {
	t.Parallel()
	p, _, _ := loginPolicy(t, nil)
	for i := range FailedLoginsPerMinute {
		wantCheck(t, p.Check(from(fmt.Sprintf("[2001:db8:1:2::%x]:443", i+1), "alice", "guess"), User), errcode.Unauthorized)
	}
	wantCheck(t, p.Check(from("[2001:db8:1:2:ffff::1]:443", "alice", "guess"), User), errcode.TooManyRequests)
	wantCheck(t, p.Check(from("[2001:db8:1:3::1]:443", "alice", "guess"), User), errcode.Unauthorized)
}

// A flood of 1,000 failed logins from one client runs at most
// FailedLoginsPerMinute bcrypt comparisons in a window.
func TestFailedLoginFloodIsBounded(t *testing.T) {
	t.Parallel()
	for _, same := range []bool{false, true} {
		p, cmp, _ := loginPolicy(t, nil)
		limited := 0
		for i := range 1000 {
			pass := "guess-" + strconv.Itoa(i)
			if same {
				pass = "guess"
			}
			if errcode.As(p.Check(from("203.0.113.5:1", "alice", pass), User)).Code == errcode.TooManyRequests {
				limited++
			}
		}
		t.Logf("1,000 failed logins from one client (same password: %v): %d bcrypt comparisons, %d answered 429", same, cmp.count(), limited)
		if cmp.count() > FailedLoginsPerMinute {
			t.Errorf("%d bcrypt comparisons for 1,000 failed logins from one client, want at most %d", cmp.count(), FailedLoginsPerMinute)
		}
	}
}

// A failed login is logged at warn level with the user name (cut when
// long) and the client, never the password.
func TestFailedLoginIsLogged(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	p, _, _ := loginPolicy(t, &buf)
	wantCheck(t, p.Check(from("192.0.2.1:1", "alice", "s3cret-guess"), User), errcode.Unauthorized)
	wantCheck(t, p.Check(from("192.0.2.1:1", "mallory", "hunter2"), User), errcode.Unauthorized)
	long := strings.Repeat("u", 10<<10)
	wantCheck(t, p.Check(from("192.0.2.1:1", long, "pw"), User), errcode.Unauthorized)
	wantCheck(t, p.Check(from("192.0.2.1:1", "alice", "right"), User), "")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d log lines for 3 failed logins and one success:\n%.1000s", len(lines), buf.String())
	}
	for i, user := range []string{"user=alice", "user=mallory", `user="uuuu`} {
		l := lines[i]
		if !strings.Contains(l, "level=WARN") || !strings.Contains(l, user) || !strings.Contains(l, "client=192.0.2.1") {
			t.Errorf("log line %q does not name %s and the client at warn level", l, user)
		}
	}
	if strings.Contains(buf.String(), "s3cret") || strings.Contains(buf.String(), "hunter2") {
		t.Errorf("a password was logged:\n%s", buf.String())
	}
	if len(lines[2]) > 1<<10 || !strings.Contains(lines[2], "truncated") {
		t.Errorf("a 10 KiB user name logged in a line of %d bytes: %.300s", len(lines[2]), lines[2])
	}
}
