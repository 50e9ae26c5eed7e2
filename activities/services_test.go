package activities_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/kohakku/drflow/activities"
	"github.com/kohakku/drflow/internal/config"
)

// hookScript writes an executable shell script into dir and returns its path.
func hookScript(t *testing.T, dir, name, body string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(path, []byte("#!/bin/sh\n"+body), 0o755))
	return path
}

// runHook runs RunHook in the SDK's test activity environment.
func runHook(t *testing.T, s *activities.Services, in activities.HookInput) (activities.HookResult, error) {
	t.Helper()
	var suite testsuite.WorkflowTestSuite
	env := suite.NewTestActivityEnvironment()
	env.RegisterActivity(s)
	var res activities.HookResult
	v, err := env.ExecuteActivity(s.RunHook, in)
	if err != nil {
		return res, err
	}
	require.NoError(t, v.Get(&res))
	return res, nil
}

// hookAppError returns the application error of an activity error and
// checks its type and retryability.
func hookAppError(t *testing.T, err error, errType string, nonRetryable bool) *temporal.ApplicationError {
	t.Helper()
	require.Error(t, err)
	var app *temporal.ApplicationError
	require.True(t, errors.As(err, &app), "want an application error, got %T: %v", err, err)
	assert.Equal(t, errType, app.Type(), "type of %v", err)
	assert.Equal(t, nonRetryable, app.NonRetryable(), "non-retryable of %v", err)
	return app
}

// oneService returns hooks with one service "controller" and its actions.
func oneService(svc config.Service) config.Hooks {
	svc.Name = "controller"
	return config.Hooks{Services: []config.Service{svc}}
}

func TestRunHookExec(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "ran")
	script := hookScript(t, dir, "start.sh", `echo "$@" > `+marker+"\n")
	s := &activities.Services{Hooks: oneService(config.Service{
		Start: &config.HookAction{Argv: []string{script, "--token-looking-arg", "two words"}, Timeout: 10 * time.Second, OnError: "fail"},
	})}
	res, err := runHook(t, s, activities.HookInput{Service: "controller", Action: "start"})
	require.NoError(t, err)
	assert.True(t, res.Configured)
	assert.Equal(t, []string{"exec " + script}, res.Ran, "argv[0] only")
	assert.Equal(t, 0, res.ExitCode)
	assert.False(t, res.Healthy, "no health URL")
	assert.False(t, res.Failed)
	assert.Positive(t, res.Duration)
	got, err := os.ReadFile(marker)
	require.NoError(t, err)
	assert.Equal(t, "--token-looking-arg two words\n", string(got), "argv passed as is, no shell splitting")
}

func TestRunHookExitCodeFailure(t *testing.T) {
	dir := t.TempDir()
	// 8 KiB of noise first: only the last ~4 KiB of the output are kept.
	script := hookScript(t, dir, "restart.sh", `i=0
while [ $i -lt 128 ]; do echo "early-noise-line-$i ................................................"; i=$((i+1)); done
echo "to stdout: stopping"
echo "Failed to restart kohakku-controller.service: Unit not found." >&2
exit 3
`)
	hooks := func(onError string) config.Hooks {
		return oneService(config.Service{Restart: &config.HookAction{Argv: []string{script}, Timeout: 10 * time.Second, OnError: onError}})
	}

	t.Run("fail", func(t *testing.T) {
		_, err := runHook(t, &activities.Services{Hooks: hooks("fail")}, activities.HookInput{Service: "controller", Action: "restart"})
		app := hookAppError(t, err, activities.ErrHookFailed, false)
		msg := app.Error()
		for _, want := range []string{
			`service "controller": restart hook: exec ` + script + `: exit status 3`,
			"to stdout: stopping", "Unit not found.", "check the command", "DRFLOW_HOOKS_FILE",
		} {
			assert.Contains(t, msg, want)
		}
		assert.NotContains(t, msg, "early-noise-line-0 ", "the head of a long output is cut")
		assert.Less(t, len(msg), 5<<10, "the output in the message is bounded")
	})
	t.Run("continue", func(t *testing.T) {
		res, err := runHook(t, &activities.Services{Hooks: hooks("continue")}, activities.HookInput{Service: "controller", Action: "restart"})
		require.NoError(t, err, "onError continue records the failure")
		assert.True(t, res.Configured)
		assert.True(t, res.Failed)
		assert.Equal(t, 3, res.ExitCode)
		assert.Contains(t, res.Error, "exit status 3")
		assert.Contains(t, res.Error, "Unit not found.")
		assert.Equal(t, []string{"exec " + script}, res.Ran)
	})
}

// TestRunHookTimeoutKillsProcessGroup: a command past its timeout is killed
// with its children, and the action fails within about the timeout.
func TestRunHookTimeoutKillsProcessGroup(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "child.pid")
	script := hookScript(t, dir, "hang.sh", "sleep 300 &\necho $! > "+pidFile+"\necho started\nwait\n")
	s := &activities.Services{Hooks: oneService(config.Service{
		Stop: &config.HookAction{Argv: []string{script}, Timeout: 500 * time.Millisecond, OnError: "fail"},
	})}
	start := time.Now()
	_, err := runHook(t, s, activities.HookInput{Service: "controller", Action: "stop"})
	elapsed := time.Since(start)
	app := hookAppError(t, err, activities.ErrHookFailed, false)
	assert.Contains(t, app.Error(), "killed after the action's timeout of 500ms")
	assert.Contains(t, app.Error(), "started", "the output so far is in the message")
	assert.Contains(t, app.Error(), "raise its timeout")
	assert.Less(t, elapsed, 5*time.Second)

	raw, err := os.ReadFile(pidFile)
	require.NoError(t, err)
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	require.NoError(t, err)
	// The child sleep was in the hook's process group: it is gone, or a zombie
	// waiting for an init that does not reap (it runs nothing either way).
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err == nil {
		fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		assert.Contains(t, []string{"Z", "X"}, fields[0], "child sleep %d still runs: %s", pid, stat)
	} else {
		assert.ErrorIs(t, err, os.ErrNotExist)
	}
}

func TestRunHookHealthBecomesHealthy(t *testing.T) {
	const unhealthy = 3
	var probes atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		assert.Equal(t, http.MethodGet, r.Method)
		if probes.Add(1) <= unhealthy {
			http.Error(w, "starting", http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	dir := t.TempDir()
	script := hookScript(t, dir, "start.sh", "exit 0\n")
	s := &activities.Services{
		Hooks: oneService(config.Service{Start: &config.HookAction{
			Argv: []string{script}, HealthURL: srv.URL + "/healthz?probe=1", Timeout: 10 * time.Second, OnError: "fail",
		}}),
		PollInterval: 10 * time.Millisecond,
	}
	res, err := runHook(t, s, activities.HookInput{Service: "controller", Action: "start"})
	require.NoError(t, err)
	assert.True(t, res.Healthy)
	assert.Equal(t, int32(unhealthy+1), probes.Load(), "polls until the first 2xx, then stops")
	assert.Equal(t, []string{"exec " + script, "health " + srv.URL + "/healthz"}, res.Ran, "command, then health; no query shown")
}

func TestRunHookHealthNeverHealthy(t *testing.T) {
	var probes atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		probes.Add(1)
		http.Error(w, "down", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	hooks := func(onError string) config.Hooks {
		return oneService(config.Service{Health: &config.HookAction{HealthURL: srv.URL + "/healthz", Timeout: 2 * time.Second, OnError: onError}})
	}
	s := &activities.Services{Hooks: hooks("fail"), PollInterval: 20 * time.Millisecond}
	start := time.Now()
	_, err := runHook(t, s, activities.HookInput{Service: "controller", Action: "health"})
	elapsed := time.Since(start)
	app := hookAppError(t, err, activities.ErrHookFailed, false)
	for _, want := range []string{
		`service "controller": health hook: health ` + srv.URL + "/healthz: no 2xx answer within the action's timeout of 2s",
		"last: HTTP 503 Service Unavailable", "healthUrl in DRFLOW_HOOKS_FILE",
	} {
		assert.Contains(t, app.Error(), want)
	}
	assert.GreaterOrEqual(t, elapsed, 2*time.Second)
	assert.Less(t, elapsed, 10*time.Second, "fails within the timeout, not the activity's")
	assert.Greater(t, probes.Load(), int32(2), "polled more than once")

	t.Run("nothing listening, continue", func(t *testing.T) {
		ln := httptest.NewServer(http.NotFoundHandler())
		url := ln.URL
		ln.Close()
		s := &activities.Services{Hooks: oneService(config.Service{Health: &config.HookAction{
			HealthURL: url, Timeout: 200 * time.Millisecond, OnError: "continue",
		}}), PollInterval: 20 * time.Millisecond}
		res, err := runHook(t, s, activities.HookInput{Service: "controller", Action: "health"})
		require.NoError(t, err)
		assert.True(t, res.Failed)
		assert.False(t, res.Healthy)
		assert.Contains(t, res.Error, "connection refused")
	})
}

// TestRunHookRestartFallsBackToStopStart: without a restart action, restart
// runs stop then start, in that order.
func TestRunHookRestartFallsBackToStopStart(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	stop := hookScript(t, dir, "stop.sh", "echo stop >> "+log+"\n")
	start := hookScript(t, dir, "start.sh", "echo start >> "+log+"\n")
	failStop := hookScript(t, dir, "fail-stop.sh", "echo fail-stop >> "+log+"\nexit 1\n")
	lines := func() []string {
		b, err := os.ReadFile(log)
		require.NoError(t, err)
		return strings.Fields(string(b))
	}

	t.Run("stop then start", func(t *testing.T) {
		require.NoError(t, os.RemoveAll(log))
		s := &activities.Services{Hooks: oneService(config.Service{
			Start: &config.HookAction{Argv: []string{start}, Timeout: 10 * time.Second, OnError: "fail"},
			Stop:  &config.HookAction{Argv: []string{stop}, Timeout: 10 * time.Second, OnError: "fail"},
		})}
		res, err := runHook(t, s, activities.HookInput{Service: "controller", Action: "restart"})
		require.NoError(t, err)
		assert.Equal(t, []string{"stop", "start"}, lines())
		assert.True(t, res.Configured)
		assert.Equal(t, "no restart hook: ran stop then start", res.Note)
		assert.Equal(t, []string{"exec " + stop, "exec " + start}, res.Ran)
	})
	t.Run("failed stop with onError fail: no start", func(t *testing.T) {
		require.NoError(t, os.RemoveAll(log))
		s := &activities.Services{Hooks: oneService(config.Service{
			Stop:  &config.HookAction{Argv: []string{failStop}, Timeout: 10 * time.Second, OnError: "fail"},
			Start: &config.HookAction{Argv: []string{start}, Timeout: 10 * time.Second, OnError: "fail"},
		})}
		_, err := runHook(t, s, activities.HookInput{Service: "controller", Action: "restart"})
		app := hookAppError(t, err, activities.ErrHookFailed, false)
		assert.Contains(t, app.Error(), `service "controller": stop hook: exec `+failStop+": exit status 1")
		assert.Equal(t, []string{"fail-stop"}, lines())
	})
	t.Run("failed stop with onError continue: start runs", func(t *testing.T) {
		require.NoError(t, os.RemoveAll(log))
		s := &activities.Services{Hooks: oneService(config.Service{
			Stop:  &config.HookAction{Argv: []string{failStop}, Timeout: 10 * time.Second, OnError: "continue"},
			Start: &config.HookAction{Argv: []string{start}, Timeout: 10 * time.Second, OnError: "fail"},
		})}
		res, err := runHook(t, s, activities.HookInput{Service: "controller", Action: "restart"})
		require.NoError(t, err)
		assert.Equal(t, []string{"fail-stop", "start"}, lines())
		assert.True(t, res.Failed)
		assert.Contains(t, res.Error, "stop hook")
		assert.Equal(t, 0, res.ExitCode, "the last command's exit code")
	})
	t.Run("start only", func(t *testing.T) {
		require.NoError(t, os.RemoveAll(log))
		s := &activities.Services{Hooks: oneService(config.Service{
			Start: &config.HookAction{Argv: []string{start}, Timeout: 10 * time.Second, OnError: "fail"},
		})}
		res, err := runHook(t, s, activities.HookInput{Service: "controller", Action: "restart"})
		require.NoError(t, err)
		assert.Equal(t, []string{"start"}, lines())
		assert.Equal(t, "no restart hook: ran start", res.Note)
	})
}

func TestRunHookNotConfigured(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "ran")
	script := hookScript(t, dir, "health.sh", "touch "+marker+"\n")
	s := &activities.Services{Hooks: oneService(config.Service{
		Health: &config.HookAction{Argv: []string{script}, Timeout: 10 * time.Second, OnError: "fail"},
	})}
	for _, action := range []string{"stop", "start", "restart"} {
		res, err := runHook(t, s, activities.HookInput{Service: "controller", Action: action})
		require.NoError(t, err, action)
		assert.False(t, res.Configured, action)
		assert.Empty(t, res.Ran, action)
		assert.Contains(t, res.Note, `service "controller" has no `+action+" hook", action)
	}
	assert.NoFileExists(t, marker, "nothing ran")

	res, err := runHook(t, &activities.Services{}, activities.HookInput{Service: "controller", Action: "restart"})
	require.NoError(t, err, "no hooks file: every action is not configured")
	assert.False(t, res.Configured)
	assert.Contains(t, res.Note, "DRFLOW_HOOKS_FILE is not set")
}

func TestRunHookBadInput(t *testing.T) {
	hooks := config.Hooks{Services: []config.Service{
		{Name: "controller", Stop: &config.HookAction{Argv: []string{"true"}}},
		{Name: "dispatcher", Stop: &config.HookAction{Argv: []string{"true"}}},
	}}
	s := &activities.Services{Hooks: hooks}

	_, err := runHook(t, s, activities.HookInput{Service: "controler", Action: "stop"})
	app := hookAppError(t, err, activities.ErrUnknownTarget, true)
	assert.Contains(t, app.Error(), `unknown service "controler" (configured in DRFLOW_HOOKS_FILE: controller, dispatcher)`)

	_, err = runHook(t, s, activities.HookInput{Service: "controller", Action: "reload"})
	app = hookAppError(t, err, activities.ErrInvalidInput, true)
	assert.Contains(t, app.Error(), `unknown action "reload" for service "controller" (want stop, start, restart or health)`)

	_, err = runHook(t, &activities.Services{}, activities.HookInput{Service: "controller", Action: ""})
	hookAppError(t, err, activities.ErrInvalidInput, true)
}

func TestRunHookMissingExecutable(t *testing.T) {
	for _, argv0 := range []string{"drflow-no-such-program", filepath.Join(t.TempDir(), "missing.sh")} {
		t.Run(filepath.Base(argv0), func(t *testing.T) {
			s := &activities.Services{Hooks: oneService(config.Service{
				Start: &config.HookAction{Argv: []string{argv0}, Timeout: 10 * time.Second, OnError: "fail"},
			})}
			_, err := runHook(t, s, activities.HookInput{Service: "controller", Action: "start"})
			app := hookAppError(t, err, activities.ErrHookFailed, true)
			assert.Contains(t, app.Error(), `service "controller": start hook: exec `+argv0)
			assert.Contains(t, app.Error(), "check argv[0] in DRFLOW_HOOKS_FILE")
		})
	}
}

// TestRunHookEnvironment: hook commands do not see drflow's credentials.
func TestRunHookEnvironment(t *testing.T) {
	t.Setenv("DRFLOW_REDIS_PASSWORD", "redis-password-in-env")
	t.Setenv("S3_SECRET_ACCESS_KEY", "s3-secret-in-env")
	t.Setenv("DRFLOW_HOOK_TEST_PLAIN", "plain-value")
	dir := t.TempDir()
	out := filepath.Join(dir, "env")
	script := hookScript(t, dir, "env.sh", "env > "+out+"\n")
	s := &activities.Services{Hooks: oneService(config.Service{
		Health: &config.HookAction{Argv: []string{script}, Timeout: 10 * time.Second, OnError: "fail"},
	})}
	_, err := runHook(t, s, activities.HookInput{Service: "controller", Action: "health"})
	require.NoError(t, err)
	got, err := os.ReadFile(out)
	require.NoError(t, err)
	assert.Contains(t, string(got), "DRFLOW_HOOK_TEST_PLAIN=plain-value")
	assert.NotContains(t, string(got), "redis-password-in-env")
	assert.NotContains(t, string(got), "s3-secret-in-env")
}

func TestServicesRestartOrder(t *testing.T) {
	act := &config.HookAction{Argv: []string{"true"}, Timeout: time.Minute, OnError: "fail"}
	s := &activities.Services{Hooks: config.Hooks{
		Services: []config.Service{
			{Name: "controller", Restart: act, Health: act},
			{Name: "redis", Stop: act, Start: act, TaskQueue: "drflow-redis-host"},
			{Name: "dispatcher", Restart: act},
			{Name: "monitor", Health: act},
		},
		RestartOrder: []config.RestartStep{
			{Service: "controller", Reason: "owns tasks_task; the dispatcher reads it"},
			{Service: "dispatcher", Reason: "assigns pending tasks"},
			{Service: "redis", Reason: "rebuilt last"},
			{Service: "monitor", Reason: "only checked"},
		},
	}}
	var suite testsuite.WorkflowTestSuite
	env := suite.NewTestActivityEnvironment()
	env.RegisterActivity(s)
	v, err := env.ExecuteActivity(s.RestartOrder)
	require.NoError(t, err)
	var got []activities.PlannedRestart
	require.NoError(t, v.Get(&got))
	assert.Equal(t, []activities.PlannedRestart{
		{Service: "controller", Reason: "owns tasks_task; the dispatcher reads it", Actions: []string{"restart", "health"}},
		{Service: "dispatcher", Reason: "assigns pending tasks", Actions: []string{"restart"}},
		{Service: "redis", Reason: "rebuilt last", Actions: []string{"stop", "start"}, TaskQueue: "drflow-redis-host"},
		{Service: "monitor", Reason: "only checked", Actions: []string{"health"}},
	}, got)

	empty := &activities.Services{}
	env = suite.NewTestActivityEnvironment()
	env.RegisterActivity(empty)
	v, err = env.ExecuteActivity(empty.RestartOrder)
	require.NoError(t, err)
	got = nil
	require.NoError(t, v.Get(&got))
	assert.Empty(t, got, "no hooks: nothing to restart")
}
