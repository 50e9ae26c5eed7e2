package workflows_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/kohakku/drflow/activities"
	"github.com/kohakku/drflow/workflows"
)

func TestSelfCheckInputValidation(t *testing.T) {
	tests := []struct {
		name  string
		in    workflows.SelfCheckInput
		field string
	}{
		{"negative steps", workflows.SelfCheckInput{Steps: -1}, `"steps"`},
		{"too many steps", workflows.SelfCheckInput{Steps: 10001}, `"steps"`},
		{"negative interval", workflows.SelfCheckInput{StepInterval: workflows.Duration(-time.Second)}, `"stepInterval"`},
		{"interval too long", workflows.SelfCheckInput{StepInterval: workflows.Duration(2 * time.Minute)}, `"stepInterval"`},
		{"heartbeat timeout too short", workflows.SelfCheckInput{HeartbeatTimeout: workflows.Duration(time.Millisecond)}, `"heartbeatTimeout"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s testsuite.WorkflowTestSuite
			env := s.NewTestWorkflowEnvironment()
			env.RegisterActivity(&activities.Host{})
			env.ExecuteWorkflow(workflows.SelfCheck, tt.in)
			require.True(t, env.IsWorkflowCompleted())
			err := env.GetWorkflowError()
			require.Error(t, err)
			var appErr *temporal.ApplicationError
			require.True(t, errors.As(err, &appErr), "want an application error, got %v", err)
			assert.True(t, appErr.NonRetryable())
			assert.Equal(t, workflows.ErrInvalidInput, appErr.Type())
			assert.Contains(t, appErr.Error(), tt.field)
		})
	}
}

func TestSelfCheckDefaultsAndProgress(t *testing.T) {
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	var got activities.SoakInput
	env.OnActivity((&activities.Host{}).Soak, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.SoakInput) (activities.SoakResult, error) {
			got = in
			return activities.SoakResult{Steps: in.Steps, Attempt: 2, ResumedFrom: 3}, nil
		})
	env.ExecuteWorkflow(workflows.SelfCheck, workflows.SelfCheckInput{})
	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())

	assert.Equal(t, activities.SoakInput{Steps: 10, Interval: time.Second}, got)
	var res workflows.SelfCheckResult
	require.NoError(t, env.GetWorkflowResult(&res))
	assert.Equal(t, 10, res.Soak.Steps)

	v, err := env.QueryWorkflow(workflows.ProgressQuery)
	require.NoError(t, err)
	var p workflows.Progress
	require.NoError(t, v.Get(&p))
	require.Len(t, p.Steps, 1)
	assert.Equal(t, workflows.StepCompleted, p.Steps[0].Status)
	assert.Equal(t, "10 steps, attempt 2, resumed from step 3", p.Steps[0].Detail)
}

func TestSelfCheckSoakFailureIsReported(t *testing.T) {
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	env.OnActivity((&activities.Host{}).Soak, mock.Anything, mock.Anything).Return(
		activities.SoakResult{}, temporal.NewNonRetryableApplicationError("disk on fire", "Boom", nil))
	env.ExecuteWorkflow(workflows.SelfCheck, workflows.SelfCheckInput{Steps: 2})
	require.True(t, env.IsWorkflowCompleted())
	require.ErrorContains(t, env.GetWorkflowError(), "soak")

	v, err := env.QueryWorkflow(workflows.ProgressQuery)
	require.NoError(t, err)
	var p workflows.Progress
	require.NoError(t, v.Get(&p))
	assert.Equal(t, workflows.StepFailed, p.Steps[0].Status)
	assert.Contains(t, p.Steps[0].Detail, "disk on fire")
}

func TestDurationJSON(t *testing.T) {
	var d workflows.Duration
	require.NoError(t, d.UnmarshalJSON([]byte(`"90s"`)))
	assert.Equal(t, 90*time.Second, d.D())
	b, err := d.MarshalJSON()
	require.NoError(t, err)
	assert.Equal(t, `"1m30s"`, string(b))
	assert.ErrorContains(t, d.UnmarshalJSON([]byte(`90`)), `want a duration string such as "90s"`)
	assert.ErrorContains(t, d.UnmarshalJSON([]byte(`"ninety"`)), `got "ninety"`)
}
