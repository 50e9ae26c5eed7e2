package activitytest

import (
	"context"
	"sync"
	"testing"

	"go.temporal.io/sdk/interceptor"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/worker"
)

// Run is one execution of an activity in the test activity environment: its
// result or error, and every heartbeat it recorded, in order.
type Run[R, P any] struct {
	Result     R
	Err        error
	Heartbeats []P
}

// Execute runs activity (a method value of the struct registered) with in, in a
// test activity environment whose activity context is a child of ctx, so
// cancelling ctx cancels the activity. Every heartbeat must carry one P; onBeat,
// when set, sees each as the activity records it (on the activity's goroutine).
func Execute[R, P any](t testing.TB, ctx context.Context, registered, activity, in any, onBeat func(P)) Run[R, P] {
	t.Helper()
	var mu sync.Mutex
	var run Run[R, P]
	beats := Heartbeats(func(details ...any) {
		p, ok := details[0].(P)
		if !ok || len(details) != 1 {
			t.Errorf("heartbeat details %#v, want one %T", details, *new(P))
			return
		}
		mu.Lock()
		run.Heartbeats = append(run.Heartbeats, p)
		mu.Unlock()
		if onBeat != nil {
			onBeat(p)
		}
	})
	var s testsuite.WorkflowTestSuite
	env := s.NewTestActivityEnvironment()
	env.SetWorkerOptions(worker.Options{
		BackgroundActivityContext: ctx,
		Interceptors:              []interceptor.WorkerInterceptor{beats},
	})
	env.RegisterActivity(registered)
	v, err := env.ExecuteActivity(activity, in)
	mu.Lock()
	defer mu.Unlock()
	run.Err = err
	if err == nil {
		if err := v.Get(&run.Result); err != nil {
			t.Fatalf("decode the activity's result: %v", err)
		}
	}
	return run
}

// Phases returns the distinct values of phase over beats, in order: the phases an
// activity went through.
func Phases[P any](beats []P, phase func(P) string) []string {
	var ph []string
	for _, b := range beats {
		if p := phase(b); len(ph) == 0 || ph[len(ph)-1] != p {
			ph = append(ph, p)
		}
	}
	return ph
}
