package activities

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/interceptor"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/worker"

	"github.com/kohakku/drflow/internal/activitytest"
	"github.com/kohakku/drflow/internal/config"
	"github.com/kohakku/drflow/internal/stack/stacktest"
	"github.com/kohakku/drflow/internal/store"
)

func init() {
	// Heartbeat every phase however short, so tests can see them.
	verifyHeartbeatEvery = 10 * time.Millisecond
	scratchPoll = 5 * time.Millisecond
}

// verifyRDBRun is one VerifyRDB run in the Temporal activity test
// environment, with every heartbeat it recorded.
type verifyRDBRun struct {
	chk   RDBCheck
	err   error
	took  time.Duration
	mu    sync.Mutex
	beats []verifyRDBBeat
}

type verifyRDBBeat struct {
	at time.Time
	p  VerifyRDBProgress
}

// scratch returns the scratch server the heartbeats named (the last one).
func (run *verifyRDBRun) scratch() (addr string, pid int) {
	run.mu.Lock()
	defer run.mu.Unlock()
	for _, b := range run.beats {
		if b.p.ScratchPID != 0 {
			addr, pid = b.p.ScratchAddr, b.p.ScratchPID
		}
	}
	return addr, pid
}

// phaseStart is when the first heartbeat of phase was recorded.
func (run *verifyRDBRun) phaseStart(phase string) time.Time {
	run.mu.Lock()
	defer run.mu.Unlock()
	for _, b := range run.beats {
		if b.p.Phase == phase {
			return b.at
		}
	}
	return time.Time{}
}

func (run *verifyRDBRun) phases() map[string]bool {
	run.mu.Lock()
	defer run.mu.Unlock()
	seen := map[string]bool{}
	for _, b := range run.beats {
		seen[b.p.Phase] = true
		if b.p.Loading {
			seen["loading"] = true
		}
	}
	return seen
}

// verifyRunRDB runs VerifyRDB with an activity context derived from ctx;
// onBeat, when not nil, sees every heartbeat as it is recorded.
func verifyRunRDB(t *testing.T, ctx context.Context, r *Redis, in VerifyRDBInput, onBeat func(VerifyRDBProgress)) *verifyRDBRun {
	t.Helper()
	var s testsuite.WorkflowTestSuite
	env := s.NewTestActivityEnvironment()
	env.RegisterActivity(r)
	run := &verifyRDBRun{}
	env.SetWorkerOptions(worker.Options{BackgroundActivityContext: ctx, Interceptors: []interceptor.WorkerInterceptor{
		activitytest.Heartbeats(func(details ...any) {
			p, ok := details[0].(VerifyRDBProgress)
			if len(details) != 1 || !ok {
				t.Errorf("heartbeat details %#v", details)
				return
			}
			run.mu.Lock()
			if n := len(run.beats); n > 0 {
				last := run.beats[n-1].p
				if p.StoredBytes < last.StoredBytes || p.RDBBytes < last.RDBBytes {
					t.Errorf("heartbeat went back: %+v after %+v", p, last)
				}
			}
			run.beats = append(run.beats, verifyRDBBeat{time.Now(), p})
			run.mu.Unlock()
			if onBeat != nil {
				onBeat(p)
			}
		}),
	}})
	start := time.Now()
	v, err := env.ExecuteActivity(r.VerifyRDB, in)
	run.took = time.Since(start)
	if err != nil {
		run.err = err
		return run
	}
	require.NoError(t, v.Get(&run.chk))
	return run
}

// verifyTempDir points TMPDIR at a fresh directory for the rest of the test,
// so that the test can see what VerifyRDB leaves behind there.
func verifyTempDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	t.Setenv("TMPDIR", dir)
	return dir
}

// verifyRequireClean checks that nothing VerifyRDB made is left: the
// temporary directory is empty, no process runs with it on its command line,
// and the scratch server named by addr and pid (when there was one) is gone:
// its port refuses connections and its process is reaped.
func verifyRequireClean(t *testing.T, tmp, addr string, pid int) {
	t.Helper()
	entries, err := os.ReadDir(tmp)
	require.NoError(t, err)
	assert.Empty(t, entries, "left in TMPDIR")
	procs, err := filepath.Glob("/proc/[0-9]*/cmdline")
	require.NoError(t, err)
	for _, p := range procs {
		cmdline, err := os.ReadFile(p)
		if err == nil && bytes.Contains(cmdline, []byte(tmp)) {
			t.Errorf("process still running in TMPDIR: %s: %q", p, cmdline)
		}
	}
	if pid == 0 {
		return
	}
	// Not the port: once freed, a server of a test package running in parallel may take it.
	_ = addr
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		// Reaped, unless the pid was reused: then it is not a redis-server of ours.
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		assert.NotContains(t, string(cmdline), tmp, "scratch redis-server %d still running", pid)
	}
}

// verifyRecompress decompresses a stored RDB artifact, lets change edit the
// RDB, and stores the result recompressed under key, returning its artifact
// (size and SHA-256 of the new object, the rest as art): a backup whose
// stored bytes match their manifest but whose RDB does not.
func verifyRecompress(t *testing.T, st store.Store, art Artifact, key string, change func(rdb []byte)) Artifact {
	t.Helper()
	ctx := context.Background()
	rc, err := st.Get(ctx, art.Key)
	require.NoError(t, err)
	defer rc.Close()
	dec, err := zstd.NewReader(rc)
	require.NoError(t, err)
	defer dec.Close()
	rdb, err := io.ReadAll(dec)
	require.NoError(t, err)
	change(rdb)
	enc, err := zstd.NewWriter(nil)
	require.NoError(t, err)
	stored := enc.EncodeAll(rdb, nil)
	_, err = st.Put(ctx, key, bytes.NewReader(stored), store.PutOptions{})
	require.NoError(t, err)
	sum := sha256.Sum256(stored)
	art.Key, art.Size, art.SHA256 = key, int64(len(stored)), hex.EncodeToString(sum[:])
	return art
}

// verifyRewrite stores the artifact's bytes, changed by change, under key.
func verifyRewrite(t *testing.T, st store.Store, art Artifact, key string, change func([]byte) []byte) Artifact {
	t.Helper()
	ctx := context.Background()
	rc, err := st.Get(ctx, art.Key)
	require.NoError(t, err)
	b, err := io.ReadAll(rc)
	rc.Close()
	require.NoError(t, err)
	b = change(b)
	_, err = st.Put(ctx, key, bytes.NewReader(b), store.PutOptions{})
	require.NoError(t, err)
	art.Key = key
	return art
}

func TestVerifyRDB(t *testing.T) {
	ctx := context.Background()
	src := stacktest.Redis(t)
	redisFill(t, src.Addr(), "", 100)
	redisConfigSet(t, src.Addr(), "", "repl-diskless-sync-delay", "0")
	m := stacktest.MinIO(t)
	require.NoError(t, m.MakeBucket(ctx, "backups"))
	const set = "2026-11-21T02-00-00Z"
	stores := map[string]store.Store{
		"fs": redisFSStore(t),
		"s3": redisS3Store(t, m, "backups", "drflow"),
	}
	arts := map[string]Artifact{}
	for name, st := range stores {
		run := redisRunDump(t, &Redis{Config: config.Redis{Addr: src.Addr()}, Store: st}, RDBInput{SetID: set})
		require.NoError(t, run.err)
		arts[name] = run.art
	}
	total := arts["fs"].KeyCount
	require.Positive(t, total)
	require.Len(t, arts["fs"].RowCounts, 2, "db0 and db3")

	for _, name := range []string{"fs", "s3"} {
		t.Run("good "+name, func(t *testing.T) {
			tmp := verifyTempDir(t)
			r := &Redis{Store: stores[name]}
			run := verifyRunRDB(t, ctx, r, VerifyRDBInput{SetID: set, Artifact: arts[name], Scratch: true}, nil)
			require.NoError(t, run.err)
			chk := run.chk
			t.Logf("%+v", chk)
			assert.True(t, chk.Passed, "problems: %v", chk.Problems)
			assert.Empty(t, chk.Problems)
			assert.Equal(t, "default", chk.Instance)
			assert.Equal(t, arts[name].Key, chk.Key)
			assert.True(t, chk.ChecksumOK)
			assert.Equal(t, total, chk.ParsedKeys)
			assert.True(t, chk.ScratchLoaded)
			assert.Equal(t, total, chk.LoadedKeys)
			assert.Empty(t, chk.Note)
			assert.Positive(t, chk.RTO)
			phases := run.phases()
			assert.True(t, phases["download"] && phases["load"] && phases["stop"], "heartbeat phases %v", phases)
			addr, pid := run.scratch()
			require.NotZero(t, pid, "the heartbeats name the scratch server")
			assert.Regexp(t, `^127\.0\.0\.1:\d+$`, addr)
			verifyRequireClean(t, tmp, addr, pid)
		})
	}

	t.Run("structure only", func(t *testing.T) {
		tmp := verifyTempDir(t)
		run := verifyRunRDB(t, ctx, &Redis{Store: stores["fs"]}, VerifyRDBInput{SetID: set, Artifact: arts["fs"]}, nil)
		require.NoError(t, run.err)
		assert.True(t, run.chk.Passed, "problems: %v", run.chk.Problems)
		assert.True(t, run.chk.ChecksumOK)
		assert.Equal(t, total, run.chk.ParsedKeys)
		assert.False(t, run.chk.ScratchLoaded)
		assert.Contains(t, run.chk.Note, "not requested")
		verifyRequireClean(t, tmp, "", 0)
	})

	t.Run("redis-server not on PATH", func(t *testing.T) {
		tmp := verifyTempDir(t)
		t.Setenv("PATH", t.TempDir())
		run := verifyRunRDB(t, ctx, &Redis{Store: stores["s3"]}, VerifyRDBInput{SetID: set, Artifact: arts["s3"], Scratch: true}, nil)
		require.NoError(t, run.err)
		chk := run.chk
		assert.True(t, chk.Passed, "problems: %v", chk.Problems)
		assert.True(t, chk.ChecksumOK)
		assert.Equal(t, total, chk.ParsedKeys)
		assert.False(t, chk.ScratchLoaded)
		assert.Zero(t, chk.LoadedKeys)
		assert.Equal(t, "redis-server not on PATH: checked the RDB structure only", chk.Note)
		verifyRequireClean(t, tmp, "", 0)
	})

	// Findings: each is a result with Passed false, not an error.
	findings := []struct {
		name  string
		store string
		art   func(t *testing.T, st store.Store, art Artifact) Artifact
		// want are substrings of the problems, in order, one problem each.
		want     func(art Artifact) []string
		problems int  // how many; 0: len(want)
		checksum bool // ChecksumOK
		loaded   bool // ScratchLoaded
	}{{
		name:  "flipped byte in the stored object",
		store: "s3",
		art: func(t *testing.T, st store.Store, art Artifact) Artifact {
			return verifyRewrite(t, st, art, RedisKey(set, "flipped"), func(b []byte) []byte {
				b[len(b)/2] ^= 0x10
				return b
			})
		},
		want: func(art Artifact) []string {
			// Then the decoder or the RDB walk stops, whichever sees the
			// damage first (the zstd frame checksum comes at its end).
			return []string{
				art.Key + ": checksum mismatch: sha256 ",
				" in the store, " + art.SHA256 + " in the manifest",
			}
		},
		problems: 2,
	}, {
		name:  "truncated stored object",
		store: "fs",
		art: func(t *testing.T, st store.Store, art Artifact) Artifact {
			return verifyRewrite(t, st, art, RedisKey(set, "truncated"), func(b []byte) []byte { return b[:len(b)/2] })
		},
		want: func(art Artifact) []string {
			return []string{
				fmt.Sprintf("%s: size mismatch: %d bytes in the store, %d in the manifest", art.Key, art.Size/2, art.Size),
				art.Key + ": checksum mismatch: sha256 ",
				art.Key + ": cannot decompress (zstd) after ",
			}
		},
	}, {
		// The stored bytes match their manifest, the RDB inside does not
		// match its own CRC-64: corrupted before it was compressed.
		name:  "RDB checksum mismatch",
		store: "fs",
		art: func(t *testing.T, st store.Store, art Artifact) Artifact {
			return verifyRecompress(t, st, art, RedisKey(set, "crc"), func(rdb []byte) {
				i := bytes.Index(rdb, []byte("lorem ipsum")) // inside a value: the walk goes on
				require.Positive(t, i)
				rdb[i] = 'L'
			})
		},
		want: func(art Artifact) []string {
			return []string{art.Key + ": corrupt RDB at byte ", "checksum mismatch: file says "}
		},
		problems: 1,
	}, {
		name:  "key count differs from the manifest",
		store: "fs",
		art: func(t *testing.T, st store.Store, art Artifact) Artifact {
			art.KeyCount++
			return art
		},
		want: func(art Artifact) []string {
			return []string{
				fmt.Sprintf("%s: key count mismatch: %d keys in the RDB, %d in the manifest", art.Key, art.KeyCount-1, art.KeyCount),
				fmt.Sprintf("%s: key count mismatch: the scratch redis-server loaded %d keys, %d in the manifest", art.Key, art.KeyCount-1, art.KeyCount),
			}
		},
		checksum: true,
		loaded:   true,
	}, {
		name:  "database key count differs from the manifest",
		store: "s3",
		art: func(t *testing.T, st store.Store, art Artifact) Artifact {
			art.RowCounts = map[string]int64{"db0": art.RowCounts["db0"], "db3": art.RowCounts["db3"] - 1}
			return art
		},
		want: func(art Artifact) []string {
			return []string{fmt.Sprintf("%s: db3 key count mismatch: %d keys in the RDB, %d in the manifest", art.Key, art.RowCounts["db3"]+1, art.RowCounts["db3"])}
		},
		checksum: true,
		loaded:   true,
	}}
	for _, c := range findings {
		t.Run(c.name, func(t *testing.T) {
			tmp := verifyTempDir(t)
			st := stores[c.store]
			art := c.art(t, st, arts[c.store])
			run := verifyRunRDB(t, ctx, &Redis{Store: st}, VerifyRDBInput{SetID: set, Artifact: art, Scratch: true}, nil)
			require.NoError(t, run.err, "a finding is not an error")
			chk := run.chk
			for _, p := range chk.Problems {
				t.Log(p)
			}
			assert.False(t, chk.Passed)
			assert.Equal(t, c.checksum, chk.ChecksumOK, "ChecksumOK")
			assert.Equal(t, c.loaded, chk.ScratchLoaded, "ScratchLoaded")
			want := c.want(art)
			if c.problems == 0 {
				c.problems = len(want)
			}
			assert.Len(t, chk.Problems, c.problems)
			all := strings.Join(chk.Problems, "\n")
			for _, w := range want {
				assert.Contains(t, all, w)
			}
			for _, p := range chk.Problems {
				assert.True(t, strings.HasPrefix(p, art.Key+": "), "problem names the key: %s", p)
			}
			if c.loaded {
				assert.Equal(t, total, chk.LoadedKeys)
			} else {
				assert.Equal(t, "not loaded into a scratch redis-server: the RDB failed the structure check", chk.Note)
			}
			addr, pid := run.scratch()
			assert.Equal(t, c.loaded, pid != 0, "scratch server started")
			verifyRequireClean(t, tmp, addr, pid)
		})
	}

	// RDB files that redis-server judges differently from the manifest.
	t.Run("hand-built", func(t *testing.T) {
		str := func(b *rdbBuilder) { b.str("v") }
		past := uint64(time.Now().Add(-time.Hour).UnixMilli())
		cases := []struct {
			name    string
			rdb     []byte
			keys    int64
			passed  bool
			loaded  int64
			problem string
			note    string
		}{{
			// Keys whose TTL has passed are in the RDB and its count; Redis
			// drops them as it loads: explained, not a problem.
			name: "expired keys",
			rdb: rdbNew(10).op(rdbOpSelectDB).len(0).
				kv(rdbTypeString, "live", str).
				op(rdbOpExpireMS).raw(binary.LittleEndian.AppendUint64(nil, past)...).kv(rdbTypeString, "gone1", str).
				op(rdbOpExpireMS).raw(binary.LittleEndian.AppendUint64(nil, past)...).kv(rdbTypeString, "gone2", str).
				eof(),
			keys:   3,
			passed: true,
			loaded: 1,
			note:   "2 keys had passed their TTL: redis-server dropped 2 while loading and expired 0 since; they are counted as loaded",
		}, {
			// drflow reads RDB 12 (Redis 7.4); the worker's redis-server
			// 7.0 does not: the drill fails and says why.
			name:    "format newer than the scratch redis-server",
			rdb:     rdbNew(12).op(rdbOpSelectDB).len(0).kv(rdbTypeString, "k", str).eof(),
			keys:    1,
			problem: "the scratch redis-server could not load the RDB: redis-server exited (exit status 1): ",
			note:    "Can't handle RDB format version 12",
		}}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				tmp := verifyTempDir(t)
				st := stores["fs"]
				enc, err := zstd.NewWriter(nil)
				require.NoError(t, err)
				stored := enc.EncodeAll(c.rdb, nil)
				key := RedisKey(set, strings.ReplaceAll(c.name, " ", "-"))
				_, err = st.Put(ctx, key, bytes.NewReader(stored), store.PutOptions{})
				require.NoError(t, err)
				sum := sha256.Sum256(stored)
				art := Artifact{Kind: KindRedis, Source: "default", Key: key, Size: int64(len(stored)), RawSize: int64(len(c.rdb)),
					SHA256: hex.EncodeToString(sum[:]), Compression: CompressionZstd, Encryption: EncryptionNone,
					KeyCount: c.keys, RowCounts: map[string]int64{"db0": c.keys}}
				run := verifyRunRDB(t, ctx, &Redis{Store: st}, VerifyRDBInput{SetID: set, Artifact: art, Scratch: true}, nil)
				require.NoError(t, run.err)
				chk := run.chk
				t.Logf("%+v", chk)
				assert.Equal(t, c.passed, chk.Passed)
				assert.True(t, chk.ChecksumOK)
				assert.Equal(t, c.keys, chk.ParsedKeys)
				assert.Equal(t, c.loaded, chk.LoadedKeys)
				assert.Equal(t, c.loaded != 0, chk.ScratchLoaded)
				if c.problem != "" {
					require.Len(t, chk.Problems, 1)
					assert.Contains(t, chk.Problems[0], key+": "+c.problem)
					assert.Contains(t, chk.Problems[0], c.note)
				} else {
					assert.Empty(t, chk.Problems)
					assert.Equal(t, c.note, chk.Note)
				}
				addr, pid := run.scratch()
				require.NotZero(t, pid)
				verifyRequireClean(t, tmp, addr, pid)
			})
		}
	})

	t.Run("missing object", func(t *testing.T) {
		for name, st := range stores {
			art := arts[name]
			art.Key = RedisKey("2020-01-01T00-00-00Z", "default")
			run := verifyRunRDB(t, ctx, &Redis{Store: st}, VerifyRDBInput{Artifact: art, Scratch: true}, nil)
			requireAppError(t, run.err, ErrArtifactNotFound, art.Key, "not in the backup store")
		}
	})

	t.Run("store read fails mid-object", func(t *testing.T) {
		tmp := verifyTempDir(t)
		st := verifyFailingStore{Store: stores["fs"], after: arts["fs"].Size / 2, err: errors.New("connection reset by peer")}
		run := verifyRunRDB(t, ctx, &Redis{Store: st}, VerifyRDBInput{Artifact: arts["fs"], Scratch: true}, nil)
		ae := redisAppError(t, run.err)
		t.Log(run.err)
		assert.False(t, ae.NonRetryable(), "an infrastructure fault is retried, not reported as a finding")
		assert.Contains(t, run.err.Error(), "connection reset by peer")
		verifyRequireClean(t, tmp, "", 0)
	})

	t.Run("bucket missing", func(t *testing.T) {
		st := redisS3Store(t, m, "no-such-bucket", "")
		run := verifyRunRDB(t, ctx, &Redis{Store: st}, VerifyRDBInput{Artifact: arts["s3"]}, nil)
		requireAppError(t, run.err, ErrStore, "no-such-bucket")
	})

	t.Run("bad input", func(t *testing.T) {
		good := arts["fs"]
		with := func(f func(a *Artifact)) Artifact {
			a := good
			f(&a)
			return a
		}
		cases := []struct {
			name string
			r    *Redis
			art  Artifact
			typ  string
			text string
		}{
			{"no key", &Redis{Store: stores["fs"]}, with(func(a *Artifact) { a.Key = "" }), ErrInvalidInput, `"artifact" has no key`},
			{"bad key", &Redis{Store: stores["fs"]}, with(func(a *Artifact) { a.Key = "sets//x" }), ErrInvalidInput, "invalid key"},
			{"other kind", &Redis{Store: stores["fs"]}, with(func(a *Artifact) { a.Kind = KindPostgres }), ErrInvalidInput, `"postgres" artifact`},
			{"compression", &Redis{Store: stores["fs"]}, with(func(a *Artifact) { a.Compression = "gzip" }), ErrInvalidInput, `compression "gzip"`},
			{"no sha256", &Redis{Store: stores["fs"]}, with(func(a *Artifact) { a.SHA256 = "" }), ErrInvalidInput, "64 hex digits"},
			{"no store", &Redis{}, good, ErrInvalidConfig, "no backup store"},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				run := verifyRunRDB(t, ctx, c.r, VerifyRDBInput{Artifact: c.art, Scratch: true}, nil)
				requireAppError(t, run.err, c.typ, c.text)
			})
		}
	})
}

// A ~50 MB RDB: timings, and cancellation while the scratch server starts
// and while it loads.
func TestVerifyRDBLarge(t *testing.T) {
	ctx := context.Background()
	src := stacktest.Redis(t)
	n := redisFillBulk(t, src.Addr(), 58<<20) // about 50 MB of RDB: Redis LZF-compresses the repetitive values
	redisConfigSet(t, src.Addr(), "", "repl-diskless-sync-delay", "0")
	st := redisFSStore(t)
	dump := redisRunDump(t, &Redis{Config: config.Redis{Addr: src.Addr()}, Store: st}, RDBInput{SetID: "large"})
	require.NoError(t, dump.err)
	art := dump.art
	require.Equal(t, int64(n), art.KeyCount)
	t.Logf("RDB %.1f MB, %.1f MB stored, %d keys; dumped in %v", float64(art.RawSize)/1e6, float64(art.Size)/1e6, n, art.Duration.Round(time.Millisecond))

	t.Run("timings", func(t *testing.T) {
		tmp := verifyTempDir(t)
		run := verifyRunRDB(t, ctx, &Redis{Store: st}, VerifyRDBInput{SetID: "large", Artifact: art, Scratch: true}, nil)
		require.NoError(t, run.err)
		chk := run.chk
		assert.True(t, chk.Passed, "problems: %v", chk.Problems)
		assert.True(t, chk.ScratchLoaded)
		assert.Equal(t, art.KeyCount, chk.LoadedKeys)
		assert.True(t, run.phases()["loading"], "heartbeats while the scratch server loads: %v", run.phases())
		start, load, stop := run.phaseStart("download"), run.phaseStart("load"), run.phaseStart("stop")
		t.Logf("download+decompress+walk %v (%.0f MB/s of RDB), scratch start+load %v, RTO %v, stop %v, activity %v (race detector %v, %d CPUs)",
			load.Sub(start).Round(time.Millisecond), float64(art.RawSize)/1e6/load.Sub(start).Seconds(),
			stop.Sub(load).Round(time.Millisecond), chk.RTO.Round(time.Millisecond),
			(run.took - stop.Sub(start)).Round(time.Millisecond), run.took.Round(time.Millisecond), redisRaceEnabled, runtime.NumCPU())
		addr, pid := run.scratch()
		verifyRequireClean(t, tmp, addr, pid)
	})

	cancels := []struct {
		name string
		when func(p VerifyRDBProgress) bool
	}{
		{"cancelled while the scratch server starts", func(p VerifyRDBProgress) bool { return p.ScratchPID != 0 }},
		{"cancelled while the scratch server loads", func(p VerifyRDBProgress) bool { return p.Loading }},
	}
	for _, c := range cancels {
		t.Run(c.name, func(t *testing.T) {
			tmp := verifyTempDir(t)
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			var (
				once     sync.Once
				cancelAt time.Time
			)
			run := verifyRunRDB(t, ctx, &Redis{Store: st}, VerifyRDBInput{SetID: "large", Artifact: art, Scratch: true}, func(p VerifyRDBProgress) {
				if c.when(p) {
					once.Do(func() {
						cancelAt = time.Now()
						cancel()
					})
				}
			})
			require.False(t, cancelAt.IsZero(), "never cancelled; phases %v", run.phases())
			require.Error(t, run.err)
			t.Logf("returned %v after the cancel: %v", time.Since(cancelAt).Round(time.Millisecond), run.err)
			assert.Contains(t, run.err.Error(), "canceled")
			assert.Less(t, time.Since(cancelAt), 10*time.Second)
			addr, pid := run.scratch()
			require.NotZero(t, pid)
			verifyRequireClean(t, tmp, addr, pid)
		})
	}
}

// On Linux the scratch server dies with the worker: a helper process (this
// test binary) starts one and is killed with SIGKILL, so no cleanup of its
// own runs; the kernel must kill the server.
func TestVerifyRDBPdeathsig(t *testing.T) {
	if dir := os.Getenv("DRFLOW_VERIFY_PDEATHSIG_DIR"); dir != "" {
		bin, err := exec.LookPath("redis-server")
		if err != nil {
			panic(err)
		}
		srv, err := startScratchRedis(bin, dir, 16)
		if err != nil {
			panic(err)
		}
		fmt.Printf("scratch %d %s\n", srv.pid(), srv.addr)
		select {} // until killed
	}
	attr := &syscall.SysProcAttr{}
	setPdeathsig(attr)
	f := reflect.ValueOf(attr).Elem().FieldByName("Pdeathsig")
	require.Equal(t, "linux", runtime.GOOS, "the integration tests run on Linux")
	require.True(t, f.IsValid())
	require.Equal(t, syscall.SIGKILL, f.Interface())

	dir := t.TempDir()
	helper := exec.Command(os.Args[0], "-test.run=^TestVerifyRDBPdeathsig$", "-test.count=1")
	helper.Env = append(os.Environ(), "DRFLOW_VERIFY_PDEATHSIG_DIR="+dir)
	out, err := helper.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, helper.Start())
	var (
		pid  int
		addr string
	)
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if _, err := fmt.Sscanf(sc.Text(), "scratch %d %s", &pid, &addr); err == nil {
			break
		}
	}
	require.NotZero(t, pid, "the helper started a scratch server")
	t.Cleanup(func() {
		// Should the kernel not have: the server runs in dir.
		if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && bytes.Contains(cmdline, []byte(dir)) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	// It is up: it answers (NOAUTH) on its port.
	require.Eventually(t, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, 10*time.Second, 10*time.Millisecond)

	require.NoError(t, helper.Process.Kill())
	_ = helper.Wait()
	// Gone: no such process, or a zombie nobody reaps (PID 1 of a container).
	require.Eventually(t, func() bool {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return true
		}
		_, rest, _ := strings.Cut(string(stat), ") ")
		return strings.HasPrefix(rest, "Z") || !strings.Contains(string(stat), "redis-server")
	}, 10*time.Second, 10*time.Millisecond, "scratch redis-server %d outlived its worker", pid)
	// The port itself is not checked: once freed, a server of a test package running in
	// parallel may take it.
}

// verifyFailingStore is a store whose objects fail to read after a number of
// bytes, like a connection that breaks.
type verifyFailingStore struct {
	store.Store
	after int64
	err   error
}

func (s verifyFailingStore) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	rc, err := s.Store.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	return &verifyFailingReader{rc: rc, left: s.after, err: s.err}, nil
}

type verifyFailingReader struct {
	rc   io.ReadCloser
	left int64
	err  error
}

func (r *verifyFailingReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		return 0, r.err
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, err := r.rc.Read(p)
	r.left -= int64(n)
	return n, err
}

func (r *verifyFailingReader) Close() error { return r.rc.Close() }
