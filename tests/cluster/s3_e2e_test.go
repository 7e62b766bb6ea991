//go:build e2e

package cluster_test

import (
	"testing"

	"github.com/docker-mirror/docker-mirror/lease"
	"github.com/docker-mirror/docker-mirror/storage/s3test"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
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

// TestLeasesHerdOnReplicasThatDisagreeOnS3: the leases in the bucket of
// the real S3 server, through the client the configuration makes.
func TestLeasesHerdOnReplicasThatDisagreeOnS3(t *testing.T) {
	testLeasesHerd(t, bucket, func(st map[string]map[string]any) lease.Objects {
		objs, err := lease.NewS3(st["s3"])
		if err != nil {
			t.Fatal(err)
		}
		return objs
	})
}

// TestLeasesProbedOnS3: replicas on versitygw find at start, from the
// configuration alone, that it honours conditional writes.
func TestLeasesProbedOnS3(t *testing.T) {
	rs := startCluster(t, 2, fixture.StartUpstream(t), bucket, nil)
	for _, r := range rs {
		if v := r.metric(t, "docker_mirror_cluster_leases_supported", nil); v != 1 {
			t.Errorf("%s: docker_mirror_cluster_leases_supported %v, want 1", r.url, v)
		}
	}
}
