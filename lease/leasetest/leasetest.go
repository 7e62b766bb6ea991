// Package leasetest is an in-process S3 server of objects that honours
// conditional writes (If-None-Match: *, If-Match), for testing leases where
// the real S3 server in use does not.
package leasetest

import (
	"crypto/sha256"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/aws/credentials"
	"github.com/aws/aws-sdk-go/aws/session"
	"github.com/aws/aws-sdk-go/service/s3"

	"github.com/docker-mirror/docker-mirror/lease"
)

// Server is a fake S3 on loopback: path-style PUT, GET and DELETE of
// objects, and listings (ListObjectsV2, in one page), any bucket, no
// auth. Conditional writes and deletes are honoured unless
// Unconditional is set (a server that ignores them).
type Server struct {
	URL string

	mu            sync.Mutex
	objects       map[string][]byte
	unconditional bool
}

// Start starts a server, stopped at the test's cleanup.
func Start(t testing.TB, conditional bool) *Server {
	s := &Server{objects: map[string][]byte{}, unconditional: !conditional}
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	s.URL = srv.URL
	return s
}

func etag(b []byte) string { return fmt.Sprintf("%q", fmt.Sprintf("%x", sha256.Sum256(b))[:32]) }

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	key := strings.TrimPrefix(r.URL.Path, "/")
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, exists := s.objects[key]
	switch r.Method {
	case http.MethodPut:
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if !s.unconditional {
			if r.Header.Get("If-None-Match") == "*" && exists {
				fail(w, http.StatusPreconditionFailed, "PreconditionFailed")
				return
			}
			if m := r.Header.Get("If-Match"); m != "" && !exists {
				fail(w, http.StatusNotFound, "NoSuchKey") // as S3 answers it
				return
			}
			if m := r.Header.Get("If-Match"); m != "" && m != etag(cur) {
				fail(w, http.StatusPreconditionFailed, "PreconditionFailed")
				return
			}
		}
		s.objects[key] = body
		w.Header().Set("ETag", etag(body))
	case http.MethodGet, http.MethodHead:
		if r.URL.Query().Get("list-type") == "2" {
			s.list(w, key, r.URL.Query().Get("prefix"))
			return
		}
		if !exists {
			fail(w, http.StatusNotFound, "NoSuchKey")
			return
		}
		w.Header().Set("ETag", etag(cur))
		_, _ = w.Write(cur)
	case http.MethodDelete:
		if m := r.Header.Get("If-Match"); m != "" && exists && m != etag(cur) && !s.unconditional {
			fail(w, http.StatusPreconditionFailed, "PreconditionFailed")
			return
		}
		delete(s.objects, key)
		w.WriteHeader(http.StatusNoContent)
	default:
		fail(w, http.StatusMethodNotAllowed, "MethodNotAllowed")
	}
}

// list answers a listing of bucket's keys under prefix; s.mu is held.
func (s *Server) list(w http.ResponseWriter, bucket, prefix string) {
	var keys []string
	for k := range s.objects {
		if key, ok := strings.CutPrefix(k, bucket+"/"); ok && strings.HasPrefix(key, prefix) {
			keys = append(keys, key)
		}
	}
	slices.Sort(keys)
	w.Header().Set("Content-Type", "application/xml")
	fmt.Fprintf(w, "<ListBucketResult><Name>%s</Name><KeyCount>%d</KeyCount><IsTruncated>false</IsTruncated>", bucket, len(keys))
	for _, k := range keys {
		fmt.Fprint(w, "<Contents><Key>")
		_ = xml.EscapeText(w, []byte(k))
		fmt.Fprint(w, "</Key></Contents>")
	}
	fmt.Fprint(w, "</ListBucketResult>")
}

func fail(w http.ResponseWriter, status int, code string) {
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(status)
	fmt.Fprintf(w, "<Error><Code>%s</Code><Message>%s</Message></Error>", code, code)
}

// Objects are the lease objects of bucket on the server, through the
// same S3 client code the mirror uses.
func (s *Server) Objects(bucket string) *lease.S3 {
	client := s3.New(session.Must(session.NewSession(&aws.Config{
		Credentials:      credentials.NewStaticCredentials("test", "test", ""),
		Endpoint:         aws.String(s.URL),
		Region:           aws.String("us-east-1"),
		S3ForcePathStyle: aws.Bool(true),
		DisableSSL:       aws.Bool(true),
		HTTPClient:       &http.Client{}, // not http.DefaultClient, which AWS_CA_BUNDLE would change
	})))
	return lease.NewS3Client(client, bucket, "")
}

// Put writes an object as it is, e.g. a dead replica's lease.
func (s *Server) Put(bucket, key string, body []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.objects[bucket+"/"+key] = body
}

// Keys lists the objects' keys (bucket/key).
func (s *Server) Keys() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var keys []string
	for k := range s.objects {
		keys = append(keys, k)
	}
	return keys
}
