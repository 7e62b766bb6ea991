package server

import (
	"context"
	"log"
	"log/slog"
	"strings"
)

// httpErrorLog is net/http's error log for a server: its lines at WARN,
// but for a TLS handshake its client ended before it began (EOF, or a
// reset: HAProxy's checks close so), which is logged at DEBUG: a load
// balancer's or Kubernetes' TCP health check of an HTTPS mirror does
// that every few seconds from each of its nodes, and a warning each
// would bury the others. A handshake that failed otherwise (a client
// speaking plain HTTP, or refusing the certificate) is a client's
// problem worth a warning.
func httpErrorLog(l *slog.Logger) *log.Logger {
	return log.New(httpLogWriter{l}, "", 0)
}

type httpLogWriter struct{ log *slog.Logger }

func (w httpLogWriter) Write(p []byte) (int, error) {
	msg := strings.TrimSuffix(string(p), "\n")
	level := slog.LevelWarn
	if strings.HasPrefix(msg, "http: TLS handshake error from ") &&
		(strings.HasSuffix(msg, ": EOF") || strings.HasSuffix(msg, ": connection reset by peer")) {
		level = slog.LevelDebug
	}
	w.log.Log(context.Background(), level, msg)
	return len(p), nil
}
