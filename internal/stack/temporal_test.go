package stack

import (
	"context"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/operatorservice/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
)

// probeTaskQueue is polled by no one, so a "Probe" workflow started on it
// stays Running: its existence is the marker, no worker needed.
const probeTaskQueue = "stack-probe"

func temporalOps(tp *Temporal) dataOps {
	dial := func(t *testing.T, ctx context.Context) client.Client {
		c, err := tp.Client(ctx)
		require.NoError(t, err)
		t.Cleanup(c.Close)
		return c
	}
	return dataOps{
		srv: tp,
		write: func(t *testing.T, ctx context.Context, key string) {
			run, err := dial(t, ctx).ExecuteWorkflow(ctx, client.StartWorkflowOptions{
				ID:        "probe-" + key,
				TaskQueue: probeTaskQueue,
			}, "Probe")
			require.NoError(t, err)
			require.NotEmpty(t, run.GetRunID())
		},
		has: func(t *testing.T, ctx context.Context, key string) bool {
			desc, err := dial(t, ctx).DescribeWorkflowExecution(ctx, "probe-"+key, "")
			var notFound *serviceerror.NotFound
			if errors.As(err, &notFound) {
				return false
			}
			require.NoError(t, err)
			info := desc.GetWorkflowExecutionInfo()
			assert.Equal(t, "Probe", info.GetType().GetName())
			assert.Equal(t, enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING, info.GetStatus())
			return true
		},
		afterWipe: func(t *testing.T, ctx context.Context) {
			checkTemporalNamespace(t, ctx, dial(t, ctx))
		},
	}
}

// temporalSearchAttributes are those of workflows.SearchAttributeTypes,
// spelled out so that this package's tests build without package workflows.
var temporalSearchAttributes = map[string]enumspb.IndexedValueType{
	"DrRunbook": enumspb.INDEXED_VALUE_TYPE_KEYWORD,
	"DrTarget":  enumspb.INDEXED_VALUE_TYPE_KEYWORD,
	"DrDrill":   enumspb.INDEXED_VALUE_TYPE_BOOL,
}

// checkTemporalNamespace checks that namespace "default" exists with drflow's
// search attributes.
func checkTemporalNamespace(t *testing.T, ctx context.Context, c client.Client) {
	t.Helper()
	ns, err := c.WorkflowService().DescribeNamespace(ctx, &workflowservice.DescribeNamespaceRequest{Namespace: TemporalNamespace})
	require.NoError(t, err)
	assert.Equal(t, TemporalNamespace, ns.GetNamespaceInfo().GetName())

	sa, err := c.OperatorService().ListSearchAttributes(ctx, &operatorservice.ListSearchAttributesRequest{Namespace: TemporalNamespace})
	require.NoError(t, err)
	for name, typ := range temporalSearchAttributes {
		assert.Equal(t, typ, sa.GetCustomAttributes()[name], "search attribute %s", name)
	}
}

func TestTemporal(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	_, err := DevServerBinary(ctx, t.Logf)
	require.NoError(t, err)

	began := time.Now()
	tp, err := StartTemporal(ctx, t.TempDir())
	require.NoError(t, err)
	t.Logf("temporal started in %s", time.Since(began).Round(time.Millisecond))
	defer func() { assert.NoError(t, tp.Close()) }()

	c, err := tp.Client(ctx)
	require.NoError(t, err)
	defer c.Close()
	checkTemporalNamespace(t, ctx, c)
	assert.FileExists(t, filepath.Join(tp.StateDir(), "temporal.db"))
	assert.FileExists(t, tp.ServerLogPath())

	resp, err := http.Get(tp.UIURL() + "/healthz")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode, "web ui")

	// A second server told to use the first one's gRPC port fails with
	// "address already in use", which StartTemporal treats as a lost race.
	q := &Temporal{root: filepath.Join(t.TempDir(), "temporal"), bin: tp.bin, grpcPort: tp.grpcPort}
	q.stateDir = filepath.Join(q.root, "state")
	q.logPath = filepath.Join(q.root, "temporal.log")
	q.uiPort, err = pickPort()
	require.NoError(t, err)
	require.NoError(t, os.MkdirAll(q.root, 0o700))
	err = q.Start(ctx)
	require.Error(t, err)
	assert.True(t, addrInUse(err), "want address in use, got %v", err)
	assert.False(t, q.Running())
	assert.NoError(t, q.Close())
}

func TestDevServerCommand(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	bin, err := DevServerBinary(ctx, t.Logf)
	require.NoError(t, err)

	for _, tc := range []struct {
		name   string
		args   []string
		stderr string
	}{
		{"unknown flag", []string{"--bogus"}, "flag provided but not defined"},
		{"extra argument", []string{"serve"}, "unexpected arguments"},
		{"bad address", []string{"--state-dir", t.TempDir(), "--grpc-addr", "nonsense"}, "want host:port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr strings.Builder
			cmd := exec.CommandContext(ctx, bin, tc.args...)
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			var exit *exec.ExitError
			require.ErrorAs(t, err, &exit)
			assert.Equal(t, 1, exit.ExitCode())
			assert.Contains(t, stderr.String(), tc.stderr)
			assert.Empty(t, stdout.String())
		})
	}
}

func TestDevServerStale(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	root, err := drflowRoot()
	require.NoError(t, err)
	goBin, err := goTool()
	require.NoError(t, err)

	inputs, err := devServerInputs(ctx, goBin, root)
	require.NoError(t, err)
	for _, want := range []string{
		"go.mod",
		"go.sum",
		"internal/devserver",
		"internal/devserver/devserver.go",
		"internal/devserver/cmd/drflow-devserver",
		"internal/devserver/cmd/drflow-devserver/main.go",
		"workflows",
		"workflows/types.go", // SearchAttributeTypes
	} {
		assert.Contains(t, inputs, filepath.Join(root, want))
	}
	for _, in := range inputs {
		assert.False(t, strings.HasSuffix(in, "_test.go"), "test file %s", in)
		assert.NotContains(t, in, string(filepath.Separator)+"pkg"+string(filepath.Separator)+"mod", "dependency %s", in)
	}

	bin := filepath.Join(t.TempDir(), "drflow-devserver")
	why, err := devServerStale(ctx, goBin, root, bin)
	require.NoError(t, err)
	assert.Contains(t, why, "does not exist")

	require.NoError(t, os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o644))
	why, err = devServerStale(ctx, goBin, root, bin)
	require.NoError(t, err)
	assert.Contains(t, why, "not an executable")

	require.NoError(t, os.Chmod(bin, 0o755))
	future := time.Now().Add(time.Hour)
	require.NoError(t, os.Chtimes(bin, future, future))
	why, err = devServerStale(ctx, goBin, root, bin)
	require.NoError(t, err)
	assert.Empty(t, why, "newer than every input")

	// Older than go.mod: stale, and the reason names the newest input.
	fi, err := os.Stat(filepath.Join(root, "go.mod"))
	require.NoError(t, err)
	old := fi.ModTime().Add(-time.Second)
	require.NoError(t, os.Chtimes(bin, old, old))
	why, err = devServerStale(ctx, goBin, root, bin)
	require.NoError(t, err)
	assert.Contains(t, why, "is newer than "+bin)
}

func TestNewestAfter(t *testing.T) {
	dir := t.TempDir()
	base := time.Now().Add(-time.Hour)
	var paths []string
	for i, age := range []time.Duration{30 * time.Minute, 10 * time.Minute, 50 * time.Minute} {
		p := filepath.Join(dir, "f"+strconv.Itoa(i))
		require.NoError(t, os.WriteFile(p, nil, 0o644))
		mt := base.Add(age)
		require.NoError(t, os.Chtimes(p, mt, mt))
		paths = append(paths, p)
	}
	paths = append(paths, filepath.Join(dir, "deleted"))

	for _, tc := range []struct {
		name  string
		since time.Time
		want  string
	}{
		{"all newer", base, paths[2]},
		{"one newer", base.Add(40 * time.Minute), paths[2]},
		{"none newer", base.Add(50 * time.Minute), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := newestAfter(paths, tc.since)
			assert.Equal(t, tc.want, got)
			assert.Equal(t, tc.want != "", ok)
		})
	}
}

func TestReadyLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "temporal.log")
	require.NoError(t, os.WriteFile(path, []byte("\n==== old start\nready grpc=127.0.0.1:1 ui=\n"), 0o644))
	offset := fileSize(path)
	_, err := readyLine(path, offset)
	require.Error(t, err, "a ready line before offset belongs to an earlier start")

	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteString("some warning\nready grpc=127.0.0.1:2 ui=http://127.0.0.1:3\n")
	require.NoError(t, err)
	require.NoError(t, f.Close())
	line, err := readyLine(path, offset)
	require.NoError(t, err)
	assert.Equal(t, "ready grpc=127.0.0.1:2 ui=http://127.0.0.1:3", line)

	_, err = readyLine(filepath.Join(t.TempDir(), "missing"), 0)
	assert.Error(t, err)
}
