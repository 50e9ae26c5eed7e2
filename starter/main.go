// Command starter is drflow's operator CLI: it starts runbooks, watches their progress and
// runs the local demo.
//
//	starter selfcheck [--steps N] [--wait]        prove a worker deployment end to end
//	starter start TYPE [--input JSON] [--wait]    start any runbook by its workflow type
//	starter progress WORKFLOW_ID                  show a run's steps
//	starter plan WORKFLOW_ID                      show a recovery runbook's plan
//	starter approve|reject WORKFLOW_ID            decide on a waiting recovery runbook
//	starter backup [--wait]                       start a NightlyBackup now
//	starter backups list                          sets in the backup store
//	starter drill [--set ID]                      VerifyBackup now (a DR drill)
//	starter restore-tables --database DB --table T  restore tables from a set, side by side or in place
//	starter schedule create|describe|pause|unpause|trigger|delete
//	starter demo [--keep]                         local stack + worker --dev + Web UI
//
// Connection settings come from the same configuration as the worker (TEMPORAL_*,
// DRFLOW_*, --config); see docs/configuration.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "starter:", err)
		os.Exit(1)
	}
}

type command struct {
	name, usage, summary string
	run                  func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"selfcheck", "[--steps N] [--step-interval D] [--wait]", "prove a worker deployment: heartbeats, retries, resume", runSelfCheck},
		{"start", "TYPE [--input JSON] [--id ID] [--wait]", "start a runbook by workflow type", runStart},
		{"progress", "WORKFLOW_ID", "show the steps of a run", runProgress},
		{"plan", "WORKFLOW_ID", "show the plan a recovery runbook published", runPlan},
		{"approve", "WORKFLOW_ID [--by NAME] [--comment TEXT] [--yes]", "let a waiting recovery runbook go ahead", runApprove},
		{"reject", "WORKFLOW_ID [--by NAME] [--comment TEXT] [--yes]", "end a waiting recovery runbook, nothing changed", runReject},
		{"backup", "[--input JSON] [--wait]", "start a NightlyBackup now", runBackup},
		{"backups", "list [--json]", "list the sets in the backup store", runBackups},
		{"drill", "[--set ID] [--no-restore] [--wait]", "verify a set now: restore into scratch targets, measure RTO", runDrill},
		{"restore-tables", "--database DB --table T [--mode side|replace] [flags]", "restore tables from a set, side by side or in place", runRestoreTables},
		{"schedule", "create|describe|pause|unpause|trigger|delete", "manage the nightly backup schedule", runSchedule},
		{"demo", "[--keep] [--tasks N]", "bring up a local stack with worker --dev and the Web UI", runDemo},
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(stderr)
		if len(args) == 0 {
			return errors.New("missing command")
		}
		return nil
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(ctx, args[1:], stdout, stderr)
		}
	}
	usage(stderr)
	return fmt.Errorf("unknown command %q", args[0])
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: starter COMMAND [flags]")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-10s %-40s %s\n", c.name, c.usage, c.summary)
	}
	fmt.Fprintln(w, "Every command takes --config FILE; connection settings come from TEMPORAL_* and DRFLOW_*.")
}
