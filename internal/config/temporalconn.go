package config

import (
	"context"
	"fmt"
	"net"
	"strings"

	"go.temporal.io/api/workflowservice/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// explainConnErrors is a gRPC client interceptor that appends to a failed
// call's status message which TEMPORAL_* setting most likely fixes it. gRPC
// reports a TLS mistake (untrusted server certificate, missing client
// certificate, TLS on one side only) as a bare transport failure that names
// no setting; both binaries dial through TemporalClientOptions, so the hint
// reaches the worker's and the starter's errors and the SDK's log lines
// alike. The status code and details are kept: only the message grows.
func explainConnErrors(t Temporal, tlsOn bool) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		if err == nil {
			return nil
		}
		st, ok := status.FromError(err)
		if !ok {
			return err
		}
		hint := connHint(t, tlsOn, method == workflowservice.WorkflowService_GetSystemInfo_FullMethodName, st.Code(), st.Message())
		if hint == "" {
			return err
		}
		p := st.Proto()
		p.Message += " (" + hint + ")"
		return status.ErrorProto(p)
	}
}

// connHint explains a failed call by its status code and message, or
// returns "". It names settings and file paths, never a secret value.
// dialing is true for the first call of a new client (the SDK's
// GetSystemInfo): only there does a connection closed at once point to a
// TLS mismatch rather than, say, a server restarting under a running worker.
func connHint(t Temporal, tlsOn, dialing bool, code codes.Code, msg string) string {
	const setClientCert = "set TEMPORAL_TLS_CLIENT_CERT_PATH and TEMPORAL_TLS_CLIENT_KEY_PATH (or _CERT_DATA and _KEY_DATA)"
	const clientCertRules = "it must be signed by a CA the server trusts for clients, allow client authentication and be current"
	m := strings.ToLower(msg)
	// A server that refuses the client's certificate ends the connection
	// right after the handshake; under TLS 1.3 the client may see its alert
	// ("remote error: tls: …") or, as often, only the closed connection.
	closed := dialing && (strings.Contains(m, "broken pipe") || strings.Contains(m, "connection reset") ||
		strings.Contains(m, "server preface") && (strings.Contains(m, "eof") || strings.Contains(m, "closed")))
	switch {
	case code == codes.Unauthenticated:
		if t.APIKey != "" {
			return "the server did not accept the API key: check TEMPORAL_API_KEY and that it is valid for namespace " + t.Namespace
		}
		return "the server wants credentials: set TEMPORAL_API_KEY, or a client certificate: " + setClientCert
	case code != codes.Unavailable:
		return ""

	// Our check of the server's certificate (crypto/x509's messages).
	case strings.Contains(m, "x509: certificate is valid for"), strings.Contains(m, "x509: certificate is not valid for any names"),
		strings.Contains(m, "x509: cannot validate certificate for"):
		return fmt.Sprintf("TLS: the server's certificate is not valid for the name %s: set TEMPORAL_TLS_SERVER_NAME to a name it is valid for, or connect by one (TEMPORAL_ADDRESS)", serverName(t))
	case strings.Contains(m, "x509: certificate has expired"):
		return "TLS: the server's certificate has expired or is not valid yet: renew it on the server, or check this host's clock"
	case strings.Contains(m, "x509: certificate signed by unknown authority"):
		if src := pemSource("TEMPORAL_TLS_SERVER_CA_CERT_PATH", t.TLS.ServerCACertPath, "TEMPORAL_TLS_SERVER_CA_CERT_DATA", t.TLS.ServerCACertData); src != "" {
			return "TLS: the server's certificate is not signed by the CA in " + src + ": set it to the CA that signed the server's certificate"
		}
		return "TLS: the server's certificate is not signed by a CA this host trusts: set TEMPORAL_TLS_SERVER_CA_CERT_PATH (or _DATA) to the CA that signed it"
	case strings.Contains(m, "x509:"):
		return "TLS: the server's certificate failed verification: fix the certificate on the server"

	// The server's check of our certificate. A Go client does not even send
	// a certificate that is not signed by a CA the server asks for, so a
	// wrong one shows up as "certificate required" too.
	case strings.Contains(m, "remote error: tls:"), tlsOn && closed:
		if src := pemSource("TEMPORAL_TLS_CLIENT_CERT_PATH", t.TLS.ClientCertPath, "TEMPORAL_TLS_CLIENT_CERT_DATA", t.TLS.ClientCertData); src != "" {
			return "TLS: the server did not accept the client certificate in " + src + " (mTLS): " + clientCertRules
		}
		if strings.Contains(m, "remote error: tls:") {
			return "TLS: the server requires a client certificate (mTLS): " + setClientCert
		}
		return "TLS: the server closed the connection, as one that requires a client certificate (mTLS) does without one: " + setClientCert

	// TLS on one side only.
	case tlsOn && strings.Contains(m, "first record does not look like a tls handshake"):
		return "TLS: the server does not speak TLS, but " + tlsReason(t) + " turns TLS on: set TEMPORAL_TLS=false for a plaintext server, or check TEMPORAL_ADDRESS"
	case !tlsOn && closed:
		off := "no TEMPORAL_TLS_* setting or TEMPORAL_API_KEY turns it on"
		if t.TLS.Enabled != nil {
			off = "TEMPORAL_TLS=false"
		}
		return "the server closed the connection, as one that requires TLS does when TLS is off (" + off +
			"): set TEMPORAL_TLS=true, with TEMPORAL_TLS_SERVER_CA_CERT_PATH for a private CA"
	}
	return ""
}

// tlsReason names the setting that turned TLS on.
func tlsReason(t Temporal) string {
	switch {
	case t.TLS.Enabled != nil && *t.TLS.Enabled:
		return "TEMPORAL_TLS=true"
	case t.TLS.isSet():
		return "a TEMPORAL_TLS_* setting"
	case t.APIKey != "":
		return "TEMPORAL_API_KEY"
	}
	return "the configuration"
}

// pemSource names the setting a PEM came from: the path variable with its
// value, or the data variable; "" when neither is set.
func pemSource(pathVar, path, dataVar, data string) string {
	switch {
	case path != "":
		return pathVar + "=" + path
	case data != "":
		return dataVar
	}
	return ""
}

func serverName(t Temporal) string {
	if t.TLS.ServerName != "" {
		return "TEMPORAL_TLS_SERVER_NAME=" + t.TLS.ServerName
	}
	if host, _, err := net.SplitHostPort(t.Address); err == nil {
		return host
	}
	return t.Address
}
