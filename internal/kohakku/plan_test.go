package kohakku

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kohakku/drflow/schemas"
)

var testNow = time.Date(2026, 11, 21, 2, 0, 0, 0, time.UTC)

func mustPlan(t *testing.T, o SeedOptions) *plan {
	t.Helper()
	o, err := o.withDefaults()
	require.NoError(t, err)
	return newPlan(o)
}

func TestPlanDeterministic(t *testing.T) {
	o := SeedOptions{Tasks: 500, Seed: 7, Now: testNow}
	a, b := mustPlan(t, o), mustPlan(t, o)
	require.True(t, reflect.DeepEqual(a, b), "same options, different plans")

	o.Seed = 8
	c := mustPlan(t, o)
	assert.False(t, reflect.DeepEqual(a.tasks, c.tasks), "different seeds, same tasks")
}

func TestPlanStatusMix(t *testing.T) {
	for _, tc := range []struct {
		tasks int
		want  map[string]int
	}{
		{10000, map[string]int{"completed": 6000, "failed": 1000, "cancelled": 500, "dispatched": 300, "running": 700, "pending": 1500}},
		{2000, map[string]int{"completed": 1200, "failed": 200, "cancelled": 100, "dispatched": 60, "running": 140, "pending": 300}},
		{7, map[string]int{"completed": 4, "failed": 0, "cancelled": 0, "dispatched": 0, "running": 0, "pending": 3}},
		{1, map[string]int{"completed": 0, "failed": 0, "cancelled": 0, "dispatched": 0, "running": 0, "pending": 1}},
	} {
		p := mustPlan(t, SeedOptions{Tasks: tc.tasks, Seed: 1, Now: testNow})
		assert.Equal(t, tc.want, p.summary().ByStatus, "tasks=%d", tc.tasks)
	}
}

// TestPlanInvariants checks the history is self-consistent: what a real
// controller and dispatcher would have written.
func TestPlanInvariants(t *testing.T) {
	for _, seed := range []int64{1, 2, 3} {
		p := mustPlan(t, SeedOptions{Tasks: 3000, Seed: seed, Now: testNow, Containers: 5})
		containers := map[string]container{}
		for _, c := range p.containers {
			containers[c.id] = c
		}
		assignments := map[int64][]assignment{}
		for _, a := range p.assignments {
			assignments[a.taskID] = append(assignments[a.taskID], a)
			c, ok := containers[a.container]
			require.True(t, ok, "assignment to unknown container %s", a.container)
			if !a.releasedAt.IsZero() {
				assert.False(t, a.releasedAt.Before(a.assignedAt), "task %d: released before assigned", a.taskID)
				if c.status == schemas.ContainerDead {
					assert.False(t, c.lastHeartbeatAt.Before(a.releasedAt), "dead container %s heartbeat before a release", c.id)
				}
			} else {
				assert.Equal(t, schemas.ContainerLive, c.status, "open assignment on a dead container")
			}
		}
		live := 0
		for _, c := range p.containers {
			if c.status == schemas.ContainerLive {
				live++
			}
		}
		assert.Equal(t, 5, live)
		assert.Len(t, p.containers, 5*containerEpochs)

		var prevCreated time.Time
		for i, tk := range p.tasks {
			assert.Equal(t, int64(i+1), tk.id)
			assert.False(t, tk.createdAt.Before(prevCreated), "created_at decreases at id %d", tk.id)
			prevCreated = tk.createdAt
			for _, ts := range []time.Time{tk.createdAt, tk.updatedAt, tk.dispatchedAt, tk.startedAt, tk.finishedAt} {
				assert.False(t, ts.After(testNow), "task %d: time after now", tk.id)
				assert.Equal(t, ts, ts.Truncate(time.Millisecond))
			}
			assert.False(t, tk.updatedAt.Before(tk.createdAt), "task %d", tk.id)
			if !tk.dispatchedAt.IsZero() {
				assert.False(t, tk.dispatchedAt.Before(tk.createdAt), "task %d", tk.id)
			}
			if !tk.startedAt.IsZero() {
				assert.False(t, tk.startedAt.Before(tk.dispatchedAt), "task %d", tk.id)
			}
			if !tk.finishedAt.IsZero() && !tk.startedAt.IsZero() {
				assert.False(t, tk.finishedAt.Before(tk.startedAt), "task %d", tk.id)
			}
			as := assignments[tk.id]
			require.Len(t, as, int(tk.attempt), "task %d: one assignment per attempt", tk.id)
			for j, a := range as {
				assert.Equal(t, int32(j+1), a.attempt)
				if j > 0 {
					assert.False(t, a.assignedAt.Before(as[j-1].releasedAt), "task %d: attempts overlap", tk.id)
				}
			}
			switch {
			case tk.status == schemas.StatusPending:
				assert.Empty(t, tk.container)
				assert.Zero(t, tk.progress)
				assert.True(t, tk.dispatchedAt.IsZero() && tk.startedAt.IsZero() && tk.finishedAt.IsZero())
				for _, a := range as {
					assert.Equal(t, schemas.ContainerDead, containers[a.container].status, "re-queued after a lost agent")
				}
			case schemas.IsInFlight(tk.status):
				require.NotEmpty(t, as)
				last := as[len(as)-1]
				assert.True(t, last.releasedAt.IsZero())
				assert.Equal(t, tk.container, last.container)
				assert.Equal(t, schemas.ContainerLive, containers[tk.container].status)
				assert.True(t, tk.finishedAt.IsZero())
				assert.Equal(t, tk.status == schemas.StatusRunning, !tk.startedAt.IsZero())
				if tk.status == schemas.StatusRunning {
					assert.True(t, tk.progress >= 1 && tk.progress <= 99)
				} else {
					assert.Zero(t, tk.progress)
				}
			default: // terminal
				assert.False(t, tk.finishedAt.IsZero())
				if len(as) > 0 {
					last := as[len(as)-1]
					assert.Equal(t, tk.finishedAt, last.releasedAt)
					assert.Equal(t, tk.container, last.container)
				} else {
					assert.Equal(t, schemas.StatusCancelled, tk.status, "task %d: only a cancelled task is never dispatched", tk.id)
					assert.Empty(t, tk.container)
				}
				if tk.status == schemas.StatusCompleted {
					assert.Equal(t, int32(100), tk.progress)
				}
			}
		}
	}
}

func TestBriefBody(t *testing.T) {
	p := mustPlan(t, SeedOptions{Tasks: 200, Seed: 3, Now: testNow, BriefSize: 1500})
	for i := range p.tasks {
		tk := &p.tasks[i]
		b := p.briefBody(tk)
		sum := sha256.Sum256(b)
		assert.Equal(t, tk.briefSize, int64(len(b)))
		assert.Equal(t, hex.EncodeToString(sum[:]), tk.briefSHA256)
		assert.True(t, tk.briefTarget >= 750 && tk.briefTarget <= 2250, "target %d", tk.briefTarget)
		assert.Equal(t, max(tk.briefTarget, len(b)), len(b), "exact size when the target fits")
		var doc briefDoc
		require.NoError(t, json.Unmarshal(b, &doc), "task %d", tk.id)
		assert.Equal(t, tk.id, doc.TaskID)
		assert.Len(t, doc.Skills, len(tk.skills))
	}
	// Tiny briefs still are valid JSON; their size is what was written.
	p = mustPlan(t, SeedOptions{Tasks: 20, Seed: 3, Now: testNow, BriefSize: 1})
	for i := range p.tasks {
		var doc briefDoc
		require.NoError(t, json.Unmarshal(p.briefBody(&p.tasks[i]), &doc))
	}
}

func TestPendingInDispatchOrder(t *testing.T) {
	p := mustPlan(t, SeedOptions{Tasks: 2000, Seed: 5, Now: testNow})
	ids := p.pendingInDispatchOrder()
	require.Len(t, ids, 300)
	byID := map[int64]*task{}
	for i := range p.tasks {
		byID[p.tasks[i].id] = &p.tasks[i]
	}
	ties := 0
	for i := 1; i < len(ids); i++ {
		a, b := byID[ids[i-1]], byID[ids[i]]
		switch {
		case a.priority != b.priority:
			assert.Greater(t, a.priority, b.priority)
		case !a.createdAt.Equal(b.createdAt):
			assert.True(t, a.createdAt.Before(b.createdAt))
		default:
			ties++
			assert.Less(t, a.id, b.id)
		}
	}
	assert.Positive(t, ties, "the data should exercise the id tie-break")
}

func TestSeedOptionsDefaults(t *testing.T) {
	o, err := SeedOptions{}.withDefaults()
	require.NoError(t, err)
	assert.Equal(t, DefaultTasks, o.Tasks)
	assert.Equal(t, DefaultSkills, o.Skills)
	assert.Equal(t, DefaultBriefSize, o.BriefSize)
	assert.Equal(t, DefaultParallel, o.Parallel)
	assert.Equal(t, 13, o.Containers) // 100 in flight / 8, rounded up
	assert.False(t, o.Now.IsZero())

	_, err = SeedOptions{Tasks: -1}.withDefaults()
	assert.ErrorContains(t, err, "Tasks")
}

func TestSummaryDiff(t *testing.T) {
	a := newSummary()
	b := newSummary()
	assert.Nil(t, a.Diff(b))
	b.ByStatus[schemas.StatusPending] = 3
	b.Bytes = 10
	assert.Equal(t, []string{"tasks.pending: 0 → 3", "bytes: 0 → 10"}, a.Diff(b))
}
