package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/minio/minio-go/v7"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/client"

	"github.com/kohakku/drflow/activities"
	"github.com/kohakku/drflow/internal/historytest"
	"github.com/kohakku/drflow/workflows"
)

func (e *env) verify(ctx context.Context, t *testing.T, id string, in workflows.VerifyBackupInput) (workflows.VerifyBackupResult, error) {
	t.Helper()
	var res workflows.VerifyBackupResult
	run, err := e.c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: e.queue}, workflows.VerifyBackupName, in)
	require.NoError(t, err)
	return res, run.Get(ctx, &res)
}

// scratchDatabases lists databases left by verification runs.
func (e *env) scratchDatabases(ctx context.Context, t *testing.T) []string {
	t.Helper()
	conn, err := pgx.Connect(ctx, e.st.Postgres.URL("postgres"))
	require.NoError(t, err)
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT datname FROM pg_database WHERE datname LIKE $1 ORDER BY 1", activities.ScratchPrefix+"%")
	require.NoError(t, err)
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return names
}

func (e *env) readObject(ctx context.Context, t *testing.T, key string) []byte {
	t.Helper()
	obj, err := e.backup.GetObject(ctx, backupBucket, key, minio.GetObjectOptions{})
	require.NoError(t, err)
	defer obj.Close()
	b, err := io.ReadAll(obj)
	require.NoError(t, err)
	return b
}

func (e *env) writeObject(ctx context.Context, t *testing.T, key string, b []byte) {
	t.Helper()
	_, err := e.backup.PutObject(ctx, backupBucket, key, bytes.NewReader(b), int64(len(b)), minio.PutObjectOptions{})
	require.NoError(t, err)
}

func (e *env) writeManifest(ctx context.Context, t *testing.T, m activities.Manifest) {
	t.Helper()
	b, err := json.Marshal(m)
	require.NoError(t, err)
	e.writeObject(ctx, t, activities.SetKey(m.SetID, activities.ManifestName), b)
}

// TestVerifyBackupEndToEnd: every nightly set is verified by a child VerifyBackup with RTO
// figures; a flipped byte, a truncated dump, a wrong row count and a deleted manifest are
// each caught with a clear message; scratch databases never outlive a run.
func TestVerifyBackupEndToEnd(t *testing.T) {
	t.Parallel() // each test has its own stack
	e := newEnv(t, 2000)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	res, err := e.run(ctx, t, "nightly-verify-1", e.queue, workflows.NightlyBackupInput{})
	require.NoError(t, err)
	require.NotNil(t, res.Verify, "NightlyBackup verifies the new set")
	rep := *res.Verify
	assert.True(t, rep.Passed)
	assert.Equal(t, res.SetID, rep.SetID)
	assert.False(t, rep.Drill, "started by NightlyBackup, not a drill")
	require.Len(t, rep.Checks, 5, "2 databases, redis, sqlite, 1 bucket")
	for _, c := range rep.Checks[:2] {
		assert.Positive(t, c.RTO, c.Name)
	}
	assert.Positive(t, rep.TotalRTO)
	assert.Empty(t, e.scratchDatabases(ctx, t), "scratch databases dropped after success")
	if *historytest.Update {
		historytest.Write(ctx, t, e.c, "verify-"+res.SetID, "../../workflows/testdata/VerifyBackup-child.json")
	}

	var stored activities.VerifyReport
	require.NoError(t, json.Unmarshal(e.readObject(ctx, t, activities.SetKey(res.SetID, activities.VerifyName)), &stored))
	assert.True(t, stored.Passed)
	sets, err := e.acts.ListSets(ctx)
	require.NoError(t, err)
	assert.Equal(t, activities.VerifiedPassed, sets[0].Verified)

	// A drill on demand is marked as one.
	drill, err := e.verify(ctx, t, "drill-1", workflows.VerifyBackupInput{})
	require.NoError(t, err)
	assert.True(t, drill.Report.Drill)
	assert.Equal(t, res.SetID, drill.Report.SetID, "newest complete set by default")

	man := res.Manifest
	dump := man.Artifacts[0]
	require.Equal(t, activities.KindPostgres, dump.Kind)
	original := e.readObject(ctx, t, dump.Key)

	t.Run("flipped byte", func(t *testing.T) {
		bad := bytes.Clone(original)
		bad[len(bad)/2] ^= 0x01
		e.writeObject(ctx, t, dump.Key, bad)
		defer e.writeObject(ctx, t, dump.Key, original)
		_, err := e.verify(ctx, t, "verify-flipped", workflows.VerifyBackupInput{SetID: res.SetID})
		require.Error(t, err)
		assert.Contains(t, err.Error(), dump.Key)
		assert.Contains(t, err.Error(), "checksum mismatch")
		var stored activities.VerifyReport
		require.NoError(t, json.Unmarshal(e.readObject(ctx, t, activities.SetKey(res.SetID, activities.VerifyName)), &stored))
		assert.False(t, stored.Passed, "verify.json records the failure")
		assert.Empty(t, e.scratchDatabases(ctx, t))

		// A restore would now refuse this set and fall back to an older verified one.
		sets, err := e.acts.ListSets(ctx)
		require.NoError(t, err)
		_, err = activities.PickSet(sets, activities.SelectSetInput{SetID: res.SetID, RequireVerified: true})
		assert.ErrorContains(t, err, "failed verification")
	})

	t.Run("truncated dump", func(t *testing.T) {
		dir := t.TempDir()
		zpath := filepath.Join(dir, "dump.zst")
		require.NoError(t, os.WriteFile(zpath, original, 0o600))
		raw := zstdDecode(t, zpath)
		b, err := os.ReadFile(raw)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(raw, b[:len(b)/2], 0o600))
		out, err := exec.Command("zstd", "-q", "-f", raw, "-o", zpath).CombinedOutput()
		require.NoError(t, err, "%s", out)
		truncated, err := os.ReadFile(zpath)
		require.NoError(t, err)
		sum := sha256.Sum256(truncated)

		m := man
		m.Artifacts = append([]activities.Artifact(nil), man.Artifacts...)
		m.Artifacts[0].Size, m.Artifacts[0].RawSize, m.Artifacts[0].SHA256 = int64(len(truncated)), int64(len(b)/2), hex.EncodeToString(sum[:])
		e.writeObject(ctx, t, dump.Key, truncated)
		e.writeManifest(ctx, t, m)
		defer func() { e.writeObject(ctx, t, dump.Key, original); e.writeManifest(ctx, t, man) }()

		_, err = e.verify(ctx, t, "verify-truncated", workflows.VerifyBackupInput{SetID: res.SetID})
		require.Error(t, err)
		assert.Contains(t, err.Error(), dump.Key)
		assert.Contains(t, err.Error(), "pg_restore --list")
		assert.Empty(t, e.scratchDatabases(ctx, t))
	})

	t.Run("row counts differ after a restore", func(t *testing.T) {
		m := man
		m.Artifacts = append([]activities.Artifact(nil), man.Artifacts...)
		counts := map[string]int64{}
		for k, v := range dump.RowCounts {
			counts[k] = v
		}
		counts["tasks_task"]++
		m.Artifacts[0].RowCounts = counts
		e.writeManifest(ctx, t, m)
		defer e.writeManifest(ctx, t, man)
		_, err := e.verify(ctx, t, "verify-rows", workflows.VerifyBackupInput{SetID: res.SetID})
		require.Error(t, err)
		assert.Contains(t, err.Error(), "tasks_task")
		assert.Empty(t, e.scratchDatabases(ctx, t), "scratch database dropped after a failed comparison")
	})

	t.Run("deleted manifest hides the set", func(t *testing.T) {
		key := activities.SetKey(res.SetID, activities.ManifestName)
		body := e.readObject(ctx, t, key)
		require.NoError(t, e.backup.RemoveObject(ctx, backupBucket, key, minio.RemoveObjectOptions{}))
		defer e.writeObject(ctx, t, key, body)
		_, err := e.verify(ctx, t, "verify-no-manifest", workflows.VerifyBackupInput{SetID: res.SetID})
		require.Error(t, err)
		assert.Contains(t, err.Error(), "is incomplete")
		_, err = e.verify(ctx, t, "verify-none", workflows.VerifyBackupInput{})
		require.Error(t, err)
		assert.Contains(t, err.Error(), "no complete set")
	})

	t.Run("cancelled mid-restore", func(t *testing.T) {
		run, err := e.c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: "verify-cancel", TaskQueue: e.queue},
			workflows.VerifyBackupName, workflows.VerifyBackupInput{SetID: res.SetID, RestoreJobs: 1})
		require.NoError(t, err)
		require.Eventually(t, func() bool {
			desc, err := e.c.DescribeWorkflowExecution(ctx, run.GetID(), "")
			if err != nil {
				return false
			}
			for _, pa := range desc.PendingActivities {
				if pa.GetActivityType().GetName() == "VerifyDump" && pa.GetState().String() == "Started" {
					return true
				}
			}
			return false
		}, time.Minute, 10*time.Millisecond, "VerifyDump running")
		require.NoError(t, e.c.CancelWorkflow(ctx, run.GetID(), ""))
		err = run.Get(ctx, nil)
		require.Error(t, err)
		assert.Eventually(t, func() bool { return len(e.scratchDatabases(ctx, t)) == 0 }, 30*time.Second, 100*time.Millisecond,
			"scratch database dropped after cancellation")
	})

	// The restored set is intact again: it verifies.
	_, err = e.verify(ctx, t, "verify-final", workflows.VerifyBackupInput{SetID: res.SetID})
	require.NoError(t, err)
}
