package workflows_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/kohakku/drflow/activities"
	"github.com/kohakku/drflow/internal/profile"
	"github.com/kohakku/drflow/workflows"
)

var appState *activities.AppState

// redisLossEnv mocks RedisLoss's activities on a reachable Redis and counts the calls of
// the ones that change something.
type redisLossEnv struct {
	env      *testsuite.TestWorkflowEnvironment
	rebuilds atomic.Int32
	dumps    atomic.Int32
}

func newRedisLossEnv(t *testing.T) *redisLossEnv {
	t.Helper()
	var s testsuite.WorkflowTestSuite
	e := &redisLossEnv{env: s.NewTestWorkflowEnvironment()}
	env := e.env
	env.SetStartTime(time.Date(2026, 11, 21, 3, 0, 0, 0, time.UTC))
	env.OnActivity(inv.Resolve, mock.Anything, mock.Anything).Return(activities.Targets{Redis: []string{"default"}}, nil)
	env.OnActivity(appState.CheckRedis, mock.Anything).Return(activities.RedisStatus{Instance: "default", Reachable: true, Version: "7.0.15", AppKeys: 12, TotalKeys: 14}, nil)
	plan := profile.RedisPlan{Pending: 3, Unfinished: 10, LiveContainers: 2, Keys: 12}
	env.OnActivity(appState.PlanRedisRebuild, mock.Anything).Return(plan, nil)
	env.OnActivity(rd.DumpRDB, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.RDBInput) (activities.Artifact, error) {
		e.dumps.Add(1)
		return activities.Artifact{Kind: activities.KindRedis, Key: in.Key, KeyCount: 14, Size: 300}, nil
	})
	env.OnActivity(appState.RebuildRedis, mock.Anything).Return(func(context.Context) (profile.RebuildResult, error) {
		e.rebuilds.Add(1)
		return profile.RebuildResult{Deleted: 12, Plan: plan, Batches: 1}, nil
	}).After(5 * time.Minute) // long enough for a second decision to arrive meanwhile
	env.OnActivity(appState.VerifyRedisState, mock.Anything).Return(profile.RedisCheck{OK: true, Expected: plan, Found: plan}, nil)
	return e
}

// update sends name after delay and records the outcome.
type updateOutcome struct {
	accepted bool
	err      error
	state    workflows.ApprovalState
}

func (e *redisLossEnv) update(delay time.Duration, name string, d workflows.Decision, out *updateOutcome) {
	e.env.RegisterDelayedCallback(func() {
		e.env.UpdateWorkflow(name, "", &testsuite.TestUpdateCallback{
			OnAccept: func() { out.accepted = true },
			OnReject: func(err error) { out.err = err },
			OnComplete: func(v any, err error) {
				if err != nil {
					out.err = err
					return
				}
				if st, ok := v.(workflows.ApprovalState); ok {
					out.state = st
				}
			},
		}, d)
	}, delay)
}

func TestRecoveryApprove(t *testing.T) {
	e := newRedisLossEnv(t)
	var approve, second updateOutcome
	e.update(time.Minute, workflows.ApproveUpdate, workflows.Decision{By: "alice", Comment: "redis lost"}, &approve)
	e.update(2*time.Minute, workflows.ApproveUpdate, workflows.Decision{By: "bob"}, &second)
	var progressWhileWaiting workflows.Progress
	changedWhileWaiting := int32(-1)
	e.env.RegisterDelayedCallback(func() {
		changedWhileWaiting = e.rebuilds.Load() + e.dumps.Load()
		v, err := e.env.QueryWorkflow(workflows.ProgressQuery)
		require.NoError(t, err)
		require.NoError(t, v.Get(&progressWhileWaiting))
	}, 30*time.Second)
	e.env.ExecuteWorkflow(workflows.RedisLoss, workflows.RedisLossInput{})
	require.True(t, e.env.IsWorkflowCompleted())
	require.NoError(t, e.env.GetWorkflowError())
	var res workflows.RedisLossResult
	require.NoError(t, e.env.GetWorkflowResult(&res))

	assert.True(t, approve.accepted)
	assert.Equal(t, workflows.ApprovalApproved, approve.state.Status)
	assert.Equal(t, "alice", approve.state.By)
	require.Error(t, second.err, "a second decision must be refused")
	assert.Contains(t, second.err.Error(), "already approved by alice")

	require.NotNil(t, progressWhileWaiting.Approval)
	assert.Equal(t, workflows.ApprovalWaiting, progressWhileWaiting.Approval.Status)
	assert.Equal(t, int32(0), changedWhileWaiting, "nothing may change before the approval")

	assert.Equal(t, workflows.OutcomeRecovered, res.Outcome)
	assert.Equal(t, "alice", res.Approval.By)
	assert.Equal(t, int32(1), e.rebuilds.Load())
	assert.Equal(t, int32(1), e.dumps.Load(), "the live RDB is copied before the rebuild")
	require.Len(t, res.SafetyCopies, 1)
	assert.Equal(t, activities.SafetyRedisKey("default-test-workflow-id", "default"), res.SafetyCopies[0].Key)
	assert.Equal(t, 5*time.Minute, res.RTO.D(), "RTO counts from the approval: the rebuild's 5 minutes, not the wait")
}

func TestRecoveryReject(t *testing.T) {
	e := newRedisLossEnv(t)
	var reject, late updateOutcome
	e.update(time.Minute, workflows.RejectUpdate, workflows.Decision{By: "carol", Comment: "wrong instance"}, &reject)
	e.update(2*time.Minute, workflows.ApproveUpdate, workflows.Decision{}, &late)
	e.env.ExecuteWorkflow(workflows.RedisLoss, workflows.RedisLossInput{})
	require.True(t, e.env.IsWorkflowCompleted())
	require.NoError(t, e.env.GetWorkflowError())
	var res workflows.RedisLossResult
	require.NoError(t, e.env.GetWorkflowResult(&res))
	assert.Equal(t, workflows.OutcomeRejected, res.Outcome)
	assert.Equal(t, "carol", res.Approval.By)
	assert.Equal(t, int32(0), e.rebuilds.Load()+e.dumps.Load(), "a rejected run changes nothing")
	// The run ended right after the rejection, so the late approve finds no run.
	assert.False(t, late.accepted)
}

func TestRecoveryDryRun(t *testing.T) {
	e := newRedisLossEnv(t)
	var approve updateOutcome
	e.update(0, workflows.ApproveUpdate, workflows.Decision{}, &approve)
	e.env.ExecuteWorkflow(workflows.RedisLoss, workflows.RedisLossInput{RecoveryOptions: workflows.RecoveryOptions{DryRun: true}})
	require.NoError(t, e.env.GetWorkflowError())
	var res workflows.RedisLossResult
	require.NoError(t, e.env.GetWorkflowResult(&res))
	assert.Equal(t, workflows.OutcomeDryRun, res.Outcome)
	assert.Equal(t, int64(12), res.Plan.Rebuild.Keys)
	assert.Equal(t, int64(12), res.Plan.Overwrites)
	assert.NotEmpty(t, res.Plan.Actions)
	assert.Equal(t, int32(0), e.rebuilds.Load()+e.dumps.Load(), "a dry run changes nothing")
}

func TestRecoveryApprovalTimeout(t *testing.T) {
	e := newRedisLossEnv(t)
	e.env.ExecuteWorkflow(workflows.RedisLoss, workflows.RedisLossInput{RecoveryOptions: workflows.RecoveryOptions{ApprovalTimeout: workflows.Duration(10 * time.Minute)}})
	err := e.env.GetWorkflowError()
	require.Error(t, err)
	var app *temporal.ApplicationError
	require.True(t, errors.As(err, &app))
	assert.Equal(t, workflows.ErrApprovalTimeout, app.Type())
	assert.True(t, app.NonRetryable())
	assert.Contains(t, app.Error(), "nothing was changed")
	assert.Equal(t, int32(0), e.rebuilds.Load()+e.dumps.Load())
}

func TestRecoveryAutoApprove(t *testing.T) {
	e := newRedisLossEnv(t)
	e.env.ExecuteWorkflow(workflows.RedisLoss, workflows.RedisLossInput{RecoveryOptions: workflows.RecoveryOptions{AutoApprove: true}})
	require.NoError(t, e.env.GetWorkflowError())
	var res workflows.RedisLossResult
	require.NoError(t, e.env.GetWorkflowResult(&res))
	assert.Equal(t, workflows.ApprovalAuto, res.Approval.Status)
	assert.Equal(t, int32(1), e.rebuilds.Load())
}

func TestRecoveryBadInput(t *testing.T) {
	for name, in := range map[string]workflows.RedisLossInput{
		"approvalTimeout too short": {RecoveryOptions: workflows.RecoveryOptions{ApprovalTimeout: workflows.Duration(time.Second)}},
	} {
		t.Run(name, func(t *testing.T) {
			e := newRedisLossEnv(t)
			e.env.ExecuteWorkflow(workflows.RedisLoss, in)
			err := e.env.GetWorkflowError()
			var app *temporal.ApplicationError
			require.True(t, errors.As(err, &app), "%v", err)
			assert.Equal(t, workflows.ErrInvalidInput, app.Type())
			assert.Contains(t, app.Error(), "approvalTimeout")
		})
	}
}
