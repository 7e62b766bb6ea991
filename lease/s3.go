package lease

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/aws/awserr"
	"github.com/aws/aws-sdk-go/aws/credentials"
	"github.com/aws/aws-sdk-go/aws/request"
	"github.com/aws/aws-sdk-go/aws/session"
	"github.com/aws/aws-sdk-go/service/s3"
)

// S3 is Objects in an S3 bucket, under the prefix the storage driver's
// rootdirectory gives.
type S3 struct {
	client *s3.S3
	bucket string
	root   string
}

var _ Objects = (*S3)(nil)

// NewS3 returns the objects of the bucket the s3 storage driver's
// parameters (the configuration's `storage: {s3: ...}`) name, with the
// same endpoint, region and credentials (the environment's when the
// parameters have no keys), and the same TLS checks (skipverify).
func NewS3(params map[string]any) (*S3, error) {
	str := func(k string) string {
		if v, ok := params[k]; ok && v != nil {
			return fmt.Sprint(v)
		}
		return ""
	}
	flag := func(k string, def bool) bool {
		switch strings.ToLower(str(k)) {
		case "true":
			return true
		case "false":
			return false
		}
		return def
	}
	bucket := str("bucket")
	if bucket == "" {
		return nil, errors.New("s3 leases: no bucket")
	}
	cfg := &aws.Config{
		Region:           aws.String(str("region")),
		S3ForcePathStyle: aws.Bool(flag("forcepathstyle", false)),
		DisableSSL:       aws.Bool(!flag("secure", true)),
	}
	if ep := str("regionendpoint"); ep != "" {
		cfg.Endpoint = aws.String(ep)
	}
	// A client of its own, as the driver has: given none, the SDK loads
	// AWS_CA_BUNDLE into http.DefaultClient's transport, for the whole
	// process.
	t := http.DefaultTransport.(*http.Transport).Clone()
	if flag("skipverify", false) {
		// As the driver does: the storage reaches the endpoint this way,
		// so must the leases.
		t.TLSClientConfig = &tls.Config{InsecureSkipVerify: true}
	}
	cfg.HTTPClient = &http.Client{Transport: t}
	if ak, sk := str("accesskey"), str("secretkey"); ak != "" || sk != "" {
		cfg.Credentials = credentials.NewStaticCredentials(ak, sk, "") // no session token: the driver takes none, nor does the configuration
	}
	sess, err := session.NewSession(cfg)
	if err != nil {
		return nil, fmt.Errorf("s3 leases: %w", err)
	}
	return &S3{client: s3.New(sess), bucket: bucket, root: strings.Trim(str("rootdirectory"), "/")}, nil
}

// NewS3Client returns the objects of bucket through client, under root.
func NewS3Client(client *s3.S3, bucket, root string) *S3 {
	return &S3{client: client, bucket: bucket, root: strings.Trim(root, "/")}
}

func (o *S3) objectKey(key string) string {
	if o.root == "" {
		return key
	}
	return o.root + "/" + key
}

// put writes key with the conditional header name: value. The SDK's
// PutObjectInput has no field for them yet: they are set on the request,
// before it is signed.
func (o *S3) put(ctx context.Context, key string, body []byte, header, value string) (string, error) {
	req, out := o.client.PutObjectRequest(&s3.PutObjectInput{
		Bucket: aws.String(o.bucket),
		Key:    aws.String(o.objectKey(key)),
		Body:   bytes.NewReader(body),
	})
	req.SetContext(ctx)
	req.Handlers.Build.PushBack(func(r *request.Request) { r.HTTPRequest.Header.Set(header, value) })
	err := req.Send()
	if status(err) == http.StatusPreconditionFailed || status(err) == http.StatusConflict {
		// 409: a conditional write racing another on the same key.
		return "", ErrChanged
	}
	if err != nil {
		return "", err
	}
	return aws.StringValue(out.ETag), nil
}

// status is the HTTP status of an S3 error, 0 if none.
func status(err error) int {
	var rf awserr.RequestFailure
	if errors.As(err, &rf) {
		return rf.StatusCode()
	}
	return 0
}

// Create implements Objects.
func (o *S3) Create(ctx context.Context, key string, body []byte) (string, error) {
	etag, err := o.put(ctx, key, body, "If-None-Match", "*")
	if errors.Is(err, ErrChanged) {
		return "", ErrExists
	}
	return etag, err
}

// Replace implements Objects. S3 answers the If-Match of a key that is
// gone 404 NoSuchKey, not 412: changed all the same.
func (o *S3) Replace(ctx context.Context, key, etag string, body []byte) (string, error) {
	etag, err := o.put(ctx, key, body, "If-Match", etag)
	var ae awserr.Error
	if errors.As(err, &ae) && ae.Code() == s3.ErrCodeNoSuchKey {
		return "", ErrChanged
	}
	return etag, err
}

// Get implements Objects: a lease is small, at most 64 KiB of key is
// read.
func (o *S3) Get(ctx context.Context, key string) ([]byte, string, error) {
	return o.GetUpTo(ctx, key, 1<<16)
}

// GetUpTo reads at most limit bytes of key, and its ETag; ErrNotFound if
// there is none.
func (o *S3) GetUpTo(ctx context.Context, key string, limit int64) ([]byte, string, error) {
	out, err := o.client.GetObjectWithContext(ctx, &s3.GetObjectInput{Bucket: aws.String(o.bucket), Key: aws.String(o.objectKey(key))})
	if status(err) == http.StatusNotFound {
		return nil, "", ErrNotFound
	}
	if err != nil {
		return nil, "", err
	}
	defer out.Body.Close()
	b, err := io.ReadAll(io.LimitReader(out.Body, limit))
	return b, aws.StringValue(out.ETag), err
}

// List implements Objects.
func (o *S3) List(ctx context.Context, prefix string) ([]string, error) {
	var keys []string
	in := &s3.ListObjectsV2Input{Bucket: aws.String(o.bucket), Prefix: aws.String(o.objectKey(prefix))}
	err := o.client.ListObjectsV2PagesWithContext(ctx, in, func(p *s3.ListObjectsV2Output, _ bool) bool {
		for _, obj := range p.Contents {
			k := aws.StringValue(obj.Key)
			if o.root != "" {
				k = strings.TrimPrefix(k, o.root+"/")
			}
			keys = append(keys, k)
		}
		return true
	})
	return keys, err
}

// Delete implements Objects.
func (o *S3) Delete(ctx context.Context, key string) error {
	return o.DeleteIf(ctx, key, "")
}

// DeleteIf implements Objects: AWS S3 honours If-Match on DELETE as on
// PUT (the SDK's DeleteObjectInput has no field for it either); an empty
// etag removes key whatever it holds. A server that refuses the header
// (501 NotImplemented, or 400) rather than ignore it has key removed as
// one that ignores it does: refused, a released lease would stay in the
// bucket for good, nobody taking the lease of a blob stored.
func (o *S3) DeleteIf(ctx context.Context, key, etag string) error {
	req, _ := o.client.DeleteObjectRequest(&s3.DeleteObjectInput{Bucket: aws.String(o.bucket), Key: aws.String(o.objectKey(key))})
	req.SetContext(ctx)
	if etag != "" {
		req.Handlers.Build.PushBack(func(r *request.Request) { r.HTTPRequest.Header.Set("If-Match", etag) })
	}
	err := req.Send()
	switch status(err) {
	case http.StatusNotFound:
		return nil
	case http.StatusPreconditionFailed:
		return ErrChanged
	case http.StatusNotImplemented, http.StatusBadRequest:
		if etag != "" {
			return o.DeleteIf(ctx, key, "")
		}
	}
	return err
}
