package activities

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"go.temporal.io/sdk/activity"
)

// Host holds activities that run on the worker's own host: the self-check now;
// later the steps that need its local file system.
type Host struct {
	// Name identifies the host in results (default: os.Hostname).
	Name string
}

// NewHost returns the Host activities for this machine.
func NewHost() *Host {
	name, err := os.Hostname()
	if err != nil {
		name = "unknown"
	}
	return &Host{Name: name}
}

// SoakInput configures Soak.
type SoakInput struct {
	// Steps to run; each ends with a heartbeat that records it.
	Steps int `json:"steps"`
	// Interval between steps.
	Interval time.Duration `json:"interval"`
}

// SoakResult reports a finished soak.
type SoakResult struct {
	// Steps completed in total, over all attempts.
	Steps int `json:"steps"`
	// Attempt that finished (1 = no retry was needed).
	Attempt int32 `json:"attempt"`
	// ResumedFrom is the step the finishing attempt started from: 0 on a first attempt,
	// the last heartbeated step after a retry.
	ResumedFrom int `json:"resumedFrom"`
	// Host that finished the soak.
	Host string `json:"host"`
}

// soakCursor is Soak's heartbeat detail: the number of steps already done.
type soakCursor struct {
	Done int `json:"done"`
}

// Soak runs Steps steps, heartbeating after each, and on a retry resumes after the last
// heartbeated step. It changes nothing outside the worker.
func (h *Host) Soak(ctx context.Context, in SoakInput) (SoakResult, error) {
	info := activity.GetInfo(ctx)
	res := SoakResult{Attempt: info.Attempt, Host: h.Name}
	if in.Steps < 1 {
		return res, NonRetryable(ErrInvalidInput, fmt.Errorf("soak: steps must be at least 1, got %d", in.Steps))
	}
	var cur soakCursor
	if activity.HasHeartbeatDetails(ctx) {
		if err := activity.GetHeartbeatDetails(ctx, &cur); err != nil {
			return res, fmt.Errorf("soak: read heartbeat: %w", err)
		}
	}
	res.ResumedFrom = cur.Done
	activity.GetLogger(ctx).Info("soak", "steps", in.Steps, "resumedFrom", cur.Done, "attempt", info.Attempt)

	ticker := time.NewTicker(max(in.Interval, time.Millisecond))
	defer ticker.Stop()
	for cur.Done < in.Steps {
		select {
		case <-ctx.Done():
			return res, fmt.Errorf("soak at step %d: %w", cur.Done, context.Cause(ctx))
		case <-ticker.C:
		}
		cur.Done++
		activity.RecordHeartbeat(ctx, cur)
	}
	res.Steps = cur.Done
	return res, nil
}

// Error types of non-retryable application errors raised by activities.
const (
	// ErrInvalidInput: the activity input can never succeed.
	ErrInvalidInput = "InvalidInput"
)

// NonRetryable marks err as permanent with the given application error type.
func NonRetryable(errType string, err error) error {
	var target interface{ NonRetryable() bool }
	if errors.As(err, &target) && target.NonRetryable() {
		return err
	}
	return temporalNonRetryable(err.Error(), errType, err)
}
