package workflows_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/kohakku/drflow/activities"
	"github.com/kohakku/drflow/internal/historytest"
	"github.com/kohakku/drflow/workflows"
)

// tablesEnv mocks RestoreTables' activities; plan is what PlanTableRestore returns.
// It records the activities that change something.
type tablesEnv struct {
	env     *testsuite.TestWorkflowEnvironment
	changed []string
	scratch []string
}

func newTablesEnv(t *testing.T, plan activities.TablesPlan) *tablesEnv {
	t.Helper()
	var s testsuite.WorkflowTestSuite
	e := &tablesEnv{env: s.NewTestWorkflowEnvironment()}
	env := e.env
	env.SetStartTime(time.Date(2026, 11, 21, 9, 0, 0, 0, time.UTC))
	env.OnActivity(inv.Resolve, mock.Anything, mock.Anything).Return(activities.Targets{Databases: []string{"kohakku-controller"}}, nil)
	env.OnActivity(bs.SelectSet, mock.Anything, mock.Anything).Return(activities.SelectedSet{Verified: "passed", Manifest: activities.Manifest{
		SetID: "2026-11-21T02-00-00Z", CreatedAt: time.Date(2026, 11, 21, 2, 0, 0, 0, time.UTC),
		Artifacts: []activities.Artifact{{Kind: activities.KindPostgres, Source: "kohakku-controller", Key: "sets/2026-11-21T02-00-00Z/postgres/kohakku-controller.dump.zst", Size: 1000}},
	}}, nil)
	env.OnActivity(pg.PlanTableRestore, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.PlanTableRestoreInput) (activities.TablesPlan, error) {
			e.scratch = append(e.scratch, in.Scratch)
			return plan, nil
		})
	env.OnActivity(pg.Dump, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.DumpInput) (activities.Artifact, error) {
		e.changed = append(e.changed, "dump "+strings.Join(in.Tables, ","))
		return activities.Artifact{Key: in.Key, Size: 10, RowCounts: map[string]int64{"public.tasks_task": 100}}, nil
	})
	env.OnActivity(pg.RestoreTablesSide, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.RestoreTablesSideInput) (activities.TablesSideResult, error) {
			e.changed = append(e.changed, "side "+in.SideSchema)
			return activities.TablesSideResult{SideSchema: in.SideSchema, Drop: "DROP SCHEMA " + in.SideSchema + " CASCADE",
				Tables: []activities.SideTable{{Table: "public.tasks_task", Side: in.SideSchema + ".tasks_task", Rows: 200}}}, nil
		})
	env.OnActivity(pg.ReplaceTables, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.ReplaceTablesInput) (activities.ReplaceTablesResult, error) {
			e.changed = append(e.changed, "replace "+strings.Join(in.Tables, ","))
			return activities.ReplaceTablesResult{Tables: []activities.TableReplace{{Table: "public.tasks_task", Before: 100, After: 200, Inserted: 100}}}, nil
		})
	env.OnActivity(pg.CompareTables, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.CompareTablesInput) (activities.CompareTablesResult, error) {
			c := activities.TableComparison{Table: "public.tasks_task", Side: in.SideSchema + ".tasks_task", LiveRows: 100, SideRows: 200, OnlySide: 100}
			for _, ch := range e.changed {
				if strings.HasPrefix(ch, "replace") {
					c.LiveRows, c.OnlySide = 200, 0
				}
			}
			return activities.CompareTablesResult{Tables: []activities.TableComparison{c}}, nil
		})
	env.OnActivity(pg.DropScratch, mock.Anything, mock.Anything).Return(nil)
	return e
}

var tasksPlan = activities.TablesPlan{Database: "kohakku-controller", Tables: []activities.TablePlan{{Table: "public.tasks_task", LiveRows: 100, SetRows: 200, ColumnsMatch: true, Method: "merge by primary key (id)"}}}

func TestRestoreTablesBadInput(t *testing.T) {
	for _, tc := range []struct {
		name  string
		in    workflows.RestoreTablesInput
		field string
	}{
		{"no database", workflows.RestoreTablesInput{Tables: []string{"tasks_task"}}, `"database"`},
		{"no tables", workflows.RestoreTablesInput{Database: "kohakku-controller"}, `"tables"`},
		{"bad table", workflows.RestoreTablesInput{Database: "kohakku-controller", Tables: []string{"public."}}, `"tables"`},
		{"table twice", workflows.RestoreTablesInput{Database: "kohakku-controller", Tables: []string{"tasks_task", "public.tasks_task"}}, "listed twice"},
		{"bad mode", workflows.RestoreTablesInput{Database: "kohakku-controller", Tables: []string{"tasks_task"}, Mode: "merge"}, `"mode"`},
		{"bad set", workflows.RestoreTablesInput{Database: "kohakku-controller", Tables: []string{"tasks_task"}, SetID: "yesterday"}, `"setId"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newTablesEnv(t, tasksPlan)
			e.env.ExecuteWorkflow(workflows.RestoreTables, tc.in)
			err := e.env.GetWorkflowError()
			var app *temporal.ApplicationError
			require.ErrorAs(t, err, &app)
			assert.Equal(t, workflows.ErrInvalidInput, app.Type())
			assert.True(t, app.NonRetryable())
			assert.Contains(t, err.Error(), tc.field)
			assert.Empty(t, e.changed)
		})
	}
}

// TestRestoreTablesSide: side mode changes nothing live, so it needs no approval; the
// plan is published all the same.
func TestRestoreTablesSide(t *testing.T) {
	e := newTablesEnv(t, tasksPlan)
	e.env.ExecuteWorkflow(workflows.RestoreTables, workflows.RestoreTablesInput{Database: "kohakku-controller", Tables: []string{"tasks_task"}})
	require.NoError(t, e.env.GetWorkflowError())
	var res workflows.RestoreTablesResult
	require.NoError(t, e.env.GetWorkflowResult(&res))
	assert.Equal(t, workflows.OutcomeSideCopy, res.Outcome)
	assert.Equal(t, workflows.ApprovalNotNeeded, res.Approval.Status)
	require.Len(t, e.changed, 1)
	assert.True(t, strings.HasPrefix(e.changed[0], "side "+activities.SideSchemaPrefix), e.changed[0])
	assert.Equal(t, workflows.TablesModeSide, res.Plan.Mode)
	assert.Empty(t, res.Plan.SafetyCopy)
	require.Len(t, res.Tables, 1)
	assert.Equal(t, int64(100), res.Tables[0].OnlySide)
	assert.Contains(t, res.DropSideCopies, "DROP SCHEMA "+res.Plan.SideSchema)
	require.Len(t, e.scratch, 1)
	assert.True(t, strings.HasPrefix(e.scratch[0], activities.ScratchPrefix), e.scratch[0])

	v, err := e.env.QueryWorkflow(workflows.PlanQuery)
	require.NoError(t, err)
	var plan workflows.RestoreTablesPlan
	require.NoError(t, v.Get(&plan))
	assert.Equal(t, res.Plan.SideSchema, plan.SideSchema)
}

// TestRestoreTablesReplaceApproved: nothing happens before the approval; then the safety
// copy, the side copies and the replace, in that order.
func TestRestoreTablesReplaceApproved(t *testing.T) {
	e := newTablesEnv(t, tasksPlan)
	var before []string
	e.env.RegisterDelayedCallback(func() {
		before = append([]string{}, e.changed...)
		e.env.UpdateWorkflow(workflows.ApproveUpdate, "", &testsuite.TestUpdateCallback{
			OnAccept: func() {}, OnReject: func(err error) { t.Errorf("approve rejected: %v", err) }, OnComplete: func(any, error) {},
		}, workflows.Decision{By: "alice"})
	}, time.Hour)
	e.env.ExecuteWorkflow(workflows.RestoreTables, workflows.RestoreTablesInput{Database: "kohakku-controller", Tables: []string{"tasks_task"}, Mode: "replace"})
	require.NoError(t, e.env.GetWorkflowError())
	var res workflows.RestoreTablesResult
	require.NoError(t, e.env.GetWorkflowResult(&res))
	assert.Empty(t, before, "nothing changes while the run waits")
	assert.Equal(t, workflows.OutcomeRecovered, res.Outcome)
	assert.Equal(t, "alice", res.Approval.By)
	require.Len(t, e.changed, 3)
	assert.Equal(t, "dump public.tasks_task", e.changed[0], "the safety copy first")
	assert.Equal(t, "replace public.tasks_task", e.changed[2])
	require.Len(t, res.SafetyCopies, 1)
	assert.Equal(t, activities.SafetyTablesKey("default-test-workflow-id", "kohakku-controller"), res.SafetyCopies[0].Key)
	assert.Equal(t, int64(100), res.SafetyCopies[0].Count)
	assert.Equal(t, []workflows.TableReport{{Table: "public.tasks_task", SideCopy: res.Plan.SideSchema + ".tasks_task", SetRows: 200,
		RowsBefore: 100, RowsAfter: 200, Inserted: 100}}, res.Tables)
}

// TestRestoreTablesReplaceRefused: a plan with a schema mismatch or a foreign key conflict
// refuses a replace before the approval, also in a dry run; side mode goes ahead.
func TestRestoreTablesReplaceRefused(t *testing.T) {
	for _, tc := range []struct {
		name    string
		plan    activities.TablesPlan
		errType string
	}{
		{"foreign key", activities.TablesPlan{Tables: tasksPlan.Tables, Conflicts: []string{"table public.tasks_task: foreign key briefs_task_id_fkey on public.briefs: 1 row"}}, activities.ErrForeignKeyConflict},
		{"schema", activities.TablesPlan{Tables: tasksPlan.Tables, Mismatches: []string{"table public.tasks_task: column \"x\" is live only"},
			Conflicts: []string{"table public.tasks_task: foreign key f"}}, activities.ErrSchemaMismatch},
	} {
		for _, dry := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s dryRun=%v", tc.name, dry), func(t *testing.T) {
				e := newTablesEnv(t, tc.plan)
				e.env.ExecuteWorkflow(workflows.RestoreTables, workflows.RestoreTablesInput{Database: "kohakku-controller", Tables: []string{"tasks_task"},
					Mode: "replace", RecoveryOptions: workflows.RecoveryOptions{DryRun: dry}})
				err := e.env.GetWorkflowError()
				var app *temporal.ApplicationError
				require.ErrorAs(t, err, &app)
				assert.Equal(t, tc.errType, app.Type())
				assert.True(t, app.NonRetryable())
				for _, why := range append(tc.plan.Mismatches, tc.plan.Conflicts...) {
					assert.Contains(t, err.Error(), why)
				}
				assert.Contains(t, err.Error(), "nothing was changed")
				assert.Empty(t, e.changed)
			})
		}
	}
	e := newTablesEnv(t, activities.TablesPlan{Tables: tasksPlan.Tables, Conflicts: []string{"a conflict"}})
	e.env.ExecuteWorkflow(workflows.RestoreTables, workflows.RestoreTablesInput{Database: "kohakku-controller", Tables: []string{"tasks_task"}})
	require.NoError(t, e.env.GetWorkflowError(), "side mode does not care about foreign keys")
}

// TestRestoreTablesReplay replays the recorded RestoreTables histories on their own, so a
// determinism break shows here even while another workflow's history is missing.
func TestRestoreTablesReplay(t *testing.T) {
	files, err := filepath.Glob("testdata/" + workflows.RestoreTablesName + "-*.json")
	require.NoError(t, err)
	require.NotEmpty(t, files, "record one: go test ./internal/e2e -run TestRestoreTables -update-histories")
	ids, err := historytest.IDs("testdata")
	require.NoError(t, err)
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			r := worker.NewWorkflowReplayer()
			r.RegisterWorkflowWithOptions(workflows.RestoreTables, workflow.RegisterOptions{Name: workflows.RestoreTablesName})
			hist, err := client.HistoryFromJSON(mustOpen(t, f), client.HistoryJSONOptions{})
			require.NoError(t, err)
			require.NoError(t, r.ReplayWorkflowHistoryWithOptions(nil, hist, worker.ReplayWorkflowHistoryOptions{
				OriginalExecution: workflow.Execution{ID: ids[filepath.Base(f)]}}))
		})
	}
}
