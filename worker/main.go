// Command worker runs drflow's workflows and activities.
//
//	worker [--dev] [--config file] [flags]
//
// Without --dev it connects to the Temporal cluster from the configuration (TEMPORAL_*).
// With --dev it first starts an embedded, persistent Temporal server and the Web UI in the
// same process (state under --state-dir), then the worker. Either way it serves /healthz
// and /metrics on --http-addr.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/kohakku/drflow/internal/config"
)

func main() {
	if err := run(os.Args[1:], os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "worker:", err)
		}
		os.Exit(2)
	}
}

// options are the worker's own flags; everything else comes from config.
type options struct {
	dev        bool
	noUI       bool
	configPath string
	// backupInterval is the nightly schedule's interval; /health calls a source stale
	// when its last backup is older than twice this.
	backupInterval time.Duration
}

func run(args []string, stderr io.Writer) error {
	var opts options
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.BoolVar(&opts.dev, "dev", false, "start an embedded persistent Temporal server and Web UI in this process")
	fs.BoolVar(&opts.noUI, "no-ui", false, "with --dev: do not start the Web UI")
	fs.StringVar(&opts.configPath, "config", "", "YAML config file (default $"+config.FileEnv+")")
	fs.DurationVar(&opts.backupInterval, "backup-interval", 24*time.Hour, "interval of the backup schedule; /health reports a source stale after twice this")
	overrides := map[string]*string{}
	for flagName, setting := range map[string]string{
		"state-dir":     "DRFLOW_STATE_DIR",
		"dev-grpc-addr": "DRFLOW_DEV_GRPC_ADDR",
		"ui-addr":       "DRFLOW_DEV_UI_ADDR",
		"http-addr":     "DRFLOW_HTTP_ADDR",
		"task-queue":    "DRFLOW_TASK_QUEUE",
		"log-level":     "DRFLOW_LOG_LEVEL",
	} {
		overrides[setting] = fs.String(flagName, "", "overrides $"+setting)
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (see worker --help)", fs.Arg(0))
	}
	if opts.configPath == "" {
		opts.configPath = os.Getenv(config.FileEnv)
	}
	cfg, err := config.Load(opts.configPath, os.Getenv)
	if err != nil {
		return err
	}
	for setting, v := range overrides {
		if *v != "" {
			if err := cfg.Set(setting, *v); err != nil {
				return err
			}
		}
	}

	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: cfg.Worker.LogLevel}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return serve(ctx, cfg, opts, logger)
}
