package workflows

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/kohakku/drflow/activities"
)

// TotalDBLossName is the registered workflow type of TotalDBLoss.
const TotalDBLossName = "TotalDBLoss"

// TotalDBLossInput says which databases to restore from which set. `{}` plans the restore
// of every configured database from the newest verified set and waits for approval.
type TotalDBLossInput struct {
	// SetID to restore; "" = the newest verified set.
	SetID string `json:"setId,omitempty"`
	// Databases to restore; empty = every configured database.
	Databases []string `json:"databases,omitempty"`
	// TargetSuffix restores each database into "<name><suffix>" instead of over it, for
	// drills: services and Redis are then left alone.
	TargetSuffix string `json:"targetSuffix,omitempty"`
	// Jobs is pg_restore -j per database (default: the worker's CPU count).
	Jobs int `json:"jobs,omitempty"`
	// NoOwner restores without ownership and privileges, for a server that lacks the
	// original roles.
	NoOwner bool `json:"noOwner,omitempty"`
	// SkipRedis leaves Redis alone (default: rebuild it from the restored databases).
	SkipRedis bool `json:"skipRedis,omitempty"`
	// SkipServices runs no service hooks (FullClusterRecovery restarts the services
	// itself, after Redis and MinIO).
	SkipServices bool `json:"skipServices,omitempty"`
	// AllowFailedVerification lets a named set that failed (or never ran) verification through.
	AllowFailedVerification bool `json:"allowFailedVerification,omitempty"`
	RecoveryOptions
}

var targetSuffixRE = regexp.MustCompile(`^[a-z0-9_-]{1,20}$`)

func (in *TotalDBLossInput) normalize() error {
	if err := checkSetID(in.SetID); err != nil {
		return err
	}
	if in.TargetSuffix != "" && !targetSuffixRE.MatchString(in.TargetSuffix) {
		return invalidInput("targetSuffix", "%q: use 1 to 20 lowercase letters, digits, '_' or '-', e.g. \"_drill\"", in.TargetSuffix)
	}
	if in.Jobs < 0 || in.Jobs > 64 {
		return invalidInput("jobs", "%d is out of range: use 0 (CPU count) to 64", in.Jobs)
	}
	for i, db := range in.Databases {
		if slices.Contains(in.Databases[:i], db) {
			return invalidInput("databases", "%q is listed twice", db)
		}
	}
	return in.RecoveryOptions.normalize()
}

// DatabasePlan is what TotalDBLoss will do to one database.
type DatabasePlan struct {
	// Database in the set, restored into Target.
	Database string `json:"database"`
	Target   string `json:"target"`
	// Artifact is the set's dump: key, sizes, row counts.
	Artifact activities.Artifact `json:"artifact"`
	// Live is the target as found now.
	Live activities.DatabaseState `json:"live"`
	// Action in words: create, or replace what is there.
	Action string `json:"action"`
	// SafetyCopy is the store key the live target is dumped to first, or why not.
	SafetyCopy string `json:"safetyCopy"`
}

// TotalDBLossPlan is what TotalDBLoss will do, published before it does anything.
type TotalDBLossPlan struct {
	SetID string `json:"setId"`
	// RecoveryPoint is when the set was taken: data written after it is lost.
	RecoveryPoint time.Time      `json:"recoveryPoint"`
	Verified      string         `json:"verified"`
	Databases     []DatabasePlan `json:"databases"`
	// DownloadBytes is the stored size of the dumps to restore.
	DownloadBytes int64 `json:"downloadBytes"`
	// Stop and Restart are the service hooks run before and after the restore, in order.
	Stop    []activities.PlannedRestart `json:"stop,omitempty"`
	Restart []activities.PlannedRestart `json:"restart,omitempty"`
	// RebuildRedis: Redis is rebuilt from the restored databases (child RedisLoss).
	RebuildRedis bool     `json:"rebuildRedis"`
	Actions      []string `json:"actions"`
}

// TotalDBLossResult reports a TotalDBLoss run.
type TotalDBLossResult struct {
	RecoveryReport
	Plan TotalDBLossPlan `json:"plan"`
	// RecoveryPoint is the set's time: the restored data is as of then.
	RecoveryPoint time.Time                          `json:"recoveryPoint"`
	Databases     []activities.RestoreDatabaseResult `json:"databases"`
	Hooks         []activities.HookResult            `json:"hooks,omitempty"`
	Redis         *RedisLossResult                   `json:"redis,omitempty"`
}

// Steps of TotalDBLoss (one "restore <db>" step per database).
const (
	stepDBPlan     = "plan"
	stepDBSafety   = "safety copies"
	stepDBStop     = "stop services"
	stepDBRestart  = "restart services"
	stepDBRedis    = "rebuild redis"
	stepDBRestoreP = "restore "
)

// dbServices are the services that hold connections to the restored databases.
var dbServices = []string{"controller", "dispatcher"}

// TotalDBLoss restores the application's databases from a backup set: the newest
// verified one unless named. Every live database it replaces is first dumped to the
// safety area; the controller and dispatcher are stopped, each database is downloaded,
// checked and restored in parallel (into a staging database, swapped in only once
// complete) and analyzed; then the services restart in the configured order and must
// report healthy, and Redis is rebuilt from the restored data (a child RedisLoss). With
// targetSuffix the databases are restored next to the live ones and nothing else is
// touched: a drill.
func TotalDBLoss(ctx workflow.Context, in TotalDBLossInput) (TotalDBLossResult, error) {
	var res TotalDBLossResult
	if err := in.normalize(); err != nil {
		return res, err
	}
	drill := in.TargetSuffix != ""
	r, err := startRecovery(ctx, TotalDBLossName, strings.Join(in.Databases, ","), stepResolve, stepSelect, stepDBPlan, stepApproval, stepDBSafety, stepDBStop)
	if err != nil {
		return res, err
	}
	if err := workflow.UpsertTypedSearchAttributes(ctx, SearchAttrDrill.ValueSet(drill)); err != nil {
		return res, err
	}
	t := r.t
	targets, err := resolveTargets(ctx, t, activities.TargetsInput{Databases: in.Databases})
	if err != nil {
		return res, err
	}
	if len(targets.Databases) == 0 {
		return res, invalidInput("databases", "no database is configured on the worker: set DRFLOW_POSTGRES_URL and DRFLOW_POSTGRES_DATABASES")
	}
	for _, db := range targets.Databases {
		t.step(stepDBRestoreP + db)
	}
	t.step(stepDBRestart)
	t.step(stepDBRedis)
	sel, err := selectSet(ctx, t, in.SetID, in.AllowFailedVerification)
	if err != nil {
		return res, err
	}
	res.RecoveryPoint = sel.Manifest.CreatedAt

	// Plan: what is there now, what replaces it, which hooks run.
	var (
		pg  *activities.Postgres
		svc *activities.Services
		wid = workflow.GetInfo(ctx).WorkflowExecution.ID
	)
	plan := TotalDBLossPlan{SetID: sel.Manifest.SetID, RecoveryPoint: sel.Manifest.CreatedAt, Verified: orNever(sel.Verified)}
	t.start(ctx, stepDBPlan)
	for _, db := range targets.Databases {
		i := slices.IndexFunc(sel.Manifest.Artifacts, func(a activities.Artifact) bool { return a.Kind == activities.KindPostgres && a.Source == db })
		if i < 0 {
			err := temporal.NewNonRetryableApplicationError(
				fmt.Sprintf("set %s holds no dump of database %q: pick a set that has it (setId) or leave it out (databases)", sel.Manifest.SetID, db),
				activities.ErrSetNotFound, nil)
			t.finish(ctx, stepDBPlan, "", err)
			return res, err
		}
		a := sel.Manifest.Artifacts[i]
		dp := DatabasePlan{Database: db, Target: db + in.TargetSuffix, Artifact: a}
		err := workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, metadataActivityOptions("inspect "+dp.Target)), pg.InspectDatabase,
			activities.InspectDatabaseInput{Database: dp.Target, CountTables: sortedKeys(a.RowCounts)}).Get(ctx, &dp.Live)
		if err != nil {
			t.finish(ctx, stepDBPlan, "", err)
			return res, fmt.Errorf("inspect %s: %w", dp.Target, err)
		}
		switch {
		case !dp.Live.Reachable:
			dp.Action = fmt.Sprintf("restore into %s (server unreachable now: %s)", dp.Target, dp.Live.Error)
			dp.SafetyCopy = "skipped: the server is unreachable"
		case !dp.Live.Exists:
			dp.Action = "create " + dp.Target + " from the set"
			dp.SafetyCopy = "skipped: " + dp.Target + " does not exist"
		default:
			dp.Action = fmt.Sprintf("replace %s (%d bytes, rows %v) with the set's data (rows %v)", dp.Target, dp.Live.SizeBytes, dp.Live.RowCounts, a.RowCounts)
			dp.SafetyCopy = activities.SafetyPostgresKey(wid, dp.Target)
		}
		plan.DownloadBytes += a.Size
		plan.Databases = append(plan.Databases, dp)
	}
	if !drill && !in.SkipServices {
		var order []activities.PlannedRestart
		if err := workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, metadataActivityOptions("restart order")), svc.RestartOrder).Get(ctx, &order); err != nil {
			t.finish(ctx, stepDBPlan, "", err)
			return res, fmt.Errorf("restart order: %w", err)
		}
		plan.Restart = plannedServices(order, dbServices...)
		plan.Stop = slices.Clone(plan.Restart)
		slices.Reverse(plan.Stop)
	}
	if !drill {
		plan.RebuildRedis = !in.SkipRedis && len(targets.Redis) > 0
	}
	plan.Actions = totalDBLossActions(plan)
	t.finish(ctx, stepDBPlan, strings.Join(plan.Actions, "; "), nil)
	res.Plan = plan

	ok, err := r.decide(ctx, plan, in.RecoveryOptions)
	if err != nil || !ok {
		res.RecoveryReport = r.report
		return res, err
	}

	// Safety copies of every live target, in parallel.
	t.start(ctx, stepDBSafety)
	var copies []SafetyCopy
	var futures []workflow.Future
	for _, dp := range plan.Databases {
		if !strings.HasPrefix(dp.SafetyCopy, activities.SafetyPrefix) {
			copies = append(copies, SafetyCopy{What: "database " + dp.Target, Skipped: strings.TrimPrefix(dp.SafetyCopy, "skipped: ")})
			continue
		}
		futures = append(futures, workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, backupActivityOptions("safety copy of "+dp.Target)), pg.Dump,
			activities.DumpInput{SetID: plan.SetID, Database: dp.Target, Key: dp.SafetyCopy, CountTables: sortedKeys(dp.Artifact.RowCounts)}))
		copies = append(copies, SafetyCopy{What: "database " + dp.Target, Key: dp.SafetyCopy})
	}
	var firstErr error
	fi := 0
	for i := range copies {
		if copies[i].Key == "" {
			continue
		}
		var a activities.Artifact
		if err := futures[fi].Get(ctx, &a); err != nil && firstErr == nil {
			firstErr = fmt.Errorf("safety copy of %s: %w", strings.TrimPrefix(copies[i].What, "database "), err)
		}
		fi++
		copies[i].Bytes = a.Size
	}
	r.report.SafetyCopies = append(r.report.SafetyCopies, copies...)
	t.finish(ctx, stepDBSafety, safetyDetail(copies), firstErr)
	if firstErr != nil {
		return res, firstErr
	}

	// Stop the services that write to the databases.
	switch {
	case drill:
		r.skip(ctx, stepDBStop, "drill (targetSuffix): services left alone")
	case in.SkipServices:
		r.skip(ctx, stepDBStop, "skipServices")
	default:
		t.start(ctx, stepDBStop)
		hooks, err := runHooks(ctx, targets, plan.Stop, "stop")
		res.Hooks = append(res.Hooks, hooks...)
		t.finish(ctx, stepDBStop, hookDetail(hooks), err)
		if err != nil {
			return res, err
		}
	}

	// Restore every database in parallel: each is downloaded, checked and restored into a
	// staging database, swapped in only once complete.
	restores := make([]workflow.Future, len(plan.Databases))
	for i, dp := range plan.Databases {
		t.start(ctx, stepDBRestoreP+dp.Database)
		restores[i] = workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, backupActivityOptions("restore "+dp.Target)), pg.RestoreDatabase,
			activities.RestoreDatabaseInput{SetID: plan.SetID, Artifact: dp.Artifact, Target: dp.Target, Jobs: in.Jobs, NoOwner: in.NoOwner})
	}
	res.Databases = make([]activities.RestoreDatabaseResult, len(plan.Databases))
	firstErr = nil
	for i, dp := range plan.Databases {
		err := restores[i].Get(ctx, &res.Databases[i])
		d := res.Databases[i]
		t.finish(ctx, stepDBRestoreP+dp.Database, fmt.Sprintf("%s restored: rows %v match the set; download %s, restore %s, analyze %s",
			d.Target, d.RowCounts, d.Download.Round(time.Millisecond), d.Restore.Round(time.Millisecond), d.Analyze.Round(time.Millisecond)), err)
		if err != nil && firstErr == nil {
			firstErr = fmt.Errorf("restore %s: %w", dp.Target, err)
		}
	}
	if firstErr != nil {
		return res, firstErr
	}

	if drill {
		r.skip(ctx, stepDBRestart, "drill (targetSuffix): services left alone")
		r.skip(ctx, stepDBRedis, "drill (targetSuffix): redis left alone")
		res.RecoveryReport = r.done(ctx)
		return res, nil
	}

	if in.SkipServices {
		r.skip(ctx, stepDBRestart, "skipServices")
	} else {
		t.start(ctx, stepDBRestart)
		hooks, err := runHooks(ctx, targets, plan.Restart, "restart", "health")
		res.Hooks = append(res.Hooks, hooks...)
		t.finish(ctx, stepDBRestart, hookDetail(hooks), err)
		if err != nil {
			return res, err
		}
	}

	if !plan.RebuildRedis {
		why := "skipRedis"
		if !in.SkipRedis {
			why = "no redis configured"
		}
		r.skip(ctx, stepDBRedis, why)
	} else {
		t.start(ctx, stepDBRedis)
		var rl RedisLossResult
		cctx := workflow.WithChildOptions(ctx, workflow.ChildWorkflowOptions{WorkflowID: wid + "-redis", StaticSummary: "rebuild redis from the restored databases"})
		err := workflow.ExecuteChildWorkflow(cctx, RedisLossName, RedisLossInput{Instance: targets.Redis[0], RecoveryOptions: RecoveryOptions{AutoApprove: true}}).Get(ctx, &rl)
		t.finish(ctx, stepDBRedis, fmt.Sprintf("%s: %d keys rebuilt, RTO %s", wid+"-redis", rl.Rebuild.Plan.Keys, rl.RTO.D().Round(time.Millisecond)), err)
		if err != nil {
			return res, fmt.Errorf("rebuild redis: %w", err)
		}
		res.Redis = &rl
		r.report.SafetyCopies = append(r.report.SafetyCopies, rl.SafetyCopies...)
	}
	res.RecoveryReport = r.done(ctx)
	return res, nil
}

// runHooks runs the actions of each planned service, service by service in order; it
// stops at the first failure of an action whose onError is "fail".
func runHooks(ctx workflow.Context, targets activities.Targets, order []activities.PlannedRestart, actions ...string) ([]activities.HookResult, error) {
	var out []activities.HookResult
	for _, p := range order {
		for _, action := range actions {
			h, err := runHook(ctx, targets, p.Service, action)
			if err != nil {
				return out, fmt.Errorf("%s %s: %w", action, p.Service, err)
			}
			if h.Configured {
				out = append(out, h)
			}
		}
	}
	return out, nil
}

func totalDBLossActions(p TotalDBLossPlan) []string {
	var a []string
	for _, d := range p.Databases {
		if strings.HasPrefix(d.SafetyCopy, activities.SafetyPrefix) {
			a = append(a, fmt.Sprintf("dump the live %s to %s", d.Target, d.SafetyCopy))
		}
	}
	for _, s := range p.Stop {
		a = append(a, "stop "+s.Service)
	}
	for _, d := range p.Databases {
		a = append(a, d.Action)
	}
	a = append(a, "ANALYZE each restored database")
	for _, s := range p.Restart {
		a = append(a, fmt.Sprintf("restart %s and wait until healthy (%s)", s.Service, s.Reason))
	}
	if p.RebuildRedis {
		a = append(a, "rebuild Redis from the restored databases (child RedisLoss)")
	}
	return a
}

func safetyDetail(copies []SafetyCopy) string {
	var parts []string
	for _, c := range copies {
		if c.Key == "" {
			parts = append(parts, c.What+": skipped ("+c.Skipped+")")
		} else {
			parts = append(parts, fmt.Sprintf("%s → %s (%d bytes)", c.What, c.Key, c.Bytes))
		}
	}
	return strings.Join(parts, "; ")
}
