package activities

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/kohakku/drflow/internal/stack"
	"github.com/kohakku/drflow/internal/stack/stacktest"
)

// aofRun runs one RedisHost activity in the Temporal test environment and
// decodes its result.
func aofRun[R any](t *testing.T, h *RedisHost, fn any, args ...any) (R, error) {
	t.Helper()
	var s testsuite.WorkflowTestSuite
	env := s.NewTestActivityEnvironment()
	env.RegisterActivity(h)
	var out R
	val, err := env.ExecuteActivity(fn, args...)
	if err == nil {
		require.NoError(t, val.Get(&out))
	}
	return out, err
}

// aofAppError requires err to be a non-retryable application error of type
// typ whose text holds every want.
func aofAppError(t *testing.T, err error, typ string, want ...string) {
	t.Helper()
	require.Error(t, err)
	t.Logf("error: %v", err)
	var ae *temporal.ApplicationError
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, typ, ae.Type())
	assert.True(t, ae.NonRetryable(), "non-retryable")
	for _, w := range want {
		assert.Contains(t, err.Error(), w)
	}
}

// aofFiles returns the SHA-256 of every file in dir by name.
func aofFiles(t *testing.T, dir string) map[string][32]byte {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	out := map[string][32]byte{}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		require.NoError(t, err)
		out[e.Name()] = sha256.Sum256(b)
	}
	return out
}

func aofWrite(t *testing.T, addr, prefix string, n int) {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	ctx := context.Background()
	for i := range n {
		require.NoError(t, rdb.HSet(ctx, fmt.Sprintf("%s:%d", prefix, i), "status", "running", "progress", i%100).Err())
		require.NoError(t, rdb.RPush(ctx, prefix+":queue", i).Err())
	}
}

func aofIncrFile(t *testing.T, dir string) string {
	t.Helper()
	incr, err := filepath.Glob(filepath.Join(dir, "*.incr.aof"))
	require.NoError(t, err)
	require.Len(t, incr, 1)
	return incr[0]
}

// aofGarble overwrites the middle of the incremental AOF, inside a command,
// so that what follows is not RESP: Redis refuses such a file (unlike a tail
// cut short, which aof-load-truncated accepts).
func aofGarble(t *testing.T, dir string) {
	t.Helper()
	path := aofIncrFile(t, dir)
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Greater(t, len(b), 1000)
	mid := len(b) / 2
	copy(b[mid:], "garbage\r\n")
	require.NoError(t, os.WriteFile(path, b, 0o644))
}

func TestRedisHostAOF(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	r := stacktest.Redis(t)
	h := &RedisHost{AOFDir: r.AOFDir()}
	aofWrite(t, r.Addr(), "kohakku:task", 200)

	t.Run("clean aof is not corrupt", func(t *testing.T) {
		require.NoError(t, r.Stop(ctx))
		st, err := aofRun[AOFState](t, h, h.InspectAOF)
		require.NoError(t, err)
		t.Logf("%+v", st)
		assert.Equal(t, r.AOFDir(), st.Dir)
		assert.True(t, st.Configured)
		assert.True(t, st.Exists)
		assert.False(t, st.Corrupt)
		assert.Equal(t, 3, st.Files, "base, incr and manifest")
		assert.Positive(t, st.Bytes)
		assert.Contains(t, st.Detail, "valid")
		require.NoError(t, r.Start(ctx))
	})

	aofWrite(t, r.Addr(), "kohakku:more", 200)
	require.NoError(t, r.Kill())
	aofGarble(t, r.AOFDir())
	corrupted := aofFiles(t, r.AOFDir())
	const stamp = "20261121T031500Z"
	target := r.AOFDir() + ".corrupt-" + stamp

	t.Run("garbled aof is corrupt and redis refuses it", func(t *testing.T) {
		st, err := aofRun[AOFState](t, h, h.InspectAOF)
		require.NoError(t, err)
		t.Logf("%+v", st)
		assert.True(t, st.Exists)
		assert.True(t, st.Corrupt)
		assert.Contains(t, st.Detail, "is not valid")
		assert.Contains(t, st.Detail, filepath.Base(aofIncrFile(t, r.AOFDir())))

		err = r.Start(ctx)
		require.Error(t, err, "redis-server must refuse the garbled AOF")
		assert.False(t, r.Running())
		// The check did not touch the files.
		assert.Equal(t, corrupted, aofFiles(t, r.AOFDir()))
	})

	var first QuarantineResult
	t.Run("quarantine moves it aside byte for byte", func(t *testing.T) {
		var err error
		first, err = aofRun[QuarantineResult](t, h, h.QuarantineAOF, QuarantineInput{Stamp: stamp})
		require.NoError(t, err)
		assert.Equal(t, QuarantineResult{From: r.AOFDir(), To: target, Files: 3, Bytes: first.Bytes}, first)
		assert.Positive(t, first.Bytes)
		assert.NoDirExists(t, r.AOFDir())
		assert.Equal(t, corrupted, aofFiles(t, target))
	})

	t.Run("second quarantine is already done", func(t *testing.T) {
		res, err := aofRun[QuarantineResult](t, h, h.QuarantineAOF, QuarantineInput{Stamp: stamp})
		require.NoError(t, err)
		assert.Equal(t, QuarantineResult{From: r.AOFDir(), To: target, Files: first.Files, Bytes: first.Bytes, AlreadyDone: true}, res)
		st, err := aofRun[AOFState](t, h, h.InspectAOF)
		require.NoError(t, err)
		assert.Equal(t, AOFState{Dir: r.AOFDir(), Configured: true}, st, "no AOF after the quarantine")
	})

	t.Run("redis then starts empty", func(t *testing.T) {
		require.NoError(t, r.Start(ctx))
		rdb := redis.NewClient(&redis.Options{Addr: r.Addr()})
		defer rdb.Close()
		n, err := rdb.DBSize(ctx).Result()
		require.NoError(t, err)
		assert.Zero(t, n)
	})

	t.Run("a new aof next to the quarantined one is a conflict", func(t *testing.T) {
		_, err := aofRun[QuarantineResult](t, h, h.QuarantineAOF, QuarantineInput{Stamp: stamp})
		aofAppError(t, err, ErrAOFQuarantineConflict, r.AOFDir()+" and "+target, "new stamp")
		assert.DirExists(t, r.AOFDir())
		assert.Equal(t, corrupted, aofFiles(t, target), "the quarantined files are untouched")
	})
}

// TestRedisHostAOFCases covers settings, inputs and AOF shapes on copies of
// a real AOF.
func TestRedisHostAOFCases(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r := stacktest.Redis(t)
	aofWrite(t, r.Addr(), "k", 100)
	require.NoError(t, r.Stop(ctx))
	good := aofFiles(t, r.AOFDir())
	require.Len(t, good, 3)

	// copyAOF copies the stopped server's AOF to <tmp>/appendonlydir.
	copyAOF := func(t *testing.T) string {
		dir := filepath.Join(t.TempDir(), stack.RedisAppendDirName)
		require.NoError(t, os.CopyFS(dir, os.DirFS(r.AOFDir())))
		return dir
	}

	t.Run("not configured", func(t *testing.T) {
		h := &RedisHost{}
		st, err := aofRun[AOFState](t, h, h.InspectAOF)
		require.NoError(t, err)
		assert.Equal(t, AOFState{}, st)
		_, err = aofRun[QuarantineResult](t, h, h.QuarantineAOF, QuarantineInput{Stamp: "20261121T031500Z"})
		aofAppError(t, err, ErrInvalidConfig, "DRFLOW_REDIS_AOF_DIR")
	})

	t.Run("relative dir", func(t *testing.T) {
		h := &RedisHost{AOFDir: "data/appendonlydir"}
		_, err := aofRun[AOFState](t, h, h.InspectAOF)
		aofAppError(t, err, ErrInvalidConfig, "not an absolute path")
	})

	t.Run("missing dir", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "appendonlydir")
		h := &RedisHost{AOFDir: dir}
		st, err := aofRun[AOFState](t, h, h.InspectAOF)
		require.NoError(t, err)
		assert.Equal(t, AOFState{Dir: dir, Configured: true}, st)
		_, err = aofRun[QuarantineResult](t, h, h.QuarantineAOF, QuarantineInput{Stamp: "20261121T031500Z"})
		aofAppError(t, err, ErrAOFNotFound, dir+" does not exist", dir+".corrupt-20261121T031500Z")
	})

	t.Run("empty dir is clean", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "appendonlydir")
		require.NoError(t, os.Mkdir(dir, 0o755))
		h := &RedisHost{AOFDir: dir}
		st, err := aofRun[AOFState](t, h, h.InspectAOF)
		require.NoError(t, err)
		assert.Equal(t, AOFState{Dir: dir, Configured: true, Exists: true}, st)
	})

	t.Run("files without a manifest are corrupt", func(t *testing.T) {
		dir := copyAOF(t)
		require.NoError(t, os.Remove(filepath.Join(dir, AOFManifestName)))
		h := &RedisHost{AOFDir: dir}
		st, err := aofRun[AOFState](t, h, h.InspectAOF)
		require.NoError(t, err)
		assert.True(t, st.Corrupt)
		assert.Equal(t, 2, st.Files)
		assert.Contains(t, st.Detail, "no manifest")
	})

	t.Run("a file named in the manifest is missing", func(t *testing.T) {
		dir := copyAOF(t)
		base, err := filepath.Glob(filepath.Join(dir, "*.base.*"))
		require.NoError(t, err)
		require.Len(t, base, 1)
		require.NoError(t, os.Remove(base[0]))
		h := &RedisHost{AOFDir: dir}
		st, err := aofRun[AOFState](t, h, h.InspectAOF)
		require.NoError(t, err)
		assert.True(t, st.Corrupt)
		assert.Contains(t, st.Detail, "Cannot open")
	})

	t.Run("a tail cut short mid-command is reported corrupt", func(t *testing.T) {
		dir := copyAOF(t)
		incr := aofIncrFile(t, dir)
		fi, err := os.Stat(incr)
		require.NoError(t, err)
		require.NoError(t, os.Truncate(incr, fi.Size()-7))
		h := &RedisHost{AOFDir: dir}
		st, err := aofRun[AOFState](t, h, h.InspectAOF)
		require.NoError(t, err)
		assert.True(t, st.Corrupt)
		assert.Contains(t, st.Detail, "not valid")
		b, err := os.ReadFile(incr)
		require.NoError(t, err)
		assert.Len(t, b, int(fi.Size()-7), "checked without --fix: nothing truncated")
	})

	t.Run("garbled copy is corrupt, the original is clean", func(t *testing.T) {
		dir := copyAOF(t)
		aofGarble(t, dir)
		h := &RedisHost{AOFDir: dir}
		st, err := aofRun[AOFState](t, h, h.InspectAOF)
		require.NoError(t, err)
		assert.True(t, st.Corrupt)
		h = &RedisHost{AOFDir: r.AOFDir()}
		st, err = aofRun[AOFState](t, h, h.InspectAOF)
		require.NoError(t, err)
		assert.False(t, st.Corrupt, st.Detail)
		assert.Equal(t, good, aofFiles(t, r.AOFDir()))
	})

	t.Run("redis-check-aof missing", func(t *testing.T) {
		h := &RedisHost{AOFDir: copyAOF(t), CheckAOFPath: filepath.Join(t.TempDir(), "redis-check-aof")}
		_, err := aofRun[AOFState](t, h, h.InspectAOF)
		aofAppError(t, err, ErrInvalidConfig, "redis-check-aof")
	})

	t.Run("redis-check-aof killed is retryable", func(t *testing.T) {
		fake := filepath.Join(t.TempDir(), "redis-check-aof")
		require.NoError(t, os.WriteFile(fake, []byte("#!/bin/sh\necho checking\nkill -9 $$\n"), 0o755))
		h := &RedisHost{AOFDir: copyAOF(t), CheckAOFPath: fake}
		_, err := aofRun[AOFState](t, h, h.InspectAOF)
		require.Error(t, err)
		var ae *temporal.ApplicationError
		require.ErrorAs(t, err, &ae)
		assert.False(t, ae.NonRetryable(), "%v", err)
		assert.Contains(t, err.Error(), "killed")
	})

	t.Run("bad stamps", func(t *testing.T) {
		dir := copyAOF(t)
		h := &RedisHost{AOFDir: dir}
		for _, stamp := range []string{"", "2026-11-21", "../x", "20261121T031500Z/..", "20261121t031500z", strings.Repeat("1", 33)} {
			_, err := aofRun[QuarantineResult](t, h, h.QuarantineAOF, QuarantineInput{Stamp: stamp})
			aofAppError(t, err, ErrInvalidInput, "stamp")
		}
		assert.Equal(t, good, aofFiles(t, dir), "nothing moved")
	})

	t.Run("an empty directory at the target is a conflict, not replaced", func(t *testing.T) {
		dir := copyAOF(t)
		const stamp = "20261121T031500Z"
		require.NoError(t, os.Mkdir(dir+".corrupt-"+stamp, 0o755))
		h := &RedisHost{AOFDir: dir}
		_, err := aofRun[QuarantineResult](t, h, h.QuarantineAOF, QuarantineInput{Stamp: stamp})
		aofAppError(t, err, ErrAOFQuarantineConflict, dir, dir+".corrupt-"+stamp)
		assert.Equal(t, good, aofFiles(t, dir))
	})

	t.Run("old-style single file", func(t *testing.T) {
		dir := copyAOF(t)
		file := filepath.Join(filepath.Dir(dir), "appendonly.aof")
		require.NoError(t, os.Rename(aofIncrFile(t, dir), file))
		h := &RedisHost{AOFDir: file}
		st, err := aofRun[AOFState](t, h, h.InspectAOF)
		require.NoError(t, err)
		assert.Equal(t, 1, st.Files)
		assert.False(t, st.Corrupt, st.Detail)
		res, err := aofRun[QuarantineResult](t, h, h.QuarantineAOF, QuarantineInput{Stamp: "1"})
		require.NoError(t, err)
		assert.Equal(t, file+".corrupt-1", res.To)
		_, err = os.Stat(file)
		assert.True(t, errors.Is(err, fs.ErrNotExist))
		assert.FileExists(t, res.To)
	})
}
