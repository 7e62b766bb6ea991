package upstream

import (
	"context"
	"net"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
	"time"
)

// A cold pull asks the upstream for a manifest, then for every blob it
// lists at once (fetching ahead), each on a connection of its own. The
// handshake before the manifest (ping, token, the manifest itself) is a few
// round trips in which the mirror only waits: the connections the blobs
// will need are opened then (Warm), so that their requests go out at once
// instead of each waiting for a connect (one round trip more, and on a
// busy machine a wake-up of the dialing goroutine, at the moment the
// mirror has the most to do).

// parkFor is how long a connection opened ahead waits for a request before
// it is closed: the requests it is opened for follow within a few round
// trips, and a server may close a connection that sends nothing for long.
const parkFor = 10 * time.Second

// warmConns holds, per address, the connections opened ahead and not yet
// taken, how many are being opened, and how many the transport holds idle.
type warmConns struct {
	mu      sync.Mutex
	parked  map[string][]*parkedConn
	opening map[string]int
	// idle counts the connections the guard dialed that the transport
	// keeps idle for the next request (trackedConn): those serve the
	// requests that follow, and need nothing opened ahead.
	idle map[string]int
	// opened, if set (tests), is called once each connection Warm
	// opens is parked or has failed to open.
	opened func()
	// idled, if set (tests), is called each time the transport puts a
	// connection back idle.
	idled func()
}

type parkedConn struct {
	net.Conn
	timer *time.Timer
}

// Warm opens, in the background and through the guard, connections to addr
// (host:port) until n are idle, open or being opened and not taken; DialContext
// hands them out before it dials. One not taken within parkFor is closed.
// Nothing is opened where a connection cannot be checked to be still open
// before it is handed out (canPeek), nor for a transport that may reach
// the upstream through an HTTP proxy.
func (g *Guard) Warm(addr string, n int) {
	if !canPeek || g.proxied.Load() || n <= 0 {
		return
	}
	w := &g.warm
	w.mu.Lock()
	more := n - len(w.parked[addr]) - w.opening[addr] - w.idle[addr]
	if more > 0 {
		if w.opening == nil {
			w.opening = map[string]int{}
		}
		w.opening[addr] += more
	}
	w.mu.Unlock()
	for range more {
		go g.park(addr)
	}
}

// park opens one connection to addr and parks it.
func (g *Guard) park(addr string) {
	ctx, cancel := context.WithTimeout(context.Background(), parkFor)
	defer cancel()
	c, err := g.connect(ctx, "tcp", addr)
	w := &g.warm
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.opened != nil {
		defer w.opened()
	}
	w.opening[addr]--
	if err != nil {
		return // the request that needs it dials, and says why it cannot
	}
	pc := &parkedConn{Conn: c}
	pc.timer = time.AfterFunc(parkFor, func() {
		if w.remove(addr, pc) {
			pc.Close()
		}
	})
	if w.parked == nil {
		w.parked = map[string][]*parkedConn{}
	}
	w.parked[addr] = append(w.parked[addr], pc)
}

// remove takes pc out of the parked connections; false if it was taken.
func (w *warmConns) remove(addr string, pc *parkedConn) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	list := w.parked[addr]
	for i, p := range list {
		if p == pc {
			w.parked[addr] = append(list[:i], list[i+1:]...)
			return true
		}
	}
	return false
}

// take returns a parked connection to addr that the server has not closed
// (nor sent anything on), or nil.
func (w *warmConns) take(addr string) net.Conn {
	for {
		w.mu.Lock()
		list := w.parked[addr]
		if len(list) == 0 {
			w.mu.Unlock()
			return nil
		}
		pc := list[len(list)-1]
		w.parked[addr] = list[:len(list)-1]
		w.mu.Unlock()
		pc.timer.Stop()
		if quiet(pc.Conn) {
			return pc.Conn
		}
		pc.Close()
	}
}

// trackedConn is a connection the guard dialed (or handed out from those
// opened ahead), which knows whether the transport holds it idle: the
// client's requests say so (traceIdle).
type trackedConn struct {
	net.Conn
	w    *warmConns
	addr string
	// idle and closed are guarded by w.mu.
	idle, closed bool
}

func (w *warmConns) track(addr string, c net.Conn) net.Conn {
	return &trackedConn{Conn: c, w: w, addr: addr}
}

// setIdle notes that the transport has put c in its idle pool (or taken
// it out).
func (c *trackedConn) setIdle(idle bool) {
	w := c.w
	w.mu.Lock()
	defer w.mu.Unlock()
	if c.closed || c.idle == idle {
		return
	}
	c.idle = idle
	if w.idle == nil {
		w.idle = map[string]int{}
	}
	if idle {
		w.idle[c.addr]++
		if w.idled != nil {
			w.idled()
		}
	} else {
		w.idle[c.addr]--
	}
}

func (c *trackedConn) Close() error {
	c.setIdle(false)
	c.w.mu.Lock()
	c.closed = true
	c.w.mu.Unlock()
	return c.Conn.Close()
}

// traceIdle returns ctx with an HTTP client trace that tells the
// connection a request is sent on (if the guard dialed it) when the
// transport takes it and when it puts it back idle, for Warm's count.
func traceIdle(ctx context.Context) context.Context {
	var conn atomic.Pointer[trackedConn]
	return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) {
			c := info.Conn
			if tc, ok := c.(interface{ NetConn() net.Conn }); ok {
				c = tc.NetConn() // TLS
			}
			if tc, ok := c.(*trackedConn); ok {
				tc.setIdle(false)
				conn.Store(tc)
			}
		},
		PutIdleConn: func(err error) {
			if tc := conn.Load(); tc != nil && err == nil {
				tc.setIdle(true)
			}
		},
	})
}
