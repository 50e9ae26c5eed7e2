package activities

import (
	"context"
	"fmt"
	"time"

	"go.temporal.io/sdk/activity"

	"github.com/kohakku/drflow/internal/profile"
)

// LostTasksInput selects the lost tasks of one recovery.
type LostTasksInput struct {
	// RecoveryID names the recovery: a task is re-queued at most once per id.
	RecoveryID string `json:"recoveryId"`
	// LostAfter: an agent whose last heartbeat is older than this is gone.
	LostAfter time.Duration `json:"lostAfter"`
	// GenerationUpTo: agents registered at or below it belong to the lost cluster (0: none).
	GenerationUpTo int64 `json:"generationUpTo,omitempty"`
	// Batch is the number of tasks per statement and queue push.
	Batch int `json:"batch"`
	// For: a RequeueLost call goes on with batch after batch for this long, heartbeating
	// its totals (0: one batch per call).
	For time.Duration `json:"for,omitempty"`
}

func (in LostTasksInput) rule() profile.LostRule {
	return profile.LostRule{HeartbeatBefore: time.Now().Add(-in.LostAfter), GenerationUpTo: in.GenerationUpTo}
}

func (in LostTasksInput) check() error {
	switch {
	case in.RecoveryID == "":
		return NonRetryable(ErrInvalidInput, fmt.Errorf("input field \"recoveryId\" is empty"))
	case in.LostAfter <= 0:
		return NonRetryable(ErrInvalidInput, fmt.Errorf("input field \"lostAfter\" must be positive, got %s", in.LostAfter))
	case in.Batch < 0 || in.Batch > 100000:
		return NonRetryable(ErrInvalidInput, fmt.Errorf("input field \"batch\": %d is out of range (1 to 100000)", in.Batch))
	case in.For < 0 || in.For > time.Hour:
		return NonRetryable(ErrInvalidInput, fmt.Errorf("input field \"for\": %s is out of range (0 to 1h)", in.For))
	}
	return nil
}

// RequeueLost re-queues in-flight tasks whose agent is gone, batch after batch for up to
// in.For — in PostgreSQL first, then in Redis — each at most once per recovery, however
// often the activity is retried (the profile records every re-queue and its queue push).
// It heartbeats its totals after each batch.
func (a *AppState) RequeueLost(ctx context.Context, in LostTasksInput) (profile.RequeueResult, error) {
	if err := in.check(); err != nil {
		return profile.RequeueResult{}, err
	}
	p, err := a.profile()
	if err != nil {
		return profile.RequeueResult{}, err
	}
	rdb, err := a.redisClient()
	if err != nil {
		return profile.RequeueResult{}, err
	}
	defer rdb.Close()
	res, err := p.RequeueLost(ctx, a.db(), rdb, profile.RequeueInput{RecoveryID: in.RecoveryID, Rule: in.rule(), Batch: in.Batch,
		Until:    time.Now().Add(in.For),
		Progress: func(r profile.RequeueResult) { activity.RecordHeartbeat(ctx, r) },
	})
	if err != nil {
		return res, a.classify(ctx, "re-queue lost tasks", err)
	}
	activity.GetLogger(ctx).Info("lost tasks re-queued", "recovery", in.RecoveryID, "requeued", res.Requeued, "batches", res.Batches, "repushed", res.Repushed, "done", res.Done)
	return res, nil
}

// TrackInput pages through the outstanding tasks of a recovery.
type TrackInput struct {
	RecoveryID string `json:"recoveryId"`
	// After: list outstanding ids greater than this.
	After int64 `json:"after,omitempty"`
	// Limit on the ids listed (0: counts only).
	Limit int `json:"limit,omitempty"`
}

// TrackRequeued counts the recovery's re-queued tasks by their status now and lists a
// page of those not finished yet.
func (a *AppState) TrackRequeued(ctx context.Context, in TrackInput) (profile.RequeueStatus, error) {
	if in.RecoveryID == "" {
		return profile.RequeueStatus{}, NonRetryable(ErrInvalidInput, fmt.Errorf("input field \"recoveryId\" is empty"))
	}
	p, err := a.profile()
	if err != nil {
		return profile.RequeueStatus{}, err
	}
	st, err := p.TrackRequeued(ctx, a.db(), in.RecoveryID, in.After, min(max(in.Limit, 0), 10000))
	if err != nil {
		return st, a.classify(ctx, "track re-queued tasks", err)
	}
	return st, nil
}

// CleanupAgents marks the agents that are gone dead and removes them from Redis's live
// set, so the monitor and dispatcher no longer count on them. Their tasks are left to
// RequeueLost.
func (a *AppState) CleanupAgents(ctx context.Context, in LostTasksInput) (profile.CleanupResult, error) {
	if in.LostAfter <= 0 {
		return profile.CleanupResult{}, NonRetryable(ErrInvalidInput, fmt.Errorf("input field \"lostAfter\" must be positive, got %s", in.LostAfter))
	}
	p, err := a.profile()
	if err != nil {
		return profile.CleanupResult{}, err
	}
	rdb, err := a.redisClient()
	if err != nil {
		return profile.CleanupResult{}, err
	}
	defer rdb.Close()
	res, err := p.CleanupAgents(ctx, a.db(), rdb, in.rule())
	if err != nil {
		return res, a.classify(ctx, "clean up timed-out agents", err)
	}
	activity.GetLogger(ctx).Info("timed-out agents cleaned up", "dead", res.Dead)
	return res, nil
}

// LatestGeneration returns the highest agent registration number in the restored
// database: every agent at or below it belongs to the cluster that was lost.
func (a *AppState) LatestGeneration(ctx context.Context) (int64, error) {
	p, err := a.profile()
	if err != nil {
		return 0, err
	}
	g, err := p.LatestGeneration(ctx, a.db())
	if err != nil {
		return 0, a.classify(ctx, "latest agent generation", err)
	}
	return g, nil
}
