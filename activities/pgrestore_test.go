package activities_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/kohakku/drflow/activities"
	"github.com/kohakku/drflow/internal/activitytest"
	"github.com/kohakku/drflow/internal/config"
	"github.com/kohakku/drflow/internal/stack"
	"github.com/kohakku/drflow/internal/stack/stacktest"
	"github.com/kohakku/drflow/internal/store"
	"github.com/kohakku/drflow/schemas"
)

// restoreRun is one execution of RestoreDatabase in the Temporal activity test environment.
type restoreRun struct {
	res        activities.RestoreDatabaseResult
	err        error
	heartbeats []activities.RestoreProgress
}

// phases returns the distinct phases of the heartbeats, in order.
func (r restoreRun) phases() []string {
	return activitytest.Phases(r.heartbeats, func(p activities.RestoreProgress) string { return p.Phase })
}

// runRestore executes pg.RestoreDatabase in a test activity environment whose
// activity context is a child of ctx (cancelling ctx cancels the activity).
// onBeat, when set, sees every heartbeat as the activity records it.
func runRestore(t *testing.T, ctx context.Context, pg *activities.Postgres, in activities.RestoreDatabaseInput, onBeat func(activities.RestoreProgress)) restoreRun {
	t.Helper()
	r := activitytest.Execute[activities.RestoreDatabaseResult, activities.RestoreProgress](t, ctx, pg, pg.RestoreDatabase, in, onBeat)
	return restoreRun{res: r.Result, err: r.Err, heartbeats: r.Heartbeats}
}

func runInspect(t *testing.T, pg *activities.Postgres, in activities.InspectDatabaseInput) (activities.DatabaseState, error) {
	t.Helper()
	var s testsuite.WorkflowTestSuite
	env := s.NewTestActivityEnvironment()
	env.RegisterActivity(pg)
	v, err := env.ExecuteActivity(pg.InspectDatabase, in)
	var st activities.DatabaseState
	if err == nil {
		require.NoError(t, v.Get(&st))
	}
	return st, err
}

// pgQuery runs one query that returns one row on the server of f, in database db.
func pgQuery(t *testing.T, srv *stack.Postgres, db, sql string, args []any, dest ...any) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, srv.URL(db))
	require.NoError(t, err)
	defer conn.Close(ctx)
	require.NoError(t, conn.QueryRow(ctx, sql, args...).Scan(dest...), sql)
}

// pgExec runs statements in database db of srv.
func pgExec(t *testing.T, srv *stack.Postgres, db string, stmts ...string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, srv.URL(db))
	require.NoError(t, err)
	defer conn.Close(ctx)
	for _, q := range stmts {
		_, err := conn.Exec(ctx, q)
		require.NoError(t, err, q)
	}
}

// fingerprint describes a database's public schema and data, so that two
// databases compare equal only when they hold the same tables, columns,
// constraints, indexes, sequence positions and rows: per table its row count
// and the MD5 of its rows in a fixed order, plus MD5s of the catalog.
func fingerprint(t *testing.T, srv *stack.Postgres, db string) map[string]string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, srv.URL(db))
	require.NoError(t, err)
	defer conn.Close(ctx)
	fp := map[string]string{}
	for name, q := range map[string]string{
		"columns": `SELECT md5(coalesce(string_agg(concat_ws(':', table_name, column_name, data_type, is_nullable, column_default, is_identity),
			',' ORDER BY table_name, ordinal_position), '')) FROM information_schema.columns WHERE table_schema = 'public'`,
		"constraints": `SELECT md5(coalesce(string_agg(conrelid::regclass || ':' || conname || ':' || pg_get_constraintdef(oid), ';' ORDER BY conrelid::regclass::text, conname), ''))
			FROM pg_constraint WHERE connamespace = 'public'::regnamespace`,
		"indexes":   `SELECT md5(coalesce(string_agg(indexdef, ';' ORDER BY indexname), '')) FROM pg_indexes WHERE schemaname = 'public'`,
		"sequences": `SELECT coalesce(string_agg(sequencename || '=' || coalesce(last_value::text, 'null'), ',' ORDER BY sequencename), '') FROM pg_sequences WHERE schemaname = 'public'`,
	} {
		var v string
		require.NoError(t, conn.QueryRow(ctx, q).Scan(&v), name)
		fp[name] = v
	}
	rows, err := conn.Query(ctx, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
	require.NoError(t, err)
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.NotEmpty(t, tables, "tables in %s", db)
	for _, tbl := range tables {
		var n int64
		var sum string
		id := pgx.Identifier{tbl}.Sanitize()
		require.NoError(t, conn.QueryRow(ctx, "SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM "+id+" t").Scan(&n, &sum))
		fp["table "+tbl] = fmt.Sprintf("%d rows, md5 %s", n, sum)
	}
	return fp
}

// databases lists the server's databases whose name starts with prefix.
func databases(t *testing.T, srv *stack.Postgres, prefix string) []string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, srv.URL("postgres"))
	require.NoError(t, err)
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT datname FROM pg_database WHERE starts_with(datname, $1) ORDER BY 1", prefix)
	require.NoError(t, err)
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return names
}

func databaseOwner(t *testing.T, srv *stack.Postgres, db string) string {
	t.Helper()
	var owner string
	pgQuery(t, srv, "postgres", "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1", []any{db}, &owner)
	return owner
}

// assertRestoreFailed checks a failed restore's error: non-retryable of type
// errType, naming every one of contains.
func assertRestoreFailed(t *testing.T, err error, errType string, contains ...string) {
	t.Helper()
	t.Logf("error: %v", err)
	app := appError(t, err)
	assert.True(t, app.NonRetryable(), "non-retryable: %v", err)
	assert.Equal(t, errType, app.Type(), "error type of %v", err)
	for _, s := range contains {
		assert.Contains(t, err.Error(), s)
	}
}

func TestRestoreDatabase(t *testing.T) {
	f := newPGFixture(t)
	srv := f.st.Postgres
	ctl, dsp := schemas.ControllerDB, schemas.DispatcherDB
	const set = "2026-11-21T02-00-00Z"
	arts := map[string]activities.Artifact{}
	source := map[string]map[string]string{} // fingerprints at the time of the dump
	for _, db := range []string{ctl, dsp} {
		arts[db] = dumpTo(t, f, f.fs, db, activities.PostgresKey(set, db))
		source[db] = fingerprint(t, srv, db)
	}
	noStaging := func(t *testing.T) {
		t.Helper()
		assert.Empty(t, databases(t, srv, activities.RestoreStagingPrefix), "staging databases left")
	}

	t.Run("into a new database", func(t *testing.T) {
		for _, db := range []string{ctl, dsp} {
			t.Run(db, func(t *testing.T) {
				tmp := verifyTempDir(t)
				art := arts[db]
				target := db + "-restored"
				run := runRestore(t, context.Background(), f.pg(f.fs), activities.RestoreDatabaseInput{
					SetID: set, Artifact: art, Target: target, Jobs: 2,
				}, nil)
				require.NoError(t, run.err)
				r := run.res
				assert.Equal(t, db, r.Database)
				assert.Equal(t, target, r.Target)
				assert.False(t, r.Replaced, "nothing to replace")
				require.Len(t, art.RowCounts, 2)
				assert.Equal(t, art.RowCounts, r.RowCounts, "row counts")
				assert.Equal(t, source[db], fingerprint(t, srv, target), "schema and data of the source")
				assert.Positive(t, r.Download)
				assert.Positive(t, r.Restore)
				assert.Positive(t, r.Analyze)
				assert.Equal(t, r.Download+r.Restore+r.Analyze, r.RTO)
				t.Logf("%s (%d bytes stored, %d raw): download %s, restore %s, analyze %s, RTO %s", db, art.Size, art.RawSize,
					r.Download.Round(time.Millisecond), r.Restore.Round(time.Millisecond), r.Analyze.Round(time.Millisecond), r.RTO.Round(time.Millisecond))
				var analyzed bool
				pgQuery(t, srv, target, "SELECT count(*) > 0 FROM pg_stat_user_tables WHERE last_analyze IS NOT NULL", nil, &analyzed)
				assert.True(t, analyzed, "ANALYZE ran in the restored database")
				assert.Equal(t, stack.PostgresSuperuser, databaseOwner(t, srv, target), "owned by the restoring role")
				noStaging(t)
				assertEmptyDir(t, tmp)
				assert.Equal(t, []string{"download", "restore", "analyze", "count", "swap", "done"}, run.phases())
				last := run.heartbeats[len(run.heartbeats)-1]
				assert.Equal(t, activities.RestoreProgress{Phase: "done", StoredBytes: art.Size, RawBytes: art.RawSize}, last)
			})
		}
	})

	t.Run("drops a leftover staging database first", func(t *testing.T) {
		target := ctl + "-leftover"
		staging := activities.StagingDatabase(target)
		require.NoError(t, srv.CreateDatabase(context.Background(), staging))
		pgExec(t, srv, staging, "CREATE TABLE half_restored (id int)")
		// A session of the attempt that died, still connected.
		held, err := pgx.Connect(context.Background(), srv.URL(staging))
		require.NoError(t, err)
		defer held.Close(context.Background())

		run := runRestore(t, context.Background(), f.pg(f.fs), activities.RestoreDatabaseInput{SetID: set, Artifact: arts[ctl], Target: target}, nil)
		require.NoError(t, run.err)
		assert.Equal(t, source[ctl], fingerprint(t, srv, target), "no trace of the leftover")
		noStaging(t)
	})

	t.Run("over a live database changed after the dump", func(t *testing.T) {
		tmp := verifyTempDir(t)
		const owner = "kohakku_app"
		pgExec(t, srv, "postgres", "CREATE ROLE "+owner, "ALTER DATABASE "+pgx.Identifier{ctl}.Sanitize()+" OWNER TO "+owner)
		pgExec(t, srv, ctl, "DELETE FROM tasks_task WHERE id % 2 = 0")
		changed := fingerprint(t, srv, ctl)
		require.NotEqual(t, source[ctl], changed)
		// The app is still connected: the swap ends its session.
		app, err := pgx.Connect(context.Background(), srv.URL(ctl))
		require.NoError(t, err)
		defer app.Close(context.Background())

		run := runRestore(t, context.Background(), f.pg(f.fs), activities.RestoreDatabaseInput{SetID: set, Artifact: arts[ctl]}, nil)
		require.NoError(t, run.err)
		r := run.res
		assert.True(t, r.Replaced)
		assert.Equal(t, ctl, r.Target, "target defaults to the source")
		assert.Equal(t, arts[ctl].RowCounts, r.RowCounts)
		assert.Equal(t, source[ctl], fingerprint(t, srv, ctl), "equals the dump again")
		assert.Equal(t, owner, databaseOwner(t, srv, ctl), "owner kept")
		noStaging(t)
		assertEmptyDir(t, tmp)
		assert.Error(t, app.Ping(context.Background()), "the app's session to the replaced database was ended")
		t.Logf("replaced %s: RTO %s", ctl, r.RTO.Round(time.Millisecond))
	})

	t.Run("bad dump leaves the target unchanged", func(t *testing.T) {
		badDumpTests(t, f, arts[ctl])
		noStaging(t)
	})

	t.Run("pg_restore failure leaves the target unchanged", func(t *testing.T) {
		restoreFailedTests(t, f)
		noStaging(t)
	})

	t.Run("row counts differ from the manifest", func(t *testing.T) {
		tmp := verifyTempDir(t)
		art := arts[ctl]
		tasks := art.RowCounts[schemas.TasksTable]
		art.RowCounts = map[string]int64{
			schemas.TasksTable:  tasks + 1,
			schemas.BriefsTable: art.RowCounts[schemas.BriefsTable],
			"no_such_table":     5,
		}
		before := fingerprint(t, srv, ctl)
		run := runRestore(t, context.Background(), f.pg(f.fs), activities.RestoreDatabaseInput{SetID: set, Artifact: art}, nil)
		assertRestoreFailed(t, run.err, activities.ErrRowCountMismatch, art.Key,
			"table no_such_table is missing from the restored database, 5 rows in the manifest",
			fmt.Sprintf("table %s has %d rows restored, %d in the manifest", schemas.TasksTable, tasks, tasks+1),
			`"`+ctl+`" was not touched`)
		assert.Equal(t, before, fingerprint(t, srv, ctl), "counted before the swap: target unchanged")
		assert.Equal(t, []string{"download", "restore", "analyze", "count", "drop"}, run.phases())
		noStaging(t)
		assertEmptyDir(t, tmp)
	})

	t.Run("server lost during pg_restore is retried", func(t *testing.T) {
		addPasswordRole(t, f)
		pgExec(t, srv, "postgres", "ALTER ROLE "+pwRole+" CREATEDB")
		pg := f.pg(f.fs)
		pg.Config = passwordConfig(f, pwPassword)
		pg.BinDir = fakePgRestore(t, f, lostPgRestore)
		target := ctl + "-lost"
		run := runRestore(t, context.Background(), pg, activities.RestoreDatabaseInput{SetID: set, Artifact: arts[ctl], Target: target, NoOwner: true}, nil)
		t.Logf("error: %v", run.err)
		app := appError(t, run.err)
		assert.False(t, app.NonRetryable(), "retryable: %v", run.err)
		assert.Contains(t, run.err.Error(), "lost the server")
		assert.Contains(t, run.err.Error(), "server closed the connection unexpectedly (password xxxxx)")
		assert.NotContains(t, allText(run.err), pwPassword)
		assert.Empty(t, databases(t, srv, target), "no target")
		noStaging(t)
	})

	t.Run("password goes to pg_restore by environment", func(t *testing.T) {
		addPasswordRole(t, f)
		pgExec(t, srv, "postgres", "ALTER ROLE "+pwRole+" CREATEDB")
		bin := fakePgRestore(t, f, recordingPgRestore)
		pg := f.pg(f.fs)
		pg.Config = passwordConfig(f, pwPassword)
		pg.BinDir = bin
		target := dsp + "-pw"
		// The role owns no roles of the dump: without owners and privileges.
		run := runRestore(t, context.Background(), pg, activities.RestoreDatabaseInput{SetID: set, Artifact: arts[dsp], Target: target, NoOwner: true}, nil)
		require.NoError(t, run.err)
		assert.Equal(t, arts[dsp].RowCounts, run.res.RowCounts)
		assert.Equal(t, pwRole, databaseOwner(t, srv, target))

		args, err := os.ReadFile(filepath.Join(bin, "args"))
		require.NoError(t, err)
		for _, form := range []string{pwPassword, "p@ss", "S3cr3t"} {
			assert.NotContains(t, string(args), form, "pg_restore's argv")
		}
		for _, a := range []string{"--no-password", "--no-owner", "--no-privileges", "--exit-on-error", "--dbname=postgres://" + pwRole + "@127.0.0.1:"} {
			assert.Contains(t, string(args), a)
		}
		_, err = os.Stat(filepath.Join(bin, "pgpassword"))
		assert.NoError(t, err, "PGPASSWORD set for pg_restore")
		noStaging(t)
	})

	t.Run("a retry finishes the swap the worker died in or after", func(t *testing.T) {
		resumedSwapTests(t, f, arts[ctl], source[ctl])
		noStaging(t)
	})

	t.Run("errors", func(t *testing.T) {
		restoreErrorTests(t, f, arts[ctl])
		noStaging(t)
	})

	t.Run("cancel during the restore", func(t *testing.T) {
		cancelRestoreDatabaseTest(t, f, arts[ctl])
		noStaging(t)
	})

	// Last: it wipes the server.
	t.Run("into a wiped server", func(t *testing.T) {
		ctx := context.Background()
		require.NoError(t, srv.Wipe())
		require.NoError(t, srv.Start(ctx))
		require.Empty(t, databases(t, srv, "kohakku"), "wiped")
		for _, db := range []string{ctl, dsp} {
			run := runRestore(t, ctx, f.pg(f.fs), activities.RestoreDatabaseInput{SetID: set, Artifact: arts[db], Jobs: 2}, nil)
			require.NoError(t, run.err, db)
			assert.False(t, run.res.Replaced, db)
			assert.Equal(t, arts[db].RowCounts, run.res.RowCounts, db)
			assert.Equal(t, arts[db].RowCounts, rowCounts(t, srv.URL(db), countTables[db]), db)
			assert.Equal(t, source[db], fingerprint(t, srv, db), db)
			t.Logf("%s restored on an empty server: RTO %s", db, run.res.RTO.Round(time.Millisecond))
		}
		assert.Equal(t, []string{ctl, dsp}, databases(t, srv, "kohakku"))
		noStaging(t)
	})
}

// badDumpTests restores stored objects that are not the dump the manifest
// describes, or not a readable dump: each fails for good, naming the key, and
// the live target is not touched.
func badDumpTests(t *testing.T, f *pgFixture, orig activities.Artifact) {
	srv := f.st.Postgres
	ctl := schemas.ControllerDB
	body := readFSObject(t, f, orig.Key)
	raw := zstdDecode(t, body)
	tests := []struct {
		name string
		// store returns the artifact of the manifest, after storing its object.
		store   func(key string) activities.Artifact
		errType string
		expect  []string
	}{
		{
			name: "one flipped byte",
			store: func(key string) activities.Artifact {
				b := slices.Clone(body)
				b[len(b)/2] ^= 0x01
				art := putFSObject(t, f, orig, key, b, -1)
				art.Size, art.SHA256 = orig.Size, orig.SHA256 // the manifest's figures
				return art
			},
			errType: activities.ErrChecksumMismatch,
			expect:  []string{"checksum mismatch: sha256 ", " in the store, " + orig.SHA256 + " in the manifest"},
		},
		{
			name: "one byte more",
			store: func(key string) activities.Artifact {
				art := putFSObject(t, f, orig, key, append(slices.Clone(body), 0), -1)
				art.Size, art.SHA256 = orig.Size, orig.SHA256
				return art
			},
			errType: activities.ErrChecksumMismatch,
			expect:  []string{fmt.Sprintf("size mismatch: %d bytes in the store, %d in the manifest", orig.Size+1, orig.Size)},
		},
		{
			name: "first half of the dump",
			// Checksums match, the table of contents reads, the data ends early.
			store: func(key string) activities.Artifact {
				return putFSObject(t, f, orig, key, zstdEncode(t, raw[:len(raw)/2]), int64(len(raw)/2))
			},
			errType: activities.ErrArchiveCorrupt,
			expect:  []string{"pg_restore cannot read the archive's data", "pg_restore: error:"},
		},
		{
			name: "not a dump",
			store: func(key string) activities.Artifact {
				return putFSObject(t, f, orig, key, zstdEncode(t, []byte(strings.Repeat("SELECT 1;\n", 1000))), 10000)
			},
			errType: activities.ErrArchiveCorrupt,
			expect:  []string{"pg_restore --list cannot read it", "input file does not appear to be a valid archive"},
		},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmp := verifyTempDir(t)
			set := fmt.Sprintf("2026-11-21T07-00-0%dZ", i)
			key := activities.PostgresKey(set, ctl)
			art := tt.store(key)
			before := fingerprint(t, srv, ctl)
			run := runRestore(t, context.Background(), f.pg(f.fs), activities.RestoreDatabaseInput{SetID: set, Artifact: art, Jobs: 2}, nil)
			assertRestoreFailed(t, run.err, tt.errType, append([]string{key, `"` + ctl + `" was not touched`, "another set (setId)", "VerifyBackup on " + set}, tt.expect...)...)
			assert.Equal(t, before, fingerprint(t, srv, ctl), "target unchanged")
			assert.Empty(t, databases(t, srv, activities.RestoreStagingPrefix), "no staging database")
			assertEmptyDir(t, tmp)
			assert.NotContains(t, run.phases(), "swap")
		})
	}
}

// restoreFailedTests dumps a database whose table belongs to a role, then
// drops the role, as on a rebuilt server whose roles were not recreated: the
// restore fails in pg_restore and leaves the live database as it is; with
// NoOwner it succeeds.
func restoreFailedTests(t *testing.T, f *pgFixture) {
	ctx := context.Background()
	srv := f.st.Postgres
	const db, role = "restore-owned", "drflow_restore_owner"
	require.NoError(t, srv.CreateDatabase(ctx, db))
	pgExec(t, srv, "postgres", "CREATE ROLE "+role)
	pgExec(t, srv, db,
		"CREATE TABLE notes (id int PRIMARY KEY, body text)",
		"INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 100) g",
		"ALTER TABLE notes OWNER TO "+role,
		"GRANT SELECT ON notes TO PUBLIC")
	dump := runDump(t, ctx, f.pg(f.fs), activities.DumpInput{Database: db, Key: activities.PostgresKey("2026-11-21T08-00-00Z", db), CountTables: []string{"notes"}}, nil)
	require.NoError(t, dump.err)
	dumped := fingerprint(t, srv, db)
	pgExec(t, srv, db,
		"INSERT INTO notes VALUES (101, 'written after the dump')",
		"REASSIGN OWNED BY "+role+" TO "+stack.PostgresSuperuser,
		"DROP OWNED BY "+role)
	pgExec(t, srv, "postgres", "DROP ROLE "+role)
	live := fingerprint(t, srv, db)

	tmp := verifyTempDir(t)
	bin := fakePgRestore(t, f, recordingPgRestore)
	pg := f.pg(f.fs)
	pg.BinDir = bin
	run := runRestore(t, ctx, pg, activities.RestoreDatabaseInput{SetID: "2026-11-21T08-00-00Z", Artifact: dump.art, Jobs: 2}, nil)
	assertRestoreFailed(t, run.err, activities.ErrRestoreFailed,
		"pg_restore into staging database "+activities.StagingDatabase(db)+" failed: ",
		`role "`+role+`" does not exist`, `"`+db+`" was not touched`,
		`fix: create role "`+role+`" on this server`, "or set noOwner")
	assert.Equal(t, live, fingerprint(t, srv, db), "target unchanged")
	assert.Empty(t, databases(t, srv, activities.RestoreStagingPrefix), "staging database dropped")
	assert.Equal(t, []string{"download", "restore", "drop"}, run.phases())
	assertEmptyDir(t, tmp)
	assertPgRestoreGone(t, bin)

	run = runRestore(t, ctx, pg, activities.RestoreDatabaseInput{SetID: "2026-11-21T08-00-00Z", Artifact: dump.art, NoOwner: true}, nil)
	require.NoError(t, run.err)
	assert.True(t, run.res.Replaced)
	assert.Equal(t, map[string]int64{"notes": 100}, run.res.RowCounts)
	got := fingerprint(t, srv, db)
	assert.Equal(t, dumped["table notes"], got["table notes"], "the dumped rows")
	var owner string
	pgQuery(t, srv, db, "SELECT tableowner FROM pg_tables WHERE tablename = 'notes'", nil, &owner)
	assert.Equal(t, stack.PostgresSuperuser, owner, "owned by the restoring role")
	assertEmptyDir(t, tmp)
}

func restoreErrorTests(t *testing.T, f *pgFixture, art activities.Artifact) {
	addPasswordRole(t, f)
	const secret = "hunter2-secret"
	ctl := schemas.ControllerDB
	with := func(edit func(a *activities.Artifact)) activities.Artifact {
		a := art
		edit(&a)
		return a
	}
	tests := []struct {
		name     string
		setup    func(pg *activities.Postgres)
		in       activities.RestoreDatabaseInput
		errType  string // "" for a retryable error
		contains []string
		secret   string
	}{
		{
			name:     "empty key",
			in:       activities.RestoreDatabaseInput{Artifact: with(func(a *activities.Artifact) { a.Key = "" })},
			errType:  activities.ErrInvalidInput,
			contains: []string{`input field "artifact.key"`, ctl},
		},
		{
			name:     "not a postgres artifact",
			in:       activities.RestoreDatabaseInput{Artifact: with(func(a *activities.Artifact) { a.Kind = activities.KindRedis })},
			errType:  activities.ErrInvalidInput,
			contains: []string{`input field "artifact.kind"`, `"redis"`},
		},
		{
			name:     "no kind",
			in:       activities.RestoreDatabaseInput{Artifact: with(func(a *activities.Artifact) { a.Kind = "" })},
			errType:  activities.ErrInvalidInput,
			contains: []string{`input field "artifact.kind"`},
		},
		{
			name:     "bad sha256",
			in:       activities.RestoreDatabaseInput{Artifact: with(func(a *activities.Artifact) { a.SHA256 = "abc" })},
			errType:  activities.ErrInvalidInput,
			contains: []string{`input field "artifact.sha256"`, `"abc"`},
		},
		{
			name:     "no target and no source",
			in:       activities.RestoreDatabaseInput{Artifact: with(func(a *activities.Artifact) { a.Source = "" })},
			errType:  activities.ErrInvalidInput,
			contains: []string{`input field "artifact.source (the default target)"`, "empty"},
		},
		{
			name:     "target too long",
			in:       activities.RestoreDatabaseInput{Artifact: art, Target: strings.Repeat("k", 64)},
			errType:  activities.ErrInvalidInput,
			contains: []string{`input field "target"`, "longer than 63 bytes"},
		},
		{
			name:     "target with NUL",
			in:       activities.RestoreDatabaseInput{Artifact: art, Target: "kohakku\x00x"},
			errType:  activities.ErrInvalidInput,
			contains: []string{`input field "target"`, "NUL"},
		},
		{
			name:     "target postgres",
			in:       activities.RestoreDatabaseInput{Artifact: art, Target: "postgres"},
			errType:  activities.ErrInvalidInput,
			contains: []string{`input field "target"`, `"postgres" is a system database`},
		},
		{
			name:     "target template0",
			in:       activities.RestoreDatabaseInput{Artifact: art, Target: "template0"},
			errType:  activities.ErrInvalidInput,
			contains: []string{`input field "target"`, "system database"},
		},
		{
			name:     "source template1",
			in:       activities.RestoreDatabaseInput{Artifact: with(func(a *activities.Artifact) { a.Source = "template1" })},
			errType:  activities.ErrInvalidInput,
			contains: []string{`input field "artifact.source (the default target)"`, "system database"},
		},
		{
			name:     "target a scratch database",
			in:       activities.RestoreDatabaseInput{Artifact: art, Target: activities.ScratchPrefix + "x"},
			errType:  activities.ErrInvalidInput,
			contains: []string{`input field "target"`, "reserved"},
		},
		{
			name:     "target a staging database",
			in:       activities.RestoreDatabaseInput{Artifact: art, Target: activities.StagingDatabase(ctl)},
			errType:  activities.ErrInvalidInput,
			contains: []string{`input field "target"`, "reserved"},
		},
		{
			name:     "negative jobs",
			in:       activities.RestoreDatabaseInput{Artifact: art, Jobs: -1},
			errType:  activities.ErrInvalidInput,
			contains: []string{`input field "jobs"`},
		},
		{
			name:     "object missing from the store",
			in:       activities.RestoreDatabaseInput{Artifact: with(func(a *activities.Artifact) { a.Key = activities.PostgresKey("2026-01-01T00-00-00Z", ctl) })},
			errType:  activities.ErrArtifactNotFound,
			contains: []string{activities.PostgresKey("2026-01-01T00-00-00Z", ctl), "does not hold", "another set"},
		},
		{
			name:     "no server configured",
			setup:    func(pg *activities.Postgres) { pg.Config = config.Postgres{} },
			in:       activities.RestoreDatabaseInput{Artifact: art},
			errType:  activities.ErrInvalidConfig,
			contains: []string{"DRFLOW_POSTGRES_URL"},
		},
		{
			name:     "wrong password",
			setup:    func(pg *activities.Postgres) { pg.Config = passwordConfig(f, secret) },
			in:       activities.RestoreDatabaseInput{Artifact: art, Target: ctl + "-auth"},
			errType:  activities.ErrAuthFailed,
			contains: []string{ctl + "-auth", "password authentication failed", "fix: check the role and password of DRFLOW_POSTGRES_URL"},
			secret:   secret,
		},
		{
			name: "role without CREATEDB",
			setup: func(pg *activities.Postgres) {
				pgExec(t, f.st.Postgres, "postgres", "ALTER ROLE "+pwRole+" NOCREATEDB")
				t.Cleanup(func() { pgExec(t, f.st.Postgres, "postgres", "ALTER ROLE "+pwRole+" CREATEDB") })
				pg.Config = passwordConfig(f, pwPassword)
			},
			in:       activities.RestoreDatabaseInput{Artifact: art, Target: ctl + "-nocreatedb"},
			errType:  activities.ErrPermissionDenied,
			contains: []string{ctl + "-nocreatedb", `role "` + pwRole + `" may not create the staging database`, `ALTER ROLE "` + pwRole + `" CREATEDB`},
			secret:   pwPassword,
		},
		{
			name: "server unreachable is retried",
			setup: func(pg *activities.Postgres) {
				pg.Config = config.Postgres{URL: closedPortURL(t), Password: secret}
			},
			in:       activities.RestoreDatabaseInput{Artifact: art},
			contains: []string{art.Key, ctl, "connect"},
			secret:   secret,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmp := verifyTempDir(t)
			pg := f.pg(f.fs)
			if tt.setup != nil {
				tt.setup(pg)
			}
			before := fingerprint(t, f.st.Postgres, ctl)
			run := runRestore(t, context.Background(), pg, tt.in, nil)
			t.Logf("error: %v", run.err)
			app := appError(t, run.err)
			if tt.errType == "" {
				assert.False(t, app.NonRetryable(), "retryable: %v", run.err)
			} else {
				assert.True(t, app.NonRetryable(), "non-retryable: %v", run.err)
				assert.Equal(t, tt.errType, app.Type(), "error type of %v", run.err)
			}
			for _, s := range tt.contains {
				assert.Contains(t, run.err.Error(), s)
			}
			if tt.secret != "" {
				assert.NotContains(t, allText(run.err), tt.secret)
			}
			assert.Equal(t, before, fingerprint(t, f.st.Postgres, ctl), "target unchanged")
			assert.NotContains(t, run.phases(), "restore", "nothing restored")
			assertEmptyDir(t, tmp)
		})
	}
}

// lostPgRestore lets pg_restore --list through and fails the restore as
// pg_restore does when the server goes away, repeating the password it was given.
const lostPgRestore = `case "$*" in *--list*) exec "$REAL" "$@";; esac
echo "pg_restore: error: could not execute query: server closed the connection unexpectedly (password $PGPASSWORD)" >&2
exit 1`

// blockingPgRestore lets pg_restore --list through and turns the restore
// itself into a process that waits to be killed, after creating $DIR/restoring.
const blockingPgRestore = `echo $$ >> "$DIR/pids"
case "$*" in *--list*) exec "$REAL" "$@";; esac
touch "$DIR/restoring"
exec sleep 600`

// cancelRestoreDatabaseTest cancels the activity while pg_restore runs: the
// process group is killed, the staging database dropped, the staged file
// removed and the target left as it was.
func cancelRestoreDatabaseTest(t *testing.T, f *pgFixture, art activities.Artifact) {
	srv := f.st.Postgres
	ctl := schemas.ControllerDB
	tmp := verifyTempDir(t)
	bin := fakePgRestore(t, f, blockingPgRestore)
	pg := f.pg(f.fs)
	pg.BinDir = bin
	before := fingerprint(t, srv, ctl)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan restoreRun, 1)
	go func() {
		done <- runRestore(t, ctx, pg, activities.RestoreDatabaseInput{Artifact: art}, nil)
	}()
	waitForFile(t, filepath.Join(bin, "restoring"))
	assert.Equal(t, []string{activities.StagingDatabase(ctl)}, databases(t, srv, activities.RestoreStagingPrefix), "restoring into staging")
	cancelled := time.Now()
	cancel()
	var run restoreRun
	select {
	case run = <-done:
	case <-time.After(time.Minute):
		t.Fatal("cancelled restore did not end")
	}
	t.Logf("ended %s after the cancellation: %v", time.Since(cancelled).Round(time.Millisecond), run.err)
	require.Error(t, run.err)
	var canceled *temporal.CanceledError
	if !errors.As(run.err, &canceled) {
		assert.Contains(t, run.err.Error(), "context canceled")
	}
	assert.Empty(t, databases(t, srv, activities.RestoreStagingPrefix), "staging database dropped")
	assert.Equal(t, before, fingerprint(t, srv, ctl), "target unchanged")
	assertPgRestoreGone(t, bin)
	assertEmptyDir(t, tmp)
	assert.Contains(t, run.phases(), "drop")
}

func TestInspectDatabase(t *testing.T) {
	ctx := context.Background()
	srv := stacktest.Postgres(t)
	const db = "inspect-me"
	require.NoError(t, srv.CreateDatabase(ctx, db))
	pgExec(t, srv, db, schemas.ControllerSQL,
		"INSERT INTO tasks_task (id, title, brief_key) SELECT g, 'task ' || g, 'briefs/' || g || '/brief.json' FROM generate_series(1, 42) g")
	pg := &activities.Postgres{Config: config.Postgres{URL: srv.URL("postgres")}, BinDir: srv.BinDir()}

	t.Run("exists with counts", func(t *testing.T) {
		st, err := runInspect(t, pg, activities.InspectDatabaseInput{Database: db,
			CountTables: []string{schemas.TasksTable, schemas.BriefsTable, "no_such_table", "nosuchschema.tasks_task", schemas.TasksTable}})
		require.NoError(t, err)
		assert.True(t, st.Reachable)
		assert.True(t, st.Exists)
		assert.Equal(t, db, st.Database)
		assert.Greater(t, st.SizeBytes, int64(1<<20), "pg_database_size")
		assert.Regexp(t, `^PostgreSQL 1\d\.\d+$`, st.ServerVersion)
		assert.Equal(t, map[string]int64{schemas.TasksTable: 42, schemas.BriefsTable: 0, "no_such_table": -1, "nosuchschema.tasks_task": -1}, st.RowCounts)
		assert.Empty(t, st.Error)
	})

	t.Run("missing database", func(t *testing.T) {
		st, err := runInspect(t, pg, activities.InspectDatabaseInput{Database: "no-such-db", CountTables: []string{schemas.TasksTable}})
		require.NoError(t, err)
		assert.True(t, st.Reachable)
		assert.False(t, st.Exists)
		assert.Zero(t, st.SizeBytes)
		assert.Nil(t, st.RowCounts)
		assert.NotEmpty(t, st.ServerVersion)
	})

	t.Run("errors", func(t *testing.T) {
		addPasswordRole(t, &pgFixture{st: &stack.Stack{Postgres: srv}})
		const secret = "hunter2-secret"
		tests := []struct {
			name     string
			pg       *activities.Postgres
			in       activities.InspectDatabaseInput
			errType  string
			contains []string
		}{
			{
				name:     "wrong password",
				pg:       &activities.Postgres{Config: config.Postgres{URL: fmt.Sprintf("postgres://%s@127.0.0.1:%d/postgres?sslmode=disable", pwRole, srv.Port()), Password: secret}},
				in:       activities.InspectDatabaseInput{Database: db},
				errType:  activities.ErrAuthFailed,
				contains: []string{db, "password authentication failed", "fix: check the role and password"},
			},
			{
				name:     "empty database",
				pg:       pg,
				in:       activities.InspectDatabaseInput{},
				errType:  activities.ErrInvalidInput,
				contains: []string{`input field "database"`},
			},
			{
				name:     "bad count table",
				pg:       pg,
				in:       activities.InspectDatabaseInput{Database: db, CountTables: []string{"a."}},
				errType:  activities.ErrInvalidInput,
				contains: []string{`input field "countTables"`, `"a."`},
			},
			{
				name:     "no server configured",
				pg:       &activities.Postgres{},
				in:       activities.InspectDatabaseInput{Database: db},
				errType:  activities.ErrInvalidConfig,
				contains: []string{"DRFLOW_POSTGRES_URL"},
			},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				_, err := runInspect(t, tt.pg, tt.in)
				assertRestoreFailed(t, err, tt.errType, tt.contains...)
				assert.NotContains(t, allText(err), secret)
			})
		}
	})

	t.Run("nothing listening", func(t *testing.T) {
		const secret = "hunter2-secret"
		st, err := runInspect(t, &activities.Postgres{Config: config.Postgres{URL: closedPortURL(t), Password: secret}},
			activities.InspectDatabaseInput{Database: db})
		require.NoError(t, err, "an unreachable server is a state")
		assert.False(t, st.Reachable)
		assert.False(t, st.Exists)
		assert.Contains(t, st.Error, "connect")
		assert.NotContains(t, st.Error, secret)
		t.Logf("error: %s", st.Error)
	})

	// Last: it stops the server.
	t.Run("server stopped", func(t *testing.T) {
		require.NoError(t, srv.Stop(ctx))
		st, err := runInspect(t, pg, activities.InspectDatabaseInput{Database: db, CountTables: []string{schemas.TasksTable}})
		require.NoError(t, err, "an unreachable server is a state")
		assert.False(t, st.Reachable)
		assert.False(t, st.Exists)
		assert.Nil(t, st.RowCounts)
		assert.Contains(t, st.Error, "connect")
		t.Logf("error: %s", st.Error)
	})
}

// resumedSwapTests plays the retries of a restore whose worker died in its swap
// (the renames' transaction rolled back) and after it (the replaced database
// not dropped yet): the retry finds the mark, does not download again, and
// finishes. A restore of another activity does not take the mark for its own.
func resumedSwapTests(t *testing.T, f *pgFixture, art activities.Artifact, source map[string]string) {
	srv := f.st.Postgres
	ctx := activities.WithRestoreIdentity(context.Background(), "resumed-swap-1")
	target := art.Source + "-resumed"
	staging := activities.StagingDatabase(target)
	id := func(name string) string { return pgx.Identifier{name}.Sanitize() }
	comment := func(db string) string {
		var c *string
		pgQuery(t, srv, "postgres", "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1", []any{db}, &c)
		if c == nil {
			return ""
		}
		return *c
	}
	in := activities.RestoreDatabaseInput{SetID: "2026-11-21T02-00-00Z", Artifact: art, Target: target}

	// The first attempt, over a live database.
	require.NoError(t, srv.CreateDatabase(context.Background(), target))
	pgExec(t, srv, target, "CREATE TABLE live_only (id int)")
	first := runRestore(t, ctx, f.pg(f.fs), in, nil)
	require.NoError(t, first.err)
	require.True(t, first.res.Replaced)
	mark := comment(target)
	assert.Contains(t, mark, art.Key, "the mark names the artifact")
	assert.Contains(t, mark, art.SHA256, "and its checksum")
	assert.Contains(t, mark, "replaces the existing database")

	// A store without the dump: a retry that downloaded would fail.
	empty, err := store.NewFS(t.TempDir())
	require.NoError(t, err)

	t.Run("died in the swap", func(t *testing.T) {
		// The transaction rolled back: the staging database is complete and marked,
		// the target is the old database, closed to new connections.
		pgExec(t, srv, "postgres", "ALTER DATABASE "+id(target)+" RENAME TO "+id(staging))
		require.NoError(t, srv.CreateDatabase(context.Background(), target))
		pgExec(t, srv, target, "CREATE TABLE live_only (id int)")
		pgExec(t, srv, "postgres", "ALTER DATABASE "+id(target)+" ALLOW_CONNECTIONS false")
		tmp := verifyTempDir(t)

		run := runRestore(t, ctx, f.pg(empty), in, nil)
		require.NoError(t, run.err)
		assert.True(t, run.res.Replaced, "as the first attempt saw it")
		assert.Equal(t, art.RowCounts, run.res.RowCounts)
		assert.Equal(t, source, fingerprint(t, srv, target), "the restored database swapped in")
		assert.Equal(t, mark, comment(target), "the mark carried over")
		assert.Empty(t, databases(t, srv, activities.RestoreStagingPrefix), "no staging or replaced database left")
		assert.Equal(t, []string{"download", "count", "swap", "done"}, run.phases(), "no download, no restore")
		assertEmptyDir(t, tmp)
		conn, err := pgx.Connect(context.Background(), srv.URL(target))
		require.NoError(t, err, "the target takes connections")
		conn.Close(context.Background())
	})

	t.Run("died after the swap", func(t *testing.T) {
		// Committed: the target is restored, the replaced database not dropped yet.
		require.NoError(t, srv.CreateDatabase(context.Background(), staging+"_replaced"))
		run := runRestore(t, ctx, f.pg(empty), in, nil)
		require.NoError(t, run.err)
		assert.True(t, run.res.Replaced)
		assert.Equal(t, art.RowCounts, run.res.RowCounts)
		assert.Equal(t, source, fingerprint(t, srv, target))
		assert.Empty(t, databases(t, srv, activities.RestoreStagingPrefix), "replaced database dropped")
		assert.Equal(t, []string{"download", "count", "swap", "done"}, run.phases())
	})

	t.Run("another restore is not a retry", func(t *testing.T) {
		pgExec(t, srv, target, "CREATE TABLE changed_since (id int)")
		run := runRestore(t, activities.WithRestoreIdentity(context.Background(), "resumed-swap-2"), f.pg(empty), in, nil)
		assertRestoreFailed(t, run.err, activities.ErrArtifactNotFound, art.Key)
		pgExec(t, srv, target, "DROP TABLE changed_since")
	})

	t.Run("a failed swap keeps the marked staging database for the retry", func(t *testing.T) {
		// The target's owner is a role the restoring one may not give the staging
		// database to: the swap fails after the mark, before the target is touched.
		addPasswordRole(t, f)
		const owner = "drflow_resume_owner"
		pgExec(t, srv, "postgres", "ALTER ROLE "+pwRole+" CREATEDB", "DROP ROLE IF EXISTS "+owner, "CREATE ROLE "+owner,
			"ALTER DATABASE "+id(target)+" OWNER TO "+owner)
		before := fingerprint(t, srv, target)
		pg := f.pg(f.fs)
		pg.Config = passwordConfig(f, pwPassword)
		ctx := activities.WithRestoreIdentity(context.Background(), "resumed-swap-3")
		in := in
		in.NoOwner = true
		run := runRestore(t, ctx, pg, in, nil)
		require.Error(t, run.err)
		t.Logf("error: %v", run.err)
		assert.Equal(t, []string{staging}, databases(t, srv, activities.RestoreStagingPrefix), "the marked staging database is kept")
		assert.Equal(t, before, fingerprint(t, srv, target), "target untouched")

		pgExec(t, srv, "postgres", "GRANT "+owner+" TO "+pwRole)
		pg.Store = empty
		run = runRestore(t, ctx, pg, in, nil)
		require.NoError(t, run.err)
		assert.True(t, run.res.Replaced)
		assert.Equal(t, []string{"download", "count", "swap", "done"}, run.phases(), "only the swap")
		assert.Equal(t, owner, databaseOwner(t, srv, target), "owner kept")
		assert.Equal(t, art.RowCounts, run.res.RowCounts)
		assert.Empty(t, databases(t, srv, activities.RestoreStagingPrefix))
	})
	pgExec(t, srv, "postgres", "DROP DATABASE "+id(target))
}
