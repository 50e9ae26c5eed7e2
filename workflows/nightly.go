package workflows

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/kohakku/drflow/activities"
	"github.com/kohakku/drflow/internal/units"
)

// NightlyBackupName is the registered workflow type of NightlyBackup.
const NightlyBackupName = "NightlyBackup"

// NightlyBackupInput configures one backup run. `{}` backs up every configured source.
type NightlyBackupInput struct {
	// Databases to dump, by name from DRFLOW_POSTGRES_DATABASES (default: all).
	Databases []string `json:"databases,omitempty"`
	// Buckets to mirror, by name from DRFLOW_MINIO_BUCKETS (default: all).
	Buckets []string `json:"buckets,omitempty"`
	// SQLite databases to snapshot, by name from DRFLOW_SQLITE_DATABASES (default: all).
	SQLite []string `json:"sqlite,omitempty"`
	// SkipRedis leaves the Redis RDB out of the set.
	SkipRedis bool `json:"skipRedis,omitempty"`
	// SkipObjects leaves the object mirror out of the set.
	SkipObjects bool `json:"skipObjects,omitempty"`
	// SkipRetention skips the retention sweep after the set is complete.
	SkipRetention bool `json:"skipRetention,omitempty"`
	// SkipVerify does not start VerifyBackup on the new set.
	SkipVerify bool `json:"skipVerify,omitempty"`
	// VerifyRestore restores into scratch targets when verifying (default true).
	VerifyRestore *bool `json:"verifyRestore,omitempty"`
	// AnomalyThreshold is the fraction by which a dump's size, a table's row count or a
	// Redis key count may change from the previous set before a warning (default 0.5).
	AnomalyThreshold float64 `json:"anomalyThreshold,omitempty"`
}

// NightlyBackupResult describes the set a run produced.
type NightlyBackupResult struct {
	// SetID of the complete set.
	SetID string `json:"setId"`
	// Manifest as written.
	Manifest activities.Manifest `json:"manifest"`
	// Warnings: anomalies against the previous set. A run with warnings still succeeds.
	Warnings []string `json:"warnings,omitempty"`
	// Sweep is the retention sweep's report.
	Sweep activities.SweepResult `json:"sweep"`
	// Verify is the child VerifyBackup's report (absent with skipVerify).
	Verify *activities.VerifyReport `json:"verify,omitempty"`
	// Elapsed is workflow time from start to the end of the sweep.
	Elapsed Duration `json:"elapsed"`
}

func (in *NightlyBackupInput) normalize() error {
	if in.AnomalyThreshold == 0 {
		in.AnomalyThreshold = 0.5
	}
	if in.AnomalyThreshold < 0 || in.AnomalyThreshold > 100 {
		return invalidInput("anomalyThreshold", "%v is out of range: use a fraction such as 0.5 (50%%)", in.AnomalyThreshold)
	}
	for _, field := range []struct {
		name  string
		names []string
	}{{"databases", in.Databases}, {"buckets", in.Buckets}} {
		seen := map[string]bool{}
		for _, n := range field.names {
			if strings.TrimSpace(n) == "" {
				return invalidInput(field.name, "empty name in the list")
			}
			if seen[n] {
				return invalidInput(field.name, "%q is listed twice", n)
			}
			seen[n] = true
		}
	}
	return nil
}

// longActivityOptions are the options of a long, heartbeating step (a dump, a mirror, a
// restore): a dead worker is noticed within 30 seconds (the activities heartbeat every
// 10) and the step restarts elsewhere, with backoff, up to attempts times.
func longActivityOptions(summary string, attempts int32) workflow.ActivityOptions {
	return workflow.ActivityOptions{
		StartToCloseTimeout: 12 * time.Hour,
		HeartbeatTimeout:    30 * time.Second,
		Summary:             summary,
		RetryPolicy: &temporal.RetryPolicy{
			InitialInterval:    5 * time.Second,
			BackoffCoefficient: 2,
			MaximumInterval:    2 * time.Minute,
			MaximumAttempts:    attempts,
		},
	}
}

// backupActivityOptions: a backup source is retried up to 6 times before the set is
// declared incomplete.
func backupActivityOptions(summary string) workflow.ActivityOptions {
	return longActivityOptions(summary, 6)
}

func metadataActivityOptions(summary string) workflow.ActivityOptions {
	return workflow.ActivityOptions{
		StartToCloseTimeout: 5 * time.Minute,
		HeartbeatTimeout:    time.Minute,
		Summary:             summary,
		RetryPolicy: &temporal.RetryPolicy{
			InitialInterval: 2 * time.Second,
			MaximumInterval: time.Minute,
			MaximumAttempts: 10,
		},
	}
}

// countTables are the tables whose row counts each database's manifest entry records.
var countTables = map[string][]string{
	"kohakku-controller": {"tasks_task", "briefs"},
	"kohakku-dispatcher": {"agent_containers", "dispatch_assignments"},
}

// NightlyBackup produces one complete, checksummed, self-describing backup set: every
// source in parallel (each database dumped from one snapshot, the Redis RDB streamed over
// the replication protocol, each bucket mirrored incrementally), then the manifest — last,
// so a set without one is incomplete and never used — then the retention sweep. Anomalies
// against the previous set are warnings in the result and the manifest.
func NightlyBackup(ctx workflow.Context, in NightlyBackupInput) (NightlyBackupResult, error) {
	var res NightlyBackupResult
	started := workflow.Now(ctx)
	res.SetID = started.UTC().Format(activities.SetIDLayout)
	log := workflow.GetLogger(ctx)

	if err := workflow.UpsertTypedSearchAttributes(ctx, SearchAttrRunbook.ValueSet(NightlyBackupName), SearchAttrTarget.ValueSet(res.SetID)); err != nil {
		return res, err
	}
	const (
		stepPreflight = "preflight"
		stepAnomalies = "anomaly checks"
		stepManifest  = "write manifest"
		stepSweep     = "retention sweep"
	)
	t, err := newTracker(ctx, NightlyBackupName, stepPreflight)
	if err != nil {
		return res, err
	}
	if err := in.normalize(); err != nil {
		return res, err
	}

	var (
		inv   *activities.Inventory
		bs    *activities.BackupStore
		pg    *activities.Postgres
		rd    *activities.Redis
		sq    *activities.SQLite
		objs  *activities.Objects
		tgts  activities.Targets
		prev  *activities.Manifest
		sweep activities.SweepResult
	)

	// Preflight: resolve targets against config, check the store, read the previous set.
	t.start(ctx, stepPreflight)
	mctx := workflow.WithActivityOptions(ctx, metadataActivityOptions("resolve targets"))
	err = workflow.ExecuteActivity(mctx, inv.Resolve, activities.TargetsInput{Databases: in.Databases, Buckets: in.Buckets, SQLite: in.SQLite}).Get(ctx, &tgts)
	if err == nil {
		// Few attempts: a store that is down or misconfigured fails the run in seconds
		// with the reason, and the next scheduled run tries again.
		popts := metadataActivityOptions("check backup store")
		popts.RetryPolicy.MaximumAttempts = 3
		err = workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, popts), bs.Preflight).Get(ctx, nil)
	}
	if err == nil {
		err = workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, metadataActivityOptions("read previous manifest")), bs.PreviousManifest, activities.PreviousInput{Before: res.SetID}).Get(ctx, &prev)
	}
	if in.SkipRedis {
		tgts.Redis = nil
	}
	if in.SkipObjects {
		tgts.Buckets = nil
	}
	t.finish(ctx, stepPreflight, fmt.Sprintf("set %s: %d databases, %d redis, %d sqlite, %d buckets", res.SetID, len(tgts.Databases), len(tgts.Redis), len(tgts.SQLite), len(tgts.Buckets)), err)
	if err != nil {
		return res, fmt.Errorf("preflight: %w", err)
	}
	if len(tgts.Databases)+len(tgts.Redis)+len(tgts.SQLite)+len(tgts.Buckets) == 0 {
		return res, temporal.NewNonRetryableApplicationError("nothing to back up: no databases, Redis or buckets configured or selected", ErrInvalidInput, nil)
	}

	// Sources, in parallel. Each step's result lands in its slot, so the manifest order is
	// fixed (databases in config order, then Redis, then buckets) whatever finishes first.
	type pending struct {
		step string
		done func(workflow.Future) (string, error)
	}
	sel := workflow.NewSelector(ctx)
	var steps []pending
	arts := make([]activities.Artifact, len(tgts.Databases)+len(tgts.Redis)+len(tgts.SQLite))
	mirrors := make([]activities.MirrorResult, len(tgts.Buckets))
	add := func(step string, f workflow.Future, done func(workflow.Future) (string, error)) {
		t.start(ctx, step)
		p := pending{step: step, done: done}
		steps = append(steps, p)
		sel.AddFuture(f, func(f workflow.Future) {
			detail, err := p.done(f)
			t.finish(ctx, p.step, detail, err)
		})
	}
	for i, db := range tgts.Databases {
		i, db := i, db
		f := workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, backupActivityOptions("pg_dump "+db)), pg.Dump, activities.DumpInput{
			SetID: res.SetID, Database: db, Key: activities.PostgresKey(res.SetID, db), CountTables: countTables[db],
		})
		add("dump "+db, f, func(f workflow.Future) (string, error) {
			if err := f.Get(ctx, &arts[i]); err != nil {
				return "", err
			}
			return fmt.Sprintf("%s → %s, rows %v", units.Bytes(arts[i].RawSize), units.Bytes(arts[i].Size), arts[i].RowCounts), nil
		})
	}
	for j, inst := range tgts.Redis {
		i, inst := len(tgts.Databases)+j, inst
		f := workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, backupActivityOptions("redis rdb "+inst)), rd.DumpRDB, activities.RDBInput{
			SetID: res.SetID, Instance: inst, Key: activities.RedisKey(res.SetID, inst),
		})
		add("redis "+inst, f, func(f workflow.Future) (string, error) {
			if err := f.Get(ctx, &arts[i]); err != nil {
				return "", err
			}
			return fmt.Sprintf("%d keys, %s → %s", arts[i].KeyCount, units.Bytes(arts[i].RawSize), units.Bytes(arts[i].Size)), nil
		})
	}
	for j, name := range tgts.SQLite {
		i, name := len(tgts.Databases)+len(tgts.Redis)+j, name
		f := workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, backupActivityOptions("sqlite snapshot "+name)), sq.Snapshot, activities.SQLiteInput{
			SetID: res.SetID, Name: name, Key: activities.SQLiteKey(res.SetID, name),
		})
		add("sqlite "+name, f, func(f workflow.Future) (string, error) {
			if err := f.Get(ctx, &arts[i]); err != nil {
				return "", err
			}
			return fmt.Sprintf("tables %v, %s → %s", arts[i].RowCounts, units.Bytes(arts[i].RawSize), units.Bytes(arts[i].Size)), nil
		})
	}
	for i, b := range tgts.Buckets {
		i, b := i, b
		f := workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, backupActivityOptions("mirror "+b)), objs.Mirror, activities.MirrorInput{
			SetID: res.SetID, Bucket: b, Prefix: activities.MirrorKeyPrefix(b), ListingKey: activities.ListingKey(res.SetID, b),
		})
		add("mirror "+b, f, func(f workflow.Future) (string, error) {
			if err := f.Get(ctx, &mirrors[i]); err != nil {
				return "", err
			}
			m := mirrors[i]
			return fmt.Sprintf("%d objects (%s), copied %d (%s)", m.Objects, units.Bytes(m.Bytes), m.Copied, units.Bytes(m.CopiedBytes)), nil
		})
	}
	for range steps {
		sel.Select(ctx)
	}
	var failed []string
	for _, s := range t.p.Steps {
		if s.Status == StepFailed {
			failed = append(failed, s.Name+": "+s.Detail)
		}
	}
	if len(failed) > 0 {
		// No manifest: the set stays incomplete, is never used, and is swept later.
		return res, fmt.Errorf("set %s is incomplete, %d step(s) failed: %s", res.SetID, len(failed), strings.Join(failed, "; "))
	}

	t.start(ctx, stepAnomalies)
	res.Warnings = Anomalies(prev, arts, mirrors, in.AnomalyThreshold)
	for _, w := range res.Warnings {
		log.Warn("backup anomaly", "set", res.SetID, "warning", w)
	}
	prevID := "none"
	if prev != nil {
		prevID = prev.SetID
	}
	t.finish(ctx, stepAnomalies, fmt.Sprintf("%d warnings against set %s", len(res.Warnings), prevID), nil)

	info := workflow.GetInfo(ctx)
	res.Manifest = activities.Manifest{
		Version:     activities.ManifestVersion,
		SetID:       res.SetID,
		CreatedAt:   started.UTC(),
		CompletedAt: workflow.Now(ctx).UTC(),
		WorkflowID:  info.WorkflowExecution.ID,
		RunID:       info.WorkflowExecution.RunID,
		Artifacts:   arts,
		Mirrors:     mirrors,
		Warnings:    res.Warnings,
	}
	for _, m := range mirrors {
		res.Manifest.Artifacts = append(res.Manifest.Artifacts, m.Listing)
	}
	t.start(ctx, stepManifest)
	err = workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, metadataActivityOptions("write manifest "+res.SetID)), bs.WriteManifest, res.Manifest).Get(ctx, nil)
	t.finish(ctx, stepManifest, activities.SetKey(res.SetID, activities.ManifestName), err)
	if err != nil {
		return res, fmt.Errorf("write manifest: %w", err)
	}

	if !in.SkipRetention {
		t.start(ctx, stepSweep)
		err = workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, metadataActivityOptions("retention sweep")), bs.Sweep, activities.SweepInput{
			Policy: tgts.Retention, Now: workflow.Now(ctx).UTC(),
		}).Get(ctx, &sweep)
		t.finish(ctx, stepSweep, fmt.Sprintf("deleted %d sets (%s), kept %d", len(sweep.Deleted), units.Bytes(sweep.FreedBytes), sweep.Kept), err)
		if err != nil {
			// The set is complete; a failed sweep is retried by the next run.
			res.Warnings = append(res.Warnings, "retention sweep failed: "+err.Error())
		}
		res.Sweep = sweep
	}
	// Every set is verified as soon as it is complete. Runs recorded before the child
	// existed replay without it.
	if workflow.GetVersion(ctx, "verify-child", workflow.DefaultVersion, 1) == 1 && !in.SkipVerify {
		const stepVerify = "verify (child VerifyBackup)"
		t.start(ctx, stepVerify)
		cctx := workflow.WithChildOptions(ctx, workflow.ChildWorkflowOptions{
			WorkflowID: "verify-" + res.SetID,
			TaskQueue:  info.TaskQueueName,
		})
		var vr VerifyBackupResult
		err := workflow.ExecuteChildWorkflow(cctx, VerifyBackupName, VerifyBackupInput{SetID: res.SetID, Restore: in.VerifyRestore}).Get(ctx, &vr)
		t.finish(ctx, stepVerify, fmt.Sprintf("passed=%v, total RTO %s", vr.Report.Passed, vr.Report.TotalRTO), err)
		if err != nil {
			// The set is complete but not trustworthy: fail the run so /health and
			// alerts see it.
			return res, fmt.Errorf("set %s was written but failed verification: %w", res.SetID, err)
		}
		res.Verify = &vr.Report
	}
	res.Elapsed = Duration(workflow.Now(ctx).Sub(started))
	return res, nil
}

// Anomalies compares a new set's figures with the previous set's and returns one warning
// per figure that moved by more than threshold (a fraction) and by more than a small floor
// (100 rows or keys, 64 KiB of dump), plus any drop in a bucket's object count. prev nil
// (first backup) yields none.
func Anomalies(prev *activities.Manifest, arts []activities.Artifact, mirrors []activities.MirrorResult, threshold float64) []string {
	if prev == nil {
		return nil
	}
	var warns []string
	// A figure must move by more than the threshold fraction and by more than a floor:
	// small tables and tiny dumps swing by large fractions without meaning anything.
	const minRows, minBytes = 100, 64 << 10
	changedBy := func(old, cur, floor int64) bool {
		if d := cur - old; d < floor && -d < floor {
			return false
		}
		if old == 0 {
			return true
		}
		d := float64(cur-old) / float64(old)
		return d > threshold || d < -threshold
	}
	changed := func(old, cur int64) bool { return changedBy(old, cur, minRows) }
	pct := func(old, cur int64) string {
		if old == 0 {
			return "from 0"
		}
		return fmt.Sprintf("%+.0f%%", 100*float64(cur-old)/float64(old))
	}
	for _, a := range arts {
		var old *activities.Artifact
		for i := range prev.Artifacts {
			if prev.Artifacts[i].Kind == a.Kind && prev.Artifacts[i].Source == a.Source {
				old = &prev.Artifacts[i]
				break
			}
		}
		if old == nil {
			continue
		}
		if changedBy(old.RawSize, a.RawSize, minBytes) {
			warns = append(warns, fmt.Sprintf("%s %s: dump size %s → %s (%s) since set %s", a.Kind, a.Source, units.Bytes(old.RawSize), units.Bytes(a.RawSize), pct(old.RawSize, a.RawSize), prev.SetID))
		}
		for _, table := range sortedKeys(a.RowCounts) {
			o, ok := old.RowCounts[table]
			if ok && changed(o, a.RowCounts[table]) {
				warns = append(warns, fmt.Sprintf("%s %s: %s rows %d → %d (%s) since set %s", a.Kind, a.Source, table, o, a.RowCounts[table], pct(o, a.RowCounts[table]), prev.SetID))
			}
		}
		if a.Kind == activities.KindRedis && changed(old.KeyCount, a.KeyCount) {
			warns = append(warns, fmt.Sprintf("redis %s: keys %d → %d (%s) since set %s", a.Source, old.KeyCount, a.KeyCount, pct(old.KeyCount, a.KeyCount), prev.SetID))
		}
	}
	for _, m := range mirrors {
		for _, o := range prev.Mirrors {
			if o.Bucket == m.Bucket && m.Objects < o.Objects {
				warns = append(warns, fmt.Sprintf("bucket %s: object count dropped %d → %d (%s) since set %s", m.Bucket, o.Objects, m.Objects, pct(o.Objects, m.Objects), prev.SetID))
			}
		}
	}
	return warns
}

// sortedKeys returns m's keys in order: workflow code never ranges over a map directly.
func sortedKeys(m map[string]int64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
