package workflows

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/kohakku/drflow/activities"
)

// VerifyBackupName is the registered workflow type of VerifyBackup.
const VerifyBackupName = "VerifyBackup"

// ErrVerificationFailed is the error type of a verification that found problems.
const ErrVerificationFailed = "VerificationFailed"

// VerifyBackupInput configures a verification. `{}` verifies the newest complete set with
// a full restore.
type VerifyBackupInput struct {
	// SetID to verify; "" means the newest complete set.
	SetID string `json:"setId,omitempty"`
	// Restore each dump into a scratch database and load the RDB into a scratch Redis
	// (default true). false checks checksums and structure only.
	Restore *bool `json:"restore,omitempty"`
	// SampleObjects is how many mirrored objects per bucket are read back (default 100).
	SampleObjects int `json:"sampleObjects,omitempty"`
	// RestoreJobs is pg_restore -j (default: the worker's CPU count).
	RestoreJobs int `json:"restoreJobs,omitempty"`
}

// VerifyBackupResult is the report written to the set's verify.json.
type VerifyBackupResult struct {
	Report activities.VerifyReport `json:"report"`
}

func (in *VerifyBackupInput) normalize() error {
	if err := checkSetID(in.SetID); err != nil {
		return err
	}
	if in.Restore == nil {
		t := true
		in.Restore = &t
	}
	if in.SampleObjects == 0 {
		in.SampleObjects = 100
	}
	if in.SampleObjects < 0 || in.SampleObjects > 100000 {
		return invalidInput("sampleObjects", "%d is out of range: use 1 to 100000", in.SampleObjects)
	}
	if in.RestoreJobs < 0 || in.RestoreJobs > 64 {
		return invalidInput("restoreJobs", "%d is out of range: use 0 (CPU count) to 64", in.RestoreJobs)
	}
	return nil
}

// verifyActivityOptions: a verification step is retried fewer times than a backup: its
// findings are results, so only infrastructure faults are retried at all.
func verifyActivityOptions(summary string) workflow.ActivityOptions {
	return longActivityOptions(summary, 4)
}

// scratchName is the scratch database for the i-th dump of this run: unique per run, so
// concurrent drills never collide, and known to the workflow, so it can be dropped even if
// the worker that created it died.
func scratchName(ctx workflow.Context, i int) string {
	run := strings.ReplaceAll(workflow.GetInfo(ctx).WorkflowExecution.RunID, "-", "")
	if len(run) > 12 {
		run = run[len(run)-12:]
	}
	return fmt.Sprintf("%s%s_%d", activities.ScratchPrefix, strings.ToLower(run), i)
}

// VerifyBackup proves a set restores: every artifact's size and SHA-256 against the
// manifest, `pg_restore --list` and a restore of each dump into a scratch database with
// row counts compared, the RDB parsed and loaded into a scratch Redis, a sample of
// mirrored objects read back. It times each restore (the measured RTO), writes verify.json
// next to the manifest — also when checks fail — and fails when any check did. Scratch
// databases are dropped on success, failure and cancellation.
func VerifyBackup(ctx workflow.Context, in VerifyBackupInput) (VerifyBackupResult, error) {
	var res VerifyBackupResult
	started := workflow.Now(ctx)
	info := workflow.GetInfo(ctx)
	drill := info.ParentWorkflowExecution == nil
	if err := workflow.UpsertTypedSearchAttributes(ctx, SearchAttrRunbook.ValueSet(VerifyBackupName), SearchAttrDrill.ValueSet(drill)); err != nil {
		return res, err
	}
	const stepSelect, stepReport = "select set", "write verify.json"
	t, err := newTracker(ctx, VerifyBackupName, stepSelect)
	if err != nil {
		return res, err
	}
	if err := in.normalize(); err != nil {
		return res, err
	}

	var (
		bs   *activities.BackupStore
		pg   *activities.Postgres
		rd   *activities.Redis
		objs *activities.Objects
		sel  activities.SelectedSet
	)
	t.start(ctx, stepSelect)
	err = workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, metadataActivityOptions("select set")), bs.SelectSet,
		activities.SelectSetInput{SetID: in.SetID, AllowFailed: true}).Get(ctx, &sel)
	t.finish(ctx, stepSelect, sel.Manifest.SetID, err)
	if err != nil {
		return res, fmt.Errorf("select set: %w", err)
	}
	setID := sel.Manifest.SetID
	if err := workflow.UpsertTypedSearchAttributes(ctx, SearchAttrTarget.ValueSet(setID)); err != nil {
		return res, err
	}

	report := activities.VerifyReport{
		SetID: setID, WorkflowID: info.WorkflowExecution.ID, RunID: info.WorkflowExecution.RunID,
		Drill: drill, Restored: *in.Restore,
	}
	var scratch []string
	// Scratch databases are dropped by VerifyDump itself; this is the safety net for a
	// worker that died mid-restore or a cancelled run, in a context that survives the
	// cancellation.
	defer func() {
		if len(scratch) == 0 {
			return
		}
		dctx, cancel := workflow.NewDisconnectedContext(ctx)
		defer cancel()
		dctx = workflow.WithActivityOptions(dctx, metadataActivityOptions("drop scratch databases"))
		for _, name := range scratch {
			_ = workflow.ExecuteActivity(dctx, pg.DropScratch, activities.DropScratchInput{Database: name}).Get(dctx, nil)
		}
	}()

	check := func(step string, c activities.VerifyCheck, err error) error {
		if err != nil {
			t.finish(ctx, step, "", err)
			return err
		}
		detail := c.Detail
		if !c.Passed {
			detail = strings.Join(c.Problems, "; ")
		}
		t.finish(ctx, step, detail, nil)
		if !c.Passed {
			t.step(step).Status = StepFailed
		}
		report.Checks = append(report.Checks, c)
		report.TotalRTO += c.RTO
		return nil
	}

	// Dumps one after another: each restore may use every CPU (pg_restore -j).
	i := 0
	for _, a := range sel.Manifest.Artifacts {
		if a.Kind != activities.KindPostgres {
			continue
		}
		step := "postgres " + a.Source
		name := scratchName(ctx, i)
		i++
		if *in.Restore {
			scratch = append(scratch, name)
		}
		t.start(ctx, step)
		var dc activities.DumpCheck
		err := workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, verifyActivityOptions("verify + restore "+a.Source)), pg.VerifyDump,
			activities.VerifyDumpInput{SetID: setID, Artifact: a, Restore: *in.Restore, Scratch: name, Jobs: in.RestoreJobs}).Get(ctx, &dc)
		if err := check(step, activities.VerifyCheck{
			Name: step, Artifact: a.Key, Passed: dc.Passed, Problems: dc.Problems, RTO: dc.RTO,
			Detail: fmt.Sprintf("checksum ok, pg_restore --list ok, restored=%v, rows %v, RTO %s", dc.Restored, dc.RowCounts, dc.RTO.Round(time.Millisecond)),
		}, err); err != nil {
			return res, fmt.Errorf("%s: %w", step, err)
		}
	}
	for _, a := range sel.Manifest.Artifacts {
		if a.Kind != activities.KindRedis {
			continue
		}
		step := "redis " + a.Source
		t.start(ctx, step)
		var rc activities.RDBCheck
		err := workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, verifyActivityOptions("verify rdb "+a.Source)), rd.VerifyRDB,
			activities.VerifyRDBInput{SetID: setID, Artifact: a, Scratch: *in.Restore}).Get(ctx, &rc)
		detail := fmt.Sprintf("checksum ok, %d keys parsed", rc.ParsedKeys)
		if rc.ScratchLoaded {
			detail += fmt.Sprintf(", %d loaded into a scratch redis-server", rc.LoadedKeys)
		}
		if rc.Note != "" {
			detail += " (" + rc.Note + ")"
		}
		if err := check(step, activities.VerifyCheck{Name: step, Artifact: a.Key, Passed: rc.Passed, Problems: rc.Problems, RTO: rc.RTO, Detail: detail}, err); err != nil {
			return res, fmt.Errorf("%s: %w", step, err)
		}
	}
	for _, a := range sel.Manifest.Artifacts {
		if a.Kind != activities.KindSQLite {
			continue
		}
		step := "sqlite " + a.Source
		t.start(ctx, step)
		var c activities.VerifyCheck
		err := workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, verifyActivityOptions("checksum "+a.Source)), bs.CheckArtifact, a).Get(ctx, &c)
		if err := check(step, c, err); err != nil {
			return res, fmt.Errorf("%s: %w", step, err)
		}
	}
	for _, m := range sel.Manifest.Mirrors {
		step := "bucket " + m.Bucket
		t.start(ctx, step)
		var sc activities.SampleCheck
		err := workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, verifyActivityOptions("sample mirror "+m.Bucket)), objs.VerifySample,
			activities.VerifySampleInput{SetID: setID, Mirror: m, Sample: in.SampleObjects}).Get(ctx, &sc)
		detail := fmt.Sprintf("listing ok (%d objects), %d/%d sampled objects match", sc.Listed, sc.Matched, sc.Sampled)
		if err := check(step, activities.VerifyCheck{Name: step, Artifact: m.Listing.Key, Passed: sc.Passed, Problems: sc.Problems, Detail: detail}, err); err != nil {
			return res, fmt.Errorf("%s: %w", step, err)
		}
	}

	report.Passed = len(report.Checks) > 0
	var problems []string
	for _, c := range report.Checks {
		if !c.Passed {
			report.Passed = false
			problems = append(problems, c.Problems...)
		}
	}
	report.VerifiedAt = workflow.Now(ctx).UTC()
	report.Elapsed = report.VerifiedAt.Sub(started)
	t.start(ctx, stepReport)
	err = workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, metadataActivityOptions("write verify.json")), bs.WriteVerify, report).Get(ctx, nil)
	verdict := "passed"
	if !report.Passed {
		verdict = "failed"
	}
	t.finish(ctx, stepReport, fmt.Sprintf("%s, total RTO %s", verdict, report.TotalRTO.Round(time.Millisecond)), err)
	res.Report = report
	if err != nil {
		return res, fmt.Errorf("write verify.json: %w", err)
	}
	if !report.Passed {
		if len(problems) == 0 {
			problems = []string{"the set has no artifact to verify"}
		}
		return res, temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("set %s failed verification: %s", setID, strings.Join(problems, "; ")), ErrVerificationFailed, errors.New(verdict))
	}
	return res, nil
}
