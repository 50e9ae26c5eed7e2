package activities

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"go.temporal.io/sdk/activity"
	sqlitedrv "modernc.org/sqlite" // registers the "sqlite" database/sql driver
	sqlitelib "modernc.org/sqlite/lib"

	"github.com/kohakku/drflow/internal/scratch"
	"github.com/kohakku/drflow/internal/store"
)

// Error types of the non-retryable errors raised by SQLite.Snapshot.
const (
	// ErrSQLiteNotFound: the configured database file does not exist.
	ErrSQLiteNotFound = "SQLiteNotFound"
	// ErrSQLiteNotDatabase: the configured path is not a SQLite database (a
	// directory, a file of another format, an encrypted database).
	ErrSQLiteNotDatabase = "SQLiteNotDatabase"
	// ErrSQLiteCorrupt: the database is corrupt; its snapshot fails
	// PRAGMA integrity_check or SQLite reports corruption while copying it.
	ErrSQLiteCorrupt = "SQLiteCorrupt"
)

// sqliteBusyTimeout is how long the snapshot's read-only connection waits for
// a lock held by a writer before it gives up with SQLITE_BUSY (retryable).
const sqliteBusyTimeout = 30 * time.Second

// sqliteCheckErrors bounds how many integrity_check findings go into an error.
const sqliteCheckErrors = 5

// SQLite snapshots SQLite database files on the worker's host into the backup
// store. Its methods are the SQLite activities; they must run on a worker that
// sees the files (a host-specific task queue when the worker pool is shared).
type SQLite struct {
	// Databases maps each configured name to its file path
	// (DRFLOW_SQLITE_DATABASES, config.SQLite.Paths). A relative path is
	// relative to the worker's working directory.
	Databases map[string]string
	// Store receives the snapshots.
	Store store.Store
	// Zstd tunes the compression of the stored snapshots.
	Zstd ZstdOptions
	// Age encrypts the snapshots to its recipients; nil stores them unencrypted.
	Age *AgeKeys
}

// SQLiteInput says which database Snapshot backs up and where to.
type SQLiteInput struct {
	// SetID is the backup set the snapshot belongs to; used for logs and the
	// default key.
	SetID string `json:"setId"`
	// Name of the database, one of the configured ones.
	Name string `json:"name"`
	// Key in the backup store; "" means sets/<setId>/sqlite/<name>.db.zst
	// (SQLiteKey).
	Key string `json:"key"`
}

// SQLiteProgress is Snapshot's heartbeat detail, shown in the Web UI. A
// snapshot cannot resume, so a retry starts over and does not read it.
type SQLiteProgress struct {
	// Phase is "snapshot" (VACUUM INTO the local copy), "check"
	// (integrity check and row counts of the copy), "upload" or "stored".
	Phase string `json:"phase"`
	// SnapshotBytes written to the local copy so far.
	SnapshotBytes int64 `json:"snapshotBytes"`
	// RawBytes of the copy read for the upload so far.
	RawBytes int64 `json:"rawBytes"`
	// StoredBytes of compressed snapshot the store has accepted so far.
	StoredBytes int64 `json:"storedBytes"`
}

// SQLiteKey names the snapshot of SQLite database name in set id.
func SQLiteKey(id, name string) string { return SetKey(id, "sqlite/"+name+".db.zst") }

// Snapshot takes a consistent online copy of one configured SQLite database
// while its applications keep writing, and streams it through zstd and SHA-256
// into the backup store under in.Key. It returns the Artifact: the
// SourceVersion is the SQLite library that made the copy, RowCounts the
// number of rows of every table of the copy, by name (views, virtual tables
// and their shadow tables, and SQLite's own sqlite_* tables left out).
//
// The database is opened read-only and copied with VACUUM INTO, which reads it
// in one read transaction: the copy is the database as of one commit. In WAL
// mode writers carry on meanwhile; in rollback-journal mode a writer that
// wants to commit waits for the copy, up to its own busy timeout. The worker
// needs read access to the file and, for a WAL database, write access to its
// -shm file (or to the directory, when no -shm file exists yet), as every
// SQLite reader of a WAL database does. The copy is
// a private temporary file (0600) in the worker's scratch directory in TMPDIR
// (see package scratch): it needs as much free space as the database, is
// checked with PRAGMA integrity_check and counted before anything is
// uploaded, and is removed on every way out; a copy a killed worker leaves
// behind is removed by the next worker's sweep of TMPDIR.
//
// Snapshot heartbeats SQLiteProgress. It cannot resume: every attempt starts
// over, and since the store makes an object visible only once it is
// complete, a failed or cancelled attempt leaves nothing under the key.
//
// Errors: an unknown name is ErrUnknownTarget (listing the configured names),
// a missing file ErrSQLiteNotFound (naming the path), a path that is not a
// SQLite database ErrSQLiteNotDatabase, a corrupt database ErrSQLiteCorrupt,
// an unreadable file ErrPermissionDenied, a permanent store error ErrStore,
// bad input ErrInvalidInput and a worker without a store or with bad zstd
// options ErrInvalidConfig; all of them are non-retryable. A database busy
// past the timeout, a full TMPDIR and transient store errors are returned
// for the retry policy.
func (s *SQLite) Snapshot(ctx context.Context, in SQLiteInput) (Artifact, error) {
	started := time.Now()
	path, key, err := s.target(in)
	if err != nil {
		return Artifact{}, err
	}
	log := activity.GetLogger(ctx)
	if attempt := activity.GetInfo(ctx).Attempt; attempt > 1 {
		log.Info("sqlite snapshot starts over: a snapshot cannot resume", "set", in.SetID, "db", in.Name, "attempt", attempt)
	}
	if err := checkSQLiteFile(in.Name, path); err != nil {
		return Artifact{}, err
	}
	if err := ctx.Err(); err != nil {
		return Artifact{}, fmt.Errorf("sqlite %s: %w", in.Name, context.Cause(ctx))
	}
	art, err := s.snapshot(ctx, in.Name, path, key)
	if err != nil {
		// No log line: the SDK logs the returned error.
		return Artifact{}, classifySQLiteError(ctx, in.Name, path, err)
	}
	art.StartedAt = started.UTC()
	art.Duration = time.Since(started)
	log.Info("sqlite snapshot stored", "set", in.SetID, "db", in.Name, "key", key,
		"bytes", art.Size, "rawBytes", art.RawSize, "rowCounts", art.RowCounts, "encryption", art.Encryption, "duration", art.Duration)
	return art, nil
}

// target checks the input and the worker's settings and returns the database
// file and the store key.
func (s *SQLite) target(in SQLiteInput) (path, key string, err error) {
	path, ok := s.Databases[in.Name]
	if !ok || in.Name == "" {
		configured := "none configured"
		if len(s.Databases) > 0 {
			names := make([]string, 0, len(s.Databases))
			for n := range s.Databases {
				names = append(names, n)
			}
			slices.Sort(names)
			configured = "configured: " + strings.Join(names, ", ")
		}
		return "", "", NonRetryable(ErrUnknownTarget, fmt.Errorf("sqlite snapshot: input field \"name\": unknown SQLite database %q (%s; see DRFLOW_SQLITE_DATABASES)", in.Name, configured))
	}
	if path == "" || strings.ContainsRune(path, 0) {
		return "", "", NonRetryable(ErrInvalidConfig, fmt.Errorf("sqlite %s: configured path %q is not a file path", in.Name, path))
	}
	if s.Store == nil {
		return "", "", NonRetryable(ErrInvalidConfig, fmt.Errorf("sqlite %s: no backup store configured", in.Name))
	}
	if _, err := s.Zstd.encoderOptions(); err != nil {
		return "", "", NonRetryable(ErrInvalidConfig, fmt.Errorf("sqlite %s: %w", in.Name, err))
	}
	key = in.Key
	if key == "" {
		if in.SetID == "" {
			return "", "", NonRetryable(ErrInvalidInput, fmt.Errorf("sqlite %s: input needs \"setId\" or \"key\"", in.Name))
		}
		key = SQLiteKey(in.SetID, in.Name)
	}
	if err := store.CheckKey(key); err != nil {
		return "", "", NonRetryable(ErrInvalidInput, fmt.Errorf("sqlite %s: input field \"key\": %w", in.Name, err))
	}
	return path, key, nil
}

// checkSQLiteFile fails non-retryably when path cannot be a database to copy:
// missing, not a regular file, or not readable by the worker. Other errors
// are left to the retry policy.
func checkSQLiteFile(name, path string) error {
	fi, err := os.Stat(path)
	if err == nil && fi.Mode().IsRegular() {
		// SQLite would only say "unable to open database file".
		var f *os.File
		if f, err = os.Open(path); err == nil {
			_ = f.Close()
		}
	}
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return NonRetryable(ErrSQLiteNotFound, fmt.Errorf("sqlite %s: database file %s does not exist (see DRFLOW_SQLITE_DATABASES)", name, displayPath(path)))
	case errors.Is(err, fs.ErrPermission):
		return NonRetryable(ErrPermissionDenied, fmt.Errorf("sqlite %s: %w", name, err))
	case err != nil:
		return fmt.Errorf("sqlite %s: %w", name, err)
	case fi.IsDir():
		return NonRetryable(ErrSQLiteNotDatabase, fmt.Errorf("sqlite %s: %s is a directory, not a SQLite database file", name, displayPath(path)))
	case !fi.Mode().IsRegular():
		return NonRetryable(ErrSQLiteNotDatabase, fmt.Errorf("sqlite %s: %s is not a regular file", name, displayPath(path)))
	}
	return nil
}

// snapshot does the work of Snapshot; its errors are classified by the caller.
func (s *SQLite) snapshot(ctx context.Context, name, path, key string) (Artifact, error) {
	// VACUUM INTO writes a database file, so the copy is staged: the one file
	// a SQLite backup cannot avoid. It lives in the worker's scratch directory
	// in TMPDIR, created 0600 by CreateTemp and removed on every way out; a
	// worker killed mid-copy leaves it to the next worker's sweep.
	tmp, done, err := scratch.CreateTemp("drflow-sqlite-*.db")
	if err != nil {
		return Artifact{}, fmt.Errorf("create the local copy: %w", err)
	}
	tmpPath := tmp.Name()
	// An absolute name: a relative TMPDIR starting with "file:" would be read
	// as a URI by VACUUM INTO.
	if abs, err := filepath.Abs(tmpPath); err == nil {
		tmpPath = abs
	}
	// VACUUM INTO wants a missing or empty file; CreateTemp made it empty.
	_ = tmp.Close()
	defer func() {
		removeSQLiteFiles(tmpPath)
		_ = done() // releases the scratch directory
	}()

	prog := new(StreamProgress)
	var phase atomic.Value
	phase.Store("snapshot")
	heartbeat := func() {
		p := SQLiteProgress{Phase: phase.Load().(string), RawBytes: prog.Raw.Load(), StoredBytes: prog.Stored.Load()}
		if fi, err := os.Stat(tmpPath); err == nil {
			p.SnapshotBytes = fi.Size()
		}
		activity.RecordHeartbeat(ctx, p)
	}
	heartbeat()
	stopBeat := startSQLiteHeartbeat(ctx, heartbeat)
	defer stopBeat()

	if err := vacuumInto(ctx, path, tmpPath); err != nil {
		return Artifact{}, err
	}

	phase.Store("check")
	heartbeat()
	version, counts, err := inspectSQLiteCopy(ctx, tmpPath)
	if err != nil {
		return Artifact{}, err
	}

	phase.Store("upload")
	heartbeat()
	f, err := os.Open(tmpPath)
	if err != nil {
		return Artifact{}, fmt.Errorf("open the local copy: %w", err)
	}
	defer f.Close()
	c, err := putZstd(ctx, s.Store, key, f, s.Zstd, s.Age, prog)
	if err != nil {
		return Artifact{}, err
	}
	stopBeat()
	phase.Store("stored")
	heartbeat()
	art := Artifact{
		Kind:          KindSQLite,
		Source:        name,
		Key:           key,
		Size:          c.Size,
		RawSize:       c.RawSize,
		SHA256:        c.SHA256,
		Compression:   CompressionZstd,
		SourceVersion: "SQLite " + version,
		RowCounts:     counts,
	}
	s.Age.stamp(&art)
	return art, nil
}

// vacuumInto copies the live database at path into the empty file dst.
func vacuumInto(ctx context.Context, path, dst string) error {
	// mode=ro: drflow never writes to the application's database; SQLite
	// still takes the read locks (and, in WAL mode, uses the -shm file) that
	// keep concurrent writers from changing what the copy reads.
	db, err := openSQLite(path, "mode=ro")
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	defer db.Close()
	// The file name is a bound parameter: no quoting to get wrong.
	if _, err := db.ExecContext(ctx, "VACUUM INTO ?", dst); err != nil {
		return fmt.Errorf("vacuum into the local copy: %w", err)
	}
	return nil
}

// inspectSQLiteCopy checks the copy at path and returns the SQLite version
// and the row count of every table in it.
func inspectSQLiteCopy(ctx context.Context, path string) (version string, counts map[string]int64, err error) {
	// immutable=1: the copy is drflow's own and nothing else writes to it, so
	// SQLite needs no locks and no -shm file next to it.
	db, err := openSQLite(path, "mode=ro&immutable=1")
	if err != nil {
		return "", nil, fmt.Errorf("open the local copy: %w", err)
	}
	defer db.Close()

	if err := integrityCheck(ctx, db); err != nil {
		return "", nil, err
	}
	if err := db.QueryRowContext(ctx, "SELECT sqlite_version()").Scan(&version); err != nil {
		return "", nil, fmt.Errorf("read sqlite_version(): %w", err)
	}
	// type 'table' leaves out views, virtual tables and their shadow tables
	// (type 'virtual' and 'shadow'), whose contents belong to a module.
	rows, err := db.QueryContext(ctx, `SELECT name FROM pragma_table_list
		WHERE schema = 'main' AND type = 'table' AND name NOT LIKE 'sqlite\_%' ESCAPE '\'
		ORDER BY name`)
	if err != nil {
		return "", nil, fmt.Errorf("list tables of the copy: %w", err)
	}
	var tables []string
	for rows.Next() {
		var t string
		if err := rows.Scan(&t); err != nil {
			rows.Close()
			return "", nil, fmt.Errorf("list tables of the copy: %w", err)
		}
		tables = append(tables, t)
	}
	if err := rows.Close(); err != nil {
		return "", nil, fmt.Errorf("list tables of the copy: %w", err)
	}
	if err := rows.Err(); err != nil {
		return "", nil, fmt.Errorf("list tables of the copy: %w", err)
	}
	counts = make(map[string]int64, len(tables))
	for _, t := range tables {
		var n int64
		if err := db.QueryRowContext(ctx, "SELECT count(*) FROM "+quoteSQLiteIdent(t)).Scan(&n); err != nil {
			return "", nil, fmt.Errorf("count rows of table %s in the copy: %w", t, err)
		}
		counts[t] = n
	}
	return version, counts, nil
}

// integrityCheck runs PRAGMA integrity_check on db; findings are a
// *sqliteCorruptError.
func integrityCheck(ctx context.Context, db *sql.DB) error {
	rows, err := db.QueryContext(ctx, "PRAGMA integrity_check")
	if err != nil {
		return fmt.Errorf("integrity check of the copy: %w", err)
	}
	defer rows.Close()
	var findings []string
	more := 0
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			return fmt.Errorf("integrity check of the copy: %w", err)
		}
		if len(findings) < sqliteCheckErrors {
			findings = append(findings, line)
		} else {
			more++
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("integrity check of the copy: %w", err)
	}
	if len(findings) == 1 && findings[0] == "ok" {
		return nil
	}
	if len(findings) == 0 {
		findings = []string{"no result"}
	}
	return &sqliteCorruptError{findings: findings, more: more}
}

// sqliteCorruptError is a copy that failed PRAGMA integrity_check.
type sqliteCorruptError struct {
	findings []string
	more     int
}

func (e *sqliteCorruptError) Error() string {
	s := "integrity check of the copy failed: " + strings.Join(e.findings, "; ")
	if e.more > 0 {
		s += fmt.Sprintf(" (and %d more)", e.more)
	}
	return s
}

// openSQLite opens the database file at path with the URI parameters params
// and the busy timeout, as a pool of one connection.
func openSQLite(path, params string) (*sql.DB, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	// A URI, so that mode and immutable apply; url.URL escapes the ? # and %
	// a path may hold, which SQLite decodes again. "_pragma" is the driver's.
	dsn := (&url.URL{Scheme: "file", Path: filepath.ToSlash(abs)}).String() + "?" + params +
		fmt.Sprintf("&_pragma=busy_timeout(%d)", sqliteBusyTimeout.Milliseconds())
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	return db, nil
}

// quoteSQLiteIdent quotes a table name for SQL.
func quoteSQLiteIdent(name string) string {
	return `"` + strings.ReplaceAll(name, `"`, `""`) + `"`
}

// removeSQLiteFiles removes the local copy and any journal SQLite may have
// left next to it.
func removeSQLiteFiles(path string) {
	for _, suffix := range []string{"", "-journal", "-wal", "-shm"} {
		_ = os.Remove(path + suffix)
	}
}

// classifySQLiteError wraps err with the database's name and makes it
// non-retryable when retrying cannot fix it.
func classifySQLiteError(ctx context.Context, name, path string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("sqlite %s: %w", name, context.Cause(ctx))
	}
	var corrupt *sqliteCorruptError
	if errors.As(err, &corrupt) {
		return NonRetryable(ErrSQLiteCorrupt, fmt.Errorf("sqlite %s: %s is corrupt: %w", name, displayPath(path), err))
	}
	wrapped := fmt.Errorf("sqlite %s: %w", name, err)
	var se *sqlitedrv.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqlitelib.SQLITE_NOTADB:
			return NonRetryable(ErrSQLiteNotDatabase, fmt.Errorf("sqlite %s: %s is not a SQLite database: %w", name, displayPath(path), err))
		case sqlitelib.SQLITE_CORRUPT:
			return NonRetryable(ErrSQLiteCorrupt, fmt.Errorf("sqlite %s: %s is corrupt: %w", name, displayPath(path), err))
		case sqlitelib.SQLITE_PERM, sqlitelib.SQLITE_AUTH:
			return NonRetryable(ErrPermissionDenied, wrapped)
		}
	}
	if store.IsPermanent(err) {
		return NonRetryable(ErrStore, wrapped)
	}
	return wrapped
}

// displayPath is path as configured, with its absolute form when relative.
func displayPath(path string) string {
	if filepath.IsAbs(path) {
		return path
	}
	if abs, err := filepath.Abs(path); err == nil {
		return fmt.Sprintf("%s (%s)", path, abs)
	}
	return path
}

// startSQLiteHeartbeat heartbeats at the default pace (see startHeartbeat).
func startSQLiteHeartbeat(ctx context.Context, beat func()) (stop func()) {
	return startHeartbeat(ctx, 0, beat)
}
