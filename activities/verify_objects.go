package activities

import (
	"container/heap"
	"context"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"hash/fnv"
	"io"
	"slices"
	"strings"
	"time"

	"go.temporal.io/sdk/activity"
	"golang.org/x/sync/errgroup"

	"github.com/kohakku/drflow/internal/store"
)

// DefaultVerifySample is how many objects VerifySample checks when
// VerifySampleInput.Sample is 0.
const DefaultVerifySample = 100

// verifyReportMax bounds the objects named per kind of problem; the rest are
// counted in one more problem.
const verifyReportMax = 10

// VerifySampleInput names a mirrored bucket of a backup set to sample.
type VerifySampleInput struct {
	// SetID is the backup set; it seeds the sample, so the same set always
	// samples the same objects ("" seeds with the listing key).
	SetID string `json:"setId"`
	// Mirror is the manifest's entry for the bucket: Bucket, Prefix (default
	// "mirror/<bucket>/") and the Listing artifact (Key, Size, SHA256,
	// Objects, ObjectBytes).
	Mirror MirrorResult `json:"mirror"`
	// Sample is how many listed objects to read back from the mirror; 0
	// means DefaultVerifySample, negative is bad input. A sample larger than
	// the bucket checks every object.
	Sample int `json:"sample"`
}

// SampleCheck is VerifySample's result. A finding (a listing or an object
// that does not match) is reported here with Passed false, never as an
// activity error.
type SampleCheck struct {
	// Bucket checked.
	Bucket string `json:"bucket"`
	// Passed is true when Problems is empty.
	Passed bool `json:"passed"`
	// Problems found, each naming the listing or object key and the figures;
	// at most verifyReportMax objects are named per kind of problem.
	Problems []string `json:"problems,omitempty"`
	// ListingOK: the listing artifact has the manifest's size and SHA-256
	// and decodes as a listing.
	ListingOK bool `json:"listingOk"`
	// Listed is the number of objects read from the listing.
	Listed int64 `json:"listed"`
	// Sampled objects, and how they compared with the listing: Matched,
	// Missing from the mirror, Different (size, or MD5 where the listed
	// ETag is one).
	Sampled   int `json:"sampled"`
	Matched   int `json:"matched"`
	Missing   int `json:"missing"`
	Different int `json:"different"`
}

// VerifySampleProgress is VerifySample's heartbeat detail. A retry starts
// over: the check has no side effect to resume.
type VerifySampleProgress struct {
	// Phase is "listing" or "objects".
	Phase string `json:"phase"`
	// StoredBytes read from the backup store so far (listing and objects).
	StoredBytes int64 `json:"storedBytes"`
	// Listed objects read from the listing so far (phase "listing"), then
	// Checked sampled objects.
	Listed  int64 `json:"listed"`
	Checked int64 `json:"checked"`
}

// VerifySample checks a bucket's mirror against the listing of a backup set.
// It streams the listing artifact from the backup store, checks its size and
// SHA-256 against the manifest and its object count and bytes against
// Listing.Objects and Listing.ObjectBytes, and picks a deterministic sample of
// in.Sample listed objects: those with the lowest FNV-1a hash of
// setID+"\x00"+key, so the same set samples the same objects and any object
// may be picked, whatever its place in the listing. It holds only the sample
// in memory, not the listing.
//
// Each sampled object is read in full from the mirror (Prefix+key),
// Objects.Concurrency at a time: a missing object, another size, or — when the
// listed ETag is a plain MD5 (32 hex digits; multipart ETags are not) —
// another MD5 of the bytes is a problem. The mirror keeps the newest copy of
// each key, so an object rewritten at the source and copied by a later mirror
// run differs from an older set's listing; such problems say the copy was
// stored after this set's mirror run. A listing that fails its checksum is
// reported, and its objects are still sampled as far as it decodes.
//
// Errors: bad input is ErrInvalidInput, a missing listing
// ErrArtifactNotFound, a store that refuses for good ErrStore (all
// non-retryable); network faults are returned for the retry policy.
// VerifySample writes nothing and is safe to retry.
func (o *Objects) VerifySample(ctx context.Context, in VerifySampleInput) (SampleCheck, error) {
	in, err := o.checkVerifySample(in)
	chk := SampleCheck{Bucket: in.Mirror.Bucket}
	if err != nil {
		return chk, err
	}
	lst := in.Mirror.Listing
	where := fmt.Sprintf("verify mirror %s", in.Mirror.Bucket)
	if err := ctx.Err(); err != nil {
		return chk, fmt.Errorf("%s: %w", where, context.Cause(ctx))
	}
	log := activity.GetLogger(ctx)
	hb := startBeat(ctx, VerifySampleProgress{Phase: "listing"}, func(p *VerifySampleProgress, stored, n int64) {
		p.StoredBytes = stored
		if p.Phase == "listing" {
			p.Listed = n
		} else {
			p.Checked = n
		}
	})
	defer hb.stop()

	seed := in.SetID
	if seed == "" {
		seed = lst.Key
	}
	picker := newSamplePicker(seed, in.Sample)
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	// The listing. A key this worker lacks fails before the download.
	if err := o.Age.checkReadable(lst); err != nil {
		return chk, err
	}
	rc, err := o.Store.Get(ctx, lst.Key)
	if err != nil {
		return chk, verifyInfraErr(ctx, where+" listing "+lst.Key, &verifyStoreError{err: err, get: true})
	}
	src := &verifyStoreReader{ctx: ctx, r: rc, h: sha256.New(), n: &hb.stored}
	var listedBytes int64
	decErr := o.Age.readListing(src, lst, func(obj ListedObject) error {
		chk.Listed++
		listedBytes += obj.Size
		hb.progress.Store(chk.Listed)
		picker.offer(obj)
		return nil
	})
	if decErr == nil || !isVerifyInfra(ctx, decErr) {
		_, err = io.Copy(io.Discard, src) // the decoder may stop short of the end
	}
	rc.Close()
	switch {
	case AgeKeyError(decErr) != nil:
		return chk, AgeKeyError(decErr)
	case decErr != nil && isVerifyInfra(ctx, decErr):
		return chk, verifyInfraErr(ctx, where+" listing "+lst.Key, decErr)
	case err != nil:
		return chk, verifyInfraErr(ctx, where+" listing "+lst.Key, err)
	}
	size, sum := src.n.Load(), hex.EncodeToString(src.h.Sum(nil))
	chk.ListingOK = decErr == nil
	if size != lst.Size {
		chk.ListingOK = false
		add("%s: size mismatch: %d bytes in the store, %d in the manifest", lst.Key, size, lst.Size)
	}
	if !strings.EqualFold(sum, lst.SHA256) {
		chk.ListingOK = false
		add("%s: checksum mismatch: sha256 %s in the store, %s in the manifest", lst.Key, sum, lst.SHA256)
	}
	switch {
	case decErr != nil && chk.Listed == 0:
		add("%s: cannot be read as a listing: %v", lst.Key, decErr)
	case decErr != nil:
		add("%s: cannot be read as a listing after %d objects (the sample is taken from those): %v", lst.Key, chk.Listed, decErr)
	default:
		if chk.Listed != lst.Objects {
			add("%s: object count mismatch: %d objects in the listing, %d in the manifest", lst.Key, chk.Listed, lst.Objects)
		}
		if lst.ObjectBytes != 0 && listedBytes != lst.ObjectBytes {
			add("%s: byte count mismatch: %d bytes of objects in the listing, %d in the manifest", lst.Key, listedBytes, lst.ObjectBytes)
		}
	}

	// The sample.
	sample := picker.sorted()
	chk.Sampled = len(sample)
	hb.progress.Store(0)
	hb.set(func(p *VerifySampleProgress) { p.Phase = "objects" })
	results, err := o.checkSample(ctx, in.Mirror.Prefix, sample, hb)
	if err != nil {
		return chk, verifyInfraErr(ctx, where, err)
	}
	runEnd := lst.StartedAt.Add(lst.Duration)
	var missing, different []string
	for i, r := range results {
		key := in.Mirror.Prefix + sample[i].Key
		later := ""
		if !lst.StartedAt.IsZero() && r.modTime.After(runEnd) {
			later = fmt.Sprintf(" (the mirror's copy was stored at %s, after this set's mirror run ended at %s)",
				r.modTime.UTC().Format(time.RFC3339), runEnd.UTC().Format(time.RFC3339))
		}
		switch r.kind {
		case sampleMatched:
			chk.Matched++
		case sampleMissing:
			chk.Missing++
			missing = append(missing, fmt.Sprintf("%s: missing from the mirror (listed with %d bytes)%s", key, sample[i].Size, r.detail))
		case sampleDifferent:
			chk.Different++
			different = append(different, key+": "+r.detail+later)
		}
	}
	problems = append(problems, capProblems(missing, "missing from the mirror", in.Mirror.Prefix)...)
	problems = append(problems, capProblems(different, "different in the mirror", in.Mirror.Prefix)...)

	chk.Problems = problems
	chk.Passed = len(problems) == 0
	log.Info("verify mirror sample", "set", in.SetID, "bucket", in.Mirror.Bucket, "passed", chk.Passed,
		"listed", chk.Listed, "sampled", chk.Sampled, "matched", chk.Matched, "missing", chk.Missing,
		"different", chk.Different, "bytes", hb.stored.Load())
	return chk, nil
}

// checkVerifySample rejects input that can never be checked and fills in
// the defaults.
func (o *Objects) checkVerifySample(in VerifySampleInput) (VerifySampleInput, error) {
	bad := func(format string, args ...any) error {
		return NonRetryable(ErrInvalidInput, fmt.Errorf("verify mirror sample: "+format, args...))
	}
	m := &in.Mirror
	if m.Bucket == "" {
		m.Bucket = m.Listing.Source
	}
	switch {
	case o.Store == nil:
		return in, NonRetryable(ErrInvalidConfig, errors.New("verify mirror sample: no backup store configured"))
	case in.Sample < 0:
		return in, bad("input field \"sample\" is %d; want the number of objects to check, or 0 for %d", in.Sample, DefaultVerifySample)
	case m.Bucket == "":
		return in, bad("input field \"mirror\" names no bucket")
	case m.Listing.Key == "":
		return in, bad("mirror of bucket %s has no listing artifact (listing.key)", m.Bucket)
	}
	if in.Sample == 0 {
		in.Sample = DefaultVerifySample
	}
	if m.Prefix == "" {
		m.Prefix = MirrorKeyPrefix(m.Bucket)
	}
	if !strings.HasSuffix(m.Prefix, "/") {
		return in, bad("mirror of bucket %s: prefix %q must end with /", m.Bucket, m.Prefix)
	}
	if err := store.CheckKey(m.Prefix + "x"); err != nil {
		return in, bad("mirror of bucket %s: prefix %q: %w", m.Bucket, m.Prefix, err)
	}
	lst := m.Listing
	if err := store.CheckKey(lst.Key); err != nil {
		return in, bad("mirror of bucket %s: listing key: %w", m.Bucket, err)
	}
	if lst.Kind != "" && lst.Kind != KindListing {
		return in, bad("listing %s is a %q artifact, not %q", lst.Key, lst.Kind, KindListing)
	}
	if lst.Compression != "" && lst.Compression != CompressionZstd {
		return in, bad("listing %s: compression %q is not %q", lst.Key, lst.Compression, CompressionZstd)
	}
	if lst.Encryption != "" && lst.Encryption != EncryptionNone && lst.Encryption != EncryptionAge {
		return in, bad("listing %s: encryption %q is not %s or %s", lst.Key, lst.Encryption, EncryptionNone, EncryptionAge)
	}
	if !isHexSHA256(lst.SHA256) {
		return in, bad("listing %s: sha256 %q is not 64 hex digits", lst.Key, lst.SHA256)
	}
	return in, nil
}

// isVerifyInfra tells whether err came from the store or the context rather
// than from the data.
func isVerifyInfra(ctx context.Context, err error) bool {
	var se *verifyStoreError
	return ctx.Err() != nil || errors.As(err, &se)
}

// capProblems keeps the first verifyReportMax messages and sums up the rest.
func capProblems(msgs []string, what, prefix string) []string {
	if len(msgs) <= verifyReportMax {
		return msgs
	}
	out := slices.Clone(msgs[:verifyReportMax])
	return append(out, fmt.Sprintf("%s…: %d more sampled objects %s", prefix, len(msgs)-verifyReportMax, what))
}

// Outcomes of one sampled object.
const (
	sampleMatched = iota
	sampleMissing
	sampleDifferent
)

type sampleResult struct {
	kind    int
	detail  string    // what differs, for a problem
	modTime time.Time // of the mirror's copy, when it differs
}

// checkSample reads every sampled object from the mirror, conc at a time, and
// returns their outcomes in the sample's order. The error is for the
// infrastructure only.
func (o *Objects) checkSample(ctx context.Context, prefix string, sample []ListedObject, hb *verifyBeat[VerifySampleProgress]) ([]sampleResult, error) {
	conc := o.Concurrency
	if conc <= 0 {
		conc = DefaultObjectsConcurrency
	}
	results := make([]sampleResult, len(sample))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(conc)
	for i, obj := range sample {
		g.Go(func() error {
			r, err := o.checkObject(gctx, prefix, obj, hb)
			results[i] = r
			hb.progress.Add(1)
			return err
		})
	}
	return results, g.Wait()
}

func (o *Objects) checkObject(ctx context.Context, prefix string, obj ListedObject, hb *verifyBeat[VerifySampleProgress]) (sampleResult, error) {
	key := prefix + obj.Key
	if err := store.CheckKey(key); err != nil {
		// Mirror refuses such keys, so the listing of a finished run has none.
		return sampleResult{kind: sampleMissing, detail: fmt.Sprintf(": the key cannot be stored: %v", err)}, nil
	}
	rc, err := o.Store.Get(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		return sampleResult{kind: sampleMissing}, nil
	}
	if err != nil {
		return sampleResult{}, &verifyStoreError{err: err}
	}
	defer rc.Close()
	etag := strings.ToLower(strings.Trim(obj.ETag, `"`))
	var h hash.Hash
	if isHexMD5(etag) {
		h = md5.New()
	}
	n, err := io.Copy(io.Discard, &verifyStoreReader{ctx: ctx, r: rc, h: h, n: &hb.stored})
	if err != nil {
		return sampleResult{}, err
	}
	var detail string
	switch {
	case n != obj.Size:
		detail = fmt.Sprintf("size mismatch: %d bytes in the mirror, %d in the listing", n, obj.Size)
	case h != nil && hex.EncodeToString(h.Sum(nil)) != etag:
		detail = fmt.Sprintf("content mismatch: md5 %s in the mirror, etag %s in the listing", hex.EncodeToString(h.Sum(nil)), etag)
	default:
		return sampleResult{kind: sampleMatched}, nil
	}
	r := sampleResult{kind: sampleDifferent, detail: detail}
	if oi, err := o.Store.Stat(ctx, key); err == nil {
		r.modTime = oi.ModTime
	}
	return r, nil
}

func isHexMD5(s string) bool {
	if len(s) != 32 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// samplePicker keeps the n listed objects with the lowest FNV-1a hash of
// seed+"\x00"+key: a sample that depends only on the seed and the keys, taken
// in one pass in O(n) memory.
type samplePicker struct {
	seed string
	n    int
	h    sampleHeap
}

func newSamplePicker(seed string, n int) *samplePicker {
	return &samplePicker{seed: seed, n: n}
}

func (p *samplePicker) offer(obj ListedObject) {
	f := fnv.New64a()
	f.Write([]byte(p.seed))
	f.Write([]byte{0})
	f.Write([]byte(obj.Key))
	e := sampleEntry{sum: f.Sum64(), obj: obj}
	if len(p.h) < p.n {
		heap.Push(&p.h, e)
		return
	}
	if p.n > 0 && e.less(p.h[0]) {
		p.h[0] = e
		heap.Fix(&p.h, 0)
	}
}

// sorted returns the sample in key order.
func (p *samplePicker) sorted() []ListedObject {
	out := make([]ListedObject, len(p.h))
	for i, e := range p.h {
		out[i] = e.obj
	}
	slices.SortFunc(out, func(a, b ListedObject) int { return strings.Compare(a.Key, b.Key) })
	return out
}

type sampleEntry struct {
	sum uint64
	obj ListedObject
}

// less orders by hash, then key, so that equal hashes pick deterministically.
func (e sampleEntry) less(f sampleEntry) bool {
	if e.sum != f.sum {
		return e.sum < f.sum
	}
	return e.obj.Key < f.obj.Key
}

// sampleHeap is a max-heap: its root is the entry to drop first.
type sampleHeap []sampleEntry

func (h sampleHeap) Len() int           { return len(h) }
func (h sampleHeap) Less(i, j int) bool { return h[j].less(h[i]) }
func (h sampleHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *sampleHeap) Push(x any)        { *h = append(*h, x.(sampleEntry)) }
func (h *sampleHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}
