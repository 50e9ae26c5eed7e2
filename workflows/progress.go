package workflows

import (
	"time"

	"go.temporal.io/sdk/workflow"
)

// ProgressQuery is the query every runbook answers with its Progress.
const ProgressQuery = "progress"

// StepStatus is the state of one runbook step.
type StepStatus string

// Step states.
const (
	StepPending   StepStatus = "pending"
	StepRunning   StepStatus = "running"
	StepCompleted StepStatus = "completed"
	StepFailed    StepStatus = "failed"
	StepSkipped   StepStatus = "skipped"
)

// StepProgress is one step of a runbook as the progress query shows it.
type StepProgress struct {
	// Name of the step, stable across runs ("dump kohakku-controller").
	Name string `json:"name"`
	// Status of the step.
	Status StepStatus `json:"status"`
	// StartedAt and FinishedAt are workflow time; zero until the step starts / ends.
	StartedAt  time.Time `json:"startedAt,omitzero"`
	FinishedAt time.Time `json:"finishedAt,omitzero"`
	// Detail is a one-line human summary: counts, sizes, the error of a failed step.
	Detail string `json:"detail,omitempty"`
}

// Progress is the answer to ProgressQuery.
type Progress struct {
	// Runbook is the workflow type.
	Runbook string `json:"runbook"`
	// Steps in execution order, including those not started yet.
	Steps []StepProgress `json:"steps"`
	// Approval of a recovery runbook's plan; nil for runbooks that change nothing live.
	Approval *ApprovalState `json:"approval,omitempty"`
	// Tasks are the counts of a re-dispatch (RedispatchLostTasks).
	Tasks *TaskCounts `json:"tasks,omitempty"`
}

// tracker records step progress in workflow state and mirrors the current step into the
// Web UI's "current details". It holds no per-item state, only one entry per step.
type tracker struct {
	p Progress
}

// newTracker registers the progress query; steps are listed up front so the plan is
// visible before the first one starts.
func newTracker(ctx workflow.Context, runbook string, steps ...string) (*tracker, error) {
	t := &tracker{p: Progress{Runbook: runbook}}
	for _, s := range steps {
		t.p.Steps = append(t.p.Steps, StepProgress{Name: s, Status: StepPending})
	}
	err := workflow.SetQueryHandler(ctx, ProgressQuery, func() (Progress, error) { return t.p, nil })
	return t, err
}

func (t *tracker) step(name string) *StepProgress {
	for i := range t.p.Steps {
		if t.p.Steps[i].Name == name {
			return &t.p.Steps[i]
		}
	}
	t.p.Steps = append(t.p.Steps, StepProgress{Name: name, Status: StepPending})
	return &t.p.Steps[len(t.p.Steps)-1]
}

func (t *tracker) start(ctx workflow.Context, name string) {
	s := t.step(name)
	s.Status = StepRunning
	s.StartedAt = workflow.Now(ctx)
	workflow.SetCurrentDetails(ctx, "**"+t.p.Runbook+"**: "+name)
}

// finish ends a step: completed with detail, or failed with the error as detail.
func (t *tracker) finish(ctx workflow.Context, name, detail string, err error) {
	s := t.step(name)
	s.FinishedAt = workflow.Now(ctx)
	s.Status, s.Detail = StepCompleted, detail
	if err != nil {
		s.Status, s.Detail = StepFailed, err.Error()
	}
}
