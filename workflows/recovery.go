package workflows

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/kohakku/drflow/activities"
)

// RecoveryReport is the part of every recovery runbook's result that says what happened:
// the outcome, who approved, the safety copies taken and the measured recovery time.
type RecoveryReport struct {
	// Outcome is "recovered", "dry-run" or "rejected".
	Outcome  string        `json:"outcome"`
	Approval ApprovalState `json:"approval"`
	// SafetyCopies of what the run overwrote, taken before it did (or why not).
	SafetyCopies []SafetyCopy `json:"safetyCopies,omitempty"`
	// StartedAt is when the run started; FinishedAt when its last step ended.
	StartedAt  time.Time `json:"startedAt"`
	FinishedAt time.Time `json:"finishedAt"`
	// RTO is the time from the go-ahead (approval) to the end of the last step: the
	// measured recovery time, without the wait for a human.
	RTO Duration `json:"rto"`
}

// SafetyCopy is one copy of live data taken before a runbook overwrote it.
type SafetyCopy struct {
	// What was copied ("database kohakku-controller", "redis default", "bucket kohakku").
	What string `json:"what"`
	// Key (or prefix) in the backup store; empty when skipped.
	Key   string `json:"key,omitempty"`
	Bytes int64  `json:"bytes,omitempty"`
	Count int64  `json:"count,omitempty"`
	// Skipped says why no copy was taken (unreachable, nothing there).
	Skipped string `json:"skipped,omitempty"`
}

// recovery is the shared state of one recovery runbook run: progress, approval, report.
type recovery struct {
	t        *tracker
	approval *approval
	report   RecoveryReport
	approved time.Time
}

// startRecovery sets the runbook's search attributes, registers the progress query
// with steps listed up front, and the plan query and approval updates.
func startRecovery(ctx workflow.Context, runbook, target string, steps ...string) (*recovery, error) {
	sa := []temporal.SearchAttributeUpdate{SearchAttrRunbook.ValueSet(runbook)}
	if target != "" {
		sa = append(sa, SearchAttrTarget.ValueSet(target))
	}
	if err := workflow.UpsertTypedSearchAttributes(ctx, sa...); err != nil {
		return nil, err
	}
	t, err := newTracker(ctx, runbook, steps...)
	if err != nil {
		return nil, err
	}
	a, err := newApproval(ctx, t)
	if err != nil {
		return nil, err
	}
	return &recovery{t: t, approval: a, report: RecoveryReport{StartedAt: workflow.Now(ctx)}}, nil
}

// decide publishes the plan and waits for the go-ahead (see approval.decide).
func (r *recovery) decide(ctx workflow.Context, plan any, opts RecoveryOptions) (bool, error) {
	ok, err := r.approval.decide(ctx, r.t, stepApproval, plan, opts)
	r.report.Approval = r.approval.state
	if err == nil && !ok {
		r.report.Outcome = r.approval.outcome()
		r.report.FinishedAt = workflow.Now(ctx)
		for i := range r.t.p.Steps {
			if r.t.p.Steps[i].Status == StepPending {
				r.t.p.Steps[i].Status = StepSkipped
			}
		}
	}
	r.approved = workflow.Now(ctx)
	return ok, err
}

// done fills in the report of a run that went through.
func (r *recovery) done(ctx workflow.Context) RecoveryReport {
	r.report.Outcome = OutcomeRecovered
	r.report.FinishedAt = workflow.Now(ctx)
	r.report.RTO = Duration(r.report.FinishedAt.Sub(r.approved))
	workflow.SetCurrentDetails(ctx, fmt.Sprintf("**%s**: recovered, RTO %s", r.t.p.Runbook, r.report.RTO.D().Round(time.Millisecond)))
	return r.report
}

// skip marks a step that does not apply to this run.
func (r *recovery) skip(ctx workflow.Context, step, why string) {
	r.t.start(ctx, step)
	r.t.finish(ctx, step, why, nil)
	r.t.step(step).Status = StepSkipped
}

// Step names shared by the recovery runbooks.
const (
	stepApproval = "approval"
	stepResolve  = "resolve targets"
	stepSelect   = "select set"
)

// resolveTargets checks the named targets against the worker's configuration.
func resolveTargets(ctx workflow.Context, t *tracker, in activities.TargetsInput) (activities.Targets, error) {
	var inv *activities.Inventory
	var targets activities.Targets
	t.start(ctx, stepResolve)
	err := workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, metadataActivityOptions("resolve targets")), inv.Resolve, in).Get(ctx, &targets)
	t.finish(ctx, stepResolve, "", err)
	return targets, err
}

// selectSet picks the set a restore reads: the newest verified one unless named.
func selectSet(ctx workflow.Context, t *tracker, setID string, allowFailed bool) (activities.SelectedSet, error) {
	var bs *activities.BackupStore
	var sel activities.SelectedSet
	t.start(ctx, stepSelect)
	err := workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, metadataActivityOptions("select set")), bs.SelectSet,
		activities.SelectSetInput{SetID: setID, RequireVerified: true, AllowFailed: allowFailed}).Get(ctx, &sel)
	detail := ""
	if err == nil {
		detail = fmt.Sprintf("%s (taken %s, verification %s)", sel.Manifest.SetID, sel.Manifest.CreatedAt.Format(time.RFC3339), orNever(sel.Verified))
	}
	t.finish(ctx, stepSelect, detail, err)
	return sel, err
}

func orNever(verdict string) string {
	if verdict == "" {
		return "never run"
	}
	return verdict
}

// hookActivityOptions: a hook bounds itself by its own timeout (at most 1h); a failing
// command is tried three times.
func hookActivityOptions(summary, queue string) workflow.ActivityOptions {
	o := longActivityOptions(summary, 3)
	o.StartToCloseTimeout = 2 * time.Hour
	o.TaskQueue = queue
	return o
}

// runHook runs one service action on the service's task queue. A service without hooks
// is not an error: the result says it was not configured.
func runHook(ctx workflow.Context, targets activities.Targets, service, action string) (activities.HookResult, error) {
	var svc *activities.Services
	var res activities.HookResult
	queue, ok := targets.Services[service]
	if !ok {
		return activities.HookResult{Service: service, Action: action, Note: "no hooks configured for " + service + " (DRFLOW_HOOKS_FILE)"}, nil
	}
	err := workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, hookActivityOptions(action+" "+service, queue)), svc.RunHook,
		activities.HookInput{Service: service, Action: action}).Get(ctx, &res)
	return res, err
}

// hookDetail is the one-line summary of hook results for the progress query.
func hookDetail(results []activities.HookResult) string {
	var parts []string
	for _, r := range results {
		s := r.Action + " " + r.Service
		switch {
		case !r.Configured:
			s += ": not configured"
		case r.Failed:
			s += ": failed (continued): " + r.Error
		case r.Healthy:
			s += fmt.Sprintf(": healthy after %s", r.Duration.Round(time.Millisecond))
		default:
			s += fmt.Sprintf(": ok in %s", r.Duration.Round(time.Millisecond))
		}
		parts = append(parts, s)
	}
	if len(parts) == 0 {
		return "no hooks configured (DRFLOW_HOOKS_FILE)"
	}
	return strings.Join(parts, "; ")
}

// plannedServices returns the entries of the configured restart order that name one of
// services, in that order.
func plannedServices(order []activities.PlannedRestart, services ...string) []activities.PlannedRestart {
	var out []activities.PlannedRestart
	for _, p := range order {
		if slices.Contains(services, p.Service) {
			out = append(out, p)
		}
	}
	return out
}
