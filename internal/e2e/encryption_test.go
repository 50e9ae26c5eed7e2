package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/kohakku/drflow/activities"
	"github.com/kohakku/drflow/internal/config"
	"github.com/kohakku/drflow/internal/stack"
	"github.com/kohakku/drflow/schemas"
	"github.com/kohakku/drflow/workflows"
)

// writeIdentityFile writes ids as age-keygen would, readable by the owner only.
func writeIdentityFile(t *testing.T, ids ...*age.X25519Identity) string {
	t.Helper()
	var b strings.Builder
	for _, id := range ids {
		b.WriteString("# created: 2026-11-21T02:00:00Z\n# public key: " + id.Recipient().String() + "\n" + id.String() + "\n")
	}
	path := filepath.Join(t.TempDir(), "age-identity.txt")
	require.NoError(t, os.WriteFile(path, []byte(b.String()), 0o600))
	return path
}

func newIdentity(t *testing.T) *age.X25519Identity {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	require.NoError(t, err)
	return id
}

// appErrorOfType returns the application error of type typ in err's chain of
// causes: a workflow wraps its activity's error in its own.
func appErrorOfType(err error, typ string) *temporal.ApplicationError {
	for err != nil {
		var app *temporal.ApplicationError
		if !errors.As(err, &app) {
			return nil
		}
		if app.Type() == typ {
			return app
		}
		err = app.Unwrap()
	}
	return nil
}

// TestEncryptedBackupEndToEnd backs up with age recipients configured: every stored
// artifact is an age file, not zstd and not plaintext; the manifest names the recipients
// by fingerprint and holds no key; the set verifies (restored into scratch databases, row
// counts compared) with the identity, decrypts with age and pg_restore outside drflow, and
// restores over a live database; a worker with another identity, or none, fails the
// verification fast with a message naming the fingerprints — without marking the set
// failed.
func TestEncryptedBackupEndToEnd(t *testing.T) {
	t.Parallel() // each test has its own stack
	owner, recovery, stranger := newIdentity(t), newIdentity(t), newIdentity(t)
	recipients := owner.Recipient().String() + ", " + recovery.Recipient().String()
	// Both files outlive the subtests: the secrets guard reads every configuration when
	// the test ends.
	identityFile, strangerFile := writeIdentityFile(t, owner), writeIdentityFile(t, stranger)
	e := newEnvWith(t, 300, func(*stack.Stack) map[string]string {
		return map[string]string{config.AgeRecipientsEnv: recipients, config.AgeIdentityFileEnv: identityFile}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	wantFPs := []string{activities.AgeFingerprint(owner.Recipient().String()), activities.AgeFingerprint(recovery.Recipient().String())}

	res, err := e.run(ctx, t, "nightly-age-1", e.queue, workflows.NightlyBackupInput{})
	require.NoError(t, err)
	require.NotNil(t, res.Verify)
	assert.True(t, res.Verify.Passed, "the child VerifyBackup decrypted, restored and counted: %+v", res.Verify.Checks)
	assert.True(t, res.Verify.Restored)
	man := res.Manifest
	require.Len(t, man.Artifacts, 5, "2 dumps, 1 rdb, 1 sqlite, 1 listing")

	// The manifest: plaintext, valid, fingerprints only.
	rawManifest := e.readObject(ctx, t, activities.SetKey(res.SetID, activities.ManifestName))
	require.NoError(t, schemas.Validate(schemas.ManifestSchemaFile, rawManifest))
	for _, secret := range []string{owner.String(), recovery.String(), "AGE-SECRET-KEY", owner.Recipient().String(), recovery.Recipient().String()} {
		assert.NotContains(t, string(rawManifest), secret, "the manifest names recipients by fingerprint only")
	}
	var stored activities.Manifest
	require.NoError(t, json.Unmarshal(rawManifest, &stored))
	require.Len(t, stored.Mirrors, 1)
	assert.Equal(t, activities.EncryptionNone, stored.Mirrors[0].Encryption, "the mirror says it is not encrypted")

	dir := t.TempDir()
	for _, a := range stored.Artifacts {
		assert.Equal(t, activities.EncryptionAge, a.Encryption, a.Key)
		assert.Equal(t, wantFPs, a.RecipientFingerprints, a.Key)
		path, sum := e.getObject(ctx, t, a.Key, dir)
		assert.Equal(t, a.SHA256, sum, "the manifest's SHA-256 is of the stored, encrypted bytes: %s", a.Key)
		b, err := os.ReadFile(path)
		require.NoError(t, err)
		assert.True(t, bytes.HasPrefix(b, []byte("age-encryption.org/v1\n")), "%s is an age file", a.Key)
		assert.False(t, bytes.HasPrefix(b, []byte{0x28, 0xb5, 0x2f, 0xfd}), "%s is not a zstd frame", a.Key)
		switch a.Kind {
		case activities.KindPostgres:
			assert.NotContains(t, string(b), "PGDMP", "no pg_dump archive in clear")
		case activities.KindRedis:
			assert.NotContains(t, string(b), "REDIS00", "no RDB in clear")
		case activities.KindSQLite:
			assert.NotContains(t, string(b), "SQLite format 3", "no SQLite file in clear")
		case activities.KindListing:
			assert.NotContains(t, string(b), `"key":`, "no listing in clear")
		}
	}

	// Outside drflow: age with the recovery key (the second recipient), zstd, pg_restore.
	for _, a := range stored.Artifacts {
		if a.Kind != activities.KindPostgres || a.Source != schemas.ControllerDB {
			continue
		}
		f, err := os.Open(filepath.Join(dir, filepath.Base(a.Key)))
		require.NoError(t, err)
		plain, err := age.Decrypt(f, recovery)
		require.NoError(t, err)
		zpath := filepath.Join(dir, "decrypted-"+filepath.Base(a.Key))
		out, err := os.Create(zpath)
		require.NoError(t, err)
		_, err = out.ReadFrom(plain)
		require.NoError(t, err)
		require.NoError(t, out.Close())
		f.Close()
		checkDump(ctx, t, e, a, zstdDecode(t, zpath))
	}

	verifyOn := func(t *testing.T, id string, vars map[string]string) error {
		t.Helper()
		queue := e.queue + "-" + id
		startWorker(t, e.c, loadConfig(t, stackEnv(e.st, vars)), queue)
		run, err := e.c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: queue}, workflows.VerifyBackupName,
			workflows.VerifyBackupInput{SetID: res.SetID})
		require.NoError(t, err)
		return run.Get(ctx, nil)
	}
	stillPassed := func(t *testing.T) {
		t.Helper()
		sets, err := e.acts.ListSets(ctx)
		require.NoError(t, err)
		require.NotEmpty(t, sets)
		assert.Equal(t, activities.VerifiedPassed, sets[0].Verified, "a key problem of a worker is no verdict on the set")
	}

	t.Run("another identity", func(t *testing.T) {
		started := time.Now()
		err := verifyOn(t, "verify-age-stranger", map[string]string{
			config.AgeRecipientsEnv: recipients, config.AgeIdentityFileEnv: strangerFile,
		})
		require.Error(t, err)
		app := appErrorOfType(err, activities.ErrAgeIdentityMismatch)
		require.NotNil(t, app, "want %s in %v", activities.ErrAgeIdentityMismatch, err)
		assert.True(t, app.NonRetryable())
		assert.Contains(t, app.Error(), "set "+res.SetID+" (")
		assert.Contains(t, app.Error(), "is encrypted to age recipients "+strings.Join(wantFPs, ", ")+"; none of the identities in DRFLOW_AGE_IDENTITY_FILE")
		assert.Contains(t, app.Error(), activities.AgeFingerprint(stranger.Recipient().String()))
		assert.NotContains(t, err.Error(), stranger.String())
		assert.Less(t, time.Since(started), 60*time.Second, "fails fast, without a download")
		stillPassed(t)
	})

	t.Run("no identity", func(t *testing.T) {
		err := verifyOn(t, "verify-age-none", map[string]string{config.AgeRecipientsEnv: recipients})
		require.Error(t, err)
		app := appErrorOfType(err, activities.ErrAgeIdentityMissing)
		require.NotNil(t, app, "want %s in %v", activities.ErrAgeIdentityMissing, err)
		assert.True(t, app.NonRetryable())
		assert.Contains(t, app.Error(), "set DRFLOW_AGE_IDENTITY_FILE")
		assert.Contains(t, app.Error(), wantFPs[0])
		stillPassed(t)
	})

	t.Run("restore over the live database", func(t *testing.T) {
		ctrlURL := e.st.Postgres.URL(schemas.ControllerDB)
		conn, err := pgx.Connect(ctx, ctrlURL)
		require.NoError(t, err)
		_, err = conn.Exec(ctx, `DELETE FROM tasks_task WHERE id IN (SELECT id FROM tasks_task ORDER BY id LIMIT 25)`)
		conn.Close(ctx)
		require.NoError(t, err)

		var rec workflows.TotalDBLossResult
		require.NoError(t, e.recover(ctx, t, "tdl-age", workflows.TotalDBLossName, workflows.TotalDBLossInput{
			Databases: []string{schemas.ControllerDB}, SkipRedis: true, RecoveryOptions: workflows.RecoveryOptions{AutoApprove: true},
		}, &rec))
		assert.Equal(t, workflows.OutcomeRecovered, rec.Outcome)
		assert.Equal(t, res.SetID, rec.Plan.SetID)
		var dump activities.Artifact
		for _, a := range man.Artifacts {
			if a.Kind == activities.KindPostgres && a.Source == schemas.ControllerDB {
				dump = a
			}
		}
		conn, err = pgx.Connect(ctx, ctrlURL)
		require.NoError(t, err)
		defer conn.Close(ctx)
		require.NotEmpty(t, dump.RowCounts)
		for tbl, want := range dump.RowCounts {
			var got int64
			require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{tbl}.Sanitize()).Scan(&got))
			assert.Equal(t, want, got, "%s restored from the encrypted dump", tbl)
		}
		// The safety copy of what was overwritten is encrypted too.
		require.Len(t, rec.SafetyCopies, 1)
		sc := rec.SafetyCopies[0]
		require.Equal(t, activities.SafetyPostgresKey("tdl-age", schemas.ControllerDB), sc.Key)
		safety := e.readObject(ctx, t, sc.Key)
		assert.True(t, bytes.HasPrefix(safety, []byte("age-encryption.org/v1\n")), "the safety copy is an age file")
		plain, err := age.Decrypt(bytes.NewReader(safety), owner)
		require.NoError(t, err, "and decrypts with the owner's identity")
		_, err = io.Copy(io.Discard, plain)
		require.NoError(t, err)
	})
}
