// Package historytest records workflow histories from real runs as the JSON files the
// replay tests in workflows/ read (the same format as `temporal workflow show -o json`).
package historytest

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/api/temporalproto"
	"go.temporal.io/sdk/client"
)

// Update is set by -update-histories: tests that run a shipped workflow for real then
// rewrite its fixture.
var Update = flag.Bool("update-histories", false, "rewrite the replay histories in workflows/testdata from this run")

// Write stores the history of workflow id as JSON at path.
func Write(ctx context.Context, t testing.TB, c client.Client, id, path string) {
	t.Helper()
	iter := c.GetWorkflowHistory(ctx, id, "", false, enums.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	hist := &historypb.History{}
	for iter.HasNext() {
		ev, err := iter.Next()
		require.NoError(t, err)
		hist.Events = append(hist.Events, ev)
	}
	b, err := temporalproto.CustomJSONMarshalOptions{Indent: "  "}.Marshal(hist)
	require.NoError(t, err)
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, append(b, '\n'), 0o644))
	t.Logf("wrote %s (%d events)", path, len(hist.Events))
}
