package store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/kohakku/drflow/internal/stack"
	"github.com/kohakku/drflow/internal/stack/stacktest"
	"github.com/kohakku/drflow/internal/store"
	"github.com/kohakku/drflow/internal/store/storetest"
)

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// ---- file system ----

func newFS(t *testing.T) *store.FS {
	t.Helper()
	s, err := store.NewFS(filepath.Join(t.TempDir(), "backups"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestFSConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s := newFS(t)
		t.Cleanup(func() { checkNoTempFiles(t, s.Root()) })
		return s
	})
}

// checkNoTempFiles fails when a Put left a temporary file behind.
func checkNoTempFiles(t *testing.T, root string) {
	t.Helper()
	filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), ".drflow-tmp-") {
			t.Errorf("temporary file left behind: %s", path)
		}
		return nil
	})
}

func TestFSFiles(t *testing.T) {
	ctx := testCtx(t)
	s := newFS(t)
	if _, err := s.Put(ctx, "sets/1/manifest.json", strings.NewReader("{}"), store.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(s.Root(), "sets", "1", "manifest.json")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("key does not map to %s: %v", path, err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("object mode %v, want 0600 (backups hold database dumps)", fi.Mode().Perm())
	}
	di, err := os.Stat(filepath.Dir(path))
	if err != nil || di.Mode().Perm() != 0o700 {
		t.Errorf("directory mode %v (%v), want 0700", di.Mode().Perm(), err)
	}

	// What a crash mid-Put leaves is never listed, and no key can name it.
	tmp := filepath.Join(s.Root(), "sets", "1", ".drflow-tmp-12345")
	if err := os.WriteFile(tmp, []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	var keys []string
	if err := s.List(ctx, "", func(oi store.ObjectInfo) error { keys = append(keys, oi.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0] != "sets/1/manifest.json" {
		t.Errorf("List = %q, want only the manifest", keys)
	}
	if _, err := s.Stat(ctx, "sets/1/.drflow-tmp-12345"); !errors.Is(err, store.ErrInvalidKey) {
		t.Errorf("Stat of a temporary file = %v, want ErrInvalidKey", err)
	}
	os.Remove(tmp)

	// Delete prunes the directories it empties.
	if err := s.Delete(ctx, "sets/1/manifest.json"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(s.Root(), "sets")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("emptied directory kept: %v", err)
	}
	if _, err := os.Stat(s.Root()); err != nil {
		t.Errorf("root removed: %v", err)
	}
}

func TestFSKeyBelowObject(t *testing.T) {
	ctx := testCtx(t)
	s := newFS(t)
	if _, err := s.Put(ctx, "a", strings.NewReader("1"), store.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err := s.Put(ctx, "a/b", strings.NewReader("2"), store.PutOptions{})
	if !errors.Is(err, store.ErrInvalidKey) || !store.IsPermanent(err) {
		t.Fatalf("Put below an object = %v, want a permanent ErrInvalidKey", err)
	}
	if _, err := s.Put(ctx, "c/d", strings.NewReader("3"), store.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err = s.Put(ctx, "c", strings.NewReader("4"), store.PutOptions{})
	if !errors.Is(err, store.ErrInvalidKey) {
		t.Fatalf("Put over a directory = %v, want ErrInvalidKey", err)
	}
	checkNoTempFiles(t, s.Root())
}

func TestNewFSOnFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "file")
	os.WriteFile(f, nil, 0o600)
	if _, err := store.NewFS(f); err == nil {
		t.Fatal("NewFS on a file succeeded")
	}
}

// ---- S3 on a real MinIO ----

type minioStore struct {
	m      *stack.MinIO
	bucket string
	n      atomic.Int64
}

func newMinIO(t testing.TB) *minioStore {
	t.Helper()
	m := stacktest.MinIO(t)
	ms := &minioStore{m: m, bucket: "backups"}
	if err := m.MakeBucket(testCtx(t), ms.bucket); err != nil {
		t.Fatal(err)
	}
	return ms
}

func (ms *minioStore) config() store.S3Config {
	return store.S3Config{
		Bucket:          ms.bucket,
		Endpoint:        ms.m.URL(),
		Region:          ms.m.Region(),
		AccessKeyID:     ms.m.AccessKey(),
		SecretAccessKey: ms.m.SecretKey(),
		ForcePathStyle:  true,
	}
}

// store returns an S3 store under a prefix no other store of ms uses.
func (ms *minioStore) store(t testing.TB, mod ...func(*store.S3Config)) *store.S3 {
	t.Helper()
	cfg := ms.config()
	cfg.Prefix = fmt.Sprintf("drflow/t%d", ms.n.Add(1))
	for _, f := range mod {
		f(&cfg)
	}
	s, err := store.NewS3(testCtx(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// pendingUploads lists multipart uploads of key with minio-go, a client
// independent of the store under test. MinIO lists uploads per object key.
func (ms *minioStore) pendingUploads(t testing.TB, key string) []string {
	t.Helper()
	c, err := ms.m.Client()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for u := range c.ListIncompleteUploads(testCtx(t), ms.bucket, key, true) {
		if u.Err != nil {
			t.Fatalf("list incomplete uploads: %v", u.Err)
		}
		ids = append(ids, u.UploadID)
	}
	return ids
}

func TestS3Conformance(t *testing.T) {
	ms := newMinIO(t)
	storetest.Run(t, func(t *testing.T) store.Store { return ms.store(t) })
}

func TestS3Check(t *testing.T) {
	ms := newMinIO(t)
	if err := ms.store(t).Check(testCtx(t)); err != nil {
		t.Fatalf("Check of a good bucket: %v", err)
	}
	// Check leaves nothing behind: no probe object, no pending upload.
	c, _ := ms.m.Client()
	for obj := range c.ListObjects(testCtx(t), ms.bucket, minio.ListObjectsOptions{Recursive: true}) {
		t.Errorf("Check left object %q (%v)", obj.Key, obj.Err)
	}
	if ids := ms.pendingUploads(t, "drflow/t1/.drflow-check"); len(ids) != 0 {
		t.Errorf("Check left uploads %q", ids)
	}

	const wrongSecret = "wrong-secret-Zq8Xv3Lm0Pw7"
	for _, tc := range []struct {
		name     string
		mod      func(*store.S3Config)
		sentinel error
		want     []string // in the message
	}{
		{"wrong secret key", func(c *store.S3Config) { c.SecretAccessKey = wrongSecret },
			store.ErrBadCredentials, []string{"secret access key", "S3_SECRET_ACCESS_KEY", ms.m.URL()}},
		{"unknown access key", func(c *store.S3Config) { c.AccessKeyID = "AKIDNOSUCHKEY0000000" },
			store.ErrBadCredentials, []string{"access key id", "S3_ACCESS_KEY_ID", ms.m.URL()}},
		{"missing bucket", func(c *store.S3Config) { c.Bucket = "no-such-bucket" },
			store.ErrNoSuchBucket, []string{`bucket "no-such-bucket" does not exist at ` + ms.m.URL() + " (S3_BUCKET)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := ms.store(t, tc.mod)
			err := s.Check(testCtx(t))
			if !errors.Is(err, tc.sentinel) || !store.IsPermanent(err) {
				t.Fatalf("Check = %v, want a permanent %v", err, tc.sentinel)
			}
			if errors.Is(err, store.ErrNotFound) {
				t.Errorf("Check = %v matches ErrNotFound: a missing bucket must not read as a missing object", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Check error %q does not contain %q", err, w)
				}
			}
			for _, secret := range []string{wrongSecret, ms.m.SecretKey()} {
				if strings.Contains(err.Error(), secret) || strings.Contains(fmt.Sprintf("%+v %#v", err, err), secret) {
					t.Fatalf("Check error holds a secret key: %v", err)
				}
			}
			t.Logf("Check: %v", err)

			// Every operation agrees, and none passes for "not found".
			_, err = s.Put(testCtx(t), "k", strings.NewReader("x"), store.PutOptions{})
			if !errors.Is(err, tc.sentinel) || !store.IsPermanent(err) {
				t.Errorf("Put = %v, want a permanent %v", err, tc.sentinel)
			}
			_, err = s.Stat(testCtx(t), "k")
			if !store.IsPermanent(err) || errors.Is(err, store.ErrNotFound) {
				t.Errorf("Stat = %v, want permanent, not ErrNotFound", err)
			}
			if tc.sentinel == store.ErrNoSuchBucket && !errors.Is(err, store.ErrNoSuchBucket) {
				t.Errorf("Stat = %v, want ErrNoSuchBucket", err)
			}
			_, err = s.Get(testCtx(t), "k")
			if !errors.Is(err, tc.sentinel) || !store.IsPermanent(err) {
				t.Errorf("Get = %v, want a permanent %v", err, tc.sentinel)
			}
			err = s.List(testCtx(t), "", func(store.ObjectInfo) error { return nil })
			if !errors.Is(err, tc.sentinel) || !store.IsPermanent(err) {
				t.Errorf("List = %v, want a permanent %v", err, tc.sentinel)
			}
		})
	}
}

func TestS3InvalidBucketName(t *testing.T) {
	for _, name := range []string{"Bad_Bucket", "ab", "-leading", "has..dots", "192.168.1.1", strings.Repeat("b", 64)} {
		cfg := store.S3Config{Bucket: name, Endpoint: "http://127.0.0.1:9000", AccessKeyID: "a", SecretAccessKey: "b"}
		_, err := store.NewS3(context.Background(), cfg)
		if !errors.Is(err, store.ErrInvalidBucket) || !store.IsPermanent(err) {
			t.Errorf("NewS3(bucket %q) = %v, want a permanent ErrInvalidBucket", name, err)
			continue
		}
		if !strings.Contains(err.Error(), fmt.Sprintf("%q", name)) || !strings.Contains(err.Error(), "S3_BUCKET") {
			t.Errorf("NewS3 error %q does not name the bucket and S3_BUCKET", err)
		}
	}
}

func TestNewS3Config(t *testing.T) {
	good := store.S3Config{Bucket: "b-1", Endpoint: "http://127.0.0.1:9000", AccessKeyID: "id", SecretAccessKey: "sk"}
	for _, tc := range []struct {
		name string
		mod  func(*store.S3Config)
	}{
		{"endpoint with credentials", func(c *store.S3Config) { c.Endpoint = "http://id:" + c.SecretAccessKey + "@host:9000" }},
		{"endpoint scheme", func(c *store.S3Config) { c.Endpoint = "ftp://host" }},
		{"access key without secret", func(c *store.S3Config) { c.SecretAccessKey = "" }},
		{"secret without access key", func(c *store.S3Config) { c.AccessKeyID = "" }},
		{"part size", func(c *store.S3Config) { c.PartSize = 1 << 20 }},
		{"concurrency", func(c *store.S3Config) { c.Concurrency = -1 }},
		{"prefix", func(c *store.S3Config) { c.Prefix = "a/../b" }},
	} {
		cfg := good
		tc.mod(&cfg)
		_, err := store.NewS3(context.Background(), cfg)
		if err == nil {
			t.Errorf("%s: NewS3 succeeded", tc.name)
			continue
		}
		if strings.Contains(err.Error(), "sk") && strings.Contains(err.Error(), "id:sk") {
			t.Errorf("%s: error shows the secret: %v", tc.name, err)
		}
	}
	if _, err := store.NewS3(context.Background(), good); err != nil {
		t.Errorf("NewS3(%v): %v", good, err)
	}
}

func TestS3ConfigRedacted(t *testing.T) {
	const secret = "s3cr3t-Value-42"
	cfg := store.S3Config{Bucket: "b-1", AccessKeyID: "AKID", SecretAccessKey: secret}
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("cfg", "store", cfg)
	for _, out := range []string{
		fmt.Sprint(cfg), fmt.Sprintf("%v %+v %#v %s %q", cfg, cfg, cfg, cfg, cfg),
		fmt.Sprintf("%v", &cfg), logged.String(),
	} {
		if strings.Contains(out, secret) {
			t.Errorf("printed config holds the secret: %s", out)
		}
		if !strings.Contains(out, "AKID") || !strings.Contains(out, "redacted") {
			t.Errorf("printed config %s: want the access key id and a redacted secret", out)
		}
	}
}

func TestS3Unreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	endpoint := "http://" + l.Addr().String()
	l.Close() // nothing listens there now
	s, err := store.NewS3(testCtx(t), store.S3Config{
		Bucket: "backups", Endpoint: endpoint, AccessKeyID: "id", SecretAccessKey: "secret-key-x", ForcePathStyle: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	ops := map[string]func(context.Context) error{
		"Check": s.Check,
		"Put": func(ctx context.Context) error {
			_, err := s.Put(ctx, "k", strings.NewReader("x"), store.PutOptions{})
			return err
		},
		"Stat": func(ctx context.Context) error { _, err := s.Stat(ctx, "k"); return err },
		"List": func(ctx context.Context) error {
			return s.List(ctx, "", func(store.ObjectInfo) error { return nil })
		},
	}
	for name, op := range ops {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			err := op(testCtx(t))
			d := time.Since(start)
			if err == nil || store.IsPermanent(err) {
				t.Fatalf("%s on a dead endpoint = %v, want a transient error", name, err)
			}
			if d > 15*time.Second {
				t.Errorf("%s on a dead endpoint took %v, want a few seconds", name, d)
			}
			if strings.Contains(err.Error(), "secret-key-x") {
				t.Errorf("%s error holds the secret: %v", name, err)
			}
			if name == "Check" {
				for _, w := range []string{"cannot reach", endpoint, `"backups"`, "S3_ENDPOINT"} {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("Check error %q does not contain %q", err, w)
					}
				}
			}
			t.Logf("%s failed after %v: %v", name, d.Round(time.Millisecond), err)
		})
	}
}

func TestS3Prefix(t *testing.T) {
	ms := newMinIO(t)
	ctx := testCtx(t)
	s := ms.store(t, func(c *store.S3Config) { c.Prefix = "/kohakku/prod/" })
	if s.Prefix() != "kohakku/prod/" {
		t.Fatalf("Prefix() = %q", s.Prefix())
	}
	if _, err := s.Put(ctx, "sets/1/manifest.json", strings.NewReader("{}"), store.PutOptions{ContentType: "application/json"}); err != nil {
		t.Fatal(err)
	}
	c, _ := ms.m.Client()
	info, err := c.StatObject(ctx, ms.bucket, "kohakku/prod/sets/1/manifest.json", minio.StatObjectOptions{})
	if err != nil {
		t.Fatalf("object not stored under the prefix: %v", err)
	}
	if info.ContentType != "application/json" {
		t.Errorf("content type %q, want application/json", info.ContentType)
	}
	// Objects outside the prefix, or sharing only part of it, are not seen.
	for _, k := range []string{"kohakku/prodx/sets/2/manifest.json", "other/sets/3", "kohakku/production"} {
		if _, err := c.PutObject(ctx, ms.bucket, k, strings.NewReader("x"), 1, minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	var keys []string
	if err := s.List(ctx, "", func(oi store.ObjectInfo) error { keys = append(keys, oi.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0] != "sets/1/manifest.json" {
		t.Fatalf("List = %q, want [sets/1/manifest.json]", keys)
	}
	// A key that fits alone but not with the prefix is rejected.
	long := strings.Repeat("k", store.MaxKeyLen-5)
	if _, err := s.Put(ctx, long, strings.NewReader("x"), store.PutOptions{}); !errors.Is(err, store.ErrInvalidKey) {
		t.Errorf("Put of a key too long with the prefix = %v, want ErrInvalidKey", err)
	}
}

// TestS3NoOrphanedUploads checks with ListMultipartUploads that failed and
// cancelled multipart Puts leave no upload (and so no billed parts).
func TestS3NoOrphanedUploads(t *testing.T) {
	ms := newMinIO(t)
	s := ms.store(t, func(c *store.S3Config) { c.PartSize = 5 << 20; c.Concurrency = 3 })

	// The probe must see an upload when there is one.
	c, _ := ms.m.Client()
	core := minio.Core{Client: c}
	id, err := core.NewMultipartUpload(testCtx(t), ms.bucket, "probe/obj", minio.PutObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ids := ms.pendingUploads(t, "probe/obj"); len(ids) != 1 || ids[0] != id {
		t.Fatalf("pending uploads = %q, want [%s]: the check cannot see uploads", ids, id)
	}
	core.AbortMultipartUpload(testCtx(t), ms.bucket, "probe/obj", id)

	boom := errors.New("producer failed")
	cases := map[string]func(key string) error{
		"reader error": func(key string) error {
			_, err := s.Put(testCtx(t), key, storetest.FailingReader(1, 23<<20, boom), store.PutOptions{SizeHint: -1})
			if !errors.Is(err, boom) {
				return fmt.Errorf("Put = %v, want %v", err, boom)
			}
			return nil
		},
		"cancelled": func(key string) error {
			ctx, cancel := context.WithCancel(testCtx(t))
			defer cancel()
			go func() { time.Sleep(300 * time.Millisecond); cancel() }()
			_, err := s.Put(ctx, key, storetest.NewGenerator(1, 1<<40), store.PutOptions{SizeHint: -1})
			if !errors.Is(err, context.Canceled) {
				return fmt.Errorf("Put = %v, want context.Canceled", err)
			}
			return nil
		},
		"impossible size hint": func(key string) error {
			_, err := s.Put(testCtx(t), key, strings.NewReader("x"), store.PutOptions{SizeHint: 10000*(5<<30) + 1})
			if !errors.Is(err, store.ErrTooLarge) || !store.IsPermanent(err) {
				return fmt.Errorf("Put with a SizeHint over 10,000 × 5 GiB = %v, want a permanent ErrTooLarge", err)
			}
			return nil
		},
	}
	for name, run := range cases {
		t.Run(name, func(t *testing.T) {
			key := "orphans/" + strings.ReplaceAll(name, " ", "-")
			if err := run(key); err != nil {
				t.Fatal(err)
			}
			if ids := ms.pendingUploads(t, s.Prefix()+key); len(ids) != 0 {
				t.Fatalf("pending multipart uploads after a failed Put: %q", ids)
			}
			if _, err := s.Stat(testCtx(t), key); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("Stat after failed Put = %v, want ErrNotFound", err)
			}
		})
	}
}

// TestS3PutAbortsStaleUploads: an upload of the same key left by an earlier Put whose
// abort failed (the store was down) is aborted by the next multipart Put that completes;
// another key's upload is left alone.
func TestS3PutAbortsStaleUploads(t *testing.T) {
	ms := newMinIO(t)
	s := ms.store(t, func(c *store.S3Config) { c.PartSize = 5 << 20 })
	c, _ := ms.m.Client()
	core := minio.Core{Client: c}
	key, other := "stale/obj", "stale/obj-other"
	for _, k := range []string{key, key, other} {
		if _, err := core.NewMultipartUpload(testCtx(t), ms.bucket, s.Prefix()+k, minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if ids := ms.pendingUploads(t, s.Prefix()+key); len(ids) != 2 {
		t.Fatalf("pending uploads of %s = %q, want the 2 stale ones", key, ids)
	}
	if _, err := s.Put(testCtx(t), key, storetest.NewGenerator(1, 11<<20), store.PutOptions{SizeHint: -1}); err != nil {
		t.Fatal(err)
	}
	if ids := ms.pendingUploads(t, s.Prefix()+key); len(ids) != 0 {
		t.Errorf("pending uploads of %s after a completed Put = %q, want none", key, ids)
	}
	if ids := ms.pendingUploads(t, s.Prefix()+other); len(ids) != 1 {
		t.Errorf("pending uploads of %s = %q, want its own one left alone", other, ids)
	}
}

// TestS3ErrorClassification feeds the S3 error answers MinIO's root user
// cannot produce (a policy denial, throttling, server errors) through the
// real client from a canned HTTP server, and checks which are permanent.
func TestS3ErrorClassification(t *testing.T) {
	for _, tc := range []struct {
		status    int
		code      string
		sentinel  error
		permanent bool
	}{
		{403, "AccessDenied", store.ErrAccessDenied, true},
		{403, "AllAccessDisabled", store.ErrAccessDenied, true},
		{403, "InvalidAccessKeyId", store.ErrBadCredentials, true},
		{403, "SignatureDoesNotMatch", store.ErrBadCredentials, true},
		{404, "NoSuchKey", store.ErrNotFound, true},
		{404, "NoSuchBucket", store.ErrNoSuchBucket, true},
		{400, "InvalidBucketName", store.ErrInvalidBucket, true},
		{503, "SlowDown", nil, false},
		{500, "InternalError", nil, false},
		{503, "ServiceUnavailable", nil, false},
		{400, "RequestTimeout", nil, false},
	} {
		t.Run(tc.code, func(t *testing.T) {
			t.Parallel()
			var hits atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				w.Header().Set("Content-Type", "application/xml")
				w.WriteHeader(tc.status)
				fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code><Message>canned %s</Message><RequestId>1</RequestId></Error>`, tc.code, tc.code)
			}))
			defer srv.Close()
			s, err := store.NewS3(testCtx(t), store.S3Config{
				Bucket: "backups", Endpoint: srv.URL, AccessKeyID: "id", SecretAccessKey: "sk", ForcePathStyle: true,
			})
			if err != nil {
				t.Fatal(err)
			}
			_, err = s.Get(testCtx(t), "sets/1/manifest.json")
			if err == nil {
				t.Fatal("Get succeeded")
			}
			if store.IsPermanent(err) != tc.permanent {
				t.Errorf("IsPermanent(%v) = %v, want %v", err, !tc.permanent, tc.permanent)
			}
			if tc.sentinel != nil && !errors.Is(err, tc.sentinel) {
				t.Errorf("Get = %v, want %v", err, tc.sentinel)
			}
			if !strings.Contains(err.Error(), "get sets/1/manifest.json") {
				t.Errorf("error %q does not name the operation and key", err)
			}
			if tc.permanent && hits.Load() != 1 {
				t.Errorf("permanent error retried: %d requests", hits.Load())
			}
		})
	}
}

// TestS3PutMemory uploads 256 MiB of unknown length and checks that the heap
// grows by about PartSize × Concurrency, not by the object size.
func TestS3PutMemory(t *testing.T) {
	ms := newMinIO(t)
	s := ms.store(t) // defaults: 16 MiB × 4
	const size = 256 << 20
	peak, d := measurePut(t, s, "memory/obj", size)
	t.Logf("Put of %d MiB (16 MiB parts × 4): peak heap growth %.1f MiB, %.1f MB/s",
		size>>20, float64(peak)/(1<<20), float64(size)/1e6/d.Seconds())
	if limit := int64(store.DefaultPartSize*store.DefaultConcurrency + 32<<20); peak > limit {
		t.Errorf("peak heap growth %d MiB, want under %d MiB", peak>>20, limit>>20)
	}
	oi, err := s.Stat(testCtx(t), "memory/obj")
	if err != nil || oi.Size != size {
		t.Fatalf("Stat = %+v, %v", oi, err)
	}
}

// measurePut puts size generated bytes and returns the peak growth of the
// heap over the start (sampled every 5 ms) and the duration.
func measurePut(t testing.TB, s store.Store, key string, size int64) (int64, time.Duration) {
	t.Helper()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapAlloc
	var (
		peak atomic.Uint64
		stop = make(chan struct{})
		wg   sync.WaitGroup
	)
	wg.Go(func() {
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			if m.HeapAlloc > peak.Load() {
				peak.Store(m.HeapAlloc)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	})
	start := time.Now()
	n, err := s.Put(testCtx(t), key, storetest.NewGenerator(9, size), store.PutOptions{SizeHint: -1})
	d := time.Since(start)
	close(stop)
	wg.Wait()
	if err != nil || n != size {
		t.Fatalf("Put = %d, %v", n, err)
	}
	return int64(peak.Load()) - int64(base), d
}

func BenchmarkS3Put(b *testing.B) {
	ms := newMinIO(b)
	s := ms.store(b)
	const size = 64 << 20
	b.SetBytes(size)
	for b.Loop() {
		if _, err := s.Put(testCtx(b), "bench/obj", storetest.NewGenerator(9, size), store.PutOptions{SizeHint: -1}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkFSPut(b *testing.B) {
	s, err := store.NewFS(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	const size = 64 << 20
	b.SetBytes(size)
	for b.Loop() {
		if _, err := s.Put(testCtx(b), "bench/obj", storetest.NewGenerator(9, size), store.PutOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}

var _ io.Reader = (*storetest.Generator)(nil)
