package stack_test

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"

	"github.com/kohakku/drflow/internal/stack/stacktest"
)

// TestTemporalMTLS: a Temporal server started with TLS and client
// authentication serves only clients with a certificate, keeps doing so
// across a crash, and its own clients (the system worker, the Web UI) reach
// the frontend too. The client side of drflow is tested against such a
// server in worker/tls_test.go and starter/tls_test.go.
func TestTemporalMTLS(t *testing.T) {
	tp, certs := stacktest.TemporalTLS(t, true)
	require.NotNil(t, tp.TLS())
	assert.Equal(t, certs.CAFile, tp.TLS().ClientCAFile)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	check := func(t *testing.T) {
		c, err := tp.Client(ctx)
		require.NoError(t, err)
		defer c.Close()
		_, err = c.WorkflowService().DescribeNamespace(ctx, &workflowservice.DescribeNamespaceRequest{Namespace: tp.Namespace()})
		require.NoError(t, err)

		plain, err := client.DialContext(ctx, client.Options{HostPort: tp.GRPCAddr(), Namespace: tp.Namespace()})
		if err == nil {
			plain.Close()
		}
		require.Error(t, err, "a plaintext client must be refused")

		// The UI's API answers from the frontend, through its TLS client.
		resp, err := http.Get(tp.UIURL() + "/api/v1/namespaces/" + tp.Namespace())
		require.NoError(t, err)
		var ns struct {
			NamespaceInfo struct {
				Name string `json:"name"`
			} `json:"namespaceInfo"`
		}
		err = json.NewDecoder(resp.Body).Decode(&ns)
		resp.Body.Close()
		require.NoError(t, err)
		assert.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Equal(t, tp.Namespace(), ns.NamespaceInfo.Name)
	}
	t.Run("serves mTLS", check)

	t.Run("after a crash", func(t *testing.T) {
		require.NoError(t, tp.Kill())
		require.NoError(t, tp.Start(ctx))
		check(t)
	})

	t.Run("server log", func(t *testing.T) {
		// A server whose system worker cannot reach the frontend does not
		// get ready at all; this catches its other clients failing later.
		log, err := os.ReadFile(tp.ServerLogPath())
		require.NoError(t, err)
		for _, bad := range []string{"handshake", "certificate", "x509"} {
			assert.NotContains(t, string(log), bad)
		}
	})
}
