package profile

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/kohakku/drflow/schemas"
)

// DefaultBatch is Kohakku.Batch when it is zero.
const DefaultBatch = 1000

// Rebuild phases, the RebuildProgress.Phase values of Kohakku.RebuildRedis, in
// the order they run.
const (
	PhaseDelete     = "delete"     // SCAN + UNLINK of every kohakku:* key
	PhaseTasks      = "tasks"      // one hash per unfinished task
	PhaseQueue      = "queue"      // the pending queue, in dispatch order
	PhaseContainers = "containers" // the live containers sorted set
)

// Kohakku is the Profile of the Kohakku stack, whose layout is defined in
// package schemas (schemas/redis.md for Redis).
//
// contract: Redis is one standalone server (or a primary): SCAN sees every
// key. The rebuild is meant for a Redis that the app does not write to while
// it runs (the runbooks stop or pause the controller and dispatcher first); a
// concurrent RPUSH would land in the middle of the rebuilt queue. The redis
// client should not retry commands by itself (go-redis MaxRetries -1): a
// retried MULTI/EXEC whose reply was lost would push its ids twice.
type Kohakku struct {
	// Batch is the number of rows per MULTI/EXEC transaction of a rebuild,
	// per PostgreSQL cursor FETCH and per chunk of the queue compared by
	// CheckRedis; 0 means DefaultBatch.
	Batch int
}

var _ Profile = Kohakku{}

// Name returns "kohakku".
func (Kohakku) Name() string { return "kohakku" }

// KeyPattern returns schemas.KeyPattern ("kohakku:*").
func (Kohakku) KeyPattern() string { return schemas.KeyPattern }

func (k Kohakku) batch() int {
	if k.Batch > 0 {
		return k.Batch
	}
	return DefaultBatch
}

// unfinishedStatuses are the statuses of tasks that are not terminal: the
// tasks that have a state hash.
var unfinishedStatuses = func() []string {
	var out []string
	for _, st := range schemas.TaskStatuses {
		if !schemas.IsTerminal(st) {
			out = append(out, st)
		}
	}
	return out
}()

// The queries of the rebuild, exactly those of schemas/redis.md.
var (
	countTasksSQL = "SELECT count(*) FILTER (WHERE status = $1), count(*) FILTER (WHERE status = ANY($2)) FROM " +
		schemas.TasksTable
	countLiveSQL      = "SELECT count(*) FROM " + schemas.AgentContainersTable + " WHERE status = $1"
	unfinishedRowsSQL = "SELECT id, status, container_id, attempt, progress, updated_at FROM " + schemas.TasksTable +
		" WHERE status = ANY($1)"
	unfinishedIDsSQL = "SELECT id FROM " + schemas.TasksTable + " WHERE status = ANY($1)"
	liveRowsSQL      = "SELECT container_id, last_heartbeat_at FROM " + schemas.AgentContainersTable + " WHERE status = $1"
)

// RedisPlan counts, in one REPEATABLE READ snapshot of each database, the
// pending and unfinished tasks of kohakku-controller.tasks_task and the live
// containers of kohakku-dispatcher.agent_containers. Keys is
// (pending > 0) + (live > 0) + unfinished, the key count after a rebuild.
func (k Kohakku) RedisPlan(ctx context.Context, db DB) (RedisPlan, error) {
	s, err := openSnapshot(ctx, db)
	if err != nil {
		return RedisPlan{}, err
	}
	defer s.close()
	return s.plan(ctx)
}

// RebuildRedis does what schemas/redis.md "Rebuilding from PostgreSQL" says:
// it reads both databases in one REPEATABLE READ, READ ONLY snapshot each,
// deletes every key matching KeyPattern (SCAN + UNLINK, Batch keys at a time),
// then writes the task hashes, the pending queue in dispatch order and the
// live containers, each batch of Batch rows in one MULTI/EXEC. PostgreSQL is
// read through server-side cursors, Batch rows per FETCH, so memory does not
// grow with the number of tasks.
//
// progress is called after each UNLINK and each transaction (nil is fine).
// RebuildResult.Batches counts the MULTI/EXEC transactions, not the UNLINKs.
//
// It is idempotent: every run starts by deleting what an earlier (possibly
// interrupted) run wrote, so a retry starts over and ends in the same state.
// Keys outside KeyPattern are never touched.
func (k Kohakku) RebuildRedis(ctx context.Context, db DB, rdb redis.UniversalClient, progress func(RebuildProgress)) (RebuildResult, error) {
	if progress == nil {
		progress = func(RebuildProgress) {}
	}
	s, err := openSnapshot(ctx, db)
	if err != nil {
		return RebuildResult{}, err
	}
	defer s.close()
	plan, err := s.plan(ctx)
	if err != nil {
		return RebuildResult{}, err
	}
	// Everything that can fail before the delete has been read.
	if err := ctx.Err(); err != nil {
		return RebuildResult{}, fmt.Errorf("rebuild redis: %w", context.Cause(ctx))
	}
	var res RebuildResult
	res.Deleted, err = deleteKeys(ctx, rdb, schemas.KeyPattern, k.batch(), progress)
	if err != nil {
		return res, err
	}

	w := &rebuildWriter{ctx: ctx, rdb: rdb, batch: k.batch(), progress: progress, res: &res}
	if res.Plan.Unfinished, err = w.tasks(s, plan.Unfinished); err != nil {
		return res, err
	}
	if res.Plan.Pending, err = w.queue(s, plan.Pending); err != nil {
		return res, err
	}
	if res.Plan.LiveContainers, err = w.containers(s, plan.LiveContainers); err != nil {
		return res, err
	}
	res.Plan.Keys = keyCount(res.Plan)
	if res.Plan != plan {
		// One snapshot each: the counts and the rows cannot disagree unless
		// something is badly wrong; say so rather than report success.
		return res, fmt.Errorf("rebuild redis: wrote %+v, but PostgreSQL counted %+v in the same snapshot", res.Plan, plan)
	}
	return res, nil
}

// CheckRedis compares Redis with PostgreSQL (one REPEATABLE READ snapshot of
// each database). Expected is RedisPlan; Found counts LLEN of the queue, the
// task hashes, ZCARD of the live set and every key matching KeyPattern.
// Beyond the counts it checks that the queue holds exactly the pending ids in
// dispatch order (compared Batch ids at a time) without duplicates, that the
// task hashes belong to exactly the unfinished tasks and that the live set
// holds exactly the live containers. OK is true when Problems is empty; each
// problem names the figure, e.g. "queue depth 97, PostgreSQL has 100 pending
// tasks". It only reads.
func (k Kohakku) CheckRedis(ctx context.Context, db DB, rdb redis.UniversalClient) (RedisCheck, error) {
	s, err := openSnapshot(ctx, db)
	if err != nil {
		return RedisCheck{}, err
	}
	defer s.close()
	var c RedisCheck
	if c.Expected, err = s.plan(ctx); err != nil {
		return c, err
	}
	ck := &checker{ctx: ctx, rdb: rdb, batch: k.batch(), s: s, check: &c}
	for _, step := range []func() error{ck.keys, ck.queue, ck.hashes, ck.live} {
		if err := step(); err != nil {
			return c, err
		}
	}
	c.OK = len(c.Problems) == 0
	return c, nil
}

// ObjectClasses returns, for schemas.DefaultBucket, the briefs of unfinished
// tasks (the keys schemas.BriefKey(id) of the tasks not terminal, read from
// tasks_task now) and then the skills (keys under schemas.SkillsPrefix). Any
// other bucket has no classes (nil). The Match functions are safe for
// concurrent use.
func (k Kohakku) ObjectClasses(ctx context.Context, db DB, bucket string) ([]ObjectClass, error) {
	if bucket != schemas.DefaultBucket {
		return nil, nil
	}
	conn, err := db.Connect(ctx, schemas.ControllerDB)
	if err != nil {
		return nil, err
	}
	defer closeConn(conn)
	rows, err := conn.Query(ctx, unfinishedIDsSQL, unfinishedStatuses)
	if err != nil {
		return nil, readErr(schemas.ControllerDB, schemas.TasksTable, err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, readErr(schemas.ControllerDB, schemas.TasksTable, err)
	}
	unfinished := make(map[int64]struct{}, len(ids))
	for _, id := range ids {
		unfinished[id] = struct{}{}
	}
	return []ObjectClass{{
		Name: "briefs of unfinished tasks",
		Match: func(key string) bool {
			// ParseBriefKey accepts exactly the keys BriefKey makes.
			id, err := schemas.ParseBriefKey(key)
			if err != nil {
				return false
			}
			_, ok := unfinished[id]
			return ok
		},
	}, {
		Name:  "skills",
		Match: func(key string) bool { return strings.HasPrefix(key, schemas.SkillsPrefix) },
	}}, nil
}

func keyCount(p RedisPlan) int64 {
	n := p.Unfinished
	if p.Pending > 0 {
		n++
	}
	if p.LiveContainers > 0 {
		n++
	}
	return n
}

func formatID(id int64) string { return strconv.FormatInt(id, 10) }

func readErr(db, table string, err error) error {
	return fmt.Errorf("read %s.%s: %w", db, table, err)
}

// ---- PostgreSQL ----

// snapshot is one REPEATABLE READ, READ ONLY transaction on each database, so
// that counts and rows read later agree.
type snapshot struct {
	ctl, disp     *pgx.Conn
	ctlTx, dispTx pgx.Tx
	cursors       int
}

func openSnapshot(ctx context.Context, db DB) (_ *snapshot, err error) {
	s := &snapshot{}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	opts := pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}
	if s.ctl, err = db.Connect(ctx, schemas.ControllerDB); err != nil {
		return nil, err
	}
	if s.ctlTx, err = s.ctl.BeginTx(ctx, opts); err != nil {
		return nil, fmt.Errorf("begin snapshot of %s: %w", schemas.ControllerDB, err)
	}
	if s.disp, err = db.Connect(ctx, schemas.DispatcherDB); err != nil {
		return nil, err
	}
	if s.dispTx, err = s.disp.BeginTx(ctx, opts); err != nil {
		return nil, fmt.Errorf("begin snapshot of %s: %w", schemas.DispatcherDB, err)
	}
	return s, nil
}

// close ends both read-only transactions and closes the connections.
func (s *snapshot) close() {
	for _, c := range []*pgx.Conn{s.ctl, s.disp} {
		if c != nil {
			// Closing the connection ends its transaction.
			closeConn(c)
		}
	}
}

func closeConn(c *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = c.Close(ctx)
}

func (s *snapshot) plan(ctx context.Context) (RedisPlan, error) {
	var p RedisPlan
	err := s.ctlTx.QueryRow(ctx, countTasksSQL, schemas.StatusPending, unfinishedStatuses).Scan(&p.Pending, &p.Unfinished)
	if err != nil {
		return p, readErr(schemas.ControllerDB, schemas.TasksTable, err)
	}
	if err := s.dispTx.QueryRow(ctx, countLiveSQL, schemas.ContainerLive).Scan(&p.LiveContainers); err != nil {
		return p, readErr(schemas.DispatcherDB, schemas.AgentContainersTable, err)
	}
	p.Keys = keyCount(p)
	return p, nil
}

// cursor reads a query n rows at a time through a server-side cursor of tx.
type cursor struct {
	tx         pgx.Tx
	name       string
	n          int
	db, table  string
	done       bool
	fetchQuery string
}

// openCursor declares a cursor for query in tx. Cursors live until the
// transaction ends.
func (s *snapshot) openCursor(ctx context.Context, tx pgx.Tx, db, table string, n int, query string, args ...any) (*cursor, error) {
	s.cursors++
	name := "drflow_cursor_" + strconv.Itoa(s.cursors)
	if _, err := tx.Exec(ctx, "DECLARE "+name+" NO SCROLL CURSOR FOR "+query, args...); err != nil {
		return nil, readErr(db, table, err)
	}
	return &cursor{tx: tx, name: name, n: n, db: db, table: table,
		fetchQuery: "FETCH FORWARD " + strconv.Itoa(n) + " FROM " + name}, nil
}

// fetch reads the next rows (at most n), calling scan for each; it returns
// the number read, 0 at the end.
func (c *cursor) fetch(ctx context.Context, scan func(pgx.Rows) error) (int, error) {
	if c.done {
		return 0, nil
	}
	rows, err := c.tx.Query(ctx, c.fetchQuery)
	if err != nil {
		return 0, readErr(c.db, c.table, err)
	}
	defer rows.Close()
	got := 0
	for rows.Next() {
		if err := scan(rows); err != nil {
			return got, readErr(c.db, c.table, err)
		}
		got++
	}
	if err := rows.Err(); err != nil {
		return got, readErr(c.db, c.table, err)
	}
	if got < c.n {
		c.done = true
	}
	return got, nil
}

// fetchIDs reads the next ids of a cursor over a single bigint column.
func (c *cursor) fetchIDs(ctx context.Context, buf []int64) ([]int64, error) {
	buf = buf[:0]
	_, err := c.fetch(ctx, func(r pgx.Rows) error {
		var id int64
		if err := r.Scan(&id); err != nil {
			return err
		}
		buf = append(buf, id)
		return nil
	})
	return buf, err
}

// ---- the rebuild ----

// deleteKeys SCANs for pattern and UNLINKs what it finds, batch keys at a
// time, and returns how many keys were removed. A key SCAN returns twice is
// counted once, because the second UNLINK removes nothing.
func deleteKeys(ctx context.Context, rdb redis.UniversalClient, pattern string, batch int, progress func(RebuildProgress)) (int64, error) {
	var deleted int64
	var cur uint64
	for {
		keys, next, err := rdb.Scan(ctx, cur, pattern, int64(batch)).Result()
		if err != nil {
			return deleted, fmt.Errorf("rebuild redis: scan %s: %w", pattern, err)
		}
		if len(keys) > 0 {
			n, err := rdb.Unlink(ctx, keys...).Result()
			if err != nil {
				return deleted, fmt.Errorf("rebuild redis: unlink %s (%d keys, first %s): %w", pattern, len(keys), keys[0], err)
			}
			deleted += n
			progress(RebuildProgress{Phase: PhaseDelete, Written: deleted})
		}
		if cur = next; cur == 0 {
			return deleted, nil
		}
	}
}

// rebuildWriter writes the phases of a rebuild, one MULTI/EXEC per batch.
type rebuildWriter struct {
	ctx      context.Context
	rdb      redis.UniversalClient
	batch    int
	progress func(RebuildProgress)
	res      *RebuildResult
}

// exec sends one transaction and reports the phase's progress.
func (w *rebuildWriter) exec(pipe redis.Pipeliner, phase string, written, total int64) error {
	if _, err := pipe.Exec(w.ctx); err != nil {
		return fmt.Errorf("rebuild redis: write %s (batch %d, %d of %d written before it): %w",
			phase, w.res.Batches+1, written-int64(pipe.Len()), total, err)
	}
	w.res.Batches++
	w.progress(RebuildProgress{Phase: phase, Written: written, Total: total})
	return nil
}

// tasks writes one hash per unfinished task.
func (w *rebuildWriter) tasks(s *snapshot, total int64) (int64, error) {
	cur, err := s.openCursor(w.ctx, s.ctlTx, schemas.ControllerDB, schemas.TasksTable, w.batch, unfinishedRowsSQL, unfinishedStatuses)
	if err != nil {
		return 0, err
	}
	var written int64
	for {
		pipe := w.rdb.TxPipeline()
		n, err := cur.fetch(w.ctx, func(r pgx.Rows) error {
			var (
				id                int64
				status            string
				container         *string
				attempt, progress int32
				updatedAt         time.Time
			)
			if err := r.Scan(&id, &status, &container, &attempt, &progress, &updatedAt); err != nil {
				return err
			}
			c := ""
			if container != nil {
				c = *container
			}
			pipe.HSet(w.ctx, schemas.TaskKey(id),
				schemas.TaskFieldStatus, status,
				schemas.TaskFieldContainer, c,
				schemas.TaskFieldAttempt, strconv.FormatInt(int64(attempt), 10),
				schemas.TaskFieldProgress, strconv.FormatInt(int64(progress), 10),
				schemas.TaskFieldUpdatedAt, strconv.FormatInt(updatedAt.UnixMilli(), 10),
			)
			return nil
		})
		if err != nil {
			return written, err
		}
		if n == 0 {
			return written, nil
		}
		written += int64(n)
		if err := w.exec(pipe, PhaseTasks, written, total); err != nil {
			return written, err
		}
	}
}

// queue writes the pending queue: DEL, then RPUSH batch after batch in
// dispatch order.
func (w *rebuildWriter) queue(s *snapshot, total int64) (int64, error) {
	cur, err := s.openCursor(w.ctx, s.ctlTx, schemas.ControllerDB, schemas.TasksTable, w.batch, schemas.PendingInDispatchOrderSQL)
	if err != nil {
		return 0, err
	}
	var (
		written int64
		ids     []int64
		args    = make([]any, 0, w.batch)
	)
	for {
		if ids, err = cur.fetchIDs(w.ctx, ids); err != nil {
			return written, err
		}
		if len(ids) == 0 {
			return written, nil
		}
		args = args[:0]
		for _, id := range ids {
			args = append(args, strconv.FormatInt(id, 10))
		}
		pipe := w.rdb.TxPipeline()
		if written == 0 {
			pipe.Del(w.ctx, schemas.PendingQueueKey)
		}
		pipe.RPush(w.ctx, schemas.PendingQueueKey, args...)
		written += int64(len(ids))
		if err := w.exec(pipe, PhaseQueue, written, total); err != nil {
			return written, err
		}
	}
}

// containers writes the live set: DEL, then ZADD batch after batch.
func (w *rebuildWriter) containers(s *snapshot, total int64) (int64, error) {
	cur, err := s.openCursor(w.ctx, s.dispTx, schemas.DispatcherDB, schemas.AgentContainersTable, w.batch, liveRowsSQL, schemas.ContainerLive)
	if err != nil {
		return 0, err
	}
	var written int64
	members := make([]redis.Z, 0, w.batch)
	for {
		members = members[:0]
		_, err := cur.fetch(w.ctx, func(r pgx.Rows) error {
			var id string
			var hb time.Time
			if err := r.Scan(&id, &hb); err != nil {
				return err
			}
			members = append(members, redis.Z{Score: float64(hb.UnixMilli()), Member: id})
			return nil
		})
		if err != nil {
			return written, err
		}
		if len(members) == 0 {
			return written, nil
		}
		pipe := w.rdb.TxPipeline()
		if written == 0 {
			pipe.Del(w.ctx, schemas.LiveContainersKey)
		}
		pipe.ZAdd(w.ctx, schemas.LiveContainersKey, members...)
		written += int64(len(members))
		if err := w.exec(pipe, PhaseContainers, written, total); err != nil {
			return written, err
		}
	}
}

// ---- the check ----

// maxExamples bounds the keys or ids a problem quotes.
const maxExamples = 5

// checker runs the steps of CheckRedis, adding to check.Found and Problems.
type checker struct {
	ctx   context.Context
	rdb   redis.UniversalClient
	batch int
	s     *snapshot
	check *RedisCheck
	// hashIDs are the task ids that have a hash, from keys.
	hashIDs map[int64]struct{}
}

func (c *checker) problem(format string, args ...any) {
	c.check.Problems = append(c.check.Problems, fmt.Sprintf(format, args...))
}

// keys scans every kohakku:* key once: Found.Keys, the task hash ids, and
// keys that have no place in the layout.
func (c *checker) keys() error {
	c.hashIDs = map[int64]struct{}{}
	others := map[string]struct{}{}
	var stray []string
	iter := c.rdb.Scan(c.ctx, 0, schemas.KeyPattern, int64(c.batch)).Iterator()
	for iter.Next(c.ctx) {
		key := iter.Val()
		if strings.HasPrefix(key, schemas.TaskKeyPrefix) {
			if id, err := schemas.ParseTaskKey(key); err == nil {
				c.hashIDs[id] = struct{}{}
				continue
			}
		}
		if _, seen := others[key]; seen {
			continue // SCAN may return a key twice
		}
		others[key] = struct{}{}
		if key != schemas.PendingQueueKey && key != schemas.LiveContainersKey {
			stray = append(stray, key)
		}
	}
	if err := iter.Err(); err != nil {
		return fmt.Errorf("check redis: scan %s: %w", schemas.KeyPattern, err)
	}
	c.check.Found.Unfinished = int64(len(c.hashIDs))
	c.check.Found.Keys = int64(len(c.hashIDs) + len(others))
	if c.check.Found.Keys != c.check.Expected.Keys {
		c.problem("%d keys match %s, a rebuild from PostgreSQL writes %d", c.check.Found.Keys, schemas.KeyPattern, c.check.Expected.Keys)
	}
	if len(stray) > 0 {
		c.problem("%d keys match %s but are not part of the layout (schemas/redis.md): %s",
			len(stray), schemas.KeyPattern, examples(stray))
	}
	return nil
}

// keyType returns the Redis type of key ("none" when missing) and adds a
// problem when it is neither missing nor want.
func (c *checker) keyType(key, want string) (bool, error) {
	typ, err := c.rdb.Type(c.ctx, key).Result()
	if err != nil {
		return false, fmt.Errorf("check redis: type %s: %w", key, err)
	}
	if typ != "none" && typ != want {
		c.problem("%s is a %s, not a %s", key, typ, want)
		return false, nil
	}
	return true, nil
}

// queue compares the pending queue with the pending tasks in dispatch order.
func (c *checker) queue() error {
	exp := c.check.Expected.Pending
	ok, err := c.keyType(schemas.PendingQueueKey, "list")
	if err != nil || !ok {
		return err
	}
	depth, err := c.rdb.LLen(c.ctx, schemas.PendingQueueKey).Result()
	if err != nil {
		return fmt.Errorf("check redis: llen %s: %w", schemas.PendingQueueKey, err)
	}
	c.check.Found.Pending = depth
	if depth != exp {
		c.problem("queue depth %d, PostgreSQL has %d pending tasks", depth, exp)
	}

	// Chunk by chunk: the ids in dispatch order against the same range of
	// the list, until the first difference.
	cur, err := c.s.openCursor(c.ctx, c.s.ctlTx, schemas.ControllerDB, schemas.TasksTable, c.batch, schemas.PendingInDispatchOrderSQL)
	if err != nil {
		return err
	}
	var (
		ids      []int64
		pos      int64
		mismatch = false
	)
	for !mismatch {
		if ids, err = cur.fetchIDs(c.ctx, ids); err != nil {
			return err
		}
		if len(ids) == 0 || pos >= depth {
			break
		}
		got, err := c.rdb.LRange(c.ctx, schemas.PendingQueueKey, pos, pos+int64(len(ids))-1).Result()
		if err != nil {
			return fmt.Errorf("check redis: lrange %s: %w", schemas.PendingQueueKey, err)
		}
		for i, id := range ids {
			if i >= len(got) {
				break // the list is shorter; the depth problem says so
			}
			if got[i] != strconv.FormatInt(id, 10) {
				c.problem("queue is not in dispatch order: index %d holds %q, PostgreSQL's dispatch order has task %d there",
					pos+int64(i), got[i], id)
				mismatch = true
				break
			}
		}
		pos += int64(len(ids))
	}
	if !mismatch && depth == exp {
		// Same length and the same ids in the same order: PostgreSQL's ids
		// are unique, so the queue has no duplicates either.
		return nil
	}
	return c.queueMembers(depth)
}

// queueMembers explains a queue that differs from PostgreSQL: duplicates,
// entries that are not pending tasks, pending tasks missing. It holds the
// queue's ids in memory, so it only runs when something is wrong.
func (c *checker) queueMembers(depth int64) error {
	inQueue := map[int64]struct{}{}
	var dups, junk []string
	ndups := 0
	for pos := int64(0); pos < depth; pos += int64(c.batch) {
		got, err := c.rdb.LRange(c.ctx, schemas.PendingQueueKey, pos, pos+int64(c.batch)-1).Result()
		if err != nil {
			return fmt.Errorf("check redis: lrange %s: %w", schemas.PendingQueueKey, err)
		}
		for _, v := range got {
			id, err := strconv.ParseInt(v, 10, 64)
			if err != nil || id <= 0 || strconv.FormatInt(id, 10) != v {
				junk = append(junk, strconv.Quote(v))
				continue
			}
			if _, seen := inQueue[id]; seen {
				ndups++
				dups = append(dups, v)
				continue
			}
			inQueue[id] = struct{}{}
		}
	}
	if ndups > 0 {
		c.problem("queue holds %d duplicate entries: %s", ndups, examples(dups))
	}
	if len(junk) > 0 {
		c.problem("queue holds %d entries that are not task ids: %s", len(junk), examples(junk))
	}
	// The pending ids again, from the same snapshot.
	cur, err := c.s.openCursor(c.ctx, c.s.ctlTx, schemas.ControllerDB, schemas.TasksTable, c.batch, schemas.PendingInDispatchOrderSQL)
	if err != nil {
		return err
	}
	var missing []string
	var ids []int64
	for {
		if ids, err = cur.fetchIDs(c.ctx, ids); err != nil {
			return err
		}
		if len(ids) == 0 {
			break
		}
		for _, id := range ids {
			if _, ok := inQueue[id]; ok {
				delete(inQueue, id)
			} else {
				missing = append(missing, strconv.FormatInt(id, 10))
			}
		}
	}
	if len(missing) > 0 {
		c.problem("queue lacks %d pending tasks: %s", len(missing), examples(missing))
	}
	if len(inQueue) > 0 {
		c.problem("queue holds %d ids of tasks that are not pending in PostgreSQL: %s", len(inQueue), examples(sortedIDs(inQueue, formatID)))
	}
	return nil
}

// hashes compares the task hashes with the unfinished tasks.
func (c *checker) hashes() error {
	exp, found := c.check.Expected.Unfinished, c.check.Found.Unfinished
	if found != exp {
		c.problem("task hashes %d, PostgreSQL has %d unfinished tasks", found, exp)
	}
	cur, err := c.s.openCursor(c.ctx, c.s.ctlTx, schemas.ControllerDB, schemas.TasksTable, c.batch, unfinishedIDsSQL, unfinishedStatuses)
	if err != nil {
		return err
	}
	extra := make(map[int64]struct{}, len(c.hashIDs))
	for id := range c.hashIDs {
		extra[id] = struct{}{}
	}
	var missing []string
	var ids []int64
	for {
		if ids, err = cur.fetchIDs(c.ctx, ids); err != nil {
			return err
		}
		if len(ids) == 0 {
			break
		}
		for _, id := range ids {
			if _, ok := extra[id]; ok {
				delete(extra, id)
			} else {
				missing = append(missing, schemas.TaskKey(id))
			}
		}
	}
	if len(missing) > 0 {
		c.problem("%d unfinished tasks have no hash: %s", len(missing), examples(missing))
	}
	if len(extra) > 0 {
		c.problem("%d task hashes belong to tasks that are terminal or unknown in PostgreSQL: %s", len(extra), examples(sortedIDs(extra, schemas.TaskKey)))
	}
	return nil
}

// live compares the live set with the live containers.
func (c *checker) live() error {
	exp := c.check.Expected.LiveContainers
	ok, err := c.keyType(schemas.LiveContainersKey, "zset")
	if err != nil || !ok {
		return err
	}
	members, err := c.rdb.ZRange(c.ctx, schemas.LiveContainersKey, 0, -1).Result()
	if err != nil {
		return fmt.Errorf("check redis: zrange %s: %w", schemas.LiveContainersKey, err)
	}
	c.check.Found.LiveContainers = int64(len(members))
	if int64(len(members)) != exp {
		c.problem("live containers %d, PostgreSQL has %d live containers", len(members), exp)
	}
	inSet := make(map[string]struct{}, len(members))
	for _, m := range members {
		inSet[m] = struct{}{}
	}
	cur, err := c.s.openCursor(c.ctx, c.s.dispTx, schemas.DispatcherDB, schemas.AgentContainersTable, c.batch, liveRowsSQL, schemas.ContainerLive)
	if err != nil {
		return err
	}
	var missing []string
	for {
		n, err := cur.fetch(c.ctx, func(r pgx.Rows) error {
			var id string
			var hb time.Time
			if err := r.Scan(&id, &hb); err != nil {
				return err
			}
			if _, ok := inSet[id]; ok {
				delete(inSet, id)
			} else {
				missing = append(missing, id)
			}
			return nil
		})
		if err != nil {
			return err
		}
		if n == 0 {
			break
		}
	}
	if len(missing) > 0 {
		c.problem("%s lacks %d live containers: %s", schemas.LiveContainersKey, len(missing), examples(missing))
	}
	if len(inSet) > 0 {
		extra := make([]string, 0, len(inSet))
		for m := range inSet {
			extra = append(extra, m)
		}
		slices.Sort(extra)
		c.problem("%s holds %d containers that are not live in PostgreSQL: %s", schemas.LiveContainersKey, len(extra), examples(extra))
	}
	return nil
}

// sortedIDs formats the ids of set in ascending order.
func sortedIDs(set map[int64]struct{}, format func(int64) string) []string {
	ids := make([]int64, 0, len(set))
	for id := range set {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = format(id)
	}
	return out
}

// examples quotes the first few of list, and how many more there are.
func examples(list []string) string {
	if len(list) <= maxExamples {
		return strings.Join(list, ", ")
	}
	return strings.Join(list[:maxExamples], ", ") + fmt.Sprintf(" and %d more", len(list)-maxExamples)
}
