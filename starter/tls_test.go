package main

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"

	"github.com/kohakku/drflow/internal/app"
	"github.com/kohakku/drflow/internal/config"
	"github.com/kohakku/drflow/internal/stack/stacktest"
)

// TestStarterMTLS drives the starter through a Temporal frontend that
// requires client certificates: with one it starts and reads runbooks, and
// each way of getting the certificates wrong fails within seconds, naming
// the setting to fix.
func TestStarterMTLS(t *testing.T) {
	tp, certs := stacktest.TemporalTLS(t, true)
	pem := map[string]string{}
	for _, f := range []string{certs.CAFile, certs.ClientCertFile, certs.ClientKeyFile, certs.OtherClientCertFile, certs.OtherClientKeyFile} {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		pem[f] = string(b)
	}
	const taskQueue = "tls-starter"
	t.Setenv("HOME", t.TempDir()) // no Temporal client config profile
	t.Setenv("XDG_CONFIG_HOME", "")
	t.Setenv("DRFLOW_CONFIG", "")
	t.Setenv("TEMPORAL_ADDRESS", tp.GRPCAddr())
	t.Setenv("TEMPORAL_NAMESPACE", "default")
	t.Setenv("DRFLOW_TASK_QUEUE", taskQueue)
	for _, k := range []string{"TEMPORAL_API_KEY", "TEMPORAL_TLS", "TEMPORAL_TLS_CLIENT_CERT_DATA", "TEMPORAL_TLS_CLIENT_KEY_DATA",
		"TEMPORAL_TLS_SERVER_CA_CERT_DATA", "TEMPORAL_TLS_SERVER_NAME", "TEMPORAL_TLS_DISABLE_HOST_VERIFICATION"} {
		t.Setenv(k, "")
	}
	withFiles := map[string]string{
		"TEMPORAL_TLS_SERVER_CA_CERT_PATH": certs.CAFile,
		"TEMPORAL_TLS_CLIENT_CERT_PATH":    certs.ClientCertFile,
		"TEMPORAL_TLS_CLIENT_KEY_PATH":     certs.ClientKeyFile,
	}
	setenv := func(t *testing.T, env map[string]string) {
		for _, k := range []string{"TEMPORAL_TLS_SERVER_CA_CERT_PATH", "TEMPORAL_TLS_CLIENT_CERT_PATH", "TEMPORAL_TLS_CLIENT_KEY_PATH"} {
			t.Setenv(k, "")
		}
		for k, v := range env {
			t.Setenv(k, v)
		}
	}
	// failsFast runs the starter, which must fail within seconds (its dial
	// timeout is 15s), and returns the error it prints.
	failsFast := func(t *testing.T, args ...string) string {
		t.Helper()
		began := time.Now()
		out, err := starter(t, args...)
		require.Error(t, err, out)
		took := time.Since(began)
		t.Logf("starter: %v (after %s)", err, took.Round(time.Millisecond))
		assert.Less(t, took, 5*time.Second, "a misconfigured connection must fail fast")
		return err.Error()
	}

	setenv(t, withFiles)
	startSDKWorker(t, taskQueue)

	t.Run("client certificate files", func(t *testing.T) {
		setenv(t, withFiles)
		out, err := starter(t, "start", "SelfCheck", "--id", "selfcheck-mtls-files",
			"--input", `{"steps": 2, "stepInterval": "10ms"}`, "--wait")
		require.NoError(t, err, out)
		assert.Contains(t, out, "started SelfCheck  workflow id selfcheck-mtls-files")
		assert.Contains(t, out, "result: ")
	})

	t.Run("client certificate data", func(t *testing.T) {
		setenv(t, map[string]string{
			"TEMPORAL_TLS_SERVER_CA_CERT_DATA": pem[certs.CAFile],
			"TEMPORAL_TLS_CLIENT_CERT_DATA":    pem[certs.ClientCertFile],
			"TEMPORAL_TLS_CLIENT_KEY_DATA":     pem[certs.ClientKeyFile],
		})
		out, err := starter(t, "progress", "selfcheck-mtls-files")
		require.NoError(t, err, out)
		assert.Regexp(t, `soak\s+completed`, out)
	})

	t.Run("no client certificate", func(t *testing.T) {
		setenv(t, map[string]string{"TEMPORAL_TLS_SERVER_CA_CERT_PATH": certs.CAFile})
		msg := failsFast(t, "progress", "selfcheck-mtls-files")
		// The server's alert or, depending on timing, only its closing the
		// connection reaches the client; both say what to set.
		assert.Regexp(t, `TLS: the server (requires a client certificate|closed the connection, as one that requires a client certificate \(mTLS\) does without one)`, msg)
		assert.Contains(t, msg, "set TEMPORAL_TLS_CLIENT_CERT_PATH and TEMPORAL_TLS_CLIENT_KEY_PATH")
	})

	t.Run("client certificate of another CA", func(t *testing.T) {
		key := pem[certs.OtherClientKeyFile]
		setenv(t, map[string]string{
			"TEMPORAL_TLS_SERVER_CA_CERT_PATH": certs.CAFile,
			"TEMPORAL_TLS_CLIENT_CERT_DATA":    pem[certs.OtherClientCertFile],
			"TEMPORAL_TLS_CLIENT_KEY_DATA":     key,
		})
		msg := failsFast(t, "progress", "selfcheck-mtls-files")
		assert.Contains(t, msg, "TLS: the server did not accept the client certificate in TEMPORAL_TLS_CLIENT_CERT_DATA (mTLS)")
		assert.NotContains(t, msg, strings.TrimSpace(key)[40:80], "the key never shows")
	})

	t.Run("wrong server CA", func(t *testing.T) {
		setenv(t, withFiles)
		t.Setenv("TEMPORAL_TLS_SERVER_CA_CERT_PATH", certs.OtherCAFile)
		msg := failsFast(t, "progress", "selfcheck-mtls-files")
		assert.Contains(t, msg, "x509: certificate signed by unknown authority")
		assert.Contains(t, msg, "TLS: the server's certificate is not signed by the CA in TEMPORAL_TLS_SERVER_CA_CERT_PATH="+certs.OtherCAFile)
	})

	t.Run("plaintext", func(t *testing.T) {
		setenv(t, nil)
		msg := failsFast(t, "progress", "selfcheck-mtls-files")
		assert.Contains(t, msg, "set TEMPORAL_TLS=true, with TEMPORAL_TLS_SERVER_CA_CERT_PATH")
	})
}

// startSDKWorker polls taskQueue with drflow's workflows and activities
// until the test ends, connected with the client options of the
// environment's configuration, as the worker binary is.
func startSDKWorker(t *testing.T, taskQueue string) {
	t.Helper()
	cfg, err := config.FromEnvironment()
	require.NoError(t, err)
	opts, err := cfg.TemporalClientOptions()
	require.NoError(t, err)
	opts.Logger = quietLogger()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := client.DialContext(ctx, opts)
	require.NoError(t, err)
	t.Cleanup(c.Close)
	acts, err := app.New(ctx, cfg)
	require.NoError(t, err)
	w := worker.New(c, taskQueue, worker.Options{})
	require.NoError(t, app.Register(w, acts))
	require.NoError(t, w.Start())
	t.Cleanup(w.Stop)
}
