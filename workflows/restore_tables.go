package workflows

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/kohakku/drflow/activities"
)

// RestoreTablesName is the registered workflow type of RestoreTables.
const RestoreTablesName = "RestoreTables"

// Modes of RestoreTables, in RestoreTablesInput.Mode.
const (
	// TablesModeSide restores the set's tables into a side schema next to the
	// live ones and changes nothing live: no approval needed.
	TablesModeSide = "side"
	// TablesModeReplace replaces the live tables' rows with the set's, after
	// the approval and a safety copy.
	TablesModeReplace = "replace"
)

// OutcomeSideCopy is the Outcome of a RestoreTables run in side mode that went
// through: the set's tables are in the side schema, the live ones unchanged.
const OutcomeSideCopy = "side-copy"

// RestoreTablesInput says which tables of which database to restore from which
// set, and how. Only database and tables are required:
// `{"database": "kohakku-controller", "tables": ["tasks_task"]}` restores
// tasks_task from the newest verified set next to the live table.
type RestoreTablesInput struct {
	// SetID to restore from; "" = the newest verified set.
	SetID string `json:"setId,omitempty"`
	// Database holding the tables: one of the configured databases.
	Database string `json:"database"`
	// Tables to restore: "table" (schema public) or "schema.table", as stored.
	Tables []string `json:"tables"`
	// Mode is "side" (default: restore into a side schema, nothing live
	// changes) or "replace" (replace the live rows, after approval).
	Mode string `json:"mode,omitempty"`
	// AllowFailedVerification lets a named set that failed (or never ran) verification through.
	AllowFailedVerification bool `json:"allowFailedVerification,omitempty"`
	RecoveryOptions
}

func (in *RestoreTablesInput) normalize() error {
	if err := checkSetID(in.SetID); err != nil {
		return err
	}
	if in.Database == "" {
		return invalidInput("database", "empty: name the database that holds the tables, e.g. \"kohakku-controller\"")
	}
	if len(in.Tables) == 0 {
		return invalidInput("tables", "empty: name at least one table, e.g. [\"tasks_task\"]")
	}
	tables := make([]string, len(in.Tables))
	for i, name := range in.Tables {
		q, err := activities.QualifyTable(name)
		if err != nil {
			return invalidInput("tables", "%v", err)
		}
		if slices.Contains(tables[:i], q) {
			return invalidInput("tables", "%s is listed twice", q)
		}
		tables[i] = q
	}
	in.Tables = tables
	switch in.Mode {
	case "":
		in.Mode = TablesModeSide
	case TablesModeSide, TablesModeReplace:
	default:
		return invalidInput("mode", "%q: use \"side\" (restore next to the live tables, the default) or \"replace\" (replace the live rows, after approval)", in.Mode)
	}
	return in.RecoveryOptions.normalize()
}

// RestoreTablesPlan is what RestoreTables will do, published before it does anything.
type RestoreTablesPlan struct {
	// SetID is the set restored from.
	SetID string `json:"setId"`
	// RecoveryPoint is when the set was taken: the restored rows are as of then.
	RecoveryPoint time.Time `json:"recoveryPoint"`
	// Verified is the set's verification: "passed", "failed" or "never run".
	Verified string `json:"verified"`
	// Database and Mode as in the input.
	Database string `json:"database"`
	Mode     string `json:"mode"`
	// Key and DownloadBytes of the set's dump of Database.
	Key           string `json:"key"`
	DownloadBytes int64  `json:"downloadBytes"`
	// Tables with their live and set rows, columns and replace method.
	Tables []activities.TablePlan `json:"tables"`
	// ForeignKeys from or to the tables and what a replace would do to them.
	ForeignKeys []activities.ForeignKeyCheck `json:"foreignKeys,omitempty"`
	// Mismatches and Conflicts refuse a replace (ErrSchemaMismatch,
	// ErrForeignKeyConflict); in side mode they are for information.
	Mismatches []string `json:"mismatches,omitempty"`
	Conflicts  []string `json:"conflicts,omitempty"`
	// SideSchema receives the set's tables, in Database; drflow never drops it.
	SideSchema string `json:"sideSchema"`
	// SafetyCopy is the store key the live tables are dumped to before a
	// replace; "" in side mode.
	SafetyCopy string `json:"safetyCopy,omitempty"`
	// Actions in words, in order.
	Actions []string `json:"actions"`
}

// TableReport is what a RestoreTables run did to one table.
type TableReport struct {
	// Table is "schema.table"; SideCopy its copy of the set's rows.
	Table    string `json:"table"`
	SideCopy string `json:"sideCopy"`
	// SetRows in the set; RowsBefore live when the run planned (or, for a
	// replace, when its transaction began); RowsAfter live at the end.
	SetRows    int64 `json:"setRows"`
	RowsBefore int64 `json:"rowsBefore"`
	RowsAfter  int64 `json:"rowsAfter"`
	// Deleted, Updated and Inserted by a replace.
	Deleted  int64 `json:"deleted,omitempty"`
	Updated  int64 `json:"updated,omitempty"`
	Inserted int64 `json:"inserted,omitempty"`
	// OnlyLive and OnlySide compare live with the side copy at the end: rows
	// only the live table has, and rows only the set has.
	OnlyLive int64 `json:"onlyLive"`
	OnlySide int64 `json:"onlySide"`
}

// RestoreTablesResult reports a RestoreTables run.
type RestoreTablesResult struct {
	RecoveryReport
	// Plan as published before the run changed anything.
	Plan RestoreTablesPlan `json:"plan"`
	// RecoveryPoint is the set's time.
	RecoveryPoint time.Time `json:"recoveryPoint"`
	// Tables in input order.
	Tables []TableReport `json:"tables,omitempty"`
	// Side copies made, and the replace (nil in side mode).
	Side    *activities.TablesSideResult    `json:"side,omitempty"`
	Replace *activities.ReplaceTablesResult `json:"replace,omitempty"`
	// DropSideCopies is the statement, to run in the database, that removes
	// the side copies once they are no longer needed.
	DropSideCopies string `json:"dropSideCopies,omitempty"`
	// Warnings: what looked wrong but did not stop the run.
	Warnings []string `json:"warnings,omitempty"`
}

// Steps of RestoreTables (resolve targets, select set and approval are shared).
const (
	stepTablesPlan    = "plan"
	stepTablesSafety  = "safety copy"
	stepTablesSide    = "restore side copies"
	stepTablesReplace = "replace"
	stepTablesVerify  = "verify"
)

// tablesRunSuffix is the end of the run id that names this run's side schema
// and scratch database: unique per run, known to the workflow.
func tablesRunSuffix(ctx workflow.Context) string {
	run := strings.ReplaceAll(workflow.GetInfo(ctx).WorkflowExecution.RunID, "-", "")
	if len(run) > 12 {
		run = run[len(run)-12:]
	}
	return strings.ToLower(run)
}

func tableActivityOptions(summary string) workflow.ActivityOptions {
	return longActivityOptions(summary, 4)
}

// RestoreTables restores single tables of one database from a backup set, the
// newest verified one unless named (`pg_restore -t`, as a runbook). It plans
// first, changing nothing: the set's dump is downloaded and checked, the
// tables are looked up live and in the dump, their rows counted and columns
// compared, and every foreign key from or to them checked against the set's
// rows. In side mode (the default) the set's tables are then restored into a
// side schema of the live database, drflow_restore_<run>, for the operator to
// compare and copy rows back; nothing live changes, so no approval is needed
// (the plan is still published). In replace mode, a schema mismatch or a
// foreign key the replace would break refuses the run at the plan, naming
// them; otherwise it waits for approval, dumps the live tables to the safety
// area, restores the side copies and replaces the live rows with them in one
// transaction (data only, parents before children, sequences moved past the
// restored ids), then analyzes. Both modes end by comparing each live table
// with its side copy. Side copies are never dropped by drflow: the result says
// how.
func RestoreTables(ctx workflow.Context, in RestoreTablesInput) (RestoreTablesResult, error) {
	var res RestoreTablesResult
	if err := in.normalize(); err != nil {
		return res, err
	}
	replace := in.Mode == TablesModeReplace
	// Activity errors are returned as they are: each names the step, the
	// tables and the fix, and keeps its type at the top of the run's failure.
	r, err := startRecovery(ctx, RestoreTablesName, in.Database, stepResolve, stepSelect, stepTablesPlan, stepApproval,
		stepTablesSafety, stepTablesSide, stepTablesReplace, stepTablesVerify)
	if err != nil {
		return res, err
	}
	t := r.t
	if _, err := resolveTargets(ctx, t, activities.TargetsInput{Databases: []string{in.Database}}); err != nil {
		return res, err
	}
	sel, err := selectSet(ctx, t, in.SetID, in.AllowFailedVerification)
	if err != nil {
		return res, err
	}
	res.RecoveryPoint = sel.Manifest.CreatedAt

	var (
		pg      *activities.Postgres
		wid     = workflow.GetInfo(ctx).WorkflowExecution.ID
		suffix  = tablesRunSuffix(ctx)
		scratch = activities.ScratchPrefix + suffix + "_tables"
		tables  = strings.Join(in.Tables, ", ")
		used    bool // the scratch database may exist
	)
	// The activities drop the scratch database themselves; this is the safety
	// net for a worker that died in one, in a context that survives a
	// cancellation.
	defer func() {
		if !used {
			return
		}
		dctx, cancel := workflow.NewDisconnectedContext(ctx)
		defer cancel()
		dctx = workflow.WithActivityOptions(dctx, metadataActivityOptions("drop scratch database"))
		_ = workflow.ExecuteActivity(dctx, pg.DropScratch, activities.DropScratchInput{Database: scratch}).Get(dctx, nil)
	}()

	// Plan: what the set has, what is live, what a replace would break.
	t.start(ctx, stepTablesPlan)
	i := slices.IndexFunc(sel.Manifest.Artifacts, func(a activities.Artifact) bool {
		return a.Kind == activities.KindPostgres && a.Source == in.Database
	})
	if i < 0 {
		err := temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("set %s holds no dump of database %q: pick a set that has it (setId)", sel.Manifest.SetID, in.Database),
			activities.ErrSetNotFound, nil)
		t.finish(ctx, stepTablesPlan, "", err)
		return res, err
	}
	art := sel.Manifest.Artifacts[i]
	used = true
	var tp activities.TablesPlan
	err = workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, tableActivityOptions("plan restore of "+tables)), pg.PlanTableRestore,
		activities.PlanTableRestoreInput{SetID: sel.Manifest.SetID, Artifact: art, Database: in.Database, Tables: in.Tables, Scratch: scratch}).Get(ctx, &tp)
	if err != nil {
		t.finish(ctx, stepTablesPlan, "", err)
		return res, err
	}
	plan := RestoreTablesPlan{
		SetID: sel.Manifest.SetID, RecoveryPoint: sel.Manifest.CreatedAt, Verified: orNever(sel.Verified),
		Database: in.Database, Mode: in.Mode, Key: art.Key, DownloadBytes: art.Size,
		Tables: tp.Tables, ForeignKeys: tp.ForeignKeys, Mismatches: tp.Mismatches, Conflicts: tp.Conflicts,
		SideSchema: activities.SideSchemaPrefix + suffix,
	}
	if replace {
		plan.SafetyCopy = activities.SafetyTablesKey(wid, in.Database)
	}
	plan.Actions = restoreTablesActions(plan)
	res.Plan = plan
	if replace && len(plan.Mismatches)+len(plan.Conflicts) > 0 {
		// Refused before anything changes; the plan query still shows why.
		r.approval.publish(plan)
		typ, why := activities.ErrForeignKeyConflict, plan.Conflicts
		if len(plan.Mismatches) > 0 {
			typ, why = activities.ErrSchemaMismatch, append(slices.Clone(plan.Mismatches), plan.Conflicts...)
		}
		err := temporal.NewNonRetryableApplicationError(fmt.Sprintf("replace of %s in %q refused, nothing was changed: %s",
			tables, in.Database, strings.Join(why, "; ")), typ, nil)
		t.finish(ctx, stepTablesPlan, "", err)
		return res, err
	}
	t.finish(ctx, stepTablesPlan, tablesPlanDetail(plan), nil)

	// Approval: only a replace changes anything live.
	if replace || in.DryRun {
		ok, err := r.decide(ctx, plan, in.RecoveryOptions)
		if err != nil || !ok {
			res.RecoveryReport = r.report
			return res, err
		}
	} else {
		r.approval.publish(plan)
		// "not needed" is what a dry run shows too: side mode changes nothing live.
		r.approval.state = ApprovalState{Status: ApprovalNotNeeded}
		r.report.Approval = r.approval.state
		r.skip(ctx, stepApproval, "not needed: side mode changes nothing live")
		r.approved = workflow.Now(ctx)
	}

	// Safety copy of the live tables a replace overwrites.
	if !replace {
		r.skip(ctx, stepTablesSafety, "side mode: nothing live is overwritten")
	} else {
		t.start(ctx, stepTablesSafety)
		var a activities.Artifact
		err := workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, backupActivityOptions("safety copy of "+tables)), pg.Dump,
			activities.DumpInput{SetID: plan.SetID, Database: in.Database, Key: plan.SafetyCopy, Tables: in.Tables, CountTables: in.Tables}).Get(ctx, &a)
		c := SafetyCopy{What: "tables " + tables + " of " + in.Database, Key: plan.SafetyCopy, Bytes: a.Size}
		for _, name := range sortedKeys(a.RowCounts) {
			c.Count += a.RowCounts[name]
		}
		if err == nil {
			r.report.SafetyCopies = append(r.report.SafetyCopies, c)
		}
		t.finish(ctx, stepTablesSafety, safetyDetail([]SafetyCopy{c}), err)
		if err != nil {
			return res, err
		}
	}

	// The side copies: the set's rows, next to the live tables.
	t.start(ctx, stepTablesSide)
	var side activities.TablesSideResult
	err = workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, tableActivityOptions("restore "+tables+" into "+plan.SideSchema)), pg.RestoreTablesSide,
		activities.RestoreTablesSideInput{SetID: plan.SetID, Artifact: art, Database: in.Database, Tables: in.Tables, Scratch: scratch, SideSchema: plan.SideSchema}).Get(ctx, &side)
	var parts []string
	for _, s := range side.Tables {
		parts = append(parts, fmt.Sprintf("%s: %d rows", s.Side, s.Rows))
	}
	t.finish(ctx, stepTablesSide, strings.Join(parts, "; "), err)
	if err != nil {
		return res, err
	}
	res.Side, res.DropSideCopies = &side, side.Drop

	if !replace {
		r.skip(ctx, stepTablesReplace, "side mode: the live tables are left alone")
	} else {
		t.start(ctx, stepTablesReplace)
		var rep activities.ReplaceTablesResult
		err := workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, tableActivityOptions("replace "+tables)), pg.ReplaceTables,
			activities.ReplaceTablesInput{Database: in.Database, Tables: in.Tables, SideSchema: plan.SideSchema}).Get(ctx, &rep)
		parts = nil
		for _, tr := range rep.Tables {
			parts = append(parts, fmt.Sprintf("%s: %d → %d rows (%d deleted, %d updated, %d inserted)", tr.Table, tr.Before, tr.After, tr.Deleted, tr.Updated, tr.Inserted))
		}
		detail := strings.Join(parts, "; ")
		if err == nil {
			detail += fmt.Sprintf("; transaction %s, analyze %s", rep.Replace.Round(time.Millisecond), rep.Analyze.Round(time.Millisecond))
		}
		t.finish(ctx, stepTablesReplace, detail, err)
		if err != nil {
			return res, err
		}
		res.Replace = &rep
	}

	// Verify: each live table against its side copy.
	t.start(ctx, stepTablesVerify)
	var cmp activities.CompareTablesResult
	err = workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, tableActivityOptions("compare "+tables)), pg.CompareTables,
		activities.CompareTablesInput{Database: in.Database, Tables: in.Tables, SideSchema: plan.SideSchema}).Get(ctx, &cmp)
	if err != nil {
		t.finish(ctx, stepTablesVerify, "", err)
		return res, err
	}
	parts = nil
	for i, c := range cmp.Tables {
		tr := TableReport{Table: c.Table, SideCopy: c.Side, SetRows: c.SideRows, RowsAfter: c.LiveRows, OnlyLive: c.OnlyLive, OnlySide: c.OnlySide}
		if i < len(plan.Tables) {
			tr.RowsBefore = plan.Tables[i].LiveRows
		}
		if res.Replace != nil && i < len(res.Replace.Tables) {
			rt := res.Replace.Tables[i]
			tr.RowsBefore, tr.Deleted, tr.Updated, tr.Inserted = rt.Before, rt.Deleted, rt.Updated, rt.Inserted
			if c.OnlyLive+c.OnlySide > 0 {
				res.Warnings = append(res.Warnings, fmt.Sprintf("%s differs from the set again after the replace (%d rows only live, %d only in the set): written since the commit?",
					c.Table, c.OnlyLive, c.OnlySide))
			}
		}
		res.Tables = append(res.Tables, tr)
		parts = append(parts, fmt.Sprintf("%s: %d rows live, %d in %s; %d only live, %d only in the set", c.Table, c.LiveRows, c.SideRows, c.Side, c.OnlyLive, c.OnlySide))
	}
	t.finish(ctx, stepTablesVerify, strings.Join(parts, "; "), nil)

	res.RecoveryReport = r.done(ctx)
	if !replace {
		res.Outcome = OutcomeSideCopy
		workflow.SetCurrentDetails(ctx, fmt.Sprintf("**%s**: the set's %s are in schema %s of %s; the live tables are unchanged. Drop the copies with `%s`",
			RestoreTablesName, tables, plan.SideSchema, in.Database, side.Drop))
	}
	return res, nil
}

func tablesPlanDetail(p RestoreTablesPlan) string {
	var parts []string
	for _, tp := range p.Tables {
		s := fmt.Sprintf("%s: %d rows live, %d in the set", tp.Table, tp.LiveRows, tp.SetRows)
		if !tp.ColumnsMatch {
			s += ", columns differ"
		}
		parts = append(parts, s)
	}
	if n := len(p.Mismatches) + len(p.Conflicts); n > 0 {
		parts = append(parts, fmt.Sprintf("%d reasons a replace would be refused (see the plan)", n))
	}
	return strings.Join(parts, "; ")
}

func restoreTablesActions(p RestoreTablesPlan) []string {
	tables := make([]string, len(p.Tables))
	for i, tp := range p.Tables {
		tables[i] = tp.Table
	}
	list := strings.Join(tables, ", ")
	var a []string
	if p.Mode == TablesModeReplace {
		a = append(a, fmt.Sprintf("dump the live %s to %s (pg_dump -t)", list, p.SafetyCopy))
	}
	a = append(a, fmt.Sprintf("restore %s from set %s into schema %s of %s, next to the live tables (kept afterwards: drop it yourself)", list, p.SetID, p.SideSchema, p.Database))
	if p.Mode == TablesModeReplace {
		for _, tp := range p.Tables {
			a = append(a, fmt.Sprintf("replace the rows of %s (%d live) with the set's (%d): %s", tp.Table, tp.LiveRows, tp.SetRows, tp.Method))
		}
		a = append(a, "all in one transaction holding EXCLUSIVE locks (reads go on, writes wait); move owned sequences past the restored ids; ANALYZE")
	}
	a = append(a, "compare each live table with its side copy")
	return a
}
