package stack

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/minio/minio-go/v7"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// dataOps writes a marker into a server and tells whether it is there.
type dataOps struct {
	srv   Server
	write func(t *testing.T, ctx context.Context, key string)
	has   func(t *testing.T, ctx context.Context, key string) bool
	// afterWipe, when set, checks what a wiped server must have again once
	// restarted (e.g. Temporal's namespace).
	afterWipe func(t *testing.T, ctx context.Context)
}

func postgresOps(p *Postgres) dataOps {
	const db = "kohakku-controller" // a hyphen needs quoting
	return dataOps{
		srv: p,
		write: func(t *testing.T, ctx context.Context, key string) {
			require.NoError(t, p.CreateDatabase(ctx, db))
			conn, err := pgx.Connect(ctx, p.URL(db))
			require.NoError(t, err)
			defer conn.Close(ctx)
			_, err = conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS markers (key text PRIMARY KEY)`)
			require.NoError(t, err)
			_, err = conn.Exec(ctx, `INSERT INTO markers (key) VALUES ($1)`, key)
			require.NoError(t, err)
		},
		has: func(t *testing.T, ctx context.Context, key string) bool {
			conn, err := pgx.Connect(ctx, p.URL(db))
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) && pgErr.Code == "3D000" { // invalid_catalog_name
				return false
			}
			require.NoError(t, err)
			defer conn.Close(ctx)
			var n int
			require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM markers WHERE key = $1`, key).Scan(&n))
			return n == 1
		},
	}
}

func redisOps(r *Redis) dataOps {
	client := func(t *testing.T) *redis.Client {
		c := redis.NewClient(&redis.Options{Addr: r.Addr()})
		t.Cleanup(func() { c.Close() })
		return c
	}
	return dataOps{
		srv: r,
		write: func(t *testing.T, ctx context.Context, key string) {
			require.NoError(t, client(t).Set(ctx, "marker:"+key, "v", 0).Err())
		},
		has: func(t *testing.T, ctx context.Context, key string) bool {
			n, err := client(t).Exists(ctx, "marker:"+key).Result()
			require.NoError(t, err)
			return n == 1
		},
	}
}

func minioOps(m *MinIO) dataOps {
	const bucket = "kohakku"
	return dataOps{
		srv: m,
		write: func(t *testing.T, ctx context.Context, key string) {
			require.NoError(t, m.MakeBucket(ctx, bucket))
			c, err := m.Client()
			require.NoError(t, err)
			body := []byte(`{"key":"` + key + `"}`)
			_, err = c.PutObject(ctx, bucket, "briefs/"+key+".json", bytes.NewReader(body), int64(len(body)), minio.PutObjectOptions{})
			require.NoError(t, err)
		},
		has: func(t *testing.T, ctx context.Context, key string) bool {
			c, err := m.Client()
			require.NoError(t, err)
			_, err = c.StatObject(ctx, bucket, "briefs/"+key+".json", minio.StatObjectOptions{})
			switch minio.ToErrorResponse(err).Code {
			case "NoSuchBucket", "NoSuchKey":
				return false
			}
			require.NoError(t, err)
			return true
		},
	}
}

func TestStack(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	began := time.Now()
	s, err := Start(ctx, Options{Logf: t.Logf, Temporal: true})
	require.NoError(t, err)
	t.Logf("whole stack started in %s", time.Since(began).Round(time.Millisecond))
	closed := false
	t.Cleanup(func() {
		if !closed {
			assert.NoError(t, s.Close())
		}
	})

	require.Len(t, s.Servers(), 5)
	for _, srv := range s.Servers() {
		require.True(t, srv.Running(), srv.Name())
		require.FileExists(t, srv.LogPath())
	}
	assert.Equal(t, "minio", s.MinIO.Name())
	assert.Equal(t, "backup", s.Backup.Name())
	assert.NotEqual(t, s.MinIO.Endpoint(), s.Backup.Endpoint())
	assert.NotEqual(t, s.MinIO.AccessKey(), s.Backup.AccessKey())
	assert.Equal(t, "postgres://drflow@127.0.0.1:"+strconv.Itoa(s.Postgres.Port())+"/x?sslmode=disable", s.Postgres.URL("x"))
	assert.Equal(t, "temporal", s.Temporal.Name())
	temporalAddr, temporalUI := s.Temporal.GRPCAddr(), s.Temporal.UIURL()

	t.Run("servers", func(t *testing.T) {
		for _, ops := range []dataOps{postgresOps(s.Postgres), redisOps(s.Redis), minioOps(s.MinIO), minioOps(s.Backup), temporalOps(s.Temporal)} {
			t.Run(ops.srv.Name(), func(t *testing.T) {
				t.Parallel()
				testServerLifecycle(t, ctx, ops)
			})
		}
	})

	t.Run("temporal keeps its ports", func(t *testing.T) {
		// After stop, kill and wipe, the restarted process holds the same ports.
		assert.Equal(t, temporalAddr, s.Temporal.GRPCAddr())
		assert.Equal(t, temporalUI, s.Temporal.UIURL())
		assert.NoError(t, listensOn(s.Temporal.pid(), s.Temporal.grpcPort))
		assert.NoError(t, listensOn(s.Temporal.pid(), s.Temporal.uiPort))
	})

	t.Run("redis AOF layout", func(t *testing.T) {
		assert.FileExists(t, filepath.Join(s.Redis.AOFDir(), "appendonly.aof.manifest"))
		assert.Equal(t, s.Redis.Dir(), filepath.Dir(s.Redis.AOFDir()))
	})

	t.Run("close", func(t *testing.T) {
		var pids []int
		for _, srv := range s.Servers() {
			pid := srv.(interface{ pid() int }).pid()
			require.NotZero(t, pid, srv.Name())
			pids = append(pids, processTree(pid)...)
		}
		require.GreaterOrEqual(t, len(pids), 5, "postgres has backends besides the postmaster")

		began := time.Now()
		closed = true
		require.NoError(t, s.Close())
		t.Logf("stack closed in %s", time.Since(began).Round(time.Millisecond))

		for _, pid := range pids {
			assert.False(t, processRuns(pid), "process %d still alive after Close", pid)
		}
		assert.NoDirExists(t, s.Dir)
		for _, srv := range s.Servers() {
			assert.False(t, srv.Running(), srv.Name())
		}
		assert.NoError(t, s.Close(), "second Close")
	})
}

// testServerLifecycle checks that Stop and Kill keep data and Wipe drops it.
func testServerLifecycle(t *testing.T, ctx context.Context, ops dataOps) {
	srv := ops.srv
	restart := func(t *testing.T) {
		t.Helper()
		require.False(t, srv.Running())
		began := time.Now()
		require.NoError(t, srv.Start(ctx))
		t.Logf("%s restarted in %s", srv.Name(), time.Since(began).Round(time.Millisecond))
		require.True(t, srv.Running())
	}

	ops.write(t, ctx, "first")
	require.True(t, ops.has(t, ctx, "first"))
	require.False(t, ops.has(t, ctx, "never-written"))

	// Stop + Start keeps the data.
	began := time.Now()
	require.NoError(t, srv.Stop(ctx))
	t.Logf("%s stopped in %s", srv.Name(), time.Since(began).Round(time.Millisecond))
	require.NoError(t, srv.Stop(ctx), "Stop on a stopped server")
	restart(t)
	require.NoError(t, srv.Start(ctx), "Start on a running server")
	assert.True(t, ops.has(t, ctx, "first"), "after stop+start")

	// Kill + Start keeps the data, including the last acknowledged write.
	ops.write(t, ctx, "before-kill")
	require.NoError(t, srv.Kill())
	require.NoError(t, srv.Kill(), "Kill on a killed server")
	restart(t)
	assert.True(t, ops.has(t, ctx, "first"), "after kill+start")
	assert.True(t, ops.has(t, ctx, "before-kill"), "write just before kill")

	// Wipe (of a running server) + Start gives an empty server.
	require.NoError(t, srv.Wipe())
	require.False(t, srv.Running())
	restart(t)
	assert.False(t, ops.has(t, ctx, "first"), "after wipe+start")
	if ops.afterWipe != nil {
		ops.afterWipe(t, ctx)
	}
	ops.write(t, ctx, "after-wipe")
	assert.True(t, ops.has(t, ctx, "after-wipe"))
}

func TestRedisCorruptAOFFailsStart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	r, err := StartRedis(ctx, dir)
	require.NoError(t, err)
	defer r.Close()

	ops := redisOps(r)
	ops.write(t, ctx, "x")
	require.NoError(t, r.Stop(ctx))

	// Redis loads a truncated tail by default (aof-load-truncated yes), but
	// refuses an AOF with garbage before its commands.
	incr, err := filepath.Glob(filepath.Join(r.AOFDir(), "*.incr.aof"))
	require.NoError(t, err)
	require.Len(t, incr, 1)
	b, err := os.ReadFile(incr[0])
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(incr[0], append([]byte("garbage\r\n"), b...), 0o644))

	err = r.Start(ctx)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "tail of "+r.LogPath())
	assert.False(t, r.Running())

	// Wipe recovers.
	require.NoError(t, r.Wipe())
	require.NoError(t, r.Start(ctx))
	assert.False(t, ops.has(t, ctx, "x"))
}

func TestPostgresPortRaceRetries(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := StartPostgres(ctx, t.TempDir())
	require.NoError(t, err)
	defer func() { assert.NoError(t, p.Close()) }()

	// A second cluster told to use the first one's port fails with
	// "address already in use", which StartPostgres treats as a lost race.
	q := &Postgres{dir: filepath.Join(t.TempDir(), "postgres"), bin: p.bin, cred: p.cred, port: p.port}
	q.dataDir = filepath.Join(q.dir, "data")
	q.logPath = filepath.Join(q.dir, "postgres.log")
	require.NoError(t, os.MkdirAll(q.dir, 0o700))
	if q.cred != nil {
		require.NoError(t, makeReachable(q.dir, q.cred))
	}
	require.NoError(t, q.setupSocketDir())
	err = q.Start(ctx)
	require.Error(t, err)
	assert.True(t, addrInUse(err), "want address in use, got %v", err)
	assert.NoError(t, q.Close())
}

// processTree returns pid and all its live descendants.
func processTree(pid int) []int { return append([]int{pid}, descendantsOf(pid)...) }

func TestPostgresKillThenCloseRemovesSharedMemory(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := StartPostgres(ctx, t.TempDir())
	require.NoError(t, err)
	defer p.Close()

	b, err := os.ReadFile(filepath.Join(p.DataDir(), "postmaster.pid"))
	require.NoError(t, err)
	lines := strings.Split(string(b), "\n")
	require.Greater(t, len(lines), 7)
	fields := strings.Fields(lines[6]) // "<shm key> <shm id>"
	require.Len(t, fields, 2)
	id, err := strconv.Atoi(fields[1])
	require.NoError(t, err)

	require.NoError(t, p.Kill())
	var ds unix.SysvShmDesc
	_, err = unix.SysvShmCtl(id, unix.IPC_STAT, &ds)
	require.NoError(t, err, "a killed postmaster leaves its segment")

	require.NoError(t, p.Close())
	_, err = unix.SysvShmCtl(id, unix.IPC_STAT, &ds)
	assert.ErrorIs(t, err, unix.EINVAL, "Close removes the segment")
}

func TestLockFileSerializes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	path := filepath.Join(t.TempDir(), "lock")
	unlock, err := lockFile(ctx, path, t.Logf)
	require.NoError(t, err)

	short, cancelShort := context.WithTimeout(ctx, 700*time.Millisecond)
	defer cancelShort()
	_, err = lockFile(short, path, t.Logf)
	require.ErrorIs(t, err, context.DeadlineExceeded, "second holder waits")

	unlock()
	unlock2, err := lockFile(ctx, path, t.Logf)
	require.NoError(t, err)
	unlock2()
}

func TestMissingBinaryError(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := StartRedis(context.Background(), t.TempDir())
	var missing *MissingBinaryError
	require.ErrorAs(t, err, &missing)
	assert.Contains(t, err.Error(), "install Redis")
}

func TestStartFailureLeavesNothing(t *testing.T) {
	// Without PATH neither PostgreSQL nor redis-server is found; MinIO (from
	// <repo root>/bin, found earlier by TestStack or installed now) may start
	// and must be stopped again.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	_, err := MinIOBinary(ctx, t.Logf)
	require.NoError(t, err)
	t.Setenv("PATH", t.TempDir())
	dir := filepath.Join(t.TempDir(), "stack")

	_, err = Start(ctx, Options{Dir: dir})
	var missing *MissingBinaryError
	require.ErrorAs(t, err, &missing)

	for _, pid := range processesMentioning(t, dir) {
		assert.False(t, processRuns(pid), "process %d still runs", pid)
	}
}

// processesMentioning returns the processes whose command line contains s.
func processesMentioning(t *testing.T, s string) []int {
	entries, err := os.ReadDir("/proc")
	require.NoError(t, err)
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline"); err == nil && bytes.Contains(b, []byte(s)) {
			out = append(out, pid)
		}
	}
	return out
}
