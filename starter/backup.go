package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"

	"github.com/kohakku/drflow/internal/app"
	"github.com/kohakku/drflow/internal/config"
	"github.com/kohakku/drflow/internal/units"
	"github.com/kohakku/drflow/workflows"
)

// Schedule ids `schedule create` makes: the nightly backup, and with --drill the weekly drill.
const (
	DefaultScheduleID = "drflow-nightly-backup"
	DrillScheduleID   = "drflow-weekly-drill"
)

// runDrill starts VerifyBackup on demand: the same verification every nightly set gets,
// marked DrDrill so drills are easy to find in the Web UI.
func runDrill(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("drill", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c conn
	c.flags(fs)
	set := fs.String("set", "", "set id to verify (default: the newest complete set)")
	noRestore := fs.Bool("no-restore", false, "check checksums and structure only, restore nothing")
	sample := fs.Int("sample", 100, "mirrored objects per bucket to read back")
	wait := fs.Bool("wait", true, "wait, showing each step as it completes")
	if err := fs.Parse(args); err != nil {
		return err
	}
	restore := !*noRestore
	in, err := json.Marshal(workflows.VerifyBackupInput{SetID: *set, Restore: &restore, SampleObjects: *sample})
	if err != nil {
		return err
	}
	return startWorkflow(ctx, &c, workflows.VerifyBackupName, in, "drill-"+time.Now().UTC().Format("20060102T150405Z"), *wait, stdout)
}

func runBackup(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("backup", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c conn
	c.flags(fs)
	input := fs.String("input", "{}", "NightlyBackup input as JSON")
	wait := fs.Bool("wait", false, "wait, showing each step as it completes")
	if err := fs.Parse(args); err != nil {
		return err
	}
	return startWorkflow(ctx, &c, workflows.NightlyBackupName, []byte(*input), "", *wait, stdout)
}

// runBackups is `starter backups list`: the sets in the backup store.
func runBackups(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "list" {
		return errors.New("usage: starter backups list [--json]")
	}
	fs := flag.NewFlagSet("backups list", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "YAML config file (default $"+config.FileEnv+")")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *configPath == "" {
		*configPath = os.Getenv(config.FileEnv)
	}
	cfg, err := config.Load(*configPath, os.Getenv)
	if err != nil {
		return err
	}
	if err := cfg.Require(config.PartBackup); err != nil {
		return err
	}
	acts, err := app.New(ctx, cfg)
	if err != nil {
		return err
	}
	sets, err := acts.BackupStore.ListSets(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(sets)
	}
	if len(sets) == 0 {
		fmt.Fprintf(stdout, "no backup sets in %s\n", acts.BackupStore.Describe)
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SET\tSTATE\tVERIFIED\tSIZE\tFILES\tAGE")
	now := time.Now()
	for _, s := range sets {
		state := "complete"
		if !s.Complete {
			state = "incomplete"
		}
		verified := s.Verified
		if verified == "" {
			verified = "unverified"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", s.ID, state, verified, units.Bytes(s.Bytes), s.Objects, now.Sub(s.Time).Round(time.Minute))
	}
	return tw.Flush()
}

// runSchedule manages the Temporal Schedule that starts NightlyBackup.
func runSchedule(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New("usage: starter schedule create|describe|pause|unpause|trigger|delete [--id ID]")
	}
	sub := args[0]
	fs := flag.NewFlagSet("schedule "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c conn
	c.flags(fs)
	drill := fs.Bool("drill", false, "the weekly drill schedule (VerifyBackup) instead of the nightly backup")
	id := fs.String("id", "", "schedule id (default "+DefaultScheduleID+", with --drill "+DrillScheduleID+")")
	cron := fs.String("cron", "", "with create: when to run, cron in UTC (default daily 02:00; with --drill Sundays 04:00)")
	catchup := fs.Duration("catchup-window", 6*time.Hour, "with create: how late a missed run may still start (e.g. after an outage)")
	input := fs.String("input", "{}", "with create: the workflow input as JSON")
	note := fs.String("note", "", "with pause/unpause: why")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	typ, defID, defCron := workflows.NightlyBackupName, DefaultScheduleID, "0 2 * * *"
	if *drill {
		typ, defID, defCron = workflows.VerifyBackupName, DrillScheduleID, "0 4 * * 0"
	}
	if *id == "" {
		*id = defID
	}
	if *cron == "" {
		*cron = defCron
	}
	var in any
	if sub == "create" {
		var err error
		if in, err = decodeInput(typ, []byte(*input)); err != nil {
			return err
		}
		if strings.Count(strings.TrimSpace(*cron), " ") != 4 {
			return fmt.Errorf("--cron %q: want 5 fields (minute hour day month weekday), e.g. \"0 2 * * *\"", *cron)
		}
	}
	cl, err := c.dial(ctx)
	if err != nil {
		return err
	}
	defer cl.Close()
	sc := cl.ScheduleClient()
	h := sc.GetHandle(ctx, *id)
	switch sub {
	case "create":
		_, err = sc.Create(ctx, client.ScheduleOptions{
			ID:             *id,
			Spec:           client.ScheduleSpec{CronExpressions: []string{*cron}},
			Overlap:        enumspb.SCHEDULE_OVERLAP_POLICY_SKIP,
			CatchupWindow:  *catchup,
			PauseOnFailure: false,
			Note:           typ + ", created by starter",
			// The server turns cron into calendar specs; the memo keeps the text the
			// operator wrote, for describe.
			Memo: map[string]any{"cron": *cron},
			Action: &client.ScheduleWorkflowAction{
				ID:        strings.TrimPrefix(*id, "drflow-"),
				Workflow:  typ,
				Args:      []any{in},
				TaskQueue: c.cfg.Temporal.TaskQueue,
			},
		})
		if err != nil {
			return fmt.Errorf("create schedule %s: %w", *id, err)
		}
		fmt.Fprintf(stdout, "created schedule %s: %s (UTC), overlap skip, catch-up window %s\n", *id, *cron, *catchup)
	case "describe":
		d, err := h.Describe(ctx)
		if err != nil {
			return fmt.Errorf("describe schedule %s: %w", *id, err)
		}
		cronText := "(not set by starter)"
		if p, ok := d.Memo.GetFields()["cron"]; ok {
			_ = converter.GetDefaultDataConverter().FromPayload(p, &cronText)
		}
		fmt.Fprintf(stdout, "schedule %s\n  paused: %v %s\n  cron: %s (UTC)\n  next: ", *id, d.Schedule.State.Paused, d.Schedule.State.Note, cronText)
		for _, t := range d.Info.NextActionTimes {
			fmt.Fprintf(stdout, "%s ", t.UTC().Format(time.RFC3339))
		}
		fmt.Fprintf(stdout, "\n  runs: %d, missed (catch-up window): %d, skipped (overlap): %d\n", d.Info.NumActions, d.Info.NumActionsMissedCatchupWindow, d.Info.NumActionsSkippedOverlap)
		for _, r := range d.Info.RecentActions {
			fmt.Fprintf(stdout, "  recent: %s %s\n", r.ActualTime.UTC().Format(time.RFC3339), r.StartWorkflowResult.WorkflowID)
		}
	case "pause":
		err = h.Pause(ctx, client.SchedulePauseOptions{Note: *note})
	case "unpause":
		err = h.Unpause(ctx, client.ScheduleUnpauseOptions{Note: *note})
	case "trigger":
		err = h.Trigger(ctx, client.ScheduleTriggerOptions{Overlap: enumspb.SCHEDULE_OVERLAP_POLICY_SKIP})
	case "delete":
		err = h.Delete(ctx)
	default:
		return fmt.Errorf("unknown schedule command %q: create, describe, pause, unpause, trigger or delete", sub)
	}
	if err != nil {
		return fmt.Errorf("%s schedule %s: %w", sub, *id, err)
	}
	if done, ok := map[string]string{"pause": "paused", "unpause": "unpaused", "trigger": "triggered", "delete": "deleted"}[sub]; ok {
		fmt.Fprintf(stdout, "%s schedule %s\n", done, *id)
	}
	return nil
}
