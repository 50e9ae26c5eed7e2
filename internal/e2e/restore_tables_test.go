package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/minio/minio-go/v7"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kohakku/drflow/activities"
	"github.com/kohakku/drflow/internal/historytest"
	"github.com/kohakku/drflow/schemas"
	"github.com/kohakku/drflow/workflows"
)

// qualifiedFingerprint is tableFingerprint for a table in another schema.
func qualifiedFingerprint(ctx context.Context, t *testing.T, url, schema, table string) string {
	t.Helper()
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(ctx)
	var n int64
	var sum *string
	require.NoError(t, conn.QueryRow(ctx, fmt.Sprintf(`SELECT count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM %s t`,
		pgx.Identifier{schema, table}.Sanitize())).Scan(&n, &sum))
	s := ""
	if sum != nil {
		s = *sum
	}
	return fmt.Sprintf("%d rows, md5 %s", n, s)
}

// sideSchemas lists the side schemas RestoreTables made in db.
func (e *env) sideSchemas(ctx context.Context, t *testing.T, db string) []string {
	t.Helper()
	conn, err := pgx.Connect(ctx, e.st.Postgres.URL(db))
	require.NoError(t, err)
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, $1) ORDER BY 1", activities.SideSchemaPrefix)
	require.NoError(t, err)
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return names
}

// safetyObjects lists the keys under the backup store's safety area.
func (e *env) safetyObjects(ctx context.Context, t *testing.T) []string {
	t.Helper()
	var keys []string
	for o := range e.backup.ListObjects(ctx, backupBucket, minio.ListObjectsOptions{Prefix: activities.SafetyPrefix, Recursive: true}) {
		require.NoError(t, o.Err)
		keys = append(keys, o.Key)
	}
	return keys
}

// TestRestoreTables restores tasks_task (and briefs) of a live controller database that
// lost half its tasks after the backup: a dry run and a side restore change nothing live,
// an approved replace brings the set's rows back after a safety copy that restores the
// pre-replace rows; a table that does not exist, one the set lacks, a schema mismatch and
// a foreign key the replace would break are each refused with nothing changed.
func TestRestoreTables(t *testing.T) {
	t.Parallel() // each test has its own stack
	e := newEnv(t, 200)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	nightly, err := e.run(ctx, t, "tables-nightly", e.queue, workflows.NightlyBackupInput{})
	require.NoError(t, err)
	ctl := schemas.ControllerDB
	url := e.st.Postgres.URL(ctl)
	fp := func(table string) string { return tableFingerprint(ctx, t, url, table) }
	setTasks, setBriefs := fp(schemas.TasksTable), fp(schemas.BriefsTable)
	var total int64
	for _, a := range nightly.Manifest.Artifacts {
		if a.Kind == activities.KindPostgres && a.Source == ctl {
			total = a.RowCounts[schemas.TasksTable]
		}
	}
	require.Equal(t, int64(200), total)

	// Half the tasks are lost after the backup (their briefs rows go with them: ON DELETE CASCADE).
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	tag, err := conn.Exec(ctx, "DELETE FROM tasks_task WHERE id % 2 = 0")
	require.NoError(t, err)
	conn.Close(ctx)
	deleted := tag.RowsAffected()
	require.Equal(t, total/2, deleted)
	liveTasks, liveBriefs := fp(schemas.TasksTable), fp(schemas.BriefsTable)
	require.NotEqual(t, setTasks, liveTasks)
	require.NotEqual(t, setBriefs, liveBriefs)
	unchanged := func(why string) {
		t.Helper()
		assert.Equal(t, liveTasks, fp(schemas.TasksTable), why)
		assert.Equal(t, liveBriefs, fp(schemas.BriefsTable), why)
	}
	tasksOnly := []string{schemas.TasksTable}

	t.Run("dry run", func(t *testing.T) {
		var res workflows.RestoreTablesResult
		require.NoError(t, e.recover(ctx, t, "tables-dry", workflows.RestoreTablesName, workflows.RestoreTablesInput{
			Database: ctl, Tables: tasksOnly, Mode: workflows.TablesModeReplace, RecoveryOptions: workflows.RecoveryOptions{DryRun: true}}, &res))
		assert.Equal(t, workflows.OutcomeDryRun, res.Outcome)
		p := res.Plan
		assert.Equal(t, nightly.SetID, p.SetID)
		assert.Equal(t, activities.SafetyTablesKey("tables-dry", ctl), p.SafetyCopy)
		require.Len(t, p.Tables, 1)
		assert.Equal(t, "public.tasks_task", p.Tables[0].Table)
		assert.Equal(t, total-deleted, p.Tables[0].LiveRows)
		assert.Equal(t, total, p.Tables[0].SetRows)
		assert.True(t, p.Tables[0].ColumnsMatch)
		require.Len(t, p.ForeignKeys, 1, "briefs references tasks_task")
		assert.Equal(t, "briefs_task_id_fkey", p.ForeignKeys[0].Constraint)
		assert.Equal(t, "live → set", p.ForeignKeys[0].Rows)
		assert.Zero(t, p.ForeignKeys[0].Violations, "the remaining briefs reference tasks the set has")
		assert.Empty(t, p.Conflicts)
		assert.Empty(t, res.Tables)
		unchanged("a dry run changes nothing")
		assert.Empty(t, e.sideSchemas(ctx, t, ctl), "a dry run makes no side copy")
		assert.Empty(t, e.safetyObjects(ctx, t), "a dry run takes no safety copy")
	})

	t.Run("side", func(t *testing.T) {
		var res workflows.RestoreTablesResult
		require.NoError(t, e.recover(ctx, t, "tables-side", workflows.RestoreTablesName, workflows.RestoreTablesInput{
			Database: ctl, Tables: tasksOnly}, &res), "side mode needs no approval")
		assert.Equal(t, workflows.OutcomeSideCopy, res.Outcome)
		assert.Equal(t, workflows.ApprovalNotNeeded, res.Approval.Status)
		assert.Empty(t, res.SafetyCopies)
		assert.Nil(t, res.Replace)
		unchanged("side mode changes nothing live")
		schema := res.Plan.SideSchema
		assert.Equal(t, []string{schema}, e.sideSchemas(ctx, t, ctl))
		assert.Equal(t, setTasks, qualifiedFingerprint(ctx, t, url, schema, schemas.TasksTable), "the side copy holds the set's rows")
		assert.Equal(t, `DROP SCHEMA "`+schema+`" CASCADE`, res.DropSideCopies)
		require.Len(t, res.Tables, 1)
		assert.Equal(t, workflows.TableReport{Table: "public.tasks_task", SideCopy: schema + ".tasks_task", SetRows: total,
			RowsBefore: total - deleted, RowsAfter: total - deleted, OnlyLive: 0, OnlySide: deleted}, res.Tables[0])
		var p workflows.Progress
		v, err := e.c.QueryWorkflow(ctx, "tables-side", "", workflows.ProgressQuery)
		require.NoError(t, err)
		require.NoError(t, v.Get(&p))
		for _, s := range p.Steps {
			want := workflows.StepCompleted
			if s.Name == "approval" || s.Name == "safety copy" || s.Name == "replace" {
				want = workflows.StepSkipped
			}
			assert.Equal(t, want, s.Status, "step %s: %s", s.Name, s.Detail)
		}
	})

	t.Run("replace", func(t *testing.T) {
		id := "tables-replace"
		tables := []string{schemas.TasksTable, schemas.BriefsTable}
		run := e.startRun(ctx, t, id, workflows.RestoreTablesName, workflows.RestoreTablesInput{
			Database: ctl, Tables: tables, Mode: workflows.TablesModeReplace})
		e.waitForApproval(ctx, t, id)
		var plan workflows.RestoreTablesPlan
		v, err := e.c.QueryWorkflow(ctx, id, "", workflows.PlanQuery)
		require.NoError(t, err)
		require.NoError(t, v.Get(&plan))
		key := activities.SafetyTablesKey(id, ctl)
		assert.Equal(t, key, plan.SafetyCopy)
		assert.Len(t, plan.Tables, 2)
		assert.Empty(t, plan.Conflicts)
		assert.Empty(t, plan.Mismatches)
		unchanged("nothing changes before the approval")
		assert.Len(t, e.sideSchemas(ctx, t, ctl), 1, "no side copy before the approval")

		e.decide(ctx, t, id, workflows.ApproveUpdate, "oncall")
		var res workflows.RestoreTablesResult
		require.NoError(t, run.Get(ctx, &res))
		assert.Equal(t, workflows.OutcomeRecovered, res.Outcome)
		assert.Equal(t, "oncall", res.Approval.By)
		assert.Equal(t, setTasks, fp(schemas.TasksTable), "live tasks_task equals the set")
		assert.Equal(t, setBriefs, fp(schemas.BriefsTable), "live briefs equals the set")
		assert.Empty(t, res.Warnings)
		require.Len(t, res.Tables, 2)
		assert.Equal(t, workflows.TableReport{Table: "public.tasks_task", SideCopy: plan.SideSchema + ".tasks_task", SetRows: total,
			RowsBefore: total - deleted, RowsAfter: total, Inserted: deleted}, res.Tables[0])
		assert.Equal(t, total, res.Tables[1].RowsAfter)
		assert.Zero(t, res.Tables[1].OnlyLive+res.Tables[1].OnlySide)
		require.NotNil(t, res.Replace)
		assert.Positive(t, res.RTO.D())

		// The identity sequence is past every restored id: a new task gets a fresh one.
		conn, err := pgx.Connect(ctx, url)
		require.NoError(t, err)
		var maxID, next int64
		require.NoError(t, conn.QueryRow(ctx, "SELECT max(id) FROM tasks_task").Scan(&maxID))
		require.NoError(t, conn.QueryRow(ctx, "SELECT nextval(pg_get_serial_sequence('tasks_task', 'id'))").Scan(&next))
		conn.Close(ctx)
		assert.Greater(t, next, maxID)

		// The safety copy restores the rows as they were before the replace.
		require.Len(t, res.SafetyCopies, 1)
		assert.Equal(t, key, res.SafetyCopies[0].Key)
		assert.Equal(t, 2*(total-deleted), res.SafetyCopies[0].Count, "the live tasks and briefs")
		path, _ := e.getObject(ctx, t, key, t.TempDir())
		raw := zstdDecode(t, path)
		require.NoError(t, e.st.Postgres.CreateDatabase(ctx, "tables_safety_check"))
		out, err := exec.CommandContext(ctx, filepath.Join(e.st.Postgres.BinDir(), "pg_restore"), "--no-owner", "--exit-on-error",
			"-d", e.st.Postgres.URL("tables_safety_check"), raw).CombinedOutput()
		require.NoError(t, err, "pg_restore of the safety copy: %s", out)
		safetyURL := e.st.Postgres.URL("tables_safety_check")
		assert.Equal(t, liveTasks, tableFingerprint(ctx, t, safetyURL, schemas.TasksTable), "the safety copy holds the pre-replace tasks")
		assert.Equal(t, liveBriefs, tableFingerprint(ctx, t, safetyURL, schemas.BriefsTable), "and the pre-replace briefs")
		if *historytest.Update {
			historytest.Write(ctx, t, e.c, id, "../../workflows/testdata/RestoreTables-replace-approved.json")
		}
	})

	t.Run("refused", func(t *testing.T) {
		conn, err := pgx.Connect(ctx, url)
		require.NoError(t, err)
		defer conn.Close(ctx)
		execSQL := func(sql string) {
			t.Helper()
			_, err := conn.Exec(ctx, sql)
			require.NoError(t, err, sql)
		}
		replace := func(tables ...string) workflows.RestoreTablesInput {
			return workflows.RestoreTablesInput{Database: ctl, Tables: tables, Mode: workflows.TablesModeReplace,
				RecoveryOptions: workflows.RecoveryOptions{AutoApprove: true}}
		}
		check := func(id string, in any, errType string, contains ...string) {
			t.Helper()
			before := map[string]string{"tasks": fp(schemas.TasksTable), "briefs": fp(schemas.BriefsTable)}
			schemasBefore, safetyBefore := e.sideSchemas(ctx, t, ctl), e.safetyObjects(ctx, t)
			started := time.Now()
			var res json.RawMessage
			err := e.recover(ctx, t, id, workflows.RestoreTablesName, in, &res)
			requireNonRetryable(t, err, errType, contains...)
			t.Logf("%s: %v", id, err)
			assert.Less(t, time.Since(started), 20*time.Second, "%s fails fast", id)
			assert.Equal(t, before, map[string]string{"tasks": fp(schemas.TasksTable), "briefs": fp(schemas.BriefsTable)}, "%s changed nothing", id)
			assert.Equal(t, schemasBefore, e.sideSchemas(ctx, t, ctl), "%s made no side copy", id)
			assert.Equal(t, safetyBefore, e.safetyObjects(ctx, t), "%s took no safety copy", id)
		}

		check("tables-unknown", replace("tasks_nope"), activities.ErrTableNotFound,
			"public.tasks_nope does not exist", `"kohakku-controller"`, "public.tasks_task", "public.briefs")
		execSQL("CREATE TABLE after_backup (v int)")
		check("tables-not-in-set", replace("after_backup"), activities.ErrTableNotInSet,
			"public.after_backup", nightly.SetID, "setId")
		execSQL("ALTER TABLE briefs ADD COLUMN note text")
		check("tables-mismatch", replace(schemas.BriefsTable), activities.ErrSchemaMismatch,
			"table public.briefs", `column "note" (text) is live only`, `mode "side"`)
		execSQL("ALTER TABLE briefs DROP COLUMN note")
		// A task and its brief written after the backup: replacing tasks_task would
		// delete the task and, by the cascade, its brief.
		execSQL("INSERT INTO tasks_task (id, title, brief_key) VALUES (900000, 'late', 'briefs/900000/brief.json')")
		execSQL("INSERT INTO briefs (task_id, key, size, sha256) VALUES (900000, 'briefs/900000/brief.json', 1, repeat('a', 64))")
		check("tables-fk", replace(schemas.TasksTable), activities.ErrForeignKeyConflict,
			"briefs_task_id_fkey", "1 row of the live public.briefs", "public.tasks_task")
		check("tables-bad-mode", map[string]any{"database": ctl, "tables": []string{schemas.TasksTable}, "mode": "merge"},
			workflows.ErrInvalidInput, `"mode"`, `"side"`, `"replace"`)
	})
}
