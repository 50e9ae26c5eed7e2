// Package activitytest holds helpers for testing Temporal activities in the SDK's
// test activity environment.
package activitytest

import (
	"context"

	"go.temporal.io/sdk/interceptor"
)

// Heartbeats returns a worker interceptor that calls onBeat with the details of
// every heartbeat an activity records, as it records it, then passes the
// heartbeat on.
//
// The Temporal test activity environment throttles heartbeats (it forwards only
// some of them, batched by the heartbeat timeout), so a test that checks an
// activity's progress reports reads every one through this interceptor instead:
//
//	env.SetWorkerOptions(worker.Options{Interceptors: []interceptor.WorkerInterceptor{
//		activitytest.Heartbeats(func(details ...any) { ... }),
//	}})
//
// onBeat runs on the activity's goroutine; it must be safe to call concurrently
// with the test.
func Heartbeats(onBeat func(details ...any)) interceptor.WorkerInterceptor {
	return &heartbeats{onBeat: onBeat}
}

type heartbeats struct {
	interceptor.WorkerInterceptorBase
	onBeat func(details ...any)
}

func (w *heartbeats) InterceptActivity(_ context.Context, next interceptor.ActivityInboundInterceptor) interceptor.ActivityInboundInterceptor {
	in := &heartbeatsInbound{onBeat: w.onBeat}
	in.Next = next
	return in
}

type heartbeatsInbound struct {
	interceptor.ActivityInboundInterceptorBase
	onBeat func(details ...any)
}

func (in *heartbeatsInbound) Init(outbound interceptor.ActivityOutboundInterceptor) error {
	out := &heartbeatsOutbound{onBeat: in.onBeat}
	out.Next = outbound
	return in.Next.Init(out)
}

type heartbeatsOutbound struct {
	interceptor.ActivityOutboundInterceptorBase
	onBeat func(details ...any)
}

func (out *heartbeatsOutbound) RecordHeartbeat(ctx context.Context, details ...any) {
	out.onBeat(details...)
	out.Next.RecordHeartbeat(ctx, details...)
}
