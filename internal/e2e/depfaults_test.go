//go:build faults

package e2e

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/minio/minio-go/v7"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"

	"github.com/kohakku/drflow/activities"
	"github.com/kohakku/drflow/internal/app"
	"github.com/kohakku/drflow/internal/stack"
	"github.com/kohakku/drflow/schemas"
	"github.com/kohakku/drflow/workflows"
)

// Dependency faults while a runbook runs (make test-faults). Each test starts a runbook
// on its own stack, waits until one step is in the middle of its work on one dependency
// — detected on the dependency itself, polled every depPoll — kills that dependency with
// SIGKILL, as a crash would, and starts it again on the same port and data. The runbook
// must still end correct, checked with tools that share no code with drflow (pg_restore,
// redis-server, zstd, minio-go; see nightly_test.go), and its history must show that the
// step was retried. Temporal itself is the exception: the worker and the client ride out
// its restart with RPC retries, which no history records, and the tests assert instead
// that no step was lost or run twice.
//
// The data each test needs to make its step last long enough to be caught (a ballast
// table, ballast Redis keys, ballast objects) is added after the seeder ran, beside the
// Kohakku data and never in its tables or keys, so every check of the seeded data holds.
// When a step ends before the fault could be injected, the test fails and says so:
// the fix is more ballast, never a skip.

const (
	// depPoll is how often a test looks for the moment to inject its fault.
	depPoll = 50 * time.Millisecond
	// depTimeout bounds each test, start of its stack to the last check.
	depTimeout = 4 * time.Minute
	// depBallastTable is the ballast table's name in a Kohakku database.
	depBallastTable = "depfault_ballast"
	// depBallastPrefix prefixes the ballast Redis keys and objects.
	depBallastPrefix = "depfault-ballast/"
)

// depRun is a runbook started by a test, awaited in the background so a test can watch
// the run while it works and notice when it ended before the fault was injected.
type depRun[R any] struct {
	id   string
	done chan struct{}
	res  R
	err  error
}

// depStart starts runbook typ on e's worker and awaits it in the background. The wait
// survives a restart of the Temporal server: errors that are not the run's own outcome
// (the server unreachable, a long poll cut) are waited out until ctx ends.
func depStart[R any](ctx context.Context, t *testing.T, e *env, id, typ string, in any) *depRun[R] {
	t.Helper()
	run, err := e.c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: e.queue}, typ, in)
	require.NoError(t, err)
	r := &depRun[R]{id: id, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for {
			var res R
			err := e.c.GetWorkflow(ctx, id, run.GetRunID()).Get(ctx, &res)
			var wfErr *temporal.WorkflowExecutionError
			if err == nil || errors.As(err, &wfErr) || ctx.Err() != nil {
				r.res, r.err = res, err
				return
			}
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	return r
}

func (r *depRun[R]) ended() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// wait returns the run's result once it ended.
func (r *depRun[R]) wait(t *testing.T) (R, error) {
	t.Helper()
	<-r.done
	return r.res, r.err
}

// depUntil polls cond every depPoll until it holds and returns how long that took. It
// fails the test when the run ends first (the step finished before the fault could be
// injected: the data is too small) or after timeout.
func depUntil[R any](t *testing.T, r *depRun[R], timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		if cond() {
			return time.Since(start)
		}
		if r.ended() {
			_, err := r.wait(t)
			t.Fatalf("run %s ended (err %v) before %s: the step was over before the fault could be injected; add ballast", r.id, err, what)
		}
		if time.Since(start) > timeout {
			t.Fatalf("run %s: no %s within %s", r.id, what, timeout)
		}
		time.Sleep(depPoll)
	}
}

// depHistory summarizes what a run's history (and its children's) says about retries.
type depHistory struct {
	// Retries lists every activity attempt after the first, as
	// "<workflow>/<activity> attempt N after: <last failure>".
	Retries []string
	// MaxAttempt is the highest attempt that started, per activity type (this run only).
	MaxAttempt map[string]int32
	// Faults lists failed or timed-out activities and workflow tasks.
	Faults []string
	// Events counts the history events, children included.
	Events int
}

// retried returns the highest attempt of activity type typ in the run itself (1: it
// was never retried; 0: it never ran).
func (h depHistory) retried(typ string) int32 { return h.MaxAttempt[typ] }

func (h depHistory) String() string {
	return fmt.Sprintf("%d events; retries: %s; faults: %s", h.Events, depOrNone(h.Retries), depOrNone(h.Faults))
}

func depOrNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, "; ")
}

// depReadHistory reads the history of workflow id and of its child workflows.
func depReadHistory(ctx context.Context, t *testing.T, e *env, id string) depHistory {
	t.Helper()
	h := depHistory{MaxAttempt: map[string]int32{}}
	depAddHistory(ctx, t, e, id, &h, true)
	return h
}

func depAddHistory(ctx context.Context, t *testing.T, e *env, id string, h *depHistory, top bool) {
	t.Helper()
	short := func(s string) string {
		if len(s) > 240 {
			return s[:240] + "…"
		}
		return s
	}
	iter := e.c.GetWorkflowHistory(ctx, id, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	scheduled := map[int64]string{}
	var children []string
	for iter.HasNext() {
		ev, err := iter.Next()
		require.NoError(t, err)
		h.Events++
		if a := ev.GetActivityTaskScheduledEventAttributes(); a != nil {
			scheduled[ev.GetEventId()] = a.GetActivityType().GetName()
		}
		if a := ev.GetActivityTaskStartedEventAttributes(); a != nil {
			typ := scheduled[a.GetScheduledEventId()]
			if top && a.GetAttempt() > h.MaxAttempt[typ] {
				h.MaxAttempt[typ] = a.GetAttempt()
			}
			if a.GetAttempt() > 1 {
				h.Retries = append(h.Retries, fmt.Sprintf("%s/%s attempt %d after: %s", id, typ, a.GetAttempt(), short(a.GetLastFailure().GetMessage())))
			}
		}
		if a := ev.GetActivityTaskFailedEventAttributes(); a != nil {
			h.Faults = append(h.Faults, fmt.Sprintf("%s/%s failed: %s", id, scheduled[a.GetScheduledEventId()], short(a.GetFailure().GetMessage())))
		}
		if a := ev.GetActivityTaskTimedOutEventAttributes(); a != nil {
			h.Faults = append(h.Faults, fmt.Sprintf("%s/%s timed out: %s", id, scheduled[a.GetScheduledEventId()], short(a.GetFailure().GetMessage())))
		}
		if a := ev.GetWorkflowTaskTimedOutEventAttributes(); a != nil {
			h.Faults = append(h.Faults, fmt.Sprintf("%s workflow task timed out (%s)", id, a.GetTimeoutType()))
		}
		if a := ev.GetWorkflowTaskFailedEventAttributes(); a != nil {
			h.Faults = append(h.Faults, fmt.Sprintf("%s workflow task failed (%s): %s", id, a.GetCause(), short(a.GetFailure().GetMessage())))
		}
		if a := ev.GetChildWorkflowExecutionStartedEventAttributes(); a != nil {
			children = append(children, a.GetWorkflowExecution().GetWorkflowId())
		}
	}
	for _, c := range children {
		depAddHistory(ctx, t, e, c, h, false)
	}
}

// depActivity is one activity of a run's history.
type depActivity struct {
	Type    string
	Attempt int32     // the attempt that closed it (0 while open)
	Closed  time.Time // when it completed, failed or timed out (zero while open)
}

// depActivities returns the activities of run id (not of its children) by scheduled
// event id.
func depActivities(ctx context.Context, t *testing.T, e *env, id string) map[int64]*depActivity {
	t.Helper()
	out := map[int64]*depActivity{}
	iter := e.c.GetWorkflowHistory(ctx, id, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for iter.HasNext() {
		ev, err := iter.Next()
		require.NoError(t, err)
		switch {
		case ev.GetActivityTaskScheduledEventAttributes() != nil:
			out[ev.GetEventId()] = &depActivity{Type: ev.GetActivityTaskScheduledEventAttributes().GetActivityType().GetName()}
		case ev.GetActivityTaskStartedEventAttributes() != nil:
			a := ev.GetActivityTaskStartedEventAttributes()
			out[a.GetScheduledEventId()].Attempt = a.GetAttempt()
		case ev.GetActivityTaskCompletedEventAttributes() != nil:
			out[ev.GetActivityTaskCompletedEventAttributes().GetScheduledEventId()].Closed = ev.GetEventTime().AsTime()
		case ev.GetActivityTaskFailedEventAttributes() != nil:
			out[ev.GetActivityTaskFailedEventAttributes().GetScheduledEventId()].Closed = ev.GetEventTime().AsTime()
		case ev.GetActivityTaskTimedOutEventAttributes() != nil:
			out[ev.GetActivityTaskTimedOutEventAttributes().GetScheduledEventId()].Closed = ev.GetEventTime().AsTime()
		}
	}
	return out
}

// depPendingFailure returns a description of pending activity typ of run id once it has
// failed at least once (the server has scheduled its retry), or "".
func depPendingFailure(ctx context.Context, e *env, id, typ string) string {
	d, err := e.c.DescribeWorkflowExecution(ctx, id, "")
	if err != nil {
		return ""
	}
	for _, pa := range d.GetPendingActivities() {
		if pa.GetActivityType().GetName() == typ && (pa.GetAttempt() > 1 || pa.GetLastFailure() != nil) {
			return fmt.Sprintf("%s attempt %d after: %s", typ, pa.GetAttempt(), pa.GetLastFailure().GetMessage())
		}
	}
	return ""
}

// depSetID returns the set id a NightlyBackup run writes (its DrTarget search
// attribute), or "" before the run has set it.
func depSetID(ctx context.Context, e *env, id string) string {
	d, err := e.c.DescribeWorkflowExecution(ctx, id, "")
	if err != nil {
		return ""
	}
	p := d.GetWorkflowExecutionInfo().GetSearchAttributes().GetIndexedFields()[workflows.SearchAttrTarget.GetName()]
	var set string
	if p == nil || converter.GetDefaultDataConverter().FromPayload(p, &set) != nil {
		return ""
	}
	return set
}

// depUploading tells whether a multipart upload of key is in progress in the backup
// store. MinIO lists the uploads of one exact key only, not of a prefix.
func depUploading(ctx context.Context, e *env, key string) bool {
	for u := range e.backup.ListIncompleteUploads(ctx, backupBucket, key, false) {
		if u.Err == nil && u.Key == key {
			return true
		}
	}
	return false
}

// depBallastPostgres adds a table of rows×1 KiB of random hex (zstd halves it, no more)
// to database db: enough for pg_dump and the upload of its output to take a while.
func depBallastPostgres(ctx context.Context, t *testing.T, e *env, db string, rows int) {
	t.Helper()
	conn, err := pgx.Connect(ctx, e.st.Postgres.URL(db))
	require.NoError(t, err)
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, `CREATE TABLE `+depBallastTable+` (id int PRIMARY KEY, payload text NOT NULL)`)
	require.NoError(t, err)
	_, err = conn.Exec(ctx, `INSERT INTO `+depBallastTable+`
		SELECT g, (SELECT string_agg(md5(random()::text || g::text || i::text), '') FROM generate_series(1, 32) i)
		FROM generate_series(1, $1) g`, rows)
	require.NoError(t, err)
}

// depBallastRedis adds n string keys, each a value of size random hex digits, beside
// the Kohakku keys and returns the DBSIZE after.
func depBallastRedis(ctx context.Context, t *testing.T, e *env, n, size int) int64 {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: e.st.Redis.Addr()})
	defer rdb.Close()
	buf := make([]byte, size/2)
	for i := 0; i < n; {
		pipe := rdb.Pipeline()
		for j := 0; j < 2000 && i < n; j, i = j+1, i+1 {
			for k := range buf {
				buf[k] = byte(rand.Uint32())
			}
			pipe.Set(ctx, fmt.Sprintf("%s%08d", depBallastPrefix, i), hex.EncodeToString(buf), 0)
		}
		_, err := pipe.Exec(ctx)
		require.NoError(t, err)
	}
	got, err := rdb.DBSize(ctx).Result()
	require.NoError(t, err)
	return got
}

// depBallastObjects adds n objects of size random bytes to the app's bucket under
// depBallastPrefix.
func depBallastObjects(ctx context.Context, t *testing.T, e *env, n, size int) {
	t.Helper()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	next := make(chan int)
	for range 16 {
		wg.Go(func() {
			b := make([]byte, size)
			for i := range next {
				for k := range b {
					b[k] = byte(rand.Uint32())
				}
				_, err := e.objects.PutObject(ctx, schemas.DefaultBucket, fmt.Sprintf("%sobj-%06d", depBallastPrefix, i),
					strings.NewReader(string(b)), int64(len(b)), minio.PutObjectOptions{ContentType: "application/octet-stream"})
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
}

// depSourceKeys lists the app's bucket, sorted.
func depSourceKeys(ctx context.Context, t *testing.T, e *env) []string {
	t.Helper()
	var keys []string
	for o := range e.objects.ListObjects(ctx, schemas.DefaultBucket, minio.ListObjectsOptions{Recursive: true}) {
		require.NoError(t, o.Err)
		keys = append(keys, o.Key)
	}
	sort.Strings(keys)
	return keys
}

// depMirrorState is every object of the bucket's mirror in the backup store: key →
// ETag and modification time, which change when the object is written again.
func depMirrorState(ctx context.Context, t *testing.T, e *env) map[string]string {
	t.Helper()
	out := map[string]string{}
	for o := range e.backup.ListObjects(ctx, backupBucket, minio.ListObjectsOptions{Prefix: activities.MirrorKeyPrefix(schemas.DefaultBucket), Recursive: true}) {
		require.NoError(t, o.Err)
		out[o.Key] = o.ETag + " " + o.LastModified.Format(time.RFC3339Nano)
	}
	return out
}

// depListSets lists the sets as `starter backups list` does: activities built from the
// configuration by app.New, then BackupStore.ListSets.
func depListSets(ctx context.Context, t *testing.T, e *env) func(context.Context) ([]activities.SetInfo, error) {
	t.Helper()
	acts, err := app.New(ctx, e.cfg)
	require.NoError(t, err)
	return acts.BackupStore.ListSets
}

// depCheckSet checks a NightlyBackup result as TestNightlyBackupEndToEnd does: the stored
// manifest is the returned one, every artifact has its size and checksum and passes its
// independent check (pg_restore and row counts, redis-server and DBSIZE, the listing
// against the source bucket and the mirror, SQLite's integrity check), the set is listed
// complete and verified, and no multipart upload is left in the store.
func depCheckSet(ctx context.Context, t *testing.T, e *env, res workflows.NightlyBackupResult) {
	t.Helper()
	man := res.Manifest
	require.NotEmpty(t, res.SetID)
	require.Len(t, man.Artifacts, 5, "2 dumps, 1 rdb, 1 sqlite, 1 listing")

	mf, _ := e.getObject(ctx, t, activities.SetKey(res.SetID, activities.ManifestName), t.TempDir())
	b, err := os.ReadFile(mf)
	require.NoError(t, err)
	require.NoError(t, schemas.Validate(schemas.ManifestSchemaFile, b), "manifest.json against its JSON Schema")
	var stored activities.Manifest
	require.NoError(t, json.Unmarshal(b, &stored))
	assert.Equal(t, res.SetID, stored.SetID)
	sums := func(m activities.Manifest) map[string]string {
		out := map[string]string{}
		for _, a := range m.Artifacts {
			out[a.Key] = fmt.Sprintf("%s %d", a.SHA256, a.Size)
		}
		return out
	}
	assert.Equal(t, sums(man), sums(stored), "the stored manifest names the artifacts the run returned")

	dir := t.TempDir()
	kinds := map[string]int{}
	for _, a := range man.Artifacts {
		kinds[a.Kind]++
		require.NoError(t, os.Remove(checkArtifact(ctx, t, e, a, dir)))
	}
	assert.Equal(t, map[string]int{activities.KindPostgres: 2, activities.KindRedis: 1, activities.KindSQLite: 1, activities.KindListing: 1}, kinds)
	require.Len(t, man.Mirrors, 1)
	assert.Equal(t, int64(len(depSourceKeys(ctx, t, e))), man.Mirrors[0].Objects)
	require.NotNil(t, res.Verify, "the child VerifyBackup ran")
	assert.True(t, res.Verify.Passed, "the set passed verification")

	list := depListSets(ctx, t, e)
	sets, err := list(ctx)
	require.NoError(t, err)
	var found bool
	for _, s := range sets {
		if s.ID == res.SetID {
			found = true
			assert.True(t, s.Complete, "set %s listed complete", s.ID)
			assert.Equal(t, activities.VerifiedPassed, s.Verified)
		}
	}
	assert.True(t, found, "set %s listed", res.SetID)
	// MinIO lists the uploads of one exact key, so every key of the set is asked.
	var uploads []string
	for _, key := range append(depArtifactKeys(man), activities.SetKey(res.SetID, activities.ManifestName)) {
		for u := range e.backup.ListIncompleteUploads(ctx, backupBucket, key, false) {
			require.NoError(t, u.Err)
			uploads = append(uploads, fmt.Sprintf("%s (upload %s, %d bytes in parts, started %s)", u.Key, u.UploadID, u.Size, u.Initiated.Format(time.RFC3339)))
		}
	}
	assert.Empty(t, uploads, "no multipart upload left in the backup store")
}

func depArtifactKeys(m activities.Manifest) []string {
	var keys []string
	for _, a := range m.Artifacts {
		keys = append(keys, a.Key)
	}
	return keys
}

// TestDependencyFaultBackupStoreMidUpload kills the backup store (the S3 MinIO) while a
// database dump is being uploaded in parts, keeps it down until the run has recorded a
// failed attempt, and starts it again. Throughout the run the sets are listed the way
// `starter backups list` lists them: no listing may show a set complete unless its
// manifest and every artifact it names are in the store. The retry completes the set.
func TestDependencyFaultBackupStoreMidUpload(t *testing.T) {
	t.Parallel() // each test has its own stack
	e := newEnv(t, 300)
	ctx, cancel := context.WithTimeout(context.Background(), depTimeout)
	defer cancel()
	// About 48 MiB of dump, 25 MiB stored: a multipart upload of two 16 MiB parts.
	depBallastPostgres(ctx, t, e, schemas.ControllerDB, 48<<10)

	// The lister: every listing that shows a set complete is checked against the store,
	// with minio-go, at once (the manifest is written last, so its artifacts must be
	// there already).
	list := depListSets(ctx, t, e)
	var (
		mu         sync.Mutex
		listings   int
		listErrs   int
		incomplete int // listings that showed a set incomplete
		// restartedAt is when the store came back; set is the run's set id.
		restartedAt time.Time
		set         string
		// incompleteAfter counts the listings begun after the restart that showed the
		// run's set incomplete (its dump retry still running).
		incompleteAfter int
		checkedSets     = map[string]bool{}
		violations      []string
	)
	checkComplete := func(id string) error {
		obj, err := e.backup.GetObject(ctx, backupBucket, activities.SetKey(id, activities.ManifestName), minio.GetObjectOptions{})
		if err != nil {
			return err
		}
		defer obj.Close()
		var m activities.Manifest
		if err := json.NewDecoder(obj).Decode(&m); err != nil {
			return err
		}
		for _, a := range m.Artifacts {
			info, err := e.backup.StatObject(ctx, backupBucket, a.Key, minio.StatObjectOptions{})
			if err != nil {
				return fmt.Errorf("artifact %s: %w", a.Key, err)
			}
			if info.Size != a.Size {
				mu.Lock()
				violations = append(violations, fmt.Sprintf("set %s listed complete, artifact %s has %d bytes, manifest says %d", id, a.Key, info.Size, a.Size))
				mu.Unlock()
			}
		}
		return nil
	}
	listerCtx, stopLister := context.WithCancel(ctx)
	var listerWG sync.WaitGroup
	listerWG.Go(func() {
		for listerCtx.Err() == nil {
			began := time.Now()
			lctx, lcancel := context.WithTimeout(listerCtx, 20*time.Second)
			sets, err := list(lctx)
			lcancel()
			mu.Lock()
			listings++
			if err != nil {
				listErrs++
			}
			mu.Unlock()
			for _, s := range sets {
				if !s.Complete {
					mu.Lock()
					incomplete++
					if s.ID == set && !restartedAt.IsZero() && began.After(restartedAt) {
						incompleteAfter++
					}
					mu.Unlock()
					continue
				}
				mu.Lock()
				done := checkedSets[s.ID]
				mu.Unlock()
				if done {
					continue
				}
				if err := checkComplete(s.ID); err != nil {
					if listerCtx.Err() == nil && e.st.Backup.Running() {
						mu.Lock()
						violations = append(violations, fmt.Sprintf("set %s listed complete: %v", s.ID, err))
						mu.Unlock()
					}
					continue // store down again: checked on the next listing
				}
				mu.Lock()
				checkedSets[s.ID] = true
				mu.Unlock()
			}
			select {
			case <-listerCtx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	})
	defer func() { stopLister(); listerWG.Wait() }()

	id := "depfault-store"
	run := depStart[workflows.NightlyBackupResult](ctx, t, e, id, workflows.NightlyBackupName, workflows.NightlyBackupInput{})
	var runSet, uploading string
	took := depUntil(t, run, 2*time.Minute, "multipart upload of the dump in the store", func() bool {
		if runSet == "" {
			runSet = depSetID(ctx, e, id)
			mu.Lock()
			set = runSet
			mu.Unlock()
			return false
		}
		uploading = activities.PostgresKey(runSet, schemas.ControllerDB)
		return depUploading(ctx, e, uploading)
	})
	t.Logf("dump upload under way after %s: %s; killing the backup store", took.Round(time.Millisecond), uploading)
	killed := time.Now()
	require.NoError(t, e.st.Backup.Kill())

	// While the store is down the set cannot be listed complete: a listing fails.
	sets, err := list(ctx)
	for _, s := range sets {
		assert.False(t, s.Complete, "set %s listed complete while the store is down", s.ID)
	}
	t.Logf("listing while the store is down: %d sets, err %v", len(sets), err)
	assert.Error(t, err, "the store is down")

	// Down until the dump's attempt has failed: the store client's own retries of the
	// part upload and then of the abort are exhausted (about a minute, see store.S3), so
	// the retry is Temporal's and shows in the history. A shorter outage is absorbed by
	// the client's retries and shows nowhere.
	var failure string
	for failure == "" {
		require.Less(t, time.Since(killed), 150*time.Second, "the dump's attempt never failed with the store down")
		require.False(t, run.ended(), "run ended with the store down")
		failure = depPendingFailure(ctx, e, id, "Dump")
		time.Sleep(100 * time.Millisecond)
	}
	down := time.Since(killed)
	require.NoError(t, e.st.Backup.Start(ctx))
	mu.Lock()
	restartedAt = time.Now()
	mu.Unlock()
	t.Logf("store down %s; restarted; first failed attempt: %s", down.Round(time.Millisecond), failure)

	res, err := run.wait(t)
	require.NoError(t, err)
	stopLister()
	listerWG.Wait()
	t.Logf("run completed %s after the kill", time.Since(killed).Round(time.Millisecond))

	mu.Lock()
	assert.Empty(t, violations, "an incomplete set was listed as complete")
	assert.Positive(t, listErrs, "listings failed while the store was down")
	assert.Positive(t, incompleteAfter, "after the restart the set was listed, incomplete, while the dump was retried")
	assert.True(t, checkedSets[res.SetID], "the lister saw the set complete (and checked it) before the end")
	t.Logf("lister: %d listings, %d failed, %d showed a set incomplete (%d of the run's set after the restart), complete sets checked: %v",
		listings, listErrs, incomplete, incompleteAfter, checkedSets)
	mu.Unlock()

	depCheckSet(ctx, t, e, res)
	h := depReadHistory(ctx, t, e, id)
	t.Logf("history: %s", h)
	assert.GreaterOrEqual(t, h.retried("Dump"), int32(2), "the dump was retried")
}

// TestDependencyFaultPostgresMidDump crashes PostgreSQL while pg_dump copies a table and
// starts it again at once (crash recovery). The dump is retried from the start and
// restores with the manifest's row counts.
func TestDependencyFaultPostgresMidDump(t *testing.T) {
	t.Parallel() // each test has its own stack
	e := newEnv(t, 300)
	ctx, cancel := context.WithTimeout(context.Background(), depTimeout)
	defer cancel()
	const rows = 32 << 10
	depBallastPostgres(ctx, t, e, schemas.ControllerDB, rows)
	admin, err := pgx.Connect(ctx, e.st.Postgres.URL("postgres"))
	require.NoError(t, err)

	id := "depfault-postgres"
	run := depStart[workflows.NightlyBackupResult](ctx, t, e, id, workflows.NightlyBackupName, workflows.NightlyBackupInput{})
	var query string
	took := depUntil(t, run, 2*time.Minute, "pg_dump copying the ballast table", func() bool {
		err := admin.QueryRow(ctx, `SELECT query FROM pg_stat_activity
			WHERE application_name = 'drflow pg_dump' AND datname = $1 AND state = 'active' AND query LIKE 'COPY %`+depBallastTable+`%'`,
			schemas.ControllerDB).Scan(&query)
		return err == nil
	})
	t.Logf("pg_dump under way after %s: %q; killing PostgreSQL", took.Round(time.Millisecond), query)
	killed := time.Now()
	require.NoError(t, e.st.Postgres.Kill())
	admin.Close(ctx) // its server is gone
	require.NoError(t, e.st.Postgres.Start(ctx))
	t.Logf("PostgreSQL restarted after %s (crash recovery)", time.Since(killed).Round(time.Millisecond))

	res, err := run.wait(t)
	require.NoError(t, err)
	t.Logf("run completed %s after the kill", time.Since(killed).Round(time.Millisecond))
	depCheckSet(ctx, t, e, res)
	// The table whose COPY was cut is whole in the dump (checkDump restored it).
	restored, err := pgx.Connect(ctx, e.st.Postgres.URL("restored-"+schemas.ControllerDB))
	require.NoError(t, err)
	defer restored.Close(ctx)
	var n int
	require.NoError(t, restored.QueryRow(ctx, "SELECT count(*) FROM "+depBallastTable).Scan(&n))
	assert.Equal(t, rows, n, "rows of the table being copied at the crash")
	h := depReadHistory(ctx, t, e, id)
	t.Logf("history: %s", h)
	assert.GreaterOrEqual(t, h.retried("Dump"), int32(2), "the dump was retried")
}

// TestDependencyFaultRedisMidRDB crashes Redis while it streams its RDB to DumpRDB and
// starts it again from its AOF. Nothing acknowledged is lost, the RDB transfer is retried
// from the start, and the stored RDB loads with every key.
func TestDependencyFaultRedisMidRDB(t *testing.T) {
	t.Parallel() // each test has its own stack
	e := newEnv(t, 300)
	ctx, cancel := context.WithTimeout(context.Background(), depTimeout)
	defer cancel()
	// About 35 MB of RDB: a transfer of several seconds while DumpRDB parses and compresses.
	keys := depBallastRedis(ctx, t, e, 80_000, 400)
	rdb := redis.NewClient(&redis.Options{Addr: e.st.Redis.Addr()})
	defer rdb.Close()

	id := "depfault-redis"
	run := depStart[workflows.NightlyBackupResult](ctx, t, e, id, workflows.NightlyBackupName, workflows.NightlyBackupInput{})
	// Redis reports no progress of a diskless transfer (INFO's save counters stand still),
	// but its fork lives until it has written the whole RDB, and it writes no faster than
	// DumpRDB parses and compresses: a replica connected and the fork alive for 300 ms is
	// a transfer under way. The first attempt's failure must then be the transfer's.
	var since time.Time
	var replica string
	took := depUntil(t, run, 2*time.Minute, "an RDB transfer under way for 300 ms", func() bool {
		info, err := rdb.Info(ctx, "replication", "persistence").Result()
		if err != nil || !strings.Contains(info, "rdb_bgsave_in_progress:1") {
			since = time.Time{}
			return false
		}
		replica = ""
		for _, line := range strings.Split(info, "\n") {
			if strings.HasPrefix(line, "slave0:") {
				replica = strings.TrimSpace(line)
			}
		}
		if replica == "" {
			since = time.Time{}
			return false
		}
		if since.IsZero() {
			since = time.Now()
		}
		return time.Since(since) >= 300*time.Millisecond
	})
	t.Logf("RDB transfer under way after %s (%s, fork alive for %s); killing Redis", took.Round(time.Millisecond), replica, time.Since(since).Round(time.Millisecond))
	killed := time.Now()
	require.NoError(t, e.st.Redis.Kill())
	require.NoError(t, e.st.Redis.Start(ctx))
	got, err := rdb.DBSize(ctx).Result()
	require.NoError(t, err)
	assert.Equal(t, keys, got, "Redis restarted from its AOF with every key")
	t.Logf("Redis restarted from its AOF after %s with %d keys", time.Since(killed).Round(time.Millisecond), got)

	res, err := run.wait(t)
	require.NoError(t, err)
	t.Logf("run completed %s after the kill", time.Since(killed).Round(time.Millisecond))
	for _, a := range res.Manifest.Artifacts {
		if a.Kind == activities.KindRedis {
			assert.Equal(t, keys, a.KeyCount, "manifest key count")
		}
	}
	depCheckSet(ctx, t, e, res) // checkRDB: DBSIZE of the stored RDB = manifest = live
	h := depReadHistory(ctx, t, e, id)
	t.Logf("history: %s", h)
	assert.GreaterOrEqual(t, h.retried("DumpRDB"), int32(2), "the RDB transfer was retried")
	assert.True(t, slices.ContainsFunc(h.Retries, func(r string) bool { return strings.Contains(r, "DumpRDB") && strings.Contains(r, "transfer") }),
		"the first attempt failed in the transfer")
}

// TestDependencyFaultAppMinIOMidMirror crashes the app's MinIO while the mirror copies its
// objects and starts it again a few seconds later. The mirror is retried, resumes from its
// heartbeated cursor, and ends equal to the source bucket.
func TestDependencyFaultAppMinIOMidMirror(t *testing.T) {
	t.Parallel() // each test has its own stack
	e := newEnv(t, 300)
	ctx, cancel := context.WithTimeout(context.Background(), depTimeout)
	defer cancel()
	depBallastObjects(ctx, t, e, 3000, 4<<10)
	source := depSourceKeys(ctx, t, e)
	// A key a fifth of the way through the bucket: once its copy is in the mirror the
	// mirror is under way, with most of the bucket still to copy.
	mark := activities.MirrorKeyPrefix(schemas.DefaultBucket) + source[len(source)/5]

	id := "depfault-minio"
	run := depStart[workflows.NightlyBackupResult](ctx, t, e, id, workflows.NightlyBackupName, workflows.NightlyBackupInput{})
	took := depUntil(t, run, 2*time.Minute, "the mirror past a fifth of the bucket", func() bool {
		_, err := e.backup.StatObject(ctx, backupBucket, mark, minio.StatObjectOptions{})
		return err == nil
	})
	before := depMirrorState(ctx, t, e)
	t.Logf("mirror under way after %s (%d of %d objects in the mirror); killing the app's MinIO", took.Round(time.Millisecond), len(before), len(source))
	assert.Less(t, len(before), len(source), "the mirror was not done when the MinIO was killed")
	killed := time.Now()
	require.NoError(t, e.st.MinIO.Kill())
	time.Sleep(3 * time.Second)
	require.NoError(t, e.st.MinIO.Start(ctx))
	t.Logf("app's MinIO restarted after %s", time.Since(killed).Round(time.Millisecond))

	res, err := run.wait(t)
	require.NoError(t, err)
	t.Logf("run completed %s after the kill", time.Since(killed).Round(time.Millisecond))
	depCheckSet(ctx, t, e, res) // checkListing: listing = mirror = source bucket
	require.Len(t, res.Manifest.Mirrors, 1)
	m := res.Manifest.Mirrors[0]
	assert.Equal(t, int64(len(source)), m.Objects)
	assert.LessOrEqual(t, m.Copied, m.Objects)
	// The retry resumed: what the first attempt mirrored was not copied again.
	after := depMirrorState(ctx, t, e)
	var recopied []string
	for k, v := range before {
		if after[k] != v {
			recopied = append(recopied, k)
		}
	}
	assert.Empty(t, recopied, "objects mirrored before the kill were copied again")
	t.Logf("mirror: %d objects, %d copied over both attempts; %d mirrored before the kill and left alone", m.Objects, m.Copied, len(before)-len(recopied))
	h := depReadHistory(ctx, t, e, id)
	t.Logf("history: %s", h)
	assert.GreaterOrEqual(t, h.retried("Mirror"), int32(2), "the mirror was retried")
}

// TestDependencyFaultTemporalMidRun crashes the embedded Temporal server while
// NightlyBackup's dumps run (its preflight activities are complete) and starts it again on
// the same port and SQLite state a few seconds later. The worker and the client reconnect
// by themselves; the run completes with a correct set.
func TestDependencyFaultTemporalMidRun(t *testing.T) {
	t.Parallel() // each test has its own stack
	e := newEnv(t, 300)
	ctx, cancel := context.WithTimeout(context.Background(), depTimeout)
	defer cancel()
	depBallastPostgres(ctx, t, e, schemas.ControllerDB, 16<<10)
	admin, err := pgx.Connect(ctx, e.st.Postgres.URL("postgres"))
	require.NoError(t, err)
	defer admin.Close(ctx)

	id := "depfault-temporal"
	run := depStart[workflows.NightlyBackupResult](ctx, t, e, id, workflows.NightlyBackupName, workflows.NightlyBackupInput{})
	took := depUntil(t, run, 2*time.Minute, "pg_dump under way", func() bool {
		var n int
		err := admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE application_name = 'drflow pg_dump' AND state = 'active'`).Scan(&n)
		return err == nil && n > 0
	})
	open := depActivities(ctx, t, e, id)
	var inFlight []string
	for sid, a := range open {
		if !a.Closed.IsZero() {
			delete(open, sid)
			continue
		}
		inFlight = append(inFlight, a.Type)
	}
	sort.Strings(inFlight)
	t.Logf("dumps under way after %s (activities open: %v); killing Temporal", took.Round(time.Millisecond), inFlight)
	require.NotEmpty(t, open)
	killed := time.Now()
	require.NoError(t, e.st.Temporal.Kill())
	time.Sleep(3 * time.Second)
	require.NoError(t, e.st.Temporal.Start(ctx))
	restarted := time.Now()
	t.Logf("Temporal restarted after %s", restarted.Sub(killed).Round(time.Millisecond))

	res, err := run.wait(t)
	require.NoError(t, err)
	t.Logf("run completed %s after the kill", time.Since(killed).Round(time.Millisecond))
	depCheckSet(ctx, t, e, res)
	h := depReadHistory(ctx, t, e, id)
	t.Logf("history: %s", h)
	// The steps that were running when the server died kept running in the worker, and
	// their results reached the restarted server: they closed after the restart on their
	// first attempt, so their work was kept. (A step whose heartbeat could not reach the
	// server for its 30 s heartbeat timeout would be retried instead, which is correct
	// too; with an outage of a few seconds none is.) The worker's and the client's
	// reconnects are RPC retries, which no history records.
	after := depActivities(ctx, t, e, id)
	var survived, attempts []string
	for sid := range open {
		a := after[sid]
		require.NotNil(t, a)
		assert.False(t, a.Closed.IsZero(), "%s closed", a.Type)
		attempts = append(attempts, fmt.Sprintf("%s:%d", a.Type, a.Attempt))
		if a.Closed.After(killed) && a.Attempt == 1 {
			survived = append(survived, a.Type)
		}
	}
	sort.Strings(survived)
	sort.Strings(attempts)
	assert.NotEmpty(t, survived, "a step running at the kill completed after the restart on its first attempt")
	t.Logf("attempts of the steps running at the kill: %v", attempts)
	t.Logf("steps running at the kill that completed after it, on attempt 1: %v", survived)
}

// TestDependencyFaultTemporalMidRecovery crashes the embedded Temporal server in the
// middle of a recovery runbook — RedisLoss on a wiped Redis, right after its first step
// completed, when the next workflow task is due — and starts it again on the same port and
// state. The runbook resumes where it stopped and rebuilds exactly the seeded state.
func TestDependencyFaultTemporalMidRecovery(t *testing.T) {
	t.Parallel() // each test has its own stack
	h := newHooks(t)
	e := newEnvWith(t, 400, func(st *stack.Stack) map[string]string { return h.env(t, st) })
	ctx, cancel := context.WithTimeout(context.Background(), depTimeout)
	defer cancel()
	addr := e.st.Redis.Addr()
	seeded := redisState(ctx, t, addr)
	require.NoError(t, e.st.Redis.Kill())
	require.NoError(t, e.st.Redis.Wipe())
	t.Cleanup(func() { shutdownRedis(t, addr) }) // the start hook's daemon

	id := "depfault-temporal-redisloss"
	run := depStart[workflows.RedisLossResult](ctx, t, e, id, workflows.RedisLossName,
		workflows.RedisLossInput{RecoveryOptions: workflows.RecoveryOptions{AutoApprove: true}})
	var first string
	took := depUntil(t, run, 2*time.Minute, "the first step completed", func() bool {
		for _, a := range depActivities(ctx, t, e, id) {
			if !a.Closed.IsZero() {
				first = a.Type
				return true
			}
		}
		return false
	})
	t.Logf("%s completed after %s; killing Temporal", first, took.Round(time.Millisecond))
	killed := time.Now()
	require.NoError(t, e.st.Temporal.Kill())
	time.Sleep(3 * time.Second)
	require.NoError(t, e.st.Temporal.Start(ctx))
	t.Logf("Temporal restarted after %s", time.Since(killed).Round(time.Millisecond))

	res, err := run.wait(t)
	require.NoError(t, err)
	t.Logf("run completed %s after the kill", time.Since(killed).Round(time.Millisecond))
	assert.Equal(t, workflows.OutcomeRecovered, res.Outcome)
	assert.True(t, res.Check.OK, "%v", res.Check.Problems)
	assert.Equal(t, seeded, redisState(ctx, t, addr), "rebuilt state equals what the seeder wrote")
	hist := depReadHistory(ctx, t, e, id)
	t.Logf("history: %s", hist)
	// Every step ran once: none was lost with the server, none was run twice.
	counts := map[string]int{}
	for _, a := range depActivities(ctx, t, e, id) {
		counts[a.Type]++
		assert.False(t, a.Closed.IsZero(), "%s closed", a.Type)
	}
	for typ, n := range counts {
		assert.Equal(t, 1, n, "%s scheduled once", typ)
	}
	t.Logf("steps: %v", counts)
}
