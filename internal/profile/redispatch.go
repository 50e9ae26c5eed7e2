package profile

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/kohakku/drflow/schemas"
)

// RequeuedTable records, in kohakku-controller, which tasks each recovery re-queued and
// whether the queue push is done: the durable per-task state of RedispatchLostTasks,
// which the workflow itself never holds. It lives in drflow's own schema.
const RequeuedTable = "drflow.requeued"

const requeuedDDL = `CREATE SCHEMA IF NOT EXISTS drflow;
CREATE TABLE IF NOT EXISTS drflow.requeued (
    recovery_id text        NOT NULL,
    task_id     bigint      NOT NULL,
    requeued_at timestamptz NOT NULL DEFAULT now(),
    pushed_at   timestamptz NULL,
    PRIMARY KEY (recovery_id, task_id)
)`

func ensureRequeued(ctx context.Context, conn *pgx.Conn) error {
	if _, err := conn.Exec(ctx, requeuedDDL); err != nil {
		return fmt.Errorf("create %s in %s: %w", RequeuedTable, schemas.ControllerDB, err)
	}
	return nil
}

// healthyAgents lists the live agents that rule does not call gone.
func healthyAgents(ctx context.Context, disp *pgx.Conn, rule LostRule) ([]string, error) {
	rows, err := disp.Query(ctx, `SELECT container_id FROM `+schemas.AgentContainersTable+
		` WHERE status = $1 AND last_heartbeat_at >= $2 AND generation > $3`,
		schemas.ContainerLive, rule.HeartbeatBefore, rule.GenerationUpTo)
	if err != nil {
		return nil, readErr(schemas.DispatcherDB, schemas.AgentContainersTable, err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, readErr(schemas.DispatcherDB, schemas.AgentContainersTable, err)
	}
	return ids, nil
}

// requeuedTask is a re-queued task as its Redis hash and the queue need it.
type requeuedTask struct {
	id        int64
	attempt   int32
	progress  int32
	priority  int32
	createdAt time.Time
	updatedAt time.Time
}

// requeueSQL re-queues one batch in one statement: the lost tasks (in flight, held by no
// healthy agent, not re-queued by this recovery before), recorded in drflow.requeued and
// set back to pending without a container. Ordered by dispatch order.
var requeueSQL = `WITH lost AS (
    SELECT id FROM ` + schemas.TasksTable + `
    WHERE status IN ('` + schemas.StatusDispatched + `', '` + schemas.StatusRunning + `')
      AND (container_id IS NULL OR NOT (container_id = ANY($2)))
      AND NOT EXISTS (SELECT 1 FROM drflow.requeued r WHERE r.recovery_id = $1 AND r.task_id = ` + schemas.TasksTable + `.id)
    ORDER BY ` + schemas.DispatchOrderSQL + `
    LIMIT $3
    FOR UPDATE SKIP LOCKED
), marked AS (
    INSERT INTO drflow.requeued (recovery_id, task_id) SELECT $1, id FROM lost
    ON CONFLICT DO NOTHING RETURNING task_id
)
UPDATE ` + schemas.TasksTable + ` t
SET status = '` + schemas.StatusPending + `', container_id = NULL, updated_at = now()
FROM marked WHERE t.id = marked.task_id
RETURNING t.id, t.attempt, t.progress, t.priority, t.created_at, t.updated_at`

// RequeueLost re-queues one batch of lost tasks. First it finishes the queue pushes an
// interrupted earlier call left (tasks recorded but not pushed, still pending, not in the
// queue already); then one statement in kohakku-controller re-queues up to Batch tasks,
// their open assignments are released in kohakku-dispatcher, and one MULTI/EXEC writes
// their state hashes and appends them to the queue in dispatch order; then the tasks are
// marked pushed.
func (k Kohakku) RequeueLost(ctx context.Context, db DB, rdb redis.UniversalClient, in RequeueInput) (RequeueResult, error) {
	var res RequeueResult
	if in.RecoveryID == "" {
		return res, fmt.Errorf("requeue: empty recovery id")
	}
	batch := in.Batch
	if batch <= 0 {
		batch = k.batch()
	}
	ctrl, err := db.Connect(ctx, schemas.ControllerDB)
	if err != nil {
		return res, err
	}
	defer closeConn(ctrl)
	disp, err := db.Connect(ctx, schemas.DispatcherDB)
	if err != nil {
		return res, err
	}
	defer closeConn(disp)
	if err := ensureRequeued(ctx, ctrl); err != nil {
		return res, err
	}

	// 1. Pushes an earlier call did not finish.
	for {
		rows, err := ctrl.Query(ctx, `SELECT t.id, t.attempt, t.progress, t.priority, t.created_at, t.updated_at, t.status
			FROM drflow.requeued r JOIN `+schemas.TasksTable+` t ON t.id = r.task_id
			WHERE r.recovery_id = $1 AND r.pushed_at IS NULL ORDER BY t.id LIMIT $2`, in.RecoveryID, batch)
		if err != nil {
			return res, readErr(schemas.ControllerDB, RequeuedTable, err)
		}
		var todo, all []requeuedTask
		for rows.Next() {
			var t requeuedTask
			var status string
			if err := rows.Scan(&t.id, &t.attempt, &t.progress, &t.priority, &t.createdAt, &t.updatedAt, &status); err != nil {
				rows.Close()
				return res, readErr(schemas.ControllerDB, RequeuedTable, err)
			}
			all = append(all, t)
			if status == schemas.StatusPending {
				todo = append(todo, t)
			}
		}
		if err := rows.Err(); err != nil {
			return res, readErr(schemas.ControllerDB, RequeuedTable, err)
		}
		if len(all) == 0 {
			break
		}
		// A task already in the queue (the push happened, the mark did not) is not pushed again.
		queued, err := inQueue(ctx, rdb, todo)
		if err != nil {
			return res, err
		}
		todo = slices.DeleteFunc(todo, func(t requeuedTask) bool { return queued[t.id] })
		if err := pushRequeued(ctx, rdb, todo); err != nil {
			return res, err
		}
		if err := markPushed(ctx, ctrl, in.RecoveryID, all); err != nil {
			return res, err
		}
		res.Repushed += int64(len(todo))
	}

	// 2. A new batch.
	healthy, err := healthyAgents(ctx, disp, in.Rule)
	if err != nil {
		return res, err
	}
	rows, err := ctrl.Query(ctx, requeueSQL, in.RecoveryID, healthy, batch)
	if err != nil {
		return res, fmt.Errorf("requeue lost tasks in %s: %w", schemas.ControllerDB, err)
	}
	tasks, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (requeuedTask, error) {
		var t requeuedTask
		err := r.Scan(&t.id, &t.attempt, &t.progress, &t.priority, &t.createdAt, &t.updatedAt)
		return t, err
	})
	if err != nil {
		return res, fmt.Errorf("requeue lost tasks in %s: %w", schemas.ControllerDB, err)
	}
	res.Done = len(tasks) < batch
	if len(tasks) == 0 {
		return res, nil
	}
	slices.SortFunc(tasks, func(a, b requeuedTask) int {
		switch {
		case a.priority != b.priority:
			return int(b.priority - a.priority)
		case !a.createdAt.Equal(b.createdAt):
			return a.createdAt.Compare(b.createdAt)
		}
		return int(a.id - b.id)
	})
	ids := make([]int64, len(tasks))
	for i, t := range tasks {
		ids[i] = t.id
	}
	if _, err := disp.Exec(ctx, `UPDATE `+schemas.DispatchAssignmentsTable+` SET released_at = greatest(now(), assigned_at)
		WHERE task_id = ANY($1) AND released_at IS NULL`, ids); err != nil {
		return res, fmt.Errorf("release assignments in %s: %w", schemas.DispatcherDB, err)
	}
	if err := pushRequeued(ctx, rdb, tasks); err != nil {
		return res, err
	}
	if err := markPushed(ctx, ctrl, in.RecoveryID, tasks); err != nil {
		return res, err
	}
	res.Requeued = int64(len(tasks))
	return res, nil
}

// inQueue reports which of tasks are in the pending queue already.
func inQueue(ctx context.Context, rdb redis.UniversalClient, tasks []requeuedTask) (map[int64]bool, error) {
	out := map[int64]bool{}
	if len(tasks) == 0 {
		return out, nil
	}
	pipe := rdb.Pipeline()
	cmds := make([]*redis.IntCmd, len(tasks))
	for i, t := range tasks {
		cmds[i] = pipe.LPos(ctx, schemas.PendingQueueKey, strconv.FormatInt(t.id, 10), redis.LPosArgs{})
	}
	if _, err := pipe.Exec(ctx); err != nil && err != redis.Nil {
		return nil, fmt.Errorf("redis LPOS %s: %w", schemas.PendingQueueKey, err)
	}
	for i, c := range cmds {
		if c.Err() == nil {
			out[tasks[i].id] = true
		}
	}
	return out, nil
}

// pushRequeued writes the state hash of each task and appends the ids to the queue, in
// order, in one MULTI/EXEC.
func pushRequeued(ctx context.Context, rdb redis.UniversalClient, tasks []requeuedTask) error {
	if len(tasks) == 0 {
		return nil
	}
	pipe := rdb.TxPipeline()
	ids := make([]any, len(tasks))
	for i, t := range tasks {
		pipe.HSet(ctx, schemas.TaskKey(t.id),
			schemas.TaskFieldStatus, schemas.StatusPending,
			schemas.TaskFieldContainer, "",
			schemas.TaskFieldAttempt, strconv.Itoa(int(t.attempt)),
			schemas.TaskFieldProgress, strconv.Itoa(int(t.progress)),
			schemas.TaskFieldUpdatedAt, strconv.FormatInt(t.updatedAt.UnixMilli(), 10))
		ids[i] = strconv.FormatInt(t.id, 10)
	}
	pipe.RPush(ctx, schemas.PendingQueueKey, ids...)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("redis: queue %d re-queued tasks: %w", len(tasks), err)
	}
	return nil
}

func markPushed(ctx context.Context, ctrl *pgx.Conn, recoveryID string, tasks []requeuedTask) error {
	ids := make([]int64, len(tasks))
	for i, t := range tasks {
		ids[i] = t.id
	}
	if _, err := ctrl.Exec(ctx, `UPDATE drflow.requeued SET pushed_at = now() WHERE recovery_id = $1 AND task_id = ANY($2)`, recoveryID, ids); err != nil {
		return fmt.Errorf("mark re-queued tasks pushed in %s: %w", schemas.ControllerDB, err)
	}
	return nil
}

// TrackRequeued counts the recovery's tasks by status and pages through the outstanding ones.
func (k Kohakku) TrackRequeued(ctx context.Context, db DB, recoveryID string, after int64, limit int) (RequeueStatus, error) {
	st := RequeueStatus{ByStatus: map[string]int64{}}
	ctrl, err := db.Connect(ctx, schemas.ControllerDB)
	if err != nil {
		return st, err
	}
	defer closeConn(ctrl)
	if err := ensureRequeued(ctx, ctrl); err != nil {
		return st, err
	}
	rows, err := ctrl.Query(ctx, `SELECT t.status, count(*) FROM drflow.requeued r JOIN `+schemas.TasksTable+` t ON t.id = r.task_id
		WHERE r.recovery_id = $1 GROUP BY t.status`, recoveryID)
	if err != nil {
		return st, readErr(schemas.ControllerDB, RequeuedTable, err)
	}
	for rows.Next() {
		var status string
		var n int64
		if err := rows.Scan(&status, &n); err != nil {
			rows.Close()
			return st, readErr(schemas.ControllerDB, RequeuedTable, err)
		}
		st.ByStatus[status] = n
		st.Requeued += n
		if !schemas.IsTerminal(status) {
			st.Outstanding += n
		}
	}
	if err := rows.Err(); err != nil {
		return st, readErr(schemas.ControllerDB, RequeuedTable, err)
	}
	if limit > 0 && st.Outstanding > 0 {
		rows, err := ctrl.Query(ctx, `SELECT t.id FROM drflow.requeued r JOIN `+schemas.TasksTable+` t ON t.id = r.task_id
			WHERE r.recovery_id = $1 AND t.status IN ('`+schemas.StatusPending+`', '`+schemas.StatusDispatched+`', '`+schemas.StatusRunning+`')
			  AND t.id > $2 ORDER BY t.id LIMIT $3`, recoveryID, after, limit)
		if err != nil {
			return st, readErr(schemas.ControllerDB, RequeuedTable, err)
		}
		if st.OutstandingIDs, err = pgx.CollectRows(rows, pgx.RowTo[int64]); err != nil {
			return st, readErr(schemas.ControllerDB, RequeuedTable, err)
		}
	}
	return st, nil
}

// CleanupAgents marks the gone agents dead in kohakku-dispatcher and removes them from
// the live set.
func (k Kohakku) CleanupAgents(ctx context.Context, db DB, rdb redis.UniversalClient, rule LostRule) (CleanupResult, error) {
	var res CleanupResult
	disp, err := db.Connect(ctx, schemas.DispatcherDB)
	if err != nil {
		return res, err
	}
	defer closeConn(disp)
	rows, err := disp.Query(ctx, `UPDATE `+schemas.AgentContainersTable+` SET status = $1
		WHERE status = $2 AND (last_heartbeat_at < $3 OR generation <= $4) RETURNING container_id`,
		schemas.ContainerDead, schemas.ContainerLive, rule.HeartbeatBefore, rule.GenerationUpTo)
	if err != nil {
		return res, fmt.Errorf("mark gone agents dead in %s: %w", schemas.DispatcherDB, err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return res, fmt.Errorf("mark gone agents dead in %s: %w", schemas.DispatcherDB, err)
	}
	res.Dead = int64(len(ids))
	res.Examples = ids[:min(len(ids), 10)]
	for lo := 0; lo < len(ids); lo += k.batch() {
		chunk := ids[lo:min(lo+k.batch(), len(ids))]
		members := make([]any, len(chunk))
		for i, id := range chunk {
			members[i] = id
		}
		if err := rdb.ZRem(ctx, schemas.LiveContainersKey, members...).Err(); err != nil {
			return res, fmt.Errorf("redis ZREM %s: %w", schemas.LiveContainersKey, err)
		}
	}
	return res, nil
}

// LatestGeneration returns the highest agent generation in kohakku-dispatcher.
func (k Kohakku) LatestGeneration(ctx context.Context, db DB) (int64, error) {
	disp, err := db.Connect(ctx, schemas.DispatcherDB)
	if err != nil {
		return 0, err
	}
	defer closeConn(disp)
	var g int64
	if err := disp.QueryRow(ctx, `SELECT coalesce(max(generation), 0) FROM `+schemas.AgentContainersTable).Scan(&g); err != nil {
		return 0, readErr(schemas.DispatcherDB, schemas.AgentContainersTable, err)
	}
	return g, nil
}
