package scratch

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// helperEnv makes the test binary run helperProcess (from TestMain) as a
// worker that stages a file and waits to be killed.
const helperEnv = "DRFLOW_SCRATCH_HELPER"

// helperBytes is the size of the file the helper stages.
const helperBytes = 12345

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		helperProcess()
	}
	os.Exit(m.Run())
}

// helperProcess runs in a child process started by startHelper: it stages a
// file of helperBytes in its scratch directory, starts a grandchild (sleep,
// as a worker starts pg_restore), prints "ready <scratch dir> <staged file>
// <grandchild pid>" and sleeps until it is killed.
func helperProcess() {
	f, _, err := CreateTemp("drflow-verify-*.dump")
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	if _, err := f.Write(make([]byte, helperBytes)); err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	sleep := exec.Command("sleep", "60")
	if err := sleep.Start(); err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	fmt.Println("ready", filepath.Dir(f.Name()), f.Name(), sleep.Process.Pid)
	time.Sleep(time.Hour)
	os.Exit(0)
}

// helper is a child process holding a scratch directory.
type helper struct {
	cmd        *exec.Cmd
	dir, file  string
	grandchild int
}

// startHelper starts helperProcess with TMPDIR=tmp and waits until it has
// staged its file. The test's cleanup kills it and its grandchild.
func startHelper(t *testing.T, tmp string) *helper {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=1", "TMPDIR="+tmp)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &helper{cmd: cmd}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if h.grandchild > 0 {
			_ = syscall.Kill(h.grandchild, syscall.SIGKILL)
		}
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("helper: %q: %v", line, err)
	}
	fields := strings.Fields(line)
	if len(fields) != 4 || fields[0] != "ready" {
		t.Fatalf("helper: %q", line)
	}
	h.dir, h.file = fields[1], fields[2]
	if h.grandchild, err = strconv.Atoi(fields[3]); err != nil {
		t.Fatalf("helper: %q", line)
	}
	return h
}

// kill SIGKILLs the helper (not its grandchild) and reaps it.
func (h *helper) kill(t *testing.T) {
	t.Helper()
	if err := h.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = h.cmd.Wait()
}

// tempDir points TMPDIR at a fresh directory for the rest of the test.
func tempDir(t *testing.T) string {
	t.Helper()
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	if os.TempDir() != tmp {
		t.Fatalf("os.TempDir() = %s, want %s", os.TempDir(), tmp)
	}
	return tmp
}

func names(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n []string
	for _, e := range entries {
		n = append(n, e.Name())
	}
	return n
}

func requireEmpty(t *testing.T, dir string) {
	t.Helper()
	if n := names(t, dir); len(n) > 0 {
		t.Fatalf("left in %s: %q", dir, n)
	}
}

func requireExists(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func requireGone(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("%s still there (%v)", path, err)
	}
}

func requireMode(t *testing.T, path string, want fs.FileMode) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Fatalf("%s: mode %v, want %v", path, got, want)
	}
}

func mustRun(t *testing.T, f func() error) {
	t.Helper()
	if err := f(); err != nil {
		t.Fatal(err)
	}
}

// TestScratchRefcount: the staged files share one private directory in
// TMPDIR that the last removal takes away, leaving TMPDIR empty.
func TestScratchRefcount(t *testing.T) {
	tmp := tempDir(t)
	f1, rm1, err := CreateTemp("drflow-restore-*.dump")
	if err != nil {
		t.Fatal(err)
	}
	defer f1.Close()
	dir := filepath.Dir(f1.Name())
	if filepath.Dir(dir) != tmp || !strings.HasPrefix(filepath.Base(dir), Prefix+strconv.Itoa(os.Getpid())+"-") {
		t.Fatalf("staged in %s, want %s/%s<pid>-*", dir, tmp, Prefix)
	}
	if !strings.HasPrefix(filepath.Base(f1.Name()), "drflow-restore-") || !strings.HasSuffix(f1.Name(), ".dump") {
		t.Fatalf("file %s does not follow the pattern", f1.Name())
	}
	requireMode(t, dir, 0o700)
	requireMode(t, f1.Name(), 0o600)
	requireMode(t, filepath.Join(dir, lockName), 0o600)

	f2, rm2, err := CreateTemp("drflow-hook-*.out")
	if err != nil {
		t.Fatal(err)
	}
	defer f2.Close()
	d3, rm3, err := MkdirTemp("drflow-verify-rdb-")
	if err != nil {
		t.Fatal(err)
	}
	d4, release4, err := Acquire()
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(f2.Name()) != dir || filepath.Dir(d3) != dir || d4 != dir {
		t.Fatalf("two scratch directories: %s, %s, %s, %s", dir, f2.Name(), d3, d4)
	}
	requireMode(t, d3, 0o700)
	if err := os.WriteFile(filepath.Join(d3, "dump.rdb"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if n := names(t, tmp); len(n) != 1 {
		t.Fatalf("TMPDIR holds %q, want the scratch directory only", n)
	}

	mustRun(t, rm1)
	mustRun(t, rm1) // counts once
	requireGone(t, f1.Name())
	requireExists(t, dir)
	mustRun(t, rm3)
	requireGone(t, d3)
	requireExists(t, dir)
	// Removed by its user first (the hook output is unlinked at once).
	if err := os.Remove(f2.Name()); err != nil {
		t.Fatal(err)
	}
	mustRun(t, rm2)
	requireExists(t, dir)
	mustRun(t, release4)
	requireGone(t, dir)
	requireEmpty(t, tmp)

	// A new staging makes a new directory.
	f5, rm5, err := CreateTemp("drflow-sqlite-*.db")
	if err != nil {
		t.Fatal(err)
	}
	f5.Close()
	if filepath.Dir(f5.Name()) == dir {
		t.Fatalf("directory %s reused after its removal", dir)
	}
	mustRun(t, rm5)
	requireEmpty(t, tmp)
}

// TestScratchLeftoverRemovedWithDirectory: what a staging step forgot in the
// scratch directory goes with it.
func TestScratchLeftoverRemovedWithDirectory(t *testing.T) {
	tmp := tempDir(t)
	dir, release, err := Acquire()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "a", "b"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "a", "b", "c"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	mustRun(t, release)
	requireEmpty(t, tmp)
}

// TestScratchPerTempDir: TMPDIR is read on every staging, and a release
// removes the directory in the TMPDIR of its staging.
func TestScratchPerTempDir(t *testing.T) {
	tmp1 := tempDir(t)
	f1, rm1, err := CreateTemp("a-*")
	if err != nil {
		t.Fatal(err)
	}
	f1.Close()
	tmp2 := tempDir(t)
	f2, rm2, err := CreateTemp("b-*")
	if err != nil {
		t.Fatal(err)
	}
	f2.Close()
	if filepath.Dir(filepath.Dir(f1.Name())) != tmp1 || filepath.Dir(filepath.Dir(f2.Name())) != tmp2 {
		t.Fatalf("staged %s and %s, want them in %s and %s", f1.Name(), f2.Name(), tmp1, tmp2)
	}
	mustRun(t, rm1)
	requireEmpty(t, tmp1)
	if len(names(t, tmp2)) != 1 {
		t.Fatalf("%s: %q", tmp2, names(t, tmp2))
	}
	mustRun(t, rm2)
	requireEmpty(t, tmp2)
}

// TestScratchConcurrent: stagings that come and go at once end with an empty
// TMPDIR (run with -race).
func TestScratchConcurrent(t *testing.T) {
	tmp := tempDir(t)
	var wg sync.WaitGroup
	errs := make(chan error, 16*50)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				f, rm, err := CreateTemp("drflow-*.dump")
				if err != nil {
					errs <- err
					return
				}
				if _, err := f.WriteString("data"); err != nil {
					errs <- err
				}
				f.Close()
				if err := rm(); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	requireEmpty(t, tmp)
}

// TestScratchSweepDeadProcess: the scratch directory of a killed process is
// removed by Sweep, not while the process lives (also stopped), and not
// because a child it started (pg_restore) still runs.
func TestScratchSweepDeadProcess(t *testing.T) {
	tmp := tempDir(t)
	h := startHelper(t, tmp)
	if filepath.Dir(h.dir) != tmp || !strings.HasPrefix(filepath.Base(h.dir), Prefix) {
		t.Fatalf("helper staged in %s", h.dir)
	}
	requireExists(t, h.file)

	removed, err := Sweep(tmp)
	if err != nil || len(removed) > 0 {
		t.Fatalf("Sweep with the owner alive: removed %v, %v", removed, err)
	}
	requireExists(t, h.file)

	if err := h.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	removed, err = Sweep(tmp)
	if err != nil || len(removed) > 0 {
		t.Fatalf("Sweep with the owner stopped: removed %v, %v", removed, err)
	}
	requireExists(t, h.file)

	h.kill(t)
	if err := syscall.Kill(h.grandchild, 0); err != nil {
		t.Fatalf("grandchild %d: %v", h.grandchild, err)
	}
	requireExists(t, h.file) // nothing removes it by itself
	removed, err = Sweep(tmp)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 1 || removed[0].Path != h.dir || removed[0].Bytes != helperBytes {
		t.Fatalf("Sweep removed %+v, want %s with %d bytes", removed, h.dir, helperBytes)
	}
	requireEmpty(t, tmp)

	removed, err = Sweep(tmp)
	if err != nil || len(removed) > 0 {
		t.Fatalf("second Sweep: removed %v, %v", removed, err)
	}
}

// TestScratchAcquireSweeps: a process that makes a new scratch directory
// removes the directories of dead processes, not those of live ones.
func TestScratchAcquireSweeps(t *testing.T) {
	tmp := tempDir(t)
	dead := startHelper(t, tmp)
	live := startHelper(t, tmp)
	dead.kill(t)

	f, rm, err := CreateTemp("drflow-verify-*.dump")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	requireGone(t, dead.dir)
	requireExists(t, live.file)
	requireExists(t, f.Name())

	// Not while it is in use: a sweep skips this process's own directory.
	removed, err := Sweep(tmp)
	if err != nil || len(removed) > 0 {
		t.Fatalf("Sweep: removed %v, %v", removed, err)
	}
	requireExists(t, f.Name())
	mustRun(t, rm)
	if got := names(t, tmp); len(got) != 1 || got[0] != filepath.Base(live.dir) {
		t.Fatalf("TMPDIR holds %q, want %s only", got, filepath.Base(live.dir))
	}

	live.kill(t)
	_, rm, err = CreateTemp("x-*")
	if err != nil {
		t.Fatal(err)
	}
	mustRun(t, rm)
	requireEmpty(t, tmp)
}

// TestScratchSweepLeavesOthers: Sweep touches only unlocked drflow-scratch-*
// directories: not a directory being created, not other names, not a file or
// a symbolic link of that name; a directory without a lock file (a removal
// cut off) goes.
func TestScratchSweepLeavesOthers(t *testing.T) {
	tmp := tempDir(t)
	keep := []string{
		filepath.Join(tmp, newPrefix+"123456"),
		filepath.Join(tmp, newPrefix+"123456", lockName),
		filepath.Join(tmp, newPrefix+"123456", "drflow-restore-1.dump"),
		filepath.Join(tmp, "drflow-restore-1.dump"),
		filepath.Join(tmp, "drflow-verify-rdb-1"),
		filepath.Join(tmp, Prefix+"file"),
		filepath.Join(tmp, Prefix+"link"),
	}
	target := t.TempDir()
	if err := os.WriteFile(filepath.Join(target, lockName), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{keep[0], keep[4]} {
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{keep[1], keep[2], keep[3], keep[5]} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(target, keep[6]); err != nil {
		t.Fatal(err)
	}
	lockless := filepath.Join(tmp, Prefix+"1-0123456789abcdef")
	if err := os.MkdirAll(filepath.Join(lockless, "drflow-verify-rdb-1"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(lockless, "drflow-verify-rdb-1", "dump.rdb"), []byte("12345"), 0o600); err != nil {
		t.Fatal(err)
	}

	removed, err := Sweep(tmp)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 1 || removed[0].Path != lockless || removed[0].Bytes != 5 {
		t.Fatalf("Sweep removed %+v, want %s with 5 bytes", removed, lockless)
	}
	requireGone(t, lockless)
	for _, p := range keep {
		requireExists(t, p)
	}
	requireExists(t, filepath.Join(target, lockName))
}

// TestScratchSweepMissingDir: Sweep of a directory that does not exist is an
// error, not a panic.
func TestScratchSweepMissingDir(t *testing.T) {
	if _, err := Sweep(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("no error")
	}
}

// TestScratchAcquireFails: a TMPDIR that does not exist fails the staging
// with an error naming it, and the returned cleanup is callable.
func TestScratchAcquireFails(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	t.Setenv("TMPDIR", missing)
	f, rm, err := CreateTemp("x-*")
	if err == nil || f != nil || !strings.Contains(err.Error(), missing) {
		t.Fatalf("CreateTemp: %v, %v", f, err)
	}
	mustRun(t, rm)
	_, rm, err = MkdirTemp("x-")
	if err == nil {
		t.Fatal("MkdirTemp: no error")
	}
	mustRun(t, rm)
}
