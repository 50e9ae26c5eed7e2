package activities

import (
	"bufio"
	"context"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/interceptor"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/worker"

	"github.com/kohakku/drflow/internal/activitytest"
	"github.com/kohakku/drflow/internal/config"
	"github.com/kohakku/drflow/internal/profile"
	"github.com/kohakku/drflow/internal/stack"
	"github.com/kohakku/drflow/internal/stack/stacktest"
	"github.com/kohakku/drflow/schemas"
)

// appStatePGPassword is configured for PostgreSQL, which trusts loopback
// connections and never asks for it: it must still appear in no error.
const appStatePGPassword = "s3cret-pg-pass/with:odd@chars"

// appStateRun runs one AppState activity in the Temporal test environment;
// onBeat, when set, sees every heartbeat.
func appStateRun[R any](t *testing.T, a *AppState, onBeat func(details ...any), fn any, args ...any) (R, error) {
	t.Helper()
	var s testsuite.WorkflowTestSuite
	env := s.NewTestActivityEnvironment()
	env.RegisterActivity(a)
	if onBeat != nil {
		env.SetWorkerOptions(worker.Options{Interceptors: []interceptor.WorkerInterceptor{activitytest.Heartbeats(onBeat)}})
	}
	var out R
	val, err := env.ExecuteActivity(fn, args...)
	if err == nil {
		require.NoError(t, val.Get(&out))
	} else {
		t.Logf("error: %v", err)
	}
	return out, err
}

// appStateErr requires a non-retryable application error of type typ whose
// text holds every want and no secret.
func appStateErr(t *testing.T, err error, typ string, want ...string) {
	t.Helper()
	require.Error(t, err)
	var ae *temporal.ApplicationError
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, typ, ae.Type(), "error type of %v", err)
	assert.True(t, ae.NonRetryable(), "non-retryable: %v", err)
	for _, w := range want {
		assert.Contains(t, err.Error(), w)
	}
	assert.NotContains(t, err.Error(), appStatePGPassword)
}

// appStateRetryable requires an error the retry policy retries.
func appStateRetryable(t *testing.T, err error, want ...string) {
	t.Helper()
	require.Error(t, err)
	var ae *temporal.ApplicationError
	require.ErrorAs(t, err, &ae)
	assert.False(t, ae.NonRetryable(), "retryable: %v", err)
	for _, w := range want {
		assert.Contains(t, err.Error(), w)
	}
	assert.NotContains(t, err.Error(), appStatePGPassword)
}

func appStateConfig(pg *stack.Postgres) config.Postgres {
	return config.Postgres{URL: pg.URL("postgres"), Password: config.Secret(appStatePGPassword)}
}

// appStateFill applies the Kohakku schemas to both (existing) databases and
// writes a handful of rows; it returns the plan they give.
func appStateFill(t *testing.T, ctx context.Context, pg *stack.Postgres) profile.RedisPlan {
	t.Helper()
	exec := func(db string, sql ...string) {
		conn, err := pgx.Connect(ctx, pg.URL(db))
		require.NoError(t, err)
		defer conn.Close(ctx)
		for _, s := range sql {
			_, err := conn.Exec(ctx, s)
			require.NoError(t, err, s)
		}
	}
	exec(schemas.ControllerDB, schemas.ControllerSQL, `INSERT INTO tasks_task
		(id, status, brief_key, container_id, attempt, progress, priority, created_at, updated_at) VALUES
		(1, 'pending',    'briefs/1/brief.json', NULL, 0,   0, 0, '2026-11-20 10:00:00Z', '2026-11-20 10:00:00.123Z'),
		(2, 'pending',    'briefs/2/brief.json', NULL, 1,   0, 5, '2026-11-20 11:00:00Z', '2026-11-20 11:00:00Z'),
		(3, 'running',    'briefs/3/brief.json', 'a1', 1,  40, 0, '2026-11-20 09:00:00Z', '2026-11-20 12:00:00Z'),
		(4, 'completed',  'briefs/4/brief.json', 'a1', 1, 100, 0, '2026-11-20 08:00:00Z', '2026-11-20 09:00:00Z'),
		(5, 'dispatched', 'briefs/5/brief.json', 'a2', 2,   0, 0, '2026-11-20 09:30:00Z', '2026-11-20 12:30:00Z'),
		(6, 'failed',     'briefs/6/brief.json', 'a3', 3,  10, 0, '2026-11-20 07:00:00Z', '2026-11-20 08:00:00Z'),
		(7, 'pending',    'briefs/7/brief.json', NULL, 0,   0, 5, '2026-11-20 11:00:00Z', '2026-11-20 11:00:00Z')`)
	exec(schemas.DispatcherDB, schemas.DispatcherSQL, `INSERT INTO agent_containers
		(container_id, host, generation, status, last_heartbeat_at) VALUES
		('a1', 'h1', 1, 'live', '2026-11-20 12:59:58Z'),
		('a2', 'h1', 2, 'live', '2026-11-20 12:59:59.5Z'),
		('a3', 'h2', 3, 'dead', '2026-11-20 08:00:00Z')`)
	return profile.RedisPlan{Pending: 3, Unfinished: 5, LiveContainers: 2, Keys: 7}
}

func TestAppStatePostgres(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	pg, rsrv := stacktest.Postgres(t), stacktest.Redis(t)
	a := &AppState{Profile: profile.Kohakku{Batch: 2}, Postgres: appStateConfig(pg), Redis: config.Redis{Addr: rsrv.Addr()}}
	rdb := redis.NewClient(&redis.Options{Addr: rsrv.Addr()})
	defer rdb.Close()
	require.NoError(t, rdb.Set(ctx, "other:app", "1", 0).Err())

	t.Run("database missing", func(t *testing.T) {
		_, err := appStateRun[profile.RedisPlan](t, a, nil, a.PlanRedisRebuild)
		appStateErr(t, err, ErrDatabaseNotFound, "database "+schemas.ControllerDB+" does not exist", "restore it first (TotalDBLoss)")
		_, err = appStateRun[profile.RebuildResult](t, a, nil, a.RebuildRedis)
		appStateErr(t, err, ErrDatabaseNotFound, schemas.ControllerDB, "restore it first")
		_, err = ObjectClassesFunc(a)(ctx, schemas.DefaultBucket)
		appStateErr(t, err, ErrDatabaseNotFound, schemas.ControllerDB, "restore it first")
	})

	require.NoError(t, pg.CreateDatabase(ctx, schemas.ControllerDB))
	require.NoError(t, pg.CreateDatabase(ctx, schemas.DispatcherDB))
	t.Run("tables missing", func(t *testing.T) {
		_, err := appStateRun[profile.RedisCheck](t, a, nil, a.VerifyRedisState)
		appStateErr(t, err, ErrTableNotFound, schemas.TasksTable, "restore it first")
	})

	want := appStateFill(t, ctx, pg)
	t.Run("plan", func(t *testing.T) {
		p, err := appStateRun[profile.RedisPlan](t, a, nil, a.PlanRedisRebuild)
		require.NoError(t, err)
		assert.Equal(t, want, p)
	})

	t.Run("rebuild heartbeats and verify", func(t *testing.T) {
		var mu sync.Mutex
		var beats []profile.RebuildProgress
		res, err := appStateRun[profile.RebuildResult](t, a, func(details ...any) {
			p, ok := details[0].(profile.RebuildProgress)
			assert.True(t, ok && len(details) == 1, "heartbeat details %#v", details)
			mu.Lock()
			beats = append(beats, p)
			mu.Unlock()
		}, a.RebuildRedis)
		require.NoError(t, err)
		assert.Equal(t, profile.RebuildResult{Plan: want, Batches: 3 + 2 + 1}, res)
		mu.Lock()
		assert.Contains(t, beats, profile.RebuildProgress{Phase: profile.PhaseTasks, Written: 5, Total: 5})
		assert.Contains(t, beats, profile.RebuildProgress{Phase: profile.PhaseQueue, Written: 2, Total: 3})
		assert.Contains(t, beats, profile.RebuildProgress{Phase: profile.PhaseContainers, Written: 2, Total: 2})
		mu.Unlock()

		queue, err := rdb.LRange(ctx, schemas.PendingQueueKey, 0, -1).Result()
		require.NoError(t, err)
		assert.Equal(t, []string{"2", "7", "1"}, queue, "priority, then age, then id")
		h, err := rdb.HGetAll(ctx, schemas.TaskKey(1)).Result()
		require.NoError(t, err)
		assert.Equal(t, map[string]string{"status": "pending", "container": "", "attempt": "0", "progress": "0",
			"updated_at": strconv.FormatInt(time.Date(2026, 11, 20, 10, 0, 0, 123e6, time.UTC).UnixMilli(), 10)}, h)
		live, err := rdb.ZRangeWithScores(ctx, schemas.LiveContainersKey, 0, -1).Result()
		require.NoError(t, err)
		assert.Equal(t, []redis.Z{
			{Member: "a1", Score: float64(time.Date(2026, 11, 20, 12, 59, 58, 0, time.UTC).UnixMilli())},
			{Member: "a2", Score: float64(time.Date(2026, 11, 20, 12, 59, 59, 5e8, time.UTC).UnixMilli())},
		}, live)
		assert.Equal(t, "1", rdb.Get(ctx, "other:app").Val())

		c, err := appStateRun[profile.RedisCheck](t, a, nil, a.VerifyRedisState)
		require.NoError(t, err)
		assert.Equal(t, profile.RedisCheck{OK: true, Expected: want, Found: want}, c)

		st, err := appStateRun[RedisStatus](t, a, nil, a.CheckRedis)
		require.NoError(t, err)
		assert.Regexp(t, `^redis 7\.`, st.Version)
		st.Version = ""
		assert.Equal(t, RedisStatus{Instance: "default", Reachable: true, AppKeys: 7, TotalKeys: 8}, st)
	})

	t.Run("verify names the problem", func(t *testing.T) {
		require.NoError(t, rdb.RPop(ctx, schemas.PendingQueueKey).Err())
		c, err := appStateRun[profile.RedisCheck](t, a, nil, a.VerifyRedisState)
		require.NoError(t, err)
		assert.False(t, c.OK)
		assert.Contains(t, c.Problems, "queue depth 2, PostgreSQL has 3 pending tasks")
		assert.Contains(t, c.Problems, "queue lacks 1 pending tasks: 1")
	})

	t.Run("object classes", func(t *testing.T) {
		classes, err := ObjectClassesFunc(a)(ctx, schemas.DefaultBucket)
		require.NoError(t, err)
		require.Len(t, classes, 2)
		assert.Equal(t, "briefs of unfinished tasks", classes[0].Name)
		for id, want := range map[int64]bool{1: true, 2: true, 3: true, 4: false, 5: true, 6: false, 7: true, 8: false} {
			assert.Equal(t, want, classes[0].Match(schemas.BriefKey(id)), "brief of task %d", id)
		}
		assert.True(t, classes[1].Match("skills/parse/SKILL.md"))
		classes, err = ObjectClassesFunc(a)(ctx, "other-bucket")
		require.NoError(t, err)
		assert.Nil(t, classes)
	})

	t.Run("postgres down is retryable", func(t *testing.T) {
		require.NoError(t, pg.Stop(ctx))
		defer func() { require.NoError(t, pg.Start(ctx)) }()
		_, err := appStateRun[profile.RedisPlan](t, a, nil, a.PlanRedisRebuild)
		appStateRetryable(t, err, "plan redis rebuild", "connect to database "+schemas.ControllerDB)
		_, err = appStateRun[profile.RebuildResult](t, a, nil, a.RebuildRedis)
		appStateRetryable(t, err, "connect to database")
		assert.Equal(t, int64(6), rdb.Exists(ctx, schemas.PendingQueueKey, schemas.LiveContainersKey,
			schemas.TaskKey(1), schemas.TaskKey(2), schemas.TaskKey(3), schemas.TaskKey(5)).Val(),
			"a rebuild that cannot read PostgreSQL deletes nothing")
	})

	t.Run("settings missing", func(t *testing.T) {
		noProfile := &AppState{Postgres: a.Postgres, Redis: a.Redis}
		_, err := appStateRun[profile.RedisPlan](t, noProfile, nil, noProfile.PlanRedisRebuild)
		appStateErr(t, err, ErrInvalidConfig, "no application profile")
		noURL := &AppState{Profile: profile.Kohakku{}, Redis: a.Redis}
		_, err = appStateRun[profile.RedisCheck](t, noURL, nil, noURL.VerifyRedisState)
		appStateErr(t, err, ErrInvalidConfig, "DRFLOW_POSTGRES_URL")
		noAddr := &AppState{Profile: profile.Kohakku{}, Postgres: a.Postgres}
		_, err = appStateRun[profile.RebuildResult](t, noAddr, nil, noAddr.RebuildRedis)
		appStateErr(t, err, ErrInvalidConfig, "DRFLOW_REDIS_ADDR")
	})
}

// appStateLoadingRedis is a fake Redis that answers every command with
// LOADING, like a server still reading its AOF.
func appStateLoadingRedis(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						return
					}
					n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "*")))
					for range n {
						hdr, err := br.ReadString('\n')
						if err != nil {
							return
						}
						size, _ := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(hdr, "$")))
						if _, err := io.CopyN(io.Discard, br, int64(size)+2); err != nil {
							return
						}
					}
					if _, err := c.Write([]byte("-LOADING Redis is loading the dataset in memory\r\n")); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func TestAppStateRedis(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	r := stacktest.Redis(t)
	k := profile.Kohakku{}
	a := &AppState{Profile: k, Redis: config.Redis{Addr: r.Addr()}, Instance: "cache"}

	t.Run("down is not an error", func(t *testing.T) {
		require.NoError(t, r.Kill())
		st, err := appStateRun[RedisStatus](t, a, nil, a.CheckRedis)
		require.NoError(t, err)
		assert.False(t, st.Reachable)
		assert.Equal(t, "cache", st.Instance)
		assert.Contains(t, st.Error, "connection refused")
	})

	t.Run("wait times out retryably", func(t *testing.T) {
		began := time.Now()
		_, err := appStateRun[RedisStatus](t, a, nil, a.WaitRedis, WaitRedisInput{Timeout: time.Second})
		appStateRetryable(t, err, "redis "+r.Addr()+" not reachable after 1s: ", "connection refused")
		assert.GreaterOrEqual(t, time.Since(began), time.Second)
		assert.Less(t, time.Since(began), 10*time.Second)
	})

	t.Run("wait until it starts", func(t *testing.T) {
		started := make(chan error, 1)
		go func() {
			time.Sleep(1500 * time.Millisecond)
			started <- r.Start(ctx)
		}()
		var mu sync.Mutex
		var beats []RedisStatus
		st, err := appStateRun[RedisStatus](t, a, func(details ...any) {
			mu.Lock()
			defer mu.Unlock()
			if s, ok := details[0].(RedisStatus); ok {
				beats = append(beats, s)
			}
		}, a.WaitRedis, WaitRedisInput{})
		require.NoError(t, <-started)
		require.NoError(t, err)
		assert.True(t, st.Reachable)
		assert.Regexp(t, `^redis \d+\.\d+`, st.Version)
		mu.Lock()
		defer mu.Unlock()
		require.GreaterOrEqual(t, len(beats), 2)
		assert.False(t, beats[0].Reachable)
		assert.True(t, beats[len(beats)-1].Reachable)
	})

	t.Run("rejected credentials are non-retryable", func(t *testing.T) {
		const password = "redis-secret-1"
		admin := redis.NewClient(&redis.Options{Addr: r.Addr()})
		defer admin.Close()
		require.NoError(t, admin.ConfigSet(ctx, "requirepass", password).Err())
		defer func() {
			c := redis.NewClient(&redis.Options{Addr: r.Addr(), Password: password})
			defer c.Close()
			require.NoError(t, c.ConfigSet(ctx, "requirepass", "").Err())
		}()
		for _, c := range []struct{ name, password, want string }{
			{"wrong password", "wrong-secret-2", "WRONGPASS"},
			{"no password", "", "NOAUTH"},
		} {
			t.Run(c.name, func(t *testing.T) {
				b := &AppState{Profile: k, Redis: config.Redis{Addr: r.Addr(), Password: config.Secret(c.password)}}
				_, err := appStateRun[RedisStatus](t, b, nil, b.CheckRedis)
				appStateErr(t, err, ErrRedisAuth, c.want, "DRFLOW_REDIS_PASSWORD")
				began := time.Now()
				_, err = appStateRun[RedisStatus](t, b, nil, b.WaitRedis, WaitRedisInput{Timeout: 30 * time.Second})
				appStateErr(t, err, ErrRedisAuth, c.want)
				assert.Less(t, time.Since(began), 10*time.Second, "no waiting for credentials to change")
				for _, secret := range []string{password, "wrong-secret-2"} {
					assert.NotContains(t, err.Error(), secret)
				}
			})
		}
		b := &AppState{Profile: k, Redis: config.Redis{Addr: r.Addr(), Password: password}}
		st, err := appStateRun[RedisStatus](t, b, nil, b.CheckRedis)
		require.NoError(t, err)
		assert.True(t, st.Reachable)
	})

	t.Run("loading is not reachable", func(t *testing.T) {
		b := &AppState{Profile: k, Redis: config.Redis{Addr: appStateLoadingRedis(t)}}
		st, err := appStateRun[RedisStatus](t, b, nil, b.CheckRedis)
		require.NoError(t, err)
		assert.False(t, st.Reachable)
		assert.Contains(t, st.Error, "LOADING")
		_, err = appStateRun[RedisStatus](t, b, nil, b.WaitRedis, WaitRedisInput{Timeout: 1500 * time.Millisecond})
		appStateRetryable(t, err, "not reachable after 1.5s: LOADING")
	})

	t.Run("bad input and settings", func(t *testing.T) {
		_, err := appStateRun[RedisStatus](t, a, nil, a.WaitRedis, WaitRedisInput{Timeout: -time.Second})
		appStateErr(t, err, ErrInvalidInput, "timeout")
		b := &AppState{Profile: k}
		_, err = appStateRun[RedisStatus](t, b, nil, b.CheckRedis)
		appStateErr(t, err, ErrInvalidConfig, "DRFLOW_REDIS_ADDR")
	})
}
