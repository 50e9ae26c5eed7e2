package activities

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/interceptor"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/worker"

	"github.com/kohakku/drflow/internal/activitytest"
	"github.com/kohakku/drflow/internal/store"
)

// sqliteSetID is the set id of every test snapshot.
const sqliteSetID = "2026-11-21T02-00-00Z"

// sqliteEnv is one test's directories. TMPDIR points at tmp for the whole
// test, so that Snapshot's local copy lands there and can be checked for.
type sqliteEnv struct {
	dbDir, tmp, storeDir string
	st                   store.Store
}

func newSQLiteEnv(t *testing.T) *sqliteEnv {
	t.Helper()
	// Every directory is made before TMPDIR moves, so that only Snapshot
	// writes into tmp. The quote and the space test VACUUM INTO's file name.
	base := t.TempDir()
	e := &sqliteEnv{
		dbDir:    filepath.Join(base, "live data #1"),
		tmp:      filepath.Join(base, "tmp 'q'"),
		storeDir: filepath.Join(base, "store"),
	}
	for _, d := range []string{e.dbDir, e.tmp} {
		require.NoError(t, os.Mkdir(d, 0o700))
	}
	st, err := store.NewFS(e.storeDir)
	require.NoError(t, err)
	e.st = st
	t.Setenv("TMPDIR", e.tmp)
	require.Equal(t, e.tmp, os.TempDir())
	return e
}

// assertNoLocalCopy checks that Snapshot left nothing in TMPDIR.
func (e *sqliteEnv) assertNoLocalCopy(t *testing.T) {
	t.Helper()
	left, err := os.ReadDir(e.tmp)
	require.NoError(t, err)
	var names []string
	for _, f := range left {
		names = append(names, f.Name())
	}
	assert.Empty(t, names, "files left in TMPDIR")
}

// sqliteRun is one Snapshot run in the Temporal activity test environment.
type sqliteRun struct {
	art    Artifact
	err    error
	mu     sync.Mutex
	phases []string
	last   SQLiteProgress
}

func sqliteSnapshot(t *testing.T, s *SQLite, in SQLiteInput) *sqliteRun {
	t.Helper()
	return sqliteSnapshotCtx(t, context.Background(), s, in, nil)
}

// sqliteSnapshotCtx runs Snapshot with an activity context derived from ctx,
// calling onBeat, when not nil, with every heartbeat.
func sqliteSnapshotCtx(t *testing.T, ctx context.Context, s *SQLite, in SQLiteInput, onBeat func(SQLiteProgress)) *sqliteRun {
	t.Helper()
	var suite testsuite.WorkflowTestSuite
	env := suite.NewTestActivityEnvironment()
	env.RegisterActivity(s)
	run := &sqliteRun{}
	env.SetWorkerOptions(worker.Options{BackgroundActivityContext: ctx, Interceptors: []interceptor.WorkerInterceptor{
		activitytest.Heartbeats(func(details ...any) {
			p, ok := details[0].(SQLiteProgress)
			if len(details) != 1 || !ok {
				t.Errorf("heartbeat details %#v", details)
				return
			}
			run.mu.Lock()
			defer run.mu.Unlock()
			if p.RawBytes < run.last.RawBytes || p.StoredBytes < run.last.StoredBytes {
				t.Errorf("heartbeat went back: %+v after %+v", p, run.last)
			}
			if len(run.phases) == 0 || run.phases[len(run.phases)-1] != p.Phase {
				run.phases = append(run.phases, p.Phase)
			}
			run.last = p
			if onBeat != nil {
				onBeat(p)
			}
		}),
	}})
	v, err := env.ExecuteActivity(s.Snapshot, in)
	if err != nil {
		run.err = err
		return run
	}
	require.NoError(t, v.Get(&run.art))
	return run
}

// sqliteOpen opens a read-write test connection pool on path.
func sqliteOpen(t *testing.T, path string, pragmas ...string) *sql.DB {
	t.Helper()
	db, err := openSQLite(path, "mode=rwc")
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	for _, p := range pragmas {
		_, err := db.Exec("PRAGMA " + p)
		require.NoError(t, err, p)
	}
	return db
}

// sqliteExec runs statements on db, failing the test on the first error.
func sqliteExec(t *testing.T, db *sql.DB, stmts ...string) {
	t.Helper()
	for _, s := range stmts {
		_, err := db.Exec(s)
		require.NoError(t, err, s)
	}
}

// sqliteCounts counts the rows of every table of the database at path the
// way a drill would, independently of Snapshot: from sqlite_master, leaving
// out SQLite's own tables, virtual tables and their shadow tables (named
// <virtual table>_<suffix>).
func sqliteCounts(t *testing.T, path string) map[string]int64 {
	t.Helper()
	db := sqliteOpen(t, path)
	rows, err := db.Query(`SELECT name, sql LIKE 'CREATE VIRTUAL TABLE%' FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\_%' ESCAPE '\'`)
	require.NoError(t, err)
	var tables, virtual []string
	for rows.Next() {
		var n string
		var isVirtual bool
		require.NoError(t, rows.Scan(&n, &isVirtual))
		if isVirtual {
			virtual = append(virtual, n)
		} else {
			tables = append(tables, n)
		}
	}
	require.NoError(t, rows.Err())
	require.NoError(t, rows.Close())
	counts := map[string]int64{}
	for _, tb := range tables {
		if slices.ContainsFunc(virtual, func(v string) bool { return strings.HasPrefix(tb, v+"_") }) {
			continue
		}
		var n int64
		require.NoError(t, db.QueryRow("SELECT count(*) FROM "+quoteSQLiteIdent(tb)).Scan(&n))
		counts[tb] = n
	}
	return counts
}

func sqliteIntegrity(t *testing.T, path string) string {
	t.Helper()
	var res string
	require.NoError(t, sqliteOpen(t, path).QueryRow("PRAGMA integrity_check").Scan(&res))
	return res
}

// sqliteQueueDB creates a queue-like database at path: jobs and events are
// written in the same transactions, one event per job, so any consistent
// snapshot holds as many of each. It also has a table whose name needs
// quoting, an index, a view, a virtual table and an AUTOINCREMENT table (so
// sqlite_sequence exists).
func sqliteQueueDB(t *testing.T, path string, rows int, journal string) *sql.DB {
	t.Helper()
	db := sqliteOpen(t, path, "journal_mode="+journal, "synchronous=NORMAL")
	sqliteExec(t, db,
		`CREATE TABLE jobs (id INTEGER PRIMARY KEY, queue TEXT NOT NULL, payload BLOB, created_at INTEGER NOT NULL)`,
		`CREATE INDEX jobs_queue ON jobs (queue, created_at)`,
		`CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, job_id INTEGER NOT NULL REFERENCES jobs (id), kind TEXT NOT NULL)`,
		`CREATE TABLE "odd ""name"" table" (k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID`,
		`INSERT INTO "odd ""name"" table" VALUES ('a', '1'), ('b', '2'), ('c', '3')`,
		`CREATE VIEW pending AS SELECT * FROM jobs WHERE queue = 'default'`,
		`CREATE VIRTUAL TABLE notes USING fts5 (body)`,
		`INSERT INTO notes VALUES ('virtual tables are not counted')`,
	)
	// In SQL, in one transaction: row by row through the driver is slow
	// under the race detector.
	tx, err := db.Begin()
	require.NoError(t, err)
	_, err = tx.Exec(`WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?)
		INSERT INTO jobs (queue, payload, created_at)
		SELECT CASE i % 3 WHEN 0 THEN 'default' WHEN 1 THEN 'mail' ELSE 'reports' END,
			randomblob(16) || zeroblob(48), i FROM n`, rows)
	require.NoError(t, err)
	_, err = tx.Exec(`INSERT INTO events (job_id, kind) SELECT id, 'created' FROM jobs ORDER BY id`)
	require.NoError(t, err)
	require.NoError(t, tx.Commit())
	return db
}

// sqliteWriter inserts a job and its event per transaction on its own
// connection, a few thousand times a second, until stop is called, and
// returns the number of commits.
func sqliteWriter(t *testing.T, path string) (commits *atomic.Int64, stop func()) {
	t.Helper()
	db := sqliteOpen(t, path, "synchronous=NORMAL")
	commits = new(atomic.Int64)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		for ctx.Err() == nil {
			err := func() error {
				tx, err := db.Begin()
				if err != nil {
					return err
				}
				defer tx.Rollback()
				res, err := tx.Exec(`INSERT INTO jobs (queue, payload, created_at) VALUES ('default', x'00ff', 0)`)
				if err != nil {
					return err
				}
				id, _ := res.LastInsertId()
				if _, err := tx.Exec(`INSERT INTO events (job_id, kind) VALUES (?, 'created')`, id); err != nil {
					return err
				}
				return tx.Commit()
			}()
			if err != nil {
				done <- err
				return
			}
			commits.Add(1)
			// Paced, so that the snapshot is not starved of CPU under -race.
			time.Sleep(200 * time.Microsecond)
		}
		done <- nil
	}()
	var once sync.Once
	return commits, func() {
		once.Do(func() {
			cancel()
			require.NoError(t, <-done, "writer")
		})
	}
}

// sqliteStored reads the stored snapshot, checks it against the artifact and
// writes the decompressed database to a file, whose path it returns.
func sqliteStored(t *testing.T, e *sqliteEnv, art Artifact) string {
	t.Helper()
	rc, err := e.st.Get(context.Background(), art.Key)
	require.NoError(t, err)
	stored, err := io.ReadAll(rc)
	require.NoError(t, err)
	require.NoError(t, rc.Close())
	sum := sha256.Sum256(stored)
	assert.Equal(t, hex.EncodeToString(sum[:]), art.SHA256, "SHA-256 of the stored bytes")
	assert.Equal(t, int64(len(stored)), art.Size, "stored size")

	dec, err := zstd.NewReader(bytes.NewReader(stored))
	require.NoError(t, err)
	defer dec.Close()
	raw, err := io.ReadAll(dec)
	require.NoError(t, err)
	assert.Equal(t, int64(len(raw)), art.RawSize, "raw size")
	assert.Equal(t, "SQLite format 3\x00", string(raw[:16]), "a SQLite file")
	out := filepath.Join(filepath.Dir(e.storeDir), "restored.db")
	require.NoError(t, os.WriteFile(out, raw, 0o600))
	return out
}

func TestSQLiteSnapshotWhileWriting(t *testing.T) {
	e := newSQLiteEnv(t)
	// A name that needs escaping in a SQLite URI.
	path := filepath.Join(e.dbDir, "queue ?50%.db")
	const rows = 50_000
	sqliteQueueDB(t, path, rows, "WAL")

	commits, stop := sqliteWriter(t, path)
	defer stop()
	require.Eventually(t, func() bool { return commits.Load() >= 20 }, time.Minute, 5*time.Millisecond, "writer started")

	s := &SQLite{Databases: map[string]string{"bunqueue": path, "other": "/nonexistent.db"}, Store: e.st, Zstd: ZstdOptions{Concurrency: 2}}
	before := commits.Load()
	run := sqliteSnapshot(t, s, SQLiteInput{SetID: sqliteSetID, Name: "bunqueue"})
	during := commits.Load() - before
	stop()
	require.NoError(t, run.err)
	art := run.art
	t.Logf("snapshot %d bytes raw, %d stored, %v; %d commits while it ran; counts %v",
		art.RawSize, art.Size, art.Duration, during, art.RowCounts)
	assert.Positive(t, during, "the writer kept committing during the snapshot")

	assert.Equal(t, KindSQLite, art.Kind)
	assert.Equal(t, "bunqueue", art.Source)
	assert.Equal(t, "sets/"+sqliteSetID+"/sqlite/bunqueue.db.zst", art.Key)
	assert.Equal(t, SQLiteKey(sqliteSetID, "bunqueue"), art.Key)
	assert.Equal(t, CompressionZstd, art.Compression)
	assert.Equal(t, EncryptionNone, art.Encryption)
	assert.Regexp(t, `^SQLite 3\.\d+\.\d+$`, art.SourceVersion)
	assert.WithinDuration(t, time.Now(), art.StartedAt, time.Minute)
	assert.Equal(t, time.UTC, art.StartedAt.Location())
	assert.Positive(t, art.Duration)
	assert.Less(t, art.Size, art.RawSize, "compressed")

	// Consistent: jobs and events are committed together, so a snapshot of one
	// moment holds as many of each. The view, the virtual table, its shadow
	// tables and SQLite's own tables are not counted.
	require.Contains(t, art.RowCounts, "jobs")
	jobs := art.RowCounts["jobs"]
	assert.Equal(t, jobs, art.RowCounts["events"], "jobs and events from one transaction state")
	assert.GreaterOrEqual(t, jobs, int64(rows)+before, "the commits before the snapshot are in it")
	assert.LessOrEqual(t, jobs, int64(rows)+commits.Load())
	assert.Equal(t, int64(3), art.RowCounts[`odd "name" table`])
	for _, absent := range []string{"pending", "notes", "notes_content", "notes_data", "sqlite_sequence", "sqlite_master"} {
		assert.NotContains(t, art.RowCounts, absent)
	}
	assert.Len(t, art.RowCounts, 3)

	restored := sqliteStored(t, e, art)
	assert.Equal(t, "ok", sqliteIntegrity(t, restored))
	assert.Equal(t, art.RowCounts, sqliteCounts(t, restored), "row counts of the stored snapshot")
	live := sqliteCounts(t, path)
	assert.Equal(t, int64(rows)+commits.Load(), live["jobs"], "every commit reached the live database")

	assert.Equal(t, []string{"snapshot", "check", "upload", "stored"}, run.phases)
	assert.Equal(t, art.Size, run.last.StoredBytes)
	assert.Equal(t, art.RawSize, run.last.RawBytes)
	e.assertNoLocalCopy(t)
}

func TestSQLiteSnapshotRollbackJournal(t *testing.T) {
	e := newSQLiteEnv(t)
	path := filepath.Join(e.dbDir, "plain.db")
	sqliteQueueDB(t, path, 500, "DELETE")
	rel, err := filepath.Rel(mustGetwd(t), path)
	require.NoError(t, err)

	s := &SQLite{Databases: map[string]string{"plain": rel}, Store: e.st}
	run := sqliteSnapshot(t, s, SQLiteInput{Name: "plain", Key: "elsewhere/plain.db.zst"})
	require.NoError(t, run.err, "a relative path and an explicit key")
	assert.Equal(t, "elsewhere/plain.db.zst", run.art.Key)
	assert.Equal(t, int64(500), run.art.RowCounts["jobs"])
	restored := sqliteStored(t, e, run.art)
	assert.Equal(t, "ok", sqliteIntegrity(t, restored))
	assert.Equal(t, run.art.RowCounts, sqliteCounts(t, restored))
	assert.Equal(t, sqliteCounts(t, path), run.art.RowCounts, "nothing changed meanwhile")
	e.assertNoLocalCopy(t)
}

func mustGetwd(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	require.NoError(t, err)
	return wd
}

func TestSQLiteSnapshotFailures(t *testing.T) {
	e := newSQLiteEnv(t)
	good := filepath.Join(e.dbDir, "good.db")
	sqliteExec(t, sqliteOpen(t, good), `CREATE TABLE t (x)`, `INSERT INTO t VALUES (1)`)
	text := filepath.Join(e.dbDir, "notes.txt")
	require.NoError(t, os.WriteFile(text, bytes.Repeat([]byte("this is not a database\n"), 100), 0o600))
	missing := filepath.Join(e.dbDir, "gone.db")
	corrupt := filepath.Join(e.dbDir, "corrupt.db")
	sqliteCorruptTablePage(t, corrupt)

	dbs := map[string]string{"good": good, "text": text, "missing": missing, "dir": e.dbDir, "corrupt": corrupt}
	s := &SQLite{Databases: dbs, Store: e.st}
	tests := []struct {
		name    string
		s       *SQLite
		in      SQLiteInput
		errType string
		msg     string
	}{
		{"unknown name", s, SQLiteInput{SetID: sqliteSetID, Name: "bunqueue"}, ErrUnknownTarget,
			`sqlite snapshot: input field "name": unknown SQLite database "bunqueue" (configured: corrupt, dir, good, missing, text; see DRFLOW_SQLITE_DATABASES)`},
		{"none configured", &SQLite{Store: e.st}, SQLiteInput{SetID: sqliteSetID, Name: "good"}, ErrUnknownTarget,
			`sqlite snapshot: input field "name": unknown SQLite database "good" (none configured; see DRFLOW_SQLITE_DATABASES)`},
		{"missing file", s, SQLiteInput{SetID: sqliteSetID, Name: "missing"}, ErrSQLiteNotFound,
			"sqlite missing: database file " + missing + " does not exist (see DRFLOW_SQLITE_DATABASES)"},
		{"not a database", s, SQLiteInput{SetID: sqliteSetID, Name: "text"}, ErrSQLiteNotDatabase,
			"sqlite text: " + text + " is not a SQLite database: vacuum into the local copy: file is not a database (26)"},
		{"a directory", s, SQLiteInput{SetID: sqliteSetID, Name: "dir"}, ErrSQLiteNotDatabase,
			"sqlite dir: " + e.dbDir + " is a directory, not a SQLite database file"},
		{"corrupt", s, SQLiteInput{SetID: sqliteSetID, Name: "corrupt"}, ErrSQLiteCorrupt,
			"sqlite corrupt: " + corrupt + " is corrupt: "},
		{"no set id or key", s, SQLiteInput{Name: "good"}, ErrInvalidInput,
			`sqlite good: input needs "setId" or "key"`},
		{"bad key", s, SQLiteInput{Name: "good", Key: "../x"}, ErrInvalidInput,
			`sqlite good: input field "key": invalid key "../x"`},
		{"no store", &SQLite{Databases: dbs}, SQLiteInput{SetID: sqliteSetID, Name: "good"}, ErrInvalidConfig,
			"sqlite good: no backup store configured"},
		{"bad zstd level", &SQLite{Databases: dbs, Store: e.st, Zstd: ZstdOptions{Level: 23}}, SQLiteInput{SetID: sqliteSetID, Name: "good"}, ErrInvalidConfig,
			"sqlite good: zstd level 23 is not between 1 and 22"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			run := sqliteSnapshot(t, tt.s, tt.in)
			require.Error(t, run.err)
			var app *temporal.ApplicationError
			require.ErrorAs(t, run.err, &app)
			assert.Equal(t, tt.errType, app.Type(), "%v", run.err)
			assert.True(t, app.NonRetryable(), "non-retryable: %v", run.err)
			assert.Contains(t, run.err.Error(), tt.msg)
			e.assertNoLocalCopy(t)
		})
	}

	var stored []string
	require.NoError(t, e.st.List(context.Background(), "", func(o store.ObjectInfo) error {
		stored = append(stored, o.Key)
		return nil
	}))
	assert.Empty(t, stored, "no failed snapshot left an object")

	t.Run("good one still works", func(t *testing.T) {
		run := sqliteSnapshot(t, s, SQLiteInput{SetID: sqliteSetID, Name: "good"})
		require.NoError(t, run.err)
		assert.Equal(t, map[string]int64{"t": 1}, run.art.RowCounts)
		e.assertNoLocalCopy(t)
	})
}

// TestSQLiteSnapshotCancelled cancels the activity as the copy starts: the
// error is the cancellation (retryable), and neither the local copy nor an
// object is left behind.
func TestSQLiteSnapshotCancelled(t *testing.T) {
	e := newSQLiteEnv(t)
	path := filepath.Join(e.dbDir, "queue.db")
	sqliteQueueDB(t, path, 20_000, "WAL")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := &SQLite{Databases: map[string]string{"q": path}, Store: e.st}
	run := sqliteSnapshotCtx(t, ctx, s, SQLiteInput{SetID: sqliteSetID, Name: "q"}, func(p SQLiteProgress) {
		if p.Phase == "snapshot" {
			cancel()
		}
	})
	require.Error(t, run.err)
	assert.ErrorContains(t, run.err, "sqlite q: context canceled")
	var app *temporal.ApplicationError
	if errors.As(run.err, &app) {
		assert.False(t, app.NonRetryable(), "a cancellation is not a verdict on the database")
	}
	assert.Equal(t, []string{"snapshot"}, run.phases)
	e.assertNoLocalCopy(t)
	_, err := e.st.Stat(context.Background(), SQLiteKey(sqliteSetID, "q"))
	assert.ErrorIs(t, err, store.ErrNotFound)
}

// sqliteCorruptTablePage writes a database whose table b-tree has a garbled
// interior page, which VACUUM INTO trips over.
func sqliteCorruptTablePage(t *testing.T, path string) {
	t.Helper()
	db := sqliteOpen(t, path, "page_size=4096")
	sqliteExec(t, db, `CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)`,
		`WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 5000)
		 INSERT INTO t SELECT i, printf('%0100d', i) FROM n`)
	var root int64
	require.NoError(t, db.QueryRow(`SELECT rootpage FROM sqlite_master WHERE name = 't'`).Scan(&root))
	require.NoError(t, db.Close())
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	// The root page of a 5000-row table is an interior page: its child
	// pointers, garbled, point nowhere sensible.
	_, err = f.WriteAt(bytes.Repeat([]byte{0xff}, 2048), (root-1)*4096+12)
	require.NoError(t, err)
	require.NoError(t, f.Close())
}

// TestSQLiteIntegrityCheckFails covers a copy that VACUUM INTO wrote but
// PRAGMA integrity_check rejects: an index that disagrees with its table.
func TestSQLiteIntegrityCheckFails(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad-index.db")
	db := sqliteOpen(t, path)
	sqliteExec(t, db,
		`CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)`,
		`CREATE INDEX t_v ON t (v)`,
		`WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 200)
		 INSERT INTO t SELECT i, 'v' || i FROM n`,
		// The index now claims to be on another column than it holds.
		`PRAGMA writable_schema = ON`,
		`UPDATE sqlite_master SET sql = 'CREATE INDEX t_v ON t (id)' WHERE name = 't_v'`,
	)
	require.NoError(t, db.Close())

	_, _, err := inspectSQLiteCopy(context.Background(), path)
	var corrupt *sqliteCorruptError
	require.ErrorAs(t, err, &corrupt)
	assert.Len(t, corrupt.findings, sqliteCheckErrors)
	assert.Positive(t, corrupt.more)
	assert.Contains(t, err.Error(), "integrity check of the copy failed: ")
	assert.Contains(t, err.Error(), "t_v")

	classified := classifySQLiteError(context.Background(), "queue", path, fmt.Errorf("check: %w", err))
	var app *temporal.ApplicationError
	require.ErrorAs(t, classified, &app)
	assert.Equal(t, ErrSQLiteCorrupt, app.Type())
	assert.True(t, app.NonRetryable())
	assert.True(t, strings.HasPrefix(classified.Error(), "sqlite queue: "+path+" is corrupt: check: integrity check of the copy failed: "), classified.Error())
}

func TestSQLiteKey(t *testing.T) {
	assert.Equal(t, "sets/2026-11-21T02-00-00Z/sqlite/drflow-dev.db.zst", SQLiteKey("2026-11-21T02-00-00Z", "drflow-dev"))
	require.NoError(t, store.CheckKey(SQLiteKey("2026-11-21T02-00-00Z", "a_b-1")))
}
