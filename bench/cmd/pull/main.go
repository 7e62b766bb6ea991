// Command pull is the client of bench/rss.sh: --clients parallel GETs of
// one blob URL on 127.0.0.1, each reading every byte and checking that it
// hashes to --digest. It prints one line:
//
//	clients=4 bytes=268435456 seconds=1.234 MBps=870.1 cache=miss,miss,hit,hit
//
// With --wait-hit it instead polls HEAD until the answer says X-Cache: hit
// (the blob is stored), for at most --timeout.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/docker-mirror/docker-mirror/bench"
)

func main() {
	url := flag.String("url", "", "blob URL, http://127.0.0.1:PORT/v2/<name>/blobs/<digest> (required)")
	digest := flag.String("digest", "", "expected sha256:<hex> of the body (empty: do not verify)")
	clients := flag.Int("clients", 1, "parallel clients")
	waitHit := flag.Bool("wait-hit", false, "poll HEAD until X-Cache is hit instead of pulling")
	timeout := flag.Duration("timeout", 10*time.Minute, "give up after this long")
	flag.Parse()
	if *url == "" || !strings.HasPrefix(*url, "http://127.0.0.1:") {
		fmt.Fprintln(os.Stderr, "pull: --url must be http://127.0.0.1:PORT/...")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	tr := bench.NewTransport(*clients)
	hc := &http.Client{Transport: tr}
	var err error
	if *waitHit {
		err = waitForHit(ctx, hc, *url)
	} else {
		err = pull(ctx, hc, *url, *digest, *clients)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "pull:", err)
		os.Exit(1)
	}
}

func pull(ctx context.Context, hc *http.Client, url, digest string, clients int) error {
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		total  int64
		caches []string
		errs   []string
	)
	start := time.Now()
	for range clients {
		wg.Go(func() {
			n, cache, err := bench.Fetch(ctx, hc, url, digest)
			mu.Lock()
			defer mu.Unlock()
			total += n
			caches = append(caches, cache)
			if err != nil {
				errs = append(errs, err.Error())
			}
		})
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	if len(errs) > 0 {
		return fmt.Errorf("%d of %d clients failed: %s", len(errs), clients, strings.Join(errs, "; "))
	}
	fmt.Printf("clients=%d bytes=%d seconds=%.3f MBps=%.1f cache=%s\n", clients, total, secs, float64(total)/1e6/secs, strings.Join(caches, ","))
	return nil
}

func waitForHit(ctx context.Context, hc *http.Client, url string) error {
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodHead, url, nil)
		if err != nil {
			return err
		}
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && resp.Header.Get("X-Cache") == "hit" {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: not a cache hit before the timeout (last error %v)", url, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
