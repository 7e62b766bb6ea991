package lifecycle_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"

	"github.com/docker-mirror/docker-mirror/lifecycle"
	"github.com/docker-mirror/docker-mirror/storage"
)

// failingReads is a storage driver whose reads of paths containing fail
// fail (not as missing content).
type failingReads struct {
	storagedriver.StorageDriver
	fail string
}

var errDisk = errors.New("disk on fire")

func (d failingReads) Reader(ctx context.Context, path string, offset int64) (io.ReadCloser, error) {
	if strings.Contains(path, d.fail) {
		return nil, errDisk
	}
	return d.StorageDriver.Reader(ctx, path, offset)
}

// The list reads the manifests under each image (here an index and its
// children) several at once, the first of them while it reads the index;
// a store failure on any of them fails the list rather than showing a
// partial image, as reading one by one did.
func TestImagesStoreFailure(t *testing.T) {
	e := newEnv(t)
	a, _, _ := seedThree(t, e)
	var child string
	for d := range a.manifests {
		if d != a.digest {
			child = d
			break
		}
	}
	for _, d := range []string{a.digest, child} {
		hex := d[strings.Index(d, ":")+1:]
		failing := storage.NewDriverStore(failingReads{e.store.Driver(), hex})
		col := lifecycle.New(failing, e.m.Index, lifecycle.Options{Now: e.m.Clock.Now})
		if list, err := col.Images(t.Context()); !errors.Is(err, errDisk) || !strings.Contains(err.Error(), d) {
			t.Fatalf("Images = %d images, %v; want the failure reading %s", len(list), err, d)
		}
	}
	// The same store answering lists all three.
	if list := images(t, lifecycle.New(storage.NewDriverStore(e.store.Driver()), e.m.Index, lifecycle.Options{Now: e.m.Clock.Now})); len(list) != 3 {
		t.Fatalf("Images = %+v, want 3", list)
	}
}
