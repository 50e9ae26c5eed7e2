package activities

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"github.com/kohakku/drflow/internal/store"
)

// RestoreStagingPrefix starts the name of the staging database RestoreDatabase
// restores into before it swaps it in (see StagingDatabase). No restore
// target may start with it, nor with ScratchPrefix.
const RestoreStagingPrefix = "drflow_restore_"

// systemDatabases may never be a restore target: dropping one breaks the server.
var systemDatabases = []string{"postgres", "template0", "template1"}

// InspectDatabaseInput names a database to look at before a restore: for the
// restore plan and to decide whether a safety copy is needed.
type InspectDatabaseInput struct {
	// Database to inspect, on the worker's configured server.
	Database string `json:"database"`
	// CountTables are tables ("table" or "schema.table", as stored) whose rows
	// are counted when the database exists; a missing table counts -1 and is
	// not an error.
	CountTables []string `json:"countTables,omitempty"`
}

// DatabaseState is what InspectDatabase found.
type DatabaseState struct {
	// Database is the input's database.
	Database string `json:"database"`
	// Reachable is false when the server could not be reached (down, refusing
	// connections, starting up); Error says why. It is a state, not an
	// activity error: a total loss starts with an unreachable server.
	Reachable bool `json:"reachable"`
	// Exists: the server has a database of that name.
	Exists bool `json:"exists"`
	// SizeBytes is pg_database_size of the database when it exists.
	SizeBytes int64 `json:"sizeBytes,omitempty"`
	// RowCounts of the input's CountTables when the database exists; -1 for a
	// table it does not have.
	RowCounts map[string]int64 `json:"rowCounts,omitempty"`
	// Error says why the server was not reachable, scrubbed of the password.
	Error string `json:"error,omitempty"`
	// ServerVersion is the server's version, "PostgreSQL 15.20", when reachable.
	ServerVersion string `json:"serverVersion,omitempty"`
}

// RestoreDatabaseInput names the dump of a backup set to restore and where to.
type RestoreDatabaseInput struct {
	// SetID is the backup set the artifact belongs to, for logs and messages.
	SetID string `json:"setId"`
	// Artifact is the manifest's postgres artifact: Source (the database it was
	// dumped from), Key, Size, SHA256, Compression, RawSize, RowCounts.
	Artifact Artifact `json:"artifact"`
	// Target is the database to restore into, replaced when it exists; ""
	// means Artifact.Source. It may not be a system database (postgres,
	// template0, template1) nor start with ScratchPrefix or
	// RestoreStagingPrefix.
	Target string `json:"target"`
	// Jobs is pg_restore -j; 0 means runtime.NumCPU().
	Jobs int `json:"jobs,omitempty"`
	// NoOwner restores with pg_restore --no-owner --no-privileges: every object
	// is owned by the restoring role and no GRANT is replayed. For a server
	// that lacks the roles of the dumped one.
	NoOwner bool `json:"noOwner,omitempty"`
}

// RestoreDatabaseResult is what RestoreDatabase did and how long it took.
type RestoreDatabaseResult struct {
	// Database is the artifact's source database (Artifact.Source).
	Database string `json:"database"`
	// Target is the database restored into.
	Target string `json:"target"`
	// Replaced: a database named Target existed and was replaced.
	Replaced bool `json:"replaced"`
	// RowCounts of the manifest's tables in the restored database; they equal
	// the manifest's (or the activity fails).
	RowCounts map[string]int64 `json:"rowCounts"`
	// Download is the time to fetch, checksum and decompress the dump to a file.
	Download time.Duration `json:"download"`
	// Restore is the time to read the dump's table of contents (pg_restore
	// --list), create the staging database and pg_restore into it.
	Restore time.Duration `json:"restore"`
	// Analyze is the time ANALYZE took in the restored database.
	Analyze time.Duration `json:"analyze"`
	// RTO is Download + Restore + Analyze: the recovery time of this database
	// from this set on this worker.
	RTO time.Duration `json:"rto"`
}

// RestoreProgress is RestoreDatabase's heartbeat detail, shown in the Web UI.
// A retry does not read it: it resumes from the mark it finds in the server
// (see RestoreDatabase), or starts over.
type RestoreProgress struct {
	// Phase is "download", "restore", "analyze", "count", "swap", "done", or
	// "drop" when a failed attempt drops its staging database.
	Phase string `json:"phase"`
	// StoredBytes of the stored object read so far.
	StoredBytes int64 `json:"storedBytes"`
	// RawBytes of decompressed dump written to the temporary file so far.
	RawBytes int64 `json:"rawBytes"`
}

// StagingDatabase is the staging database RestoreDatabase uses for target:
// RestoreStagingPrefix and the first 12 hex digits of SHA-256(target), 27
// bytes whatever the target's length. Deterministic, so that a retry (or an
// operator) finds and drops what an attempt that died left behind; two
// restores of one target at the same time would share it, which the workflow
// never starts.
func StagingDatabase(target string) string {
	sum := sha256.Sum256([]byte(target))
	return RestoreStagingPrefix + hex.EncodeToString(sum[:])[:12]
}

// replacedDatabase is the name the swap gives the replaced target until it
// drops it: StagingDatabase(target) + "_replaced", under the reserved prefix.
func replacedDatabase(target string) string {
	return StagingDatabase(target) + "_replaced"
}

// restoreIdentity names one RestoreDatabase activity, the same for all its
// attempts and different for every other: workflow, run, activity id and the
// time the activity was first scheduled (the same across retries). A test
// plays a retry by giving two calls one identity in ctx.
func restoreIdentity(ctx context.Context) string {
	if id, ok := ctx.Value(restoreIdentityKey{}).(string); ok {
		return id
	}
	info := activity.GetInfo(ctx)
	sum := sha256.Sum256(fmt.Appendf(nil, "%s\x00%s\x00%s\x00%d", info.WorkflowExecution.ID, info.WorkflowExecution.RunID,
		info.ActivityID, info.ScheduledTime.UnixNano()))
	return hex.EncodeToString(sum[:8])
}

// restoreIdentityKey holds a test's restore identity in a context.
type restoreIdentityKey struct{}

// The mark's endings: whether the swap replaced a target or created it.
const (
	markReplaces = "; replaces the existing database"
	markCreates  = "; creates the database"
)

// RestoreDatabase restores one database of a backup set over in.Target (by
// default the database it was dumped from), whether that database is missing
// (a lost server) or live (after the operator approved).
//
// It streams the object from the store through SHA-256 and zstd into a
// temporary file in the worker's scratch directory in TMPDIR (pg_restore -j
// needs a seekable file; it is removed on every path, and what a killed worker
// left there is removed by the next one: see internal/scratch), checks size, SHA-256 and raw size against the
// manifest and the archive's table of contents (pg_restore --list), then
// restores into a staging database, never straight into the target: it drops
// a leftover StagingDatabase(target), creates it from template0 and runs
// `pg_restore --exit-on-error -j N` into it (with --no-owner
// --no-privileges when in.NoOwner), runs ANALYZE there and counts the
// manifest's tables. Only when all that succeeded does it swap, on a
// connection to the maintenance database "postgres". First it marks the
// staging database complete: a COMMENT naming the artifact, its SHA-256 and
// this activity (see restoreIdentity). When the target exists and is owned by
// another role than the connecting one, the staging database gets that owner;
// then the target stops taking connections (ALLOW_CONNECTIONS false), its
// sessions are ended, and one transaction renames the target to
// StagingDatabase(target)+"_replaced" and the staging database to the target;
// the replaced database is dropped after the commit. So the target exists at
// every moment, also when the worker dies during the swap: before the commit
// the target is the old database, after it the restored one. A failed or
// cancelled restore leaves the target as it was, and the application never
// sees a half-restored database; statistics and counts, taken in the staging
// database, carry over with the rename, and so does the mark, which stays on
// the restored database as a record of where it came from. The swap runs to
// its end even when ctx is cancelled during it. Database-level settings
// (ALTER DATABASE … SET), grants and comments of a replaced target are not
// carried over (pg_dump without --create does not hold them either).
//
// The staging database is dropped on every failure path before the mark, also
// when ctx is cancelled (under a context that survives the cancellation);
// cancelling ctx kills pg_restore's process group. A retry of an attempt that
// died before the mark starts over from the download. A retry that finds the
// mark — on the staging database (the attempt died in the swap) or on the
// target (it died after the swap) — does not download or restore again: it
// recounts the rows, finishes the swap or drops what the swap left, and
// reports Replaced as the first attempt saw it. RestoreDatabase heartbeats
// RestoreProgress for the Web UI. The password reaches pg_restore only through PGPASSWORD; no argument,
// log line or error holds it. It needs PostgreSQL 13 or newer (WITH (FORCE)),
// a role with CREATEDB that may drop the target (its owner or a superuser),
// and, without NoOwner, one that can give objects to their dumped owners.
//
// Errors (non-retryable application errors, each naming the key or database
// and what to do): bad input ErrInvalidInput (naming the input field); an
// object missing from the store ErrArtifactNotFound; a size or checksum
// mismatch ErrChecksumMismatch and a dump pg_restore cannot read
// ErrArchiveCorrupt (pick another set or run VerifyBackup); pg_restore failing
// while the server stays reachable ErrRestoreFailed (with pg_restore's
// complaint and the fix, e.g. a missing role); restored row counts other
// than the manifest's ErrRowCountMismatch; ErrAuthFailed, ErrPermissionDenied,
// ErrStore and ErrInvalidConfig as for Dump. Everything else — the store or
// the server unreachable, the server lost during the restore, a full
// temporary disk — is returned for the retry policy.
func (p *Postgres) RestoreDatabase(ctx context.Context, in RestoreDatabaseInput) (RestoreDatabaseResult, error) {
	log := activity.GetLogger(ctx)
	target, err := p.checkRestoreInput(in)
	if err != nil {
		return RestoreDatabaseResult{}, err
	}
	a := in.Artifact
	r := &restoration{p: p, in: in, target: target, staging: StagingDatabase(target), replaced: replacedDatabase(target),
		identity: restoreIdentity(ctx), res: RestoreDatabaseResult{Database: a.Source, Target: target}}
	if r.adminURL, err = p.Config.DatabaseURL(maintenanceDB); err == nil {
		r.stagingURL, err = p.Config.DatabaseURL(r.staging)
	}
	if err != nil {
		return RestoreDatabaseResult{}, NonRetryable(ErrInvalidConfig, fmt.Errorf("restore %q from %s: %w", target, a.Key, err))
	}
	_, r.password = splitPassword(r.adminURL)
	err = r.run(ctx)
	if _, ok := err.(*temporal.ApplicationError); ok {
		// Classified already, naming key and target; wrapping it again would hide
		// its type from Temporal.
		return RestoreDatabaseResult{}, err
	}
	if err != nil {
		// No log line: the SDK logs the returned error.
		return RestoreDatabaseResult{}, classifyDumpError(withFix(fmt.Errorf("restore %q from %s: %w", target, a.Key, err)), secretForms(r.password))
	}
	res := r.res
	res.RTO = res.Download + res.Restore + res.Analyze
	log.Info("database restored", "set", in.SetID, "db", a.Source, "target", target, "key", a.Key, "bytes", a.Size,
		"replaced", res.Replaced, "rowCounts", res.RowCounts, "download", res.Download, "restore", res.Restore,
		"analyze", res.Analyze, "rto", res.RTO)
	return res, nil
}

// checkRestoreInput returns the target database, defaulted, or a
// non-retryable ErrInvalidInput naming the bad field.
func (p *Postgres) checkRestoreInput(in RestoreDatabaseInput) (string, error) {
	a := in.Artifact
	target, targetField := in.Target, "target"
	if target == "" {
		target, targetField = a.Source, "artifact.source (the default target)"
	}
	bad := func(field, format string, args ...any) error {
		return NonRetryable(ErrInvalidInput, fmt.Errorf("restore %q from %q: input field %q: %s",
			target, a.Key, field, fmt.Sprintf(format, args...)))
	}
	if a.Key == "" {
		return "", bad("artifact.key", "empty: pass the artifact from the set's manifest")
	}
	if err := checkDumpArtifact(a); err != nil {
		var ae *artifactError
		field := "artifact"
		if errors.As(err, &ae) {
			field = ae.Field
		}
		return "", bad(field, "%v", err)
	}
	if a.Kind != KindPostgres {
		return "", bad("artifact.kind", "%q is not %s: only a PostgreSQL dump restores into a database", a.Kind, KindPostgres)
	}
	if err := checkTargetName(target); err != nil {
		return "", bad(targetField, "%v", err)
	}
	if in.Jobs < 0 {
		return "", bad("jobs", "%d is negative; 0 means one per CPU", in.Jobs)
	}
	if p.Store == nil {
		return "", NonRetryable(ErrInvalidConfig, fmt.Errorf("restore %q from %s: no backup store configured", target, a.Key))
	}
	return target, nil
}

// checkTargetName refuses names PostgreSQL would truncate or reject and the
// databases a restore must never drop.
func checkTargetName(name string) error {
	switch {
	case name == "":
		return errors.New("empty: name the database to restore into")
	case len(name) > 63:
		return fmt.Errorf("%q is longer than 63 bytes, which PostgreSQL would truncate", name)
	case strings.ContainsRune(name, 0):
		return fmt.Errorf("%q contains a NUL byte", name)
	case slices.Contains(systemDatabases, name):
		return fmt.Errorf("%q is a system database and is never replaced: name the application database", name)
	case strings.HasPrefix(name, ScratchPrefix), strings.HasPrefix(name, RestoreStagingPrefix):
		return fmt.Errorf("%q starts with %s or %s, reserved for drflow's scratch and staging databases", name, ScratchPrefix, RestoreStagingPrefix)
	}
	return nil
}

// restoration is one run of RestoreDatabase.
type restoration struct {
	p       *Postgres
	in      RestoreDatabaseInput
	target  string
	staging string
	// replaced is the name the swap gives the old target until it drops it.
	replaced string
	// identity names this activity across its attempts (restoreIdentity).
	identity string
	res      RestoreDatabaseResult
	// adminURL (maintenance database) and stagingURL carry the password: never
	// log them.
	adminURL, stagingURL, password string
	// touched: the staging database may exist, created by this attempt or
	// left by another one; a failure drops it, unless marked: it is complete
	// and carries the mark, and a retry swaps it in.
	touched, marked bool

	phase       atomic.Value // string
	stored, raw atomic.Int64
}

// what names the restore in messages.
func (r *restoration) what() string {
	return fmt.Sprintf("restore %q from %s", r.target, r.in.Artifact.Key)
}

// badDump is the non-retryable error for a stored dump that cannot be
// restored, whatever the server: the fix is another set.
func (r *restoration) badDump(kind, problem string) error {
	set := r.in.SetID
	if set == "" {
		set = "the set"
	}
	return NonRetryable(kind, fmt.Errorf("%s: %s: the stored dump cannot be restored and %q was not touched; restore from another set (setId) or run VerifyBackup on %s to see which of its dumps are intact",
		r.what(), problem, r.target, set))
}

func (r *restoration) run(ctx context.Context) (err error) {
	heartbeat := func() {
		activity.RecordHeartbeat(ctx, RestoreProgress{Phase: r.phase.Load().(string), StoredBytes: r.stored.Load(), RawBytes: r.raw.Load()})
	}
	setPhase := func(ph string) {
		r.phase.Store(ph)
		heartbeat()
	}
	setPhase("download")
	stopBeat := r.p.startHeartbeat(ctx, heartbeat)
	defer stopBeat()

	// Before the download, which may take long: a server that refuses the
	// role fails the restore now.
	if err := r.preflight(ctx); err != nil {
		return err
	}
	if done, err := r.resume(ctx, setPhase, stopBeat); done || err != nil {
		return err
	}
	started := time.Now()
	path, f, remove, err := stageDump(ctx, r.p.Store, r.p.Age, r.in.Artifact, "drflow-restore-*.dump", &r.stored, &r.raw)
	r.res.Download = time.Since(started)
	// The decompressed dump is the one staged copy: removed on every path.
	defer remove()
	if errors.Is(err, store.ErrNotFound) {
		return NonRetryable(ErrArtifactNotFound, fmt.Errorf("%s: the manifest names an object the backup store does not hold (%w): restore from another set (setId) or run VerifyBackup on it", r.what(), err))
	}
	if err != nil {
		return err
	}
	if f.kind != "" {
		return r.badDump(f.kind, f.problem)
	}

	setPhase("restore")
	started = time.Now()
	// The table of contents, before anything is created: cheap, and it tells a
	// file that is no dump from a restore that fails on the server.
	stderr, err := r.p.pgRestore(ctx, []string{"--list", path}, "", io.Discard)
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return r.badDump(ErrArchiveCorrupt, "pg_restore --list cannot read it: "+orExit(stderr, exit))
	}
	if err != nil {
		return err
	}

	if err := ctx.Err(); err != nil {
		return err
	}
	swapped := false
	// Registered before the staging database exists, so that every way out
	// short of the swap drops it: a failed restore, a lost connection, a
	// cancelled activity. Not when the server could not even be reached: then
	// nothing was created, and the next attempt drops any leftover first.
	defer func() {
		if swapped || !r.touched || r.marked {
			return
		}
		stopBeat() // the final phases are reported by hand
		setPhase("drop")
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), dropTimeout)
		defer cancel()
		if derr := dropDatabase(dctx, r.adminURL, r.staging); derr != nil {
			// A fresh error, retryable whatever err was: the next attempt drops
			// the leftover before it starts. err's type stays in its text.
			err = fmt.Errorf("%v; and dropping staging database %q failed, a retry drops it: %w", err, r.staging, derr)
		}
	}()
	if err := r.createStaging(ctx); err != nil {
		return err
	}
	err = r.restore(ctx, path)
	r.res.Restore = time.Since(started)
	if err != nil {
		return err
	}

	setPhase("analyze")
	if err := r.analyzeAndCount(ctx, setPhase); err != nil {
		return err
	}

	// The one destructive step: not started once the activity is cancelled.
	if err := ctx.Err(); err != nil {
		return err
	}
	setPhase("swap")
	if err := r.swap(ctx); err != nil {
		return err
	}
	swapped = true
	stopBeat()
	setPhase("done")
	return nil
}

// connect opens a connection named "drflow restore" in pg_stat_activity.
func (r *restoration) connect(ctx context.Context, dbURL string) (*pgx.Conn, error) {
	return connectAs(ctx, dbURL, "drflow restore")
}

// connectAs opens a connection with application_name app. dbURL carries the
// password: the errors of pgx do not repeat it, and callers scrub anyway.
func connectAs(ctx context.Context, dbURL, app string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(dbURL)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	cfg.RuntimeParams["application_name"] = app
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 30 * time.Second
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	return conn, nil
}

// preflight checks that the server takes the role and lets it create the
// staging database.
func (r *restoration) preflight(ctx context.Context) error {
	conn, err := r.connect(ctx, r.adminURL)
	if err != nil {
		return err
	}
	defer closeConn(conn)
	var role string
	var may bool
	if err := conn.QueryRow(ctx, "SELECT current_user, rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user").Scan(&role, &may); err != nil {
		return fmt.Errorf("read the privileges of the connecting role: %w", err)
	}
	if !may {
		return NonRetryable(ErrPermissionDenied, fmt.Errorf("%s: role %q may not create the staging database: grant it CREATEDB (ALTER ROLE %s CREATEDB) or configure a role that has it",
			r.what(), role, pgx.Identifier{role}.Sanitize()))
	}
	return nil
}

func (r *restoration) createStaging(ctx context.Context) error {
	conn, err := r.connect(ctx, r.adminURL)
	if err != nil {
		return err
	}
	defer closeConn(conn)
	r.touched = true
	name := pgx.Identifier{r.staging}.Sanitize()
	// A staging database is a leftover of an attempt that died: its name is
	// derived from the target, which one restore at a time writes.
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop leftover staging database %q: %w", r.staging, err)
	}
	// template0: a restore needs an empty database, whatever template1 holds.
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name+" TEMPLATE template0"); err != nil {
		return fmt.Errorf("create staging database %q: %w", r.staging, err)
	}
	return nil
}

// restore runs pg_restore into the staging database. A failure while the
// server stays reachable is non-retryable; a failure of the server or the
// connection is returned for a retry.
func (r *restoration) restore(ctx context.Context, path string) error {
	jobs := r.in.Jobs
	if jobs == 0 {
		jobs = runtime.NumCPU()
	}
	connURL, _ := splitPassword(r.stagingURL)
	args := []string{"--exit-on-error", "--no-password", "--jobs=" + strconv.Itoa(jobs)}
	if r.in.NoOwner {
		args = append(args, "--no-owner", "--no-privileges")
	}
	args = append(args, "--dbname="+connURL, path)
	stderr, err := r.p.pgRestore(ctx, args, r.password, io.Discard)
	var exit *exec.ExitError
	if err == nil || !errors.As(err, &exit) {
		return err
	}
	msg := strings.TrimRight(orExit(stderr, exit), "; ")
	if lostConnection(msg) {
		return fmt.Errorf("pg_restore into staging database %q lost the server: %s", r.staging, msg)
	}
	if archiveUnreadable(msg) {
		return r.badDump(ErrArchiveCorrupt, "pg_restore cannot read the archive's data: "+msg)
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, cerr := r.connect(pctx, r.stagingURL)
	if cerr != nil {
		return fmt.Errorf("pg_restore into staging database %q failed (%s) and the server is unreachable: %w", r.staging, msg, cerr)
	}
	closeConn(conn)
	return NonRetryable(ErrRestoreFailed, fmt.Errorf("%s: pg_restore into staging database %s failed: %s; %q was not touched; %s",
		r.what(), r.staging, msg, r.target, restoreFix(msg, r.in.NoOwner)))
}

var missingRole = regexp.MustCompile(`role "([^"]+)" does not exist`)

// restoreFix tells the operator what to do about pg_restore's complaint msg.
func restoreFix(msg string, noOwner bool) string {
	switch m := missingRole.FindStringSubmatch(msg); {
	case m != nil && noOwner:
		return fmt.Sprintf("fix: create role %q on this server (e.g. from the old server's pg_dumpall --roles-only): the dump needs it beyond ownership and privileges (a policy, default privileges)", m[1])
	case m != nil:
		return fmt.Sprintf("fix: create role %q on this server (e.g. from the old server's pg_dumpall --roles-only), or set noOwner to restore without owners and privileges", m[1])
	case strings.Contains(msg, "extension"):
		return "fix: install the extension named above on this server (its package must match the server's major version)"
	case strings.Contains(msg, "tablespace"):
		return "fix: create the tablespace named above on this server"
	case strings.Contains(msg, "permission denied"), strings.Contains(msg, "must be owner"), strings.Contains(msg, "must be member"):
		return "fix: restore as a role with the privilege named above (a superuser), or set noOwner"
	}
	return "fix the cause above on this server and start the restore again"
}

// archiveUnreadable tells from pg_restore's complaint whether it could not read
// the archive itself, rather than apply it.
func archiveUnreadable(stderr string) bool {
	for _, s := range []string{
		"could not read from input file", "unexpected end of file", "possibly corrupt archive",
		"did not find magic string", "data block type", "found unexpected block ID",
		"could not uncompress data", "input file does not appear to be a valid archive",
		"input file is too short", "could not find block ID",
	} {
		if strings.Contains(stderr, s) {
			return true
		}
	}
	return false
}

// analyzeAndCount runs ANALYZE in the staging database and counts the
// manifest's tables there, before the swap: a database whose rows differ from
// the manifest never replaces the target, and the statistics and counts are
// the target's after the rename (a rename changes no data).
func (r *restoration) analyzeAndCount(ctx context.Context, setPhase func(string)) error {
	conn, err := r.connect(ctx, r.stagingURL)
	if err != nil {
		return err
	}
	defer closeConn(conn)
	started := time.Now()
	if _, err := conn.Exec(ctx, "ANALYZE"); err != nil {
		return fmt.Errorf("analyze staging database %q: %w", r.staging, err)
	}
	r.res.Analyze = time.Since(started)

	setPhase("count")
	return r.count(ctx, conn, r.staging)
}

// count counts the manifest's tables in db (on conn) into the result; counts
// other than the manifest's are a bad dump.
func (r *restoration) count(ctx context.Context, conn *pgx.Conn, db string) error {
	want := r.in.Artifact.RowCounts
	tables := make([]string, 0, len(want))
	for t := range want {
		tables = append(tables, t)
	}
	slices.Sort(tables)
	r.res.RowCounts = make(map[string]int64, len(tables))
	var problems []string
	for _, t := range tables {
		id, _ := tableIdent(t) // checked with the input
		n, err := countTable(ctx, conn, id)
		if err != nil {
			return fmt.Errorf("count rows of %s in database %q: %w", t, db, err)
		}
		if n < 0 {
			problems = append(problems, fmt.Sprintf("table %s is missing from the restored database, %d rows in the manifest", t, want[t]))
			continue
		}
		r.res.RowCounts[t] = n
		if n != want[t] {
			problems = append(problems, fmt.Sprintf("table %s has %d rows restored, %d in the manifest", t, n, want[t]))
		}
	}
	if len(problems) > 0 {
		return r.badDump(ErrRowCountMismatch, strings.Join(problems, "; "))
	}
	return nil
}

// countTable counts the rows of id, or returns -1 when the table (or its
// schema) does not exist.
func countTable(ctx context.Context, conn *pgx.Conn, id pgx.Identifier) (int64, error) {
	var n int64
	err := conn.QueryRow(ctx, "SELECT count(*) FROM "+id.Sanitize()).Scan(&n)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && (pgErr.Code == "42P01" || pgErr.Code == "3F000") {
		return -1, nil
	}
	return n, err
}

// mark is the comment a complete staging database carries from the swap on
// (see RestoreDatabase), without its ending (markReplaces or markCreates).
func (r *restoration) mark() string {
	return fmt.Sprintf("drflow: restored from %s (sha256 %s) by restore %s", r.in.Artifact.Key, r.in.Artifact.SHA256, r.identity)
}

// resume finishes what an earlier attempt of this restore left when it died
// in or after its swap, found by the mark (see RestoreDatabase). done reports
// that it did: the restore is complete, nothing more to do.
func (r *restoration) resume(ctx context.Context, setPhase func(string), stopBeat func()) (done bool, err error) {
	conn, err := r.connect(ctx, r.adminURL)
	if err != nil {
		return false, err
	}
	defer closeConn(conn)
	comments, err := databaseComments(ctx, conn, r.target, r.staging, r.replaced)
	if err != nil {
		return false, err
	}
	mark := r.mark()
	log := activity.GetLogger(ctx)
	switch {
	case strings.HasPrefix(comments[r.target], mark):
		// Died after the swap's commit: the target is the restored database.
		log.Info("restore resumes after its swap: the target is restored already", "target", r.target, "key", r.in.Artifact.Key)
		r.res.Replaced = strings.HasSuffix(comments[r.target], markReplaces)
		setPhase("count")
		if err := r.countIn(ctx, r.target); err != nil {
			return false, err
		}
		if _, left := comments[r.replaced]; left {
			setPhase("swap")
			if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{r.replaced}.Sanitize()+" WITH (FORCE)"); err != nil {
				return false, fmt.Errorf("drop the replaced database %q: %w", r.replaced, err)
			}
		}
	case strings.HasPrefix(comments[r.staging], mark):
		// Died in the swap: the staging database is complete, the target as it was.
		log.Info("restore resumes at its swap: the staging database is complete", "target", r.target, "staging", r.staging, "key", r.in.Artifact.Key)
		setPhase("count")
		if err := r.countIn(ctx, r.staging); err != nil {
			return false, err
		}
		if err := ctx.Err(); err != nil {
			return false, err
		}
		setPhase("swap")
		if err := r.swap(ctx); err != nil {
			return false, err
		}
	default:
		return false, nil
	}
	stopBeat()
	setPhase("done")
	return true, nil
}

// countIn counts the manifest's tables in database db.
func (r *restoration) countIn(ctx context.Context, db string) error {
	url, err := r.p.Config.DatabaseURL(db)
	if err != nil {
		return NonRetryable(ErrInvalidConfig, fmt.Errorf("%s: %w", r.what(), err))
	}
	conn, err := r.connect(ctx, url)
	if err != nil {
		return err
	}
	defer closeConn(conn)
	return r.count(ctx, conn, db)
}

// databaseComments returns the comment of each of names that exists ("" for
// none); a missing database has no entry.
func databaseComments(ctx context.Context, conn *pgx.Conn, names ...string) (map[string]string, error) {
	rows, err := conn.Query(ctx, "SELECT datname, coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database WHERE datname = ANY($1)", names)
	if err != nil {
		return nil, fmt.Errorf("read the databases %q: %w", names, err)
	}
	out := map[string]string{}
	var name, comment string
	_, err = pgx.ForEachRow(rows, []any{&name, &comment}, func() error {
		out[name] = comment
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read the databases %q: %w", names, err)
	}
	return out, nil
}

// swap replaces the target with the complete staging database (see
// RestoreDatabase): mark, owner, then both renames in one transaction, so that
// the target exists at every moment whenever the worker dies. Once started it
// runs to its end under a context that survives a cancellation.
func (r *restoration) swap(ctx context.Context) error {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), dropTimeout)
	defer cancel()
	conn, err := r.connect(sctx, r.adminURL)
	if err != nil {
		return err
	}
	defer closeConn(conn)
	var me string
	var owner, stagingOwner *string // NULL: no such database
	err = conn.QueryRow(sctx, `SELECT current_user,
		(SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1),
		(SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $2)`, r.target, r.staging).Scan(&me, &owner, &stagingOwner)
	if err != nil {
		return fmt.Errorf("read owner of %q: %w", r.target, err)
	}
	if stagingOwner == nil {
		return fmt.Errorf("staging database %q is gone before the swap", r.staging)
	}
	comments, err := databaseComments(sctx, conn, r.staging)
	if err != nil {
		return err
	}
	// The mark first, while this role owns the staging database. A retry keeps
	// the mark it finds: it says what the first attempt saw.
	mark := r.mark()
	if comment := comments[r.staging]; strings.HasPrefix(comment, mark) {
		r.res.Replaced = strings.HasSuffix(comment, markReplaces)
	} else {
		r.res.Replaced = owner != nil
		ending := markCreates
		if r.res.Replaced {
			ending = markReplaces
		}
		if err := commentOnDatabase(sctx, conn, r.staging, mark+ending); err != nil {
			return fmt.Errorf("mark staging database %q complete: %w", r.staging, err)
		}
	}
	// Complete and marked: a failure from here on keeps it for the retry's swap.
	r.marked = true
	staging, target := pgx.Identifier{r.staging}.Sanitize(), pgx.Identifier{r.target}.Sanitize()
	if owner == nil {
		if _, err := conn.Exec(sctx, "ALTER DATABASE "+staging+" RENAME TO "+target); err != nil {
			return fmt.Errorf("rename staging database %q to %q: %w", r.staging, r.target, err)
		}
		return nil
	}
	if *owner != me && *stagingOwner != *owner {
		// Before the target is touched, so that a role that may not do it changes nothing.
		if _, err := conn.Exec(sctx, "ALTER DATABASE "+staging+" OWNER TO "+pgx.Identifier{*owner}.Sanitize()); err != nil {
			return fmt.Errorf("give staging database %q the owner of %q, %q: %w", r.staging, r.target, *owner, err)
		}
	}
	// A database of that name is what a swap that died after its commit left.
	if _, err := conn.Exec(sctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{r.replaced}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop the leftover replaced database %q: %w", r.replaced, err)
	}
	if _, err := conn.Exec(sctx, "ALTER DATABASE "+target+" ALLOW_CONNECTIONS false"); err != nil {
		return fmt.Errorf("close %q to new connections to replace it: %w", r.target, err)
	}
	if err := r.renameInto(sctx, conn); err != nil {
		// The target is the old database still: open it again.
		if _, aerr := conn.Exec(sctx, "ALTER DATABASE "+target+" ALLOW_CONNECTIONS true"); aerr != nil {
			err = fmt.Errorf("%w; and re-opening %q to connections failed (ALTER DATABASE %s ALLOW_CONNECTIONS true): %v", err, r.target, target, aerr)
		}
		return err
	}
	if _, err := conn.Exec(sctx, "DROP DATABASE "+pgx.Identifier{r.replaced}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop the replaced database %q (the target is restored; a retry drops it): %w", r.replaced, err)
	}
	return nil
}

// renameInto ends the target's sessions, then renames the target aside and the
// staging database to the target in one transaction. A session that connected
// in between (only one that was connecting when the target closed) makes the
// rename fail with object_in_use: then again, until sctx ends.
func (r *restoration) renameInto(sctx context.Context, conn *pgx.Conn) error {
	staging, target := pgx.Identifier{r.staging}.Sanitize(), pgx.Identifier{r.target}.Sanitize()
	for {
		if err := endSessions(sctx, conn, r.target); err != nil {
			return err
		}
		err := pgx.BeginFunc(sctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(sctx, "ALTER DATABASE "+target+" RENAME TO "+pgx.Identifier{r.replaced}.Sanitize()); err != nil {
				return fmt.Errorf("rename %q aside to %q: %w", r.target, r.replaced, err)
			}
			if _, err := tx.Exec(sctx, "ALTER DATABASE "+staging+" RENAME TO "+target); err != nil {
				return fmt.Errorf("rename staging database %q to %q: %w", r.staging, r.target, err)
			}
			return nil
		})
		var pgErr *pgconn.PgError
		if err == nil || !errors.As(err, &pgErr) || pgErr.Code != "55006" || sctx.Err() != nil {
			return err
		}
	}
}

// endSessions terminates the sessions connected to db and waits until they are gone.
func endSessions(ctx context.Context, conn *pgx.Conn, db string) error {
	for {
		var left int
		err := conn.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
			WHERE datname = $1 AND pid <> pg_backend_pid()`, db).Scan(&left)
		if err != nil {
			return fmt.Errorf("end the sessions of %q: %w", db, err)
		}
		if left == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("end the sessions of %q: %d still connected: %w", db, left, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// commentOnDatabase sets db's comment. COMMENT takes no parameters: the
// server quotes name and text itself (format's %I and %L).
func commentOnDatabase(ctx context.Context, conn *pgx.Conn, db, comment string) error {
	var stmt string
	if err := conn.QueryRow(ctx, "SELECT format('COMMENT ON DATABASE %I IS %L', $1::text, $2::text)", db, comment).Scan(&stmt); err != nil {
		return err
	}
	_, err := conn.Exec(ctx, stmt)
	return err
}

// InspectDatabase reports whether the server is reachable, whether
// in.Database exists, its size and the row counts of in.CountTables: what a
// restore plan shows and what decides whether a safety copy is taken. It
// connects to the maintenance database "postgres", then to in.Database for
// the counts. It changes nothing.
//
// A server that cannot be reached (down, refusing, starting up) is a state,
// not an error: Reachable false with Error saying why. Errors: bad input
// ErrInvalidInput naming the field; the server rejecting the role or password
// non-retryable ErrAuthFailed; a missing maintenance database
// ErrDatabaseNotFound; a denied permission ErrPermissionDenied; anything else
// is returned for the retry policy.
func (p *Postgres) InspectDatabase(ctx context.Context, in InspectDatabaseInput) (DatabaseState, error) {
	bad := func(field, format string, args ...any) error {
		return NonRetryable(ErrInvalidInput, fmt.Errorf("inspect %q: input field %q: %s", in.Database, field, fmt.Sprintf(format, args...)))
	}
	switch {
	case in.Database == "":
		return DatabaseState{}, bad("database", "empty: name the database to inspect")
	case len(in.Database) > 63:
		return DatabaseState{}, bad("database", "longer than 63 bytes, which PostgreSQL would truncate")
	case strings.ContainsRune(in.Database, 0):
		return DatabaseState{}, bad("database", "contains a NUL byte")
	}
	for _, t := range in.CountTables {
		if _, err := tableIdent(t); err != nil {
			return DatabaseState{}, bad("countTables", "%v", err)
		}
	}
	adminURL, err := p.Config.DatabaseURL(maintenanceDB)
	var dbURL string
	if err == nil {
		dbURL, err = p.Config.DatabaseURL(in.Database)
	}
	if err != nil {
		return DatabaseState{}, NonRetryable(ErrInvalidConfig, fmt.Errorf("inspect %q: %w", in.Database, err))
	}
	_, password := splitPassword(adminURL)
	secrets := secretForms(password)
	st, err := inspect(ctx, in, adminURL, dbURL, secrets)
	if err != nil {
		return DatabaseState{}, classifyDumpError(withFix(fmt.Errorf("inspect %q: %w", in.Database, err)), secrets)
	}
	activity.GetLogger(ctx).Info("database inspected", "db", in.Database, "reachable", st.Reachable,
		"exists", st.Exists, "bytes", st.SizeBytes, "rowCounts", st.RowCounts, "error", st.Error)
	return st, nil
}

func inspect(ctx context.Context, in InspectDatabaseInput, adminURL, dbURL string, secrets []string) (DatabaseState, error) {
	st := DatabaseState{Database: in.Database}
	conn, err := connectAs(ctx, adminURL, "drflow inspect")
	if err != nil {
		if ctx.Err() != nil {
			return st, err
		}
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && !serverUnavailable(pgErr.Code) {
			// The server answered and refused: authentication, a missing
			// database or privilege. classifyDumpError names it.
			return st, err
		}
		st.Error = scrubAll(err.Error(), secrets)
		return st, nil
	}
	defer closeConn(conn)
	st.Reachable = true
	var version string
	var size *int64
	err = conn.QueryRow(ctx, "SELECT current_setting('server_version'), (SELECT pg_database_size(oid) FROM pg_database WHERE datname = $1)", in.Database).Scan(&version, &size)
	if err != nil {
		return st, fmt.Errorf("read size of %q: %w", in.Database, err)
	}
	st.ServerVersion = postgresVersion(version)
	if size == nil {
		return st, nil
	}
	st.Exists, st.SizeBytes = true, *size
	if len(in.CountTables) == 0 {
		return st, nil
	}
	dconn, err := connectAs(ctx, dbURL, "drflow inspect")
	if err != nil {
		return st, err
	}
	defer closeConn(dconn)
	st.RowCounts = make(map[string]int64, len(in.CountTables))
	for _, t := range in.CountTables {
		if _, done := st.RowCounts[t]; done {
			continue
		}
		id, _ := tableIdent(t) // checked with the input
		activity.RecordHeartbeat(ctx, t)
		n, err := countTable(ctx, dconn, id)
		if err != nil {
			return st, fmt.Errorf("count rows of %s: %w", t, err)
		}
		st.RowCounts[t] = n
	}
	return st, nil
}

// withFix appends what to do to the server's refusals that retrying cannot
// fix; other errors are returned as they are.
func withFix(err error) error {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return err
	}
	switch pgErr.Code {
	case "28P01", "28000":
		return fmt.Errorf("%w; fix: check the role and password of DRFLOW_POSTGRES_URL and the server's pg_hba.conf for this worker", err)
	case "42501":
		return fmt.Errorf("%w; fix: grant the configured role the privilege named above, or restore as the database's owner or a superuser", err)
	}
	return err
}

// serverUnavailable tells the SQLSTATEs of a server that answers but takes no
// sessions now (starting up, shutting down, full) from a refusal that lasts.
func serverUnavailable(code string) bool {
	switch code {
	case "57P01", "57P02", "57P03", "53300": // admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections
		return true
	}
	return false
}
