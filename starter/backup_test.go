package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kohakku/drflow/internal/stack/stacktest"
)

func starter(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out, errOut strings.Builder
	err := run(ctx, args, &out, &errOut)
	return out.String() + errOut.String(), err
}

// TestScheduleLifecycle drives the nightly schedule through a real Temporal server.
func TestScheduleLifecycle(t *testing.T) {
	tmp := stacktest.Temporal(t)
	t.Setenv("HOME", t.TempDir())
	t.Setenv("DRFLOW_CONFIG", "")
	t.Setenv("TEMPORAL_ADDRESS", tmp.GRPCAddr())
	t.Setenv("TEMPORAL_NAMESPACE", "default")

	out, err := starter(t, "schedule", "create", "--cron", "30 3 * * *", "--input", `{"databases":["kohakku-controller"]}`)
	require.NoError(t, err, out)
	assert.Contains(t, out, "created schedule drflow-nightly-backup: 30 3 * * * (UTC), overlap skip")

	_, err = starter(t, "schedule", "create")
	require.Error(t, err, "a second create must not silently replace the schedule")

	out, err = starter(t, "schedule", "describe")
	require.NoError(t, err, out)
	assert.Contains(t, out, "paused: false")
	assert.Contains(t, out, "cron: 30 3 * * * (UTC)")
	assert.Regexp(t, `next: \d{4}-\d\d-\d\dT03:30:00Z`, out)

	out, err = starter(t, "schedule", "pause", "--note", "maintenance")
	require.NoError(t, err, out)
	assert.Contains(t, out, "paused schedule drflow-nightly-backup")
	out, err = starter(t, "schedule", "describe")
	require.NoError(t, err)
	assert.Contains(t, out, "paused: true maintenance")

	out, err = starter(t, "schedule", "unpause")
	require.NoError(t, err, out)
	out, err = starter(t, "schedule", "trigger")
	require.NoError(t, err, out)
	assert.Contains(t, out, "triggered schedule")
	assert.Eventually(t, func() bool {
		out, err := starter(t, "schedule", "describe")
		return err == nil && strings.Contains(out, "runs: 1")
	}, 20*time.Second, 200*time.Millisecond, "trigger starts a run")

	out, err = starter(t, "schedule", "delete")
	require.NoError(t, err, out)
	_, err = starter(t, "schedule", "describe")
	require.Error(t, err)

	out, err = starter(t, "schedule", "create", "--drill")
	require.NoError(t, err, out)
	assert.Contains(t, out, "created schedule drflow-weekly-drill: 0 4 * * 0 (UTC)")
	out, err = starter(t, "schedule", "describe", "--drill")
	require.NoError(t, err, out)
	assert.Contains(t, out, "VerifyBackup, created by starter")
	assert.Regexp(t, `next: \d{4}-\d\d-\d\dT04:00:00Z`, out)
	_, err = starter(t, "schedule", "create", "--drill", "--input", `{"steps": 3}`)
	assert.ErrorContains(t, err, `input for VerifyBackup: json: unknown field "steps"`)

	_, err = starter(t, "schedule", "create", "--cron", "daily")
	assert.ErrorContains(t, err, `--cron "daily": want 5 fields`)
	_, err = starter(t, "schedule", "create", "--input", `{"database": ["x"]}`)
	assert.ErrorContains(t, err, `unknown field "database"`)
}

// TestBackupsList lists sets from a real S3 store: complete, incomplete and verified.
func TestBackupsList(t *testing.T) {
	m := stacktest.MinIO(t)
	ctx := context.Background()
	require.NoError(t, m.MakeBucket(ctx, "drflow-backups"))
	t.Setenv("HOME", t.TempDir())
	t.Setenv("DRFLOW_CONFIG", "")
	t.Setenv("S3_BUCKET", "drflow-backups")
	t.Setenv("S3_ENDPOINT", m.URL())
	t.Setenv("S3_REGION", m.Region())
	t.Setenv("S3_ACCESS_KEY_ID", m.AccessKey())
	t.Setenv("S3_SECRET_ACCESS_KEY", m.SecretKey())
	t.Setenv("S3_FORCE_PATH_STYLE", "true")
	t.Setenv("S3_PREFIX", "prod")

	out, err := starter(t, "backups", "list")
	require.NoError(t, err, out)
	assert.Contains(t, out, "no backup sets in s3://drflow-backups/prod at "+m.URL())

	cl, err := m.Client()
	require.NoError(t, err)
	put := func(key, body string) {
		_, err := cl.PutObject(ctx, "drflow-backups", "prod/"+key, strings.NewReader(body), int64(len(body)), minio.PutObjectOptions{})
		require.NoError(t, err)
	}
	put("sets/2026-11-20T02-00-00Z/postgres/db.dump.zst", strings.Repeat("x", 2048))
	put("sets/2026-11-20T02-00-00Z/manifest.json", `{}`)
	put("sets/2026-11-20T02-00-00Z/verify.json", `{"passed": true}`)
	put("sets/2026-11-21T02-00-00Z/postgres/db.dump.zst", "partial")

	out, err = starter(t, "backups", "list")
	require.NoError(t, err, out)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 3, out)
	assert.Regexp(t, `^SET\s+STATE\s+VERIFIED\s+SIZE\s+FILES\s+AGE`, lines[0])
	assert.Regexp(t, `^2026-11-21T02-00-00Z\s+incomplete\s+unverified\s+7 B\s+1\s`, lines[1])
	assert.Regexp(t, `^2026-11-20T02-00-00Z\s+complete\s+passed\s+2\.0 KiB\s+3\s`, lines[2])

	out, err = starter(t, "backups", "list", "--json")
	require.NoError(t, err, out)
	assert.Contains(t, out, `"verified": "passed"`)

	t.Setenv("S3_BUCKET", "")
	_, err = starter(t, "backups", "list")
	assert.ErrorContains(t, err, "S3_BUCKET")
}
