// Package e2e runs drflow's runbooks end to end on the real local stack — PostgreSQL,
// Redis, two MinIO servers and Temporal, each a private server process — with the same
// activities and registration the worker binary uses, and checks the results with tools
// that share no code with drflow (pg_restore, redis-server, zstd, minio-go).
package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/minio/minio-go/v7"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/interceptor"
	"go.temporal.io/sdk/worker"

	"github.com/kohakku/drflow/activities"
	"github.com/kohakku/drflow/internal/app"
	"github.com/kohakku/drflow/internal/config"
	"github.com/kohakku/drflow/internal/health"
	"github.com/kohakku/drflow/internal/historytest"
	"github.com/kohakku/drflow/internal/kohakku"
	"github.com/kohakku/drflow/internal/stack"
	"github.com/kohakku/drflow/internal/stack/stacktest"
	"github.com/kohakku/drflow/schemas"
	"github.com/kohakku/drflow/workflows"

	_ "modernc.org/sqlite"
)

const backupBucket = "drflow-backups"

// env is a seeded stack with a drflow worker running in this process.
type env struct {
	st      *stack.Stack
	metrics *prometheus.Registry
	cfg     *config.Config
	acts    *activities.BackupStore
	c       client.Client
	queue   string
	seeded  kohakku.Summary
	objects *minio.Client // the app's MinIO
	backup  *minio.Client // the backup store, read independently of drflow's store code
}

func stackEnv(st *stack.Stack, extra map[string]string) map[string]string {
	m := map[string]string{
		"TEMPORAL_ADDRESS":          st.Temporal.GRPCAddr(),
		"DRFLOW_POSTGRES_URL":       postgresURLWithPassword(st), // a real secret for the guard (secrets_test.go)
		"DRFLOW_REDIS_ADDR":         st.Redis.Addr(),
		"DRFLOW_MINIO_ENDPOINT":     st.MinIO.Endpoint(),
		"DRFLOW_MINIO_ACCESS_KEY":   st.MinIO.AccessKey(),
		"DRFLOW_MINIO_SECRET_KEY":   st.MinIO.SecretKey(),
		"S3_BUCKET":                 backupBucket,
		"S3_ENDPOINT":               st.Backup.URL(),
		"S3_REGION":                 st.Backup.Region(),
		"S3_ACCESS_KEY_ID":          st.Backup.AccessKey(),
		"S3_SECRET_ACCESS_KEY":      st.Backup.SecretKey(),
		"S3_FORCE_PATH_STYLE":       "true",
		"HOME":                      os.TempDir(), // no developer's Temporal profile
		"DRFLOW_POSTGRES_DATABASES": schemas.ControllerDB + "," + schemas.DispatcherDB,
		// A live SQLite database to snapshot: the embedded Temporal server's own state.
		"DRFLOW_SQLITE_DATABASES": "drflow-temporal=" + filepath.Join(st.Temporal.StateDir(), "temporal.db"),
	}
	for k, v := range extra {
		m[k] = v
	}
	return rememberSecrets(m)
}

func loadConfig(t *testing.T, vars map[string]string) *config.Config {
	t.Helper()
	cfg, err := config.Load("", func(k string) string { return vars[k] })
	require.NoError(t, err)
	return cfg
}

// startWorker runs a worker for cfg on its own task queue until the test ends.
func startWorker(t *testing.T, c client.Client, cfg *config.Config, queue string) *app.Activities {
	t.Helper()
	acts, _ := startWorkerWithMetrics(t, c, cfg, queue)
	return acts
}

// startWorkerWithMetrics also returns the registry holding the worker's backup metrics,
// wired as the worker binary wires them.
func startWorkerWithMetrics(t *testing.T, c client.Client, cfg *config.Config, queue string) (*app.Activities, *prometheus.Registry) {
	t.Helper()
	acts, err := app.New(context.Background(), cfg)
	require.NoError(t, err)
	reg := prometheus.NewRegistry()
	checker := &health.Checker{Sets: acts.BackupStore, Temporal: c, Namespace: "default", CacheTTL: time.Minute}
	reg.MustRegister(health.NewCollector(checker))
	w := worker.New(c, queue, worker.Options{
		Interceptors: []interceptor.WorkerInterceptor{health.NewInterceptor(reg, checker)},
	})
	require.NoError(t, app.Register(w, acts))
	require.NoError(t, w.Start())
	t.Cleanup(w.Stop)
	return acts, reg
}

func newEnv(t *testing.T, tasks int) *env {
	t.Helper()
	return newEnvWith(t, tasks, nil)
}

// newEnvWith is newEnv with extra configuration for the worker, computed from the stack.
func newEnvWith(t *testing.T, tasks int, extra func(st *stack.Stack) map[string]string) *env {
	t.Helper()
	ctx := context.Background()
	st := stacktest.StartAll(t)
	for _, db := range []string{schemas.ControllerDB, schemas.DispatcherDB} {
		require.NoError(t, st.Postgres.CreateDatabase(ctx, db))
	}
	require.NoError(t, st.MinIO.MakeBucket(ctx, schemas.DefaultBucket))
	require.NoError(t, st.Backup.MakeBucket(ctx, backupBucket))

	e := &env{st: st, queue: "e2e-" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-"))}
	var err error
	e.objects, err = st.MinIO.Client()
	require.NoError(t, err)
	e.backup, err = st.Backup.Client()
	require.NoError(t, err)

	ctrl, err := pgxpool.New(ctx, st.Postgres.URL(schemas.ControllerDB))
	require.NoError(t, err)
	defer ctrl.Close()
	disp, err := pgxpool.New(ctx, st.Postgres.URL(schemas.DispatcherDB))
	require.NoError(t, err)
	defer disp.Close()
	rdb := redis.NewClient(&redis.Options{Addr: st.Redis.Addr()})
	defer rdb.Close()
	target := kohakku.Target{Controller: ctrl, Dispatcher: disp, Redis: rdb, Objects: e.objects, Bucket: schemas.DefaultBucket}
	require.NoError(t, kohakku.ApplySchemas(ctx, target))
	e.seeded, err = kohakku.Seed(ctx, target, kohakku.SeedOptions{Tasks: tasks, Seed: 7})
	require.NoError(t, err)

	var vars map[string]string
	if extra != nil {
		vars = extra(st)
	}
	e.cfg = loadConfig(t, stackEnv(st, vars))
	e.c, err = client.DialContext(ctx, guardSecrets(t, e.cfg, client.Options{HostPort: st.Temporal.GRPCAddr(), Namespace: "default"}))
	require.NoError(t, err)
	t.Cleanup(e.c.Close)
	acts, reg := startWorkerWithMetrics(t, e.c, e.cfg, e.queue)
	e.acts, e.metrics = acts.BackupStore, reg
	return e
}

func (e *env) run(ctx context.Context, t *testing.T, id, queue string, in workflows.NightlyBackupInput) (workflows.NightlyBackupResult, error) {
	t.Helper()
	var res workflows.NightlyBackupResult
	run, err := e.c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: queue}, workflows.NightlyBackupName, in)
	require.NoError(t, err)
	return res, run.Get(ctx, &res)
}

// mirrorAttempts is the attempt number of the run's completed Mirror activity.
func mirrorAttempts(ctx context.Context, t *testing.T, e *env, id string) int32 {
	t.Helper()
	iter := e.c.GetWorkflowHistory(ctx, id, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	scheduled := map[int64]string{}
	var attempt int32
	for iter.HasNext() {
		ev, err := iter.Next()
		require.NoError(t, err)
		if a := ev.GetActivityTaskScheduledEventAttributes(); a != nil {
			scheduled[ev.GetEventId()] = a.GetActivityType().GetName()
		}
		if a := ev.GetActivityTaskStartedEventAttributes(); a != nil && scheduled[a.GetScheduledEventId()] == "Mirror" {
			attempt = a.GetAttempt()
		}
	}
	return attempt
}

// getObject downloads key from the backup bucket with minio-go into dir and returns the
// file path and the hex SHA-256 of its bytes.
func (e *env) getObject(ctx context.Context, t *testing.T, key, dir string) (string, string) {
	t.Helper()
	obj, err := e.backup.GetObject(ctx, backupBucket, key, minio.GetObjectOptions{})
	require.NoError(t, err)
	defer obj.Close()
	path := filepath.Join(dir, filepath.Base(key))
	f, err := os.Create(path)
	require.NoError(t, err)
	defer f.Close()
	h := sha256.New()
	_, err = io.Copy(io.MultiWriter(f, h), obj)
	require.NoError(t, err, "download %s", key)
	return path, hex.EncodeToString(h.Sum(nil))
}

func zstdDecode(t *testing.T, path string) string {
	t.Helper()
	out := strings.TrimSuffix(path, ".zst")
	b, err := exec.Command("zstd", "-d", "-q", "-f", path, "-o", out).CombinedOutput()
	require.NoError(t, err, "zstd -d %s: %s", path, b)
	return out
}

// TestNightlyBackupEndToEnd backs up a seeded stack through a real Temporal server and
// checks every artifact with independent tools, then that a second run copies nothing,
// then what /health and the retention see.
func TestNightlyBackupEndToEnd(t *testing.T) {
	t.Parallel() // each test has its own stack
	e := newEnv(t, 3000)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	healthy := func() float64 {
		mfs, err := e.metrics.Gather()
		require.NoError(t, err)
		for _, mf := range mfs {
			if mf.GetName() == "drflow_backup_healthy" {
				return mf.GetMetric()[0].GetGauge().GetValue()
			}
		}
		t.Fatal("no drflow_backup_healthy metric")
		return 0
	}
	assert.Equal(t, 0.0, healthy(), "no set yet")

	res, err := e.run(ctx, t, "nightly-e2e-1", e.queue, workflows.NightlyBackupInput{})
	require.NoError(t, err)
	man := res.Manifest
	assert.Equal(t, 1.0, healthy(), "the manifest write refreshed the cached report")
	n, err := testutil.GatherAndCount(e.metrics, "drflow_backup_last_success_timestamp_seconds")
	require.NoError(t, err)
	assert.Equal(t, 5, n, "one series per source")
	require.Len(t, man.Artifacts, 5, "2 dumps, 1 rdb, 1 sqlite, 1 listing")
	if *historytest.Update {
		historytest.Write(ctx, t, e.c, "nightly-e2e-1", "../../workflows/testdata/NightlyBackup-e2e.json")
	}

	// The manifest in the store is the one the workflow returned.
	mf, _ := e.getObject(ctx, t, "sets/"+res.SetID+"/manifest.json", t.TempDir())
	var stored activities.Manifest
	b, err := os.ReadFile(mf)
	require.NoError(t, err)
	require.NoError(t, schemas.Validate(schemas.ManifestSchemaFile, b), "manifest.json against its JSON Schema")
	require.NoError(t, json.Unmarshal(b, &stored))
	assert.Equal(t, res.SetID, stored.SetID)
	assert.Len(t, stored.Artifacts, 5)

	dir := t.TempDir()
	for _, a := range man.Artifacts {
		checkArtifact(ctx, t, e, a, dir)
	}
	require.Len(t, man.Mirrors, 1)
	assert.Equal(t, int64(e.seeded.Objects), man.Mirrors[0].Objects)
	if mirrorAttempts(ctx, t, e, "nightly-e2e-1") == 1 {
		assert.Equal(t, man.Mirrors[0].Objects, man.Mirrors[0].Copied, "first run copies everything")
	} else {
		// A retried mirror resumes from its last heartbeat: what the failed attempt copied
		// after it is found up to date, not copied again. checkListing saw the whole mirror.
		assert.LessOrEqual(t, man.Mirrors[0].Copied, man.Mirrors[0].Objects)
	}
	assert.Equal(t, e.seeded.Bytes, man.Mirrors[0].Bytes)

	// Second run: nothing changed at the source, so nothing is copied.
	res2, err := e.run(ctx, t, "nightly-e2e-2", e.queue, workflows.NightlyBackupInput{})
	require.NoError(t, err)
	assert.NotEqual(t, res.SetID, res2.SetID)
	require.Len(t, res2.Manifest.Mirrors, 1)
	assert.Zero(t, res2.Manifest.Mirrors[0].Copied)
	assert.Empty(t, res2.Warnings, "unchanged data raises no anomaly")

	// /health reads the same store: every source fresh.
	checker := &health.Checker{Sets: e.acts, Temporal: e.c, Namespace: "default"}
	rep, err := checker.Report(ctx)
	require.NoError(t, err)
	assert.True(t, rep.Healthy, rep.Problems)
	var names []string
	for _, s := range rep.Sources {
		names = append(names, s.Name)
		assert.Equal(t, res2.SetID, s.Set)
	}
	assert.Equal(t, []string{"bucket/kohakku", "postgres/kohakku-controller", "postgres/kohakku-dispatcher", "redis/default", "sqlite/drflow-temporal"}, names)
	require.NotNil(t, rep.LastRun)
	assert.Equal(t, "Completed", rep.LastRun.Status)

	sets, err := e.acts.ListSets(ctx)
	require.NoError(t, err)
	require.Len(t, sets, 2)
	for _, s := range sets {
		assert.True(t, s.Complete)
	}
}

// checkArtifact downloads a into dir and checks it without drflow's code: stored size
// and SHA-256, raw size after zstd, then the kind's own check (pg_restore, a fresh
// redis-server, the bucket, SQLite). It returns the downloaded file's path.
func checkArtifact(ctx context.Context, t *testing.T, e *env, a activities.Artifact, dir string) string {
	t.Helper()
	path, sum := e.getObject(ctx, t, a.Key, dir)
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, a.Size, fi.Size(), "size of %s", a.Key)
	assert.Equal(t, a.SHA256, sum, "sha256 of %s", a.Key)
	raw := zstdDecode(t, path)
	fi, err = os.Stat(raw)
	require.NoError(t, err)
	assert.Equal(t, a.RawSize, fi.Size(), "raw size of %s", a.Key)
	switch a.Kind {
	case activities.KindPostgres:
		checkDump(ctx, t, e, a, raw)
	case activities.KindRedis:
		checkRDB(ctx, t, e, a, raw, dir)
	case activities.KindListing:
		checkListing(ctx, t, e, a, raw)
	case activities.KindSQLite:
		checkSQLite(ctx, t, a, raw)
	}
	return path
}

// checkDump restores a dump with pg_restore into a fresh database and compares row counts
// with the manifest and with the source.
func checkDump(ctx context.Context, t *testing.T, e *env, a activities.Artifact, raw string) {
	t.Helper()
	bin := e.st.Postgres.BinDir()
	out, err := exec.Command(filepath.Join(bin, "pg_restore"), "--list", raw).CombinedOutput()
	require.NoError(t, err, "pg_restore --list %s: %s", a.Key, out)
	require.Contains(t, string(out), "TABLE DATA public")

	fresh := "restored-" + a.Source
	require.NoError(t, e.st.Postgres.CreateDatabase(ctx, fresh))
	out, err = exec.Command(filepath.Join(bin, "pg_restore"), "--no-owner", "-d", e.st.Postgres.URL(fresh), raw).CombinedOutput()
	require.NoError(t, err, "pg_restore %s: %s", a.Key, out)

	require.NotEmpty(t, a.RowCounts)
	restored, err := pgx.Connect(ctx, e.st.Postgres.URL(fresh))
	require.NoError(t, err)
	defer restored.Close(ctx)
	source, err := pgx.Connect(ctx, e.st.Postgres.URL(a.Source))
	require.NoError(t, err)
	defer source.Close(ctx)
	for table, want := range a.RowCounts {
		var got, live int64
		require.NoError(t, restored.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{table}.Sanitize()).Scan(&got))
		require.NoError(t, source.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{table}.Sanitize()).Scan(&live))
		assert.Equal(t, want, got, "%s.%s restored rows", a.Source, table)
		assert.Equal(t, live, got, "%s.%s source rows", a.Source, table)
	}
	if a.Source == schemas.ControllerDB {
		assert.Equal(t, int64(e.seeded.Tasks), a.RowCounts["tasks_task"])
	}
}

// checkRDB loads the RDB into a fresh redis-server and compares DBSIZE.
func checkRDB(ctx context.Context, t *testing.T, e *env, a activities.Artifact, raw, dir string) {
	t.Helper()
	rdbDir := filepath.Join(dir, "redis-restore")
	require.NoError(t, os.MkdirAll(rdbDir, 0o755))
	require.NoError(t, os.Rename(raw, filepath.Join(rdbDir, "dump.rdb")))
	port := freePort(t)
	cmd := exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", rdbDir,
		"--dbfilename", "dump.rdb", "--appendonly", "no", "--save", "")
	require.NoError(t, cmd.Start())
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	fresh := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + strconv.Itoa(port)})
	defer fresh.Close()
	require.Eventually(t, func() bool { return fresh.Ping(ctx).Err() == nil }, 10*time.Second, 50*time.Millisecond)
	got, err := fresh.DBSize(ctx).Result()
	require.NoError(t, err)
	src := redis.NewClient(&redis.Options{Addr: e.st.Redis.Addr()})
	defer src.Close()
	live, err := src.DBSize(ctx).Result()
	require.NoError(t, err)
	assert.Equal(t, a.KeyCount, got, "restored DBSIZE vs manifest")
	assert.Equal(t, live, got, "restored DBSIZE vs source")
	assert.Positive(t, got)
	q, err := fresh.LLen(ctx, schemas.PendingQueueKey).Result()
	require.NoError(t, err)
	assert.Equal(t, int64(e.seeded.PendingQueued), q)
}

// checkListing compares the listing artifact and the mirror with the source bucket.
func checkListing(ctx context.Context, t *testing.T, e *env, a activities.Artifact, raw string) {
	t.Helper()
	source := map[string]int64{}
	var sourceBytes int64
	for o := range e.objects.ListObjects(ctx, schemas.DefaultBucket, minio.ListObjectsOptions{Recursive: true}) {
		require.NoError(t, o.Err)
		source[o.Key] = o.Size
		sourceBytes += o.Size
	}
	f, err := os.Open(raw)
	require.NoError(t, err)
	defer f.Close()
	listed := map[string]int64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var line struct {
			Key  string `json:"key"`
			Size int64  `json:"size"`
		}
		require.NoError(t, json.Unmarshal(sc.Bytes(), &line))
		listed[line.Key] = line.Size
	}
	require.NoError(t, sc.Err())
	assert.Equal(t, source, listed, "listing artifact = source bucket")
	assert.Equal(t, int64(len(source)), a.Objects)
	assert.Equal(t, sourceBytes, a.ObjectBytes)

	mirror := map[string]int64{}
	prefix := "mirror/" + schemas.DefaultBucket + "/"
	for o := range e.backup.ListObjects(ctx, backupBucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		require.NoError(t, o.Err)
		mirror[strings.TrimPrefix(o.Key, prefix)] = o.Size
	}
	assert.Equal(t, source, mirror, "mirror = source bucket (keys and sizes)")
}

// checkSQLite opens the decoded snapshot with SQLite itself: integrity and row counts.
func checkSQLite(ctx context.Context, t *testing.T, a activities.Artifact, raw string) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+raw+"?mode=ro")
	require.NoError(t, err)
	defer db.Close()
	var ok string
	require.NoError(t, db.QueryRowContext(ctx, "PRAGMA integrity_check").Scan(&ok))
	assert.Equal(t, "ok", ok)
	require.NotEmpty(t, a.RowCounts)
	for table, want := range a.RowCounts {
		var got int64
		require.NoError(t, db.QueryRowContext(ctx, `SELECT count(*) FROM "`+strings.ReplaceAll(table, `"`, `""`)+`"`).Scan(&got))
		assert.Equal(t, want, got, "sqlite table %s", table)
	}
	assert.Contains(t, a.RowCounts, "executions", "the Temporal state has its executions table")
}

func freePort(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("python3", "-c", "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1])")
	out, err := cmd.Output()
	require.NoError(t, err)
	p, err := strconv.Atoi(strings.TrimSpace(string(out)))
	require.NoError(t, err)
	return p
}

// TestNightlyBackupBadInput: unknown targets, a missing bucket, wrong credentials and an
// unreachable store each fail fast with a message naming the problem, and no set is
// marked complete.
func TestNightlyBackupBadInput(t *testing.T) {
	t.Parallel() // each test has its own stack
	e := newEnv(t, 100)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	st := e.st
	tests := []struct {
		name string
		env  map[string]string
		in   workflows.NightlyBackupInput
		want []string
	}{
		{"unknown database", nil, workflows.NightlyBackupInput{Databases: []string{"kohakku-control"}},
			[]string{`unknown database "kohakku-control"`, "configured: kohakku-controller, kohakku-dispatcher"}},
		{"unknown bucket", nil, workflows.NightlyBackupInput{Buckets: []string{"briefs"}}, []string{`unknown bucket "briefs"`}},
		{"backup bucket does not exist", map[string]string{"S3_BUCKET": "no-such-bucket"}, workflows.NightlyBackupInput{},
			[]string{`bucket "no-such-bucket" does not exist`}},
		{"wrong backup credentials", map[string]string{"S3_SECRET_ACCESS_KEY": "wrong-secret-value"}, workflows.NightlyBackupInput{},
			[]string{"backup store"}},
		{"unreachable backup store", map[string]string{"S3_ENDPOINT": "http://127.0.0.1:1"}, workflows.NightlyBackupInput{},
			[]string{"127.0.0.1:1"}},
		{"configured database missing on the server", map[string]string{"DRFLOW_POSTGRES_DATABASES": "kohakku-controller,kohakku-ghost"},
			workflows.NightlyBackupInput{}, []string{"kohakku-ghost", "is incomplete"}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			queue := e.queue
			if tt.env != nil {
				queue = fmt.Sprintf("%s-%d", e.queue, i)
				startWorker(t, e.c, loadConfig(t, stackEnv(st, tt.env)), queue)
			}
			start := time.Now()
			_, err := e.run(ctx, t, fmt.Sprintf("nightly-bad-%d", i), queue, tt.in)
			require.Error(t, err)
			for _, w := range tt.want {
				assert.Contains(t, err.Error(), w)
			}
			assert.NotContains(t, err.Error(), "wrong-secret-value")
			assert.NotContains(t, err.Error(), st.Backup.SecretKey())
			assert.Less(t, time.Since(start), 90*time.Second, "fails fast")
		})
	}
	sets, err := e.acts.ListSets(ctx)
	require.NoError(t, err)
	for _, s := range sets {
		assert.False(t, s.Complete, "set %s marked complete by a failed run", s.ID)
	}
}

// TestNightlyBackupFailureMetric: a failing source counts in drflow_backup_failures_total.
func TestNightlyBackupFailureMetric(t *testing.T) {
	t.Parallel() // each test has its own stack
	e := newEnv(t, 50)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	queue := e.queue + "-ghost"
	_, reg := startWorkerWithMetrics(t, e.c, loadConfig(t, stackEnv(e.st, map[string]string{"DRFLOW_POSTGRES_DATABASES": "kohakku-ghost"})), queue)
	_, err := e.run(ctx, t, "nightly-ghost", queue, workflows.NightlyBackupInput{SkipObjects: true, SkipRedis: true})
	require.Error(t, err)
	want := `
# HELP drflow_backup_failures_total Failed backup step attempts, by source (each retry that fails counts).
# TYPE drflow_backup_failures_total counter
drflow_backup_failures_total{source="postgres/kohakku-ghost"} 1
`
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(want), "drflow_backup_failures_total"))
}
