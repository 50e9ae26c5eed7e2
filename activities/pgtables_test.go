package activities_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/testsuite"

	"github.com/kohakku/drflow/activities"
	"github.com/kohakku/drflow/internal/config"
	"github.com/kohakku/drflow/internal/stack"
	"github.com/kohakku/drflow/internal/stack/stacktest"
	"github.com/kohakku/drflow/internal/store"
	"github.com/kohakku/drflow/schemas"
)

func TestQualifyTable(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
	}{
		{in: "tasks_task", want: "public.tasks_task"},
		{in: "app.tasks", want: "app.tasks"},
		{in: "Mixed Case", want: "public.Mixed Case"},
		{in: "a.b.c", want: "a.b.c"},
		{in: "", err: "empty table name"},
		{in: ".tasks", err: "want table or schema.table"},
		{in: "app.", err: "want table or schema.table"},
		{in: strings.Repeat("x", 64), err: "longer than 63 bytes"},
		{in: "bad\x00name", err: "NUL"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := activities.QualifyTable(tc.in)
			if tc.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestSafetyTablesKey(t *testing.T) {
	assert.Equal(t, "safety/rt-1/postgres/kohakku-controller.tables.dump.zst", activities.SafetyTablesKey("rt-1", schemas.ControllerDB))
	assert.Equal(t, "safety/a_b/postgres/db.tables.dump.zst", activities.SafetyTablesKey("a/b", "db"))
}

// tablesFixture is a PostgreSQL server with the controller schema, rows in it
// and in two tables of awkward shape, and a dump of it in an FS store.
type tablesFixture struct {
	srv *stack.Postgres
	fs  *store.FS
	art activities.Artifact
	// set are the fingerprints of the tables at the time of the dump.
	set map[string]string
}

const (
	tablesSet     = "2026-11-21T02-00-00Z"
	tablesScratch = activities.ScratchPrefix + "tables_test"
	tablesSide    = activities.SideSchemaPrefix + "test1"
)

// tablesOfSet are the tables the fixture checks: the controller's two and two
// whose shape a replace must handle (identity ALWAYS, generated column, enum,
// json without equality; no primary key with duplicate rows).
var tablesOfSet = []string{"public.tasks_task", "public.briefs", "public.odd", "public.nokey"}

func newTablesFixture(t *testing.T) *tablesFixture {
	t.Helper()
	f := &tablesFixture{srv: stacktest.Postgres(t)}
	ctx := context.Background()
	require.NoError(t, f.srv.CreateDatabase(ctx, schemas.ControllerDB))
	pgExec(t, f.srv, schemas.ControllerDB, schemas.ControllerSQL,
		`INSERT INTO tasks_task (title, brief_key, status) SELECT 'task ' || g, 'briefs/' || g || '/brief.json',
			(ARRAY['pending','running','completed'])[1 + g % 3] FROM generate_series(1, 200) g`,
		`INSERT INTO briefs (task_id, key, size, sha256) SELECT id, brief_key, id * 10, md5(brief_key) || md5(title) FROM tasks_task`,
		`CREATE TYPE mood AS ENUM ('calm', 'stormy')`,
		`CREATE TABLE odd (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, m mood, doc json, amount numeric(10,2),
			twice int GENERATED ALWAYS AS (id * 2) STORED)`,
		`INSERT INTO odd (m, doc, amount) SELECT (ARRAY['calm','stormy']::mood[])[1 + g % 2], json_build_object('g', g), g / 3.0 FROM generate_series(1, 20) g`,
		`CREATE TABLE nokey (k text, v int)`,
		`INSERT INTO nokey VALUES ('a', 1), ('a', 1), ('b', NULL), (NULL, 2)`,
	)
	var err error
	f.fs, err = store.NewFS(t.TempDir())
	require.NoError(t, err)
	run := runDump(t, ctx, f.pg(), activities.DumpInput{SetID: tablesSet, Database: schemas.ControllerDB,
		Key: activities.PostgresKey(tablesSet, schemas.ControllerDB), CountTables: countTables[schemas.ControllerDB]}, nil)
	require.NoError(t, run.err)
	f.art = run.art
	f.set = f.fingerprints(t, "")
	return f
}

func (f *tablesFixture) pg() *activities.Postgres {
	return &activities.Postgres{
		Config:            config.Postgres{URL: f.srv.URL("postgres")},
		Store:             f.fs,
		BinDir:            f.srv.BinDir(),
		HeartbeatInterval: 20 * time.Millisecond,
	}
}

// fingerprints are the row count and an MD5 over the rows of each table of
// tablesOfSet, live or (with schema) in a side schema.
func (f *tablesFixture) fingerprints(t *testing.T, schema string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, name := range tablesOfSet {
		s, rel, _ := strings.Cut(name, ".")
		if schema != "" {
			s = schema
		}
		var n int64
		var sum string
		pgQuery(t, f.srv, schemas.ControllerDB, "SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM "+
			pgx.Identifier{s, rel}.Sanitize()+" t", nil, &n, &sum)
		out[name] = fmt.Sprintf("%d rows, md5 %s", n, sum)
	}
	return out
}

// runTables executes one of the table activities of pg.
func runTables[T any](t *testing.T, pg *activities.Postgres, fn, in any) (T, error) {
	t.Helper()
	var s testsuite.WorkflowTestSuite
	env := s.NewTestActivityEnvironment()
	env.RegisterActivity(pg)
	var res T
	v, err := env.ExecuteActivity(fn, in)
	if err == nil {
		require.NoError(t, v.Get(&res))
	}
	return res, err
}

func (f *tablesFixture) plan(t *testing.T, pg *activities.Postgres, tables ...string) (activities.TablesPlan, error) {
	t.Helper()
	return runTables[activities.TablesPlan](t, pg, pg.PlanTableRestore, activities.PlanTableRestoreInput{
		SetID: tablesSet, Artifact: f.art, Database: schemas.ControllerDB, Tables: tables, Scratch: tablesScratch})
}

func (f *tablesFixture) side(t *testing.T, tables ...string) (activities.TablesSideResult, error) {
	t.Helper()
	pg := f.pg()
	return runTables[activities.TablesSideResult](t, pg, pg.RestoreTablesSide, activities.RestoreTablesSideInput{
		SetID: tablesSet, Artifact: f.art, Database: schemas.ControllerDB, Tables: tables, Scratch: tablesScratch, SideSchema: tablesSide})
}

func (f *tablesFixture) replace(t *testing.T, tables ...string) (activities.ReplaceTablesResult, error) {
	t.Helper()
	pg := f.pg()
	return runTables[activities.ReplaceTablesResult](t, pg, pg.ReplaceTables, activities.ReplaceTablesInput{
		Database: schemas.ControllerDB, Tables: tables, SideSchema: tablesSide})
}

func (f *tablesFixture) compare(t *testing.T, tables ...string) activities.CompareTablesResult {
	t.Helper()
	pg := f.pg()
	res, err := runTables[activities.CompareTablesResult](t, pg, pg.CompareTables, activities.CompareTablesInput{
		Database: schemas.ControllerDB, Tables: tables, SideSchema: tablesSide})
	require.NoError(t, err)
	return res
}

// live returns the fingerprints of the live tables.
func (f *tablesFixture) live(t *testing.T) map[string]string { return f.fingerprints(t, "") }

// noScratch checks that no scratch database was left behind.
func (f *tablesFixture) noScratch(t *testing.T) {
	t.Helper()
	assert.Empty(t, databases(t, f.srv, activities.ScratchPrefix), "scratch databases left")
}

func assertTablesError(t *testing.T, err error, errType string, contains ...string) {
	t.Helper()
	t.Logf("error: %v", err)
	app := appError(t, err)
	assert.True(t, app.NonRetryable(), "non-retryable: %v", err)
	assert.Equal(t, errType, app.Type(), "error type of %v", err)
	for _, s := range contains {
		assert.Contains(t, err.Error(), s)
	}
}

func TestTableRestore(t *testing.T) {
	f := newTablesFixture(t)
	tmp := verifyTempDir(t)
	pg := f.pg()

	t.Run("dump only given tables", func(t *testing.T) {
		key := "safety/dump-tables/postgres/" + schemas.ControllerDB + ".tables.dump.zst"
		run := runDump(t, context.Background(), pg, activities.DumpInput{Database: schemas.ControllerDB, Key: key,
			Tables: []string{"tasks_task", "public.odd"}, CountTables: []string{"tasks_task", "public.odd"}}, nil)
		require.NoError(t, run.err)
		assert.Equal(t, map[string]int64{"tasks_task": 200, "public.odd": 20}, run.art.RowCounts)
		rc, err := f.fs.Get(context.Background(), key)
		require.NoError(t, err)
		b, err := io.ReadAll(rc)
		rc.Close()
		require.NoError(t, err)
		path := filepath.Join(t.TempDir(), "tables.dump")
		require.NoError(t, os.WriteFile(path, zstdDecode(t, b), 0o600))
		out, err := exec.Command(filepath.Join(f.srv.BinDir(), "pg_restore"), "--list", path).CombinedOutput()
		require.NoError(t, err, "%s", out)
		list := string(out)
		assert.Contains(t, list, "TABLE DATA public tasks_task ")
		assert.Contains(t, list, "TABLE DATA public odd ")
		assert.NotContains(t, list, "briefs", "only the named tables")

		run = runDump(t, context.Background(), pg, activities.DumpInput{Database: schemas.ControllerDB, Key: key,
			Tables: []string{"tasks_task", "no_such_table"}}, nil)
		assertTablesError(t, run.err, activities.ErrTableNotFound, "no_such_table")
	})

	// The live tables move on after the set: half the tasks deleted (their
	// briefs go with them: ON DELETE CASCADE), a row changed, a row added.
	pgExec(t, f.srv, schemas.ControllerDB,
		"DELETE FROM tasks_task WHERE id % 2 = 0",
		"UPDATE tasks_task SET progress = 50, title = 'changed' WHERE id = 1",
		"UPDATE odd SET m = 'stormy', doc = '{\"changed\": true}' WHERE id = 2",
		"DELETE FROM odd WHERE id = 3",
		"INSERT INTO odd (m) VALUES ('calm')",
		"DELETE FROM nokey WHERE k = 'b'",
	)
	changed := f.live(t)
	for _, name := range tablesOfSet {
		require.NotEqual(t, f.set[name], changed[name], name)
	}

	t.Run("plan", func(t *testing.T) {
		plan, err := f.plan(t, pg, "tasks_task", "briefs", "odd", "public.nokey")
		require.NoError(t, err)
		assert.Equal(t, changed, f.live(t), "a plan changes nothing")
		f.noScratch(t)
		assertEmptyDir(t, tmp)
		require.Len(t, plan.Tables, 4)
		byName := map[string]activities.TablePlan{}
		for _, tp := range plan.Tables {
			byName[tp.Table] = tp
			assert.True(t, tp.ColumnsMatch, "%s: %v", tp.Table, tp.ColumnDiffs)
		}
		assert.Equal(t, int64(100), byName["public.tasks_task"].LiveRows)
		assert.Equal(t, int64(200), byName["public.tasks_task"].SetRows)
		assert.Equal(t, []string{"id"}, byName["public.tasks_task"].PrimaryKey)
		assert.Equal(t, []string{"public.tasks_task_id_seq (id)"}, byName["public.tasks_task"].Sequences)
		assert.Equal(t, int64(20), byName["public.odd"].LiveRows)
		assert.Equal(t, int64(3), byName["public.nokey"].LiveRows)
		assert.Equal(t, int64(4), byName["public.nokey"].SetRows)
		assert.Contains(t, byName["public.nokey"].Method, "no primary key")
		assert.Contains(t, byName["public.briefs"].Method, "merge by primary key (task_id)")
		require.Len(t, plan.ForeignKeys, 1)
		fk := plan.ForeignKeys[0]
		assert.Equal(t, "briefs_task_id_fkey", fk.Constraint)
		assert.Equal(t, "public.briefs", fk.Table)
		assert.Equal(t, "public.tasks_task", fk.References)
		assert.Equal(t, "cascade", fk.OnDelete)
		assert.Equal(t, "set → set", fk.Rows)
		assert.Zero(t, fk.Violations)
		assert.Empty(t, plan.Mismatches)
		assert.Empty(t, plan.Conflicts)
		assert.Positive(t, plan.Download)

		// tasks_task alone: the live briefs are checked against the set's tasks.
		plan, err = f.plan(t, pg, "tasks_task")
		require.NoError(t, err)
		require.Len(t, plan.ForeignKeys, 1)
		assert.Equal(t, "live → set", plan.ForeignKeys[0].Rows)
		assert.Zero(t, plan.ForeignKeys[0].Violations)
		assert.Empty(t, plan.Conflicts)
	})

	t.Run("plan refuses what it cannot restore", func(t *testing.T) {
		pgExec(t, f.srv, schemas.ControllerDB, "CREATE TABLE after_set (v int)", "CREATE VIEW task_titles AS SELECT title FROM tasks_task")
		defer pgExec(t, f.srv, schemas.ControllerDB, "DROP TABLE after_set", "DROP VIEW task_titles")
		_, err := f.plan(t, pg, "tasks_task", "tasks_nope")
		assertTablesError(t, err, activities.ErrTableNotFound, "public.tasks_nope does not exist", `"kohakku-controller"`, "public.tasks_task", "public.briefs")
		_, err = f.plan(t, pg, "task_titles")
		assertTablesError(t, err, activities.ErrTableNotFound, "public.task_titles is not a table")
		_, err = f.plan(t, pg, "after_set")
		assertTablesError(t, err, activities.ErrTableNotInSet, "set "+tablesSet+" holds no table public.after_set", f.art.Key, "public.tasks_task", "setId")
		_, err = f.plan(t, pg, "tasks_task", "public.tasks_task")
		assertTablesError(t, err, activities.ErrInvalidInput, "public.tasks_task is listed twice")
		_, err = f.plan(t, pg)
		assertTablesError(t, err, activities.ErrInvalidInput, `"tables"`)
		_, err = runTables[activities.TablesPlan](t, pg, pg.PlanTableRestore, activities.PlanTableRestoreInput{
			SetID: tablesSet, Artifact: f.art, Database: schemas.ControllerDB, Tables: []string{"tasks_task"}, Scratch: "kohakku-controller"})
		assertTablesError(t, err, activities.ErrInvalidInput, `"scratch"`, activities.ScratchPrefix)
		assert.Equal(t, changed, f.live(t))
		f.noScratch(t)
	})

	t.Run("side by side", func(t *testing.T) {
		res, err := f.side(t, tablesOfSet...)
		require.NoError(t, err)
		assert.Equal(t, tablesSide, res.SideSchema)
		assert.Equal(t, `DROP SCHEMA "`+tablesSide+`" CASCADE`, res.Drop)
		require.Len(t, res.Tables, 4)
		assert.Equal(t, activities.SideTable{Table: "public.tasks_task", Side: tablesSide + ".tasks_task", Rows: 200}, res.Tables[0])
		assert.Equal(t, f.set, f.fingerprints(t, tablesSide), "the side copies hold the set's rows")
		assert.Equal(t, changed, f.live(t), "live unchanged")
		f.noScratch(t)
		assertEmptyDir(t, tmp)

		// Again, as a retry would: the same copies, made afresh.
		pgExec(t, f.srv, schemas.ControllerDB, "DELETE FROM "+tablesSide+".briefs WHERE task_id < 10")
		_, err = f.side(t, tablesOfSet...)
		require.NoError(t, err)
		assert.Equal(t, f.set, f.fingerprints(t, tablesSide), "a rerun makes the same copies")

		cmp := f.compare(t, tablesOfSet...)
		require.Len(t, cmp.Tables, 4)
		tasks := cmp.Tables[0]
		assert.Equal(t, "public.tasks_task", tasks.Table)
		assert.Equal(t, int64(100), tasks.LiveRows)
		assert.Equal(t, int64(200), tasks.SideRows)
		assert.Equal(t, int64(1), tasks.OnlyLive, "the changed row")
		assert.Equal(t, int64(101), tasks.OnlySide, "the deleted rows and the changed row as it was")
		assert.NotContains(t, cmp.Tables[2].Columns, "twice", "generated columns are left out")
	})

	t.Run("replace keeps the rows that reference it", func(t *testing.T) {
		briefs := f.live(t)["public.briefs"]
		res, err := f.replace(t, "tasks_task")
		require.NoError(t, err)
		live := f.live(t)
		assert.Equal(t, f.set["public.tasks_task"], live["public.tasks_task"], "live equals the set")
		assert.Equal(t, briefs, live["public.briefs"], "no brief deleted by ON DELETE CASCADE")
		require.Len(t, res.Tables, 1)
		r := res.Tables[0]
		assert.Equal(t, activities.TableReplace{Table: "public.tasks_task", Method: r.Method, Before: 100, After: 200, Deleted: 0, Updated: 1, Inserted: 100,
			Sequences: []activities.SequenceReset{{Sequence: "public.tasks_task_id_seq", Column: "id", From: 200, To: 200}}}, r)
		var analyzed bool
		pgQuery(t, f.srv, schemas.ControllerDB, "SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables WHERE relname = 'tasks_task'", nil, &analyzed)
		assert.True(t, analyzed)

		// A retry after the commit changes nothing.
		res, err = f.replace(t, "tasks_task")
		require.NoError(t, err)
		assert.Equal(t, int64(200), res.Tables[0].Before)
		assert.Equal(t, int64(200), res.Tables[0].After)
		assert.Zero(t, res.Tables[0].Deleted+res.Tables[0].Updated+res.Tables[0].Inserted)
	})

	t.Run("replace several tables of awkward shape", func(t *testing.T) {
		// A sequence behind the restored ids moves past them.
		pgExec(t, f.srv, schemas.ControllerDB, "SELECT setval('odd_id_seq', 5)")
		res, err := f.replace(t, "nokey", "odd", "briefs")
		require.NoError(t, err)
		assert.Equal(t, f.set, f.live(t), "every table equals the set")
		require.Len(t, res.Tables, 3)
		assert.Equal(t, "public.nokey", res.Tables[0].Table, "in input order")
		assert.Equal(t, activities.TableReplace{Table: "public.nokey", Method: res.Tables[0].Method, Before: 3, After: 4, Deleted: 3, Inserted: 4}, res.Tables[0])
		odd := res.Tables[1]
		assert.Equal(t, int64(1), odd.Deleted, "the row added live")
		assert.Equal(t, int64(1), odd.Updated)
		assert.Equal(t, int64(1), odd.Inserted)
		assert.Equal(t, []activities.SequenceReset{{Sequence: "public.odd_id_seq", Column: "id", From: 5, To: 20}}, odd.Sequences)
		assert.Equal(t, int64(100), res.Tables[2].Inserted, "the briefs cascaded away come back")

		cmp := f.compare(t, tablesOfSet...)
		for _, c := range cmp.Tables {
			assert.Zero(t, c.OnlyLive+c.OnlySide, c.Table)
			assert.Equal(t, c.SideRows, c.LiveRows, c.Table)
		}
	})

	t.Run("schema mismatch", func(t *testing.T) {
		pgExec(t, f.srv, schemas.ControllerDB, "ALTER TABLE briefs ADD COLUMN note text", "ALTER TABLE briefs ALTER COLUMN size TYPE numeric")
		defer pgExec(t, f.srv, schemas.ControllerDB, "ALTER TABLE briefs DROP COLUMN note", "ALTER TABLE briefs ALTER COLUMN size TYPE bigint")
		before := f.live(t)
		plan, err := f.plan(t, pg, "briefs")
		require.NoError(t, err, "a mismatch is a finding of the plan")
		require.Len(t, plan.Mismatches, 1)
		assert.False(t, plan.Tables[0].ColumnsMatch)
		assert.Equal(t, []string{`column "size" is numeric live, bigint in the set`, `column "note" (text) is live only`}, plan.Tables[0].ColumnDiffs)
		_, err = f.replace(t, "briefs")
		assertTablesError(t, err, activities.ErrSchemaMismatch, "table public.briefs", `column "note" (text) is live only`, "nothing was changed", `mode "side"`)
		assert.Equal(t, before, f.live(t))

		// A side copy has the set's columns, whatever the live ones are now.
		_, err = f.side(t, "briefs")
		require.NoError(t, err)
		assert.Equal(t, f.set["public.briefs"], f.fingerprints(t, tablesSide)["public.briefs"])
		assert.Equal(t, before, f.live(t))
	})

	t.Run("foreign key conflicts", func(t *testing.T) {
		// A task and its brief written after the set: replacing tasks_task would
		// delete the task, and the cascade its brief.
		pgExec(t, f.srv, schemas.ControllerDB,
			"INSERT INTO tasks_task (id, title, brief_key) VALUES (100000, 'late', 'briefs/100000/brief.json')",
			"INSERT INTO briefs (task_id, key, size, sha256) VALUES (100000, 'briefs/100000/brief.json', 1, repeat('a', 64))")
		before := f.live(t)
		plan, err := f.plan(t, pg, "tasks_task")
		require.NoError(t, err)
		require.Len(t, plan.Conflicts, 1)
		assert.Contains(t, plan.Conflicts[0], "briefs_task_id_fkey")
		assert.Contains(t, plan.Conflicts[0], "1 row of the live public.briefs")
		assert.Equal(t, int64(1), plan.ForeignKeys[0].Violations)
		_, err = f.replace(t, "tasks_task")
		assertTablesError(t, err, activities.ErrForeignKeyConflict, "table public.tasks_task", "briefs_task_id_fkey", "public.briefs", "1 row", "nothing was changed")
		assert.Equal(t, before, f.live(t))
		pgExec(t, f.srv, schemas.ControllerDB, "DELETE FROM tasks_task WHERE id = 100000")

		// The other way: the set's briefs reference tasks deleted live.
		pgExec(t, f.srv, schemas.ControllerDB, "DELETE FROM tasks_task WHERE id IN (7, 9)")
		before = f.live(t)
		plan, err = f.plan(t, pg, "briefs")
		require.NoError(t, err)
		require.Len(t, plan.Conflicts, 1)
		assert.Contains(t, plan.Conflicts[0], "2 rows of the set's public.briefs reference rows that do not exist in the live public.tasks_task")
		assert.Equal(t, "set → live", plan.ForeignKeys[0].Rows)
		_, err = f.replace(t, "briefs")
		assertTablesError(t, err, activities.ErrForeignKeyConflict, "table public.briefs", "briefs_task_id_fkey", "2 rows")
		assert.Equal(t, before, f.live(t))
		f.noScratch(t)
	})

	t.Run("replace needs its side copies", func(t *testing.T) {
		pg := f.pg()
		_, err := runTables[activities.ReplaceTablesResult](t, pg, pg.ReplaceTables, activities.ReplaceTablesInput{
			Database: schemas.ControllerDB, Tables: []string{"tasks_task"}, SideSchema: activities.SideSchemaPrefix + "never_made"})
		assertTablesError(t, err, activities.ErrInvalidInput, "public.tasks_task has no side copy", "RestoreTablesSide")
		_, err = runTables[activities.ReplaceTablesResult](t, pg, pg.ReplaceTables, activities.ReplaceTablesInput{
			Database: schemas.ControllerDB, Tables: []string{"tasks_task"}, SideSchema: "public"})
		assertTablesError(t, err, activities.ErrInvalidInput, `"sideSchema"`, activities.SideSchemaPrefix)
	})

	t.Run("password only in PGPASSWORD", func(t *testing.T) {
		pf := &pgFixture{st: &stack.Stack{Postgres: f.srv}}
		addPasswordRole(t, pf)
		pgExec(t, f.srv, "postgres", "ALTER ROLE "+pwRole+" CREATEDB")
		pg := f.pg()
		pg.Config = passwordConfig(pf, pwPassword)
		plan, err := f.plan(t, pg, "tasks_task")
		require.NoError(t, err, "pg_restore got the password from PGPASSWORD")
		assert.Len(t, plan.Tables, 1)

		pg.Config = passwordConfig(pf, "wrong "+pwPassword)
		_, err = f.plan(t, pg, "tasks_task")
		assertTablesError(t, err, activities.ErrAuthFailed)
		assert.NotContains(t, err.Error(), pwPassword)
		f.noScratch(t)
	})
}
