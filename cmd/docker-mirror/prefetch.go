package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/docker-mirror/docker-mirror/redact"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/storage"
)

// pollInterval is how often the prefetch command asks for its job's state.
const pollInterval = 500 * time.Millisecond

// pollGiveUp is how long the prefetch command goes on asking for its
// job's state while it gets no answer (transient) before it stops
// following the job; pollTimeout bounds one ask.
const (
	pollGiveUp  = time.Minute
	pollTimeout = 20 * time.Second
)

// prefetchPasswordEnv holds the password of the admin --server names
// (http://USER@HOST): given there, it is not in the command line, which
// ps shows to every user of the machine.
const prefetchPasswordEnv = "DOCKER_MIRROR_PREFETCH_PASSWORD"

// prefetchCommand asks a running docker-mirror to prefetch images and
// follows the job: docker-mirror prefetch --server URL IMAGE...
func prefetchCommand(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("prefetch", flag.ContinueOnError)
	server := fs.String("server", "http://127.0.0.1:5000", "URL of the running docker-mirror; with auth, an admin's name in it, http://USER@HOST:PORT, the password in $"+prefetchPasswordEnv+" (or in the URL, where ps shows it: http://USER:PASSWORD@HOST:PORT)")
	var platforms []string
	fs.Func("platform", "platform pattern to prefetch (repeatable; default: the server's)", func(v string) error {
		if _, err := oci.ParsePlatform(v); err != nil {
			return err // before asking the server, which would refuse it
		}
		platforms = append(platforms, v)
		return nil
	})
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			fs.SetOutput(stdout)
			fmt.Fprintln(stdout, "Usage: docker-mirror prefetch --server URL [--platform P]... IMAGE...\n\nFlags:")
			fs.PrintDefaults()
			return 0
		}
		fmt.Fprintf(stderr, "docker-mirror prefetch: %v\n", err)
		return exitUsage
	}
	u, err := url.Parse(*server)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		fmt.Fprintf(stderr, "docker-mirror prefetch: --server: invalid URL %q (want http[s]://HOST:PORT, with an admin's name: http://USER@HOST:PORT)\n", redact.URL(*server))
		return exitUsage
	}
	if pw, ok := os.LookupEnv(prefetchPasswordEnv); ok && u.User != nil {
		if _, inURL := u.User.Password(); !inURL {
			u.User = url.UserPassword(u.User.Username(), pw)
		}
	} else if ok {
		// Else ignored: the job would be refused as anonymous, as if
		// the password were wrong.
		fmt.Fprintf(stderr, "docker-mirror prefetch: %s: set, but --server names no user: the password is sent only with one (http://USER@HOST:PORT)\n", prefetchPasswordEnv)
		return exitUsage
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "docker-mirror prefetch: no images to prefetch")
		return exitUsage
	}
	if f, ok := flagAmong(fs.Args()); ok {
		fmt.Fprintf(stderr, "docker-mirror prefetch: flag %q after the images: give the flags before IMAGE...\n", f)
		return exitUsage
	}
	base := strings.TrimRight(u.String(), "/")
	job, err := postJob(ctx, base, proxy.PrefetchRequest{Images: fs.Args(), Platforms: platforms})
	if code, ok := signalled(ctx); ok && err != nil {
		// Not the request's error: the server may have taken the job
		// before the interruption, and then runs it.
		fmt.Fprintf(stderr, "docker-mirror prefetch: interrupted (%v) before the server answered; it may have started the job (GET %s/prefetch lists the jobs)\n", context.Cause(ctx), redact.URL(base))
		return code
	}
	if err != nil {
		fmt.Fprintf(stderr, "docker-mirror prefetch: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "prefetch job %s\n", job.ID)
	d := newDisplay(stdout)
	reported := map[string]bool{}
	var failing time.Time // since when the polls fail (zero: the last was answered)
	for {
		for _, im := range job.Images {
			pr := proxy.Progress{Digest: im.Digest, PlatformsTotal: im.PlatformsTotal, PlatformsDone: im.PlatformsDone, BytesTotal: im.BytesTotal, BytesDone: im.BytesDone}
			switch {
			case reported[im.Image]:
			case im.State == storage.JobDone:
				d.done(im.Image, pr, nil)
				reported[im.Image] = true
			case im.State == storage.JobFailed:
				d.done(im.Image, pr, fmt.Errorf("%s", im.Error))
				reported[im.Image] = true
			default:
				d.update(im.Image, pr)
			}
		}
		if job.Finished() {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(pollInterval):
		}
		pctx, cancel := context.WithTimeout(ctx, pollTimeout)
		next, err := getJob(pctx, base, job.ID)
		cancel()
		if ctx.Err() != nil {
			// Interrupted, between two asks or during one: the job is
			// the server's, not ended by the interruption.
			fmt.Fprintf(stderr, "docker-mirror prefetch: stopped following job %s; it goes on in the server\n", job.ID)
			if code, ok := signalled(ctx); ok {
				return code
			}
			return 1
		}
		if err != nil && transient(err) {
			// The server restarting (a rolling upgrade) or a load
			// balancer's hiccup: the job goes on in the server, and
			// is followed again once it answers.
			if failing.IsZero() {
				failing = time.Now()
				fmt.Fprintf(stderr, "docker-mirror prefetch: asking for job %s: %v; asking again\n", job.ID, err)
			}
			if time.Since(failing) < pollGiveUp {
				continue
			}
		}
		if err != nil {
			fmt.Fprintf(stderr, "docker-mirror prefetch: %v\n", err)
			return 1
		}
		job, failing = next, time.Time{}
	}
	d.wait()
	var failed []string
	for _, im := range job.Images {
		if im.State != storage.JobDone {
			failed = append(failed, im.Image)
		}
	}
	if len(failed) > 0 {
		fmt.Fprintf(stderr, "docker-mirror prefetch: failed: %s\n", strings.Join(failed, ", "))
		return 1
	}
	return 0
}

func postJob(ctx context.Context, base string, req proxy.PrefetchRequest) (*storage.Job, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	r, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/prefetch", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	r.Header.Set("Content-Type", "application/json")
	return doJob(r, http.StatusAccepted)
}

func getJob(ctx context.Context, base, id string) (*storage.Job, error) {
	r, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/prefetch/"+url.PathEscape(id), nil)
	if err != nil {
		return nil, err
	}
	return doJob(r, http.StatusOK)
}

// doJob sends a request and decodes the job it answers, or the server's
// error message.
func doJob(r *http.Request, want int) (*storage.Job, error) {
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != want {
		var e struct {
			Errors []struct{ Code, Message string } `json:"errors"`
		}
		if json.Unmarshal(raw, &e) == nil && len(e.Errors) > 0 {
			return nil, statusError{resp.StatusCode, fmt.Sprintf("%s: %s", e.Errors[0].Code, e.Errors[0].Message)}
		}
		return nil, statusError{resp.StatusCode, fmt.Sprintf("%s %s: %s", r.Method, r.URL.Redacted(), resp.Status)}
	}
	var job storage.Job
	if err := json.Unmarshal(raw, &job); err != nil {
		return nil, statusError{resp.StatusCode, fmt.Sprintf("%s %s: %v", r.Method, r.URL.Redacted(), err)}
	}
	return &job, nil
}

// statusError is the server's answer of an unexpected status, or one
// that does not read as a job.
type statusError struct {
	status int
	msg    string
}

func (e statusError) Error() string { return e.msg }

// transient reports whether err, a request's to the server, may pass by
// itself: no answer, or the server (or a load balancer before it) busy or
// unavailable.
func transient(err error) bool {
	var se statusError
	return !errors.As(err, &se) || se.status == http.StatusTooManyRequests || se.status >= 500
}
