// Package scratch gives a worker process a private directory in os.TempDir()
// to stage files in (dumps to restore or verify, SQLite copies, an RDB to
// load, hook output), and removes what a killed process left there.
//
// The directory is drflow-scratch-<pid>-<random>, mode 0700. It holds a file
// named lock on which the process holds an exclusive flock(2) for as long as
// the directory exists. The kernel drops the lock when the process dies, so a
// directory whose lock can be taken is a dead process's leftover: Sweep
// removes those, and a process sweeps its temporary directory every time it
// creates a scratch directory there (and the worker at startup). The lock is
// opened close-on-exec, as Go opens every file, so child processes
// (pg_restore, redis-server, hooks) neither hold it nor keep the directory
// alive when the worker dies.
//
// The directory is reference counted: Acquire (or CreateTemp, MkdirTemp) when
// staging starts, release when the staged thing is removed. When the last
// reference is released the directory is removed, so a process that is not
// staging anything leaves its temporary directory as it found it.
//
// os.TempDir() is read on every Acquire: each temporary directory has its
// own scratch directory.
package scratch

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
)

const (
	// Prefix starts the name of every scratch directory in a temporary
	// directory; Sweep looks at those names only.
	Prefix = "drflow-scratch-"
	// newPrefix is a scratch directory's name while it is being created,
	// before its lock is held. Sweep never looks at it.
	newPrefix = ".drflow-scratch-new-"
	// lockName is the lock file in a scratch directory.
	lockName = "lock"
)

// dir is one scratch directory of this process.
type dir struct {
	path string
	lock *os.File // holds the flock while the directory exists
	refs int
}

var (
	mu sync.Mutex
	// dirs are this process's scratch directories by temporary directory.
	dirs = map[string]*dir{}
	// own are the paths of this process's scratch directories, also while
	// they are being removed after their last release; Sweep skips them.
	own = map[string]bool{}

	logger atomic.Pointer[slog.Logger]
)

// SetLogger makes the sweeps that Acquire runs log what they remove (Info)
// and what they cannot (Warn) to l. Without a logger they are silent.
func SetLogger(l *slog.Logger) { logger.Store(l) }

// Removed is a dead process's scratch directory that Sweep removed.
type Removed struct {
	Path string
	// Bytes is the size of the regular files it held.
	Bytes int64
}

// Acquire returns this process's scratch directory in os.TempDir(), creating
// it when the process has none there, and counts a reference to it. release
// drops the reference; the last one removes the directory. release is never
// nil (a no-op when err is not nil) and may be called more than once; only
// the first call counts. Files and directories staged in the scratch
// directory must be removed before release, or be left to the removal of the
// whole directory.
//
// A new scratch directory is followed by a Sweep of os.TempDir(), which
// removes the scratch directories of dead processes.
func Acquire() (path string, release func() error, err error) {
	tmp := os.TempDir()
	mu.Lock()
	d := dirs[tmp]
	created := false
	if d == nil {
		if d, err = create(tmp); err != nil {
			mu.Unlock()
			return "", func() error { return nil }, fmt.Errorf("scratch directory in %s (TMPDIR): %w", tmp, err)
		}
		dirs[tmp] = d
		own[d.path] = true
		created = true
	}
	d.refs++
	mu.Unlock()
	if created {
		SweepAndLog(tmp)
	}
	var once sync.Once
	var rerr error
	return d.path, func() error {
		once.Do(func() { rerr = d.release(tmp) })
		return rerr
	}, nil
}

// release drops one reference to d, the scratch directory in tmp, and removes
// d with the last one.
func (d *dir) release(tmp string) error {
	mu.Lock()
	d.refs--
	if d.refs > 0 {
		mu.Unlock()
		return nil
	}
	if dirs[tmp] == d {
		delete(dirs, tmp)
	}
	mu.Unlock()
	// Outside mu: a new Acquire makes a new directory meanwhile. The lock is
	// held until the directory is gone.
	err := removeDir(d.path)
	_ = d.lock.Close()
	mu.Lock()
	delete(own, d.path)
	mu.Unlock()
	if err != nil {
		return fmt.Errorf("remove scratch directory: %w", err)
	}
	return nil
}

// create makes a scratch directory in tmp and locks it. It is made under a
// name Sweep ignores and renamed once its lock is held, so that no sweeper
// ever sees it unlocked.
func create(tmp string) (*dir, error) {
	staging, err := os.MkdirTemp(tmp, newPrefix) // 0700
	if err != nil {
		return nil, err
	}
	fail := func(lock *os.File, err error) (*dir, error) {
		if lock != nil {
			_ = lock.Close()
		}
		_ = os.RemoveAll(staging)
		return nil, err
	}
	lock, err := os.OpenFile(filepath.Join(staging, lockName), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fail(nil, err)
	}
	if err := flock(lock, syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return fail(lock, fmt.Errorf("lock %s: %w", lock.Name(), err))
	}
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return fail(lock, err)
	}
	path := filepath.Join(tmp, Prefix+strconv.Itoa(os.Getpid())+"-"+hex.EncodeToString(b[:]))
	if err := os.Rename(staging, path); err != nil {
		return fail(lock, err)
	}
	return &dir{path: path, lock: lock}, nil
}

// CreateTemp creates a new file in this process's scratch directory in
// os.TempDir(), as os.CreateTemp(dir, pattern) does: mode 0600, opened for
// reading and writing. remove deletes the file (when it still exists) and
// then releases the scratch directory; it does not close f, which stays the
// caller's. remove is never nil (a no-op when err is not nil) and may be
// called more than once; call it on every path once the file is no longer
// needed.
func CreateTemp(pattern string) (f *os.File, remove func() error, err error) {
	dir, release, err := Acquire()
	if err != nil {
		return nil, release, err
	}
	if f, err = os.CreateTemp(dir, pattern); err != nil {
		_ = release()
		return nil, func() error { return nil }, err
	}
	return f, cleanup(f.Name(), os.Remove, release), nil
}

// MkdirTemp creates a new directory in this process's scratch directory in
// os.TempDir(), as os.MkdirTemp(dir, pattern) does: mode 0700. remove
// deletes it with everything in it and then releases the scratch directory;
// it is never nil (a no-op when err is not nil) and may be called more than
// once.
func MkdirTemp(pattern string) (path string, remove func() error, err error) {
	dir, release, err := Acquire()
	if err != nil {
		return "", release, err
	}
	if path, err = os.MkdirTemp(dir, pattern); err != nil {
		_ = release()
		return "", func() error { return nil }, err
	}
	return path, cleanup(path, os.RemoveAll, release), nil
}

// cleanup returns a function that, the first time it is called, removes path
// with rm and then calls release.
func cleanup(path string, rm func(string) error, release func() error) func() error {
	var once sync.Once
	var err error
	return func() error {
		once.Do(func() {
			rerr := rm(path)
			if errors.Is(rerr, fs.ErrNotExist) {
				rerr = nil
			}
			err = errors.Join(rerr, release())
		})
		return err
	}
}

// Sweep removes the scratch directories in tmpdir whose processes are dead:
// every directory named Prefix* owned by this user whose lock it can take
// (or that has no lock file left: a removal that was cut off). It skips the
// directories of live processes, its own included, and everything else in
// tmpdir. It returns what it removed; err joins what it could not read or
// remove, and a directory it could not remove is tried again by the next
// sweep.
func Sweep(tmpdir string) ([]Removed, error) {
	entries, err := os.ReadDir(tmpdir)
	if err != nil {
		return nil, fmt.Errorf("sweep scratch directories: %w", err)
	}
	var removed []Removed
	var errs []error
	for _, e := range entries {
		// Not a symbolic link, not another name.
		if !e.IsDir() || !strings.HasPrefix(e.Name(), Prefix) {
			continue
		}
		path := filepath.Join(tmpdir, e.Name())
		mu.Lock()
		mine := own[path]
		mu.Unlock()
		if mine {
			continue
		}
		r, ok, err := sweepDir(path)
		if err != nil {
			errs = append(errs, fmt.Errorf("sweep scratch directory %s: %w", path, err))
		}
		if ok {
			removed = append(removed, r)
		}
	}
	return removed, errors.Join(errs...)
}

// sweepDir removes the scratch directory path when no live process holds its
// lock. ok says it removed it (err may still report a part it could not).
func sweepDir(path string) (r Removed, ok bool, err error) {
	fi, err := os.Lstat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return Removed{}, false, nil // removed meanwhile
		}
		return Removed{}, false, err
	}
	if st, isSys := fi.Sys().(*syscall.Stat_t); !fi.IsDir() || !isSys || int(st.Uid) != os.Getuid() {
		return Removed{}, false, nil // another user's, or not a directory
	}
	lockPath := filepath.Join(path, lockName)
	lock, err := os.OpenFile(lockPath, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if errors.Is(err, fs.ErrNotExist) {
		// The lock file goes last when a scratch directory is removed (and
		// a directory gets its final name only once it holds the lock): a
		// removal was cut off (or is just finishing: then the directory is
		// empty, and removing it is not worth a report).
		left, _ := os.ReadDir(path)
		r := Removed{Path: path, Bytes: size(path)}
		if err := os.RemoveAll(path); err != nil {
			return Removed{}, false, err
		}
		return r, len(left) > 0, nil
	}
	if err != nil {
		return Removed{}, false, err
	}
	defer lock.Close()
	if err := flock(lock, syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return Removed{}, false, nil // a live process's
		}
		return Removed{}, false, fmt.Errorf("lock: %w", err)
	}
	// Another sweeper may have removed the directory between our open and
	// our lock: then the lock file is gone or is another one.
	held, err1 := lock.Stat()
	now, err2 := os.Lstat(lockPath)
	if err1 != nil || err2 != nil || !os.SameFile(held, now) {
		return Removed{}, false, nil
	}
	r = Removed{Path: path, Bytes: size(path)}
	if err := removeDir(path); err != nil {
		return Removed{}, false, err
	}
	return r, true, nil
}

// removeDir removes the scratch directory path, its lock file last, so that
// a removal cut off halfway leaves a locked directory (or an empty one).
// The caller holds the lock.
func removeDir(path string) error {
	entries, err := os.ReadDir(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	var errs []error
	for _, e := range entries {
		if e.Name() == lockName {
			continue
		}
		if err := os.RemoveAll(filepath.Join(path, e.Name())); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		// The lock file stays: the next sweep tries again.
		return errors.Join(errs...)
	}
	for _, p := range []string{filepath.Join(path, lockName), path} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// size is the size of the regular files under path.
func size(path string) int64 {
	var n int64
	_ = filepath.WalkDir(path, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// SweepAndLog sweeps tmp (see Sweep) and logs what it removed (Info) and
// what it could not (Warn) to the SetLogger logger: what a worker runs at
// startup, and Acquire whenever it creates a scratch directory.
func SweepAndLog(tmp string) {
	removed, err := Sweep(tmp)
	l := logger.Load()
	if l == nil {
		return
	}
	for _, r := range removed {
		l.Info("removed the scratch directory of a dead worker", "path", r.Path, "bytes", r.Bytes)
	}
	if err != nil {
		l.Warn("could not remove every scratch directory of dead workers (TMPDIR)", "tmpdir", tmp, "error", err)
	}
}

// flock applies flock(2) how to f.
func flock(f *os.File, how int) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		for {
			ferr = syscall.Flock(int(fd), how)
			if ferr != syscall.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	return ferr
}
