package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/kohakku/drflow/activities"
	"github.com/kohakku/drflow/internal/units"
	"github.com/kohakku/drflow/schemas"
	"github.com/kohakku/drflow/workflows"
)

// printSummary prints what the demo ran and what came out of it: the stack, the backup
// set, the recovery with its RTO per stage, the data before and after, the fate of the
// lost tasks and where to look in the Web UI.
func (d *demo) printSummary() {
	st, w := d.st, d.out
	fmt.Fprintf(w, `
summary (%s)
  PostgreSQL   %s  databases %s, %s (%d tasks)
  Redis        %s  (AOF on; %d queued, %d task hashes)
  MinIO (app)  %s  bucket %s (%d objects, %d bytes)
  S3 backups   %s  bucket %s
  Temporal     %s  namespace default, task queue %s
  SelfCheck    %d steps heartbeated by %s
  Schedule     %s; starts %s
  Backup set   %s (%s), verified by its child VerifyBackup
%s`,
		time.Since(d.started).Round(100*time.Millisecond),
		st.Postgres.URL(""), schemas.ControllerDB, schemas.DispatcherDB, d.summary.Tasks,
		st.Redis.Addr(), d.summary.PendingQueued, d.summary.TaskHashes,
		st.MinIO.URL(), schemas.DefaultBucket, d.summary.Objects, d.summary.Bytes,
		st.Backup.URL(), demoBackupBucket,
		d.grpcAddr, workflows.TaskQueue,
		d.selfCheck.Soak.Steps, d.selfCheck.Soak.Host,
		d.schedule, workflows.NightlyBackupName,
		d.backup.SetID, d.backupID, d.backupLines())
	d.printRecovery(w)
	fmt.Fprintf(w, `
NightlyBackup, its VerifyBackup and FullClusterRecovery ran for real against real servers.
With --keep, explore with: DRFLOW_CONFIG=%s starter progress %s
(and starter start TotalDBLoss --input '{"dryRun": true}' --wait; RedisLoss and MinIOLoss likewise).
`, d.configPath, d.rec.id)
}

// backupLines lists the set's artifacts with their figures, one per line.
func (d *demo) backupLines() string {
	var b strings.Builder
	for _, a := range d.backup.Manifest.Artifacts {
		fig := ""
		switch {
		case len(a.RowCounts) > 0 && a.Kind == activities.KindPostgres:
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

// printRecovery prints the recovery's part of the summary.
func (d *demo) printRecovery(w io.Writer) {
	r := d.rec
	res := r.res
	fmt.Fprintf(w, "  Recovery     %s %s: %s\n", workflows.FullClusterRecoveryName, r.id, res.Outcome)
	fmt.Fprintf(w, "  recovery point %s (set %s), %s before the loss: later writes are lost\n",
		res.RecoveryPoint.UTC().Format(time.RFC3339), res.Plan.SetID, d.lostAt.Sub(res.RecoveryPoint).Round(time.Second))
	for _, s := range res.Stages {
		fmt.Fprintf(w, "  RTO  %-16s %9s  %s\n", s.Name, s.RTO.D().Round(10*time.Millisecond), s.Detail)
	}
	fmt.Fprintf(w, "  RTO  %-16s %9s  from the go-ahead to the last re-dispatched task's end\n", "total", res.RTO.D().Round(10*time.Millisecond))

	m := manifestCounts(d.backup.Manifest)
	fmt.Fprintf(w, "  data %-44s %8s %9s %8s\n", "", "backup", "restored", "now")
	for _, t := range sortedKeys(m.rows) {
		note := ""
		if delta := r.now.rows[t] - r.restored.rows[t]; delta != 0 {
			note = fmt.Sprintf("  %+d written by the new agents since", delta)
		}
		fmt.Fprintf(w, "  rows %-44s %8d %9d %8d%s\n", t, m.rows[t], r.restored.rows[t], r.now.rows[t], note)
	}
	fmt.Fprintf(w, "  keys %-44s %8d %9d %8d  rebuilt from PostgreSQL, not restored\n", "redis (RDB in the set; live db 0)", m.redisKeys, r.restored.redisKeys, r.now.redisKeys)
	fmt.Fprintf(w, "  objs %-44s %8d %9d %8d  %s restored\n", "bucket "+schemas.DefaultBucket, m.objects, r.restored.objects, r.now.objects, units.Bytes(r.restored.objectBytes))

	if rd := res.Redispatch; rd != nil {
		c := rd.Counts
		cancelled := ""
		if c.Cancelled > 0 {
			cancelled = fmt.Sprintf(", %d cancelled", c.Cancelled)
		}
		fmt.Fprintf(w, "  lost tasks   %d re-dispatched: %d completed, %d failed, %d outstanding%s; %d missed the deadline\n",
			c.Requeued, c.Completed, c.Failed, c.Outstanding, cancelled, rd.MissedDeadline)
	}
	fmt.Fprintf(w, "               in PostgreSQL: %s; run twice: %d\n", statusCounts(r.requeued), len(r.twice))
	g := d.gen2Stats()
	fmt.Fprintf(w, "  new agents   %s…: %d tasks run (%d completed, %d failed)\n", gen2, g.Started, g.Completed, g.Failed)
	if svc := d.servicesRestarted(); len(svc) > 0 {
		fmt.Fprintf(w, "  services     restarted in order: %s\n", strings.Join(svc, ", "))
	}
	fmt.Fprintf(w, "  Web UI       %s\n", d.workflowURL(r.id))
	if d.shot != "" {
		fmt.Fprintf(w, "  screenshot   %s\n", d.shot)
	}
}

// statusCounts is "12 completed, 1 failed" in the order of schemas.TaskStatuses.
func statusCounts(m map[string]int64) string {
	var parts []string
	for _, st := range schemas.TaskStatuses {
		if n := m[st]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, st))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}
