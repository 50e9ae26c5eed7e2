package activities_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/testsuite"

	"github.com/kohakku/drflow/activities"
	"github.com/kohakku/drflow/internal/store"
)

func day(n int) time.Duration { return time.Duration(n) * 24 * time.Hour }

func TestPlanRetention(t *testing.T) {
	now := time.Date(2026, 11, 21, 3, 0, 0, 0, time.UTC)
	policy := activities.RetentionPolicy{Days: 7, KeepNewest: 3, IncompleteGrace: 24 * time.Hour}
	set := func(age time.Duration, complete bool, verified string) activities.SetInfo {
		ts := now.Add(-age)
		return activities.SetInfo{ID: ts.Format(activities.SetIDLayout), Time: ts, Complete: complete, Verified: verified}
	}
	ids := func(sets ...activities.SetInfo) []string {
		var out []string
		for _, s := range sets {
			out = append(out, s.ID)
		}
		return out
	}
	var daily []activities.SetInfo
	for i := 0; i < 30; i++ {
		daily = append(daily, set(day(i)+time.Hour, true, ""))
	}
	tests := []struct {
		name string
		sets []activities.SetInfo
		want []string
	}{
		{"nothing", nil, nil},
		{"30 daily sets keep 7 days", daily, ids(daily[7:]...)},
		{"old sets but only 3: all kept (keep newest)", []activities.SetInfo{set(day(40), true, ""), set(day(50), true, ""), set(day(60), true, "")}, nil},
		{"5 old sets: newest 3 kept", []activities.SetInfo{set(day(40), true, ""), set(day(41), true, ""), set(day(42), true, ""), set(day(43), true, ""), set(day(44), true, "")},
			ids(set(day(43), true, ""), set(day(44), true, ""))},
		{"incomplete sets count toward nothing and go after the grace", []activities.SetInfo{
			set(time.Hour, false, ""), set(2*time.Hour, true, ""), set(day(2), false, ""), set(day(3), true, ""), set(day(40), true, ""), set(day(41), true, "")},
			ids(set(day(2), false, ""), set(day(41), true, ""))},
		{"an incomplete set younger than a day is kept", []activities.SetInfo{set(23*time.Hour, false, "")}, nil},
		{"newest verified set survives retention", []activities.SetInfo{
			set(day(1), true, "failed"), set(day(2), true, "failed"), set(day(3), true, "failed"), set(day(20), true, "passed"), set(day(21), true, "passed")},
			ids(set(day(21), true, "passed"))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, activities.PlanRetention(tt.sets, policy, now))
		})
	}
}

func newFSBackupStore(t *testing.T) (*activities.BackupStore, store.Store) {
	t.Helper()
	fs, err := store.NewFS(t.TempDir())
	require.NoError(t, err)
	return &activities.BackupStore{Store: fs, Describe: "fs"}, fs
}

func putSet(t *testing.T, st store.Store, id string, complete bool) {
	t.Helper()
	ctx := context.Background()
	_, err := st.Put(ctx, activities.PostgresKey(id, "db"), strings.NewReader("dump-"+id), store.PutOptions{})
	require.NoError(t, err)
	if complete {
		_, err = st.Put(ctx, activities.SetKey(id, activities.ManifestName), strings.NewReader(fmt.Sprintf(`{"version":1,"setId":%q}`, id)), store.PutOptions{})
		require.NoError(t, err)
	}
}

func TestBackupStoreSetsAndSweep(t *testing.T) {
	bs, st := newFSBackupStore(t)
	now := time.Date(2026, 11, 21, 3, 0, 0, 0, time.UTC)
	var want []string
	for i := 0; i < 10; i++ {
		id := now.Add(-day(i)).Format(activities.SetIDLayout)
		putSet(t, st, id, i != 1) // the set of 1 day ago is incomplete
		want = append(want, id)
	}
	// A stray key that is not a set is neither listed nor deleted.
	_, err := st.Put(context.Background(), "sets/README", strings.NewReader("x"), store.PutOptions{})
	require.NoError(t, err)

	var s testsuite.WorkflowTestSuite
	env := s.NewTestActivityEnvironment()
	env.RegisterActivity(bs)

	v, err := env.ExecuteActivity(bs.ListSets)
	require.NoError(t, err)
	var sets []activities.SetInfo
	require.NoError(t, v.Get(&sets))
	require.Len(t, sets, 10)
	for i, s := range sets {
		assert.Equal(t, want[i], s.ID, "newest first")
		assert.Equal(t, i != 1, s.Complete, s.ID)
	}

	v, err = env.ExecuteActivity(bs.PreviousManifest, activities.PreviousInput{Before: want[0]})
	require.NoError(t, err)
	var prev *activities.Manifest
	require.NoError(t, v.Get(&prev))
	require.NotNil(t, prev)
	assert.Equal(t, want[2], prev.SetID, "skips the incomplete set")

	policy := activities.RetentionPolicy{Days: 3, KeepNewest: 3, IncompleteGrace: 24 * time.Hour}
	v, err = env.ExecuteActivity(bs.Sweep, activities.SweepInput{Policy: policy, Now: now.Add(time.Minute), DryRun: true})
	require.NoError(t, err)
	var dry activities.SweepResult
	require.NoError(t, v.Get(&dry))
	wantDeleted := append([]string{want[1]}, want[4:]...) // the incomplete set is past its grace
	assert.Equal(t, wantDeleted, dry.Deleted, "incomplete past grace, complete older than 3 days")
	assert.Equal(t, 0, dry.DeletedFiles)

	v, err = env.ExecuteActivity(bs.Sweep, activities.SweepInput{Policy: policy, Now: now.Add(time.Minute)})
	require.NoError(t, err)
	var res activities.SweepResult
	require.NoError(t, v.Get(&res))
	assert.Equal(t, wantDeleted, res.Deleted)
	assert.Equal(t, 1+6*2, res.DeletedFiles)

	v, err = env.ExecuteActivity(bs.ListSets)
	require.NoError(t, err)
	require.NoError(t, v.Get(&sets))
	assert.Equal(t, []string{want[0], want[2], want[3]}, []string{sets[0].ID, sets[1].ID, sets[2].ID})
	assert.Len(t, sets, 3)
	_, err = st.Stat(context.Background(), "sets/README")
	assert.NoError(t, err, "non-set keys are never deleted")

	putSet(t, st, want[1], false)
	_, err = env.ExecuteActivity(bs.ReadManifest, want[1])
	require.Error(t, err)
	assert.Contains(t, err.Error(), "has no manifest")
}

func TestInventoryResolve(t *testing.T) {
	inv := &activities.Inventory{Databases: []string{"a", "b"}, Redis: []string{"default"}, Buckets: []string{"kohakku"}}
	var s testsuite.WorkflowTestSuite
	env := s.NewTestActivityEnvironment()
	env.RegisterActivity(inv)

	v, err := env.ExecuteActivity(inv.Resolve, activities.TargetsInput{})
	require.NoError(t, err)
	var got activities.Targets
	require.NoError(t, v.Get(&got))
	assert.Equal(t, []string{"a", "b"}, got.Databases)
	assert.Equal(t, []string{"kohakku"}, got.Buckets)

	_, err = env.ExecuteActivity(inv.Resolve, activities.TargetsInput{Databases: []string{"b", "nope"}})
	require.Error(t, err)
	assert.Contains(t, err.Error(), `input field "databases": unknown database "nope" (configured: a, b)`)

	empty := &activities.Inventory{}
	env.RegisterActivity(empty)
	_, err = env.ExecuteActivity(empty.Resolve, activities.TargetsInput{Buckets: []string{"x"}})
	require.Error(t, err)
	assert.Contains(t, err.Error(), `unknown bucket "x" (none configured)`)
}

func TestPickSet(t *testing.T) {
	mk := func(id string, complete bool, verified string) activities.SetInfo {
		return activities.SetInfo{ID: id, Complete: complete, Verified: verified}
	}
	// Newest first, as ListSets returns them.
	sets := []activities.SetInfo{
		mk("2026-11-21T02-00-00Z", false, ""),      // being written
		mk("2026-11-20T02-00-00Z", true, ""),       // not verified yet
		mk("2026-11-19T02-00-00Z", true, "failed"), // failed verification
		mk("2026-11-18T02-00-00Z", true, "passed"), // newest verified
		mk("2026-11-17T02-00-00Z", true, "passed"),
	}
	tests := []struct {
		name    string
		in      activities.SelectSetInput
		want    string
		wantErr string
	}{
		{"newest complete for a verification", activities.SelectSetInput{}, "2026-11-20T02-00-00Z", ""},
		{"newest verified for a restore", activities.SelectSetInput{RequireVerified: true}, "2026-11-18T02-00-00Z", ""},
		{"named verified set", activities.SelectSetInput{SetID: "2026-11-17T02-00-00Z", RequireVerified: true}, "2026-11-17T02-00-00Z", ""},
		{"named failed set refused", activities.SelectSetInput{SetID: "2026-11-19T02-00-00Z", RequireVerified: true}, "", "failed verification"},
		{"named failed set refused even for a plain pick", activities.SelectSetInput{SetID: "2026-11-19T02-00-00Z"}, "", "failed verification"},
		{"named failed set with the override", activities.SelectSetInput{SetID: "2026-11-19T02-00-00Z", RequireVerified: true, AllowFailed: true}, "2026-11-19T02-00-00Z", ""},
		{"named unverified set refused for a restore", activities.SelectSetInput{SetID: "2026-11-20T02-00-00Z", RequireVerified: true}, "", "has not been verified"},
		{"named unverified set fine for a verification", activities.SelectSetInput{SetID: "2026-11-20T02-00-00Z"}, "2026-11-20T02-00-00Z", ""},
		{"incomplete set refused", activities.SelectSetInput{SetID: "2026-11-21T02-00-00Z", AllowFailed: true}, "", "is incomplete"},
		{"unknown set", activities.SelectSetInput{SetID: "2026-01-01T00-00-00Z"}, "", "does not exist"},
		{"malformed set id", activities.SelectSetInput{SetID: "latest"}, "", `input field "setId"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := activities.PickSet(sets, tt.in)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
	_, err := activities.PickSet(sets[:3], activities.SelectSetInput{RequireVerified: true})
	assert.ErrorContains(t, err, "no complete set has passed verification")
	_, err = activities.PickSet(sets[:1], activities.SelectSetInput{})
	assert.ErrorContains(t, err, "holds no complete set")
}
