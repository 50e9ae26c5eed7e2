package app_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	commonpb "go.temporal.io/api/common/v1"
	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/kohakku/drflow/internal/app"
	"github.com/kohakku/drflow/internal/config"
	"github.com/kohakku/drflow/internal/stack/stacktest"
	"github.com/kohakku/drflow/workflows"
)

// jsonInput is an input as `temporal workflow start --input` sends it: one payload,
// encoding json/plain, the bytes as typed.
func jsonInput(s string) converter.RawValue {
	return converter.NewRawValue(&commonpb.Payload{
		Metadata: map[string][]byte{converter.MetadataEncoding: []byte(converter.MetadataEncodingJSON)},
		Data:     []byte(s),
	})
}

// badInputs are, for every workflow type, a malformed input, an unknown field, a wrong
// type and what the schema refuses, with the field the error must name.
var badInputs = []struct {
	typ, name, input, field string
	contains                []string
}{
	{workflows.NightlyBackupName, "malformed", `{"databases": ["kohakku-controller"`, "databases", []string{"not valid JSON", "unexpected EOF"}},
	{workflows.NightlyBackupName, "unknown field", `{"database": ["kohakku-controller"]}`, "database", []string{`did you mean "databases"?`}},
	{workflows.NightlyBackupName, "wrong type", `{"skipRedis": "yes"}`, "skipRedis", []string{"of type bool"}},
	{workflows.NightlyBackupName, "bucket S3 rejects", `{"buckets": ["Kohakku_Briefs"]}`, "buckets", []string{"not a bucket name by the S3 rules"}},
	{workflows.NightlyBackupName, "database with spaces", `{"databases": ["kohakku controller"]}`, "databases", []string{"no spaces or quotes"}},

	{workflows.VerifyBackupName, "malformed", `{"setId": 2026-11-21}`, "setId", []string{"not valid JSON"}},
	{workflows.VerifyBackupName, "unknown field", `{"steps": 3}`, "steps", []string{"use one of setId, restore, sampleObjects, restoreJobs"}},
	{workflows.VerifyBackupName, "wrong type", `{"restore": "no"}`, "restore", []string{"of type bool"}},
	{workflows.VerifyBackupName, "negative size", `{"sampleObjects": -1}`, "sampleObjects", []string{"-1 is less than 0"}},

	{workflows.RedisLossName, "malformed", `{instance: "default"}`, "", []string{"not valid JSON", "offset 1"}},
	{workflows.RedisLossName, "unknown field", `{"instance": "default", "autoapprove": true}`, "autoapprove", []string{`did you mean "autoApprove"?`}},
	{workflows.RedisLossName, "wrong type", `{"instance": ["default"]}`, "instance", []string{"of type string"}},
	{workflows.RedisLossName, "negative duration", `{"approvalTimeout": "-4h"}`, "approvalTimeout", []string{"not negative"}},

	{workflows.MinIOLossName, "malformed", `{"scope": "all",}`, "scope", []string{"not valid JSON"}},
	{workflows.MinIOLossName, "unknown field", `{"buckets": "kohakku"}`, "buckets", []string{`did you mean "bucket"?`}},
	{workflows.MinIOLossName, "wrong type", `{"force": 1}`, "force", []string{"of type bool"}},
	{workflows.MinIOLossName, "unknown scope", `{"scope": "most"}`, "scope", []string{`"most" is not one of "needed", "all"`}},
	{workflows.MinIOLossName, "bucket S3 rejects", `{"bucket": "192.168.5.4"}`, "bucket", []string{"not an IP address"}},

	{workflows.TotalDBLossName, "malformed", `{"databases": ["kohakku-controller"]]`, "databases", []string{"not valid JSON"}},
	{workflows.TotalDBLossName, "unknown field", `{"target_suffix": "_drill"}`, "target_suffix", []string{`did you mean "targetSuffix"?`}},
	{workflows.TotalDBLossName, "wrong type", `{"jobs": "4"}`, "jobs", []string{"of type int"}},
	{workflows.TotalDBLossName, "database with quotes", `{"databases": ["kohakku\"controller"]}`, "databases", []string{"no spaces or quotes"}},
	{workflows.TotalDBLossName, "negative size", `{"jobs": -2}`, "jobs", []string{"-2 is less than 0"}},

	{workflows.RestoreTablesName, "malformed", `{"database": "kohakku-controller", "tables": ["tasks_task"}`, "tables", []string{"not valid JSON"}},
	{workflows.RestoreTablesName, "unknown field", `{"database": "kohakku-controller", "table": ["tasks_task"]}`, "table", []string{`did you mean "tables"?`}},
	{workflows.RestoreTablesName, "wrong type", `{"database": "kohakku-controller", "tables": "tasks_task"}`, "tables", []string{"of type []string"}},
	{workflows.RestoreTablesName, "database with spaces", `{"database": "kohakku controller", "tables": ["tasks_task"]}`, "database", []string{"no spaces or quotes"}},
	{workflows.RestoreTablesName, "unknown mode", `{"database": "kohakku-controller", "tables": ["tasks_task"], "mode": "merge"}`, "mode", []string{`"side"`, `"replace"`}},

	{workflows.FullClusterRecoveryName, "malformed", `{"dryRun": True}`, "dryRun", []string{"not valid JSON"}},
	{workflows.FullClusterRecoveryName, "unknown field", `{"redispatchTimeout": "2h"}`, "redispatchTimeout", []string{"use one of setId, scope, lostAfter"}},
	{workflows.FullClusterRecoveryName, "wrong type", `{"autoApprove": "true"}`, "autoApprove", []string{"of type bool"}},
	{workflows.FullClusterRecoveryName, "bad duration", `{"lostAfter": "2 minutes"}`, "lostAfter", []string{`want a duration string such as "90s"`}},
	{workflows.FullClusterRecoveryName, "unknown scope", `{"scope": "everything"}`, "scope", []string{`"needed"`}},

	{workflows.RedispatchLostTasksName, "malformed", `{"batchSize": 1e}`, "batchSize", []string{"not valid JSON"}},
	{workflows.RedispatchLostTasksName, "unknown field", `{"batch": 100}`, "batch", []string{"use one of recoveryId, lostAfter"}},
	{workflows.RedispatchLostTasksName, "wrong type", `{"generationUpTo": 1.5}`, "generationUpTo", []string{"of type int64"}},
	{workflows.RedispatchLostTasksName, "negative size", `{"batchSize": -5}`, "batchSize", []string{"-5 is less than 0"}},
	{workflows.RedispatchLostTasksName, "bad duration", `{"deadline": "1 day"}`, "deadline", []string{`"1 day"`}},

	{workflows.SelfCheckName, "malformed", `{"steps": `, "steps", []string{"not valid JSON", "unexpected EOF"}},
	{workflows.SelfCheckName, "unknown field", `{"stepz": 3}`, "stepz", []string{`did you mean "steps"?`}},
	{workflows.SelfCheckName, "wrong type", `{"steps": "three"}`, "steps", []string{"of type int"}},
	{workflows.SelfCheckName, "negative size", `{"steps": -1}`, "steps", []string{"-1 is less than 0"}},
	{workflows.SelfCheckName, "bad duration", `{"stepInterval": 5}`, "stepInterval", []string{`want a duration string such as "90s"`}},
}

// TestBadInputFailsFast starts every workflow type with bad input, as an operator would
// with `temporal workflow start --input`, on one real Temporal server and a worker
// registered as production registers it. Each run must fail — not retry its first
// workflow task — within seconds, non-retryably, with an InvalidInput error that names
// the field, and schedule no activity.
func TestBadInputFailsFast(t *testing.T) {
	tp := stacktest.Temporal(t)
	ctx := context.Background()
	c, err := tp.Client(ctx)
	require.NoError(t, err)
	t.Cleanup(c.Close)
	cfg, err := config.Load("", func(string) string { return "" })
	require.NoError(t, err)
	acts, err := app.New(ctx, cfg)
	require.NoError(t, err)
	queue := "bad-input"
	w := worker.New(c, queue, worker.Options{})
	require.NoError(t, app.Register(w, acts))
	require.NoError(t, w.Start())
	t.Cleanup(w.Stop)

	seen := map[string]map[string]bool{}
	for _, tt := range badInputs {
		if seen[tt.typ] == nil {
			seen[tt.typ] = map[string]bool{}
		}
		seen[tt.typ][tt.name] = true
	}
	for _, def := range workflows.All() {
		for _, kind := range []string{"malformed", "unknown field", "wrong type"} {
			assert.True(t, seen[def.Name][kind], "no %q case for %s", kind, def.Name)
		}
		assert.GreaterOrEqual(t, len(seen[def.Name]), 4, "no schema violation case for %s", def.Name)
	}

	t.Run("bad", func(t *testing.T) {
		for i, tt := range badInputs {
			t.Run(tt.typ+"/"+tt.name, func(t *testing.T) {
				t.Parallel()
				id := fmt.Sprintf("bad-input-%d-%s", i, strings.ToLower(tt.typ))
				started := time.Now()
				err := runWorkflow(t, c, queue, id, tt.typ, jsonInput(tt.input))
				elapsed := time.Since(started)
				var ae *temporal.ApplicationError
				require.ErrorAs(t, err, &ae, "%s must fail", id)
				assert.Equal(t, workflows.ErrInvalidInput, ae.Type())
				assert.True(t, ae.NonRetryable())
				if tt.field != "" {
					assert.Contains(t, ae.Error(), fmt.Sprintf("%q", tt.field), "names the field")
				}
				for _, s := range tt.contains {
					assert.Contains(t, ae.Error(), s)
				}
				assert.Less(t, elapsed, 10*time.Second, "fails fast")
				assertNothingRan(t, c, id)
			})
		}
		t.Run("two inputs", func(t *testing.T) {
			t.Parallel()
			err := runWorkflow(t, c, queue, "bad-input-two", workflows.SelfCheckName, jsonInput(`{}`), jsonInput(`{"steps": 1}`))
			var ae *temporal.ApplicationError
			require.ErrorAs(t, err, &ae)
			assert.Equal(t, workflows.ErrInvalidInput, ae.Type())
			assert.Contains(t, ae.Error(), "more than one input")
			assertNothingRan(t, c, "bad-input-two")
		})
		t.Run("good input runs", func(t *testing.T) {
			t.Parallel()
			err := runWorkflow(t, c, queue, "good-input", workflows.SelfCheckName, jsonInput(`{"steps": 1, "stepInterval": "0s"}`))
			require.NoError(t, err, "a valid input passes the check and the workflow runs")
			// A history recorded now (as workflows/testdata's are re-recorded) replays both
			// with the checked registration and with the bare functions replay_test.go uses.
			hist := history(t, c, "good-input")
			for _, strict := range []bool{true, false} {
				r := worker.NewWorkflowReplayer()
				for _, def := range workflows.All() {
					fn := def.Func
					if strict {
						fn = def.Strict()
					}
					r.RegisterWorkflowWithOptions(fn, workflow.RegisterOptions{Name: def.Name})
				}
				assert.NoError(t, r.ReplayWorkflowHistory(nil, hist), "replay, strict %v", strict)
			}
		})
	})
	// A run that failed on its input replays as it ran.
	r := worker.NewWorkflowReplayer()
	for _, def := range workflows.All() {
		r.RegisterWorkflowWithOptions(def.Strict(), workflow.RegisterOptions{Name: def.Name})
	}
	assert.NoError(t, r.ReplayWorkflowHistory(nil, history(t, c, "bad-input-0-nightlybackup")))
}

// history returns the history of the last run of workflow id.
func history(t *testing.T, c client.Client, id string) *historypb.History {
	t.Helper()
	it := c.GetWorkflowHistory(context.Background(), id, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	h := &historypb.History{}
	for it.HasNext() {
		ev, err := it.Next()
		require.NoError(t, err)
		h.Events = append(h.Events, ev)
	}
	return h
}

// runWorkflow starts typ with args and waits at most 10s for the end of the run.
func runWorkflow(t *testing.T, c client.Client, queue, id, typ string, args ...any) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: queue,
		// Even with a retry policy, an invalid input is not retried.
		RetryPolicy: &temporal.RetryPolicy{MaximumAttempts: 5, InitialInterval: time.Second}}, typ, args...)
	require.NoError(t, err)
	err = run.Get(ctx, nil)
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("%s: still running after 10s", id)
	}
	return err
}

// assertNothingRan: the run failed in its first workflow task, with no activity, child
// or retry of the task, and no retry of the run.
func assertNothingRan(t *testing.T, c client.Client, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	desc, err := c.DescribeWorkflowExecution(ctx, id, "")
	require.NoError(t, err)
	assert.Equal(t, enumspb.WORKFLOW_EXECUTION_STATUS_FAILED, desc.GetWorkflowExecutionInfo().GetStatus())
	it := c.GetWorkflowHistory(ctx, id, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	var types []enumspb.EventType
	for it.HasNext() {
		ev, err := it.Next()
		require.NoError(t, err)
		types = append(types, ev.GetEventType())
		if a := ev.GetWorkflowExecutionFailedEventAttributes(); a != nil {
			assert.Empty(t, a.GetNewExecutionRunId(), "%s: the run is not retried", id)
		}
	}
	for _, bad := range []enumspb.EventType{
		enumspb.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
		enumspb.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED,
		enumspb.EVENT_TYPE_WORKFLOW_TASK_FAILED,
		enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
	} {
		assert.NotContains(t, types, bad, "%s: history %v", id, types)
	}
	assert.Equal(t, enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED, types[len(types)-1])
}
