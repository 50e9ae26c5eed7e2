package workflows_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/kohakku/drflow/internal/historytest"
	"github.com/kohakku/drflow/workflows"
)

func mustOpen(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	return f
}

// TestReplayShippedHistories replays every committed history in testdata/ against the
// current workflow code. A change that breaks determinism for runs already in flight fails
// here. Histories are recorded from real runs (see worker's -update-histories flag); each
// file is named <WorkflowType>-<scenario>.json.
func TestReplayShippedHistories(t *testing.T) {
	files, err := filepath.Glob("testdata/*.json")
	require.NoError(t, err)
	covered := map[string]bool{}
	for _, f := range files {
		covered[strings.SplitN(filepath.Base(f), "-", 2)[0]] = true
	}
	for _, def := range workflows.All() {
		require.True(t, covered[def.Name], "no replay history in testdata/ for shipped workflow %s", def.Name)
	}

	ids, err := historytest.IDs("testdata")
	require.NoError(t, err)
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			r := worker.NewWorkflowReplayer()
			for _, def := range workflows.All() {
				r.RegisterWorkflowWithOptions(def.Func, workflow.RegisterOptions{Name: def.Name})
			}
			hist, err := client.HistoryFromJSON(mustOpen(t, f), client.HistoryJSONOptions{})
			require.NoError(t, err)
			opts := worker.ReplayWorkflowHistoryOptions{}
			if id, ok := ids[filepath.Base(f)]; ok {
				opts.OriginalExecution = workflow.Execution{ID: id}
			}
			require.NoError(t, r.ReplayWorkflowHistoryWithOptions(nil, hist, opts))
		})
	}
}
