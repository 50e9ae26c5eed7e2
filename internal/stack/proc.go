package stack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Timeouts shared by every server. They are generous for a loaded CI host and
// still short enough that a hung server fails a test instead of hanging it.
const (
	readyTimeout = 60 * time.Second // from exec to "accepts requests"
	stopTimeout  = 15 * time.Second // graceful stop before falling back to SIGKILL
	killTimeout  = 10 * time.Second // SIGKILL to reaped
	pollInterval = 20 * time.Millisecond
)

// proc is one running server process.
//
// contract: the process is the leader of its own process group (Setpgid), so
// kill() reaches helpers it forked (PostgreSQL backends, Redis rewrite
// children) too; Pdeathsig=SIGKILL makes the kernel kill the leader when the
// test binary dies without running its cleanups. The log file is owned by the
// proc and closed once the process has been reaped.
type proc struct {
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{} // closed after Wait returned
	err  error         // Wait's result, valid after done
}

// procSpec says how to run one server process.
type procSpec struct {
	path    string
	args    []string
	env     []string // nil means the parent's environment
	dir     string
	cred    *syscall.Credential // nil means the current user
	logPath string              // stdout and stderr are appended here
}

func startProc(spec procSpec) (*proc, error) {
	logf, err := os.OpenFile(spec.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	fmt.Fprintf(logf, "\n==== drflow/stack %s: %s %s\n", time.Now().UTC().Format(time.RFC3339Nano), spec.path, strings.Join(spec.args, " "))

	// exec.Command, not CommandContext: the server outlives the context that
	// started it; its life ends with Stop/Kill/Close.
	cmd := exec.Command(spec.path, spec.args...)
	cmd.Env = spec.env
	cmd.Dir = spec.dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:    true,
		Pdeathsig:  syscall.SIGKILL,
		Credential: spec.cred,
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	p := &proc{cmd: cmd, log: logf, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		p.log.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// signal sends sig to the leader only, letting the server shut its helpers
// down in its own order.
func (p *proc) signal(sig syscall.Signal) error {
	if p.exited() {
		return nil
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	return nil
}

// kill sends SIGKILL to the whole process group and to every descendant
// (PostgreSQL puts each backend in a session of its own), then waits until
// the leader is reaped and the descendants are gone. The group and the
// descendants are collected while the leader is unreaped, so their ids
// cannot have been reused by unrelated processes.
func (p *proc) kill() error {
	var descendants []int
	if !p.exited() {
		descendants = descendantsOf(p.pid())
		if err := syscall.Kill(-p.pid(), syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("kill process group %d: %w", p.pid(), err)
		}
		for _, pid := range descendants {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	deadline := time.After(killTimeout)
	select {
	case <-p.done:
	case <-deadline:
		return fmt.Errorf("process %d still running %s after SIGKILL", p.pid(), killTimeout)
	}
	for _, pid := range descendants {
		for processRuns(pid) {
			select {
			case <-deadline:
				return fmt.Errorf("process %d (child of %d) still running %s after SIGKILL", pid, p.pid(), killTimeout)
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	return nil
}

// stop sends sig and waits for the exit; when ctx ends or stopTimeout passes
// first it falls back to kill and reports that the graceful stop failed.
func (p *proc) stop(ctx context.Context, sig syscall.Signal) error {
	if err := p.signal(sig); err != nil {
		return err
	}
	t := time.NewTimer(stopTimeout)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		kerr := p.kill()
		return errors.Join(fmt.Errorf("graceful stop interrupted: %w", ctx.Err()), kerr)
	case <-t.C:
		kerr := p.kill()
		return errors.Join(fmt.Errorf("no exit %s after %s; killed", stopTimeout, sig), kerr)
	}
}

// waitReady polls check until it returns nil. It fails when the process
// exits, when ctx ends or after readyTimeout; the error carries the tail of
// the server log written since logOffset.
//
// A check can pass against another process that holds the port (the server
// then exits with "address already in use"), so waitReady also requires
// that the listener on port belongs to p.
func waitReady(ctx context.Context, p *proc, port int, logPath string, logOffset int64, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	var last error
	for {
		cctx, ccancel := context.WithTimeout(ctx, time.Second)
		last = check(cctx)
		ccancel()
		if last == nil {
			last = listensOn(p.pid(), port)
			if last == nil {
				return nil
			}
		}
		select {
		case <-p.done:
			return &exitError{err: p.err, log: logTail(logPath, logOffset)}
		case <-ctx.Done():
			return fmt.Errorf("not ready (%w; last check: %v)\n%s", ctx.Err(), last, logTail(logPath, logOffset))
		case <-time.After(pollInterval):
		}
	}
}

// exitError reports a server that exited while starting.
type exitError struct {
	err error
	log string
}

func (e *exitError) Error() string {
	return fmt.Sprintf("exited while starting (%v)\n%s", e.err, e.log)
}

// addrInUse tells whether a start failed because another process took the
// port between pickPort and the server's bind.
func addrInUse(err error) bool {
	var e *exitError
	return errors.As(err, &e) && strings.Contains(strings.ToLower(e.log), "address already in use")
}

const tailBytes = 4 << 10

// listensOn returns nil when process pid holds a listening TCP socket on
// port, per /proc/net/tcp{,6} and /proc/<pid>/fd.
func listensOn(pid, port int) error {
	inodes := map[string]bool{}
	suffix := fmt.Sprintf(":%04X", port)
	for _, name := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(name)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			// sl local_address rem_address st … uid timeout inode
			if len(f) >= 10 && strings.HasSuffix(f[1], suffix) && f[3] == "0A" {
				inodes["socket:["+f[9]+"]"] = true
			}
		}
	}
	if len(inodes) == 0 {
		return fmt.Errorf("nothing listens on port %d yet", port)
	}
	fdDir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(fdDir)
	if err != nil {
		return fmt.Errorf("check listener of port %d: %w", port, err)
	}
	for _, fd := range fds {
		if link, err := os.Readlink(fdDir + "/" + fd.Name()); err == nil && inodes[link] {
			return nil
		}
	}
	return fmt.Errorf("port %d is held by another process", port)
}

// descendantsOf returns the ids of all live descendants of pid.
func descendantsOf(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := map[int][]int{}
	for _, e := range entries {
		id, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, ok := readProcStat(id); ok {
			children[st.ppid] = append(children[st.ppid], id)
		}
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		next := queue[0]
		queue = queue[1:]
		out = append(out, children[next]...)
		queue = append(queue, children[next]...)
	}
	return out
}

// processRuns tells whether pid exists and is not a zombie (a zombie has
// exited; it only waits for its new parent to reap it).
func processRuns(pid int) bool {
	st, ok := readProcStat(pid)
	return ok && st.state != "Z"
}

type procStat struct {
	state      string
	ppid, pgrp int
}

// readProcStat parses /proc/<pid>/stat.
func readProcStat(pid int) (procStat, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, false
	}
	// The command name in parentheses may contain spaces; fields follow ")".
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 3 {
		return procStat{}, false
	}
	ppid, err1 := strconv.Atoi(f[1])
	pgrp, err2 := strconv.Atoi(f[2])
	if err1 != nil || err2 != nil {
		return procStat{}, false
	}
	return procStat{state: f[0], ppid: ppid, pgrp: pgrp}, true
}

// logTail returns the last few KiB of the log written since offset, prefixed
// so it reads well inside an error message.
func logTail(path string, offset int64) string {
	f, err := os.Open(path)
	if err != nil {
		return "(no server log: " + err.Error() + ")"
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "(server log: " + err.Error() + ")"
	}
	start := max(offset, fi.Size()-tailBytes)
	if start > fi.Size() {
		start = 0 // truncated or replaced since offset was taken
	}
	b, _ := io.ReadAll(io.NewSectionReader(f, start, fi.Size()-start))
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return "(server log " + path + " is empty)"
	}
	return "--- tail of " + path + " ---\n" + string(b)
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// Ports handed out by this process. The kernel may hand the same ephemeral
// port to two listeners that open and close one after the other, so servers
// started in parallel could otherwise pick the same one.
var (
	portsMu sync.Mutex
	ports   = map[int]bool{}
)

// pickPort returns a port that was free on 127.0.0.1 a moment ago. Another
// process can still take it before the server binds; callers retry on
// "address already in use" (see addrInUse).
func pickPort() (int, error) {
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("pick free port: %w", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !ports[port] {
			ports[port] = true
			return port, nil
		}
	}
	return 0, errors.New("pick free port: no unused port after 100 tries")
}

// startRetries bounds how often a first start picks new ports after losing a
// port race.
const startRetries = 3
