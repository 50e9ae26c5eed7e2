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
	keep       bool
	tasks      int
	workerBin  string
	grpcAddr   string
	uiAddr     string
	screenshot string
}

// runDemo runs the main job end to end on a private stack: seed it, put the Kohakku
// workload on it, start `worker --dev`, schedule and take the nightly backup, lose the
// whole cluster, bring it back with FullClusterRecovery and compare the data with the
// backup. With --keep it stays up until Ctrl-C.
func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o demoOptions
	fs.BoolVar(&o.keep, "keep", false, "leave everything running until Ctrl-C")
	fs.IntVar(&o.tasks, "tasks", 1000, "Kohakku tasks to seed")
	fs.StringVar(&o.workerBin, "worker-bin", "", "worker binary (default: bin/worker, built when missing)")
	fs.StringVar(&o.grpcAddr, "grpc-addr", "127.0.0.1:7233", "embedded Temporal frontend (a free port is used if taken)")
	fs.StringVar(&o.uiAddr, "ui-addr", "127.0.0.1:8233", "Web UI (a free port is used if taken)")
	fs.StringVar(&o.screenshot, "screenshot", "", "after the recovery, save a PNG of its Web UI page to this file (needs Chromium)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.tasks < 1 {
		return fmt.Errorf("--tasks must be at least 1, got %d", o.tasks)
	}
	var err error
	if o.screenshot, err = checkScreenshotFlag(o.screenshot); err != nil {
		return err
	}
	d := &demo{opts: o, out: stdout, con: newConsole(stdout), started: time.Now()}
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
	opts       demoOptions
	out        io.Writer
	con        *console
	started    time.Time
	st         *stack.Stack
	worker     *exec.Cmd
	workerLog  string
	closers    []func()
	summary    kohakku.Summary
	grpcAddr   string
	uiAddr     string
	httpAddr   string
	configPath string
	selfCheck  workflows.SelfCheckResult
	runID      string
	schedule   string // as `schedule create` described it
	backup     workflows.NightlyBackupResult
	backupID   string
	gen1, gen2 *kohakku.Sim
	lostAt     time.Time
	rec        *recovery
	shot       string
}

// demoStep is one line of the step list: fn returns the line's detail.
type demoStep struct {
	name string
	fn   func(context.Context) (string, error)
}

// step runs fn as one line of the live step list.
func (d *demo) step(name string, fn func() (string, error)) error {
	d.con.begin(name)
	start := time.Now()
	detail, err := fn()
	took := time.Since(start).Round(10 * time.Millisecond)
	if err != nil {
		d.con.end(fmt.Sprintf("  ✗  %s (%s)", name, took))
		return fmt.Errorf("%s: %w", name, err)
	}
	if detail != "" {
		detail = ": " + detail
	}
	d.con.end(fmt.Sprintf("  ✓  %s%s (%s)", name, detail, took))
	return nil
}

func (d *demo) run(ctx context.Context) error {
	fmt.Fprintln(d.out, "drflow demo: a Kohakku stack is backed up, lost entirely and recovered with Temporal workflows")
	steps := []demoStep{
		{"start PostgreSQL, Redis, MinIO (app) and MinIO (backup store)", d.startStack},
		{"seed the Kohakku dataset", d.seed},
		{"start the Kohakku workload (simulated dispatcher, agents, monitor)", d.startWorkload},
		{"start worker --dev (embedded Temporal + Web UI)", d.startWorker},
		{"run the SelfCheck workflow", d.runSelfCheck},
		{"create the nightly Schedule (starter schedule create)", d.createSchedule},
		{"run NightlyBackup: dump, RDB, mirror, manifest", d.runBackup},
		{"keep the workload running", d.keepWorking},
		{"lose the whole cluster", d.loseCluster},
		{"run FullClusterRecovery", d.runRecovery},
		{"compare the recovered data with the backup set", d.compareData},
	}
	if d.opts.screenshot != "" {
		steps = append(steps, demoStep{"screenshot the recovery in the Web UI", d.screenshot})
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
	hooks, err := d.writeHooks()
	if err != nil {
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
		// How the recovery starts Redis and restarts the services (see writeHooks).
		"DRFLOW_HOOKS_FILE="+hooks,
		"DRFLOW_REDIS_AOF_DIR="+st.Redis.AOFDir(),
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

// dial connects to the demo's embedded Temporal.
func (d *demo) dial(ctx context.Context) (client.Client, error) {
	cl, err := client.DialContext(ctx, client.Options{HostPort: d.grpcAddr, Namespace: "default", Logger: quietLogger()})
	if err != nil {
		return nil, fmt.Errorf("connect to the demo's temporal at %s: %w", d.grpcAddr, err)
	}
	return cl, nil
}

func (d *demo) runSelfCheck(ctx context.Context) (string, error) {
	cl, err := d.dial(ctx)
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
	cl, err := d.dial(ctx)
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
	defer d.showRunningSteps(ctx, cl, d.backupID)()
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

// cleanup stops what the demo started, newest first.
func (d *demo) cleanup() {
	for i := len(d.closers) - 1; i >= 0; i-- {
		d.closers[i]()
	}
}
