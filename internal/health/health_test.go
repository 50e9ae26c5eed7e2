package health

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kohakku/drflow/activities"
)

type fakeSets struct {
	sets      []activities.SetInfo
	manifests map[string]activities.Manifest
	lists     int
}

func (f *fakeSets) ListSets(context.Context) ([]activities.SetInfo, error) {
	f.lists++
	return f.sets, nil
}

func (f *fakeSets) ReadManifest(_ context.Context, id string) (activities.Manifest, error) {
	return f.manifests[id], nil
}

func (f *fakeSets) add(completed time.Time, complete bool, arts ...activities.Artifact) {
	id := completed.UTC().Format(activities.SetIDLayout)
	f.sets = append([]activities.SetInfo{{ID: id, Time: completed, Complete: complete}}, f.sets...)
	if f.manifests == nil {
		f.manifests = map[string]activities.Manifest{}
	}
	m := activities.Manifest{SetID: id, CompletedAt: completed}
	for _, a := range arts {
		if a.Kind == "bucket" {
			m.Mirrors = append(m.Mirrors, activities.MirrorResult{Bucket: a.Source, Bytes: a.Size})
			continue
		}
		m.Artifacts = append(m.Artifacts, a)
	}
	f.manifests[id] = m
}

func TestReportGoesStaleAndBack(t *testing.T) {
	base := time.Date(2026, 11, 21, 2, 0, 0, 0, time.UTC)
	now := base
	sets := &fakeSets{}
	c := &Checker{Sets: sets, Interval: 24 * time.Hour, Now: func() time.Time { return now }}
	ctx := context.Background()

	r, err := c.Report(ctx)
	require.NoError(t, err)
	assert.False(t, r.Healthy)
	assert.Equal(t, []string{"no complete backup set in the store"}, r.Problems)

	pg := activities.Artifact{Kind: activities.KindPostgres, Source: "kohakku-controller", Size: 100, Duration: 3 * time.Second}
	rd := activities.Artifact{Kind: activities.KindRedis, Source: "default", Size: 10}
	sets.add(base, true, pg, rd, activities.Artifact{Kind: "bucket", Source: "kohakku", Size: 5})
	now = base.Add(time.Hour)
	r, err = c.Report(ctx)
	require.NoError(t, err)
	assert.True(t, r.Healthy, r.Problems)
	require.Len(t, r.Sources, 3)
	assert.Equal(t, "bucket/kohakku", r.Sources[0].Name)
	assert.Equal(t, "postgres/kohakku-controller", r.Sources[1].Name)
	assert.Equal(t, 3.0, r.Sources[1].DurationSeconds)
	assert.Equal(t, 3600.0, r.Sources[1].AgeSeconds)

	// An incomplete newer set changes nothing; two intervals later everything is stale.
	sets.add(base.Add(24*time.Hour), false)
	now = base.Add(49 * time.Hour)
	r, err = c.Report(ctx)
	require.NoError(t, err)
	assert.False(t, r.Healthy)
	require.Len(t, r.Problems, 3)
	assert.Contains(t, r.Problems[0], "bucket/kohakku: last backup 49h0m0s ago")
	for _, s := range r.Sources {
		assert.True(t, s.Stale, s.Name)
		assert.Equal(t, "stale", s.Status)
	}

	// A new complete set with only postgres: postgres is fresh, the others stay stale.
	sets.add(base.Add(49*time.Hour), true, pg)
	r, err = c.Report(ctx)
	require.NoError(t, err)
	assert.False(t, r.Healthy)
	assert.Len(t, r.Problems, 2)
	assert.False(t, r.Sources[1].Stale)

	sets.add(base.Add(50*time.Hour), true, pg, rd, activities.Artifact{Kind: "bucket", Source: "kohakku"})
	now = base.Add(50 * time.Hour)
	r, err = c.Report(ctx)
	require.NoError(t, err)
	assert.True(t, r.Healthy, r.Problems)
}

func TestReportIsCached(t *testing.T) {
	now := time.Date(2026, 11, 21, 2, 0, 0, 0, time.UTC)
	sets := &fakeSets{}
	sets.add(now, true, activities.Artifact{Kind: activities.KindPostgres, Source: "db"})
	c := &Checker{Sets: sets, CacheTTL: time.Minute, Now: func() time.Time { return now }}
	for range 3 {
		_, err := c.Report(context.Background())
		require.NoError(t, err)
	}
	assert.Equal(t, 1, sets.lists)
	c.Invalidate()
	_, err := c.Report(context.Background())
	require.NoError(t, err)
	assert.Equal(t, 2, sets.lists)
}

func TestCollector(t *testing.T) {
	now := time.Date(2026, 11, 21, 2, 0, 0, 0, time.UTC)
	sets := &fakeSets{}
	sets.add(now, true, activities.Artifact{Kind: activities.KindPostgres, Source: "db", Size: 42, Duration: 2 * time.Second})
	c := &Checker{Sets: sets, Now: func() time.Time { return now }}
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(c))
	want := `
# HELP drflow_backup_bytes Bytes stored for the source in its newest complete set (buckets: bytes at the source).
# TYPE drflow_backup_bytes gauge
drflow_backup_bytes{source="postgres/db"} 42
# HELP drflow_backup_healthy 1 when every source is fresh and the last NightlyBackup run did not fail.
# TYPE drflow_backup_healthy gauge
drflow_backup_healthy 1
`
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(want), "drflow_backup_bytes", "drflow_backup_healthy"))
	n, err := testutil.GatherAndCount(reg, "drflow_backup_last_success_timestamp_seconds", "drflow_backup_duration_seconds")
	require.NoError(t, err)
	assert.Equal(t, 2, n)
}

func TestSourceOf(t *testing.T) {
	assert.Equal(t, "postgres/x", SourceOf(activities.DumpInput{Database: "x"}))
	assert.Equal(t, "redis/default", SourceOf(activities.RDBInput{Instance: "default"}))
	assert.Equal(t, "bucket/kohakku", SourceOf(activities.MirrorInput{Bucket: "kohakku"}))
	assert.Equal(t, "", SourceOf(activities.SoakInput{}))
}
