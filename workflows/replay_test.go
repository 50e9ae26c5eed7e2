package workflows_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/kohakku/drflow/workflows"
)

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

	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			r := worker.NewWorkflowReplayer()
			for _, def := range workflows.All() {
				r.RegisterWorkflowWithOptions(def.Func, workflow.RegisterOptions{Name: def.Name})
			}
			require.NoError(t, r.ReplayWorkflowHistoryFromJSONFile(nil, f))
		})
	}
}
