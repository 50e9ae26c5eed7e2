package profile_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/minio/minio-go/v7"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kohakku/drflow/internal/kohakku"
	"github.com/kohakku/drflow/internal/profile"
	"github.com/kohakku/drflow/internal/stack"
	"github.com/kohakku/drflow/internal/stack/stacktest"
	"github.com/kohakku/drflow/schemas"
)

var testNow = time.Date(2026, 11, 21, 2, 0, 0, 0, time.UTC)

// stackDB connects to the stack's databases, each name with suffix appended.
type stackDB struct {
	pg     *stack.Postgres
	suffix string
}

func (d stackDB) Connect(ctx context.Context, database string) (*pgx.Conn, error) {
	return pgx.Connect(ctx, d.pg.URL(database+d.suffix))
}

// failDB fails every connection: for calls that must not read PostgreSQL.
type failDB struct{}

func (failDB) Connect(context.Context, string) (*pgx.Conn, error) {
	return nil, errors.New("failDB: no connection expected")
}

func newRedis(t testing.TB, addr string) *redis.Client {
	t.Helper()
	// Generous timeouts: a loaded test machine must not fail a large rebuild.
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// dumpKohakku returns every kohakku:* key with its full value: hash fields,
// list elements in order, sorted set members with scores.
func dumpKohakku(t testing.TB, rdb *redis.Client) map[string]any {
	t.Helper()
	ctx := context.Background()
	out := map[string]any{}
	iter := rdb.Scan(ctx, 0, schemas.KeyPattern, 1000).Iterator()
	for iter.Next(ctx) {
		key := iter.Val()
		typ, err := rdb.Type(ctx, key).Result()
		require.NoError(t, err)
		switch typ {
		case "hash":
			out[key], err = rdb.HGetAll(ctx, key).Result()
		case "list":
			out[key], err = rdb.LRange(ctx, key, 0, -1).Result()
		case "zset":
			out[key], err = rdb.ZRangeWithScores(ctx, key, 0, -1).Result()
		case "string":
			out[key], err = rdb.Get(ctx, key).Result()
		default:
			t.Fatalf("dump: %s has type %s", key, typ)
		}
		require.NoError(t, err)
	}
	require.NoError(t, iter.Err())
	return out
}

// diffDumps names the keys whose values differ, for readable failures.
func diffDumps(want, got map[string]any) []string {
	var out []string
	for k, v := range want {
		g, ok := got[k]
		switch {
		case !ok:
			out = append(out, "missing "+k)
		case fmt.Sprint(g) != fmt.Sprint(v):
			out = append(out, fmt.Sprintf("%s: want %v, got %v", k, v, g))
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			out = append(out, "extra "+k)
		}
	}
	slices.Sort(out)
	if len(out) > 10 {
		out = append(out[:10], fmt.Sprintf("… %d more", len(out)-10))
	}
	return out
}

type progressLog struct {
	mu     sync.Mutex
	events []profile.RebuildProgress
}

func (p *progressLog) add(e profile.RebuildProgress) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.events = append(p.events, e)
}

func batches(n int64, size int) int { return int(math.Ceil(float64(n) / float64(size))) }

func firstID(t *testing.T, pg *stack.Postgres, where string) int64 {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pg.URL(schemas.ControllerDB))
	require.NoError(t, err)
	defer conn.Close(ctx)
	var id int64
	require.NoError(t, conn.QueryRow(ctx, "SELECT min(id) FROM "+schemas.TasksTable+" WHERE "+where).Scan(&id))
	return id
}

func TestKohakkuNameAndOtherBucket(t *testing.T) {
	k := profile.Kohakku{}
	assert.Equal(t, "kohakku", k.Name())
	assert.Equal(t, schemas.KeyPattern, k.KeyPattern())
	classes, err := k.ObjectClasses(context.Background(), failDB{}, "other-bucket")
	require.NoError(t, err)
	assert.Nil(t, classes)
	_, err = k.RedisPlan(context.Background(), failDB{})
	assert.ErrorContains(t, err, "failDB", "a connection error comes back to the caller to classify")
}

func TestKohakkuProfile(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	pg, rsrv, msrv := stacktest.Postgres(t), stacktest.Redis(t), stacktest.MinIO(t)
	pool := func(db string) *pgxpool.Pool {
		require.NoError(t, pg.CreateDatabase(ctx, db))
		p, err := pgxpool.New(ctx, pg.URL(db))
		require.NoError(t, err)
		t.Cleanup(p.Close)
		return p
	}
	rdb := newRedis(t, rsrv.Addr())
	objects, err := msrv.Client()
	require.NoError(t, err)
	tgt := kohakku.Target{
		Controller: pool(schemas.ControllerDB), Dispatcher: pool(schemas.DispatcherDB),
		Redis: rdb, Objects: objects,
	}
	// A key of another application, before and after the seed.
	require.NoError(t, rdb.Set(ctx, "app:other", "keep me", 0).Err())
	sum, err := kohakku.Seed(ctx, tgt, kohakku.SeedOptions{Tasks: 3000, Skills: 5, Containers: 7, Seed: 11, BriefSize: 256, Now: testNow})
	require.NoError(t, err)
	seeded := dumpKohakku(t, rdb)
	require.Len(t, seeded, sum.TaskHashes+2)

	const batch = 100
	k := profile.Kohakku{Batch: batch}
	db := stackDB{pg: pg}
	wantPlan := profile.RedisPlan{
		Pending:        int64(sum.PendingQueued),
		Unfinished:     int64(sum.TaskHashes),
		LiveContainers: int64(sum.LiveContainers),
		Keys:           int64(sum.TaskHashes + 2),
	}

	rebuild := func(t *testing.T) (profile.RebuildResult, *progressLog) {
		t.Helper()
		var pl progressLog
		began := time.Now()
		res, err := k.RebuildRedis(ctx, db, rdb, pl.add)
		require.NoError(t, err)
		t.Logf("rebuild of %d tasks (%d keys) in %d batches: %v", sum.Tasks, res.Plan.Keys, res.Batches, time.Since(began).Round(time.Millisecond))
		return res, &pl
	}
	requireSeeded := func(t *testing.T) {
		t.Helper()
		got := dumpKohakku(t, rdb)
		require.Empty(t, diffDumps(seeded, got))
		require.Equal(t, seeded, got)
	}

	t.Run("plan equals the seeder's figures", func(t *testing.T) {
		p, err := k.RedisPlan(ctx, db)
		require.NoError(t, err)
		assert.Equal(t, wantPlan, p)
		assert.Equal(t, int64(sum.ByStatus[schemas.StatusPending]), p.Pending)
		assert.Equal(t, int64(sum.ByStatus[schemas.StatusPending]+sum.ByStatus[schemas.StatusDispatched]+sum.ByStatus[schemas.StatusRunning]), p.Unfinished)
		assert.Equal(t, int64(sum.Containers), p.LiveContainers)
	})

	t.Run("check is OK on the seeded state", func(t *testing.T) {
		c, err := k.CheckRedis(ctx, db, rdb)
		require.NoError(t, err)
		assert.True(t, c.OK, "problems: %v", c.Problems)
		assert.Empty(t, c.Problems)
		assert.Equal(t, wantPlan, c.Expected)
		assert.Equal(t, wantPlan, c.Found)
	})

	t.Run("rebuild into an empty redis writes what the seeder wrote", func(t *testing.T) {
		require.NoError(t, rdb.FlushAll(ctx).Err())
		require.NoError(t, rdb.Set(ctx, "app:other", "keep me", 0).Err())
		res, pl := rebuild(t)
		requireSeeded(t)
		assert.Equal(t, int64(0), res.Deleted)
		assert.Equal(t, wantPlan, res.Plan)
		wantBatches := batches(wantPlan.Unfinished, batch) + batches(wantPlan.Pending, batch) + batches(wantPlan.LiveContainers, batch)
		assert.Equal(t, wantBatches, res.Batches)

		// One report per transaction, phase after phase, each ending at its total.
		var phases []string
		last := map[string]profile.RebuildProgress{}
		for _, e := range pl.events {
			if len(phases) == 0 || phases[len(phases)-1] != e.Phase {
				phases = append(phases, e.Phase)
			}
			if prev, ok := last[e.Phase]; ok {
				assert.Greater(t, e.Written, prev.Written, "progress of %s grows", e.Phase)
			}
			last[e.Phase] = e
		}
		assert.Equal(t, []string{profile.PhaseTasks, profile.PhaseQueue, profile.PhaseContainers}, phases)
		assert.Len(t, pl.events, wantBatches)
		assert.Equal(t, profile.RebuildProgress{Phase: profile.PhaseTasks, Written: wantPlan.Unfinished, Total: wantPlan.Unfinished}, last[profile.PhaseTasks])
		assert.Equal(t, profile.RebuildProgress{Phase: profile.PhaseQueue, Written: wantPlan.Pending, Total: wantPlan.Pending}, last[profile.PhaseQueue])
		assert.Equal(t, profile.RebuildProgress{Phase: profile.PhaseContainers, Written: wantPlan.LiveContainers, Total: wantPlan.LiveContainers}, last[profile.PhaseContainers])
	})

	t.Run("rebuild twice gives the same state", func(t *testing.T) {
		res, pl := rebuild(t)
		requireSeeded(t)
		assert.Equal(t, wantPlan.Keys, res.Deleted, "the second run deletes what the first wrote")
		require.NotEmpty(t, pl.events)
		assert.Equal(t, profile.PhaseDelete, pl.events[0].Phase)
		v, err := rdb.Get(ctx, "app:other").Result()
		require.NoError(t, err)
		assert.Equal(t, "keep me", v)
	})

	t.Run("rebuild repairs wrong and extra keys and leaves other keys alone", func(t *testing.T) {
		completed := firstID(t, pg, "status = 'completed'")
		unfinished := firstID(t, pg, "status = 'running'")
		queue := seeded[schemas.PendingQueueKey].([]string)
		// An extra hash of a completed task, an extra field, a swapped
		// queue head, a duplicate id, a stray kohakku key, a ghost container.
		require.NoError(t, rdb.HSet(ctx, schemas.TaskKey(completed), schemas.TaskFieldStatus, schemas.StatusRunning).Err())
		require.NoError(t, rdb.HSet(ctx, schemas.TaskKey(unfinished), "stale", "1", schemas.TaskFieldProgress, "99").Err())
		require.NoError(t, rdb.LSet(ctx, schemas.PendingQueueKey, 0, queue[1]).Err())
		require.NoError(t, rdb.LSet(ctx, schemas.PendingQueueKey, 1, queue[0]).Err())
		require.NoError(t, rdb.RPush(ctx, schemas.PendingQueueKey, queue[5]).Err())
		require.NoError(t, rdb.Set(ctx, "kohakku:stray", "x", 0).Err())
		require.NoError(t, rdb.ZAdd(ctx, schemas.LiveContainersKey, redis.Z{Score: 1, Member: "ghost-container"}).Err())
		others := map[string]string{"app:other": "keep me", "kohakku": "no colon", "kohakkux:task:1": "other prefix", "app:kohakku:task:1": "inside"}
		for key, v := range others {
			require.NoError(t, rdb.Set(ctx, key, v, 0).Err())
		}

		c, err := k.CheckRedis(ctx, db, rdb)
		require.NoError(t, err)
		assert.False(t, c.OK)
		t.Logf("problems: %q", c.Problems)
		problems := strings.Join(c.Problems, "\n")
		for _, want := range []string{
			fmt.Sprintf("queue depth %d, PostgreSQL has %d pending tasks", wantPlan.Pending+1, wantPlan.Pending),
			fmt.Sprintf("task hashes %d, PostgreSQL has %d unfinished tasks", wantPlan.Unfinished+1, wantPlan.Unfinished),
			fmt.Sprintf("live containers %d, PostgreSQL has %d live containers", wantPlan.LiveContainers+1, wantPlan.LiveContainers),
			fmt.Sprintf("queue is not in dispatch order: index 0 holds %q, PostgreSQL's dispatch order has task %s there", queue[1], queue[0]),
			"queue holds 1 duplicate entries: " + queue[5],
			"1 task hashes belong to tasks that are terminal or unknown in PostgreSQL: " + schemas.TaskKey(completed),
			"not part of the layout (schemas/redis.md): kohakku:stray",
			"holds 1 containers that are not live in PostgreSQL: ghost-container",
			fmt.Sprintf("%d keys match kohakku:*, a rebuild from PostgreSQL writes %d", wantPlan.Keys+2, wantPlan.Keys),
		} {
			assert.Contains(t, problems, want)
		}

		res, _ := rebuild(t)
		assert.Equal(t, wantPlan.Keys+2, res.Deleted)
		requireSeeded(t)
		for key, v := range others {
			got, err := rdb.Get(ctx, key).Result()
			require.NoError(t, err, key)
			assert.Equal(t, v, got, key)
		}
		c, err = k.CheckRedis(ctx, db, rdb)
		require.NoError(t, err)
		assert.True(t, c.OK, "after the rebuild: %v", c.Problems)
	})

	t.Run("check names each problem", func(t *testing.T) {
		queue := seeded[schemas.PendingQueueKey].([]string)
		n := len(queue)
		cases := []struct {
			name   string
			break_ func(t *testing.T)
			want   []string
		}{{
			name:   "truncated queue",
			break_: func(t *testing.T) { require.NoError(t, rdb.LTrim(ctx, schemas.PendingQueueKey, 0, int64(n-4)).Err()) },
			want: []string{
				fmt.Sprintf("queue depth %d, PostgreSQL has %d pending tasks", n-3, n),
				fmt.Sprintf("queue lacks 3 pending tasks: %s", strings.Join(queue[n-3:], ", ")),
			},
		}, {
			name: "missing hash",
			break_: func(t *testing.T) {
				require.NoError(t, rdb.Del(ctx, schemas.TaskKey(firstID(t, pg, "status = 'dispatched'"))).Err())
			},
			want: []string{
				fmt.Sprintf("task hashes %d, PostgreSQL has %d unfinished tasks", wantPlan.Unfinished-1, wantPlan.Unfinished),
				"1 unfinished tasks have no hash: " + schemas.TaskKey(firstID(t, pg, "status = 'dispatched'")),
			},
		}, {
			name: "duplicate in a queue of the right depth",
			break_: func(t *testing.T) {
				require.NoError(t, rdb.LSet(ctx, schemas.PendingQueueKey, int64(n-1), queue[0]).Err())
			},
			want: []string{
				fmt.Sprintf("queue is not in dispatch order: index %d holds %q", n-1, queue[0]),
				"queue holds 1 duplicate entries: " + queue[0],
				"queue lacks 1 pending tasks: " + queue[n-1],
			},
		}, {
			name:   "queue of the wrong type",
			break_: func(t *testing.T) { require.NoError(t, rdb.Set(ctx, schemas.PendingQueueKey, "x", 0).Err()) },
			want:   []string{schemas.PendingQueueKey + " is a string, not a list"},
		}, {
			name: "live set lacks a container",
			break_: func(t *testing.T) {
				members := rdb.ZRange(ctx, schemas.LiveContainersKey, 0, 0).Val()
				require.Len(t, members, 1)
				require.NoError(t, rdb.ZRem(ctx, schemas.LiveContainersKey, members[0]).Err())
			},
			want: []string{fmt.Sprintf("live containers %d, PostgreSQL has %d live containers", wantPlan.LiveContainers-1, wantPlan.LiveContainers),
				schemas.LiveContainersKey + " lacks 1 live containers"},
		}}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				c.break_(t)
				check, err := k.CheckRedis(ctx, db, rdb)
				require.NoError(t, err)
				assert.False(t, check.OK)
				t.Logf("problems: %q", check.Problems)
				problems := strings.Join(check.Problems, "\n")
				for _, w := range c.want {
					assert.Contains(t, problems, w)
				}
				rebuild(t)
				requireSeeded(t)
			})
		}
	})

	t.Run("object classes", func(t *testing.T) {
		classes, err := k.ObjectClasses(ctx, db, schemas.DefaultBucket)
		require.NoError(t, err)
		require.Len(t, classes, 2)
		briefs, skills := classes[0], classes[1]
		assert.Equal(t, "briefs of unfinished tasks", briefs.Name)
		assert.Equal(t, "skills", skills.Name)

		completed := firstID(t, pg, "status = 'completed'")
		for _, st := range []string{schemas.StatusPending, schemas.StatusDispatched, schemas.StatusRunning} {
			assert.True(t, briefs.Match(schemas.BriefKey(firstID(t, pg, "status = '"+st+"'"))), st)
		}
		for _, st := range []string{schemas.StatusCompleted, schemas.StatusFailed, schemas.StatusCancelled} {
			assert.False(t, briefs.Match(schemas.BriefKey(firstID(t, pg, "status = '"+st+"'"))), st)
		}
		assert.False(t, briefs.Match("briefs/"+strconv.FormatInt(completed, 10)+"/other.json"))
		assert.False(t, briefs.Match("x"+schemas.BriefKey(firstID(t, pg, "status = 'pending'"))))
		assert.True(t, skills.Match(schemas.SkillKey("parse", schemas.SkillFileName)))
		assert.False(t, skills.Match(schemas.BriefKey(completed)))
		assert.False(t, briefs.Match(schemas.SkillKey("parse", schemas.SkillFileName)))

		// Over the seeded bucket: one brief per unfinished task, every skill object.
		var nBriefs, nSkills, nObjects int
		for obj := range objects.ListObjects(ctx, schemas.DefaultBucket, minio.ListObjectsOptions{Recursive: true}) {
			require.NoError(t, obj.Err)
			nObjects++
			b, s := briefs.Match(obj.Key), skills.Match(obj.Key)
			assert.False(t, b && s, obj.Key)
			if b {
				nBriefs++
			}
			if s {
				nSkills++
			}
		}
		assert.Equal(t, sum.TaskHashes, nBriefs)
		assert.Equal(t, sum.Objects-sum.Briefs, nSkills)
		assert.Equal(t, sum.Objects, nObjects)
	})
}

// TestKohakkuRebuildLarge rebuilds from many tasks written straight into
// PostgreSQL (no objects) and reports the time.
func TestKohakkuRebuildLarge(t *testing.T) {
	const tasks = 100_000
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	pg, rsrv := stacktest.Postgres(t), stacktest.Redis(t)
	plan := fillLarge(t, ctx, pg, tasks)
	rdb := newRedis(t, rsrv.Addr())
	k := profile.Kohakku{}
	db := stackDB{pg: pg}

	began := time.Now()
	res, err := k.RebuildRedis(ctx, db, rdb, nil)
	require.NoError(t, err)
	elapsed := time.Since(began)
	t.Logf("rebuild of %d tasks (%d hashes, %d queued, %d containers) in %d ms, %d batches",
		tasks, res.Plan.Unfinished, res.Plan.Pending, res.Plan.LiveContainers, elapsed.Milliseconds(), res.Batches)
	assert.Equal(t, plan, res.Plan)
	n, err := rdb.DBSize(ctx).Result()
	require.NoError(t, err)
	assert.Equal(t, plan.Keys, n)

	began = time.Now()
	c, err := k.CheckRedis(ctx, db, rdb)
	require.NoError(t, err)
	t.Logf("check in %d ms", time.Since(began).Milliseconds())
	assert.True(t, c.OK, "problems: %v", c.Problems)
	// The queue head is the highest priority, then the oldest, then the lowest id.
	head, err := rdb.LRange(ctx, schemas.PendingQueueKey, 0, 2).Result()
	require.NoError(t, err)
	conn, err := pgx.Connect(ctx, pg.URL(schemas.ControllerDB))
	require.NoError(t, err)
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, schemas.PendingInDispatchOrderSQL+" LIMIT 3")
	require.NoError(t, err)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(t, err)
	assert.Equal(t, []string{strconv.FormatInt(ids[0], 10), strconv.FormatInt(ids[1], 10), strconv.FormatInt(ids[2], 10)}, head)
}

// fillLarge writes n tasks (a quarter pending, a tenth running, the rest
// completed) and 50 live plus 50 dead containers, and returns the plan.
func fillLarge(t testing.TB, ctx context.Context, pg *stack.Postgres, n int) profile.RedisPlan {
	t.Helper()
	for _, db := range []struct{ name, sql, fill string }{
		{schemas.ControllerDB, schemas.ControllerSQL, `INSERT INTO tasks_task
			(id, title, status, brief_key, container_id, attempt, progress, priority, created_at, updated_at)
			SELECT g, 'task ' || g,
				CASE WHEN g % 4 = 0 THEN 'pending' WHEN g % 10 = 1 THEN 'running' ELSE 'completed' END,
				'briefs/' || g || '/brief.json',
				CASE WHEN g % 10 = 1 THEN 'agent-' || (g % 50) END,
				g % 3, g % 101, g % 5,
				timestamptz '2026-11-14 00:00:00+00' + (g / 3) * interval '1 second',
				timestamptz '2026-11-20 00:00:00+00' + g * interval '1 millisecond'
			FROM generate_series(1, $1::int) g`},
		{schemas.DispatcherDB, schemas.DispatcherSQL, `INSERT INTO agent_containers
			(container_id, host, generation, status, last_heartbeat_at)
			SELECT 'agent-' || g, 'host', g + 1, CASE WHEN g < 50 THEN 'live' ELSE 'dead' END,
				timestamptz '2026-11-21 01:59:00+00' + g * interval '1 second'
			FROM generate_series(0, 99) g WHERE $1::int > 0`},
	} {
		require.NoError(t, pg.CreateDatabase(ctx, db.name))
		conn, err := pgx.Connect(ctx, pg.URL(db.name))
		require.NoError(t, err)
		_, err = conn.Exec(ctx, db.sql)
		require.NoError(t, err)
		_, err = conn.Exec(ctx, db.fill, n)
		require.NoError(t, err)
		require.NoError(t, conn.Close(ctx))
	}
	p := profile.RedisPlan{LiveContainers: 50}
	for g := 1; g <= n; g++ {
		switch {
		case g%4 == 0:
			p.Pending++
			p.Unfinished++
		case g%10 == 1:
			p.Unfinished++
		}
	}
	p.Keys = p.Unfinished + 2
	return p
}

// BenchmarkKohakkuRebuild measures a rebuild of 1M tasks (fill not timed):
// go test -run '^$' -bench KohakkuRebuild -benchtime 1x ./internal/profile/
func BenchmarkKohakkuRebuild(b *testing.B) {
	ctx := context.Background()
	pg, rsrv := stacktest.Postgres(b), stacktest.Redis(b)
	plan := fillLarge(b, ctx, pg, 1_000_000)
	rdb := newRedis(b, rsrv.Addr())
	k := profile.Kohakku{}
	db := stackDB{pg: pg}
	b.ResetTimer()
	for b.Loop() {
		res, err := k.RebuildRedis(ctx, db, rdb, nil)
		if err != nil {
			b.Fatal(err)
		}
		if res.Plan != plan {
			b.Fatalf("plan %+v, want %+v", res.Plan, plan)
		}
	}
	b.ReportMetric(float64(plan.Keys), "keys")
}
