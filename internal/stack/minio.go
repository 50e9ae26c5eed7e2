package stack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// MinIORegion is the region every private MinIO reports.
const MinIORegion = "us-east-1"

// MinIO is a private single-drive MinIO server.
//
// contract: credentials are random per instance and survive Stop, Kill and
// Wipe; the console is off and MINIO_UPDATE=off, so the server makes no
// network calls of its own. A PUT is acknowledged after the object is renamed
// into place, so Kill loses no acknowledged object. Layout under <dir>/<name>:
//
//	data/         the drive (Wipe deletes it: no buckets, no objects)
//	certs/        --certs-dir (empty: plain HTTP; keeps minio out of ~/.minio)
//	<name>.log    server output, kept by Wipe
type MinIO struct {
	name        string
	root        string
	dataDir     string
	certsDir    string
	logPath     string
	port        int
	consolePort int
	accessKey   string
	secretKey   string
	bin         string

	mu   sync.Mutex
	proc *proc
}

// StartMinIO starts a MinIO server named name (a directory name such as
// "minio" or "backup") in <dir>/<name> on a free port, installing the minio
// binary first if needed (see MinIOBinary). On error nothing is left running.
func StartMinIO(ctx context.Context, dir, name string) (*MinIO, error) {
	dir, err := absDir(dir)
	if err != nil {
		return nil, fmt.Errorf("minio dir: %w", err)
	}
	if name == "" || name != filepath.Base(name) || name == "." || name == ".." {
		return nil, fmt.Errorf("minio name %q: want a plain directory name", name)
	}
	bin, err := MinIOBinary(ctx, nil)
	if err != nil {
		return nil, err
	}
	m := &MinIO{
		name:      name,
		root:      filepath.Join(dir, name),
		bin:       bin,
		accessKey: "drflow" + randomString(14),
		secretKey: randomString(40),
	}
	m.dataDir = filepath.Join(m.root, "data")
	m.certsDir = filepath.Join(m.root, "certs")
	m.logPath = filepath.Join(m.root, name+".log")
	for _, d := range []string{m.dataDir, m.certsDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("minio dir: %w", err)
		}
	}
	for attempt := 1; ; attempt++ {
		if m.port, err = pickPort(); err != nil {
			break
		}
		if m.consolePort, err = pickPort(); err != nil {
			break
		}
		err = m.Start(ctx)
		if err == nil || !addrInUse(err) || attempt == startRetries {
			break
		}
	}
	if err != nil {
		return nil, errors.Join(err, m.Close())
	}
	return m, nil
}

// Name returns the name given to StartMinIO.
func (m *MinIO) Name() string { return m.name }

// Endpoint returns host:port of the S3 API.
func (m *MinIO) Endpoint() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(m.port)) }

// URL returns http://host:port of the S3 API.
func (m *MinIO) URL() string { return "http://" + m.Endpoint() }

// Port returns the S3 API port; it stays the same across restarts and wipes.
func (m *MinIO) Port() int { return m.port }

// AccessKey returns the root user.
func (m *MinIO) AccessKey() string { return m.accessKey }

// SecretKey returns the root password.
func (m *MinIO) SecretKey() string { return m.secretKey }

// Region returns the region to sign requests for.
func (m *MinIO) Region() string { return MinIORegion }

// DataDir returns the drive directory.
func (m *MinIO) DataDir() string { return m.dataDir }

// LogPath returns the server log.
func (m *MinIO) LogPath() string { return m.logPath }

// Running tells whether the server process is alive.
func (m *MinIO) Running() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.proc != nil && !m.proc.exited()
}

func (m *MinIO) pid() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.proc == nil || m.proc.exited() {
		return 0
	}
	return m.proc.pid()
}

// Client returns a minio-go client for the root user. Each call returns a
// new client; it holds no resources that need closing.
func (m *MinIO) Client() (*minio.Client, error) {
	return minio.New(m.Endpoint(), &minio.Options{
		Creds:  credentials.NewStaticV4(m.accessKey, m.secretKey, ""),
		Secure: false,
		Region: MinIORegion,
	})
}

// MakeBucket creates bucket name; it returns nil when the bucket exists already.
func (m *MinIO) MakeBucket(ctx context.Context, name string) error {
	c, err := m.Client()
	if err != nil {
		return fmt.Errorf("make bucket %s: %w", name, err)
	}
	err = c.MakeBucket(ctx, name, minio.MakeBucketOptions{Region: MinIORegion})
	if err != nil {
		code := minio.ToErrorResponse(err).Code
		if code == "BucketAlreadyOwnedByYou" || code == "BucketAlreadyExists" {
			return nil
		}
		return fmt.Errorf("make bucket %s: %w", name, err)
	}
	return nil
}

// Start starts the server and returns once /minio/health/ready answers 200.
func (m *MinIO) Start(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.proc != nil && !m.proc.exited() {
		return nil
	}
	offset := fileSize(m.logPath)
	pr, err := startProc(procSpec{
		path: m.bin,
		args: []string{
			"server", m.dataDir,
			"--address", m.Endpoint(),
			"--console-address", net.JoinHostPort("127.0.0.1", strconv.Itoa(m.consolePort)),
			"--certs-dir", m.certsDir,
		},
		// Inherited MINIO_* settings (a developer's own MINIO_VOLUMES, KMS …)
		// must not leak into a private server.
		env: environ([]string{"MINIO_"},
			"MINIO_ROOT_USER="+m.accessKey,
			"MINIO_ROOT_PASSWORD="+m.secretKey,
			"MINIO_BROWSER=off",
			"MINIO_UPDATE=off",
			"MINIO_CALLHOME_ENABLE=off",
			"MINIO_REGION="+MinIORegion,
		),
		dir:     m.root,
		logPath: m.logPath,
	})
	if err != nil {
		return fmt.Errorf("start minio: %w", err)
	}
	m.proc = pr
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	ready := m.URL() + "/minio/health/ready"
	err = waitReady(ctx, pr, m.port, m.logPath, offset, func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, ready, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", ready, resp.Status)
		}
		return nil
	})
	if err != nil {
		return errors.Join(fmt.Errorf("minio %s on %s: %w", m.name, m.Endpoint(), err), pr.kill())
	}
	return nil
}

// Stop shuts the server down (SIGTERM).
func (m *MinIO) Stop(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.proc == nil {
		return nil
	}
	return m.proc.stop(ctx, syscall.SIGTERM)
}

// Kill sends SIGKILL to the server.
func (m *MinIO) Kill() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.proc == nil {
		return nil
	}
	return m.proc.kill()
}

// Wipe stops the server and deletes its drive; the next Start gives an empty
// server with the same endpoint and credentials.
func (m *MinIO) Wipe() error {
	if err := m.Stop(context.Background()); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := resetDir(m.dataDir, 0o700); err != nil {
		return fmt.Errorf("wipe minio %s: %w", m.name, err)
	}
	return nil
}

// Close stops the server.
func (m *MinIO) Close() error { return m.Stop(context.Background()) }
