package config

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestConnHint: each way a TLS or credentials mistake shows up in gRPC
// gets the setting that fixes it; other failures get no hint. The messages
// are those grpc-go and crypto/tls produce (see worker/tls_test.go and
// starter/tls_test.go for them end to end).
func TestConnHint(t *testing.T) {
	on, off := true, false
	for _, tc := range []struct {
		name  string
		env   map[string]string
		tlsOn bool
		code  codes.Code
		msg   string
		want  string // substring of the hint; "" means no hint
	}{
		{"untrusted server, CA file", map[string]string{"TEMPORAL_TLS_SERVER_CA_CERT_PATH": "/etc/ca.pem"}, on, codes.Unavailable,
			`connection error: desc = "transport: authentication handshake failed: tls: failed to verify certificate: x509: certificate signed by unknown authority"`,
			"not signed by the CA in TEMPORAL_TLS_SERVER_CA_CERT_PATH=/etc/ca.pem"},
		{"untrusted server, CA data", map[string]string{"TEMPORAL_TLS_SERVER_CA_CERT_DATA": "-----BEGIN CERTIFICATE-----"}, on, codes.Unavailable,
			"x509: certificate signed by unknown authority", "not signed by the CA in TEMPORAL_TLS_SERVER_CA_CERT_DATA"},
		{"untrusted server, system roots", map[string]string{"TEMPORAL_TLS": "true"}, on, codes.Unavailable,
			"x509: certificate signed by unknown authority", "set TEMPORAL_TLS_SERVER_CA_CERT_PATH (or _DATA)"},
		{"wrong name", map[string]string{"TEMPORAL_ADDRESS": "10.0.0.5:7233", "TEMPORAL_TLS": "true"}, on, codes.Unavailable,
			"x509: certificate is valid for temporal.internal, not 10.0.0.5", "not valid for the name 10.0.0.5: set TEMPORAL_TLS_SERVER_NAME"},
		{"wrong server name", map[string]string{"TEMPORAL_TLS_SERVER_NAME": "x.internal"}, on, codes.Unavailable,
			"x509: certificate is valid for temporal.internal, not x.internal", "TEMPORAL_TLS_SERVER_NAME=x.internal"},
		{"IP without IP SANs", map[string]string{"TEMPORAL_ADDRESS": "10.0.0.5:7233", "TEMPORAL_TLS": "true"}, on, codes.Unavailable,
			"x509: cannot validate certificate for 10.0.0.5 because it doesn't contain any IP SANs", "set TEMPORAL_TLS_SERVER_NAME"},
		{"other verification error", map[string]string{"TEMPORAL_TLS": "true"}, on, codes.Unavailable,
			"x509: certificate specifies an incompatible key usage", "fix the certificate on the server"},
		{"expired", map[string]string{"TEMPORAL_TLS": "true"}, on, codes.Unavailable,
			"x509: certificate has expired or is not yet valid: current time …", "renew it on the server"},
		{"no client certificate", map[string]string{"TEMPORAL_TLS": "true"}, on, codes.Unavailable,
			`connection error: desc = "error reading server preface: remote error: tls: certificate required"`,
			"requires a client certificate (mTLS): set TEMPORAL_TLS_CLIENT_CERT_PATH and TEMPORAL_TLS_CLIENT_KEY_PATH"},
		{"client certificate refused", map[string]string{"TEMPORAL_TLS_CLIENT_CERT_PATH": "/etc/c.pem", "TEMPORAL_TLS_CLIENT_KEY_PATH": "/etc/c.key"}, on, codes.Unavailable,
			"remote error: tls: unknown certificate authority", "did not accept the client certificate in TEMPORAL_TLS_CLIENT_CERT_PATH=/etc/c.pem (mTLS): it must be signed by a CA the server trusts"},
		{"TLS 1.2 server without a client certificate", map[string]string{"TEMPORAL_TLS": "true"}, on, codes.Unavailable,
			"remote error: tls: bad certificate", "requires a client certificate (mTLS)"},
		{"client certificate of a CA the server does not ask for", map[string]string{"TEMPORAL_TLS_CLIENT_CERT_PATH": "/etc/c.pem", "TEMPORAL_TLS_CLIENT_KEY_PATH": "/etc/c.key"}, on, codes.Unavailable,
			"error reading server preface: remote error: tls: certificate required", "did not accept the client certificate in TEMPORAL_TLS_CLIENT_CERT_PATH=/etc/c.pem"},
		{"TLS client, plaintext server", map[string]string{"TEMPORAL_API_KEY": "key-c0ffee"}, on, codes.Unavailable,
			"authentication handshake failed: tls: first record does not look like a TLS handshake",
			"does not speak TLS, but TEMPORAL_API_KEY turns TLS on: set TEMPORAL_TLS=false"},
		{"plaintext client, TLS server", nil, off, codes.Unavailable,
			`connection error: desc = "error reading server preface: EOF"`,
			"when TLS is off (no TEMPORAL_TLS_* setting or TEMPORAL_API_KEY turns it on): set TEMPORAL_TLS=true"},
		{"plaintext client by choice", map[string]string{"TEMPORAL_TLS": "false"}, off, codes.Unavailable,
			"error reading server preface: read: connection reset by peer", "(TEMPORAL_TLS=false)"},
		{"bad API key", map[string]string{"TEMPORAL_API_KEY": "key-c0ffee", "TEMPORAL_NAMESPACE": "ns"}, on, codes.Unauthenticated,
			"invalid API key", "the server did not accept the API key: check TEMPORAL_API_KEY and that it is valid for namespace ns"},
		{"no credentials", nil, off, codes.Unauthenticated, "missing credentials", "set TEMPORAL_API_KEY"},

		{"server down", nil, off, codes.Unavailable, `connection error: desc = "transport: Error while dialing: dial tcp 127.0.0.1:7233: connect: connection refused"`, ""},
		{"closed after the handshake, no client certificate", map[string]string{"TEMPORAL_TLS": "true"}, on, codes.Unavailable,
			"write tcp 127.0.0.1:58696->127.0.0.1:40873: write: broken pipe", "as one that requires a client certificate (mTLS) does without one: set TEMPORAL_TLS_CLIENT_CERT_PATH"},
		{"closed after the handshake, client certificate", map[string]string{"TEMPORAL_TLS_CLIENT_CERT_DATA": "-----BEGIN CERTIFICATE-----", "TEMPORAL_TLS_CLIENT_KEY_DATA": "-----BEGIN PRIVATE KEY-----"}, on, codes.Unavailable,
			`connection error: desc = "error reading server preface: EOF"`, "did not accept the client certificate in TEMPORAL_TLS_CLIENT_CERT_DATA (mTLS)"},
		{"not found", nil, off, codes.NotFound, "x509: certificate signed by unknown authority", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Load("", env(tc.env))
			require.NoError(t, err)
			got := connHint(c.Temporal, tc.tlsOn, true, tc.code, tc.msg)
			if tc.want == "" {
				assert.Empty(t, got)
				return
			}
			assert.Contains(t, got, tc.want)
			for _, secret := range c.Secrets() {
				assert.NotContains(t, got, secret)
			}
		})
	}
}

// TestExplainConnErrors: the hint is appended to the status message; the
// code and details that the SDK acts on are kept.
func TestExplainConnErrors(t *testing.T) {
	c, err := Load("", env(map[string]string{"TEMPORAL_TLS": "true"}))
	require.NoError(t, err)
	ic := explainConnErrors(c.Temporal, true)
	call := func(err error) error {
		return ic(context.Background(), "/temporal.api.workflowservice.v1.WorkflowService/GetSystemInfo", nil, nil, nil,
			func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error { return err })
	}

	got := status.Convert(call(status.Error(codes.Unavailable, "x509: certificate signed by unknown authority")))
	assert.Equal(t, codes.Unavailable, got.Code())
	assert.Equal(t, "x509: certificate signed by unknown authority (TLS: the server's certificate is not signed by a CA this host trusts: "+
		"set TEMPORAL_TLS_SERVER_CA_CERT_PATH (or _DATA) to the CA that signed it)", got.Message())

	plain := status.Error(codes.Unavailable, "connection refused")
	assert.Same(t, plain, call(plain), "an error without a hint is passed on as it is")

	// A connection that closes under a running worker is no sign of a TLS
	// mistake; at the dial it is.
	reset := status.Error(codes.Unavailable, "read tcp 127.0.0.1:1->127.0.0.1:2: read: connection reset by peer")
	poll := func(err error) error {
		return ic(context.Background(), "/temporal.api.workflowservice.v1.WorkflowService/PollActivityTaskQueue", nil, nil, nil,
			func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error { return err })
	}
	assert.Same(t, reset, poll(reset))
	assert.Contains(t, call(reset).Error(), "as one that requires a client certificate (mTLS) does without one")
	assert.NoError(t, call(nil))
}

// TestTemporalClientOptionsExplain: the options both binaries dial with
// carry the interceptor.
func TestTemporalClientOptionsExplain(t *testing.T) {
	opts, err := Defaults().TemporalClientOptions()
	require.NoError(t, err)
	assert.Len(t, opts.ConnectionOptions.DialOptions, 1)
}
