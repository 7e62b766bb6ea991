package storage

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	bolt "go.etcd.io/bbolt"
)

// The index says which layout it has (its schema version) and which store
// it describes, in its meta bucket.
var (
	bucketMeta = []byte("meta")   // key -> value
	keySchema  = []byte("schema") // decimal schema version
	keyStore   = []byte("store")  // StoreIdentity (JSON)
)

// Schema versions of the index.
const (
	// SchemaUnversioned is the layout of indexes written before the index
	// had a version: no meta bucket. It is migrated in place when opened.
	SchemaUnversioned = 1
	// SchemaJSONTags is the layout of indexes whose tag records are all
	// JSON, which versions before schema 3 read and write: the meta bucket
	// holds the schema version and the store's identity.
	SchemaJSONTags = 2
	// Schema is the layout this version writes: schema 2's, with tag
	// records in their binary form (tagrecord.go).
	Schema = 3
)

// ErrNewerSchema is returned by OpenIndex for an index written by a newer
// docker-mirror, which this version must not change.
var ErrNewerSchema = errors.New("index written by a newer docker-mirror")

// migrations[v] turns an index of schema v into one of schema v+1, in the
// open's transaction.
var migrations = map[int]func(tx *bolt.Tx) error{
	// Version 2 adds the meta bucket; the store's identity stays unknown
	// until a server of this version records it.
	SchemaUnversioned: func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketMeta)
		return err
	},
	// Version 3 writes tag records in binary. The records already there
	// stay JSON, which this version reads, until they are written again:
	// the upgrade rewrites nothing, and only the version, which keeps an
	// older docker-mirror from reading a binary record as a corrupt one,
	// changes.
	SchemaJSONTags: func(*bolt.Tx) error { return nil },
}

// schemaOf reads an index's schema version.
func schemaOf(tx *bolt.Tx) (int, error) {
	b := tx.Bucket(bucketMeta)
	if b == nil {
		return SchemaUnversioned, nil
	}
	raw := b.Get(keySchema)
	if raw == nil {
		return SchemaUnversioned, nil
	}
	v, err := strconv.Atoi(string(raw))
	if err != nil || v < SchemaUnversioned {
		return 0, fmt.Errorf("corrupt schema version %q", raw)
	}
	return v, nil
}

// checkSchema refuses an index of a newer schema before anything in it is
// changed.
func checkSchema(db *bolt.DB) error {
	return db.View(func(tx *bolt.Tx) error {
		v, err := schemaOf(tx)
		if err != nil {
			return err
		}
		if v > Schema {
			return fmt.Errorf("%w (schema %d; this version reads up to %d): run that version or a newer one, or restore the index backed up before the upgrade", ErrNewerSchema, v, Schema)
		}
		return nil
	})
}

// migrate brings an index of an older schema to Schema, one version at a
// time, and stamps it.
func migrate(tx *bolt.Tx) error {
	v, err := schemaOf(tx)
	if err != nil {
		return err
	}
	for ; v < Schema; v++ {
		if err := migrations[v](tx); err != nil {
			return fmt.Errorf("migrating from schema %d: %w", v, err)
		}
	}
	b, err := tx.CreateBucketIfNotExists(bucketMeta)
	if err != nil {
		return err
	}
	if string(b.Get(keySchema)) == strconv.Itoa(Schema) {
		return nil
	}
	return b.Put(keySchema, []byte(strconv.Itoa(Schema)))
}

// SchemaVersion is the index's schema version (Schema once open).
func (ix *Index) SchemaVersion() (int, error) {
	var v int
	err := ix.db.View(func(tx *bolt.Tx) (err error) {
		v, err = schemaOf(tx)
		return err
	})
	return v, err
}

// StoreIdentity names the store an index describes, so that offline
// commands check the index against that store and no other.
type StoreIdentity struct {
	// Kind is "registry" for a destination registry, else the embedded
	// store's storage driver (filesystem, s3aws, ...); "" if unknown.
	Kind string `json:"kind"`
	// Location is where: the registry's URL with its prefix, the bucket
	// and prefix, or the filesystem root ("" for the data directory).
	Location string `json:"location,omitempty"`
}

// KindRegistry is the Kind of a destination registry.
const KindRegistry = "registry"

// Known reports whether the identity was recorded.
func (id StoreIdentity) Known() bool { return id.Kind != "" }

// String describes the store for messages.
func (id StoreIdentity) String() string {
	switch {
	case id.Kind == "":
		return "an unrecorded store"
	case id.Kind == KindRegistry:
		return "the destination registry " + id.Location
	case id.Kind == "filesystem" && id.Location == "":
		return "the filesystem store in the data directory"
	case id.Location == "":
		return "the " + id.Kind + " store"
	default:
		return "the " + id.Kind + " store at " + id.Location
	}
}

// Store returns the identity of the store the index describes, as the
// last server recorded it; unknown (Known false) for an index no server
// of this version has opened yet.
func (ix *Index) Store() (StoreIdentity, error) {
	var id StoreIdentity
	err := ix.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMeta)
		if b == nil {
			return nil
		}
		if raw := b.Get(keyStore); raw != nil {
			if err := json.Unmarshal(raw, &id); err != nil {
				return fmt.Errorf("index: corrupt store identity %q: %w", raw, err)
			}
		}
		return nil
	})
	return id, err
}

// SetStore records the identity of the store the index describes. The
// records PublishRecords wrote are the other store's: a later
// PublishRecords writes them to this one.
func (ix *Index) SetStore(id StoreIdentity) error {
	raw, err := json.Marshal(id)
	if err != nil {
		return err
	}
	return ix.write(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if err := b.Delete(keyPublished); err != nil {
			return err
		}
		return b.Put(keyStore, raw)
	})
}
