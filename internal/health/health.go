// Package health answers "are the backups fresh?" for the worker's GET /health and its
// Prometheus metrics.
//
// The backup store is the source of truth: for every source (database, Redis instance,
// bucket) the newest complete set that holds it gives the last success, its size and
// duration. Temporal's visibility gives the outcome of the newest NightlyBackup run, so a
// failing run turns the health red before the data goes stale. Any worker can answer, and
// all answer alike.
package health

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"

	"github.com/kohakku/drflow/activities"
	"github.com/kohakku/drflow/workflows"
)

// Source is the freshness of one backed-up source.
type Source struct {
	// Name is "<kind>/<source>": postgres/kohakku-controller, redis/default, bucket/kohakku.
	Name string `json:"name"`
	// LastSuccess is when the newest complete set holding this source was completed.
	LastSuccess time.Time `json:"lastSuccess"`
	// Age of LastSuccess at the time of the report, in seconds.
	AgeSeconds float64 `json:"ageSeconds"`
	// Set is the id of that set.
	Set string `json:"set"`
	// Bytes stored for the source in that set (mirrors: bytes at the source).
	Bytes int64 `json:"bytes"`
	// DurationSeconds the source's step took.
	DurationSeconds float64 `json:"durationSeconds"`
	// Status is "ok" or "stale".
	Status string `json:"status"`
	// Stale is true when LastSuccess is older than twice the schedule interval.
	Stale bool `json:"stale"`
}

// LastRun is the newest NightlyBackup run as Temporal sees it.
type LastRun struct {
	WorkflowID string    `json:"workflowId"`
	Status     string    `json:"status"`
	StartedAt  time.Time `json:"startedAt"`
	Failed     bool      `json:"failed"`
}

// Report is the body of GET /health.
type Report struct {
	// Healthy is false when any source is stale, none exists, or the last run failed.
	Healthy bool `json:"healthy"`
	// Problems say why Healthy is false, one line each.
	Problems []string  `json:"problems,omitempty"`
	Sources  []Source  `json:"sources"`
	LastRun  *LastRun  `json:"lastRun,omitempty"`
	At       time.Time `json:"at"`
	// Interval is the schedule interval staleness is measured against.
	IntervalSeconds float64 `json:"intervalSeconds"`
}

// SetLister is the part of the backup store activities health reads.
type SetLister interface {
	ListSets(ctx context.Context) ([]activities.SetInfo, error)
	ReadManifest(ctx context.Context, id string) (activities.Manifest, error)
}

// Checker builds Reports, cached for CacheTTL so scrapes and probes stay cheap.
type Checker struct {
	Sets SetLister
	// Temporal, when set, supplies the outcome of the newest NightlyBackup run.
	Temporal  client.Client
	Namespace string
	// Interval between scheduled backups (default 24h); stale = older than 2×Interval.
	Interval time.Duration
	CacheTTL time.Duration
	Now      func() time.Time

	mu      sync.Mutex
	cached  *Report
	cacheAt time.Time
}

// Report returns the current report, from cache when fresh.
func (c *Checker) Report(ctx context.Context) (Report, error) {
	now := time.Now
	if c.Now != nil {
		now = c.Now
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cached != nil && now().Sub(c.cacheAt) < c.CacheTTL {
		return *c.cached, nil
	}
	r, err := c.build(ctx, now())
	if err != nil {
		return r, err
	}
	c.cached, c.cacheAt = &r, now()
	return r, nil
}

// Invalidate drops the cached report (after a run completes, say).
func (c *Checker) Invalidate() {
	c.mu.Lock()
	c.cached = nil
	c.mu.Unlock()
}

func (c *Checker) interval() time.Duration {
	if c.Interval > 0 {
		return c.Interval
	}
	return 24 * time.Hour
}

func (c *Checker) build(ctx context.Context, now time.Time) (Report, error) {
	r := Report{At: now.UTC(), IntervalSeconds: c.interval().Seconds(), Sources: []Source{}}
	sets, err := c.Sets.ListSets(ctx)
	if err != nil {
		return r, fmt.Errorf("list backup sets: %w", err)
	}
	seen := map[string]bool{}
	for _, s := range sets { // newest first
		if !s.Complete {
			continue
		}
		m, err := c.Sets.ReadManifest(ctx, s.ID)
		if err != nil {
			return r, fmt.Errorf("read manifest of %s: %w", s.ID, err)
		}
		add := func(name string, bytes int64, d time.Duration) {
			if seen[name] {
				return
			}
			seen[name] = true
			src := Source{Name: name, LastSuccess: m.CompletedAt, Set: m.SetID, Bytes: bytes, DurationSeconds: d.Seconds()}
			src.AgeSeconds = now.Sub(m.CompletedAt).Seconds()
			src.Stale = now.Sub(m.CompletedAt) > 2*c.interval()
			src.Status = "ok"
			if src.Stale {
				src.Status = "stale"
			}
			r.Sources = append(r.Sources, src)
		}
		for _, a := range m.Artifacts {
			if a.Kind == activities.KindPostgres || a.Kind == activities.KindRedis || a.Kind == activities.KindSQLite {
				add(a.Kind+"/"+a.Source, a.Size, a.Duration)
			}
		}
		for _, mr := range m.Mirrors {
			add("bucket/"+mr.Bucket, mr.Bytes, mr.Listing.Duration)
		}
	}
	sort.Slice(r.Sources, func(i, j int) bool { return r.Sources[i].Name < r.Sources[j].Name })

	if c.Temporal != nil {
		lr, err := c.lastRun(ctx)
		if err != nil {
			return r, err
		}
		r.LastRun = lr
	}

	if len(r.Sources) == 0 {
		r.Problems = append(r.Problems, "no complete backup set in the store")
	}
	for _, s := range r.Sources {
		if s.Stale {
			r.Problems = append(r.Problems, fmt.Sprintf("%s: last backup %s ago (set %s), more than twice the %s interval",
				s.Name, time.Duration(s.AgeSeconds*float64(time.Second)).Round(time.Minute), s.Set, c.interval()))
		}
	}
	if r.LastRun != nil && r.LastRun.Failed {
		r.Problems = append(r.Problems, fmt.Sprintf("last NightlyBackup run %s ended %s", r.LastRun.WorkflowID, r.LastRun.Status))
	}
	r.Healthy = len(r.Problems) == 0
	return r, nil
}

func (c *Checker) lastRun(ctx context.Context) (*LastRun, error) {
	resp, err := c.Temporal.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{
		Namespace: c.Namespace,
		PageSize:  1,
		Query:     fmt.Sprintf("WorkflowType = %q", workflows.NightlyBackupName),
	})
	if err != nil {
		return nil, fmt.Errorf("list NightlyBackup runs: %w", err)
	}
	if len(resp.Executions) == 0 {
		return nil, nil
	}
	e := resp.Executions[0]
	st := e.GetStatus()
	return &LastRun{
		WorkflowID: e.GetExecution().GetWorkflowId(),
		Status:     st.String(),
		StartedAt:  e.GetStartTime().AsTime(),
		Failed: st == enumspb.WORKFLOW_EXECUTION_STATUS_FAILED || st == enumspb.WORKFLOW_EXECUTION_STATUS_TIMED_OUT ||
			st == enumspb.WORKFLOW_EXECUTION_STATUS_TERMINATED || st == enumspb.WORKFLOW_EXECUTION_STATUS_CANCELED,
	}, nil
}

// Collector exports the report's figures as Prometheus gauges, labelled by source:
// drflow_backup_last_success_timestamp_seconds, drflow_backup_bytes,
// drflow_backup_duration_seconds, drflow_backup_healthy.
type Collector struct {
	Checker *Checker

	lastSuccess, bytes, duration, healthy *prometheus.Desc
}

// NewCollector returns a collector reading c.
func NewCollector(c *Checker) *Collector {
	return &Collector{
		Checker:     c,
		lastSuccess: prometheus.NewDesc("drflow_backup_last_success_timestamp_seconds", "Completion time of the newest complete backup set holding the source.", []string{"source"}, nil),
		bytes:       prometheus.NewDesc("drflow_backup_bytes", "Bytes stored for the source in its newest complete set (buckets: bytes at the source).", []string{"source"}, nil),
		duration:    prometheus.NewDesc("drflow_backup_duration_seconds", "Duration of the source's backup step in its newest complete set.", []string{"source"}, nil),
		healthy:     prometheus.NewDesc("drflow_backup_healthy", "1 when every source is fresh and the last NightlyBackup run did not fail.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.lastSuccess
	ch <- c.bytes
	ch <- c.duration
	ch <- c.healthy
}

// Collect implements prometheus.Collector. A report error exports healthy=0 only.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := c.Checker.Report(ctx)
	if err != nil {
		ch <- prometheus.MustNewConstMetric(c.healthy, prometheus.GaugeValue, 0)
		return
	}
	for _, s := range r.Sources {
		ch <- prometheus.MustNewConstMetric(c.lastSuccess, prometheus.GaugeValue, float64(s.LastSuccess.Unix()), s.Name)
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.GaugeValue, float64(s.Bytes), s.Name)
		ch <- prometheus.MustNewConstMetric(c.duration, prometheus.GaugeValue, s.DurationSeconds, s.Name)
	}
	v := 0.0
	if r.Healthy {
		v = 1
	}
	ch <- prometheus.MustNewConstMetric(c.healthy, prometheus.GaugeValue, v)
}
