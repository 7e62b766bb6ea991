// Package bench holds docker-mirror's performance benchmarks
// (bench_test.go, documented with their figures in docs/performance.md) and
// the registry client they share with the helper programs of bench/rss.sh.
//
// The client does what a pulling client does on the wire: the registry
// handshake (ping, and a bearer token when challenged, with
// go-containerregistry's transport like crane), the manifest, then the
// config and layers in parallel, reading every byte (and hashing it when
// asked). Every connection it opens goes to 127.0.0.1: its dialer refuses
// any other address, so a benchmark can never reach out.
package bench

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/docker-mirror/docker-mirror/oci"
)

// readBuf is the size of the buffer blob bodies are read with.
const readBuf = 256 << 10

// errNotLoopback is returned when something tries to dial outside 127.0.0.1.
var errNotLoopback = errors.New("bench: refusing to dial a non-loopback address")

// NewTransport returns an HTTP/1.1 transport for the benchmarks: no proxy
// from the environment, no compression, keep-alive with room for idle
// connections per host (at least 2), and a dialer that only reaches
// 127.0.0.1.
func NewTransport(idle int) *http.Transport {
	d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			if ip := net.ParseIP(host); ip == nil || !ip.Equal(net.IPv4(127, 0, 0, 1)) {
				return nil, fmt.Errorf("%w: %s", errNotLoopback, addr)
			}
			return d.DialContext(ctx, network, addr)
		},
		MaxIdleConns:          0,
		MaxIdleConnsPerHost:   max(idle, 2),
		IdleConnTimeout:       time.Minute,
		DisableCompression:    true,
		ResponseHeaderTimeout: 5 * time.Minute,
	}
}

// Client pulls from one repository of a registry on 127.0.0.1.
type Client struct {
	base string // http://127.0.0.1:PORT
	repo string
	hc   *http.Client
}

// Login does the handshake a client does before pulling repo from host
// ("127.0.0.1:PORT"): ping /v2/ and, if challenged, get a pull token. The
// returned client sends its requests through base.
func Login(ctx context.Context, host, repo string, base http.RoundTripper) (*Client, error) {
	reg, err := name.NewRegistry(host, name.Insecure)
	if err != nil {
		return nil, err
	}
	rt, err := transport.NewWithContext(ctx, reg, authn.Anonymous, base, []string{"repository:" + repo + ":pull"})
	if err != nil {
		return nil, fmt.Errorf("login to %s: %w", host, err)
	}
	return &Client{base: "http://" + host, repo: repo, hc: &http.Client{Transport: rt}}, nil
}

// Manifest fetches a manifest by tag or digest.
func (c *Client) Manifest(ctx context.Context, ref string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/v2/"+c.repo+"/manifests/"+ref, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", oci.Accept)
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("manifest %s:%s: %s: %.200s", c.repo, ref, resp.Status, body)
	}
	return body, nil
}

// Blob fetches a blob, reads every byte and, if verify is set, checks
// that they hash to its digest. It returns the bytes read and the
// response's X-Cache header (empty from a plain registry).
func (c *Client) Blob(ctx context.Context, dgst string, verify bool) (int64, string, error) {
	return Fetch(ctx, c.hc, c.base+"/v2/"+c.repo+"/blobs/"+dgst, verifyDigest(dgst, verify))
}

// BlobTime is how one blob GET went on the wire, as the client saw it.
type BlobTime struct {
	// Wait is from the request written to the response's first byte: the
	// server's time to answer plus one round trip (the emulated WAN's
	// latency, for a throttled upstream).
	Wait time.Duration
	// Body is from the response's first byte to its last.
	Body  time.Duration
	Bytes int64
}

// Rate is the body's bytes per second (0 if it took no measurable time).
func (t BlobTime) Rate() float64 {
	if t.Body <= 0 {
		return 0
	}
	return float64(t.Bytes) / t.Body.Seconds()
}

// timedBlob is Blob, also returning its BlobTime.
func (c *Client) timedBlob(ctx context.Context, dgst string, verify bool) (int64, string, BlobTime, error) {
	var bt BlobTime
	// The hooks run on the transport's goroutines (the request can be
	// answered before its write is reported): atomics, as nanoseconds
	// since start.
	start := time.Now()
	var wrote, first atomic.Int64
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		WroteRequest:         func(httptrace.WroteRequestInfo) { wrote.Store(int64(time.Since(start)) + 1) },
		GotFirstResponseByte: func() { first.Store(int64(time.Since(start)) + 1) },
	})
	n, cache, err := Fetch(ctx, c.hc, c.base+"/v2/"+c.repo+"/blobs/"+dgst, verifyDigest(dgst, verify))
	w, f := wrote.Load(), first.Load()
	if w != 0 && f != 0 {
		bt = BlobTime{Wait: time.Duration(f - w), Body: time.Since(start) - time.Duration(f-1), Bytes: n}
	}
	return n, cache, bt, err
}

func verifyDigest(dgst string, verify bool) string {
	if verify {
		return dgst
	}
	return ""
}

// Fetch GETs url with hc and reads the whole body. If digest is not empty
// ("sha256:<hex>") the body must hash to it. A body shorter than its
// Content-Length is an error. It returns the bytes read and X-Cache.
func Fetch(ctx context.Context, hc *http.Client, url, digest string) (int64, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return 0, "", fmt.Errorf("GET %s: %s: %s", url, resp.Status, msg)
	}
	var w io.Writer = io.Discard
	h := sha256.New()
	if digest != "" {
		w = h
	}
	n, err := copyBody(w, resp.Body)
	if err != nil {
		return n, "", fmt.Errorf("GET %s: after %d bytes: %w", url, n, err)
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return n, "", fmt.Errorf("GET %s: %d bytes, Content-Length %d", url, n, resp.ContentLength)
	}
	if digest != "" {
		if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != digest {
			return n, "", fmt.Errorf("GET %s: body hashes to %s", url, got)
		}
	}
	return n, resp.Header.Get("X-Cache"), nil
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, readBuf); return &b }}

// copyBody reads r to the end with a large buffer (io.Copy into io.Discard
// would read 8 KiB at a time, making the client rather than the server the
// bottleneck of a loopback benchmark).
func copyBody(w io.Writer, r io.Reader) (int64, error) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	var n int64
	for {
		m, err := r.Read(buf)
		if m > 0 {
			_, _ = w.Write(buf[:m])
			n += int64(m)
		}
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// PullResult is what one image pull read.
type PullResult struct {
	Manifest string          // digest of the image manifest pulled
	Blobs    []v1.Descriptor // config and layers
	Bytes    int64           // blob bytes read (manifests excluded)
	Misses   int             // blob responses whose X-Cache was not "hit"
	// ManifestAt and BlobsAt are when, from the start of Pull, the image
	// manifest was in hand and the last blob was read.
	ManifestAt, BlobsAt time.Duration
	// Times has one entry per blob GET, in the order they ended.
	Times []BlobTime
}

// Pull pulls ref (a tag or digest): the manifest (resolving an index to
// linux/amd64), then the config and every layer, parallel at a time (0:
// all at once). With verify set every blob is hashed and checked.
func (c *Client) Pull(ctx context.Context, ref string, parallel int, verify bool) (PullResult, error) {
	var res PullResult
	start := time.Now()
	body, err := c.Manifest(ctx, ref)
	if err != nil {
		return res, err
	}
	var m oci.Manifest
	if err := json.Unmarshal(body, &m); err != nil {
		return res, fmt.Errorf("manifest %s: %w", ref, err)
	}
	if m.Manifests != nil {
		child := ""
		for _, d := range m.Manifests {
			if d.Platform != nil && d.Platform.OS == "linux" && d.Platform.Architecture == "amd64" {
				child = d.Digest.String()
				break
			}
		}
		if child == "" {
			return res, fmt.Errorf("index %s has no linux/amd64 image", ref)
		}
		if body, err = c.Manifest(ctx, child); err != nil {
			return res, err
		}
		m = oci.Manifest{}
		if err := json.Unmarshal(body, &m); err != nil {
			return res, fmt.Errorf("manifest %s: %w", child, err)
		}
	}
	if m.Config == nil {
		return res, fmt.Errorf("manifest %s is not an image manifest", ref)
	}
	res.ManifestAt = time.Since(start)
	sum := sha256.Sum256(body)
	res.Manifest = "sha256:" + hex.EncodeToString(sum[:])
	res.Blobs = append([]v1.Descriptor{*m.Config}, m.Layers...)

	if parallel <= 0 {
		parallel = len(res.Blobs)
	}
	sem := make(chan struct{}, parallel)
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	for _, d := range res.Blobs {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			n, cache, bt, err := c.timedBlob(ctx, d.Digest.String(), verify)
			mu.Lock()
			defer mu.Unlock()
			res.Bytes += n
			res.Times = append(res.Times, bt)
			if err == nil && n != d.Size {
				err = fmt.Errorf("blob %s: %d bytes, manifest says %d", d.Digest, n, d.Size)
			}
			if err != nil {
				errs = append(errs, err)
			}
			if cache != "hit" {
				res.Misses++
			}
		})
	}
	wg.Wait()
	res.BlobsAt = time.Since(start)
	return res, errors.Join(errs...)
}

// UniqueBytes is the sum of the sizes of the distinct blobs of ds.
func UniqueBytes(ds []v1.Descriptor) int64 {
	seen := map[digest.Digest]bool{}
	var n int64
	for _, d := range ds {
		if !seen[d.Digest] {
			seen[d.Digest] = true
			n += d.Size
		}
	}
	return n
}

// HostOf returns "127.0.0.1:PORT" of "http://127.0.0.1:PORT".
func HostOf(url string) string {
	return strings.TrimPrefix(strings.TrimPrefix(url, "http://"), "https://")
}
