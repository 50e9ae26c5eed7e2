package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kohakku/drflow/workflows"
)

func TestDecodeInput(t *testing.T) {
	tests := []struct {
		name, typ, input, wantErr string
	}{
		{"defaults", workflows.SelfCheckName, `{}`, ""},
		{"valid fields", workflows.SelfCheckName, `{"steps": 3, "stepInterval": "250ms"}`, ""},
		{"unknown type", "NightlyBakup", `{}`, `unknown workflow type "NightlyBakup"; one of: NightlyBackup, VerifyBackup, RedisLoss`},
		{"unknown field", workflows.SelfCheckName, `{"stepz": 3}`, `unknown field "stepz"`},
		{"wrong type", workflows.SelfCheckName, `{"steps": "three"}`, `SelfCheckInput.steps of type int`},
		{"bare number duration", workflows.SelfCheckName, `{"stepInterval": 5}`, `want a duration string such as "90s"`},
		{"malformed", workflows.SelfCheckName, `{"steps": `, `unexpected EOF`},
		{"trailing data", workflows.SelfCheckName, `{} {}`, `trailing data`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decodeInput(tt.typ, []byte(tt.input))
			if tt.wantErr == "" {
				assert.NoError(t, err)
				return
			}
			assert.ErrorContains(t, err, tt.wantErr)
		})
	}
}

func TestUsageErrors(t *testing.T) {
	var out, errOut strings.Builder
	err := run(context.Background(), []string{"frobnicate"}, &out, &errOut)
	assert.EqualError(t, err, `unknown command "frobnicate"`)
	assert.Contains(t, errOut.String(), "usage: starter COMMAND")

	err = run(context.Background(), []string{"start"}, &out, &errOut)
	assert.ErrorContains(t, err, "missing workflow type; one of: NightlyBackup, VerifyBackup, RedisLoss")
}

// TestDemo runs `starter demo` end to end: the private stack, the seeded dataset, a real
// worker --dev subprocess and a SelfCheck run, then checks the summary and that
// everything is gone afterwards.
func TestDemo(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "worker")
	out, err := exec.Command("go", "build", "-o", bin, "../worker").CombinedOutput()
	require.NoError(t, err, "build worker: %s", out)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var stdout, stderr strings.Builder
	err = run(ctx, []string{"demo", "--worker-bin", bin, "--tasks", "200",
		"--grpc-addr", "127.0.0.1:0", "--ui-addr", "127.0.0.1:0"}, &stdout, &stderr)
	require.NoError(t, err, "stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	text := stdout.String()

	for _, want := range []string{
		"✓  start PostgreSQL, Redis, MinIO (app) and MinIO (backup store)",
		"✓  seed the Kohakku dataset: 200 tasks (30 pending, 20 in flight)",
		"✓  start worker --dev (embedded Temporal + Web UI)",
		`✓  run the SelfCheck workflow: {"steps":5,"attempt":1,"resumedFrom":0`,
		"databases kohakku-controller, kohakku-dispatcher (200 tasks)",
		"(AOF on; 30 queued",
		"SelfCheck    5 steps heartbeated",
		"✓  run NightlyBackup: dump, RDB, mirror, manifest: set ",
		"postgres  kohakku-controller",
		"redis     default",
		"listing   kohakku",
		"verified (passed=true, RTO ",
		"NightlyBackup and its VerifyBackup run for real",
	} {
		assert.Contains(t, text, want)
	}
	assert.NotContains(t, text, "✗")

	// Everything the demo started is gone: the stack dir and the servers' ports.
	dir := regexp.MustCompile(`in (/\S+drflow-demo-\d+)`).FindStringSubmatch(text)
	require.Len(t, dir, 2, text)
	_, err = os.Stat(dir[1])
	assert.True(t, os.IsNotExist(err), "demo dir %s still exists", dir[1])
	// No server process of the demo is left: every one ran with a path under its dir.
	// (Ports are not checked: a parallel test package may take a freed port.)
	procs, err := filepath.Glob("/proc/[0-9]*/cmdline")
	require.NoError(t, err)
	for _, p := range procs {
		if cmdline, err := os.ReadFile(p); err == nil && strings.Contains(string(cmdline), dir[1]) {
			t.Errorf("demo process still running: %s: %q", p, cmdline)
		}
	}
}
