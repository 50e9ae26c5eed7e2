package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/kohakku/drflow/workflows"
)

// tableFlags collects the repeated --table flag.
type tableFlags []string

func (f *tableFlags) String() string { return strings.Join(*f, ",") }

// Set adds one table.
func (f *tableFlags) Set(s string) error {
	if s == "" {
		return errors.New("empty table name")
	}
	*f = append(*f, s)
	return nil
}

// runRestoreTables starts RestoreTables for the tables named by flags: the same run as
// `starter start RestoreTables --input '{…}'`, with the input built from flags.
func runRestoreTables(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("restore-tables", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c conn
	c.flags(fs)
	var tables tableFlags
	database := fs.String("database", "", "database holding the tables, e.g. kohakku-controller (required)")
	fs.Var(&tables, "table", `table to restore: "table" (schema public) or "schema.table"; repeat for more (required)`)
	mode := fs.String("mode", workflows.TablesModeSide, `"side": restore next to the live tables, nothing live changes; "replace": replace the live rows, after approval`)
	set := fs.String("set", "", "set id to restore from (default: the newest verified set)")
	dryRun := fs.Bool("dry-run", false, "plan only: change nothing")
	autoApprove := fs.Bool("auto-approve", false, "replace without waiting for approval")
	approvalTimeout := fs.Duration("approval-timeout", 0, "how long a replace waits for approve or reject (default 4h)")
	allowFailed := fs.Bool("allow-failed-verification", false, "accept a named set that failed or never ran verification")
	id := fs.String("id", "", "workflow id (default: restoretables-<UTC time>)")
	wait := fs.Bool("wait", false, "wait for the result, showing progress")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("restore-tables: unexpected argument %q: name tables with --table", fs.Arg(0))
	}
	if *database == "" {
		return errors.New("restore-tables: --database is required, e.g. --database kohakku-controller")
	}
	if len(tables) == 0 {
		return errors.New("restore-tables: name at least one table with --table, e.g. --table tasks_task")
	}
	if *mode != workflows.TablesModeSide && *mode != workflows.TablesModeReplace {
		return fmt.Errorf("restore-tables: --mode %q: use side (restore next to the live tables) or replace (replace the live rows, after approval)", *mode)
	}
	in := workflows.RestoreTablesInput{
		SetID: *set, Database: *database, Tables: tables, Mode: *mode, AllowFailedVerification: *allowFailed,
		RecoveryOptions: workflows.RecoveryOptions{DryRun: *dryRun, AutoApprove: *autoApprove, ApprovalTimeout: workflows.Duration(*approvalTimeout)},
	}
	raw, err := json.Marshal(in)
	if err != nil {
		return err
	}
	if *id == "" {
		*id = "restoretables-" + time.Now().UTC().Format("20060102T150405Z")
	}
	return startWorkflow(ctx, &c, workflows.RestoreTablesName, raw, *id, *wait, stdout)
}
