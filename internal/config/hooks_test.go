package config

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// loadHooks loads a config whose DRFLOW_HOOKS_FILE holds content.
func loadHooks(t *testing.T, content string) (string, *Config, error) {
	t.Helper()
	path := writeFile(t, "hooks.yaml", content)
	c, err := Load("", env(map[string]string{"DRFLOW_HOOKS_FILE": path}))
	return path, c, err
}

func TestHooksFileValid(t *testing.T) {
	path, c, err := loadHooks(t, `
services:
  controller:
    stop:    {argv: [systemctl, stop, kohakku-controller], timeout: 60s}
    restart: {argv: [systemctl, restart, kohakku-controller], healthUrl: "http://127.0.0.1:8000/healthz", timeout: 2m, onError: fail}
    health:  {healthUrl: "https://controller.internal/healthz", timeout: ~}
  redis:
    taskQueue: drflow-redis-host
    start:
      argv:
        - /usr/bin/systemctl
        - start
        - ""
        - 6379
      onError: continue
  monitor:
    start: &mon {argv: [systemctl, start, kohakku-monitor], timeout: 1h}
    health: *mon
restartOrder:
  - {service: redis, reason: "the dispatcher's queue"}
  - service: controller
    reason: owns tasks_task
`)
	require.NoError(t, err)
	mon := &HookAction{Argv: []string{"systemctl", "start", "kohakku-monitor"}, Timeout: time.Hour, OnError: "fail"}
	want := Services{HooksFile: path, Hooks: Hooks{
		Services: []Service{
			{
				Name: "controller",
				Stop: &HookAction{Argv: []string{"systemctl", "stop", "kohakku-controller"}, Timeout: time.Minute, OnError: "fail"},
				Restart: &HookAction{Argv: []string{"systemctl", "restart", "kohakku-controller"}, HealthURL: "http://127.0.0.1:8000/healthz",
					Timeout: 2 * time.Minute, OnError: "fail"},
				Health: &HookAction{HealthURL: "https://controller.internal/healthz", Timeout: DefaultHookTimeout, OnError: "fail"},
			},
			{
				Name:      "redis",
				TaskQueue: "drflow-redis-host",
				Start:     &HookAction{Argv: []string{"/usr/bin/systemctl", "start", "", "6379"}, Timeout: 60 * time.Second, OnError: "continue"},
			},
			{Name: "monitor", Start: mon, Health: mon},
		},
		RestartOrder: []RestartStep{
			{Service: "redis", Reason: "the dispatcher's queue"},
			{Service: "controller", Reason: "owns tasks_task"},
		},
	}}
	assert.Equal(t, want, c.Services)

	h := c.Services.Hooks
	assert.Equal(t, []string{"controller", "redis", "monitor"}, h.Names(), "file order")
	s, ok := h.Service("controller")
	require.True(t, ok)
	assert.Equal(t, []string{"stop", "restart", "health"}, s.Actions())
	assert.Same(t, s.Restart, s.Action(HookRestart))
	assert.Nil(t, s.Action(HookStart))
	assert.Nil(t, s.Action("reload"), "not an action")
	_, ok = h.Service("dispatcher")
	assert.False(t, ok)

	j, err := json.Marshal(c.Services)
	require.NoError(t, err)
	assert.Contains(t, string(j), `"argv":["systemctl","stop","kohakku-controller"]`)
	assert.Contains(t, string(j), `"restartOrder":[{"service":"redis","reason":"the dispatcher's queue"}`)
}

func TestHooksUnset(t *testing.T) {
	c, err := Load("", env(nil))
	require.NoError(t, err)
	assert.Equal(t, Services{}, c.Services)
	_, ok := c.Services.Hooks.Service("controller")
	assert.False(t, ok, "no hooks file: no service")
	assert.Empty(t, c.Services.Hooks.Names())
}

// TestHooksFileProblems checks the message of every validation rule: it
// names the file, line and field, says what is wrong and shows a valid value.
func TestHooksFileProblems(t *testing.T) {
	const ctl = "services:\n  controller:\n"
	tests := []struct {
		name, yaml string
		want       []string
	}{
		{"empty file", "# nothing yet\n", []string{
			`FILE: the file defines no services (want e.g. services: {controller: {restart: {argv: [systemctl, restart, kohakku-controller], healthUrl: "http://127.0.0.1:8000/healthz", timeout: 2m}}})`,
		}},
		{"no services", "restartOrder: []\nservices: {}\n", []string{
			`FILE:1: the file defines no services (want e.g. services: {controller: {restart: {argv: [systemctl, restart, kohakku-controller], healthUrl: "http://127.0.0.1:8000/healthz", timeout: 2m}}})`,
		}},
		{"not a mapping", "- controller\n", []string{
			`FILE:1: want a mapping with the keys services and restartOrder (e.g. services: {controller: {restart: {argv: [systemctl, restart, kohakku-controller], healthUrl: "http://127.0.0.1:8000/healthz", timeout: 2m}}})`,
		}},
		{"unknown keys", "service:\n  x: 1\n" + ctl + "    reload: {argv: [x]}\n    stop: {argv: [x], timout: 5s}\n", []string{
			`FILE:1: unknown key "service" (known keys in the top level: services, restartOrder)`,
			`FILE:5: unknown key "services.controller.reload" (known keys in services.controller: stop, start, restart, health, taskQueue)`,
			`FILE:6: unknown key "services.controller.stop.timout" (known keys in services.controller.stop: argv, healthUrl, timeout, onError)`,
		}},
		{"repeated key", ctl + "    stop: {argv: [a]}\n    stop: {argv: [b]}\n", []string{
			`FILE:4: services.controller.stop: given twice (first on line 3); give each key once`,
		}},
		{"service names", "services:\n  Controller: {stop: {argv: [x]}}\n  ctl_2: {stop: {argv: [x]}}\n  ok: {stop: {argv: [x]}}\n  ok: {stop: {argv: [y]}}\n", []string{
			`FILE:2: services: "Controller" is not a valid service name: use lowercase letters, digits and hyphens (want e.g. controller)`,
			`FILE:3: services: "ctl_2" is not a valid service name: use lowercase letters, digits and hyphens (want e.g. controller)`,
			`FILE:5: services.ok: defined twice (first on line 4); define each service once`,
		}},
		{"service without actions", "services:\n  controller:\n  monitor: {taskQueue: q}\n  redis: [stop]\n", []string{
			`FILE:2: services.controller: has no actions: define at least one of stop, start, restart, health (want e.g. controller: {restart: {argv: [systemctl, restart, kohakku-controller], healthUrl: "http://127.0.0.1:8000/healthz", timeout: 2m}})`,
			`FILE:3: services.monitor: has no actions: define at least one of stop, start, restart, health (want e.g. monitor: {restart: {argv: [systemctl, restart, kohakku-controller], healthUrl: "http://127.0.0.1:8000/healthz", timeout: 2m}})`,
			`FILE:4: services.redis: want a mapping of actions (e.g. redis: {restart: {argv: [systemctl, restart, kohakku-controller], healthUrl: "http://127.0.0.1:8000/healthz", timeout: 2m}})`,
		}},
		{"action needs argv or healthUrl", ctl + "    start: {timeout: 5s}\n    stop: systemctl stop x\n", []string{
			`FILE:3: services.controller.start: has neither argv nor healthUrl: give a command, a health URL or both (want e.g. start: {argv: [systemctl, start, kohakku-controller], healthUrl: "http://127.0.0.1:8000/healthz", timeout: 2m})`,
			`FILE:4: services.controller.stop: want a mapping with argv and/or healthUrl (e.g. stop: {argv: [systemctl, stop, kohakku-controller], timeout: 60s})`,
		}},
		{"argv", ctl + "    stop: {argv: systemctl stop x}\n    start: {argv: []}\n    restart: {argv: ['', x]}\n    health: {argv: [a, [b]]}\n", []string{
			`FILE:3: services.controller.stop.argv: want a list of strings, the program and its arguments, run without a shell (e.g. [systemctl, restart, kohakku-controller])`,
			`FILE:4: services.controller.start.argv: is empty: want the program and its arguments (e.g. [systemctl, restart, kohakku-controller])`,
			`FILE:5: services.controller.restart.argv[0]: the program is empty: want its name or path (e.g. [systemctl, restart, kohakku-controller])`,
			`FILE:6: services.controller.health.argv[1]: want a string, not a list or mapping (e.g. [systemctl, restart, kohakku-controller])`,
		}},
		{"healthUrl", ctl + "    start: {healthUrl: \"127.0.0.1:8000/healthz\"}\n    restart: {healthUrl: \"ftp://h/x\"}\n" +
			"    health: {healthUrl: \"http:///healthz\"}\n  monitor:\n    health: {healthUrl: \"http://ops:hunter2@m/healthz\"}\n    stop: {argv: [x], healthUrl: \"http://m/healthz\"}\n", []string{
			`FILE:3: services.controller.start.healthUrl: "127.0.0.1:8000/healthz" is not a valid URL (want e.g. http://127.0.0.1:8000/healthz)`,
			`FILE:4: services.controller.restart.healthUrl: "ftp://h/x" is not an http or https URL (want e.g. http://127.0.0.1:8000/healthz)`,
			`FILE:5: services.controller.health.healthUrl: "http:///healthz" has no host (want e.g. http://127.0.0.1:8000/healthz)`,
			`FILE:7: services.monitor.health.healthUrl: holds credentials; the value is not shown; hooks appear in plans and workflow histories, so a health URL must not carry secrets (want e.g. http://127.0.0.1:8000/healthz)`,
			`FILE:8: services.monitor.stop.healthUrl: a stop action cannot wait for a health URL, which a stopped service does not answer with 2xx; remove it (want e.g. stop: {argv: [systemctl, stop, kohakku-controller], timeout: 60s})`,
		}},
		{"timeout", ctl + "    stop: {argv: [x], timeout: 90}\n    start: {argv: [x], timeout: 0s}\n    restart: {argv: [x], timeout: 2h}\n    health: {argv: [x], timeout: [1s]}\n", []string{
			`FILE:3: services.controller.stop.timeout: "90" is not a Go duration (want e.g. 60s or 2m, at most 1h)`,
			`FILE:4: services.controller.start.timeout: "0s" is not more than 0 (want e.g. 60s or 2m, at most 1h)`,
			`FILE:5: services.controller.restart.timeout: "2h" is more than 1h (want e.g. 60s or 2m, at most 1h)`,
			`FILE:6: services.controller.health.timeout: want a single value, not a list or mapping (e.g. 60s)`,
		}},
		{"onError", ctl + "    stop: {argv: [x], onError: ignore}\n", []string{
			`FILE:3: services.controller.stop.onError: "ignore" is not fail or continue (want e.g. onError: fail to stop the runbook, continue to record the failure and go on)`,
		}},
		{"taskQueue", ctl + "    stop: {argv: [x]}\n    taskQueue: redis host\n", []string{
			`FILE:4: services.controller.taskQueue: task queue name "redis host" has a space or control character (want e.g. drflow-redis-host, or leave it out for the shared queue)`,
		}},
		{"restartOrder", ctl + "    stop: {argv: [x]}\n  monitor:\n    stop: {argv: [x]}\n  redis: {stop: {argv: [x]}}\nrestartOrder:\n" +
			"  - {service: controller, reason: first}\n" +
			"  - {service: dispatcher, reason: second}\n" +
			"  - {service: controller, reason: again}\n" +
			"  - {service: monitor}\n" +
			"  - {reason: orphan}\n" +
			"  - monitor\n" +
			"  - {service: redis, reason: x, after: controller}\n", []string{
			`FILE:9: restartOrder[1].service: "dispatcher" is not a service defined under services (defined: controller, monitor, redis)`,
			`FILE:10: restartOrder[2].service: "controller" is listed twice (first at restartOrder[0]); each service restarts once`,
			`FILE:11: restartOrder[3]: has no reason: say why the service restarts at this point (want e.g. - {service: controller, reason: "owns tasks_task; the dispatcher reads it"})`,
			`FILE:12: restartOrder[4]: has no service (want e.g. - {service: controller, reason: "owns tasks_task; the dispatcher reads it"})`,
			`FILE:13: restartOrder[5]: want a {service, reason} entry (e.g. - {service: controller, reason: "owns tasks_task; the dispatcher reads it"})`,
			`FILE:14: unknown key "restartOrder[6].after" (known keys in restartOrder[6]: service, reason)`,
		}},
		{"restartOrder not a list", ctl + "    stop: {argv: [x]}\nrestartOrder: {controller: first}\n", []string{
			`FILE:4: restartOrder: want a list of {service, reason} entries (e.g. - {service: controller, reason: "owns tasks_task; the dispatcher reads it"})`,
		}},
		{"a broken service is still defined for restartOrder", ctl + "    stop: {argv: [x], timeout: soon}\nrestartOrder:\n  - {service: controller, reason: r}\n", []string{
			`FILE:3: services.controller.stop.timeout: "soon" is not a Go duration (want e.g. 60s or 2m, at most 1h)`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path, c, err := loadHooks(t, tt.yaml)
			assert.Nil(t, c)
			var want []string
			for _, w := range tt.want {
				want = append(want, "DRFLOW_HOOKS_FILE: "+strings.ReplaceAll(w, "FILE", path))
			}
			assert.Equal(t, want, errs(err))
			assert.NotContains(t, err.Error(), "hunter2", "credentials are never echoed")
		})
	}

	t.Run("syntax error", func(t *testing.T) {
		path, _, err := loadHooks(t, "services: [\n")
		assert.Equal(t, []string{"DRFLOW_HOOKS_FILE: " + path + ": yaml: line 1: did not find expected node content"}, errs(err))
	})
	t.Run("collected with the other problems", func(t *testing.T) {
		path := writeFile(t, "hooks.yaml", ctl+"    stop: {argv: [x], onError: maybe}\n    start: {argv: [x], timeout: 1y}\n")
		_, err := Load("", env(map[string]string{"DRFLOW_HOOKS_FILE": path, "DRFLOW_LOG_LEVEL": "loud"}))
		assert.Equal(t, []string{
			`DRFLOW_LOG_LEVEL: "loud" is not a log level (want debug, info, warn or error)`,
			`DRFLOW_HOOKS_FILE: ` + path + `:3: services.controller.stop.onError: "maybe" is not fail or continue (want e.g. onError: fail to stop the runbook, continue to record the failure and go on)`,
			`DRFLOW_HOOKS_FILE: ` + path + `:4: services.controller.start.timeout: "1y" is not a Go duration (want e.g. 60s or 2m, at most 1h)`,
		}, errs(err))
	})
}

// TestHooksFileFromConfigFile: services.hooksFile in the drflow file, with
// its problems labelled by both files.
func TestHooksFileFromConfigFile(t *testing.T) {
	hooks := writeFile(t, "hooks.yaml", "services:\n  monitor:\n    stop: {argv: [systemctl, stop, kohakku-monitor]}\n")
	conf := writeFile(t, "drflow.yaml", "worker:\n  hostQueues: [drflow-redis-host]\nservices:\n  hooksFile: "+hooks+"\n")
	c, err := Load(conf, env(nil))
	require.NoError(t, err)
	assert.Equal(t, hooks, c.Services.HooksFile)
	assert.Equal(t, []string{"monitor"}, c.Services.Hooks.Names())
	assert.Equal(t, []string{"drflow-redis-host"}, c.Worker.HostQueues)

	bad := writeFile(t, "bad-hooks.yaml", "services:\n  monitor:\n    stop: {argv: [x], onError: never}\n")
	c, err = Load(conf, env(map[string]string{"DRFLOW_HOOKS_FILE": bad}))
	assert.Nil(t, c)
	assert.Equal(t, []string{
		`DRFLOW_HOOKS_FILE: ` + bad + `:3: services.monitor.stop.onError: "never" is not fail or continue (want e.g. onError: fail to stop the runbook, continue to record the failure and go on)`,
	}, errs(err), "the environment's file replaces the drflow file's")

	conf = writeFile(t, "drflow.yaml", "services:\n  hooksFile: "+bad+"\n  hooks: {}\n")
	_, err = Load(conf, env(nil))
	assert.Equal(t, []string{
		conf + `:3: unknown key "services.hooks" (known keys in services: hooksFile)`,
		conf + `:2: services.hooksFile: ` + bad + `:3: services.monitor.stop.onError: "never" is not fail or continue (want e.g. onError: fail to stop the runbook, continue to record the failure and go on)`,
	}, errs(err))

	c = Defaults()
	require.NoError(t, c.Set("services.hooksFile", hooks), "flags use Set")
	assert.Equal(t, []string{"monitor"}, c.Services.Hooks.Names())
}

// TestDocumentedHooksExample loads the hooks file example of
// docs/configuration.md: controller, dispatcher, monitor and redis.
func TestDocumentedHooksExample(t *testing.T) {
	doc, err := os.ReadFile("../../docs/configuration.md")
	require.NoError(t, err)
	var example string
	for _, block := range strings.Split(string(doc), "```yaml\n")[1:] {
		block, _, _ = strings.Cut(block, "```")
		if strings.Contains(block, "restartOrder:") {
			example = block
		}
	}
	require.NotEmpty(t, example, "the doc has a hooks file example")
	_, c, err := loadHooks(t, example)
	require.NoError(t, err)
	h := c.Services.Hooks
	assert.Equal(t, []string{"controller", "dispatcher", "monitor", "redis"}, h.Names())
	assert.Equal(t, []RestartStep{
		{Service: "controller", Reason: "owns tasks_task; the dispatcher reads it"},
		{Service: "dispatcher", Reason: "assigns pending tasks to agents once the controller is up"},
		{Service: "monitor", Reason: "times out dead agents; needs the dispatcher's containers"},
	}, h.RestartOrder)
	redis, _ := h.Service("redis")
	assert.Equal(t, "drflow-redis-host", redis.TaskQueue)
	monitor, _ := h.Service("monitor")
	assert.Nil(t, monitor.Restart, "the example shows the stop+start fallback")
	assert.Equal(t, OnErrorContinue, monitor.Stop.OnError)
	for _, s := range h.Services {
		for _, a := range s.Actions() {
			act := s.Action(a)
			assert.Positive(t, act.Timeout, "%s.%s", s.Name, a)
			for _, arg := range act.Argv {
				assert.NotContains(t, strings.ToLower(arg), "token", "no secrets in hooks")
			}
		}
	}
}

func TestSecretVariables(t *testing.T) {
	got := SecretVariables()
	for _, v := range variables {
		assert.Equal(t, v.secret, contains(got, v.env), v.env)
	}
	assert.Subset(t, got, []string{"TEMPORAL_API_KEY", "DRFLOW_POSTGRES_URL", "S3_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY", "PGPASSWORD"})
}

func contains(list []string, s string) bool {
	for _, l := range list {
		if l == s {
			return true
		}
	}
	return false
}
