package config

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Service hooks: how drflow stops, starts, restarts and health-checks the
// application's services (controller, dispatcher, monitor, redis, ...). They
// are read from the YAML file named by DRFLOW_HOOKS_FILE and checked when the
// configuration is loaded; docs/configuration.md describes the format.
//
// Hooks hold no secrets by design: their argv and URLs appear in plans and
// workflow histories. A command that needs a credential reads it from its own
// environment file or systemd credentials.

// The hook actions a service may define, in the order plans list them.
const (
	HookStop    = "stop"
	HookStart   = "start"
	HookRestart = "restart"
	HookHealth  = "health"
)

// The values of HookAction.OnError.
const (
	// OnErrorFail fails the step (and so the runbook) when the action fails.
	OnErrorFail = "fail"
	// OnErrorContinue records the failure in the step's result and goes on.
	OnErrorContinue = "continue"
)

// Bounds of HookAction.Timeout.
const (
	// DefaultHookTimeout is the timeout of an action that names none.
	DefaultHookTimeout = 60 * time.Second
	// MaxHookTimeout is the longest timeout an action may have.
	MaxHookTimeout = time.Hour
)

// HookActions returns the action names a service may define: stop, start,
// restart and health, in that order.
func HookActions() []string { return []string{HookStop, HookStart, HookRestart, HookHealth} }

// Services is the service hooks setting.
type Services struct {
	// HooksFile is the hooks file that Hooks was read from
	// (DRFLOW_HOOKS_FILE); "" when none is configured.
	HooksFile string `json:"hooksFile"`
	// Hooks is the content of HooksFile, checked; empty when HooksFile is "".
	Hooks Hooks `json:"hooks"`
}

// Hooks is a checked service hooks file.
type Hooks struct {
	// Services are the services with hooks, in file order; names are unique.
	Services []Service `json:"services"`
	// RestartOrder is the order in which a recovery restarts services, in
	// file order, with the reason for each place; every entry names one of
	// Services, and each service appears at most once.
	RestartOrder []RestartStep `json:"restartOrder"`
}

// Service looks up a service by name.
func (h Hooks) Service(name string) (Service, bool) {
	for _, s := range h.Services {
		if s.Name == name {
			return s, true
		}
	}
	return Service{}, false
}

// Names returns the names of the services with hooks, in file order.
func (h Hooks) Names() []string {
	names := make([]string, 0, len(h.Services))
	for _, s := range h.Services {
		names = append(names, s.Name)
	}
	return names
}

// Service is one service and the actions configured for it. A nil action is
// not configured.
type Service struct {
	// Name is "controller", "dispatcher", "monitor", "redis" or any other
	// name of lowercase letters, digits and hyphens.
	Name string `json:"name"`
	// Stop stops the service.
	Stop *HookAction `json:"stop,omitempty"`
	// Start starts the service.
	Start *HookAction `json:"start,omitempty"`
	// Restart restarts the service. Without it, a restart runs Stop then
	// Start, whichever of them is configured.
	Restart *HookAction `json:"restart,omitempty"`
	// Health checks that the service is up.
	Health *HookAction `json:"health,omitempty"`
	// TaskQueue is the task queue the service's hooks run on ("" = the shared
	// queue), e.g. the queue of the worker on the service's host, where
	// systemctl can reach it.
	TaskQueue string `json:"taskQueue,omitempty"`
}

// Action returns the action named name (see HookActions), or nil when it is
// not configured or not an action name.
func (s Service) Action(name string) *HookAction {
	switch name {
	case HookStop:
		return s.Stop
	case HookStart:
		return s.Start
	case HookRestart:
		return s.Restart
	case HookHealth:
		return s.Health
	}
	return nil
}

// Actions returns the names of the configured actions, in the order of
// HookActions.
func (s Service) Actions() []string {
	var out []string
	for _, a := range HookActions() {
		if s.Action(a) != nil {
			out = append(out, a)
		}
	}
	return out
}

// HookAction is one action of a service: a command, a health URL, or a
// command and then a health URL. At least one of Argv and HealthURL is set.
type HookAction struct {
	// Argv is the program and its arguments, executed directly (no shell).
	Argv []string `json:"argv,omitempty"`
	// HealthURL is an http(s) URL polled with GET after Argv (if any) until it
	// answers 2xx.
	HealthURL string `json:"healthUrl,omitempty"`
	// Timeout bounds the whole action, command and health polling together:
	// more than 0, at most MaxHookTimeout; DefaultHookTimeout in the file
	// when not given.
	Timeout time.Duration `json:"timeout"`
	// OnError is OnErrorFail (the default) or OnErrorContinue.
	OnError string `json:"onError"`
}

// RestartStep is one entry of the restart order.
type RestartStep struct {
	// Service names a service of Hooks.Services.
	Service string `json:"service"`
	// Reason says why the service restarts at this point; never empty.
	Reason string `json:"reason"`
}

// SecretVariables returns the names of the environment variables that may
// hold credentials: drflow's own secrets and the standard ones its clients
// read. Service hook commands run without them.
func SecretVariables() []string {
	var out []string
	for _, v := range variables {
		if v.secret {
			out = append(out, v.env)
		}
	}
	return append(out, "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "PGPASSWORD")
}

// hooksFile reads and checks the hooks file named by DRFLOW_HOOKS_FILE. Its
// error joins every problem of the file, each naming file:line and field.
func hooksFile(c *Config, _ *variable, raw string) error {
	if strings.ContainsRune(raw, 0) {
		return errors.New("contains a NUL byte")
	}
	h, err := readHooks(raw)
	if err != nil {
		return err
	}
	c.Services = Services{HooksFile: raw, Hooks: h}
	return nil
}

// Examples shown in the hooks file's error messages.
const (
	exampleArgv      = "[systemctl, restart, kohakku-controller]"
	exampleHealthURL = "http://127.0.0.1:8000/healthz"
	exampleService   = `services: {controller: {restart: {argv: [systemctl, restart, kohakku-controller], healthUrl: "http://127.0.0.1:8000/healthz", timeout: 2m}}}`
	exampleStep      = `{service: controller, reason: "owns tasks_task; the dispatcher reads it"}`
)

var exampleAction = map[string]string{
	HookStop:    "{argv: [systemctl, stop, kohakku-controller], timeout: 60s}",
	HookStart:   `{argv: [systemctl, start, kohakku-controller], healthUrl: "http://127.0.0.1:8000/healthz", timeout: 2m}`,
	HookRestart: `{argv: [systemctl, restart, kohakku-controller], healthUrl: "http://127.0.0.1:8000/healthz", timeout: 2m}`,
	HookHealth:  `{healthUrl: "http://127.0.0.1:8000/healthz", timeout: 2m}`,
}

var serviceNameRE = regexp.MustCompile(`^[a-z0-9-]+$`)

// readHooks reads the hooks file at path. An unreadable or unparsable file is
// one error; otherwise every problem is collected and joined.
func readHooks(path string) (Hooks, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Hooks{}, fmt.Errorf("%w (want the path of a service hooks YAML file, e.g. /etc/drflow/hooks.yaml)", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return Hooks{}, fmt.Errorf("%s: %w", path, err)
	}
	p := &hooksParser{path: path}
	h := p.file(&doc)
	if err := errors.Join(p.errs...); err != nil {
		return Hooks{}, err
	}
	return h, nil
}

// hooksParser walks the YAML tree of a hooks file, collecting problems.
type hooksParser struct {
	path string
	errs []error
}

func (p *hooksParser) errorf(n *yaml.Node, field, format string, args ...any) {
	p.errs = append(p.errs, fmt.Errorf("%s:%d: %s: %s", p.path, n.Line, field, fmt.Sprintf(format, args...)))
}

// resolve follows an alias to its anchor.
func resolve(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

// isUnset reports a value left out: null, or an empty scalar.
func isUnset(n *yaml.Node) bool {
	return n == nil || n.Kind == yaml.ScalarNode && (n.Tag == "!!null" || strings.TrimSpace(n.Value) == "")
}

// mapping returns the values of mapping n by key, in a map, reporting unknown
// and repeated keys. section is the field path of n ("" for the top level).
func (p *hooksParser) mapping(n *yaml.Node, section string, known ...string) map[string]*yaml.Node {
	where, prefix := "the top level", ""
	if section != "" {
		where, prefix = section, section+"."
	}
	out := map[string]*yaml.Node{}
	lines := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), resolve(n.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			p.errs = append(p.errs, fmt.Errorf("%s:%d: %s: a key is not a string (known keys: %s)", p.path, k.Line, where, strings.Join(known, ", ")))
			continue
		}
		switch {
		case !slices.Contains(known, k.Value):
			p.errs = append(p.errs, fmt.Errorf("%s:%d: unknown key %q (known keys in %s: %s)", p.path, k.Line, prefix+k.Value, where, strings.Join(known, ", ")))
		case lines[k.Value] != 0:
			p.errs = append(p.errs, fmt.Errorf("%s:%d: %s: given twice (first on line %d); give each key once", p.path, k.Line, prefix+k.Value, lines[k.Value]))
		default:
			out[k.Value], lines[k.Value] = v, k.Line
		}
	}
	return out
}

// scalar returns a single value, trimmed, and false when it is unset or not
// a scalar (which it reports).
func (p *hooksParser) scalar(n *yaml.Node, field, example string) (string, bool) {
	if n.Kind != yaml.ScalarNode {
		p.errorf(n, field, "want a single value, not a list or mapping (e.g. %s)", example)
		return "", false
	}
	if isUnset(n) {
		return "", false
	}
	v := strings.TrimSpace(n.Value)
	if strings.ContainsRune(v, 0) {
		p.errorf(n, field, "contains a NUL byte (want e.g. %s)", example)
		return "", false
	}
	return v, true
}

func (p *hooksParser) file(doc *yaml.Node) Hooks {
	root := doc
	if root.Kind == yaml.DocumentNode && len(root.Content) > 0 {
		root = resolve(root.Content[0])
	}
	if root.Kind == 0 || root.Kind == yaml.DocumentNode || isUnset(root) {
		p.errs = append(p.errs, fmt.Errorf("%s: the file defines no services (want e.g. %s)", p.path, exampleService))
		return Hooks{}
	}
	if root.Kind != yaml.MappingNode {
		p.errs = append(p.errs, fmt.Errorf("%s:%d: want a mapping with the keys services and restartOrder (e.g. %s)", p.path, root.Line, exampleService))
		return Hooks{}
	}
	f := p.mapping(root, "", "services", "restartOrder")
	var h Hooks
	if n := f["services"]; isUnset(n) || n.Kind == yaml.MappingNode && len(n.Content) == 0 {
		p.errs = append(p.errs, fmt.Errorf("%s:%d: the file defines no services (want e.g. %s)", p.path, root.Line, exampleService))
	} else {
		h.Services = p.services(n)
	}
	if n := f["restartOrder"]; !isUnset(n) {
		h.RestartOrder = p.restartOrder(n, h.Services)
	}
	return h
}

func (p *hooksParser) services(n *yaml.Node) []Service {
	if n.Kind != yaml.MappingNode {
		p.errorf(n, "services", "want a mapping from service name to its actions (e.g. %s)", exampleService)
		return nil
	}
	var out []Service
	lines := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), resolve(n.Content[i+1])
		name := k.Value
		field := "services." + name
		switch {
		case k.Kind != yaml.ScalarNode:
			p.errorf(k, "services", "a service name is not a string (want e.g. controller)")
			continue
		case !serviceNameRE.MatchString(name):
			p.errorf(k, "services", "%q is not a valid service name: use lowercase letters, digits and hyphens (want e.g. controller)", name)
			continue
		case lines[name] != 0:
			p.errorf(k, field, "defined twice (first on line %d); define each service once", lines[name])
			continue
		}
		lines[name] = k.Line
		// A service with problems is kept, so that restartOrder does not
		// also report it as undefined; the problems fail the load anyway.
		out = append(out, p.service(v, name))
	}
	return out
}

func (p *hooksParser) service(n *yaml.Node, name string) Service {
	field := "services." + name
	s := Service{Name: name}
	noActions := fmt.Sprintf("has no actions: define at least one of stop, start, restart, health (want e.g. %s: {restart: %s})", name, exampleAction[HookRestart])
	if n.Kind != yaml.MappingNode {
		if isUnset(n) {
			p.errorf(n, field, "%s", noActions)
		} else {
			p.errorf(n, field, "want a mapping of actions (e.g. %s: {restart: %s})", name, exampleAction[HookRestart])
		}
		return s
	}
	before := len(p.errs)
	f := p.mapping(n, field, append(HookActions(), "taskQueue")...)
	// In file order, so that the problems are too.
	for i := 0; i < len(n.Content); i += 2 {
		act, v := n.Content[i].Value, f[n.Content[i].Value]
		if v != resolve(n.Content[i+1]) || act == "taskQueue" || isUnset(v) {
			continue // a repeated key, the queue (below) or an unset action
		}
		a := p.action(v, field+"."+act, act)
		switch act {
		case HookStop:
			s.Stop = a
		case HookStart:
			s.Start = a
		case HookRestart:
			s.Restart = a
		case HookHealth:
			s.Health = a
		}
	}
	if v := f["taskQueue"]; v != nil {
		if q, set := p.scalar(v, field+".taskQueue", "drflow-redis-host"); set {
			if err := checkTaskQueue(q); err != nil {
				p.errorf(v, field+".taskQueue", "%v (want e.g. drflow-redis-host, or leave it out for the shared queue)", err)
			}
			s.TaskQueue = q
		}
	}
	if len(p.errs) == before && len(s.Actions()) == 0 {
		p.errorf(n, field, "%s", noActions)
	}
	return s
}

// action reads one action of a service; name is the action's name.
func (p *hooksParser) action(n *yaml.Node, field, name string) *HookAction {
	example := exampleAction[name]
	if n.Kind != yaml.MappingNode {
		p.errorf(n, field, "want a mapping with argv and/or healthUrl (e.g. %s: %s)", name, example)
		return nil
	}
	before := len(p.errs)
	f := p.mapping(n, field, "argv", "healthUrl", "timeout", "onError")
	a := &HookAction{Timeout: DefaultHookTimeout, OnError: OnErrorFail}
	if v := f["argv"]; !isUnset(v) {
		a.Argv = p.argv(v, field+".argv")
	}
	if v := f["healthUrl"]; v != nil {
		if raw, set := p.scalar(v, field+".healthUrl", exampleHealthURL); set {
			if err := checkHealthURL(raw); err != nil {
				p.errorf(v, field+".healthUrl", "%v (want e.g. %s)", err, exampleHealthURL)
			} else if name == HookStop {
				p.errorf(v, field+".healthUrl", "a stop action cannot wait for a health URL, which a stopped service does not answer with 2xx; "+
					"remove it (want e.g. stop: %s)", exampleAction[HookStop])
			}
			a.HealthURL = raw
		}
	}
	if v := f["timeout"]; v != nil {
		if raw, set := p.scalar(v, field+".timeout", "60s"); set {
			d, err := time.ParseDuration(raw)
			switch {
			case err != nil:
				p.errorf(v, field+".timeout", "%q is not a Go duration (want e.g. 60s or 2m, at most 1h)", raw)
			case d <= 0:
				p.errorf(v, field+".timeout", "%q is not more than 0 (want e.g. 60s or 2m, at most 1h)", raw)
			case d > MaxHookTimeout:
				p.errorf(v, field+".timeout", "%q is more than 1h (want e.g. 60s or 2m, at most 1h)", raw)
			default:
				a.Timeout = d
			}
		}
	}
	if v := f["onError"]; v != nil {
		if raw, set := p.scalar(v, field+".onError", OnErrorFail); set {
			if raw != OnErrorFail && raw != OnErrorContinue {
				p.errorf(v, field+".onError", "%q is not fail or continue (want e.g. onError: fail to stop the runbook, continue to record the failure and go on)", raw)
			}
			a.OnError = raw
		}
	}
	if isUnset(f["argv"]) && a.HealthURL == "" && len(p.errs) == before {
		p.errorf(n, field, "has neither argv nor healthUrl: give a command, a health URL or both (want e.g. %s: %s)", name, example)
	}
	return a
}

func (p *hooksParser) argv(n *yaml.Node, field string) []string {
	if n.Kind != yaml.SequenceNode {
		p.errorf(n, field, "want a list of strings, the program and its arguments, run without a shell (e.g. %s)", exampleArgv)
		return nil
	}
	if len(n.Content) == 0 {
		p.errorf(n, field, "is empty: want the program and its arguments (e.g. %s)", exampleArgv)
		return nil
	}
	argv := make([]string, 0, len(n.Content))
	for i, it := range n.Content {
		it = resolve(it)
		item := fmt.Sprintf("%s[%d]", field, i)
		switch {
		case it.Kind != yaml.ScalarNode:
			p.errorf(it, item, "want a string, not a list or mapping (e.g. %s)", exampleArgv)
			return nil
		case strings.ContainsRune(it.Value, 0):
			p.errorf(it, item, "contains a NUL byte (want e.g. %s)", exampleArgv)
			return nil
		case i == 0 && (it.Tag == "!!null" || strings.TrimSpace(it.Value) == ""):
			p.errorf(it, item, "the program is empty: want its name or path (e.g. %s)", exampleArgv)
			return nil
		}
		argv = append(argv, it.Value)
	}
	return argv
}

func (p *hooksParser) restartOrder(n *yaml.Node, services []Service) []RestartStep {
	if n.Kind != yaml.SequenceNode {
		p.errorf(n, "restartOrder", "want a list of {service, reason} entries (e.g. - %s)", exampleStep)
		return nil
	}
	var defined []string
	for _, s := range services {
		defined = append(defined, s.Name)
	}
	var out []RestartStep
	first := map[string]int{}
	for i, e := range n.Content {
		e = resolve(e)
		field := fmt.Sprintf("restartOrder[%d]", i)
		if e.Kind != yaml.MappingNode {
			p.errorf(e, field, "want a {service, reason} entry (e.g. - %s)", exampleStep)
			continue
		}
		f := p.mapping(e, field, "service", "reason")
		var step RestartStep
		svc, reason := f["service"], f["reason"]
		if svc != nil {
			step.Service, _ = p.scalar(svc, field+".service", "controller")
		}
		if reason != nil {
			step.Reason, _ = p.scalar(reason, field+".reason", `"owns tasks_task; the dispatcher reads it"`)
		}
		switch {
		case step.Service == "" && isUnset(svc):
			p.errorf(e, field, "has no service (want e.g. - %s)", exampleStep)
		case step.Service == "":
		case !slices.Contains(defined, step.Service):
			p.errorf(svc, field+".service", "%q is not a service defined under services (defined: %s)", step.Service, strings.Join(defined, ", "))
		case first[step.Service] != 0:
			p.errorf(svc, field+".service", "%q is listed twice (first at restartOrder[%d]); each service restarts once", step.Service, first[step.Service]-1)
		default:
			first[step.Service] = i + 1
		}
		if step.Reason == "" && isUnset(reason) {
			p.errorf(e, field, "has no reason: say why the service restarts at this point (want e.g. - %s)", exampleStep)
		}
		out = append(out, step)
	}
	return out
}

// checkHealthURL accepts an http(s) URL with a host and without credentials.
// Its errors do not quote a URL that holds credentials.
func checkHealthURL(raw string) error {
	u, err := url.Parse(raw)
	switch {
	case err == nil && u.User != nil:
		return errors.New("holds credentials; the value is not shown; hooks appear in plans and workflow histories, so a health URL must not carry secrets")
	case err != nil && strings.Contains(raw, "@"):
		return errors.New("is not a valid URL; the value is not shown as it may hold credentials")
	case err != nil:
		return fmt.Errorf("%q is not a valid URL", raw)
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("%q is not an http or https URL", raw)
	case u.Host == "" || u.Hostname() == "":
		return fmt.Errorf("%q has no host", raw)
	}
	return nil
}
