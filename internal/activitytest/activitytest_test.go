package activitytest_test

import (
	"context"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/interceptor"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/worker"

	"github.com/kohakku/drflow/internal/activitytest"
)

// countUp heartbeats 1..n in quick succession, faster than the test
// environment forwards heartbeats.
func countUp(ctx context.Context, n int) error {
	for i := 1; i <= n; i++ {
		activity.RecordHeartbeat(ctx, i, "step")
	}
	return nil
}

func TestHeartbeatsSeesEveryHeartbeat(t *testing.T) {
	var (
		mu    sync.Mutex
		beats [][]any
	)
	var s testsuite.WorkflowTestSuite
	env := s.NewTestActivityEnvironment()
	env.SetWorkerOptions(worker.Options{Interceptors: []interceptor.WorkerInterceptor{
		activitytest.Heartbeats(func(details ...any) {
			mu.Lock()
			defer mu.Unlock()
			beats = append(beats, details)
		}),
	}})
	env.RegisterActivity(countUp)
	_, err := env.ExecuteActivity(countUp, 3)
	require.NoError(t, err)

	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, [][]any{{1, "step"}, {2, "step"}, {3, "step"}}, beats)
}
