package activities_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/jackc/pgx/v5"
	"github.com/minio/minio-go/v7"
	"go.temporal.io/sdk/testsuite"

	"github.com/kohakku/drflow/activities"
	"github.com/kohakku/drflow/internal/config"
	"github.com/kohakku/drflow/internal/stack/stacktest"
	"github.com/kohakku/drflow/internal/store"
	"github.com/kohakku/drflow/schemas"
)

// Benchmark settings, from the environment.
const (
	// benchDBMBEnv sets the size of the generated data in MiB (rows as pg_dump
	// writes them, before compression); docs/performance.md quotes 1024.
	benchDBMBEnv = "DRFLOW_BENCH_DB_MB"
	// benchLevelsEnv lists the zstd levels the activity is run with, e.g. "1,3,6".
	benchLevelsEnv = "DRFLOW_BENCH_ZSTD_LEVELS"
)

// BenchmarkDumpVsPgDumpFc compares, on one generated database, (a) the Dump
// activity (pg_dump -Fc -Z0 | zstd | SHA-256 → S3 Put on MinIO, streamed) with
// (b) the cron job it replaces: pg_dump -Fc (default gzip) > file, then upload
// of the file with minio-go. It reports wall time, stored size, the size ratio
// to pg_dump -Fc, CPU time (this process plus pg_dump) and this process's peak
// RSS for each.
//
// In the same iteration, on the same data, it runs the Dump at the default
// level twice more, back to back in alternating order: unencrypted
// (zstd<N>noage-*) and with age encryption to one X25519 recipient (zstd,
// then age, then SHA-256 → Put; zstd<N>age-*), and reports the overhead of
// the second against the first (age-overhead-*).
func BenchmarkDumpVsPgDumpFc(b *testing.B) {
	mb := 64
	if v := os.Getenv(benchDBMBEnv); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("%s=%q: want a positive number of MiB", benchDBMBEnv, v)
		}
		mb = n
	}
	levels := []int{1, activities.DefaultZstdLevel}
	if v := os.Getenv(benchLevelsEnv); v != "" {
		levels = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil {
				b.Fatalf("%s=%q: want levels like 1,3", benchLevelsEnv, v)
			}
			levels = append(levels, n)
		}
	}

	ctx := context.Background()
	pgSrv := stacktest.Postgres(b)
	minioSrv := stacktest.MinIO(b)
	const bucket, db = "drflow-bench", "bench"
	if err := minioSrv.MakeBucket(ctx, bucket); err != nil {
		b.Fatal(err)
	}
	if err := pgSrv.CreateDatabase(ctx, db); err != nil {
		b.Fatal(err)
	}
	began := time.Now()
	raw, err := generateBenchData(ctx, pgSrv.URL(db), int64(mb)<<20)
	if err != nil {
		b.Fatal(err)
	}
	var dbSize int64
	if err := queryRow(ctx, pgSrv.URL(db), "SELECT pg_database_size(current_database())", &dbSize); err != nil {
		b.Fatal(err)
	}
	b.Logf("generated %.0f MiB of rows (database %.0f MiB on disk) in %s", mib(raw), mib(dbSize), time.Since(began).Round(time.Millisecond))

	s3, err := store.NewS3(ctx, store.S3Config{
		Bucket: bucket, Endpoint: minioSrv.URL(), Region: minioSrv.Region(),
		AccessKeyID: minioSrv.AccessKey(), SecretAccessKey: minioSrv.SecretKey(), ForcePathStyle: true,
	})
	if err != nil {
		b.Fatal(err)
	}
	objects, err := minioSrv.Client()
	if err != nil {
		b.Fatal(err)
	}
	fileDir := b.TempDir()
	ageKeys := benchAgeKeys(b)
	// Sums over the iterations of the unencrypted and encrypted pair.
	var noageWall, noageCPU, ageWall, ageCPU time.Duration

	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		// (b) first: the activity runs leave more memory for the GC to return.
		var fcSize int64
		var dumped, uploaded time.Duration
		base := measure(func() (err error) {
			fcSize, dumped, uploaded, err = pgDumpFcAndUpload(ctx, pgSrv.BinDir(), pgSrv.URL(db),
				filepath.Join(fileDir, "bench.dump"), objects, bucket, fmt.Sprintf("cron/%d/bench.dump", i))
			return err
		})
		if base.err != nil {
			b.Fatal(base.err)
		}
		b.ReportMetric(base.wall.Seconds(), "pgdumpFc-s")
		b.ReportMetric(base.cpu.Seconds(), "pgdumpFc-cpu-s")
		b.ReportMetric(mib(fcSize), "pgdumpFc-MiB")
		b.ReportMetric(mib(base.peakRSS), "pgdumpFc-peakRSS-MiB")
		b.Logf("pg_dump -Fc > file + upload: %s (dump %s, upload %s), cpu %s, %.1f MiB, peak RSS %.0f MiB",
			base.wall.Round(time.Millisecond), dumped.Round(time.Millisecond), uploaded.Round(time.Millisecond),
			base.cpu.Round(time.Millisecond), mib(fcSize), mib(base.peakRSS))

		// The floor: pg_dump alone, uncompressed, into /dev/null.
		floor := measure(func() error {
			cmd := exec.CommandContext(ctx, filepath.Join(pgSrv.BinDir(), "pg_dump"), "-Fc", "-Z0", "--dbname="+pgSrv.URL(db))
			return cmd.Run()
		})
		if floor.err != nil {
			b.Fatal(floor.err)
		}
		b.ReportMetric(floor.wall.Seconds(), "pgdumpZ0-devnull-s")
		b.Logf("pg_dump -Fc -Z0 > /dev/null: %s, cpu %s", floor.wall.Round(time.Millisecond), floor.cpu.Round(time.Millisecond))

		dump := func(level int, keys *activities.AgeKeys, name string) (activities.Artifact, measurement) {
			pg := &activities.Postgres{
				Config: config.Postgres{URL: pgSrv.URL("postgres")},
				Store:  s3,
				BinDir: pgSrv.BinDir(),
				Zstd:   activities.ZstdOptions{Level: level},
				Age:    keys,
			}
			var art activities.Artifact
			m := measure(func() error {
				var s testsuite.WorkflowTestSuite
				env := s.NewTestActivityEnvironment()
				env.RegisterActivity(pg)
				v, err := env.ExecuteActivity(pg.Dump, activities.DumpInput{
					SetID: "bench", Database: db, Key: fmt.Sprintf("sets/%d/postgres/%s.dump.zst", i, name),
					CountTables: []string{schemas.TasksTable, schemas.BriefsTable},
				})
				if err != nil {
					return err
				}
				return v.Get(&art)
			})
			if m.err != nil {
				b.Fatal(m.err)
			}
			return art, m
		}
		type plainRun struct {
			art activities.Artifact
			m   measurement
		}
		for _, level := range levels {
			art, m := dump(level, nil, fmt.Sprintf("zstd-%d", level))
			name := fmt.Sprintf("zstd%d", level)
			ratio := float64(art.Size) / float64(fcSize)
			b.ReportMetric(m.wall.Seconds(), name+"-s")
			b.ReportMetric(m.cpu.Seconds(), name+"-cpu-s")
			b.ReportMetric(mib(art.Size), name+"-MiB")
			b.ReportMetric(ratio, name+"/pgdumpFc-size")
			b.ReportMetric(base.wall.Seconds()/m.wall.Seconds(), name+"-speedup")
			b.ReportMetric(mib(m.peakRSS), name+"-peakRSS-MiB")
			b.Logf("Dump zstd level %d on %d CPUs: %s, cpu %s, raw %.1f MiB → stored %.1f MiB (%.3f × pg_dump -Fc), %.2f× faster, peak RSS %.0f MiB",
				level, runtime.NumCPU(), m.wall.Round(time.Millisecond), m.cpu.Round(time.Millisecond),
				mib(art.RawSize), mib(art.Size), ratio, base.wall.Seconds()/m.wall.Seconds(), mib(m.peakRSS))
		}

		// The same dump at the default level unencrypted and encrypted, back to
		// back, the order alternating between iterations so that neither always
		// finds the warmer caches; the overhead is against this unencrypted run.
		level := activities.DefaultZstdLevel
		var (
			p   plainRun
			art activities.Artifact
			m   measurement
		)
		if i%2 == 0 {
			p.art, p.m = dump(level, nil, fmt.Sprintf("zstd-%d-noage", level))
			art, m = dump(level, ageKeys, fmt.Sprintf("zstd-%d-age", level))
		} else {
			art, m = dump(level, ageKeys, fmt.Sprintf("zstd-%d-age", level))
			p.art, p.m = dump(level, nil, fmt.Sprintf("zstd-%d-noage", level))
		}
		if art.Encryption != activities.EncryptionAge || p.art.Encryption != activities.EncryptionNone {
			b.Fatalf("encryption recorded %q and %q", art.Encryption, p.art.Encryption)
		}
		noageWall, noageCPU, ageWall, ageCPU = noageWall+p.m.wall, noageCPU+p.m.cpu, ageWall+m.wall, ageCPU+m.cpu
		name := fmt.Sprintf("zstd%dage", level)
		wallOver := 100 * (m.wall.Seconds() - p.m.wall.Seconds()) / p.m.wall.Seconds()
		cpuOver := 100 * (m.cpu.Seconds() - p.m.cpu.Seconds()) / p.m.cpu.Seconds()
		b.ReportMetric(mib(art.Size), name+"-MiB")
		b.ReportMetric(mib(m.peakRSS), name+"-peakRSS-MiB")
		b.ReportMetric(float64(art.Size-p.art.Size), "age-overhead-bytes")
		b.Logf("Dump zstd level %d + age on %d CPUs: %s, cpu %s, stored %.1f MiB, peak RSS %.0f MiB; against the same dump unencrypted (%s, cpu %s, %.1f MiB): wall %+.1f%%, cpu %+.1f%%, %+d bytes",
			level, runtime.NumCPU(), m.wall.Round(time.Millisecond), m.cpu.Round(time.Millisecond), mib(art.Size), mib(m.peakRSS),
			p.m.wall.Round(time.Millisecond), p.m.cpu.Round(time.Millisecond), mib(p.art.Size), wallOver, cpuOver, art.Size-p.art.Size)
	}
	// Means over all iterations: one pair is at the mercy of a busy machine.
	level, n := activities.DefaultZstdLevel, float64(b.N)
	b.ReportMetric(noageWall.Seconds()/n, fmt.Sprintf("zstd%dnoage-s", level))
	b.ReportMetric(noageCPU.Seconds()/n, fmt.Sprintf("zstd%dnoage-cpu-s", level))
	b.ReportMetric(ageWall.Seconds()/n, fmt.Sprintf("zstd%dage-s", level))
	b.ReportMetric(ageCPU.Seconds()/n, fmt.Sprintf("zstd%dage-cpu-s", level))
	b.ReportMetric(100*(ageWall.Seconds()-noageWall.Seconds())/noageWall.Seconds(), "age-overhead-wall-%")
	b.ReportMetric(100*(ageCPU.Seconds()-noageCPU.Seconds())/noageCPU.Seconds(), "age-overhead-cpu-%")
}

// benchAgeKeys returns keys that encrypt to one new X25519 recipient, as a
// worker with DRFLOW_AGE_RECIPIENTS does.
func benchAgeKeys(b *testing.B) *activities.AgeKeys {
	b.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		b.Fatal(err)
	}
	keys, err := activities.NewAgeKeys(config.Encryption{AgeRecipients: []string{id.Recipient().String()}})
	if err != nil {
		b.Fatal(err)
	}
	return keys
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

type measurement struct {
	err     error
	wall    time.Duration
	cpu     time.Duration // this process and its waited-for children (pg_dump)
	peakRSS int64         // of this process, reset before the run where Linux allows
}

// measure runs fn and returns its wall and CPU time and the peak RSS meanwhile.
func measure(fn func() error) measurement {
	runtime.GC()
	debug.FreeOSMemory()
	// Writing 5 to clear_refs resets VmHWM (peak RSS) to the current RSS.
	_ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
	cpu0 := cpuTime()
	var m measurement
	start := time.Now()
	m.err = fn()
	m.wall = time.Since(start)
	m.cpu = cpuTime() - cpu0
	m.peakRSS = peakRSS()
	return m
}

func cpuTime() time.Duration {
	var self, children syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &self)
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &children)
	tv := func(t syscall.Timeval) time.Duration { return time.Duration(t.Nano()) }
	return tv(self.Utime) + tv(self.Stime) + tv(children.Utime) + tv(children.Stime)
}

// peakRSS returns VmHWM from /proc/self/status, in bytes.
func peakRSS() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// pgDumpFcAndUpload is the baseline cron job: `pg_dump -Fc db > file`, then
// the file uploaded to the bucket. It returns the file's size and the time
// each step took.
func pgDumpFcAndUpload(ctx context.Context, binDir, dbURL, path string, objects *minio.Client, bucket, key string) (size int64, dumped, uploaded time.Duration, err error) {
	start := time.Now()
	out, err := os.Create(path)
	if err != nil {
		return 0, 0, 0, err
	}
	defer os.Remove(path)
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "pg_dump"), "-Fc", "--dbname="+dbURL)
	cmd.Stdout = out
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, 0, 0, fmt.Errorf("pg_dump -Fc: %w: %s", err, stderr.String())
	}
	dumped = time.Since(start)
	info, err := objects.FPutObject(ctx, bucket, key, path, minio.PutObjectOptions{ContentType: "application/octet-stream"})
	if err != nil {
		return 0, 0, 0, fmt.Errorf("upload: %w", err)
	}
	return info.Size, dumped, time.Since(start) - dumped, nil
}

func queryRow(ctx context.Context, dbURL, sql string, dest ...any) error {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	return conn.QueryRow(ctx, sql).Scan(dest...)
}

// generateBenchData fills the Kohakku controller schema (tasks_task, briefs)
// with about target bytes of Kohakku-like rows: English-like prompt text with a
// Zipf word distribution inside JSON payloads, repository names, labels, file
// lists, timestamps, and random SHA-256 hex in briefs. It returns the bytes
// generated. The data is the same for the same target.
func generateBenchData(ctx context.Context, dbURL string, target int64) (int64, error) {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, schemas.ControllerSQL); err != nil {
		return 0, fmt.Errorf("schema: %w", err)
	}
	g := newTextGen(1)
	now := time.Date(2026, 11, 21, 2, 0, 0, 0, time.UTC)
	var generated, tasks int64
	tasksCopied, err := conn.CopyFrom(ctx, pgx.Identifier{schemas.TasksTable},
		[]string{"id", "title", "payload", "status", "brief_key", "container_id", "attempt", "progress", "priority", "created_at", "updated_at", "dispatched_at", "started_at", "finished_at"},
		pgx.CopyFromFunc(func() ([]any, error) {
			if generated >= target {
				return nil, nil
			}
			tasks++
			id := tasks
			title := g.sentence(4, 12)
			payload, err := json.Marshal(g.payload(id))
			if err != nil {
				return nil, err
			}
			status := schemas.TaskStatuses[g.r.IntN(len(schemas.TaskStatuses))]
			var container *string
			if status != schemas.StatusPending {
				c := fmt.Sprintf("agent-%04d-%s", g.r.IntN(500), g.hex(6))
				container = &c
			}
			created := now.Add(-time.Duration(g.r.Int64N(int64(7 * 24 * time.Hour))))
			updated := created.Add(time.Duration(g.r.Int64N(int64(2 * time.Hour))))
			row := []any{id, title, string(payload), status, fmt.Sprintf("briefs/%d/brief.json", id), container,
				g.r.IntN(4), g.r.IntN(101), g.r.IntN(10), created, updated, &updated, &updated, &updated}
			generated += int64(len(title) + len(payload) + 180)
			return row, nil
		}))
	if err != nil {
		return 0, fmt.Errorf("copy tasks: %w", err)
	}
	var n int64
	_, err = conn.CopyFrom(ctx, pgx.Identifier{schemas.BriefsTable},
		[]string{"task_id", "key", "size", "sha256", "created_at"},
		pgx.CopyFromFunc(func() ([]any, error) {
			if n >= tasksCopied {
				return nil, nil
			}
			n++
			generated += 140
			return []any{n, fmt.Sprintf("briefs/%d/brief.json", n), 512 + g.r.Int64N(4096), g.hex(32), now}, nil
		}))
	if err != nil {
		return 0, fmt.Errorf("copy briefs: %w", err)
	}
	_, err = conn.Exec(ctx, "ANALYZE")
	return generated, err
}

// textGen makes deterministic English-like text: words from a fixed vocabulary,
// chosen with a Zipf distribution as in natural language.
type textGen struct {
	r     *rand.Rand
	words []string
	zipf  *rand.Zipf
}

func newTextGen(seed uint64) *textGen {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	common := strings.Fields(`the of and to a in is that for it with as on be this by are from
		or an at not have should when test build fix add update task agent error file function
		return value config deploy service request response data user run check update remove
		database table query index cache retry timeout queue worker container brief skill step`)
	syllables := strings.Fields("ka ri to ne mo sa lu vi de po an er in on st tr pl gr ch sh th qu ex")
	words := append([]string(nil), common...)
	for len(words) < 8000 {
		var w strings.Builder
		for range 2 + r.IntN(3) {
			w.WriteString(syllables[r.IntN(len(syllables))])
		}
		words = append(words, w.String())
	}
	return &textGen{r: r, words: words, zipf: rand.NewZipf(r, 1.07, 2, uint64(len(words)-1))}
}

func (g *textGen) word() string { return g.words[g.zipf.Uint64()] }

func (g *textGen) sentence(minWords, maxWords int) string {
	n := minWords + g.r.IntN(maxWords-minWords+1)
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(g.word())
	}
	return b.String()
}

func (g *textGen) hex(n int) string {
	const digits = "0123456789abcdef"
	b := make([]byte, 2*n)
	for i := range b {
		b[i] = digits[g.r.IntN(16)]
	}
	return string(b)
}

type benchPayload struct {
	Prompt      string            `json:"prompt"`
	Repo        string            `json:"repo"`
	Branch      string            `json:"branch"`
	Labels      []string          `json:"labels"`
	Files       []string          `json:"files"`
	Model       string            `json:"model"`
	Limits      map[string]int    `json:"limits"`
	RequestedBy string            `json:"requestedBy"`
	Env         map[string]string `json:"env"`
	Parent      *int64            `json:"parent,omitempty"`
}

func (g *textGen) payload(id int64) benchPayload {
	var prompt strings.Builder
	for range 3 + g.r.IntN(25) {
		prompt.WriteString(g.sentence(6, 24))
		prompt.WriteString(". ")
	}
	files := make([]string, 1+g.r.IntN(6))
	for i := range files {
		files[i] = fmt.Sprintf("src/%s/%s_%s.go", g.word(), g.word(), g.word())
	}
	p := benchPayload{
		Prompt:      prompt.String(),
		Repo:        fmt.Sprintf("github.com/kohakku/%s-%s", g.word(), g.word()),
		Branch:      fmt.Sprintf("task/%d-%s", id, g.word()),
		Labels:      []string{g.word(), g.word()},
		Files:       files,
		Model:       []string{"sonnet-4", "opus-4", "haiku-4"}[g.r.IntN(3)],
		Limits:      map[string]int{"cpu": 1 + g.r.IntN(4), "memoryMb": 1024 * (1 + g.r.IntN(8)), "timeoutS": 600 * (1 + g.r.IntN(12))},
		RequestedBy: fmt.Sprintf("user%d@example.com", g.r.IntN(300)),
		Env:         map[string]string{"GOFLAGS": "-mod=mod", "TRACE_ID": g.hex(16)},
	}
	if g.r.IntN(5) == 0 {
		parent := max(1, id-int64(g.r.IntN(1000)))
		p.Parent = &parent
	}
	return p
}
