package server

import (
	"context"
	"log/slog"
	"sync"
	"testing"

	"github.com/docker-mirror/docker-mirror/gchold"
	"github.com/docker-mirror/docker-mirror/gchold/gcholdtest"
)

// tagMemoCalls records what watchPasses asks of the tag memo.
type tagMemoCalls struct {
	mu       sync.Mutex
	released int
	resumed  int
	read     chan struct{}
}

func (c *tagMemoCalls) ReleaseTags() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.released++
}

func (c *tagMemoCalls) ResumeTags() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.resumed++
}

func (c *tagMemoCalls) RememberTags(context.Context) error {
	c.read <- struct{}{}
	return nil
}

func (c *tagMemoCalls) calls() (released, resumed int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.released, c.resumed
}

// While passes hold the GC percent the tag memo is released, once for
// overlapping passes, and read again after the last ends; Close ends the
// reader.
func TestPassesReleaseTheTagMemo(t *testing.T) {
	s := &Server{opts: options{log: slog.New(slog.DiscardHandler)}}
	hold := gchold.NewFor(gcholdtest.NewPercent(100), 50)
	tags := &tagMemoCalls{read: make(chan struct{})}
	s.watchPasses(t.Context(), hold, tags)

	first := hold.Enter()
	second := hold.Enter()
	if released, resumed := tags.calls(); released != 1 || resumed != 0 {
		t.Fatalf("two passes running: released %d times, resumed %d; want once, never", released, resumed)
	}
	first()
	select {
	case <-tags.read:
		t.Fatal("read again while a pass runs")
	default:
	}
	second()
	if released, resumed := tags.calls(); released != 1 || resumed != 1 {
		t.Fatalf("the last pass out: released %d times, resumed %d; want once each", released, resumed)
	}
	<-tags.read // and read again
	hold.Enter()()
	<-tags.read
	if released, resumed := tags.calls(); released != 2 || resumed != 2 {
		t.Fatalf("released %d times, resumed %d; want twice each", released, resumed)
	}
	s.stopTagReads()
	s.background.Wait()

	// Without a hold nothing is released, nothing read.
	s = &Server{}
	s.watchPasses(t.Context(), nil, tags)
	if s.stopTagReads != nil {
		t.Fatal("a reader started without a hold")
	}
}
