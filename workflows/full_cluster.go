package workflows

import (
	"fmt"
	"time"

	"go.temporal.io/sdk/workflow"

	"github.com/kohakku/drflow/activities"
	"github.com/kohakku/drflow/internal/profile"
)

// FullClusterRecoveryName is the registered workflow type of FullClusterRecovery.
const FullClusterRecoveryName = "FullClusterRecovery"

// FullClusterRecoveryInput configures a whole-stack recovery. `{}` plans the recovery
// from the newest verified set and waits for approval.
type FullClusterRecoveryInput struct {
	// SetID to recover from; "" = the newest verified set.
	SetID string `json:"setId,omitempty"`
	// Scope of the object restore: "needed" (default) or "all" (see MinIOLoss).
	Scope string `json:"scope,omitempty"`
	// LostAfter: an agent silent for longer is gone (default "2m").
	LostAfter Duration `json:"lostAfter,omitempty"`
	// RedispatchDeadline bounds the tracking of re-dispatched tasks (default "2h").
	RedispatchDeadline Duration `json:"redispatchDeadline,omitempty"`
	// RedispatchPollEvery is the pause between two counts of re-dispatched tasks (default "10s").
	RedispatchPollEvery Duration `json:"redispatchPollEvery,omitempty"`
	// AllowFailedVerification lets a named set that failed (or never ran) verification through.
	AllowFailedVerification bool `json:"allowFailedVerification,omitempty"`
	RecoveryOptions
}

func (in *FullClusterRecoveryInput) normalize() error {
	if err := checkSetID(in.SetID); err != nil {
		return err
	}
	if err := checkScope(&in.Scope); err != nil {
		return err
	}
	if in.LostAfter == 0 {
		in.LostAfter = Duration(2 * time.Minute)
	}
	if in.LostAfter < Duration(time.Second) {
		return invalidInput("lostAfter", "%s is too short; use e.g. \"2m\"", in.LostAfter)
	}
	if in.RedispatchDeadline == 0 {
		in.RedispatchDeadline = Duration(2 * time.Hour)
	}
	if in.RedispatchPollEvery == 0 {
		in.RedispatchPollEvery = Duration(10 * time.Second)
	}
	return in.RecoveryOptions.normalize()
}

// Stage is one stage of a full cluster recovery and why it comes where it does.
type Stage struct {
	Name   string `json:"name"`
	Reason string `json:"reason"`
}

// Stage names of FullClusterRecovery.
const (
	stagePostgres   = "postgres"
	stageRedis      = "redis"
	stageMinIO      = "minio"
	stageServices   = "services"
	stageCleanup    = "cleanup agents"
	stageRedispatch = "redispatch"
)

// FullClusterStages is the order of a full cluster recovery: data, with the reason for
// each place.
var FullClusterStages = []Stage{
	{stagePostgres, "PostgreSQL is the source of truth: everything after it is rebuilt from it"},
	{stageRedis, "Redis is rebuilt from the restored databases"},
	{stageMinIO, "objects come back from the mirror; which briefs are needed is read from the restored tasks"},
	{stageServices, "controller, dispatcher and monitor restart on restored data, in their configured order"},
	{stageCleanup, "agents of the lost cluster are marked dead, so nothing waits for them"},
	{stageRedispatch, "in-flight tasks of dead agents are re-queued once and tracked until each one ends"},
}

// FullClusterPlan is what FullClusterRecovery will do, published before it does anything.
type FullClusterPlan struct {
	SetID         string    `json:"setId"`
	RecoveryPoint time.Time `json:"recoveryPoint"`
	Stages        []Stage   `json:"stages"`
	// Databases is the PostgreSQL stage's plan (a TotalDBLoss dry run).
	Databases TotalDBLossPlan             `json:"databases"`
	Bucket    string                      `json:"bucket,omitempty"`
	Restart   []activities.PlannedRestart `json:"restart,omitempty"`
}

// StageResult is how one stage went.
type StageResult struct {
	Name string `json:"name"`
	// WorkflowID of the child that ran it, if any.
	WorkflowID string   `json:"workflowId,omitempty"`
	RTO        Duration `json:"rto"`
	Detail     string   `json:"detail"`
}

// FullClusterResult reports a FullClusterRecovery run.
type FullClusterResult struct {
	RecoveryReport
	Plan FullClusterPlan `json:"plan"`
	// RecoveryPoint is the set's time: data written after it is lost.
	RecoveryPoint time.Time             `json:"recoveryPoint"`
	Stages        []StageResult         `json:"stages"`
	Cleanup       profile.CleanupResult `json:"cleanup"`
	Redispatch    *RedispatchResult     `json:"redispatch,omitempty"`
}

// FullClusterRecovery brings the whole stack back from a backup set, in the order of
// FullClusterStages: the databases (a child TotalDBLoss), Redis rebuilt from them (a
// child RedisLoss), the bucket from the mirror (a child MinIOLoss), the services
// restarted, the agents of the lost cluster marked dead, then a child
// RedispatchLostTasks that re-queues their tasks and follows each to its end. One
// approval covers the whole plan; each stage is its own step (and child workflow) in
// the Web UI, with its RTO.
func FullClusterRecovery(ctx workflow.Context, in FullClusterRecoveryInput) (FullClusterResult, error) {
	var res FullClusterResult
	if err := in.normalize(); err != nil {
		return res, err
	}
	steps := []string{stepResolve, stepSelect, stepObjectsPlan, stepApproval}
	for _, s := range FullClusterStages {
		steps = append(steps, s.Name)
	}
	r, err := startRecovery(ctx, FullClusterRecoveryName, in.SetID, steps...)
	if err != nil {
		return res, err
	}
	t := r.t
	targets, err := resolveTargets(ctx, t, activities.TargetsInput{})
	if err != nil {
		return res, err
	}
	sel, err := selectSet(ctx, t, in.SetID, in.AllowFailedVerification)
	if err != nil {
		return res, err
	}
	setID := sel.Manifest.SetID
	if err := workflow.UpsertTypedSearchAttributes(ctx, SearchAttrTarget.ValueSet(setID)); err != nil {
		return res, err
	}
	res.RecoveryPoint = sel.Manifest.CreatedAt
	wid := workflow.GetInfo(ctx).WorkflowExecution.ID
	child := func(ctx workflow.Context, name, summary string) workflow.Context {
		return workflow.WithChildOptions(ctx, workflow.ChildWorkflowOptions{WorkflowID: wid + "-" + name, StaticSummary: summary})
	}

	// Plan: the database stage's own dry run, the bucket, the restart order.
	plan := FullClusterPlan{SetID: setID, RecoveryPoint: sel.Manifest.CreatedAt, Stages: FullClusterStages}
	if len(targets.Buckets) > 0 {
		plan.Bucket = targets.Buckets[0]
	}
	t.start(ctx, stepObjectsPlan)
	var dry TotalDBLossResult
	err = workflow.ExecuteChildWorkflow(child(ctx, "plan-postgres", "plan the database restore (dry run)"), TotalDBLossName,
		TotalDBLossInput{SetID: setID, SkipRedis: true, SkipServices: true, AllowFailedVerification: in.AllowFailedVerification,
			RecoveryOptions: RecoveryOptions{DryRun: true}}).Get(ctx, &dry)
	if err == nil {
		plan.Databases = dry.Plan
		var svc *activities.Services
		err = workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, metadataActivityOptions("restart order")), svc.RestartOrder).Get(ctx, &plan.Restart)
	}
	t.finish(ctx, stepObjectsPlan, fmt.Sprintf("set %s (recovery point %s); %d databases, bucket %q, %d services to restart",
		setID, plan.RecoveryPoint.Format(time.RFC3339), len(plan.Databases.Databases), plan.Bucket, len(plan.Restart)), err)
	if err != nil {
		return res, fmt.Errorf("plan: %w", err)
	}
	res.Plan = plan

	ok, err := r.decide(ctx, plan, in.RecoveryOptions)
	if err != nil || !ok {
		res.RecoveryReport = r.report
		return res, err
	}
	auto := RecoveryOptions{AutoApprove: true}
	stage := func(name, workflowID, detail string, err error) error {
		s := t.step(name)
		t.finish(ctx, name, detail, err)
		res.Stages = append(res.Stages, StageResult{Name: name, WorkflowID: workflowID, RTO: Duration(s.FinishedAt.Sub(s.StartedAt)), Detail: s.Detail})
		if err != nil {
			return fmt.Errorf("stage %s: %w", name, err)
		}
		return nil
	}

	// 1. PostgreSQL.
	t.start(ctx, stagePostgres)
	var db TotalDBLossResult
	err = workflow.ExecuteChildWorkflow(child(ctx, stagePostgres, "restore the databases"), TotalDBLossName,
		TotalDBLossInput{SetID: setID, SkipRedis: true, SkipServices: true, AllowFailedVerification: in.AllowFailedVerification, RecoveryOptions: auto}).Get(ctx, &db)
	r.report.SafetyCopies = append(r.report.SafetyCopies, db.SafetyCopies...)
	var generation int64
	if err == nil {
		var app *activities.AppState
		err = workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, metadataActivityOptions("latest agent generation")), app.LatestGeneration).Get(ctx, &generation)
	}
	if err := stage(stagePostgres, wid+"-"+stagePostgres, fmt.Sprintf("%d databases restored, RTO %s; agents up to generation %d belong to the lost cluster",
		len(db.Databases), db.RTO.D().Round(time.Millisecond), generation), err); err != nil {
		return res, err
	}

	// 2. Redis.
	if len(targets.Redis) == 0 {
		r.skip(ctx, stageRedis, "no redis configured")
	} else {
		t.start(ctx, stageRedis)
		var rl RedisLossResult
		err := workflow.ExecuteChildWorkflow(child(ctx, stageRedis, "rebuild redis from the restored databases"), RedisLossName,
			RedisLossInput{Instance: targets.Redis[0], RecoveryOptions: auto}).Get(ctx, &rl)
		r.report.SafetyCopies = append(r.report.SafetyCopies, rl.SafetyCopies...)
		if err := stage(stageRedis, wid+"-"+stageRedis, fmt.Sprintf("%d keys rebuilt", rl.Rebuild.Plan.Keys), err); err != nil {
			return res, err
		}
	}

	// 3. MinIO.
	if plan.Bucket == "" {
		r.skip(ctx, stageMinIO, "no bucket configured")
	} else {
		t.start(ctx, stageMinIO)
		var ml MinIOLossResult
		err := workflow.ExecuteChildWorkflow(child(ctx, stageMinIO, "restore "+plan.Bucket+" from the mirror"), MinIOLossName,
			MinIOLossInput{Bucket: plan.Bucket, SetID: setID, Scope: in.Scope, AllowFailedVerification: in.AllowFailedVerification, RecoveryOptions: auto}).Get(ctx, &ml)
		r.report.SafetyCopies = append(r.report.SafetyCopies, ml.SafetyCopies...)
		if err := stage(stageMinIO, wid+"-"+stageMinIO, fmt.Sprintf("%d objects restored (%d bytes), %d newer kept",
			ml.Restored.Restored, ml.Restored.RestoredBytes, ml.Restored.KeptNewer), err); err != nil {
			return res, err
		}
	}

	// 4. Services, in the configured order.
	t.start(ctx, stageServices)
	hooks, err := runHooks(ctx, targets, plan.Restart, "restart", "health")
	if err := stage(stageServices, "", hookDetail(hooks), err); err != nil {
		return res, err
	}

	// 5. Agents of the lost cluster.
	t.start(ctx, stageCleanup)
	lost := activities.LostTasksInput{RecoveryID: wid, LostAfter: in.LostAfter.D(), GenerationUpTo: generation}
	var app *activities.AppState
	err = workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, metadataActivityOptions("mark timed-out agents dead")), app.CleanupAgents, lost).Get(ctx, &res.Cleanup)
	if err := stage(stageCleanup, "", fmt.Sprintf("%d agents marked dead", res.Cleanup.Dead), err); err != nil {
		return res, err
	}

	// 6. Re-dispatch, tracked to the end.
	t.start(ctx, stageRedispatch)
	var rd RedispatchResult
	err = workflow.ExecuteChildWorkflow(child(ctx, stageRedispatch, "re-queue lost tasks and track them"), RedispatchLostTasksName,
		RedispatchLostTasksInput{RecoveryID: wid, LostAfter: in.LostAfter, GenerationUpTo: generation,
			Deadline: in.RedispatchDeadline, PollEvery: in.RedispatchPollEvery}).Get(ctx, &rd)
	res.Redispatch = &rd
	if err := stage(stageRedispatch, wid+"-"+stageRedispatch, fmt.Sprintf("%d re-queued: %d completed, %d failed, %d missed the deadline",
		rd.Counts.Requeued, rd.Counts.Completed, rd.Counts.Failed, rd.MissedDeadline), err); err != nil {
		return res, err
	}
	res.RecoveryReport = r.done(ctx)
	return res, nil
}
