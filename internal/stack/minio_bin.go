package stack

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// MinIO build used by the tests and the demo, and how to point at another one.
const (
	MinIOModule  = "github.com/minio/minio"
	MinIOVersion = "v0.0.0-20260212201848-7aac2a2c5b7c"
	// MinIOBinEnv names an existing minio binary to use instead of the
	// project-local one.
	MinIOBinEnv = "DRFLOW_MINIO_BIN"
)

var (
	minioBinMu   sync.Mutex
	minioBinPath string // cached after the first successful lookup
)

// MinIOBinary returns the path of a working minio server binary, looking in
// this order: $DRFLOW_MINIO_BIN, <repo root>/bin/minio, PATH. When none is
// found it installs the pinned build with `go install` into <repo root>/bin
// (about 3 minutes the first time; logged through logf, which may be nil).
//
// contract: installs are serialized across processes by a lock file
// (bin/.minio-install.lock), so parallel test packages build once. The binary
// is built into a temporary GOBIN and renamed into place, so no one ever runs
// a half-written file. A found binary must answer `minio --version`. The
// repo root is the nearest directory above the working directory holding
// go.mod; without one, the user cache directory (…/drflow/bin) is used.
func MinIOBinary(ctx context.Context, logf func(string, ...any)) (string, error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	minioBinMu.Lock()
	defer minioBinMu.Unlock()
	if minioBinPath != "" {
		return minioBinPath, nil
	}
	path, err := findOrInstallMinIO(ctx, logf)
	if err != nil {
		return "", err
	}
	minioBinPath = path
	return path, nil
}

func findOrInstallMinIO(ctx context.Context, logf func(string, ...any)) (string, error) {
	if p := os.Getenv(MinIOBinEnv); p != "" {
		if err := checkMinIO(ctx, p); err != nil {
			return "", fmt.Errorf("%s=%s: %w", MinIOBinEnv, p, err)
		}
		return p, nil
	}
	binDir, err := localBinDir()
	if err != nil {
		return "", err
	}
	local := filepath.Join(binDir, "minio")
	if checkMinIO(ctx, local) == nil {
		return local, nil
	}
	if p, err := exec.LookPath("minio"); err == nil && checkMinIO(ctx, p) == nil {
		return p, nil
	}

	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return "", fmt.Errorf("install minio: %w", err)
	}
	unlock, err := lockFile(ctx, filepath.Join(binDir, ".minio-install.lock"), logf)
	if err != nil {
		return "", fmt.Errorf("install minio: %w", err)
	}
	defer unlock()
	// Someone else may have installed it while we waited for the lock.
	if checkMinIO(ctx, local) == nil {
		return local, nil
	}
	if err := installMinIO(ctx, binDir, logf); err != nil {
		return "", err
	}
	if err := checkMinIO(ctx, local); err != nil {
		return "", fmt.Errorf("installed minio does not run: %w", err)
	}
	return local, nil
}

// checkMinIO tells whether path is a minio binary that runs.
func checkMinIO(ctx context.Context, path string) error {
	if !isExecutable(path) {
		return fmt.Errorf("%s: not an executable file", path)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "--version").CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s --version: %w: %s", path, err, strings.TrimSpace(string(out)))
	}
	if !strings.Contains(string(out), "minio version") {
		return fmt.Errorf("%s --version: not minio: %s", path, strings.TrimSpace(string(out)))
	}
	return nil
}

func installMinIO(ctx context.Context, binDir string, logf func(string, ...any)) error {
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
		if !isExecutable(goBin) {
			return &MissingBinaryError{
				Program: "minio",
				Install: fmt.Sprintf("Go (to build it) or put a minio binary at %s or in $%s", filepath.Join(binDir, "minio"), MinIOBinEnv),
				Err:     err,
			}
		}
	}
	tmp, err := os.MkdirTemp(binDir, ".minio-install-")
	if err != nil {
		return fmt.Errorf("install minio: %w", err)
	}
	defer os.RemoveAll(tmp)

	pkg := MinIOModule + "@" + MinIOVersion
	logf("stack: installing minio (go install %s) into %s; the first build takes about 3 minutes", pkg, binDir)
	began := time.Now()
	cmd := exec.CommandContext(ctx, goBin, "install", pkg)
	cmd.Env = environ([]string{"GOBIN", "GOOS", "GOARCH", "CGO_ENABLED"}, "GOBIN="+tmp)
	cmd.Dir = tmp // outside any module: build minio's own go.mod, not ours
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("install minio: go install %s: %w\n%s", pkg, err, tail(string(out), tailBytes))
	}
	if err := os.Rename(filepath.Join(tmp, "minio"), filepath.Join(binDir, "minio")); err != nil {
		return fmt.Errorf("install minio: %w", err)
	}
	logf("stack: installed minio in %s", time.Since(began).Round(time.Second))
	return nil
}

// lockFile takes an exclusive flock on path, polling so that ctx can cancel
// the wait. The returned func releases it.
func lockFile(ctx context.Context, path string, logf func(string, ...any)) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	logged := false
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() {
				_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
				f.Close()
			}, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if !logged {
			logf("stack: waiting for another process installing minio (lock %s)", path)
			logged = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// localBinDir returns <repo root>/bin, or <user cache>/drflow/bin outside a module.
func localBinDir() (string, error) {
	if root, err := repoRoot(); err == nil {
		return filepath.Join(root, "bin"), nil
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("minio bin dir: no go.mod above the working directory and %w", err)
	}
	return filepath.Join(cache, "drflow", "bin"), nil
}

// repoRoot returns the nearest directory at or above the working directory
// that holds go.mod.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}
