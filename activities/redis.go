package activities

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"
	"go.temporal.io/sdk/activity"

	"github.com/kohakku/drflow/internal/config"
	"github.com/kohakku/drflow/internal/store"
)

// Error types of the non-retryable errors raised by the Redis activities.
const (
	// ErrRedisAuth: Redis rejected the configured credentials (wrong password,
	// unknown or disabled ACL user), asks for a password none is configured
	// for (NOAUTH), or has no password while one is configured.
	ErrRedisAuth = "RedisAuth"
	// ErrRedisSyncForbidden: Redis refuses both SYNC and PSYNC (ACL without
	// +sync/+psync, commands renamed or disabled, a managed Redis). DumpRDB
	// cannot work against this server; see Redis.DumpRDB for the alternatives.
	ErrRedisSyncForbidden = "RedisSyncForbidden"
	// ErrRedisRDBUnsupported: the RDB arrived intact (its checksum matches)
	// but holds a value type or opcode drflow's RDB reader does not know, so
	// it cannot be validated or counted; drflow needs updating for this
	// Redis version.
	ErrRedisRDBUnsupported = "RedisRDBUnsupported"
)

// Defaults of the Redis activity settings.
const (
	DefaultRedisInstance    = "default"
	DefaultRedisDialTimeout = 10 * time.Second
	// DefaultRedisReadTimeout matches Redis' own repl-timeout.
	DefaultRedisReadTimeout = 60 * time.Second
)

// Redis holds the app's Redis server settings and the backup store; its
// methods are the Redis activities. Build it once in the worker; the zero
// values of the optional fields are the defaults.
type Redis struct {
	// Config is the server: address and password.
	Config config.Redis
	// User is the ACL user to authenticate as (AUTH user password, Redis 6+);
	// "" authenticates with the password alone, as the default user. The
	// user needs +sync +psync +replconf +info and no key permissions.
	User string
	// Store receives the dumps.
	Store store.Store
	// Instance names this Redis in keys, artifacts and errors (default
	// "default").
	Instance string
	// DialTimeout bounds connecting and each reply before SYNC (default 10s).
	DialTimeout time.Duration
	// ReadTimeout is the longest wait for data once SYNC is sent (default
	// 60s). While Redis prepares the snapshot it sends a newline every
	// second, so only a dead server or link runs into it.
	ReadTimeout time.Duration
	// Age encrypts the dumps it stores to its recipients and decrypts the
	// stored ones (VerifyRDB) with its identities; nil does neither.
	Age *AgeKeys
}

// RDBInput selects what DumpRDB dumps and where it stores it.
type RDBInput struct {
	// SetID is the backup set the dump belongs to; used for the default key.
	SetID string `json:"setId"`
	// Instance is the Redis instance to dump; "" means the worker's one.
	// Naming another instance than the worker's is an ErrUnknownTarget.
	Instance string `json:"instance"`
	// Key in the backup store; "" means sets/<setId>/redis/<instance>.rdb.zst.
	Key string `json:"key"`
}

// RDBProgress is DumpRDB's heartbeat detail. It only shows how far an attempt
// got: Redis cannot resume a snapshot, so a retry starts a new SYNC, and the
// store's Put is all-or-nothing, so a retry never leaves a partial object.
type RDBProgress struct {
	// Phase is "handshake", "snapshot" (Redis is preparing it), "transfer"
	// or "upload" (the RDB is read, the store is finishing the object).
	Phase string `json:"phase"`
	// RDBBytes of the RDB received so far.
	RDBBytes int64 `json:"rdbBytes"`
	// StoredBytes the store has written so far (compressed).
	StoredBytes int64 `json:"storedBytes"`
}

// DumpRDB streams a point-in-time RDB snapshot of the Redis into the backup
// store, zstd-compressed, and returns its artifact. Nothing touches the Redis
// host's file system: like `redis-cli --rdb`, it connects as a replica (AUTH,
// REPLCONF capa eof, REPLCONF rdb-only 1, SYNC, or PSYNC ? -1 when SYNC alone
// is refused), takes the RDB Redis sends for a full resynchronization in
// either framing ($<length> after a BGSAVE to disk, or $EOF:<mark> when
// diskless) and closes the connection right after it, before any of the
// replication stream. Redis forks for the snapshot, as for BGSAVE.
//
// While streaming, the RDB is parsed (rdb.go): every key is walked over, so
// the CRC-64 trailer is checked against exactly what was received and the key
// count is exact. Artifact.KeyCount is the total, Artifact.RowCounts the count
// per non-empty database keyed "db0", "db3" …; both include keys whose TTL
// passes before a restore. Artifact.SourceVersion is "redis <redis_version>"
// from INFO server ("valkey <version>" for Valkey), else from the RDB.
//
// Errors: bad credentials are ErrRedisAuth; a server that refuses SYNC and
// PSYNC is ErrRedisSyncForbidden; an intact RDB with a format drflow cannot
// read is ErrRedisRDBUnsupported; permanent store errors are ErrStore; bad
// input is ErrInvalidInput or ErrUnknownTarget. All of them are
// non-retryable. Refused or dropped connections, a truncated or corrupt
// transfer and transient store errors are returned for the retry policy, and
// a failed attempt leaves nothing in the store. No error holds the password.
//
// Servers that forbid SYNC (most managed Redis services, or an ACL that
// denies it) cannot be dumped this way. Either grant the backup user
// +sync +psync +replconf, or back the instance up on its host: a drflow
// worker on the Redis host's task queue copies dump.rdb after BGSAVE, or the
// provider's snapshot export is used (docs/redis-backup.md).
func (r *Redis) DumpRDB(ctx context.Context, in RDBInput) (Artifact, error) {
	start := time.Now()
	inst, key, err := r.rdbTarget(in)
	if err != nil {
		return Artifact{}, err
	}
	art := Artifact{
		Kind: KindRedis, Source: inst, Key: key,
		Compression: CompressionZstd,
		StartedAt:   start.UTC(),
	}
	r.Age.stamp(&art)
	where := fmt.Sprintf("redis %s at %s", inst, r.Config.Addr)
	if err := ctx.Err(); err != nil {
		return art, fmt.Errorf("%s: %w", where, context.Cause(ctx))
	}
	log := activity.GetLogger(ctx)
	hb := &redisHeartbeat{ctx: ctx, every: redisHeartbeatEvery}
	hb.beat("handshake", true)

	// pctx ends the attempt early: when the activity is cancelled or the store
	// fails, the connection is closed so that no read blocks.
	pctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	c, err := r.dial(pctx)
	if err != nil {
		return art, redisConnErr(ctx, where, "connect", err)
	}
	defer c.close()
	defer context.AfterFunc(pctx, c.close)()

	version, err := c.handshake(r.User, r.Config.Password.Reveal())
	if err != nil {
		return art, redisClassify(ctx, where, err)
	}
	c.timeout = r.readTimeout()
	payload, rawSize, err := c.sync(func() { hb.beat("snapshot", false) })
	if err != nil {
		return art, redisClassify(ctx, where, err)
	}
	log.Info("redis rdb transfer", "instance", inst, "key", key, "diskless", rawSize < 0, "bytes", rawSize)

	sum, out, err := r.storeRDB(ctx, cancel, payload, key, rawSize, hb)
	if err != nil && ctx.Err() != nil {
		return art, fmt.Errorf("%s: %w (after %d bytes)", where, context.Cause(ctx), hb.rdb.Load())
	}
	if err != nil {
		var se *redisStoreError
		if errors.As(err, &se) {
			err = fmt.Errorf("%s: store: %w", where, se.err)
			if store.IsPermanent(se.err) {
				return art, NonRetryable(ErrStore, err)
			}
			return art, err
		}
		return art, redisClassify(ctx, where, err)
	}
	c.close() // done with Redis before the bookkeeping; the replication stream is not read

	art.Size, art.RawSize, art.SHA256 = out.size, sum.Bytes, out.sha256
	art.KeyCount = sum.TotalKeys()
	art.RowCounts = map[string]int64{}
	for db, n := range sum.Keys {
		art.RowCounts["db"+strconv.Itoa(db)] = n
	}
	art.SourceVersion = version
	if art.SourceVersion == "" && sum.RedisVersion != "" {
		art.SourceVersion = "redis " + sum.RedisVersion
	}
	for db, n := range sum.Sizes {
		if sum.Keys[db] != n {
			// RESIZEDB is Redis' own count at fork time; a difference means
			// the walk and the file disagree somewhere the checksum missed.
			log.Warn("redis rdb key count differs from the RESIZEDB hint", "instance", inst, "db", db, "keys", sum.Keys[db], "hint", n)
		}
	}
	art.Duration = time.Since(start)
	log.Info("redis rdb stored", "instance", inst, "key", key, "bytes", art.Size, "rawBytes", art.RawSize,
		"keys", art.KeyCount, "rdbVersion", sum.Version, "encryption", art.Encryption, "duration", art.Duration)
	return art, nil
}

// rdbTarget checks the input and the settings and returns the instance name
// and the store key.
func (r *Redis) rdbTarget(in RDBInput) (inst, key string, err error) {
	inst = r.Instance
	if inst == "" {
		inst = DefaultRedisInstance
	}
	if in.Instance != "" && in.Instance != inst {
		return "", "", NonRetryable(ErrUnknownTarget, fmt.Errorf("redis rdb: input field \"instance\": unknown Redis instance %q (configured: %s)", in.Instance, inst))
	}
	if r.Config.Addr == "" {
		return "", "", NonRetryable(ErrInvalidConfig, fmt.Errorf("redis %s: no address configured (DRFLOW_REDIS_ADDR)", inst))
	}
	if r.Store == nil {
		return "", "", NonRetryable(ErrInvalidConfig, fmt.Errorf("redis %s: no backup store configured", inst))
	}
	key = in.Key
	if key == "" {
		if in.SetID == "" {
			return "", "", NonRetryable(ErrInvalidInput, errors.New("redis rdb: input needs \"setId\" or \"key\""))
		}
		key = RedisKey(in.SetID, inst)
	}
	if err := store.CheckKey(key); err != nil {
		return "", "", NonRetryable(ErrInvalidInput, fmt.Errorf("redis rdb: input field \"key\": %w", err))
	}
	return inst, key, nil
}

func (r *Redis) dialTimeout() time.Duration {
	if r.DialTimeout > 0 {
		return r.DialTimeout
	}
	return DefaultRedisDialTimeout
}

func (r *Redis) readTimeout() time.Duration {
	if r.ReadTimeout > 0 {
		return r.ReadTimeout
	}
	return DefaultRedisReadTimeout
}

// redisStored describes the stored object.
type redisStored struct {
	size   int64
	sha256 string
}

// redisStoreError marks an error of Store.Put as the cause of a failed dump.
type redisStoreError struct{ err error }

func (e *redisStoreError) Error() string { return e.err.Error() }
func (e *redisStoreError) Unwrap() error { return e.err }

// storeRDB streams the RDB payload through the scanner and zstd into
// Store.Put and returns what the scan found and what was stored.
//
// contract: the payload goes through an io.Pipe straight into Put; both ends
// are closed with the first error, so a failed scan (truncated, corrupt) or
// transfer makes Put fail and leave nothing, and a failed Put stops the
// transfer (cancel closes the connection). The pipe is closed without error
// only after the scanner has seen the RDB's checksum match and the compressor
// has flushed.
func (r *Redis) storeRDB(ctx context.Context, cancel context.CancelCauseFunc, payload io.Reader, key string, sizeHint int64, hb *redisHeartbeat) (rdbSummary, redisStored, error) {
	pr, pw := io.Pipe()
	type putResult struct {
		n   int64
		err error
	}
	putDone := make(chan putResult, 1)
	go func() {
		contentType := "application/zstd"
		if r.Age.Encrypts() {
			contentType = "application/octet-stream" // an age file
		}
		n, err := r.Store.Put(ctx, key, pr, store.PutOptions{
			ContentType: contentType,
			SizeHint:    sizeHint, // the raw size bounds the compressed one closely enough
			Progress:    hb.stored,
		})
		if err != nil {
			cancel(err)
			pr.CloseWithError(err)
		} else {
			pr.Close()
		}
		putDone <- putResult{n, err}
	}()

	in := &redisCountReader{r: payload, hb: hb}
	sum, out, err := redisCompressScan(pw, in, r.Age)
	if err != nil {
		pw.CloseWithError(err)
	} else {
		hb.beat("upload", true)
		pw.Close()
	}
	res := <-putDone
	switch {
	case res.err != nil && (err == nil || !errors.Is(res.err, err)):
		// The store failed on its own; the transfer error, if any, is the
		// consequence (closed pipe or connection).
		return sum, out, &redisStoreError{res.err}
	case err != nil:
		return sum, out, err
	case res.n != out.size:
		return sum, out, &redisStoreError{fmt.Errorf("stored %d bytes, compressed %d", res.n, out.size)}
	}
	return sum, out, nil
}

// redisCompressScan reads the RDB from src, scans it and writes its zstd
// compression to dst — encrypted with age when keys encrypt — hashing what it
// writes. It reads src to its end: bytes after the RDB's checksum are an error
// (scanRDB). dst is not closed; on error the age file is left unfinished.
func redisCompressScan(dst io.Writer, src io.Reader, keys *AgeKeys) (rdbSummary, redisStored, error) {
	h := sha256.New()
	out := &redisHashWriter{w: dst, h: h}
	sealed, finish, err := keys.seal(out)
	if err != nil {
		return rdbSummary{}, redisStored{}, err
	}
	enc, err := zstd.NewWriter(sealed,
		zstd.WithEncoderLevel(zstd.SpeedDefault),
		zstd.WithEncoderConcurrency(min(runtime.GOMAXPROCS(0), 4)),
		// Sections compressed in parallel into one frame; without it a stream
		// compresses on one goroutine whatever the concurrency.
		zstd.WithConcurrentBlocks(true),
	)
	if err != nil {
		return rdbSummary{}, redisStored{}, fmt.Errorf("zstd: %w", err)
	}
	sum, err := scanRDB(io.TeeReader(src, &redisSinkWriter{w: enc}))
	if err != nil {
		// Stop the encoder without compressing what it still holds (Close
		// would): its output is dropped and its goroutines end. The pipe's
		// reader learns of err from the caller.
		out.aborted.Store(true)
		enc.Reset(io.Discard)
		return sum, redisStored{}, err
	}
	if err := enc.Close(); err != nil {
		return sum, redisStored{}, fmt.Errorf("zstd: %w", err)
	}
	if err := finish(); err != nil {
		return sum, redisStored{}, err
	}
	return sum, redisStored{size: out.n, sha256: hex.EncodeToString(h.Sum(nil))}, nil
}

// redisSinkWriter tags errors of the compressor's side of the tee, so that a
// failed write is not taken for a failed read of Redis.
type redisSinkWriter struct{ w io.Writer }

func (s *redisSinkWriter) Write(p []byte) (int, error) {
	n, err := s.w.Write(p)
	if err != nil {
		err = fmt.Errorf("compress: %w", err)
	}
	return n, err
}

// redisHashWriter counts and hashes what it passes on. Once aborted it
// passes nothing on.
type redisHashWriter struct {
	w       io.Writer
	h       hash.Hash
	n       int64
	aborted atomic.Bool
}

var errRedisAborted = errors.New("aborted")

func (w *redisHashWriter) Write(p []byte) (int, error) {
	if w.aborted.Load() {
		return 0, errRedisAborted
	}
	n, err := w.w.Write(p)
	w.h.Write(p[:n])
	w.n += int64(n)
	return n, err
}

// redisCountReader counts the RDB bytes received, for heartbeats.
type redisCountReader struct {
	r  io.Reader
	hb *redisHeartbeat
}

func (c *redisCountReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.hb.rdb.Add(int64(n))
		c.hb.beat("transfer", false)
	}
	return n, err
}

// redisHeartbeatEvery is the shortest interval between two progress
// heartbeats of DumpRDB (the SDK batches them further by the heartbeat
// timeout); a variable so that tests can see every phase.
var redisHeartbeatEvery = time.Second

// redisHeartbeat records DumpRDB's progress as heartbeats, at most one per
// interval unless forced. It is safe for concurrent use: the transfer and the
// store's Progress callback both report.
type redisHeartbeat struct {
	ctx   context.Context
	every time.Duration
	rdb   atomic.Int64
	store atomic.Int64

	mu    sync.Mutex
	phase string
	last  time.Time
}

func (h *redisHeartbeat) beat(phase string, force bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if phase != "" {
		h.phase = phase
	}
	now := time.Now()
	if !force && now.Sub(h.last) < h.every {
		return
	}
	h.last = now
	activity.RecordHeartbeat(h.ctx, RDBProgress{Phase: h.phase, RDBBytes: h.rdb.Load(), StoredBytes: h.store.Load()})
}

func (h *redisHeartbeat) stored(n int64) {
	h.store.Store(n)
	h.beat("", false)
}

// ---- errors ----

// redisServerError is an error reply of Redis to one of our commands, with
// any copy of the password removed.
type redisServerError struct {
	cmd string // the command, e.g. "AUTH", "SYNC"
	msg string // the reply without "-"
}

func (e *redisServerError) Error() string { return e.cmd + ": " + e.msg }

// code is the reply's first word: ERR, WRONGPASS, NOAUTH, NOPERM …
func (e *redisServerError) code() string {
	code, _, _ := strings.Cut(e.msg, " ")
	return code
}

// redisAuthError is a refusal of the credentials.
type redisAuthError struct{ err error }

func (e *redisAuthError) Error() string { return e.err.Error() }
func (e *redisAuthError) Unwrap() error { return e.err }

// redisSyncForbiddenError: neither SYNC nor PSYNC is allowed.
type redisSyncForbiddenError struct{ sync, psync *redisServerError }

func (e *redisSyncForbiddenError) Error() string {
	return fmt.Sprintf("Redis refuses replication (%v; %v), which drflow needs to stream the RDB without access to the Redis host. "+
		"Grant the backup user +sync +psync +replconf, or back this instance up on its host instead: "+
		"a drflow worker on the host's task queue copying dump.rdb after BGSAVE, or the provider's snapshot export (docs/redis-backup.md)",
		e.sync, e.psync)
}

// redisClassify turns an error of the handshake or the transfer into the
// activity's error: non-retryable for credentials, a forbidden SYNC and an
// unsupported RDB; wrapped and retryable for everything else.
func redisClassify(ctx context.Context, where string, err error) error {
	var (
		auth   *redisAuthError
		forbid *redisSyncForbiddenError
	)
	switch {
	case errors.As(err, &auth):
		return NonRetryable(ErrRedisAuth, fmt.Errorf("%s: %w", where, err))
	case errors.As(err, &forbid):
		return NonRetryable(ErrRedisSyncForbidden, fmt.Errorf("%s: %w", where, err))
	case errors.Is(err, errRDBUnsupported):
		return NonRetryable(ErrRedisRDBUnsupported, fmt.Errorf("%s: %w", where, err))
	case errors.Is(err, errRDBCorrupt), errors.Is(err, errRDBTruncated):
		return fmt.Errorf("%s: RDB transfer invalid, retrying takes a new snapshot: %w", where, err)
	}
	return redisConnErr(ctx, where, "transfer", err)
}

// redisConnErr wraps a connection error; when the activity's context ended,
// that is the error.
func redisConnErr(ctx context.Context, where, step string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %s: %w", where, step, context.Cause(ctx))
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%s: %s: connection closed by Redis: %w", where, step, err)
	}
	return fmt.Errorf("%s: %s: %w", where, step, err)
}

// ---- the replication handshake ----

// redisConn is one connection speaking RESP, with a read deadline renewed
// before every read.
type redisConn struct {
	conn    net.Conn
	rd      *bufio.Reader
	timeout time.Duration
	secret  string // removed from every server message we keep
	once    sync.Once
}

func (r *Redis) dial(ctx context.Context) (*redisConn, error) {
	d := net.Dialer{Timeout: r.dialTimeout(), KeepAlive: 15 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", r.Config.Addr)
	if err != nil {
		return nil, err
	}
	c := &redisConn{conn: conn, timeout: r.dialTimeout(), secret: r.Config.Password.Reveal()}
	c.rd = bufio.NewReaderSize(redisDeadlineReader{c}, 256<<10)
	return c, nil
}

func (c *redisConn) close() { c.once.Do(func() { _ = c.conn.Close() }) }

// redisDeadlineReader renews the read deadline before each read of the
// connection, so a stalled server is noticed within the timeout.
type redisDeadlineReader struct{ c *redisConn }

func (d redisDeadlineReader) Read(p []byte) (int, error) {
	if err := d.c.conn.SetReadDeadline(time.Now().Add(d.c.timeout)); err != nil {
		return 0, err
	}
	return d.c.conn.Read(p)
}

// send writes one command as a RESP array (binary-safe, so a password may
// hold spaces).
func (c *redisConn) send(args ...string) error {
	var b bytes.Buffer
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if err := c.conn.SetWriteDeadline(time.Now().Add(c.timeout)); err != nil {
		return err
	}
	_, err := c.conn.Write(b.Bytes())
	return err
}

// line reads one reply line without its CRLF.
func (c *redisConn) line() (string, error) {
	s, err := c.rd.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		return "", errors.New("protocol error: reply line too long")
	}
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(s), "\r\n"), nil
}

// do sends a command and reads its reply: the text of a simple, integer or
// bulk reply, or a *redisServerError for an error reply. Arrays are not
// needed by the handshake.
func (c *redisConn) do(args ...string) (string, error) {
	if err := c.send(args...); err != nil {
		return "", err
	}
	s, err := c.line()
	if err != nil {
		return "", err
	}
	if s == "" {
		return "", errors.New("protocol error: empty reply")
	}
	switch s[0] {
	case '+', ':':
		return s[1:], nil
	case '-':
		return "", c.serverError(args[0], s[1:])
	case '$':
		n, err := strconv.Atoi(s[1:])
		if err != nil || n > 16<<20 {
			return "", fmt.Errorf("protocol error: bulk length %q", s[1:])
		}
		if n < 0 {
			return "", nil
		}
		b := make([]byte, n+2)
		if _, err := io.ReadFull(c.rd, b); err != nil {
			return "", err
		}
		return string(b[:n]), nil
	}
	return "", fmt.Errorf("protocol error: unexpected reply %q to %s", redisQuote(s), args[0])
}

func (c *redisConn) serverError(cmd, msg string) *redisServerError {
	if c.secret != "" {
		msg = strings.ReplaceAll(msg, c.secret, "**redacted**")
	}
	// "unknown command" replies echo the first arguments, which for AUTH
	// are the credentials, possibly cut short where ReplaceAll cannot see them.
	if i := strings.Index(msg, ", with args beginning with:"); i >= 0 {
		msg = msg[:i]
	}
	return &redisServerError{cmd: cmd, msg: msg}
}

// handshake authenticates and reads the server version: "redis 7.0.15",
// "valkey 8.0.1", or "" if INFO is not allowed.
func (c *redisConn) handshake(user, password string) (string, error) {
	if password != "" || user != "" {
		args := []string{"AUTH", password}
		if user != "" {
			args = []string{"AUTH", user, password}
		}
		if _, err := c.do(args...); err != nil {
			var se *redisServerError
			if errors.As(err, &se) && !redisTransient(se) {
				return "", &redisAuthError{err}
			}
			return "", err
		}
	}
	info, err := c.do("INFO", "server")
	version := ""
	var se *redisServerError
	switch {
	case err == nil:
		version = redisInfoVersion(info)
	case !errors.As(err, &se):
		return "", err
	case se.code() == "NOAUTH":
		return "", &redisAuthError{fmt.Errorf("%w (no password is configured: DRFLOW_REDIS_PASSWORD)", se)}
	case redisTransient(se):
		return "", err
	default:
		// INFO denied or renamed: the version comes from the RDB instead.
	}
	// Like redis-cli: the capabilities are requests, a server that does not
	// know one answers in the format it does know.
	for _, args := range [][]string{{"REPLCONF", "capa", "eof"}, {"REPLCONF", "rdb-only", "1"}} {
		if _, err := c.do(args...); err != nil && !errors.As(err, &se) {
			return "", err
		}
	}
	return version, nil
}

// redisTransient tells error replies that a later attempt may not get.
func redisTransient(se *redisServerError) bool {
	switch se.code() {
	case "LOADING", "BUSY", "MASTERDOWN", "NOMASTERLINK", "TRYAGAIN", "CLUSTERDOWN":
		return true
	}
	return false
}

// redisRefused tells replies that mean "this command is not for you".
func redisRefused(se *redisServerError) bool {
	if se.code() == "NOPERM" {
		return true
	}
	m := strings.ToLower(se.msg)
	for _, s := range []string{"unknown command", "not allowed", "not permitted", "disabled", "not supported", "unsupported", "not available"} {
		if strings.Contains(m, s) {
			return true
		}
	}
	return false
}

func redisInfoVersion(info string) string {
	fields := map[string]string{}
	for _, l := range strings.Split(info, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(l), ":"); ok {
			fields[k] = v
		}
	}
	if v := fields["valkey_version"]; v != "" {
		return "valkey " + v
	}
	if v := fields["redis_version"]; v != "" {
		return "redis " + v
	}
	return ""
}

// sync asks for a full resynchronization and returns a reader of exactly the
// RDB payload and its size (-1 in the diskless EOF-marker format). waiting
// is called for each newline Redis sends while it prepares the snapshot.
func (c *redisConn) sync(waiting func()) (io.Reader, int64, error) {
	payload, size, err := c.startSync(waiting, "SYNC")
	var syncErr *redisServerError
	if !errors.As(err, &syncErr) || !redisRefused(syncErr) {
		return payload, size, err
	}
	payload, size, err = c.startSync(waiting, "PSYNC", "?", "-1")
	var psyncErr *redisServerError
	if errors.As(err, &psyncErr) && redisRefused(psyncErr) {
		return nil, 0, &redisSyncForbiddenError{sync: syncErr, psync: psyncErr}
	}
	return payload, size, err
}

func (c *redisConn) startSync(waiting func(), args ...string) (io.Reader, int64, error) {
	if err := c.send(args...); err != nil {
		return nil, 0, err
	}
	for {
		s, err := c.line()
		if err != nil {
			return nil, 0, err
		}
		switch {
		case s == "":
			waiting() // keepalive newline
		case strings.HasPrefix(s, "+FULLRESYNC "):
			// PSYNC's answer; the payload follows.
		case s[0] == '-':
			se := c.serverError(args[0], s[1:])
			if se.code() == "NOAUTH" {
				return nil, 0, &redisAuthError{fmt.Errorf("%w (no password is configured: DRFLOW_REDIS_PASSWORD)", se)}
			}
			return nil, 0, se
		case strings.HasPrefix(s, "$EOF:"):
			mark := s[len("$EOF:"):]
			if len(mark) != redisEOFMarkLen {
				return nil, 0, fmt.Errorf("protocol error: EOF mark of %d bytes", len(mark))
			}
			return newRedisEOFMarkReader(c.rd, []byte(mark)), -1, nil
		case s[0] == '$':
			n, err := strconv.ParseInt(s[1:], 10, 64)
			if err != nil || n < 0 {
				return nil, 0, fmt.Errorf("protocol error: RDB length %q", redisQuote(s[1:]))
			}
			return &redisExactReader{r: c.rd, n: n}, n, nil
		default:
			return nil, 0, fmt.Errorf("protocol error: unexpected reply %q to %s", redisQuote(s), args[0])
		}
	}
}

func redisQuote(s string) string {
	if len(s) > 64 {
		s = s[:64] + "…"
	}
	return s
}

// redisEOFMarkLen is the length of the diskless transfer's end mark
// (RDB_EOF_MARK_SIZE).
const redisEOFMarkLen = 40

// redisExactReader reads exactly n bytes: the RDB of a "$<n>" transfer. An
// end of the connection before them is io.ErrUnexpectedEOF.
type redisExactReader struct {
	r io.Reader
	n int64
}

func (e *redisExactReader) Read(p []byte) (int, error) {
	if e.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > e.n {
		p = p[:e.n]
	}
	n, err := e.r.Read(p)
	e.n -= int64(n)
	if err == io.EOF && e.n > 0 {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// redisEOFMarkReader reads a diskless transfer: the RDB followed by the
// 40-byte mark announced in "$EOF:<mark>". It returns the bytes before the
// mark, then io.EOF, and never reads the connection past the read in which
// the mark ends. An end of the connection before the mark is
// io.ErrUnexpectedEOF.
type redisEOFMarkReader struct {
	src  io.Reader
	mark []byte
	buf  []byte
	r, w int // pending bytes: buf[r:w]
	done bool
	err  error
}

func newRedisEOFMarkReader(src io.Reader, mark []byte) *redisEOFMarkReader {
	return &redisEOFMarkReader{src: src, mark: mark, buf: make([]byte, 256<<10)}
}

func (m *redisEOFMarkReader) Read(p []byte) (int, error) {
	for {
		avail := m.w - m.r
		if !m.done {
			avail -= len(m.mark) - 1 // may be the start of the mark
		}
		if avail > 0 {
			n := copy(p, m.buf[m.r:m.r+avail])
			m.r += n
			return n, nil
		}
		if m.done {
			return 0, io.EOF
		}
		if m.err != nil {
			if m.err == io.EOF {
				return 0, io.ErrUnexpectedEOF
			}
			return 0, m.err
		}
		if m.r > 0 {
			m.w = copy(m.buf, m.buf[m.r:m.w])
			m.r = 0
		}
		from := max(m.w-len(m.mark)+1, 0)
		n, err := m.src.Read(m.buf[m.w:])
		m.w += n
		m.err = err
		if i := bytes.Index(m.buf[from:m.w], m.mark); i >= 0 {
			m.w = from + i
			m.done = true
		}
	}
}
