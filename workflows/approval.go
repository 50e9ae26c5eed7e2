package workflows

import (
	"errors"
	"fmt"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"
)

// Names of the approval handlers every recovery runbook registers.
const (
	// PlanQuery returns the runbook's plan: what it will change, where and how much.
	PlanQuery = "plan"
	// ApproveUpdate lets a waiting runbook go ahead with its plan.
	ApproveUpdate = "approve"
	// RejectUpdate ends a waiting runbook with nothing changed.
	RejectUpdate = "reject"
)

// ErrApprovalTimeout is the error type of a runbook that waited for an approval in vain.
const ErrApprovalTimeout = "ApprovalTimeout"

// DefaultApprovalTimeout is how long a runbook waits for an approve or reject update.
const DefaultApprovalTimeout = 4 * time.Hour

// Outcomes of a recovery runbook, in RecoveryReport.Outcome.
const (
	OutcomeRecovered = "recovered"
	OutcomeDryRun    = "dry-run"
	OutcomeRejected  = "rejected"
)

// Approval states, in ApprovalState.Status.
const (
	ApprovalPlanning  = "planning"   // no plan yet
	ApprovalNotNeeded = "not needed" // a dry run: nothing to approve
	ApprovalWaiting   = "waiting"    // the plan is published; approve or reject it
	ApprovalAuto      = "auto"       // the input said autoApprove
	ApprovalApproved  = "approved"
	ApprovalRejected  = "rejected"
	ApprovalTimedOut  = "timed out"
)

// RecoveryOptions are the input fields every recovery runbook shares. They are embedded,
// so they appear at the top level of the input JSON.
type RecoveryOptions struct {
	// DryRun plans and reports without changing anything.
	DryRun bool `json:"dryRun,omitempty"`
	// AutoApprove goes ahead without waiting for an approve update (drills, scripted runs).
	AutoApprove bool `json:"autoApprove,omitempty"`
	// ApprovalTimeout bounds the wait for approve or reject (default 4h); past it the run
	// fails with nothing changed.
	ApprovalTimeout Duration `json:"approvalTimeout,omitempty"`
}

func (o *RecoveryOptions) normalize() error {
	if o.ApprovalTimeout == 0 {
		o.ApprovalTimeout = Duration(DefaultApprovalTimeout)
	}
	if o.ApprovalTimeout < Duration(time.Minute) || o.ApprovalTimeout > Duration(7*24*time.Hour) {
		return invalidInput("approvalTimeout", "%s is out of range: use 1m to 168h, e.g. \"4h\"", o.ApprovalTimeout)
	}
	return nil
}

// Decision is the input of the approve and reject updates. Both fields are optional and
// recorded in the run's history and result.
type Decision struct {
	// By names who decided ("alice").
	By string `json:"by,omitempty"`
	// Comment says why.
	Comment string `json:"comment,omitempty"`
}

// ApprovalState is the approval as the progress query and the result show it.
type ApprovalState struct {
	Status    string    `json:"status"`
	By        string    `json:"by,omitempty"`
	Comment   string    `json:"comment,omitempty"`
	DecidedAt time.Time `json:"decidedAt,omitzero"`
	// Deadline is when a waiting run gives up.
	Deadline time.Time `json:"deadline,omitzero"`
}

// approval publishes a runbook's plan and gates its destructive steps on the approve
// update. The handlers are registered when the run starts, so an early update is refused
// with a reason instead of being rejected as unknown.
type approval struct {
	plan  any
	state ApprovalState
	// waiting is true while decide waits: only then is a decision accepted.
	waiting bool
}

func newApproval(ctx workflow.Context, t *tracker) (*approval, error) {
	a := &approval{state: ApprovalState{Status: ApprovalPlanning}}
	t.p.Approval = &a.state
	if err := workflow.SetQueryHandler(ctx, PlanQuery, func() (any, error) {
		if a.plan == nil {
			return nil, errors.New("no plan yet: the runbook is still planning; query again in a moment")
		}
		return a.plan, nil
	}); err != nil {
		return nil, err
	}
	for _, u := range []struct {
		name   string
		status string
	}{{ApproveUpdate, ApprovalApproved}, {RejectUpdate, ApprovalRejected}} {
		err := workflow.SetUpdateHandlerWithOptions(ctx, u.name,
			func(ctx workflow.Context, d Decision) (ApprovalState, error) {
				// Two updates accepted in the same workflow task: the first decides.
				if err := a.validate(); err != nil {
					return a.state, err
				}
				a.state = ApprovalState{Status: u.status, By: d.By, Comment: d.Comment, DecidedAt: workflow.Now(ctx)}
				return a.state, nil
			},
			workflow.UpdateHandlerOptions{Validator: func(_ workflow.Context, _ Decision) error { return a.validate() }})
		if err != nil {
			return nil, err
		}
	}
	return a, nil
}

// validate refuses a decision when there is nothing to decide.
func (a *approval) validate() error {
	switch {
	case a.plan == nil || a.state.Status == ApprovalPlanning:
		return errors.New("there is no plan to decide on yet: the runbook is still planning; query \"plan\" and try again")
	case a.state.Status == ApprovalNotNeeded:
		return errors.New("nothing to approve: this run changes nothing live (a dry run, or a side copy)")
	case a.state.Status == ApprovalAuto:
		return errors.New("already approved: the input said autoApprove")
	case a.state.Status == ApprovalTimedOut:
		return errors.New("the approval timed out; the run ended with nothing changed: start a new run")
	case a.state.Status != ApprovalWaiting || !a.waiting:
		who := ""
		if a.state.By != "" {
			who = " by " + a.state.By
		}
		return fmt.Errorf("already %s%s at %s", a.state.Status, who, a.state.DecidedAt.Format(time.RFC3339))
	}
	return nil
}

// publish makes plan visible to the plan query.
func (a *approval) publish(plan any) { a.plan = plan }

// decide publishes plan and returns whether the runbook may go ahead: false for a dry
// run or a rejection (the caller ends the run with nothing changed); an error when the
// wait timed out. Without opts.AutoApprove it waits for approve or reject.
func (a *approval) decide(ctx workflow.Context, t *tracker, step string, plan any, opts RecoveryOptions) (bool, error) {
	a.publish(plan)
	t.start(ctx, step)
	switch {
	case opts.DryRun:
		a.state.Status = ApprovalNotNeeded
		t.finish(ctx, step, "dry run: nothing changed", nil)
		t.step(step).Status = StepSkipped
		return false, nil
	case opts.AutoApprove:
		a.state = ApprovalState{Status: ApprovalAuto, DecidedAt: workflow.Now(ctx)}
		t.finish(ctx, step, "auto-approved (autoApprove)", nil)
		return true, nil
	}
	id := workflow.GetInfo(ctx).WorkflowExecution.ID
	a.state = ApprovalState{Status: ApprovalWaiting, Deadline: workflow.Now(ctx).Add(opts.ApprovalTimeout.D())}
	a.waiting = true
	workflow.SetCurrentDetails(ctx, fmt.Sprintf("**%s**: waiting for approval until %s.\n\n"+
		"Review: `temporal workflow query --workflow-id %s --type plan`\n\n"+
		"Approve: `starter approve %s` or `temporal workflow update execute --workflow-id %s --name approve`\n\n"+
		"Reject: `starter reject %s` (nothing changes)",
		t.p.Runbook, a.state.Deadline.Format(time.RFC3339), id, id, id, id))
	ok, err := workflow.AwaitWithTimeout(ctx, opts.ApprovalTimeout.D(), func() bool { return a.state.Status != ApprovalWaiting })
	a.waiting = false
	if err != nil {
		t.finish(ctx, step, "", err)
		return false, err
	}
	if !ok {
		a.state.Status = ApprovalTimedOut
		err := temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("no approve or reject within %s: nothing was changed; start the runbook again when someone can approve it (or set approvalTimeout)", opts.ApprovalTimeout),
			ErrApprovalTimeout, nil)
		t.finish(ctx, step, "", err)
		return false, err
	}
	detail := a.state.Status
	if a.state.By != "" {
		detail += " by " + a.state.By
	}
	if a.state.Comment != "" {
		detail += ": " + a.state.Comment
	}
	t.finish(ctx, step, detail, nil)
	if a.state.Status == ApprovalRejected {
		t.step(step).Status = StepFailed
		workflow.SetCurrentDetails(ctx, "**"+t.p.Runbook+"**: "+detail+" — nothing was changed")
		return false, nil
	}
	return true, nil
}

// outcome is the Outcome of a run that stopped at decide (dry run or rejected).
func (a *approval) outcome() string {
	if a.state.Status == ApprovalRejected {
		return OutcomeRejected
	}
	return OutcomeDryRun
}
