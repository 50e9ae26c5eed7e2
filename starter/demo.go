package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"go.temporal.io/sdk/client"

	"github.com/kohakku/drflow/internal/kohakku"
	"github.com/kohakku/drflow/internal/stack"
	"github.com/kohakku/drflow/internal/units"
	"github.com/kohakku/drflow/schemas"
	"github.com/kohakku/drflow/workflows"
)

// demoBackupBucket is the bucket on the second MinIO that plays the S3 backup store.
const demoBackupBucket = "drflow-backups"

type demoOptions struct {
	keep      bool
	tasks     int
	workerBin string
	grpcAddr  string
	uiAddr    string
}

// runDemo brings up the whole local stack, seeds it, starts `worker --dev` against it and
// proves the worker with a SelfCheck run. With --keep it stays up until Ctrl-C.
func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o demoOptions
	fs.BoolVar(&o.keep, "keep", false, "leave everything running until Ctrl-C")
	fs.IntVar(&o.tasks, "tasks", 1000, "Kohakku tasks to seed")
	fs.StringVar(&o.workerBin, "worker-bin", "", "worker binary (default: bin/worker, built when missing)")
	fs.StringVar(&o.grpcAddr, "grpc-addr", "127.0.0.1:7233", "embedded Temporal frontend (a free port is used if taken)")
	fs.StringVar(&o.uiAddr, "ui-addr", "127.0.0.1:8233", "Web UI (a free port is used if taken)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.tasks < 1 {
		return fmt.Errorf("--tasks must be at least 1, got %d", o.tasks)
	}
	d := &demo{opts: o, out: stdout, started: time.Now()}
	defer d.cleanup()
	if err := d.run(ctx); err != nil {
		if d.workerLog != "" {
			fmt.Fprintf(stdout, "worker log: %s\n", d.workerLog)
		}
		return err
	}
	return nil
}

type demo struct {
	opts      demoOptions
	out       io.Writer
	started   time.Time
	st        *stack.Stack
	worker    *exec.Cmd
	workerLog string
	closers   []func()
	summary   kohakku.Summary
	grpcAddr  string
	uiAddr    string
	httpAddr  string
	selfCheck workflows.SelfCheckResult
	runID     string
	backup    workflows.NightlyBackupResult
	backupID  string
}

// step runs fn as one line of the live step list.
func (d *demo) step(name string, fn func() (string, error)) error {
	if isTerminal(d.out) {
		fmt.Fprintf(d.out, "  …  %s", name)
	}
	start := time.Now()
	detail, err := fn()
	took := time.Since(start).Round(10 * time.Millisecond)
	if err != nil {
		fmt.Fprintf(d.out, "\r  ✗  %s (%s)\n", name, took)
		return fmt.Errorf("%s: %w", name, err)
	}
	if detail != "" {
		detail = ": " + detail
	}
	fmt.Fprintf(d.out, "\r  ✓  %s%s (%s)\n", name, detail, took)
	return nil
}

func (d *demo) run(ctx context.Context) error {
	fmt.Fprintln(d.out, "drflow demo: local stack, worker --dev and the Temporal Web UI")
	steps := []struct {
		name string
		fn   func(context.Context) (string, error)
	}{
		{"start PostgreSQL, Redis, MinIO (app) and MinIO (backup store)", d.startStack},
		{"seed the Kohakku dataset", d.seed},
		{"start worker --dev (embedded Temporal + Web UI)", d.startWorker},
		{"run the SelfCheck workflow", d.runSelfCheck},
		{"run NightlyBackup: dump, RDB, mirror, manifest", d.runBackup},
	}
	for _, s := range steps {
		if err := d.step(s.name, func() (string, error) { return s.fn(ctx) }); err != nil {
			return err
		}
	}
	d.printSummary()
	if !d.opts.keep {
		fmt.Fprintln(d.out, "stopping everything (use --keep to explore)")
		return nil
	}
	fmt.Fprintln(d.out, "everything stays up until Ctrl-C")
	<-ctx.Done()
	fmt.Fprintln(d.out, "\nstopping everything")
	return nil
}

func (d *demo) startStack(ctx context.Context) (string, error) {
	dir, err := os.MkdirTemp("", "drflow-demo-")
	if err != nil {
		return "", err
	}
	st, err := stack.Start(ctx, stack.Options{Dir: dir})
	if err != nil {
		_ = os.RemoveAll(dir)
		var missing *stack.MissingBinaryError
		if errors.As(err, &missing) {
			return "", fmt.Errorf("%s is missing: install %s", missing.Program, missing.Install)
		}
		return "", err
	}
	d.st = st
	d.closers = append(d.closers, func() { _ = st.Close(); _ = os.RemoveAll(dir) })
	for _, db := range []string{schemas.ControllerDB, schemas.DispatcherDB} {
		if err := st.Postgres.CreateDatabase(ctx, db); err != nil {
			return "", err
		}
	}
	if err := st.MinIO.MakeBucket(ctx, schemas.DefaultBucket); err != nil {
		return "", err
	}
	if err := st.Backup.MakeBucket(ctx, demoBackupBucket); err != nil {
		return "", err
	}
	return fmt.Sprintf("in %s", dir), nil
}

func (d *demo) target(ctx context.Context) (kohakku.Target, func(), error) {
	var t kohakku.Target
	ctrl, err := pgxpool.New(ctx, d.st.Postgres.URL(schemas.ControllerDB))
	if err != nil {
		return t, nil, err
	}
	disp, err := pgxpool.New(ctx, d.st.Postgres.URL(schemas.DispatcherDB))
	if err != nil {
		ctrl.Close()
		return t, nil, err
	}
	objects, err := d.st.MinIO.Client()
	if err != nil {
		ctrl.Close()
		disp.Close()
		return t, nil, err
	}
	rdb := redis.NewClient(&redis.Options{Addr: d.st.Redis.Addr()})
	t = kohakku.Target{Controller: ctrl, Dispatcher: disp, Redis: rdb, Objects: objects, Bucket: schemas.DefaultBucket}
	return t, func() { ctrl.Close(); disp.Close(); _ = rdb.Close() }, nil
}

func (d *demo) seed(ctx context.Context) (string, error) {
	t, closeAll, err := d.target(ctx)
	if err != nil {
		return "", err
	}
	defer closeAll()
	if err := kohakku.ApplySchemas(ctx, t); err != nil {
		return "", err
	}
	d.summary, err = kohakku.Seed(ctx, t, kohakku.SeedOptions{Tasks: d.opts.tasks, Seed: 1})
	if err != nil {
		return "", err
	}
	s := d.summary
	return fmt.Sprintf("%d tasks (%d pending, %d in flight), %d objects, %d Redis keys",
		s.Tasks, s.ByStatus[schemas.StatusPending],
		s.ByStatus[schemas.StatusDispatched]+s.ByStatus[schemas.StatusRunning],
		s.Objects, s.PendingQueued+s.TaskHashes+s.LiveContainers), nil
}

// workerBinary returns the worker to run: --worker-bin, bin/worker, or a fresh build.
func (d *demo) workerBinary(ctx context.Context) (string, error) {
	if d.opts.workerBin != "" {
		return d.opts.workerBin, nil
	}
	if _, err := os.Stat(filepath.Join("bin", "worker")); err == nil {
		return filepath.Abs(filepath.Join("bin", "worker"))
	}
	out := filepath.Join(d.st.Dir, "worker")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./worker")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build worker (run from the repository root or pass --worker-bin): %v\n%s", err, b)
	}
	return out, nil
}

// isTerminal reports whether w is a terminal, where a step line is redrawn in place.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// addrOrFree returns addr when it can be bound, else a free port on the same host.
func addrOrFree(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	if port != "0" {
		if l, err := net.Listen("tcp", addr); err == nil {
			_ = l.Close()
			return addr, nil
		}
	}
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func (d *demo) startWorker(ctx context.Context) (string, error) {
	bin, err := d.workerBinary(ctx)
	if err != nil {
		return "", err
	}
	if d.grpcAddr, err = addrOrFree(d.opts.grpcAddr); err != nil {
		return "", err
	}
	if d.uiAddr, err = addrOrFree(d.opts.uiAddr); err != nil {
		return "", err
	}
	if d.httpAddr, err = addrOrFree("127.0.0.1:0"); err != nil {
		return "", err
	}
	d.workerLog = filepath.Join(d.st.Dir, "worker.log")
	logf, err := os.Create(d.workerLog)
	if err != nil {
		return "", err
	}
	st := d.st
	cmd := exec.Command(bin, "--dev",
		"--state-dir", filepath.Join(st.Dir, "temporal"),
		"--dev-grpc-addr", d.grpcAddr, "--ui-addr", d.uiAddr, "--http-addr", d.httpAddr)
	cmd.Env = append(os.Environ(),
		"DRFLOW_CONFIG=",
		"TEMPORAL_ADDRESS=", "TEMPORAL_NAMESPACE=default",
		"DRFLOW_POSTGRES_URL="+st.Postgres.URL(""),
		"DRFLOW_REDIS_ADDR="+st.Redis.Addr(),
		"DRFLOW_MINIO_ENDPOINT="+st.MinIO.Endpoint(),
		"DRFLOW_MINIO_ACCESS_KEY="+st.MinIO.AccessKey(),
		"DRFLOW_MINIO_SECRET_KEY="+st.MinIO.SecretKey(),
		"S3_BUCKET="+demoBackupBucket,
		"S3_ENDPOINT="+st.Backup.URL(),
		"S3_REGION="+st.Backup.Region(),
		"S3_ACCESS_KEY_ID="+st.Backup.AccessKey(),
		"S3_SECRET_ACCESS_KEY="+st.Backup.SecretKey(),
		"S3_FORCE_PATH_STYLE=true",
	)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		return "", err
	}
	d.worker = cmd
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); _ = logf.Close(); close(exited) }()
	d.closers = append(d.closers, func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	deadline := time.Now().Add(2 * time.Minute)
	for {
		resp, err := http.Get("http://" + d.httpAddr + "/healthz")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return fmt.Sprintf("Web UI at http://%s", d.uiAddr), nil
			}
		}
		select {
		case <-exited:
			return "", fmt.Errorf("worker exited during start; see %s", d.workerLog)
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("worker not healthy after 2 minutes; see %s", d.workerLog)
		}
	}
}

func (d *demo) runSelfCheck(ctx context.Context) (string, error) {
	cl, err := client.DialContext(ctx, client.Options{HostPort: d.grpcAddr, Namespace: "default", Logger: quietLogger()})
	if err != nil {
		return "", err
	}
	defer cl.Close()
	run, err := cl.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID:        "demo-selfcheck-" + time.Now().UTC().Format("20060102T150405Z"),
		TaskQueue: workflows.TaskQueue,
	}, workflows.SelfCheckName, workflows.SelfCheckInput{Steps: 5, StepInterval: workflows.Duration(200 * time.Millisecond)})
	if err != nil {
		return "", err
	}
	d.runID = run.GetID()
	if err := run.Get(ctx, &d.selfCheck); err != nil {
		return "", err
	}
	b, _ := json.Marshal(d.selfCheck.Soak)
	return string(b), nil
}

func (d *demo) runBackup(ctx context.Context) (string, error) {
	cl, err := client.DialContext(ctx, client.Options{HostPort: d.grpcAddr, Namespace: "default", Logger: quietLogger()})
	if err != nil {
		return "", err
	}
	defer cl.Close()
	run, err := cl.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID:        "demo-nightly-backup-" + time.Now().UTC().Format("20060102T150405Z"),
		TaskQueue: workflows.TaskQueue,
	}, workflows.NightlyBackupName, workflows.NightlyBackupInput{})
	if err != nil {
		return "", err
	}
	d.backupID = run.GetID()
	if err := run.Get(ctx, &d.backup); err != nil {
		return "", err
	}
	var stored int64
	for _, a := range d.backup.Manifest.Artifacts {
		stored += a.Size
	}
	verdict := "not verified"
	if v := d.backup.Verify; v != nil {
		verdict = fmt.Sprintf("verified (passed=%v, RTO %s)", v.Passed, v.TotalRTO.Round(time.Millisecond))
	}
	return fmt.Sprintf("set %s, %d artifacts (%s), %s", d.backup.SetID, len(d.backup.Manifest.Artifacts), units.Bytes(stored), verdict), nil
}

func (d *demo) printSummary() {
	st := d.st
	fmt.Fprintf(d.out, `
summary (%s)
  PostgreSQL   %s  databases %s, %s (%d tasks)
  Redis        %s  (AOF on; %d queued, %d task hashes)
  MinIO (app)  %s  bucket %s (%d objects, %d bytes)
  S3 backups   %s  bucket %s
  Temporal     %s  namespace default, task queue %s
  Web UI       http://%s/namespaces/default/workflows/%s
  SelfCheck    %d steps heartbeated by %s
  Backup set   %s
%s
NightlyBackup and its VerifyBackup run for real. Try a recovery against this stack with
--keep: starter start TotalDBLoss --input '{"dryRun": true}' --wait (RedisLoss and MinIOLoss
likewise, and FullClusterRecovery).
`,
		time.Since(d.started).Round(100*time.Millisecond),
		st.Postgres.URL(""), schemas.ControllerDB, schemas.DispatcherDB, d.summary.Tasks,
		st.Redis.Addr(), d.summary.PendingQueued, d.summary.TaskHashes,
		st.MinIO.URL(), schemas.DefaultBucket, d.summary.Objects, d.summary.Bytes,
		st.Backup.URL(), demoBackupBucket,
		d.grpcAddr, workflows.TaskQueue,
		d.uiAddr, d.backupID,
		d.selfCheck.Soak.Steps, d.selfCheck.Soak.Host,
		d.backup.SetID, d.backupLines())
}

// backupLines lists the set's artifacts with their figures, one per line.
func (d *demo) backupLines() string {
	var b strings.Builder
	for _, a := range d.backup.Manifest.Artifacts {
		fig := ""
		switch {
		case len(a.RowCounts) > 0 && a.Kind == "postgres":
			fig = fmt.Sprintf("rows %v", a.RowCounts)
		case a.KeyCount > 0:
			fig = fmt.Sprintf("%d keys", a.KeyCount)
		case a.Objects > 0:
			fig = fmt.Sprintf("%d objects", a.Objects)
		}
		fmt.Fprintf(&b, "    %-9s %-20s %10s → %-10s %s\n", a.Kind, a.Source, units.Bytes(a.RawSize), units.Bytes(a.Size), fig)
	}
	return b.String()
}

// cleanup stops what the demo started, newest first.
func (d *demo) cleanup() {
	for i := len(d.closers) - 1; i >= 0; i-- {
		d.closers[i]()
	}
}
