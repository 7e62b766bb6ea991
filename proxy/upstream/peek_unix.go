//go:build unix

package upstream

import (
	"net"
	"syscall"
)

// canPeek: quiet can tell a connection still open.
const canPeek = true

// quiet reports whether c is open and nothing has arrived on it: a
// connection opened ahead is handed out only then. A server that closed it
// meanwhile (an idle timeout) would fail the request sent on it, and
// net/http retries a request on a fresh connection only for one it reused.
func quiet(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	open := false
	err = raw.Read(func(fd uintptr) bool {
		var b [1]byte
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		// Nothing to read yet (EAGAIN) is an open, quiet connection;
		// a byte, the end (0 bytes, no error) or another error is not.
		open = err == syscall.EAGAIN || err == syscall.EWOULDBLOCK
		return true // never wait for the socket
	})
	return err == nil && open
}
