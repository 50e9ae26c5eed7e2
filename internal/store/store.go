// Package store is the backup store: where backup sets, the object mirror and
// safety snapshots are written (layout in docs: <prefix>/sets/<id>/…,
// <prefix>/mirror/<bucket>/<key>, <prefix>/safety/…).
//
// Two backends implement Store: S3 (AWS, MinIO, R2, B2 … through
// aws-sdk-go-v2) and FS (a local directory, for laptops). Both pass the one
// conformance suite in package storetest.
//
// Errors: every backend maps its own not-found, access-denied, no-such-bucket
// and bad-credential errors to the sentinels below, wrapped with the
// operation and key ("get sets/x/manifest.json: not found"), so callers test
// them with errors.Is and decide retries with IsPermanent. Error text never
// holds a credential.
package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"
)

// Store is a flat key/value object store. Keys are slash-separated paths
// relative to the store's root (for S3: relative to S3Config.Prefix); see
// CheckKey for which keys are valid.
//
// A Store is safe for concurrent use. Every method checks its key first: an
// invalid key is an error matching ErrInvalidKey that names the key.
type Store interface {
	// Put streams r to key and returns the number of bytes stored.
	//
	// The object is visible (Stat, List, Get) only after Put returns nil, and
	// then with exactly the bytes read from r. A failed or cancelled Put
	// leaves nothing behind: no partial object, no orphaned upload parts, and
	// an object previously stored under key stays as it was. r is read to EOF
	// or until it returns an error (which Put returns wrapped, matchable with
	// errors.Is); Put does not close r. Cancelling ctx makes Put return
	// ctx's error once the current Read of r returns, so a reader that can
	// block forever must itself honour ctx (an io.Pipe whose producer closes
	// it with the error does).
	Put(ctx context.Context, key string, r io.Reader, opts PutOptions) (int64, error)
	// Get opens the object for reading; the caller closes the reader. A
	// missing key is an error matching ErrNotFound.
	Get(ctx context.Context, key string) (io.ReadCloser, error)
	// Stat returns the object's info. A missing key is an error matching
	// ErrNotFound.
	Stat(ctx context.Context, key string) (ObjectInfo, error)
	// List calls fn for every object whose key starts with prefix (plain
	// string prefix, "" for all), in lexical byte order of the keys, one call
	// at a time. An fn error stops the walk and List returns that error
	// unchanged. Objects put or deleted during the walk may or may not be
	// seen. A prefix that no valid key can start with is an ErrInvalidKey.
	List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error
	// Delete removes key. Deleting a missing key is not an error, so Delete
	// is idempotent.
	Delete(ctx context.Context, key string) error
}

// ObjectInfo describes one stored object.
type ObjectInfo struct {
	// Key is relative to the store's root, as passed to Put.
	Key string
	// Size is the object's length in bytes.
	Size int64
	// ModTime is when the object was last stored.
	ModTime time.Time
}

// PutOptions tunes one Put. The zero value is valid.
type PutOptions struct {
	// ContentType is stored with the object where the backend keeps one (S3);
	// "" means application/octet-stream.
	ContentType string
	// SizeHint is the expected length of r, or -1 (or 0) when unknown. It
	// only tunes the upload (S3 raises the part size so that a very large
	// object fits in 10,000 parts); the stored size is what r yields.
	SizeHint int64
	// Progress, when not nil, is called with the running total of bytes
	// stored so far, for activity heartbeats. Calls never overlap, the values
	// never decrease, and after a successful Put the last call reported the
	// returned size. S3 reports once per uploaded part, FS once per write.
	// Progress must not block for long: uploads wait for it.
	Progress func(bytes int64)
}

// The shared errors. Backends wrap them with the operation and key; test
// with errors.Is.
var (
	// ErrNotFound: the object does not exist.
	ErrNotFound = errors.New("not found")
	// ErrAccessDenied: the credentials are valid but not allowed to do this.
	ErrAccessDenied = errors.New("access denied")
	// ErrBadCredentials: the store rejected the credentials themselves
	// (unknown access key, wrong secret key).
	ErrBadCredentials = errors.New("bad credentials")
	// ErrNoSuchBucket: the bucket does not exist. It deliberately does not
	// match ErrNotFound: a caller treating "no manifest" as "incomplete set"
	// must not take a missing bucket for an empty one.
	ErrNoSuchBucket = errors.New("no such bucket")
	// ErrInvalidBucket: the bucket name breaks the naming rules.
	ErrInvalidBucket = errors.New("invalid bucket name")
	// ErrInvalidKey: the key (or List prefix) breaks the rules of CheckKey,
	// or the backend cannot store it (e.g. FS: a key below another object).
	ErrInvalidKey = errors.New("invalid key")
	// ErrTooLarge: the object does not fit the backend's limits (S3: 10,000
	// parts of PartSize).
	ErrTooLarge = errors.New("object too large")
)

var permanent = []error{
	ErrNotFound, ErrAccessDenied, ErrBadCredentials,
	ErrNoSuchBucket, ErrInvalidBucket, ErrInvalidKey, ErrTooLarge,
}

// IsPermanent reports whether err is one that retrying cannot fix: not
// found, access denied, bad credentials, no such bucket, invalid bucket
// name, invalid key, too large. Network errors, timeouts, throttling, 5xx
// answers and context cancellation are not permanent (a cancelled step is
// the caller's decision, not a verdict on the store). Activities turn
// permanent errors into non-retryable application errors and leave the rest
// to the Temporal retry policy.
func IsPermanent(err error) bool {
	if err == nil {
		return false
	}
	for _, p := range permanent {
		if errors.Is(err, p) {
			return true
		}
	}
	return false
}

// MaxKeyLen is the longest key in bytes (S3's limit; for S3 it includes the
// prefix).
const MaxKeyLen = 1024

// tmpPrefix starts the names of FS temporary files. A key segment may not
// start with it, so no key can name a temporary file on any backend.
const tmpPrefix = ".drflow-tmp-"

// CheckKey returns nil when key is a valid object key, or an error matching
// ErrInvalidKey that names the key and says why.
//
// A valid key is non-empty UTF-8 of at most MaxKeyLen bytes without control
// characters (NUL included), does not start with "/", and has no empty, "."
// or ".." segment (so no "//" and no trailing "/") and no segment starting
// with ".drflow-tmp-". The rules are the same on every backend, so a key
// means the same object on S3 as on a file system and can never escape the
// FS root.
func CheckKey(key string) error {
	if why := keyProblem(key, false); why != "" {
		return fmt.Errorf("%w %q: %s", ErrInvalidKey, key, why)
	}
	return nil
}

// checkPrefix validates a List prefix: "" is valid, and the last segment may
// be partial (any text a valid segment can start with).
func checkPrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	if why := keyProblem(prefix, true); why != "" {
		return fmt.Errorf("%w: prefix %q: %s", ErrInvalidKey, prefix, why)
	}
	return nil
}

func keyProblem(key string, isPrefix bool) string {
	switch {
	case key == "":
		return "is empty"
	case len(key) > MaxKeyLen:
		return fmt.Sprintf("is %d bytes long, more than %d", len(key), MaxKeyLen)
	case !utf8.ValidString(key):
		return "is not valid UTF-8"
	case strings.IndexFunc(key, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0:
		return "contains a control character"
	case key[0] == '/':
		return "starts with /"
	}
	segs := strings.Split(key, "/")
	for i, seg := range segs {
		last := i == len(segs)-1
		switch {
		case isPrefix && last:
			// A partial segment: "sets/2026-" or "sets/".
			if strings.HasPrefix(seg, tmpPrefix) {
				return "has a segment starting with " + tmpPrefix + " (reserved)"
			}
		case seg == "" && last:
			return "ends with /"
		case seg == "":
			return "has an empty segment (//)"
		case seg == "." || seg == "..":
			return "has a " + seg + " segment"
		case strings.HasPrefix(seg, tmpPrefix):
			return "has a segment starting with " + tmpPrefix + " (reserved)"
		}
	}
	return ""
}

// opError wraps err as "<op> <key>: err".
func opError(op, key string, err error) error {
	if key == "" {
		return fmt.Errorf("%s: %w", op, err)
	}
	return fmt.Errorf("%s %s: %w", op, key, err)
}
