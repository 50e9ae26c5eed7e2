package activities_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/klauspost/compress/zstd"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/kohakku/drflow/activities"
	"github.com/kohakku/drflow/internal/activitytest"
	"github.com/kohakku/drflow/internal/config"
	"github.com/kohakku/drflow/internal/stack/stacktest"
	"github.com/kohakku/drflow/internal/store"
	"github.com/kohakku/drflow/schemas"
)

// verifyRun is one execution of VerifyDump in the Temporal activity test environment.
type verifyRun struct {
	check      activities.DumpCheck
	err        error
	heartbeats []activities.VerifyProgress
}

// phases returns the distinct phases of the heartbeats, in order.
func (r verifyRun) phases() []string {
	return activitytest.Phases(r.heartbeats, func(p activities.VerifyProgress) string { return p.Phase })
}

// runVerify executes pg.VerifyDump in a test activity environment whose activity
// context is a child of ctx (cancelling ctx cancels the activity). onBeat, when
// set, sees every heartbeat as the activity records it.
func runVerify(t *testing.T, ctx context.Context, pg *activities.Postgres, in activities.VerifyDumpInput, onBeat func(activities.VerifyProgress)) verifyRun {
	t.Helper()
	r := activitytest.Execute[activities.DumpCheck, activities.VerifyProgress](t, ctx, pg, pg.VerifyDump, in, onBeat)
	return verifyRun{check: r.Result, err: r.Err, heartbeats: r.Heartbeats}
}

func runDropScratch(pg *activities.Postgres, name string) error {
	var s testsuite.WorkflowTestSuite
	env := s.NewTestActivityEnvironment()
	env.RegisterActivity(pg)
	_, err := env.ExecuteActivity(pg.DropScratch, activities.DropScratchInput{Database: name})
	return err
}

// scratchDatabases lists the databases whose names start with ScratchPrefix.
func scratchDatabases(t *testing.T, f *pgFixture) []string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, f.st.Postgres.URL("postgres"))
	require.NoError(t, err)
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT datname FROM pg_database WHERE starts_with(datname, $1) ORDER BY 1", activities.ScratchPrefix)
	require.NoError(t, err)
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return names
}

// verifyTempDir points os.TempDir at a fresh directory for the rest of the test and
// returns it, so a test can check that VerifyDump left no staged file behind.
func verifyTempDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	t.Setenv("TMPDIR", dir)
	return dir
}

func assertEmptyDir(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	assert.Empty(t, names, "staged files left in %s", dir)
}

// dumpTo dumps db with the Dump activity into st under key and returns its artifact.
func dumpTo(t *testing.T, f *pgFixture, st store.Store, db, key string) activities.Artifact {
	t.Helper()
	run := runDump(t, context.Background(), f.pg(st), activities.DumpInput{
		SetID: "2026-11-21T02-00-00Z", Database: db, Key: key, CountTables: countTables[db],
	}, nil)
	require.NoError(t, run.err)
	return run.art
}

// putFSObject stores body under key in the FS store and returns art updated to
// describe it: size and SHA-256, and rawSize when it is not negative.
func putFSObject(t *testing.T, f *pgFixture, art activities.Artifact, key string, body []byte, rawSize int64) activities.Artifact {
	t.Helper()
	_, err := f.fs.Put(context.Background(), key, bytes.NewReader(body), store.PutOptions{})
	require.NoError(t, err)
	sum := sha256.Sum256(body)
	art.Key, art.Size, art.SHA256 = key, int64(len(body)), hex.EncodeToString(sum[:])
	if rawSize >= 0 {
		art.RawSize = rawSize
	}
	return art
}

func readFSObject(t *testing.T, f *pgFixture, key string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(f.fsRoot, filepath.FromSlash(key)))
	require.NoError(t, err)
	return b
}

func zstdDecode(t *testing.T, b []byte) []byte {
	t.Helper()
	dec, err := zstd.NewReader(nil)
	require.NoError(t, err)
	defer dec.Close()
	raw, err := dec.DecodeAll(b, nil)
	require.NoError(t, err)
	return raw
}

func zstdEncode(t *testing.T, raw []byte) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil)
	require.NoError(t, err)
	defer enc.Close()
	return enc.EncodeAll(raw, nil)
}

// testScratchName is a scratch database name unique to the test.
func testScratchName() string {
	return fmt.Sprintf("%st%d", activities.ScratchPrefix, time.Now().UnixNano())
}

// recordingPgRestore is a pg_restore that appends its arguments to $DIR/args,
// "set" to $DIR/pgpassword when PGPASSWORD is set and its pid to $DIR/pids,
// then becomes the real pg_restore (same pid).
const recordingPgRestore = `printf '%s\n' "$@" >> "$DIR/args"
if [ -n "$PGPASSWORD" ]; then echo set >> "$DIR/pgpassword"; fi
echo $$ >> "$DIR/pids"
exec "$REAL" "$@"`

// fakePgRestore writes script as pg_restore into a new directory and returns the
// directory, for Postgres.BinDir. In script, $REAL is the real pg_restore and
// $DIR the directory.
func fakePgRestore(t *testing.T, f *pgFixture, script string) string {
	t.Helper()
	dir := t.TempDir()
	body := fmt.Sprintf("#!/bin/sh\nREAL='%s'\nDIR='%s'\n%s\n",
		filepath.Join(f.st.Postgres.BinDir(), "pg_restore"), dir, script)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "pg_restore"), []byte(body), 0o755))
	return dir
}

func TestVerifyDump(t *testing.T) {
	f := newPGFixture(t)
	ctl, dsp := schemas.ControllerDB, schemas.DispatcherDB
	const set = "2026-11-21T02-00-00Z"
	good := map[string]activities.Artifact{} // by store/db
	for _, sc := range storeCases {
		for _, db := range []string{ctl, dsp} {
			good[sc.name+"/"+db] = dumpTo(t, f, sc.st(f), db, activities.PostgresKey(set+"-"+sc.name, db))
		}
	}

	t.Run("good dump restores", func(t *testing.T) {
		for _, sc := range storeCases {
			for _, db := range []string{ctl, dsp} {
				t.Run(sc.name+"/"+db, func(t *testing.T) {
					tmp := verifyTempDir(t)
					art := good[sc.name+"/"+db]
					run := runVerify(t, context.Background(), f.pg(sc.st(f)), activities.VerifyDumpInput{
						SetID: set, Artifact: art, Restore: true, Scratch: testScratchName(), Jobs: 2,
					}, nil)
					require.NoError(t, run.err)
					c := run.check
					assert.True(t, c.Passed, "problems: %v", c.Problems)
					assert.Empty(t, c.Problems)
					assert.Empty(t, c.Finding)
					assert.Equal(t, db, c.Database)
					assert.Equal(t, art.Key, c.Key)
					assert.True(t, c.ChecksumOK)
					assert.True(t, c.ListOK)
					assert.True(t, c.Restored)
					require.Len(t, art.RowCounts, 2)
					assert.Equal(t, art.RowCounts, c.RowCounts, "restored row counts")
					assert.Positive(t, c.Download)
					assert.Positive(t, c.Restore)
					assert.Equal(t, c.Download+c.Restore, c.RTO)
					assert.Empty(t, scratchDatabases(t, f), "scratch database dropped")
					assertEmptyDir(t, tmp)

					assert.Equal(t, []string{"download", "list", "create", "restore", "count", "drop", "done"}, run.phases())
					last := run.heartbeats[len(run.heartbeats)-1]
					assert.Equal(t, activities.VerifyProgress{Phase: "done", StoredBytes: art.Size, RawBytes: art.RawSize}, last)
				})
			}
		}
	})

	t.Run("without restore checks the archive only", func(t *testing.T) {
		tmp := verifyTempDir(t)
		art := good["fs/"+ctl]
		run := runVerify(t, context.Background(), f.pg(f.fs), activities.VerifyDumpInput{SetID: set, Artifact: art}, nil)
		require.NoError(t, run.err)
		c := run.check
		assert.True(t, c.Passed, "problems: %v", c.Problems)
		assert.True(t, c.ChecksumOK)
		assert.True(t, c.ListOK)
		assert.False(t, c.Restored)
		assert.Nil(t, c.RowCounts)
		assert.Positive(t, c.Download)
		assert.Zero(t, c.RTO, "no RTO without a restore")
		assert.Equal(t, []string{"download", "list", "done"}, run.phases())
		assertEmptyDir(t, tmp)
	})

	t.Run("checksum mismatch", func(t *testing.T) {
		orig := good["fs/"+ctl]
		body := readFSObject(t, f, orig.Key)
		tests := []struct {
			name   string
			edit   func(b []byte) []byte
			expect []string
		}{
			{
				name:   "one flipped byte",
				edit:   func(b []byte) []byte { b[len(b)/2] ^= 0x01; return b },
				expect: []string{"checksum mismatch: sha256 ", " in the store, " + orig.SHA256 + " in the manifest"},
			},
			{
				name:   "flipped byte in the zstd frame header",
				edit:   func(b []byte) []byte { b[5] ^= 0x40; return b },
				expect: []string{"checksum mismatch: sha256 "},
			},
			{
				name:   "one byte more",
				edit:   func(b []byte) []byte { return append(b, 0) },
				expect: []string{fmt.Sprintf("size mismatch: %d bytes in the store, %d in the manifest", orig.Size+1, orig.Size)},
			},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				tmp := verifyTempDir(t)
				key := activities.PostgresKey("2026-11-21T03-00-00Z-"+strings.ReplaceAll(tt.name, " ", "-"), ctl)
				art := putFSObject(t, f, orig, key, body, -1)
				// The manifest keeps the original figures; the stored file is edited in place.
				art.Size, art.SHA256 = orig.Size, orig.SHA256
				path := filepath.Join(f.fsRoot, filepath.FromSlash(key))
				require.NoError(t, os.WriteFile(path, tt.edit(slices.Clone(body)), 0o600))

				run := runVerify(t, context.Background(), f.pg(f.fs), activities.VerifyDumpInput{
					SetID: set, Artifact: art, Restore: true, Scratch: testScratchName(),
				}, nil)
				require.NoError(t, run.err, "a finding is a result, not an error")
				c := run.check
				assert.False(t, c.Passed)
				assert.Equal(t, activities.ErrChecksumMismatch, c.Finding)
				assert.False(t, c.ChecksumOK)
				assert.False(t, c.ListOK)
				assert.False(t, c.Restored)
				assert.Zero(t, c.RTO)
				require.Len(t, c.Problems, 1)
				assert.True(t, strings.HasPrefix(c.Problems[0], key+": "), "names the key: %s", c.Problems[0])
				for _, s := range tt.expect {
					assert.Contains(t, c.Problems[0], s)
				}
				t.Logf("problem: %s", c.Problems[0])
				assert.Equal(t, []string{"download"}, run.phases(), "no restore of bad data")
				assert.Empty(t, scratchDatabases(t, f), "no scratch database")
				assertEmptyDir(t, tmp)
			})
		}
	})

	t.Run("unreadable archive", func(t *testing.T) {
		orig := good["fs/"+ctl]
		raw := zstdDecode(t, readFSObject(t, f, orig.Key))
		require.Equal(t, orig.RawSize, int64(len(raw)))
		tests := []struct {
			name string
			body []byte
			raw  int64
			// expect are substrings of the one problem.
			expect []string
		}{
			{
				// The table of contents is whole, so --list alone passes: the full read catches it.
				name:   "first half of the dump",
				body:   zstdEncode(t, raw[:len(raw)/2]),
				raw:    int64(len(raw) / 2),
				expect: []string{"truncated or corrupt archive", "pg_restore --list", "pg_restore: error:"},
			},
			{
				name:   "cut inside the table of contents",
				body:   zstdEncode(t, raw[:1500]),
				raw:    1500,
				expect: []string{"pg_restore --list failed: ", "pg_restore: error:"},
			},
			{
				name:   "not a dump",
				body:   zstdEncode(t, []byte(strings.Repeat("SELECT 1;\n", 1000))),
				raw:    10000,
				expect: []string{"pg_restore --list failed: ", "input file does not appear to be a valid archive"},
			},
			{
				name:   "not zstd",
				body:   raw[:4096],
				raw:    4096,
				expect: []string{"stored bytes match the manifest but do not decode: zstd: "},
			},
			{
				name:   "decompresses to another size than the manifest's",
				body:   zstdEncode(t, raw),
				raw:    int64(len(raw)) + 1,
				expect: []string{fmt.Sprintf("decompressed to %d bytes, %d in the manifest", len(raw), len(raw)+1)},
			},
		}
		for i, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				tmp := verifyTempDir(t)
				key := activities.PostgresKey(fmt.Sprintf("2026-11-21T04-00-0%dZ", i), ctl)
				// The manifest describes the stored bytes: the checksum passes.
				art := putFSObject(t, f, orig, key, tt.body, tt.raw)
				run := runVerify(t, context.Background(), f.pg(f.fs), activities.VerifyDumpInput{
					SetID: set, Artifact: art, Restore: true, Scratch: testScratchName(),
				}, nil)
				require.NoError(t, run.err, "a finding is a result, not an error")
				c := run.check
				require.Len(t, c.Problems, 1, "problems: %v", c.Problems)
				t.Logf("problem: %s", c.Problems[0])
				assert.False(t, c.Passed)
				assert.Equal(t, activities.ErrArchiveCorrupt, c.Finding)
				assert.True(t, c.ChecksumOK)
				assert.False(t, c.ListOK)
				assert.False(t, c.Restored)
				assert.True(t, strings.HasPrefix(c.Problems[0], key+": "), "names the key: %s", c.Problems[0])
				for _, s := range tt.expect {
					assert.Contains(t, c.Problems[0], s)
				}
				assert.NotContains(t, run.phases(), "create", "nothing restored")
				assert.Empty(t, scratchDatabases(t, f), "no scratch database")
				assertEmptyDir(t, tmp)
			})
		}
	})

	t.Run("row counts differ from the manifest", func(t *testing.T) {
		tmp := verifyTempDir(t)
		art := good["fs/"+ctl]
		tasks := art.RowCounts[schemas.TasksTable]
		art.RowCounts = map[string]int64{
			schemas.TasksTable:  tasks + 1,
			schemas.BriefsTable: art.RowCounts[schemas.BriefsTable],
			"no_such_table":     5,
		}
		run := runVerify(t, context.Background(), f.pg(f.fs), activities.VerifyDumpInput{
			SetID: set, Artifact: art, Restore: true, Scratch: testScratchName(), Jobs: 1,
		}, nil)
		require.NoError(t, run.err)
		c := run.check
		assert.False(t, c.Passed)
		assert.True(t, c.Restored)
		assert.Equal(t, activities.ErrRowCountMismatch, c.Finding)
		assert.Equal(t, []string{
			art.Key + ": table no_such_table is missing from the restored database, 5 rows in the manifest",
			fmt.Sprintf("%s: %s has %d rows restored, %d in the manifest", art.Key, schemas.TasksTable, tasks, tasks+1),
		}, c.Problems)
		assert.Equal(t, map[string]int64{schemas.TasksTable: tasks, schemas.BriefsTable: art.RowCounts[schemas.BriefsTable]}, c.RowCounts)
		assert.Positive(t, c.RTO, "the restore itself worked")
		assert.Empty(t, scratchDatabases(t, f), "scratch database dropped")
		assertEmptyDir(t, tmp)
	})

	t.Run("failed restore leaves no scratch database", func(t *testing.T) {
		restoreFailureTest(t, f)
	})

	t.Run("password goes to pg_restore by environment", func(t *testing.T) {
		addPasswordRole(t, f)
		ctx := context.Background()
		conn, err := pgx.Connect(ctx, f.st.Postgres.URL("postgres"))
		require.NoError(t, err)
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, "ALTER ROLE "+pwRole+" CREATEDB")
		require.NoError(t, err)

		bin := fakePgRestore(t, f, recordingPgRestore)
		pg := f.pg(f.fs)
		pg.Config = passwordConfig(f, pwPassword)
		pg.BinDir = bin
		art := good["fs/"+dsp]
		run := runVerify(t, ctx, pg, activities.VerifyDumpInput{SetID: set, Artifact: art, Restore: true, Scratch: testScratchName()}, nil)
		require.NoError(t, run.err)
		assert.True(t, run.check.Passed, "problems: %v", run.check.Problems)
		assert.Equal(t, art.RowCounts, run.check.RowCounts)

		args, err := os.ReadFile(filepath.Join(bin, "args"))
		require.NoError(t, err)
		for _, form := range []string{pwPassword, "p@ss", "S3cr3t"} {
			assert.NotContains(t, string(args), form, "pg_restore's argv")
		}
		assert.Contains(t, string(args), "--no-password")
		assert.Contains(t, string(args), "--dbname=postgres://"+pwRole+"@127.0.0.1:")
		_, err = os.Stat(filepath.Join(bin, "pgpassword"))
		assert.NoError(t, err, "PGPASSWORD set for pg_restore")
		assert.Empty(t, scratchDatabases(t, f))
	})

	t.Run("errors", func(t *testing.T) {
		verifyErrorTests(t, f, good["fs/"+ctl])
	})

	t.Run("cancel during the restore", func(t *testing.T) {
		cancelRestoreTest(t, f)
	})
}

// restoreFailureTest dumps a database with a row-level security policy for a
// role, then drops the role: the dump lists and reads fine, but restoring it on
// a server without the role fails, as it does on a rebuilt cluster whose roles
// were not recreated. With --exit-on-error the failure is a finding.
func restoreFailureTest(t *testing.T, f *pgFixture) {
	ctx := context.Background()
	const db, role = "verify-policy", "drflow_gone_role"
	require.NoError(t, f.st.Postgres.CreateDatabase(ctx, db))
	admin, err := pgx.Connect(ctx, f.st.Postgres.URL("postgres"))
	require.NoError(t, err)
	defer admin.Close(ctx)
	_, err = admin.Exec(ctx, "CREATE ROLE "+role)
	require.NoError(t, err)
	conn, err := pgx.Connect(ctx, f.st.Postgres.URL(db))
	require.NoError(t, err)
	defer conn.Close(ctx)
	for _, q := range []string{
		"CREATE TABLE notes (id int PRIMARY KEY, body text)",
		"INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 100) g",
		"ALTER TABLE notes ENABLE ROW LEVEL SECURITY",
		"CREATE POLICY own_notes ON notes TO " + role + " USING (true)",
	} {
		_, err := conn.Exec(ctx, q)
		require.NoError(t, err, q)
	}
	run := runDump(t, ctx, f.pg(f.fs), activities.DumpInput{Database: db, Key: activities.PostgresKey("2026-11-21T05-00-00Z", db), CountTables: []string{"notes"}}, nil)
	require.NoError(t, run.err)
	_, err = conn.Exec(ctx, "DROP POLICY own_notes ON notes")
	require.NoError(t, err)
	_, err = admin.Exec(ctx, "DROP ROLE "+role)
	require.NoError(t, err)

	tmp := verifyTempDir(t)
	bin := fakePgRestore(t, f, recordingPgRestore)
	pg := f.pg(f.fs)
	pg.BinDir = bin
	scratch := testScratchName()
	v := runVerify(t, ctx, pg, activities.VerifyDumpInput{Artifact: run.art, Restore: true, Scratch: scratch, Jobs: 2}, nil)
	require.NoError(t, v.err, "a failed restore is a finding")
	c := v.check
	require.Len(t, c.Problems, 1, "problems: %v", c.Problems)
	t.Logf("problem: %s", c.Problems[0])
	assert.False(t, c.Passed)
	assert.Equal(t, activities.ErrRestoreFailed, c.Finding)
	assert.True(t, c.ChecksumOK)
	assert.True(t, c.ListOK)
	assert.False(t, c.Restored)
	assert.Zero(t, c.RTO, "no RTO for a failed restore")
	assert.Contains(t, c.Problems[0], run.art.Key+": pg_restore into scratch database "+scratch+" failed: ")
	assert.Contains(t, c.Problems[0], `role "`+role+`" does not exist`)
	assert.Equal(t, []string{"download", "list", "create", "restore", "drop", "done"}, v.phases())
	assert.Empty(t, scratchDatabases(t, f), "scratch database dropped")
	assertEmptyDir(t, tmp)
	assertPgRestoreGone(t, bin)
}

// assertPgRestoreGone checks that every pg_restore the recording wrapper in bin started,
// and every process of its group (the workers of --jobs), has exited.
func assertPgRestoreGone(t *testing.T, bin string) {
	t.Helper()
	text, err := os.ReadFile(filepath.Join(bin, "pids"))
	require.NoError(t, err)
	pids := strings.Fields(string(text))
	require.NotEmpty(t, pids)
	for _, s := range pids {
		var pid int
		_, err := fmt.Sscan(s, &pid)
		require.NoError(t, err)
		assert.ErrorIs(t, syscall.Kill(pid, 0), syscall.ESRCH, "pg_restore %d is gone", pid)
		assert.ErrorIs(t, syscall.Kill(-pid, 0), syscall.ESRCH, "process group %d is gone", pid)
	}
}

func verifyErrorTests(t *testing.T, f *pgFixture, art activities.Artifact) {
	const secret = "hunter2-secret"
	missing := art
	missing.Key = activities.PostgresKey("2026-01-01T00-00-00Z", schemas.ControllerDB)
	noKey := art
	noKey.Key = ""
	badSum := art
	badSum.SHA256 = "abc"
	tests := []struct {
		name     string
		setup    func(pg *activities.Postgres)
		in       activities.VerifyDumpInput
		errType  string // "" for a retryable error
		contains []string
	}{
		{
			name:     "empty key",
			in:       activities.VerifyDumpInput{Artifact: noKey},
			errType:  activities.ErrInvalidInput,
			contains: []string{"artifact key is empty", schemas.ControllerDB},
		},
		{
			name:     "scratch name without the prefix",
			in:       activities.VerifyDumpInput{Artifact: art, Restore: true, Scratch: schemas.ControllerDB},
			errType:  activities.ErrInvalidInput,
			contains: []string{art.Key, `"kohakku-controller" does not start with drflow_verify_`},
		},
		{
			name:     "no scratch name",
			in:       activities.VerifyDumpInput{Artifact: art, Restore: true},
			errType:  activities.ErrInvalidInput,
			contains: []string{"does not start with drflow_verify_"},
		},
		{
			name:     "manifest sha256 is not one",
			in:       activities.VerifyDumpInput{Artifact: badSum},
			errType:  activities.ErrInvalidInput,
			contains: []string{`sha256 "abc"`},
		},
		{
			name:     "object missing from the store",
			in:       activities.VerifyDumpInput{Artifact: missing, Restore: true, Scratch: activities.ScratchPrefix + "missing"},
			errType:  activities.ErrArtifactNotFound,
			contains: []string{missing.Key, "does not hold", "not found"},
		},
		{
			name:     "no server configured",
			setup:    func(pg *activities.Postgres) { pg.Config = config.Postgres{} },
			in:       activities.VerifyDumpInput{Artifact: art, Restore: true, Scratch: activities.ScratchPrefix + "x"},
			errType:  activities.ErrInvalidConfig,
			contains: []string{"DRFLOW_POSTGRES_URL"},
		},
		{
			name: "server unreachable is retried",
			setup: func(pg *activities.Postgres) {
				pg.Config = config.Postgres{URL: closedPortURL(t), Password: secret}
			},
			in:       activities.VerifyDumpInput{Artifact: art, Restore: true, Scratch: activities.ScratchPrefix + "refused"},
			contains: []string{art.Key, "connect"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmp := verifyTempDir(t)
			pg := f.pg(f.fs)
			if tt.setup != nil {
				tt.setup(pg)
			}
			run := runVerify(t, context.Background(), pg, tt.in, nil)
			t.Logf("error: %v", run.err)
			app := appError(t, run.err)
			if tt.errType == "" {
				assert.False(t, app.NonRetryable(), "retryable: %v", run.err)
			} else {
				assert.True(t, app.NonRetryable(), "non-retryable: %v", run.err)
				assert.Equal(t, tt.errType, app.Type(), "error type of %v", run.err)
			}
			for _, s := range tt.contains {
				assert.Contains(t, run.err.Error(), s)
			}
			assert.NotContains(t, allText(run.err), secret)
			assertEmptyDir(t, tmp)
		})
	}
}

// cancelRestoreTest cancels the activity while pg_restore -j 2 is loading a
// database big enough to take seconds: pg_restore and its workers are killed,
// the scratch database is dropped and the staged file removed before the
// activity returns.
func cancelRestoreTest(t *testing.T, f *pgFixture) {
	ctx := context.Background()
	const db = "verify-big"
	require.NoError(t, f.st.Postgres.CreateDatabase(ctx, db))
	conn, err := pgx.Connect(ctx, f.st.Postgres.URL(db))
	require.NoError(t, err)
	defer conn.Close(ctx)
	for _, q := range []string{
		"CREATE TABLE big_a (id bigint PRIMARY KEY, body text)",
		"INSERT INTO big_a SELECT g, md5(g::text) || repeat(' lorem ipsum', 8) FROM generate_series(1, 600000) g",
		"CREATE TABLE big_b (id bigint PRIMARY KEY, body text)",
		"INSERT INTO big_b SELECT g, md5(g::text) || repeat(' dolor sit', 8) FROM generate_series(1, 600000) g",
		"CREATE INDEX big_a_body ON big_a (body)",
		"CREATE INDEX big_b_body ON big_b (body)",
	} {
		_, err := conn.Exec(ctx, q)
		require.NoError(t, err, q)
	}
	dump := runDump(t, ctx, f.pg(f.fs), activities.DumpInput{Database: db, Key: activities.PostgresKey("2026-11-21T06-00-00Z", db), CountTables: []string{"big_a", "big_b"}}, nil)
	require.NoError(t, dump.err)

	tmp := verifyTempDir(t)
	bin := fakePgRestore(t, f, recordingPgRestore)
	pg := f.pg(f.fs)
	pg.BinDir = bin
	scratch := testScratchName()
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	var once sync.Once
	restoring := make(chan struct{})
	done := make(chan verifyRun, 1)
	go func() {
		done <- runVerify(t, actx, pg, activities.VerifyDumpInput{Artifact: dump.art, Restore: true, Scratch: scratch, Jobs: 2},
			func(p activities.VerifyProgress) {
				if p.Phase == "restore" {
					once.Do(func() { close(restoring) })
				}
			})
	}()
	select {
	case <-restoring:
	case run := <-done:
		t.Fatalf("verification ended before the restore: %v %+v", run.err, run.check)
	case <-time.After(2 * time.Minute):
		t.Fatal("restore did not start")
	}
	// Cancel while pg_restore's sessions are loading data into the scratch database.
	var sessions int
	require.Eventually(t, func() bool {
		err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'drflow pg_restore' AND state = 'active'", scratch).Scan(&sessions)
		require.NoError(t, err)
		return sessions > 0
	}, time.Minute, 5*time.Millisecond, "pg_restore sessions in %s", scratch)
	t.Logf("cancelling with %d active pg_restore sessions", sessions)
	cancelled := time.Now()
	cancel()
	var run verifyRun
	select {
	case run = <-done:
	case <-time.After(time.Minute):
		t.Fatal("cancelled verification did not end")
	}
	t.Logf("ended %s after the cancellation: %v", time.Since(cancelled).Round(time.Millisecond), run.err)
	require.Error(t, run.err)
	var canceled *temporal.CanceledError
	if !errors.As(run.err, &canceled) {
		assert.Contains(t, run.err.Error(), "context canceled")
	}
	assert.Empty(t, scratchDatabases(t, f), "scratch database dropped")
	assertPgRestoreGone(t, bin)
	assertEmptyDir(t, tmp)
	assert.Contains(t, run.phases(), "drop")
}

func TestDropScratch(t *testing.T) {
	ctx := context.Background()
	srv := stacktest.Postgres(t)
	pg := &activities.Postgres{Config: config.Postgres{URL: srv.URL("postgres")}, BinDir: srv.BinDir()}
	name := activities.ScratchPrefix + "drop_test"
	require.NoError(t, srv.CreateDatabase(ctx, name))
	require.NoError(t, srv.CreateDatabase(ctx, schemas.ControllerDB))
	exists := func(db string) bool {
		conn, err := pgx.Connect(ctx, srv.URL("postgres"))
		require.NoError(t, err)
		defer conn.Close(ctx)
		var ok bool
		require.NoError(t, conn.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", db).Scan(&ok))
		return ok
	}

	// A session still connected to the scratch database does not stop the drop.
	held, err := pgx.Connect(ctx, srv.URL(name))
	require.NoError(t, err)
	defer held.Close(ctx)

	require.NoError(t, runDropScratch(pg, name))
	assert.False(t, exists(name), "dropped")
	require.NoError(t, runDropScratch(pg, name), "idempotent: dropping it again succeeds")

	for _, bad := range []string{schemas.ControllerDB, "postgres", "", "drflow_verif", activities.ScratchPrefix + strings.Repeat("x", 60)} {
		t.Run("refuses "+bad, func(t *testing.T) {
			err := runDropScratch(pg, bad)
			app := appError(t, err)
			assert.True(t, app.NonRetryable())
			assert.Equal(t, activities.ErrInvalidInput, app.Type())
			t.Logf("error: %v", err)
		})
	}
	assert.True(t, exists(schemas.ControllerDB), "kohakku-controller untouched")

	t.Run("server unreachable is retried", func(t *testing.T) {
		pg := &activities.Postgres{Config: config.Postgres{URL: closedPortURL(t)}}
		app := appError(t, runDropScratch(pg, name))
		assert.False(t, app.NonRetryable())
	})
}
