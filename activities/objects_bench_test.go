package activities

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/stretchr/testify/require"

	"github.com/kohakku/drflow/internal/stack"
)

// mcInstall is how to install the mc client the benchmark compares against.
const mcInstall = "GOBIN=/work/main/bin go install github.com/minio/mc@v0.0.0-20250313080218-cf909e1063a9 (GOBIN: the repository's bin directory)"

// BenchmarkMirrorVsMcMirror mirrors DRFLOW_BENCH_SMALL objects of 1–4 KB
// (default 10,000) and DRFLOW_BENCH_LARGE objects of 1–5 MB (default 200)
// from the app's MinIO to the backup MinIO three times in one run: Mirror
// into an empty mirror, `mc mirror` of the same bucket into an empty bucket,
// and Mirror again with nothing to copy. It reports the wall times
// (mirror-s, mc-mirror-s, noop-s), how many times faster Mirror is than mc
// (speedup-x), and the CPU time each copy took in the client and in the two
// MinIO servers (mirror-client-cpu-s, mirror-server-cpu-s, mc-client-cpu-s,
// mc-server-cpu-s): when the servers share the CPUs with the clients, as on
// a laptop or CI host, their CPU time bounds both tools. Run it with
// -benchtime=1x:
//
//	go test ./activities/ -run '^$' -bench MirrorVsMcMirror -benchtime=1x
//	DRFLOW_BENCH_SMALL=1000 DRFLOW_BENCH_LARGE=20 go test … (a quick run)
//
// DRFLOW_BENCH_CONCURRENCY overrides Objects.Concurrency, and
// DRFLOW_BENCH_CPUPROFILE=<file> writes a CPU profile of the first Mirror.
func BenchmarkMirrorVsMcMirror(b *testing.B) {
	mc, err := filepath.Abs(filepath.Join("..", "bin", "mc"))
	require.NoError(b, err)
	if _, err := os.Stat(mc); err != nil {
		b.Fatalf("the benchmark compares with mc mirror, and %s is missing: install it with\n\t%s", mc, mcInstall)
	}
	small := benchEnvInt(b, "DRFLOW_BENCH_SMALL", 10000)
	large := benchEnvInt(b, "DRFLOW_BENCH_LARGE", 200)

	ctx := context.Background()
	e := newMirrorEnv(b)
	const bucket = "bench"
	require.NoError(b, e.app.MakeBucket(ctx, bucket))
	objs := make(map[string]int, small+large)
	rng := rand.New(rand.NewPCG(1, 2))
	var total int64
	for i := range small {
		key := fmt.Sprintf("briefs/%d/brief.json", i+1)
		objs[key] = 1024 + rng.IntN(3*1024+1)
		total += int64(objs[key])
	}
	for i := range large {
		key := fmt.Sprintf("attachments/%04d.bin", i)
		objs[key] = 1<<20 + rng.IntN(4<<20+1)
		total += int64(objs[key])
	}
	t0 := time.Now()
	require.NoError(b, putObjects(ctx, e.src, bucket, objs, 1))
	b.Logf("seeded %d small + %d large objects, %.1f MB, in %v", small, large, float64(total)/1e6, time.Since(t0).Round(time.Millisecond))

	// The store as the worker builds it: default part size and concurrency.
	st := e.s3StoreParts(b, "drflow-backup", true, 0)
	o := e.objects(b, st)
	if c := benchEnvInt(b, "DRFLOW_BENCH_CONCURRENCY", 0); c > 0 {
		o.Concurrency = c
	}
	backup, err := e.backup.Client()
	require.NoError(b, err)
	mcDir := b.TempDir()

	var (
		mirrorDur, mcDur, noopDur time.Duration
		mirrorCPU, mcCPU          cpuTimes
	)
	b.ResetTimer()
	for i := range b.N {
		prefix := fmt.Sprintf("bench-%d/mirror/%s/", i, bucket)

		c0 := benchCPU()
		if p := os.Getenv("DRFLOW_BENCH_CPUPROFILE"); p != "" {
			f, err := os.Create(p)
			require.NoError(b, err)
			require.NoError(b, pprof.StartCPUProfile(f))
		}
		t0 := time.Now()
		run := runMirror(b, o, MirrorInput{Bucket: bucket, Prefix: prefix, SetID: fmt.Sprintf("bench-%d-a", i)}, nil)
		mirrorDur += time.Since(t0)
		pprof.StopCPUProfile()
		mirrorCPU = mirrorCPU.add(benchCPU().sub(c0))
		require.NoError(b, run.err)
		require.Equal(b, int64(len(objs)), run.res.Copied)
		require.Equal(b, total, run.res.CopiedBytes)

		target := fmt.Sprintf("mc-mirror-%d", i)
		require.NoError(b, e.backup.MakeBucket(ctx, target))
		c0 = benchCPU()
		t0 = time.Now()
		runMcMirror(b, mc, mcDir, e.app, e.backup, bucket, target)
		mcDur += time.Since(t0)
		mcCPU = mcCPU.add(benchCPU().sub(c0))
		require.Equal(b, len(objs), countObjects(b, backup, target), "objects mirrored by mc")

		t0 = time.Now()
		noop := runMirror(b, o, MirrorInput{Bucket: bucket, Prefix: prefix, SetID: fmt.Sprintf("bench-%d-b", i)}, nil)
		noopDur += time.Since(t0)
		require.NoError(b, noop.err)
		require.Zero(b, noop.res.Copied)
	}
	b.StopTimer()

	n := float64(b.N)
	speedup := mcDur.Seconds() / mirrorDur.Seconds()
	b.ReportMetric(mirrorDur.Seconds()/n, "mirror-s")
	b.ReportMetric(mcDur.Seconds()/n, "mc-mirror-s")
	b.ReportMetric(noopDur.Seconds()/n, "noop-s")
	b.ReportMetric(speedup, "speedup-x")
	b.ReportMetric(mirrorCPU.client/n, "mirror-client-cpu-s")
	b.ReportMetric(mirrorCPU.servers/n, "mirror-server-cpu-s")
	b.ReportMetric(mcCPU.client/n, "mc-client-cpu-s")
	b.ReportMetric(mcCPU.servers/n, "mc-server-cpu-s")
	b.Logf("%d objects, %.1f MB: Mirror %v, mc mirror %v (Mirror %.2f× faster), no-op Mirror %v",
		len(objs), float64(total)/1e6,
		(mirrorDur / time.Duration(b.N)).Round(time.Millisecond),
		(mcDur / time.Duration(b.N)).Round(time.Millisecond), speedup,
		(noopDur / time.Duration(b.N)).Round(time.Millisecond))
	b.Logf("CPU time, client + MinIO servers: Mirror %.1fs + %.1fs, mc mirror %.1fs + %.1fs (%d CPUs)",
		mirrorCPU.client/n, mirrorCPU.servers/n, mcCPU.client/n, mcCPU.servers/n, runtime.NumCPU())
}

// runMcMirror runs `mc mirror` from bucket on src to target on dst, with
// aliases given by MC_HOST_* and a private config directory.
func runMcMirror(b *testing.B, mc, configDir string, src, dst *stack.MinIO, bucket, target string) {
	b.Helper()
	alias := func(m *stack.MinIO) string {
		return "http://" + m.AccessKey() + ":" + m.SecretKey() + "@" + m.Endpoint()
	}
	cmd := exec.Command(mc, "--config-dir", configDir, "--quiet", "--no-color",
		"mirror", "src/"+bucket, "dst/"+target)
	cmd.Env = append(os.Environ(), "MC_HOST_src="+alias(src), "MC_HOST_dst="+alias(dst))
	out, err := cmd.CombinedOutput()
	if err != nil {
		// The output may hold the aliases' keys.
		msg := strings.ReplaceAll(string(out), src.SecretKey(), "**redacted**")
		msg = strings.ReplaceAll(msg, dst.SecretKey(), "**redacted**")
		b.Fatalf("mc mirror: %v\n%s", err, msg)
	}
}

func countObjects(b *testing.B, c *minio.Client, bucket string) int {
	b.Helper()
	n := 0
	for obj := range c.ListObjects(context.Background(), bucket, minio.ListObjectsOptions{Recursive: true}) {
		require.NoError(b, obj.Err)
		n++
	}
	return n
}

func benchEnvInt(b *testing.B, name string, def int) int {
	b.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		b.Fatalf("%s=%q: want a whole number of objects", name, v)
	}
	return n
}

// cpuTimes are CPU seconds: client is this process plus its exited children
// (mc), servers the MinIO processes this process started.
type cpuTimes struct{ client, servers float64 }

func (a cpuTimes) add(b cpuTimes) cpuTimes {
	return cpuTimes{a.client + b.client, a.servers + b.servers}
}
func (a cpuTimes) sub(b cpuTimes) cpuTimes {
	return cpuTimes{a.client - b.client, a.servers - b.servers}
}

// benchCPU reads the CPU times so far (Linux: getrusage and /proc).
func benchCPU() cpuTimes {
	var self, children syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &self)
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &children)
	sec := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	c := cpuTimes{client: sec(self.Utime) + sec(self.Stime) + sec(children.Utime) + sec(children.Stime)}
	ents, _ := os.ReadDir("/proc")
	me := strconv.Itoa(os.Getpid())
	for _, e := range ents {
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid … utime(14) stime(15), in clock ticks (100/s).
		end := bytes.LastIndexByte(stat, ')')
		if end < 0 || !bytes.HasSuffix(stat[:end], []byte("(minio")) {
			continue
		}
		f := strings.Fields(string(stat[end+2:]))
		if len(f) < 13 || f[1] != me {
			continue
		}
		utime, _ := strconv.ParseFloat(f[11], 64)
		stime, _ := strconv.ParseFloat(f[12], 64)
		c.servers += (utime + stime) / 100
	}
	return c
}
