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

	"go.temporal.io/sdk/client"

	"github.com/kohakku/drflow/internal/config"
	"github.com/kohakku/drflow/workflows"
)

// conn holds the flags every Temporal-facing command shares.
type conn struct {
	configPath string
	cfg        *config.Config
}

func (c *conn) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.configPath, "config", "", "YAML config file (default $"+config.FileEnv+")")
}

func (c *conn) dial(ctx context.Context) (client.Client, error) {
	if c.configPath == "" {
		c.configPath = os.Getenv(config.FileEnv)
	}
	cfg, err := config.Load(c.configPath, os.Getenv)
	if err != nil {
		return nil, err
	}
	c.cfg = cfg
	opts, err := cfg.TemporalClientOptions()
	if err != nil {
		return nil, err
	}
	opts.Logger = quietLogger()
	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	cl, err := client.DialContext(dctx, opts)
	if err != nil {
		return nil, fmt.Errorf("connect to temporal at %s (TEMPORAL_ADDRESS): %w", opts.HostPort, err)
	}
	return cl, nil
}

func runSelfCheck(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("selfcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c conn
	c.flags(fs)
	steps := fs.Int("steps", 10, "heartbeated steps")
	interval := fs.Duration("step-interval", time.Second, "pause between steps")
	wait := fs.Bool("wait", true, "wait for the result, showing progress")
	if err := fs.Parse(args); err != nil {
		return err
	}
	in, err := json.Marshal(workflows.SelfCheckInput{Steps: *steps, StepInterval: workflows.Duration(*interval)})
	if err != nil {
		return err
	}
	return startWorkflow(ctx, &c, workflows.SelfCheckName, in, "", *wait, stdout)
}

func runStart(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("start", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c conn
	c.flags(fs)
	input := fs.String("input", "{}", "workflow input as JSON")
	id := fs.String("id", "", "workflow id (default: <type>-<UTC time>)")
	wait := fs.Bool("wait", false, "wait for the result, showing progress")
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return fmt.Errorf("start: missing workflow type; one of: %s", typeNames())
	}
	typ := args[0]
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	return startWorkflow(ctx, &c, typ, []byte(*input), *id, *wait, stdout)
}

func typeNames() string {
	var names []string
	for _, d := range workflows.All() {
		names = append(names, d.Name)
	}
	return strings.Join(names, ", ")
}

// decodeInput checks raw against the workflow's input type and JSON Schema, as the worker
// will, before anything is started, so a typo fails here with the field named and the
// fix, instead of in the workflow.
func decodeInput(typ string, raw []byte) (any, error) {
	if _, ok := workflows.Lookup(typ); !ok {
		return nil, fmt.Errorf("unknown workflow type %q; one of: %s", typ, typeNames())
	}
	in, err := workflows.CheckInput(typ, raw)
	if err != nil {
		return nil, fmt.Errorf("input for %s: %w", typ, err)
	}
	return in, nil
}

func startWorkflow(ctx context.Context, c *conn, typ string, raw []byte, id string, wait bool, stdout io.Writer) error {
	in, err := decodeInput(typ, raw)
	if err != nil {
		return err
	}
	cl, err := c.dial(ctx)
	if err != nil {
		return err
	}
	defer cl.Close()
	if id == "" {
		id = strings.ToLower(typ) + "-" + time.Now().UTC().Format("20060102T150405Z")
	}
	run, err := cl.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID:        id,
		TaskQueue: c.cfg.Temporal.TaskQueue,
	}, typ, in)
	if err != nil {
		return fmt.Errorf("start %s: %w", typ, err)
	}
	fmt.Fprintf(stdout, "started %s  workflow id %s  run id %s\n", typ, run.GetID(), run.GetRunID())
	if !wait {
		return nil
	}
	return follow(ctx, cl, run, stdout)
}

// follow prints each step as its status changes until the run ends, then the result.
func follow(ctx context.Context, cl client.Client, run client.WorkflowRun, stdout io.Writer) error {
	done := make(chan error, 1)
	var result json.RawMessage
	go func() { done <- run.Get(ctx, &result) }()
	seen := map[string]workflows.StepStatus{}
	show := func() {
		p, err := queryProgress(ctx, cl, run.GetID())
		if err != nil {
			return
		}
		for _, s := range p.Steps {
			if seen[s.Name] == s.Status {
				continue
			}
			seen[s.Name] = s.Status
			line := fmt.Sprintf("  %-9s %s", s.Status, s.Name)
			if !s.FinishedAt.IsZero() && !s.StartedAt.IsZero() {
				line += fmt.Sprintf(" (%s)", s.FinishedAt.Sub(s.StartedAt).Round(10*time.Millisecond))
			}
			if s.Detail != "" && s.Status != workflows.StepRunning {
				line += ": " + s.Detail
			}
			fmt.Fprintln(stdout, line)
		}
	}
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			show()
			if err != nil {
				return fmt.Errorf("%s failed: %w", run.GetID(), err)
			}
			fmt.Fprintf(stdout, "result: %s\n", result)
			return nil
		case <-tick.C:
			show()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func queryProgress(ctx context.Context, cl client.Client, id string) (workflows.Progress, error) {
	var p workflows.Progress
	v, err := cl.QueryWorkflow(ctx, id, "", workflows.ProgressQuery)
	if err != nil {
		return p, err
	}
	return p, v.Get(&p)
}

func runProgress(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("progress", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c conn
	c.flags(fs)
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return errors.New("progress: missing workflow id")
	}
	id := args[0]
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	cl, err := c.dial(ctx)
	if err != nil {
		return err
	}
	defer cl.Close()
	p, err := queryProgress(ctx, cl, id)
	if err != nil {
		return fmt.Errorf("progress of %s: %w", id, err)
	}
	fmt.Fprintf(stdout, "%s  %s\n", p.Runbook, id)
	tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STEP\tSTATUS\tTOOK\tDETAIL")
	for _, s := range p.Steps {
		took := ""
		if !s.StartedAt.IsZero() && !s.FinishedAt.IsZero() {
			took = s.FinishedAt.Sub(s.StartedAt).Round(10 * time.Millisecond).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Name, s.Status, took, s.Detail)
	}
	return tw.Flush()
}
