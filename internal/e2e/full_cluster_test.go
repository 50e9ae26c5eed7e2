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

// TestFullClusterRecoveryEndToEnd runs the Kohakku workload, takes a backup while it runs,
// then loses everything — PostgreSQL wiped, Redis killed and wiped, the bucket deleted,
// the agents killed — and recovers with FullClusterRecovery while a new generation of
// agents comes up. Every task in flight at the recovery point is re-queued once and ends
// completed or failed; none runs twice.
func TestFullClusterRecoveryEndToEnd(t *testing.T) {
	h := newHooks(t)
	e := newEnvWith(t, 300, func(st *stack.Stack) map[string]string { return h.env(t, st) })
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	addr := e.st.Redis.Addr()
	t.Cleanup(func() { shutdownRedis(t, addr) })
	simOpts := kohakku.SimOptions{Agents: 6, TaskDuration: 300 * time.Millisecond, Jitter: 100 * time.Millisecond,
		HeartbeatEvery: 200 * time.Millisecond, AgentTimeout: 2 * time.Second, PollEvery: 100 * time.Millisecond}

	// The workload runs; a backup is taken while it does.
	o1 := simOpts
	o1.Generation = "gen1-"
	gen1, err := kohakku.StartSim(ctx, e.simTarget(t), o1)
	require.NoError(t, err)
	time.Sleep(time.Second)
	nightly, err := e.run(ctx, t, "fcr-nightly", e.queue, workflows.NightlyBackupInput{})
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

	// Recover. The new generation of agents comes up with the services, as it would.
	id := "fcr-e2e"
	run := e.startRun(ctx, t, id, workflows.FullClusterRecoveryName, workflows.FullClusterRecoveryInput{
		LostAfter: workflows.Duration(3 * time.Second), RedispatchPollEvery: workflows.Duration(500 * time.Millisecond),
		RedispatchDeadline: workflows.Duration(3 * time.Minute), RecoveryOptions: workflows.RecoveryOptions{AutoApprove: true},
	})
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
			if s.Name == "services" && s.Status == workflows.StepCompleted {
				return true
			}
		}
		return false
	}, 4*time.Minute, 100*time.Millisecond, "the services stage never completed")
	o2 := simOpts
	o2.Generation = "gen2-"
	gen2, err := kohakku.StartSim(ctx, e.simTarget(t), o2)
	require.NoError(t, err)
	t.Cleanup(func() { _ = gen2.Stop() })

	var res workflows.FullClusterResult
	require.NoError(t, run.Get(ctx, &res))
	assert.Equal(t, workflows.OutcomeRecovered, res.Outcome)
	assert.True(t, res.RecoveryPoint.Equal(nightly.Manifest.CreatedAt), "the recovery point is the set")
	var stages []string
	for _, s := range res.Stages {
		stages = append(stages, s.Name)
		assert.Positive(t, s.RTO.D(), "stage %s has its RTO", s.Name)
	}
	var want []string
	for _, s := range workflows.FullClusterStages {
		want = append(want, s.Name)
	}
	assert.Equal(t, want, stages, "stages in the order of the data")
	for _, s := range res.Stages {
		t.Logf("stage %-14s RTO %-8s %s", s.Name, s.RTO.D().Round(time.Millisecond), s.Detail)
	}
	t.Logf("total RTO %s", res.RTO.D().Round(time.Millisecond))
	assert.Equal(t, []string{"restart controller", "restart dispatcher", "restart monitor"}, h.lines(t),
		"the services restart once, in order, after the data is back")

	// Every re-queued task ended, once.
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

	if *historytest.Update {
		historytest.Write(ctx, t, e.c, id, "../../workflows/testdata/FullClusterRecovery-e2e.json")
		historytest.Write(ctx, t, e.c, id+"-redispatch", "../../workflows/testdata/RedispatchLostTasks-fcr.json")
	}
}
