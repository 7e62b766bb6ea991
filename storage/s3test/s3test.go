// Package s3test runs a real S3 server for tests: versitygw with its posix
// backend on 127.0.0.1, in a temporary directory, with credentials of its
// own. Tests that need it skip with a clear message when the versitygw
// binary is missing (.ci/install-clients installs it).
//
//	srv := s3test.Start(t)
//	cfg.Storage = srv.Storage(srv.NewBucket(t))
package s3test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/aws/credentials"
	"github.com/aws/aws-sdk-go/aws/session"
	"github.com/aws/aws-sdk-go/service/s3"
)

// Binary is the versitygw executable's name.
const Binary = "versitygw"

// Region is the region the server and the driver parameters use.
const Region = "us-east-1"

// Server is a running versitygw on loopback.
type Server struct {
	// Endpoint is the server's URL, e.g. http://127.0.0.1:41234.
	Endpoint string
	// AccessKey and SecretKey are the root account's credentials.
	AccessKey, SecretKey string
	// Dir is the posix backend's directory: one subdirectory per bucket.
	Dir string

	client  *s3.S3
	buckets atomic.Int64
	cmd     *exec.Cmd
}

// Path finds the versitygw binary: $VERSITYGW, then $PATH, then
// $(go env GOPATH)/bin (where go install puts it), then ~/go/bin. It
// returns "" if there is none.
func Path() string {
	if p := os.Getenv("VERSITYGW"); p != "" {
		return p
	}
	if p, err := exec.LookPath(Binary); err == nil {
		return p
	}
	var dirs []string
	if gopath := os.Getenv("GOPATH"); gopath != "" {
		dirs = append(dirs, filepath.SplitList(gopath)...)
	} else if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		dirs = append(dirs, filepath.SplitList(strings.TrimSpace(string(out)))...)
	}
	if home, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, filepath.Join(home, "go"))
	}
	for _, d := range dirs {
		p := filepath.Join(d, "bin", Binary)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p
		}
	}
	return ""
}

// Start starts versitygw for the test, stopped at its cleanup. It skips
// the test if the binary is missing and fails it if the server does not
// answer within 30 seconds.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := Path()
	if bin == "" {
		t.Skipf("%s not found ($VERSITYGW, $PATH, GOPATH/bin): run .ci/install-clients or go install github.com/versity/versitygw/cmd/versitygw@v1.8.0", Binary)
	}
	s := &Server{
		AccessKey: "mirror" + strings.ToLower(rand.Text()[:8]),
		SecretKey: rand.Text(),
		Dir:       filepath.Join(t.TempDir(), "s3"),
	}
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	s.Endpoint = "http://" + addr
	var logs bytes.Buffer
	s.cmd = exec.Command(bin, "--access", s.AccessKey, "--secret", s.SecretKey,
		"--region", Region, "--port", addr, "posix", s.Dir)
	s.cmd.Stdout, s.cmd.Stderr = &logs, &logs
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- s.cmd.Wait() }()
	t.Cleanup(func() {
		_ = s.cmd.Process.Kill()
		<-exited
	})
	s.client = s3.New(session.Must(session.NewSession(&aws.Config{
		Credentials:      credentials.NewStaticCredentials(s.AccessKey, s.SecretKey, ""),
		Endpoint:         aws.String(s.Endpoint),
		Region:           aws.String(Region),
		S3ForcePathStyle: aws.Bool(true),
		DisableSSL:       aws.Bool(true),
		HTTPClient:       &http.Client{}, // not http.DefaultClient, which AWS_CA_BUNDLE would change
	})))
	// Waiting for a process we do not control to listen: poll its port.
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-exited:
			t.Fatalf("%s exited at start: %v\n%s", bin, err, logs.String())
		default:
		}
		_, err := s.client.ListBuckets(&s3.ListBucketsInput{})
		if err == nil {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not answer on %s: %v\n%s", bin, addr, err, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// freeAddr returns a loopback address nothing listens on now.
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// NewBucket creates an empty bucket and returns its name.
func (s *Server) NewBucket(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("mirror-%d-%s", s.buckets.Add(1), strings.ToLower(rand.Text()[:6]))
	if _, err := s.client.CreateBucketWithContext(context.Background(), &s3.CreateBucketInput{Bucket: aws.String(name)}); err != nil {
		t.Fatalf("creating bucket %s: %v", name, err)
	}
	return name
}

// Params are the s3 storage driver's parameters for bucket, as the
// configuration's `storage: {s3: ...}` block holds them.
func (s *Server) Params(bucket string) map[string]any {
	return map[string]any{
		"accesskey":      s.AccessKey,
		"secretkey":      s.SecretKey,
		"region":         Region,
		"regionendpoint": s.Endpoint,
		"bucket":         bucket,
		"forcepathstyle": true,
		"secure":         false,
		"v4auth":         true,
	}
}

// Storage is the configuration's storage block for bucket
// (config.Config.Storage).
func (s *Server) Storage(bucket string) map[string]map[string]any {
	return map[string]map[string]any{"s3": s.Params(bucket)}
}

// Client is an S3 client with the root account's credentials, to look at
// a bucket as the server holds it.
func (s *Server) Client() *s3.S3 { return s.client }

// Keys lists every object key in bucket, e.g. to check what a test left.
func (s *Server) Keys(t testing.TB, bucket string) []string {
	t.Helper()
	var keys []string
	err := s.client.ListObjectsV2Pages(&s3.ListObjectsV2Input{Bucket: aws.String(bucket)}, func(p *s3.ListObjectsV2Output, _ bool) bool {
		for _, o := range p.Contents {
			keys = append(keys, aws.StringValue(o.Key))
		}
		return true
	})
	if err != nil {
		t.Fatalf("listing bucket %s: %v", bucket, err)
	}
	return keys
}

// Stop kills the server now (its cleanup does it otherwise), e.g. to test
// what an unreachable S3 does.
func (s *Server) Stop() { _ = s.cmd.Process.Kill() }
