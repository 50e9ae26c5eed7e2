package e2e

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	tlog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/worker"

	"github.com/kohakku/drflow/activities"
	"github.com/kohakku/drflow/internal/app"
	"github.com/kohakku/drflow/internal/config"
	"github.com/kohakku/drflow/internal/profile"
	"github.com/kohakku/drflow/internal/stack/stacktest"
	"github.com/kohakku/drflow/schemas"
	"github.com/kohakku/drflow/workflows"
)

// The scale of BenchmarkRedispatch100k: the figure.
const (
	benchTasks      = 100000
	benchContainers = 500
	benchRecovery   = "bench"
	// benchAgents goroutines of the simulated agent pool, each taking up to benchPop ids
	// per LMPOP and completing them with one UPDATE.
	benchAgents = 4
	benchPop    = 1000
)

// redispatchBench is the stack of BenchmarkRedispatch100k: PostgreSQL, Redis and Temporal
// (no MinIO: re-dispatch touches no object), with a drflow worker in this process.
type redispatchBench struct {
	ctrl, disp *pgxpool.Pool
	rdb        *redis.Client
	cfg        *config.Config
	c          client.Client
	queue      string
	// baseline is the baseline's rate in this run (tasks/s), 0 until it ran.
	baseline float64
}

// BenchmarkRedispatch100k: 100,000 tasks running on 500 agents that stopped sending
// heartbeats 10 minutes ago are re-queued by RedispatchLostTasks, run through a real
// Temporal server and worker, and tracked until a fast simulated agent pool has completed
// every one. Sub-benchmarks, all in the same run:
//
//   - baseline: the plain re-queue — one UPDATE of all 100,000 rows, one Redis pipeline of
//     HSET + RPUSH — with no Temporal and no per-recovery record;
//   - profile/batch=N: profile.Kohakku.RequeueLost called in a loop, no Temporal: the cost
//     of the re-queue itself, per batch size;
//   - workflow/batch=N: the runbook end to end, the agents consuming the queue while it is
//     being filled.
//
// One iteration is one full re-dispatch of the 100,000 tasks (run with -benchtime 1x); the
// data is reloaded, untimed, before each.
func BenchmarkRedispatch100k(b *testing.B) {
	e := newRedispatchBench(b)
	b.Run("baseline", e.benchBaseline)
	for _, batch := range []int{1000, 5000} {
		b.Run(fmt.Sprintf("profile/batch=%d", batch), func(b *testing.B) { e.benchProfile(b, batch) })
	}
	for _, batch := range []int{1000, 5000} {
		b.Run(fmt.Sprintf("workflow/batch=%d", batch), func(b *testing.B) { e.benchWorkflow(b, batch) })
	}
}

func newRedispatchBench(b testing.TB) *redispatchBench {
	b.Helper()
	ctx := context.Background()
	tp := stacktest.Temporal(b)
	e := newRedispatchStack(b, map[string]string{"TEMPORAL_ADDRESS": tp.GRPCAddr()})
	var err error
	// Warnings only: the SDK logs every activity of the thousands of batches otherwise.
	logger := tlog.NewStructuredLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	e.c, err = client.DialContext(ctx, client.Options{HostPort: tp.GRPCAddr(), Namespace: "default", Logger: logger})
	require.NoError(b, err)
	b.Cleanup(e.c.Close)
	acts, err := app.New(ctx, e.cfg)
	require.NoError(b, err)
	w := worker.New(e.c, e.queue, worker.Options{})
	require.NoError(b, app.Register(w, acts))
	require.NoError(b, w.Start())
	b.Cleanup(w.Stop)
	return e
}

// newRedispatchStack starts PostgreSQL and Redis with both Kohakku schemas and a drflow
// configuration for them (plus extra variables).
func newRedispatchStack(tb testing.TB, extra map[string]string) *redispatchBench {
	tb.Helper()
	ctx := context.Background()
	pg := stacktest.Postgres(tb)
	rs := stacktest.Redis(tb)
	e := &redispatchBench{queue: "bench-redispatch"}
	for _, db := range []struct{ name, sql string }{
		{schemas.ControllerDB, schemas.ControllerSQL},
		{schemas.DispatcherDB, schemas.DispatcherSQL},
	} {
		require.NoError(tb, pg.CreateDatabase(ctx, db.name))
		pool, err := pgxpool.New(ctx, pg.URL(db.name))
		require.NoError(tb, err)
		tb.Cleanup(pool.Close)
		_, err = pool.Exec(ctx, db.sql)
		require.NoError(tb, err, "apply schema %s", db.name)
		if db.name == schemas.ControllerDB {
			e.ctrl = pool
		} else {
			e.disp = pool
		}
	}
	e.rdb = redis.NewClient(&redis.Options{Addr: rs.Addr(), PoolSize: 2 * benchAgents})
	tb.Cleanup(func() { e.rdb.Close() })

	vars := map[string]string{
		"DRFLOW_POSTGRES_URL":       pg.URL(""),
		"DRFLOW_REDIS_ADDR":         rs.Addr(),
		"DRFLOW_POSTGRES_DATABASES": schemas.ControllerDB + "," + schemas.DispatcherDB,
		"HOME":                      os.TempDir(), // no developer's Temporal profile
	}
	for k, v := range extra {
		vars[k] = v
	}
	var err error
	e.cfg, err = config.Load("", func(k string) string { return vars[k] })
	require.NoError(tb, err)
	return e
}

// load replaces all Kohakku data with the scenario: tasks running tasks (ids 1 to tasks)
// held by containers agents that are live in agent_containers but sent their last
// heartbeat 10 minutes ago, one open assignment per task, a state hash per task, an empty
// queue and no drflow tables. Tasks were created in id order, a few milliseconds apart
// with some jitter, in three priorities: the queue's dispatch order is neither id order
// nor the order of the rows on disk, but the rows of one priority are near each other, as
// in a table filled over time. Tables are analyzed, as a production database's would be.
func (e *redispatchBench) load(ctx context.Context, b testing.TB, tasks, containers int) {
	b.Helper()
	for _, q := range []string{
		`DROP SCHEMA IF EXISTS drflow CASCADE`,
		`TRUNCATE ` + schemas.TasksTable + ` CASCADE`,
	} {
		_, err := e.ctrl.Exec(ctx, q)
		require.NoError(b, err, q)
	}
	for _, q := range []string{
		`TRUNCATE ` + schemas.DispatchAssignmentsTable + `, ` + schemas.AgentContainersTable,
		`INSERT INTO ` + schemas.AgentContainersTable + ` (container_id, host, generation, status, started_at, last_heartbeat_at)
		 SELECT 'bench-agent-' || g, 'bench-host-' || (g % 20), g, 'live', now() - interval '2 hours', now() - interval '10 minutes'
		 FROM generate_series(1, ` + strconv.Itoa(containers) + `) g`,
		`INSERT INTO ` + schemas.DispatchAssignmentsTable + ` (task_id, container_id, attempt, assigned_at)
		 SELECT id, 'bench-agent-' || (1 + (id - 1) % ` + strconv.Itoa(containers) + `), 1, now() - interval '20 minutes'
		 FROM generate_series(1, ` + strconv.Itoa(tasks) + `) id`,
		`VACUUM ANALYZE ` + schemas.AgentContainersTable + `, ` + schemas.DispatchAssignmentsTable,
	} {
		_, err := e.disp.Exec(ctx, q)
		require.NoError(b, err, q)
	}

	t0 := time.Now().Add(-2 * time.Hour).Truncate(time.Millisecond)
	rows := make([][]any, tasks)
	for i := range rows {
		id := int64(i + 1)
		created := t0.Add(time.Duration(id*20-id*7919%50) * time.Millisecond)
		rows[i] = []any{id, "bench task " + strconv.FormatInt(id, 10), schemas.StatusRunning, schemas.BriefKey(id),
			benchContainer(id, containers), int32(1), int32(id % 100), int32(id % 3),
			created, created.Add(time.Hour), created.Add(time.Hour), created.Add(time.Hour)}
	}
	n, err := e.ctrl.CopyFrom(ctx, pgx.Identifier{schemas.TasksTable},
		[]string{"id", "title", "status", "brief_key", "container_id", "attempt", "progress", "priority", "created_at", "updated_at", "dispatched_at", "started_at"},
		pgx.CopyFromRows(rows))
	require.NoError(b, err)
	require.EqualValues(b, tasks, n)
	for _, q := range []string{
		`SELECT setval(pg_get_serial_sequence('` + schemas.TasksTable + `', 'id'), ` + strconv.Itoa(tasks) + `)`,
		`VACUUM ANALYZE ` + schemas.TasksTable,
		`CHECKPOINT`,
	} {
		_, err := e.ctrl.Exec(ctx, q)
		require.NoError(b, err, q)
	}

	require.NoError(b, e.rdb.FlushDB(ctx).Err())
	updated := strconv.FormatInt(t0.Add(time.Hour).UnixMilli(), 10)
	for lo := int64(1); lo <= int64(tasks); lo += 10000 {
		pipe := e.rdb.Pipeline()
		for id := lo; id < lo+10000 && id <= int64(tasks); id++ {
			pipe.HSet(ctx, schemas.TaskKey(id), schemas.TaskFieldStatus, schemas.StatusRunning,
				schemas.TaskFieldContainer, benchContainer(id, containers), schemas.TaskFieldAttempt, "1",
				schemas.TaskFieldProgress, strconv.FormatInt(id%100, 10), schemas.TaskFieldUpdatedAt, updated)
		}
		_, err := pipe.Exec(ctx)
		require.NoError(b, err)
	}
}

func benchContainer(id int64, containers int) string {
	return "bench-agent-" + strconv.FormatInt(1+(id-1)%int64(containers), 10)
}

// benchBaseline re-queues the 100,000 tasks the plain way: the live agents with a recent
// heartbeat (none), then one UPDATE of every in-flight task they do not hold, then one
// pipeline writing each task's hash and pushing the ids in dispatch order. Releasing the
// assignments is timed apart (release-s): it is not part of the plain re-queue.
func (e *redispatchBench) benchBaseline(b *testing.B) {
	ctx := context.Background()
	var requeue, sql, release, cpu time.Duration
	var steal float64
	for range b.N {
		b.StopTimer()
		e.load(ctx, b, benchTasks, benchContainers)
		b.StartTimer()

		start, cpu0 := time.Now(), sampleCPU()
		rows, err := e.disp.Query(ctx, `SELECT container_id FROM `+schemas.AgentContainersTable+
			` WHERE status = $1 AND last_heartbeat_at >= $2`, schemas.ContainerLive, time.Now().Add(-time.Minute))
		require.NoError(b, err)
		healthy, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(b, err)
		rows, err = e.ctrl.Query(ctx, `UPDATE `+schemas.TasksTable+` SET status = 'pending', container_id = NULL, updated_at = now()
			WHERE status IN ('dispatched', 'running') AND (container_id IS NULL OR NOT (container_id = ANY($1)))
			RETURNING id, attempt, progress, priority, created_at, updated_at`, healthy)
		require.NoError(b, err)
		type task struct {
			ID                      int64
			Attempt, Progress, Prio int32
			CreatedAt, UpdatedAt    time.Time
		}
		tasks, err := pgx.CollectRows(rows, pgx.RowToStructByPos[task])
		require.NoError(b, err)
		sql += time.Since(start)
		slices.SortFunc(tasks, func(a, b task) int {
			switch {
			case a.Prio != b.Prio:
				return int(b.Prio - a.Prio)
			case !a.CreatedAt.Equal(b.CreatedAt):
				return a.CreatedAt.Compare(b.CreatedAt)
			}
			return int(a.ID - b.ID)
		})
		pipe := e.rdb.Pipeline()
		ids := make([]any, 0, len(tasks))
		for _, t := range tasks {
			pipe.HSet(ctx, schemas.TaskKey(t.ID), schemas.TaskFieldStatus, schemas.StatusPending, schemas.TaskFieldContainer, "",
				schemas.TaskFieldAttempt, strconv.Itoa(int(t.Attempt)), schemas.TaskFieldProgress, strconv.Itoa(int(t.Progress)),
				schemas.TaskFieldUpdatedAt, strconv.FormatInt(t.UpdatedAt.UnixMilli(), 10))
			ids = append(ids, strconv.FormatInt(t.ID, 10))
		}
		pipe.RPush(ctx, schemas.PendingQueueKey, ids...)
		_, err = pipe.Exec(ctx)
		require.NoError(b, err)
		requeue += time.Since(start)
		c, st := cpu0.since()
		cpu, steal = cpu+c, steal+st

		start = time.Now()
		tag, err := e.disp.Exec(ctx, `UPDATE `+schemas.DispatchAssignmentsTable+` SET released_at = greatest(now(), assigned_at)
			WHERE released_at IS NULL AND NOT (container_id = ANY($1))`, healthy)
		require.NoError(b, err)
		release += time.Since(start)

		b.StopTimer()
		require.Len(b, tasks, benchTasks)
		require.EqualValues(b, benchTasks, tag.RowsAffected())
		n, err := e.rdb.LLen(ctx, schemas.PendingQueueKey).Result()
		require.NoError(b, err)
		require.EqualValues(b, benchTasks, n)
		b.StartTimer()
	}
	e.baseline = float64(b.N*benchTasks) / requeue.Seconds()
	b.ReportMetric(e.baseline, "requeue-tasks/s")
	b.ReportMetric(requeue.Seconds()/float64(b.N), "requeue-s")
	b.ReportMetric(release.Seconds()/float64(b.N), "release-s")
	b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s")
	b.ReportMetric(100*steal/float64(b.N), "steal-%")
	per := func(d time.Duration) time.Duration { return (d / time.Duration(b.N)).Round(time.Millisecond) }
	b.Logf("baseline: %d tasks re-queued in %s (%.0f tasks/s): %s in PostgreSQL, %s in Redis, %s of CPU; assignments released in %s",
		benchTasks, per(requeue), e.baseline, per(sql), per(requeue-sql), per(cpu), per(release))
}

// benchProfile calls the profile's RequeueLost directly, batch after batch, as the
// activity does but without Temporal and without agents.
func (e *redispatchBench) benchProfile(b *testing.B, batch int) {
	ctx := context.Background()
	db := activities.PostgresDB(e.cfg.Postgres)
	var took, cpu time.Duration
	var steal float64
	calls := 0
	for range b.N {
		b.StopTimer()
		e.load(ctx, b, benchTasks, benchContainers)
		b.StartTimer()
		start, cpu0 := time.Now(), sampleCPU()
		var total int64
		for {
			rdb := redis.NewClient(&redis.Options{Addr: e.cfg.Redis.Addr, MaxRetries: -1, PoolSize: 2})
			res, err := profile.Kohakku{}.RequeueLost(ctx, db, rdb, profile.RequeueInput{RecoveryID: benchRecovery,
				Rule: profile.LostRule{HeartbeatBefore: time.Now().Add(-time.Minute)}, Batch: batch, Until: time.Now().Add(5 * time.Second)})
			rdb.Close()
			require.NoError(b, err)
			calls++
			total += res.Requeued
			if res.Done {
				break
			}
		}
		took += time.Since(start)
		c, st := cpu0.since()
		cpu, steal = cpu+c, steal+st
		b.StopTimer()
		require.EqualValues(b, benchTasks, total)
		n, err := e.rdb.LLen(ctx, schemas.PendingQueueKey).Result()
		require.NoError(b, err)
		require.EqualValues(b, benchTasks, n)
		b.StartTimer()
	}
	rate := float64(b.N*benchTasks) / took.Seconds()
	b.ReportMetric(rate, "requeue-tasks/s")
	e.reportVsBaseline(b, rate)
	b.ReportMetric(took.Seconds()/float64(b.N), "requeue-s")
	b.ReportMetric(float64(took.Milliseconds())/float64(calls), "ms/call")
	b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s")
	b.ReportMetric(100*steal/float64(b.N), "steal-%")
	b.Logf("profile, batch %d: %d tasks re-queued in %s (%.0f tasks/s), %d calls, %.1f ms per call, %s of CPU",
		batch, benchTasks, (took / time.Duration(b.N)).Round(time.Millisecond), rate,
		calls/b.N, float64(took.Milliseconds())/float64(calls), (cpu / time.Duration(b.N)).Round(time.Millisecond))
}

// benchWorkflow runs RedispatchLostTasks on the worker while the agent pool consumes the
// queue, and reads its figures from the workflow histories of the whole chain.
func (e *redispatchBench) benchWorkflow(b *testing.B, batch int) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	var sum chainStats
	var wall, lag, cpu time.Duration
	var steal float64
	for i := range b.N {
		b.StopTimer()
		e.load(ctx, b, benchTasks, benchContainers)
		b.StartTimer()

		start, cpu0 := time.Now(), sampleCPU()
		pool := startAgentPool(ctx, e.ctrl, e.rdb)
		id := fmt.Sprintf("bench-redispatch-%d-%d", batch, i)
		run, err := e.c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: e.queue}, workflows.RedispatchLostTasksName,
			workflows.RedispatchLostTasksInput{RecoveryID: benchRecovery, LostAfter: workflows.Duration(time.Minute), BatchSize: batch,
				PollEvery: workflows.Duration(time.Second), Deadline: workflows.Duration(30 * time.Minute)})
		require.NoError(b, err)
		var res workflows.RedispatchResult
		// A failing agent ends the wait: the tasks it dropped would never complete.
		err = run.Get(pool.ctx, &res)
		wall += time.Since(start)
		popped, completed, perr := pool.stop()
		require.NoError(b, perr)
		require.NoError(b, err)
		c, st := cpu0.since()
		cpu, steal = cpu+c, steal+st

		b.StopTimer()
		cs := readChain(ctx, b, e.c, id, run.GetRunID())
		var lastFinished time.Time
		require.NoError(b, e.ctrl.QueryRow(ctx, `SELECT max(finished_at) FROM `+schemas.TasksTable).Scan(&lastFinished))
		lag += cs.completedAt.Sub(lastFinished)
		sum.add(cs)
		b.Logf("workflow, batch %d: %d re-queued in %s (%.0f tasks/s) by %d RequeueLost calls (%s in the activity, %s between, per call); "+
			"last task completed %s before the workflow (%d polls, %s each); %d runs, history lengths %v; wall %s, %s of CPU (agents included)",
			batch, res.Counts.Requeued, cs.requeue().Round(time.Millisecond), float64(res.Counts.Requeued)/cs.requeue().Seconds(),
			cs.requeueCalls, cs.perCall().Round(100*time.Microsecond), cs.between().Round(100*time.Microsecond),
			cs.completedAt.Sub(lastFinished).Round(time.Millisecond), cs.polls, (cs.pollExec / time.Duration(max(cs.polls, 1))).Round(time.Millisecond),
			cs.runs, cs.events, time.Since(start).Round(time.Millisecond), c.Round(time.Millisecond))

		// Every task re-queued once, pushed once, completed once; nothing left behind.
		require.EqualValues(b, benchTasks, res.Counts.Requeued)
		require.EqualValues(b, benchTasks, res.Counts.Completed)
		require.Zero(b, res.MissedDeadline)
		require.Equal(b, cs.runs, res.Runs)
		require.EqualValues(b, benchTasks, popped, "each id was queued exactly once")
		require.EqualValues(b, benchTasks, completed)
		var requeued, unpushed, done int64
		require.NoError(b, e.ctrl.QueryRow(ctx, `SELECT count(*) FROM `+profile.RequeuedTable+` WHERE recovery_id = $1`, benchRecovery).Scan(&requeued))
		require.NoError(b, e.ctrl.QueryRow(ctx, `SELECT count(*) FROM `+profile.UnpushedTable).Scan(&unpushed))
		require.NoError(b, e.ctrl.QueryRow(ctx, `SELECT count(*) FROM `+schemas.TasksTable+` WHERE status = $1`, schemas.StatusCompleted).Scan(&done))
		require.EqualValues(b, benchTasks, requeued)
		require.Zero(b, unpushed)
		require.EqualValues(b, benchTasks, done)
		var open int64
		require.NoError(b, e.disp.QueryRow(ctx, `SELECT count(*) FROM `+schemas.DispatchAssignmentsTable+` WHERE released_at IS NULL`).Scan(&open))
		require.Zero(b, open, "every assignment released")
		keys, err := e.rdb.DBSize(ctx).Result()
		require.NoError(b, err)
		require.Zero(b, keys, "queue drained and every task hash deleted")
		b.StartTimer()
	}
	n := float64(b.N)
	rate := float64(sum.requeued) / sum.requeueTime.Seconds()
	b.ReportMetric(rate, "requeue-tasks/s")
	e.reportVsBaseline(b, rate)
	b.ReportMetric(sum.requeueTime.Seconds()/n, "requeue-s")
	b.ReportMetric(float64(sum.requeueExec.Milliseconds())/float64(sum.requeueCalls), "activity-ms/call")
	b.ReportMetric(float64((sum.requeueTime-sum.requeueExec).Milliseconds())/float64(sum.requeueCalls), "between-ms/call")
	b.ReportMetric(lag.Seconds()/n, "track-lag-s")
	b.ReportMetric(float64(sum.polls)/n, "polls")
	b.ReportMetric(float64(sum.pollExec.Milliseconds())/float64(max(sum.polls, 1)), "ms/poll")
	b.ReportMetric(float64(sum.maxEvents), "max-history-events")
	b.ReportMetric(float64(sum.runs)/n, "runs")
	b.ReportMetric(wall.Seconds()/n, "wall-s")
	b.ReportMetric(cpu.Seconds()/n, "cpu-s")
	b.ReportMetric(100*steal/n, "steal-%")
}

// reportVsBaseline reports rate as a fraction of the baseline's, when the baseline ran.
func (e *redispatchBench) reportVsBaseline(b *testing.B, rate float64) {
	if e.baseline > 0 {
		b.ReportMetric(rate/e.baseline, "x-baseline")
	}
}

// agentPool is the fast simulated agent pool: goroutines that pop up to benchPop ids at a
// time from the pending queue and complete them in bulk, in PostgreSQL then Redis.
type agentPool struct {
	// ctx ends when the pool stops or an agent fails.
	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	popped    atomic.Int64
	completed atomic.Int64
	errOnce   sync.Once
	err       error
}

func startAgentPool(ctx context.Context, ctrl *pgxpool.Pool, rdb *redis.Client) *agentPool {
	ctx, cancel := context.WithCancel(ctx)
	p := &agentPool{ctx: ctx, cancel: cancel}
	for range benchAgents {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			if err := p.agent(ctx, ctrl, rdb); err != nil && ctx.Err() == nil {
				p.errOnce.Do(func() { p.err = err; cancel() })
			}
		}()
	}
	return p
}

func (p *agentPool) agent(ctx context.Context, ctrl *pgxpool.Pool, rdb *redis.Client) error {
	for ctx.Err() == nil {
		// BLMPOP blocks for at most a second: the pool stops within one once cancelled.
		_, vals, err := rdb.BLMPop(ctx, time.Second, "left", benchPop, schemas.PendingQueueKey).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			return fmt.Errorf("agent: BLMPOP: %w", err)
		}
		ids := make([]int64, len(vals))
		for i, v := range vals {
			if ids[i], err = strconv.ParseInt(v, 10, 64); err != nil {
				return fmt.Errorf("agent: queue entry %q: %w", v, err)
			}
		}
		p.popped.Add(int64(len(ids)))
		tag, err := ctrl.Exec(ctx, `UPDATE `+schemas.TasksTable+` SET status = 'completed', finished_at = now(), updated_at = now()
			WHERE id = ANY($1) AND status = 'pending'`, ids)
		if err != nil {
			return fmt.Errorf("agent: complete %d tasks: %w", len(ids), err)
		}
		p.completed.Add(tag.RowsAffected())
		pipe := rdb.Pipeline()
		for _, id := range ids {
			pipe.Del(ctx, schemas.TaskKey(id))
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return fmt.Errorf("agent: delete %d task hashes: %w", len(ids), err)
		}
	}
	return nil
}

// stop ends the pool and returns how many ids it popped and how many tasks it completed.
func (p *agentPool) stop() (popped, completed int64, err error) {
	p.cancel()
	p.wg.Wait()
	return p.popped.Load(), p.completed.Load(), p.err
}

// chainStats are the figures of one continue-as-new chain of RedispatchLostTasks, read
// from the histories of its runs.
type chainStats struct {
	runs      int
	events    []int64 // history length of each run
	maxEvents int64
	// The re-queue phase: first RequeueLost scheduled to last RequeueLost completed.
	requeueFirst, requeueLast time.Time
	requeueCalls              int
	// requeueExec sums the RequeueLost attempts' started → completed times.
	requeueExec time.Duration
	polls       int
	pollExec    time.Duration
	completedAt time.Time

	// Sums over iterations (add).
	requeued    int64
	requeueTime time.Duration
}

func (s chainStats) requeue() time.Duration { return s.requeueLast.Sub(s.requeueFirst) }

// perCall is the mean time in one RequeueLost attempt; between the rest of the re-queue
// phase per call: Temporal's round trip from one batch to the next.
func (s chainStats) perCall() time.Duration { return s.requeueExec / time.Duration(s.requeueCalls) }
func (s chainStats) between() time.Duration {
	return (s.requeue() - s.requeueExec) / time.Duration(s.requeueCalls)
}

func (s *chainStats) add(o chainStats) {
	s.runs += o.runs
	s.maxEvents = max(s.maxEvents, o.maxEvents)
	s.polls += o.polls
	s.pollExec += o.pollExec
	s.requeued += benchTasks
	s.requeueTime += o.requeue()
	s.requeueExec += o.requeueExec
	s.requeueCalls += o.requeueCalls
}

// readChain follows the chain from runID through each ContinuedAsNew event.
func readChain(ctx context.Context, b *testing.B, c client.Client, id, runID string) chainStats {
	b.Helper()
	var s chainStats
	for runID != "" {
		s.runs++
		// Activities by their scheduled event id: type and start time.
		type sched struct {
			name    string
			started time.Time
		}
		scheduled := map[int64]*sched{}
		next := ""
		var n int64
		it := c.GetWorkflowHistory(ctx, id, runID, false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
		for it.HasNext() {
			ev, err := it.Next()
			require.NoError(b, err)
			n++
			at := ev.GetEventTime().AsTime()
			switch ev.GetEventType() {
			case enumspb.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
				name := ev.GetActivityTaskScheduledEventAttributes().GetActivityType().GetName()
				scheduled[ev.GetEventId()] = &sched{name: name}
				if name == "RequeueLost" && s.requeueFirst.IsZero() {
					s.requeueFirst = at
				}
			case enumspb.EVENT_TYPE_ACTIVITY_TASK_STARTED:
				if sc := scheduled[ev.GetActivityTaskStartedEventAttributes().GetScheduledEventId()]; sc != nil {
					sc.started = at
				}
			case enumspb.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
				sc := scheduled[ev.GetActivityTaskCompletedEventAttributes().GetScheduledEventId()]
				require.NotNil(b, sc)
				switch sc.name {
				case "RequeueLost":
					s.requeueLast = at
					s.requeueCalls++
					s.requeueExec += at.Sub(sc.started)
				case "TrackRequeued":
					s.polls++
					s.pollExec += at.Sub(sc.started)
				}
			case enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
				next = ev.GetWorkflowExecutionContinuedAsNewEventAttributes().GetNewExecutionRunId()
			case enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
				s.completedAt = at
			}
		}
		s.events = append(s.events, n)
		s.maxEvents = max(s.maxEvents, n)
		runID = next
	}
	require.False(b, s.completedAt.IsZero(), "the chain ends with a completed run")
	return s
}

// TestRequeueLostFinishesInterruptedPush: a batch whose queue push failed is pushed by the
// next call, once, with its assignments released; a batch whose push happened but whose
// mark was lost is not pushed again; tasks an earlier version left unmarked are pushed.
func TestRequeueLostFinishesInterruptedPush(t *testing.T) {
	ctx := context.Background()
	e := newRedispatchStack(t, nil)
	e.load(ctx, t, 1000, 10)
	db := activities.PostgresDB(e.cfg.Postgres)
	requeue := func(rdb redis.UniversalClient) (profile.RequeueResult, error) {
		return profile.Kohakku{}.RequeueLost(ctx, db, rdb, profile.RequeueInput{RecoveryID: "crash",
			Rule: profile.LostRule{HeartbeatBefore: time.Now().Add(-time.Minute)}, Batch: 100})
	}
	queued := func() []string {
		ids, err := e.rdb.LRange(ctx, schemas.PendingQueueKey, 0, -1).Result()
		require.NoError(t, err)
		return ids
	}
	count := func(pool *pgxpool.Pool, q string) int64 {
		var n int64
		require.NoError(t, pool.QueryRow(ctx, q).Scan(&n))
		return n
	}
	unpushed := func() int64 { return count(e.ctrl, `SELECT count(*) FROM `+profile.UnpushedTable) }

	// The push fails: the batch is re-queued in PostgreSQL, released, and left unpushed.
	dead := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialerRetries: 1})
	defer dead.Close()
	_, err := requeue(dead)
	require.Error(t, err)
	require.Empty(t, queued())
	require.EqualValues(t, 1, unpushed())
	require.EqualValues(t, 100, count(e.ctrl, `SELECT count(*) FROM tasks_task WHERE status = 'pending'`))
	require.EqualValues(t, 100, count(e.disp, `SELECT count(*) FROM dispatch_assignments WHERE released_at IS NOT NULL`))

	// The next call pushes it, then a batch of its own.
	res, err := requeue(e.rdb)
	require.NoError(t, err)
	require.Equal(t, profile.RequeueResult{Requeued: 100, Repushed: 100, Batches: 1}, res)
	require.Len(t, queued(), 200)
	require.Zero(t, unpushed())

	// The push happens, the mark is lost: nothing is pushed twice.
	res, err = requeue(e.rdb)
	require.NoError(t, err)
	require.EqualValues(t, 100, res.Requeued)
	_, err = e.ctrl.Exec(ctx, `INSERT INTO `+profile.UnpushedTable+` (recovery_id, first_task_id, task_ids)
		SELECT 'crash', min(task_id), array_agg(task_id) FROM `+profile.RequeuedTable)
	require.NoError(t, err)
	res, err = requeue(e.rdb)
	require.NoError(t, err)
	require.Equal(t, profile.RequeueResult{Requeued: 100, Batches: 1}, res)
	require.Len(t, queued(), 400)
	require.Zero(t, unpushed())

	// A table of the version that marked each task pushed: its unmarked tasks are pushed.
	_, err = e.ctrl.Exec(ctx, `DROP TABLE `+profile.UnpushedTable+`;
		ALTER TABLE `+profile.RequeuedTable+` ADD COLUMN pushed_at timestamptz;
		UPDATE `+profile.RequeuedTable+` SET pushed_at = now();
		WITH b AS (SELECT id FROM tasks_task WHERE status = 'running' ORDER BY id LIMIT 50)
		INSERT INTO `+profile.RequeuedTable+` (recovery_id, task_id) SELECT 'crash', id FROM b;
		UPDATE tasks_task SET status = 'pending', container_id = NULL
		WHERE id IN (SELECT task_id FROM `+profile.RequeuedTable+` WHERE pushed_at IS NULL)`)
	require.NoError(t, err)
	for {
		res, err = requeue(e.rdb)
		require.NoError(t, err)
		if res.Done {
			break
		}
	}
	ids := queued()
	require.Len(t, ids, 1000)
	require.Len(t, slices.Compact(slices.Sorted(slices.Values(ids))), 1000, "each task queued once")
	require.Zero(t, unpushed())
	require.Zero(t, count(e.disp, `SELECT count(*) FROM dispatch_assignments WHERE released_at IS NULL`))
	require.EqualValues(t, 1000, count(e.ctrl, `SELECT count(*) FROM `+profile.RequeuedTable))
}

// cpuSample is a reading of the CPU time used so far by this process and all its
// descendants — the servers the stack started, and their children that have exited and
// been waited for (PostgreSQL's backends) — and of the host's steal time: wall times on
// a shared host vary with its neighbours, CPU times much less. Linux only; elsewhere the
// figures stay 0.
type cpuSample struct {
	tree         time.Duration
	steal, total int64 // host jiffies
}

func sampleCPU() cpuSample {
	var s cpuSample
	// The times in /proc are in USER_HZ, 100 a second on every Linux.
	const tick = 10 * time.Millisecond
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		if f := strings.Fields(line); len(f) > 8 && f[0] == "cpu" {
			for i, v := range f[1:] {
				n, _ := strconv.ParseInt(v, 10, 64)
				s.total += n
				if i == 7 {
					s.steal = n
				}
			}
		}
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return s
	}
	type proc struct {
		ppid  int
		ticks int64
	}
	procs := map[int]proc{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// After the command name: state, ppid, …, utime (14), stime, cutime, cstime (17).
		i := strings.LastIndex(string(b), ") ")
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+2:]))
		if len(f) < 15 {
			continue
		}
		p := proc{}
		p.ppid, _ = strconv.Atoi(f[1])
		for _, v := range f[11:15] {
			n, _ := strconv.ParseInt(v, 10, 64)
			p.ticks += n
		}
		procs[pid] = p
	}
	self := os.Getpid()
	for pid, p := range procs {
		for q := pid; ; q = procs[q].ppid {
			if q == self {
				s.tree += time.Duration(p.ticks) * tick
				break
			}
			if _, ok := procs[q]; !ok || q <= 1 {
				break
			}
		}
	}
	return s
}

// since returns the CPU time used since s and the host's steal share of that interval.
func (s cpuSample) since() (time.Duration, float64) {
	now := sampleCPU()
	steal := 0.0
	if d := now.total - s.total; d > 0 {
		steal = float64(now.steal-s.steal) / float64(d)
	}
	return now.tree - s.tree, steal
}

// TestRequeueLostBatchesUntilDone: one call with time to spare re-queues every lost task,
// batch after batch on the same connections, reporting its totals after each batch, and
// the queue holds them in dispatch order; a call without time does one batch.
func TestRequeueLostBatchesUntilDone(t *testing.T) {
	ctx := context.Background()
	e := newRedispatchStack(t, nil)
	e.load(ctx, t, 1000, 10)
	db := activities.PostgresDB(e.cfg.Postgres)
	in := profile.RequeueInput{RecoveryID: "loop", Rule: profile.LostRule{HeartbeatBefore: time.Now().Add(-time.Minute)}, Batch: 300}

	res, err := profile.Kohakku{}.RequeueLost(ctx, db, e.rdb, in)
	require.NoError(t, err)
	require.Equal(t, profile.RequeueResult{Requeued: 300, Batches: 1}, res, "no time to spare: one batch")

	var progress []int64
	in.Until = time.Now().Add(time.Minute)
	in.Progress = func(r profile.RequeueResult) { progress = append(progress, r.Requeued) }
	res, err = profile.Kohakku{}.RequeueLost(ctx, db, e.rdb, in)
	require.NoError(t, err)
	require.Equal(t, profile.RequeueResult{Requeued: 700, Batches: 3, Done: true}, res)
	require.Equal(t, []int64{300, 600}, progress, "totals after each batch but the last")

	queued, err := e.rdb.LRange(ctx, schemas.PendingQueueKey, 0, -1).Result()
	require.NoError(t, err)
	rows, err := e.ctrl.Query(ctx, `SELECT id::text FROM `+schemas.TasksTable+` ORDER BY `+schemas.DispatchOrderSQL)
	require.NoError(t, err)
	want, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Equal(t, want, queued, "every task queued once, in dispatch order")
	var unpushed int64
	require.NoError(t, e.ctrl.QueryRow(ctx, `SELECT count(*) FROM `+profile.UnpushedTable).Scan(&unpushed))
	require.Zero(t, unpushed)
}
