package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	commonpb "go.temporal.io/api/common/v1"
	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/api/temporalproto"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	tlog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/kohakku/drflow/internal/app"
	"github.com/kohakku/drflow/internal/config"
	"github.com/kohakku/drflow/internal/stack"
	"github.com/kohakku/drflow/internal/stack/stacktest"
	"github.com/kohakku/drflow/workflows"
)

// The secrets guard. Every env of this package (newEnvWith) gets one: the configured
// credentials are real, random values (postgresURLWithPassword puts a password into
// DRFLOW_POSTGRES_URL, which the stack's trust authentication ignores; the MinIO keys are
// random per stack), and when the test ends the guard exports the full history of every
// workflow execution in the env's Temporal namespace — closed and running, children and
// continued-as-new runs — as JSON, describes each execution (pending activities'
// heartbeat details) and scans all of it, and the worker's log, for every configured
// secret. A hit fails the test naming the workflow, the event and the secret's variable;
// the value itself is never printed. TestSecretsGuardCatchesPlantedSecrets proves the
// guard fails when a secret does leak.

// minSecretLen is the shortest value scanned for: shorter ones would match by chance.
const minSecretLen = 8

// maxLeakReports caps the errors one guard reports; the rest are counted.
const maxLeakReports = 20

// secret is one configured credential and the variable that configures it.
type secret struct {
	name  string // the variable, e.g. "S3_SECRET_ACCESS_KEY"
	value string
}

// secretNames maps the JSON paths of config's credential fields to their variables.
// config.Secret fields not listed here are scanned too, named by their path.
var secretNames = map[string]string{
	"temporal.apiKey":            "TEMPORAL_API_KEY",
	"temporal.tls.clientKeyData": "TEMPORAL_TLS_CLIENT_KEY_DATA",
	"postgres.password":          "DRFLOW_POSTGRES_URL (password)",
	"redis.password":             "DRFLOW_REDIS_PASSWORD",
	"minio.secretKey":            "DRFLOW_MINIO_SECRET_KEY",
	"backup.secretAccessKey":     "S3_SECRET_ACCESS_KEY",
	// Not Secret in config, but half of a credential pair: kept out of histories too.
	"minio.accessKey":    "DRFLOW_MINIO_ACCESS_KEY",
	"backup.accessKeyId": "S3_ACCESS_KEY_ID",
}

// configSecrets returns every credential in cfg: each config.Secret field (found by
// reflection, so a new one is covered without editing this file), the two access key
// ids, and anything else cfg.Secrets() reports.
func configSecrets(cfg *config.Config) []secret {
	var out []secret
	seen := map[string]bool{}
	add := func(name, value string) {
		if value != "" && !seen[value] {
			seen[value] = true
			out = append(out, secret{name, value})
		}
	}
	secretType := reflect.TypeFor[config.Secret]()
	var walk func(v reflect.Value, path string)
	walk = func(v reflect.Value, path string) {
		switch {
		case v.Type() == secretType:
			name := secretNames[path]
			if name == "" {
				name = path
			}
			add(name, v.String())
		case v.Kind() == reflect.String:
			if name, ok := secretNames[path]; ok {
				add(name, v.String())
			}
		case v.Kind() == reflect.Pointer && !v.IsNil():
			walk(v.Elem(), path)
		case v.Kind() == reflect.Slice || v.Kind() == reflect.Array:
			for i := range v.Len() {
				walk(v.Index(i), path+"["+strconv.Itoa(i)+"]")
			}
		case v.Kind() == reflect.Map:
			for it := v.MapRange(); it.Next(); {
				walk(it.Value(), path+"["+fmt.Sprint(it.Key())+"]")
			}
		case v.Kind() == reflect.Struct:
			for i := range v.NumField() {
				f := v.Type().Field(i)
				if !f.IsExported() {
					continue
				}
				key, _, _ := strings.Cut(f.Tag.Get("json"), ",")
				if key == "" {
					key = f.Name
				}
				if path != "" {
					key = path + "." + key
				}
				walk(v.Field(i), key)
			}
		}
	}
	walk(reflect.ValueOf(cfg).Elem(), "")
	for _, v := range cfg.Secrets() {
		add("config.Secrets()", v)
	}
	return out
}

// varsSecrets is configSecrets of the configuration that vars give.
func varsSecrets(vars map[string]string) ([]secret, error) {
	cfg, err := config.Load("", func(k string) string { return vars[k] })
	if err != nil {
		return nil, err
	}
	return configSecrets(cfg), nil
}

// Every configuration stackEnv builds is remembered under its Temporal address, so the
// guard of that Temporal also scans for the secrets of the extra workers a test starts
// (e.g. a deliberately wrong S3_SECRET_ACCESS_KEY).
var rememberedVars = struct {
	sync.Mutex
	byTemporal map[string][]map[string]string
}{byTemporal: map[string][]map[string]string{}}

// rememberSecrets records vars for the guard of vars["TEMPORAL_ADDRESS"] and returns vars.
func rememberSecrets(vars map[string]string) map[string]string {
	rememberedVars.Lock()
	defer rememberedVars.Unlock()
	addr := vars["TEMPORAL_ADDRESS"]
	rememberedVars.byTemporal[addr] = append(rememberedVars.byTemporal[addr], vars)
	return vars
}

// postgresPasswords holds the password postgresURLWithPassword gave each stack's
// PostgreSQL, so every configuration of one test carries the same one.
var postgresPasswords sync.Map // *stack.Postgres → string

// postgresURLWithPassword is st's PostgreSQL server URL with a random password in it.
// The stack trusts every local connection, so the password is never checked — but
// drflow must never print it.
func postgresURLWithPassword(st *stack.Stack) string {
	pw, _ := postgresPasswords.LoadOrStore(st.Postgres, "pgpw"+randomAlnum(24))
	u, err := url.Parse(st.Postgres.URL(""))
	if err != nil {
		panic(err) // the stack's own URL
	}
	u.User = url.UserPassword(u.User.Username(), pw.(string))
	return u.String()
}

func randomAlnum(n int) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	b := make([]byte, n)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

// scanner finds secrets in text, in every form a message may carry them.
type scanner struct {
	secrets []secret
	forms   [][]string // forms[i]: the forms of secrets[i]
	short   []string   // names of secrets too short to scan
}

func newScanner(secrets []secret) *scanner {
	s := &scanner{}
	for _, sec := range secrets {
		if len(sec.value) < minSecretLen {
			s.short = append(s.short, sec.name)
			continue
		}
		s.secrets = append(s.secrets, sec)
		s.forms = append(s.forms, secretForms(sec.value))
	}
	return s
}

// secretForms returns v as is, escaped as in a JSON string and escaped as in a URL.
func secretForms(v string) []string {
	forms := []string{v}
	j, _ := json.Marshal(v)
	for _, f := range []string{string(j[1 : len(j)-1]), url.QueryEscape(v), url.PathEscape(v),
		strings.TrimPrefix(url.UserPassword("", v).String(), ":")} {
		if !slices.Contains(forms, f) {
			forms = append(forms, f)
		}
	}
	return forms
}

// find returns the indexes of the secrets b holds.
func (s *scanner) find(b []byte) []int {
	var hits []int
	for i, forms := range s.forms {
		for _, f := range forms {
			if bytes.Contains(b, []byte(f)) {
				hits = append(hits, i)
				break
			}
		}
	}
	return hits
}

// excerpt returns up to 160 characters of b around the first secret, every secret
// replaced by <its variable>, quoted: safe to print.
func (s *scanner) excerpt(b []byte) string {
	text := string(b)
	for i, forms := range s.forms {
		for _, f := range forms {
			text = strings.ReplaceAll(text, f, "<"+s.secrets[i].name+">")
		}
	}
	at := strings.Index(text, "<")
	for _, sec := range s.secrets {
		if i := strings.Index(text, "<"+sec.name+">"); i >= 0 {
			at = i
			break
		}
	}
	start, end := max(0, at-80), min(len(text), at+80)
	return strconv.Quote(text[start:end])
}

// leak is one place a secret was found.
type leak struct {
	where   string // "workflow X run Y event 5 ActivityTaskFailed", "in-process worker log line 12"
	field   string // the proto field path, "" for logs
	secret  string // the variable name
	excerpt string // scrubbed
}

func (l leak) String() string {
	s := l.where
	if l.field != "" {
		s += " field " + l.field
	}
	return fmt.Sprintf("%s holds %s: %s", s, l.secret, l.excerpt)
}

// scanProto walks every string and bytes field of m (payload data included, which the
// JSON export shows base64-encoded unless it is JSON) and reports the secrets found,
// each with the path of the field.
func (s *scanner) scanProto(m proto.Message, where string) []leak {
	var out []leak
	var walk func(m protoreflect.Message, path string)
	visit := func(path string, b []byte) {
		for _, i := range s.find(b) {
			out = append(out, leak{where: where, field: path, secret: s.secrets[i].name, excerpt: s.excerpt(b)})
		}
	}
	value := func(fd protoreflect.FieldDescriptor, v protoreflect.Value, path string) {
		switch fd.Kind() {
		case protoreflect.MessageKind, protoreflect.GroupKind:
			walk(v.Message(), path)
		case protoreflect.StringKind:
			visit(path, []byte(v.String()))
		case protoreflect.BytesKind:
			visit(path, v.Bytes())
		}
	}
	walk = func(m protoreflect.Message, path string) {
		m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			p := string(fd.Name())
			if path != "" {
				p = path + "." + p
			}
			switch {
			case fd.IsList():
				for i, l := 0, v.List(); i < l.Len(); i++ {
					value(fd, l.Get(i), p+"["+strconv.Itoa(i)+"]")
				}
			case fd.IsMap():
				v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
					kp := p + "[" + k.String() + "]"
					visit(kp, []byte(k.String()))
					value(fd.MapValue(), mv, kp)
					return true
				})
			default:
				value(fd, v, p)
			}
			return true
		})
	}
	walk(m.ProtoReflect(), "")
	return out
}

// scanLog reports the lines of a log that hold a secret.
func (s *scanner) scanLog(name string, log []byte) []leak {
	var out []leak
	for n, line := range bytes.Split(log, []byte("\n")) {
		for _, i := range s.find(line) {
			out = append(out, leak{where: fmt.Sprintf("%s line %d", name, n+1), secret: s.secrets[i].name, excerpt: s.excerpt(line)})
		}
	}
	return out
}

// secretGuard scans one Temporal namespace and one worker log for secrets.
type secretGuard struct {
	hostPort, namespace string
	secrets             []secret
	log                 *lockedBuffer // the in-process worker's log
}

// guardSecrets installs the guard on an env: the returned options log through the
// guard's buffer (and to stdout, as the SDK's default logger does), and when the test
// ends the guard scans the namespace of opts and that log for the secrets of cfg and of
// every configuration stackEnv built for the same Temporal. Its cleanup runs after the
// env's worker has stopped, before the stack stops.
func guardSecrets(t *testing.T, cfg *config.Config, opts client.Options) client.Options {
	t.Helper()
	g := newSecretGuard(cfg, opts)
	t.Cleanup(func() {
		secrets := g.secrets
		rememberedVars.Lock()
		remembered := rememberedVars.byTemporal[opts.HostPort]
		delete(rememberedVars.byTemporal, opts.HostPort)
		rememberedVars.Unlock()
		for _, vars := range remembered {
			more, err := varsSecrets(vars)
			if err != nil {
				t.Errorf("secrets guard: configuration not scanned: %v", err)
			}
			for _, m := range more {
				if !slices.ContainsFunc(secrets, func(s secret) bool { return s.value == m.value }) {
					secrets = append(secrets, m)
				}
			}
		}
		g.secrets = secrets
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		start := time.Now()
		leaks, stats, err := g.scan(ctx)
		if err != nil {
			t.Errorf("secrets guard: %v", err)
		}
		reportLeaks(t.Errorf, leaks)
		t.Logf("secrets guard: %s in %s", stats, time.Since(start).Round(time.Millisecond))
	})
	return g.clientOptions(opts)
}

func newSecretGuard(cfg *config.Config, opts client.Options) *secretGuard {
	return &secretGuard{hostPort: opts.HostPort, namespace: opts.Namespace, secrets: configSecrets(cfg), log: &lockedBuffer{}}
}

// clientOptions returns opts with a logger that writes to stdout (info and above, as
// the SDK's default logger does) and everything, debug included, to the guard's log.
func (g *secretGuard) clientOptions(opts client.Options) client.Options {
	h := slog.NewMultiHandler(
		slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{Level: slog.LevelInfo}),
		slog.NewTextHandler(g.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	opts.Logger = tlog.NewStructuredLogger(slog.New(h))
	return opts
}

// reportLeaks fails through errorf once per leak, up to maxLeakReports.
func reportLeaks(errorf func(string, ...any), leaks []leak) {
	for i, l := range leaks {
		if i == maxLeakReports {
			errorf("secrets guard: %d more leaks not shown", len(leaks)-i)
			break
		}
		errorf("secrets guard: credential leaked: %s", l)
	}
}

// guardStats counts what a scan covered.
type guardStats struct {
	secrets, short      []string
	executions, events  int
	jsonBytes, logBytes int
}

func (s guardStats) String() string {
	out := fmt.Sprintf("%d executions, %d events (%d bytes of JSON) and %d bytes of worker log scanned for %s",
		s.executions, s.events, s.jsonBytes, s.logBytes, strings.Join(s.secrets, ", "))
	if len(s.short) > 0 {
		out += fmt.Sprintf(" (too short to scan: %s)", strings.Join(s.short, ", "))
	}
	return out
}

// scan exports and scans every execution of the namespace and the worker log.
func (g *secretGuard) scan(ctx context.Context) ([]leak, guardStats, error) {
	s := newScanner(g.secrets)
	var stats guardStats
	for _, sec := range s.secrets {
		stats.secrets = append(stats.secrets, sec.name)
	}
	stats.short = s.short
	if len(s.secrets) == 0 {
		return nil, stats, errors.New("no secret configured: the guard would prove nothing")
	}
	logBytes := []byte(g.log.String())
	stats.logBytes = len(logBytes)
	leaks := s.scanLog("in-process worker log", logBytes)

	c, err := client.DialContext(ctx, client.Options{HostPort: g.hostPort, Namespace: g.namespace,
		Logger: tlog.NewStructuredLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))})
	if err != nil {
		return leaks, stats, fmt.Errorf("connect to temporal: %w", err)
	}
	defer c.Close()

	// Visibility lists every run, closed and running; the histories' links to children
	// and to continued-as-new runs add any that visibility has not indexed yet.
	type run struct{ id, runID string }
	var queue []run
	seen := map[run]bool{}
	push := func(id, runID string) {
		r := run{id, runID}
		if id != "" && runID != "" && !seen[r] {
			seen[r] = true
			queue = append(queue, r)
		}
	}
	req := &workflowservice.ListWorkflowExecutionsRequest{Namespace: g.namespace, PageSize: 1000}
	for {
		resp, err := c.ListWorkflow(ctx, req)
		if err != nil {
			return leaks, stats, fmt.Errorf("list workflows: %w", err)
		}
		for _, info := range resp.GetExecutions() {
			ex := info.GetExecution()
			leaks = append(leaks, s.scanProto(info, fmt.Sprintf("visibility record of workflow %q run %s", ex.GetWorkflowId(), ex.GetRunId()))...)
			push(ex.GetWorkflowId(), ex.GetRunId())
		}
		if len(resp.GetNextPageToken()) == 0 {
			break
		}
		req.NextPageToken = resp.GetNextPageToken()
	}

	shorthand := temporalproto.CustomJSONMarshalOptions{Metadata: map[string]any{commonpb.EnablePayloadShorthandMetadataKey: true}}
	for len(queue) > 0 {
		r := queue[0]
		queue = queue[1:]
		stats.executions++
		where := fmt.Sprintf("workflow %q run %s", r.id, r.runID)
		hist := &historypb.History{}
		it := c.GetWorkflowHistory(ctx, r.id, r.runID, false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
		for it.HasNext() {
			ev, err := it.Next()
			if err != nil {
				return leaks, stats, fmt.Errorf("history of %s: %w", where, err)
			}
			hist.Events = append(hist.Events, ev)
			stats.events++
			leaks = append(leaks, s.scanProto(ev, fmt.Sprintf("%s event %d %s", where, ev.GetEventId(), ev.GetEventType()))...)
			if a := ev.GetChildWorkflowExecutionStartedEventAttributes(); a != nil {
				push(a.GetWorkflowExecution().GetWorkflowId(), a.GetWorkflowExecution().GetRunId())
			}
			if a := ev.GetWorkflowExecutionContinuedAsNewEventAttributes(); a != nil {
				push(r.id, a.GetNewExecutionRunId())
			}
			if a := ev.GetWorkflowExecutionStartedEventAttributes(); a != nil {
				push(r.id, a.GetContinuedExecutionRunId())
				if p := a.GetParentWorkflowExecution(); p != nil {
					push(p.GetWorkflowId(), p.GetRunId())
				}
			}
		}
		// The export, as `temporal workflow show -o json` writes it with JSON payloads
		// shown as JSON. The walk above located every hit; this catches anything a
		// rendering could add that the walk did not see.
		b, err := shorthand.Marshal(hist)
		if err != nil {
			return leaks, stats, fmt.Errorf("export history of %s: %w", where, err)
		}
		stats.jsonBytes += len(b)
		for _, i := range s.find(b) {
			name := s.secrets[i].name
			if !slices.ContainsFunc(leaks, func(l leak) bool { return l.secret == name && strings.HasPrefix(l.where, where) }) {
				leaks = append(leaks, leak{where: where + " exported history JSON", secret: name, excerpt: s.excerpt(b)})
			}
		}
		// Running executions hold state that is not in their history yet: the pending
		// activities' heartbeat details and last failures.
		desc, err := c.DescribeWorkflowExecution(ctx, r.id, r.runID)
		if err != nil {
			return leaks, stats, fmt.Errorf("describe %s: %w", where, err)
		}
		leaks = append(leaks, s.scanProto(desc, "description of "+where)...)
		for _, ch := range desc.GetPendingChildren() {
			push(ch.GetWorkflowId(), ch.GetRunId())
		}
	}
	return leaks, stats, nil
}

// checkWorkerLogs fails t when the output of any start of a worker subprocess configured
// by vars holds one of its secrets.
func checkWorkerLogs(t *testing.T, vars map[string]string, logs []*lockedBuffer) {
	t.Helper()
	leaks, n, err := workerLogLeaks(vars, logs)
	if err != nil {
		t.Errorf("secrets guard: worker configuration not scanned: %v", err)
		return
	}
	reportLeaks(t.Errorf, leaks)
	t.Logf("secrets guard: %d bytes of worker subprocess output (%d starts) scanned", n, len(logs))
}

// workerLogLeaks scans the output of each start of a worker subprocess for the secrets
// of its configuration vars, and returns the leaks and the number of bytes scanned.
func workerLogLeaks(vars map[string]string, logs []*lockedBuffer) ([]leak, int, error) {
	secrets, err := varsSecrets(vars)
	if err != nil {
		return nil, 0, err
	}
	s := newScanner(secrets)
	var leaks []leak
	n := 0
	for i, l := range logs {
		out := l.String()
		n += len(out)
		leaks = append(leaks, s.scanLog(fmt.Sprintf("worker subprocess log (start %d)", i+1), []byte(out))...)
	}
	return leaks, n, nil
}

// leakPlant asks leakActivity to leak a secret one way. The input holds the secret
// reversed, so that only the leak itself holds the value.
type leakPlant struct {
	Reversed string `json:"reversed"`
	// Mode is "log", "fail", "result", "heartbeat-timeout" or "heartbeat-pending".
	Mode string `json:"mode"`
}

func reverse(s string) string {
	r := []rune(s)
	slices.Reverse(r)
	return string(r)
}

const leakWorkflowName = "SecretsGuardLeak"

func leakWorkflow(ctx workflow.Context, in leakPlant) (string, error) {
	opts := workflow.ActivityOptions{
		StartToCloseTimeout: time.Minute,
		HeartbeatTimeout:    time.Minute,
		RetryPolicy:         &temporal.RetryPolicy{MaximumAttempts: 1},
	}
	if in.Mode == "heartbeat-timeout" {
		opts.HeartbeatTimeout = time.Second
	}
	var out string
	if err := workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, opts), leakActivity, in).Get(ctx, &out); err != nil {
		return "", err
	}
	return "done", nil // not out: the leak is the activity's
}

func leakActivity(ctx context.Context, in leakPlant) (string, error) {
	s := reverse(in.Reversed)
	switch in.Mode {
	case "log":
		activity.GetLogger(ctx).Info("connecting", "dsn", s)
	case "fail":
		return "", temporal.NewNonRetryableApplicationError("connect with "+s+": refused", "Test", nil)
	case "result":
		return s, nil
	case "heartbeat-timeout", "heartbeat-pending":
		activity.RecordHeartbeat(ctx, s)
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(5 * time.Second):
		}
		return "", errors.New("no heartbeat for 5s")
	}
	return "", nil
}

// TestSecretsGuardCatchesPlantedSecrets is the guard's negative control: SelfCheck runs
// clean on a worker holding random credentials, then each credential is planted in one
// place a leak could land — a memo, a termination reason, an activity failure, an
// activity result, heartbeat details in the history and of a pending activity, the
// worker's log, a worker subprocess's output — and the guard must report each one, by
// its variable, without printing any value.
func TestSecretsGuardCatchesPlantedSecrets(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	tp := stacktest.Temporal(t)
	pgPassword := "pgpw" + randomAlnum(24)
	vars := map[string]string{
		"TEMPORAL_ADDRESS":        tp.GRPCAddr(),
		"TEMPORAL_API_KEY":        "apikey" + randomAlnum(24),
		"TEMPORAL_TLS":            "false",
		"DRFLOW_POSTGRES_URL":     "postgres://drflow:" + pgPassword + "@127.0.0.1:1/?sslmode=disable",
		"DRFLOW_REDIS_ADDR":       "127.0.0.1:1",
		"DRFLOW_REDIS_PASSWORD":   "redispw" + randomAlnum(24),
		"DRFLOW_MINIO_ENDPOINT":   "127.0.0.1:1",
		"DRFLOW_MINIO_ACCESS_KEY": "minioak" + randomAlnum(14),
		"DRFLOW_MINIO_SECRET_KEY": randomAlnum(40),
		"S3_BUCKET":               "drflow-backups",
		"S3_ENDPOINT":             "http://127.0.0.1:1",
		"S3_ACCESS_KEY_ID":        "s3ak" + randomAlnum(16),
		"S3_SECRET_ACCESS_KEY":    randomAlnum(40),
		"HOME":                    os.TempDir(),
	}
	cfg := loadConfig(t, vars)
	g := newSecretGuard(cfg, client.Options{HostPort: tp.GRPCAddr(), Namespace: "default"})
	names := map[string]bool{}
	for _, s := range g.secrets {
		names[s.name] = true
	}
	for _, want := range []string{"TEMPORAL_API_KEY", "DRFLOW_POSTGRES_URL (password)", "DRFLOW_REDIS_PASSWORD",
		"DRFLOW_MINIO_ACCESS_KEY", "DRFLOW_MINIO_SECRET_KEY", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"} {
		assert.True(t, names[want], "the guard scans for %s", want)
	}
	require.Equal(t, pgPassword, cfg.Postgres.Password.Reveal())

	c, err := client.DialContext(ctx, g.clientOptions(client.Options{HostPort: tp.GRPCAddr(), Namespace: "default"}))
	require.NoError(t, err)
	defer c.Close()
	acts, err := app.New(ctx, cfg)
	require.NoError(t, err)
	const queue = "secrets-guard"
	w := worker.New(c, queue, worker.Options{})
	require.NoError(t, app.Register(w, acts))
	w.RegisterWorkflowWithOptions(leakWorkflow, workflow.RegisterOptions{Name: leakWorkflowName})
	w.RegisterActivity(leakActivity)
	require.NoError(t, w.Start())
	defer w.Stop()
	start := func(id, name string, memo map[string]any, in any) client.WorkflowRun {
		run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: queue, Memo: memo}, name, in)
		require.NoError(t, err)
		return run
	}

	// Clean: SelfCheck on a worker holding every credential leaks none of them.
	selfCheck := workflows.SelfCheckInput{Steps: 3, StepInterval: workflows.Duration(20 * time.Millisecond)}
	require.NoError(t, start("selfcheck-clean", workflows.SelfCheckName, nil, selfCheck).Get(ctx, nil))
	leaks, stats, err := g.scan(ctx)
	require.NoError(t, err)
	assert.Empty(t, leaks, "a clean run")
	assert.Equal(t, 1, stats.executions)
	assert.Greater(t, stats.events, 10)
	t.Logf("clean: %s", stats)

	// Planted.
	secretOf := func(name string) string {
		for _, s := range g.secrets {
			if s.name == name {
				return s.value
			}
		}
		t.Fatalf("no secret %s", name)
		return ""
	}
	dsn, err := cfg.Postgres.DatabaseURL("kohakku-controller")
	require.NoError(t, err)
	require.NoError(t, start("plant-memo", workflows.SelfCheckName, map[string]any{"note": "restored from " + dsn}, selfCheck).Get(ctx, nil))
	running := start("plant-terminate", workflows.SelfCheckName, nil, workflows.SelfCheckInput{Steps: 1000, StepInterval: workflows.Duration(time.Second)})
	require.NoError(t, c.TerminateWorkflow(ctx, running.GetID(), "", "key "+secretOf("S3_ACCESS_KEY_ID")+" revoked"))
	plant := func(mode, name string) client.WorkflowRun {
		return start("plant-"+mode, leakWorkflowName, nil, leakPlant{Reversed: reverse(secretOf(name)), Mode: mode})
	}
	assert.Error(t, plant("fail", "S3_SECRET_ACCESS_KEY").Get(ctx, nil))
	assert.NoError(t, plant("result", "DRFLOW_MINIO_ACCESS_KEY").Get(ctx, nil))
	assert.Error(t, plant("heartbeat-timeout", "DRFLOW_REDIS_PASSWORD").Get(ctx, nil))
	assert.NoError(t, plant("log", "TEMPORAL_API_KEY").Get(ctx, nil))
	pending := plant("heartbeat-pending", "DRFLOW_MINIO_SECRET_KEY")
	require.Eventually(t, func() bool {
		d, err := c.DescribeWorkflowExecution(ctx, pending.GetID(), "")
		return err == nil && len(d.GetPendingActivities()) == 1 && d.GetPendingActivities()[0].GetHeartbeatDetails() != nil
	}, 30*time.Second, 50*time.Millisecond)

	start2 := time.Now()
	leaks, stats, err = g.scan(ctx)
	require.NoError(t, err)
	t.Logf("planted: %s in %s", stats, time.Since(start2).Round(time.Millisecond))
	var report []string
	reportLeaks(func(format string, args ...any) { report = append(report, fmt.Sprintf(format, args...)) }, leaks)
	require.NotEmpty(t, report, "the guard fails the test")
	for _, r := range report {
		t.Log(r)
		for _, s := range g.secrets {
			for _, f := range secretForms(s.value) {
				require.NotContains(t, r, f, "the report shows no secret (%s)", s.name)
			}
		}
	}

	found := func(secret string, where ...string) bool {
		return slices.ContainsFunc(leaks, func(l leak) bool {
			if l.secret != secret {
				return false
			}
			text := l.where + " " + l.field
			for _, w := range where {
				if !strings.Contains(text, w) {
					return false
				}
			}
			return true
		})
	}
	for _, want := range []struct {
		what   string
		secret string
		where  []string
	}{
		{"memo", "DRFLOW_POSTGRES_URL (password)", []string{`"plant-memo"`, "event 1 WorkflowExecutionStarted", "memo.fields[note]"}},
		{"memo in visibility", "DRFLOW_POSTGRES_URL (password)", []string{`visibility record of workflow "plant-memo"`, "memo"}},
		{"termination reason", "S3_ACCESS_KEY_ID", []string{`"plant-terminate"`, "WorkflowExecutionTerminated", "reason"}},
		{"activity failure", "S3_SECRET_ACCESS_KEY", []string{`"plant-fail"`, "ActivityTaskFailed", "failure.message"}},
		{"workflow failure", "S3_SECRET_ACCESS_KEY", []string{`"plant-fail"`, "WorkflowExecutionFailed"}},
		{"activity result", "DRFLOW_MINIO_ACCESS_KEY", []string{`"plant-result"`, "ActivityTaskCompleted", "result.payloads[0].data"}},
		{"heartbeat details of a timed-out activity", "DRFLOW_REDIS_PASSWORD", []string{`"plant-heartbeat-timeout"`, "ActivityTaskTimedOut", "last_heartbeat_details"}},
		{"heartbeat details of a pending activity", "DRFLOW_MINIO_SECRET_KEY", []string{`description of workflow "plant-heartbeat-pending"`, "pending_activities[0].heartbeat_details"}},
		{"worker log", "TEMPORAL_API_KEY", []string{"in-process worker log line"}},
	} {
		assert.True(t, found(want.secret, want.where...), "the guard finds %s in the %s", want.secret, want.what)
	}
	assert.False(t, slices.ContainsFunc(leaks, func(l leak) bool { return strings.Contains(l.where, "selfcheck-clean") }))
	for _, l := range leaks {
		for _, mode := range []string{"fail", "result", "heartbeat-timeout", "heartbeat-pending", "log"} {
			if strings.Contains(l.where, `"plant-`+mode+`"`) {
				assert.NotContains(t, l.where+l.field, "WorkflowExecutionStarted", "the plant's input holds the secret reversed only")
			}
		}
	}

	// A worker subprocess's output, scanned as checkWorkerLogs scans it.
	clean, leaky := &lockedBuffer{}, &lockedBuffer{}
	fmt.Fprintf(clean, "time=... level=INFO msg=\"worker ready\"\n")
	fmt.Fprintf(leaky, "time=... level=INFO msg=\"worker ready\"\ntime=... level=ERROR msg=\"connect\" url=%s\n", dsn)
	sub, n, err := workerLogLeaks(vars, []*lockedBuffer{clean, leaky})
	require.NoError(t, err)
	assert.Greater(t, n, 0)
	require.Len(t, sub, 1)
	assert.Equal(t, "worker subprocess log (start 2) line 2", sub[0].where)
	assert.Equal(t, "DRFLOW_POSTGRES_URL (password)", sub[0].secret)
	assert.NotContains(t, sub[0].String(), pgPassword)
	assert.Contains(t, sub[0].String(), "<DRFLOW_POSTGRES_URL (password)>@127.0.0.1:1")
}
