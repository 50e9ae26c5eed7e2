package main

import (
	"context"
	"image/color"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
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

// TestDemo runs `starter demo` end to end: the private stack, the seeded dataset, the
// simulated workload, a real worker --dev subprocess, the nightly Schedule and backup, a
// total cluster loss, FullClusterRecovery and a screenshot of its Web UI page. It checks
// the summary's figures against each other and the screenshot, and that everything is
// gone afterwards.
func TestDemo(t *testing.T) {
	started := time.Now()
	bin := filepath.Join(t.TempDir(), "worker")
	out, err := exec.Command("go", "build", "-o", bin, "../worker").CombinedOutput()
	require.NoError(t, err, "build worker: %s", out)

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	shot := filepath.Join(t.TempDir(), "ui.png")
	var stdout, stderr strings.Builder
	err = run(ctx, []string{"demo", "--worker-bin", bin, "--tasks", "200", "--screenshot", shot,
		"--grpc-addr", "127.0.0.1:0", "--ui-addr", "127.0.0.1:0"}, &stdout, &stderr)
	require.NoError(t, err, "stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	text := stdout.String()
	t.Logf("demo output:\n%s", text)

	for _, want := range []string{
		"✓  start PostgreSQL, Redis, MinIO (app) and MinIO (backup store)",
		"✓  seed the Kohakku dataset: 200 tasks (30 pending, 20 in flight)",
		"✓  start the Kohakku workload",
		"✓  start worker --dev (embedded Temporal + Web UI)",
		`✓  run the SelfCheck workflow: {"steps":5,"attempt":1,"resumedFrom":0`,
		"✓  create the nightly Schedule (starter schedule create): drflow-nightly-backup: 0 2 * * * (UTC)",
		"databases kohakku-controller, kohakku-dispatcher (200 tasks)",
		"(AOF on; 30 queued",
		"SelfCheck    5 steps heartbeated",
		"Schedule     drflow-nightly-backup: 0 2 * * * (UTC), overlap skip, catch-up window 6h0m0s; starts NightlyBackup",
		"✓  run NightlyBackup: dump, RDB, mirror, manifest: set ",
		"postgres  kohakku-controller",
		"redis     default",
		"listing   kohakku",
		"verified (passed=true, RTO ",
		"✓  keep the workload running",
		"✓  lose the whole cluster",
		"✓  run FullClusterRecovery: recovered from set ",
		"✓  compare the recovered data with the backup set",
		"✓  screenshot the recovery in the Web UI: " + shot,
		"services     restarted in order: controller, dispatcher, monitor",
		"NightlyBackup, its VerifyBackup and FullClusterRecovery ran for real",
	} {
		assert.Contains(t, text, want)
	}
	assert.NotContains(t, text, "✗")

	// The recovery completed, with an RTO line per stage, in the order of the data.
	rec := regexp.MustCompile(`(?m)^  Recovery     FullClusterRecovery (\S+): recovered$`).FindStringSubmatch(text)
	require.Len(t, rec, 2, "no completed recovery in the summary")
	id := rec[1]
	var stages []string
	for _, m := range regexp.MustCompile(`(?m)^  RTO  (\S+(?: \S+)?)\s+(\d[\d.]*(?:ms|s|m\S*))  `).FindAllStringSubmatch(text, -1) {
		stages = append(stages, m[1])
	}
	var want []string
	for _, s := range workflows.FullClusterStages {
		want = append(want, s.Name)
	}
	assert.Equal(t, append(want, "total"), stages, "RTO lines")

	// Every key table has, right after the restore, the rows the backup set recorded.
	rows := regexp.MustCompile(`(?m)^  rows (\S+)\s+(\d+)\s+(\d+)\s+(\d+)`).FindAllStringSubmatch(text, -1)
	var tables []string
	for _, r := range rows {
		tables = append(tables, r[1])
		assert.Equal(t, r[2], r[3], "%s: rows in the set vs after the restore", r[1])
	}
	assert.ElementsMatch(t, []string{"kohakku-controller.tasks_task", "kohakku-controller.briefs",
		"kohakku-dispatcher.agent_containers", "kohakku-dispatcher.dispatch_assignments"}, tables)
	objs := regexp.MustCompile(`(?m)^  objs bucket kohakku\s+(\d+)\s+(\d+)\s+(\d+)`).FindStringSubmatch(text)
	require.Len(t, objs, 4, "no object counts")
	assert.Equal(t, objs[1], objs[2], "objects in the set vs after the restore")
	assert.NotEqual(t, "0", objs[1])

	// The lost tasks were re-dispatched and all ended.
	lost := regexp.MustCompile(`lost tasks   (\d+) re-dispatched: (\d+) completed, (\d+) failed, (\d+) outstanding`).FindStringSubmatch(text)
	require.Len(t, lost, 5, "no re-dispatch line")
	n := func(s string) int { v, err := strconv.Atoi(s); require.NoError(t, err); return v }
	requeued, completed, failed, outstanding := n(lost[1]), n(lost[2]), n(lost[3]), n(lost[4])
	assert.Positive(t, requeued, "tasks in flight at the recovery point are re-dispatched")
	assert.Equal(t, requeued, completed+failed)
	assert.Zero(t, outstanding)
	assert.Contains(t, text, "; run twice: 0\n")

	// The Web UI URL names the recovery, and the screenshot shows a rendered page.
	assert.Regexp(t, `(?m)^  Web UI       http://127\.0\.0\.1:\d+/namespaces/default/workflows/`+regexp.QuoteMeta(id)+`$`, text)
	checkScreenshot(t, shot)

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
	profiles, err := filepath.Glob(filepath.Join(os.TempDir(), "drflow-chromium-*"))
	require.NoError(t, err)
	for _, p := range profiles {
		if fi, err := os.Stat(p); err == nil && fi.ModTime().After(started) {
			t.Errorf("chromium profile directory left behind: %s", p)
		}
	}
}

// checkScreenshot requires path to be a PNG at least 1000 px wide that is not blank: a
// page with text, colours and anti-aliasing has many distinct colours, an empty or
// single-colour page a handful.
func checkScreenshot(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err, "the screenshot")
	defer f.Close()
	img, err := png.Decode(f)
	require.NoError(t, err, "the screenshot is a PNG")
	b := img.Bounds()
	assert.GreaterOrEqual(t, b.Dx(), 1000, "screenshot width")
	colours := map[color.RGBA]bool{}
	for y := b.Min.Y; y < b.Max.Y; y += 2 {
		for x := b.Min.X; x < b.Max.X; x += 2 {
			r, g, bl, a := img.At(x, y).RGBA()
			colours[color.RGBA{uint8(r >> 8), uint8(g >> 8), uint8(bl >> 8), uint8(a >> 8)}] = true
		}
	}
	assert.Greater(t, len(colours), 200, "distinct colours in the screenshot: a blank page has a handful")
}
