package workflows_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"

	"github.com/kohakku/drflow/activities"
	"github.com/kohakku/drflow/workflows"
)

var (
	inv  *activities.Inventory
	bs   *activities.BackupStore
	pg   *activities.Postgres
	rd   *activities.Redis
	objs *activities.Objects
)

type nightlyMocks struct {
	env      *testsuite.TestWorkflowEnvironment
	manifest *activities.Manifest
	sweeps   int
	verified []string
}

// nightlyFaults makes one mocked activity fail.
type nightlyFaults struct {
	resolve, rdb, verify error
}

func newNightlyEnv(t *testing.T, prev *activities.Manifest, faults ...nightlyFaults) *nightlyMocks {
	var f nightlyFaults
	if len(faults) > 0 {
		f = faults[0]
	}
	var s testsuite.WorkflowTestSuite
	m := &nightlyMocks{env: s.NewTestWorkflowEnvironment()}
	env := m.env
	env.SetStartTime(time.Date(2026, 11, 21, 2, 0, 0, 0, time.UTC))
	if f.resolve != nil {
		env.OnActivity(inv.Resolve, mock.Anything, mock.Anything).Return(activities.Targets{}, f.resolve)
	}
	env.OnActivity(inv.Resolve, mock.Anything, mock.Anything).Return(activities.Targets{
		Databases: []string{"kohakku-controller", "kohakku-dispatcher"},
		Redis:     []string{"default"},
		Buckets:   []string{"kohakku"},
		Retention: activities.RetentionPolicy{Days: 7, KeepNewest: 3, IncompleteGrace: 24 * time.Hour},
	}, nil)
	env.OnActivity(bs.Preflight, mock.Anything).Return(nil)
	env.OnActivity(bs.PreviousManifest, mock.Anything, mock.Anything).Return(prev, nil)
	env.OnActivity(pg.Dump, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.DumpInput) (activities.Artifact, error) {
			return activities.Artifact{Kind: activities.KindPostgres, Source: in.Database, Key: in.Key, Size: 100, RawSize: 1000,
				RowCounts: map[string]int64{in.CountTables[0]: 500}}, nil
		})
	if f.rdb != nil {
		env.OnActivity(rd.DumpRDB, mock.Anything, mock.Anything).Return(activities.Artifact{}, f.rdb)
	}
	env.OnActivity(rd.DumpRDB, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.RDBInput) (activities.Artifact, error) {
			return activities.Artifact{Kind: activities.KindRedis, Source: in.Instance, Key: in.Key, KeyCount: 40, RawSize: 10, Size: 5}, nil
		})
	env.OnActivity(objs.Mirror, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.MirrorInput) (activities.MirrorResult, error) {
			return activities.MirrorResult{Bucket: in.Bucket, Prefix: in.Prefix, Objects: 90, Bytes: 900,
				Listing: activities.Artifact{Kind: activities.KindListing, Source: in.Bucket, Key: in.ListingKey}}, nil
		})
	env.OnActivity(bs.WriteManifest, mock.Anything, mock.Anything).Return(
		func(_ context.Context, man activities.Manifest) (activities.Artifact, error) {
			m.manifest = &man
			return activities.Artifact{}, nil
		})
	env.RegisterWorkflowWithOptions(workflows.VerifyBackup, workflow.RegisterOptions{Name: workflows.VerifyBackupName})
	env.OnWorkflow(workflows.VerifyBackupName, mock.Anything, mock.Anything).Return(
		func(_ workflow.Context, in workflows.VerifyBackupInput) (workflows.VerifyBackupResult, error) {
			m.verified = append(m.verified, in.SetID)
			if f.verify != nil {
				return workflows.VerifyBackupResult{}, f.verify
			}
			return workflows.VerifyBackupResult{Report: activities.VerifyReport{SetID: in.SetID, Passed: true}}, nil
		})
	env.OnActivity(bs.Sweep, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.SweepInput) (activities.SweepResult, error) {
			m.sweeps++
			return activities.SweepResult{Deleted: []string{"old"}, Kept: 3}, nil
		})
	return m
}

func TestNightlyBackupWritesManifestLast(t *testing.T) {
	m := newNightlyEnv(t, nil)
	m.env.ExecuteWorkflow(workflows.NightlyBackup, workflows.NightlyBackupInput{})
	require.True(t, m.env.IsWorkflowCompleted())
	require.NoError(t, m.env.GetWorkflowError())

	var res workflows.NightlyBackupResult
	require.NoError(t, m.env.GetWorkflowResult(&res))
	assert.Equal(t, "2026-11-21T02-00-00Z", res.SetID)
	require.NotNil(t, m.manifest)
	man := m.manifest
	assert.Equal(t, res.SetID, man.SetID)
	var keys []string
	for _, a := range man.Artifacts {
		keys = append(keys, a.Key)
	}
	assert.Equal(t, []string{
		"sets/2026-11-21T02-00-00Z/postgres/kohakku-controller.dump.zst",
		"sets/2026-11-21T02-00-00Z/postgres/kohakku-dispatcher.dump.zst",
		"sets/2026-11-21T02-00-00Z/redis/default.rdb.zst",
		"sets/2026-11-21T02-00-00Z/objects/kohakku.jsonl.zst",
	}, keys, "fixed order whatever finished first")
	assert.Equal(t, map[string]int64{"tasks_task": 500}, man.Artifacts[0].RowCounts, "count tables of kohakku-controller")
	require.Len(t, man.Mirrors, 1)
	assert.Equal(t, "mirror/kohakku/", man.Mirrors[0].Prefix)
	assert.Empty(t, res.Warnings, "first backup: nothing to compare")
	assert.Equal(t, 1, m.sweeps)
	assert.Equal(t, []string{res.SetID}, m.verified, "the new set is verified by a child VerifyBackup")
	require.NotNil(t, res.Verify)
	assert.True(t, res.Verify.Passed)

	v, err := m.env.QueryWorkflow(workflows.ProgressQuery)
	require.NoError(t, err)
	var p workflows.Progress
	require.NoError(t, v.Get(&p))
	var names []string
	for _, s := range p.Steps {
		names = append(names, s.Name)
		assert.Equal(t, workflows.StepCompleted, s.Status, s.Name)
	}
	assert.Equal(t, []string{"preflight", "dump kohakku-controller", "dump kohakku-dispatcher", "redis default", "mirror kohakku",
		"anomaly checks", "write manifest", "retention sweep", "verify (child VerifyBackup)"}, names)
}

func TestNightlyBackupWarnsOnAnomalies(t *testing.T) {
	prev := &activities.Manifest{SetID: "2026-11-20T02-00-00Z",
		Artifacts: []activities.Artifact{
			{Kind: activities.KindPostgres, Source: "kohakku-controller", RawSize: 3 << 20, RowCounts: map[string]int64{"tasks_task": 520}},
			{Kind: activities.KindPostgres, Source: "kohakku-dispatcher", RawSize: 1000},
			{Kind: activities.KindRedis, Source: "default", KeyCount: 400, RawSize: 10},
		},
		Mirrors: []activities.MirrorResult{{Bucket: "kohakku", Objects: 100}},
	}
	m := newNightlyEnv(t, prev)
	m.env.ExecuteWorkflow(workflows.NightlyBackup, workflows.NightlyBackupInput{})
	require.NoError(t, m.env.GetWorkflowError())
	var res workflows.NightlyBackupResult
	require.NoError(t, m.env.GetWorkflowResult(&res))
	assert.Equal(t, []string{
		"postgres kohakku-controller: dump size 3.0 MiB → 1000 B (-100%) since set 2026-11-20T02-00-00Z",
		"redis default: keys 400 → 40 (-90%) since set 2026-11-20T02-00-00Z",
		"bucket kohakku: object count dropped 100 → 90 (-10%) since set 2026-11-20T02-00-00Z",
	}, res.Warnings, "tasks_task 520 → 500 is within the threshold; dispatcher unchanged")
	assert.Equal(t, res.Warnings, m.manifest.Warnings)
}

func TestNightlyBackupFailedSourceLeavesSetIncomplete(t *testing.T) {
	m := newNightlyEnv(t, nil, nightlyFaults{
		rdb: temporal.NewNonRetryableApplicationError("redis default: AUTH failed", activities.ErrInvalidInput, nil),
	})
	m.env.ExecuteWorkflow(workflows.NightlyBackup, workflows.NightlyBackupInput{})
	require.True(t, m.env.IsWorkflowCompleted())
	err := m.env.GetWorkflowError()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "set 2026-11-21T02-00-00Z is incomplete, 1 step(s) failed: redis default:")
	assert.Contains(t, err.Error(), "AUTH failed")
	assert.Nil(t, m.manifest, "no manifest for an incomplete set")
	assert.Equal(t, 0, m.sweeps)
}

func TestNightlyBackupInputErrors(t *testing.T) {
	tests := []struct {
		name string
		in   workflows.NightlyBackupInput
		want string
	}{
		{"negative threshold", workflows.NightlyBackupInput{AnomalyThreshold: -1}, `input field "anomalyThreshold"`},
		{"duplicate database", workflows.NightlyBackupInput{Databases: []string{"a", "a"}}, `input field "databases": "a" is listed twice`},
		{"empty bucket", workflows.NightlyBackupInput{Buckets: []string{" "}}, `input field "buckets": empty name`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newNightlyEnv(t, nil)
			m.env.ExecuteWorkflow(workflows.NightlyBackup, tt.in)
			err := m.env.GetWorkflowError()
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
			assert.Nil(t, m.manifest)
		})
	}
}

func TestNightlyBackupUnknownTarget(t *testing.T) {
	m := newNightlyEnv(t, nil, nightlyFaults{
		resolve: temporal.NewNonRetryableApplicationError(`input field "databases": unknown database "nope"`, activities.ErrUnknownTarget, nil),
	})
	m.env.ExecuteWorkflow(workflows.NightlyBackup, workflows.NightlyBackupInput{Databases: []string{"nope"}})
	err := m.env.GetWorkflowError()
	require.Error(t, err)
	assert.Contains(t, err.Error(), `unknown database "nope"`)
	assert.Nil(t, m.manifest)
}

func TestNightlyBackupFailsWhenVerificationFails(t *testing.T) {
	m := newNightlyEnv(t, nil, nightlyFaults{
		verify: temporal.NewNonRetryableApplicationError("checksum mismatch", workflows.ErrVerificationFailed, nil),
	})
	m.env.ExecuteWorkflow(workflows.NightlyBackup, workflows.NightlyBackupInput{})
	err := m.env.GetWorkflowError()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "was written but failed verification")
	assert.NotNil(t, m.manifest, "the set itself is complete")
}

func TestNightlyBackupSkipVerify(t *testing.T) {
	m := newNightlyEnv(t, nil)
	m.env.ExecuteWorkflow(workflows.NightlyBackup, workflows.NightlyBackupInput{SkipVerify: true})
	require.NoError(t, m.env.GetWorkflowError())
	assert.Empty(t, m.verified)
}

func TestAnomaliesFloor(t *testing.T) {
	prev := &activities.Manifest{SetID: "p", Artifacts: []activities.Artifact{
		{Kind: activities.KindSQLite, Source: "s", RawSize: 40 << 10, RowCounts: map[string]int64{"small": 3, "big": 1000}},
	}}
	cur := []activities.Artifact{{Kind: activities.KindSQLite, Source: "s", RawSize: 90 << 10, RowCounts: map[string]int64{"small": 80, "big": 2000}}}
	assert.Equal(t, []string{"sqlite s: big rows 1000 → 2000 (+100%) since set p"}, workflows.Anomalies(prev, cur, nil, 0.5),
		"3 → 80 rows and 40 → 90 KiB are below the floors")
}
