package health

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
	"go.temporal.io/sdk/interceptor"

	"github.com/kohakku/drflow/activities"
)

// Interceptor counts failed backup attempts per source in
// drflow_backup_failures_total{source}, and refreshes the health report as soon as a
// manifest is written. Each worker counts the attempts it ran; Prometheus sums workers.
type Interceptor struct {
	interceptor.WorkerInterceptorBase
	failures *prometheus.CounterVec
	checker  *Checker
}

// NewInterceptor registers the failure counter with reg. checker may be nil.
func NewInterceptor(reg prometheus.Registerer, checker *Checker) *Interceptor {
	f := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "drflow_backup_failures_total",
		Help: "Failed backup step attempts, by source (each retry that fails counts).",
	}, []string{"source"})
	reg.MustRegister(f)
	return &Interceptor{failures: f, checker: checker}
}

// InterceptActivity implements interceptor.WorkerInterceptor.
func (i *Interceptor) InterceptActivity(ctx context.Context, next interceptor.ActivityInboundInterceptor) interceptor.ActivityInboundInterceptor {
	return &activityInbound{ActivityInboundInterceptorBase: interceptor.ActivityInboundInterceptorBase{Next: next}, root: i}
}

type activityInbound struct {
	interceptor.ActivityInboundInterceptorBase
	root *Interceptor
}

func (a *activityInbound) ExecuteActivity(ctx context.Context, in *interceptor.ExecuteActivityInput) (any, error) {
	res, err := a.Next.ExecuteActivity(ctx, in)
	if len(in.Args) == 0 {
		return res, err
	}
	if err != nil {
		if src := SourceOf(in.Args[0]); src != "" {
			a.root.failures.WithLabelValues(src).Inc()
		}
		return res, err
	}
	if _, ok := in.Args[0].(activities.Manifest); ok && a.root.checker != nil {
		a.root.checker.Invalidate()
	}
	return res, err
}

// SourceOf names the source a backup activity input is about, as health labels it, or ""
// for other activities.
func SourceOf(arg any) string {
	switch in := arg.(type) {
	case activities.DumpInput:
		return activities.KindPostgres + "/" + in.Database
	case activities.RDBInput:
		return activities.KindRedis + "/" + in.Instance
	case activities.SQLiteInput:
		return activities.KindSQLite + "/" + in.Name
	case activities.MirrorInput:
		return "bucket/" + in.Bucket
	}
	return ""
}
