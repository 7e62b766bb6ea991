package server

import (
	"errors"
	"fmt"
	"strings"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"

	"github.com/docker-mirror/docker-mirror/config"
)

// storeError rewrites an error of the configured storage driver as one
// line naming the storage.DRIVER key: distribution's drivers pass on
// their SDK's errors, whose text (the AWS SDK's for s3) spans several
// lines and points at SDK settings the operator cannot reach.
func storeError(cfg config.Config, err error) error {
	var de storagedriver.Error // no Unwrap: the SDK error is its Detail
	if !errors.As(err, &de) || de.Detail == nil {
		return err
	}
	name := "filesystem"
	for n := range cfg.Storage {
		name = n
	}
	return fmt.Errorf("storage.%s: %s", name, describeSDKError(de.Detail))
}

// sdkError is the AWS SDK's awserr.Error (and what other SDKs shaped
// alike implement), matched by its methods so as not to import the SDK.
type sdkError interface {
	Code() string
	Message() string
	OrigErr() error
}

// describeSDKError returns err's text on one line: an AWS error as its
// code and message (and the HTTP status or the cause), a missing
// credential as what to set.
func describeSDKError(err error) string {
	var se sdkError
	if !errors.As(err, &se) {
		return oneLine(err.Error())
	}
	if se.Code() == "NoCredentialProviders" {
		return "no credentials: give accesskey and secretkey, set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or run with an instance or pod role"
	}
	msg := se.Code()
	if m := strings.TrimSuffix(oneLine(se.Message()), "."); m != "" {
		msg += ": " + m
	}
	if sc, ok := se.(interface{ StatusCode() int }); ok && sc.StatusCode() != 0 {
		msg += fmt.Sprintf(" (HTTP %d)", sc.StatusCode())
	}
	if cause := se.OrigErr(); cause != nil {
		msg += ": " + describeSDKError(cause)
	}
	return msg
}

// oneLine joins the lines of s, trimmed, with "; ".
func oneLine(s string) string {
	var lines []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "; ")
}
