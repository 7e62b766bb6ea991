//go:build !unix

package upstream

import "net"

// canPeek: quiet cannot tell a connection still open here, so none is
// opened ahead (Warm).
const canPeek = false

func quiet(net.Conn) bool { return false }
