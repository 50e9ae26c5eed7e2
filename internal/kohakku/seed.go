package kohakku

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/minio/minio-go/v7"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/kohakku/drflow/schemas"
)

// Defaults for the zero fields of SeedOptions.
const (
	DefaultTasks     = 1000
	DefaultSkills    = 12
	DefaultBriefSize = 2048
	DefaultParallel  = 32
	// DefaultTasksPerContainer sets the live fleet size when
	// SeedOptions.Containers is zero: one container per this many in-flight
	// tasks, at least one.
	DefaultTasksPerContainer = 8
)

// SeedOptions says what Seed writes. Zero fields take the defaults above.
//
// Same options, same data: every row, key and object byte is a function of the
// options alone. Timestamps are offsets from Now, so leave Now zero (the wall
// clock) for a stack that looks current, and fix it for byte-identical seeds.
type SeedOptions struct {
	// Tasks is the number of tasks. The status mix is fixed: 60% completed,
	// 10% failed, 5% cancelled, 10% in flight (3/10 of them dispatched, the
	// rest running) and the rest, about 15%, pending. Created over the 7 days
	// before Now, oldest id first; the newest quarter is the pending and
	// in-flight ones.
	Tasks int
	// Skills is the number of skill folders under skills/.
	Skills int
	// Containers is the number of live agent containers; in-flight tasks are
	// spread over them. Four earlier fleets of the same size are recorded as
	// dead containers, holding the history.
	Containers int
	// Seed selects the data.
	Seed int64
	// BriefSize is the mean brief size in bytes (uniform in [½, 1½]×).
	BriefSize int
	// Now is when the seeded history ends. Zero means time.Now(); it is
	// truncated to the millisecond, the precision of the Redis timestamps.
	Now time.Time
	// Parallel bounds concurrent object uploads.
	Parallel int
	// Log receives one line per finished part (store, counts, elapsed); nil
	// logs nothing.
	Log *slog.Logger
}

func (o SeedOptions) withDefaults() (SeedOptions, error) {
	for name, v := range map[string]int{
		"Tasks": o.Tasks, "Skills": o.Skills, "Containers": o.Containers,
		"BriefSize": o.BriefSize, "Parallel": o.Parallel,
	} {
		if v < 0 {
			return o, fmt.Errorf("seed options: %s is %d, must not be negative", name, v)
		}
	}
	if o.Tasks == 0 {
		o.Tasks = DefaultTasks
	}
	if o.Skills == 0 {
		o.Skills = DefaultSkills
	}
	if o.BriefSize == 0 {
		o.BriefSize = DefaultBriefSize
	}
	if o.Parallel == 0 {
		o.Parallel = DefaultParallel
	}
	if o.Containers == 0 {
		inFlight := o.Tasks * 10 / 100
		o.Containers = max(1, (inFlight+DefaultTasksPerContainer-1)/DefaultTasksPerContainer)
	}
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	o.Now = o.Now.UTC().Truncate(time.Millisecond)
	return o, nil
}

// Seed applies the schemas (ApplySchemas) and fills an empty stack with
// o.Tasks tasks in realistic states: rows in both databases, the matching
// Redis state (pending queue in dispatch order, a hash per non-terminal task,
// the live containers) and the objects (a brief per task, the skills). It
// returns the figures it wrote, which Snapshot reads back equal.
//
// contract: the stack must be empty — no rows in tasks_task, briefs,
// agent_containers or dispatch_assignments, no kohakku:* Redis key, no object
// in the bucket — or Seed returns an error wrapping ErrNotEmpty and writes no
// data (ApplySchemas has run: tables and bucket exist). Each database is written in one transaction, and the briefs rows
// only after every object is stored; Redis and the objects are not
// transactional, so after a failed Seed the stack must be reset (wiped) before
// seeding again.
func Seed(ctx context.Context, t Target, o SeedOptions) (Summary, error) {
	o, err := o.withDefaults()
	if err != nil {
		return Summary{}, err
	}
	if err := ApplySchemas(ctx, t); err != nil {
		return Summary{}, err
	}
	if err := checkEmpty(ctx, t); err != nil {
		return Summary{}, err
	}
	began := time.Now()
	p := newPlan(o)
	sum := p.summary()
	o.Log.Info("seed: planned", "tasks", sum.Tasks, "objects", sum.Objects, "bytes", sum.Bytes, "elapsed", time.Since(began))

	g, gctx := errgroup.WithContext(ctx)
	objectsStored := make(chan struct{})
	timed := func(part string, f func() error, args ...any) func() error {
		return func() error {
			t0 := time.Now()
			if err := f(); err != nil {
				return err
			}
			o.Log.Info("seed: wrote "+part, append(args, "elapsed", time.Since(t0))...)
			return nil
		}
	}
	g.Go(timed("objects", func() error {
		if err := putObjects(gctx, t.Objects, t.bucket(), p.objects(), o.Parallel); err != nil {
			return err
		}
		close(objectsStored)
		return nil
	}, "bucket", t.bucket(), "objects", sum.Objects, "bytes", sum.Bytes))
	g.Go(timed(schemas.ControllerDB, func() error { return writeController(gctx, t.Controller, p, objectsStored) },
		"db", schemas.ControllerDB, "tasks", sum.Tasks))
	g.Go(timed(schemas.DispatcherDB, func() error { return writeDispatcher(gctx, t.Dispatcher, p) },
		"db", schemas.DispatcherDB, "containers", len(p.containers), "assignments", sum.Assignments))
	g.Go(timed("redis", func() error { return writeRedis(gctx, t.Redis, p) },
		"keys", sum.TaskHashes+min(1, sum.PendingQueued)+min(1, sum.LiveContainers)))
	if err := g.Wait(); err != nil {
		return Summary{}, fmt.Errorf("seed: %w", err)
	}
	o.Log.Info("seed: done", "tasks", sum.Tasks, "elapsed", time.Since(began))
	return sum, nil
}

// checkEmpty returns an ErrNotEmpty error naming every store that holds data.
func checkEmpty(ctx context.Context, t Target) error {
	var found []string
	for _, c := range []struct {
		db    string
		pool  *pgxpool.Pool
		table string
	}{
		{schemas.ControllerDB, t.Controller, schemas.TasksTable},
		{schemas.ControllerDB, t.Controller, schemas.BriefsTable},
		{schemas.DispatcherDB, t.Dispatcher, schemas.AgentContainersTable},
		{schemas.DispatcherDB, t.Dispatcher, schemas.DispatchAssignmentsTable},
	} {
		var has bool
		err := c.pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM "+pgx.Identifier{c.table}.Sanitize()+")").Scan(&has)
		if err != nil {
			return fmt.Errorf("check %s.%s: %w", c.db, c.table, err)
		}
		if has {
			found = append(found, fmt.Sprintf("%s.%s has rows", c.db, c.table))
		}
	}
	keys, _, err := t.Redis.Scan(ctx, 0, schemas.KeyPattern, 1000).Result()
	for cursor := uint64(1); err == nil && len(keys) == 0 && cursor != 0; {
		keys, cursor, err = t.Redis.Scan(ctx, cursor, schemas.KeyPattern, 1000).Result()
	}
	if err != nil {
		return fmt.Errorf("check redis: %w", err)
	}
	if len(keys) > 0 {
		found = append(found, fmt.Sprintf("redis has %s keys (e.g. %s)", schemas.KeyPattern, keys[0]))
	}
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The first object is enough; cancel stops the listing.
	if obj, ok := <-t.Objects.ListObjects(lctx, t.bucket(), minio.ListObjectsOptions{Recursive: true, MaxKeys: 1}); ok {
		if obj.Err != nil {
			return fmt.Errorf("check bucket %s: %w", t.bucket(), obj.Err)
		}
		found = append(found, fmt.Sprintf("bucket %s has objects (e.g. %s)", t.bucket(), obj.Key))
	}
	if len(found) > 0 {
		return fmt.Errorf("seed: %w: %v; seed needs empty stores", ErrNotEmpty, found)
	}
	return nil
}

// putObjects stores every object with at most parallel uploads at a time.
func putObjects(ctx context.Context, c *minio.Client, bucket string, objs []object, parallel int) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(parallel)
	for _, obj := range objs {
		if gctx.Err() != nil {
			break // an upload failed; g.Wait returns its error
		}
		g.Go(func() error {
			body := obj.body()
			if int64(len(body)) != obj.size {
				return fmt.Errorf("upload %s: body is %d bytes, planned %d", obj.key, len(body), obj.size)
			}
			// Content-MD5 lets the server reject a corrupted body; signing the
			// payload as well (SHA-256 over plain HTTP) would cost a second
			// hash per object for the same protection.
			_, err := c.PutObject(gctx, bucket, obj.key, bytes.NewReader(body), obj.size, minio.PutObjectOptions{
				ContentType:          obj.contentType,
				SendContentMd5:       true,
				DisableContentSha256: true,
				DisableMultipart:     true,
			})
			if err != nil {
				return fmt.Errorf("upload %s: %w", obj.key, err)
			}
			return nil
		})
	}
	return g.Wait()
}

func nullTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t
}

func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// writeController copies the tasks, then — once objectsStored is closed — the
// briefs rows, in one transaction, and moves the id sequence past the seeded
// ids.
func writeController(ctx context.Context, pool *pgxpool.Pool, p *plan, objectsStored <-chan struct{}) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		rows := make([][]any, len(p.tasks))
		for i := range p.tasks {
			t := &p.tasks[i]
			rows[i] = []any{
				t.id, t.title, t.payload(), t.status, schemas.BriefKey(t.id), nullString(t.container),
				t.attempt, t.progress, t.priority, t.createdAt, t.updatedAt,
				nullTime(t.dispatchedAt), nullTime(t.startedAt), nullTime(t.finishedAt),
			}
		}
		_, err := tx.CopyFrom(ctx, pgx.Identifier{schemas.TasksTable}, []string{
			"id", "title", "payload", "status", "brief_key", "container_id",
			"attempt", "progress", "priority", "created_at", "updated_at",
			"dispatched_at", "started_at", "finished_at",
		}, pgx.CopyFromRows(rows))
		if err != nil {
			return fmt.Errorf("copy %s.%s: %w", schemas.ControllerDB, schemas.TasksTable, err)
		}
		if len(p.tasks) > 0 {
			_, err = tx.Exec(ctx, "SELECT setval(pg_get_serial_sequence($1, 'id'), $2)",
				schemas.TasksTable, p.tasks[len(p.tasks)-1].id)
			if err != nil {
				return fmt.Errorf("advance %s id sequence: %w", schemas.TasksTable, err)
			}
		}

		// A briefs row promises its object exists.
		select {
		case <-objectsStored:
		case <-ctx.Done():
			return ctx.Err()
		}
		rows = rows[:0]
		for i := range p.tasks {
			t := &p.tasks[i]
			rows = append(rows, []any{t.id, schemas.BriefKey(t.id), t.briefSize, t.briefSHA256, "application/json", t.createdAt})
		}
		_, err = tx.CopyFrom(ctx, pgx.Identifier{schemas.BriefsTable},
			[]string{"task_id", "key", "size", "sha256", "content_type", "created_at"}, pgx.CopyFromRows(rows))
		if err != nil {
			return fmt.Errorf("copy %s.%s: %w", schemas.ControllerDB, schemas.BriefsTable, err)
		}
		return nil
	})
}

func writeDispatcher(ctx context.Context, pool *pgxpool.Pool, p *plan) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		rows := make([][]any, 0, len(p.containers))
		for _, c := range p.containers {
			rows = append(rows, []any{c.id, c.host, c.generation, c.status, c.startedAt, c.lastHeartbeatAt})
		}
		_, err := tx.CopyFrom(ctx, pgx.Identifier{schemas.AgentContainersTable},
			[]string{"container_id", "host", "generation", "status", "started_at", "last_heartbeat_at"},
			pgx.CopyFromRows(rows))
		if err != nil {
			return fmt.Errorf("copy %s.%s: %w", schemas.DispatcherDB, schemas.AgentContainersTable, err)
		}
		rows = make([][]any, 0, len(p.assignments))
		for _, a := range p.assignments {
			rows = append(rows, []any{a.taskID, a.container, a.attempt, a.assignedAt, nullTime(a.releasedAt)})
		}
		_, err = tx.CopyFrom(ctx, pgx.Identifier{schemas.DispatchAssignmentsTable},
			[]string{"task_id", "container_id", "attempt", "assigned_at", "released_at"},
			pgx.CopyFromRows(rows))
		if err != nil {
			return fmt.Errorf("copy %s.%s: %w", schemas.DispatcherDB, schemas.DispatchAssignmentsTable, err)
		}
		return nil
	})
}

// redisBatch is the number of commands (or list elements) per round trip.
const redisBatch = 1000

// writeRedis writes the state a running stack would have: one hash per
// non-terminal task, the pending queue in dispatch order and the live set —
// the same figures a rebuild from PostgreSQL produces (schemas/redis.md).
func writeRedis(ctx context.Context, rdb *redis.Client, p *plan) error {
	pipe := rdb.Pipeline()
	flush := func(force bool) error {
		if pipe.Len() == 0 || (!force && pipe.Len() < redisBatch) {
			return nil
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return fmt.Errorf("write redis: %w", err)
		}
		return nil
	}
	for i := range p.tasks {
		t := &p.tasks[i]
		if schemas.IsTerminal(t.status) {
			continue
		}
		pipe.HSet(ctx, schemas.TaskKey(t.id),
			schemas.TaskFieldStatus, t.status,
			schemas.TaskFieldContainer, t.container,
			schemas.TaskFieldAttempt, strconv.Itoa(int(t.attempt)),
			schemas.TaskFieldProgress, strconv.Itoa(int(t.progress)),
			schemas.TaskFieldUpdatedAt, strconv.FormatInt(t.updatedAt.UnixMilli(), 10),
		)
		if err := flush(false); err != nil {
			return err
		}
	}
	// RPUSH in order, batch after batch: the list ends up in dispatch order.
	pending := p.pendingInDispatchOrder()
	for lo := 0; lo < len(pending); lo += redisBatch {
		batch := pending[lo:min(lo+redisBatch, len(pending))]
		ids := make([]any, len(batch))
		for i, id := range batch {
			ids[i] = strconv.FormatInt(id, 10)
		}
		pipe.RPush(ctx, schemas.PendingQueueKey, ids...)
		if err := flush(false); err != nil {
			return err
		}
	}
	var live []redis.Z
	for _, c := range p.containers {
		if c.status == schemas.ContainerLive {
			live = append(live, redis.Z{Score: float64(c.lastHeartbeatAt.UnixMilli()), Member: c.id})
		}
	}
	if len(live) > 0 {
		pipe.ZAdd(ctx, schemas.LiveContainersKey, live...)
	}
	return flush(true)
}
