package stacktest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kohakku/drflow/internal/stack"
)

// Certs is a throwaway PKI for TLS tests, written as PEM files (keys 0600)
// into one directory. Certificates are valid from an hour ago for a day.
type Certs struct {
	// CAFile is the CA that signed the server and client certificates.
	CAFile string
	// ServerCertFile and ServerKeyFile are for 127.0.0.1, ::1 and localhost,
	// usable for server and client authentication (what stack.TemporalTLS
	// asks of the server's certificate under mTLS).
	ServerCertFile, ServerKeyFile string
	// ClientCertFile and ClientKeyFile are a client certificate (CN
	// drflow-test-client) signed by CAFile.
	ClientCertFile, ClientKeyFile string
	// OtherCAFile is a CA unrelated to CAFile: trusting it instead of
	// CAFile is the "wrong CA" case. OtherClientCertFile and
	// OtherClientKeyFile are a client certificate it signed.
	OtherCAFile                             string
	OtherClientCertFile, OtherClientKeyFile string
}

// NewCerts writes a fresh Certs into dir (t.TempDir() when dir is "").
func NewCerts(t testing.TB, dir string) *Certs {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	path := func(name string) string { return filepath.Join(dir, name) }
	c := &Certs{
		CAFile:              path("ca.pem"),
		ServerCertFile:      path("server.pem"),
		ServerKeyFile:       path("server-key.pem"),
		ClientCertFile:      path("client.pem"),
		ClientKeyFile:       path("client-key.pem"),
		OtherCAFile:         path("other-ca.pem"),
		OtherClientCertFile: path("other-client.pem"),
		OtherClientKeyFile:  path("other-client-key.pem"),
	}
	ca, caKey := newCA(t, "drflow test CA", c.CAFile)
	issue(t, ca, caKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "localhost"},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}, c.ServerCertFile, c.ServerKeyFile)
	issue(t, ca, caKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "drflow-test-client"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, c.ClientCertFile, c.ClientKeyFile)
	other, otherKey := newCA(t, "unrelated test CA", c.OtherCAFile)
	issue(t, other, otherKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "drflow-test-client"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, c.OtherClientCertFile, c.OtherClientKeyFile)
	return c
}

// TemporalTLS starts a Temporal server (see Temporal) whose frontend serves
// TLS with a certificate of a fresh Certs; with mtls it also requires client
// certificates signed by Certs.CAFile.
func TemporalTLS(t testing.TB, mtls bool) (*stack.Temporal, *Certs) {
	t.Helper()
	certs := NewCerts(t, "")
	opts := stack.TemporalTLS{CertFile: certs.ServerCertFile, KeyFile: certs.ServerKeyFile, CAFile: certs.CAFile}
	if mtls {
		opts.ClientCAFile = certs.CAFile
	}
	tp := startOne(t, func(ctx context.Context, dir string) (*stack.Temporal, error) {
		if _, err := stack.DevServerBinary(ctx, t.Logf); err != nil {
			return nil, err
		}
		return stack.StartTemporalWith(ctx, dir, stack.TemporalOptions{TLS: &opts})
	})
	return tp, certs
}

func newCA(t testing.TB, name, certFile string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("stacktest: create CA: %v", err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("stacktest: parse CA: %v", err)
	}
	writePEM(t, certFile, "CERTIFICATE", der, 0o644)
	return ca, key
}

// issue completes tmpl (serial, validity, key usage), signs it with ca and
// writes the certificate and its new key.
func issue(t testing.TB, ca *x509.Certificate, caKey *ecdsa.PrivateKey, tmpl *x509.Certificate, certFile, keyFile string) {
	t.Helper()
	key := newKey(t)
	tmpl.SerialNumber = serial(t)
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatalf("stacktest: issue %s: %v", tmpl.Subject.CommonName, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("stacktest: marshal key: %v", err)
	}
	writePEM(t, certFile, "CERTIFICATE", der, 0o644)
	writePEM(t, keyFile, "PRIVATE KEY", keyDER, 0o600)
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("stacktest: generate key: %v", err)
	}
	return key
}

func serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatalf("stacktest: serial: %v", err)
	}
	return n
}

func writePEM(t testing.TB, path, typ string, der []byte, perm os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), perm); err != nil {
		t.Fatalf("stacktest: %v", err)
	}
}
