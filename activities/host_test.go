package activities_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/testsuite"

	"github.com/kohakku/drflow/activities"
)

func TestSoakRunsAllSteps(t *testing.T) {
	var s testsuite.WorkflowTestSuite
	env := s.NewTestActivityEnvironment()
	h := &activities.Host{Name: "test-host"}
	env.RegisterActivity(h)
	v, err := env.ExecuteActivity(h.Soak, activities.SoakInput{Steps: 3, Interval: time.Millisecond})
	require.NoError(t, err)
	var res activities.SoakResult
	require.NoError(t, v.Get(&res))
	assert.Equal(t, activities.SoakResult{Steps: 3, Attempt: 1, ResumedFrom: 0, Host: "test-host"}, res)
}

func TestSoakResumesFromHeartbeat(t *testing.T) {
	var s testsuite.WorkflowTestSuite
	env := s.NewTestActivityEnvironment()
	h := &activities.Host{Name: "test-host"}
	env.RegisterActivity(h)
	env.SetHeartbeatDetails(struct {
		Done int `json:"done"`
	}{Done: 7})
	v, err := env.ExecuteActivity(h.Soak, activities.SoakInput{Steps: 9, Interval: time.Millisecond})
	require.NoError(t, err)
	var res activities.SoakResult
	require.NoError(t, v.Get(&res))
	assert.Equal(t, 9, res.Steps)
	assert.Equal(t, 7, res.ResumedFrom)
}

func TestSoakRejectsZeroSteps(t *testing.T) {
	var s testsuite.WorkflowTestSuite
	env := s.NewTestActivityEnvironment()
	h := &activities.Host{}
	env.RegisterActivity(h)
	_, err := env.ExecuteActivity(h.Soak, activities.SoakInput{Steps: 0})
	require.ErrorContains(t, err, "steps must be at least 1")
}
