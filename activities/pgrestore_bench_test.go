package activities_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.temporal.io/sdk/testsuite"

	"github.com/kohakku/drflow/activities"
	"github.com/kohakku/drflow/internal/config"
	"github.com/kohakku/drflow/internal/stack/stacktest"
	"github.com/kohakku/drflow/internal/store"
	"github.com/kohakku/drflow/schemas"
)

// BenchmarkRestoreVsPgRestore compares, on one generated database dumped with
// the Dump activity into an FS store, (a) RestoreDatabase over a live copy of
// it (fetch + SHA-256 + zstd decode to a file, pg_restore --list, CREATE
// DATABASE staging, pg_restore -j 2, ANALYZE, row counts, DROP + RENAME) with
// (b) the baseline an operator would time by hand: a plain `pg_restore -j 2` of
// the same, already decompressed, dump file into a fresh database, and that
// plus ANALYZE. It reports the wall times, the ratio against the baseline and
// RestoreDatabase's own breakdown. The size of the generated rows is
// DRFLOW_BENCH_DB_MB MiB (default 64).
func BenchmarkRestoreVsPgRestore(b *testing.B) {
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

	// The restores alternate which goes first, as in BenchmarkVerifyVsPgRestore:
	// the first big write after another pays for WAL segments.
	var sum struct {
		plain, plainAnalyze, restore, download, pgRestore, analyze, rto time.Duration
		n                                                               int
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		var plain, plainAnalyze, restore measurement
		var r activities.RestoreDatabaseResult
		runPlain := func() {
			plainDB := fmt.Sprintf("bench_plain_%d", i)
			if err := pgSrv.CreateDatabase(ctx, plainDB); err != nil {
				b.Fatal(err)
			}
			plain = measure(func() error {
				cmd := exec.CommandContext(ctx, filepath.Join(pgSrv.BinDir(), "pg_restore"),
					"--exit-on-error", "--jobs="+strconv.Itoa(benchRestoreJobs), "--dbname="+pgSrv.URL(plainDB), dumpFile)
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
			analyze := measure(func() error { return benchExecSQL(ctx, pgSrv.URL(plainDB), "ANALYZE") })
			if analyze.err != nil {
				b.Fatal(analyze.err)
			}
			plainAnalyze = measurement{wall: plain.wall + analyze.wall}
			if err := benchExecSQL(ctx, pgSrv.URL("postgres"), "DROP DATABASE "+pgx.Identifier{plainDB}.Sanitize()); err != nil {
				b.Fatal(err)
			}
		}
		runRestore := func() {
			env := s.NewTestActivityEnvironment()
			env.RegisterActivity(pg)
			restore = measure(func() error {
				// Over the live source from the second run on: the swap replaces it.
				v, err := env.ExecuteActivity(pg.RestoreDatabase, activities.RestoreDatabaseInput{
					SetID: "bench", Artifact: art, Jobs: benchRestoreJobs,
				})
				if err != nil {
					return err
				}
				return v.Get(&r)
			})
			if restore.err != nil {
				b.Fatal(restore.err)
			}
		}
		first := "pg_restore"
		if i%2 == 0 {
			runPlain()
			runRestore()
		} else {
			first = "RestoreDatabase"
			runRestore()
			runPlain()
		}
		sum.plain += plain.wall
		sum.plainAnalyze += plainAnalyze.wall
		sum.restore += restore.wall
		sum.download += r.Download
		sum.pgRestore += r.Restore
		sum.analyze += r.Analyze
		sum.rto += r.RTO
		sum.n++
		b.Logf("#%d %s first: pg_restore -j %d %s (+ANALYZE %s) | RestoreDatabase %s = download %s + list, create, pg_restore %s + analyze %s + count, swap %s | %.3f× pg_restore, %.3f× pg_restore+ANALYZE",
			i, first, benchRestoreJobs, plain.wall.Round(time.Millisecond), plainAnalyze.wall.Round(time.Millisecond),
			restore.wall.Round(time.Millisecond), r.Download.Round(time.Millisecond), r.Restore.Round(time.Millisecond),
			r.Analyze.Round(time.Millisecond), (restore.wall - r.RTO).Round(time.Millisecond),
			restore.wall.Seconds()/plain.wall.Seconds(), restore.wall.Seconds()/plainAnalyze.wall.Seconds())
	}
	n := float64(sum.n)
	mean := func(d time.Duration) float64 { return d.Seconds() / n }
	b.ReportMetric(mean(sum.plain), "pgrestore-s")
	b.ReportMetric(mean(sum.plainAnalyze), "pgrestore+analyze-s")
	b.ReportMetric(mean(sum.restore), "restore-s")
	b.ReportMetric(sum.restore.Seconds()/sum.plain.Seconds(), "restore/pgrestore")
	b.ReportMetric(mean(sum.rto), "rto-s")
	b.Logf("mean of %d on %d CPUs: pg_restore -j %d %.3fs, with ANALYZE %.3fs; RestoreDatabase %.3fs (download %.3fs, pg_restore %.3fs, analyze %.3fs), RTO %.3fs: %.3f× pg_restore, %.3f× pg_restore+ANALYZE",
		sum.n, runtime.NumCPU(), benchRestoreJobs, mean(sum.plain), mean(sum.plainAnalyze), mean(sum.restore),
		mean(sum.download), mean(sum.pgRestore), mean(sum.analyze), mean(sum.rto),
		sum.restore.Seconds()/sum.plain.Seconds(), sum.restore.Seconds()/sum.plainAnalyze.Seconds())
}
