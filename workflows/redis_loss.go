package workflows

import (
	"fmt"
	"strings"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/kohakku/drflow/activities"
	"github.com/kohakku/drflow/internal/profile"
)

// RedisLossName is the registered workflow type of RedisLoss.
const RedisLossName = "RedisLoss"

// ErrRedisCheckFailed is the error type of a rebuild whose result does not match
// PostgreSQL.
const ErrRedisCheckFailed = "RedisCheckFailed"

// RedisLossInput says which Redis to bring back. `{}` plans for the default instance
// and waits for approval.
type RedisLossInput struct {
	// Instance is the Redis instance (default "default", the worker's DRFLOW_REDIS_ADDR).
	Instance string `json:"instance,omitempty"`
	RecoveryOptions
}

func (in *RedisLossInput) normalize() error {
	if in.Instance == "" {
		in.Instance = "default"
	}
	return in.RecoveryOptions.normalize()
}

// RedisLossPlan is what RedisLoss will do, published before it does anything.
type RedisLossPlan struct {
	Instance string `json:"instance"`
	// Redis as found when the run started.
	Redis activities.RedisStatus `json:"redis"`
	// AOF as found on the Redis host when Redis was unreachable; nil when reachable.
	AOF *activities.AOFState `json:"aof,omitempty"`
	// Quarantine is the AOF directory's new name when it is corrupt ("" otherwise).
	Quarantine string `json:"quarantine,omitempty"`
	// StartHook: the redis start hook runs (Redis is down and a hook is configured).
	StartHook bool `json:"startHook"`
	// Rebuild counts what is written from PostgreSQL.
	Rebuild profile.RedisPlan `json:"rebuild"`
	// Overwrites is how many live application keys are deleted and written again.
	Overwrites int64 `json:"overwrites"`
	// SafetyCopy is the store key the live RDB is copied to, or why it is not.
	SafetyCopy string `json:"safetyCopy"`
	// Actions in order, in words.
	Actions []string `json:"actions"`
}

// RedisLossResult reports a RedisLoss run.
type RedisLossResult struct {
	RecoveryReport
	Plan       RedisLossPlan                `json:"plan"`
	Quarantine *activities.QuarantineResult `json:"quarantine,omitempty"`
	Started    *activities.HookResult       `json:"started,omitempty"`
	Rebuild    profile.RebuildResult        `json:"rebuild"`
	Check      profile.RedisCheck           `json:"check"`
}

// Steps of RedisLoss.
const (
	stepRedisCheck      = "check redis"
	stepRedisPlan       = "plan"
	stepRedisQuarantine = "quarantine AOF"
	stepRedisStart      = "start redis"
	stepRedisSafety     = "safety copy"
	stepRedisRebuild    = "rebuild from PostgreSQL"
	stepRedisVerify     = "verify against PostgreSQL"
)

// redisWaitTimeout bounds the wait for a Redis that was started (or is expected to come
// back on its own).
const redisWaitTimeout = 10 * time.Minute

// RedisLoss brings the application's Redis back and rebuilds its state from PostgreSQL,
// the source of truth: if Redis is down because its AOF is corrupt, the AOF is moved aside
// (never deleted) on the Redis host and Redis starts empty; the live RDB is copied to the
// safety area when Redis still holds application keys; then every application key is
// rebuilt (task state and progress of unfinished tasks, the pending queue in dispatch
// order, the live containers) and the result is checked against PostgreSQL.
func RedisLoss(ctx workflow.Context, in RedisLossInput) (RedisLossResult, error) {
	var res RedisLossResult
	if err := in.normalize(); err != nil {
		return res, err
	}
	r, err := startRecovery(ctx, RedisLossName, in.Instance, stepResolve, stepRedisCheck, stepRedisPlan, stepApproval,
		stepRedisQuarantine, stepRedisStart, stepRedisSafety, stepRedisRebuild, stepRedisVerify)
	if err != nil {
		return res, err
	}
	t := r.t
	targets, err := resolveTargets(ctx, t, activities.TargetsInput{Redis: []string{in.Instance}})
	if err != nil {
		return res, err
	}
	var (
		app   *activities.AppState
		host  *activities.RedisHost
		rd    *activities.Redis
		plan  = RedisLossPlan{Instance: in.Instance}
		short = workflow.WithActivityOptions(ctx, metadataActivityOptions("check redis"))
	)

	t.start(ctx, stepRedisCheck)
	err = workflow.ExecuteActivity(short, app.CheckRedis).Get(ctx, &plan.Redis)
	if err == nil && !plan.Redis.Reachable {
		var aof activities.AOFState
		hctx := workflow.WithActivityOptions(ctx, hostActivityOptions("inspect AOF", targets.RedisHostQueue))
		err = workflow.ExecuteActivity(hctx, host.InspectAOF).Get(ctx, &aof)
		plan.AOF = &aof
	}
	t.finish(ctx, stepRedisCheck, redisStatusDetail(plan), err)
	if err != nil {
		return res, fmt.Errorf("check redis: %w", err)
	}

	t.start(ctx, stepRedisPlan)
	err = workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, metadataActivityOptions("count state in PostgreSQL")), app.PlanRedisRebuild).Get(ctx, &plan.Rebuild)
	if err != nil {
		t.finish(ctx, stepRedisPlan, "", err)
		return res, fmt.Errorf("plan: %w", err)
	}
	_, plan.StartHook = targets.Services["redis"]
	stamp := workflow.Now(ctx).UTC().Format("20060102T150405Z")
	if plan.AOF != nil && plan.AOF.Corrupt {
		plan.Quarantine = plan.AOF.Dir + ".corrupt-" + stamp
	}
	planRedisActions(&plan, workflow.GetInfo(ctx).WorkflowExecution.ID)
	t.finish(ctx, stepRedisPlan, fmt.Sprintf("rebuild %d keys (%d unfinished tasks, %d pending, %d live containers); %d live keys overwritten",
		plan.Rebuild.Keys, plan.Rebuild.Unfinished, plan.Rebuild.Pending, plan.Rebuild.LiveContainers, plan.Overwrites), nil)
	res.Plan = plan

	ok, err := r.decide(ctx, plan, in.RecoveryOptions)
	if err != nil || !ok {
		res.RecoveryReport = r.report
		return res, err
	}

	// Bring Redis back when it is down.
	if plan.Redis.Reachable {
		r.skip(ctx, stepRedisQuarantine, "redis is up")
		r.skip(ctx, stepRedisStart, "redis is up")
	} else {
		if plan.Quarantine != "" {
			t.start(ctx, stepRedisQuarantine)
			var q activities.QuarantineResult
			hctx := workflow.WithActivityOptions(ctx, hostActivityOptions("quarantine AOF", targets.RedisHostQueue))
			err := workflow.ExecuteActivity(hctx, host.QuarantineAOF, activities.QuarantineInput{Stamp: stamp}).Get(ctx, &q)
			t.finish(ctx, stepRedisQuarantine, fmt.Sprintf("moved %s to %s (%d files, %d bytes), nothing deleted", q.From, q.To, q.Files, q.Bytes), err)
			if err != nil {
				return res, fmt.Errorf("quarantine AOF: %w", err)
			}
			res.Quarantine = &q
		} else {
			r.skip(ctx, stepRedisQuarantine, "AOF not corrupt (or not configured)")
		}
		t.start(ctx, stepRedisStart)
		detail := ""
		if plan.StartHook {
			h, err := runHook(ctx, targets, "redis", "start")
			if err != nil {
				t.finish(ctx, stepRedisStart, "", err)
				return res, fmt.Errorf("start redis: %w", err)
			}
			res.Started = &h
			detail = hookDetail([]activities.HookResult{h}) + "; "
		} else {
			workflow.SetCurrentDetails(ctx, "**RedisLoss**: waiting for Redis to come back: no redis start hook is configured (DRFLOW_HOOKS_FILE), so start it by hand")
		}
		var st activities.RedisStatus
		err := workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, waitActivityOptions("wait for redis", redisWaitTimeout)), app.WaitRedis,
			activities.WaitRedisInput{Timeout: redisWaitTimeout}).Get(ctx, &st)
		t.finish(ctx, stepRedisStart, detail+"redis answers: "+st.Version, err)
		if err != nil {
			return res, fmt.Errorf("start redis: %w", err)
		}
	}

	// Safety copy of whatever application state Redis still holds.
	if plan.Redis.Reachable && plan.Redis.AppKeys > 0 {
		t.start(ctx, stepRedisSafety)
		var a activities.Artifact
		key := activities.SafetyRedisKey(workflow.GetInfo(ctx).WorkflowExecution.ID, in.Instance)
		err := workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, backupActivityOptions("safety copy of the live RDB")), rd.DumpRDB,
			activities.RDBInput{Instance: in.Instance, Key: key}).Get(ctx, &a)
		t.finish(ctx, stepRedisSafety, fmt.Sprintf("%s: %d keys, %d bytes", key, a.KeyCount, a.Size), err)
		if err != nil {
			return res, fmt.Errorf("safety copy: %w", err)
		}
		r.report.SafetyCopies = append(r.report.SafetyCopies, SafetyCopy{What: "redis " + in.Instance, Key: key, Bytes: a.Size, Count: a.KeyCount})
	} else {
		why := "redis held no application keys"
		if !plan.Redis.Reachable {
			why = "redis was unreachable: nothing to copy"
			if res.Quarantine != nil {
				why += "; the corrupt AOF is kept at " + res.Quarantine.To
			}
		}
		r.skip(ctx, stepRedisSafety, why)
		r.report.SafetyCopies = append(r.report.SafetyCopies, SafetyCopy{What: "redis " + in.Instance, Skipped: why})
	}

	t.start(ctx, stepRedisRebuild)
	err = workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, backupActivityOptions("rebuild redis from PostgreSQL")), app.RebuildRedis).Get(ctx, &res.Rebuild)
	t.finish(ctx, stepRedisRebuild, fmt.Sprintf("deleted %d keys, wrote %d keys in %d batches (%d task states, %d queued, %d live containers)",
		res.Rebuild.Deleted, res.Rebuild.Plan.Keys, res.Rebuild.Batches, res.Rebuild.Plan.Unfinished, res.Rebuild.Plan.Pending, res.Rebuild.Plan.LiveContainers), err)
	if err != nil {
		return res, fmt.Errorf("rebuild: %w", err)
	}

	t.start(ctx, stepRedisVerify)
	res.Check, err = verifyRedisState(ctx)
	if err != nil {
		t.finish(ctx, stepRedisVerify, "", err)
		return res, fmt.Errorf("verify: %w", err)
	}
	if !res.Check.OK {
		err := temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("redis does not match PostgreSQL after the rebuild: %s; is the application writing to Redis? stop it and run RedisLoss again", strings.Join(res.Check.Problems, "; ")),
			ErrRedisCheckFailed, nil)
		t.finish(ctx, stepRedisVerify, "", err)
		return res, err
	}
	t.finish(ctx, stepRedisVerify, fmt.Sprintf("queue depth %d = pending tasks in PostgreSQL; %d task states; %d live containers",
		res.Check.Found.Pending, res.Check.Found.Unfinished, res.Check.Found.LiveContainers), nil)
	res.RecoveryReport = r.done(ctx)
	return res, nil
}

// verifyRedisState compares Redis with PostgreSQL, up to three times two seconds apart:
// an application running meanwhile (a dispatcher popping the queue) can make one
// comparison differ for a moment.
func verifyRedisState(ctx workflow.Context) (profile.RedisCheck, error) {
	var app *activities.AppState
	var c profile.RedisCheck
	for i := 0; i < 3; i++ {
		if i > 0 {
			if err := workflow.Sleep(ctx, 2*time.Second); err != nil {
				return c, err
			}
		}
		if err := workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, metadataActivityOptions("compare redis with PostgreSQL")), app.VerifyRedisState).Get(ctx, &c); err != nil {
			return c, err
		}
		if c.OK {
			break
		}
	}
	return c, nil
}

// planRedisActions fills in the overwrites, the safety copy and the actions in words.
func planRedisActions(p *RedisLossPlan, workflowID string) {
	if p.Redis.Reachable {
		p.Overwrites = p.Redis.AppKeys
		if p.Redis.AppKeys > 0 {
			p.SafetyCopy = activities.SafetyRedisKey(workflowID, p.Instance)
			p.Actions = append(p.Actions, fmt.Sprintf("copy the live RDB (%d keys, %d application keys) to %s", p.Redis.TotalKeys, p.Redis.AppKeys, p.SafetyCopy))
		} else {
			p.SafetyCopy = "skipped: redis holds no application keys"
		}
	} else {
		p.SafetyCopy = "skipped: redis is unreachable"
		switch {
		case p.Quarantine != "":
			p.Actions = append(p.Actions, fmt.Sprintf("move the corrupt AOF %s aside to %s (kept, never deleted)", p.AOF.Dir, p.Quarantine))
		case p.AOF != nil && !p.AOF.Configured:
			p.Actions = append(p.Actions, "AOF not checked: DRFLOW_REDIS_AOF_DIR is not set")
		}
		if p.StartHook {
			p.Actions = append(p.Actions, "run the redis start hook and wait until Redis answers")
		} else {
			p.Actions = append(p.Actions, fmt.Sprintf("wait up to %s for Redis to come back (no redis start hook configured)", redisWaitTimeout))
		}
	}
	p.Actions = append(p.Actions,
		fmt.Sprintf("delete the %d application keys and write %d from PostgreSQL: %d task states, the pending queue of %d tasks in dispatch order, %d live containers",
			p.Overwrites, p.Rebuild.Keys, p.Rebuild.Unfinished, p.Rebuild.Pending, p.Rebuild.LiveContainers),
		"check queue depth, task states and live containers against PostgreSQL")
}

func redisStatusDetail(p RedisLossPlan) string {
	if p.Redis.Reachable {
		return fmt.Sprintf("redis %s up: %d keys, %d of the application", p.Redis.Version, p.Redis.TotalKeys, p.Redis.AppKeys)
	}
	d := "redis unreachable: " + p.Redis.Error
	if p.AOF != nil {
		switch {
		case !p.AOF.Configured:
			d += "; AOF dir not configured"
		case p.AOF.Corrupt:
			d += "; AOF corrupt: " + p.AOF.Detail
		default:
			d += "; AOF intact"
		}
	}
	return d
}

// hostActivityOptions: a step on the Redis host's task queue; it waits at most 10 minutes
// for that host's worker to pick it up.
func hostActivityOptions(summary, queue string) workflow.ActivityOptions {
	o := metadataActivityOptions(summary)
	o.TaskQueue = queue
	o.ScheduleToStartTimeout = 10 * time.Minute
	return o
}

// waitActivityOptions: an activity that waits up to d itself, tried twice.
func waitActivityOptions(summary string, d time.Duration) workflow.ActivityOptions {
	o := longActivityOptions(summary, 2)
	o.StartToCloseTimeout = d + time.Minute
	return o
}
