package workflows_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"

	"github.com/kohakku/drflow/activities"
	"github.com/kohakku/drflow/internal/profile"
	"github.com/kohakku/drflow/workflows"
)

// redispatchEnv mocks three batches of lost tasks (1000 + 1000 + 500) and a tracker
// whose outstanding count follows outstanding, one entry per poll (the last repeats).
func redispatchEnv(t *testing.T, outstanding ...int64) (*testsuite.TestWorkflowEnvironment, *[]activities.LostTasksInput) {
	t.Helper()
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	env.SetStartTime(time.Date(2026, 11, 21, 4, 0, 0, 0, time.UTC))
	var calls []activities.LostTasksInput
	batches := []profile.RequeueResult{{Requeued: 1000}, {Requeued: 1000}, {Requeued: 500, Done: true}}
	env.OnActivity(appState.RequeueLost, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.LostTasksInput) (profile.RequeueResult, error) {
		calls = append(calls, in)
		return batches[len(calls)-1], nil
	})
	poll := 0
	env.OnActivity(appState.TrackRequeued, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.TrackInput) (profile.RequeueStatus, error) {
		n := outstanding[min(poll, len(outstanding)-1)]
		if in.Limit == 100 {
			poll++
		}
		st := profile.RequeueStatus{Requeued: 2500, Outstanding: n, ByStatus: map[string]int64{"running": n, "completed": 2500 - n - 10, "failed": 10}}
		for i := int64(0); i < min(n, int64(in.Limit)); i++ {
			st.OutstandingIDs = append(st.OutstandingIDs, in.After+i+1)
		}
		return st, nil
	})
	return env, &calls
}

func TestRedispatchTracksUntilDone(t *testing.T) {
	env, calls := redispatchEnv(t, 300, 120, 0)
	var seen workflows.Progress
	env.RegisterDelayedCallback(func() {
		v, err := env.QueryWorkflow(workflows.ProgressQuery)
		require.NoError(t, err)
		require.NoError(t, v.Get(&seen))
	}, 15*time.Second)
	env.ExecuteWorkflow(workflows.RedispatchLostTasks, workflows.RedispatchLostTasksInput{RecoveryID: "fcr-1", LostAfter: workflows.Duration(time.Minute)})
	require.NoError(t, env.GetWorkflowError())
	var res workflows.RedispatchResult
	require.NoError(t, env.GetWorkflowResult(&res))

	require.Len(t, *calls, 3, "batches until one comes back short")
	for _, c := range *calls {
		assert.Equal(t, "fcr-1", c.RecoveryID, "every batch under the same recovery id: a retry re-queues nothing twice")
		assert.Equal(t, 1000, c.Batch)
		assert.Equal(t, time.Minute, c.LostAfter)
	}
	assert.Equal(t, int64(2500), res.Counts.Requeued)
	assert.Equal(t, int64(0), res.Counts.Outstanding)
	assert.Equal(t, int64(0), res.MissedDeadline)
	assert.Equal(t, 20*time.Second, res.FinishedAt.Sub(res.StartedAt), "three polls, 10s apart")

	require.NotNil(t, seen.Tasks, "the progress query shows the counts")
	assert.Equal(t, int64(120), seen.Tasks.Outstanding)
	assert.Len(t, seen.Tasks.OutstandingIDs, 100, "one page of outstanding ids")
	assert.Equal(t, int64(100), seen.Tasks.OutstandingAfter, "the second poll shows the second page")
}

func TestRedispatchDeadline(t *testing.T) {
	env, _ := redispatchEnv(t, 7)
	env.ExecuteWorkflow(workflows.RedispatchLostTasks, workflows.RedispatchLostTasksInput{RecoveryID: "fcr-2", Deadline: workflows.Duration(time.Minute)})
	require.NoError(t, env.GetWorkflowError())
	var res workflows.RedispatchResult
	require.NoError(t, env.GetWorkflowResult(&res))
	assert.Equal(t, int64(7), res.MissedDeadline)
	assert.Equal(t, []int64{1, 2, 3, 4, 5, 6, 7}, res.Missed, "the result lists the tasks that missed the deadline")
	assert.Equal(t, time.Minute, res.FinishedAt.Sub(res.StartedAt))
}

func TestRedispatchContinuesAsNew(t *testing.T) {
	env, _ := redispatchEnv(t, 7)
	// A deadline far away: the run must hand over to a new one long before.
	env.ExecuteWorkflow(workflows.RedispatchLostTasks, workflows.RedispatchLostTasksInput{RecoveryID: "fcr-3", Deadline: workflows.Duration(24 * time.Hour), PollEvery: workflows.Duration(time.Second)})
	err := env.GetWorkflowError()
	var can *workflow.ContinueAsNewError
	require.True(t, errors.As(err, &can), "want continue-as-new, got %v", err)
	var next workflows.RedispatchLostTasksInput
	require.NoError(t, decodeArg(can, &next))
	require.NotNil(t, next.State)
	assert.False(t, next.State.Requeueing, "re-queueing is done; the next run only tracks")
	assert.Equal(t, int64(2500), next.State.Requeued)
	assert.Equal(t, "fcr-3", next.RecoveryID)
	assert.InDelta(t, 150, next.State.Polls, 3, "a run hands over after about 150 polls")
	assert.Equal(t, time.Date(2026, 11, 22, 4, 0, 0, 0, time.UTC), next.State.DeadlineAt.UTC(), "the deadline is kept across runs")
}

func TestRedispatchBadInput(t *testing.T) {
	env, _ := redispatchEnv(t, 0)
	env.ExecuteWorkflow(workflows.RedispatchLostTasks, workflows.RedispatchLostTasksInput{BatchSize: -5})
	err := env.GetWorkflowError()
	require.Error(t, err)
	assert.Contains(t, err.Error(), `"batchSize"`)
}

func decodeArg(can *workflow.ContinueAsNewError, out any) error {
	return converter.GetDefaultDataConverter().FromPayloads(can.Input, out)
}
