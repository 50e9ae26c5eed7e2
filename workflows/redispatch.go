package workflows

import (
	"fmt"
	"slices"
	"time"

	"go.temporal.io/sdk/workflow"

	"github.com/kohakku/drflow/activities"
	"github.com/kohakku/drflow/internal/profile"
	"github.com/kohakku/drflow/schemas"
)

// RedispatchLostTasksName is the registered workflow type of RedispatchLostTasks.
const RedispatchLostTasksName = "RedispatchLostTasks"

// RedispatchLostTasksInput configures a re-dispatch. `{}` re-queues the in-flight tasks
// whose agent has not sent a heartbeat for 2 minutes and tracks them for up to 2 hours.
type RedispatchLostTasksInput struct {
	// RecoveryID names the recovery: a task is re-queued at most once per id (default:
	// the workflow id).
	RecoveryID string `json:"recoveryId,omitempty"`
	// LostAfter: an agent whose last heartbeat is older is gone (default "2m").
	LostAfter Duration `json:"lostAfter,omitempty"`
	// GenerationUpTo: agents registered at or below this generation belong to the lost
	// cluster, whatever their heartbeat says (FullClusterRecovery sets it; 0: no rule).
	GenerationUpTo int64 `json:"generationUpTo,omitempty"`
	// BatchSize is the number of tasks per SQL statement and Redis pipeline (default 1000).
	BatchSize int `json:"batchSize,omitempty"`
	// Deadline bounds the tracking (default "2h"); tasks not finished by then are listed.
	Deadline Duration `json:"deadline,omitempty"`
	// PollEvery is the pause between two counts (default "10s").
	PollEvery Duration `json:"pollEvery,omitempty"`
	// State is carried over continue-as-new; leave it out.
	State *RedispatchState `json:"state,omitempty"`
}

// RedispatchState is what one run hands the next over continue-as-new: counts and
// cursors only, never per-task state.
type RedispatchState struct {
	StartedAt  time.Time `json:"startedAt"`
	DeadlineAt time.Time `json:"deadlineAt"`
	// Requeueing is true until every lost task is re-queued.
	Requeueing bool  `json:"requeueing"`
	Requeued   int64 `json:"requeued"`
	Repushed   int64 `json:"repushed"`
	Batches    int   `json:"batches"`
	Polls      int   `json:"polls"`
	// After is the cursor of the outstanding ids shown by the progress query.
	After int64 `json:"after"`
	Runs  int   `json:"runs"`
}

func (in *RedispatchLostTasksInput) normalize(ctx workflow.Context) error {
	if in.RecoveryID == "" {
		in.RecoveryID = workflow.GetInfo(ctx).WorkflowExecution.ID
	}
	if in.LostAfter == 0 {
		in.LostAfter = Duration(2 * time.Minute)
	}
	if in.LostAfter < Duration(time.Second) {
		return invalidInput("lostAfter", "%s is too short: an agent misses heartbeats for a while before it is gone; use e.g. \"2m\"", in.LostAfter)
	}
	if in.BatchSize == 0 {
		in.BatchSize = 1000
	}
	if in.BatchSize < 1 || in.BatchSize > 100000 {
		return invalidInput("batchSize", "%d is out of range: use 1 to 100000", in.BatchSize)
	}
	if in.Deadline == 0 {
		in.Deadline = Duration(2 * time.Hour)
	}
	if in.Deadline < Duration(time.Second) || in.Deadline > Duration(30*24*time.Hour) {
		return invalidInput("deadline", "%s is out of range: use 1s to 720h, e.g. \"2h\"", in.Deadline)
	}
	if in.PollEvery == 0 {
		in.PollEvery = Duration(10 * time.Second)
	}
	if in.PollEvery < Duration(100*time.Millisecond) || in.PollEvery > Duration(time.Hour) {
		return invalidInput("pollEvery", "%s is out of range: use 100ms to 1h, e.g. \"10s\"", in.PollEvery)
	}
	if in.GenerationUpTo < 0 {
		return invalidInput("generationUpTo", "%d is negative", in.GenerationUpTo)
	}
	return nil
}

// TaskCounts is the progress of a re-dispatch: where the re-queued tasks are now.
type TaskCounts struct {
	Requeued    int64 `json:"requeued"`
	Pending     int64 `json:"pending"`
	Dispatched  int64 `json:"dispatched"`
	Running     int64 `json:"running"`
	Completed   int64 `json:"completed"`
	Failed      int64 `json:"failed"`
	Cancelled   int64 `json:"cancelled"`
	Outstanding int64 `json:"outstanding"`
	// OutstandingIDs is one page of the tasks not finished yet (ids after OutstandingAfter);
	// every poll shows the next page.
	OutstandingIDs   []int64   `json:"outstandingIds,omitempty"`
	OutstandingAfter int64     `json:"outstandingAfter"`
	Deadline         time.Time `json:"deadline"`
}

func countsOf(st profile.RequeueStatus) TaskCounts {
	return TaskCounts{
		Requeued:    st.Requeued,
		Pending:     st.ByStatus[schemas.StatusPending],
		Dispatched:  st.ByStatus[schemas.StatusDispatched],
		Running:     st.ByStatus[schemas.StatusRunning],
		Completed:   st.ByStatus[schemas.StatusCompleted],
		Failed:      st.ByStatus[schemas.StatusFailed],
		Cancelled:   st.ByStatus[schemas.StatusCancelled],
		Outstanding: st.Outstanding,
	}
}

// RedispatchResult reports a finished re-dispatch.
type RedispatchResult struct {
	RecoveryID string     `json:"recoveryId"`
	Counts     TaskCounts `json:"counts"`
	// MissedDeadline counts the tasks still not finished at the deadline; Missed lists
	// up to 1000 of them.
	MissedDeadline int64     `json:"missedDeadline"`
	Missed         []int64   `json:"missed,omitempty"`
	StartedAt      time.Time `json:"startedAt"`
	FinishedAt     time.Time `json:"finishedAt"`
	// Runs is how many workflow runs (continue-as-new) it took.
	Runs int `json:"runs"`
}

// Steps of RedispatchLostTasks.
const (
	stepRequeue = "re-queue lost tasks"
	stepTrack   = "track to the end"
)

// historyLimit is the history length past which a run continues as new; loopLimit the
// number of re-queue activities or polls after which it does in any case (each adds
// about ten events).
const (
	historyLimit = 2000
	loopLimit    = 150
)

// pageSize is how many outstanding ids the progress query shows.
const pageSize = 100

// requeueFor is how long one RequeueLost activity goes on re-queuing batch after batch:
// long enough that the activity's own cost (scheduling, connections) is small next to
// its batches, short enough that the step's detail moves every few seconds.
const requeueFor = 5 * time.Second

// RedispatchLostTasks finds the in-flight tasks whose agent is gone — no live
// container, a heartbeat older than lostAfter, or an agent of the lost cluster — and
// re-queues them in batches (one SQL statement and one Redis pipeline each), each task
// once per recovery even across retries and worker crashes. Then it counts them with
// durable timers until every one is completed, failed or cancelled, or the deadline
// passes. It keeps counts and cursors only, continues as new before its history grows
// past a few thousand events, and answers the progress query with the counts and a page
// of the ids still outstanding.
func RedispatchLostTasks(ctx workflow.Context, in RedispatchLostTasksInput) (RedispatchResult, error) {
	var res RedispatchResult
	if err := in.normalize(ctx); err != nil {
		return res, err
	}
	st := in.State
	if st == nil {
		now := workflow.Now(ctx)
		st = &RedispatchState{StartedAt: now, DeadlineAt: now.Add(in.Deadline.D()), Requeueing: true}
		if err := workflow.UpsertTypedSearchAttributes(ctx, SearchAttrRunbook.ValueSet(RedispatchLostTasksName), SearchAttrTarget.ValueSet(in.RecoveryID)); err != nil {
			return res, err
		}
	}
	st.Runs++
	t, err := newTracker(ctx, RedispatchLostTasksName, stepRequeue, stepTrack)
	if err != nil {
		return res, err
	}
	counts := TaskCounts{Requeued: st.Requeued, Deadline: st.DeadlineAt}
	t.p.Tasks = &counts

	var app *activities.AppState
	lost := activities.LostTasksInput{RecoveryID: in.RecoveryID, LostAfter: in.LostAfter.D(), GenerationUpTo: in.GenerationUpTo, Batch: in.BatchSize, For: requeueFor}
	loops := 0
	tooLong := func() bool {
		loops++
		return loops >= loopLimit || workflow.GetInfo(ctx).GetCurrentHistoryLength() > historyLimit
	}
	again := func() error {
		next := in
		next.State = st
		return workflow.NewContinueAsNewError(ctx, RedispatchLostTasksName, next)
	}

	if st.Requeueing {
		t.start(ctx, stepRequeue)
		actx := workflow.WithActivityOptions(ctx, longActivityOptions("re-queue a batch of lost tasks", 10))
		for {
			var b profile.RequeueResult
			if err := workflow.ExecuteActivity(actx, app.RequeueLost, lost).Get(ctx, &b); err != nil {
				t.finish(ctx, stepRequeue, "", err)
				return res, fmt.Errorf("re-queue lost tasks: %w", err)
			}
			st.Batches += max(b.Batches, 1) // results recorded before Batches existed: one each
			st.Requeued += b.Requeued
			st.Repushed += b.Repushed
			counts.Requeued = st.Requeued
			t.step(stepRequeue).Detail = fmt.Sprintf("%d tasks re-queued in %d batches", st.Requeued, st.Batches)
			if b.Done {
				break
			}
			if tooLong() {
				return res, again()
			}
		}
		st.Requeueing = false
		t.finish(ctx, stepRequeue, fmt.Sprintf("%d tasks re-queued in %d batches (%d queue pushes completed after an interruption)", st.Requeued, st.Batches, st.Repushed), nil)
	} else {
		r := t.step(stepRequeue)
		r.Status, r.Detail = StepCompleted, fmt.Sprintf("%d tasks re-queued in %d batches", st.Requeued, st.Batches)
	}

	t.start(ctx, stepTrack)
	// A count is quick: a worker that died during one is given up on after 30 seconds.
	trackOpts := metadataActivityOptions("count re-queued tasks")
	trackOpts.StartToCloseTimeout, trackOpts.HeartbeatTimeout = 30*time.Second, 0
	actx := workflow.WithActivityOptions(ctx, trackOpts)
	for {
		var s profile.RequeueStatus
		if err := workflow.ExecuteActivity(actx, app.TrackRequeued, activities.TrackInput{RecoveryID: in.RecoveryID, After: st.After, Limit: pageSize}).Get(ctx, &s); err != nil {
			t.finish(ctx, stepTrack, "", err)
			return res, fmt.Errorf("track re-queued tasks: %w", err)
		}
		st.Polls++
		counts = countsOf(s)
		counts.Deadline, counts.OutstandingIDs, counts.OutstandingAfter = st.DeadlineAt, s.OutstandingIDs, st.After
		st.After = 0
		if len(s.OutstandingIDs) == pageSize {
			st.After = s.OutstandingIDs[len(s.OutstandingIDs)-1]
		}
		detail := fmt.Sprintf("%d re-queued: %d completed, %d failed, %d cancelled, %d outstanding (%d pending, %d dispatched, %d running)",
			counts.Requeued, counts.Completed, counts.Failed, counts.Cancelled, counts.Outstanding, counts.Pending, counts.Dispatched, counts.Running)
		t.step(stepTrack).Detail = detail
		now := workflow.Now(ctx)
		if counts.Outstanding == 0 || !now.Before(st.DeadlineAt) {
			res = RedispatchResult{RecoveryID: in.RecoveryID, Counts: counts, StartedAt: st.StartedAt, FinishedAt: now, Runs: st.Runs}
			if counts.Outstanding > 0 {
				res.MissedDeadline = counts.Outstanding
				if err := workflow.ExecuteActivity(actx, app.TrackRequeued, activities.TrackInput{RecoveryID: in.RecoveryID, Limit: 1000}).Get(ctx, &s); err == nil {
					res.Missed = slices.Clone(s.OutstandingIDs)
				}
				detail += fmt.Sprintf("; %d missed the deadline %s", res.MissedDeadline, st.DeadlineAt.Format(time.RFC3339))
			}
			t.finish(ctx, stepTrack, detail, nil)
			workflow.SetCurrentDetails(ctx, "**"+RedispatchLostTasksName+"**: "+detail)
			return res, nil
		}
		workflow.SetCurrentDetails(ctx, "**"+RedispatchLostTasksName+"**: "+detail)
		if err := workflow.Sleep(ctx, min(in.PollEvery.D(), st.DeadlineAt.Sub(now))); err != nil {
			return res, err
		}
		if tooLong() {
			return res, again()
		}
	}
}
