// Command upstream is the upstream registry of bench/rss.sh, as a process
// of its own: a real distribution registry (filesystem storage under
// --dir) on 127.0.0.1, seeded with one blob of each --sizes, optionally
// behind an emulated WAN (--latency per request, --rate-mibps per
// response body, as tests/fixture's Throttle).
//
// Blobs are deterministic pseudo-random (incompressible) bytes generated on
// the fly: nothing of blob size is ever held in memory. Once seeded, it
// writes a JSON description ({"url":..., "repo":..., "blobs":[{"size":...,
// "digest":...}]}) to --ready and serves until SIGINT or SIGTERM.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem" // registers "filesystem"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/sirupsen/logrus"

	"github.com/docker-mirror/docker-mirror/bench"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on (127.0.0.1 only)")
	dir := flag.String("dir", "", "storage directory (required)")
	repo := flag.String("repo", "library/rss", "repository the blobs are pushed to")
	sizes := flag.String("sizes", "64MiB,256MiB,1GiB", "comma-separated blob sizes (suffix KiB, MiB or GiB)")
	rate := flag.Int64("rate-mibps", 0, "pace every response body at this many MiB/s (0: unlimited)")
	latency := flag.Duration("latency", 0, "delay every response by this much")
	ready := flag.String("ready", "", "file the JSON description is written to once seeded (required)")
	flag.Parse()
	if *dir == "" || *ready == "" {
		fmt.Fprintln(os.Stderr, "upstream: --dir and --ready are required")
		os.Exit(2)
	}
	if err := run(*listen, *dir, *repo, *sizes, *rate<<20, *latency, *ready); err != nil {
		fmt.Fprintln(os.Stderr, "upstream:", err)
		os.Exit(1)
	}
}

type blobInfo struct {
	Size   int64  `json:"size"`
	Digest string `json:"digest"`
}

type description struct {
	URL   string     `json:"url"`
	Repo  string     `json:"repo"`
	Blobs []blobInfo `json:"blobs"`
}

func run(listen, dir, repo, sizeList string, rate int64, latency time.Duration, ready string) error {
	host, _, err := net.SplitHostPort(listen)
	if err != nil || host != "127.0.0.1" {
		return fmt.Errorf("--listen %q: must be 127.0.0.1:PORT", listen)
	}
	var sizes []int64
	for _, s := range strings.Split(sizeList, ",") {
		n, err := parseSize(strings.TrimSpace(s))
		if err != nil {
			return err
		}
		sizes = append(sizes, n)
	}

	// Distribution logs every 404 of the seeding HEADs at error level.
	logrus.SetLevel(logrus.PanicLevel)
	logrus.SetOutput(io.Discard)
	cfg := &configuration.Configuration{
		Storage: configuration.Storage{
			"filesystem": configuration.Parameters{"rootdirectory": dir},
			"maintenance": configuration.Parameters{
				"uploadpurging": map[any]any{"enabled": false},
			},
		},
	}
	cfg.Log.AccessLog.Disabled = true
	cfg.Log.Level = "error"
	cfg.HTTP.Secret = "docker-mirror-bench"
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	app := handlers.NewApp(ctx, cfg)

	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	var wan atomic.Bool // off while seeding
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !wan.Load() || (rate <= 0 && latency <= 0) {
			app.ServeHTTP(w, r)
			return
		}
		select {
		case <-time.After(latency):
		case <-r.Context().Done():
			return
		}
		app.ServeHTTP(&pacedWriter{ResponseWriter: w, rc: http.NewResponseController(w), rate: rate}, r)
	})}
	go func() { _ = srv.Serve(ln) }()
	addr := ln.Addr().String()

	desc := description{URL: "http://" + addr, Repo: repo}
	ref, err := name.NewRepository(addr+"/"+repo, name.Insecure)
	if err != nil {
		return err
	}
	for i, size := range sizes {
		start := time.Now()
		l, err := newLayer(uint64(i), size)
		if err != nil {
			return err
		}
		if err := remote.WriteLayer(ref, l, remote.WithTransport(bench.NewTransport(4)), remote.WithContext(ctx)); err != nil {
			return fmt.Errorf("seeding %d bytes: %w", size, err)
		}
		desc.Blobs = append(desc.Blobs, blobInfo{Size: size, Digest: l.digest.String()})
		fmt.Fprintf(os.Stderr, "upstream: seeded %d bytes as %s in %v\n", size, l.digest, time.Since(start).Round(time.Millisecond))
	}
	wan.Store(true)

	raw, err := json.MarshalIndent(desc, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(ready+".tmp", raw, 0o644); err != nil {
		return err
	}
	if err := os.Rename(ready+".tmp", ready); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "upstream: serving on %s\n", desc.URL)
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	return nil
}

func parseSize(s string) (int64, error) {
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}} {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = v, u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("invalid size %q", s)
	}
	return n * mult, nil
}

// streamLayer is a blob of size pseudo-random bytes from a seeded ChaCha8
// stream: generated again for every read, never held in memory.
type streamLayer struct {
	seed   [32]byte
	size   int64
	digest v1.Hash
}

func newLayer(i uint64, size int64) (*streamLayer, error) {
	l := &streamLayer{size: size}
	binary.LittleEndian.PutUint64(l.seed[:], i+1)
	binary.LittleEndian.PutUint64(l.seed[8:], uint64(size))
	h := sha256.New()
	if _, err := io.Copy(h, l.reader()); err != nil {
		return nil, err
	}
	l.digest = v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", h.Sum(nil))}
	return l, nil
}

func (l *streamLayer) reader() io.Reader {
	return io.LimitReader(mrand.NewChaCha8(l.seed), l.size)
}

func (l *streamLayer) Digest() (v1.Hash, error)             { return l.digest, nil }
func (l *streamLayer) DiffID() (v1.Hash, error)             { return l.digest, nil }
func (l *streamLayer) Size() (int64, error)                 { return l.size, nil }
func (l *streamLayer) MediaType() (types.MediaType, error)  { return types.OCIUncompressedLayer, nil }
func (l *streamLayer) Compressed() (io.ReadCloser, error)   { return io.NopCloser(l.reader()), nil }
func (l *streamLayer) Uncompressed() (io.ReadCloser, error) { return io.NopCloser(l.reader()), nil }

// pacedWriter sends a response body no faster than rate bytes per second
// (0: unlimited), in chunks of 1/20 s of the link but at most 64 KiB or
// 5 ms of the link, whichever is more (tests/fixture's paceChunk: one timer
// and one write per 5 ms of a fast link, not per 64 KiB), flushing each.
type pacedWriter struct {
	http.ResponseWriter
	rc      *http.ResponseController
	rate    int64
	start   time.Time
	written int64
}

var errGone = errors.New("client gone")

func (w *pacedWriter) Write(p []byte) (int, error) {
	if w.rate <= 0 {
		return w.ResponseWriter.Write(p)
	}
	if w.start.IsZero() {
		w.start = time.Now()
		_ = w.rc.Flush()
	}
	chunk := int(min(max(w.rate/20, 512), max(64<<10, min(w.rate/200, 1<<20))))
	total := 0
	for len(p) > 0 {
		c := p[:min(chunk, len(p))]
		due := w.start.Add(time.Duration(float64(w.written+int64(len(c))) / float64(w.rate) * float64(time.Second)))
		time.Sleep(time.Until(due))
		n, err := w.ResponseWriter.Write(c)
		total += n
		w.written += int64(n)
		if err != nil {
			return total, err
		}
		if n < len(c) {
			return total, errGone
		}
		p = p[n:]
		_ = w.rc.Flush()
	}
	return total, nil
}

// Flush implements http.Flusher.
func (w *pacedWriter) Flush() { _ = w.rc.Flush() }

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *pacedWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
