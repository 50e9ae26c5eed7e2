// Package stacktest starts the private servers of package stack for a test
// and stops them when the test ends.
//
// contract: a missing server program fails the test (t.Fatalf naming what to
// install); it never skips, because a skipped integration test hides a
// broken setup. Servers and their directories are removed by t.Cleanup,
// also when the test fails; on failure the tail of each server log is
// logged first.
package stacktest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kohakku/drflow/internal/stack"
)

// startTimeout bounds a start, including a first-time minio install or
// drflow-devserver build.
const startTimeout = 10 * time.Minute

// Start starts the stack without Temporal (PostgreSQL, Redis, MinIO, Backup)
// in a fresh temporary directory and registers its Close with t.Cleanup.
func Start(t testing.TB) *stack.Stack {
	t.Helper()
	return startStack(t, stack.Options{Logf: t.Logf})
}

// StartAll starts all five servers: those of Start plus Temporal.
func StartAll(t testing.TB) *stack.Stack {
	t.Helper()
	return startStack(t, stack.Options{Logf: t.Logf, Temporal: true})
}

func startStack(t testing.TB, opts stack.Options) *stack.Stack {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	s, err := stack.Start(ctx, opts)
	if err != nil {
		t.Fatalf("stacktest: start stack: %v%s", err, installHint(err))
	}
	t.Cleanup(func() {
		if t.Failed() {
			logTails(t, s.Servers()...)
		}
		if err := s.Close(); err != nil {
			t.Errorf("stacktest: close stack: %v", err)
		}
	})
	return s
}

// Postgres starts only a PostgreSQL cluster.
func Postgres(t testing.TB) *stack.Postgres {
	t.Helper()
	return startOne(t, func(ctx context.Context, dir string) (*stack.Postgres, error) {
		return stack.StartPostgres(ctx, dir)
	})
}

// Redis starts only a redis-server.
func Redis(t testing.TB) *stack.Redis {
	t.Helper()
	return startOne(t, func(ctx context.Context, dir string) (*stack.Redis, error) {
		return stack.StartRedis(ctx, dir)
	})
}

// MinIO starts only one MinIO server, named "minio".
func MinIO(t testing.TB) *stack.MinIO {
	t.Helper()
	return startOne(t, func(ctx context.Context, dir string) (*stack.MinIO, error) {
		return stack.StartMinIO(ctx, dir, "minio")
	})
}

// Temporal starts only a Temporal server (the embedded dev server of
// worker --dev, namespace "default" with drflow's search attributes),
// building drflow-devserver first if needed.
func Temporal(t testing.TB) *stack.Temporal {
	t.Helper()
	return startOne(t, func(ctx context.Context, dir string) (*stack.Temporal, error) {
		if _, err := stack.DevServerBinary(ctx, t.Logf); err != nil {
			return nil, err
		}
		return stack.StartTemporal(ctx, dir)
	})
}

func startOne[S stack.Server](t testing.TB, start func(context.Context, string) (S, error)) S {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	// os.MkdirTemp rather than t.TempDir: removal is ours, after the server
	// has stopped, and the path stays short enough for a unix socket.
	dir, err := os.MkdirTemp("", "drflow-stacktest-")
	if err != nil {
		t.Fatalf("stacktest: %v", err)
	}
	srv, err := start(ctx, dir)
	if err != nil {
		os.RemoveAll(dir)
		t.Fatalf("stacktest: %v%s", err, installHint(err))
	}
	t.Cleanup(func() {
		if t.Failed() {
			logTails(t, srv)
		}
		if err := srv.Close(); err != nil {
			t.Errorf("stacktest: close %s: %v", srv.Name(), err)
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("stacktest: %v", err)
		}
	})
	return srv
}

func installHint(err error) string {
	var missing *stack.MissingBinaryError
	if errors.As(err, &missing) {
		return fmt.Sprintf("\nstacktest: these tests need real servers: install %s", missing.Install)
	}
	return ""
}

func logTails(t testing.TB, servers ...stack.Server) {
	t.Helper()
	for _, srv := range servers {
		logTail(t, srv.Name(), srv.LogPath())
		// Temporal's own log, besides its process output.
		if tp, ok := srv.(interface{ ServerLogPath() string }); ok {
			logTail(t, srv.Name()+" server", tp.ServerLogPath())
		}
	}
}

func logTail(t testing.TB, name, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	s := strings.TrimSpace(string(b))
	if len(s) > 4000 {
		s = "…" + s[len(s)-4000:]
	}
	t.Logf("stacktest: tail of %s log (%s):\n%s", name, path, s)
}
