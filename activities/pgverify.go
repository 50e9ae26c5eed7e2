package activities

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"github.com/kohakku/drflow/internal/scratch"
	"github.com/kohakku/drflow/internal/store"
)

// ScratchPrefix starts the name of every scratch database drflow creates;
// DropScratch refuses any other name, so a verification can never drop an
// application database.
const ScratchPrefix = "drflow_verify_"

// Kinds of problems with a stored dump. VerifyDump reports them as findings in
// DumpCheck.Finding — results, not errors (DumpCheck.Passed false), so the
// workflow can collect every finding of a set and write its report.
// RestoreDatabase, which must not go on, raises them as the types of its
// non-retryable errors.
const (
	// ErrChecksumMismatch: the stored object's size or SHA-256 differs from the
	// manifest (bit rot, a truncated upload, a changed object).
	ErrChecksumMismatch = "ChecksumMismatch"
	// ErrArchiveCorrupt: the stored bytes match the manifest but do not hold a
	// whole dump: zstd cannot decode them, they decode to another size than the
	// manifest's, or pg_restore cannot read the archive.
	ErrArchiveCorrupt = "ArchiveCorrupt"
	// ErrRestoreFailed: pg_restore into the scratch (or staging) database failed
	// while the server stayed reachable (a missing role, extension or tablespace …).
	ErrRestoreFailed = "RestoreFailed"
	// ErrRowCountMismatch: a table of the manifest has another row count in the
	// restored database, or is missing from it.
	ErrRowCountMismatch = "RowCountMismatch"
)

// ErrArtifactNotFound is the error type of the non-retryable error VerifyDump,
// RestoreDatabase and the object restore return when the manifest names an
// object the store does not hold.
const ErrArtifactNotFound = "ArtifactNotFound"

// maintenanceDB is the database VerifyDump and DropScratch connect to for
// CREATE DATABASE and DROP DATABASE: they cannot run inside the database they
// create or drop.
const maintenanceDB = "postgres"

// dropTimeout bounds the drop of a scratch database after a verification,
// which runs even when the activity was cancelled.
const dropTimeout = 2 * time.Minute

// VerifyDumpInput names one PostgreSQL artifact of a backup set to verify.
type VerifyDumpInput struct {
	// SetID is the backup set the artifact belongs to, for logs.
	SetID string `json:"setId"`
	// Artifact is the dump as the manifest records it: Key, Size, SHA256,
	// Compression, RawSize, RowCounts, Source (the database).
	Artifact Artifact `json:"artifact"`
	// Restore restores the dump into Scratch and compares the row counts of
	// Artifact.RowCounts; false checks checksums and the archive only.
	Restore bool `json:"restore"`
	// Scratch is the scratch database, chosen by the workflow and unique to it:
	// it must start with ScratchPrefix. A database of that name is dropped first
	// (left over by an attempt that died) and always dropped at the end.
	Scratch string `json:"scratch"`
	// Jobs is pg_restore -j; 0 means runtime.NumCPU().
	Jobs int `json:"jobs,omitempty"`
}

// DumpCheck is the result of VerifyDump: what was checked and what was found.
type DumpCheck struct {
	// Database is the artifact's source database; Key its store key.
	Database string `json:"database"`
	Key      string `json:"key"`
	// Passed is true when every check ran and found nothing.
	Passed bool `json:"passed"`
	// Problems are the findings; each names the artifact key and the figure.
	Problems []string `json:"problems,omitempty"`
	// Finding is the kind of the first problem (ErrChecksumMismatch,
	// ErrArchiveCorrupt, ErrRestoreFailed, ErrRowCountMismatch); "" when passed.
	Finding string `json:"finding,omitempty"`
	// ChecksumOK: the stored size and SHA-256 match the manifest.
	ChecksumOK bool `json:"checksumOk"`
	// ListOK: the dump decodes to the manifest's raw size, pg_restore --list
	// reads its table of contents and pg_restore reads every data block.
	ListOK bool `json:"listOk"`
	// Restored: pg_restore into the scratch database succeeded.
	Restored bool `json:"restored"`
	// RowCounts of the manifest's tables, counted in the scratch database.
	RowCounts map[string]int64 `json:"rowCounts,omitempty"`
	// Download is the time to fetch, checksum and decompress the dump to a file.
	Download time.Duration `json:"download"`
	// Restore is the time pg_restore took into the scratch database.
	Restore time.Duration `json:"restore"`
	// RTO is Download + Restore when the restore succeeded: what a real restore
	// of this database from this set would take on this worker.
	RTO time.Duration `json:"rto"`
}

// VerifyProgress is VerifyDump's heartbeat detail, shown in the Web UI. A
// verification cannot resume: a retry starts over and does not read it.
type VerifyProgress struct {
	// Phase is "download", "list", "create", "restore", "count", "drop" or "done".
	Phase string `json:"phase"`
	// StoredBytes of the stored object read so far.
	StoredBytes int64 `json:"storedBytes"`
	// RawBytes of decompressed dump written to the temporary file so far.
	RawBytes int64 `json:"rawBytes"`
}

// DropScratchInput names a scratch database to drop.
type DropScratchInput struct {
	// Database must start with ScratchPrefix.
	Database string `json:"database"`
}

// VerifyDump proves that a stored dump restores. It streams the object from the
// store through a byte counter and SHA-256 into a zstd decoder and a temporary
// file in the worker's scratch directory in TMPDIR (pg_restore -j needs a
// seekable file; the file is removed on every path, and what a killed worker
// left there is removed by the next one: see internal/scratch), compares size and SHA-256 with the manifest, then
// runs `pg_restore --list` and a full read of the archive (`pg_restore
// --file=/dev/null`, which catches a truncated or corrupt dump that --list,
// reading only the table of contents, does not). With in.Restore it creates
// in.Scratch, runs `pg_restore --no-owner --no-privileges --exit-on-error -j`
// into it and counts the rows of the manifest's tables there.
//
// Findings are results, not errors: a size or checksum mismatch, an archive
// pg_restore cannot read, a failed restore or a differing row count returns
// DumpCheck{Passed: false} with Problems naming the key and the figure. After a
// checksum mismatch or an unreadable archive nothing is restored.
//
// The scratch database is dropped before VerifyDump returns — on success, on a
// failed restore and when ctx is cancelled (the drop runs under a context that
// survives the cancellation); cancelling ctx kills pg_restore and its worker
// processes. If that drop fails the activity fails (retryable), so a returned
// DumpCheck always means no scratch database is left behind. The password
// reaches pg_restore only through PGPASSWORD. VerifyDump heartbeats
// VerifyProgress. It needs the role to have CREATEDB and to connect to the
// "postgres" database, and PostgreSQL 13 or newer (DROP DATABASE … WITH (FORCE)).
//
// Errors: bad input (empty key, a scratch name without ScratchPrefix) is
// non-retryable ErrInvalidInput; an object missing from the store is
// non-retryable ErrArtifactNotFound; permanent store errors ErrStore; failed
// authentication or a missing privilege ErrAuthFailed / ErrPermissionDenied.
// Everything else — the store or the server unreachable, the server lost
// during the restore, a full temporary disk — is returned for the retry policy.
func (p *Postgres) VerifyDump(ctx context.Context, in VerifyDumpInput) (DumpCheck, error) {
	log := activity.GetLogger(ctx)
	if err := p.checkVerifyInput(in); err != nil {
		return DumpCheck{}, err
	}
	a := in.Artifact
	v := &verification{p: p, in: in, check: DumpCheck{Database: a.Source, Key: a.Key}}
	if in.Restore {
		var err error
		if v.adminURL, err = p.Config.DatabaseURL(maintenanceDB); err == nil {
			v.scratchURL, err = p.Config.DatabaseURL(in.Scratch)
		}
		if err != nil {
			return DumpCheck{}, NonRetryable(ErrInvalidConfig, fmt.Errorf("verify %s: %w", a.Key, err))
		}
		_, v.password = splitPassword(v.adminURL)
	}
	if attempt := activity.GetInfo(ctx).Attempt; attempt > 1 {
		log.Info("verification starts over: it cannot resume", "set", in.SetID, "db", a.Source, "key", a.Key, "attempt", attempt)
	}
	err := v.run(ctx)
	var app *temporal.ApplicationError
	if errors.As(err, &app) {
		// Classified already, with the key in its message; wrapping it again
		// would hide its type from Temporal.
		return DumpCheck{}, err
	}
	if err != nil {
		// No log line: the SDK logs the returned error.
		return DumpCheck{}, classifyDumpError(fmt.Errorf("verify %s: %w", a.Key, err), secretForms(v.password))
	}
	c := v.check
	c.Passed = len(c.Problems) == 0
	if c.Restored {
		c.RTO = c.Download + c.Restore
	}
	if c.Passed {
		log.Info("dump verified", "set", in.SetID, "db", a.Source, "key", a.Key, "bytes", a.Size,
			"restored", c.Restored, "rowCounts", c.RowCounts, "download", c.Download, "restore", c.Restore, "rto", c.RTO)
	} else {
		log.Warn("dump failed verification", "set", in.SetID, "db", a.Source, "key", a.Key,
			"finding", c.Finding, "problems", c.Problems)
	}
	return c, nil
}

func (p *Postgres) checkVerifyInput(in VerifyDumpInput) error {
	a := in.Artifact
	bad := func(format string, args ...any) error {
		return NonRetryable(ErrInvalidInput, fmt.Errorf("verify %s: "+format, append([]any{a.Key}, args...)...))
	}
	if a.Key == "" {
		return NonRetryable(ErrInvalidInput, fmt.Errorf("verify dump of %q: artifact key is empty", a.Source))
	}
	if err := checkDumpArtifact(a); err != nil {
		return bad("%w", err)
	}
	if in.Jobs < 0 {
		return bad("jobs %d is negative", in.Jobs)
	}
	if in.Restore {
		if err := checkScratchName(in.Scratch); err != nil {
			return bad("%w", err)
		}
	}
	if p.Store == nil {
		return NonRetryable(ErrInvalidConfig, fmt.Errorf("verify %s: no backup store configured", a.Key))
	}
	return nil
}

// artifactError is a bad field of a postgres Artifact; Field is its JSON name
// under the activity input ("artifact.sha256").
type artifactError struct {
	Field string
	Err   error
}

func (e *artifactError) Error() string { return e.Err.Error() }
func (e *artifactError) Unwrap() error { return e.Err }

// checkDumpArtifact checks what fetchDump and pg_restore rely on in a
// manifest's postgres artifact (a non-empty key is the caller's check); the
// error is an *artifactError naming the field.
func checkDumpArtifact(a Artifact) error {
	bad := func(field, format string, args ...any) error {
		return &artifactError{Field: "artifact." + field, Err: fmt.Errorf(format, args...)}
	}
	if err := store.CheckKey(a.Key); err != nil {
		return &artifactError{Field: "artifact.key", Err: err}
	}
	if a.Kind != "" && a.Kind != KindPostgres {
		return bad("kind", "artifact kind is %q, not %s", a.Kind, KindPostgres)
	}
	if a.Size < 0 {
		return bad("size", "negative size %d", a.Size)
	}
	if b, err := hex.DecodeString(a.SHA256); err != nil || len(b) != sha256.Size {
		return bad("sha256", "sha256 %q in the manifest is not a hex SHA-256", a.SHA256)
	}
	if a.Compression != CompressionZstd && a.Compression != CompressionNone {
		return bad("compression", "compression %q is not %s or %s", a.Compression, CompressionZstd, CompressionNone)
	}
	if a.Encryption != "" && a.Encryption != EncryptionNone && a.Encryption != EncryptionAge {
		return bad("encryption", "encryption %q is not %s or %s", a.Encryption, EncryptionNone, EncryptionAge)
	}
	for t := range a.RowCounts {
		if _, err := tableIdent(t); err != nil {
			return bad("rowCounts", "row counts: %w", err)
		}
	}
	return nil
}

// checkScratchName accepts only names that start with ScratchPrefix and fit
// PostgreSQL's 63-byte identifiers (a longer name would be truncated by the
// server to one the checks here never saw).
func checkScratchName(name string) error {
	switch {
	case !strings.HasPrefix(name, ScratchPrefix):
		return fmt.Errorf("scratch database %q does not start with %s: refusing to use it", name, ScratchPrefix)
	case len(name) > 63:
		return fmt.Errorf("scratch database %q is longer than 63 bytes", name)
	case strings.ContainsRune(name, 0):
		return fmt.Errorf("scratch database %q contains a NUL byte", name)
	}
	return nil
}

// verification is one run of VerifyDump.
type verification struct {
	p     *Postgres
	in    VerifyDumpInput
	check DumpCheck
	// adminURL (maintenance database) and scratchURL carry the password: never
	// log them. Set only with in.Restore.
	adminURL, scratchURL, password string

	phase       atomic.Value // string
	stored, raw atomic.Int64
}

// problem records a finding of kind (the first one sets check.Finding).
func (v *verification) problem(kind, format string, args ...any) {
	if v.check.Finding == "" {
		v.check.Finding = kind
	}
	v.check.Problems = append(v.check.Problems, v.in.Artifact.Key+": "+fmt.Sprintf(format, args...))
}

func (v *verification) run(ctx context.Context) (err error) {
	heartbeat := func() {
		activity.RecordHeartbeat(ctx, VerifyProgress{Phase: v.phase.Load().(string), StoredBytes: v.stored.Load(), RawBytes: v.raw.Load()})
	}
	setPhase := func(ph string) {
		v.phase.Store(ph)
		heartbeat()
	}
	setPhase("download")
	stopBeat := v.p.startHeartbeat(ctx, heartbeat)
	defer stopBeat()

	started := time.Now()
	path, f, remove, err := stageDump(ctx, v.p.Store, v.p.Age, v.in.Artifact, "drflow-verify-*.dump", &v.stored, &v.raw)
	v.check.Download = time.Since(started)
	// The decompressed dump is the one staged copy: removed on every path.
	defer remove()
	if err != nil {
		return v.storeError(err)
	}
	v.check.ChecksumOK = f.checksumOK
	if f.kind != "" {
		v.problem(f.kind, "%s", f.problem)
		return nil
	}

	setPhase("list")
	if ok, err := v.list(ctx, path); err != nil || !ok {
		return err
	}
	v.check.ListOK = true
	if !v.in.Restore {
		setPhase("done")
		return nil
	}

	if err := ctx.Err(); err != nil {
		return err
	}
	// Registered before the database exists, so that every way out drops it:
	// a failed restore, a lost connection, a cancelled activity.
	defer func() {
		stopBeat() // the final phases are reported by hand
		setPhase("drop")
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), dropTimeout)
		defer cancel()
		if derr := dropDatabase(dctx, v.adminURL, v.in.Scratch); derr != nil {
			err = errors.Join(err, fmt.Errorf("drop scratch database %q: %w", v.in.Scratch, derr))
			return
		}
		setPhase("done")
	}()
	setPhase("create")
	if err := v.createScratch(ctx); err != nil {
		return err
	}
	setPhase("restore")
	restored, err := v.restore(ctx, path)
	if err != nil || !restored {
		return err
	}
	v.check.Restored = true
	setPhase("count")
	return v.countRows(ctx)
}

// stageDump fetches the dump a describes from st into a new temporary file
// named after pattern (see fetchDump) in the worker's scratch directory in
// TMPDIR (see package scratch), decrypted with keys when a is encrypted,
// closes it and returns its path. The file is 0600, the directory 0700.
// remove deletes the file and releases the scratch directory; it is never
// nil, and the caller calls it on every path, also when err is not nil. A
// worker killed before remove leaves the file to the next worker's sweep of
// TMPDIR. An encrypted dump keys cannot decrypt is AgeKeyError's
// non-retryable error, returned before anything is downloaded or created.
func stageDump(ctx context.Context, st store.Store, keys *AgeKeys, a Artifact, pattern string, stored, raw *atomic.Int64) (path string, f fetched, remove func(), err error) {
	if err := keys.checkReadable(a); err != nil {
		return "", fetched{}, func() {}, err
	}
	file, done, err := scratch.CreateTemp(pattern)
	if err != nil {
		return "", fetched{}, func() {}, fmt.Errorf("temporary file: %w", err)
	}
	remove = func() {
		_ = file.Close()
		_ = done() // removes the file, then releases the scratch directory
	}
	if f, err = fetchDump(ctx, st, keys, a, file, stored, raw); err != nil {
		return "", fetched{}, remove, err
	}
	if err := file.Close(); err != nil {
		return "", fetched{}, remove, fmt.Errorf("temporary file: %w", err)
	}
	return file.Name(), f, remove, nil
}

// fetched is what fetchDump found wrong with a stored dump, if anything.
type fetched struct {
	// checksumOK: the stored size and SHA-256 match the manifest.
	checksumOK bool
	// kind is ErrChecksumMismatch or ErrArchiveCorrupt, "" when file holds the
	// whole dump; problem names the figure (not the key).
	kind, problem string
}

// fetchDump streams the object a.Key from st through a byte counter and
// SHA-256 into openArtifact — age decryption with keys when a is encrypted, a
// zstd decoder unless a.Compression is none — and file, and checks size,
// SHA-256 and raw size against a. A mismatch is a result (kind and problem),
// not an error; so is a dump that does not decrypt (truncated, tampered).
// Errors are infrastructure — the store (not classified: a missing object is
// store.ErrNotFound), the temporary disk, ctx — or AgeKeyError's when keys
// cannot decrypt a dump whose stored bytes match the manifest. stored and raw
// count the bytes read and written so far, for heartbeats. The caller owns
// file: it closes and removes it.
func fetchDump(ctx context.Context, st store.Store, keys *AgeKeys, a Artifact, file *os.File, stored, raw *atomic.Int64) (fetched, error) {
	if err := keys.checkReadable(a); err != nil {
		return fetched{}, err
	}
	info, err := st.Stat(ctx, a.Key)
	if err != nil {
		return fetched{}, err
	}
	if info.Size != a.Size {
		// Size first: a cheap answer without reading the object.
		return fetched{kind: ErrChecksumMismatch, problem: fmt.Sprintf("size mismatch: %d bytes in the store, %d in the manifest", info.Size, a.Size)}, nil
	}
	rc, err := st.Get(ctx, a.Key)
	if err != nil {
		return fetched{}, err
	}
	defer rc.Close()

	// The fetcher owns the hash: it reads the object to its end and forwards the
	// bytes into the pipe while the decoder takes them. When decoding fails the
	// pipe is closed and the fetcher reads on without forwarding, so the
	// checksum still covers the whole object and can tell bit rot (checksum
	// mismatch) from a dump that was corrupt when it was stored.
	pr, pw := io.Pipe()
	type read struct {
		n   int64
		sum string
		err error
	}
	done := make(chan read, 1)
	go func() {
		h := sha256.New()
		var n int64
		buf := make([]byte, 1<<20)
		forward := true
		for {
			k, rerr := rc.Read(buf)
			if k > 0 {
				h.Write(buf[:k])
				n += int64(k)
				stored.Store(n)
				if forward {
					if _, werr := pw.Write(buf[:k]); werr != nil {
						forward = false
					}
				}
			}
			if rerr == io.EOF {
				break
			}
			if rerr == nil && ctx.Err() != nil {
				// Not every store's reader honours ctx (a file does not).
				rerr = ctx.Err()
			}
			if rerr != nil {
				rerr = fmt.Errorf("read %s: %w", a.Key, rerr)
				pw.CloseWithError(rerr)
				done <- read{err: rerr}
				return
			}
		}
		pw.Close()
		done <- read{n: n, sum: hex.EncodeToString(h.Sum(nil))}
	}()

	out := &fileWriter{ctx: ctx, f: file, n: raw}
	plain, closeDec, decodeErr := keys.openArtifact(pr, a)
	keyErr := AgeKeyError(decodeErr)
	if decodeErr == nil {
		_, decodeErr = io.Copy(out, plain)
	}
	closeDec()
	if out.err != nil {
		// The temporary disk or ctx, not the dump: stop the fetcher and fail.
		_ = rc.Close()
		pr.CloseWithError(out.err)
		<-done
		return fetched{}, out.err
	}
	pr.CloseWithError(errors.New("decoding stopped"))
	f := <-done
	switch {
	case f.err != nil:
		return fetched{}, f.err
	case f.n != a.Size:
		return fetched{kind: ErrChecksumMismatch, problem: fmt.Sprintf("size mismatch: %d bytes read from the store, %d in the manifest", f.n, a.Size)}, nil
	case !strings.EqualFold(f.sum, a.SHA256):
		return fetched{kind: ErrChecksumMismatch, problem: fmt.Sprintf("checksum mismatch: sha256 %s in the store, %s in the manifest", f.sum, a.SHA256)}, nil
	case keyErr != nil:
		// The stored bytes are the manifest's: the keys are wrong, not the set.
		return fetched{}, keyErr
	case decodeErr != nil && isAgeDataError(decodeErr):
		return fetched{checksumOK: true, kind: ErrArchiveCorrupt, problem: fmt.Sprintf("stored bytes match the manifest but do not decrypt: %v", decodeErr)}, nil
	case decodeErr != nil:
		return fetched{checksumOK: true, kind: ErrArchiveCorrupt, problem: fmt.Sprintf("stored bytes match the manifest but do not decode: zstd: %v", decodeErr)}, nil
	case a.RawSize > 0 && raw.Load() != a.RawSize:
		return fetched{checksumOK: true, kind: ErrArchiveCorrupt, problem: fmt.Sprintf("decompressed to %d bytes, %d in the manifest", raw.Load(), a.RawSize)}, nil
	}
	return fetched{checksumOK: true}, nil
}

// storeError classifies a store error: a missing object is ErrArtifactNotFound,
// other permanent errors are left to classifyDumpError (ErrStore).
func (v *verification) storeError(err error) error {
	if errors.Is(err, store.ErrNotFound) {
		return NonRetryable(ErrArtifactNotFound, fmt.Errorf("verify %s: the manifest names an object the backup store does not hold: %w", v.in.Artifact.Key, err))
	}
	return err
}

// fileWriter writes the decompressed dump, counting it and checking ctx on
// every write (the zstd decoder does not). Its own failure is kept in err, so
// it is told apart from a decoding failure.
type fileWriter struct {
	ctx context.Context
	f   *os.File
	n   *atomic.Int64
	err error
}

func (w *fileWriter) Write(b []byte) (int, error) {
	if err := w.ctx.Err(); err != nil {
		w.err = err
		return 0, err
	}
	n, err := w.f.Write(b)
	w.n.Add(int64(n))
	if err != nil {
		w.err = fmt.Errorf("write temporary file: %w", err)
		return n, w.err
	}
	return n, nil
}

// list checks the archive without a server: `pg_restore --list` reads the table
// of contents, and `pg_restore --file=/dev/null` reads every data block, which
// is what catches a dump cut short (its table of contents is complete). The two
// read the file at the same time; a --list failure is the one reported.
func (v *verification) list(ctx context.Context, path string) (bool, error) {
	type result struct {
		stderr string
		err    error
	}
	full := make(chan result, 1)
	go func() {
		stderr, err := v.p.pgRestore(ctx, []string{"--file=" + os.DevNull, path}, "", io.Discard)
		full <- result{stderr, err}
	}()
	stderr, err := v.p.pgRestore(ctx, []string{"--list", path}, "", io.Discard)
	r := <-full
	if ok, err := v.archiveFinding(err, "pg_restore --list failed: %s", stderr); !ok || err != nil {
		return false, err
	}
	return v.archiveFinding(r.err, "truncated or corrupt archive: pg_restore --list reads its table of contents, but reading its data (pg_restore --file=/dev/null) failed: %s", r.stderr)
}

func (v *verification) archiveFinding(err error, format, stderr string) (bool, error) {
	var exit *exec.ExitError
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &exit):
		v.problem(ErrArchiveCorrupt, format, orExit(stderr, exit))
		return false, nil
	}
	return false, err
}

func (v *verification) createScratch(ctx context.Context) error {
	conn, err := connect(ctx, v.adminURL)
	if err != nil {
		return err
	}
	defer closeConn(conn)
	name := pgx.Identifier{v.in.Scratch}.Sanitize()
	// A database of this name is a leftover of an attempt that died: the name is
	// the workflow's, unique to its run.
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop leftover scratch database %q: %w", v.in.Scratch, err)
	}
	// template0: a restore needs an empty database, whatever template1 holds.
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name+" TEMPLATE template0"); err != nil {
		return fmt.Errorf("create scratch database %q: %w", v.in.Scratch, err)
	}
	return nil
}

// restore runs pg_restore into the scratch database. A failure while the
// server stays reachable is a finding (false); a failure of the server or the
// connection is an error, for a retry.
func (v *verification) restore(ctx context.Context, path string) (bool, error) {
	jobs := v.in.Jobs
	if jobs == 0 {
		jobs = runtime.NumCPU()
	}
	connURL, _ := splitPassword(v.scratchURL)
	args := []string{"--no-owner", "--no-privileges", "--exit-on-error", "--no-password",
		"--jobs=" + strconv.Itoa(jobs), "--dbname=" + connURL, path}
	started := time.Now()
	stderr, err := v.p.pgRestore(ctx, args, v.password, io.Discard)
	v.check.Restore = time.Since(started)
	var exit *exec.ExitError
	if err == nil || !errors.As(err, &exit) {
		return err == nil, err
	}
	msg := orExit(stderr, exit)
	if lostConnection(msg) {
		return false, fmt.Errorf("pg_restore into %q lost the server: %s", v.in.Scratch, msg)
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, cerr := connect(pctx, v.scratchURL)
	if cerr != nil {
		return false, fmt.Errorf("pg_restore into %q failed (%s) and the server is unreachable: %w", v.in.Scratch, msg, cerr)
	}
	closeConn(conn)
	v.problem(ErrRestoreFailed, "pg_restore into scratch database %s failed: %s", v.in.Scratch, msg)
	return false, nil
}

// lostConnection tells from pg_restore's complaint whether the server or the
// connection failed, rather than the dump's contents.
func lostConnection(stderr string) bool {
	for _, s := range []string{
		"connection to server", "server closed the connection unexpectedly",
		"could not connect", "terminating connection", "the database system is",
		"no connection to the server", "could not receive data from server",
	} {
		if strings.Contains(stderr, s) {
			return true
		}
	}
	return false
}

// countRows counts the manifest's tables in the scratch database and records a
// finding for each that differs or is missing, in table order.
func (v *verification) countRows(ctx context.Context) error {
	want := v.in.Artifact.RowCounts
	if len(want) == 0 {
		return nil
	}
	conn, err := connect(ctx, v.scratchURL)
	if err != nil {
		return err
	}
	defer closeConn(conn)
	tables := make([]string, 0, len(want))
	for t := range want {
		tables = append(tables, t)
	}
	slices.Sort(tables)
	v.check.RowCounts = make(map[string]int64, len(tables))
	for _, t := range tables {
		id, _ := tableIdent(t) // checked with the input
		var n int64
		err := conn.QueryRow(ctx, "SELECT count(*) FROM "+id.Sanitize()).Scan(&n)
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && (pgErr.Code == "42P01" || pgErr.Code == "3F000") {
			v.problem(ErrRowCountMismatch, "table %s is missing from the restored database, %d rows in the manifest", t, want[t])
			continue
		}
		if err != nil {
			return fmt.Errorf("count rows of %s in scratch database %q: %w", t, v.in.Scratch, err)
		}
		v.check.RowCounts[t] = n
		if n != want[t] {
			v.problem(ErrRowCountMismatch, "%s has %d rows restored, %d in the manifest", t, n, want[t])
		}
	}
	return nil
}

// DropScratch drops a scratch database left by VerifyDump: the workflow's
// safety net when the worker that restored into it died or the run was
// cancelled. It is idempotent (DROP DATABASE IF EXISTS … WITH (FORCE), which
// also ends the sessions of a pg_restore still running), and refuses, with a
// non-retryable ErrInvalidInput, any name that does not start with
// ScratchPrefix.
func (p *Postgres) DropScratch(ctx context.Context, in DropScratchInput) error {
	if err := checkScratchName(in.Database); err != nil {
		return NonRetryable(ErrInvalidInput, fmt.Errorf("drop scratch: %w", err))
	}
	adminURL, err := p.Config.DatabaseURL(maintenanceDB)
	if err != nil {
		return NonRetryable(ErrInvalidConfig, fmt.Errorf("drop scratch %s: %w", in.Database, err))
	}
	_, password := splitPassword(adminURL)
	if err := dropDatabase(ctx, adminURL, in.Database); err != nil {
		return classifyDumpError(fmt.Errorf("drop scratch %s: %w", in.Database, err), secretForms(password))
	}
	activity.GetLogger(ctx).Info("scratch database dropped", "db", in.Database)
	return nil
}

// dropDatabase drops name if it exists, ending its sessions. Callers have
// checked the name with checkScratchName.
func dropDatabase(ctx context.Context, adminURL, name string) error {
	conn, err := connect(ctx, adminURL)
	if err != nil {
		return err
	}
	defer closeConn(conn)
	_, err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	return err
}

// connect opens a connection for a verification step. dbURL carries the
// password: the errors of pgx do not repeat it, and callers scrub anyway.
func connect(ctx context.Context, dbURL string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(dbURL)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	cfg.RuntimeParams["application_name"] = "drflow verify"
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 30 * time.Second
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	return conn, nil
}

func closeConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = conn.Close(ctx)
}

// pgRestore runs pg_restore with args and returns the tail of its standard
// error, scrubbed of the password. It runs in its own process group so that
// cancelling ctx kills it together with the worker processes of --jobs. The
// error is an *exec.ExitError when pg_restore ran and failed, ctx's error when
// ctx ended first, and anything else when it could not be run.
func (p *Postgres) pgRestore(ctx context.Context, args []string, password string, stdout io.Writer) (string, error) {
	cmd := exec.CommandContext(ctx, p.program("pg_restore"), args...)
	cmd.Env = append(os.Environ(), "PGAPPNAME=drflow pg_restore")
	if password != "" {
		// Environment, not argv: argv is visible to every user in ps.
		cmd.Env = append(cmd.Env, "PGPASSWORD="+password)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	stderr := &tailBuffer{limit: 2 << 10}
	cmd.Stderr = stderr
	cmd.Stdout = stdout
	err := cmd.Run()
	if cerr := ctx.Err(); cerr != nil {
		if cmd.Process != nil {
			waitGroupGone(cmd.Process.Pid)
		}
		return "", fmt.Errorf("pg_restore: %w", cerr)
	}
	msg := scrubAll(stderr.String(), secretForms(password))
	if err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return msg, err
		}
		return msg, fmt.Errorf("run pg_restore: %w", err)
	}
	return msg, nil
}

// waitGroupGone waits, for at most 10 seconds, until no process of the process
// group pgid is left: the workers of a killed pg_restore -j die after their
// leader was reaped. It only probes (signal 0), so a pgid reused meanwhile by a
// new group can at worst make it wait.
func waitGroupGone(pgid int) {
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(-pgid, 0) == nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
}

// orExit is pg_restore's complaint, or its exit status when it said nothing.
func orExit(stderr string, exit *exec.ExitError) string {
	if stderr == "" {
		return exit.Error()
	}
	return stderr
}

// tailBuffer keeps the last limit bytes written to it: the error that ended a
// program comes last. String joins the lines with "; " for one-line findings.
// Only exec's stderr goroutine writes; String is called after cmd.Wait.
type tailBuffer struct {
	limit   int
	buf     []byte
	dropped bool
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - b.limit; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
		b.dropped = true
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	var lines []string
	for i, l := range strings.Split(string(b.buf), "\n") {
		switch l = strings.TrimSpace(l); {
		case i == 0 && b.dropped:
			lines = append(lines, "…")
		case l != "":
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "; ")
}
