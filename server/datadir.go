package server

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/storage"
)

// The data directory may be shared with other files (--data names any
// directory), so the mirror deletes without looking only under its own
// directory, storage.OwnDir: the spool and the store's uploads in
// progress. A marker there says the directory is the mirror's; a
// directory with neither the marker nor an index, and not empty, is
// refused rather than written to.

// MarkerPath is the file that marks a data directory as docker-mirror's.
func MarkerPath(cfg config.Config) string {
	return filepath.Join(cfg.Data, storage.OwnDir, "marker")
}

// SpoolPath is the directory blob downloads are spooled in, emptied at
// every start.
func SpoolPath(cfg config.Config) string {
	return filepath.Join(cfg.Data, storage.OwnDir, "spool")
}

const markerText = `This is a docker-mirror data directory: index.db is its index, blobs/ its
store, and .docker-mirror/ its scratch space (spool, uploads in progress),
which docker-mirror empties at every start.
`

// legacySpool is where versions before storage.OwnDir spooled downloads,
// and legacySpoolName the names they gave the files (os.CreateTemp with
// "blob-*").
const legacySpool = "tmp"

var legacySpoolName = regexp.MustCompile(`^blob-[0-9]+$`)

// claimData makes sure cfg.Data may be used, before anything in it
// changes: the directory is created if missing; one with the mirror's
// marker is used as is; one with an index but no marker is an older
// version's (legacy: the caller migrates it once the index opens); an
// empty one (lost+found aside) is marked; anything else is refused.
func claimData(cfg config.Config) (legacy bool, err error) {
	dir := cfg.Data
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, fmt.Errorf("data directory: %w", err)
	}
	if _, err := os.Stat(MarkerPath(cfg)); err == nil {
		return false, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("data directory: %w", err)
	}
	if _, err := os.Stat(IndexPath(cfg)); err == nil {
		return true, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("data directory: %w", err)
	}
	names, err := readNames(dir, 2)
	if err != nil {
		return false, fmt.Errorf("data directory: %w", err)
	}
	// A freshly formatted ext4 volume (a Kubernetes volume, say) holds
	// only lost+found: as good as empty.
	names = slices.DeleteFunc(names, func(n string) bool { return n == "lost+found" })
	if len(names) > 0 {
		return false, fmt.Errorf("data directory %s is not empty and is not docker-mirror's (no index.db, no %s/marker); nothing in it was changed: give --data an empty or new directory",
			dir, storage.OwnDir)
	}
	return false, writeMarker(cfg)
}

// indexLost reports whether cfg.Data is the mirror's (its marker) but its
// index is missing or empty (deleted, or a disk that filled as it was
// made): the index is made at the first start, right after the marker.
func indexLost(cfg config.Config) bool {
	if _, err := os.Stat(MarkerPath(cfg)); err != nil {
		return false
	}
	fi, err := os.Stat(IndexPath(cfg))
	return errors.Is(err, fs.ErrNotExist) || err == nil && fi.Size() == 0
}

// readNames returns up to n names of the entries of dir.
func readNames(dir string, n int) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names, err := f.Readdirnames(n)
	if errors.Is(err, io.EOF) {
		err = nil
	}
	return names, err
}

func writeMarker(cfg config.Config) error {
	if err := os.MkdirAll(filepath.Dir(MarkerPath(cfg)), 0o755); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	if err := os.WriteFile(MarkerPath(cfg), []byte(markerText), 0o644); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	return nil
}

// migrateSpool removes what an older version left in its spool, DIR/tmp,
// once the index has proved the directory to be the mirror's: the files
// named as it named them, and DIR/tmp if that empties it. Files it did
// not name as its own stay.
func migrateSpool(cfg config.Config) error {
	tmp := filepath.Join(cfg.Data, legacySpool)
	entries, err := os.ReadDir(tmp)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("data directory: %w", err)
	}
	kept := 0
	for _, e := range entries {
		if !e.Type().IsRegular() || !legacySpoolName.MatchString(e.Name()) {
			kept++
			continue
		}
		if err := os.Remove(filepath.Join(tmp, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("data directory: removing an old spool file: %w", err)
		}
	}
	if err == nil && kept == 0 {
		if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("data directory: %w", err)
		}
	}
	return nil
}

// cleanSpool empties the spool: files of downloads interrupted by a crash
// are never reused.
func cleanSpool(cfg config.Config) error {
	spool := SpoolPath(cfg)
	if err := os.RemoveAll(spool); err != nil {
		return fmt.Errorf("cleaning %s: %w", spool, err)
	}
	if err := os.MkdirAll(spool, 0o755); err != nil {
		return fmt.Errorf("spool directory: %w", err)
	}
	return nil
}
