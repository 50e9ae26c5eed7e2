package workflows

import (
	"fmt"
	"strings"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/kohakku/drflow/activities"
)

// MinIOLossName is the registered workflow type of MinIOLoss.
const MinIOLossName = "MinIOLoss"

// ErrObjectsCheckFailed is the error type of a restore whose objects do not match the set.
const ErrObjectsCheckFailed = "ObjectsCheckFailed"

// Scopes of an object restore.
const (
	ScopeNeeded = "needed"
	ScopeAll    = "all"
)

// MinIOLossInput says which bucket to restore from which set. `{}` plans the restore of
// what the application needs of the first configured bucket from the newest verified set.
type MinIOLossInput struct {
	// Bucket of the app's MinIO (default: the first configured, normally "kohakku").
	Bucket string `json:"bucket,omitempty"`
	// SetID whose mirror listing is the recovery point; "" = the newest verified set.
	SetID string `json:"setId,omitempty"`
	// Scope "needed" (default) restores what the application needs, in the order it needs
	// it (for Kohakku: briefs of unfinished tasks, then skills); "all" every object.
	Scope string `json:"scope,omitempty"`
	// Force overwrites live objects that are newer than the set's copy (after a safety copy).
	Force bool `json:"force,omitempty"`
	// AllowFailedVerification lets a named set that failed (or never ran) verification through.
	AllowFailedVerification bool `json:"allowFailedVerification,omitempty"`
	RecoveryOptions
}

func (in *MinIOLossInput) normalize() error {
	if err := checkSetID(in.SetID); err != nil {
		return err
	}
	if err := checkScope(&in.Scope); err != nil {
		return err
	}
	return in.RecoveryOptions.normalize()
}

// MinIOLossPlan is what MinIOLoss will do, published before it does anything.
type MinIOLossPlan struct {
	SetID string `json:"setId"`
	// RecoveryPoint is when the set's mirror listing was taken.
	RecoveryPoint string                  `json:"recoveryPoint"`
	Objects       activities.ObjectsPlan  `json:"objects"`
	SafetyPrefix  string                  `json:"safetyPrefix"`
	Mirror        activities.MirrorResult `json:"mirror"`
}

// MinIOLossResult reports a MinIOLoss run.
type MinIOLossResult struct {
	RecoveryReport
	Plan     MinIOLossPlan                  `json:"plan"`
	Restored activities.ObjectRestoreResult `json:"restored"`
	Check    activities.ObjectsCheck        `json:"check"`
}

// Steps of MinIOLoss.
const (
	stepObjectsPlan    = "plan"
	stepObjectsRestore = "restore objects"
	stepObjectsVerify  = "verify objects"
)

// MinIOLoss restores a bucket of the app's MinIO from the backup mirror, as the set's
// listing recorded it: with scope "needed" only what the application needs, most urgent
// first; live objects newer than the set's copy are kept unless forced; every live object
// that is overwritten is first copied to the safety area. The copy is parallel and
// resumes from its heartbeat cursor; counts and checksums are verified at the end.
func MinIOLoss(ctx workflow.Context, in MinIOLossInput) (MinIOLossResult, error) {
	var res MinIOLossResult
	if err := in.normalize(); err != nil {
		return res, err
	}
	r, err := startRecovery(ctx, MinIOLossName, in.Bucket, stepResolve, stepSelect, stepObjectsPlan, stepApproval, stepObjectsRestore, stepObjectsVerify)
	if err != nil {
		return res, err
	}
	t := r.t
	var buckets []string
	if in.Bucket != "" {
		buckets = []string{in.Bucket}
	}
	targets, err := resolveTargets(ctx, t, activities.TargetsInput{Buckets: buckets})
	if err != nil {
		return res, err
	}
	if len(targets.Buckets) == 0 {
		return res, invalidInput("bucket", "no bucket is configured on the worker: set DRFLOW_MINIO_BUCKETS")
	}
	if in.Bucket == "" {
		in.Bucket = targets.Buckets[0]
		if err := workflow.UpsertTypedSearchAttributes(ctx, SearchAttrTarget.ValueSet(in.Bucket)); err != nil {
			return res, err
		}
	}
	sel, err := selectSet(ctx, t, in.SetID, in.AllowFailedVerification)
	if err != nil {
		return res, err
	}
	var mirror *activities.MirrorResult
	for i := range sel.Manifest.Mirrors {
		if sel.Manifest.Mirrors[i].Bucket == in.Bucket {
			mirror = &sel.Manifest.Mirrors[i]
		}
	}
	if mirror == nil {
		var have []string
		for _, m := range sel.Manifest.Mirrors {
			have = append(have, m.Bucket)
		}
		return res, temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("set %s holds no mirror of bucket %q (it has: %s): pick a set that mirrored it (setId)", sel.Manifest.SetID, in.Bucket, orNone(have)),
			activities.ErrSetNotFound, nil)
	}

	var objs *activities.Objects
	ri := activities.ObjectRestoreInput{
		SetID: sel.Manifest.SetID, Mirror: *mirror, Scope: in.Scope, Force: in.Force,
		SafetyPrefix: activities.SafetyObjectsPrefix(workflow.GetInfo(ctx).WorkflowExecution.ID, in.Bucket),
	}
	plan := MinIOLossPlan{SetID: sel.Manifest.SetID, RecoveryPoint: mirror.Listing.StartedAt.UTC().Format("2006-01-02T15:04:05Z"), SafetyPrefix: ri.SafetyPrefix, Mirror: *mirror}
	t.start(ctx, stepObjectsPlan)
	err = workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, longActivityOptions("plan object restore", 4)), objs.PlanRestore, ri).Get(ctx, &plan.Objects)
	t.finish(ctx, stepObjectsPlan, objectsPlanDetail(plan.Objects), err)
	if err != nil {
		return res, fmt.Errorf("plan: %w", err)
	}
	res.Plan = plan

	ok, err := r.decide(ctx, plan, in.RecoveryOptions)
	if err != nil || !ok {
		res.RecoveryReport = r.report
		return res, err
	}

	t.start(ctx, stepObjectsRestore)
	err = workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, backupActivityOptions("restore "+in.Bucket+" from the mirror")), objs.RestoreObjects, ri).Get(ctx, &res.Restored)
	t.finish(ctx, stepObjectsRestore, fmt.Sprintf("restored %d objects (%d bytes), %d safety copies, %d newer live objects kept, %d unchanged",
		res.Restored.Restored, res.Restored.RestoredBytes, res.Restored.SafetyCopied, res.Restored.KeptNewer, res.Restored.Unchanged), err)
	if err != nil {
		return res, fmt.Errorf("restore objects: %w", err)
	}
	sc := SafetyCopy{What: "bucket " + in.Bucket, Key: ri.SafetyPrefix, Count: res.Restored.SafetyCopied}
	if res.Restored.SafetyCopied == 0 {
		sc = SafetyCopy{What: "bucket " + in.Bucket, Skipped: "no live object was overwritten"}
	}
	r.report.SafetyCopies = append(r.report.SafetyCopies, sc)

	t.start(ctx, stepObjectsVerify)
	err = workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, longActivityOptions("verify restored objects", 4)), objs.VerifyRestore, ri).Get(ctx, &res.Check)
	if err == nil && !res.Check.Passed {
		err = temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("bucket %s does not match set %s after the restore: %s", in.Bucket, plan.SetID, strings.Join(res.Check.Problems, "; ")),
			ErrObjectsCheckFailed, nil)
	}
	t.finish(ctx, stepObjectsVerify, fmt.Sprintf("%d/%d objects match the set (size and checksum), %d newer live objects kept", res.Check.Matched, res.Check.Checked, res.Check.KeptNewer), err)
	if err != nil {
		return res, err
	}
	res.RecoveryReport = r.done(ctx)
	return res, nil
}

func objectsPlanDetail(p activities.ObjectsPlan) string {
	var parts []string
	for _, c := range p.Classes {
		parts = append(parts, fmt.Sprintf("%s: %d missing, %d to overwrite, %d newer kept, %d unchanged", c.Name, c.Missing, c.Overwrite, c.KeepNewer, c.Unchanged))
	}
	head := fmt.Sprintf("restore %d objects (%d bytes), %d safety copies, %d outside scope %s", p.Restore, p.RestoreBytes, p.SafetyCopies, p.Skipped, p.Scope)
	if !p.BucketExists {
		head += "; the bucket is missing and will be created"
	}
	return head + "; " + strings.Join(parts, "; ")
}

func orNone(list []string) string {
	if len(list) == 0 {
		return "none"
	}
	return strings.Join(list, ", ")
}
