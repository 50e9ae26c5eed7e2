package e2e

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
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
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/kohakku/drflow/activities"
	"github.com/kohakku/drflow/internal/historytest"
	"github.com/kohakku/drflow/internal/stack"
	"github.com/kohakku/drflow/schemas"
	"github.com/kohakku/drflow/workflows"
)

// startRun starts a runbook on the env's worker.
func (e *env) startRun(ctx context.Context, t *testing.T, id, typ string, in any) client.WorkflowRun {
	t.Helper()
	run, err := e.c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: e.queue}, typ, in)
	require.NoError(t, err)
	return run
}

// recover runs a runbook to its end and decodes its result into res.
func (e *env) recover(ctx context.Context, t *testing.T, id, typ string, in, res any) error {
	t.Helper()
	return e.startRun(ctx, t, id, typ, in).Get(ctx, res)
}

// waitForApproval polls the progress query until the run waits for a decision.
func (e *env) waitForApproval(ctx context.Context, t *testing.T, id string) workflows.Progress {
	t.Helper()
	var p workflows.Progress
	require.Eventually(t, func() bool {
		v, err := e.c.QueryWorkflow(ctx, id, "", workflows.ProgressQuery)
		if err != nil {
			return false
		}
		p = workflows.Progress{}
		return v.Get(&p) == nil && p.Approval != nil && p.Approval.Status == workflows.ApprovalWaiting
	}, 2*time.Minute, 200*time.Millisecond, "run %s never waited for approval", id)
	return p
}

// decide sends the approve or reject update, as `starter approve` does.
func (e *env) decide(ctx context.Context, t *testing.T, id, update, by string) workflows.ApprovalState {
	t.Helper()
	h, err := e.c.UpdateWorkflow(ctx, client.UpdateWorkflowOptions{
		WorkflowID: id, UpdateName: update, Args: []any{workflows.Decision{By: by}},
		WaitForStage: client.WorkflowUpdateStageCompleted,
	})
	require.NoError(t, err)
	var st workflows.ApprovalState
	require.NoError(t, h.Get(ctx, &st))
	return st
}

// redisState is every application key of the Redis at addr in a comparable form: the
// hashes field by field, the queue in order, the live set with scores.
func redisState(ctx context.Context, t *testing.T, addr string) map[string]string {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	out := map[string]string{}
	iter := rdb.Scan(ctx, 0, schemas.KeyPattern, 1000).Iterator()
	for iter.Next(ctx) {
		key := iter.Val()
		typ, err := rdb.Type(ctx, key).Result()
		require.NoError(t, err)
		switch typ {
		case "hash":
			m, err := rdb.HGetAll(ctx, key).Result()
			require.NoError(t, err)
			out[key] = fmt.Sprint(m) // fmt sorts map keys
		case "list":
			l, err := rdb.LRange(ctx, key, 0, -1).Result()
			require.NoError(t, err)
			out[key] = strings.Join(l, ",")
		case "zset":
			z, err := rdb.ZRangeWithScores(ctx, key, 0, -1).Result()
			require.NoError(t, err)
			out[key] = fmt.Sprint(z)
		default:
			out[key] = "unexpected type " + typ
		}
	}
	require.NoError(t, iter.Err())
	return out
}

// tableFingerprint is the row count and an md5 over every row of table, order-independent.
func tableFingerprint(ctx context.Context, t *testing.T, url, table string) string {
	t.Helper()
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(ctx)
	var n int64
	var sum *string
	require.NoError(t, conn.QueryRow(ctx, fmt.Sprintf(`SELECT count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM %s t`, pgx.Identifier{table}.Sanitize())).Scan(&n, &sum))
	s := ""
	if sum != nil {
		s = *sum
	}
	return fmt.Sprintf("%d rows, md5 %s", n, s)
}

// dbFingerprints fingerprints the key tables of both Kohakku databases.
func (e *env) dbFingerprints(ctx context.Context, t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for db, tables := range map[string][]string{
		schemas.ControllerDB: {schemas.TasksTable, schemas.BriefsTable},
		schemas.DispatcherDB: {schemas.AgentContainersTable, schemas.DispatchAssignmentsTable},
	} {
		for _, tbl := range tables {
			out[db+"."+tbl] = tableFingerprint(ctx, t, e.st.Postgres.URL(db), tbl)
		}
	}
	return out
}

// hooks writes a hooks file whose controller, dispatcher and monitor actions append a
// line to a log, and whose redis start hook starts the stack's Redis as a daemon.
type hooks struct {
	dir    string
	log    string
	health *httptest.Server
	mu     sync.Mutex
	probes int
}

func newHooks(t *testing.T) *hooks {
	h := &hooks{dir: t.TempDir()}
	h.log = filepath.Join(h.dir, "hooks.log")
	h.health = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		h.mu.Lock()
		h.probes++
		h.mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(h.health.Close)
	return h
}

// env returns the worker configuration with the hooks file for st.
func (h *hooks) env(t *testing.T, st *stack.Stack) map[string]string {
	action := func(line string, health bool) map[string]any {
		a := map[string]any{"argv": []string{"/bin/sh", "-c", "echo '" + line + "' >> " + h.log}, "timeout": "30s"}
		if health {
			a["healthUrl"] = h.health.URL + "/healthz"
		}
		return a
	}
	services := map[string]any{}
	for _, svc := range []string{"controller", "dispatcher", "monitor"} {
		services[svc] = map[string]any{
			"stop":    action("stop "+svc, false),
			"restart": action("restart "+svc, true),
		}
	}
	services["redis"] = map[string]any{"start": map[string]any{"argv": st.Redis.DaemonCommand(), "timeout": "30s"}}
	file := map[string]any{
		"services": services,
		"restartOrder": []map[string]string{
			{"service": "controller", "reason": "owns tasks_task"},
			{"service": "dispatcher", "reason": "assigns pending tasks once the controller is up"},
			{"service": "monitor", "reason": "times out dead agents"},
		},
	}
	b, err := json.Marshal(file) // JSON is YAML
	require.NoError(t, err)
	path := filepath.Join(h.dir, "hooks.yaml")
	require.NoError(t, os.WriteFile(path, b, 0o600))
	return map[string]string{"DRFLOW_HOOKS_FILE": path, "DRFLOW_REDIS_AOF_DIR": st.Redis.AOFDir()}
}

func (h *hooks) lines(t *testing.T) []string {
	b, err := os.ReadFile(h.log)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	require.NoError(t, err)
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

// shutdownRedis stops a Redis the start hook started (the stack does not track it).
func shutdownRedis(t *testing.T, addr string) {
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer rdb.Close()
	_ = rdb.Do(context.Background(), "SHUTDOWN", "NOSAVE").Err()
	require.Eventually(t, func() bool { return rdb.Ping(context.Background()).Err() != nil }, 10*time.Second, 50*time.Millisecond)
}

func requireNonRetryable(t *testing.T, err error, errType string, contains ...string) {
	t.Helper()
	require.Error(t, err)
	var app *temporal.ApplicationError
	require.True(t, errors.As(err, &app), "want an application error, got %v", err)
	assert.Equal(t, errType, app.Type(), "%v", err)
	assert.True(t, app.NonRetryable(), "%v", err)
	for _, c := range contains {
		assert.Contains(t, app.Error(), c)
	}
}

// TestRedisLossEndToEnd loses the Redis twice: killed with its data deleted, then with a
// corrupt AOF. Both times the runbook starts Redis through its hook and rebuilds exactly
// the state the seeder wrote; the corrupt AOF is kept, moved aside.
func TestRedisLossEndToEnd(t *testing.T) {
	t.Parallel() // each test has its own stack
	h := newHooks(t)
	e := newEnvWith(t, 400, func(st *stack.Stack) map[string]string { return h.env(t, st) })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	addr := e.st.Redis.Addr()
	seeded := redisState(ctx, t, addr)
	require.Len(t, seeded, e.seeded.TaskHashes+2, "the seeder's keys: task hashes, the queue, the live set")
	t.Cleanup(func() { shutdownRedis(t, addr) })

	// 1. Killed and wiped.
	require.NoError(t, e.st.Redis.Kill())
	require.NoError(t, e.st.Redis.Wipe())
	var res workflows.RedisLossResult
	require.NoError(t, e.recover(ctx, t, "redisloss-wiped", workflows.RedisLossName,
		workflows.RedisLossInput{RecoveryOptions: workflows.RecoveryOptions{AutoApprove: true}}, &res))
	assert.Equal(t, workflows.OutcomeRecovered, res.Outcome)
	assert.False(t, res.Plan.Redis.Reachable)
	require.NotNil(t, res.Plan.AOF)
	assert.False(t, res.Plan.AOF.Corrupt)
	assert.Nil(t, res.Quarantine)
	require.NotNil(t, res.Started)
	assert.True(t, res.Started.Configured)
	assert.True(t, res.Check.OK, "%v", res.Check.Problems)
	assert.Equal(t, seeded, redisState(ctx, t, addr), "rebuilt state equals what the seeder wrote")
	require.Len(t, res.SafetyCopies, 1)
	assert.Contains(t, res.SafetyCopies[0].Skipped, "unreachable")

	// 2. A corrupt AOF: Redis will not start with it.
	shutdownRedis(t, addr)
	incr, err := filepath.Glob(filepath.Join(e.st.Redis.AOFDir(), "*.incr.aof"))
	require.NoError(t, err)
	require.NotEmpty(t, incr)
	f, err := os.OpenFile(incr[len(incr)-1], os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteString("this is not RESP\r\n")
	require.NoError(t, err)
	require.NoError(t, f.Close())
	corrupt, err := os.ReadFile(incr[len(incr)-1])
	require.NoError(t, err)

	// A dry run plans the quarantine and changes nothing: the AOF stays, Redis stays down.
	var dry workflows.RedisLossResult
	require.NoError(t, e.recover(ctx, t, "redisloss-dry", workflows.RedisLossName,
		workflows.RedisLossInput{RecoveryOptions: workflows.RecoveryOptions{DryRun: true}}, &dry))
	assert.Equal(t, workflows.OutcomeDryRun, dry.Outcome)
	assert.NotEmpty(t, dry.Plan.Quarantine)
	kept, err := os.ReadFile(incr[len(incr)-1])
	require.NoError(t, err, "a dry run moves nothing")
	assert.Equal(t, corrupt, kept)
	assert.Error(t, redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1}).Ping(ctx).Err(), "a dry run starts nothing")

	id := "redisloss-corrupt"
	run := e.startRun(ctx, t, id, workflows.RedisLossName, workflows.RedisLossInput{})
	e.waitForApproval(ctx, t, id)
	var plan workflows.RedisLossPlan
	v, err := e.c.QueryWorkflow(ctx, id, "", workflows.PlanQuery)
	require.NoError(t, err)
	require.NoError(t, v.Get(&plan))
	require.NotNil(t, plan.AOF)
	assert.True(t, plan.AOF.Corrupt, "redis-check-aof finds the garbage")
	assert.Equal(t, e.st.Redis.AOFDir(), plan.AOF.Dir)
	assert.True(t, strings.HasPrefix(plan.Quarantine, e.st.Redis.AOFDir()+".corrupt-"), plan.Quarantine)
	_, err = os.Stat(e.st.Redis.AOFDir())
	require.NoError(t, err, "nothing moved before the approval")

	st := e.decide(ctx, t, id, workflows.ApproveUpdate, "oncall")
	assert.Equal(t, workflows.ApprovalApproved, st.Status)
	res = workflows.RedisLossResult{}
	require.NoError(t, run.Get(ctx, &res))
	require.NotNil(t, res.Quarantine)
	assert.Equal(t, plan.Quarantine, res.Quarantine.To)
	kept, err = os.ReadFile(filepath.Join(res.Quarantine.To, filepath.Base(incr[len(incr)-1])))
	require.NoError(t, err, "the corrupt AOF is kept, not deleted")
	assert.Equal(t, corrupt, kept)
	assert.Equal(t, seeded, redisState(ctx, t, addr), "state rebuilt after the quarantine")
	assert.Equal(t, "oncall", res.Approval.By)
	if *historytest.Update {
		historytest.Write(ctx, t, e.c, id, "../../workflows/testdata/RedisLoss-corrupt-aof-approved.json")
	}
}

// objectSums reads every object of bucket and returns key → md5 of its content.
func objectSums(ctx context.Context, t *testing.T, c *minio.Client, bucket string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for o := range c.ListObjects(ctx, bucket, minio.ListObjectsOptions{Recursive: true}) {
		require.NoError(t, o.Err)
		obj, err := c.GetObject(ctx, bucket, o.Key, minio.GetObjectOptions{})
		require.NoError(t, err)
		h := md5.New()
		_, err = io.Copy(h, obj)
		obj.Close()
		require.NoError(t, err)
		out[o.Key] = hex.EncodeToString(h.Sum(nil))
	}
	return out
}

// unfinishedBriefs returns the brief keys of the tasks that are not terminal.
func (e *env) unfinishedBriefs(ctx context.Context, t *testing.T) map[string]bool {
	t.Helper()
	conn, err := pgx.Connect(ctx, e.st.Postgres.URL(schemas.ControllerDB))
	require.NoError(t, err)
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT id, status FROM "+schemas.TasksTable)
	require.NoError(t, err)
	out := map[string]bool{}
	for rows.Next() {
		var id int64
		var status string
		require.NoError(t, rows.Scan(&id, &status))
		out[schemas.BriefKey(id)] = !schemas.IsTerminal(status)
	}
	require.NoError(t, rows.Err())
	return out
}

// TestMinIOLossEndToEnd restores the app's bucket from the backup mirror: a few objects
// lost next to a live object newer than the set, then the whole bucket deleted — first
// what the application needs, then everything.
func TestMinIOLossEndToEnd(t *testing.T) {
	t.Parallel() // each test has its own stack
	e := newEnv(t, 400)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	_, err := e.run(ctx, t, "minioloss-nightly", e.queue, workflows.NightlyBackupInput{})
	require.NoError(t, err)
	bucket := schemas.DefaultBucket
	original := objectSums(ctx, t, e.objects, bucket)
	briefs := e.unfinishedBriefs(ctx, t)
	var unfinished, finished, skill string
	for _, k := range slices.Sorted(maps.Keys(original)) {
		switch u, isBrief := briefs[k]; {
		case isBrief && u && unfinished == "":
			unfinished = k
		case isBrief && !u && finished == "":
			finished = k
		case strings.HasPrefix(k, schemas.SkillsPrefix) && skill == "":
			skill = k
		}
	}
	require.NotEmpty(t, unfinished)
	require.NotEmpty(t, finished)
	require.NotEmpty(t, skill)

	// 1. Two briefs lost, one skill changed after the backup.
	for _, k := range []string{unfinished, finished} {
		require.NoError(t, e.objects.RemoveObject(ctx, bucket, k, minio.RemoveObjectOptions{}))
	}
	newer := "edited after the backup"
	_, err = e.objects.PutObject(ctx, bucket, skill, strings.NewReader(newer), int64(len(newer)), minio.PutObjectOptions{})
	require.NoError(t, err)
	before := objectSums(ctx, t, e.objects, bucket)
	var dry workflows.MinIOLossResult
	require.NoError(t, e.recover(ctx, t, "minioloss-dry", workflows.MinIOLossName,
		workflows.MinIOLossInput{RecoveryOptions: workflows.RecoveryOptions{DryRun: true}}, &dry))
	assert.Equal(t, workflows.OutcomeDryRun, dry.Outcome)
	assert.Equal(t, int64(1), dry.Plan.Objects.Restore, "the plan: one unfinished brief to restore")
	assert.Equal(t, before, objectSums(ctx, t, e.objects, bucket), "a dry run changes nothing")

	var res workflows.MinIOLossResult
	require.NoError(t, e.recover(ctx, t, "minioloss-partial", workflows.MinIOLossName,
		workflows.MinIOLossInput{RecoveryOptions: workflows.RecoveryOptions{AutoApprove: true}}, &res))
	assert.Equal(t, workflows.ScopeNeeded, res.Plan.Objects.Scope)
	assert.True(t, res.Check.Passed, "%v", res.Check.Problems)
	assert.GreaterOrEqual(t, res.Restored.KeptNewer, int64(1))
	now := objectSums(ctx, t, e.objects, bucket)
	assert.Equal(t, original[unfinished], now[unfinished], "the unfinished task's brief is back")
	assert.NotContains(t, now, finished, "a completed task's brief is not needed")
	assert.Equal(t, hex.EncodeToString(md5Sum(newer)), now[skill], "a live object newer than the set survives")

	// 2. The bucket deleted.
	for k := range now {
		require.NoError(t, e.objects.RemoveObject(ctx, bucket, k, minio.RemoveObjectOptions{}))
	}
	require.NoError(t, e.objects.RemoveBucket(ctx, bucket))
	res = workflows.MinIOLossResult{}
	require.NoError(t, e.recover(ctx, t, "minioloss-needed", workflows.MinIOLossName,
		workflows.MinIOLossInput{Bucket: bucket, RecoveryOptions: workflows.RecoveryOptions{AutoApprove: true}}, &res))
	assert.True(t, res.Restored.CreatedBucket)
	now = objectSums(ctx, t, e.objects, bucket)
	var wantNeeded []string
	for k := range original {
		if briefs[k] || strings.HasPrefix(k, schemas.SkillsPrefix) {
			wantNeeded = append(wantNeeded, k)
		}
	}
	sort.Strings(wantNeeded)
	assert.Equal(t, wantNeeded, slices.Sorted(maps.Keys(now)), "needed = briefs of unfinished tasks + skills")
	for k, sum := range now {
		assert.Equal(t, original[k], sum, k)
	}

	res = workflows.MinIOLossResult{}
	require.NoError(t, e.recover(ctx, t, "minioloss-all", workflows.MinIOLossName,
		workflows.MinIOLossInput{Scope: workflows.ScopeAll, RecoveryOptions: workflows.RecoveryOptions{AutoApprove: true}}, &res))
	assert.Equal(t, original, objectSums(ctx, t, e.objects, bucket), "scope all brings back every object as it was")
	assert.True(t, res.Check.Passed, "%v", res.Check.Problems)
	if *historytest.Update {
		historytest.Write(ctx, t, e.c, "minioloss-partial", "../../workflows/testdata/MinIOLoss-partial.json")
	}
}

func md5Sum(s string) []byte {
	h := md5.Sum([]byte(s))
	return h[:]
}

// TestTotalDBLossEndToEnd wipes PostgreSQL and empties Redis; the runbook restores both
// databases from the verified set, runs the service hooks in order and rebuilds Redis.
func TestTotalDBLossEndToEnd(t *testing.T) {
	t.Parallel() // each test has its own stack
	h := newHooks(t)
	e := newEnvWith(t, 400, func(st *stack.Stack) map[string]string { return h.env(t, st) })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	nightly, err := e.run(ctx, t, "totaldbloss-nightly", e.queue, workflows.NightlyBackupInput{})
	require.NoError(t, err)
	before := e.dbFingerprints(ctx, t)
	seededRedis := redisState(ctx, t, e.st.Redis.Addr())

	require.NoError(t, e.st.Postgres.Stop(ctx))
	require.NoError(t, e.st.Postgres.Wipe())
	require.NoError(t, e.st.Postgres.Start(ctx))
	rdb := redis.NewClient(&redis.Options{Addr: e.st.Redis.Addr()})
	require.NoError(t, rdb.FlushAll(ctx).Err())
	rdb.Close()

	var res workflows.TotalDBLossResult
	require.NoError(t, e.recover(ctx, t, "totaldbloss-wiped", workflows.TotalDBLossName,
		workflows.TotalDBLossInput{RecoveryOptions: workflows.RecoveryOptions{AutoApprove: true}}, &res))
	assert.Equal(t, workflows.OutcomeRecovered, res.Outcome)
	assert.Equal(t, nightly.SetID, res.Plan.SetID)
	assert.True(t, res.RecoveryPoint.Equal(nightly.Manifest.CreatedAt))
	assert.Positive(t, res.RTO.D())
	require.Len(t, res.Databases, 2)
	for _, a := range nightly.Manifest.Artifacts {
		if a.Kind != activities.KindPostgres {
			continue
		}
		for tbl, n := range a.RowCounts {
			conn, err := pgx.Connect(ctx, e.st.Postgres.URL(a.Source))
			require.NoError(t, err)
			var got int64
			require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{tbl}.Sanitize()).Scan(&got))
			conn.Close(ctx)
			assert.Equal(t, n, got, "%s.%s has the manifest's row count", a.Source, tbl)
		}
	}
	assert.Equal(t, before, e.dbFingerprints(ctx, t), "both databases equal the backup")
	assert.Equal(t, []string{"stop dispatcher", "stop controller", "restart controller", "restart dispatcher"}, h.lines(t),
		"hooks in the configured order; the monitor holds no database")
	require.NotNil(t, res.Redis)
	assert.Equal(t, seededRedis, redisState(ctx, t, e.st.Redis.Addr()), "redis rebuilt from the restored databases")
	for _, dp := range res.Plan.Databases {
		assert.False(t, dp.Live.Exists, "the wiped server had no %s", dp.Target)
	}
	if *historytest.Update {
		historytest.Write(ctx, t, e.c, "totaldbloss-wiped", "../../workflows/testdata/TotalDBLoss-wiped.json")
	}
}

// TestTotalDBLossApproval restores over a live, changed database: a dry run and a
// rejected run change nothing; an approved run takes a safety copy first, and that copy
// restores to the pre-recovery data.
func TestTotalDBLossApproval(t *testing.T) {
	t.Parallel() // each test has its own stack
	e := newEnv(t, 300)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	nightly, err := e.run(ctx, t, "approval-nightly", e.queue, workflows.NightlyBackupInput{})
	require.NoError(t, err)
	ctrlURL := e.st.Postgres.URL(schemas.ControllerDB)
	setTasks := tableFingerprint(ctx, t, ctrlURL, schemas.TasksTable)

	// The live database moves on after the backup.
	conn, err := pgx.Connect(ctx, ctrlURL)
	require.NoError(t, err)
	_, err = conn.Exec(ctx, `CREATE TABLE after_backup (v int); INSERT INTO after_backup VALUES (42);
		UPDATE tasks_task SET progress = 7 WHERE status = 'running'`)
	require.NoError(t, err)
	conn.Close(ctx)
	liveTasks := tableFingerprint(ctx, t, ctrlURL, schemas.TasksTable)
	require.NotEqual(t, setTasks, liveTasks)
	unchanged := func(why string) {
		t.Helper()
		assert.Equal(t, liveTasks, tableFingerprint(ctx, t, ctrlURL, schemas.TasksTable), why)
		assert.Equal(t, "1 rows, md5 "+hex.EncodeToString(md5Sum("(42)")), tableFingerprint(ctx, t, ctrlURL, "after_backup"), why)
	}
	in := workflows.TotalDBLossInput{Databases: []string{schemas.ControllerDB}, SkipRedis: true}

	// Dry run.
	dry := in
	dry.DryRun = true
	var res workflows.TotalDBLossResult
	require.NoError(t, e.recover(ctx, t, "tdl-dry", workflows.TotalDBLossName, dry, &res))
	assert.Equal(t, workflows.OutcomeDryRun, res.Outcome)
	require.Len(t, res.Plan.Databases, 1)
	assert.True(t, res.Plan.Databases[0].Live.Exists)
	assert.Equal(t, activities.SafetyPostgresKey("tdl-dry", schemas.ControllerDB), res.Plan.Databases[0].SafetyCopy)
	assert.Empty(t, res.Databases)
	unchanged("a dry run changes nothing")

	// Rejected.
	run := e.startRun(ctx, t, "tdl-reject", workflows.TotalDBLossName, in)
	e.waitForApproval(ctx, t, "tdl-reject")
	e.decide(ctx, t, "tdl-reject", workflows.RejectUpdate, "oncall")
	res = workflows.TotalDBLossResult{}
	require.NoError(t, run.Get(ctx, &res))
	assert.Equal(t, workflows.OutcomeRejected, res.Outcome)
	unchanged("a rejected run changes nothing")
	for o := range e.backup.ListObjects(ctx, backupBucket, minio.ListObjectsOptions{Prefix: activities.SafetyPrefix, Recursive: true}) {
		require.NoError(t, o.Err)
		t.Errorf("a rejected or dry run wrote %s", o.Key)
	}

	// Approved: nothing changes while it waits; then the safety copy, then the restore.
	run = e.startRun(ctx, t, "tdl-approve", workflows.TotalDBLossName, in)
	e.waitForApproval(ctx, t, "tdl-approve")
	time.Sleep(time.Second)
	unchanged("nothing changes before the approval")
	e.decide(ctx, t, "tdl-approve", workflows.ApproveUpdate, "oncall")
	res = workflows.TotalDBLossResult{}
	require.NoError(t, run.Get(ctx, &res))
	assert.Equal(t, workflows.OutcomeRecovered, res.Outcome)
	assert.Equal(t, nightly.SetID, res.Plan.SetID)
	assert.Equal(t, setTasks, tableFingerprint(ctx, t, ctrlURL, schemas.TasksTable), "live equals the set again")
	require.True(t, res.Databases[0].Replaced)

	// The safety copy holds the pre-recovery data.
	require.Len(t, res.SafetyCopies, 1)
	key := activities.SafetyPostgresKey("tdl-approve", schemas.ControllerDB)
	assert.Equal(t, key, res.SafetyCopies[0].Key)
	dir := t.TempDir()
	path, _ := e.getObject(ctx, t, key, dir)
	raw := zstdDecode(t, path)
	require.NoError(t, e.st.Postgres.CreateDatabase(ctx, "safety_check"))
	out, err := exec.CommandContext(ctx, filepath.Join(e.st.Postgres.BinDir(), "pg_restore"), "--no-owner", "--exit-on-error",
		"-d", e.st.Postgres.URL("safety_check"), raw).CombinedOutput()
	require.NoError(t, err, "pg_restore of the safety copy: %s", out)
	safetyURL := e.st.Postgres.URL("safety_check")
	assert.Equal(t, liveTasks, tableFingerprint(ctx, t, safetyURL, schemas.TasksTable), "the safety copy restores the pre-recovery data")
	assert.Equal(t, "1 rows, md5 "+hex.EncodeToString(md5Sum("(42)")), tableFingerprint(ctx, t, safetyURL, "after_backup"))
}

// TestRecoveryBadInput: every input a runbook cannot act on fails within seconds,
// non-retryably, naming the problem and the fix, with nothing changed.
func TestRecoveryBadInput(t *testing.T) {
	t.Parallel() // each test has its own stack
	e := newEnv(t, 100)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	auto := workflows.RecoveryOptions{AutoApprove: true}
	before := e.dbFingerprints(ctx, t)
	check := func(id, typ string, in any, errType string, contains ...string) {
		t.Helper()
		started := time.Now()
		var res json.RawMessage
		err := e.recover(ctx, t, id, typ, in, &res)
		requireNonRetryable(t, err, errType, contains...)
		assert.Less(t, time.Since(started), 20*time.Second, "%s fails fast", id)
	}

	check("bad-no-sets-db", workflows.TotalDBLossName, workflows.TotalDBLossInput{RecoveryOptions: auto},
		activities.ErrSetNotFound, "no complete set has passed verification", "VerifyBackup")
	check("bad-no-sets-minio", workflows.MinIOLossName, workflows.MinIOLossInput{RecoveryOptions: auto},
		activities.ErrSetNotFound, "no complete set")
	check("bad-unknown-db", workflows.TotalDBLossName, workflows.TotalDBLossInput{Databases: []string{"kohakku-billing"}, RecoveryOptions: auto},
		activities.ErrUnknownTarget, `"kohakku-billing"`, schemas.ControllerDB)
	check("bad-unknown-redis", workflows.RedisLossName, workflows.RedisLossInput{Instance: "cache", RecoveryOptions: auto},
		activities.ErrUnknownTarget, `"cache"`)
	check("bad-unknown-bucket", workflows.MinIOLossName, workflows.MinIOLossInput{Bucket: "photos", RecoveryOptions: auto},
		activities.ErrUnknownTarget, `"photos"`)
	check("bad-scope", workflows.MinIOLossName, map[string]any{"scope": "most"},
		workflows.ErrInvalidInput, `"scope"`, `"needed"`)
	check("bad-suffix", workflows.TotalDBLossName, map[string]any{"targetSuffix": "-Drill!"},
		workflows.ErrInvalidInput, `"targetSuffix"`)
	check("bad-set-id", workflows.TotalDBLossName, map[string]any{"setId": "yesterday"},
		workflows.ErrInvalidInput, `"setId"`)

	// A set that was never verified, then one that failed verification.
	nightly, err := e.run(ctx, t, "bad-nightly", e.queue, workflows.NightlyBackupInput{SkipVerify: true})
	require.NoError(t, err)
	check("bad-unverified", workflows.TotalDBLossName, workflows.TotalDBLossInput{SetID: nightly.SetID, RecoveryOptions: auto},
		activities.ErrSetUnverified, nightly.SetID, "has not been verified")
	e.writeObject(ctx, t, activities.SetKey(nightly.SetID, activities.VerifyName),
		[]byte(`{"setId":"`+nightly.SetID+`","passed":false,"verifiedAt":"2026-11-21T03:00:00Z","checks":[]}`))
	check("bad-failed", workflows.TotalDBLossName, workflows.TotalDBLossInput{SetID: nightly.SetID, RecoveryOptions: auto},
		activities.ErrSetUnverified, nightly.SetID, "failed verification")
	check("bad-unknown-set", workflows.TotalDBLossName, workflows.TotalDBLossInput{SetID: "2020-01-01T00-00-00Z", RecoveryOptions: auto},
		activities.ErrSetNotFound, "2020-01-01T00-00-00Z", "does not exist")
	assert.Equal(t, before, e.dbFingerprints(ctx, t), "nothing changed")
}
