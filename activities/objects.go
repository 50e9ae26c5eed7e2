package activities

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"go.temporal.io/sdk/activity"
	"golang.org/x/sync/errgroup"

	"github.com/kohakku/drflow/internal/config"
	"github.com/kohakku/drflow/internal/profile"
	"github.com/kohakku/drflow/internal/store"
	"github.com/kohakku/drflow/schemas"
)

// DefaultObjectsConcurrency is how many objects Mirror copies at a time when
// Objects.Concurrency is zero.
const DefaultObjectsConcurrency = 16

// Error types of the non-retryable errors raised by Objects. Each message names
// the bucket (and the setting to fix, where there is one). Permanent backup
// store errors are ErrStore, as in the other activities.
const (
	// ErrBucketNotFound: the source bucket does not exist on the app's MinIO.
	ErrBucketNotFound = "BucketNotFound"
	// ErrBucketAccessDenied: the app's MinIO key may not list or read the bucket.
	ErrBucketAccessDenied = "BucketAccessDenied"
	// ErrMinIOCredentials: the app's MinIO rejected the access key or secret key.
	ErrMinIOCredentials = "MinIOCredentials"
	// ErrUnmirrorableKey: a source key cannot be stored in the backup store (an
	// empty or "." segment, a control character …). Every other object was
	// copied before the error was raised.
	ErrUnmirrorableKey = "UnmirrorableKey"
)

// Objects holds the activities on the app's MinIO: the incremental mirror
// into the backup store.
type Objects struct {
	// Client of the app's MinIO. Its transport should keep at least
	// Concurrency idle connections per host (NewMinIOClient does).
	Client *minio.Client
	// Store is the backup store the mirror and the listings are written to.
	Store store.Store
	// Concurrency bounds the objects copied at a time (default
	// DefaultObjectsConcurrency).
	Concurrency int
	// Classes returns the object classes of a bucket a "needed" restore brings back, in order
	// (from the application profile). nil: no classes, so scope "needed" restores nothing and "all" everything.
	Classes func(ctx context.Context, bucket string) ([]profile.ObjectClass, error)
	// Age encrypts the listings Mirror writes to its recipients and decrypts
	// stored ones with its identities; nil does neither. The mirrored
	// objects themselves are never encrypted (MirrorResult.Encryption).
	Age *AgeKeys
}

// NewObjects returns the Objects activities for the app's MinIO in cfg,
// mirroring into st with DefaultObjectsConcurrency copies at a time.
func NewObjects(cfg config.MinIO, st store.Store) (*Objects, error) {
	c, err := NewMinIOClient(cfg, DefaultObjectsConcurrency)
	if err != nil {
		return nil, err
	}
	return &Objects{Client: c, Store: st, Concurrency: DefaultObjectsConcurrency}, nil
}

// NewMinIOClient returns a minio-go client for cfg whose transport keeps
// enough idle connections for conc parallel transfers: minio-go's default
// keeps 16 per host, and every connection closed for lack of room is a new
// TCP (and TLS) handshake on the next small object. It makes no request.
func NewMinIOClient(cfg config.MinIO, conc int) (*minio.Client, error) {
	if cfg.Endpoint == "" {
		return nil, errors.New("minio: no endpoint (DRFLOW_MINIO_ENDPOINT)")
	}
	tr, err := minio.DefaultTransport(cfg.Secure)
	if err != nil {
		return nil, fmt.Errorf("minio %s: transport: %w", cfg.Endpoint, err)
	}
	idle := max(2*conc, 32)
	tr.MaxIdleConns = max(tr.MaxIdleConns, 2*idle)
	tr.MaxIdleConnsPerHost = idle
	tr.IdleConnTimeout = 90 * time.Second
	tr.DialContext = (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	// A server that accepted a request and stopped answering is given up on;
	// the Temporal retry resumes from the heartbeated cursor.
	tr.ResponseHeaderTimeout = 2 * time.Minute
	c, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds:     credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey.Reveal(), ""),
		Secure:    cfg.Secure,
		Transport: tr,
		// A few quick retries inside a request (minio-go's default is 10),
		// so a dead endpoint fails the step within seconds and the Temporal
		// retry policy takes over, as the backup store does.
		MaxRetries: 3,
	})
	if err != nil {
		// minio.New's errors hold the endpoint at most, never the keys.
		return nil, fmt.Errorf("minio %s: %w (DRFLOW_MINIO_ENDPOINT)", cfg.Endpoint, err)
	}
	return c, nil
}

// MirrorInput says which bucket to mirror where.
type MirrorInput struct {
	// SetID is the backup set the listing belongs to; it names the default
	// ListingKey.
	SetID string `json:"setId"`
	// Bucket of the app's MinIO to mirror (default "kohakku").
	Bucket string `json:"bucket"`
	// Prefix in the backup store the mirror lives under, ending in "/"
	// (default "mirror/<bucket>/"). Source key k is stored at Prefix+k.
	Prefix string `json:"prefix"`
	// ListingKey is where the source listing is written (default
	// "sets/<setId>/objects/<bucket>.jsonl.zst"). It must not be under Prefix.
	ListingKey string `json:"listingKey"`
}

// MirrorProgress is Mirror's heartbeat detail. On a retry Mirror skips the
// source keys up to Cursor and continues the counts.
type MirrorProgress struct {
	// Cursor is the greatest source key such that every key up to it is
	// copied or was up to date ("" before the first).
	Cursor string `json:"cursor"`
	// Copied and CopiedBytes count the copies finished so far, over all
	// attempts.
	Copied      int64 `json:"copied"`
	CopiedBytes int64 `json:"copiedBytes"`
}

// ListedObject is one line of a mirror listing: a source object as listed
// when the mirror ran.
type ListedObject struct {
	Key          string    `json:"key"`
	Size         int64     `json:"size"`
	ETag         string    `json:"etag"`
	LastModified time.Time `json:"lastModified"`
}

// ReadListing decodes an unencrypted listing written by Mirror
// (zstd-compressed JSON lines) from r and calls fn for each object, in key
// order. An fn error stops the walk and is returned unchanged. Listings that
// may be encrypted are read with readListing.
func ReadListing(r io.Reader, fn func(ListedObject) error) error {
	return (*AgeKeys)(nil).readListing(r, Artifact{Kind: KindListing, Compression: CompressionZstd, Encryption: EncryptionNone}, fn)
}

// readListing is ReadListing of the listing artifact lst, whose stored bytes
// r yields: decrypted with k when lst is encrypted (openArtifact). An
// encrypted listing k cannot decrypt is AgeKeyError's error, returned as it
// is; the decoder reads r in the caller's goroutine.
func (k *AgeKeys) readListing(r io.Reader, lst Artifact, fn func(ListedObject) error) error {
	zr, closeDec, err := k.openArtifact(r, lst, zstd.WithDecoderConcurrency(1))
	if kerr := AgeKeyError(err); kerr != nil {
		return kerr
	}
	if err != nil {
		return fmt.Errorf("read listing: %w", err)
	}
	defer closeDec()
	dec := json.NewDecoder(zr)
	for line := 1; ; line++ {
		var obj ListedObject
		if err := dec.Decode(&obj); err == io.EOF {
			return nil
		} else if err != nil {
			return fmt.Errorf("read listing: object %d: %w", line, err)
		}
		if err := fn(obj); err != nil {
			return err
		}
	}
}

// heartbeatEvery is how often Mirror records its progress; the SDK batches
// the heartbeats it actually sends by the activity's heartbeat timeout.
const heartbeatEvery = time.Second

// Mirror copies the new and changed objects of a bucket of the app's MinIO
// into the backup store under in.Prefix, like `mc mirror` without --remove:
// objects deleted at the source stay in the mirror.
//
// It lists the source bucket and the mirror (both in key order) and
// merge-joins the two listings, so deciding what to copy costs no request
// per object. An object is copied when the mirror has no copy, the sizes
// differ, or the source was modified after the copy was stored (as mc
// does: a same-size rewrite is caught by comparing the source's clock with
// the store's, so the two must not drift apart by more than the time between
// a copy and a rewrite). Copies
// stream from GetObject into Store.Put, Concurrency at a time; each is
// idempotent. Mirror heartbeats MirrorProgress and on a retry skips the keys
// up to its cursor. The source listing (ListedObject per line, JSON,
// zstd-compressed) is written to in.ListingKey once every copy has
// succeeded, so a listing in the store means its mirror run completed.
//
// Errors: a missing source bucket, a denied key or rejected credentials are
// non-retryable (ErrBucketNotFound, ErrBucketAccessDenied,
// ErrMinIOCredentials), as are permanent backup store errors (ErrStore);
// network faults are returned for the retry policy.
func (o *Objects) Mirror(ctx context.Context, in MirrorInput) (MirrorResult, error) {
	started := time.Now()
	in, err := in.withDefaults()
	if err != nil {
		return MirrorResult{}, NonRetryable(ErrInvalidInput, err)
	}
	res := MirrorResult{Bucket: in.Bucket, Prefix: in.Prefix, Encryption: EncryptionNone}
	if o.Client == nil || o.Store == nil {
		return res, NonRetryable(ErrInvalidInput, fmt.Errorf("mirror %s: objects activities built without a MinIO client or a backup store", in.Bucket))
	}
	conc := o.Concurrency
	if conc <= 0 {
		conc = DefaultObjectsConcurrency
	}

	var resume MirrorProgress
	if activity.HasHeartbeatDetails(ctx) {
		if err := activity.GetHeartbeatDetails(ctx, &resume); err != nil {
			return res, fmt.Errorf("mirror %s: read heartbeat: %w", in.Bucket, err)
		}
	}
	log := activity.GetLogger(ctx)
	log.Info("mirror", "bucket", in.Bucket, "prefix", in.Prefix, "set", in.SetID,
		"resumeCursor", resume.Cursor, "concurrency", conc)

	// Ends the listing and upload goroutines on every return.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	prog := newMirrorTracker(resume)
	hbDone := make(chan struct{})
	var hbWG sync.WaitGroup
	hbWG.Go(func() {
		t := time.NewTicker(heartbeatEvery)
		defer t.Stop()
		for {
			select {
			case <-hbDone:
				return
			case <-t.C:
				activity.RecordHeartbeat(ctx, prog.progress())
			}
		}
	})
	stopHeartbeat := sync.OnceFunc(func() { close(hbDone); hbWG.Wait() })
	defer stopHeartbeat()

	lw := o.startListing(ctx, in.ListingKey)
	// Until the listing is committed, any return aborts its Put: a failed
	// run leaves no listing behind.
	committed := false
	defer func() {
		if !committed {
			lw.abort(errors.New("mirror failed"))
		}
	}()

	mirror := startMirrorList(ctx, o.Store, in.Prefix)
	defer mirror.stop()

	// A fixed set of workers rather than a goroutine per object: each copy
	// runs deep minio-go and AWS SDK call stacks, and a new goroutine grows
	// (copies) its stack up to that depth every time.
	jobs := make(chan copyJob)
	g, gctx := errgroup.WithContext(ctx)
	core := minio.Core{Client: o.Client}
	for range conc {
		g.Go(func() error {
			for j := range jobs {
				n, copied, err := o.copyObject(gctx, core, in.Bucket, in.Prefix, j.key, j.size)
				if err != nil {
					return err
				}
				prog.finish(j.p, n, copied)
			}
			return nil
		})
	}
	var (
		badKeys []string
		markers int
		prevKey string
		listErr error
		owner   = false
	)
	// gctx ends the listing goroutine: errgroup cancels it when Wait returns.
	src := o.Client.ListObjects(gctx, in.Bucket, minio.ListObjectsOptions{
		Recursive:  true,
		FetchOwner: &owner,
	})
	for obj := range src {
		if obj.Err != nil {
			listErr = mirrorSourceErr(in.Bucket, "list", obj.Err)
			break
		}
		if gctx.Err() != nil {
			break // a copy failed; g.Wait says why
		}
		if prevKey != "" && obj.Key <= prevKey {
			listErr = fmt.Errorf("mirror %s: list: source listing out of order (%q after %q)", in.Bucket, obj.Key, prevKey)
			break
		}
		prevKey = obj.Key
		if obj.Size == 0 && strings.HasSuffix(obj.Key, "/") {
			// A folder marker (made by consoles): no data, and no valid
			// store key. Left out of the mirror and the listing.
			markers++
			continue
		}
		res.Objects++
		res.Bytes += obj.Size
		if err := lw.add(ListedObject{Key: obj.Key, Size: obj.Size, ETag: obj.ETag, LastModified: obj.LastModified.UTC()}); err != nil {
			listErr = mirrorStoreErr(in.Bucket, "write listing "+in.ListingKey, err)
			break
		}
		if resume.Cursor != "" && obj.Key <= resume.Cursor {
			continue // done by an earlier attempt
		}
		if err := store.CheckKey(in.Prefix + obj.Key); err != nil {
			badKeys = append(badKeys, obj.Key)
			prog.skip(obj.Key)
			continue
		}
		have, ok, err := mirror.find(obj.Key)
		if err != nil {
			listErr = mirrorStoreErr(in.Bucket, "list the mirror", err)
			break
		}
		if ok && have.Size == obj.Size && !obj.LastModified.After(have.ModTime) {
			prog.skip(obj.Key)
			continue
		}
		j := copyJob{key: obj.Key, size: obj.Size, p: prog.start(obj.Key)}
		select {
		case jobs <- j:
		case <-gctx.Done():
		}
	}
	close(jobs)
	// A failed copy cancels gctx, which may surface in the listing as well:
	// the copy's error is the cause. Either is returned as is, so that a
	// non-retryable application error stays one.
	if err := g.Wait(); err != nil {
		return res, err
	}
	if listErr != nil {
		return res, listErr
	}
	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("mirror %s: %w", in.Bucket, context.Cause(ctx))
	}
	// Every copy is done: the cursor is the last key, for a retry that only
	// has the listing left to write.
	stopHeartbeat()
	final := prog.progress()
	activity.RecordHeartbeat(ctx, final)
	res.Copied, res.CopiedBytes = final.Copied, final.CopiedBytes

	if len(badKeys) > 0 {
		return res, NonRetryable(ErrUnmirrorableKey, fmt.Errorf(
			"mirror %s: %d source keys cannot be stored in the backup store under %q (first: %q); every other object was copied",
			in.Bucket, len(badKeys), in.Prefix, badKeys[0]))
	}

	c, err := lw.commit()
	committed = true // ended, either way
	if err != nil {
		return res, mirrorStoreErr(in.Bucket, "write listing "+in.ListingKey, err)
	}
	res.Listing = Artifact{
		Kind:        KindListing,
		Source:      in.Bucket,
		Key:         in.ListingKey,
		Size:        c.Size,
		RawSize:     c.RawSize,
		SHA256:      c.SHA256,
		Compression: CompressionZstd,
		Objects:     res.Objects,
		ObjectBytes: res.Bytes,
		StartedAt:   started.UTC(),
		Duration:    time.Since(started),
	}
	o.Age.stamp(&res.Listing)
	art := res.Listing
	log.Info("mirrored", "bucket", in.Bucket, "objects", res.Objects, "bytes", res.Bytes,
		"copied", res.Copied, "copiedBytes", res.CopiedBytes, "folderMarkers", markers,
		"duration", art.Duration)
	return res, nil
}

func (in MirrorInput) withDefaults() (MirrorInput, error) {
	if in.Bucket == "" {
		in.Bucket = schemas.DefaultBucket
	}
	if in.Prefix == "" {
		in.Prefix = "mirror/" + in.Bucket + "/"
	}
	if in.ListingKey == "" {
		if in.SetID == "" {
			return in, fmt.Errorf("mirror %s: set setId or listingKey: the listing needs a key", in.Bucket)
		}
		in.ListingKey = "sets/" + in.SetID + "/objects/" + in.Bucket + ".jsonl.zst"
	}
	if !strings.HasSuffix(in.Prefix, "/") {
		return in, fmt.Errorf("mirror %s: prefix %q must end with /", in.Bucket, in.Prefix)
	}
	if err := store.CheckKey(in.Prefix + "x"); err != nil {
		return in, fmt.Errorf("mirror %s: prefix %q: %w", in.Bucket, in.Prefix, err)
	}
	if err := store.CheckKey(in.ListingKey); err != nil {
		return in, fmt.Errorf("mirror %s: listing key: %w", in.Bucket, err)
	}
	if strings.HasPrefix(in.ListingKey, in.Prefix) {
		return in, fmt.Errorf("mirror %s: listing key %q is inside the mirror prefix %q", in.Bucket, in.ListingKey, in.Prefix)
	}
	return in, nil
}

type copyJob struct {
	key  string
	size int64
	p    *pendingCopy
}

// copyObject streams one object from the source into the mirror and returns
// its size. An object deleted since it was listed is skipped (copied false):
// the next run's listing no longer has it.
func (o *Objects) copyObject(ctx context.Context, core minio.Core, bucket, prefix, key string, size int64) (n int64, copied bool, err error) {
	// Core.GetObject makes the one GET and returns its body; minio.Object
	// would add a goroutine and a Stat per object.
	body, info, _, err := core.GetObject(ctx, bucket, key, minio.GetObjectOptions{})
	if err != nil {
		if minio.ToErrorResponse(err).Code == "NoSuchKey" {
			activity.GetLogger(ctx).Info("mirror: object deleted since listed", "bucket", bucket, "key", key)
			return 0, false, nil
		}
		return 0, false, mirrorSourceErr(bucket, "get "+key, err)
	}
	defer body.Close()
	hint := info.Size
	if hint <= 0 {
		hint = size
	}
	n, err = o.Store.Put(ctx, prefix+key, body, store.PutOptions{ContentType: info.ContentType, SizeHint: hint})
	if err != nil {
		return 0, false, mirrorStoreErr(bucket, "copy "+key, err)
	}
	if info.Size >= 0 && n != info.Size {
		// A body that ended early without an error: the stored copy is short
		// (and has a newer time than the source), so fail the step; the retry
		// copies the object again only if its size still differs, which it does.
		return 0, false, fmt.Errorf("mirror %s: copy %s: read %d of %d bytes", bucket, key, n, info.Size)
	}
	return n, true, nil
}

// sourceError classifies an error of the app's MinIO.
func mirrorSourceErr(bucket, op string, err error) error {
	wrapped := fmt.Errorf("mirror %s: %s: %w", bucket, op, err)
	switch minio.ToErrorResponse(err).Code {
	case "NoSuchBucket":
		return NonRetryable(ErrBucketNotFound, fmt.Errorf("mirror: bucket %q does not exist on the app's MinIO (DRFLOW_MINIO_BUCKETS): %w", bucket, err))
	case "AccessDenied", "AllAccessDisabled", "AccountProblem":
		return NonRetryable(ErrBucketAccessDenied, fmt.Errorf("mirror: access to bucket %q is denied; the app's MinIO key needs s3:ListBucket and s3:GetObject (DRFLOW_MINIO_ACCESS_KEY): %w", bucket, err))
	case "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken":
		return NonRetryable(ErrMinIOCredentials, fmt.Errorf("mirror: the app's MinIO rejected the credentials for bucket %q (DRFLOW_MINIO_ACCESS_KEY, DRFLOW_MINIO_SECRET_KEY): %w", bucket, err))
	case "InvalidBucketName":
		return NonRetryable(ErrInvalidInput, fmt.Errorf("mirror: %q is not a valid bucket name: %w", bucket, err))
	}
	return wrapped
}

// storeError classifies an error of the backup store.
func mirrorStoreErr(bucket, op string, err error) error {
	wrapped := fmt.Errorf("mirror %s: %s: %w", bucket, op, err)
	if store.IsPermanent(err) {
		return NonRetryable(ErrStore, wrapped)
	}
	return wrapped
}

// mirrorTracker keeps the heartbeat cursor of parallel copies: the greatest
// key such that every key up to it is done. Keys arrive in order; a copy
// finishing out of order moves the cursor only once every earlier key is
// done.
type mirrorTracker struct {
	mu      sync.Mutex
	pending []*pendingCopy // started copies in key order; pending[0] is not done
	last    string         // greatest key handed out
	cur     MirrorProgress
}

type pendingCopy struct {
	key  string
	prev string // greatest key handed out before this one
	done bool
}

func newMirrorTracker(resume MirrorProgress) *mirrorTracker {
	return &mirrorTracker{last: resume.Cursor, cur: resume}
}

// skip records key as done without a copy.
func (t *mirrorTracker) skip(key string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.last = key
	if len(t.pending) == 0 {
		t.cur.Cursor = key
	}
}

// start records that key is being copied.
func (t *mirrorTracker) start(key string) *pendingCopy {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := &pendingCopy{key: key, prev: t.last}
	t.last = key
	t.pending = append(t.pending, p)
	return p
}

// finish records that p is done, having copied n bytes when copied is set.
func (t *mirrorTracker) finish(p *pendingCopy, n int64, copied bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p.done = true
	if copied {
		t.cur.Copied++
		t.cur.CopiedBytes += n
	}
	for len(t.pending) > 0 && t.pending[0].done {
		t.pending[0] = nil
		t.pending = t.pending[1:]
	}
	if len(t.pending) == 0 {
		t.cur.Cursor = t.last
	} else {
		t.cur.Cursor = t.pending[0].prev
	}
}

func (t *mirrorTracker) progress() MirrorProgress {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.cur
}

// mirrorList walks the mirror's store listing in a goroutine, so it runs
// while the source is listed, and hands it to the merge-join in key order.
type mirrorList struct {
	ch     chan store.ObjectInfo
	errc   chan error
	cancel context.CancelFunc
	done   chan struct{}

	head    store.ObjectInfo
	hasHead bool
	ended   bool
	err     error
	prev    string
}

func startMirrorList(ctx context.Context, st store.Store, prefix string) *mirrorList {
	ctx, cancel := context.WithCancel(ctx)
	m := &mirrorList{
		ch:     make(chan store.ObjectInfo, 1024),
		errc:   make(chan error, 1),
		cancel: cancel,
		done:   make(chan struct{}),
	}
	go func() {
		defer close(m.done)
		defer close(m.ch)
		m.errc <- st.List(ctx, prefix, func(oi store.ObjectInfo) error {
			oi.Key = strings.TrimPrefix(oi.Key, prefix)
			select {
			case m.ch <- oi:
				return nil
			case <-ctx.Done():
				return context.Cause(ctx)
			}
		})
	}()
	return m
}

// find returns the mirror's object for key (ok false when there is none).
// Calls come in increasing key order.
func (m *mirrorList) find(key string) (store.ObjectInfo, bool, error) {
	for {
		if m.err != nil {
			return store.ObjectInfo{}, false, m.err
		}
		if !m.hasHead {
			if m.ended {
				return store.ObjectInfo{}, false, nil
			}
			oi, ok := <-m.ch
			if !ok {
				m.ended = true
				if err := <-m.errc; err != nil {
					m.err = err
				}
				continue
			}
			if m.prev != "" && oi.Key <= m.prev {
				m.err = fmt.Errorf("mirror listing out of order (%q after %q)", oi.Key, m.prev)
				continue
			}
			m.prev = oi.Key
			m.head, m.hasHead = oi, true
		}
		switch {
		case m.head.Key < key:
			// Only in the mirror: deleted at the source, kept.
			m.hasHead = false
		case m.head.Key == key:
			m.hasHead = false
			return m.head, true, nil
		default:
			return store.ObjectInfo{}, false, nil
		}
	}
}

// stop ends the walk and waits for its goroutine.
func (m *mirrorList) stop() {
	m.cancel()
	<-m.done
}

// listingWriter streams the listing as JSON lines through a pipe into
// putZstd. The pipe is closed with EOF only at commit, so the object is
// stored only when the mirror run succeeded; abort makes the Put fail and
// leave nothing behind.
type listingWriter struct {
	pw   *io.PipeWriter
	buf  *bufio.Writer
	enc  *json.Encoder
	done chan listingPut

	waitOnce sync.Once
	result   listingPut
}

type listingPut struct {
	c   Compressed
	err error
}

func (o *Objects) startListing(ctx context.Context, key string) *listingWriter {
	pr, pw := io.Pipe()
	lw := &listingWriter{pw: pw, done: make(chan listingPut, 1)}
	lw.buf = bufio.NewWriterSize(pw, 64<<10)
	lw.enc = json.NewEncoder(lw.buf)
	go func() {
		// One encoder goroutine: a listing is small next to the copies.
		c, err := putZstd(ctx, o.Store, key, pr, ZstdOptions{Concurrency: 1}, o.Age, nil)
		// A Put that failed early must not leave the writer blocked.
		pr.CloseWithError(err)
		lw.done <- listingPut{c, err}
	}()
	return lw
}

func (lw *listingWriter) add(obj ListedObject) error {
	if err := lw.enc.Encode(obj); err != nil {
		return lw.fail(err)
	}
	return nil
}

// commit ends the stream and waits for the Put.
func (lw *listingWriter) commit() (Compressed, error) {
	if err := lw.buf.Flush(); err != nil {
		return Compressed{}, lw.fail(err)
	}
	lw.pw.Close()
	r := lw.wait()
	return r.c, r.err
}

// fail ends the stream with err and returns the Put's error, the cause when
// the write failed because the Put had.
func (lw *listingWriter) fail(err error) error {
	lw.pw.CloseWithError(err)
	if r := lw.wait(); r.err != nil {
		return r.err
	}
	return err
}

// abort fails the Put with err, unless it has ended, and waits for it.
func (lw *listingWriter) abort(err error) {
	lw.pw.CloseWithError(err)
	lw.wait()
}

func (lw *listingWriter) wait() listingPut {
	lw.waitOnce.Do(func() { lw.result = <-lw.done })
	return lw.result
}
