package main

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/kohakku/drflow/internal/config"
	"github.com/kohakku/drflow/internal/stack/stacktest"
	"github.com/kohakku/drflow/workflows"
)

// failFast bounds how long a misconfigured connection may take to fail: the
// worker's dial timeout is 30s, and a TLS mistake must not wait for it.
const failFast = 5 * time.Second

// tlsWorker is one in-process run of serve, the worker binary's code path
// from configuration to a polling worker.
type tlsWorker struct {
	cfg      *config.Config
	logs     *syncBuffer
	cancel   context.CancelFunc
	done     chan error
	stopOnce sync.Once
}

// workerEnv is the environment of a worker that talks to addr and nothing
// else: no config file, no Temporal profile, its own task queue, any HTTP port.
func workerEnv(t *testing.T, addr string, env map[string]string) func(string) string {
	t.Helper()
	t.Setenv("HOME", t.TempDir()) // no Temporal client config profile
	t.Setenv("XDG_CONFIG_HOME", "")
	all := map[string]string{
		"TEMPORAL_ADDRESS":   addr,
		"TEMPORAL_NAMESPACE": "default",
		"DRFLOW_TASK_QUEUE":  "tls-" + strings.NewReplacer("/", "-", " ", "-").Replace(t.Name()),
		"DRFLOW_HTTP_ADDR":   "127.0.0.1:0",
	}
	for k, v := range env {
		all[k] = v
	}
	return func(k string) string { return all[k] }
}

// startWorker runs serve with the settings of getenv until the test ends.
func startWorker(t *testing.T, getenv func(string) string) *tlsWorker {
	t.Helper()
	cfg, err := config.Load("", getenv)
	require.NoError(t, err)
	w := &tlsWorker{cfg: cfg, logs: &syncBuffer{}, done: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	logger := slog.New(slog.NewTextHandler(w.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	go func() { w.done <- serve(ctx, cfg, options{}, logger) }()
	t.Cleanup(func() { w.stop(t) })
	return w
}

// stop ends serve and requires a clean return.
func (w *tlsWorker) stop(t *testing.T) {
	t.Helper()
	w.stopOnce.Do(func() {
		w.cancel()
		select {
		case err := <-w.done:
			assert.NoError(t, err, "worker logs:\n%s", w.logs)
		case <-time.After(30 * time.Second):
			t.Errorf("worker did not stop within 30s:\n%s", w.logs)
		}
	})
}

// serveErr runs serve with the settings of getenv, which must fail within
// failFast, and returns its logs and error.
func serveErr(t *testing.T, getenv func(string) string) (string, error) {
	t.Helper()
	cfg, err := config.Load("", getenv)
	require.NoError(t, err)
	var logs syncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	began := time.Now()
	err = serve(ctx, cfg, options{}, logger)
	took := time.Since(began)
	require.Error(t, err, "logs:\n%s", logs.String())
	t.Logf("error after %s:\n%v", took.Round(time.Millisecond), err)
	assert.Less(t, took, failFast, "a misconfigured connection must fail fast")
	return logs.String(), err
}

// selfCheck runs a short SelfCheck on the worker's task queue through c.
func selfCheck(t *testing.T, c client.Client, taskQueue string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{TaskQueue: taskQueue}, workflows.SelfCheckName,
		workflows.SelfCheckInput{Steps: 2, StepInterval: workflows.Duration(10 * time.Millisecond)})
	require.NoError(t, err)
	var res workflows.SelfCheckResult
	require.NoError(t, run.Get(ctx, &res))
	assert.Equal(t, 2, res.Soak.Steps)
}

// TestWorkerTLS runs the worker's own code path (serve, from configuration
// to polling) against a Temporal frontend that requires TLS: it runs a
// workflow with the server's CA given as a file and as data, and every
// mismatch fails within milliseconds with a message that says TLS and names
// the setting to fix. The API key is checked against a stand-in frontend,
// since the embedded server ignores it. mTLS: starter/tls_test.go.
func TestWorkerTLS(t *testing.T) {
	tp, certs := stacktest.TemporalTLS(t, false)
	ca, err := os.ReadFile(certs.CAFile)
	require.NoError(t, err)
	trusted, err := tp.Client(context.Background())
	require.NoError(t, err)
	defer trusted.Close()
	const key = "tls-test-api-key-7f3a9c"

	t.Run("server CA file", func(t *testing.T) {
		w := startWorker(t, workerEnv(t, tp.GRPCAddr(), map[string]string{
			"TEMPORAL_TLS_SERVER_CA_CERT_PATH": certs.CAFile,
		}))
		selfCheck(t, trusted, w.cfg.Temporal.TaskQueue)
	})

	t.Run("server CA data and API key", func(t *testing.T) {
		w := startWorker(t, workerEnv(t, tp.GRPCAddr(), map[string]string{
			"TEMPORAL_TLS_SERVER_CA_CERT_DATA": string(ca),
			"TEMPORAL_API_KEY":                 key,
		}))
		selfCheck(t, trusted, w.cfg.Temporal.TaskQueue)
		assert.NotContains(t, w.logs.String(), key)
	})

	for _, tc := range []struct {
		name string
		addr string // "" is the TLS server
		env  map[string]string
		want []string
	}{
		{name: "wrong CA", env: map[string]string{"TEMPORAL_TLS_SERVER_CA_CERT_PATH": certs.OtherCAFile},
			want: []string{"x509: certificate signed by unknown authority",
				"TLS: the server's certificate is not signed by the CA in TEMPORAL_TLS_SERVER_CA_CERT_PATH=" + certs.OtherCAFile}},
		{name: "system roots", env: map[string]string{"TEMPORAL_TLS": "true"},
			want: []string{"x509: certificate signed by unknown authority",
				"TLS: the server's certificate is not signed by a CA this host trusts: set TEMPORAL_TLS_SERVER_CA_CERT_PATH"}},
		{name: "wrong server name", env: map[string]string{"TEMPORAL_TLS_SERVER_CA_CERT_PATH": certs.CAFile, "TEMPORAL_TLS_SERVER_NAME": "temporal.example"},
			want: []string{"x509: certificate is valid for localhost, not temporal.example",
				"TLS: the server's certificate is not valid for the name TEMPORAL_TLS_SERVER_NAME=temporal.example"}},
		{name: "plaintext client", env: map[string]string{"TEMPORAL_TLS": "false", "TEMPORAL_API_KEY": key},
			want: []string{"the server closed the connection, as one that requires TLS does when TLS is off (TEMPORAL_TLS=false): set TEMPORAL_TLS=true"}},
		{name: "TLS client to plaintext server", addr: startFrontend(t, nil, "").addr, env: map[string]string{"TEMPORAL_API_KEY": key},
			want: []string{"tls: first record does not look like a TLS handshake",
				"TLS: the server does not speak TLS, but TEMPORAL_API_KEY turns TLS on: set TEMPORAL_TLS=false"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := tc.addr
			if addr == "" {
				addr = tp.GRPCAddr()
			}
			logs, err := serveErr(t, workerEnv(t, addr, tc.env))
			assert.ErrorContains(t, err, "connect to temporal at "+addr+" (namespace default): failed reaching server: ")
			for _, want := range tc.want {
				assert.ErrorContains(t, err, want)
			}
			assert.NotContains(t, err.Error(), key)
			assert.NotContains(t, logs, key)
		})
	}

	t.Run("API key header", func(t *testing.T) {
		cert, err := tls.LoadX509KeyPair(certs.ServerCertFile, certs.ServerKeyFile)
		require.NoError(t, err)
		fe := startFrontend(t, &cert, key)
		// Only the CA: TLS is on because of it, and would be for the API
		// key alone (see TestTemporalClientOptions in internal/config).
		w := startWorker(t, workerEnv(t, fe.addr, map[string]string{
			"TEMPORAL_API_KEY":                 key,
			"TEMPORAL_TLS_SERVER_CA_CERT_PATH": certs.CAFile,
		}))
		require.Eventually(t, func() bool { return len(fe.authorization()) > 0 }, 10*time.Second, 20*time.Millisecond)
		assert.Equal(t, "Bearer "+key, fe.authorization()[0], "the header the SDK sends")
		w.stop(t)
		assert.NotContains(t, w.logs.String(), key)

		logs, err := serveErr(t, workerEnv(t, fe.addr, map[string]string{
			"TEMPORAL_API_KEY":                 "wrong-" + key,
			"TEMPORAL_TLS_SERVER_CA_CERT_PATH": certs.CAFile,
		}))
		assert.ErrorContains(t, err, "Unauthenticated desc = invalid API key (the server did not accept the API key: check TEMPORAL_API_KEY and that it is valid for namespace default)")
		assert.NotContains(t, err.Error(), key)
		assert.NotContains(t, logs, key)
	})
}

// frontend is a stand-in Temporal frontend that answers GetSystemInfo only
// and records the authorization headers it was sent.
type frontend struct {
	workflowservice.UnimplementedWorkflowServiceServer
	addr string
	key  string

	mu   sync.Mutex
	auth []string
}

// startFrontend serves a frontend over TLS with cert, or plaintext when cert
// is nil; with key, GetSystemInfo requires "authorization: Bearer <key>".
func startFrontend(t *testing.T, cert *tls.Certificate, key string) *frontend {
	t.Helper()
	var opts []grpc.ServerOption
	if cert != nil {
		opts = append(opts, grpc.Creds(credentials.NewServerTLSFromCert(cert)))
	}
	srv := grpc.NewServer(opts...)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	f := &frontend{addr: l.Addr().String(), key: key}
	workflowservice.RegisterWorkflowServiceServer(srv, f)
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	return f
}

func (f *frontend) GetSystemInfo(ctx context.Context, _ *workflowservice.GetSystemInfoRequest) (*workflowservice.GetSystemInfoResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	auth := md.Get("authorization")
	f.mu.Lock()
	f.auth = append(f.auth, auth...)
	f.mu.Unlock()
	if f.key != "" && (len(auth) != 1 || auth[0] != "Bearer "+f.key) {
		return nil, status.Error(codes.Unauthenticated, "invalid API key")
	}
	return &workflowservice.GetSystemInfoResponse{}, nil
}

func (f *frontend) authorization() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.auth...)
}
