package storage

import (
	"context"
	"fmt"
	"io"
	"reflect"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/aws/awserr"
	"github.com/aws/aws-sdk-go/service/s3"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	s3driver "github.com/distribution/distribution/v3/registry/storage/driver/s3-aws"
)

// rangeReader reads n bytes of the object at a driver path from offset.
type rangeReader func(ctx context.Context, path string, offset, n int64) (io.ReadCloser, error)

// s3RangeReader returns a rangeReader for distribution's s3 driver d, or
// nil if d is not one. The driver's Reader asks S3 for everything from
// its offset to the object's end ("bytes=N-"), and has no way to ask for
// less: for a range of a large blob, S3 would send what the connection
// holds before the reader is closed, and the connection would be lost.
// This asks with the driver's own client, bucket and key (s3ClientOf; if
// a version of the driver no longer has them, nil: reads go through
// Reader as before).
func s3RangeReader(d storagedriver.StorageDriver) rangeReader {
	drv, client, bucket, ok := s3ClientOf(d)
	if !ok {
		return nil
	}
	return func(ctx context.Context, path string, offset, n int64) (io.ReadCloser, error) {
		resp, err := client.GetObjectWithContext(ctx, &s3.GetObjectInput{
			Bucket: aws.String(bucket),
			Key:    aws.String(drv.S3BucketKey(path)),
			Range:  aws.String(fmt.Sprintf("bytes=%d-%d", offset, offset+n-1)),
		})
		if aerr, ok := err.(awserr.Error); ok && aerr.Code() == s3.ErrCodeNoSuchKey {
			return nil, storagedriver.PathNotFoundError{Path: path, DriverName: d.Name()}
		}
		if err != nil {
			return nil, err
		}
		return resp.Body, nil
	}
}

// s3ClientOf returns distribution's s3 driver d, its client and bucket,
// or ok false if d is not one (the client is an exported field of the
// driver's unexported type, found by reflection; ok false too if a
// version of the driver no longer has it).
func s3ClientOf(d storagedriver.StorageDriver) (drv *s3driver.Driver, client *s3.S3, bucket string, ok bool) {
	drv, ok = d.(*s3driver.Driver)
	if !ok {
		return nil, nil, "", false
	}
	v := reflect.ValueOf(drv.StorageDriver)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		return nil, nil, "", false
	}
	client, ok = fieldOf[*s3.S3](v.Elem(), "S3")
	if !ok || client == nil {
		return nil, nil, "", false
	}
	bucket, ok = fieldOf[string](v.Elem(), "Bucket")
	return drv, client, bucket, ok
}

// fieldOf returns the exported field name of struct v, if it has one of
// type T.
func fieldOf[T any](v reflect.Value, name string) (T, bool) {
	var zero T
	f := v.FieldByName(name)
	if !f.IsValid() || !f.CanInterface() {
		return zero, false
	}
	t, ok := f.Interface().(T)
	return t, ok
}
