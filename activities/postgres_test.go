package activities_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/klauspost/compress/zstd"
	"github.com/minio/minio-go/v7"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/interceptor"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/worker"

	"github.com/kohakku/drflow/activities"
	"github.com/kohakku/drflow/internal/activitytest"
	"github.com/kohakku/drflow/internal/config"
	"github.com/kohakku/drflow/internal/kohakku"
	"github.com/kohakku/drflow/internal/stack"
	"github.com/kohakku/drflow/internal/stack/stacktest"
	"github.com/kohakku/drflow/internal/store"
	"github.com/kohakku/drflow/schemas"
)

// countTables are the manifest's tables per Kohakku database, as the workflow passes them.
var countTables = map[string][]string{
	schemas.ControllerDB: {schemas.TasksTable, schemas.BriefsTable},
	schemas.DispatcherDB: {schemas.AgentContainersTable, schemas.DispatchAssignmentsTable},
}

// pgFixture is one seeded Kohakku stack and the two kinds of backup store.
type pgFixture struct {
	st      *stack.Stack
	fsRoot  string
	fs      *store.FS
	s3      *store.S3
	bucket  string // of s3, on st.Backup
	prefix  string // of s3
	objects *minio.Client
}

// The stores a dump is tested against.
type storeCase struct {
	name string
	st   func(f *pgFixture) store.Store
	// read returns the stored bytes, reading the backend directly (not through Store).
	read func(t *testing.T, f *pgFixture, key string) []byte
	// keys lists every object and leftover (temporary file, incomplete upload) under prefix.
	keys func(t *testing.T, f *pgFixture, prefix string) []string
}

var storeCases = []storeCase{
	{
		name: "fs",
		st:   func(f *pgFixture) store.Store { return f.fs },
		read: func(t *testing.T, f *pgFixture, key string) []byte {
			b, err := os.ReadFile(filepath.Join(f.fsRoot, filepath.FromSlash(key)))
			require.NoError(t, err)
			return b
		},
		keys: func(t *testing.T, f *pgFixture, prefix string) []string {
			var keys []string
			err := filepath.WalkDir(f.fsRoot, func(path string, d fs.DirEntry, err error) error {
				if err != nil || d.IsDir() {
					return err
				}
				rel, err := filepath.Rel(f.fsRoot, path)
				if k := filepath.ToSlash(rel); err == nil && strings.HasPrefix(k, prefix) {
					keys = append(keys, k)
				}
				return err
			})
			require.NoError(t, err)
			return keys
		},
	},
	{
		name: "s3",
		st:   func(f *pgFixture) store.Store { return f.s3 },
		read: func(t *testing.T, f *pgFixture, key string) []byte {
			obj, err := f.objects.GetObject(context.Background(), f.bucket, f.prefix+key, minio.GetObjectOptions{})
			require.NoError(t, err)
			defer obj.Close()
			b, err := io.ReadAll(obj)
			require.NoError(t, err)
			return b
		},
		keys: func(t *testing.T, f *pgFixture, prefix string) []string {
			ctx := context.Background()
			var keys []string
			for o := range f.objects.ListObjects(ctx, f.bucket, minio.ListObjectsOptions{Prefix: f.prefix + prefix, Recursive: true}) {
				require.NoError(t, o.Err)
				keys = append(keys, o.Key)
			}
			for u := range f.objects.ListIncompleteUploads(ctx, f.bucket, f.prefix+prefix, true) {
				require.NoError(t, u.Err)
				keys = append(keys, "incomplete upload "+u.Key)
			}
			return keys
		},
	},
}

func newPGFixture(t *testing.T) *pgFixture {
	t.Helper()
	ctx := context.Background()
	st := stacktest.Start(t)
	f := &pgFixture{st: st, fsRoot: t.TempDir(), bucket: "drflow-backups", prefix: "backups/"}

	pool := func(db string) *pgxpool.Pool {
		require.NoError(t, st.Postgres.CreateDatabase(ctx, db))
		p, err := pgxpool.New(ctx, st.Postgres.URL(db))
		require.NoError(t, err)
		t.Cleanup(p.Close)
		return p
	}
	rdb := redis.NewClient(&redis.Options{Addr: st.Redis.Addr()})
	t.Cleanup(func() { rdb.Close() })
	appObjects, err := st.MinIO.Client()
	require.NoError(t, err)
	_, err = kohakku.Seed(ctx, kohakku.Target{
		Controller: pool(schemas.ControllerDB),
		Dispatcher: pool(schemas.DispatcherDB),
		Redis:      rdb,
		Objects:    appObjects,
	}, kohakku.SeedOptions{Tasks: 2000, Seed: 7})
	require.NoError(t, err)

	f.fs, err = store.NewFS(f.fsRoot)
	require.NoError(t, err)
	require.NoError(t, st.Backup.MakeBucket(ctx, f.bucket))
	f.s3, err = store.NewS3(ctx, s3Config(st.Backup, f.bucket, f.prefix))
	require.NoError(t, err)
	f.objects, err = st.Backup.Client()
	require.NoError(t, err)
	return f
}

func s3Config(m *stack.MinIO, bucket, prefix string) store.S3Config {
	return store.S3Config{
		Bucket: bucket, Endpoint: m.URL(), Region: m.Region(),
		AccessKeyID: m.AccessKey(), SecretAccessKey: m.SecretKey(),
		ForcePathStyle: true, Prefix: prefix, PartSize: store.MinPartSize,
	}
}

// pg returns the activity struct for the trusted superuser of f's cluster.
func (f *pgFixture) pg(st store.Store) *activities.Postgres {
	return &activities.Postgres{
		Config:            config.Postgres{URL: f.st.Postgres.URL("postgres")},
		Store:             st,
		BinDir:            f.st.Postgres.BinDir(),
		HeartbeatInterval: 20 * time.Millisecond,
	}
}

// dumpRun is one execution of Dump in the Temporal activity test environment.
type dumpRun struct {
	art        activities.Artifact
	err        error
	heartbeats []activities.DumpProgress
}

// runDump executes pg.Dump in a test activity environment whose activity context
// is a child of ctx (cancelling ctx cancels the activity). onBeat, when set, sees
// every heartbeat as the activity records it.
func runDump(t *testing.T, ctx context.Context, pg *activities.Postgres, in activities.DumpInput, onBeat func(activities.DumpProgress)) dumpRun {
	t.Helper()
	var mu sync.Mutex
	var run dumpRun
	beats := activitytest.Heartbeats(func(details ...any) {
		p, ok := details[0].(activities.DumpProgress)
		if !ok || len(details) != 1 {
			t.Errorf("heartbeat details %#v, want one DumpProgress", details)
			return
		}
		mu.Lock()
		run.heartbeats = append(run.heartbeats, p)
		mu.Unlock()
		if onBeat != nil {
			onBeat(p)
		}
	})
	var s testsuite.WorkflowTestSuite
	env := s.NewTestActivityEnvironment()
	env.SetWorkerOptions(worker.Options{
		BackgroundActivityContext: ctx,
		// The environment hands the server only some heartbeats (throttled); the
		// interceptor sees every one.
		Interceptors: []interceptor.WorkerInterceptor{beats},
	})
	env.RegisterActivity(pg)
	v, err := env.ExecuteActivity(pg.Dump, in)
	mu.Lock()
	defer mu.Unlock()
	run.err = err
	if err == nil {
		require.NoError(t, v.Get(&run.art))
	}
	return run
}

func TestPostgresDump(t *testing.T) {
	f := newPGFixture(t)

	t.Run("stores a restorable dump", func(t *testing.T) {
		for _, sc := range storeCases {
			for _, db := range []string{schemas.ControllerDB, schemas.DispatcherDB} {
				t.Run(sc.name+"/"+db, func(t *testing.T) {
					key := "sets/2026-11-21T02-00-00Z-" + sc.name + "/postgres/" + db + ".dump.zst"
					begin := time.Now()
					run := runDump(t, context.Background(), f.pg(sc.st(f)), activities.DumpInput{
						SetID: "2026-11-21T02-00-00Z", Database: db, Key: key, CountTables: countTables[db],
					}, nil)
					require.NoError(t, run.err)
					art := run.art

					assert.Equal(t, activities.KindPostgres, art.Kind)
					assert.Equal(t, db, art.Source)
					assert.Equal(t, key, art.Key)
					assert.Equal(t, "zstd", art.Compression)
					assert.Equal(t, "none", art.Encryption)
					assert.Regexp(t, `^PostgreSQL 1\d\.\d+$`, art.SourceVersion)
					assert.WithinDuration(t, begin, art.StartedAt, 5*time.Second)
					assert.Positive(t, art.Duration)
					assert.Greater(t, art.RawSize, art.Size, "compressed")
					require.Len(t, art.RowCounts, len(countTables[db]))
					source := rowCounts(t, f.st.Postgres.URL(db), countTables[db])
					assert.Equal(t, source, art.RowCounts, "counts of the unchanged source")
					for _, tbl := range countTables[db] {
						assert.Positive(t, art.RowCounts[tbl], tbl)
					}
					require.NotEmpty(t, run.heartbeats)
					assert.Equal(t, "snapshot", run.heartbeats[0].Phase, "first heartbeat")
					for i := 1; i < len(run.heartbeats); i++ {
						assert.GreaterOrEqual(t, run.heartbeats[i].RawBytes, run.heartbeats[i-1].RawBytes, "progress never goes back")
					}
					last := run.heartbeats[len(run.heartbeats)-1]
					assert.Equal(t, activities.DumpProgress{Phase: "stored", RawBytes: art.RawSize, StoredBytes: art.Size}, last)

					restored := verifyDump(t, f, sc, art)
					assert.Equal(t, art.RowCounts, rowCounts(t, f.st.Postgres.URL(restored), countTables[db]), "restored counts")
				})
			}
		}
	})

	t.Run("counts and dump share one snapshot", func(t *testing.T) {
		snapshotTest(t, f)
	})

	t.Run("password goes to pg_dump by environment", func(t *testing.T) {
		passwordTest(t, f)
	})

	t.Run("errors", func(t *testing.T) {
		errorTests(t, f)
	})

	t.Run("failing pg_dump stores nothing", func(t *testing.T) {
		failingPgDumpTests(t, f)
	})

	t.Run("cancel stores nothing", func(t *testing.T) {
		cancelTests(t, f)
	})
}

// verifyDump checks the stored object against art without the activity's code:
// size and SHA-256 of the raw object, zstd decoding, pg_restore --list, and a
// restore into a fresh database, whose name it returns.
func verifyDump(t *testing.T, f *pgFixture, sc storeCase, art activities.Artifact) string {
	t.Helper()
	ctx := context.Background()
	stored := sc.read(t, f, art.Key)
	require.Equal(t, art.Size, int64(len(stored)), "stored size")
	sum := sha256.Sum256(stored)
	require.Equal(t, art.SHA256, hex.EncodeToString(sum[:]), "SHA-256 of the stored bytes")

	dec, err := zstd.NewReader(bytes.NewReader(stored))
	require.NoError(t, err)
	defer dec.Close()
	dir := t.TempDir()
	dumpPath := filepath.Join(dir, "dump")
	out, err := os.Create(dumpPath)
	require.NoError(t, err)
	n, err := io.Copy(out, dec)
	require.NoError(t, err)
	require.NoError(t, out.Close())
	require.Equal(t, art.RawSize, n, "decoded size")
	if zstdCLI, err := exec.LookPath("zstd"); err == nil {
		// The reference implementation agrees that the stream is intact.
		cmd := exec.Command(zstdCLI, "-t", "-q")
		cmd.Stdin = bytes.NewReader(stored)
		outp, err := cmd.CombinedOutput()
		require.NoError(t, err, "zstd -t: %s", outp)
	}

	bin := f.st.Postgres.BinDir()
	list, err := exec.Command(filepath.Join(bin, "pg_restore"), "--list", dumpPath).CombinedOutput()
	require.NoError(t, err, "pg_restore --list: %s", list)
	for tbl := range art.RowCounts {
		assert.Contains(t, string(list), "TABLE DATA public "+tbl+" ", "pg_restore --list")
	}

	restored := fmt.Sprintf("restored-%d", time.Now().UnixNano())
	require.NoError(t, f.st.Postgres.CreateDatabase(ctx, restored))
	outp, err := exec.Command(filepath.Join(bin, "pg_restore"), "--exit-on-error", "--no-owner",
		"--dbname="+f.st.Postgres.URL(restored), dumpPath).CombinedOutput()
	require.NoError(t, err, "pg_restore: %s", outp)
	return restored
}

func rowCounts(t *testing.T, dbURL string, tables []string) map[string]int64 {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	require.NoError(t, err)
	defer conn.Close(ctx)
	counts := make(map[string]int64)
	for _, tbl := range tables {
		var n int64
		require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{tbl}.Sanitize()).Scan(&n))
		counts[tbl] = n
	}
	return counts
}

// fakeBin writes an executable pg_dump shell script into a new directory and
// returns the directory, for Postgres.BinDir. In script, $REAL is the real
// pg_dump and $DIR the directory.
func fakeBin(t *testing.T, f *pgFixture, script string) string {
	t.Helper()
	dir := t.TempDir()
	body := fmt.Sprintf("#!/bin/sh\nREAL='%s'\nDIR='%s'\n%s\n",
		filepath.Join(f.st.Postgres.BinDir(), "pg_dump"), dir, script)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "pg_dump"), []byte(body), 0o755))
	return dir
}

// gatedPgDump is a pg_dump that records its arguments and whether PGPASSWORD is
// set, creates $DIR/started, waits for $DIR/go and then runs the real pg_dump.
const gatedPgDump = `printf '%s\n' "$@" > "$DIR/args"
if [ -n "$PGPASSWORD" ]; then echo set > "$DIR/pgpassword"; fi
echo $$ > "$DIR/pid"
touch "$DIR/started"
while [ ! -e "$DIR/go" ]; do sleep 0.02; done
exec "$REAL" "$@"`

func waitForFile(t *testing.T, path string) {
	t.Helper()
	require.Eventually(t, func() bool {
		_, err := os.Stat(path)
		return err == nil
	}, 30*time.Second, 10*time.Millisecond, "waiting for %s", path)
}

// snapshotTest changes the database after the row counts were taken and before
// pg_dump starts: neither the counts nor the dump may see the change.
func snapshotTest(t *testing.T, f *pgFixture) {
	ctx := context.Background()
	db := schemas.ControllerDB
	before := rowCounts(t, f.st.Postgres.URL(db), countTables[db])
	bin := fakeBin(t, f, gatedPgDump)
	pg := f.pg(f.fs)
	pg.BinDir = bin
	key := "sets/snapshot/postgres/" + db + ".dump.zst"

	done := make(chan dumpRun, 1)
	go func() {
		done <- runDump(t, ctx, pg, activities.DumpInput{SetID: "snapshot", Database: db, Key: key, CountTables: countTables[db]}, nil)
	}()
	waitForFile(t, filepath.Join(bin, "started"))

	// Counts are taken, pg_dump has not connected yet: add tasks with briefs and
	// delete one, committed, as the app would.
	conn, err := pgx.Connect(ctx, f.st.Postgres.URL(db))
	require.NoError(t, err)
	defer conn.Close(ctx)
	const added = 25
	_, err = conn.Exec(ctx, `
		WITH t AS (
			INSERT INTO tasks_task (title, brief_key)
			SELECT 'during dump ' || g, 'briefs/during-' || g || '/brief.json' FROM generate_series(1, $1) g
			RETURNING id, brief_key)
		INSERT INTO briefs (task_id, key, size, sha256)
		SELECT id, brief_key, 2, repeat('a', 64) FROM t`, added)
	require.NoError(t, err)
	_, err = conn.Exec(ctx, `DELETE FROM tasks_task WHERE id = (SELECT min(id) FROM tasks_task)`)
	require.NoError(t, err)
	now := rowCounts(t, f.st.Postgres.URL(db), countTables[db])
	require.NotEqual(t, before, now)
	require.NoError(t, os.WriteFile(filepath.Join(bin, "go"), nil, 0o644))

	var run dumpRun
	select {
	case run = <-done:
	case <-time.After(2 * time.Minute):
		t.Fatal("dump did not finish")
	}
	require.NoError(t, run.err)
	assert.Equal(t, before, run.art.RowCounts, "counts are from before the change")
	args, err := os.ReadFile(filepath.Join(bin, "args"))
	require.NoError(t, err)
	assert.Contains(t, string(args), "--snapshot=")

	restored := verifyDump(t, f, storeCases[0], run.art)
	assert.Equal(t, before, rowCounts(t, f.st.Postgres.URL(restored), countTables[db]), "the dump is from before the change")
}

// The cluster trusts every connection; this adds a role that must log in with a
// SCRAM password (pg_hba.conf line ahead of the trust lines, then a reload).
const (
	pwRole     = "drflow_pw"
	pwPassword = "S3cr3t p@ss/word?&=x" // URL-escaping matters
)

func addPasswordRole(t *testing.T, f *pgFixture) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, f.st.Postgres.URL("postgres"))
	require.NoError(t, err)
	defer conn.Close(ctx)
	var exists bool
	require.NoError(t, conn.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)", pwRole).Scan(&exists))
	if exists {
		return
	}
	_, err = conn.Exec(ctx, "SET password_encryption = 'scram-sha-256'")
	require.NoError(t, err)
	_, err = conn.Exec(ctx, fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD %s IN ROLE pg_read_all_data",
		pgx.Identifier{pwRole}.Sanitize(), quoteLiteral(pwPassword)))
	require.NoError(t, err)

	hba := filepath.Join(f.st.Postgres.DataDir(), "pg_hba.conf")
	old, err := os.ReadFile(hba)
	require.NoError(t, err)
	// WriteFile keeps the owner of the existing file (the server's user).
	require.NoError(t, os.WriteFile(hba, append([]byte("host all "+pwRole+" 127.0.0.1/32 scram-sha-256\n"), old...), 0o600))
	_, err = conn.Exec(ctx, "SELECT pg_reload_conf()")
	require.NoError(t, err)
	// The reload is asynchronous: wait until the role is refused without a password.
	noPw := fmt.Sprintf("postgres://%s@127.0.0.1:%d/postgres?sslmode=disable", pwRole, f.st.Postgres.Port())
	require.Eventually(t, func() bool {
		c, err := pgx.Connect(ctx, noPw)
		if err == nil {
			c.Close(ctx)
			return false
		}
		return true
	}, 10*time.Second, 20*time.Millisecond)
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func passwordConfig(f *pgFixture, password string) config.Postgres {
	return config.Postgres{
		URL:      fmt.Sprintf("postgres://%s@127.0.0.1:%d/postgres?sslmode=disable", pwRole, f.st.Postgres.Port()),
		Password: config.Secret(password),
	}
}

// passwordTest dumps as a role that needs its password and checks that pg_dump
// got it from PGPASSWORD and not in its arguments.
func passwordTest(t *testing.T, f *pgFixture) {
	addPasswordRole(t, f)
	db := schemas.DispatcherDB
	bin := fakeBin(t, f, gatedPgDump)
	require.NoError(t, os.WriteFile(filepath.Join(bin, "go"), nil, 0o644))
	pg := f.pg(f.s3)
	pg.Config = passwordConfig(f, pwPassword)
	pg.BinDir = bin
	key := "sets/password/postgres/" + db + ".dump.zst"
	run := runDump(t, context.Background(), pg, activities.DumpInput{Database: db, Key: key, CountTables: countTables[db]}, nil)
	require.NoError(t, run.err)

	args, err := os.ReadFile(filepath.Join(bin, "args"))
	require.NoError(t, err)
	for _, form := range []string{pwPassword, "p@ss", "S3cr3t"} {
		assert.NotContains(t, string(args), form, "pg_dump's argv")
	}
	assert.Contains(t, string(args), "--no-password")
	assert.Contains(t, string(args), "--dbname=postgres://"+pwRole+"@127.0.0.1:")
	_, err = os.Stat(filepath.Join(bin, "pgpassword"))
	assert.NoError(t, err, "PGPASSWORD set for pg_dump")
	restored := verifyDump(t, f, storeCases[1], run.art)
	assert.Equal(t, run.art.RowCounts, rowCounts(t, f.st.Postgres.URL(restored), countTables[db]))
}

// appError returns the application error at the root of an activity error.
func appError(t *testing.T, err error) *temporal.ApplicationError {
	t.Helper()
	require.Error(t, err)
	var app *temporal.ApplicationError
	require.ErrorAs(t, err, &app)
	return app
}

// allText joins the messages of every error in err's chain: what Temporal
// records in the failure.
func allText(err error) string {
	var b strings.Builder
	for e := err; e != nil; e = errors.Unwrap(e) {
		b.WriteString(e.Error())
		b.WriteString("\n")
	}
	return b.String()
}

func closedPortURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(t, l.Close())
	return fmt.Sprintf("postgres://drflow@127.0.0.1:%d/postgres?sslmode=disable&connect_timeout=5", port)
}

func errorTests(t *testing.T, f *pgFixture) {
	addPasswordRole(t, f)
	ctx := context.Background()
	const wrongPassword = "wr0ng-Passw0rd!"
	noBucket, err := store.NewS3(ctx, s3Config(f.st.Backup, "no-such-bucket", ""))
	require.NoError(t, err)
	ctl := schemas.ControllerDB
	tests := []struct {
		name    string
		setup   func(pg *activities.Postgres)
		in      activities.DumpInput
		errType string // "" for a retryable error
		// contains are substrings of the error message.
		contains []string
		// secret must not appear anywhere in the error chain.
		secret string
	}{
		{
			name:     "unknown database",
			in:       activities.DumpInput{Database: "no-such-db", Key: "sets/e/postgres/no-such-db.dump.zst"},
			errType:  activities.ErrDatabaseNotFound,
			contains: []string{`"no-such-db"`, "does not exist"},
		},
		{
			name:     "wrong password",
			setup:    func(pg *activities.Postgres) { pg.Config = passwordConfig(f, wrongPassword) },
			in:       activities.DumpInput{Database: ctl, Key: "sets/e/postgres/wrong-password.dump.zst"},
			errType:  activities.ErrAuthFailed,
			contains: []string{ctl, "password authentication failed"},
			secret:   wrongPassword,
		},
		{
			name:     "no password for a role that needs one",
			setup:    func(pg *activities.Postgres) { pg.Config = passwordConfig(f, "") },
			in:       activities.DumpInput{Database: ctl, Key: "sets/e/postgres/no-password.dump.zst"},
			errType:  activities.ErrAuthFailed,
			contains: []string{ctl},
		},
		{
			name:     "missing count table",
			in:       activities.DumpInput{Database: ctl, Key: "sets/e/postgres/missing-table.dump.zst", CountTables: []string{schemas.TasksTable, "no_such_table"}},
			errType:  activities.ErrTableNotFound,
			contains: []string{"no_such_table", ctl},
		},
		{
			name:     "missing count table schema",
			in:       activities.DumpInput{Database: ctl, Key: "sets/e/postgres/missing-schema.dump.zst", CountTables: []string{"nosuchschema.tasks_task"}},
			errType:  activities.ErrTableNotFound,
			contains: []string{"nosuchschema.tasks_task", ctl},
		},
		{
			name:     "empty database name",
			in:       activities.DumpInput{Key: "sets/e/postgres/x.dump.zst"},
			errType:  activities.ErrInvalidInput,
			contains: []string{"database is empty"},
		},
		{
			name:     "bad key",
			in:       activities.DumpInput{Database: ctl, Key: "sets//x.dump.zst"},
			errType:  activities.ErrInvalidInput,
			contains: []string{ctl, "invalid key", "sets//x.dump.zst"},
		},
		{
			name:     "empty count table",
			in:       activities.DumpInput{Database: ctl, Key: "sets/e/postgres/x.dump.zst", CountTables: []string{""}},
			errType:  activities.ErrInvalidInput,
			contains: []string{ctl, "empty table name"},
		},
		{
			name:     "zstd level out of range",
			setup:    func(pg *activities.Postgres) { pg.Zstd.Level = 99 },
			in:       activities.DumpInput{Database: ctl, Key: "sets/e/postgres/x.dump.zst"},
			errType:  activities.ErrInvalidConfig,
			contains: []string{"zstd level 99"},
		},
		{
			name:     "no server configured",
			setup:    func(pg *activities.Postgres) { pg.Config = config.Postgres{} },
			in:       activities.DumpInput{Database: ctl, Key: "sets/e/postgres/x.dump.zst"},
			errType:  activities.ErrInvalidConfig,
			contains: []string{"DRFLOW_POSTGRES_URL"},
		},
		{
			name:     "backup bucket missing",
			setup:    func(pg *activities.Postgres) { pg.Store = noBucket },
			in:       activities.DumpInput{Database: ctl, Key: "sets/e/postgres/no-bucket.dump.zst", CountTables: countTables[ctl]},
			errType:  activities.ErrStore,
			contains: []string{`bucket "no-such-bucket" does not exist`},
		},
		{
			name: "connection refused is retried",
			setup: func(pg *activities.Postgres) {
				pg.Config = config.Postgres{URL: closedPortURL(t), Password: "hunter2-secret"}
			},
			in:       activities.DumpInput{Database: ctl, Key: "sets/e/postgres/refused.dump.zst"},
			contains: []string{ctl, "connect"},
			secret:   "hunter2-secret",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pg := f.pg(f.fs)
			if tt.setup != nil {
				tt.setup(pg)
			}
			run := runDump(t, ctx, pg, tt.in, nil)
			t.Logf("error: %v", run.err)
			app := appError(t, run.err)
			if tt.errType == "" {
				assert.False(t, app.NonRetryable(), "retryable: %v", run.err)
				assert.NotContains(t, []string{activities.ErrDatabaseNotFound, activities.ErrAuthFailed, activities.ErrTableNotFound, activities.ErrInvalidInput}, app.Type())
			} else {
				assert.True(t, app.NonRetryable(), "non-retryable: %v", run.err)
				assert.Equal(t, tt.errType, app.Type(), "error type of %v", run.err)
			}
			for _, s := range tt.contains {
				assert.Contains(t, run.err.Error(), s)
			}
			if tt.secret != "" {
				assert.NotContains(t, allText(run.err), tt.secret)
			}
			if tt.in.Key != "" && store.CheckKey(tt.in.Key) == nil {
				_, err := f.fs.Stat(ctx, tt.in.Key)
				assert.ErrorIs(t, err, store.ErrNotFound, "nothing stored")
			}
		})
	}
}

// failingPgDumpTests replaces pg_dump with one that writes part of a dump and
// then fails: the stream must not be stored, the error is retryable, names
// pg_dump's complaint and has no password in it.
func failingPgDumpTests(t *testing.T, f *pgFixture) {
	addPasswordRole(t, f)
	tests := []struct {
		name     string
		script   string
		contains []string
	}{
		{
			name: "exits 1 midway",
			script: `head -c 3000000 /dev/urandom
echo "pg_dump: error: query failed: connection to server lost (password was $PGPASSWORD)" >&2
exit 1`,
			contains: []string{"pg_dump", "exit status 1", "connection to server lost", "password was xxxxx"},
		},
		{
			name: "killed midway",
			script: `head -c 3000000 /dev/urandom
kill -9 $$`,
			contains: []string{"pg_dump", "signal: killed"},
		},
	}
	for _, tt := range tests {
		for _, sc := range storeCases {
			t.Run(tt.name+"/"+sc.name, func(t *testing.T) {
				pg := f.pg(sc.st(f))
				pg.Config = passwordConfig(f, pwPassword)
				pg.BinDir = fakeBin(t, f, tt.script)
				prefix := "sets/failing-" + strings.ReplaceAll(tt.name, " ", "-") + "/"
				run := runDump(t, context.Background(), pg, activities.DumpInput{
					Database: schemas.ControllerDB, Key: prefix + "postgres/db.dump.zst", CountTables: countTables[schemas.ControllerDB],
				}, nil)
				t.Logf("error: %v", run.err)
				app := appError(t, run.err)
				assert.False(t, app.NonRetryable(), "retryable: %v", run.err)
				for _, s := range tt.contains {
					assert.Contains(t, run.err.Error(), s)
				}
				assert.NotContains(t, allText(run.err), pwPassword)
				assert.Empty(t, sc.keys(t, f, prefix), "nothing stored")
			})
		}
	}
}

// endlessPgDump streams random bytes until killed; its pid is in $DIR/pid.
const endlessPgDump = `echo $$ > "$DIR/pid"
exec cat /dev/urandom`

// cancelTests cancels a dump while bytes are flowing into the store: pg_dump is
// killed, the activity ends with the cancellation and nothing is stored.
func cancelTests(t *testing.T, f *pgFixture) {
	for _, sc := range storeCases {
		t.Run(sc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			pg := f.pg(sc.st(f))
			bin := fakeBin(t, f, endlessPgDump)
			pg.BinDir = bin
			prefix := "sets/cancel-" + sc.name + "/"
			var once sync.Once
			storing := make(chan struct{})
			done := make(chan dumpRun, 1)
			go func() {
				done <- runDump(t, ctx, pg, activities.DumpInput{Database: schemas.ControllerDB, Key: prefix + "postgres/db.dump.zst"},
					func(p activities.DumpProgress) {
						if p.StoredBytes > 0 {
							once.Do(func() { close(storing) })
						}
					})
			}()
			select {
			case <-storing:
			case run := <-done:
				t.Fatalf("dump ended before it was cancelled: %v", run.err)
			case <-time.After(time.Minute):
				t.Fatal("no stored bytes reported")
			}
			cancel()
			var run dumpRun
			select {
			case run = <-done:
			case <-time.After(time.Minute):
				t.Fatal("cancelled dump did not end")
			}
			require.Error(t, run.err)
			var canceled *temporal.CanceledError
			var app *temporal.ApplicationError
			if !errors.As(run.err, &canceled) {
				require.ErrorAs(t, run.err, &app)
				assert.Contains(t, run.err.Error(), "context canceled")
			}
			assert.Empty(t, sc.keys(t, f, prefix), "nothing stored")

			pidText, err := os.ReadFile(filepath.Join(bin, "pid"))
			require.NoError(t, err)
			var pid int
			_, err = fmt.Sscan(string(pidText), &pid)
			require.NoError(t, err)
			assert.ErrorIs(t, syscall.Kill(pid, 0), syscall.ESRCH, "pg_dump is gone")
		})
	}
}
