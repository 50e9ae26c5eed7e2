package main

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kohakku/drflow/workflows"
)

// noTemporal points the starter at a port nothing listens on: a command that got as far
// as dialing would fail with a connection error (after seconds), not the input's.
func noTemporal(t *testing.T) {
	t.Helper()
	t.Setenv("HOME", t.TempDir())
	t.Setenv("DRFLOW_CONFIG", "")
	t.Setenv("TEMPORAL_ADDRESS", "127.0.0.1:1")
	t.Setenv("TEMPORAL_NAMESPACE", "default")
}

// TestStartRefusesBadInput: every command that starts a workflow checks its input
// against the workflow's JSON Schema before it connects, and the error names the field
// and the fix.
func TestStartRefusesBadInput(t *testing.T) {
	noTemporal(t)
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"malformed", []string{"start", workflows.SelfCheckName, "--input", `{"steps": `},
			[]string{"input for SelfCheck: input is not valid JSON: unexpected EOF", `(in field "steps")`, `such as {"steps":3`}},
		{"unknown field", []string{"start", workflows.MinIOLossName, "--input", `{"Scope": "all"}`},
			[]string{`input for MinIOLoss: json: unknown field "Scope"`, `did you mean "scope"?`}},
		{"wrong type", []string{"start", workflows.VerifyBackupName, "--input", `{"sampleObjects": "10"}`},
			[]string{`input field "sampleObjects"`, "of type int", "1 to 100000"}},
		{"negative size", []string{"start", workflows.RedispatchLostTasksName, "--input", `{"batchSize": -1}`},
			[]string{`input field "batchSize": -1 is less than 0`}},
		{"bad duration", []string{"start", workflows.FullClusterRecoveryName, "--input", `{"lostAfter": "2 min"}`},
			[]string{`input field "lostAfter"`, `e.g. "2m"`}},
		{"unknown scope", []string{"start", workflows.MinIOLossName, "--input", `{"scope": "most"}`},
			[]string{`input field "scope": "most" is not one of "needed", "all"`}},
		{"bucket S3 rejects", []string{"backup", "--input", `{"buckets": ["Kohakku"]}`},
			[]string{`input for NightlyBackup: input field "buckets": at /buckets/0: "Kohakku" is not a bucket name by the S3 rules`}},
		{"database with spaces", []string{"restore-tables", "--database", "kohakku controller", "--table", "tasks_task"},
			[]string{`input for RestoreTables: input field "database": "kohakku controller" is not a PostgreSQL database name`, "no spaces or quotes"}},
		{"bad set id", []string{"drill", "--set", "yesterday"},
			[]string{`input for VerifyBackup: input field "setId": "yesterday" is not a set id`}},
		{"schedule", []string{"schedule", "create", "--input", `{"anomalyThreshold": -0.5}`},
			[]string{`input field "anomalyThreshold": -0.5 is less than 0`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			started := time.Now()
			out, err := starter(t, tt.args...)
			require.Error(t, err, out)
			for _, w := range tt.want {
				assert.Contains(t, err.Error(), w)
			}
			assert.NotContains(t, err.Error(), "connect to temporal")
			assert.Less(t, time.Since(started), 2*time.Second, "refused before connecting")
		})
	}
}

// mainEnv runs main() in this test's process when set (by TestStartBadInputExits).
const mainEnv = "DRFLOW_STARTER_TEST_MAIN"

// TestStartBadInputExits: `starter start TYPE --input '<bad>'` exits non-zero and
// says on stderr which field is wrong and how to fix it, having started nothing.
func TestStartBadInputExits(t *testing.T) {
	if args := os.Getenv(mainEnv); args != "" {
		os.Args = append([]string{"starter"}, strings.Split(args, "\n")...)
		main()
		os.Exit(0)
	}
	noTemporal(t)
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"start", workflows.TotalDBLossName, "--input", `{"databases": ["kohakku\"controller"], "autoApprove": true}`},
			`starter: input for TotalDBLoss: input field "databases": at /databases/0: "kohakku\"controller" is not a PostgreSQL database name`},
		{[]string{"start", workflows.RedisLossName, "--input", `{"instance": "default", "dryrun": true}`},
			`starter: input for RedisLoss: json: unknown field "dryrun": RedisLoss has no such input field (did you mean "dryRun"? names are case-sensitive)`},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestStartBadInputExits$")
		cmd.Env = append(os.Environ(), mainEnv+"="+strings.Join(tt.args, "\n"))
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		var exit *exec.ExitError
		require.True(t, errors.As(err, &exit), "starter %v must exit non-zero: %v\n%s%s", tt.args, err, stdout.String(), stderr.String())
		assert.Equal(t, 1, exit.ExitCode())
		assert.Contains(t, stderr.String(), tt.want)
		assert.NotContains(t, stdout.String(), "started")
	}
}

// TestDecodeInputAcceptsWhatCommandsSend: inputs the commands build from their flags
// pass the check.
func TestDecodeInputAcceptsWhatCommandsSend(t *testing.T) {
	for typ, input := range map[string]string{
		workflows.SelfCheckName:     `{"steps":10,"stepInterval":"1s"}`,
		workflows.VerifyBackupName:  `{"setId":"2026-11-21T02-00-00Z","restore":false}`,
		workflows.RestoreTablesName: `{"database":"kohakku-controller","tables":["tasks_task"],"mode":"side","approvalTimeout":"0s"}`,
	} {
		_, err := decodeInput(typ, []byte(input))
		assert.NoError(t, err, typ)
	}
	_, err := decodeInput(workflows.SelfCheckName, []byte(`{"steps": 3}`))
	require.NoError(t, err)
	_, err = decodeInput(workflows.SelfCheckName, []byte(`{"steps": 3, "x": 1}`))
	var ie *workflows.InputError
	assert.True(t, errors.As(err, &ie), "the error is the workflows' InputError: %v", err)
}
