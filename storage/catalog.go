package storage

import (
	"bytes"
	"slices"

	bolt "go.etcd.io/bbolt"
)

// Repository is an upstream repository the index holds content of.
type Repository struct {
	Upstream string // e.g. docker.io
	Repo     string // e.g. library/nginx
}

// Repositories lists the upstream repositories that have content linked
// to them (every stored manifest and blob is linked to the repositories
// it was fetched for), in key order.
func (ix *Index) Repositories() ([]Repository, error) {
	var out []Repository
	err := ix.db.View(func(tx *bolt.Tx) error {
		c := linkRecordsOf(tx).Cursor()
		for k, _ := c.First(); k != nil; {
			at := bytes.LastIndexByte(k, '@')
			host, repo, ok := bytes.Cut(k[:max(at, 0)], []byte("/"))
			if at < 0 || !ok {
				k, _ = c.Next()
				continue
			}
			out = append(out, Repository{Upstream: string(host), Repo: string(repo)})
			// Skip the repository's other links: a digest is never
			// greater than "\xff".
			k, _ = c.Seek(append(bytes.Clone(k[:at+1]), 0xff))
		}
		return nil
	})
	return out, err
}

// HeldRepository returns a repository of upstream host, none of except,
// that has content linked to it, the first in key order; ok is false if
// there is none.
func (ix *Index) HeldRepository(host string, except ...string) (repo string, ok bool, err error) {
	prefix := []byte(host + "/")
	err = ix.db.View(func(tx *bolt.Tx) error {
		c := linkRecordsOf(tx).Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); {
			at := bytes.LastIndexByte(k, '@')
			if at < len(prefix) {
				k, _ = c.Next()
				continue
			}
			if r := string(k[len(prefix):at]); !slices.Contains(except, r) {
				repo, ok = r, true
				return nil
			}
			k, _ = c.Seek(append(bytes.Clone(k[:at+1]), 0xff))
		}
		return nil
	})
	return repo, ok, err
}
