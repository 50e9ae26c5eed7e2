package activities_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/klauspost/compress/zstd"
	"go.temporal.io/sdk/testsuite"

	"github.com/kohakku/drflow/activities"
	"github.com/kohakku/drflow/internal/config"
	"github.com/kohakku/drflow/internal/stack/stacktest"
	"github.com/kohakku/drflow/internal/store"
	"github.com/kohakku/drflow/schemas"
)

// benchRestoreJobs is pg_restore -j in both runs of BenchmarkVerifyVsPgRestore.
const benchRestoreJobs = 2

// BenchmarkVerifyVsPgRestore compares, on one generated database dumped with the
// Dump activity into an FS store, (a) VerifyDump with Restore (fetch + SHA-256 +
// zstd decode to a file, pg_restore --list and a full read of the archive,
// CREATE DATABASE, pg_restore -j 2, row counts, DROP DATABASE) with (b) a plain
// `pg_restore -j 2` of the same, already decompressed, dump file into a fresh
// database — what an operator would time by hand. It reports both wall times,
// their ratio (goal ≤ 1.2) and VerifyDump's own breakdown. The size of the
// generated rows is DRFLOW_BENCH_DB_MB MiB (default 64).
func BenchmarkVerifyVsPgRestore(b *testing.B) {
	mb := 64
	if v := os.Getenv(benchDBMBEnv); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("%s=%q: want a positive number of MiB", benchDBMBEnv, v)
		}
		mb = n
	}
	ctx := context.Background()
	pgSrv := stacktest.Postgres(b)
	const db = "bench"
	if err := pgSrv.CreateDatabase(ctx, db); err != nil {
		b.Fatal(err)
	}
	began := time.Now()
	raw, err := generateBenchData(ctx, pgSrv.URL(db), int64(mb)<<20)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("generated %.0f MiB of rows in %s", mib(raw), time.Since(began).Round(time.Millisecond))

	fs, err := store.NewFS(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	pg := &activities.Postgres{
		Config: config.Postgres{URL: pgSrv.URL("postgres")},
		Store:  fs,
		BinDir: pgSrv.BinDir(),
	}
	var s testsuite.WorkflowTestSuite
	env := s.NewTestActivityEnvironment()
	env.RegisterActivity(pg)
	v, err := env.ExecuteActivity(pg.Dump, activities.DumpInput{
		SetID: "bench", Database: db, Key: activities.PostgresKey("bench", db),
		CountTables: []string{schemas.TasksTable, schemas.BriefsTable},
	})
	if err != nil {
		b.Fatal(err)
	}
	var art activities.Artifact
	if err := v.Get(&art); err != nil {
		b.Fatal(err)
	}
	b.Logf("dump: raw %.1f MiB, stored %.1f MiB, rows %v", mib(art.RawSize), mib(art.Size), art.RowCounts)
	dumpFile := filepath.Join(b.TempDir(), "bench.dump")
	if err := decompressObject(ctx, fs, art.Key, dumpFile); err != nil {
		b.Fatal(err)
	}

	// The two runs alternate which goes first: the first restore after a big
	// write pays for WAL segments the second one finds recycled, and in a run of
	// one iteration that alone moved the ratio by 15%.
	var sum struct {
		plain, verify, download, restore, rto time.Duration
		peakRSS                               int64
		n                                     int
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		var plain, verify measurement
		var c activities.DumpCheck
		runPlain := func() {
			plainDB := fmt.Sprintf("bench_plain_%d", i)
			if err := pgSrv.CreateDatabase(ctx, plainDB); err != nil {
				b.Fatal(err)
			}
			plain = measure(func() error {
				cmd := exec.CommandContext(ctx, filepath.Join(pgSrv.BinDir(), "pg_restore"),
					"--no-owner", "--no-privileges", "--exit-on-error", "--jobs="+strconv.Itoa(benchRestoreJobs),
					"--dbname="+pgSrv.URL(plainDB), dumpFile)
				var stderr bytes.Buffer
				cmd.Stderr = &stderr
				if err := cmd.Run(); err != nil {
					return fmt.Errorf("pg_restore: %w: %s", err, stderr.String())
				}
				return nil
			})
			if plain.err != nil {
				b.Fatal(plain.err)
			}
			// Dropped outside the measurement, as VerifyDump drops its scratch
			// database inside it.
			if err := benchExecSQL(ctx, pgSrv.URL("postgres"), "DROP DATABASE "+pgx.Identifier{plainDB}.Sanitize()); err != nil {
				b.Fatal(err)
			}
		}
		runVerify := func() {
			env := s.NewTestActivityEnvironment()
			env.RegisterActivity(pg)
			verify = measure(func() error {
				v, err := env.ExecuteActivity(pg.VerifyDump, activities.VerifyDumpInput{
					SetID: "bench", Artifact: art, Restore: true, Jobs: benchRestoreJobs,
					Scratch: fmt.Sprintf("%sbench_%d", activities.ScratchPrefix, i),
				})
				if err != nil {
					return err
				}
				return v.Get(&c)
			})
			if verify.err != nil {
				b.Fatal(verify.err)
			}
			if !c.Passed {
				b.Fatalf("verification failed: %v", c.Problems)
			}
		}
		first := "pg_restore"
		if i%2 == 0 {
			runPlain()
			runVerify()
		} else {
			first = "VerifyDump"
			runVerify()
			runPlain()
		}

		other := verify.wall - c.Download - c.Restore
		ratio := verify.wall.Seconds() / plain.wall.Seconds()
		sum.plain += plain.wall
		sum.verify += verify.wall
		sum.download += c.Download
		sum.restore += c.Restore
		sum.rto += c.RTO
		sum.peakRSS = max(sum.peakRSS, verify.peakRSS)
		sum.n++
		// One line per iteration: go test keeps only the first lines a benchmark logs.
		b.Logf("#%d %s first: pg_restore -j %d %s | VerifyDump %s = download+checksum+decompress %s + pg_restore %s + list, full read, create, count, drop %s | %.3f×",
			i, first, benchRestoreJobs, plain.wall.Round(time.Millisecond), verify.wall.Round(time.Millisecond),
			c.Download.Round(time.Millisecond), c.Restore.Round(time.Millisecond), other.Round(time.Millisecond), ratio)
	}
	n := float64(sum.n)
	mean := func(d time.Duration) float64 { return d.Seconds() / n }
	ratio := sum.verify.Seconds() / sum.plain.Seconds()
	b.ReportMetric(mean(sum.plain), "pgrestore-s")
	b.ReportMetric(mean(sum.verify), "verify-s")
	b.ReportMetric(ratio, "verify/pgrestore")
	b.ReportMetric(mean(sum.download), "verify-download-s")
	b.ReportMetric(mean(sum.restore), "verify-restore-s")
	b.ReportMetric(mean(sum.verify-sum.download-sum.restore), "verify-other-s")
	b.ReportMetric(mean(sum.rto), "rto-s")
	b.ReportMetric(mib(sum.peakRSS), "verify-peakRSS-MiB")
	b.Logf("mean of %d on %d CPUs: pg_restore -j %d %.3fs, VerifyDump %.3fs (download %.3fs, pg_restore %.3fs, rest %.3fs), RTO %.3fs, peak RSS %.0f MiB: overhead %.3f× (goal ≤ 1.2)",
		sum.n, runtime.NumCPU(), benchRestoreJobs, mean(sum.plain), mean(sum.verify), mean(sum.download), mean(sum.restore),
		mean(sum.verify-sum.download-sum.restore), mean(sum.rto), mib(sum.peakRSS), ratio)
}

// decompressObject writes the zstd-decoded object key to path.
func decompressObject(ctx context.Context, st store.Store, key, path string) error {
	rc, err := st.Get(ctx, key)
	if err != nil {
		return err
	}
	defer rc.Close()
	dec, err := zstd.NewReader(rc)
	if err != nil {
		return err
	}
	defer dec.Close()
	out, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, dec); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func benchExecSQL(ctx context.Context, dbURL, sql string) error {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	return err
}
