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

// RequeuedTable records, in kohakku-controller, which tasks each recovery re-queued: the
// durable per-task state of RedispatchLostTasks, which the workflow itself never holds.
// It lives in drflow's own schema.
const RequeuedTable = "drflow.requeued"

// UnpushedTable records the re-queued batches whose queue push is not confirmed: one row
// per batch (recovery, lowest task id, every task id), written by the statement that
// re-queues the batch and deleted once the batch is in Redis. A row left behind is a push
// that a crash interrupted, which the next call completes. Keeping this per batch rather
// than per task makes a batch's bookkeeping one row written and one deleted, and the check
// for interrupted pushes a read of a table that is almost always empty.
const UnpushedTable = "drflow.unpushed"

// requeueDDL creates drflow's tables in kohakku-controller, under an advisory lock so that
// two first calls do not race. Earlier versions marked each task of drflow.requeued
// pushed (pushed_at): the tasks such a version left unmarked become batches of
// drflow.unpushed, and the column goes.
const requeueDDL = `SELECT pg_advisory_xact_lock(hashtext('drflow.requeued'));
CREATE SCHEMA IF NOT EXISTS drflow;
CREATE TABLE IF NOT EXISTS drflow.requeued (
    recovery_id text        NOT NULL,
    task_id     bigint      NOT NULL,
    requeued_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (recovery_id, task_id)
);
CREATE TABLE IF NOT EXISTS drflow.unpushed (
    recovery_id   text        NOT NULL,
    first_task_id bigint      NOT NULL,
    task_ids      bigint[]    NOT NULL,
    requeued_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (recovery_id, first_task_id)
);
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'drflow.requeued'::regclass AND attname = 'pushed_at' AND NOT attisdropped) THEN
        INSERT INTO drflow.unpushed (recovery_id, first_task_id, task_ids)
        SELECT recovery_id, min(task_id), array_agg(task_id) FROM drflow.requeued WHERE pushed_at IS NULL GROUP BY recovery_id
        ON CONFLICT DO NOTHING;
        ALTER TABLE drflow.requeued DROP COLUMN pushed_at;
    END IF;
END $$`

// ensureRequeued creates drflow's tables when they are missing. It looks first, because
// every RequeueLost and TrackRequeued call of every recovery comes here and the DDL, even
// when it changes nothing, takes locks that writers of the tables wait for.
func ensureRequeued(ctx context.Context, conn *pgx.Conn) error {
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT to_regclass('`+UnpushedTable+`') IS NOT NULL`).Scan(&ok); err != nil {
		return readErr(schemas.ControllerDB, UnpushedTable, err)
	}
	if ok {
		return nil
	}
	if _, err := conn.Exec(ctx, requeueDDL); err != nil {
		return fmt.Errorf("create %s and %s in %s: %w", RequeuedTable, UnpushedTable, schemas.ControllerDB, err)
	}
	return nil
}

// connectBoth opens kohakku-controller and kohakku-dispatcher at the same time: every
// RequeueLost call needs both, and setting up a connection is mostly waiting for a new
// server process. db must allow concurrent Connect calls (PostgresDB does). The caller
// closes both.
func connectBoth(ctx context.Context, db DB) (ctrl, disp *pgx.Conn, err error) {
	done := make(chan error, 1)
	go func() {
		var err error
		disp, err = db.Connect(ctx, schemas.DispatcherDB)
		done <- err
	}()
	ctrl, err = db.Connect(ctx, schemas.ControllerDB)
	if derr := <-done; err == nil {
		err = derr
	}
	if err != nil {
		for _, c := range []*pgx.Conn{ctrl, disp} {
			if c != nil {
				closeConn(c)
			}
		}
		return nil, nil, err
	}
	return ctrl, disp, nil
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

// scanRequeued reads a row of id, attempt, progress, priority, created_at, updated_at.
func scanRequeued(r pgx.CollectableRow) (requeuedTask, error) {
	var t requeuedTask
	err := r.Scan(&t.id, &t.attempt, &t.progress, &t.priority, &t.createdAt, &t.updatedAt)
	return t, err
}

// sortDispatch puts tasks in dispatch order (schemas.DispatchOrderSQL).
func sortDispatch(tasks []requeuedTask) {
	slices.SortFunc(tasks, func(a, b requeuedTask) int {
		switch {
		case a.priority != b.priority:
			return int(b.priority - a.priority)
		case !a.createdAt.Equal(b.createdAt):
			return a.createdAt.Compare(b.createdAt)
		}
		return int(a.id - b.id)
	})
}

func taskIDs(tasks []requeuedTask) []int64 {
	ids := make([]int64, len(tasks))
	for i, t := range tasks {
		ids[i] = t.id
	}
	return ids
}

// lostSQL selects and locks, in dispatch order, up to $3 tasks in one in-flight status
// that are held by no healthy agent ($2) and were not re-queued by this recovery ($1)
// before. One status at a time, so that tasks_task_status_dispatch_idx gives the order
// and the scan stops after $3 rows instead of sorting every task in flight. The NOT
// EXISTS stays a probe of drflow.requeued's primary key per row (OFFSET 0 keeps the
// planner from turning it into a join): as a join it is weighed with statistics that lag
// far behind a table growing by a batch per call, and the plan may then read every task
// in flight, or every task the recovery re-queued, for each batch.
func lostSQL(status string) string {
	return `SELECT id, priority, created_at FROM (
        SELECT id, priority, created_at FROM ` + schemas.TasksTable + ` t
        WHERE status = '` + status + `'
          AND (container_id IS NULL OR NOT (container_id = ANY($2)))
          AND NOT EXISTS (SELECT FROM ` + RequeuedTable + ` r WHERE r.recovery_id = $1 AND r.task_id = t.id OFFSET 0)
        ORDER BY ` + schemas.DispatchOrderSQL + `
        LIMIT $3
        FOR UPDATE SKIP LOCKED
    ) ` + status
}

// requeueSQL re-queues one batch in one statement: the lost tasks (in flight, held by no
// healthy agent, not re-queued by this recovery before), the first $3 in dispatch order
// over both in-flight statuses, are recorded in drflow.requeued, their batch in
// drflow.unpushed, and set back to pending without a container. The rows stay locked from
// the select to the update, so no other call can record them too: the inserts need no
// ON CONFLICT (which would double their cost).
var requeueSQL = `WITH lost AS (
    ` + lostSQL(schemas.StatusDispatched) + `
    UNION ALL
    ` + lostSQL(schemas.StatusRunning) + `
    ORDER BY ` + schemas.DispatchOrderSQL + `
    LIMIT $3
), marked AS (
    INSERT INTO ` + RequeuedTable + ` (recovery_id, task_id) SELECT $1, id FROM lost
), unpushed AS (
    INSERT INTO ` + UnpushedTable + ` (recovery_id, first_task_id, task_ids)
    SELECT $1, min(id), array_agg(id) FROM lost HAVING count(*) > 0
)
UPDATE ` + schemas.TasksTable + `
SET status = '` + schemas.StatusPending + `', container_id = NULL, updated_at = now()
WHERE id = ANY(ARRAY(SELECT id FROM lost))
RETURNING id, attempt, progress, priority, created_at, updated_at`

// RequeueLost re-queues lost tasks, a batch at a time, until none is left or in.Until
// has passed. First it finishes the batches that interrupted earlier calls left in
// drflow.unpushed. Then, per batch: one statement in kohakku-controller re-queues up to
// Batch tasks, their open assignments are released in kohakku-dispatcher, one MULTI/EXEC
// writes their state hashes and appends them to the queue in dispatch order, and the
// batch is marked pushed. The connections are opened once per call: they cost more than
// a batch's statements. The call that finds no more lost tasks (Done) also analyzes
// drflow.requeued.
func (k Kohakku) RequeueLost(ctx context.Context, db DB, rdb redis.UniversalClient, in RequeueInput) (RequeueResult, error) {
	var res RequeueResult
	if in.RecoveryID == "" {
		return res, fmt.Errorf("requeue: empty recovery id")
	}
	batch := in.Batch
	if batch <= 0 {
		batch = k.batch()
	}
	ctrl, disp, err := connectBoth(ctx, db)
	if err != nil {
		return res, err
	}
	defer closeConn(ctrl)
	defer closeConn(disp)
	if err := ensureRequeued(ctx, ctrl); err != nil {
		return res, err
	}
	if res.Repushed, err = finishPushes(ctx, ctrl, disp, rdb, in.RecoveryID); err != nil {
		return res, err
	}

	healthy, err := healthyAgents(ctx, disp, in.Rule)
	if err != nil {
		return res, err
	}
	for {
		n, err := requeueBatch(ctx, ctrl, disp, rdb, in.RecoveryID, healthy, batch)
		if err != nil {
			return res, err
		}
		res.Batches++
		res.Requeued += n
		if res.Done = n < int64(batch); res.Done || !time.Now().Before(in.Until) {
			break
		}
		if in.Progress != nil {
			in.Progress(res)
		}
	}
	if res.Done {
		// drflow.requeued grew by the whole recovery within minutes, faster than
		// autovacuum analyzes it, and the tracker's counts are planned with its statistics.
		if _, err := ctrl.Exec(ctx, `ANALYZE `+RequeuedTable); err != nil {
			return res, fmt.Errorf("analyze %s in %s: %w", RequeuedTable, schemas.ControllerDB, err)
		}
	}
	return res, nil
}

// requeueBatch re-queues one batch of up to batch lost tasks and returns how many it
// re-queued.
func requeueBatch(ctx context.Context, ctrl, disp *pgx.Conn, rdb redis.UniversalClient, recoveryID string, healthy []string, batch int) (int64, error) {
	rows, err := ctrl.Query(ctx, requeueSQL, recoveryID, healthy, batch)
	if err != nil {
		return 0, fmt.Errorf("requeue lost tasks in %s: %w", schemas.ControllerDB, err)
	}
	tasks, err := pgx.CollectRows(rows, scanRequeued)
	if err != nil {
		return 0, fmt.Errorf("requeue lost tasks in %s: %w", schemas.ControllerDB, err)
	}
	if len(tasks) == 0 {
		return 0, nil
	}
	sortDispatch(tasks)
	if err := releaseAndPush(ctx, disp, rdb, tasks); err != nil {
		return 0, err
	}
	if err := markPushed(ctx, ctrl, recoveryID, slices.Min(taskIDs(tasks))); err != nil {
		return 0, err
	}
	return int64(len(tasks)), nil
}

// finishPushes completes the batches in drflow.unpushed that interrupted calls of the
// recovery left, and returns how many tasks it pushed. Only the batch's tasks still
// pending and not in the queue need it: any other was pushed (and released before), and
// maybe taken by an agent since.
func finishPushes(ctx context.Context, ctrl, disp *pgx.Conn, rdb redis.UniversalClient, recoveryID string) (int64, error) {
	type unpushed struct {
		first int64
		ids   []int64
	}
	rows, err := ctrl.Query(ctx, `SELECT first_task_id, task_ids FROM `+UnpushedTable+` WHERE recovery_id = $1 ORDER BY first_task_id`, recoveryID)
	if err != nil {
		return 0, readErr(schemas.ControllerDB, UnpushedTable, err)
	}
	batches, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (unpushed, error) {
		var u unpushed
		err := r.Scan(&u.first, &u.ids)
		return u, err
	})
	if err != nil {
		return 0, readErr(schemas.ControllerDB, UnpushedTable, err)
	}
	var pushed int64
	for _, b := range batches {
		rows, err := ctrl.Query(ctx, `SELECT id, attempt, progress, priority, created_at, updated_at FROM `+schemas.TasksTable+`
			WHERE id = ANY($1) AND status = $2`, b.ids, schemas.StatusPending)
		if err != nil {
			return pushed, readErr(schemas.ControllerDB, schemas.TasksTable, err)
		}
		todo, err := pgx.CollectRows(rows, scanRequeued)
		if err != nil {
			return pushed, readErr(schemas.ControllerDB, schemas.TasksTable, err)
		}
		queued, err := inQueue(ctx, rdb, todo)
		if err != nil {
			return pushed, err
		}
		todo = slices.DeleteFunc(todo, func(t requeuedTask) bool { return queued[t.id] })
		sortDispatch(todo)
		if err := releaseAndPush(ctx, disp, rdb, todo); err != nil {
			return pushed, err
		}
		if err := markPushed(ctx, ctrl, recoveryID, b.first); err != nil {
			return pushed, err
		}
		pushed += int64(len(todo))
	}
	return pushed, nil
}

// releaseAndPush releases the open assignments of tasks in kohakku-dispatcher, then
// pushes them to Redis. In this order: once an id is in the queue an agent may take it
// and open a new assignment, which must find the lost one released.
func releaseAndPush(ctx context.Context, disp *pgx.Conn, rdb redis.UniversalClient, tasks []requeuedTask) error {
	if len(tasks) == 0 {
		return nil
	}
	if _, err := disp.Exec(ctx, `UPDATE `+schemas.DispatchAssignmentsTable+` SET released_at = greatest(now(), assigned_at)
		WHERE task_id = ANY($1) AND released_at IS NULL`, taskIDs(tasks)); err != nil {
		return fmt.Errorf("release assignments in %s: %w", schemas.DispatcherDB, err)
	}
	return pushRequeued(ctx, rdb, tasks)
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

// markPushed ends the batch whose lowest task id is first: its push is done.
func markPushed(ctx context.Context, ctrl *pgx.Conn, recoveryID string, first int64) error {
	if _, err := ctrl.Exec(ctx, `DELETE FROM `+UnpushedTable+` WHERE recovery_id = $1 AND first_task_id = $2`, recoveryID, first); err != nil {
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
