package proxy

import (
	"context"
	"sync"
	"time"
)

// A verified blob is served from its spool file; storing it (an fsync,
// then a rename) and recording it (a bbolt commit, another fsync) are for
// later pulls. On a filesystem with a journal (ext4's data=ordered), each
// fsync commits the journal, and a write to another spool file that
// meanwhile needs the journal (its mtime) waits for it: while a cold pull
// streams many blobs at once, the first ones to finish stalled the writes
// of the others by 3 to 16 ms each, on the clients' path. So a verified
// download waits until no download is reading an upstream body before it
// stores and records its blob, nor is any client reading one (bounded by
// maxQuietWait): the fsyncs and commits come after the burst, and bbolt's
// batching folds the records into one commit.

// maxQuietWait bounds how long a verified download waits for the others
// to finish streaming before it stores its blob anyway: a long download
// (a large layer on a slow link) does not keep the small ones out of the
// store, and out of the index, for longer than this.
const maxQuietWait = time.Second

// quiet counts the downloads reading an upstream body (or another
// replica's stored copy) now, and the clients reading a download.
type quiet struct {
	mu        sync.Mutex
	streaming int
	idle      chan struct{} // closed while streaming is 0
	// wait bounds the wait (maxQuietWait; tests set it; 0: no wait).
	wait time.Duration
	// waiting, if set (tests), is called when settle has to wait.
	waiting func()
}

func newQuiet() *quiet {
	q := &quiet{idle: make(chan struct{}), wait: maxQuietWait}
	close(q.idle)
	return q
}

// stream notes one more download streaming; the func returned, idempotent,
// notes its end.
func (q *quiet) stream() (end func()) {
	q.mu.Lock()
	if q.streaming == 0 {
		q.idle = make(chan struct{})
	}
	q.streaming++
	q.mu.Unlock()
	return sync.OnceFunc(func() {
		q.mu.Lock()
		q.streaming--
		if q.streaming == 0 {
			close(q.idle)
		}
		q.mu.Unlock()
	})
}

// settle waits until nothing is streaming, q.wait has passed, or ctx
// is done, whichever comes first.
func (q *quiet) settle(ctx context.Context) {
	q.mu.Lock()
	idle, wait, waiting := q.idle, q.wait, q.waiting
	q.mu.Unlock()
	if wait <= 0 {
		return
	}
	if waiting != nil {
		select {
		case <-idle:
			return
		default:
			waiting()
		}
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-idle:
	case <-t.C:
	case <-ctx.Done():
	}
}
