package activities

import "time"

// ManifestVersion is the version of the manifest format this code writes.
const ManifestVersion = 1

// Artifact kinds.
const (
	KindPostgres = "postgres"
	KindRedis    = "redis"
	KindSQLite   = "sqlite"
	KindListing  = "listing"
)

// Artifact is one stored file of a backup set, as recorded in its manifest. Every
// backup activity returns one; the workflow collects them into the Manifest.
type Artifact struct {
	// Kind of source: postgres, redis, sqlite, listing.
	Kind string `json:"kind"`
	// Source names what was backed up: the database, the Redis instance, the bucket.
	Source string `json:"source"`
	// Key in the backup store, relative to the store's prefix.
	Key string `json:"key"`
	// Size of the stored bytes.
	Size int64 `json:"size"`
	// RawSize is the size before compression.
	RawSize int64 `json:"rawSize"`
	// SHA256 (hex) of the stored bytes, so a download can be checked without decoding.
	SHA256 string `json:"sha256"`
	// Compression of the stored bytes: "zstd" or "none".
	Compression string `json:"compression"`
	// Encryption of the stored bytes: "none", or "age" (the compressed bytes
	// encrypted with age to the recipients of RecipientFingerprints; see age.go).
	Encryption string `json:"encryption"`
	// RecipientFingerprints name the age recipients an "age" artifact is
	// encrypted to: "sha256:" and the hex SHA-256 of each public key's text
	// (AgeFingerprint). Never a key; empty when not encrypted.
	RecipientFingerprints []string `json:"recipientFingerprints,omitempty"`
	// SourceVersion is the server version that produced it ("PostgreSQL 15.20", "redis 7.0.15").
	SourceVersion string `json:"sourceVersion,omitempty"`
	// RowCounts of key tables, taken in the same snapshot as the dump (postgres).
	RowCounts map[string]int64 `json:"rowCounts,omitempty"`
	// KeyCount is the number of keys in the dump (redis).
	KeyCount int64 `json:"keyCount,omitempty"`
	// Objects and ObjectBytes describe a listing artifact's bucket.
	Objects     int64 `json:"objects,omitempty"`
	ObjectBytes int64 `json:"objectBytes,omitempty"`
	// StartedAt and Duration of the step that produced it.
	StartedAt time.Time     `json:"startedAt"`
	Duration  time.Duration `json:"duration"`
}

// MirrorResult reports one bucket's incremental mirror run.
type MirrorResult struct {
	// Bucket mirrored, and the store prefix it was mirrored to.
	Bucket string `json:"bucket"`
	Prefix string `json:"prefix"`
	// Objects and Bytes at the source when listed.
	Objects int64 `json:"objects"`
	Bytes   int64 `json:"bytes"`
	// Copied and CopiedBytes: new or changed objects copied this run.
	Copied      int64 `json:"copied"`
	CopiedBytes int64 `json:"copiedBytes"`
	// Encryption of the mirrored objects: always "none" — the mirror is
	// incremental, comparing each copy's size and time with the source, and
	// is not encrypted even when the set's artifacts are (the listing is).
	// "" in manifests written before the field existed means the same.
	Encryption string `json:"encryption,omitempty"`
	// Listing is the artifact holding the source listing (key, size, etag per object)
	// that drills compare the mirror against.
	Listing Artifact `json:"listing"`
}

// Manifest describes one complete backup set. It is written last: a set without a
// manifest is incomplete and never used for a restore.
type Manifest struct {
	Version int    `json:"version"`
	SetID   string `json:"setId"`
	// CreatedAt is when the set was started; CompletedAt when the manifest was written.
	CreatedAt   time.Time `json:"createdAt"`
	CompletedAt time.Time `json:"completedAt"`
	// WorkflowID and RunID of the NightlyBackup run that wrote it.
	WorkflowID string `json:"workflowId"`
	RunID      string `json:"runId"`
	// Artifacts in a fixed order: postgres (by database), redis, sqlite, listings.
	Artifacts []Artifact `json:"artifacts"`
	// Mirrors: one per bucket.
	Mirrors []MirrorResult `json:"mirrors,omitempty"`
	// Warnings raised while the set was made (anomalies against the previous set).
	Warnings []string `json:"warnings,omitempty"`
}
