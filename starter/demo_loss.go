package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/minio/minio-go/v7"

	"github.com/kohakku/drflow/internal/kohakku"
	"github.com/kohakku/drflow/schemas"
)

// The two generations of simulated agents. The first works before the disaster; its
// agents die with the cluster. The second comes up with the restored services and runs
// the re-dispatched tasks; its container ids differ, so a task still held by "gen1-…"
// after the recovery would show an agent of the lost cluster.
const (
	gen1 = "gen1-"
	gen2 = "gen2-"
)

// workloadOptions is the simulator of the first generation: a few agents on tasks of
// seconds, so that the seeded pending queue lasts past the backup and the loss (about
// one task a second: 30 pending tasks with --tasks 200) and tasks are in flight at both.
// Heartbeats, timeouts and polling are those of the end-to-end test (see
// internal/e2e/full_cluster_test.go).
func workloadOptions() kohakku.SimOptions {
	return kohakku.SimOptions{Agents: 3, TaskDuration: 3 * time.Second, Jitter: time.Second,
		HeartbeatEvery: 200 * time.Millisecond, AgentTimeout: 2 * time.Second, PollEvery: 100 * time.Millisecond,
		FailRate: 0.05, Seed: 1, Generation: gen1}
}

// recoveredWorkloadOptions is the second generation: more agents and short tasks, so the
// re-dispatched work is done within seconds.
func recoveredWorkloadOptions() kohakku.SimOptions {
	o := workloadOptions()
	o.Agents, o.TaskDuration, o.Jitter, o.Seed, o.Generation = 8, 300*time.Millisecond, 100*time.Millisecond, 2, gen2
	return o
}

// startWorkload starts the first generation: dispatcher, agents and monitor, working
// through the seeded pending queue.
func (d *demo) startWorkload(ctx context.Context) (string, error) {
	sim, err := d.startSim(ctx, workloadOptions())
	if err != nil {
		return "", err
	}
	d.gen1 = sim
	o := workloadOptions()
	return fmt.Sprintf("%d agents (%s…), tasks of %s ± %s, %.0f%% fail", o.Agents, o.Generation, o.TaskDuration, o.Jitter, o.FailRate*100), nil
}

// startSim starts a simulator on its own connections to the stack; the pools reconnect
// by themselves after the servers come back. The demo's context is not the simulator's:
// cleanup (Stop) ends it, so an interrupted demo still marks its agents as gone.
func (d *demo) startSim(ctx context.Context, o kohakku.SimOptions) (*kohakku.Sim, error) {
	t, closeAll, err := d.target(ctx)
	if err != nil {
		return nil, err
	}
	sim, err := kohakku.StartSim(context.WithoutCancel(ctx), t, o)
	if err != nil {
		closeAll()
		return nil, err
	}
	// Closers run newest first: the simulator stops before its connections close.
	d.closers = append(d.closers, closeAll, func() { _ = sim.Stop() })
	return sim, nil
}

// keepWorking lets the workload run on after the backup, so that tasks are in flight
// (and newer than the backup) when the cluster is lost.
func (d *demo) keepWorking(ctx context.Context) (string, error) {
	select {
	case <-time.After(2 * time.Second):
	case <-ctx.Done():
		return "", ctx.Err()
	}
	st := d.gen1.Stats()
	if st.Completed+st.Failed == 0 {
		return "", fmt.Errorf("the simulated agents finished no task; see their errors: %v", st.Errors)
	}
	all, live, err := d.tasksInFlight(ctx)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s agents ended %d tasks (%d completed, %d failed); %d tasks in flight, %d of them on %s agents",
		gen1, st.Completed+st.Failed, st.Completed, st.Failed, all, live, gen1), nil
}

// tasksInFlight counts the dispatched and running tasks in kohakku-controller: all of
// them, and those held by the first generation's agents (the others were seeded on
// containers that never ran).
func (d *demo) tasksInFlight(ctx context.Context) (all, live int64, err error) {
	err = d.withDB(ctx, schemas.ControllerDB, func(conn *pgx.Conn) error {
		return conn.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE container_id LIKE $3) FROM `+schemas.TasksTable+
			` WHERE status IN ($1, $2)`, schemas.StatusDispatched, schemas.StatusRunning, gen1+"%").Scan(&all, &live)
	})
	return all, live, err
}

// loseCluster destroys everything the way the end-to-end test does (newFullClusterLoss):
// the agents die, PostgreSQL is stopped and wiped, Redis is killed and wiped, the app
// bucket is deleted. PostgreSQL comes back empty (a new, empty host); Redis stays down
// until the recovery starts it through its service hook, as on a real host.
func (d *demo) loseCluster(ctx context.Context) (string, error) {
	d.gen1.KillAgents()
	if err := d.gen1.Stop(); err != nil {
		return "", fmt.Errorf("stop the simulator: %w", err)
	}
	d.lostAt = time.Now()
	st := d.st
	if err := st.Postgres.Stop(ctx); err != nil {
		return "", err
	}
	if err := st.Postgres.Wipe(); err != nil {
		return "", err
	}
	if err := st.Postgres.Start(ctx); err != nil {
		return "", fmt.Errorf("start the empty PostgreSQL: %w", err)
	}
	if err := st.Redis.Kill(); err != nil {
		return "", err
	}
	if err := st.Redis.Wipe(); err != nil {
		return "", err
	}
	// From here the Redis that comes back is started by the worker's hook, outside the
	// stack: stop it at cleanup.
	d.closers = append(d.closers, d.stopDaemonRedis)
	objects, err := st.MinIO.Client()
	if err != nil {
		return "", err
	}
	removed := 0
	for o := range objects.ListObjects(ctx, schemas.DefaultBucket, minio.ListObjectsOptions{Recursive: true}) {
		if o.Err != nil {
			return "", fmt.Errorf("list bucket %s: %w", schemas.DefaultBucket, o.Err)
		}
		if err := objects.RemoveObject(ctx, schemas.DefaultBucket, o.Key, minio.RemoveObjectOptions{}); err != nil {
			return "", fmt.Errorf("delete %s/%s: %w", schemas.DefaultBucket, o.Key, err)
		}
		removed++
	}
	if err := objects.RemoveBucket(ctx, schemas.DefaultBucket); err != nil {
		return "", fmt.Errorf("delete bucket %s: %w", schemas.DefaultBucket, err)
	}
	return fmt.Sprintf("%s agents killed; PostgreSQL empty (new cluster), Redis down with no data, bucket %s and its %d objects deleted",
		gen1, schemas.DefaultBucket, removed), nil
}

// stopDaemonRedis stops the Redis that the recovery's hook started (Redis.DaemonCommand):
// the stack does not track it. SHUTDOWN first, over a plain connection (a go-redis client
// would log every refused dial while Redis goes); the pid file if Redis does not go.
func (d *demo) stopDaemonRedis() {
	r := d.st.Redis
	deadline := time.Now().Add(5 * time.Second)
	if conn, err := net.DialTimeout("tcp", r.Addr(), time.Second); err == nil {
		_ = conn.SetDeadline(deadline)
		_, _ = conn.Write([]byte("SHUTDOWN NOSAVE\r\n"))
		_, _ = io.Copy(io.Discard, conn) // until Redis closes the connection as it exits
		_ = conn.Close()
	}
	for time.Now().Before(deadline) {
		conn, err := net.DialTimeout("tcp", r.Addr(), time.Second)
		if err != nil {
			return
		}
		_ = conn.Close()
		time.Sleep(50 * time.Millisecond)
	}
	if b, err := os.ReadFile(r.PIDPath()); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// writeHooks writes the service hooks file of the demo's worker, as the end-to-end test
// does: Redis is started with the stack's own command line (daemonized, same port and
// AOF directory), and the controller, dispatcher and monitor — played by the simulator,
// which needs no restart — log their restart to services.log, in the restart order a
// real deployment would use.
func (d *demo) writeHooks() (string, error) {
	logPath := filepath.Join(d.st.Dir, "services.log")
	services := map[string]any{
		"redis": map[string]any{"start": map[string]any{"argv": d.st.Redis.DaemonCommand(), "timeout": "30s"}},
	}
	for _, svc := range []string{"controller", "dispatcher", "monitor"} {
		services[svc] = map[string]any{"restart": map[string]any{
			"argv":    []string{"/bin/sh", "-c", `echo "$(date -u +%FT%TZ) restart ` + svc + `" >> "$0"`, logPath},
			"timeout": "30s",
		}}
	}
	file := map[string]any{
		"services": services,
		"restartOrder": []map[string]string{
			{"service": "controller", "reason": "owns tasks_task"},
			{"service": "dispatcher", "reason": "assigns pending tasks once the controller is up"},
			{"service": "monitor", "reason": "times out dead agents"},
		},
	}
	b, err := json.MarshalIndent(file, "", "  ") // JSON is YAML
	if err != nil {
		return "", err
	}
	path := filepath.Join(d.st.Dir, "hooks.yaml")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return "", fmt.Errorf("write the hooks file: %w", err)
	}
	return path, nil
}

// servicesRestarted lists the services whose restart hook ran, in order.
func (d *demo) servicesRestarted() []string {
	b, err := os.ReadFile(filepath.Join(d.st.Dir, "services.log"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var out []string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if _, svc, ok := strings.Cut(line, " restart "); ok {
			out = append(out, svc)
		}
	}
	return out
}
