package activities

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.temporal.io/sdk/activity"

	"github.com/kohakku/drflow/internal/config"
	"github.com/kohakku/drflow/internal/store"
)

// Error types of the non-retryable errors raised by the Postgres activities.
const (
	// ErrDatabaseNotFound: the database does not exist on the server.
	ErrDatabaseNotFound = "DatabaseNotFound"
	// ErrAuthFailed: the server rejected the configured role or password.
	ErrAuthFailed = "AuthFailed"
	// ErrTableNotFound: a table named in DumpInput.CountTables or Tables (or in a
	// table restore) does not exist.
	ErrTableNotFound = "TableNotFound"
	// ErrPermissionDenied: the role may not read a table or export a snapshot.
	ErrPermissionDenied = "PermissionDenied"
	// ErrVersionMismatch: pg_dump is older than the server and refuses to dump it.
	ErrVersionMismatch = "VersionMismatch"
)

// Postgres holds the PostgreSQL server connection settings and the backup store.
// Its methods are the PostgreSQL activities. The zero values of the optional
// fields are the defaults.
type Postgres struct {
	// Config is the server: URL without the password, and the password.
	Config config.Postgres
	// Store receives the dumps.
	Store store.Store
	// BinDir is the directory holding pg_dump and pg_restore; "" looks them up on
	// PATH. pg_dump must be at least as new as the server.
	BinDir string
	// Zstd tunes the compression of the stored dumps.
	Zstd ZstdOptions
	// Age encrypts the dumps it stores to its recipients and decrypts the
	// stored ones (verify, restore) with its identities; nil does neither.
	Age *AgeKeys
	// LockWaitTimeout bounds pg_dump's wait for the shared lock on each table
	// (--lock-wait-timeout); past it the attempt fails and is retried. 0 waits for
	// as long as the activity may run.
	LockWaitTimeout time.Duration
	// HeartbeatInterval is how often a running dump heartbeats its progress; 0
	// means a third of the activity's heartbeat timeout, at most 10s.
	HeartbeatInterval time.Duration
}

// DumpInput says which database Dump backs up and where to.
type DumpInput struct {
	// SetID is the backup set the dump belongs to, for logs.
	SetID string `json:"setId"`
	// Database to dump, one of the server's databases.
	Database string `json:"database"`
	// Key in the backup store, e.g. sets/<id>/postgres/<db>.dump.zst.
	Key string `json:"key"`
	// CountTables are the tables whose row counts go into the manifest, counted in
	// the dump's own snapshot: "table" or "schema.table", as stored (no quoting).
	// A missing table fails the dump.
	CountTables []string `json:"countTables"`
	// Tables, when not empty, limits the dump to these tables ("table" or
	// "schema.table", as stored): one `pg_dump --table` each, quoted so no
	// character is a wildcard, with --strict-names, so a table that does not
	// exist fails the dump (ErrTableNotFound) instead of being left out. Empty
	// dumps the whole database.
	Tables []string `json:"tables,omitempty"`
}

// DumpProgress is Dump's heartbeat detail, shown in the Web UI. A dump cannot
// resume, so a retry starts over and does not read it.
type DumpProgress struct {
	// Phase is "snapshot" (counting rows), "dumping" or "stored".
	Phase string `json:"phase"`
	// RawBytes read from pg_dump so far.
	RawBytes int64 `json:"rawBytes"`
	// StoredBytes of compressed dump the store has accepted so far.
	StoredBytes int64 `json:"storedBytes"`
}

// stderrLimit bounds how much of pg_dump's standard error is kept for error
// messages (pg_dump without --verbose writes only warnings and errors).
const stderrLimit = 8 << 10

// Dump backs up one database with `pg_dump -Fc`, streamed through zstd and SHA-256
// straight into the backup store under in.Key, and returns its Artifact.
//
// The row counts of in.CountTables and the dump come from one snapshot: a
// REPEATABLE READ, READ ONLY transaction exports its snapshot, counts, and stays
// open while pg_dump runs with --snapshot. The password reaches pg_dump only
// through PGPASSWORD, never its argument list, and no error or log line holds it.
//
// Dump heartbeats DumpProgress. It cannot resume: every attempt dumps from the
// start, and since the store makes an object visible only once it is complete, a
// failed or cancelled attempt leaves nothing under in.Key (an older object there
// stays as it was until a dump succeeds). Cancelling ctx kills pg_dump.
//
// Errors: bad input, a missing database or count table, failed authentication,
// a denied permission, a pg_dump older than the server and permanent store errors
// are non-retryable application errors (ErrInvalidInput, ErrDatabaseNotFound,
// ErrTableNotFound, ErrAuthFailed, ErrPermissionDenied, ErrVersionMismatch,
// ErrStore; ErrInvalidConfig when the worker has no server URL);
// everything else — connection refused, pg_dump killed, a store timeout — is
// returned wrapped for the retry policy.
func (p *Postgres) Dump(ctx context.Context, in DumpInput) (Artifact, error) {
	started := time.Now().UTC()
	log := activity.GetLogger(ctx)
	if err := p.checkDumpInput(in); err != nil {
		return Artifact{}, err
	}
	dbURL, err := p.Config.DatabaseURL(in.Database)
	if err != nil {
		// The name was checked above; what is left is the worker's configuration.
		return Artifact{}, NonRetryable(ErrInvalidConfig, fmt.Errorf("dump %s: %w", in.Database, err))
	}
	connURL, password := splitPassword(dbURL)
	if attempt := activity.GetInfo(ctx).Attempt; attempt > 1 {
		log.Info("dump starts over: a dump cannot resume", "set", in.SetID, "db", in.Database, "attempt", attempt)
	}
	art, err := p.dump(ctx, in, dbURL, connURL, password)
	if err != nil {
		// No log line: the SDK logs the returned error.
		return Artifact{}, classifyDumpError(fmt.Errorf("dump %s: %w", in.Database, err), secretForms(password))
	}
	art.StartedAt = started
	art.Duration = time.Since(started)
	log.Info("dump stored", "set", in.SetID, "db", in.Database, "key", in.Key,
		"bytes", art.Size, "rawBytes", art.RawSize, "rowCounts", art.RowCounts, "encryption", art.Encryption, "duration", art.Duration)
	return art, nil
}

func (p *Postgres) checkDumpInput(in DumpInput) error {
	bad := func(format string, args ...any) error {
		return NonRetryable(ErrInvalidInput, fmt.Errorf("dump %s: "+format, append([]any{in.Database}, args...)...))
	}
	if in.Database == "" {
		return NonRetryable(ErrInvalidInput, errors.New("dump: database is empty"))
	}
	if len(in.Database) > 63 || strings.ContainsRune(in.Database, 0) {
		return bad("not a PostgreSQL database name")
	}
	if err := store.CheckKey(in.Key); err != nil {
		return bad("%w", err)
	}
	for _, t := range in.CountTables {
		if _, err := tableIdent(t); err != nil {
			return bad("count tables: %w", err)
		}
	}
	for _, t := range in.Tables {
		if _, err := tableIdent(t); err != nil {
			return bad("tables: %w", err)
		}
	}
	if p.Store == nil {
		return NonRetryable(ErrInvalidConfig, fmt.Errorf("dump %s: no backup store configured", in.Database))
	}
	if _, err := p.Zstd.encoderOptions(); err != nil {
		return NonRetryable(ErrInvalidConfig, fmt.Errorf("dump %s: %w", in.Database, err))
	}
	return nil
}

// dump does the work of Dump; its errors are classified by the caller.
func (p *Postgres) dump(ctx context.Context, in DumpInput, dbURL, connURL, password string) (Artifact, error) {
	prog := new(StreamProgress)
	var phase atomic.Value
	phase.Store("snapshot")
	heartbeat := func() {
		activity.RecordHeartbeat(ctx, DumpProgress{Phase: phase.Load().(string), RawBytes: prog.Raw.Load(), StoredBytes: prog.Stored.Load()})
	}
	// From the start: counting the rows of a big table takes a while too.
	heartbeat()
	stopBeat := p.startHeartbeat(ctx, heartbeat)
	defer stopBeat()

	cfg, err := pgx.ParseConfig(dbURL)
	if err != nil {
		return Artifact{}, fmt.Errorf("connect: %w", err)
	}
	cfg.RuntimeParams["application_name"] = "drflow dump"
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 30 * time.Second
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return Artifact{}, fmt.Errorf("connect: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()

	// The exporting transaction stays open until pg_dump has finished; ending it
	// is a rollback of a read-only transaction, so its error does not matter.
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return Artifact{}, fmt.Errorf("begin snapshot transaction: %w", err)
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = tx.Rollback(rctx)
	}()
	var snapshot, serverVersion string
	if err := tx.QueryRow(ctx, "SELECT pg_export_snapshot()").Scan(&snapshot); err != nil {
		return Artifact{}, fmt.Errorf("export snapshot: %w", err)
	}
	if err := tx.QueryRow(ctx, "SHOW server_version").Scan(&serverVersion); err != nil {
		return Artifact{}, fmt.Errorf("read server_version: %w", err)
	}
	var counts map[string]int64
	for _, t := range in.CountTables {
		if _, done := counts[t]; done {
			continue
		}
		id, _ := tableIdent(t) // checked with the input
		var n int64
		if err := tx.QueryRow(ctx, "SELECT count(*) FROM "+id.Sanitize()).Scan(&n); err != nil {
			return Artifact{}, fmt.Errorf("count rows of %s in database %q: %w", t, in.Database, err)
		}
		if counts == nil {
			counts = make(map[string]int64, len(in.CountTables))
		}
		counts[t] = n
	}

	// pg_dump runs under its own context so that every way out of here kills it.
	dumpCtx, cancelDump := context.WithCancel(ctx)
	defer cancelDump()
	cmd := exec.CommandContext(dumpCtx, p.program("pg_dump"), p.pgDumpArgs(snapshot, connURL, in.Tables)...)
	cmd.Env = append(os.Environ(), "PGAPPNAME=drflow pg_dump")
	if password != "" {
		// Environment, not argv: argv is visible to every user in ps.
		cmd.Env = append(cmd.Env, "PGPASSWORD="+password)
	}
	cmd.WaitDelay = 10 * time.Second
	stderr := &headBuffer{limit: stderrLimit}
	cmd.Stderr = stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return Artifact{}, fmt.Errorf("pg_dump: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return Artifact{}, fmt.Errorf("start pg_dump: %w", err)
	}
	src := &exitReader{rc: stdout, wait: sync.OnceValue(func() error {
		if err := cmd.Wait(); err != nil {
			return &pgDumpError{err: err, stderr: scrubAll(stderr.String(), secretForms(password))}
		}
		return nil
	})}
	// Reap pg_dump on every path; after a successful stream it has exited already.
	defer func() { cancelDump(); _ = src.wait() }()

	phase.Store("dumping")
	c, err := putZstd(ctx, p.Store, in.Key, src, p.Zstd, p.Age, prog)
	if err != nil {
		return Artifact{}, err
	}
	stopBeat()
	phase.Store("stored")
	heartbeat()
	art := Artifact{
		Kind:          KindPostgres,
		Source:        in.Database,
		Key:           in.Key,
		Size:          c.Size,
		RawSize:       c.RawSize,
		SHA256:        c.SHA256,
		Compression:   CompressionZstd,
		SourceVersion: postgresVersion(serverVersion),
		RowCounts:     counts,
	}
	p.Age.stamp(&art)
	return art, nil
}

func (p *Postgres) program(name string) string {
	if p.BinDir == "" {
		return name
	}
	return filepath.Join(p.BinDir, name)
}

func (p *Postgres) pgDumpArgs(snapshot, connURL string, tables []string) []string {
	args := []string{
		"--format=custom",
		// Uncompressed: zstd compresses the whole stream, better and faster.
		"--compress=0",
		"--snapshot=" + snapshot,
		"--no-password",
	}
	if len(tables) > 0 {
		args = append(args, "--strict-names")
		for _, t := range tables {
			id, _ := tableIdent(t) // checked with the input
			// A quoted pattern matches the name literally: no '*', '?' or '.' magic.
			args = append(args, "--table="+id.Sanitize())
		}
	}
	if p.LockWaitTimeout > 0 {
		args = append(args, "--lock-wait-timeout="+strconv.FormatInt(max(p.LockWaitTimeout.Milliseconds(), 1), 10))
	}
	return append(args, "--dbname="+connURL)
}

// startHeartbeat calls beat every HeartbeatInterval (see heartbeatEvery) until the
// returned stop is called.
func (p *Postgres) startHeartbeat(ctx context.Context, beat func()) (stop func()) {
	return startHeartbeat(ctx, p.HeartbeatInterval, beat)
}

// exitReader is pg_dump's standard output. At the end of the stream it waits for
// pg_dump and turns the end into pg_dump's error unless it exited 0, so a dump
// that died halfway is never stored as if it were complete.
type exitReader struct {
	rc   io.ReadCloser
	wait func() error // cmd.Wait once; later calls return the same error
}

func (r *exitReader) Read(b []byte) (int, error) {
	n, err := r.rc.Read(b)
	if err == io.EOF {
		if werr := r.wait(); werr != nil {
			return n, werr
		}
	}
	return n, err
}

// Close closes the pipe, so a blocked Read returns and pg_dump's next write fails.
func (r *exitReader) Close() error { return r.rc.Close() }

// pgDumpError is pg_dump exiting with an error; stderr is what it said, already
// scrubbed of the password.
type pgDumpError struct {
	err    error
	stderr string
}

func (e *pgDumpError) Error() string {
	if e.stderr == "" {
		return "pg_dump: " + e.err.Error()
	}
	return fmt.Sprintf("pg_dump: %v: %s", e.err, e.stderr)
}

func (e *pgDumpError) Unwrap() error { return e.err }

// class returns the application error type of a failure that retrying cannot fix,
// from what pg_dump said, or "".
func (e *pgDumpError) class() string {
	s := e.stderr
	switch {
	case strings.Contains(s, "server version mismatch"):
		return ErrVersionMismatch
	case strings.Contains(s, "password authentication failed"),
		strings.Contains(s, "no password supplied"):
		return ErrAuthFailed
	case strings.Contains(s, "database \"") && strings.Contains(s, "\" does not exist"):
		return ErrDatabaseNotFound
	case strings.Contains(s, "permission denied"):
		return ErrPermissionDenied
	case strings.Contains(s, "no matching tables were found"):
		// --strict-names with DumpInput.Tables.
		return ErrTableNotFound
	}
	return ""
}

// classifyDumpError turns err into a non-retryable application error when
// retrying cannot fix it, and makes sure no form of the password survives in it.
func classifyDumpError(err error, secrets []string) error {
	typ := ""
	var pgErr *pgconn.PgError
	var pdErr *pgDumpError
	switch {
	case errors.As(err, &pgErr):
		switch pgErr.Code {
		case "3D000": // invalid_catalog_name
			typ = ErrDatabaseNotFound
		case "28P01", "28000": // invalid_password, invalid_authorization_specification
			typ = ErrAuthFailed
		case "42P01", "3F000": // undefined_table, invalid_schema_name
			typ = ErrTableNotFound
		case "42501": // insufficient_privilege
			typ = ErrPermissionDenied
		}
	case errors.As(err, &pdErr):
		typ = pdErr.class()
	case store.IsPermanent(err):
		typ = ErrStore
	}
	if leaks(err, secrets) {
		// Temporal records the whole cause chain, so a leaking chain is replaced
		// by its scrubbed text; only the classification is kept.
		err = errors.New(scrubAll(err.Error(), secrets))
	}
	if typ != "" {
		return NonRetryable(typ, err)
	}
	return err
}

// leaks reports whether any error in err's tree mentions one of secrets.
func leaks(err error, secrets []string) bool {
	if err == nil || len(secrets) == 0 {
		return false
	}
	msg := err.Error()
	for _, s := range secrets {
		if strings.Contains(msg, s) {
			return true
		}
	}
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		return leaks(u.Unwrap(), secrets)
	case interface{ Unwrap() []error }:
		for _, e := range u.Unwrap() {
			if leaks(e, secrets) {
				return true
			}
		}
	}
	return false
}

// secretForms returns the forms in which password could appear in a message:
// as is and escaped as in a URL.
func secretForms(password string) []string {
	if password == "" {
		return nil
	}
	forms := []string{password}
	for _, f := range []string{url.QueryEscape(password), url.PathEscape(password),
		strings.TrimPrefix(url.UserPassword("", password).String(), ":")} {
		if f != password {
			forms = append(forms, f)
		}
	}
	return forms
}

func scrubAll(s string, secrets []string) string {
	for _, sec := range secrets {
		s = strings.ReplaceAll(s, sec, "xxxxx")
	}
	return s
}

// splitPassword returns dbURL without any password (user info or query
// parameter) and the password it carried.
func splitPassword(dbURL string) (string, string) {
	u, err := url.Parse(dbURL)
	if err != nil {
		// config.DatabaseURL produced it from a parsed URL; cannot happen.
		return "", ""
	}
	var password string
	if u.User != nil {
		if pw, ok := u.User.Password(); ok {
			password = pw
			u.User = url.User(u.User.Username())
		}
	}
	if q := u.Query(); q.Has("password") {
		if password == "" {
			password = q.Get("password")
		}
		q.Del("password")
		u.RawQuery = q.Encode()
	}
	return u.String(), password
}

// tableIdent parses a CountTables entry: "table" or "schema.table".
func tableIdent(t string) (pgx.Identifier, error) {
	schema, table, qualified := strings.Cut(t, ".")
	switch {
	case t == "":
		return nil, errors.New("empty table name")
	case strings.ContainsRune(t, 0):
		return nil, fmt.Errorf("table name %q contains a NUL byte", t)
	case !qualified:
		return pgx.Identifier{t}, nil
	case schema == "" || table == "":
		return nil, fmt.Errorf("table name %q: want table or schema.table", t)
	}
	return pgx.Identifier{schema, table}, nil
}

// postgresVersion turns server_version ("15.20 (Debian 15.20-0+deb12u1)") into
// "PostgreSQL 15.20".
func postgresVersion(serverVersion string) string {
	v, _, _ := strings.Cut(strings.TrimSpace(serverVersion), " ")
	return "PostgreSQL " + v
}

// headBuffer keeps the first limit bytes written to it and counts the rest.
// Only exec's stderr goroutine writes; String is called after cmd.Wait.
type headBuffer struct {
	limit   int
	buf     []byte
	dropped int64
}

func (b *headBuffer) Write(p []byte) (int, error) {
	keep := min(len(p), b.limit-len(b.buf))
	b.buf = append(b.buf, p[:keep]...)
	b.dropped += int64(len(p) - keep)
	return len(p), nil
}

func (b *headBuffer) String() string {
	s := strings.TrimSpace(string(b.buf))
	if b.dropped > 0 {
		s += fmt.Sprintf(" … (%d more bytes)", b.dropped)
	}
	return s
}
