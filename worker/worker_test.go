package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"

	"github.com/kohakku/drflow/internal/historytest"
	"github.com/kohakku/drflow/workflows"
)

// workerProc is `worker --dev` running as a subprocess on fixed ports and a state dir.
type workerProc struct {
	t        *testing.T
	bin      string
	stateDir string
	grpc     string
	ui       string
	http     string
	cmd      *exec.Cmd
	out      *syncBuffer
	exited   chan struct{}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func buildWorker(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "worker")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "go build ./worker:\n%s", out)
	return bin
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().String()
}

func (w *workerProc) start() {
	w.t.Helper()
	w.out = &syncBuffer{}
	w.cmd = exec.Command(w.bin, "--dev",
		"--state-dir", w.stateDir,
		"--dev-grpc-addr", w.grpc,
		"--ui-addr", w.ui,
		"--http-addr", w.http,
	)
	// The test's environment must not point the worker elsewhere.
	w.cmd.Env = append(os.Environ(), "DRFLOW_CONFIG=", "TEMPORAL_ADDRESS=", "TEMPORAL_API_KEY=", "S3_BUCKET=", "HOME="+w.stateDir)
	w.cmd.Stdout, w.cmd.Stderr = w.out, w.out
	w.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(w.t, w.cmd.Start())
	w.exited = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(w.cmd, w.exited)

	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + w.http + "/healthz")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-w.exited:
			w.t.Fatalf("worker exited during start:\n%s", w.out)
		default:
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("worker not healthy after 60s:\n%s", w.out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (w *workerProc) kill() {
	w.t.Helper()
	require.NoError(w.t, w.cmd.Process.Signal(syscall.SIGKILL))
	<-w.exited
}

// stop asks for a graceful shutdown and requires a clean exit.
func (w *workerProc) stop() {
	w.t.Helper()
	require.NoError(w.t, w.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-w.exited:
		assert.Equal(w.t, 0, w.cmd.ProcessState.ExitCode(), "worker output:\n%s", w.out)
	case <-time.After(30 * time.Second):
		_ = w.cmd.Process.Kill()
		w.t.Fatalf("worker did not stop within 30s of SIGTERM:\n%s", w.out)
	}
}

// TestDevWorkerSurvivesSIGKILL runs `worker --dev` as a subprocess, kills it with SIGKILL
// in the middle of a heartbeating activity, restarts it on the same state dir, and checks
// that the workflow completes with the activity resumed from its last heartbeat. On the
// way it checks the Web UI, its API, the search attributes and /metrics.
func TestDevWorkerSurvivesSIGKILL(t *testing.T) {
	w := &workerProc{
		t:        t,
		bin:      buildWorker(t),
		stateDir: t.TempDir(),
		grpc:     freeAddr(t),
		ui:       freeAddr(t),
		http:     freeAddr(t),
	}
	w.start()
	t.Cleanup(func() {
		if w.cmd.ProcessState == nil {
			_ = w.cmd.Process.Kill()
			<-w.exited
		}
		if t.Failed() {
			t.Logf("worker output:\n%s", w.out)
		}
	})

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := client.DialContext(ctx, client.Options{HostPort: w.grpc, Namespace: "default"})
	require.NoError(t, err)
	defer c.Close()

	const steps = 16
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID:        "selfcheck-kill-test",
		TaskQueue: workflows.TaskQueue,
	}, workflows.SelfCheckName, workflows.SelfCheckInput{
		Steps:            steps,
		StepInterval:     workflows.Duration(300 * time.Millisecond),
		HeartbeatTimeout: workflows.Duration(2 * time.Second),
	})
	require.NoError(t, err)

	// Wait until the activity has heartbeated a few steps, then kill the whole process:
	// worker, embedded server and UI die together.
	beforeKill := waitHeartbeat(ctx, t, c, run.GetID(), 4)
	w.kill()
	require.Less(t, beforeKill, steps, "the activity finished before the kill; nothing was tested")

	w.start()
	var res workflows.SelfCheckResult
	require.NoError(t, run.Get(ctx, &res), "worker output:\n%s", w.out)

	assert.Equal(t, steps, res.Soak.Steps)
	assert.GreaterOrEqual(t, res.Soak.Attempt, int32(2), "the activity must have been retried after the kill")
	assert.GreaterOrEqual(t, res.Soak.ResumedFrom, beforeKill, "the retry must resume from the last heartbeat, not from 0")
	assert.Less(t, res.Soak.ResumedFrom, steps)

	t.Run("progress query", func(t *testing.T) {
		v, err := c.QueryWorkflow(ctx, run.GetID(), "", workflows.ProgressQuery)
		require.NoError(t, err)
		var p workflows.Progress
		require.NoError(t, v.Get(&p))
		require.Len(t, p.Steps, 1)
		assert.Equal(t, workflows.StepCompleted, p.Steps[0].Status)
		assert.Contains(t, p.Steps[0].Detail, fmt.Sprintf("resumed from step %d", res.Soak.ResumedFrom))
	})

	t.Run("search attribute", func(t *testing.T) {
		require.Eventually(t, func() bool {
			resp, err := c.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{Namespace: "default", Query: `DrRunbook = "SelfCheck"`})
			return err == nil && len(resp.Executions) == 1 && resp.Executions[0].Execution.WorkflowId == run.GetID()
		}, 10*time.Second, 200*time.Millisecond)
	})

	t.Run("web ui", func(t *testing.T) {
		resp, err := http.Get("http://" + w.ui + "/")
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		assert.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Contains(t, strings.ToLower(string(body)), "<html")

		q := url.Values{"query": {`WorkflowId = "` + run.GetID() + `"`}}
		resp, err = http.Get("http://" + w.ui + "/api/v1/namespaces/default/workflows?" + q.Encode())
		require.NoError(t, err)
		var list struct {
			Executions []struct {
				Execution struct {
					WorkflowID string `json:"workflowId"`
				} `json:"execution"`
				Type struct {
					Name string `json:"name"`
				} `json:"type"`
				Status string `json:"status"`
			} `json:"executions"`
		}
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&list))
		_ = resp.Body.Close()
		require.Len(t, list.Executions, 1)
		assert.Equal(t, run.GetID(), list.Executions[0].Execution.WorkflowID)
		assert.Equal(t, workflows.SelfCheckName, list.Executions[0].Type.Name)
		assert.Equal(t, "WORKFLOW_EXECUTION_STATUS_COMPLETED", list.Executions[0].Status)
	})

	t.Run("metrics", func(t *testing.T) {
		resp, err := http.Get("http://" + w.http + "/metrics")
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		assert.Equal(t, http.StatusOK, resp.StatusCode)
		// SDK metrics, recorded by this process since its restart.
		assert.Contains(t, string(body), "temporal_activity_execution_latency")
		assert.Contains(t, string(body), "temporal_workflow_completed")
		assert.Contains(t, string(body), "go_goroutines")
	})

	t.Run("health without a backup store", func(t *testing.T) {
		resp, err := http.Get("http://" + w.http + "/health")
		require.NoError(t, err)
		var rep struct {
			Healthy  bool     `json:"healthy"`
			Problems []string `json:"problems"`
		}
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&rep))
		_ = resp.Body.Close()
		assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
		assert.False(t, rep.Healthy)
		assert.Equal(t, []string{"backup store not configured (set S3_BUCKET and its credentials)"}, rep.Problems)
	})

	t.Run("namespace", func(t *testing.T) {
		desc, err := c.WorkflowService().DescribeNamespace(ctx, &workflowservice.DescribeNamespaceRequest{Namespace: "default"})
		require.NoError(t, err)
		assert.GreaterOrEqual(t, desc.Config.WorkflowExecutionRetentionTtl.AsDuration(), 30*24*time.Hour)
	})

	if *historytest.Update {
		historytest.Write(ctx, t, c, run.GetID(), "../workflows/testdata/SelfCheck-worker-killed.json")
	}
	w.stop()
}

// waitHeartbeat waits until the pending activity of the workflow has heartbeated at least
// n steps, and returns the count it saw.
func waitHeartbeat(ctx context.Context, t *testing.T, c client.Client, id string, n int) int {
	t.Helper()
	for {
		desc, err := c.DescribeWorkflowExecution(ctx, id, "")
		require.NoError(t, err)
		for _, pa := range desc.PendingActivities {
			if pa.HeartbeatDetails == nil || len(pa.HeartbeatDetails.Payloads) == 0 {
				continue
			}
			var cur struct {
				Done int `json:"done"`
			}
			require.NoError(t, json.Unmarshal(pa.HeartbeatDetails.Payloads[0].Data, &cur))
			if cur.Done >= n {
				return cur.Done
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no heartbeat with %d steps: %v", n, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
