//go:build e2e

package cluster_test

import (
	"testing"

	"github.com/docker-mirror/docker-mirror/storage/s3test"
)

// bucket is one bucket of a real S3 server (versitygw on loopback) that
// every replica uses as its store.
func bucket(t *testing.T) map[string]map[string]any {
	// With a CA bundle in the environment, aws-sdk-go sets it on an HTTP
	// client every new session shares, racing with the replicas already
	// serving; loopback S3 over HTTP needs none.
	t.Setenv("AWS_CA_BUNDLE", "")
	srv := s3test.Start(t)
	return srv.Storage(srv.NewBucket(t))
}

func TestHerdAcrossReplicasOnS3(t *testing.T)   { testHerd(t, bucket) }
func TestOwnerDeadWhileIdleOnS3(t *testing.T)   { testOwnerDeadWhileIdle(t, bucket) }
func TestOwnerDiesMidDownloadOnS3(t *testing.T) { testOwnerDiesMidDownload(t, bucket) }
