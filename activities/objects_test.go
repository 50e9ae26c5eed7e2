package activities

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/minio/minio-go/v7"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/interceptor"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/worker"
	"golang.org/x/sync/errgroup"

	"github.com/kohakku/drflow/internal/activitytest"
	"github.com/kohakku/drflow/internal/config"
	"github.com/kohakku/drflow/internal/stack"
	"github.com/kohakku/drflow/internal/stack/stacktest"
	"github.com/kohakku/drflow/internal/store"
	"github.com/kohakku/drflow/schemas"
)

// mirrorEnv is the app's MinIO and the backup MinIO, both real servers.
type mirrorEnv struct {
	app, backup *stack.MinIO
	// src is a root client of the app's MinIO, for seeding and checking.
	src *minio.Client
}

func newMirrorEnv(t testing.TB) *mirrorEnv {
	t.Helper()
	// Two single MinIO servers rather than stacktest.Start: the mirror needs
	// no PostgreSQL or Redis.
	e := &mirrorEnv{app: stacktest.MinIO(t), backup: stacktest.MinIO(t)}
	var err error
	e.src, err = e.app.Client()
	require.NoError(t, err)
	return e
}

// appConfig is the app's MinIO as the worker's config names it.
func (e *mirrorEnv) appConfig() config.MinIO {
	return config.MinIO{
		Endpoint:  e.app.Endpoint(),
		AccessKey: e.app.AccessKey(),
		SecretKey: config.Secret(e.app.SecretKey()),
		Buckets:   []string{schemas.DefaultBucket},
	}
}

// s3Store returns the S3 store on bucket of the backup MinIO, creating the
// bucket when create is set. Its part size is the smallest allowed, so that
// a 6 MiB object takes the multipart path.
func (e *mirrorEnv) s3Store(t testing.TB, bucket string, create bool) store.Store {
	return e.s3StoreParts(t, bucket, create, store.MinPartSize)
}

func (e *mirrorEnv) s3StoreParts(t testing.TB, bucket string, create bool, partSize int64) store.Store {
	t.Helper()
	ctx := context.Background()
	if create {
		require.NoError(t, e.backup.MakeBucket(ctx, bucket))
	}
	st, err := store.NewS3(ctx, store.S3Config{
		Bucket:          bucket,
		Endpoint:        e.backup.URL(),
		Region:          e.backup.Region(),
		AccessKeyID:     e.backup.AccessKey(),
		SecretAccessKey: e.backup.SecretKey(),
		ForcePathStyle:  true,
		Prefix:          "drflow",
		PartSize:        partSize,
	})
	require.NoError(t, err)
	return st
}

func (e *mirrorEnv) objects(t testing.TB, st store.Store) *Objects {
	t.Helper()
	o, err := NewObjects(e.appConfig(), st)
	require.NoError(t, err)
	return o
}

// objectBody is the content of key in generation gen: size bytes that differ
// from every other key and generation.
func objectBody(key string, gen, size int) []byte {
	seed := sha256.Sum256(fmt.Appendf(nil, "%s\x00%d", key, gen))
	b := bytes.Repeat(seed[:], size/len(seed)+1)
	return b[:size]
}

// putObjects writes every key of objs (key → size) in generation gen.
func putObjects(ctx context.Context, c *minio.Client, bucket string, objs map[string]int, gen int) error {
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(32)
	for key, size := range objs {
		g.Go(func() error {
			body := objectBody(key, gen, size)
			_, err := c.PutObject(ctx, bucket, key, bytes.NewReader(body), int64(len(body)),
				minio.PutObjectOptions{ContentType: "application/json", DisableMultipart: true})
			if err != nil {
				return fmt.Errorf("put %s: %w", key, err)
			}
			return nil
		})
	}
	return g.Wait()
}

// sourceListing lists bucket as Mirror's listing should show it.
func sourceListing(t testing.TB, c *minio.Client, bucket string) []ListedObject {
	t.Helper()
	var out []ListedObject
	for obj := range c.ListObjects(context.Background(), bucket, minio.ListObjectsOptions{Recursive: true}) {
		require.NoError(t, obj.Err)
		if obj.Size == 0 && strings.HasSuffix(obj.Key, "/") {
			continue
		}
		out = append(out, ListedObject{Key: obj.Key, Size: obj.Size, ETag: obj.ETag, LastModified: obj.LastModified.UTC()})
	}
	return out
}

// mirrorListing lists the mirror under prefix, keys relative to it.
func mirrorListing(t testing.TB, st store.Store, prefix string) map[string]store.ObjectInfo {
	t.Helper()
	out := map[string]store.ObjectInfo{}
	require.NoError(t, st.List(context.Background(), prefix, func(oi store.ObjectInfo) error {
		out[strings.TrimPrefix(oi.Key, prefix)] = oi
		return nil
	}))
	return out
}

func sha256Hex(r io.Reader) (string, error) {
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// requireSameContent compares the bytes of every listed object at the source
// and in the mirror.
func requireSameContent(t testing.TB, c *minio.Client, bucket string, st store.Store, prefix string, objs []ListedObject) {
	t.Helper()
	ctx := context.Background()
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for _, obj := range objs {
		g.Go(func() error {
			src, err := c.GetObject(ctx, bucket, obj.Key, minio.GetObjectOptions{})
			if err != nil {
				return err
			}
			defer src.Close()
			want, err := sha256Hex(src)
			if err != nil {
				return fmt.Errorf("source %s: %w", obj.Key, err)
			}
			dst, err := st.Get(ctx, prefix+obj.Key)
			if err != nil {
				return err
			}
			defer dst.Close()
			got, err := sha256Hex(dst)
			if err != nil {
				return fmt.Errorf("mirror %s: %w", obj.Key, err)
			}
			if got != want {
				return fmt.Errorf("%s: mirror sha256 %s, source %s", obj.Key, got, want)
			}
			return nil
		})
	}
	require.NoError(t, g.Wait())
}

// readStoredListing reads the listing artifact back and checks its size and
// SHA-256.
func readStoredListing(t testing.TB, st store.Store, art Artifact) []ListedObject {
	t.Helper()
	rc, err := st.Get(context.Background(), art.Key)
	require.NoError(t, err)
	defer rc.Close()
	raw, err := io.ReadAll(rc)
	require.NoError(t, err)
	assert.Equal(t, art.Size, int64(len(raw)), "listing size")
	sum := sha256.Sum256(raw)
	assert.Equal(t, art.SHA256, hex.EncodeToString(sum[:]), "listing sha256")
	var out []ListedObject
	require.NoError(t, ReadListing(bytes.NewReader(raw), func(obj ListedObject) error {
		out = append(out, obj)
		return nil
	}))
	zr, err := zstd.NewReader(bytes.NewReader(raw))
	require.NoError(t, err)
	defer zr.Close()
	rawSize, err := io.Copy(io.Discard, zr)
	require.NoError(t, err)
	assert.Equal(t, art.RawSize, rawSize, "listing raw size")
	return out
}

// mirrorRun is one Mirror execution in the Temporal activity test
// environment.
type mirrorRun struct {
	res        MirrorResult
	heartbeats []MirrorProgress
	err        error
}

func runMirror(t testing.TB, o *Objects, in MirrorInput, resume *MirrorProgress) mirrorRun {
	t.Helper()
	var s testsuite.WorkflowTestSuite
	env := s.NewTestActivityEnvironment()
	var (
		mu  sync.Mutex
		run mirrorRun
	)
	// Every RecordHeartbeat call, before the SDK batches them (the test
	// environment sends one per 30 s).
	env.SetWorkerOptions(worker.Options{Interceptors: []interceptor.WorkerInterceptor{
		activitytest.Heartbeats(func(details ...any) {
			if len(details) != 1 {
				t.Errorf("heartbeat with %d details", len(details))
				return
			}
			p, ok := details[0].(MirrorProgress)
			if !ok {
				t.Errorf("heartbeat details are a %T", details[0])
				return
			}
			mu.Lock()
			defer mu.Unlock()
			run.heartbeats = append(run.heartbeats, p)
		}),
	}})
	env.RegisterActivity(o)
	if resume != nil {
		env.SetHeartbeatDetails(*resume)
	}
	v, err := env.ExecuteActivity(o.Mirror, in)
	if err == nil {
		err = v.Get(&run.res)
	}
	run.err = err
	mu.Lock()
	defer mu.Unlock()
	return run
}

func keysOf(objs []ListedObject) []string {
	out := make([]string, len(objs))
	for i, o := range objs {
		out[i] = o.Key
	}
	return out
}

func totalSize(objs []ListedObject) int64 {
	var n int64
	for _, o := range objs {
		n += o.Size
	}
	return n
}

// requireForward checks that cursor and counts never go back.
func requireForward(t testing.TB, beats []MirrorProgress) {
	t.Helper()
	for i := 1; i < len(beats); i++ {
		prev, cur := beats[i-1], beats[i]
		require.GreaterOrEqual(t, cur.Cursor, prev.Cursor, "heartbeat %d", i)
		require.GreaterOrEqual(t, cur.Copied, prev.Copied, "heartbeat %d", i)
		require.GreaterOrEqual(t, cur.CopiedBytes, prev.CopiedBytes, "heartbeat %d", i)
	}
}

// requireAppError checks that err is a non-retryable application error of
// type errType whose message contains every string of want.
func requireAppError(t testing.TB, err error, errType string, want ...string) *temporal.ApplicationError {
	t.Helper()
	require.Error(t, err)
	t.Logf("error: %v", err)
	var appErr *temporal.ApplicationError
	require.True(t, errors.As(err, &appErr), "want an application error, got %T: %v", err, err)
	assert.Equal(t, errType, appErr.Type(), "error type of %v", err)
	assert.True(t, appErr.NonRetryable(), "non-retryable: %v", err)
	for _, w := range want {
		assert.Contains(t, appErr.Error(), w)
	}
	return appErr
}

func TestMirror(t *testing.T) {
	ctx := context.Background()
	e := newMirrorEnv(t)
	const bucket = schemas.DefaultBucket
	require.NoError(t, e.app.MakeBucket(ctx, bucket))

	// 500 briefs and 12 skills of 1–4 KB, a few keys whose order is easy to
	// get wrong ('-' sorts before '/'; a space; non-ASCII), an object that
	// takes the store's multipart path, and a folder marker.
	seed := map[string]int{}
	for id := int64(1); id <= 500; id++ {
		seed[schemas.BriefKey(id)] = 1024 + int(id*37%3072)
	}
	for i := range 12 {
		seed[schemas.SkillKey(fmt.Sprintf("skill-%02d", i), schemas.SkillFileName)] = 1500 + i*100
	}
	for _, k := range []string{"a-b/x", "a/b", "a/b-c", "a b/ü.txt", "z"} {
		seed[k] = 10
	}
	seed["big/blob.bin"] = 6<<20 + 123
	require.NoError(t, putObjects(ctx, e.src, bucket, seed, 1))
	_, err := e.src.PutObject(ctx, bucket, "folder/", bytes.NewReader(nil), 0, minio.PutObjectOptions{})
	require.NoError(t, err)

	st := e.s3Store(t, "drflow-backup", true)
	o := e.objects(t, st)
	const prefix = "mirror/kohakku/"
	in := func(set string) MirrorInput {
		return MirrorInput{SetID: set, Bucket: bucket, Prefix: prefix, ListingKey: "sets/" + set + "/objects/kohakku.jsonl.zst"}
	}
	// checkRun compares the result, the mirror and the listing with the
	// source as it is now.
	checkRun := func(t *testing.T, run mirrorRun, set string) []ListedObject {
		t.Helper()
		require.NoError(t, run.err)
		src := sourceListing(t, e.src, bucket)
		res := run.res
		assert.Equal(t, bucket, res.Bucket)
		assert.Equal(t, prefix, res.Prefix)
		assert.Equal(t, int64(len(src)), res.Objects)
		assert.Equal(t, totalSize(src), res.Bytes)
		art := res.Listing
		assert.Equal(t, KindListing, art.Kind)
		assert.Equal(t, bucket, art.Source)
		assert.Equal(t, "sets/"+set+"/objects/kohakku.jsonl.zst", art.Key)
		assert.Equal(t, "zstd", art.Compression)
		assert.Equal(t, int64(len(src)), art.Objects)
		assert.Equal(t, totalSize(src), art.ObjectBytes)
		assert.Equal(t, src, readStoredListing(t, st, art), "listing artifact")

		mirror := mirrorListing(t, st, prefix)
		for _, obj := range src {
			if assert.Contains(t, mirror, obj.Key) {
				assert.Equal(t, obj.Size, mirror[obj.Key].Size, obj.Key)
			}
		}
		assert.NotContains(t, mirror, "folder/")
		requireSameContent(t, e.src, bucket, st, prefix, src)

		require.NotEmpty(t, run.heartbeats)
		assert.Equal(t, MirrorProgress{Cursor: src[len(src)-1].Key, Copied: res.Copied, CopiedBytes: res.CopiedBytes},
			run.heartbeats[len(run.heartbeats)-1], "the last heartbeat has every key done")
		requireForward(t, run.heartbeats)
		return src
	}

	step := func(name string, f func(t *testing.T)) {
		if !t.Run(name, f) {
			t.FailNow() // later steps build on this one
		}
	}

	step("first run copies everything", func(t *testing.T) {
		run := runMirror(t, o, in("s1"), nil)
		src := checkRun(t, run, "s1")
		assert.Len(t, src, len(seed))
		assert.Equal(t, int64(len(src)), run.res.Copied)
		assert.Equal(t, totalSize(src), run.res.CopiedBytes)
	})

	step("second run copies nothing", func(t *testing.T) {
		run := runMirror(t, o, in("s2"), nil)
		checkRun(t, run, "s2")
		assert.Zero(t, run.res.Copied)
		assert.Zero(t, run.res.CopiedBytes)
	})

	step("changed and new objects are copied", func(t *testing.T) {
		// 1% of the objects: half rewritten with a new size, half with the
		// same size and new content (caught by the modification time).
		changed := map[string]int{}
		for id := int64(10); len(changed) < len(seed)/100; id += 97 {
			key := schemas.BriefKey(id)
			size := seed[key]
			if len(changed)%2 == 0 {
				size += 11
			}
			changed[key] = size
		}
		added := map[string]int{"briefs/9999/brief.json": 2048, "skills/new/SKILL.md": 3000, "zz/last": 1}
		require.NoError(t, putObjects(ctx, e.src, bucket, changed, 2))
		require.NoError(t, putObjects(ctx, e.src, bucket, added, 1))

		run := runMirror(t, o, in("s3"), nil)
		checkRun(t, run, "s3")
		var wantBytes int64
		for _, size := range changed {
			wantBytes += int64(size)
		}
		for _, size := range added {
			wantBytes += int64(size)
		}
		assert.Equal(t, int64(len(changed)+len(added)), run.res.Copied)
		assert.Equal(t, wantBytes, run.res.CopiedBytes)
	})

	step("deleted source objects stay in the mirror", func(t *testing.T) {
		gone := []string{schemas.BriefKey(3), "zz/last"}
		for _, k := range gone {
			require.NoError(t, e.src.RemoveObject(ctx, bucket, k, minio.RemoveObjectOptions{}))
		}
		run := runMirror(t, o, in("s4"), nil)
		src := checkRun(t, run, "s4")
		assert.Zero(t, run.res.Copied)
		mirror := mirrorListing(t, st, prefix)
		for _, k := range gone {
			assert.NotContains(t, keysOf(src), k)
			assert.Contains(t, mirror, k, "kept in the mirror")
		}
		// The last cursor is the last source key, not the mirror's extra
		// "zz/last".
		assert.Equal(t, "z", run.heartbeats[len(run.heartbeats)-1].Cursor)
	})

	t.Run("a retry resumes after the heartbeated cursor", func(t *testing.T) {
		const resumePrefix = "mirror-resume/kohakku/"
		src := sourceListing(t, e.src, bucket)
		cut := len(src) / 3
		cursor := src[cut].Key
		resume := MirrorProgress{Cursor: cursor, Copied: 7, CopiedBytes: 7000}
		run := runMirror(t, o, MirrorInput{Bucket: bucket, Prefix: resumePrefix, ListingKey: "sets/resume/objects/kohakku.jsonl.zst"}, &resume)
		require.NoError(t, run.err)

		after := src[cut+1:]
		assert.Equal(t, int64(7+len(after)), run.res.Copied)
		assert.Equal(t, 7000+totalSize(after), run.res.CopiedBytes)
		assert.Equal(t, int64(len(src)), run.res.Objects, "the listing still covers the whole bucket")
		assert.Equal(t, src, readStoredListing(t, st, run.res.Listing))

		mirror := mirrorListing(t, st, resumePrefix)
		var got []string
		for k := range mirror {
			got = append(got, k)
		}
		slices.Sort(got)
		assert.Equal(t, keysOf(after), got, "only keys after the cursor are copied")
		requireSameContent(t, e.src, bucket, st, resumePrefix, after)
		require.NotEmpty(t, run.heartbeats)
		assert.GreaterOrEqual(t, run.heartbeats[0].Cursor, cursor, "the cursor never goes back")
		requireForward(t, run.heartbeats)
	})

	t.Run("heartbeats carry a cursor with every key up to it done", func(t *testing.T) {
		// The copy phase is made to last past the first heartbeat (after
		// heartbeatEvery).
		require.NoError(t, e.app.MakeBucket(ctx, "slow"))
		objs := map[string]int{}
		for i := range 40 {
			objs[fmt.Sprintf("obj/%03d", i)] = 1000
		}
		require.NoError(t, putObjects(ctx, e.src, "slow", objs, 1))
		so := e.objects(t, slowStore{Store: st, delay: 100 * time.Millisecond})
		so.Concurrency = 2
		run := runMirror(t, so, MirrorInput{Bucket: "slow", SetID: "slow"}, nil)
		require.NoError(t, run.err)
		assert.Equal(t, int64(40), run.res.Copied)
		require.Greater(t, len(run.heartbeats), 1, "heartbeats during the copy phase, then the final one")
		requireForward(t, run.heartbeats)
		for _, hb := range run.heartbeats {
			// Every key up to the cursor is copied; at most Concurrency
			// copies after it have finished.
			var upTo int64
			for k := range objs {
				if k <= hb.Cursor {
					upTo++
				}
			}
			assert.GreaterOrEqual(t, hb.Copied, upTo, "%+v", hb)
			assert.LessOrEqual(t, hb.Copied, upTo+int64(so.Concurrency), "%+v", hb)
			assert.Equal(t, hb.Copied*1000, hb.CopiedBytes)
		}
		assert.Less(t, run.heartbeats[0].Copied, int64(40), "the first heartbeat comes during the copy phase")
	})

	t.Run("a store on the local file system", func(t *testing.T) {
		fs, err := store.NewFS(t.TempDir())
		require.NoError(t, err)
		fo := e.objects(t, fs)
		first := runMirror(t, fo, MirrorInput{Bucket: bucket, SetID: "fs1"}, nil)
		require.NoError(t, first.err)
		src := sourceListing(t, e.src, bucket)
		assert.Equal(t, "mirror/kohakku/", first.res.Prefix)
		assert.Equal(t, "sets/fs1/objects/kohakku.jsonl.zst", first.res.Listing.Key)
		assert.Equal(t, int64(len(src)), first.res.Copied)
		requireSameContent(t, e.src, bucket, fs, "mirror/kohakku/", src)
		assert.Equal(t, src, readStoredListing(t, fs, first.res.Listing))

		second := runMirror(t, fo, MirrorInput{Bucket: bucket, SetID: "fs2"}, nil)
		require.NoError(t, second.err)
		assert.Zero(t, second.res.Copied, "the FS listing merges in the same order as the source's")
	})

	t.Run("a missing source bucket is BucketNotFound", func(t *testing.T) {
		run := runMirror(t, o, MirrorInput{Bucket: "no-such-bucket", SetID: "missing"}, nil)
		requireAppError(t, run.err, ErrBucketNotFound, `"no-such-bucket"`)
		_, err := st.Stat(ctx, "sets/missing/objects/no-such-bucket.jsonl.zst")
		assert.ErrorIs(t, err, store.ErrNotFound, "a failed run writes no listing")
	})

	t.Run("rejected source credentials are MinIOCredentials", func(t *testing.T) {
		cfg := e.appConfig()
		const wrong = "wrong-secret-key-0123456789"
		cfg.SecretKey = wrong
		bad, err := NewObjects(cfg, st)
		require.NoError(t, err)
		run := runMirror(t, bad, MirrorInput{Bucket: bucket, SetID: "badcreds"}, nil)
		appErr := requireAppError(t, run.err, ErrMinIOCredentials, `"kohakku"`, "DRFLOW_MINIO_SECRET_KEY")
		assert.NotContains(t, appErr.Error(), wrong)
		assert.NotContains(t, appErr.Error(), e.app.SecretKey())
	})

	t.Run("a missing backup bucket is a store error", func(t *testing.T) {
		missing := e.s3Store(t, "no-backup-bucket", false)
		run := runMirror(t, e.objects(t, missing), MirrorInput{Bucket: bucket, SetID: "nostore"}, nil)
		appErr := requireAppError(t, run.err, ErrStore, "no-backup-bucket")
		assert.NotContains(t, appErr.Error(), e.backup.SecretKey())
	})

	t.Run("an unreachable source is a retryable error", func(t *testing.T) {
		require.NoError(t, e.app.Stop(ctx))
		defer func() { require.NoError(t, e.app.Start(ctx)) }()
		run := runMirror(t, o, MirrorInput{Bucket: bucket, SetID: "down"}, nil)
		require.Error(t, run.err)
		t.Logf("error: %v", run.err)
		var appErr *temporal.ApplicationError
		if errors.As(run.err, &appErr) {
			assert.False(t, appErr.NonRetryable(), "retryable: %v", run.err)
		}
		assert.Contains(t, run.err.Error(), "mirror kohakku")
		assert.NotContains(t, run.err.Error(), e.app.SecretKey())
	})

	t.Run("invalid input", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			in   MirrorInput
		}{
			{"no listing key", MirrorInput{Bucket: bucket}},
			{"prefix without slash", MirrorInput{Bucket: bucket, SetID: "x", Prefix: "mirror/kohakku"}},
			{"listing inside the mirror", MirrorInput{Bucket: bucket, ListingKey: "mirror/kohakku/listing.zst"}},
			{"bad prefix", MirrorInput{Bucket: bucket, SetID: "x", Prefix: "mirror//"}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				run := runMirror(t, o, tc.in, nil)
				requireAppError(t, run.err, ErrInvalidInput, bucket)
			})
		}
	})
}

func TestMirrorTracker(t *testing.T) {
	type event struct {
		op   string // skip, start, finish, gone (finished without a copy)
		key  string
		size int64
	}
	for _, tc := range []struct {
		name    string
		resume  MirrorProgress
		events  []event
		cursors []string // cursor after each event
		copied  int64
	}{
		{
			name:    "in order",
			events:  []event{{"skip", "a", 0}, {"start", "b", 0}, {"finish", "b", 5}, {"skip", "c", 0}},
			cursors: []string{"a", "a", "b", "c"},
			copied:  1,
		},
		{
			name: "out of order",
			events: []event{
				{"start", "a", 0}, {"skip", "b", 0}, {"start", "c", 0}, {"skip", "d", 0},
				{"finish", "c", 1}, {"finish", "a", 1},
			},
			cursors: []string{"", "", "", "", "", "d"},
			copied:  2,
		},
		{
			name: "a slow copy holds the cursor",
			events: []event{
				{"skip", "a", 0}, {"start", "b", 0}, {"start", "c", 0}, {"start", "d", 0},
				{"finish", "c", 1}, {"finish", "b", 1}, {"skip", "e", 0}, {"finish", "d", 1},
			},
			cursors: []string{"a", "a", "a", "a", "a", "c", "c", "e"},
			copied:  3,
		},
		{
			name:    "an object deleted since listed is done, not copied",
			events:  []event{{"start", "a", 0}, {"start", "b", 0}, {"gone", "a", 0}, {"finish", "b", 3}},
			cursors: []string{"", "", "a", "b"},
			copied:  1,
		},
		{
			name:    "resumed",
			resume:  MirrorProgress{Cursor: "m", Copied: 4, CopiedBytes: 40},
			events:  []event{{"start", "n", 0}, {"skip", "o", 0}, {"finish", "n", 2}},
			cursors: []string{"m", "m", "o"},
			copied:  5,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := newMirrorTracker(tc.resume)
			started := map[string]*pendingCopy{}
			for i, ev := range tc.events {
				switch ev.op {
				case "skip":
					tr.skip(ev.key)
				case "start":
					started[ev.key] = tr.start(ev.key)
				case "finish":
					tr.finish(started[ev.key], ev.size, true)
				case "gone":
					tr.finish(started[ev.key], 0, false)
				}
				assert.Equal(t, tc.cursors[i], tr.progress().Cursor, "after event %d %v", i, ev)
			}
			assert.Equal(t, tc.copied, tr.progress().Copied)
		})
	}
}

// slowStore delays every mirror Put, to make a copy phase last.
type slowStore struct {
	store.Store
	delay time.Duration
}

func (s slowStore) Put(ctx context.Context, key string, r io.Reader, opts store.PutOptions) (int64, error) {
	if strings.HasPrefix(key, "mirror/") {
		select {
		case <-time.After(s.delay):
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	return s.Store.Put(ctx, key, r, opts)
}
