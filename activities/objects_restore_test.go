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

	"github.com/minio/minio-go/v7"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/interceptor"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/worker"

	"github.com/kohakku/drflow/internal/activitytest"
	"github.com/kohakku/drflow/internal/config"
	"github.com/kohakku/drflow/internal/profile"
	"github.com/kohakku/drflow/internal/store"
	"github.com/kohakku/drflow/schemas"
)

// restoreRun is one execution of an object restore activity in the Temporal
// activity test environment.
type restoreRun[R any] struct {
	res   R
	beats []ObjectRestoreProgress
	err   error
}

// runObjectsActivity runs fn (a method of o) with in, giving it resume as
// heartbeat details from an earlier attempt when not nil, and records every
// ObjectRestoreProgress heartbeat.
func runObjectsActivity[R any](t testing.TB, o *Objects, fn any, in ObjectRestoreInput, resume *ObjectRestoreProgress) restoreRun[R] {
	t.Helper()
	var s testsuite.WorkflowTestSuite
	env := s.NewTestActivityEnvironment()
	var (
		mu  sync.Mutex
		run restoreRun[R]
	)
	env.SetWorkerOptions(worker.Options{Interceptors: []interceptor.WorkerInterceptor{
		activitytest.Heartbeats(func(details ...any) {
			if len(details) != 1 {
				t.Errorf("heartbeat with %d details", len(details))
				return
			}
			if p, ok := details[0].(ObjectRestoreProgress); ok {
				mu.Lock()
				defer mu.Unlock()
				run.beats = append(run.beats, p)
			}
		}),
	}})
	env.RegisterActivity(o)
	if resume != nil {
		env.SetHeartbeatDetails(*resume)
	}
	v, err := env.ExecuteActivity(fn, in)
	if err == nil {
		err = v.Get(&run.res)
	}
	run.err = err
	mu.Lock()
	defer mu.Unlock()
	return run
}

func runRestoreObjects(t testing.TB, o *Objects, in ObjectRestoreInput, resume *ObjectRestoreProgress) restoreRun[ObjectRestoreResult] {
	t.Helper()
	return runObjectsActivity[ObjectRestoreResult](t, o, o.RestoreObjects, in, resume)
}

func runPlanRestore(t testing.TB, o *Objects, in ObjectRestoreInput) (ObjectsPlan, error) {
	t.Helper()
	r := runObjectsActivity[ObjectsPlan](t, o, o.PlanRestore, in, nil)
	return r.res, r.err
}

func runVerifyRestore(t testing.TB, o *Objects, in ObjectRestoreInput) (ObjectsCheck, error) {
	t.Helper()
	r := runObjectsActivity[ObjectsCheck](t, o, o.VerifyRestore, in, nil)
	return r.res, r.err
}

// restoreSeed is a bucket's content: key → body.
type restoreSeed map[string][]byte

// put writes every object of s with a single PUT (a plain MD5 ETag).
func (s restoreSeed) put(t testing.TB, c *minio.Client, bucket string) {
	t.Helper()
	sizes := map[string]int{}
	for k, b := range s {
		sizes[k] = len(b)
	}
	// putObjects writes objectBody(key, 1, size): the seed is made of those.
	require.NoError(t, putObjects(context.Background(), c, bucket, sizes, 1))
}

// newRestoreSeed returns generation-1 bodies for sizes.
func newRestoreSeed(sizes map[string]int) restoreSeed {
	s := restoreSeed{}
	for k, n := range sizes {
		s[k] = objectBody(k, 1, n)
	}
	return s
}

func (s restoreSeed) keys(match func(string) bool) []string {
	var out []string
	for k := range s {
		if match == nil || match(k) {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

func sumHex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// liveSums reads every object of bucket: key → SHA-256 of its content.
func liveSums(t testing.TB, c *minio.Client, bucket string) map[string]string {
	t.Helper()
	ctx := context.Background()
	out := map[string]string{}
	for obj := range c.ListObjects(ctx, bucket, minio.ListObjectsOptions{Recursive: true}) {
		require.NoError(t, obj.Err)
		r, err := c.GetObject(ctx, bucket, obj.Key, minio.GetObjectOptions{})
		require.NoError(t, err)
		sum, err := sha256Hex(r)
		r.Close()
		require.NoError(t, err, obj.Key)
		out[obj.Key] = sum
	}
	return out
}

func storedSum(t testing.TB, st store.Store, key string) string {
	t.Helper()
	rc, err := st.Get(context.Background(), key)
	require.NoError(t, err, key)
	defer rc.Close()
	sum, err := sha256Hex(rc)
	require.NoError(t, err)
	return sum
}

// wipeBucket deletes every object of bucket, and the bucket when remove is
// set: the disaster.
func wipeBucket(t testing.TB, c *minio.Client, bucket string, remove bool) {
	t.Helper()
	ctx := context.Background()
	objs := make(chan minio.ObjectInfo)
	go func() {
		defer close(objs)
		for obj := range c.ListObjects(ctx, bucket, minio.ListObjectsOptions{Recursive: true}) {
			objs <- obj
		}
	}()
	for e := range c.RemoveObjects(ctx, bucket, objs, minio.RemoveObjectsOptions{}) {
		require.NoError(t, e.Err, e.ObjectName)
	}
	if remove {
		require.NoError(t, c.RemoveBucket(ctx, bucket))
	}
}

// mirrorSet mirrors bucket into the store as set and returns the restore
// input for it.
func mirrorSet(t testing.TB, o *Objects, bucket, set, scope string) ObjectRestoreInput {
	t.Helper()
	run := runMirror(t, o, MirrorInput{SetID: set, Bucket: bucket}, nil)
	require.NoError(t, run.err)
	return ObjectRestoreInput{
		SetID:        set,
		Mirror:       run.res,
		Scope:        scope,
		SafetyPrefix: SafetyObjectsPrefix("wf-"+set, bucket),
	}
}

// recordingStore records the keys read from the store under prefix, in order.
type recordingStore struct {
	store.Store
	prefix string
	mu     sync.Mutex
	gets   []string
	// failKey, when set, makes the first Get of prefix+failKey fail with a
	// transient error.
	failKey string
	failed  bool
}

func (s *recordingStore) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if k, ok := strings.CutPrefix(key, s.prefix); ok {
		s.mu.Lock()
		s.gets = append(s.gets, k)
		fail := k == s.failKey && !s.failed
		if fail {
			s.failed = true
		}
		s.mu.Unlock()
		if fail {
			return nil, errors.New("injected network fault")
		}
	}
	return s.Store.Get(ctx, key)
}

func (s *recordingStore) reads() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.gets)
}

// classesOf returns an Objects.Classes function returning classes.
func classesOf(classes ...profile.ObjectClass) func(context.Context, string) ([]profile.ObjectClass, error) {
	return func(context.Context, string) ([]profile.ObjectClass, error) { return classes, nil }
}

func keySet(keys []string) func(string) bool {
	m := map[string]bool{}
	for _, k := range keys {
		m[k] = true
	}
	return func(k string) bool { return m[k] }
}

func isSkill(k string) bool { _, ok := schemas.SkillName(k); return ok }

func TestRestoreObjects(t *testing.T) {
	ctx := context.Background()
	e := newMirrorEnv(t)
	st := e.s3Store(t, "drflow-backup", true)

	t.Run("scope all brings back a deleted bucket", func(t *testing.T) {
		const bucket = "r-all"
		require.NoError(t, e.app.MakeBucket(ctx, bucket))
		sizes := map[string]int{}
		for id := int64(1); id <= 600; id++ {
			sizes[schemas.BriefKey(id)] = 1024 + int(id*37%3072)
		}
		for i := range 10 {
			sizes[schemas.SkillKey(fmt.Sprintf("skill-%02d", i), schemas.SkillFileName)] = 2000 + i
		}
		sizes["a b/ü.txt"] = 10
		seed := newRestoreSeed(sizes)
		seed.put(t, e.src, bucket)
		// One object uploaded in parts: its ETag is not an MD5, and the
		// restore's single PUT gives it another one.
		const big = "big/blob.bin"
		seed[big] = objectBody(big, 1, 6<<20+123)
		_, err := e.src.PutObject(ctx, bucket, big, bytes.NewReader(seed[big]), int64(len(seed[big])),
			minio.PutObjectOptions{PartSize: 5 << 20})
		require.NoError(t, err)

		o := e.objects(t, st)
		in := mirrorSet(t, o, bucket, "s-all", ScopeAll)
		listedBig := ""
		for _, obj := range sourceListing(t, e.src, bucket) {
			if obj.Key == big {
				listedBig = obj.ETag
			}
		}
		require.Contains(t, listedBig, "-", "the big object is a multipart upload")

		wipeBucket(t, e.src, bucket, true)

		plan, err := runPlanRestore(t, o, in)
		require.NoError(t, err)
		exists, err := e.src.BucketExists(ctx, bucket)
		require.NoError(t, err)
		assert.False(t, exists, "PlanRestore creates nothing")
		assert.False(t, plan.BucketExists)
		assert.Equal(t, ScopeAll, plan.Scope)
		require.Len(t, plan.Classes, 1, "no classes: everything is other")
		assert.Equal(t, ObjectClassPlan{Name: OtherClass, Listed: int64(len(seed)), Missing: int64(len(seed)), Bytes: totalBytes(seed)}, plan.Classes[0])
		assert.Equal(t, int64(len(seed)), plan.Restore)
		assert.Equal(t, totalBytes(seed), plan.RestoreBytes)
		assert.Zero(t, plan.SafetyCopies)
		assert.Empty(t, plan.Warnings)

		start := time.Now()
		run := runRestoreObjects(t, o, in, nil)
		took := time.Since(start)
		require.NoError(t, run.err)
		res := run.res
		t.Logf("restored %d objects (%d bytes) in %v: %.0f objects/s, %.1f MiB/s", res.Restored, res.RestoredBytes,
			took, float64(res.Restored)/took.Seconds(), float64(res.RestoredBytes)/took.Seconds()/(1<<20))
		assert.True(t, res.CreatedBucket)
		assert.Equal(t, int64(len(seed)), res.Restored)
		assert.Equal(t, totalBytes(seed), res.RestoredBytes)
		assert.Zero(t, res.SafetyCopied)
		assert.Equal(t, plan.Classes, res.Classes, "the restore does what the plan said")

		got := liveSums(t, e.src, bucket)
		require.Len(t, got, len(seed))
		for k, body := range seed {
			assert.Equal(t, sumHex(body), got[k], k)
		}
		require.NotEmpty(t, run.beats)
		last := run.beats[len(run.beats)-1]
		assert.Equal(t, 1, last.Class, "the last heartbeat has the one class done")
		assert.Equal(t, res.Restored, last.Restored)

		chk, err := runVerifyRestore(t, o, in)
		require.NoError(t, err)
		assert.True(t, chk.Passed, "%v", chk.Problems)
		assert.Equal(t, int64(len(seed)), chk.Checked)
		assert.Equal(t, int64(len(seed)), chk.Matched)

		// Restored objects are recognised as the set's copies, the one
		// uploaded in parts included.
		again, err := runPlanRestore(t, o, in)
		require.NoError(t, err)
		assert.Equal(t, int64(len(seed)), again.Classes[0].Unchanged)
		assert.Zero(t, again.Restore)
		info, err := e.src.StatObject(ctx, bucket, big, minio.StatObjectOptions{})
		require.NoError(t, err)
		assert.NotEqual(t, normETag(listedBig), normETag(info.ETag), "the restored copy has another ETag")

		t.Run("verify names a changed and a deleted object", func(t *testing.T) {
			changed, gone := schemas.BriefKey(7), schemas.BriefKey(300)
			body := objectBody(changed, 2, len(seed[changed])) // same size
			_, err := e.src.PutObject(ctx, bucket, changed, bytes.NewReader(body), int64(len(body)), minio.PutObjectOptions{})
			require.NoError(t, err)
			require.NoError(t, e.src.RemoveObject(ctx, bucket, gone, minio.RemoveObjectOptions{}))
			chk, err := runVerifyRestore(t, o, in)
			require.NoError(t, err)
			assert.False(t, chk.Passed)
			assert.Equal(t, int64(len(seed)-2), chk.Matched)
			require.Len(t, chk.Problems, 2, "%v", chk.Problems)
			// Key order: briefs/300/… sorts before briefs/7/….
			assert.Contains(t, chk.Problems[0], gone)
			assert.Contains(t, chk.Problems[0], "missing")
			assert.Contains(t, chk.Problems[1], changed)
			assert.Contains(t, chk.Problems[1], "differs from the mirror copy")
		})
	})

	t.Run("scope needed restores the classes in order and nothing else", func(t *testing.T) {
		const bucket = "r-needed"
		require.NoError(t, e.app.MakeBucket(ctx, bucket))
		sizes := map[string]int{}
		var unfinished, completed []string
		for id := int64(1); id <= 30; id++ {
			k := schemas.BriefKey(id)
			sizes[k] = 500 + int(id)
			if id%3 == 0 {
				completed = append(completed, k)
			} else {
				unfinished = append(unfinished, k)
			}
		}
		for i := range 4 {
			sizes[schemas.SkillKey(fmt.Sprintf("s%d", i), schemas.SkillFileName)] = 700
			sizes[schemas.SkillKey(fmt.Sprintf("s%d", i), "tool.py")] = 300
		}
		// "agents/" sorts before "briefs/": restored last, by its class.
		for i := range 3 {
			sizes[fmt.Sprintf("agents/a%d.json", i)] = 100
		}
		sizes["zz/other.txt"] = 50
		seed := newRestoreSeed(sizes)
		seed.put(t, e.src, bucket)

		rec := &recordingStore{Store: st, prefix: MirrorKeyPrefix(bucket)}
		o := e.objects(t, rec)
		o.Concurrency = 1 // reads in exactly the restore order
		classes := []profile.ObjectClass{
			{Name: "briefs of unfinished tasks", Match: keySet(unfinished)},
			{Name: "skills", Match: isSkill},
			{Name: "agents", Match: func(k string) bool { return strings.HasPrefix(k, "agents/") }},
		}
		o.Classes = classesOf(classes...)
		in := mirrorSet(t, o, bucket, "s-needed", "") // "" is needed
		wipeBucket(t, e.src, bucket, false)
		mirrorReads := len(rec.reads())

		plan, err := runPlanRestore(t, o, in)
		require.NoError(t, err)
		assert.Equal(t, ScopeNeeded, plan.Scope)
		assert.True(t, plan.BucketExists)
		require.Len(t, plan.Classes, 3)
		var want []string
		for i, c := range classes {
			keys := seed.keys(c.Match)
			want = append(want, keys...)
			assert.Equal(t, c.Name, plan.Classes[i].Name)
			assert.Equal(t, int64(len(keys)), plan.Classes[i].Missing, c.Name)
		}
		assert.Equal(t, int64(len(completed)+1), plan.Skipped, "completed briefs and zz/other.txt")

		run := runRestoreObjects(t, o, in, nil)
		require.NoError(t, run.err)
		assert.Equal(t, want, rec.reads()[mirrorReads:], "class by class, in key order within a class")
		assert.Equal(t, plan.Classes, run.res.Classes)
		assert.Equal(t, int64(len(want)), run.res.Restored)
		assert.False(t, run.res.CreatedBucket)

		live := sourceListing(t, e.src, bucket)
		assert.Equal(t, len(want), len(live))
		byKey := map[string]ListedObject{}
		for _, obj := range live {
			byKey[obj.Key] = obj
		}
		for _, k := range completed {
			assert.NotContains(t, byKey, k, "brief of a completed task")
		}
		assert.NotContains(t, byKey, "zz/other.txt")
		sums := liveSums(t, e.src, bucket)
		for _, k := range want {
			assert.Equal(t, sumHex(seed[k]), sums[k], k)
		}
		// The bucket's own clock agrees: no object of a class was written
		// before every object of the class before it.
		for i := 1; i < len(classes); i++ {
			var prevMax, curMin time.Time
			for _, k := range seed.keys(classes[i-1].Match) {
				if lm := byKey[k].LastModified; lm.After(prevMax) {
					prevMax = lm
				}
			}
			for _, k := range seed.keys(classes[i].Match) {
				if lm := byKey[k].LastModified; curMin.IsZero() || lm.Before(curMin) {
					curMin = lm
				}
			}
			assert.False(t, curMin.Before(prevMax), "class %q started before %q ended", classes[i].Name, classes[i-1].Name)
		}

		chk, err := runVerifyRestore(t, o, in)
		require.NoError(t, err)
		assert.True(t, chk.Passed, "%v", chk.Problems)
		assert.Equal(t, int64(len(want)), chk.Checked)
		assert.Equal(t, int64(len(want)), chk.Matched)

		t.Run("without classes, needed restores nothing", func(t *testing.T) {
			bare := e.objects(t, st)
			plan, err := runPlanRestore(t, bare, in)
			require.NoError(t, err)
			assert.Empty(t, plan.Classes)
			assert.Equal(t, int64(len(seed)), plan.Skipped)
			assert.Zero(t, plan.Restore)
		})
	})

	t.Run("live objects: newer kept unless forced, older overwritten after a safety copy", func(t *testing.T) {
		// The set is made from r-src at T2; r-live, the bucket restored,
		// holds an older, different copy of one key written at T1 < T2.
		const bucket, srcBucket = "r-live", "r-src"
		require.NoError(t, e.app.MakeBucket(ctx, bucket))
		require.NoError(t, e.app.MakeBucket(ctx, srcBucket))
		older, newer, same := schemas.BriefKey(2), schemas.BriefKey(5), schemas.BriefKey(8)
		olderBody := objectBody(older, 9, 800)
		_, err := e.src.PutObject(ctx, bucket, older, bytes.NewReader(olderBody), int64(len(olderBody)), minio.PutObjectOptions{})
		require.NoError(t, err)
		time.Sleep(20 * time.Millisecond)

		sizes := map[string]int{}
		for id := int64(1); id <= 20; id++ {
			sizes[schemas.BriefKey(id)] = 900 + int(id)
		}
		seed := newRestoreSeed(sizes)
		seed.put(t, e.src, srcBucket)
		o := e.objects(t, st)
		run := runMirror(t, o, MirrorInput{SetID: "s-live", Bucket: srcBucket, Prefix: MirrorKeyPrefix(bucket),
			ListingKey: "sets/s-live/objects/" + bucket + ".jsonl.zst"}, nil)
		require.NoError(t, run.err)
		mr := run.res
		mr.Bucket = bucket
		in := ObjectRestoreInput{SetID: "s-live", Mirror: mr, Scope: ScopeAll, SafetyPrefix: SafetyObjectsPrefix("wf-live", bucket)}

		// After the set: a newer copy of one key, and an identical copy of
		// another (same bytes, later time: unchanged).
		newerBody := objectBody(newer, 2, 1234)
		_, err = e.src.PutObject(ctx, bucket, newer, bytes.NewReader(newerBody), int64(len(newerBody)), minio.PutObjectOptions{})
		require.NoError(t, err)
		_, err = e.src.PutObject(ctx, bucket, same, bytes.NewReader(seed[same]), int64(len(seed[same])), minio.PutObjectOptions{})
		require.NoError(t, err)

		before := sourceListing(t, e.src, bucket)
		plan, err := runPlanRestore(t, o, in)
		require.NoError(t, err)
		assert.Equal(t, before, sourceListing(t, e.src, bucket), "PlanRestore changes nothing")
		n := int64(len(seed))
		assert.Equal(t, ObjectClassPlan{Name: OtherClass, Listed: n, Missing: n - 3, Overwrite: 1, KeepNewer: 1, Unchanged: 1,
			Bytes: totalBytes(seed) - int64(len(seed[newer])+len(seed[same]))}, plan.Classes[0])
		assert.Equal(t, []string{older}, plan.Examples)
		assert.Equal(t, int64(1), plan.SafetyCopies)

		res := runRestoreObjects(t, o, in, nil)
		require.NoError(t, res.err)
		assert.Equal(t, plan.Classes, res.res.Classes, "the restore does what the plan said")
		assert.Equal(t, plan.Restore, res.res.Restored)
		assert.Equal(t, plan.RestoreBytes, res.res.RestoredBytes)
		assert.Equal(t, int64(1), res.res.SafetyCopied)
		assert.Equal(t, int64(1), res.res.KeptNewer)
		assert.Equal(t, int64(1), res.res.Unchanged)

		sums := liveSums(t, e.src, bucket)
		assert.Equal(t, sumHex(newerBody), sums[newer], "the newer live object survives")
		assert.Equal(t, sumHex(seed[older]), sums[older], "the older live object is overwritten")
		assert.Equal(t, sumHex(olderBody), storedSum(t, st, in.SafetyPrefix+older), "its old content is in the safety prefix")
		_, err = st.Stat(ctx, in.SafetyPrefix+newer)
		assert.ErrorIs(t, err, store.ErrNotFound, "a kept object needs no safety copy")

		chk, err := runVerifyRestore(t, o, in)
		require.NoError(t, err)
		assert.True(t, chk.Passed, "%v", chk.Problems)
		assert.Equal(t, int64(1), chk.KeptNewer)
		assert.Equal(t, n-1, chk.Matched)

		t.Run("a kept object changed after the restore fails verify", func(t *testing.T) {
			body := objectBody(newer, 3, 1234)
			_, err := e.src.PutObject(ctx, bucket, newer, bytes.NewReader(body), int64(len(body)), minio.PutObjectOptions{})
			require.NoError(t, err)
			chk, err := runVerifyRestore(t, o, in)
			require.NoError(t, err)
			assert.False(t, chk.Passed)
			require.Len(t, chk.Problems, 1)
			assert.Contains(t, chk.Problems[0], newer)
			// Put the kept content back for the forced restore below.
			_, err = e.src.PutObject(ctx, bucket, newer, bytes.NewReader(newerBody), int64(len(newerBody)), minio.PutObjectOptions{})
			require.NoError(t, err)
		})

		forced := in
		forced.Force = true
		plan, err = runPlanRestore(t, o, forced)
		require.NoError(t, err)
		assert.Equal(t, ObjectClassPlan{Name: OtherClass, Listed: n, Overwrite: 1, Unchanged: n - 1, Bytes: int64(len(seed[newer]))}, plan.Classes[0])
		assert.Equal(t, []string{newer}, plan.Examples)

		res = runRestoreObjects(t, o, forced, nil)
		require.NoError(t, res.err)
		assert.Equal(t, plan.Classes, res.res.Classes)
		assert.Equal(t, int64(1), res.res.Restored)
		assert.Equal(t, int64(1), res.res.SafetyCopied)
		assert.Zero(t, res.res.KeptNewer)
		sums = liveSums(t, e.src, bucket)
		assert.Equal(t, sumHex(seed[newer]), sums[newer], "forced: overwritten with the set's copy")
		assert.Equal(t, sumHex(newerBody), storedSum(t, st, forced.SafetyPrefix+newer), "forced: the newer copy is in the safety prefix")
		assert.Equal(t, sumHex(olderBody), storedSum(t, st, forced.SafetyPrefix+older), "an earlier safety copy is never replaced")

		chk, err = runVerifyRestore(t, o, forced)
		require.NoError(t, err)
		assert.True(t, chk.Passed, "%v", chk.Problems)
		assert.Equal(t, n, chk.Matched)
	})

	t.Run("a failed restore resumes after the heartbeated cursor", func(t *testing.T) {
		const bucket = "r-resume"
		require.NoError(t, e.app.MakeBucket(ctx, bucket))
		sizes := map[string]int{}
		for id := int64(1); id <= 40; id++ {
			sizes[schemas.BriefKey(id)] = 600 + int(id)
		}
		for i := range 6 {
			sizes[schemas.SkillKey(fmt.Sprintf("s%d", i), schemas.SkillFileName)] = 400
		}
		sizes["misc/x"] = 10
		seed := newRestoreSeed(sizes)
		seed.put(t, e.src, bucket)
		skills := seed.keys(isSkill)
		failAt := skills[3]
		rec := &recordingStore{Store: st, prefix: MirrorKeyPrefix(bucket), failKey: failAt}
		o := e.objects(t, rec)
		o.Concurrency = 1
		briefs := func(k string) bool { return strings.HasPrefix(k, schemas.BriefsPrefix) }
		o.Classes = classesOf(
			profile.ObjectClass{Name: "briefs", Match: briefs},
			profile.ObjectClass{Name: "skills", Match: isSkill})
		in := mirrorSet(t, o, bucket, "s-resume", ScopeAll)
		wipeBucket(t, e.src, bucket, false)

		first := runRestoreObjects(t, o, in, nil)
		require.Error(t, first.err)
		assert.Contains(t, first.err.Error(), "injected network fault")
		require.NotEmpty(t, first.beats)
		hb := first.beats[len(first.beats)-1]
		nBriefs := int64(len(seed.keys(briefs)))
		assert.Equal(t, 1, hb.Class, "the briefs are done")
		assert.Equal(t, skills[2], hb.Cursor, "every skill before the failed one is done")
		assert.Equal(t, nBriefs+3, hb.Restored)
		require.Len(t, hb.Classes, 3)
		assert.Equal(t, nBriefs, hb.Classes[0].Missing)
		assert.Equal(t, int64(3), hb.Classes[1].Missing)

		before := len(rec.reads())
		second := runRestoreObjects(t, o, in, &hb)
		require.NoError(t, second.err)
		reads := rec.reads()[before:]
		require.NotEmpty(t, reads)
		assert.Equal(t, append(slices.Clone(skills[3:]), "misc/x"), reads, "the retry reads only what was left")
		res := second.res
		assert.Equal(t, int64(len(seed)), res.Restored, "the counts add up over both attempts")
		assert.Zero(t, res.Unchanged)
		assert.Equal(t, []ObjectClassPlan{
			{Name: "briefs", Listed: nBriefs, Missing: nBriefs, Bytes: totalBytes(seed, briefs)},
			{Name: "skills", Listed: int64(len(skills)), Missing: int64(len(skills)), Bytes: totalBytes(seed, isSkill)},
			{Name: OtherClass, Listed: 1, Missing: 1, Bytes: 10},
		}, res.Classes)
		assert.Equal(t, totalBytes(seed), res.RestoredBytes)
		sums := liveSums(t, e.src, bucket)
		require.Len(t, sums, len(seed))
		for k, body := range seed {
			assert.Equal(t, sumHex(body), sums[k], k)
		}

		t.Run("heartbeats of other classes start over", func(t *testing.T) {
			stale := ObjectRestoreProgress{Class: 1, Cursor: "zzz", Restored: 99,
				Classes: []ObjectClassPlan{{Name: "something else"}, {Name: "skills"}, {Name: OtherClass}}}
			run := runRestoreObjects(t, o, in, &stale)
			require.NoError(t, run.err)
			assert.Zero(t, run.res.Restored)
			assert.Equal(t, int64(len(seed)), run.res.Unchanged, "every object is looked at again")
		})
	})

	t.Run("a mirror changed since the set is restored as it is, with warnings", func(t *testing.T) {
		const bucket = "r-drift"
		require.NoError(t, e.app.MakeBucket(ctx, bucket))
		seed := newRestoreSeed(map[string]int{"a.json": 100, "b.json": 200, "c.json": 300})
		seed.put(t, e.src, bucket)
		o := e.objects(t, st)
		in := mirrorSet(t, o, bucket, "s-drift-1", ScopeAll)
		// A later mirror run copies a rewritten b.json over the set's copy,
		// and c.json's mirror copy is lost.
		grown := objectBody("b.json", 2, 250)
		_, err := e.src.PutObject(ctx, bucket, "b.json", bytes.NewReader(grown), int64(len(grown)), minio.PutObjectOptions{})
		require.NoError(t, err)
		mirrorSet(t, o, bucket, "s-drift-2", ScopeAll)
		require.NoError(t, st.Delete(ctx, in.Mirror.Prefix+"c.json"))
		wipeBucket(t, e.src, bucket, false)

		plan, err := runPlanRestore(t, o, in)
		require.NoError(t, err)
		assert.Equal(t, int64(2), plan.Restore)
		assert.Equal(t, int64(100+250), plan.RestoreBytes, "the bytes the mirror holds")
		require.Len(t, plan.Warnings, 2, "%v", plan.Warnings)
		assert.Contains(t, plan.Warnings[0], "c.json")
		assert.Contains(t, plan.Warnings[0], "no copy in the mirror")
		assert.Contains(t, plan.Warnings[1], "b.json (250 bytes in the mirror, 200 listed)")

		run := runRestoreObjects(t, o, in, nil)
		require.NoError(t, run.err)
		assert.Equal(t, plan.Warnings, run.res.Warnings)
		assert.Equal(t, int64(2), run.res.Restored)
		sums := liveSums(t, e.src, bucket)
		assert.Equal(t, map[string]string{"a.json": sumHex(seed["a.json"]), "b.json": sumHex(grown)}, sums)

		chk, err := runVerifyRestore(t, o, in)
		require.NoError(t, err)
		assert.False(t, chk.Passed)
		assert.Equal(t, int64(3), chk.Checked)
		assert.Equal(t, int64(1), chk.Matched)
		require.Len(t, chk.Problems, 2, "%v", chk.Problems)
		assert.Contains(t, chk.Problems[0], "b.json: 250 bytes live and in the mirror, 200 in the set's listing")
		assert.Contains(t, chk.Problems[1], "c.json: missing from the live bucket")
	})

	t.Run("errors", func(t *testing.T) {
		const bucket = "r-errors"
		require.NoError(t, e.app.MakeBucket(ctx, bucket))
		newRestoreSeed(map[string]int{"a": 10, "b": 20}).put(t, e.src, bucket)
		o := e.objects(t, st)
		in := mirrorSet(t, o, bucket, "s-errors", ScopeAll)

		for _, tc := range []struct {
			name   string
			change func(*ObjectRestoreInput)
			plan   bool // PlanRestore rejects it too (it needs no safety prefix)
			want   string
		}{
			{"no listing key", func(in *ObjectRestoreInput) { in.Mirror.Listing.Key = "" }, true, `"mirror.listing.key"`},
			{"bad scope", func(in *ObjectRestoreInput) { in.Scope = "most" }, true, `"scope"`},
			{"no bucket", func(in *ObjectRestoreInput) { in.Mirror.Bucket, in.Mirror.Listing.Source = "", "" }, true, `"mirror.bucket"`},
			{"no safety prefix", func(in *ObjectRestoreInput) { in.SafetyPrefix = "" }, false, `"safetyPrefix"`},
			{"safety prefix without slash", func(in *ObjectRestoreInput) { in.SafetyPrefix = "safety/x" }, true, `"safetyPrefix"`},
			{"safety prefix inside the mirror", func(in *ObjectRestoreInput) { in.SafetyPrefix = in.Mirror.Prefix + "safety/" }, true, `"safetyPrefix"`},
		} {
			t.Run(tc.name, func(t *testing.T) {
				bad := in
				tc.change(&bad)
				for name, fn := range map[string]any{"restore": o.RestoreObjects, "verify": o.VerifyRestore, "plan": o.PlanRestore} {
					r := runObjectsActivity[struct{}](t, o, fn, bad, nil)
					if name == "plan" && !tc.plan {
						assert.NoError(t, r.err, name)
						continue
					}
					requireAppError(t, r.err, ErrInvalidInput, tc.want)
				}
			})
		}

		t.Run("a missing listing names the set", func(t *testing.T) {
			bad := in
			bad.SetID = "2026-01-01T02-00-00Z"
			bad.Mirror.Listing.Key = "sets/2026-01-01T02-00-00Z/objects/r-errors.jsonl.zst"
			run := runRestoreObjects(t, o, bad, nil)
			requireAppError(t, run.err, ErrArtifactNotFound, "2026-01-01T02-00-00Z", "pick another set")
			_, err := runPlanRestore(t, o, bad)
			requireAppError(t, err, ErrArtifactNotFound, "pick another set")
		})

		t.Run("a corrupt listing", func(t *testing.T) {
			bad := in
			bad.Mirror.Listing.Key = "sets/corrupt/objects/r-errors.jsonl.zst"
			_, err := st.Put(ctx, bad.Mirror.Listing.Key, strings.NewReader("not zstd at all"), store.PutOptions{})
			require.NoError(t, err)
			run := runRestoreObjects(t, o, bad, nil)
			requireAppError(t, run.err, ErrListingCorrupt, bad.Mirror.Listing.Key, "pick another set")
		})

		t.Run("a listing that is not the manifest's", func(t *testing.T) {
			wipeBucket(t, e.src, bucket, false)
			bad := in
			bad.Mirror.Listing.SHA256 = strings.Repeat("0", 64)
			run := runRestoreObjects(t, o, bad, nil)
			requireAppError(t, run.err, ErrListingCorrupt, in.Mirror.Listing.Key, "sha256", "pick another set")
			_, err := runPlanRestore(t, o, bad)
			requireAppError(t, err, ErrListingCorrupt, "pick another set")
			assert.Empty(t, liveSums(t, e.src, bucket), "nothing restored")
		})

		t.Run("rejected credentials", func(t *testing.T) {
			cfg := e.appConfig()
			const wrong = "wrong-secret-key-0123456789"
			cfg.SecretKey = config.Secret(wrong)
			badCreds, err := NewObjects(cfg, st)
			require.NoError(t, err)
			run := runRestoreObjects(t, badCreds, in, nil)
			appErr := requireAppError(t, run.err, ErrMinIOCredentials, bucket, "DRFLOW_MINIO_SECRET_KEY")
			assert.NotContains(t, appErr.Error(), wrong)
			assert.NotContains(t, appErr.Error(), e.app.SecretKey())
		})

		t.Run("a missing backup bucket is a store error", func(t *testing.T) {
			missing := e.s3Store(t, "no-backup-bucket", false)
			run := runRestoreObjects(t, e.objects(t, missing), in, nil)
			appErr := requireAppError(t, run.err, ErrStore, "no-backup-bucket")
			assert.NotContains(t, appErr.Error(), e.backup.SecretKey())
		})

		t.Run("a class without Match is a configuration error", func(t *testing.T) {
			co := e.objects(t, st)
			co.Classes = classesOf(profile.ObjectClass{Name: "briefs"})
			_, err := runPlanRestore(t, co, in)
			requireAppError(t, err, ErrInvalidConfig, "briefs")
		})
	})
}

func totalBytes(s restoreSeed, match ...func(string) bool) int64 {
	var n int64
	for k, b := range s {
		if len(match) == 0 || match[0](k) {
			n += int64(len(b))
		}
	}
	return n
}

func TestObjectRestoreTracker(t *testing.T) {
	resume := ObjectRestoreProgress{Class: 1, Cursor: "m", Restored: 4, RestoredBytes: 40,
		Classes: []ObjectClassPlan{{Name: "a", Missing: 3}, {Name: "b", Missing: 1}}}
	tr := newRestoreTracker(resume)
	tr.startClass(1)
	assert.Equal(t, "m", tr.progress().Cursor, "a resumed class keeps its cursor")

	n := &restoreEntry{key: "n"}
	o := &restoreEntry{key: "o"}
	jn, jo := tr.start(n), tr.start(o)
	tr.skip("p", restoreDelta{unchanged: 2})
	tr.finish(jo, restoreDelta{missing: 1, bytes: 5})
	p := tr.progress()
	assert.Equal(t, "m", p.Cursor, "o finished before n: the cursor waits")
	assert.Equal(t, int64(4), p.Restored, "counts cover only the keys up to the cursor")
	assert.Zero(t, p.Unchanged)

	tr.finish(jn, restoreDelta{overwrite: 1, safety: 1, bytes: 7})
	p = tr.progress()
	assert.Equal(t, "p", p.Cursor)
	assert.Equal(t, int64(6), p.Restored)
	assert.Equal(t, int64(52), p.RestoredBytes)
	assert.Equal(t, int64(1), p.SafetyCopied)
	assert.Equal(t, int64(2), p.Unchanged)
	assert.Equal(t, ObjectClassPlan{Name: "b", Missing: 2, Overwrite: 1, Unchanged: 2, Bytes: 12}, p.Classes[1])
	assert.Equal(t, ObjectClassPlan{Name: "a", Missing: 3}, p.Classes[0])

	tr.endClass(2)
	p = tr.progress()
	assert.Equal(t, 2, p.Class)
	assert.Empty(t, p.Cursor)

	p.Classes[0].Missing = 100
	assert.Equal(t, int64(3), tr.progress().Classes[0].Missing, "progress hands out a copy")
	assert.Equal(t, int64(3), resume.Classes[0].Missing, "the resumed details are not changed")
}

// TestRestoreObjectsRetryAfterKill is the crash test's case: an attempt
// killed after safety-copying and overwriting objects past its last
// heartbeat. The retry finds them equal to the set's copies; it must still
// count them as overwritten and safety-copied, as an uninterrupted run does.
func TestRestoreObjectsRetryAfterKill(t *testing.T) {
	ctx := context.Background()
	e := newMirrorEnv(t)
	st := e.s3Store(t, "drflow-backup", true)

	// The set is made from r-kill-src; r-kill-a (restored without a failure)
	// and r-kill-b (restored by failing attempts) start alike: older,
	// different copies of some keys, equal copies of most, some missing.
	const srcBucket, liveA, liveB = "r-kill-src", "r-kill-a", "r-kill-b"
	for _, b := range []string{srcBucket, liveA, liveB} {
		require.NoError(t, e.app.MakeBucket(ctx, b))
	}
	sizes := map[string]int{}
	for id := int64(1); id <= 12; id++ {
		sizes[schemas.BriefKey(id)] = 700 + int(id)
	}
	for i := range 4 {
		sizes[schemas.SkillKey(fmt.Sprintf("s%d", i), schemas.SkillFileName)] = 500 + i
	}
	for _, k := range []string{"misc/a", "misc/b", "misc/c"} {
		sizes[k] = 60
	}
	seed := newRestoreSeed(sizes)
	briefs := func(k string) bool { return strings.HasPrefix(k, schemas.BriefsPrefix) }
	b, skills := seed.keys(briefs), seed.keys(isSkill)
	// Restore order (Concurrency 1): b..., skills..., misc/a..c.
	missing := []string{b[0], b[2]}
	older := []string{b[1], b[4], b[7], b[10], skills[1], skills[3], "misc/b"}
	failAt := b[4] // the first attempt fails reading its mirror copy, after its safety copy
	olderSizes := map[string]int{}
	for _, k := range older {
		olderSizes[k] = sizes[k]
	}
	for _, live := range []string{liveA, liveB} {
		require.NoError(t, putObjects(ctx, e.src, live, olderSizes, 9))
	}
	time.Sleep(20 * time.Millisecond)
	seed.put(t, e.src, srcBucket)
	o := e.objects(t, st)
	mr := runMirror(t, o, MirrorInput{SetID: "s-kill", Bucket: srcBucket, Prefix: MirrorKeyPrefix("r-kill"),
		ListingKey: "sets/s-kill/objects/r-kill.jsonl.zst"}, nil)
	require.NoError(t, mr.err)
	equalSizes := map[string]int{}
	for k, n := range sizes {
		if !slices.Contains(missing, k) && !slices.Contains(older, k) {
			equalSizes[k] = n
		}
	}
	for _, live := range []string{liveA, liveB} {
		require.NoError(t, putObjects(ctx, e.src, live, equalSizes, 1))
	}
	input := func(live string) ObjectRestoreInput {
		m := mr.res
		m.Bucket = live
		return ObjectRestoreInput{SetID: "s-kill", Mirror: m, Scope: ScopeAll, SafetyPrefix: SafetyObjectsPrefix("wf-"+live, live)}
	}
	classes := classesOf(
		profile.ObjectClass{Name: "briefs", Match: briefs},
		profile.ObjectClass{Name: "skills", Match: isSkill})
	o.Classes = classes

	// The reference: one uninterrupted attempt.
	inA := input(liveA)
	ref := runRestoreObjects(t, o, inA, nil)
	require.NoError(t, ref.err)
	want := ref.res
	want.Bucket = liveB
	var missingBytes int64
	for _, k := range missing {
		missingBytes += int64(len(seed[k]))
	}
	require.Equal(t, int64(len(older)), want.SafetyCopied)
	require.Equal(t, int64(len(older)+len(missing)), want.Restored)
	require.Equal(t, int64(len(seed)-len(older)-len(missing)), want.Unchanged)
	require.Equal(t, totalBytes(seed, keySet(append(slices.Clone(older), missing...))), want.RestoredBytes)

	// Attempt 1 fails at failAt: its last heartbeat covers b[0..3], and
	// failAt's live content is in the safety prefix already.
	inB := input(liveB)
	rec := &recordingStore{Store: st, prefix: inB.Mirror.Prefix, failKey: failAt}
	ob := e.objects(t, rec)
	ob.Concurrency = 1
	ob.Classes = classes
	first := runRestoreObjects(t, ob, inB, nil)
	require.Error(t, first.err)
	require.Contains(t, first.err.Error(), "injected network fault")
	require.NotEmpty(t, first.beats)
	hb := first.beats[len(first.beats)-1]
	require.Equal(t, 0, hb.Class)
	require.Equal(t, b[3], hb.Cursor)
	require.Equal(t, int64(1), hb.SafetyCopied)
	_, err := st.Stat(ctx, inB.SafetyPrefix+failAt)
	require.NoError(t, err, "the failed attempt safety-copied %s", failAt)

	// Attempt 2 resumes from that heartbeat and does the rest.
	second := runRestoreObjects(t, ob, inB, &hb)
	require.NoError(t, second.err)
	assert.Equal(t, want, second.res, "a resumed restore reports what an uninterrupted one does")

	// Had attempt 2 been killed before heartbeating anything, attempt 3
	// resumes from the same heartbeat and finds every later object
	// restored already.
	third := runRestoreObjects(t, ob, inB, &hb)
	require.NoError(t, third.err)
	assert.Equal(t, want, third.res, "objects overwritten after the last heartbeat count as overwritten")

	// Killed before its first heartbeat with any progress: the retry
	// starts from the beginning. Only the objects that were missing count
	// otherwise (as unchanged): nothing records that they were restored.
	start := ObjectRestoreProgress{Classes: newClassPlans([]string{"briefs", "skills", OtherClass})}
	fresh := runRestoreObjects(t, ob, inB, &start)
	require.NoError(t, fresh.err)
	got := fresh.res
	assert.Equal(t, want.SafetyCopied, got.SafetyCopied)
	assert.Equal(t, want.Restored-int64(len(missing)), got.Restored)
	assert.Equal(t, want.RestoredBytes-missingBytes, got.RestoredBytes)
	assert.Equal(t, want.Restored+want.Unchanged, got.Restored+got.Unchanged)
	assert.Equal(t, want.KeptNewer, got.KeptNewer)
	wantClasses := slices.Clone(want.Classes)
	wantClasses[0].Missing -= int64(len(missing))
	wantClasses[0].Unchanged += int64(len(missing))
	wantClasses[0].Bytes -= missingBytes
	assert.Equal(t, wantClasses, got.Classes)

	// The data is right, and the safety copies are the first attempt's.
	sums := liveSums(t, e.src, liveB)
	require.Len(t, sums, len(seed))
	for k, body := range seed {
		assert.Equal(t, sumHex(body), sums[k], k)
	}
	for _, k := range older {
		assert.Equal(t, sumHex(objectBody(k, 9, sizes[k])), storedSum(t, st, inB.SafetyPrefix+k), k)
	}
	chk, err := runVerifyRestore(t, o, inB)
	require.NoError(t, err)
	assert.True(t, chk.Passed, "%v", chk.Problems)
}
