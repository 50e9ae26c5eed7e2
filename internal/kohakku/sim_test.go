package kohakku_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kohakku/drflow/internal/kohakku"
	"github.com/kohakku/drflow/internal/stack/stacktest"
	"github.com/kohakku/drflow/schemas"
)

// simTask is the part of a tasks_task row the simulator changes.
type simTask struct {
	Status     string
	Container  string // "" is NULL
	Attempt    int32
	Progress   int32
	Started    bool // started_at is set
	FinishedAt *time.Time
}

func readTasks(t *testing.T, ctx context.Context, tgt kohakku.Target, where string, args ...any) map[int64]simTask {
	t.Helper()
	rows, err := tgt.Controller.Query(ctx, `SELECT id, status, COALESCE(container_id, ''), attempt, progress,
		started_at IS NOT NULL, finished_at FROM `+schemas.TasksTable+` WHERE `+where, args...)
	require.NoError(t, err)
	out := map[int64]simTask{}
	var id int64
	var r simTask
	_, err = pgx.ForEachRow(rows, []any{&id, &r.Status, &r.Container, &r.Attempt, &r.Progress, &r.Started, &r.FinishedAt}, func() error {
		out[id] = r
		return nil
	})
	require.NoError(t, err)
	return out
}

func idsOf(m map[int64]simTask) []int64 {
	out := make([]int64, 0, len(m))
	for id := range m {
		out = append(out, id)
	}
	return out
}

// waitFor polls cond until it holds, failing the test after timeout with
// cond's last explanation.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within %s: %s", what, timeout, why)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// terminalCount counts the tasks of ids that are completed or failed.
func terminalCount(ctx context.Context, tgt kohakku.Target, ids []int64) (int, error) {
	var n int
	err := tgt.Controller.QueryRow(ctx, `SELECT count(*) FROM `+schemas.TasksTable+
		` WHERE id = ANY($1) AND status IN ($2, $3)`, ids, schemas.StatusCompleted, schemas.StatusFailed).Scan(&n)
	return n, err
}

func waitDrained(t *testing.T, ctx context.Context, tgt kohakku.Target, sim *kohakku.Sim, ids []int64, timeout time.Duration) {
	t.Helper()
	waitFor(t, timeout, "tasks terminal", func() (bool, string) {
		n, err := terminalCount(ctx, tgt, ids)
		st := sim.Stats()
		// The sim's bookkeeping of a run ends after PostgreSQL's.
		settled := st.Running == 0
		return err == nil && n == len(ids) && settled, fmt.Sprintf("%d of %d terminal (err %v); sim: %d dispatched, %d completed, %d failed, errors %q",
			n, len(ids), err, st.Dispatched, st.Completed, st.Failed, st.Errors)
	})
}

// checkFinished asserts what a drained run leaves for ids: terminal rows run
// by a container of gen (one attempt more than before), no task hash, an
// empty queue, each task run once by sim, every assignment released.
func checkFinished(t *testing.T, ctx context.Context, tgt kohakku.Target, sim *kohakku.Sim, gen string, before map[int64]simTask) {
	t.Helper()
	ids := idsOf(before)
	after := readTasks(t, ctx, tgt, "id = ANY($1)", ids)
	st := sim.Stats()
	for id, b := range before {
		a := after[id]
		assert.Contains(t, []string{schemas.StatusCompleted, schemas.StatusFailed}, a.Status, "task %d", id)
		assert.Equal(t, b.Attempt+1, a.Attempt, "task %d attempt", id)
		assert.True(t, strings.HasPrefix(a.Container, gen), "task %d container %q", id, a.Container)
		assert.True(t, a.Started, "task %d started_at", id)
		assert.NotNil(t, a.FinishedAt, "task %d finished_at", id)
		if a.Status == schemas.StatusCompleted {
			assert.EqualValues(t, 100, a.Progress, "task %d progress", id)
		}
		assert.Equal(t, 1, st.Runs[id], "task %d runs", id)
		n, err := tgt.Redis.Exists(ctx, schemas.TaskKey(id)).Result()
		require.NoError(t, err)
		assert.Zero(t, n, "task %d: hash left for a terminal task", id)
	}
	n, err := tgt.Redis.LLen(ctx, schemas.PendingQueueKey).Result()
	require.NoError(t, err)
	assert.Zero(t, n, "pending queue length")

	// One released assignment per run, for the new attempt and container.
	var open, ours int
	err = tgt.Dispatcher.QueryRow(ctx, `SELECT count(*) FILTER (WHERE released_at IS NULL),
		count(*) FILTER (WHERE container_id LIKE $2 || '%' AND released_at IS NOT NULL)
		FROM `+schemas.DispatchAssignmentsTable+` WHERE task_id = ANY($1)`, ids, gen).Scan(&open, &ours)
	require.NoError(t, err)
	assert.Zero(t, open, "open assignments")
	assert.Equal(t, len(ids), ours, "released assignments of %s containers", gen)
}

// liveState returns, for containers, their agent_containers status and
// whether they are in the live set.
func liveState(ctx context.Context, tgt kohakku.Target, containers []string) (map[string]string, map[string]bool, error) {
	rows, err := tgt.Dispatcher.Query(ctx, `SELECT container_id, status FROM `+schemas.AgentContainersTable+
		` WHERE container_id = ANY($1)`, containers)
	if err != nil {
		return nil, nil, err
	}
	status := map[string]string{}
	var id, s string
	if _, err := pgx.ForEachRow(rows, []any{&id, &s}, func() error { status[id] = s; return nil }); err != nil {
		return nil, nil, err
	}
	inSet := map[string]bool{}
	for _, c := range containers {
		_, err := tgt.Redis.ZScore(ctx, schemas.LiveContainersKey, c).Result()
		inSet[c] = err == nil
	}
	return status, inSet, nil
}

// addPending creates n more pending tasks the way the controller does at run
// time: a row, then the task hash and the id at the tail of the queue. They
// have no brief, which the simulator does not read.
func addPending(t *testing.T, ctx context.Context, tgt kohakku.Target, n int) {
	t.Helper()
	rows, err := tgt.Controller.Query(ctx, `INSERT INTO `+schemas.TasksTable+` (title, brief_key)
		SELECT 'sim test task ' || g, '' FROM generate_series(1, $1) g RETURNING id`, n)
	require.NoError(t, err)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(t, err)
	pipe := tgt.Redis.Pipeline()
	for _, id := range ids {
		_, err := tgt.Controller.Exec(ctx, `UPDATE `+schemas.TasksTable+` SET brief_key = $2 WHERE id = $1`, id, schemas.BriefKey(id))
		require.NoError(t, err)
		pipe.HSet(ctx, schemas.TaskKey(id), schemas.TaskFieldStatus, schemas.StatusPending, schemas.TaskFieldContainer, "",
			schemas.TaskFieldAttempt, "0", schemas.TaskFieldProgress, "0",
			schemas.TaskFieldUpdatedAt, strconv.FormatInt(time.Now().UnixMilli(), 10))
		pipe.RPush(ctx, schemas.PendingQueueKey, strconv.FormatInt(id, 10))
	}
	_, err = pipe.Exec(ctx)
	require.NoError(t, err)
}

func TestSim(t *testing.T) {
	st := stacktest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	seed := func(t *testing.T, suffix string, redisDB, tasks int) kohakku.Target {
		t.Helper()
		began := time.Now()
		tgt := newTarget(t, st, suffix, redisDB)
		_, err := kohakku.Seed(ctx, tgt, kohakku.SeedOptions{Tasks: tasks, Skills: 2, BriefSize: 128, Seed: int64(redisDB) + 1})
		require.NoError(t, err)
		t.Logf("seeded %d tasks in %s", tasks, time.Since(began).Round(time.Millisecond))
		return tgt
	}

	t.Run("DrainsQueue", func(t *testing.T) {
		tgt := seed(t, "-drain", 0, 200)
		addPending(t, ctx, tgt, 170)
		pending := readTasks(t, ctx, tgt, "status = $1", schemas.StatusPending)
		require.Len(t, pending, 200)
		inFlight := readTasks(t, ctx, tgt, "status IN ($1, $2)", schemas.StatusDispatched, schemas.StatusRunning)
		require.NotEmpty(t, inFlight)
		var seededLive []string
		rows, err := tgt.Dispatcher.Query(ctx, `SELECT container_id FROM `+schemas.AgentContainersTable+` WHERE status = $1`, schemas.ContainerLive)
		require.NoError(t, err)
		seededLive, err = pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		require.NotEmpty(t, seededLive)

		began := time.Now()
		sim, err := kohakku.StartSim(ctx, tgt, kohakku.SimOptions{
			Agents: 8, TaskDuration: 40 * time.Millisecond, Jitter: 20 * time.Millisecond, FailRate: 0.2,
			HeartbeatEvery: 100 * time.Millisecond, AgentTimeout: 1500 * time.Millisecond, PollEvery: 100 * time.Millisecond,
			Generation: "drain-", Seed: 1,
		})
		require.NoError(t, err)
		defer sim.Stop()
		waitDrained(t, ctx, tgt, sim, idsOf(pending), 20*time.Second)
		elapsed := time.Since(began)
		stats := sim.Stats()
		t.Logf("drained %d tasks with 8 agents in %s: %.0f tasks/s; %d completed, %d failed",
			len(pending), elapsed.Round(time.Millisecond), float64(len(pending))/elapsed.Seconds(), stats.Completed, stats.Failed)

		checkFinished(t, ctx, tgt, sim, "drain-", pending)
		assert.Len(t, stats.Runs, len(pending), "only the queued tasks ran")
		assert.EqualValues(t, len(pending), stats.Dispatched)
		assert.EqualValues(t, len(pending), stats.Started)
		assert.EqualValues(t, len(pending), stats.Completed+stats.Failed)
		assert.Zero(t, stats.Abandoned+stats.Dropped+stats.StaleAssignments)
		assert.Zero(t, stats.ErrorCount, "errors: %v", stats.Errors)
		failed := float64(stats.Failed) / float64(len(pending))
		assert.InDelta(t, 0.2, failed, 0.12, "fail fraction")
		var pgFailed int
		require.NoError(t, tgt.Controller.QueryRow(ctx, `SELECT count(*) FROM `+schemas.TasksTable+
			` WHERE id = ANY($1) AND status = $2`, idsOf(pending), schemas.StatusFailed).Scan(&pgFailed))
		assert.EqualValues(t, stats.Failed, pgFailed)

		// The seeded in-flight tasks were not the simulator's: untouched.
		assert.Equal(t, inFlight, readTasks(t, ctx, tgt, "id = ANY($1)", idsOf(inFlight)))

		// The sim's containers are live; the seeded ones, which never
		// heartbeat again, time out.
		containers := sim.Containers()
		require.Len(t, containers, 8)
		status, inSet, err := liveState(ctx, tgt, containers)
		require.NoError(t, err)
		for _, c := range containers {
			assert.Equal(t, schemas.ContainerLive, status[c], c)
			assert.True(t, inSet[c], "%s in live set", c)
		}
		waitFor(t, 5*time.Second, "seeded containers timed out", func() (bool, string) {
			status, inSet, err := liveState(ctx, tgt, seededLive)
			if err != nil {
				return false, err.Error()
			}
			for _, c := range seededLive {
				if status[c] != schemas.ContainerDead || inSet[c] {
					return false, fmt.Sprintf("%s: %s, in live set %v", c, status[c], inSet[c])
				}
			}
			return true, ""
		})
		assert.EqualValues(t, len(seededLive), sim.Stats().ContainersDead)
		assert.Equal(t, inFlight, readTasks(t, ctx, tgt, "id = ANY($1)", idsOf(inFlight)), "the monitor touched tasks")

		// A clean stop says its containers are gone.
		require.NoError(t, sim.Stop())
		status, inSet, err = liveState(ctx, tgt, containers)
		require.NoError(t, err)
		for _, c := range containers {
			assert.Equal(t, schemas.ContainerDead, status[c], c)
			assert.False(t, inSet[c], "%s in live set", c)
		}
	})

	// The drill's sequence: agents die mid-task, the monitor times their
	// containers out and leaves the tasks alone, the tasks are re-queued the
	// way RedispatchLostTasks does it, and a new generation runs each once.
	t.Run("KillAgentsThenRequeue", func(t *testing.T) {
		tgt := seed(t, "-kill", 1, 200)
		pending := readTasks(t, ctx, tgt, "status = $1", schemas.StatusPending)
		gen1, err := kohakku.StartSim(ctx, tgt, kohakku.SimOptions{
			Agents: 4, TaskDuration: time.Minute,
			HeartbeatEvery: 100 * time.Millisecond, AgentTimeout: time.Second, PollEvery: 100 * time.Millisecond,
			Generation: "gen1-",
		})
		require.NoError(t, err)
		defer gen1.Stop()
		// Running in PostgreSQL and in the task hash: the agents are past
		// every write of a task's start.
		waitFor(t, 10*time.Second, "4 tasks running", func() (bool, string) {
			rows := readTasks(t, ctx, tgt, "container_id LIKE 'gen1-%' AND status = $1", schemas.StatusRunning)
			n := 0
			for id := range rows {
				if s, _ := tgt.Redis.HGet(ctx, schemas.TaskKey(id), schemas.TaskFieldStatus).Result(); s == schemas.StatusRunning {
					n++
				}
			}
			return n == 4, fmt.Sprint(n, " running; stats errors ", gen1.Stats().Errors)
		})
		containers := gen1.Containers()
		gen1.KillAgents()
		killedAt := time.Now()

		lost := readTasks(t, ctx, tgt, "container_id LIKE 'gen1-%'")
		require.Len(t, lost, 4)
		for id, r := range lost {
			assert.Equal(t, schemas.StatusRunning, r.Status, "task %d", id)
			assert.Contains(t, containers, r.Container, "task %d", id)
		}
		waitFor(t, 5*time.Second, "killed containers timed out", func() (bool, string) {
			status, inSet, err := liveState(ctx, tgt, containers)
			if err != nil {
				return false, err.Error()
			}
			for _, c := range containers {
				if status[c] != schemas.ContainerDead || inSet[c] {
					return false, fmt.Sprintf("%s: %s, in live set %v", c, status[c], inSet[c])
				}
			}
			return true, ""
		})
		assert.GreaterOrEqual(t, time.Since(killedAt), 900*time.Millisecond, "timed out before AgentTimeout")

		// Their tasks stay exactly as they were: re-queueing is drflow's.
		assert.Equal(t, lost, readTasks(t, ctx, tgt, "id = ANY($1)", idsOf(lost)))
		for id, r := range lost {
			h, err := tgt.Redis.HGetAll(ctx, schemas.TaskKey(id)).Result()
			require.NoError(t, err)
			assert.Equal(t, schemas.StatusRunning, h[schemas.TaskFieldStatus], "task %d hash", id)
			assert.Equal(t, r.Container, h[schemas.TaskFieldContainer], "task %d hash", id)
		}
		var open int
		require.NoError(t, tgt.Dispatcher.QueryRow(ctx, `SELECT count(*) FROM `+schemas.DispatchAssignmentsTable+
			` WHERE task_id = ANY($1) AND released_at IS NULL`, idsOf(lost)).Scan(&open))
		assert.Equal(t, 4, open, "open assignments of the killed agents' tasks")
		queued, err := tgt.Redis.LLen(ctx, schemas.PendingQueueKey).Result()
		require.NoError(t, err)
		assert.EqualValues(t, len(pending)-4, queued, "the dispatcher popped with no agent left")
		stats := gen1.Stats()
		assert.EqualValues(t, 4, stats.Dispatched)
		assert.Zero(t, stats.Completed+stats.Failed)

		// Re-queue by hand, as RedispatchLostTasks does: PostgreSQL first,
		// then the hash and the queue. The first id is pushed twice (a retried
		// re-queue) and a completed task's id once (a stale entry).
		done := readTasks(t, ctx, tgt, "id = (SELECT min(id) FROM "+schemas.TasksTable+" WHERE status = $1)", schemas.StatusCompleted)
		require.Len(t, done, 1)
		lostIDs := idsOf(lost)
		_, err = tgt.Controller.Exec(ctx, `UPDATE `+schemas.TasksTable+` SET status = $2, container_id = NULL,
			updated_at = now() WHERE id = ANY($1)`, lostIDs, schemas.StatusPending)
		require.NoError(t, err)
		_, err = tgt.Dispatcher.Exec(ctx, `UPDATE `+schemas.DispatchAssignmentsTable+` SET released_at = now()
			WHERE task_id = ANY($1) AND released_at IS NULL`, lostIDs)
		require.NoError(t, err)
		push := []any{}
		for _, id := range lostIDs {
			require.NoError(t, tgt.Redis.HSet(ctx, schemas.TaskKey(id),
				schemas.TaskFieldStatus, schemas.StatusPending, schemas.TaskFieldContainer, "",
				schemas.TaskFieldAttempt, strconv.Itoa(int(lost[id].Attempt)), schemas.TaskFieldProgress, "0",
				schemas.TaskFieldUpdatedAt, strconv.FormatInt(time.Now().UnixMilli(), 10)).Err())
			push = append(push, strconv.FormatInt(id, 10))
		}
		push = append(push, push[0], strconv.FormatInt(idsOf(done)[0], 10))
		require.NoError(t, tgt.Redis.RPush(ctx, schemas.PendingQueueKey, push...).Err())

		// gen1's dispatcher and monitor are still running, as after a real
		// crash of the agents alone.
		gen2, err := kohakku.StartSim(ctx, tgt, kohakku.SimOptions{
			Agents: 4, TaskDuration: 20 * time.Millisecond, PollEvery: 100 * time.Millisecond, Generation: "gen2-",
		})
		require.NoError(t, err)
		defer gen2.Stop()
		all := map[int64]simTask{}
		for id, r := range pending {
			all[id] = r
		}
		for id, r := range lost {
			all[id] = r // attempt as gen1 left it
		}
		waitDrained(t, ctx, tgt, gen2, idsOf(all), 15*time.Second)
		checkFinished(t, ctx, tgt, gen2, "gen2-", all)
		stats = gen2.Stats()
		for _, id := range lostIDs {
			assert.Equal(t, 1, stats.Runs[id], "re-queued task %d: runs by gen2", id)
			assert.Equal(t, 1, gen1.Stats().Runs[id], "re-queued task %d: runs by gen1", id)
		}
		assert.Len(t, stats.Runs, len(pending))
		assert.EqualValues(t, 2, stats.Dropped, "duplicate and stale queue entries dropped")
		assert.Zero(t, stats.StaleAssignments)
		assert.Equal(t, done, readTasks(t, ctx, tgt, "id = ANY($1)", idsOf(done)), "a completed task was dispatched")
		assert.Zero(t, stats.ErrorCount, "errors: %v", stats.Errors)
		assert.EqualValues(t, 4, gen1.Stats().Dispatched, "gen1 dispatched without agents")
		require.NoError(t, gen2.Stop())
		require.NoError(t, gen1.Stop())
	})

	// Fencing keeps a task from being finished by an agent that no longer
	// holds it: when the task moved on to another attempt, or the agent's
	// container was declared dead.
	t.Run("FencedAgentGivesUp", func(t *testing.T) {
		tgt := newTarget(t, st, "-fence", 4)
		require.NoError(t, kohakku.ApplySchemas(ctx, tgt))
		addPending(t, ctx, tgt, 2)
		sim, err := kohakku.StartSim(ctx, tgt, kohakku.SimOptions{
			Agents: 2, TaskDuration: 1500 * time.Millisecond,
			HeartbeatEvery: 100 * time.Millisecond, AgentTimeout: time.Minute, PollEvery: 100 * time.Millisecond,
			Generation: "fence-",
		})
		require.NoError(t, err)
		defer sim.Stop()
		var running map[int64]simTask
		waitFor(t, 5*time.Second, "2 tasks running", func() (bool, string) {
			running = readTasks(t, ctx, tgt, "status = $1", schemas.StatusRunning)
			return len(running) == 2, fmt.Sprint(len(running), " running; errors ", sim.Stats().Errors)
		})
		runsEnd := time.Now().Add(1500 * time.Millisecond) // the latest the runs would have finished
		ids := idsOf(running)
		moved, orphaned := ids[0], ids[1]

		// moved: re-dispatched elsewhere behind the agent's back.
		other := "elsewhere-1"
		_, err = tgt.Controller.Exec(ctx, `UPDATE `+schemas.TasksTable+` SET container_id = $2, attempt = attempt + 1 WHERE id = $1`, moved, other)
		require.NoError(t, err)
		nextAttempt := strconv.Itoa(int(running[moved].Attempt + 1))
		require.NoError(t, tgt.Redis.HSet(ctx, schemas.TaskKey(moved), schemas.TaskFieldContainer, other,
			schemas.TaskFieldAttempt, nextAttempt).Err())
		// orphaned: its container declared dead.
		_, err = tgt.Dispatcher.Exec(ctx, `UPDATE `+schemas.AgentContainersTable+` SET status = $2 WHERE container_id = $1`,
			running[orphaned].Container, schemas.ContainerDead)
		require.NoError(t, err)

		waitFor(t, 5*time.Second, "both runs given up", func() (bool, string) {
			st := sim.Stats()
			return st.Abandoned == 1 && st.Registered == 3, fmt.Sprintf("abandoned %d, registered %d", st.Abandoned, st.Registered)
		})
		// Past the runs' end: neither task was finished.
		time.Sleep(time.Until(runsEnd) + 300*time.Millisecond)
		after := readTasks(t, ctx, tgt, "id = ANY($1)", ids)
		for _, id := range ids {
			assert.Equal(t, schemas.StatusRunning, after[id].Status, "task %d", id)
			assert.Nil(t, after[id].FinishedAt, "task %d", id)
			assert.Less(t, after[id].Progress, int32(100), "task %d", id)
		}
		assert.Equal(t, other, after[moved].Container)
		assert.Equal(t, running[orphaned].Container, after[orphaned].Container)
		assert.Equal(t, running[orphaned].Attempt, after[orphaned].Attempt)
		h, err := tgt.Redis.HGetAll(ctx, schemas.TaskKey(moved)).Result()
		require.NoError(t, err)
		assert.Equal(t, other, h[schemas.TaskFieldContainer], "the fenced agent wrote the hash")
		assert.Equal(t, nextAttempt, h[schemas.TaskFieldAttempt], "the fenced agent wrote the hash")
		stats := sim.Stats()
		assert.Zero(t, stats.Completed+stats.Failed)
		// The restarted agent took a new container id; the dead one stays out
		// of the live set.
		restarted := strings.TrimPrefix(running[orphaned].Container, "fence-")
		assert.Contains(t, sim.Containers(), "fence-"+restarted+".1")
		_, err = tgt.Redis.ZScore(ctx, schemas.LiveContainersKey, running[orphaned].Container).Result()
		assert.ErrorIs(t, err, redis.Nil, "dead container in the live set")
		require.NoError(t, sim.Stop())
	})

	t.Run("Outage", func(t *testing.T) {
		tgt := seed(t, "-outage", 3, 200)
		addPending(t, ctx, tgt, 120)
		pending := readTasks(t, ctx, tgt, "status = $1", schemas.StatusPending)
		sim, err := kohakku.StartSim(ctx, tgt, kohakku.SimOptions{
			Agents: 4, TaskDuration: 40 * time.Millisecond, FailRate: 0.1,
			HeartbeatEvery: 100 * time.Millisecond, PollEvery: 100 * time.Millisecond, Generation: "out-",
		})
		require.NoError(t, err)
		defer sim.Stop()
		began := time.Now()
		progressAfter := func(what string, n int64) {
			waitFor(t, 10*time.Second, what, func() (bool, string) {
				st := sim.Stats()
				return st.Completed+st.Failed >= n, fmt.Sprint(st.Completed+st.Failed, " finished ", st.Errors)
			})
			t.Logf("%s: %s", what, time.Since(began).Round(time.Millisecond))
		}

		// go-redis retries a command for about 2s (4 tries of 5 dials) before
		// it returns an error, so a shorter outage is not seen at all.
		progressAfter("work before the Redis outage", 20)
		require.NoError(t, st.Redis.Stop(ctx))
		time.Sleep(2500 * time.Millisecond)
		require.NoError(t, st.Redis.Start(ctx))
		redisErrors := sim.Stats().ErrorCount
		assert.NotZero(t, redisErrors, "no error seen while Redis was down")
		s := sim.Stats()
		progressAfter("work after the Redis outage", s.Completed+s.Failed+20)

		// Killed, PostgreSQL is down until its crash recovery is done.
		require.NoError(t, st.Postgres.Kill())
		require.NoError(t, st.Postgres.Start(ctx))
		assert.Greater(t, sim.Stats().ErrorCount, redisErrors, "no error seen while PostgreSQL was down")
		t.Logf("postgres back: %s", time.Since(began).Round(time.Millisecond))

		waitDrained(t, ctx, tgt, sim, idsOf(pending), 20*time.Second)
		t.Logf("drained: %s", time.Since(began).Round(time.Millisecond))
		checkFinished(t, ctx, tgt, sim, "out-", pending)
		stats := sim.Stats()
		assert.NotEmpty(t, stats.Errors)
		assert.Zero(t, stats.Abandoned, "no run was given up")
		t.Logf("%d errors, the last: %s", stats.ErrorCount, stats.Errors[len(stats.Errors)-1])
		require.NoError(t, sim.Stop())
	})
}
