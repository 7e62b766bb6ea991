package proxy

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/proxy/upstream"
)

// A download goes on while anyone wants it, a client reading it or a fill
// waiting for it, and is cancelled (the upstream sees its request end) as
// soon as the last one leaves; a later request starts a new download
// instead of joining the abandoned one.
func TestDownloadCancelledWhenTheLastTakerLeaves(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute) // fail, not hang, on a regression
	defer cancel()
	started, ended := make(chan struct{}, 2), make(chan struct{}, 2)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/blobs/") {
			return // the ping
		}
		w.Header().Set("Content-Length", "1048576")
		_, _ = w.Write(make([]byte, 1024))
		http.NewResponseController(w).Flush()
		started <- struct{}{}
		<-r.Context().Done() // held until the mirror gives up
		ended <- struct{}{}
	}))
	defer srv.Close()
	p, up, _ := testMirror(t, nil, srv.URL)
	tg := target{up: up, repo: "library/x", name: "x"}
	dgst := digest.FromString("held")
	recv := func(ch <-chan struct{}, what string) {
		t.Helper()
		select {
		case <-ch:
		case <-ctx.Done():
			t.Fatal(what)
		}
	}

	dl, leaveClient, _, err := p.startBlob(ctx, tg, dgst, blobWant{size: -1})
	if err != nil {
		t.Fatal(err)
	}
	recv(started, "the download never reached the upstream")
	same, leaveFill, _, err := p.startBlob(ctx, tg, dgst, blobWant{listed: true, size: -1})
	if err != nil || same != dl {
		t.Fatalf("the fill did not join the download: %v", err)
	}
	leaveClient()
	leaveClient() // leaving twice counts once
	if p.blobs.wasAbandoned(dl) || p.blobs.running(dgst) != dl {
		t.Fatal("the download was abandoned while a fill still wants it")
	}
	leaveFill()
	if !p.blobs.wasAbandoned(dl) || p.blobs.running(dgst) != nil {
		t.Fatal("the download nobody wants is still running")
	}
	recv(ended, "the upstream request of the abandoned download did not end")
	recv(dl.finished, "the abandoned download did not finish")
	if dl.failure() == nil {
		t.Error("the abandoned download ended without an error")
	}

	next, leave, _, err := p.startBlob(ctx, tg, dgst, blobWant{size: -1})
	if err != nil || next == dl {
		t.Fatalf("a new request joined the abandoned download (%v)", err)
	}
	recv(started, "the new download never reached the upstream")
	leave()
	recv(ended, "the second download was not cancelled either")
}

// A fill that knows a blob's size from its manifest stops waiting for a
// shared download as soon as the upstream says or sends more: the error
// says so, and the download itself is left to whoever else wants it.
func TestWaitRefusesMoreThanDeclared(t *testing.T) {
	up, err := upstream.New(DefaultHost, "http://127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name          string
		size, written int64
	}{
		{"said", 6, 0},
		{"sent", -1, 5},
	} {
		dl, _ := newTestDownload(t)
		dl.t = target{up: up, repo: "library/x"}
		dl.update(func() { dl.size, dl.written = tc.size, tc.written })
		err := dl.wait(readCtx(t), 4, nil)
		if !errors.Is(err, upstream.ErrInvalid) || !strings.Contains(err.Error(), "4 bytes its manifest declares") {
			t.Errorf("%s: wait = %v; want the declared size refused", tc.name, err)
		}
		if err := dl.failure(); err != nil {
			t.Errorf("%s: the download itself failed: %v", tc.name, err)
		}
	}
}
