//go:build faults

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/minio/minio-go/v7"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"

	"github.com/kohakku/drflow/activities"
	"github.com/kohakku/drflow/internal/kohakku"
	"github.com/kohakku/drflow/internal/stack"
	"github.com/kohakku/drflow/schemas"
	"github.com/kohakku/drflow/workflows"
)

// The crash matrix (make test-faults). Every runbook runs on the worker binary as a
// subprocess behind a grpcTap, which SIGKILLs it at every step boundary — right after the
// server recorded an activity's or a child workflow's completion, before the worker saw
// anything else — and once in the middle of each long activity; the worker is restarted
// at once each time, so all kills happen in one run per runbook. The run must complete,
// and its end state must equal that of an uninterrupted run of the same scenario on the
// same stack. The test writes the matrix (runbook × kill point) as Markdown to
// $DRFLOW_FAULTS_REPORT; make test-faults puts it into docs/reliability.md.
//
// Mid-activity kills are limited to the long activities of the runbook's own workflow
// (and of RedispatchLostTasks, which has no row of its own): a child that is a runbook of
// the matrix gets its boundaries killed in its parent's run and its long activities in
// its own row. Each mid-activity kill costs its activity's 30 s heartbeat timeout; a
// boundary kill costs a workflow task timeout (5 s sticky, 10 s at most).

// FaultsReportEnv names the file the matrix is written to.
const FaultsReportEnv = "DRFLOW_FAULTS_REPORT"

// crashScenario is one row group of the matrix.
type crashScenario struct {
	name string
	run  func(ctx context.Context, t *testing.T, rep *matrixReport)
	// minutes the subtest takes on a 2-core machine: the longest start first.
	minutes float64
}

// crashScenarios in the order of the report.
var crashScenarios = []crashScenario{
	{workflows.NightlyBackupName, crashNightlyBackup, 3},
	{workflows.VerifyBackupName, crashVerifyBackup, 4.5},
	{workflows.RedisLossName, crashRedisLoss, 3.5},
	{workflows.MinIOLossName, crashMinIOLoss, 3},
	{workflows.TotalDBLossName, crashTotalDBLoss, 4},
	{workflows.FullClusterRecoveryName, crashFullClusterRecovery, 5},
}

// crashParallel runbooks run at a time, each on its own stack, whatever -parallel says
// (GOMAXPROCS, 2 on a 2-core machine): they mostly wait for Temporal's timeouts, and
// three at a time keep the matrix near 8 minutes without crowding a small machine.
const crashParallel = 3

// TestCrashMatrix runs every runbook of crashScenarios with worker kills (one subtest
// each, crashParallel at a time) and writes the matrix when all are done.
func TestCrashMatrix(t *testing.T) {
	t.Parallel() // alongside the TestDependencyFault tests of make test-faults: all wait for timeouts
	rep := &matrixReport{started: time.Now(), path: os.Getenv(FaultsReportEnv), begun: map[string]time.Time{}}
	if rep.path == "" {
		rep.path = filepath.Join(t.TempDir(), "crash-matrix.md")
	}
	t.Cleanup(func() { rep.write(t) })
	order := slices.Clone(crashScenarios)
	sort.SliceStable(order, func(i, j int) bool { return order[i].minutes > order[j].minutes })
	slots := make(chan struct{}, crashParallel)
	var wg sync.WaitGroup
	for _, sc := range order {
		wg.Add(1)
		go func() { // t.Run may be called from several goroutines at once
			defer wg.Done()
			slots <- struct{}{}
			defer func() { <-slots }()
			t.Run(sc.name, func(t *testing.T) {
				rep.begin(sc.name)
				ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
				defer cancel()
				sc.run(ctx, t, rep)
			})
		}()
	}
	wg.Wait()
}

// longIn makes a tapPolicy.long from workflow type → long activity types.
func longIn(m map[string][]string) func(string, string) bool {
	return func(wf, act string) bool { return slices.Contains(m[wf], act) }
}

// crashHarness runs a runbook on a worker subprocess behind a grpcTap and keeps what
// happened to it.
type crashHarness struct {
	t       *testing.T
	e       *env
	tap     *grpcTap
	w       *workerProc
	queue   string
	runbook string
	started time.Time

	// tick runs on the test goroutine every 200ms while a run goes on.
	tick func()
	// external: activity types whose mid-activity kill the scenario triggers itself
	// (tap.killRunning); afterKill runs right after each SIGKILL.
	external  map[string]bool
	afterKill func()

	// tmp is the worker's TMPDIR; cleanTmp what an uninterrupted run left there.
	tmp      string
	cleanTmp []string

	// midway: half of how long each activity of the uninterrupted run took, by workflow
	// type, activity type and its rank among the workflow's activities of that type.
	midway map[string]time.Duration

	kills    []*killRecord
	notes    []tapNote
	rows     []matrixRow
	compared []string
	differs  []string // the compared figures that differed
	runTime  time.Duration
}

// killRecord is one SIGKILL.
type killRecord struct {
	n   int
	req *killReq
	// dead are the activity tasks the worker was running (the tap's view).
	dead []taskInfo
	// pid killed, next the pid of the worker started after it.
	pid, next int
	at        time.Time
	restarted time.Time
}

// newCrashHarness starts the worker subprocess for e's stack (with vars on top of its
// configuration) behind a tap, on a task queue of its own. The result lands in rep when
// the test ends, failed or not.
func newCrashHarness(t *testing.T, e *env, runbook string, vars map[string]string, rep *matrixReport) *crashHarness {
	t.Helper()
	tap, err := newGRPCTap(e.st.Temporal.GRPCAddr())
	require.NoError(t, err)
	t.Cleanup(tap.close)
	t.Cleanup(func() {
		if err := tap.failure(); err != nil {
			t.Errorf("grpc tap: %v", err)
		}
	})
	all := map[string]string{}
	maps.Copy(all, vars)
	all["TEMPORAL_ADDRESS"] = tap.addr()
	// A temporary directory of its own: what the worker stages there (dumps to restore,
	// SQLite copies, hook output) must be gone after a run, killed or not.
	tmp := filepath.Join(t.TempDir(), "worker-tmp")
	require.NoError(t, os.MkdirAll(tmp, 0o700))
	all["TMPDIR"] = tmp
	h := &crashHarness{t: t, e: e, tap: tap, queue: "crash-" + strings.ToLower(runbook), runbook: runbook, started: time.Now(),
		midway: map[string]time.Duration{}, tmp: tmp}
	h.w = newWorkerProc(t, stackEnv(e.st, all), h.queue)
	h.startWorker()
	t.Cleanup(func() { rep.add(h.result(t.Failed())) })
	return h
}

// startWorker starts the worker subprocess as workerProc.start does, but waits for its
// "worker ready" log line rather than for /healthz: /healthz asks Temporal through the
// tap, and a worker that picks up a task at once can freeze the tap before it answers.
//
// The worker's HTTP port was free when picked, but the stacks of the runbooks running
// beside this one start servers on free ports too: a worker that finds its port taken
// is started again on another one.
func (h *crashHarness) startWorker() {
	t := h.t
	t.Helper()
	for try := 1; ; try++ {
		err := h.startWorkerOnce()
		if err == nil {
			return
		}
		if !strings.Contains(err.Error(), "address already in use") || try == 5 {
			t.Fatal(err)
		}
		t.Logf("worker start %d: its HTTP port was taken meanwhile; again on another port", try)
		h.w.newHTTPAddr(t)
	}
}

// startWorkerOnce starts the worker subprocess and waits for its "worker ready" line.
func (h *crashHarness) startWorkerOnce() error {
	w := h.w
	w.out = &lockedBuffer{}
	w.logs = append(w.logs, w.out)
	w.cmd = exec.Command(w.bin)
	w.cmd.Env = w.env
	w.cmd.Stdout, w.cmd.Stderr = w.out, w.out
	w.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := w.cmd.Start(); err != nil {
		return err
	}
	w.starts++
	w.exited = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(w.cmd, w.exited)
	h.tap.pid.Store(int64(w.cmd.Process.Pid))
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(w.out.String(), "worker ready") {
		select {
		case <-w.exited:
			return fmt.Errorf("worker exited during start:\n%s", w.out)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("worker not ready after 60s:\n%s", w.out)
		}
	}
	return nil
}

// runClean runs the runbook to its end with no kill: the uninterrupted reference. It
// learns how long each activity took, to kill it half-way in the run with kills.
func (h *crashHarness) runClean(ctx context.Context, id, typ string, in, res any) error {
	h.t.Helper()
	run, err := h.e.c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: h.queue}, typ, in)
	require.NoError(h.t, err)
	if err := run.Get(ctx, res); err != nil {
		return err
	}
	h.cleanTmp = h.tempLeft()
	hists, err := h.histories(ctx, id, "", "")
	require.NoError(h.t, err)
	for _, x := range hists {
		type act struct {
			key     string
			started time.Time
		}
		acts := map[int64]*act{}
		nth := map[string]int{}
		for _, ev := range x.events {
			switch {
			case ev.GetActivityTaskScheduledEventAttributes() != nil:
				typ := ev.GetActivityTaskScheduledEventAttributes().GetActivityType().GetName()
				acts[ev.GetEventId()] = &act{key: fmt.Sprintf("%s/%s/%d", x.typ, typ, nth[typ])}
				nth[typ]++
			case ev.GetActivityTaskStartedEventAttributes() != nil:
				if a := acts[ev.GetActivityTaskStartedEventAttributes().GetScheduledEventId()]; a != nil {
					a.started = ev.GetEventTime().AsTime()
				}
			case ev.GetActivityTaskCompletedEventAttributes() != nil:
				if a := acts[ev.GetActivityTaskCompletedEventAttributes().GetScheduledEventId()]; a != nil && !a.started.IsZero() {
					h.midway[a.key] = ev.GetEventTime().AsTime().Sub(a.started) / 2
				}
			}
		}
	}
	return nil
}

// runWithKills runs the runbook while the tap breaks it at every kill point, restarting
// the worker after each kill, and builds the matrix rows from the histories.
func (h *crashHarness) runWithKills(ctx context.Context, id, typ string, in, res any, long func(string, string) bool) error {
	t := h.t
	t.Helper()
	start := time.Now()
	h.tap.arm(tapPolicy{root: id, long: long, midway: func(ti taskInfo) (time.Duration, int) {
		if h.external[ti.activityType] {
			return 0, midExternal
		}
		if d, ok := h.midway[fmt.Sprintf("%s/%s/%d", ti.workflowType, ti.activityType, ti.nth)]; ok {
			return d, midTimer
		}
		return 0, midHeartbeat
	}})
	run, err := h.e.c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: h.queue}, typ, in)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- run.Get(ctx, res) }()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	// Also when the test fails half-way: the matrix shows how far it got.
	defer func() {
		h.tap.disarm()
		for len(h.tap.notes) > 0 {
			h.notes = append(h.notes, <-h.tap.notes)
		}
		h.runTime = time.Since(start)
		actx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		h.analyze(actx, id)
		t.Logf("%s: %d kills in %s", id, len(h.kills), h.runTime.Round(time.Second))
	}()
	var runErr error
loop:
	for {
		select {
		case runErr = <-done:
			break loop
		case r := <-h.tap.kills:
			h.kill(ctx, r)
		case n := <-h.tap.notes:
			h.notes = append(h.notes, n)
		case <-tick.C:
			if h.tick != nil {
				h.tick()
			}
		}
	}
	h.compare("files left in the worker's temporary directory", h.cleanTmp, h.tempLeft())
	return runErr
}

// tempLeft lists what is in the worker's temporary directory, random parts of the
// names replaced by "*".
func (h *crashHarness) tempLeft() []string {
	entries, err := os.ReadDir(h.tmp)
	require.NoError(h.t, err)
	var out []string
	for _, e := range entries {
		name := randomRE.ReplaceAllString(e.Name(), "*")
		if e.IsDir() {
			name += "/"
		}
		out = append(out, name)
	}
	return out
}

// kill executes a kill request of the tap: SIGKILL once the server answered the
// triggering call, then a fresh worker.
func (h *crashHarness) kill(ctx context.Context, r *killReq) {
	t := h.t
	select {
	case status := <-r.ack:
		if status != "0" {
			// Not recorded: not a boundary after all.
			h.tap.thaw()
			h.notes = append(h.notes, tapNote{kind: r.kind, task: r.task, child: r.child, at: r.at,
				reason: "the server refused the completion (gRPC status " + status + "): no boundary"})
			return
		}
	case <-time.After(30 * time.Second):
		t.Errorf("kill at %s %s: the server did not answer the call in 30s; killing anyway", r.kind, r.task.activityType)
	case <-ctx.Done():
		t.Fatalf("kill at %s: %v", r.kind, ctx.Err())
	}
	rec := &killRecord{n: len(h.kills) + 1, req: r, pid: h.w.cmd.Process.Pid}
	// SIGKILL first: the dead worker must not see its connections close and retry a
	// held-back call on a new one.
	h.w.kill(t)
	rec.at = time.Now()
	h.tap.pid.Store(0)
	if h.afterKill != nil {
		h.afterKill()
	}
	rec.dead = h.tap.reset(rec.n)
	h.startWorker()
	rec.next = h.w.cmd.Process.Pid
	rec.restarted = time.Now()
	h.kills = append(h.kills, rec)
	t.Logf("kill #%d %s %s %s: frozen %s before the kill, worker back after %s", rec.n, r.kind, r.task.activityType, r.child.WorkflowID,
		rec.at.Sub(r.at).Round(time.Millisecond), rec.restarted.Sub(rec.at).Round(time.Millisecond))
}

// execHistory is the history of one run of one workflow of the tree.
type execHistory struct {
	id, run, typ string
	events       []*historypb.HistoryEvent
}

// histories fetches the run's history and those of its children, recursively, and of
// every run a continue-as-new started.
func (h *crashHarness) histories(ctx context.Context, id, runID, typ string) ([]*execHistory, error) {
	x := &execHistory{id: id, run: runID, typ: typ}
	iter := h.e.c.GetWorkflowHistory(ctx, id, runID, false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for iter.HasNext() {
		ev, err := iter.Next()
		if err != nil {
			return nil, fmt.Errorf("history of %s: %w", id, err)
		}
		x.events = append(x.events, ev)
	}
	out := []*execHistory{x}
	for _, ev := range x.events {
		if a := ev.GetWorkflowExecutionStartedEventAttributes(); a != nil {
			x.typ = a.GetWorkflowType().GetName()
			if x.run == "" {
				x.run = a.GetOriginalExecutionRunId()
			}
		}
		var more []*execHistory
		var err error
		if a := ev.GetChildWorkflowExecutionStartedEventAttributes(); a != nil {
			more, err = h.histories(ctx, a.GetWorkflowExecution().GetWorkflowId(), a.GetWorkflowExecution().GetRunId(), a.GetWorkflowType().GetName())
		}
		if a := ev.GetWorkflowExecutionContinuedAsNewEventAttributes(); a != nil {
			more, err = h.histories(ctx, id, a.GetNewExecutionRunId(), a.GetWorkflowType().GetName())
		}
		if err != nil {
			return nil, err
		}
		out = append(out, more...)
	}
	return out, nil
}

// analyze turns the kills and notes into matrix rows, with what the histories show:
// the retries each kill caused and whether the next worker carried the run on.
func (h *crashHarness) analyze(ctx context.Context, root string) {
	type sched struct{ activity, summary string }
	scheduled := map[taskKey]sched{}
	lastAttempt := map[taskKey]int32{}
	types := map[string]string{}
	identities := map[string]bool{} // pid prefixes seen on events
	type wftTimeout struct {
		at  time.Time
		typ enumspb.TimeoutType
	}
	var wftTimeouts []wftTimeout
	hists, err := h.histories(ctx, root, "", "")
	if err != nil {
		h.t.Errorf("crash matrix: %v", err) // the rows below lack what the histories say
	}
	for _, x := range hists {
		types[x.id] = x.typ
		for _, ev := range x.events {
			at := ev.GetEventTime().AsTime()
			switch {
			case ev.GetActivityTaskScheduledEventAttributes() != nil:
				var s string
				if p := ev.GetUserMetadata().GetSummary(); p != nil {
					_ = converter.GetDefaultDataConverter().FromPayload(p, &s)
				}
				scheduled[taskKey{x.id, x.run, ev.GetEventId()}] = sched{ev.GetActivityTaskScheduledEventAttributes().GetActivityType().GetName(), s}
			case ev.GetActivityTaskStartedEventAttributes() != nil:
				a := ev.GetActivityTaskStartedEventAttributes()
				lastAttempt[taskKey{x.id, x.run, a.GetScheduledEventId()}] = a.GetAttempt()
				identities[pidOf(a.GetIdentity())] = true
			case ev.GetWorkflowTaskStartedEventAttributes() != nil:
				identities[pidOf(ev.GetWorkflowTaskStartedEventAttributes().GetIdentity())] = true
			case ev.GetWorkflowTaskCompletedEventAttributes() != nil:
				identities[pidOf(ev.GetWorkflowTaskCompletedEventAttributes().GetIdentity())] = true
			case ev.GetActivityTaskCompletedEventAttributes() != nil:
				identities[pidOf(ev.GetActivityTaskCompletedEventAttributes().GetIdentity())] = true
			case ev.GetWorkflowTaskTimedOutEventAttributes() != nil:
				wftTimeouts = append(wftTimeouts, wftTimeout{at, ev.GetWorkflowTaskTimedOutEventAttributes().GetTimeoutType()})
			}
		}
	}
	name := func(ti taskInfo) string {
		s := scheduled[ti.key]
		n := ti.activityType
		if n == "" {
			n = s.activity
		}
		if s.summary != "" {
			n += " (" + s.summary + ")"
		}
		if ti.key.WorkflowID != root {
			n = types[ti.key.WorkflowID] + " › " + n
		}
		return n
	}
	childName := func(k taskKey) string {
		if typ := types[k.WorkflowID]; typ != "" {
			return typ + " (" + k.WorkflowID + ")"
		}
		return k.WorkflowID
	}
	point := func(kind string, ti taskInfo, child taskKey, detail string) string {
		switch kind {
		case killChildDone:
			return "after ChildWorkflowExecutionCompleted: " + childName(child)
		case killMidActivity:
			return "mid-activity: " + name(ti) + ", attempt " + strconv.Itoa(int(ti.attempt)) + ": " + detail
		default:
			return "after ActivityTaskCompleted: " + name(ti)
		}
	}
	type timed struct {
		at  time.Time
		row matrixRow
	}
	var rows []timed
	for i, k := range h.kills {
		end := time.Now()
		if i+1 < len(h.kills) {
			end = h.kills[i+1].at
		}
		var retries, also []string
		for _, w := range wftTimeouts {
			if !w.at.Before(k.at) && w.at.Before(end) {
				if w.typ == enumspb.TIMEOUT_TYPE_SCHEDULE_TO_START {
					retries = append(retries, "workflow task timed out on the dead worker's sticky queue (5 s)")
				} else {
					retries = append(retries, "workflow task timed out on the dead worker ("+strings.ToLower(strings.TrimPrefix(w.typ.String(), "TimeoutType"))+", 10 s)")
				}
			}
		}
		for _, d := range k.dead {
			got, ok := lastAttempt[d.key]
			switch {
			case !ok:
				retries = append(retries, fmt.Sprintf("%s attempt %d, never ran again", name(d), d.attempt))
			case got > d.attempt:
				retries = append(retries, fmt.Sprintf("%s attempt %d→%d", name(d), d.attempt, got))
			default:
				retries = append(retries, fmt.Sprintf("%s attempt %d not retried", name(d), d.attempt))
			}
			if k.req.kind != killMidActivity || d.key != k.req.task.key {
				also = append(also, name(d))
			}
		}
		resumed := "no"
		if identities[strconv.Itoa(k.next)] {
			resumed = "yes"
		} else if i+1 < len(h.kills) && h.kills[i+1].req.kind == killMidActivity && h.kills[i+1].req.task.delivered.After(k.restarted) {
			resumed = "yes (took an activity task)"
		}
		rows = append(rows, timed{k.at, matrixRow{
			N: strconv.Itoa(k.n), Point: point(k.req.kind, k.req.task, k.req.child, k.req.detail),
			InFlight: orDash(strings.Join(also, "; ")), Retries: orDash(strings.Join(retries, "; ")), Resumed: resumed,
		}})
	}
	for _, n := range h.notes {
		rows = append(rows, timed{n.at, matrixRow{N: "—", Point: point(n.kind, n.task, n.child, ""), InFlight: "not killed: " + n.reason,
			Retries: "—", Resumed: "—", Result: "covered"}})
	}
	sort.SliceStable(rows, func(i, j int) bool { return rows[i].at.Before(rows[j].at) })
	h.rows = h.rows[:0]
	for _, r := range rows {
		h.rows = append(h.rows, r.row)
	}
}

func pidOf(identity string) string {
	pid, _, _ := strings.Cut(identity, "@")
	return pid
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

// compare asserts want == got for one figure of the end state and lists it as compared.
func (h *crashHarness) compare(what string, want, got any) {
	h.t.Helper()
	h.compared = append(h.compared, what)
	if !assert.Equal(h.t, want, got, "end state after the kills differs from the uninterrupted run: %s", what) {
		h.differs = append(h.differs, what)
	}
}

func (h *crashHarness) result(failed bool) runbookResult {
	r := runbookResult{Runbook: h.runbook, Rows: h.rows, Compared: h.compared, Differs: h.differs, Wall: time.Since(h.started), Run: h.runTime, Passed: !failed}
	for _, k := range h.kills {
		if k.req.kind == killMidActivity {
			r.Mid++
		} else {
			r.Boundary++
		}
		r.Midway += len(k.dead)
	}
	r.Covered = len(h.notes)
	for i := range r.Rows {
		row := &r.Rows[i]
		row.Runbook = h.runbook
		if row.Result != "" {
			continue
		}
		switch {
		case !strings.HasPrefix(row.Resumed, "yes"):
			row.Result = "**fail** (not resumed)"
		case failed:
			row.Result = "**fail** (end state)"
		default:
			row.Result = "pass"
		}
	}
	return r
}

// --- end-state helpers shared by the scenarios ---

// databases lists the stack's databases other than the templates and postgres.
func (h *crashHarness) databases(ctx context.Context) []string { return serverDatabases(ctx, h.t, h.e) }

func serverDatabases(ctx context.Context, t *testing.T, e *env) []string {
	conn, err := pgx.Connect(ctx, e.st.Postgres.URL("postgres"))
	require.NoError(t, err)
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT datname FROM pg_database WHERE NOT datistemplate AND datname <> 'postgres' ORDER BY 1")
	require.NoError(t, err)
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return names
}

// storeKeys lists the backup store's keys under prefix, relative to it, with sizes.
func (h *crashHarness) storeKeys(ctx context.Context, prefix string) map[string]int64 {
	out := map[string]int64{}
	for o := range h.e.backup.ListObjects(ctx, backupBucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		require.NoError(h.t, o.Err)
		out[strings.TrimPrefix(o.Key, prefix)] = o.Size
	}
	return out
}

// incompleteUploads counts multipart uploads left open in the backup store.
//
// MinIO lists the unfinished uploads of one exact key only (a prefix of "" finds none), so
// it asks per stored key; the keys that can have had a multipart upload are those at
// least one part (5 MiB) long. An upload whose key was never completed is not seen.
func (h *crashHarness) incompleteUploads(ctx context.Context) []string {
	var out []string
	for obj := range h.e.backup.ListObjects(ctx, backupBucket, minio.ListObjectsOptions{Recursive: true}) {
		require.NoError(h.t, obj.Err)
		if obj.Size < 5<<20 {
			continue
		}
		for u := range h.e.backup.ListIncompleteUploads(ctx, backupBucket, obj.Key, false) {
			require.NoError(h.t, u.Err)
			out = append(out, u.Key)
		}
	}
	sort.Strings(out)
	return out
}

// strayProcesses lists pg_dump and pg_restore processes still connected to this stack's
// PostgreSQL: a worker's children that outlived it.
func (h *crashHarness) strayProcesses() []string {
	port := strconv.Itoa(h.e.st.Postgres.Port())
	dirs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	var out []string
	for _, d := range dirs {
		b, err := os.ReadFile(d)
		if err != nil || len(b) == 0 {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		prog := filepath.Base(args[0])
		if (prog == "pg_dump" || prog == "pg_restore") && strings.Contains(string(b), ":"+port+"/") {
			out = append(out, prog+" (pid "+filepath.Base(filepath.Dir(d))+")")
		}
	}
	return out
}

// waitNoStrays waits up to 30s for stray processes to end by themselves, then returns
// those left.
func (h *crashHarness) waitNoStrays() []string {
	deadline := time.Now().Add(30 * time.Second)
	for {
		s := h.strayProcesses()
		if len(s) == 0 || time.Now().After(deadline) {
			return s
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// collapse drops immediate repeats: a hook retried after a kill runs twice in a row.
func collapse(lines []string) []string {
	var out []string
	for _, l := range lines {
		if len(out) == 0 || out[len(out)-1] != l {
			out = append(out, l)
		}
	}
	return out
}

// Timings and the sizes of artifacts that differ between two runs on the same data.
var (
	rtoRE      = regexp.MustCompile(`RTO [0-9.]+[a-zµ]+`)
	durationRE = regexp.MustCompile(`\([0-9.]+[a-zµ]+\)`)
	bytesRE    = regexp.MustCompile(`[0-9]+ bytes`)
	randomRE   = regexp.MustCompile(`[0-9]{4,}`) // the random part of a temporary file's name
)

// --- the scenarios ---

// crashNightlyBackup: a seeded stack backed up with kills, then once more without; the
// two sets must hold the same artifacts with the same figures.
func crashNightlyBackup(ctx context.Context, t *testing.T, rep *matrixReport) {
	e := newEnv(t, 3000)
	h := newCrashHarness(t, e, workflows.NightlyBackupName, nil, rep)
	var crash, clean workflows.NightlyBackupResult
	require.NoError(t, h.runClean(ctx, "clean-nightly", workflows.NightlyBackupName, workflows.NightlyBackupInput{}, &clean))
	cleanKeys := h.storeKeys(ctx, activities.SetKey(clean.SetID, ""))
	cleanUploads := h.incompleteUploads(ctx)
	// The mirror is incremental: remove it, so the run with kills copies every object too.
	mirror := activities.MirrorKeyPrefix(schemas.DefaultBucket)
	for k := range h.storeKeys(ctx, mirror) {
		require.NoError(t, e.backup.RemoveObject(ctx, backupBucket, mirror+k, minio.RemoveObjectOptions{}))
	}
	require.NoError(t, h.runWithKills(ctx, "crash-nightly", workflows.NightlyBackupName, workflows.NightlyBackupInput{}, &crash,
		longIn(map[string][]string{workflows.NightlyBackupName: {"Dump", "DumpRDB", "Snapshot", "Mirror"}})))
	crashKeys := h.storeKeys(ctx, activities.SetKey(crash.SetID, ""))
	crashStrays := h.waitNoStrays()

	h.compare("manifest artifacts: kind, source, key, compression, encryption, row counts, key count, object count and bytes",
		artifactFigures(clean.Manifest), artifactFigures(crash.Manifest))
	// Not compared: Copied, what the last attempt of Mirror copied (documented: a mirror
	// retried after a kill finds what the killed attempt copied up to date).
	h.compare("manifest mirrors: bucket, prefix, object count and bytes", mirrorFigures(clean.Manifest), mirrorFigures(crash.Manifest))
	h.compare("the set's objects in the store (keys)", slices.Sorted(maps.Keys(cleanKeys)), slices.Sorted(maps.Keys(crashKeys)))
	require.NotNil(t, crash.Verify)
	require.NotNil(t, clean.Verify)
	h.compare("child VerifyBackup verdict and checks", verifyFigures(*clean.Verify), verifyFigures(*crash.Verify))
	h.compare("warnings", clean.Warnings, crash.Warnings)
	source := map[string]int64{}
	for o := range e.objects.ListObjects(ctx, schemas.DefaultBucket, minio.ListObjectsOptions{Recursive: true}) {
		require.NoError(t, o.Err)
		source[o.Key] = o.Size
	}
	h.compare("the mirror equals the source bucket (keys and sizes)", source, h.storeKeys(ctx, activities.MirrorKeyPrefix(schemas.DefaultBucket)))
	h.compare("scratch databases left (verification)", 0, len(e.scratchDatabases(ctx, t)))
	h.compare("multipart uploads left open in the store", cleanUploads, h.incompleteUploads(ctx))
	h.compare("pg_dump / pg_restore processes left running", []string(nil), crashStrays)
}

// artifactFigures are the manifest figures that two backups of unchanged data share.
// Checksums and sizes are left out: pg_dump output embeds the time of the dump, an RDB
// its creation time, and the SQLite artifact is the Temporal server's own database, which
// the runs themselves change (its tables are compared by name only).
func artifactFigures(m activities.Manifest) []string {
	var out []string
	for _, a := range m.Artifacts {
		rows := fmt.Sprint(a.RowCounts)
		if a.Kind == activities.KindSQLite {
			rows = fmt.Sprint(slices.Sorted(maps.Keys(a.RowCounts)))
		}
		out = append(out, fmt.Sprintf("%s %s %s %s/%s rows=%s keys=%d objects=%d/%d", a.Kind, a.Source,
			strings.ReplaceAll(a.Key, m.SetID, "<set>"), a.Compression, a.Encryption, rows, a.KeyCount, a.Objects, a.ObjectBytes))
	}
	return out
}

func mirrorFigures(m activities.Manifest) []string {
	var out []string
	for _, x := range m.Mirrors {
		out = append(out, fmt.Sprintf("%s → %s: %d objects, %d bytes", x.Bucket, x.Prefix, x.Objects, x.Bytes))
	}
	return out
}

// verifyFigures are a verification's verdict and checks, without timings and the size of
// the SQLite snapshot (see artifactFigures).
func verifyFigures(r activities.VerifyReport) []string {
	out := []string{fmt.Sprintf("passed=%v restored=%v", r.Passed, r.Restored)}
	for _, c := range r.Checks {
		out = append(out, fmt.Sprintf("%s %s passed=%v problems=%v: %s", c.Name, strings.ReplaceAll(c.Artifact, r.SetID, "<set>"),
			c.Passed, c.Problems, bytesRE.ReplaceAllString(durationRE.ReplaceAllString(rtoRE.ReplaceAllString(c.Detail, "RTO <t>"), "(<t>)"), "<n> bytes")))
	}
	return out
}

// crashVerifyBackup: a drill of one set with kills, then without.
func crashVerifyBackup(ctx context.Context, t *testing.T, rep *matrixReport) {
	e := newEnv(t, 3000)
	nightly, err := e.run(ctx, t, "verify-source", e.queue, workflows.NightlyBackupInput{SkipVerify: true})
	require.NoError(t, err)
	before := e.dbFingerprints(ctx, t)
	dbs := func() []string {
		var out []string
		for _, d := range serverDatabases(ctx, t, e) {
			if !strings.HasPrefix(d, "restored-") {
				out = append(out, d)
			}
		}
		return out
	}
	beforeDBs := dbs()
	h := newCrashHarness(t, e, workflows.VerifyBackupName, nil, rep)
	in := workflows.VerifyBackupInput{SetID: nightly.SetID}
	var crash, clean workflows.VerifyBackupResult
	require.NoError(t, h.runClean(ctx, "clean-verify", workflows.VerifyBackupName, in, &clean))
	require.NoError(t, h.runWithKills(ctx, "crash-verify", workflows.VerifyBackupName, in, &crash,
		longIn(map[string][]string{workflows.VerifyBackupName: {"VerifyDump", "VerifyRDB", "CheckArtifact", "VerifySample"}})))
	var stored activities.VerifyReport
	require.NoError(t, json.Unmarshal(e.readObject(ctx, t, activities.SetKey(nightly.SetID, activities.VerifyName)), &stored))
	crashStrays := h.waitNoStrays()
	crashDBs := dbs()
	crashLive := e.dbFingerprints(ctx, t)

	h.compare("verdict and checks (name, artifact, passed, problems, detail)", verifyFigures(clean.Report), verifyFigures(crash.Report))
	h.compare("verify.json in the store is the run's report", verifyFigures(crash.Report), verifyFigures(stored))
	h.compare("verify.json names the run", "crash-verify", stored.WorkflowID)
	h.compare("databases on the server (no scratch or staging database left)", beforeDBs, crashDBs)
	h.compare("live databases untouched (table fingerprints)", before, crashLive)
	h.compare("pg_restore processes left running", []string(nil), crashStrays)
}

// crashRedisLoss: Redis down with a corrupt AOF — quarantine, start through the hook,
// rebuild from PostgreSQL — first without kills, then, lost the same way again, with.
func crashRedisLoss(ctx context.Context, t *testing.T, rep *matrixReport) {
	hk := newHooks(t)
	e := newEnvWith(t, 400, func(st *stack.Stack) map[string]string { return hk.env(t, st) })
	addr := e.st.Redis.Addr()
	seeded := redisState(ctx, t, addr)
	t.Cleanup(func() { shutdownRedis(t, addr) })
	h := newCrashHarness(t, e, workflows.RedisLossName, hk.env(t, e.st), rep)
	aofDir := e.st.Redis.AOFDir()

	// lose stops Redis and appends garbage to its AOF; it returns the corrupt file.
	lose := func(first bool) (string, []byte) {
		if first {
			require.NoError(t, e.st.Redis.Stop(ctx))
		} else {
			shutdownRedis(t, addr) // the daemon the start hook started
		}
		incr, err := filepath.Glob(filepath.Join(aofDir, "*.incr.aof"))
		require.NoError(t, err)
		require.NotEmpty(t, incr)
		path := incr[len(incr)-1]
		f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
		require.NoError(t, err)
		_, err = f.WriteString("this is not RESP\r\n")
		require.NoError(t, err)
		require.NoError(t, f.Close())
		b, err := os.ReadFile(path)
		require.NoError(t, err)
		return path, b
	}
	in := workflows.RedisLossInput{RecoveryOptions: workflows.RecoveryOptions{AutoApprove: true}}
	endState := func(res workflows.RedisLossResult, path string, corrupt []byte, runs int) []string {
		var out []string
		require.NotNil(t, res.Quarantine, "the corrupt AOF was quarantined")
		kept, err := os.ReadFile(filepath.Join(res.Quarantine.To, filepath.Base(path)))
		require.NoError(t, err, "the corrupt AOF is kept")
		out = append(out, fmt.Sprintf("corrupt AOF kept byte for byte: %v", string(kept) == string(corrupt)))
		dirs, err := filepath.Glob(aofDir + ".corrupt-*")
		require.NoError(t, err)
		out = append(out, fmt.Sprintf("one quarantine directory per run: %v", len(dirs) == runs))
		out = append(out, fmt.Sprintf("redis equals the seeded state: %v", assert.ObjectsAreEqual(seeded, redisState(ctx, t, addr))))
		n := res.Plan.Quarantine
		plan := res.Plan
		plan.Redis, plan.AOF, plan.Quarantine = activities.RedisStatus{}, nil, ""
		for i, a := range plan.Actions {
			plan.Actions[i] = strings.ReplaceAll(strings.ReplaceAll(a, n, "<quarantine>"), aofDir, "<aof>")
		}
		copies := fmt.Sprintf("%+v", res.SafetyCopies)
		copies = strings.ReplaceAll(copies, res.Quarantine.To, "<quarantine>")
		// Not compared: Rebuild.Deleted, what the last attempt found and deleted first —
		// a rebuild retried after a kill deletes what the killed attempt wrote.
		out = append(out, fmt.Sprintf("outcome %s; plan %+v; aof corrupt=%v; start hook configured=%v; rebuild wrote %+v; check ok=%v %+v; safety copies %s",
			res.Outcome, plan, res.Plan.AOF != nil && res.Plan.AOF.Corrupt, res.Started != nil && res.Started.Configured,
			res.Rebuild.Plan, res.Check.OK, res.Check.Found, copies))
		return out
	}

	var clean, crash workflows.RedisLossResult
	path, corrupt := lose(true)
	require.NoError(t, h.runClean(ctx, "clean-redisloss", workflows.RedisLossName, in, &clean))
	want := endState(clean, path, corrupt, 1)
	path, corrupt = lose(false)
	// The quarantine is short and does not heartbeat: it dies with its move done and its
	// result held back, the point where a retry must not move anything again.
	h.external = map[string]bool{"QuarantineAOF": true}
	require.NoError(t, h.runWithKills(ctx, "crash-redisloss", workflows.RedisLossName, in, &crash,
		longIn(map[string][]string{workflows.RedisLossName: {"QuarantineAOF", "RunHook", "WaitRedis", "RebuildRedis"}})))
	got := endState(crash, path, corrupt, 2)
	h.compare("the corrupt AOF kept (moved aside once, byte for byte)", want[:2], got[:2])
	h.compare("Redis state (every application key)", want[2], got[2])
	h.compare("result: plan, rebuild figures, check against PostgreSQL, safety copies", want[3], got[3])
	h.compare("Redis state equals the seeded state", seeded, redisState(ctx, t, addr))
}

// crashMinIOLoss: half the bucket deleted and a tenth of the rest changed after the
// backup; everything restored from the mirror (forced, after safety copies) — without
// kills, then, damaged the same way again, with.
func crashMinIOLoss(ctx context.Context, t *testing.T, rep *matrixReport) {
	e := newEnv(t, 1500)
	_, err := e.run(ctx, t, "minioloss-source", e.queue, workflows.NightlyBackupInput{})
	require.NoError(t, err)
	bucket := schemas.DefaultBucket
	original := objectSums(ctx, t, e.objects, bucket)
	keys := slices.Sorted(maps.Keys(original))
	h := newCrashHarness(t, e, workflows.MinIOLossName, nil, rep)
	damage := func() map[string]string {
		edited := map[string]string{}
		for i, k := range keys {
			switch {
			case i%2 == 0:
				require.NoError(t, e.objects.RemoveObject(ctx, bucket, k, minio.RemoveObjectOptions{}))
			case i%10 == 1:
				body := "edited after the backup: " + k
				_, err := e.objects.PutObject(ctx, bucket, k, strings.NewReader(body), int64(len(body)), minio.PutObjectOptions{})
				require.NoError(t, err)
				edited[k] = fmt.Sprintf("%x", md5Sum(body))
			}
		}
		return edited
	}
	in := workflows.MinIOLossInput{Scope: workflows.ScopeAll, Force: true, RecoveryOptions: workflows.RecoveryOptions{AutoApprove: true}}
	safety := func(id string) map[string]string {
		prefix := activities.SafetyObjectsPrefix(id, bucket)
		out := map[string]string{}
		for k := range h.storeKeys(ctx, prefix) {
			out[k] = fmt.Sprintf("%x", md5Sum(string(e.readObject(ctx, t, prefix+k))))
		}
		return out
	}
	// Not compared: how Restored and Unchanged split the objects. RestoreObjects documents
	// that objects a killed attempt restored after its last heartbeat count as unchanged
	// in the retry; their sum is compared.
	figures := func(r workflows.MinIOLossResult) string {
		return fmt.Sprintf("outcome %s; plan: restore %d (%d bytes), safety %d, skipped %d, bucket exists %v; restored + unchanged %d, kept newer %d; check %d/%d passed=%v",
			r.Outcome, r.Plan.Objects.Restore, r.Plan.Objects.RestoreBytes, r.Plan.Objects.SafetyCopies, r.Plan.Objects.Skipped, r.Plan.Objects.BucketExists,
			r.Restored.Restored+r.Restored.Unchanged, r.Restored.KeptNewer, r.Check.Matched, r.Check.Checked, r.Check.Passed)
	}
	// The safety copies the run reports: the activity's count (documented as "copied by
	// this or an earlier attempt") and the recovery report's entry.
	reported := func(r workflows.MinIOLossResult) string {
		return fmt.Sprintf("restore step: %d safety copies; recovery report: %+v", r.Restored.SafetyCopied, r.SafetyCopies)
	}

	var clean, crash workflows.MinIOLossResult
	edited := damage()
	require.NoError(t, h.runClean(ctx, "clean-minioloss", workflows.MinIOLossName, in, &clean))
	cleanBucket := objectSums(ctx, t, e.objects, bucket)
	cleanSafety := safety("clean-minioloss")
	require.Equal(t, original, cleanBucket, "the uninterrupted run restores the bucket")
	require.Equal(t, edited, cleanSafety, "the uninterrupted run copies every edited object first")
	damage()
	require.NoError(t, h.runWithKills(ctx, "crash-minioloss", workflows.MinIOLossName, in, &crash,
		longIn(map[string][]string{workflows.MinIOLossName: {"PlanRestore", "RestoreObjects", "VerifyRestore"}})))
	h.compare("bucket: every key and its content (md5)", cleanBucket, objectSums(ctx, t, e.objects, bucket))
	h.compare("safety copies: keys and content of the overwritten objects", cleanSafety, safety("crash-minioloss"))
	h.compare("result: plan, restore and check figures", figures(clean), figures(crash))
	h.compare("safety copies the result reports",
		strings.ReplaceAll(reported(clean), "clean-minioloss", "<id>"), strings.ReplaceAll(reported(crash), "crash-minioloss", "<id>"))
	h.compare("multipart uploads left open in the store", []string(nil), h.incompleteUploads(ctx))
}

// crashTotalDBLoss: both databases and Redis changed after the backup; the runbook takes
// safety copies, stops the services, restores both databases, restarts the services and
// rebuilds Redis (child RedisLoss) — without kills, then, changed the same way again, with.
func crashTotalDBLoss(ctx context.Context, t *testing.T, rep *matrixReport) {
	hk := newHooks(t)
	e := newEnvWith(t, 400, func(st *stack.Stack) map[string]string { return hk.env(t, st) })
	_, err := e.run(ctx, t, "totaldbloss-source", e.queue, workflows.NightlyBackupInput{})
	require.NoError(t, err)
	setFP := e.dbFingerprints(ctx, t)
	seeded := redisState(ctx, t, e.st.Redis.Addr())
	h := newCrashHarness(t, e, workflows.TotalDBLossName, hk.env(t, e.st), rep)
	ctrlURL := e.st.Postgres.URL(schemas.ControllerDB)

	// damage changes the live data after the backup and returns the changed tasks table.
	damage := func() string {
		for db, sql := range map[string]string{
			schemas.ControllerDB: `CREATE TABLE after_backup (v int); INSERT INTO after_backup VALUES (42);
				UPDATE tasks_task SET progress = 7 WHERE status = 'running'`,
			schemas.DispatcherDB: `CREATE TABLE after_backup (v int); INSERT INTO after_backup VALUES (43)`,
		} {
			conn, err := pgx.Connect(ctx, e.st.Postgres.URL(db))
			require.NoError(t, err)
			_, err = conn.Exec(ctx, sql)
			require.NoError(t, err)
			conn.Close(ctx)
		}
		rdb := redis.NewClient(&redis.Options{Addr: e.st.Redis.Addr()})
		defer rdb.Close()
		require.NoError(t, rdb.Del(ctx, schemas.PendingQueueKey).Err())
		return tableFingerprint(ctx, t, ctrlURL, schemas.TasksTable)
	}
	in := workflows.TotalDBLossInput{RecoveryOptions: workflows.RecoveryOptions{AutoApprove: true}}
	restoreNo := 0
	endState := func(id string, res workflows.TotalDBLossResult, hooksFrom int, damaged string) []string {
		out := []string{
			fmt.Sprintf("outcome %s, set %s", res.Outcome, res.Plan.SetID),
			fmt.Sprintf("databases equal the set: %v", assert.ObjectsAreEqual(setFP, e.dbFingerprints(ctx, t))),
			fmt.Sprintf("redis equals the seeded state: %v", assert.ObjectsAreEqual(seeded, redisState(ctx, t, e.st.Redis.Addr()))),
			fmt.Sprintf("hooks in order: %v", collapse(hk.lines(t)[hooksFrom:])),
			fmt.Sprintf("databases on the server: %v", h.databases(ctx)),
		}
		var copies []string
		for _, c := range res.SafetyCopies {
			copies = append(copies, fmt.Sprintf("%s %s count=%d skipped=%q bytes>0=%v", c.What, strings.ReplaceAll(c.Key, id, "<id>"), c.Count, c.Skipped, c.Bytes > 0))
		}
		out = append(out, fmt.Sprintf("safety copies: %v", copies))
		out = append(out, fmt.Sprintf("safety area: %v", slices.Sorted(maps.Keys(h.storeKeys(ctx, activities.SafetyKeyPrefix(id))))))
		// The controller's safety copy restores to the data it replaced.
		restoreNo++
		check := fmt.Sprintf("safety_check_%d", restoreNo)
		path, _ := e.getObject(ctx, t, activities.SafetyPostgresKey(id, schemas.ControllerDB), t.TempDir())
		raw := zstdDecode(t, path)
		require.NoError(t, e.st.Postgres.CreateDatabase(ctx, check))
		b, err := exec.CommandContext(ctx, filepath.Join(e.st.Postgres.BinDir(), "pg_restore"), "--no-owner", "--exit-on-error",
			"-d", e.st.Postgres.URL(check), raw).CombinedOutput()
		require.NoError(t, err, "pg_restore of the safety copy: %s", b)
		out = append(out, fmt.Sprintf("safety copy restores to the replaced data: %v", tableFingerprint(ctx, t, e.st.Postgres.URL(check), schemas.TasksTable) == damaged))
		var rl string
		if res.Redis != nil {
			rl = fmt.Sprintf("rebuild deleted=%d wrote %+v, check ok=%v", res.Redis.Rebuild.Deleted, res.Redis.Rebuild.Plan, res.Redis.Check.OK)
		}
		out = append(out, "child RedisLoss: "+rl)
		var dbs []string
		for _, d := range res.Databases {
			dbs = append(dbs, fmt.Sprintf("%s → %s replaced=%v rows %v", d.Database, d.Target, d.Replaced, d.RowCounts))
		}
		out = append(out, fmt.Sprintf("restored: %v", dbs))
		return out
	}

	var clean, crash workflows.TotalDBLossResult
	damaged := damage()
	from := len(hk.lines(t))
	require.NoError(t, h.runClean(ctx, "clean-totaldbloss", workflows.TotalDBLossName, in, &clean))
	want := endState("clean-totaldbloss", clean, from, damaged)
	dropDB(ctx, t, e, "safety_check_1")
	damaged = damage()
	from = len(hk.lines(t))
	// RestoreDatabase dies in its swap, between renaming the target aside and renaming the
	// staging database to the target: the target must exist throughout.
	trap := newSwapTrap(h, []string{schemas.ControllerDB, schemas.DispatcherDB})
	h.external = map[string]bool{"RestoreDatabase": true}
	h.afterKill = trap.release
	require.NoError(t, h.runWithKills(ctx, "crash-totaldbloss", workflows.TotalDBLossName, in, &crash,
		longIn(map[string][]string{workflows.TotalDBLossName: {"Dump", "RestoreDatabase"}})))
	trap.stop()
	crashStrays := h.waitNoStrays()
	got := endState("crash-totaldbloss", crash, from, damaged)
	for i, what := range []string{"outcome and set", "databases (table fingerprints) equal the set", "Redis state (every application key)",
		"service hooks, in order (a hook retried after a kill may repeat)", "databases on the server (no staging database left)",
		"safety copies in the result", "safety area in the store (keys)", "the controller's safety copy restores to the data it replaced",
		"child RedisLoss rebuild and check", "restored databases and row counts"} {
		h.compare(what, want[i], got[i])
	}
	h.compare("pg_dump / pg_restore processes left running", []string(nil), crashStrays)
	h.compare("multipart uploads left open in the store", []string(nil), h.incompleteUploads(ctx))
	h.compare("RestoreDatabase killed in its swap (between its two RENAMEs)", true, trap.sprung.Load())
	h.compare("no database missing for more than a second", "", trap.missing())
}

// swapTrap catches RestoreDatabase in its swap. As soon as a staging database exists it
// holds a row lock on its pg_database entry, so that the swap's ALTER DATABASE staging
// RENAME TO target waits once the target is renamed aside in the same transaction; then
// it has the worker killed there and, the worker dead, ends the waiting RENAME before
// letting go: for the server, the worker died between the two statements. It also
// measures how long each target database is missing (from pg_database) from then on.
type swapTrap struct {
	h       *crashHarness
	targets []string
	sprung  atomic.Bool
	quit    chan struct{}
	done    chan struct{}

	mu      sync.Mutex
	locks   map[string]*pgx.Conn // staging database → connection holding the lock
	gone    map[string]time.Time // target → missing since
	longest map[string]time.Duration
}

func newSwapTrap(h *crashHarness, targets []string) *swapTrap {
	tr := &swapTrap{h: h, targets: targets, quit: make(chan struct{}), done: make(chan struct{}),
		locks: map[string]*pgx.Conn{}, gone: map[string]time.Time{}, longest: map[string]time.Duration{}}
	go tr.watch()
	return tr
}

const renameWaiting = `SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query ILIKE 'ALTER DATABASE % RENAME TO %'`

func (tr *swapTrap) watch() {
	defer close(tr.done)
	t := tr.h.t
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, tr.h.e.st.Postgres.URL("postgres"))
	if err != nil {
		t.Errorf("swap trap: %v", err)
		return
	}
	defer admin.Close(ctx)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-tr.quit:
			return
		case <-tick.C:
		}
		rows, err := admin.Query(ctx, "SELECT datname FROM pg_database")
		if err != nil {
			t.Errorf("swap trap: %v", err)
			return
		}
		dbs, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Errorf("swap trap: %v", err)
			return
		}
		tr.mu.Lock()
		for _, target := range tr.targets {
			if staging := activities.StagingDatabase(target); !tr.sprung.Load() && slices.Contains(dbs, staging) && tr.locks[staging] == nil {
				if err := tr.lock(ctx, staging); err != nil {
					t.Errorf("swap trap: lock %s: %v", staging, err)
				}
			}
			switch since, missing := tr.gone[target]; {
			case !slices.Contains(dbs, target) && !missing:
				tr.gone[target] = time.Now()
			case slices.Contains(dbs, target) && missing:
				tr.longest[target] = max(tr.longest[target], time.Since(since))
				delete(tr.gone, target)
			}
		}
		tr.mu.Unlock()
		if tr.sprung.Load() {
			continue
		}
		var pid int
		if err := admin.QueryRow(ctx, renameWaiting).Scan(&pid); err == nil {
			if tr.h.tap.killRunning("RestoreDatabase", "in its swap: the target renamed aside, the RENAME of the staging database not done") {
				tr.sprung.Store(true)
			}
		}
	}
}

// lock holds a row lock on staging's pg_database entry until release. Called with mu held.
func (tr *swapTrap) lock(ctx context.Context, staging string) error {
	conn, err := pgx.Connect(ctx, tr.h.e.st.Postgres.URL("postgres"))
	if err != nil {
		return err
	}
	var name string
	if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
		conn.Close(ctx)
		return err
	}
	if err := conn.QueryRow(ctx, "SELECT datname FROM pg_database WHERE datname = $1 FOR UPDATE", staging).Scan(&name); err != nil {
		conn.Close(ctx)
		return err
	}
	tr.locks[staging] = conn
	return nil
}

// release runs right after a SIGKILL: it ends the RENAMEs the dead worker left waiting,
// then drops the locks.
func (tr *swapTrap) release() {
	t := tr.h.t
	ctx := context.Background()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if len(tr.locks) == 0 {
		return
	}
	admin, err := pgx.Connect(ctx, tr.h.e.st.Postgres.URL("postgres"))
	if err != nil {
		t.Errorf("swap trap: %v", err)
		return
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM ("+renameWaiting+") w"); err != nil {
		t.Errorf("swap trap: end the waiting RENAME: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		var n int
		if err := admin.QueryRow(ctx, "SELECT count(*) FROM ("+renameWaiting+") w").Scan(&n); err != nil || n == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	for staging, conn := range tr.locks {
		conn.Close(ctx) // ends the transaction, and the lock with it
		delete(tr.locks, staging)
	}
}

func (tr *swapTrap) stop() {
	close(tr.quit)
	<-tr.done
	tr.release()
}

// missing names the targets that were missing for more than a second, and for how long.
func (tr *swapTrap) missing() string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	var out []string
	for _, target := range tr.targets {
		d := tr.longest[target]
		if since, ok := tr.gone[target]; ok {
			d = max(d, time.Since(since))
		}
		if d > time.Second {
			out = append(out, fmt.Sprintf("%s missing for %s", target, d.Round(time.Second)))
		}
	}
	return strings.Join(out, "; ")
}

func dropDB(ctx context.Context, t *testing.T, e *env, name string) {
	conn, err := pgx.Connect(ctx, e.st.Postgres.URL("postgres"))
	require.NoError(t, err)
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "DROP DATABASE "+pgx.Identifier{name}.Sanitize())
	require.NoError(t, err)
}

// crashFullClusterRecovery: the lost cluster of TestFullClusterRecoveryEndToEnd, recovered
// with kills; the workload makes every run different, so the end state is checked by the
// invariants of that test (every task in flight at the recovery point re-queued once,
// ended, run once by the new agents) rather than against a second run.
func crashFullClusterRecovery(ctx context.Context, t *testing.T, rep *matrixReport) {
	s := newFullClusterLoss(ctx, t)
	e := s.e
	h := newCrashHarness(t, e, workflows.FullClusterRecoveryName, s.h.env(t, e.st), rep)
	var gen2 *kohakku.Sim
	h.tick = func() {
		// The new agents come up with the services, as in the end-to-end test.
		if gen2 == nil && slices.Contains(s.h.lines(t), "restart monitor") {
			gen2 = s.startAgents(ctx, t)
		}
	}
	var res workflows.FullClusterResult
	require.NoError(t, h.runWithKills(ctx, "crash-fcr", workflows.FullClusterRecoveryName, recoveryInput, &res,
		longIn(map[string][]string{workflows.RedispatchLostTasksName: {"RequeueLost"}})))
	require.NotNil(t, gen2, "the services restarted")
	h.compared = append(h.compared, "outcome, recovery point, stages in order",
		"every task in flight at the recovery point re-queued once and ended; none ran twice",
		"no task left on an agent of the lost cluster", "the bucket is back")
	s.check(ctx, t, "crash-fcr", res, gen2)
	h.compare("service hooks, in order (a hook retried after a kill may repeat)",
		[]string{"restart controller", "restart dispatcher", "restart monitor"}, collapse(s.h.lines(t)))
	h.compare("pg_dump / pg_restore processes left running", []string(nil), h.waitNoStrays())
}

// --- the report ---

type matrixRow struct {
	Runbook, N, Point, InFlight, Retries, Resumed, Result string
}

type runbookResult struct {
	Runbook                string
	Rows                   []matrixRow
	Compared, Differs      []string
	Boundary, Mid, Covered int
	Midway                 int // activity attempts that died running
	Wall, Run              time.Duration
	Passed                 bool
}

type matrixReport struct {
	mu      sync.Mutex
	started time.Time
	path    string
	begun   map[string]time.Time
	results []runbookResult
}

func (r *matrixReport) begin(runbook string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.begun[runbook] = time.Now()
}

// add records a runbook's result; its wall time runs from begin.
func (r *matrixReport) add(res runbookResult) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if at, ok := r.begun[res.Runbook]; ok {
		res.Wall = time.Since(at)
	}
	r.results = append(r.results, res)
}

func (r *matrixReport) write(t *testing.T) {
	r.mu.Lock()
	defer r.mu.Unlock()
	order := map[string]int{}
	for i, sc := range crashScenarios {
		order[sc.name] = i
	}
	sort.Slice(r.results, func(i, j int) bool { return order[r.results[i].Runbook] < order[r.results[j].Runbook] })
	md := r.markdown()
	require.NoError(t, os.MkdirAll(filepath.Dir(r.path), 0o755))
	require.NoError(t, os.WriteFile(r.path, []byte(md), 0o644))
	t.Logf("crash matrix written to %s:\n%s", r.path, md)
}

func (r *matrixReport) markdown() string {
	var b strings.Builder
	kills, wall := 0, time.Since(r.started)
	for _, res := range r.results {
		kills += res.Boundary + res.Mid
	}
	fmt.Fprintf(&b, "_Generated by `make test-faults` on %s (%s/%s, %d CPUs): %d runbooks, %d kills, %s wall time._\n\n",
		time.Now().UTC().Format("2006-01-02"), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), len(r.results), kills, wall.Round(time.Second))
	b.WriteString("| Runbook | Kills at step boundaries | Kills mid-activity | Activity attempts killed running | Boundaries not killed | Run with kills | Whole test | End state vs. uninterrupted run |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---|\n")
	for _, res := range r.results {
		verdict := "**fail** (see the test log)"
		switch {
		case res.Passed:
			verdict = "equal — pass"
		case len(res.Differs) > 0:
			verdict = "**fail**: differs in " + strings.Join(res.Differs, "; ")
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %d | %s | %s | %s |\n", res.Runbook, res.Boundary, res.Mid, res.Midway, res.Covered,
			res.Run.Round(time.Second), res.Wall.Round(time.Second), verdict)
	}
	b.WriteString("\nCompared after each run:\n\n")
	for _, res := range r.results {
		fmt.Fprintf(&b, "- **%s**: %s.\n", res.Runbook, strings.Join(res.Compared, "; "))
	}
	b.WriteString("\n| Runbook | # | Kill point | Also running (killed with it) / why not killed | Retries seen in history | Resumed by the next worker | Result |\n")
	b.WriteString("|---|---:|---|---|---|---|---|\n")
	for _, res := range r.results {
		for _, row := range res.Rows {
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s |\n", row.Runbook, row.N, mdCell(row.Point), mdCell(row.InFlight),
				mdCell(row.Retries), row.Resumed, row.Result)
		}
	}
	return b.String()
}

func mdCell(s string) string { return strings.ReplaceAll(s, "|", "\\|") }
