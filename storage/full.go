package storage

import (
	"errors"
	"fmt"
	"net/http"
	"syscall"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
)

// ErrFull: a write found no space left on the device (ENOSPC) or the
// disk quota used up (EDQUOT), in the store or in the spool beside it, or
// an S3-compatible store refused it for want of room or quota.
// Nothing was kept. Wrapping errors say which write failed.
var ErrFull = errors.New("store full")

// MarkFull returns err wrapped in ErrFull if it is a full disk or quota
// (IsFull), else err unchanged.
func MarkFull(err error) error {
	if err == nil || errors.Is(err, ErrFull) || !noSpace(err) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrFull, err)
}

// IsFull reports whether err says there is no space to write: ErrFull,
// ENOSPC or EDQUOT anywhere in its chain, including inside the errors of
// distribution's storage drivers, which do not unwrap.
func IsFull(err error) bool { return errors.Is(err, ErrFull) || noSpace(err) }

// IsDiskFull reports whether err is a file system's refusal for want of
// room on its disk (ENOSPC anywhere in its chain, as IsFull finds it),
// which that disk's free space measures: not a quota's (EDQUOT, a user's
// share of a disk that has room), nor an S3-compatible store's.
func IsDiskFull(err error) bool {
	if errors.Is(err, syscall.ENOSPC) {
		return true
	}
	return inDriverError(err, IsDiskFull)
}

func noSpace(err error) bool {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return true
	}
	// An S3-compatible store with no room refuses the write with an
	// error of its own: MinIO's 507 XMinioStorageFull once its drives
	// pass their free-space threshold, Ceph RGW's QuotaExceeded for a
	// bucket's or a user's quota (the SDK's awserr.RequestFailure).
	var se s3Error
	if errors.As(err, &se) && (se.StatusCode() == http.StatusInsufficientStorage || se.Code() == "XMinioStorageFull" || se.Code() == "QuotaExceeded") {
		return true
	}
	// The drivers' base wraps what the filesystem said (Writer, Move)
	// in a storagedriver.Error that hides it from errors.Is.
	return inDriverError(err, noSpace)
}

// s3Error is an S3 client's error (the SDK's awserr.RequestFailure): the
// code and the HTTP status of the store's answer.
type s3Error interface {
	Code() string
	StatusCode() int
}

// inDriverError reports whether err is a storage driver's error
// (distribution's storagedriver.Error, which does not unwrap) whose cause
// is reports true of.
func inDriverError(err error, is func(error) bool) bool {
	var de storagedriver.Error
	return errors.As(err, &de) && de.Detail != nil && is(de.Detail)
}
