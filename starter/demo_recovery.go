package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/minio/minio-go/v7"
	"github.com/redis/go-redis/v9"
	"go.temporal.io/sdk/client"

	"github.com/kohakku/drflow/activities"
	"github.com/kohakku/drflow/internal/kohakku"
	"github.com/kohakku/drflow/internal/profile"
	"github.com/kohakku/drflow/schemas"
	"github.com/kohakku/drflow/workflows"
)

// recoveryInput is the demo's FullClusterRecovery input, with the figures of the
// end-to-end test: approved up front (the demo is a drill on its own stack), an agent is
// gone after 3s of silence instead of 2m, re-dispatched tasks are counted every 500ms.
// Every object comes back (scope "all"), so the bucket can be compared with the backup.
func recoveryInput() workflows.FullClusterRecoveryInput {
	return workflows.FullClusterRecoveryInput{
		Scope:               workflows.ScopeAll,
		LostAfter:           workflows.Duration(3 * time.Second),
		RedispatchPollEvery: workflows.Duration(500 * time.Millisecond),
		RedispatchDeadline:  workflows.Duration(2 * time.Minute),
		RecoveryOptions:     workflows.RecoveryOptions{AutoApprove: true},
	}
}

// dataCounts are the figures a recovery is compared by: the row counts of the key tables
// ("database.table"), the Redis keys and the objects in the app bucket.
type dataCounts struct {
	rows        map[string]int64
	redisKeys   int64
	objects     int64
	objectBytes int64
}

// manifestCounts are the figures the backup set recorded.
func manifestCounts(m activities.Manifest) dataCounts {
	c := dataCounts{rows: map[string]int64{}}
	for _, a := range m.Artifacts {
		switch {
		case a.Kind == activities.KindPostgres:
			for t, n := range a.RowCounts {
				c.rows[a.Source+"."+t] = n
			}
		case a.Kind == activities.KindRedis:
			c.redisKeys += a.KeyCount
		case a.Kind == activities.KindListing && a.Source == schemas.DefaultBucket:
			c.objects, c.objectBytes = a.Objects, a.ObjectBytes
		}
	}
	return c
}

// recovery is what the demo saw of its FullClusterRecovery run.
type recovery struct {
	id  string
	res workflows.FullClusterResult
	// restored are the figures counted as each stage finished, before the new agents
	// changed anything; now those counted at the end.
	restored, now dataCounts
	// requeued counts the re-dispatched tasks by their status in PostgreSQL at the end.
	requeued map[string]int64
	// twice lists tasks a new agent ran more than once (should be none).
	twice []int64
}

// runRecovery starts FullClusterRecovery and follows its progress query until it ends:
// each step is printed as it finishes, with its duration, and the running one is shown on
// the step line. As the stages finish, the restored data is counted, and once the services
// are back the second generation of agents starts, as the restarted dispatcher would hand
// them the re-dispatched tasks.
func (d *demo) runRecovery(ctx context.Context) (string, error) {
	cl, err := d.dial(ctx)
	if err != nil {
		return "", err
	}
	defer cl.Close()
	d.rec = &recovery{id: "demo-full-cluster-recovery-" + time.Now().UTC().Format("20060102T150405Z"),
		restored: dataCounts{rows: map[string]int64{}}}
	run, err := cl.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: d.rec.id, TaskQueue: workflows.TaskQueue},
		workflows.FullClusterRecoveryName, recoveryInput())
	if err != nil {
		return "", fmt.Errorf("start %s: %w", workflows.FullClusterRecoveryName, err)
	}
	done := make(chan error, 1)
	go func() { done <- run.Get(ctx, &d.rec.res) }()
	f := &follower{d: d, cl: cl, id: d.rec.id, printed: map[string]bool{}, retries: map[string]bool{}}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	timeout := time.NewTimer(recoveryTimeout)
	defer timeout.Stop()
	for {
		select {
		case <-timeout.C:
			why := "no activity is failing: see the worker log " + d.workerLog
			if f.retry != "" {
				why = truncate(f.retry, 500)
			}
			return "", fmt.Errorf("%s did not finish within %s (%s); its steps are in the Web UI, %s",
				d.rec.id, recoveryTimeout, why, d.workflowURL(d.rec.id))
		case err := <-done:
			f.poll(ctx) // the last steps
			if err != nil {
				return "", fmt.Errorf("%s failed; its steps and errors are in the Web UI, %s: %w", d.rec.id, d.workflowURL(d.rec.id), err)
			}
			if f.err != nil {
				return "", f.err
			}
			res := d.rec.res
			return fmt.Sprintf("%s from set %s, total RTO %s", res.Outcome, res.Plan.SetID, res.RTO.D().Round(10*time.Millisecond)), nil
		case <-tick.C:
			f.poll(ctx)
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
}

// showRunningSteps shows the running steps of workflow id on the step line (on a
// terminal) until the returned function is called.
func (d *demo) showRunningSteps(ctx context.Context, cl client.Client, id string) (stop func()) {
	if !d.con.tty {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(300 * time.Millisecond)
		defer tick.Stop()
		for {
			if p, err := queryProgress(ctx, cl, id); err == nil {
				var running []string
				for _, s := range p.Steps {
					if s.Status == workflows.StepRunning {
						running = append(running, s.Name)
					}
				}
				d.con.setStatus(strings.Join(running, ", "))
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return func() { cancel(); <-done }
}

// recoveryTimeout bounds the demo's wait for FullClusterRecovery, which takes seconds
// when all is well. A failing activity is retried with backoff for much longer, as it
// should be in production; the demo says which one and why instead of waiting.
const recoveryTimeout = 3 * time.Minute

// follower polls a FullClusterRecovery run's progress query.
type follower struct {
	d       *demo
	cl      client.Client
	id      string
	printed map[string]bool // steps printed as finished
	polls   int
	// retry describes an activity being retried after a failure, "" when none is;
	// retryNote is its short form for the step line.
	retry, retryNote string
	retries          map[string]bool // retrying activities already printed
	// err is the first failure of what the demo does at a stage (count, start agents).
	err error
}

// poll prints the steps that finished since the last poll and acts on them. A failed
// query (the run not started yet, a busy worker) is skipped: the next tick asks again.
func (f *follower) poll(ctx context.Context) {
	p, err := queryProgress(ctx, f.cl, f.id)
	if err != nil {
		return
	}
	var running []string
	for _, s := range p.Steps {
		switch s.Status {
		case workflows.StepPending:
			continue
		case workflows.StepRunning:
			running = append(running, f.runningStatus(ctx, s))
			continue
		}
		if f.printed[s.Name] {
			continue
		}
		f.printed[s.Name] = true
		f.d.con.printf("%s", strings.TrimRight(fmt.Sprintf("       %s %-16s %8s  %s", stepMark(s.Status), s.Name, stepTook(s), s.Detail), " "))
		if s.Status == workflows.StepCompleted {
			f.finished(ctx, s.Name)
		}
	}
	// Every second, look for a failing activity: the progress query does not show
	// retries, and a recovery that retries one for minutes otherwise looks merely slow.
	if f.polls++; f.polls%5 == 0 {
		f.retry, f.retryNote = "", ""
		if a := retryingActivity(ctx, f.cl, f.id, 2); a != nil {
			f.retry = a.String()
			f.retryNote = fmt.Sprintf("%s retrying (attempt %d)", a.activity, a.attempt)
			if key := a.workflowID + "/" + a.activity; !f.retries[key] {
				f.retries[key] = true
				f.d.con.printf("       ! %s", truncate(f.retry, 300))
			}
		}
	}
	if f.retryNote != "" {
		running = append(running, f.retryNote)
	}
	f.d.con.setStatus(strings.Join(running, ", "))
}

// retryingActivityInfo is an activity that failed and waits for its next attempt.
type retryingActivityInfo struct {
	workflowID, activity, lastError string
	attempt                         int32
}

func (a *retryingActivityInfo) String() string {
	return fmt.Sprintf("activity %s of %s is being retried (attempt %d), last error: %s", a.activity, a.workflowID, a.attempt, a.lastError)
}

// retryingActivity finds an activity of workflow id, or of its running children down to
// depth levels, that failed and is being retried; nil when there is none.
func retryingActivity(ctx context.Context, cl client.Client, id string, depth int) *retryingActivityInfo {
	resp, err := cl.DescribeWorkflowExecution(ctx, id, "")
	if err != nil {
		return nil
	}
	for _, a := range resp.GetPendingActivities() {
		if a.GetAttempt() > 1 && a.GetLastFailure() != nil {
			return &retryingActivityInfo{workflowID: id, activity: a.GetActivityType().GetName(),
				attempt: a.GetAttempt(), lastError: a.GetLastFailure().GetMessage()}
		}
	}
	if depth > 0 {
		for _, c := range resp.GetPendingChildren() {
			if a := retryingActivity(ctx, cl, c.GetWorkflowId(), depth-1); a != nil {
				return a
			}
		}
	}
	return nil
}

// runningStatus describes a running step for the step line: its name and time so far,
// and for the re-dispatch how many of the re-queued tasks have ended.
func (f *follower) runningStatus(ctx context.Context, s workflows.StepProgress) string {
	status := s.Name
	if s.Name == "redispatch" {
		if p, err := queryProgress(ctx, f.cl, f.id+"-redispatch"); err == nil && p.Tasks != nil && p.Tasks.Requeued > 0 {
			t := p.Tasks
			status += fmt.Sprintf(": %d of %d re-queued tasks ended", t.Completed+t.Failed+t.Cancelled, t.Requeued)
		}
	}
	return status
}

// finished acts on a stage that completed: count what it restored before anything else
// changes it, and start the new agents once the services are back (when the end-to-end
// test does).
func (f *follower) finished(ctx context.Context, stage string) {
	d := f.d
	var err error
	switch stage {
	case "postgres":
		d.rec.restored.rows, err = d.countRows(ctx, d.backup.Manifest)
	case "redis":
		d.rec.restored.redisKeys, err = d.countRedisKeys(ctx)
	case "minio":
		d.rec.restored.objects, d.rec.restored.objectBytes, err = d.countObjects(ctx)
	case "services":
		d.gen2, err = d.startSim(ctx, recoveredWorkloadOptions())
		if err == nil {
			d.con.printf("       ↳ %d new agents (%s…) started with the services", recoveredWorkloadOptions().Agents, gen2)
		}
	}
	if err != nil && f.err == nil {
		f.err = fmt.Errorf("after stage %s: %w", stage, err)
	}
}

func stepMark(s workflows.StepStatus) string {
	switch s {
	case workflows.StepCompleted:
		return "✓"
	case workflows.StepSkipped:
		return "-"
	}
	return "✗"
}

func stepTook(s workflows.StepProgress) string {
	if s.StartedAt.IsZero() || s.FinishedAt.IsZero() {
		return ""
	}
	return s.FinishedAt.Sub(s.StartedAt).Round(10 * time.Millisecond).String()
}

// compareData counts the data again now that the re-dispatched tasks have run, checks
// the recovery against the backup set and against PostgreSQL, and says what differs.
// The restored figures must equal the set's; every re-dispatched task must have ended,
// each run once by a new agent.
func (d *demo) compareData(ctx context.Context) (string, error) {
	r, m := d.rec, manifestCounts(d.backup.Manifest)
	var err error
	if r.now.rows, err = d.countRows(ctx, d.backup.Manifest); err != nil {
		return "", err
	}
	if r.now.redisKeys, err = d.countRedisKeys(ctx); err != nil {
		return "", err
	}
	if r.now.objects, r.now.objectBytes, err = d.countObjects(ctx); err != nil {
		return "", err
	}
	if r.requeued, err = d.requeuedByStatus(ctx, r.id); err != nil {
		return "", err
	}
	for id, n := range d.gen2Stats().Runs {
		if n > 1 {
			r.twice = append(r.twice, id)
		}
	}
	slices.Sort(r.twice)

	var problems []string
	for _, t := range sortedKeys(m.rows) {
		if got := r.restored.rows[t]; got != m.rows[t] {
			problems = append(problems, fmt.Sprintf("%s has %d rows after the restore, the set %d", t, got, m.rows[t]))
		}
	}
	if r.restored.objects != m.objects {
		problems = append(problems, fmt.Sprintf("bucket %s has %d objects after the restore, the set %d", schemas.DefaultBucket, r.restored.objects, m.objects))
	}
	rd := r.res.Redispatch
	var requeued, ended int64
	for st, n := range r.requeued {
		requeued += n
		if schemas.IsTerminal(st) {
			ended += n
		}
	}
	switch {
	case rd == nil:
		problems = append(problems, "the recovery reports no re-dispatch")
	case rd.Counts.Requeued != requeued:
		problems = append(problems, fmt.Sprintf("the recovery re-queued %d tasks, drflow.requeued lists %d", rd.Counts.Requeued, requeued))
	}
	if ended != requeued {
		problems = append(problems, fmt.Sprintf("%d of %d re-dispatched tasks have not ended", requeued-ended, requeued))
	}
	if len(r.twice) > 0 {
		problems = append(problems, fmt.Sprintf("tasks run twice after the recovery: %v", r.twice))
	}
	if len(problems) > 0 {
		return "", errors.New(strings.Join(problems, "; "))
	}
	return fmt.Sprintf("%d tables and %d objects as in the set; %d re-dispatched tasks all ended, each run once",
		len(m.rows), m.objects, requeued), nil
}

// countRows counts the rows of the tables the manifest has counts for, in the live
// databases.
func (d *demo) countRows(ctx context.Context, m activities.Manifest) (map[string]int64, error) {
	out := map[string]int64{}
	for _, a := range m.Artifacts {
		if a.Kind != activities.KindPostgres {
			continue
		}
		err := d.withDB(ctx, a.Source, func(conn *pgx.Conn) error {
			for t := range a.RowCounts {
				var n int64
				ident := pgx.Identifier(strings.Split(t, "."))
				if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+ident.Sanitize()).Scan(&n); err != nil {
					return fmt.Errorf("count rows of %s in %s: %w", t, a.Source, err)
				}
				out[a.Source+"."+t] = n
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// countRedisKeys is the number of keys in the live Redis (database 0, the app's).
func (d *demo) countRedisKeys(ctx context.Context) (int64, error) {
	rdb := redis.NewClient(&redis.Options{Addr: d.st.Redis.Addr()})
	defer rdb.Close()
	n, err := rdb.DBSize(ctx).Result()
	if err != nil {
		return 0, fmt.Errorf("count redis keys at %s: %w", d.st.Redis.Addr(), err)
	}
	return n, nil
}

// countObjects counts the objects, and their bytes, in the app bucket.
func (d *demo) countObjects(ctx context.Context) (n, bytes int64, err error) {
	objects, err := d.st.MinIO.Client()
	if err != nil {
		return 0, 0, err
	}
	for o := range objects.ListObjects(ctx, schemas.DefaultBucket, minio.ListObjectsOptions{Recursive: true}) {
		if o.Err != nil {
			return 0, 0, fmt.Errorf("list bucket %s: %w", schemas.DefaultBucket, o.Err)
		}
		n++
		bytes += o.Size
	}
	return n, bytes, nil
}

// requeuedByStatus counts the tasks the recovery re-queued (profile.RequeuedTable, written by
// RedispatchLostTasks) by their status now, from PostgreSQL itself rather than from
// the workflow's own report.
func (d *demo) requeuedByStatus(ctx context.Context, recoveryID string) (map[string]int64, error) {
	out := map[string]int64{}
	err := d.withDB(ctx, schemas.ControllerDB, func(conn *pgx.Conn) error {
		rows, err := conn.Query(ctx, `SELECT t.status, count(*) FROM `+profile.RequeuedTable+` r JOIN `+schemas.TasksTable+
			` t ON t.id = r.task_id WHERE r.recovery_id = $1 GROUP BY t.status`, recoveryID)
		if err != nil {
			return fmt.Errorf("count re-dispatched tasks: %w", err)
		}
		var st string
		var n int64
		_, err = pgx.ForEachRow(rows, []any{&st, &n}, func() error { out[st] = n; return nil })
		return err
	})
	return out, err
}

// withDB runs fn on a new connection to database db of the stack.
func (d *demo) withDB(ctx context.Context, db string, fn func(*pgx.Conn) error) error {
	conn, err := pgx.Connect(ctx, d.st.Postgres.URL(db))
	if err != nil {
		return fmt.Errorf("connect to %s: %w", db, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return fn(conn)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// gen2Stats is the second generation's counters, zero when it never started.
func (d *demo) gen2Stats() kohakku.SimStats {
	if d.gen2 == nil {
		return kohakku.SimStats{}
	}
	return d.gen2.Stats()
}
