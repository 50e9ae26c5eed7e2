package e2e

import (
	"bytes"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The worker binary, built once per test binary.
var (
	workerBinOnce sync.Once
	workerBin     string
	workerBinErr  error
	workerBinOut  []byte
)

func buildWorkerBin(t *testing.T) string {
	t.Helper()
	workerBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "drflow-e2e-worker-")
		if err != nil {
			workerBinErr = err
			return
		}
		workerBin = filepath.Join(dir, "worker")
		workerBinOut, workerBinErr = exec.Command("go", "build", "-o", workerBin, "../../worker").CombinedOutput()
	})
	require.NoError(t, workerBinErr, "go build ./worker:\n%s", workerBinOut)
	return workerBin
}

// workerProc is the worker binary as a subprocess, configured through the environment
// exactly as in production, so a test can SIGKILL it.
type workerProc struct {
	bin    string
	env    []string
	http   string
	cmd    *exec.Cmd
	out    *lockedBuffer
	exited chan struct{}
	starts int
	logs   []*lockedBuffer // the output of every start, for the secrets guard
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func newWorkerProc(t *testing.T, vars map[string]string, queue string) *workerProc {
	t.Helper()
	w := &workerProc{bin: buildWorkerBin(t)}
	for k, v := range vars {
		w.env = append(w.env, k+"="+v)
	}
	w.env = append(w.env, "DRFLOW_TASK_QUEUE="+queue, "PATH="+os.Getenv("PATH"), "DRFLOW_CONFIG=")
	w.newHTTPAddr(t)
	t.Cleanup(func() { checkWorkerLogs(t, vars, w.logs) }) // runs after the kill below
	t.Cleanup(func() {
		if w.cmd != nil && w.cmd.ProcessState == nil {
			_ = w.cmd.Process.Kill()
			<-w.exited
		}
	})
	return w
}

// newHTTPAddr gives the worker a free port on 127.0.0.1 for its HTTP server
// (DRFLOW_HTTP_ADDR), replacing the one it had.
func (w *workerProc) newHTTPAddr(t *testing.T) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	w.http = l.Addr().String()
	require.NoError(t, l.Close())
	w.env = slices.DeleteFunc(w.env, func(kv string) bool { return strings.HasPrefix(kv, "DRFLOW_HTTP_ADDR=") })
	w.env = append(w.env, "DRFLOW_HTTP_ADDR="+w.http)
}

// start runs the worker and waits until /healthz answers.
func (w *workerProc) start(t *testing.T) {
	t.Helper()
	w.out = &lockedBuffer{}
	w.logs = append(w.logs, w.out)
	w.cmd = exec.Command(w.bin)
	w.cmd.Env = w.env
	w.cmd.Stdout, w.cmd.Stderr = w.out, w.out
	w.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(t, w.cmd.Start())
	w.starts++
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
			t.Fatalf("worker exited during start:\n%s", w.out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("worker not healthy after 60s:\n%s", w.out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (w *workerProc) kill(t *testing.T) {
	t.Helper()
	require.NoError(t, w.cmd.Process.Signal(syscall.SIGKILL))
	<-w.exited
}
