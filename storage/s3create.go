package storage

import (
	"errors"

	"github.com/aws/aws-sdk-go/aws/request"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"

	"github.com/docker-mirror/docker-mirror/lease"
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

// s3Objects returns the objects of the bucket of distribution's s3
// driver d, under its root directory, for the requests with conditions
// the driver has no way to ask for; nil if d is not one.
func s3Objects(d storagedriver.StorageDriver) *lease.S3 {
	drv, client, bucket, ok := s3ClientOf(d)
	if !ok {
		return nil
	}
	// The driver's key of a path is its root directory, "/", then the
	// path: the root of lease's keys.
	return lease.NewS3Client(client, bucket, drv.S3BucketKey(""))
}
