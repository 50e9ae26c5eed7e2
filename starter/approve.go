package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"go.temporal.io/sdk/client"

	"github.com/kohakku/drflow/workflows"
)

// runPlan prints the plan a recovery runbook published.
func runPlan(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("plan", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c conn
	c.flags(fs)
	id, err := parseID("plan", fs, args)
	if err != nil {
		return err
	}
	cl, err := c.dial(ctx)
	if err != nil {
		return err
	}
	defer cl.Close()
	plan, err := queryPlan(ctx, cl, id)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s\n", plan)
	return nil
}

// runApprove and runReject send the approve / reject update to a waiting runbook, after
// showing its plan (and, on a terminal without --yes, asking for confirmation).
func runApprove(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return decide(ctx, workflows.ApproveUpdate, args, os.Stdin, stdout, stderr)
}

func runReject(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return decide(ctx, workflows.RejectUpdate, args, os.Stdin, stdout, stderr)
}

func decide(ctx context.Context, update string, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(update, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c conn
	c.flags(fs)
	by := fs.String("by", os.Getenv("USER"), "who decides (recorded in the run)")
	comment := fs.String("comment", "", "why (recorded in the run)")
	yes := fs.Bool("yes", false, "do not ask for confirmation on a terminal")
	id, err := parseID(update, fs, args)
	if err != nil {
		return err
	}
	cl, err := c.dial(ctx)
	if err != nil {
		return err
	}
	defer cl.Close()
	plan, err := queryPlan(ctx, cl, id)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "plan of %s:\n%s\n", id, plan)
	if !*yes && stdinIsTerminal(stdin) {
		fmt.Fprintf(stdout, "%s this plan? type %q to go on: ", update, update)
		line, _ := bufio.NewReader(stdin).ReadString('\n')
		if strings.TrimSpace(line) != update {
			return errors.New("not confirmed: nothing sent")
		}
	}
	h, err := cl.UpdateWorkflow(ctx, client.UpdateWorkflowOptions{
		WorkflowID:   id,
		UpdateName:   update,
		Args:         []any{workflows.Decision{By: *by, Comment: *comment}},
		WaitForStage: client.WorkflowUpdateStageCompleted,
	})
	if err != nil {
		return fmt.Errorf("%s %s: %w", update, id, err)
	}
	var st workflows.ApprovalState
	if err := h.Get(ctx, &st); err != nil {
		return fmt.Errorf("%s %s: %w", update, id, err)
	}
	fmt.Fprintf(stdout, "%s: %s by %s at %s\n", id, st.Status, orDash(st.By), st.DecidedAt.Format("2006-01-02T15:04:05Z07:00"))
	return nil
}

func parseID(cmd string, fs *flag.FlagSet, args []string) (string, error) {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return "", fmt.Errorf("%s: missing workflow id", cmd)
	}
	return args[0], fs.Parse(args[1:])
}

// queryPlan returns the published plan, indented.
func queryPlan(ctx context.Context, cl client.Client, id string) ([]byte, error) {
	v, err := cl.QueryWorkflow(ctx, id, "", workflows.PlanQuery)
	if err != nil {
		return nil, fmt.Errorf("plan of %s: %w", id, err)
	}
	var plan json.RawMessage
	if err := v.Get(&plan); err != nil {
		return nil, fmt.Errorf("plan of %s: %w", id, err)
	}
	return json.MarshalIndent(plan, "", "  ")
}

func stdinIsTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
