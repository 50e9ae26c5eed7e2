// Package stack starts private PostgreSQL, Redis, MinIO and (on request)
// Temporal servers on free 127.0.0.1 ports in a temporary directory, for
// tests and the demo.
//
// Every server can be stopped gracefully, killed with SIGKILL, restarted on the
// same port with the same data, and wiped, one at a time, so a test can
// simulate the loss it is about. Nothing is mocked: these are the real server
// binaries of the machine (PostgreSQL, redis-server), the pinned minio
// build (see MinIOBinary) and drflow's own embedded Temporal server built
// from this repo (see DevServerBinary).
//
// contract: the package owns every process it starts. Each runs in its own
// process group with Pdeathsig=SIGKILL, so Close (or the death of the test
// binary) leaves no server running; Close also removes the directory that
// Start created. Servers listen on 127.0.0.1 only.
package stack

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Server is what every private server can do.
//
// contract:
//   - Start starts a stopped, killed or wiped server on the same port; data
//     left by Stop or Kill is served again, a wiped server starts empty. Start
//     on a running server does nothing.
//   - Stop shuts down gracefully (falling back to SIGKILL when ctx ends or the
//     server hangs); Kill sends SIGKILL to the server's process group, as a
//     crash would. Both do nothing on a server that is not running.
//   - Wipe stops the server if it runs and deletes its data; it keeps the
//     port, the credentials and the log file.
//   - Close stops the server and releases what it holds outside its
//     directory; the directory itself belongs to the caller.
//   - LogPath is the server's output (all starts appended), for failure messages.
type Server interface {
	Name() string
	Start(ctx context.Context) error
	Stop(ctx context.Context) error
	Kill() error
	Wipe() error
	Running() bool
	LogPath() string
	Close() error
}

var (
	_ Server = (*Postgres)(nil)
	_ Server = (*Redis)(nil)
	_ Server = (*MinIO)(nil)
	_ Server = (*Temporal)(nil)
)

// Options configures Start.
type Options struct {
	// Dir is the parent directory of the servers' directories. "" means a new
	// directory from os.MkdirTemp, which Close removes; a given Dir is left
	// in place (its server subdirectories included).
	Dir string
	// Logf, when set, receives progress lines (starting, ready, installing
	// minio, building drflow-devserver).
	Logf func(format string, args ...any)
	// PostgresFsync turns PostgreSQL's fsync on. Off (the default) is faster
	// and still loses nothing on Kill, because a killed process leaves its
	// writes in the page cache; only a host crash would lose them.
	PostgresFsync bool
	// Temporal also starts a Temporal server (Stack.Temporal). Off by
	// default: most tests need no Temporal, and the first build of the
	// drflow-devserver binary takes minutes.
	Temporal bool
}

// Stack is a set of private servers; each field is one of them.
//
// contract: the fields are set by Start and never changed; the servers are
// safe for concurrent use. Close stops all of them.
type Stack struct {
	Dir      string
	Postgres *Postgres
	Redis    *Redis
	MinIO    *MinIO // the app's object store
	Backup   *MinIO // S3-compatible backup store
	// Temporal is the embedded dev server of worker --dev; nil unless
	// Options.Temporal.
	Temporal *Temporal

	removeDir bool
	logf      func(string, ...any)
	closeOnce sync.Once
	closeErr  error
}

// Start starts PostgreSQL, Redis, the two MinIO servers and, with
// opts.Temporal, Temporal in parallel under opts.Dir. On error it stops
// whatever started and removes the directory it created. ctx bounds the
// start only (including a first-time minio install, about 3 minutes, or
// drflow-devserver build); the servers run until Close.
func Start(ctx context.Context, opts Options) (_ *Stack, err error) {
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	s := &Stack{Dir: opts.Dir, logf: logf}
	if s.Dir == "" {
		s.Dir, err = os.MkdirTemp("", "drflow-stack-")
		if err != nil {
			return nil, fmt.Errorf("stack dir: %w", err)
		}
		s.removeDir = true
	} else if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("stack dir: %w", err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.Close())
		}
	}()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	began := time.Now()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	run := func(name string, start func() error) {
		wg.Go(func() {
			t0 := time.Now()
			logf("stack: starting %s", name)
			if err := start(); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("start %s: %w", name, err))
				mu.Unlock()
				cancel() // the stack is unusable; do not wait for the rest
				return
			}
			logf("stack: %s ready in %s", name, time.Since(t0).Round(time.Millisecond))
		})
	}
	// Each goroutine writes only its own field; wg.Wait orders the writes
	// before Close or the caller reads them.
	run("postgres", func() (err error) {
		s.Postgres, err = StartPostgres(ctx, s.Dir, WithFsync(opts.PostgresFsync))
		return err
	})
	run("redis", func() (err error) {
		s.Redis, err = StartRedis(ctx, s.Dir)
		return err
	})
	run("minio", func() error {
		// One binary lookup (or install) for both instances.
		if _, err := MinIOBinary(ctx, logf); err != nil {
			return err
		}
		var wg2 sync.WaitGroup
		var errMinIO, errBackup error
		wg2.Go(func() { s.MinIO, errMinIO = StartMinIO(ctx, s.Dir, "minio") })
		wg2.Go(func() { s.Backup, errBackup = StartMinIO(ctx, s.Dir, "backup") })
		wg2.Wait()
		return errors.Join(errMinIO, errBackup)
	})
	if opts.Temporal {
		run("temporal", func() (err error) {
			// Looked up here for the progress lines of a (re)build.
			if _, err := DevServerBinary(ctx, logf); err != nil {
				return err
			}
			s.Temporal, err = StartTemporal(ctx, s.Dir)
			return err
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	logf("stack: all servers ready in %s (dir %s)", time.Since(began).Round(time.Millisecond), s.Dir)
	return s, nil
}

// Servers returns the started servers in a fixed order.
func (s *Stack) Servers() []Server {
	var out []Server
	if s.Postgres != nil {
		out = append(out, s.Postgres)
	}
	if s.Redis != nil {
		out = append(out, s.Redis)
	}
	if s.MinIO != nil {
		out = append(out, s.MinIO)
	}
	if s.Backup != nil {
		out = append(out, s.Backup)
	}
	if s.Temporal != nil {
		out = append(out, s.Temporal)
	}
	return out
}

// Close stops every server (in parallel) and removes Dir when Start created
// it. It is safe to call more than once; later calls return the first result.
func (s *Stack) Close() error {
	s.closeOnce.Do(func() {
		var (
			wg   sync.WaitGroup
			mu   sync.Mutex
			errs []error
		)
		for _, srv := range s.Servers() {
			wg.Go(func() {
				if err := srv.Close(); err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("close %s: %w", srv.Name(), err))
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if s.removeDir {
			if err := os.RemoveAll(s.Dir); err != nil {
				errs = append(errs, fmt.Errorf("remove %s: %w", s.Dir, err))
			}
		}
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}

// MissingBinaryError says which server program is not installed and how to
// install it.
type MissingBinaryError struct {
	Program string // e.g. "initdb", "redis-server"
	Install string // what to install, e.g. "PostgreSQL 15 server (apt-get install postgresql-15)"
	Err     error
}

func (e *MissingBinaryError) Error() string {
	return fmt.Sprintf("%s not found (%v): install %s", e.Program, e.Err, e.Install)
}

func (e *MissingBinaryError) Unwrap() error { return e.Err }

// randomString returns n characters from [a-zA-Z0-9].
func randomString(n int) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails on Linux
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

// environ returns the current environment without variables whose name
// starts with one of the prefixes, plus extra.
func environ(dropPrefixes []string, extra ...string) []string {
	var out []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		keep := true
		for _, p := range dropPrefixes {
			if strings.HasPrefix(name, p) {
				keep = false
				break
			}
		}
		if keep {
			out = append(out, kv)
		}
	}
	return append(out, extra...)
}

// resetDir removes dir and creates it again, empty.
func resetDir(dir string, perm os.FileMode) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	return os.MkdirAll(dir, perm)
}

// absDir makes dir absolute and creates it.
func absDir(dir string) (string, error) {
	if dir == "" {
		return "", errors.New("empty directory")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	return abs, os.MkdirAll(abs, 0o755)
}
