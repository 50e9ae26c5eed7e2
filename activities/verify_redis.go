package activities

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/klauspost/compress/zstd"
	"go.temporal.io/sdk/activity"

	"github.com/kohakku/drflow/internal/scratch"
	"github.com/kohakku/drflow/internal/store"
)

// This file is the Redis half of a backup drill: VerifyRDB reads a stored RDB
// artifact back, checks it against the manifest and loads it into a scratch
// redis-server. verify_objects.go is the object mirror's half. Both report
// what they find in their result (Passed, Problems) and keep activity errors
// for the infrastructure and for input that can never be checked.

// verifyHeartbeatEvery is how often VerifyRDB and VerifySample record their
// progress (the SDK batches the heartbeats it sends further); a variable so
// that tests can see every phase.
var verifyHeartbeatEvery = time.Second

// VerifyRDBInput names the stored RDB to check.
type VerifyRDBInput struct {
	// SetID is the backup set the artifact belongs to (logged with the check).
	SetID string `json:"setId"`
	// Artifact is the manifest's entry for the RDB, as DumpRDB returned it:
	// Key, Size, SHA256, Compression ("zstd" or "none"), KeyCount and the
	// per-database RowCounts are compared.
	Artifact Artifact `json:"artifact"`
	// Scratch also loads the RDB into a scratch redis-server when the
	// binary is on the worker's PATH.
	Scratch bool `json:"scratch"`
}

// RDBCheck is VerifyRDB's result. A finding (a mismatch, a corrupt RDB) is
// reported here with Passed false, never as an activity error.
type RDBCheck struct {
	// Instance is the Redis instance the RDB was taken from (Artifact.Source).
	Instance string `json:"instance"`
	// Key of the artifact in the backup store.
	Key string `json:"key"`
	// Passed is true when Problems is empty.
	Passed bool `json:"passed"`
	// Problems found, each naming the artifact key and the figures compared.
	Problems []string `json:"problems,omitempty"`
	// ChecksumOK: the stored bytes have the manifest's size and SHA-256 and
	// the RDB's own CRC-64 trailer matches its content.
	ChecksumOK bool `json:"checksumOk"`
	// ParsedKeys counted by walking the RDB (keys whose TTL has passed
	// included, as in Artifact.KeyCount).
	ParsedKeys int64 `json:"parsedKeys"`
	// ScratchLoaded: a scratch redis-server loaded the RDB.
	ScratchLoaded bool `json:"scratchLoaded"`
	// LoadedKeys is DBSIZE summed over the scratch server's databases once it
	// had loaded the RDB. Keys whose TTL had passed are dropped by Redis
	// when it loads them; they are not in LoadedKeys, and the comparison
	// with the manifest counts them back in (see Note).
	LoadedKeys int64 `json:"loadedKeys"`
	// Note says what was not checked, or what explains a figure; e.g.
	// "redis-server not on PATH: checked the RDB structure only".
	Note string `json:"note,omitempty"`
	// RTO is how long a restore of this RDB took: download, decompression
	// and the walk, plus the load into the scratch server when there was one.
	RTO time.Duration `json:"rto"`
}

// VerifyRDBProgress is VerifyRDB's heartbeat detail. A retry starts over: the
// check has no side effect to resume.
type VerifyRDBProgress struct {
	// Phase is "download" (reading, decompressing and walking the RDB),
	// "load" (the scratch server is starting or loading it) or "stop".
	Phase string `json:"phase"`
	// StoredBytes read from the backup store so far.
	StoredBytes int64 `json:"storedBytes"`
	// RDBBytes of the decompressed RDB walked so far.
	RDBBytes int64 `json:"rdbBytes"`
	// ScratchAddr and ScratchPID identify the scratch server while it runs.
	ScratchAddr string `json:"scratchAddr,omitempty"`
	ScratchPID  int    `json:"scratchPid,omitempty"`
	// Loading is true while the scratch server reports loading:1, with
	// LoadedPercent its loading_loaded_perc.
	Loading       bool    `json:"loading,omitempty"`
	LoadedPercent float64 `json:"loadedPercent,omitempty"`
}

// VerifyRDB checks a stored RDB artifact: it streams the object from the
// backup store through SHA-256, the zstd decoder and drflow's RDB reader
// (rdb.go: the structure is walked, the keys counted, the CRC-64 trailer
// checked) and compares size, SHA-256, the RDB's length and the key counts
// with the artifact.
//
// With in.Scratch set and redis-server on the worker's PATH it then loads the
// RDB into a scratch redis-server: a private process on a free 127.0.0.1
// port, password-protected, without persistence, in a temporary directory
// under $TMPDIR that needs room for the decompressed RDB. When the server
// reports it has loaded (PING answers, INFO says loading:0) its keys are
// summed and compared with the manifest. The server is always stopped
// (SHUTDOWN NOSAVE, then SIGKILL), also when the activity is cancelled or
// fails, and on Linux the kernel kills it should the worker die; the
// temporary directory is always removed. Without redis-server on the PATH
// the check is the structural one, and Note says so.
//
// Findings are returned in the RDBCheck with Passed false. Errors: bad input
// is ErrInvalidInput, a missing object ErrArtifactNotFound, a store that
// refuses for good ErrStore (all non-retryable); network faults, a full disk
// and a scratch server that cannot be started are returned for the retry
// policy. VerifyRDB writes nothing to the store and is safe to retry.
func (r *Redis) VerifyRDB(ctx context.Context, in VerifyRDBInput) (RDBCheck, error) {
	start := time.Now()
	art := in.Artifact
	chk := RDBCheck{Instance: art.Source, Key: art.Key}
	if chk.Instance == "" {
		chk.Instance = r.Instance
		if chk.Instance == "" {
			chk.Instance = DefaultRedisInstance
		}
	}
	if err := r.checkVerifyRDB(art); err != nil {
		return chk, err
	}
	where := fmt.Sprintf("verify redis %s %s", chk.Instance, art.Key)
	if err := ctx.Err(); err != nil {
		return chk, fmt.Errorf("%s: %w", where, context.Cause(ctx))
	}
	log := activity.GetLogger(ctx)

	// The scratch server needs the RDB as a file: redis-server loads only
	// from its --dir. Without one, nothing is staged.
	var bin string
	if in.Scratch {
		if p, err := exec.LookPath("redis-server"); err == nil {
			bin = p
		} else {
			chk.Note = "redis-server not on PATH: checked the RDB structure only"
		}
	} else {
		chk.Note = "scratch load not requested: checked the RDB structure only"
	}

	hb := startVerifyBeat(ctx, &VerifyRDBProgress{Phase: "download"})
	defer hb.stop()

	var (
		dir  string
		file *os.File
	)
	if bin != "" {
		var err error
		// In the worker's scratch directory in TMPDIR (see package scratch);
		// MkdirTemp makes the directory 0700: the RDB holds the app's data. A
		// worker killed meanwhile leaves it to the next worker's sweep.
		var remove func() error
		if dir, remove, err = scratch.MkdirTemp("drflow-verify-rdb-"); err != nil {
			return chk, fmt.Errorf("%s: temporary directory (TMPDIR): %w", where, err)
		}
		defer func() {
			// Runs after the scratch server is stopped (deferred later).
			if err := remove(); err != nil {
				log.Warn("verify rdb: remove temporary directory", "dir", dir, "error", err)
			}
		}()
		if file, err = os.OpenFile(filepath.Join(dir, "dump.rdb"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600); err != nil {
			return chk, fmt.Errorf("%s: temporary file: %w", where, err)
		}
		defer file.Close() // closed below; this covers the early returns
	}

	var dst io.Writer
	if file != nil {
		dst = file
	}
	dl, err := r.downloadRDB(ctx, art, dst, hb)
	if err != nil {
		return chk, verifyInfraErr(ctx, where, err)
	}
	if file != nil {
		if err := file.Close(); err != nil {
			return chk, fmt.Errorf("%s: temporary file: %w", where, err)
		}
	}
	chk.RTO = time.Since(start)
	chk.ParsedKeys = dl.sum.TotalKeys()

	var problems []string
	add := func(format string, args ...any) {
		problems = append(problems, art.Key+": "+fmt.Sprintf(format, args...))
	}
	storedOK := true
	if dl.size != art.Size {
		storedOK = false
		add("size mismatch: %d bytes in the store, %d in the manifest", dl.size, art.Size)
	}
	if !strings.EqualFold(dl.sha256, art.SHA256) {
		storedOK = false
		add("checksum mismatch: sha256 %s in the store, %s in the manifest", dl.sha256, art.SHA256)
	}
	scanned := dl.scanErr == nil
	unsupported := errors.Is(dl.scanErr, errRDBUnsupported)
	crcOK := scanned || (unsupported && dl.sum.Version >= 5)
	switch {
	case scanned:
	case unsupported:
		add("RDB not readable by this drflow version, structure and key count unchecked: %v", dl.scanErr)
	case errors.Is(dl.scanErr, errRDBCorrupt), errors.Is(dl.scanErr, errRDBTruncated):
		add("%v", dl.scanErr)
	default:
		var (
			de *verifyDecodeError
			ae *ageDataError
		)
		switch {
		case errors.As(dl.scanErr, &ae) && errors.As(dl.scanErr, &de) && de.at > 0:
			add("cannot decrypt (age) after %d bytes of RDB: %v", de.at, ae.err)
		case errors.As(dl.scanErr, &ae):
			add("cannot decrypt (age): %v", ae.err)
		case errors.As(dl.scanErr, &de):
			add("cannot decompress (zstd) after %d bytes of RDB: %v", de.at, de.err)
		default:
			add("%v", dl.scanErr)
		}
	}
	chk.ChecksumOK = storedOK && crcOK
	if scanned {
		if art.RawSize > 0 && dl.sum.Bytes != art.RawSize {
			add("RDB length mismatch: %d bytes decompressed, %d in the manifest", dl.sum.Bytes, art.RawSize)
		}
		if chk.ParsedKeys != art.KeyCount {
			add("key count mismatch: %d keys in the RDB, %d in the manifest", chk.ParsedKeys, art.KeyCount)
		}
		problems = append(problems, verifyDBCounts(art, dl.sum.Keys)...)
		if dl.sum.Checksum == 0 && dl.sum.Version >= 5 {
			chk.Note = joinNote(chk.Note, "the RDB was saved without a CRC-64 (rdbchecksum no)")
		}
	}

	if bin != "" && !scanned && !unsupported {
		chk.Note = "not loaded into a scratch redis-server: the RDB failed the structure check"
	}
	if bin != "" && (scanned || unsupported) {
		hb.set(func(p *VerifyRDBProgress) { p.Phase = "load" })
		databases := 16
		for db := range dl.sum.Keys {
			databases = max(databases, db+1)
		}
		for db := range dl.sum.Sizes {
			databases = max(databases, db+1)
		}
		var srv *scratchRedis
		defer func() {
			// Also on cancellation and failure: the server must never outlive
			// the check, and the temporary directory goes after it.
			if srv != nil {
				hb.set(func(p *VerifyRDBProgress) { p.Phase = "stop" })
				if err := srv.stop(); err != nil {
					log.Error("verify rdb: stop scratch redis-server", "pid", srv.pid(), "addr", srv.addr, "error", err)
				}
			}
		}()
		var ld scratchLoad
		for attempt := 1; ; attempt++ {
			srv, err = startScratchRedis(bin, dir, databases)
			if err != nil {
				return chk, fmt.Errorf("%s: start scratch redis-server %s: %w", where, bin, err)
			}
			hb.set(func(p *VerifyRDBProgress) { p.ScratchAddr, p.ScratchPID = srv.addr, srv.pid() })
			log.Info("verify rdb: scratch redis-server started", "instance", chk.Instance, "key", art.Key, "addr", srv.addr, "pid", srv.pid())
			ld, err = srv.waitLoaded(ctx, hb)
			if errors.Is(err, errScratchPortTaken) && attempt < 3 {
				// Another process took the port between our probe and the
				// server's bind: try another one.
				_ = srv.stop()
				srv = nil
				continue
			}
			break
		}
		var exited *scratchExitError
		switch {
		case err == nil:
			chk.RTO = time.Since(start)
			chk.ScratchLoaded = true
			chk.LoadedKeys = ld.keys
			expired := ld.expiredAtLoad + ld.expiredSince
			if expired > 0 {
				chk.Note = joinNote(chk.Note, fmt.Sprintf("%d keys had passed their TTL: redis-server dropped %d while loading and expired %d since; they are counted as loaded", expired, ld.expiredAtLoad, ld.expiredSince))
			}
			switch got := chk.LoadedKeys + expired; {
			case got == art.KeyCount:
			case expired > 0:
				add("key count mismatch: the scratch redis-server loaded %d keys and dropped %d expired ones, %d in the manifest", chk.LoadedKeys, expired, art.KeyCount)
			default:
				add("key count mismatch: the scratch redis-server loaded %d keys, %d in the manifest", chk.LoadedKeys, art.KeyCount)
			}
		case errors.As(err, &exited):
			add("the scratch redis-server could not load the RDB: %v", exited)
		default:
			return chk, verifyInfraErr(ctx, where+": scratch redis-server", err)
		}
	}

	chk.Problems = problems
	chk.Passed = len(problems) == 0
	log.Info("verify rdb", "set", in.SetID, "instance", chk.Instance, "key", art.Key, "passed", chk.Passed,
		"problems", len(problems), "parsedKeys", chk.ParsedKeys, "scratchLoaded", chk.ScratchLoaded,
		"loadedKeys", chk.LoadedKeys, "bytes", dl.size, "rawBytes", dl.sum.Bytes, "rto", chk.RTO)
	return chk, nil
}

// checkVerifyRDB rejects input that can never be checked.
func (r *Redis) checkVerifyRDB(art Artifact) error {
	bad := func(format string, args ...any) error {
		return NonRetryable(ErrInvalidInput, fmt.Errorf("verify redis rdb: "+format, args...))
	}
	if r.Store == nil {
		return NonRetryable(ErrInvalidConfig, errors.New("verify redis rdb: no backup store configured"))
	}
	if art.Key == "" {
		return bad("input field \"artifact\" has no key")
	}
	if err := store.CheckKey(art.Key); err != nil {
		return bad("artifact key: %w", err)
	}
	if art.Kind != "" && art.Kind != KindRedis {
		return bad("artifact %s is a %q artifact, not %q", art.Key, art.Kind, KindRedis)
	}
	switch art.Compression {
	case CompressionZstd, CompressionNone, "":
	default:
		return bad("artifact %s: compression %q is not %q or %q", art.Key, art.Compression, CompressionZstd, CompressionNone)
	}
	if art.Encryption != "" && art.Encryption != EncryptionNone && art.Encryption != EncryptionAge {
		return bad("artifact %s: encryption %q is not %s or %s", art.Key, art.Encryption, EncryptionNone, EncryptionAge)
	}
	if !isHexSHA256(art.SHA256) {
		return bad("artifact %s: sha256 %q is not 64 hex digits", art.Key, art.SHA256)
	}
	return nil
}

func isHexSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// verifyDBCounts compares the key count of each database with the manifest's
// RowCounts ("db0", "db3" …), when it has them.
func verifyDBCounts(art Artifact, keys map[int]int64) []string {
	if art.RowCounts == nil {
		return nil
	}
	names := map[string]bool{}
	for name := range art.RowCounts {
		names[name] = true
	}
	for db := range keys {
		names["db"+strconv.Itoa(db)] = true
	}
	var out []string
	for _, name := range slices.Sorted(maps.Keys(names)) {
		var got int64
		if db, err := strconv.Atoi(strings.TrimPrefix(name, "db")); err == nil && strings.HasPrefix(name, "db") {
			got = keys[db]
		}
		if want := art.RowCounts[name]; got != want {
			out = append(out, fmt.Sprintf("%s: %s key count mismatch: %d keys in the RDB, %d in the manifest", art.Key, name, got, want))
		}
	}
	return out
}

func joinNote(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

// rdbDownload is what streaming a stored RDB found.
type rdbDownload struct {
	size   int64  // stored bytes
	sha256 string // of the stored bytes
	sum    rdbSummary
	// scanErr is a finding: the decompression or the RDB walk failed on the
	// data itself (corrupt, truncated, unsupported).
	scanErr error
}

// downloadRDB streams art from the store through SHA-256, decompression and
// scanRDB, copying the RDB to dst when it is not nil. It reads the stored
// object to its end even when the RDB is bad, so size and SHA-256 are always
// of the whole object. The error is for the infrastructure only: reading the
// store or writing dst.
func (r *Redis) downloadRDB(ctx context.Context, art Artifact, dst io.Writer, hb *verifyBeat[VerifyRDBProgress]) (rdbDownload, error) {
	var d rdbDownload
	// A key this worker lacks fails before the download.
	if err := r.Age.checkReadable(art); err != nil {
		return d, err
	}
	rc, err := r.Store.Get(ctx, art.Key)
	if err != nil {
		return d, &verifyStoreError{err: err, get: true}
	}
	defer rc.Close()
	src := &verifyStoreReader{ctx: ctx, r: rc, h: sha256.New(), n: &hb.stored}
	var (
		se *verifyStoreError
		te *verifyTempError
	)
	// Concurrency 1 decodes in this goroutine, so src is never read by two
	// goroutines and can be drained below without a race.
	plain, closeDec, err := r.Age.openArtifact(src, art, zstd.WithDecoderConcurrency(1))
	defer closeDec()
	switch {
	case err == nil:
		rdb := io.Reader(&countReader{r: &verifyDecodeReader{r: plain}, n: &hb.progress})
		if dst != nil {
			rdb = io.TeeReader(rdb, verifyTempWriter{dst})
		}
		d.sum, err = scanRDB(rdb)
	case AgeKeyError(err) != nil, errors.As(err, &se):
		return d, err
	default:
		// The age header does not parse: a finding, like a corrupt frame.
		err = &verifyDecodeError{err: err}
	}
	switch {
	case err == nil:
	case ctx.Err() != nil:
		return d, context.Cause(ctx)
	case errors.As(err, &se), errors.As(err, &te):
		return d, err
	default:
		d.scanErr = err
	}
	// The decoder may stop short of the object's end (or the walk stopped
	// at a corrupt byte): the rest still counts for size and SHA-256.
	if _, err := io.Copy(io.Discard, src); err != nil {
		if ctx.Err() != nil {
			return d, context.Cause(ctx)
		}
		return d, err
	}
	d.size, d.sha256 = src.n.Load(), hex.EncodeToString(src.h.Sum(nil))
	return d, nil
}

// verifyStoreReader reads a stored object, counting and hashing the bytes and
// tagging its errors, so that a failed read of the store is told apart from
// corrupt data. It stops at ctx's end: an FS store's file does not. h may be
// nil.
type verifyStoreReader struct {
	ctx context.Context
	r   io.Reader
	h   hash.Hash
	n   *atomic.Int64
}

func (s *verifyStoreReader) Read(p []byte) (int, error) {
	if err := s.ctx.Err(); err != nil {
		return 0, &verifyStoreError{err: context.Cause(s.ctx)}
	}
	n, err := s.r.Read(p)
	if s.h != nil {
		s.h.Write(p[:n])
	}
	s.n.Add(int64(n))
	if err != nil && err != io.EOF {
		err = &verifyStoreError{err: err}
	}
	return n, err
}

// verifyStoreError is an error of the backup store (get set: of opening the
// object).
type verifyStoreError struct {
	err error
	get bool
}

func (e *verifyStoreError) Error() string { return e.err.Error() }
func (e *verifyStoreError) Unwrap() error { return e.err }

// verifyDecodeReader tags the errors of the decompressor with how far it got.
// An error of the store read through it stays matchable (errors.As).
type verifyDecodeReader struct {
	r io.Reader
	n int64
}

func (d *verifyDecodeReader) Read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	d.n += int64(n)
	if err != nil && err != io.EOF {
		err = &verifyDecodeError{err: err, at: d.n}
	}
	return n, err
}

type verifyDecodeError struct {
	err error
	at  int64 // decompressed bytes before the error
}

func (e *verifyDecodeError) Error() string { return e.err.Error() }
func (e *verifyDecodeError) Unwrap() error { return e.err }

// verifyTempWriter tags errors of writing the temporary file.
type verifyTempWriter struct{ w io.Writer }

func (t verifyTempWriter) Write(p []byte) (int, error) {
	n, err := t.w.Write(p)
	if err != nil {
		err = &verifyTempError{err}
	}
	return n, err
}

type verifyTempError struct{ err error }

func (e *verifyTempError) Error() string {
	return "write the temporary copy of the RDB (TMPDIR): " + e.err.Error()
}
func (e *verifyTempError) Unwrap() error { return e.err }

// verifyInfraErr turns an infrastructure error of a check into the activity's
// error: a missing object is ErrArtifactNotFound, a permanent store error
// ErrStore, both non-retryable; the rest is left to the retry policy.
func verifyInfraErr(ctx context.Context, where string, err error) error {
	if kerr := AgeKeyError(err); kerr != nil {
		return kerr // already classified, naming the set and the keys
	}
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", where, context.Cause(ctx))
	}
	var se *verifyStoreError
	if errors.As(err, &se) {
		switch {
		case se.get && errors.Is(se.err, store.ErrNotFound):
			return NonRetryable(ErrArtifactNotFound, fmt.Errorf("%s: the artifact is not in the backup store: %w", where, se.err))
		case store.IsPermanent(se.err):
			return NonRetryable(ErrStore, fmt.Errorf("%s: backup store: %w", where, se.err))
		}
	}
	return fmt.Errorf("%s: %w", where, err)
}

// ---- heartbeats ----

// verifyBeat records a check's progress as heartbeats: every
// verifyHeartbeatEvery from a goroutine, and at once when set is called. The
// byte counters are updated by the streams without a lock.
type verifyBeat[P any] struct {
	ctx      context.Context
	stored   atomic.Int64 // bytes read from the store
	progress atomic.Int64 // a second counter, per check (RDB bytes, objects)
	fill     func(p *P, stored, progress int64)

	mu   sync.Mutex
	p    P
	done chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

func startVerifyBeat(ctx context.Context, p *VerifyRDBProgress) *verifyBeat[VerifyRDBProgress] {
	return startBeat(ctx, *p, func(p *VerifyRDBProgress, stored, rdb int64) {
		p.StoredBytes, p.RDBBytes = stored, rdb
	})
}

func startBeat[P any](ctx context.Context, p P, fill func(p *P, stored, progress int64)) *verifyBeat[P] {
	h := &verifyBeat[P]{ctx: ctx, p: p, fill: fill, done: make(chan struct{})}
	h.beat()
	h.wg.Go(func() {
		t := time.NewTicker(verifyHeartbeatEvery)
		defer t.Stop()
		for {
			select {
			case <-h.done:
				return
			case <-t.C:
				h.beat()
			}
		}
	})
	return h
}

// set changes the progress under the lock and records it at once.
func (h *verifyBeat[P]) set(fn func(p *P)) {
	h.mu.Lock()
	fn(&h.p)
	h.mu.Unlock()
	h.beat()
}

func (h *verifyBeat[P]) beat() {
	h.mu.Lock()
	p := h.p
	h.mu.Unlock()
	h.fill(&p, h.stored.Load(), h.progress.Load())
	activity.RecordHeartbeat(h.ctx, p)
}

// stop ends the heartbeat goroutine and records the final progress; no
// heartbeat is recorded after it.
func (h *verifyBeat[P]) stop() {
	h.once.Do(func() {
		close(h.done)
		h.wg.Wait()
		h.beat()
	})
}

// ---- the scratch redis-server ----

// scratchPoll is how often VerifyRDB asks the scratch server whether it has
// loaded; a variable so that tests can see it loading.
var scratchPoll = 25 * time.Millisecond

// Scratch server timings.
const (
	scratchReplyWait  = time.Minute      // a reply while loading: Redis answers between chunks
	scratchStopGrace  = 3 * time.Second  // SHUTDOWN NOSAVE to exit, before SIGKILL
	scratchReapWait   = 30 * time.Second // SIGKILL to reaped
	scratchOutputKeep = 8 << 10          // bytes of stdout/stderr kept for errors
)

// scratchRedis is a redis-server run by VerifyRDB on a copy of the RDB.
//
// contract: the process is started and waited for by one goroutine locked to
// its OS thread. On Linux the child gets Pdeathsig=SIGKILL, which fires when
// the thread that forked it ends, not the process: the lock keeps the Go
// runtime from ending that thread while the child lives (it ends a thread only
// when a goroutine exits locked to it). stop always leaves the process reaped.
type scratchRedis struct {
	cmd      *exec.Cmd
	addr     string
	password string
	logPath  string
	output   *scratchOutput
	done     chan struct{} // closed once the process is reaped
	waitErr  error         // valid after done
}

// errScratchPortTaken: the server could not bind its port.
var errScratchPortTaken = errors.New("port taken")

// scratchExitError: the server exited before it had loaded the RDB; the
// message is the end of its log.
type scratchExitError struct {
	waitErr error
	log     string
}

func (e *scratchExitError) Error() string {
	return fmt.Sprintf("redis-server exited (%v): %s", e.waitErr, e.log)
}

// startScratchRedis starts redis-server on dir/dump.rdb on a free loopback
// port. The password is in a 0600 config file in dir (dir is 0700), not on
// the command line, so other users of the host can neither read the data
// through the port nor the password from ps.
func startScratchRedis(bin, dir string, databases int) (*scratchRedis, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("find a free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return nil, fmt.Errorf("find a free port: %w", err)
	}
	secret := make([]byte, 24)
	if _, err := rand.Read(secret); err != nil {
		return nil, err
	}
	s := &scratchRedis{
		addr:     net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		password: hex.EncodeToString(secret),
		logPath:  filepath.Join(dir, "redis.log"),
		output:   &scratchOutput{max: scratchOutputKeep},
		done:     make(chan struct{}),
	}
	conf := filepath.Join(dir, "scratch.conf")
	if err := os.WriteFile(conf, []byte("requirepass "+s.password+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("write %s: %w", conf, err)
	}
	_ = os.Remove(s.logPath) // a previous attempt's
	s.cmd = exec.Command(bin, conf,
		"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--dir", dir, "--dbfilename", "dump.rdb",
		"--appendonly", "no", "--save", "",
		"--daemonize", "no", "--logfile", s.logPath,
		"--databases", strconv.Itoa(databases),
	)
	s.cmd.Dir = dir
	s.cmd.Stdout = s.output
	s.cmd.Stderr = s.output
	s.cmd.SysProcAttr = &syscall.SysProcAttr{}
	setPdeathsig(s.cmd.SysProcAttr)

	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := s.cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		s.waitErr = s.cmd.Wait()
		close(s.done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return s, nil
}

// setPdeathsig sets Pdeathsig=SIGKILL where the platform has it (Linux). It
// goes through reflection because the field exists only there, and this
// package builds on every platform the worker runs on; elsewhere a worker
// killed with SIGKILL leaves the scratch server running.
func setPdeathsig(attr *syscall.SysProcAttr) {
	f := reflect.ValueOf(attr).Elem().FieldByName("Pdeathsig")
	if sig := reflect.ValueOf(syscall.SIGKILL); f.IsValid() && f.CanSet() && f.Type() == sig.Type() {
		f.Set(sig)
	}
}

func (s *scratchRedis) pid() int { return s.cmd.Process.Pid }

func (s *scratchRedis) exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// exitError describes the exit of a server that should still run.
func (s *scratchRedis) exitError() error {
	log := s.logTail(3)
	if strings.Contains(log, "Address already in use") {
		return errScratchPortTaken
	}
	return &scratchExitError{waitErr: s.waitErr, log: log}
}

// logTail returns the gist of why the server stopped: the last n warnings
// of its log ("# …" lines, without its advice on the host's settings) or, when
// it logged none, its last n lines, and the end of its stdout and stderr
// (where redis-server reports a bad option).
func (s *scratchRedis) logTail(n int) string {
	var log, warnings []string
	if b, err := os.ReadFile(s.logPath); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if l = strings.TrimSpace(l); l == "" {
				continue
			}
			log = append(log, l)
			if _, msg, ok := strings.Cut(l, " # "); ok && !strings.HasPrefix(msg, "WARNING") {
				warnings = append(warnings, msg)
			}
		}
	}
	lines := warnings
	if len(lines) == 0 {
		lines = log
	}
	lines = lines[max(len(lines)-n, 0):]
	for _, l := range strings.Split(s.output.String(), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	lines = lines[max(len(lines)-2*n, 0):]
	if len(lines) == 0 {
		return "no log"
	}
	return strings.Join(lines, " | ")
}

// dial connects and authenticates.
func (s *scratchRedis) dial(timeout time.Duration) (*redisConn, error) {
	conn, err := net.DialTimeout("tcp", s.addr, timeout)
	if err != nil {
		return nil, err
	}
	c := &redisConn{conn: conn, timeout: timeout, secret: s.password}
	c.rd = bufio.NewReaderSize(redisDeadlineReader{c}, 64<<10)
	if _, err := c.do("AUTH", s.password); err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

// scratchLoad is what the scratch server reported once it had loaded.
type scratchLoad struct {
	keys          int64 // INFO keyspace, summed
	expiredAtLoad int64 // rdb_last_load_keys_expired: past their TTL, not loaded
	expiredSince  int64 // expired_keys: expired after the load
}

// waitLoaded polls the server until it has loaded the RDB (PING answers and
// INFO says loading:0) and returns its key counts, taken from one INFO reply
// so that they are consistent. A server that exits first is a
// *scratchExitError (or errScratchPortTaken); ctx's end stops the wait.
func (s *scratchRedis) waitLoaded(ctx context.Context, hb *verifyBeat[VerifyRDBProgress]) (scratchLoad, error) {
	var ld scratchLoad
	tick := time.NewTicker(scratchPoll)
	defer tick.Stop()
	var c *redisConn
	// cur is c for the AfterFunc, which closes it to unblock a read when
	// the activity is cancelled.
	var (
		mu  sync.Mutex
		cur *redisConn
	)
	setConn := func(nc *redisConn) {
		mu.Lock()
		defer mu.Unlock()
		if cur != nil && cur != nc {
			cur.close()
		}
		c, cur = nc, nc
	}
	defer setConn(nil)
	defer context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if cur != nil {
			cur.close()
		}
	})()
	for {
		select {
		case <-ctx.Done():
			return ld, context.Cause(ctx)
		case <-s.done:
			return ld, s.exitError()
		case <-tick.C:
		}
		if c == nil {
			nc, err := s.dial(scratchReplyWait)
			var se *redisServerError
			switch {
			case errors.As(err, &se) && se.code() != "LOADING":
				return ld, fmt.Errorf("%s: %w", s.addr, err)
			case err != nil:
				continue // not listening yet, or it just exited: s.done says
			}
			setConn(nc)
		}
		fields, err := s.info(c)
		if err != nil {
			setConn(nil)
			continue
		}
		if fields["loading"] == "1" || fields["async_loading"] == "1" {
			pct, _ := strconv.ParseFloat(strings.TrimSuffix(fields["loading_loaded_perc"], "%"), 64)
			hb.set(func(p *VerifyRDBProgress) { p.Loading, p.LoadedPercent = true, pct })
			continue
		}
		pong, err := c.do("PING")
		var se *redisServerError
		if errors.As(err, &se) && se.code() == "LOADING" {
			continue
		}
		if err != nil || pong != "PONG" {
			setConn(nil)
			continue
		}
		// Loaded: the counts, in one reply.
		fields, err = s.info(c)
		if err != nil {
			setConn(nil)
			continue
		}
		if fields["loading"] != "0" {
			continue
		}
		hb.set(func(p *VerifyRDBProgress) { p.Loading, p.LoadedPercent = false, 100 })
		for k, v := range fields {
			if !strings.HasPrefix(k, "db") {
				continue
			}
			// db0:keys=12,expires=3,avg_ttl=0
			for _, kv := range strings.Split(v, ",") {
				if n, ok := strings.CutPrefix(kv, "keys="); ok {
					k, _ := strconv.ParseInt(n, 10, 64)
					ld.keys += k
				}
			}
		}
		ld.expiredAtLoad, _ = strconv.ParseInt(fields["rdb_last_load_keys_expired"], 10, 64)
		ld.expiredSince, _ = strconv.ParseInt(fields["expired_keys"], 10, 64)
		return ld, nil
	}
}

// info returns the fields of INFO's default sections (server, persistence,
// stats, keyspace …) as one consistent snapshot.
func (s *scratchRedis) info(c *redisConn) (map[string]string, error) {
	text, err := c.do("INFO")
	if err != nil {
		return nil, err
	}
	fields := map[string]string{}
	for _, l := range strings.Split(text, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(l), ":"); ok {
			fields[k] = v
		}
	}
	return fields, nil
}

// stop ends the server: SHUTDOWN NOSAVE, then SIGKILL when it has not exited
// within scratchStopGrace (a server busy loading may not answer) or could not
// be asked (not listening yet), and waits until it is reaped. It does not
// depend on the activity's context, which may have ended. The server keeps
// nothing worth a graceful stop: it has no persistence.
func (s *scratchRedis) stop() error {
	if !s.exited() {
		grace := time.Duration(0)
		if c, err := s.dial(time.Second); err == nil {
			_, _ = c.do("SHUTDOWN", "NOSAVE") // success closes the connection
			c.close()
			grace = scratchStopGrace
		}
		select {
		case <-s.done:
		case <-time.After(grace):
			if err := s.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
				return fmt.Errorf("kill: %w", err)
			}
		}
	}
	select {
	case <-s.done:
		return nil
	case <-time.After(scratchReapWait):
		return fmt.Errorf("redis-server %d still running %s after SIGKILL", s.pid(), scratchReapWait)
	}
}

// scratchOutput keeps the last max bytes written to it.
type scratchOutput struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *scratchOutput) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if over := len(t.b) - t.max; over > 0 {
		t.b = append(t.b[:0], t.b[over:]...)
	}
	return len(p), nil
}

func (t *scratchOutput) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
