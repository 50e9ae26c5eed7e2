package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/minio/minio-go/v7"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/client"

	"github.com/kohakku/drflow/internal/historytest"
	"github.com/kohakku/drflow/internal/kohakku"
	"github.com/kohakku/drflow/internal/stack"
	"github.com/kohakku/drflow/schemas"
	"github.com/kohakku/drflow/workflows"
)

// simTarget connects the simulator to the env's stack. The pools reconnect by themselves
// after the servers come back.
func (e *env) simTarget(t *testing.T) kohakku.Target {
	t.Helper()
	ctx := context.Background()
	ctrl, err := pgxpool.New(ctx, e.st.Postgres.URL(schemas.ControllerDB))
	require.NoError(t, err)
	t.Cleanup(ctrl.Close)
	disp, err := pgxpool.New(ctx, e.st.Postgres.URL(schemas.DispatcherDB))
	require.NoError(t, err)
	t.Cleanup(disp.Close)
	rdb := redis.NewClient(&redis.Options{Addr: e.st.Redis.Addr()})
	t.Cleanup(func() { rdb.Close() })
	return kohakku.Target{Controller: ctrl, Dispatcher: disp, Redis: rdb, Objects: e.objects, Bucket: schemas.DefaultBucket}
}

// fullClusterLoss is a stack that ran the Kohakku workload, was backed up while it ran,
// then lost everything: PostgreSQL wiped, Redis killed and wiped, the bucket deleted, the
// agents killed.
type fullClusterLoss struct {
	e       *env
	h       *hooks
	nightly workflows.NightlyBackupResult
	simOpts kohakku.SimOptions
}

func newFullClusterLoss(ctx context.Context, t *testing.T) *fullClusterLoss {
	t.Helper()
	h := newHooks(t)
	e := newEnvWith(t, 300, func(st *stack.Stack) map[string]string { return h.env(t, st) })
	addr := e.st.Redis.Addr()
	t.Cleanup(func() { shutdownRedis(t, addr) })
	s := &fullClusterLoss{e: e, h: h, simOpts: kohakku.SimOptions{Agents: 6, TaskDuration: 300 * time.Millisecond, Jitter: 100 * time.Millisecond,
		HeartbeatEvery: 200 * time.Millisecond, AgentTimeout: 2 * time.Second, PollEvery: 100 * time.Millisecond}}

	// The workload runs; a backup is taken while it does.
	o1 := s.simOpts
	o1.Generation = "gen1-"
	gen1, err := kohakku.StartSim(ctx, e.simTarget(t), o1)
	require.NoError(t, err)
	time.Sleep(time.Second)
	s.nightly, err = e.run(ctx, t, "fcr-nightly", e.queue, workflows.NightlyBackupInput{})
	require.NoError(t, err)
	time.Sleep(500 * time.Millisecond)
	require.Positive(t, gen1.Stats().Completed, "the workload ran")

	// Everything is lost.
	gen1.KillAgents()
	require.NoError(t, gen1.Stop())
	require.NoError(t, e.st.Postgres.Stop(ctx))
	require.NoError(t, e.st.Postgres.Wipe())
	require.NoError(t, e.st.Postgres.Start(ctx))
	require.NoError(t, e.st.Redis.Kill())
	require.NoError(t, e.st.Redis.Wipe())
	for o := range e.objects.ListObjects(ctx, schemas.DefaultBucket, minio.ListObjectsOptions{Recursive: true}) {
		require.NoError(t, o.Err)
		require.NoError(t, e.objects.RemoveObject(ctx, schemas.DefaultBucket, o.Key, minio.RemoveObjectOptions{}))
	}
	require.NoError(t, e.objects.RemoveBucket(ctx, schemas.DefaultBucket))
	return s
}

// recoveryInput is the FullClusterRecovery input of both scenarios.
var recoveryInput = workflows.FullClusterRecoveryInput{
	LostAfter: workflows.Duration(3 * time.Second), RedispatchPollEvery: workflows.Duration(500 * time.Millisecond),
	RedispatchDeadline: workflows.Duration(4 * time.Minute), RecoveryOptions: workflows.RecoveryOptions{AutoApprove: true},
}

// waitForStep waits until the run's step reaches status.
func (e *env) waitForStep(ctx context.Context, t *testing.T, id, step string, status workflows.StepStatus) {
	t.Helper()
	require.Eventually(t, func() bool {
		v, err := e.c.QueryWorkflow(ctx, id, "", workflows.ProgressQuery)
		if err != nil {
			return false
		}
		var p workflows.Progress
		if v.Get(&p) != nil {
			return false
		}
		for _, s := range p.Steps {
			if s.Name == step && s.Status == status {
				return true
			}
		}
		return false
	}, 4*time.Minute, 50*time.Millisecond, "step %q of %s never became %s", step, id, status)
}

// startAgents brings a new generation of agents up, as the restarted services would.
func (s *fullClusterLoss) startAgents(ctx context.Context, t *testing.T) *kohakku.Sim {
	t.Helper()
	o2 := s.simOpts
	o2.Generation = "gen2-"
	gen2, err := kohakku.StartSim(ctx, s.e.simTarget(t), o2)
	require.NoError(t, err)
	t.Cleanup(func() { _ = gen2.Stop() })
	return gen2
}

// check asserts the end state of a recovery: every task in flight at the recovery point
// was re-queued once and ended, none ran twice, none is left on a lost agent.
func (s *fullClusterLoss) check(ctx context.Context, t *testing.T, id string, res workflows.FullClusterResult, gen2 *kohakku.Sim) {
	t.Helper()
	e := s.e
	assert.Equal(t, workflows.OutcomeRecovered, res.Outcome)
	assert.True(t, res.RecoveryPoint.Equal(s.nightly.Manifest.CreatedAt), "the recovery point is the set")
	var stages []string
	for _, st := range res.Stages {
		stages = append(stages, st.Name)
		assert.Positive(t, st.RTO.D(), "stage %s has its RTO", st.Name)
		t.Logf("stage %-14s RTO %-8s %s", st.Name, st.RTO.D().Round(time.Millisecond), st.Detail)
	}
	t.Logf("total RTO %s", res.RTO.D().Round(time.Millisecond))
	var want []string
	for _, st := range workflows.FullClusterStages {
		want = append(want, st.Name)
	}
	assert.Equal(t, want, stages, "stages in the order of the data")

	require.NotNil(t, res.Redispatch)
	rd := res.Redispatch
	require.Positive(t, rd.Counts.Requeued, "tasks were in flight at the recovery point")
	assert.Zero(t, rd.MissedDeadline)
	assert.Equal(t, rd.Counts.Requeued, rd.Counts.Completed+rd.Counts.Failed+rd.Counts.Cancelled)

	conn, err := pgx.Connect(ctx, e.st.Postgres.URL(schemas.ControllerDB))
	require.NoError(t, err)
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT r.task_id, t.status FROM drflow.requeued r JOIN tasks_task t ON t.id = r.task_id WHERE r.recovery_id = $1`, id)
	require.NoError(t, err)
	type row struct {
		ID     int64
		Status string
	}
	requeued, err := pgx.CollectRows(rows, pgx.RowToStructByPos[row])
	require.NoError(t, err)
	assert.Len(t, requeued, int(rd.Counts.Requeued), "the result's count is the database's")
	runs := gen2.Stats().Runs
	for _, r := range requeued {
		assert.True(t, schemas.IsTerminal(r.Status), "task %d ended (%s)", r.ID, r.Status)
		assert.Equal(t, 1, runs[r.ID], "task %d ran exactly once after the recovery", r.ID)
	}
	for tid, n := range runs {
		assert.LessOrEqual(t, n, 1, "task %d ran %d times", tid, n)
	}

	// No task is left in flight on an agent of the lost cluster.
	rows, err = conn.Query(ctx, `SELECT id, coalesce(container_id, '') FROM tasks_task WHERE status IN ('dispatched', 'running')`)
	require.NoError(t, err)
	type inflight struct {
		ID        int64
		Container string
	}
	left, err := pgx.CollectRows(rows, pgx.RowToStructByPos[inflight])
	require.NoError(t, err)
	for _, l := range left {
		assert.True(t, strings.HasPrefix(l.Container, "gen2-"), "task %d is still held by %q, an agent of the lost cluster", l.ID, l.Container)
	}
	ok, err := e.objects.BucketExists(ctx, schemas.DefaultBucket)
	require.NoError(t, err)
	assert.True(t, ok, "the bucket is back")
}

// TestFullClusterRecoveryEndToEnd recovers a lost stack with FullClusterRecovery while a
// new generation of agents comes up with the services. Every task in flight at the
// recovery point is re-queued once and ends completed or failed; none runs twice.
func TestFullClusterRecoveryEndToEnd(t *testing.T) {
	t.Parallel() // each test has its own stack
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	s := newFullClusterLoss(ctx, t)
	e := s.e
	id := "fcr-e2e"
	run := e.startRun(ctx, t, id, workflows.FullClusterRecoveryName, recoveryInput)
	e.waitForStep(ctx, t, id, "services", workflows.StepCompleted)
	gen2 := s.startAgents(ctx, t)
	var res workflows.FullClusterResult
	require.NoError(t, run.Get(ctx, &res))
	s.check(ctx, t, id, res, gen2)
	assert.Equal(t, []string{"restart controller", "restart dispatcher", "restart monitor"}, s.h.lines(t),
		"the services restart once, in order, after the data is back")
	if *historytest.Update {
		historytest.Write(ctx, t, e.c, id, "../../workflows/testdata/FullClusterRecovery-e2e.json")
		historytest.Write(ctx, t, e.c, id+"-redispatch", "../../workflows/testdata/RedispatchLostTasks-fcr.json")
	}
}

// TestFullClusterRecoverySurvivesWorkerKills runs the same recovery on a worker
// subprocess that is killed with SIGKILL during the restore stage and again while the
// re-dispatched tasks are tracked; restarted each time, it completes with the same end
// state and no task re-queued twice.
func TestFullClusterRecoverySurvivesWorkerKills(t *testing.T) {
	t.Parallel() // mostly waiting for heartbeat timeouts: overlap it with the other tests
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	s := newFullClusterLoss(ctx, t)
	e := s.e
	w := newWorkerProc(t, stackEnv(e.st, s.h.env(t, e.st)), "fcr-crash")
	w.start(t)
	id := "fcr-crash"
	run, err := e.c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: "fcr-crash"}, workflows.FullClusterRecoveryName, recoveryInput)
	require.NoError(t, err)

	e.waitForStep(ctx, t, id, "postgres", workflows.StepRunning)
	time.Sleep(300 * time.Millisecond) // into the child's restore
	w.kill(t)
	w.start(t)

	e.waitForStep(ctx, t, id, "services", workflows.StepCompleted)
	gen2 := s.startAgents(ctx, t)
	e.waitForStep(ctx, t, id+"-redispatch", "track to the end", workflows.StepRunning)
	w.kill(t)
	w.start(t)

	var res workflows.FullClusterResult
	require.NoError(t, run.Get(ctx, &res))
	s.check(ctx, t, id, res, gen2)
	assert.Equal(t, 2, w.starts-1, "killed twice")
}
