package workflows

import (
	"fmt"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/kohakku/drflow/activities"
)

// SelfCheckName is the registered workflow type of SelfCheck.
const SelfCheckName = "SelfCheck"

// SelfCheckInput configures SelfCheck. `{}` takes the defaults.
type SelfCheckInput struct {
	// Steps is how many heartbeated steps the soak activity runs (1–10000, default 10).
	Steps int `json:"steps,omitempty"`
	// StepInterval is the pause between steps ("1s" default, at most "1m").
	StepInterval Duration `json:"stepInterval,omitempty"`
	// HeartbeatTimeout after which a silent soak attempt is retried elsewhere
	// ("10s" default, 1s–10m). Shorter means faster recovery from a killed worker.
	HeartbeatTimeout Duration `json:"heartbeatTimeout,omitempty"`
}

// SelfCheckResult reports what the worker fleet proved.
type SelfCheckResult struct {
	// Soak is the soak activity's own report.
	Soak activities.SoakResult `json:"soak"`
	// Elapsed is workflow time from start to end.
	Elapsed Duration `json:"elapsed"`
}

func (in *SelfCheckInput) normalize() error {
	if in.Steps == 0 {
		in.Steps = 10
	}
	if in.Steps < 1 || in.Steps > 10000 {
		return invalidInput("steps", "%d is out of range: use 1 to 10000", in.Steps)
	}
	if in.StepInterval == 0 {
		in.StepInterval = Duration(time.Second)
	}
	if in.StepInterval < 0 || in.StepInterval.D() > time.Minute {
		return invalidInput("stepInterval", "%s is out of range: use 0s to 1m, e.g. \"1s\"", in.StepInterval)
	}
	if in.HeartbeatTimeout == 0 {
		in.HeartbeatTimeout = Duration(10 * time.Second)
	}
	if in.HeartbeatTimeout.D() < time.Second || in.HeartbeatTimeout.D() > 10*time.Minute {
		return invalidInput("heartbeatTimeout", "%s is out of range: use 1s to 10m, e.g. \"10s\"", in.HeartbeatTimeout)
	}
	return nil
}

// SelfCheck proves a deployment end to end: a worker picks up the workflow, runs a
// heartbeating activity, and — if that worker dies mid-activity — another attempt resumes
// from the last heartbeat instead of starting over. Operators run it after deploying or
// upgrading workers (`starter selfcheck`); tests kill the worker in the middle of it.
func SelfCheck(ctx workflow.Context, in SelfCheckInput) (SelfCheckResult, error) {
	const soakStep = "soak"
	var res SelfCheckResult
	started := workflow.Now(ctx)
	t, err := newTracker(ctx, SelfCheckName, soakStep)
	if err != nil {
		return res, err
	}
	if err := workflow.UpsertTypedSearchAttributes(ctx, SearchAttrRunbook.ValueSet(SelfCheckName)); err != nil {
		return res, err
	}
	if err := in.normalize(); err != nil {
		return res, err
	}

	var host *activities.Host
	actx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: time.Duration(in.Steps)*in.StepInterval.D() + 5*time.Minute,
		HeartbeatTimeout:    in.HeartbeatTimeout.D(),
		Summary:             fmt.Sprintf("soak: %d steps every %s", in.Steps, in.StepInterval),
		RetryPolicy: &temporal.RetryPolicy{
			InitialInterval: time.Second,
			MaximumInterval: 30 * time.Second,
			MaximumAttempts: 10,
		},
	})
	t.start(ctx, soakStep)
	err = workflow.ExecuteActivity(actx, host.Soak, activities.SoakInput{
		Steps:    in.Steps,
		Interval: in.StepInterval.D(),
	}).Get(ctx, &res.Soak)
	t.finish(ctx, soakStep, fmt.Sprintf("%d steps, attempt %d, resumed from step %d",
		res.Soak.Steps, res.Soak.Attempt, res.Soak.ResumedFrom), err)
	if err != nil {
		return res, fmt.Errorf("soak: %w", err)
	}
	res.Elapsed = Duration(workflow.Now(ctx).Sub(started))
	return res, nil
}
