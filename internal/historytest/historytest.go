// Package historytest records workflow histories from real runs as the JSON files the
// replay tests in workflows/ read (the same format as `temporal workflow show -o json`).
package historytest

import (
	"context"
	"errors"
	"flag"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
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
	require.NoError(t, recordID(filepath.Join(filepath.Dir(path), IDsFile), filepath.Base(path), id))
	t.Logf("wrote %s (%d events)", path, len(hist.Events))
}

// IDsFile, next to the histories, maps each history file to the workflow id it was
// recorded under, one "file<TAB>id" line each: a workflow that derives ids from its own
// (a child named "<id>-redis") replays only under its original id.
const IDsFile = "workflow-ids.tsv"

// IDs reads the IDsFile in dir; a missing file is an empty map.
func IDs(dir string) (map[string]string, error) {
	b, err := os.ReadFile(filepath.Join(dir, IDsFile))
	if errors.Is(err, os.ErrNotExist) {
		return map[string]string{}, nil
	}
	if err != nil {
		return nil, err
	}
	ids := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if file, id, ok := strings.Cut(line, "\t"); ok {
			ids[file] = id
		}
	}
	return ids, nil
}

// idsMu serializes the read-modify-write of IDsFile between parallel tests.
var idsMu sync.Mutex

func recordID(path, file, id string) error {
	idsMu.Lock()
	defer idsMu.Unlock()
	ids, err := IDs(filepath.Dir(path))
	if err != nil {
		return err
	}
	ids[file] = id
	var b strings.Builder
	for _, f := range slices.Sorted(maps.Keys(ids)) {
		b.WriteString(f + "\t" + ids[f] + "\n")
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}
