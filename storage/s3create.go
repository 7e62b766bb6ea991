package storage

import (
	"context"
	"errors"
	"io"
	"net/http"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/aws/awserr"
	"github.com/aws/aws-sdk-go/aws/request"
	"github.com/aws/aws-sdk-go/service/s3"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	s3driver "github.com/distribution/distribution/v3/registry/storage/driver/s3-aws"
)

// createOnly marks the context of a PutContent on distribution's s3
// driver that writes its object only if the key holds none (s3CreateOnly).
type createOnly struct{}

// s3CreateOnly makes the PutContent of distribution's s3 driver d whose
// context is marked createOnly a conditional write (If-None-Match: *),
// which the driver has no way to ask for: of several replicas creating
// one object at once, only one does, the others are answered 412 (or 409
// while it is being written). The header is set on the driver's own
// request, which keeps the driver's encryption, ACL and storage class. It
// adds a handler to d's client: call it before d is used. It reports
// whether d is an s3 driver.
func s3CreateOnly(d storagedriver.StorageDriver) bool {
	_, client, _, ok := s3ClientOf(d)
	if !ok {
		return false
	}
	client.Handlers.Build.PushBack(func(r *request.Request) {
		if r.Operation.Name == "PutObject" && r.Context().Value(createOnly{}) != nil {
			r.HTTPRequest.Header.Set("If-None-Match", "*")
		}
	})
	return true
}

// s3Status is the HTTP status of an S3 answer err is, a driver's error
// (which the driver's base wraps) or not; 0 if none.
func s3Status(err error) int {
	var se s3Error
	if errors.As(err, &se) {
		return se.StatusCode()
	}
	var de storagedriver.Error
	if errors.As(err, &de) && errors.As(de.Detail, &se) {
		return se.StatusCode()
	}
	return 0
}

// s3Records are the S3 requests the shared records make themselves, with
// conditions the driver has no way to ask for.
type s3Records struct {
	drv    *s3driver.Driver
	client *s3.S3
	bucket string
}

// newS3Records returns the requests on distribution's s3 driver d, or nil
// if d is not one.
func newS3Records(d storagedriver.StorageDriver) *s3Records {
	drv, client, bucket, ok := s3ClientOf(d)
	if !ok {
		return nil
	}
	return &s3Records{drv: drv, client: client, bucket: bucket}
}

// getVersion reads the object at a driver path and its ETag.
func (s *s3Records) getVersion(ctx context.Context, path string) ([]byte, string, error) {
	out, err := s.client.GetObjectWithContext(ctx, &s3.GetObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(s.drv.S3BucketKey(path))})
	if aerr, ok := err.(awserr.Error); ok && aerr.Code() == s3.ErrCodeNoSuchKey || s3Status(err) == http.StatusNotFound {
		return nil, "", storagedriver.PathNotFoundError{Path: path, DriverName: s.drv.Name()}
	}
	if err != nil {
		return nil, "", err
	}
	defer out.Body.Close()
	b, err := io.ReadAll(out.Body)
	return b, aws.StringValue(out.ETag), err
}

// deleteIf removes the object at a driver path only while its ETag is
// etag (If-Match, which the SDK's DeleteObjectInput has no field for: set
// on the request); ErrRecordChanged if it is not. A missing object is not
// an error. A server that refuses the header (501, 400) has the object
// removed as Delete would: kept, a record taken back would stay for good.
func (s *s3Records) deleteIf(ctx context.Context, path, etag string) error {
	req, _ := s.client.DeleteObjectRequest(&s3.DeleteObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(s.drv.S3BucketKey(path))})
	req.SetContext(ctx)
	if etag != "" {
		req.Handlers.Build.PushBack(func(r *request.Request) { r.HTTPRequest.Header.Set("If-Match", etag) })
	}
	err := req.Send()
	switch s3Status(err) {
	case http.StatusNotFound:
		return nil
	case http.StatusPreconditionFailed:
		return ErrRecordChanged
	case http.StatusNotImplemented, http.StatusBadRequest:
		if etag != "" {
			return s.deleteIf(ctx, path, "")
		}
	}
	return err
}
