package activities

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/minio/minio-go/v7"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/interceptor"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/worker"

	"github.com/kohakku/drflow/internal/activitytest"
	"github.com/kohakku/drflow/internal/config"
	"github.com/kohakku/drflow/internal/stack"
	"github.com/kohakku/drflow/internal/stack/stacktest"
	"github.com/kohakku/drflow/internal/store"
)

// ---- helpers ----

func init() {
	// Heartbeat every phase however short, so tests can check them.
	redisHeartbeatEvery = 10 * time.Millisecond
}

// redisDumpRun is one DumpRDB run in the Temporal activity test environment.
type redisDumpRun struct {
	art    Artifact
	err    error
	mu     sync.Mutex
	phases map[string]bool
	last   RDBProgress
}

func redisRunDump(t *testing.T, r *Redis, in RDBInput) *redisDumpRun {
	t.Helper()
	return redisRunDumpCtx(t, context.Background(), r, in)
}

// redisRunDumpCtx runs DumpRDB with an activity context derived from ctx.
func redisRunDumpCtx(t *testing.T, ctx context.Context, r *Redis, in RDBInput) *redisDumpRun {
	t.Helper()
	var s testsuite.WorkflowTestSuite
	env := s.NewTestActivityEnvironment()
	env.RegisterActivity(r)
	run := &redisDumpRun{phases: map[string]bool{}}
	// Every RecordHeartbeat call, before the SDK batches them (the test
	// environment sends one per 30 s).
	env.SetWorkerOptions(worker.Options{BackgroundActivityContext: ctx, Interceptors: []interceptor.WorkerInterceptor{
		activitytest.Heartbeats(func(details ...any) {
			p, ok := details[0].(RDBProgress)
			if len(details) != 1 || !ok {
				t.Errorf("heartbeat details %#v", details)
				return
			}
			run.mu.Lock()
			defer run.mu.Unlock()
			if p.RDBBytes < run.last.RDBBytes || p.StoredBytes < run.last.StoredBytes {
				t.Errorf("heartbeat went back: %+v after %+v", p, run.last)
			}
			run.phases[p.Phase] = true
			run.last = p
		}),
	}})
	v, err := env.ExecuteActivity(r.DumpRDB, in)
	if err != nil {
		run.err = err
		return run
	}
	require.NoError(t, v.Get(&run.art))
	return run
}

// redisAppError returns the activity's error as the application error
// Temporal sees, with its type and retryability.
func redisAppError(t *testing.T, err error) *temporal.ApplicationError {
	t.Helper()
	require.Error(t, err)
	var ae *temporal.ApplicationError
	require.ErrorAs(t, err, &ae)
	return ae
}

func redisConfigSet(t *testing.T, addr, password string, kv ...string) {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, Password: password})
	defer c.Close()
	for i := 0; i < len(kv); i += 2 {
		require.NoError(t, c.ConfigSet(context.Background(), kv[i], kv[i+1]).Err(), "CONFIG SET %s", kv[i])
	}
}

// redisStartServer runs a private redis-server without persistence in dir
// (loading dir/dump.rdb if there is one) and returns its address once it
// answers; it is killed when the test ends.
func redisStartServer(t *testing.T, dir string, args ...string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(t, l.Close())
	logPath := filepath.Join(dir, "redis.log")
	cmd := exec.Command("redis-server", append([]string{
		"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--daemonize", "no",
		"--dir", dir, "--dbfilename", "dump.rdb", "--appendonly", "no", "--save", "",
		"--logfile", logPath,
	}, args...)...)
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		err := c.Ping(context.Background()).Err()
		if err == nil || strings.HasPrefix(err.Error(), "NOAUTH") {
			return addr
		}
		select {
		case werr := <-exited:
			log, _ := os.ReadFile(logPath)
			t.Fatalf("redis-server exited (%v):\n%s", werr, log)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logPath)
			t.Fatalf("redis-server on %s not ready: %v\n%s", addr, err, log)
		}
	}
}

func redisS3Store(t *testing.T, m *stack.MinIO, bucket, prefix string) store.Store {
	t.Helper()
	st, err := store.NewS3(context.Background(), store.S3Config{
		Bucket: bucket, Endpoint: m.URL(), Region: m.Region(),
		AccessKeyID: m.AccessKey(), SecretAccessKey: m.SecretKey(),
		ForcePathStyle: true, Prefix: prefix,
	})
	require.NoError(t, err)
	return st
}

func redisFSStore(t *testing.T) *store.FS {
	t.Helper()
	st, err := store.NewFS(t.TempDir())
	require.NoError(t, err)
	return st
}

// redisRequireStoreEmpty checks that the store lists nothing and, for FS, that
// no temporary file was left behind either.
func redisRequireStoreEmpty(t *testing.T, st store.Store) {
	t.Helper()
	var keys []string
	require.NoError(t, st.List(context.Background(), "", func(oi store.ObjectInfo) error {
		keys = append(keys, oi.Key)
		return nil
	}))
	assert.Empty(t, keys, "objects in the store")
	if f, ok := st.(*store.FS); ok {
		var files []string
		require.NoError(t, filepath.WalkDir(f.Root(), func(path string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				files = append(files, path)
			}
			return err
		}))
		assert.Empty(t, files, "files under the FS store")
	}
}

type redisCountingReader struct {
	r io.Reader
	n int64
	h hash.Hash
}

func (c *redisCountingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	c.h.Write(p[:n])
	return n, err
}

// redisVerifyRestore checks a stored dump independently of the activity: it
// downloads it, checks size and SHA-256 against the artifact, decodes it,
// starts a fresh redis-server on it and compares it with the source: DBSIZE
// of every database, the function libraries, and DUMP (the serialized value)
// and TTL of every sampleEvery-th key.
func redisVerifyRestore(t *testing.T, st store.Store, art Artifact, srcAddr, srcPassword string, sampleEvery int) {
	t.Helper()
	ctx := context.Background()
	rc, err := st.Get(ctx, art.Key)
	require.NoError(t, err)
	defer rc.Close()
	in := &redisCountingReader{r: rc, h: sha256.New()}
	dec, err := zstd.NewReader(in)
	require.NoError(t, err)
	defer dec.Close()
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "dump.rdb"))
	require.NoError(t, err)
	raw, err := io.Copy(f, dec)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	_, err = io.Copy(io.Discard, in) // the zstd decoder may stop before the reader's EOF
	require.NoError(t, err)
	assert.Equal(t, art.Size, in.n, "stored size")
	assert.Equal(t, art.SHA256, hex.EncodeToString(in.h.Sum(nil)), "stored SHA-256")
	assert.Equal(t, art.RawSize, raw, "RDB size")

	restored := redisStartServer(t, dir)
	srcSizes := redisDBSizes(t, srcAddr, srcPassword)
	require.Equal(t, srcSizes, redisDBSizes(t, restored, ""), "DBSIZE per database")
	var total int64
	perDB := map[string]int64{}
	for db, n := range srcSizes {
		total += n
		perDB["db"+strconv.Itoa(db)] = n
	}
	assert.Equal(t, total, art.KeyCount, "KeyCount")
	assert.Equal(t, perDB, art.RowCounts, "RowCounts")

	a := redis.NewClient(&redis.Options{Addr: srcAddr, Password: srcPassword})
	defer a.Close()
	b := redis.NewClient(&redis.Options{Addr: restored})
	defer b.Close()
	libs := func(c *redis.Client) []string {
		ls, err := c.FunctionList(ctx, redis.FunctionListQuery{}).Result()
		require.NoError(t, err)
		var names []string
		for _, l := range ls {
			names = append(names, l.Name)
		}
		return names
	}
	assert.Equal(t, libs(a), libs(b), "function libraries")

	compared := 0
	for db := range srcSizes {
		a := redis.NewClient(&redis.Options{Addr: srcAddr, Password: srcPassword, DB: db})
		b := redis.NewClient(&redis.Options{Addr: restored, DB: db})
		var keys []string
		it := a.Scan(ctx, 0, "", 1000).Iterator()
		for i := 0; it.Next(ctx); i++ {
			if i%sampleEvery == 0 {
				keys = append(keys, it.Val())
			}
		}
		require.NoError(t, it.Err())
		for len(keys) > 0 {
			batch := keys[:min(len(keys), 500)]
			keys = keys[len(batch):]
			dump := func(c *redis.Client) ([]*redis.StringCmd, []*redis.DurationCmd) {
				p := c.Pipeline()
				var ds []*redis.StringCmd
				var ts []*redis.DurationCmd
				for _, k := range batch {
					ds = append(ds, p.Dump(ctx, k))
					ts = append(ts, p.PTTL(ctx, k))
				}
				_, err := p.Exec(ctx)
				require.NoError(t, err)
				return ds, ts
			}
			ad, at := dump(a)
			bd, bt := dump(b)
			for i, k := range batch {
				// DUMP is byte-equal unless the value is a hash table whose
				// order changed on reload; then compare the contents.
				if ad[i].Val() != bd[i].Val() {
					if va, vb := redisValue(t, a, k), redisValue(t, b, k); va != vb {
						t.Errorf("db %d key %q: restored value differs:\n%.300s\n%.300s", db, k, va, vb)
					}
				}
				ta, tb := at[i].Val(), bt[i].Val()
				if (ta < 0) != (tb < 0) || (ta-tb).Abs() > 10*time.Minute {
					t.Errorf("db %d key %q: TTL %v, restored %v", db, k, ta, tb)
				}
				compared++
			}
		}
		a.Close()
		b.Close()
	}
	t.Logf("restored %d keys, compared %d values and TTLs", total, compared)
}

// redisValue renders a key's type and value in a canonical form: members of
// sets and fields of hashes sorted, streams with their consumer groups.
func redisValue(t *testing.T, c *redis.Client, key string) string {
	t.Helper()
	ctx := context.Background()
	typ, err := c.Type(ctx, key).Result()
	require.NoError(t, err)
	var v any
	switch typ {
	case "string":
		v, err = c.Get(ctx, key).Result()
	case "list":
		v, err = c.LRange(ctx, key, 0, -1).Result()
	case "set":
		var m []string
		m, err = c.SMembers(ctx, key).Result()
		slices.Sort(m)
		v = m
	case "zset":
		v, err = c.ZRangeWithScores(ctx, key, 0, -1).Result()
	case "hash":
		var m map[string]string
		m, err = c.HGetAll(ctx, key).Result()
		v = m // fmt prints maps sorted by key
	case "stream":
		var entries []redis.XMessage
		if entries, err = c.XRange(ctx, key, "-", "+").Result(); err == nil {
			var groups []redis.XInfoGroup
			groups, err = c.XInfoGroups(ctx, key).Result()
			v = []any{entries, groups}
		}
	default:
		t.Fatalf("key %q: type %q", key, typ)
	}
	require.NoError(t, err)
	return fmt.Sprintf("%s %v", typ, v)
}

// ---- tests ----

func TestRedisDumpRDB(t *testing.T) {
	src := stacktest.Redis(t)
	redisFill(t, src.Addr(), "", 1000)
	m := stacktest.MinIO(t)
	require.NoError(t, m.MakeBucket(context.Background(), "backups"))

	cases := []struct {
		name   string
		store  func(t *testing.T) store.Store
		config []string
		phases []string
	}{{
		// Diskless with a delay: Redis sends keepalive newlines, then
		// "$EOF:<mark>", the RDB and the mark.
		name:   "fs diskless",
		store:  func(t *testing.T) store.Store { return redisFSStore(t) },
		config: []string{"repl-diskless-sync", "yes", "repl-diskless-sync-delay", "3"},
		phases: []string{"handshake", "snapshot", "upload"},
	}, {
		// BGSAVE to disk first, then "$<length>" and the file.
		name:   "fs disk",
		store:  func(t *testing.T) store.Store { return redisFSStore(t) },
		config: []string{"repl-diskless-sync", "no"},
		phases: []string{"handshake", "upload"},
	}, {
		name:   "s3 diskless",
		store:  func(t *testing.T) store.Store { return redisS3Store(t, m, "backups", "drflow/"+t.Name()) },
		config: []string{"repl-diskless-sync", "yes", "repl-diskless-sync-delay", "0"},
		phases: []string{"handshake", "upload"},
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			redisConfigSet(t, src.Addr(), "", c.config...)
			st := c.store(t)
			r := &Redis{Config: config.Redis{Addr: src.Addr()}, Store: st}
			start := time.Now()
			run := redisRunDump(t, r, RDBInput{SetID: "2026-11-21T02-00-00Z"})
			require.NoError(t, run.err)
			art := run.art
			t.Logf("%s: %d keys, RDB %d bytes → %d stored in %v", c.name, art.KeyCount, art.RawSize, art.Size, time.Since(start))

			assert.Equal(t, KindRedis, art.Kind)
			assert.Equal(t, "default", art.Source)
			assert.Equal(t, "sets/2026-11-21T02-00-00Z/redis/default.rdb.zst", art.Key)
			assert.Equal(t, "zstd", art.Compression)
			assert.Equal(t, "none", art.Encryption)
			assert.Regexp(t, `^redis \d+\.\d+\.\d+$`, art.SourceVersion)
			assert.Positive(t, art.Duration)
			assert.Less(t, art.Size, art.RawSize)
			for _, p := range c.phases {
				assert.True(t, run.phases[p], "heartbeat phase %q in %v", p, run.phases)
			}
			assert.Equal(t, art.RawSize, run.last.RDBBytes, "last heartbeat")
			redisVerifyRestore(t, st, art, src.Addr(), "", 1)
		})
	}
}

func TestRedisDumpRDBCredentials(t *testing.T) {
	src := stacktest.Redis(t)
	redisFill(t, src.Addr(), "", 3)
	const password = "correct horse battery staple" // spaces: commands are sent as RESP arrays
	redisConfigSet(t, src.Addr(), "", "repl-diskless-sync-delay", "0")
	admin := redis.NewClient(&redis.Options{Addr: src.Addr()})
	defer admin.Close()
	ctx := context.Background()
	for _, acl := range [][]any{
		// What the docs ask for: replication and INFO, no keys.
		{"ACL", "SETUSER", "backup", "on", ">backup-secret", "-@all", "+sync", "+psync", "+replconf", "+info"},
		{"ACL", "SETUSER", "psynconly", "on", ">psync-secret", "-@all", "+psync", "+replconf", "+info"},
		{"ACL", "SETUSER", "nosync", "on", ">nosync-secret", "+@all", "-sync", "-psync", "~*"},
	} {
		require.NoError(t, admin.Do(ctx, acl...).Err())
	}
	require.NoError(t, admin.ConfigSet(ctx, "requirepass", password).Err())
	total := int64(0)
	for _, n := range redisDBSizes(t, src.Addr(), password) {
		total += n
	}

	cases := []struct {
		name     string
		user     string
		password string
		errType  string
		errText  []string
	}{
		{name: "password", password: password},
		{name: "acl user with the documented permissions", user: "backup", password: "backup-secret"},
		{name: "acl user without SYNC falls back to PSYNC", user: "psynconly", password: "psync-secret"},
		{name: "wrong password", password: "wrong-pass-1234", errType: ErrRedisAuth, errText: []string{"WRONGPASS"}},
		{name: "no password", errType: ErrRedisAuth, errText: []string{"NOAUTH", "DRFLOW_REDIS_PASSWORD"}},
		{name: "unknown user", user: "nobody", password: password, errType: ErrRedisAuth, errText: []string{"WRONGPASS"}},
		{name: "acl user without SYNC and PSYNC", user: "nosync", password: "nosync-secret", errType: ErrRedisSyncForbidden,
			errText: []string{"NOPERM", "+sync +psync", "dump.rdb after BGSAVE", "docs/redis-backup.md"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := redisFSStore(t)
			r := &Redis{Config: config.Redis{Addr: src.Addr(), Password: config.Secret(c.password)}, User: c.user, Store: st}
			run := redisRunDump(t, r, RDBInput{SetID: "2026-11-21T02-00-00Z"})
			if c.errType == "" {
				require.NoError(t, run.err)
				assert.Equal(t, total, run.art.KeyCount)
				redisVerifyRestore(t, st, run.art, src.Addr(), password, 1)
				return
			}
			ae := redisAppError(t, run.err)
			t.Logf("%s: %v", c.name, run.err)
			assert.Equal(t, c.errType, ae.Type())
			assert.True(t, ae.NonRetryable())
			for _, s := range c.errText {
				assert.Contains(t, run.err.Error(), s)
			}
			for _, secret := range []string{password, c.password, "backup-secret", "nosync-secret"} {
				if secret != "" {
					assert.NotContains(t, run.err.Error(), secret)
				}
			}
			redisRequireStoreEmpty(t, st)
		})
	}
}

func TestRedisDumpRDBRefusals(t *testing.T) {
	t.Run("password configured, server has none", func(t *testing.T) {
		src := stacktest.Redis(t)
		st := redisFSStore(t)
		run := redisRunDump(t, &Redis{Config: config.Redis{Addr: src.Addr(), Password: "pw-nobody-asked-for"}, Store: st}, RDBInput{SetID: "s"})
		ae := redisAppError(t, run.err)
		assert.Equal(t, ErrRedisAuth, ae.Type())
		assert.True(t, ae.NonRetryable())
		assert.NotContains(t, run.err.Error(), "pw-nobody-asked-for")
		redisRequireStoreEmpty(t, st)
	})
	t.Run("SYNC and PSYNC renamed away", func(t *testing.T) {
		// A managed Redis answers like this: unknown command.
		addr := redisStartServer(t, t.TempDir(), "--rename-command", "SYNC", "", "--rename-command", "PSYNC", "")
		st := redisFSStore(t)
		run := redisRunDump(t, &Redis{Config: config.Redis{Addr: addr}, Store: st}, RDBInput{SetID: "s"})
		ae := redisAppError(t, run.err)
		t.Log(run.err)
		assert.Equal(t, ErrRedisSyncForbidden, ae.Type())
		assert.True(t, ae.NonRetryable())
		assert.Contains(t, run.err.Error(), "unknown command")
		redisRequireStoreEmpty(t, st)
	})
	t.Run("AUTH renamed away, the password is not echoed", func(t *testing.T) {
		// "unknown command 'AUTH', with args beginning with: '<password>'".
		addr := redisStartServer(t, t.TempDir(), "--rename-command", "AUTH", "")
		run := redisRunDump(t, &Redis{Config: config.Redis{Addr: addr, Password: "echoed-secret-0"}, Store: redisFSStore(t)}, RDBInput{SetID: "s"})
		ae := redisAppError(t, run.err)
		assert.Equal(t, ErrRedisAuth, ae.Type())
		assert.NotContains(t, run.err.Error(), "echoed-secret")
	})
	t.Run("connection refused is retryable", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		addr := l.Addr().String()
		require.NoError(t, l.Close())
		st := redisFSStore(t)
		run := redisRunDump(t, &Redis{Config: config.Redis{Addr: addr}, Store: st}, RDBInput{SetID: "s"})
		ae := redisAppError(t, run.err)
		assert.False(t, ae.NonRetryable())
		assert.Contains(t, run.err.Error(), "connect")
		assert.Contains(t, run.err.Error(), "refused")
		redisRequireStoreEmpty(t, st)
	})
}

func TestRedisDumpRDBInput(t *testing.T) {
	st := redisFSStore(t)
	ok := config.Redis{Addr: "127.0.0.1:1"} // never dialled: the input is checked first
	cases := []struct {
		name    string
		r       *Redis
		in      RDBInput
		errType string
		errText string
	}{
		{"no set id nor key", &Redis{Config: ok, Store: st}, RDBInput{}, ErrInvalidInput, "setId"},
		{"bad key", &Redis{Config: ok, Store: st}, RDBInput{Key: "sets//x"}, ErrInvalidInput, "invalid key"},
		{"other instance", &Redis{Config: ok, Store: st, Instance: "cache"}, RDBInput{SetID: "s", Instance: "default"}, ErrUnknownTarget, `unknown Redis instance "default" (configured: cache)`},
		{"no address", &Redis{Store: st}, RDBInput{SetID: "s"}, ErrInvalidConfig, "DRFLOW_REDIS_ADDR"},
		{"no store", &Redis{Config: ok}, RDBInput{SetID: "s"}, ErrInvalidConfig, "no backup store"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			run := redisRunDump(t, c.r, c.in)
			ae := redisAppError(t, run.err)
			assert.Equal(t, c.errType, ae.Type())
			assert.True(t, ae.NonRetryable())
			assert.Contains(t, run.err.Error(), c.errText)
		})
	}
}

// redisFillBulk writes about size bytes of 1 KiB values into db 0: four in
// five incompressible, the rest repetitive text, like a cache of serialized
// state; values are written in pipelines.
func redisFillBulk(t *testing.T, addr string, size int) int {
	t.Helper()
	ctx := context.Background()
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	rng := rand.New(rand.NewPCG(3, 4))
	noise := make([]byte, 4<<20)
	for i := range noise {
		noise[i] = byte(rng.Uint32())
	}
	const valSize = 1024
	n := size / valSize
	for i := 0; i < n; i += 2000 {
		p := c.Pipeline()
		for j := i; j < min(i+2000, n); j++ {
			var v string
			if j%5 == 4 {
				v = strings.Repeat(fmt.Sprintf(`{"task":%d,"state":"running","agent":"a-%d"}`, j, j%97), 40)[:valSize]
			} else {
				off := rng.IntN(len(noise) - valSize)
				v = string(noise[off : off+valSize])
			}
			p.Set(ctx, "blob:"+strconv.Itoa(j), v, 0)
		}
		_, err := p.Exec(ctx)
		require.NoError(t, err)
	}
	return n
}

// redisCutProxy forwards TCP connections to target and calls cut once, when more
// than after bytes have gone from the server to the client.
func redisCutProxy(t *testing.T, target string, after int64, cut func(client, server net.Conn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	var once sync.Once
	go func() {
		for {
			client, err := l.Accept()
			if err != nil {
				return
			}
			server, err := net.Dial("tcp", target)
			if err != nil {
				client.Close()
				continue
			}
			go func() {
				_, _ = io.Copy(server, client)
				server.Close()
			}()
			go func() {
				defer client.Close()
				defer server.Close()
				buf := make([]byte, 64<<10)
				var n int64
				for {
					k, err := server.Read(buf)
					if k > 0 {
						if _, werr := client.Write(buf[:k]); werr != nil {
							return
						}
						if n += int64(k); n > after {
							once.Do(func() { cut(client, server) })
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return l.Addr().String()
}

// redisRaceEnabled tells whether the test binary has the race detector, which
// slows the scan and compression down several times.
var redisRaceEnabled = func() bool {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "-race" {
				return s.Value == "true"
			}
		}
	}
	return false
}()

func redisResetConn(client, server net.Conn) {
	if tc, ok := client.(*net.TCPConn); ok {
		_ = tc.SetLinger(0) // RST instead of FIN
	}
	client.Close()
	server.Close()
}

func TestRedisDumpRDBLarge(t *testing.T) {
	src := stacktest.Redis(t)
	start := time.Now()
	n := redisFillBulk(t, src.Addr(), 100<<20)
	redisConfigSet(t, src.Addr(), "", "repl-diskless-sync-delay", "0")
	t.Logf("filled %d keys of 1 KiB in %v", n, time.Since(start))

	t.Run("throughput", func(t *testing.T) {
		for _, mode := range []string{"yes", "no"} {
			redisConfigSet(t, src.Addr(), "", "repl-diskless-sync", mode)
			st := redisFSStore(t)
			start := time.Now()
			run := redisRunDump(t, &Redis{Config: config.Redis{Addr: src.Addr()}, Store: st}, RDBInput{SetID: "large"})
			d := time.Since(start) // with the test environment's start-up
			require.NoError(t, run.err)
			art := run.art
			assert.Equal(t, int64(n), art.KeyCount)
			t.Logf("diskless %s: RDB %.1f MB → %.1f MB zstd in %v (activity %v): %.0f MB/s of RDB (race detector %v)",
				mode, float64(art.RawSize)/1e6, float64(art.Size)/1e6, d.Round(time.Millisecond), art.Duration.Round(time.Millisecond),
				float64(art.RawSize)/1e6/art.Duration.Seconds(), redisRaceEnabled)
			if cli, err := exec.LookPath("redis-cli"); err == nil {
				// The baseline: what Redis itself delivers to a plain file.
				start := time.Now()
				out, err := exec.Command(cli, "-u", "redis://"+src.Addr(), "--rdb", filepath.Join(t.TempDir(), "cli.rdb")).CombinedOutput()
				require.NoError(t, err, "%s", out)
				t.Logf("diskless %s: redis-cli --rdb to a file: %v, %.0f MB/s", mode, time.Since(start).Round(time.Millisecond),
					float64(art.RawSize)/1e6/time.Since(start).Seconds())
			}
			assert.True(t, run.phases["transfer"], "heartbeats while transferring: %v", run.phases)
			if mode == "yes" {
				redisVerifyRestore(t, st, art, src.Addr(), "", 997)
			}
		}
	})
	redisConfigSet(t, src.Addr(), "", "repl-diskless-sync", "yes")

	t.Run("connection reset mid-transfer", func(t *testing.T) {
		st := redisFSStore(t)
		addr := redisCutProxy(t, src.Addr(), 20<<20, redisResetConn)
		run := redisRunDump(t, &Redis{Config: config.Redis{Addr: addr}, Store: st}, RDBInput{SetID: "reset"})
		ae := redisAppError(t, run.err)
		t.Log(run.err)
		assert.False(t, ae.NonRetryable())
		assert.Contains(t, run.err.Error(), "transfer")
		assert.Greater(t, run.last.RDBBytes, int64(0), "heartbeats before the reset")
		redisRequireStoreEmpty(t, st)
	})

	t.Run("s3 connection reset mid-transfer", func(t *testing.T) {
		m := stacktest.MinIO(t)
		ctx := context.Background()
		require.NoError(t, m.MakeBucket(ctx, "backups"))
		st := redisS3Store(t, m, "backups", "drflow")
		// Past the first 16 MiB part of the compressed stream: a multipart
		// upload is under way and must be aborted.
		addr := redisCutProxy(t, src.Addr(), 60<<20, redisResetConn)
		run := redisRunDump(t, &Redis{Config: config.Redis{Addr: addr}, Store: st}, RDBInput{SetID: "reset"})
		ae := redisAppError(t, run.err)
		t.Log(run.err)
		assert.False(t, ae.NonRetryable())
		redisRequireStoreEmpty(t, st)
		mc, err := m.Client()
		require.NoError(t, err)
		for u := range mc.ListIncompleteUploads(ctx, "backups", "", true) {
			require.NoError(t, u.Err)
			t.Errorf("incomplete upload left behind: %s %s", u.Key, u.UploadID)
		}
		for o := range mc.ListObjects(ctx, "backups", minio.ListObjectsOptions{Recursive: true}) {
			require.NoError(t, o.Err)
			t.Errorf("object left behind: %s", o.Key)
		}
	})

	t.Run("cancelled mid-transfer", func(t *testing.T) {
		st := redisFSStore(t)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		addr := redisCutProxy(t, src.Addr(), 20<<20, func(client, server net.Conn) { cancel() })
		start := time.Now()
		run := redisRunDumpCtx(t, ctx, &Redis{Config: config.Redis{Addr: addr}, Store: st}, RDBInput{SetID: "cancelled"})
		t.Log(run.err)
		require.Error(t, run.err)
		assert.Contains(t, run.err.Error(), "context canceled")
		assert.Less(t, time.Since(start), time.Minute)
		redisRequireStoreEmpty(t, st)
	})

	t.Run("s3 bucket missing", func(t *testing.T) {
		m := stacktest.MinIO(t)
		st := redisS3Store(t, m, "no-such-bucket", "")
		run := redisRunDump(t, &Redis{Config: config.Redis{Addr: src.Addr()}, Store: st}, RDBInput{SetID: "nobucket"})
		ae := redisAppError(t, run.err)
		t.Log(run.err)
		assert.Equal(t, ErrStore, ae.Type())
		assert.True(t, ae.NonRetryable())
		assert.Contains(t, run.err.Error(), `bucket "no-such-bucket" does not exist`)
	})

	// Last: the source does not survive it.
	t.Run("redis killed mid-transfer", func(t *testing.T) {
		st := redisFSStore(t)
		var killed atomic.Bool
		addr := redisCutProxy(t, src.Addr(), 30<<20, func(client, server net.Conn) {
			killed.Store(true)
			require.NoError(t, src.Kill())
		})
		run := redisRunDump(t, &Redis{Config: config.Redis{Addr: addr}, Store: st}, RDBInput{SetID: "killed"})
		require.True(t, killed.Load())
		ae := redisAppError(t, run.err)
		t.Log(run.err)
		assert.False(t, ae.NonRetryable())
		assert.Contains(t, run.err.Error(), "connection closed by Redis")
		redisRequireStoreEmpty(t, st)
	})
}

// Trailing bytes after the RDB's checksum are not a valid transfer.
func TestRedisCompressScanRejectsTrailingData(t *testing.T) {
	rdb := rdbNew(10).op(rdbOpSelectDB).len(0).kv(rdbTypeString, "k", func(b *rdbBuilder) { b.str("v") }).eof()
	_, out, err := redisCompressScan(io.Discard, strings.NewReader(string(rdb)), nil)
	require.NoError(t, err)
	assert.Len(t, out.sha256, 64)
	_, _, err = redisCompressScan(io.Discard, strings.NewReader(string(rdb)+"x"), nil)
	require.ErrorIs(t, err, errRDBCorrupt)
	assert.ErrorContains(t, err, "data after the RDB's checksum")

	boom := errors.New("disk full")
	_, _, err = redisCompressScan(redisFailWriter{boom}, strings.NewReader(string(rdb)), nil)
	require.ErrorIs(t, err, boom)
}

type redisFailWriter struct{ err error }

func (f redisFailWriter) Write([]byte) (int, error) { return 0, f.err }
