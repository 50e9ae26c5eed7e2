package activities

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"github.com/kohakku/drflow/internal/config"
	"github.com/kohakku/drflow/internal/scratch"
)

// ErrHookFailed: a service hook failed (its command exited non-zero, ran past
// its timeout, or its health URL never answered 2xx) and its onError is
// "fail". It is retryable, so the workflow's retry policy bounds the attempts,
// except when the program does not exist.
const ErrHookFailed = "HookFailed"

// Services runs the configured service hooks. Its methods are activities.
//
// Hooks hold no secrets by design (config checks URLs for credentials), so
// inputs, results and errors may name commands and URLs. A hook runs on the
// task queue of its service (config.Service.TaskQueue): the workflow routes it
// there, and every worker that polls that queue holds the same hooks.
type Services struct {
	// Hooks are the configured services and actions (DRFLOW_HOOKS_FILE).
	Hooks config.Hooks
	// HTTP is the client for health URLs; nil means a client with a 5s
	// per-request timeout.
	HTTP *http.Client
	// PollInterval is the pause between health probes; 0 means 500ms.
	PollInterval time.Duration
}

// HookInput selects one action of one service.
type HookInput struct {
	// Service names a service of the hooks file, e.g. "controller".
	Service string `json:"service"`
	// Action is "stop", "start", "restart" or "health".
	Action string `json:"action"`
}

// HookResult reports what RunHook did. A failure of an action whose onError
// is "continue" is reported here (Failed, Error) instead of as an error.
type HookResult struct {
	// Service is the input's service.
	Service string `json:"service"`
	// Action is the input's action.
	Action string `json:"action"`
	// Configured is false when nothing is configured for the action, and so
	// nothing ran.
	Configured bool `json:"configured"`
	// Ran lists what ran, in order, e.g. ["exec systemctl",
	// "health http://127.0.0.1:8000/healthz"]: argv[0] only, never the whole
	// argv, and URLs without their query.
	Ran []string `json:"ran,omitempty"`
	// ExitCode is the exit code of the last command that ran; -1 when it was
	// killed or could not start.
	ExitCode int `json:"exitCode"`
	// Healthy is true when a health URL answered 2xx; false when none is
	// configured.
	Healthy bool `json:"healthy"`
	// Failed is true when the action failed and its onError is "continue".
	Failed bool `json:"failed"`
	// Error says what failed, when Failed.
	Error string `json:"error,omitempty"`
	// Duration is the time the action took.
	Duration time.Duration `json:"duration"`
	// Note explains a special case, e.g. "no restart hook: ran stop then start".
	Note string `json:"note,omitempty"`
}

// PlannedRestart is one entry of the restart order, for plans.
type PlannedRestart struct {
	// Service names the service.
	Service string `json:"service"`
	// Reason says why it restarts at this point.
	Reason string `json:"reason"`
	// Actions are the service's configured actions, e.g. ["restart", "health"],
	// in the order stop, start, restart, health.
	Actions []string `json:"actions"`
	// TaskQueue is the queue its hooks run on; "" means the shared queue.
	TaskQueue string `json:"taskQueue,omitempty"`
}

// HookProgress is RunHook's heartbeat detail, shown in the Web UI.
type HookProgress struct {
	// Step is what is running, as in HookResult.Ran.
	Step string `json:"step"`
	// Elapsed is the time since the action started.
	Elapsed time.Duration `json:"elapsed"`
}

// Defaults of Services.
const (
	defaultHealthRequestTimeout = 5 * time.Second
	defaultHealthPollInterval   = 500 * time.Millisecond
	// hookOutputLimit is how much of a command's output, its end, goes into
	// the error.
	hookOutputLimit = 4 << 10
	// hookGroupGoneWait bounds the wait for a killed process group to die.
	hookGroupGoneWait = 5 * time.Second
)

var defaultHealthClient = &http.Client{Timeout: defaultHealthRequestTimeout}

// RunHook runs one action of one service and waits for it: the command, if
// any, then health polling, if a health URL is set, all within the action's
// timeout. A restart without a restart action runs stop then start instead.
//
// An unknown action fails non-retryably with ErrInvalidInput, an unknown
// service with ErrUnknownTarget. With no hooks configured at all, or without
// the action, the result has Configured false and nothing runs. A failed
// action returns an ErrHookFailed error, or, with onError "continue", a result
// with Failed set. Cancelling ctx kills the command's whole process group.
//
// Stop and start are idempotent for systemd units, so a retry after a lost
// attempt is safe; a hook whose command is not must guard itself.
func (s *Services) RunHook(ctx context.Context, in HookInput) (HookResult, error) {
	res := HookResult{Service: in.Service, Action: in.Action}
	if !slices.Contains(config.HookActions(), in.Action) {
		return res, NonRetryable(ErrInvalidInput, fmt.Errorf(
			"run hook: input field \"action\": unknown action %q for service %q (want stop, start, restart or health)", in.Action, in.Service))
	}
	log := activity.GetLogger(ctx)
	if len(s.Hooks.Services) == 0 {
		res.Note = "no service hooks are configured (DRFLOW_HOOKS_FILE is not set): nothing ran"
		log.Info("service hook", "service", in.Service, "action", in.Action, "duration", time.Duration(0), "result", "not configured")
		return res, nil
	}
	svc, ok := s.Hooks.Service(in.Service)
	if !ok {
		return res, NonRetryable(ErrUnknownTarget, fmt.Errorf(
			"run hook: input field \"service\": unknown service %q (configured in DRFLOW_HOOKS_FILE: %s)",
			in.Service, strings.Join(s.Hooks.Names(), ", ")))
	}

	type step struct {
		name   string
		action *config.HookAction
	}
	var steps []step
	switch {
	case svc.Action(in.Action) != nil:
		steps = []step{{in.Action, svc.Action(in.Action)}}
	case in.Action == config.HookRestart && (svc.Stop != nil || svc.Start != nil):
		var ran []string
		for _, name := range []string{config.HookStop, config.HookStart} {
			if a := svc.Action(name); a != nil {
				steps = append(steps, step{name, a})
				ran = append(ran, name)
			}
		}
		res.Note = "no restart hook: ran " + strings.Join(ran, " then ")
	default:
		res.Note = fmt.Sprintf("service %q has no %s hook in DRFLOW_HOOKS_FILE: nothing ran", svc.Name, in.Action)
		log.Info("service hook", "service", in.Service, "action", in.Action, "duration", time.Duration(0), "result", "not configured")
		return res, nil
	}
	res.Configured = true

	started := time.Now()
	var current atomic.Value // string: the step running now
	current.Store("starting")
	stopBeat := startHeartbeat(ctx, 0, func() {
		activity.RecordHeartbeat(ctx, HookProgress{Step: current.Load().(string), Elapsed: time.Since(started)})
	})
	defer stopBeat()

	var failures []string
	for _, st := range steps {
		err := s.runAction(ctx, svc.Name, st.name, st.action, &res, &current)
		if err == nil {
			continue
		}
		var hf *hookFailure
		if !errors.As(err, &hf) {
			// ctx ended: the activity was cancelled or timed out; Temporal decides.
			res.Duration = time.Since(started)
			log.Info("service hook", "service", svc.Name, "action", in.Action, "duration", res.Duration, "result", "cancelled", "error", err)
			return res, err
		}
		if st.action.OnError == config.OnErrorContinue {
			failures = append(failures, hf.Error())
			continue
		}
		res.Duration = time.Since(started)
		log.Info("service hook", "service", svc.Name, "action", in.Action, "duration", res.Duration, "result", "failed", "error", hf.Error())
		msg := hf.Error() + " (" + hf.hint + ")"
		if hf.permanent {
			return res, temporal.NewNonRetryableApplicationError(msg, ErrHookFailed, hf.err)
		}
		return res, temporal.NewApplicationErrorWithCause(msg, ErrHookFailed, hf.err)
	}
	res.Duration = time.Since(started)
	result := "ok"
	if len(failures) > 0 {
		res.Failed, res.Error = true, strings.Join(failures, "; ")
		result = "failed, continuing (onError: continue)"
	}
	log.Info("service hook", "service", svc.Name, "action", in.Action, "duration", res.Duration, "result", result,
		"ran", strings.Join(res.Ran, ", "), "exitCode", res.ExitCode, "healthy", res.Healthy)
	return res, nil
}

// RestartOrder returns the configured restart order with, for each entry,
// the service's configured actions and task queue, for plans. It runs nothing.
func (s *Services) RestartOrder(_ context.Context) ([]PlannedRestart, error) {
	out := make([]PlannedRestart, 0, len(s.Hooks.RestartOrder))
	for _, st := range s.Hooks.RestartOrder {
		svc, ok := s.Hooks.Service(st.Service)
		if !ok {
			// config rejects this; a hand-built Hooks may not.
			return nil, NonRetryable(ErrUnknownTarget, fmt.Errorf(
				"restart order: service %q is not defined (configured in DRFLOW_HOOKS_FILE: %s)", st.Service, strings.Join(s.Hooks.Names(), ", ")))
		}
		actions := svc.Actions()
		if actions == nil {
			actions = []string{}
		}
		out = append(out, PlannedRestart{Service: st.Service, Reason: st.Reason, Actions: actions, TaskQueue: svc.TaskQueue})
	}
	return out, nil
}

// hookFailure is an action that failed in a way onError governs.
type hookFailure struct {
	service, action string
	what            string // e.g. `exec systemctl: exit status 3: <output>`
	hint            string // how to fix it
	permanent       bool   // retrying cannot help
	err             error
}

func (f *hookFailure) Error() string {
	return fmt.Sprintf("service %q: %s hook: %s", f.service, f.action, f.what)
}

func (f *hookFailure) Unwrap() error { return f.err }

// runAction runs one action within its timeout, recording into res. Its
// error is a *hookFailure, or ctx's error when ctx ended first.
func (s *Services) runAction(ctx context.Context, service, name string, a *config.HookAction, res *HookResult, current *atomic.Value) error {
	timeout := a.Timeout
	if timeout <= 0 {
		timeout = config.DefaultHookTimeout
	}
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	fail := func(what, hint string, permanent bool, err error) error {
		if ctx.Err() != nil {
			return fmt.Errorf("service %q: %s hook: %w", service, name, context.Cause(ctx))
		}
		return &hookFailure{service: service, action: name, what: what, hint: hint, permanent: permanent, err: err}
	}

	if len(a.Argv) > 0 {
		step := "exec " + a.Argv[0]
		res.Ran = append(res.Ran, step)
		current.Store(step)
		code, output, err := runHookCommand(actx, a.Argv)
		res.ExitCode = code
		if err != nil {
			withOutput := func(s string) string {
				if output == "" {
					return s
				}
				return s + ": " + output
			}
			var exit *exec.ExitError
			switch {
			case actx.Err() != nil:
				return fail(withOutput(fmt.Sprintf("%s: killed after the action's timeout of %s", step, timeout)),
					"check the command by running it by hand on the worker's host, or raise its timeout in DRFLOW_HOOKS_FILE", false, err)
			case errors.As(err, &exit):
				return fail(withOutput(fmt.Sprintf("%s: %s", step, exit.ProcessState)),
					"check the command by running it by hand on the worker's host; its argv is in DRFLOW_HOOKS_FILE", false, err)
			case errors.Is(err, exec.ErrNotFound), errors.Is(err, fs.ErrNotExist), errors.Is(err, fs.ErrPermission):
				return fail(fmt.Sprintf("%s: %v", step, err),
					"check argv[0] in DRFLOW_HOOKS_FILE: it must be an executable in the worker's PATH or an absolute path", true, err)
			default:
				return fail(fmt.Sprintf("%s: %v", step, err),
					"check the command in DRFLOW_HOOKS_FILE and the worker's host", false, err)
			}
		}
	}
	if a.HealthURL != "" {
		step := "health " + displayURL(a.HealthURL)
		res.Ran = append(res.Ran, step)
		current.Store(step)
		last, err := s.pollHealth(actx, a.HealthURL)
		if err != nil {
			return fail(fmt.Sprintf("%s: no 2xx answer within the action's timeout of %s (last: %s)", step, timeout, last),
				"check that the service is up and that healthUrl in DRFLOW_HOOKS_FILE is its health endpoint, or raise the timeout", false, err)
		}
		res.Healthy = true
	}
	return nil
}

// runHookCommand runs argv without a shell, in its own process group, with
// empty standard input and without drflow's credential variables. When ctx
// ends, the whole group is killed and waited for. It returns the exit code
// (-1 when killed or not started) and the tail of the combined output.
//
// The output goes to an unlinked temporary file rather than a pipe: a start
// command may leave a daemon behind that inherits it, and a pipe would make
// Wait block on that daemon, or kill it with SIGPIPE once closed. The file is
// created (0600) in the worker's scratch directory in TMPDIR and unlinked at
// once; a worker killed in between leaves it to the next worker's sweep.
func runHookCommand(ctx context.Context, argv []string) (code int, output string, err error) {
	out, remove, err := scratch.CreateTemp("drflow-hook-*.out")
	if err != nil {
		return -1, "", fmt.Errorf("output file: %w", err)
	}
	_ = remove() // unlinks it and releases the scratch directory; out stays open
	defer out.Close()

	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = hookEnv(os.Environ())
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	err = cmd.Run()
	if cmd.Process != nil && ctx.Err() != nil {
		waitHookGroupGone(cmd.Process.Pid, hookGroupGoneWait)
	}
	code = -1
	if cmd.ProcessState != nil {
		code = cmd.ProcessState.ExitCode()
	}
	return code, fileTail(out, hookOutputLimit), err
}

// hookEnv is env without the variables that hold drflow's credentials.
func hookEnv(env []string) []string {
	secret := config.SecretVariables()
	return slices.DeleteFunc(slices.Clone(env), func(kv string) bool {
		name, _, _ := strings.Cut(kv, "=")
		return slices.Contains(secret, name)
	})
}

// fileTail returns the last limit bytes of f as one line, "…" first when cut.
func fileTail(f *os.File, limit int64) string {
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil || size == 0 {
		return ""
	}
	from := max(size-limit, 0)
	buf := make([]byte, size-from)
	n, _ := f.ReadAt(buf, from)
	tb := &tailBuffer{limit: int(limit), dropped: from > 0}
	_, _ = tb.Write(buf[:n])
	return tb.String()
}

// waitHookGroupGone waits, at most limit, until no live process is left in
// the process group pgid. A zombie counts as gone: it runs nothing, and where
// PID 1 does not reap orphans (some containers) it never disappears.
func waitHookGroupGone(pgid int, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if syscall.Kill(-pgid, 0) != nil || !groupHasLiveProcess(pgid) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// groupHasLiveProcess reports whether /proc lists a process of group pgid
// that is not a zombie; true when /proc cannot tell.
func groupHasLiveProcess(pgid int) bool {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return true
	}
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		state, pg, ok := procStat(e.Name())
		if ok && pg == pgid && state != "Z" && state != "X" {
			return true
		}
	}
	return false
}

// procStat reads the state and process group of /proc/<pid>/stat.
func procStat(pid string) (state string, pgid int, ok bool) {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return "", 0, false
	}
	// pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return "", 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 3 {
		return "", 0, false
	}
	pgid, err = strconv.Atoi(f[2])
	return f[0], pgid, err == nil
}

// pollHealth GETs rawURL until it answers 2xx or ctx ends; it returns the
// last answer or error, for the message.
func (s *Services) pollHealth(ctx context.Context, rawURL string) (last string, err error) {
	client := s.HTTP
	if client == nil {
		client = defaultHealthClient
	}
	interval := s.PollInterval
	if interval <= 0 {
		interval = defaultHealthPollInterval
	}
	last = "no answer yet"
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return last, ctx.Err()
		case <-timer.C:
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
		if err != nil {
			return err.Error(), err
		}
		resp, err := client.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			_ = resp.Body.Close()
			if resp.StatusCode >= 200 && resp.StatusCode < 300 {
				return resp.Status, nil
			}
			last = "HTTP " + resp.Status
		} else if ctx.Err() == nil {
			last = urlErrorText(err)
		}
		timer.Reset(interval)
	}
}

// urlErrorText is err without the "Get <url>: " prefix, which the message
// already shows.
func urlErrorText(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err.Error()
	}
	return err.Error()
}

// displayURL is rawURL without query and fragment, for results and logs.
func displayURL(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "(unparsable URL)"
	}
	u.User, u.RawQuery, u.Fragment, u.RawFragment = nil, "", "", ""
	return u.String()
}
