package activities

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minio/minio-go/v7"
	"go.temporal.io/sdk/activity"
	"golang.org/x/sync/errgroup"

	"github.com/kohakku/drflow/internal/profile"
	"github.com/kohakku/drflow/internal/store"
)

// Scopes of an object restore (ObjectRestoreInput.Scope).
const (
	// ScopeNeeded restores only the objects of the profile's classes, class
	// by class.
	ScopeNeeded = "needed"
	// ScopeAll restores every listed object: the classes first, then the
	// objects of no class (OtherClass).
	ScopeAll = "all"
)

// OtherClass names the objects of no class in plans and results of scope
// "all".
const OtherClass = "other"

// ErrListingCorrupt is the error type of the non-retryable error raised when
// a set's object listing cannot be decoded or is out of key order: the set
// cannot be restored from, another set must be picked.
const ErrListingCorrupt = "ListingCorrupt"

// restoreETagMeta is the user metadata (x-amz-meta-drflow-etag) a restored
// object carries: the ETag the set's listing has for it. A restore uploads
// with a single PUT, so an object that was uploaded in parts gets another
// ETag than the listed one; this lets a later plan or retry tell a restored
// copy from a changed object.
const restoreETagMeta = "drflow-etag"

// maxSinglePut is the largest object restored with a single PUT (S3's
// limit): a single PUT's ETag is the MD5 of the bytes, as the listed ETag of
// an object the app wrote with one PUT is.
const maxSinglePut = 5 << 30

// restoreReportMax bounds the problems VerifyRestore names and the keys a
// warning names.
const restoreReportMax = 20

// ObjectRestoreInput says which set's copy of a bucket to restore, and how.
// The same input serves PlanRestore, RestoreObjects and VerifyRestore.
type ObjectRestoreInput struct {
	// SetID is the backup set restored from (for messages and logs).
	SetID string `json:"setId"`
	// Mirror is the set manifest's entry for the bucket: Bucket (default
	// Listing.Source), Prefix (default "mirror/<bucket>/") and Listing.Key.
	Mirror MirrorResult `json:"mirror"`
	// Scope is "needed" (default): only objects of the profile's classes; or
	// "all": every listed object (classes first, then the rest).
	Scope string `json:"scope"`
	// Force overwrites live objects that are newer than the set's copy (after
	// a safety copy). Without it they are kept.
	Force bool `json:"force"`
	// SafetyPrefix is the store prefix where live objects are copied before
	// being overwritten ("safety/<workflow id>/objects/<bucket>/", see
	// SafetyObjectsPrefix). RestoreObjects also records there, next to it
	// (SafetyPrefix without its "/" plus ".kept/"), the live objects it kept
	// as newer, which VerifyRestore reads. Required by RestoreObjects and
	// VerifyRestore; PlanRestore does without, but checks one it is given.
	SafetyPrefix string `json:"safetyPrefix"`
}

// ObjectClassPlan counts the listed objects of one class by what a restore
// does (PlanRestore) or did (RestoreObjects) with them.
type ObjectClassPlan struct {
	// Name of the class, or "other" for objects in no class (scope all).
	Name string `json:"name"`
	// Listed objects of the class in the set's listing.
	Listed int64 `json:"listed"`
	// Missing from the live bucket: restored.
	Missing int64 `json:"missing"`
	// Overwrite: the live copy differs and is older than the set's (or newer,
	// with force): safety-copied, then restored.
	Overwrite int64 `json:"overwrite"`
	// KeepNewer: the live copy differs and is newer: kept (without force).
	KeepNewer int64 `json:"keepNewer"`
	// Unchanged: the live copy equals the set's (size and ETag). In a
	// RestoreObjects retry this includes the objects an earlier attempt
	// restored where they were missing after its last heartbeat (nothing
	// tells them apart); the ones it overwrote count as Overwrite.
	Unchanged int64 `json:"unchanged"`
	// Bytes to restore (the mirror copies' sizes).
	Bytes int64 `json:"bytes"`
}

// ObjectsPlan is what RestoreObjects would do with the same input, as
// counted by PlanRestore.
type ObjectsPlan struct {
	// Bucket to restore.
	Bucket string `json:"bucket"`
	// BucketExists is false when the restore creates the bucket.
	BucketExists bool `json:"bucketExists"`
	// Scope planned ("needed" or "all").
	Scope string `json:"scope"`
	// Classes in restore order, with "other" last for scope all.
	Classes []ObjectClassPlan `json:"classes"`
	// Skipped listed objects outside the scope.
	Skipped int64 `json:"skipped"`
	// Restore is the number of objects to write, RestoreBytes their bytes.
	Restore      int64 `json:"restore"`
	RestoreBytes int64 `json:"restoreBytes"`
	// SafetyCopies: live objects to be overwritten, each copied to the safety
	// prefix first (unless an earlier attempt already did).
	SafetyCopies int64 `json:"safetyCopies"`
	// Examples: up to 10 keys that would be overwritten, for the operator.
	Examples []string `json:"examples,omitempty"`
	// Warnings: listed objects the mirror has no copy of (they cannot be
	// restored) or a copy of another size than listed (the mirror was
	// updated after the set; that copy is what gets restored).
	Warnings []string `json:"warnings,omitempty"`
}

// ObjectRestoreProgress is RestoreObjects' heartbeat detail. A retry skips
// the objects up to (Class, Cursor) and continues the counts, which cover
// exactly those objects.
type ObjectRestoreProgress struct {
	// Class is an index into the classes restored (len(classes) is "other");
	// every class before it is done.
	Class int `json:"class"`
	// Cursor is the greatest key of that class such that every key up to it
	// is done ("" when none is).
	Cursor string `json:"cursor"`
	// Totals over all attempts.
	Restored      int64 `json:"restored"`
	RestoredBytes int64 `json:"restoredBytes"`
	SafetyCopied  int64 `json:"safetyCopied"`
	KeptNewer     int64 `json:"keptNewer"`
	Unchanged     int64 `json:"unchanged"`
	// Classes: what was done per class (Listed is not filled in). A retry
	// whose classes have other names starts over.
	Classes []ObjectClassPlan `json:"classes,omitempty"`
	// CreatedBucket: an attempt created the bucket.
	CreatedBucket bool `json:"createdBucket,omitempty"`
}

// ObjectRestoreResult reports a finished restore.
type ObjectRestoreResult struct {
	// Bucket restored.
	Bucket string `json:"bucket"`
	// CreatedBucket: the bucket did not exist and was created.
	CreatedBucket bool `json:"createdBucket"`
	// Classes: what was done per class (Missing and Overwrite = restored,
	// KeepNewer = kept).
	Classes []ObjectClassPlan `json:"classes"`
	// Restored objects and their bytes, over all attempts. An object a
	// failed attempt restored where it was missing, after its last
	// heartbeat, is counted as Unchanged by the retry (nothing records it);
	// Restored+Unchanged is the same whatever the attempts.
	Restored      int64 `json:"restored"`
	RestoredBytes int64 `json:"restoredBytes"`
	// SafetyCopied: overwritten live objects whose old content is in the
	// safety prefix (copied by this or an earlier attempt). A retry counts
	// those an earlier attempt copied and overwrote after its last
	// heartbeat by their safety copies (as restored, with their bytes), so
	// SafetyCopied is the same whatever the attempts.
	SafetyCopied int64 `json:"safetyCopied"`
	// KeptNewer: live objects newer than the set's copy, kept.
	KeptNewer int64 `json:"keptNewer"`
	// Unchanged: live objects equal to the set's copy (see Restored).
	Unchanged int64 `json:"unchanged"`
	// Warnings, as in ObjectsPlan: objects that could not be restored for
	// want of a mirror copy, or were restored from a copy of another size.
	Warnings []string `json:"warnings,omitempty"`
}

// ObjectsCheck is VerifyRestore's result. A finding is reported here with
// Passed false, never as an activity error.
type ObjectsCheck struct {
	// Bucket checked.
	Bucket string `json:"bucket"`
	// Checked in-scope listed objects.
	Checked int64 `json:"checked"`
	// Matched: present live with the listing's size and the same SHA-256 as
	// the mirror copy.
	Matched int64 `json:"matched"`
	// KeptNewer: live objects the restore kept as newer, unchanged since.
	KeptNewer int64 `json:"keptNewer"`
	// Passed is true when Problems is empty.
	Passed bool `json:"passed"`
	// Problems: the first 20 in key order, each naming the key and what
	// differs, then a count of the rest.
	Problems []string `json:"problems,omitempty"`
}

// keptRecord is stored for each live object RestoreObjects keeps as newer:
// VerifyRestore accepts the live object only while it still has this ETag.
type keptRecord struct {
	ETag         string    `json:"etag"`
	Size         int64     `json:"size"`
	LastModified time.Time `json:"lastModified"`
	ListedETag   string    `json:"listedEtag"`
}

// restoreScanProgress is the heartbeat detail of PlanRestore and
// VerifyRestore; a retry starts over (neither writes anything).
type restoreScanProgress struct {
	Listed  int64 `json:"listed"`
	Checked int64 `json:"checked"`
}

// PlanRestore counts, class by class, what RestoreObjects would do with the
// same input: which listed objects are missing from the live bucket, which
// differ (older: overwritten; newer: kept unless force) and which are
// unchanged. It reads the set's listing, lists the live bucket and the mirror
// once each and changes nothing.
//
// Errors: bad input is ErrInvalidInput; a listing missing from the store
// ErrArtifactNotFound and an unreadable one ErrListingCorrupt (pick another
// set); MinIO and store errors as Mirror classifies them. All are
// non-retryable except network faults.
func (o *Objects) PlanRestore(ctx context.Context, in ObjectRestoreInput) (ObjectsPlan, error) {
	in, err := o.checkRestore(in, false)
	plan := ObjectsPlan{Bucket: in.Mirror.Bucket, Scope: in.Scope}
	if err != nil {
		return plan, err
	}
	classes, names, err := o.restoreClasses(ctx, in)
	if err != nil {
		return plan, err
	}
	var listed atomic.Int64
	stop := startHeartbeat(ctx, heartbeatEvery, func() {
		activity.RecordHeartbeat(ctx, restoreScanProgress{Listed: listed.Load()})
	})
	defer stop()

	plan.Classes = newClassPlans(names)
	var warn restoreWarnings
	plan.BucketExists, err = o.scanRestore(ctx, in, classes, scanOptions{}, func(it *scanItem) error {
		listed.Add(1)
		if it.class < 0 {
			plan.Skipped++
			return nil
		}
		v, err := o.decide(ctx, in, it)
		if err != nil {
			return err
		}
		cp := &plan.Classes[it.class]
		cp.Listed++
		warn.note(it, v, in.Force)
		switch v {
		case verdictUnchanged:
			cp.Unchanged++
		case verdictNewer:
			if !in.Force {
				cp.KeepNewer++
				break
			}
			fallthrough
		case verdictOverwrite:
			cp.Overwrite++
			cp.Bytes += it.mirror.Size
			plan.SafetyCopies++
			if len(plan.Examples) < 10 {
				plan.Examples = append(plan.Examples, it.obj.Key)
			}
		case verdictMissing:
			cp.Missing++
			cp.Bytes += it.mirror.Size
		}
		return nil
	})
	if err != nil {
		return plan, err
	}
	for _, cp := range plan.Classes {
		plan.Restore += cp.Missing + cp.Overwrite
		plan.RestoreBytes += cp.Bytes
	}
	plan.Warnings = warn.list(in.Mirror.Prefix)
	activity.GetLogger(ctx).Info("plan object restore", "set", in.SetID, "bucket", plan.Bucket,
		"scope", plan.Scope, "bucketExists", plan.BucketExists, "restore", plan.Restore,
		"bytes", plan.RestoreBytes, "safetyCopies", plan.SafetyCopies, "skipped", plan.Skipped)
	return plan, nil
}

// RestoreObjects restores a bucket of the app's MinIO from the backup set's
// mirror: the objects of the set's listing, class by class in the order
// Classes returns them (every object of a class is restored before the next
// class starts), then, for scope "all", the objects of no class; within a
// class in key order. The bytes come from the mirror (Mirror.Prefix+key).
//
// A listed object is restored when it is missing from the live bucket, or
// when the live copy differs (size or ETag) and is not newer than the listed
// one; a differing newer live copy is kept (recorded for VerifyRestore under
// SafetyPrefix's ".kept/" sibling) unless Force. Every live object about to
// be overwritten is first copied to SafetyPrefix+key, unless a copy is there
// already: a retry never replaces an earlier safety copy. Live objects not in
// the listing are left alone. A missing bucket is created.
//
// The live bucket, the mirror and the safety prefix are listed once each and
// merge-joined with the listing; the plan (one entry per object to act on)
// is held in memory. Copies stream from the store into PutObject,
// Objects.Concurrency at a time. RestoreObjects heartbeats
// ObjectRestoreProgress and a retry resumes after its cursor; every step is
// idempotent. A failed attempt may have done more than its last heartbeat
// says: a retry (an attempt after the first, or one given heartbeat details)
// counts a live object after the cursor that equals the set's copy and has a
// safety copy under SafetyPrefix as overwritten by an earlier attempt
// (restored, with its bytes, and safety-copied, in its class's Overwrite), as
// an uninterrupted run would have; so SafetyCopied does not depend on where
// an attempt failed. Objects a failed attempt restored after the cursor where
// they were missing leave no trace: the retry counts them as unchanged
// (Restored+Unchanged does not depend on it either). SafetyPrefix is the
// run's own (it names the workflow): a first attempt counts an object equal
// to the set's copy as unchanged, safety copy or not, but a retry takes any
// safety copy there of such an object for its run's, even one made by an
// earlier activity with the same SafetyPrefix (a reset workflow).
//
// Errors: as PlanRestore; in addition a missing SafetyPrefix is
// ErrInvalidInput.
func (o *Objects) RestoreObjects(ctx context.Context, in ObjectRestoreInput) (ObjectRestoreResult, error) {
	started := time.Now()
	in, err := o.checkRestore(in, true)
	res := ObjectRestoreResult{Bucket: in.Mirror.Bucket}
	if err != nil {
		return res, err
	}
	bucket := in.Mirror.Bucket
	what := "restore objects of " + bucket
	classes, names, err := o.restoreClasses(ctx, in)
	if err != nil {
		return res, err
	}
	log := activity.GetLogger(ctx)

	// A retry may find objects that an earlier attempt overwrote after its
	// last heartbeat (see the scan below).
	retry := activity.GetInfo(ctx).Attempt > 1 || activity.HasHeartbeatDetails(ctx)
	var resume ObjectRestoreProgress
	if activity.HasHeartbeatDetails(ctx) {
		if err := activity.GetHeartbeatDetails(ctx, &resume); err != nil {
			return res, fmt.Errorf("%s: read heartbeat: %w", what, err)
		}
		if !resumable(resume, names) {
			log.Warn("restore objects: the heartbeat does not fit the classes; starting over (every step is idempotent)",
				"bucket", bucket, "resumeClass", resume.Class, "classes", names)
			resume = ObjectRestoreProgress{}
		}
	}
	if len(resume.Classes) == 0 {
		resume.Classes = newClassPlans(names)
	}
	log.Info("restore objects", "set", in.SetID, "bucket", bucket, "scope", in.Scope, "force", in.Force,
		"classes", names, "resumeClass", resume.Class, "resumeCursor", resume.Cursor)

	tr := newRestoreTracker(resume)
	// From here on, every return records the last progress, so that a retry
	// resumes from it.
	stopBeat := startHeartbeat(ctx, heartbeatEvery, func() { activity.RecordHeartbeat(ctx, tr.progress()) })
	defer func() {
		stopBeat()
		activity.RecordHeartbeat(ctx, tr.progress())
	}()

	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("%s: %w", what, context.Cause(ctx))
	}
	exists, err := o.bucketExists(ctx, what, bucket)
	if err != nil {
		return res, err
	}
	if !exists {
		err := o.Client.MakeBucket(ctx, bucket, minio.MakeBucketOptions{})
		switch code := minio.ToErrorResponse(err).Code; {
		case err == nil:
			tr.createdBucket()
			log.Info("restore objects: created the bucket", "bucket", bucket)
		case code == "BucketAlreadyOwnedByYou":
		default:
			return res, restoreSourceErr(what, bucket, "create the bucket", err)
		}
	}

	// The plan: per class, the objects after the resume point, in key order.
	plans := make([][]restoreEntry, len(names))
	listed := make([]int64, len(names))
	var warn restoreWarnings
	_, err = o.scanRestore(ctx, in, classes, scanOptions{safety: true}, func(it *scanItem) error {
		if it.class < 0 {
			return nil
		}
		listed[it.class]++
		if it.class < resume.Class || it.class == resume.Class && it.obj.Key <= resume.Cursor {
			return nil // done by an earlier attempt
		}
		v, err := o.decide(ctx, in, it)
		if err != nil {
			return err
		}
		warn.note(it, v, in.Force)
		if v == verdictUnchanged && it.safety && retry {
			// Equal to the set's copy, yet its live content was copied to
			// this run's safety prefix: an earlier attempt overwrote it
			// after its last heartbeat. Counted as that attempt did.
			v = verdictOverwritten
		}
		plans[it.class] = appendEntry(plans[it.class], it, v)
		return nil
	})
	if err != nil {
		return res, err
	}

	conc := o.Concurrency
	if conc <= 0 {
		conc = DefaultObjectsConcurrency
	}
	for c := resume.Class; c < len(names); c++ {
		tr.startClass(c)
		if err := o.restoreClass(ctx, in, plans[c], tr, conc); err != nil {
			return res, err
		}
		plans[c] = nil
		tr.endClass(c + 1)
	}

	p := tr.progress()
	res.CreatedBucket = p.CreatedBucket
	res.Classes = p.Classes
	for i := range res.Classes {
		res.Classes[i].Listed = listed[i]
	}
	res.Restored, res.RestoredBytes = p.Restored, p.RestoredBytes
	res.SafetyCopied, res.KeptNewer, res.Unchanged = p.SafetyCopied, p.KeptNewer, p.Unchanged
	res.Warnings = warn.list(in.Mirror.Prefix)
	log.Info("restored objects", "set", in.SetID, "bucket", bucket, "restored", res.Restored,
		"bytes", res.RestoredBytes, "safetyCopied", res.SafetyCopied, "keptNewer", res.KeptNewer,
		"unchanged", res.Unchanged, "createdBucket", res.CreatedBucket, "warnings", len(res.Warnings),
		"duration", time.Since(started))
	return res, nil
}

// VerifyRestore checks the live bucket against the set: every in-scope
// listed object must be present with the listing's size and the same SHA-256
// as its mirror copy (both are read in full, Objects.Concurrency at a time).
// A live object RestoreObjects kept as newer (without Force) passes as
// KeptNewer as long as it still has the ETag it was kept with; one changed
// since is a problem. Findings go into the result, not the error; a retry
// starts over.
//
// Errors: as PlanRestore; SafetyPrefix (where the kept objects are recorded)
// is required.
func (o *Objects) VerifyRestore(ctx context.Context, in ObjectRestoreInput) (ObjectsCheck, error) {
	in, err := o.checkRestore(in, true)
	chk := ObjectsCheck{Bucket: in.Mirror.Bucket}
	if err != nil {
		return chk, err
	}
	bucket := in.Mirror.Bucket
	classes, _, err := o.restoreClasses(ctx, in)
	if err != nil {
		return chk, err
	}
	var listed, checked atomic.Int64
	stop := startHeartbeat(ctx, heartbeatEvery, func() {
		activity.RecordHeartbeat(ctx, restoreScanProgress{Listed: listed.Load(), Checked: checked.Load()})
	})
	defer stop()

	probs := &problemList{}
	var (
		seq     int
		matched atomic.Int64
	)
	conc := o.Concurrency
	if conc <= 0 {
		conc = DefaultObjectsConcurrency
	}
	// Content checks run while the scan goes on; the scan only hands out keys.
	jobs := make(chan verifyJob)
	g, gctx := errgroup.WithContext(ctx)
	for range conc {
		g.Go(func() error {
			for j := range jobs {
				msg, err := o.compareContent(gctx, in, j)
				if err != nil {
					return err
				}
				if msg == "" {
					matched.Add(1)
				} else {
					probs.add(j.seq, msg)
				}
				checked.Add(1)
			}
			return nil
		})
	}
	exists, scanErr := o.scanRestore(gctx, in, classes, scanOptions{kept: !in.Force}, func(it *scanItem) error {
		listed.Add(1)
		if it.class < 0 {
			return nil
		}
		seq++
		chk.Checked++
		key := it.obj.Key
		switch {
		case it.live == nil:
			probs.add(seq, fmt.Sprintf("%s: missing from the live bucket (listed with %d bytes)", key, it.obj.Size))
		case it.kept != nil && it.kept.ETag == normETag(it.live.ETag):
			chk.KeptNewer++
		case !it.hasMirror:
			equal, err := o.sameAsListed(gctx, in, it)
			switch {
			case err != nil:
				return err
			case equal:
				matched.Add(1)
			case it.live == nil: // deleted since listed
				probs.add(seq, fmt.Sprintf("%s: missing from the live bucket (listed with %d bytes)", key, it.obj.Size))
			default:
				probs.add(seq, fmt.Sprintf("%s: differs from the set's listing (live %d bytes, etag %s; listed %d bytes, etag %s) and the mirror has no copy under %s to compare with",
					key, it.live.Size, normETag(it.live.ETag), it.obj.Size, normETag(it.obj.ETag), in.Mirror.Prefix))
			}
		default:
			j := verifyJob{seq: seq, obj: it.obj}
			select {
			case jobs <- j:
			case <-gctx.Done():
				return context.Cause(gctx)
			}
			return nil
		}
		checked.Add(1)
		return nil
	})
	close(jobs)
	if err := g.Wait(); err != nil {
		return chk, err
	}
	if scanErr != nil {
		return chk, scanErr
	}
	if !exists {
		probs.add(0, fmt.Sprintf("bucket %q does not exist on the app's MinIO", bucket))
	}
	chk.Matched = matched.Load()
	chk.Problems = probs.list()
	chk.Passed = len(chk.Problems) == 0
	activity.GetLogger(ctx).Info("verify object restore", "set", in.SetID, "bucket", bucket, "passed", chk.Passed,
		"checked", chk.Checked, "matched", chk.Matched, "keptNewer", chk.KeptNewer, "problems", probs.n)
	return chk, nil
}

// ---- input ----

// checkRestore rejects input that can never work and fills in the defaults.
func (o *Objects) checkRestore(in ObjectRestoreInput, needSafety bool) (ObjectRestoreInput, error) {
	m := &in.Mirror
	if m.Bucket == "" {
		m.Bucket = m.Listing.Source
	}
	what := "restore objects of " + m.Bucket
	bad := func(format string, args ...any) error {
		return NonRetryable(ErrInvalidInput, fmt.Errorf(what+": "+format, args...))
	}
	switch {
	case o.Client == nil || o.Store == nil:
		return in, NonRetryable(ErrInvalidConfig, fmt.Errorf("%s: objects activities built without a MinIO client or a backup store", what))
	case m.Bucket == "":
		return in, NonRetryable(ErrInvalidInput, errors.New(`restore objects: input field "mirror.bucket" is empty; pass the set manifest's mirror entry for the bucket`))
	case m.Listing.Key == "":
		return in, bad(`input field "mirror.listing.key" is empty; pass the set manifest's mirror entry, whose listing names the objects to restore`)
	}
	switch in.Scope {
	case "":
		in.Scope = ScopeNeeded
	case ScopeNeeded, ScopeAll:
	default:
		return in, bad(`input field "scope" is %q; want %q or %q`, in.Scope, ScopeNeeded, ScopeAll)
	}
	if m.Prefix == "" {
		m.Prefix = MirrorKeyPrefix(m.Bucket)
	}
	if err := checkStorePrefix(m.Prefix); err != nil {
		return in, bad(`input field "mirror.prefix": %w`, err)
	}
	if err := store.CheckKey(m.Listing.Key); err != nil {
		return in, bad(`input field "mirror.listing.key": %w`, err)
	}
	if strings.HasPrefix(m.Listing.Key, m.Prefix) {
		return in, bad(`input field "mirror.listing.key" %q is inside the mirror prefix %q`, m.Listing.Key, m.Prefix)
	}
	if m.Listing.Kind != "" && m.Listing.Kind != KindListing {
		return in, bad(`input field "mirror.listing": %s is a %q artifact, not %q`, m.Listing.Key, m.Listing.Kind, KindListing)
	}
	if m.Listing.Compression != "" && m.Listing.Compression != CompressionZstd {
		return in, bad(`input field "mirror.listing": %s: compression %q is not %q`, m.Listing.Key, m.Listing.Compression, CompressionZstd)
	}
	if e := m.Listing.Encryption; e != "" && e != EncryptionNone && e != EncryptionAge {
		return in, bad(`input field "mirror.listing": %s: encryption %q is not %s or %s`, m.Listing.Key, e, EncryptionNone, EncryptionAge)
	}
	if in.SafetyPrefix == "" {
		if needSafety {
			return in, bad(`input field "safetyPrefix" is empty; want where live objects are copied before being overwritten, e.g. %q`,
				SafetyPrefix+"<workflow id>/objects/"+m.Bucket+"/")
		}
		return in, nil
	}
	if err := checkStorePrefix(in.SafetyPrefix); err != nil {
		return in, bad(`input field "safetyPrefix": %w`, err)
	}
	if err := checkStorePrefix(keptPrefix(in.SafetyPrefix)); err != nil {
		return in, bad(`input field "safetyPrefix": %w`, err)
	}
	for _, p := range []string{in.SafetyPrefix, keptPrefix(in.SafetyPrefix)} {
		if strings.HasPrefix(p, m.Prefix) || strings.HasPrefix(m.Prefix, p) {
			return in, bad(`input field "safetyPrefix" %q overlaps the mirror prefix %q; use %q`,
				in.SafetyPrefix, m.Prefix, SafetyPrefix+"<workflow id>/objects/"+m.Bucket+"/")
		}
		if strings.HasPrefix(m.Listing.Key, p) {
			return in, bad(`input field "safetyPrefix" %q holds the listing %q`, in.SafetyPrefix, m.Listing.Key)
		}
	}
	return in, nil
}

// checkStorePrefix checks a key prefix ending in "/".
func checkStorePrefix(p string) error {
	if !strings.HasSuffix(p, "/") {
		return fmt.Errorf("prefix %q must end with /", p)
	}
	return store.CheckKey(p + "x")
}

// keptPrefix is where RestoreObjects records the live objects it kept:
// beside the safety copies, never among them (any key may be an object key).
func keptPrefix(safety string) string {
	return strings.TrimSuffix(safety, "/") + ".kept/"
}

// restoreClasses returns the profile's classes and the names of the classes
// restored: theirs, then OtherClass for scope all.
func (o *Objects) restoreClasses(ctx context.Context, in ObjectRestoreInput) ([]profile.ObjectClass, []string, error) {
	what := "restore objects of " + in.Mirror.Bucket
	var classes []profile.ObjectClass
	if o.Classes != nil {
		var err error
		classes, err = o.Classes(ctx, in.Mirror.Bucket)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: object classes of the profile: %w", what, err)
		}
	}
	names := make([]string, 0, len(classes)+1)
	for i, c := range classes {
		if c.Match == nil || c.Name == "" {
			return nil, nil, NonRetryable(ErrInvalidConfig, fmt.Errorf("%s: object class %d (%q) of the profile has no name or no Match function", what, i, c.Name))
		}
		names = append(names, c.Name)
	}
	if in.Scope == ScopeAll {
		names = append(names, OtherClass)
	}
	return classes, names, nil
}

func newClassPlans(names []string) []ObjectClassPlan {
	out := make([]ObjectClassPlan, len(names))
	for i, n := range names {
		out[i].Name = n
	}
	return out
}

// resumable tells whether heartbeat details fit the classes of this attempt.
func resumable(p ObjectRestoreProgress, names []string) bool {
	if p.Class < 0 || p.Class > len(names) || len(p.Classes) != len(names) {
		return false
	}
	for i, c := range p.Classes {
		if c.Name != names[i] {
			return false
		}
	}
	return true
}

// ---- the scan: listing ⋈ live bucket ⋈ mirror (⋈ safety copies, kept records) ----

type scanOptions struct {
	safety bool // look up the safety copies
	kept   bool // look up the kept records
}

// scanItem is one listed object with what the other listings hold for it.
type scanItem struct {
	obj       ListedObject
	class     int // index into the restored classes; -1: out of scope
	live      *minio.ObjectInfo
	mirror    store.ObjectInfo
	hasMirror bool
	safety    bool        // a safety copy exists
	kept      *keptRecord // recorded as kept by a restore
}

// scanStop carries an error of the scan's callback through ReadListing.
type scanStop struct{ err error }

func (s *scanStop) Error() string { return s.err.Error() }

// scanRestore reads the set's listing and calls fn for each listed object,
// in key order, with the live object and the mirror copy (and the safety copy
// and kept record, as asked) of the same key. Each of those is listed once,
// in key order, alongside. It reports whether the live bucket exists. A
// listing whose size or SHA-256 is not the manifest's (when in.Mirror.Listing
// has them) is ErrListingCorrupt, found once fn has seen every object: the
// callers act on the objects only after the scan.
func (o *Objects) scanRestore(ctx context.Context, in ObjectRestoreInput, classes []profile.ObjectClass, opts scanOptions, fn func(*scanItem) error) (bool, error) {
	bucket, lst := in.Mirror.Bucket, in.Mirror.Listing
	what := "restore objects of " + bucket
	if err := ctx.Err(); err != nil {
		return false, fmt.Errorf("%s: %w", what, context.Cause(ctx))
	}
	// Ends the listing goroutines on every return.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	set := in.SetID
	if set == "" {
		set = "(unnamed)"
	}
	// A key this worker lacks fails before anything is listed or read.
	if err := o.Age.checkReadable(lst); err != nil {
		return false, err
	}
	rc, err := o.Store.Get(ctx, lst.Key)
	if errors.Is(err, store.ErrNotFound) {
		return false, NonRetryable(ErrArtifactNotFound, fmt.Errorf(
			"%s: set %s: the object listing %s is not in the backup store; the set cannot be restored from, pick another set: %w",
			what, set, lst.Key, err))
	}
	if err != nil {
		return false, restoreStoreErr(what, "read listing "+lst.Key, err)
	}
	defer rc.Close()

	exists, err := o.bucketExists(ctx, what, bucket)
	if err != nil {
		return false, err
	}
	live := &liveList{bucket: bucket, what: what}
	if exists {
		owner := false
		live.ch = o.Client.ListObjects(ctx, bucket, minio.ListObjectsOptions{Recursive: true, FetchOwner: &owner})
	} else {
		live.ended = true
	}
	mirror := startMirrorList(ctx, o.Store, in.Mirror.Prefix)
	defer mirror.stop()
	var safety, kept *mirrorList
	if opts.safety {
		safety = startMirrorList(ctx, o.Store, in.SafetyPrefix)
		defer safety.stop()
	}
	if opts.kept {
		kept = startMirrorList(ctx, o.Store, keptPrefix(in.SafetyPrefix))
		defer kept.stop()
	}

	var n atomic.Int64
	var prev string
	all := in.Scope == ScopeAll
	src := &verifyStoreReader{ctx: ctx, r: rc, h: sha256.New(), n: &n}
	decErr := o.Age.readListing(src, lst, func(obj ListedObject) error {
		if prev != "" && obj.Key <= prev || obj.Key == "" {
			return fmt.Errorf("listing out of key order: %q after %q", obj.Key, prev)
		}
		prev = obj.Key
		it := scanItem{obj: obj, class: classOf(obj.Key, classes, all)}
		if it.class >= 0 {
			if err := lookUp(ctx, o.Store, &it, live, mirror, safety, kept, in); err != nil {
				return &scanStop{err}
			}
		}
		if err := fn(&it); err != nil {
			return &scanStop{err}
		}
		return nil
	})
	if decErr == nil {
		_, decErr = io.Copy(io.Discard, src) // the decoder may stop short of the end
	}
	var stop *scanStop
	var se *verifyStoreError
	switch {
	case decErr == nil:
		// The whole listing has been read: it must be the manifest's.
		size, sum := n.Load(), hex.EncodeToString(src.h.Sum(nil))
		if lst.Size > 0 && size != lst.Size || lst.SHA256 != "" && !strings.EqualFold(sum, lst.SHA256) {
			return exists, NonRetryable(ErrListingCorrupt, fmt.Errorf(
				"%s: set %s: the object listing %s is not the one the manifest names (%d bytes, sha256 %s; manifest: %d bytes, sha256 %s); the set cannot be restored from, pick another set",
				what, set, lst.Key, size, sum, lst.Size, lst.SHA256))
		}
		return exists, nil
	case errors.As(decErr, &stop):
		return exists, stop.err
	case AgeKeyError(decErr) != nil:
		return exists, AgeKeyError(decErr)
	case ctx.Err() != nil:
		return exists, fmt.Errorf("%s: %w", what, context.Cause(ctx))
	case errors.As(decErr, &se):
		return exists, restoreStoreErr(what, "read listing "+lst.Key, se.err)
	}
	return exists, NonRetryable(ErrListingCorrupt, fmt.Errorf(
		"%s: set %s: the object listing %s cannot be read; the set cannot be restored from, pick another set: %w",
		what, set, lst.Key, decErr))
}

// lookUp fills in the live object, the mirror copy, the safety copy and the
// kept record of it.obj.Key.
func lookUp(ctx context.Context, st store.Store, it *scanItem, live *liveList, mirror, safety, kept *mirrorList, in ObjectRestoreInput) error {
	what := "restore objects of " + in.Mirror.Bucket
	key := it.obj.Key
	var err error
	if it.live, err = live.find(key); err != nil {
		return err
	}
	if it.mirror, it.hasMirror, err = mirror.find(key); err != nil {
		return restoreStoreErr(what, "list the mirror "+in.Mirror.Prefix, err)
	}
	if safety != nil {
		if _, it.safety, err = safety.find(key); err != nil {
			return restoreStoreErr(what, "list the safety copies "+in.SafetyPrefix, err)
		}
	}
	if kept != nil {
		_, ok, err := kept.find(key)
		if err != nil {
			return restoreStoreErr(what, "list the kept records "+keptPrefix(in.SafetyPrefix), err)
		}
		if ok {
			rec, err := readKept(ctx, st, keptPrefix(in.SafetyPrefix)+key)
			if err != nil {
				return restoreStoreErr(what, "read the kept record of "+key, err)
			}
			it.kept = &rec
		}
	}
	return nil
}

func readKept(ctx context.Context, st store.Store, key string) (keptRecord, error) {
	var rec keptRecord
	rc, err := st.Get(ctx, key)
	if err != nil {
		return rec, err
	}
	defer rc.Close()
	err = json.NewDecoder(io.LimitReader(rc, 64<<10)).Decode(&rec)
	return rec, err
}

// classOf returns the index of the first class key belongs to, len(classes)
// for no class with scope all, and -1 for out of scope.
func classOf(key string, classes []profile.ObjectClass, all bool) int {
	for i, c := range classes {
		if c.Match(key) {
			return i
		}
	}
	if all {
		return len(classes)
	}
	return -1
}

// liveList walks the live bucket's listing, in key order, for the
// merge-join. A bucket that disappears during the walk lists as empty.
type liveList struct {
	bucket, what string
	ch           <-chan minio.ObjectInfo
	head         minio.ObjectInfo
	hasHead      bool
	ended        bool
	prev         string
}

// find returns the live object of key (nil when there is none). Calls come in
// increasing key order.
func (l *liveList) find(key string) (*minio.ObjectInfo, error) {
	for {
		if !l.hasHead {
			if l.ended {
				return nil, nil
			}
			obj, ok := <-l.ch
			if !ok {
				l.ended = true
				continue
			}
			if obj.Err != nil {
				if minio.ToErrorResponse(obj.Err).Code == "NoSuchBucket" {
					l.ended = true
					continue
				}
				return nil, restoreSourceErr(l.what, l.bucket, "list the bucket", obj.Err)
			}
			if l.prev != "" && obj.Key <= l.prev {
				return nil, fmt.Errorf("%s: list the bucket: listing out of order (%q after %q)", l.what, obj.Key, l.prev)
			}
			l.prev = obj.Key
			l.head, l.hasHead = obj, true
		}
		switch {
		case l.head.Key < key:
			l.hasHead = false // not in the listing: left alone
		case l.head.Key == key:
			l.hasHead = false
			obj := l.head
			return &obj, nil
		default:
			return nil, nil
		}
	}
}

// ---- deciding ----

// What a restore does with a listed object.
const (
	verdictUnchanged   = iota // the live copy equals the listed one
	verdictMissing            // no live copy: restore
	verdictOverwrite          // the live copy differs and is not newer: safety copy, restore
	verdictNewer              // the live copy differs and is newer: keep (force: as overwrite)
	verdictUnavailable        // the live copy differs or is missing and the mirror has no copy
	// verdictOverwritten: (RestoreObjects retries only) the live copy equals
	// the listed one and has a safety copy: an earlier attempt safety-copied
	// and overwrote it; counted as overwritten, nothing is written.
	verdictOverwritten
)

// decide compares the live object with the listed one.
func (o *Objects) decide(ctx context.Context, in ObjectRestoreInput, it *scanItem) (int, error) {
	if it.live != nil {
		equal, err := o.sameAsListed(ctx, in, it)
		if err != nil {
			return 0, err
		}
		if equal {
			return verdictUnchanged, nil
		}
	}
	switch {
	case !it.hasMirror:
		return verdictUnavailable, nil
	case it.live == nil:
		return verdictMissing, nil
	case it.live.LastModified.After(it.obj.LastModified):
		return verdictNewer, nil
	}
	return verdictOverwrite, nil
}

// sameAsListed tells whether the live object is the listed one: the same
// size and ETag. When the sizes match but the ETags differ and one of them is
// not a plain MD5 (a multipart upload, which a restore turns into a single
// PUT), the live object's drflow-etag metadata decides, at the price of one
// HEAD request. A live object deleted since listed is reported as not equal
// (and as missing: it.live is cleared).
func (o *Objects) sameAsListed(ctx context.Context, in ObjectRestoreInput, it *scanItem) (bool, error) {
	live, obj := it.live, it.obj
	if live.Size != obj.Size {
		return false, nil
	}
	le, oe := normETag(live.ETag), normETag(obj.ETag)
	if le == oe {
		return true, nil
	}
	if isHexMD5(le) && isHexMD5(oe) {
		return false, nil
	}
	info, err := o.Client.StatObject(ctx, in.Mirror.Bucket, obj.Key, minio.StatObjectOptions{})
	if err != nil {
		if minio.ToErrorResponse(err).Code == "NoSuchKey" {
			it.live = nil
			return false, nil
		}
		return false, restoreSourceErr("restore objects of "+in.Mirror.Bucket, in.Mirror.Bucket, "stat "+obj.Key, err)
	}
	if normETag(info.ETag) != le {
		// Rewritten since listed: compare what is there now.
		it.live.ETag, it.live.Size, it.live.LastModified = info.ETag, info.Size, info.LastModified
		if info.Size != obj.Size {
			return false, nil
		}
	}
	for k, v := range info.UserMetadata {
		if strings.EqualFold(k, restoreETagMeta) {
			return normETag(v) == oe, nil
		}
	}
	return false, nil
}

func normETag(s string) string { return strings.ToLower(strings.Trim(s, `"`)) }

// restoreWarnings collects the objects the mirror cannot restore as listed.
type restoreWarnings struct {
	unavailable, changed   []string
	nUnavailable, nChanged int64
}

func (w *restoreWarnings) note(it *scanItem, v int, force bool) {
	restored := v == verdictMissing || v == verdictOverwrite || v == verdictNewer && force
	switch {
	case v == verdictUnavailable:
		w.nUnavailable++
		if len(w.unavailable) < restoreReportMax {
			w.unavailable = append(w.unavailable, it.obj.Key)
		}
	case restored && it.mirror.Size != it.obj.Size:
		w.nChanged++
		if len(w.changed) < restoreReportMax {
			w.changed = append(w.changed, fmt.Sprintf("%s (%d bytes in the mirror, %d listed)", it.obj.Key, it.mirror.Size, it.obj.Size))
		}
	}
}

func (w *restoreWarnings) list(prefix string) []string {
	var out []string
	if w.nUnavailable > 0 {
		out = append(out, fmt.Sprintf("%d listed objects have no copy in the mirror under %s and cannot be restored: %s",
			w.nUnavailable, prefix, strings.Join(w.unavailable, ", ")+more(w.nUnavailable, len(w.unavailable))))
	}
	if w.nChanged > 0 {
		out = append(out, fmt.Sprintf("%d objects have a mirror copy of another size than the set's listing (the mirror was updated after the set); the mirror copy is restored: %s",
			w.nChanged, strings.Join(w.changed, ", ")+more(w.nChanged, len(w.changed))))
	}
	return out
}

func more(total int64, named int) string {
	if total > int64(named) {
		return fmt.Sprintf(" … (%d more)", total-int64(named))
	}
	return ""
}

// ---- restoring ----

// restoreEntry is one step of a class's restore: an object to act on, or a
// run of unchanged objects (run > 0) ending at key.
type restoreEntry struct {
	key        string
	run        int64
	verdict    int
	size       int64  // of the mirror copy (verdictOverwritten: of the live one)
	etag       string // listed
	live       keptRecord
	safetyDone bool
}

// appendEntry adds it to a class's plan, folding unchanged objects into runs.
func appendEntry(plan []restoreEntry, it *scanItem, v int) []restoreEntry {
	if v == verdictUnchanged {
		if n := len(plan); n > 0 && plan[n-1].run > 0 {
			plan[n-1].run++
			plan[n-1].key = it.obj.Key
			return plan
		}
		return append(plan, restoreEntry{key: it.obj.Key, run: 1})
	}
	e := restoreEntry{key: it.obj.Key, verdict: v, size: it.mirror.Size, etag: it.obj.ETag, safetyDone: it.safety}
	if v == verdictOverwritten {
		// The bytes the earlier attempt wrote: the live copy equals the
		// listed one.
		e.size = it.live.Size
	}
	if it.live != nil {
		e.live = keptRecord{ETag: normETag(it.live.ETag), Size: it.live.Size, LastModified: it.live.LastModified.UTC(), ListedETag: normETag(it.obj.ETag)}
	}
	return append(plan, e)
}

// restoreDelta is what one entry did.
type restoreDelta struct {
	missing, overwrite, kept, unchanged, bytes, safety int64
}

// restoreClass runs one class's plan, conc objects at a time, and returns
// once every object of it is done.
func (o *Objects) restoreClass(ctx context.Context, in ObjectRestoreInput, plan []restoreEntry, tr *restoreTracker, conc int) error {
	// A fixed set of workers, as in Mirror.
	jobs := make(chan *restoreJob)
	g, gctx := errgroup.WithContext(ctx)
	core := minio.Core{Client: o.Client}
	for range conc {
		g.Go(func() error {
			for j := range jobs {
				d, err := o.restoreOne(gctx, core, in, j.e)
				if err != nil {
					return err
				}
				tr.finish(j, d)
			}
			return nil
		})
	}
	for i := range plan {
		e := &plan[i]
		if e.run > 0 {
			tr.skip(e.key, restoreDelta{unchanged: e.run})
			continue
		}
		if e.verdict == verdictUnavailable {
			tr.skip(e.key, restoreDelta{})
			continue
		}
		if e.verdict == verdictOverwritten {
			tr.skip(e.key, restoreDelta{overwrite: 1, safety: 1, bytes: e.size})
			continue
		}
		select {
		case jobs <- tr.start(e):
		case <-gctx.Done():
		}
		if gctx.Err() != nil {
			break
		}
	}
	close(jobs)
	if err := g.Wait(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("restore objects of %s: %w", in.Mirror.Bucket, context.Cause(ctx))
	}
	return nil
}

// restoreOne acts on one object: records a kept one, or safety-copies the
// live object (when there is one and no copy yet) and restores the mirror
// copy over it. Each step is idempotent.
func (o *Objects) restoreOne(ctx context.Context, core minio.Core, in ObjectRestoreInput, e *restoreEntry) (restoreDelta, error) {
	bucket := in.Mirror.Bucket
	what := "restore objects of " + bucket
	var d restoreDelta
	if e.verdict == verdictNewer && !in.Force {
		b, _ := json.Marshal(e.live)
		if _, err := o.Store.Put(ctx, keptPrefix(in.SafetyPrefix)+e.key, bytes.NewReader(b), store.PutOptions{ContentType: "application/json", SizeHint: int64(len(b))}); err != nil {
			return d, restoreStoreErr(what, "record kept object "+e.key, err)
		}
		d.kept = 1
		return d, nil
	}
	if err := ctx.Err(); err != nil {
		return d, fmt.Errorf("%s: %w", what, context.Cause(ctx))
	}
	if e.verdict == verdictMissing {
		d.missing = 1
	} else {
		d.overwrite = 1
		saved := e.safetyDone
		if !saved {
			var err error
			if saved, err = o.safetyCopy(ctx, core, in, e); err != nil {
				return d, err
			}
		}
		if saved {
			d.safety = 1
		} else {
			d.overwrite, d.missing = 0, 1 // deleted since listed
		}
	}
	n, err := o.restoreCopy(ctx, in, e)
	if err != nil {
		return d, err
	}
	d.bytes = n
	return d, nil
}

// safetyCopy copies the live object, as planned (same ETag), to the safety
// prefix. It returns false when the live object is gone.
func (o *Objects) safetyCopy(ctx context.Context, core minio.Core, in ObjectRestoreInput, e *restoreEntry) (bool, error) {
	bucket := in.Mirror.Bucket
	what := "restore objects of " + bucket
	opts := minio.GetObjectOptions{}
	if e.live.ETag != "" {
		if err := opts.SetMatchETag(e.live.ETag); err != nil {
			return false, fmt.Errorf("%s: safety copy of %s: %w", what, e.key, err)
		}
	}
	body, info, _, err := core.GetObject(ctx, bucket, e.key, opts)
	if err != nil {
		switch minio.ToErrorResponse(err).Code {
		case "NoSuchKey":
			return false, nil
		case "PreconditionFailed":
			// Changed since listed: the retry compares it again.
			return false, fmt.Errorf("%s: safety copy of %s: the live object changed during the restore (etag %s when listed); the retry compares it again: %w",
				what, e.key, e.live.ETag, err)
		}
		return false, restoreSourceErr(what, bucket, "safety copy of "+e.key, err)
	}
	defer body.Close()
	key := in.SafetyPrefix + e.key
	n, err := o.Store.Put(ctx, key, body, store.PutOptions{ContentType: info.ContentType, SizeHint: info.Size})
	if err != nil {
		return false, restoreStoreErr(what, "safety copy of "+e.key+" to "+key, err)
	}
	if info.Size >= 0 && n != info.Size {
		return false, fmt.Errorf("%s: safety copy of %s: read %d of %d bytes", what, e.key, n, info.Size)
	}
	return true, nil
}

// restoreCopy streams the mirror copy into the live bucket.
func (o *Objects) restoreCopy(ctx context.Context, in ObjectRestoreInput, e *restoreEntry) (int64, error) {
	bucket := in.Mirror.Bucket
	what := "restore objects of " + bucket
	src := in.Mirror.Prefix + e.key
	rc, err := o.Store.Get(ctx, src)
	if errors.Is(err, store.ErrNotFound) {
		// Listed in the mirror a moment ago: a retry sees it as unavailable.
		return 0, fmt.Errorf("%s: restore %s: the mirror copy %s disappeared during the restore: %w", what, e.key, src, err)
	}
	if err != nil {
		return 0, restoreStoreErr(what, "read "+src, err)
	}
	defer rc.Close()
	ctype := mime.TypeByExtension(path.Ext(e.key))
	if ctype == "" {
		ctype = "application/octet-stream"
	}
	info, err := o.Client.PutObject(ctx, bucket, e.key, rc, e.size, minio.PutObjectOptions{
		ContentType:      ctype,
		UserMetadata:     map[string]string{restoreETagMeta: normETag(e.etag)},
		DisableMultipart: e.size <= maxSinglePut,
	})
	if err != nil {
		return 0, restoreSourceErr(what, bucket, "restore "+e.key+" from "+src, err)
	}
	if info.Size != e.size {
		return 0, fmt.Errorf("%s: restore %s: wrote %d of %d bytes", what, e.key, info.Size, e.size)
	}
	return info.Size, nil
}

// restoreTracker keeps the heartbeat cursor of a class's parallel steps: the
// greatest key such that every key of the class up to it is done, and the
// counts of exactly those keys. Steps are started in key order; one
// finishing early is counted once every earlier one is done, so a retry
// that skips up to the cursor counts nothing twice.
type restoreTracker struct {
	mu      sync.Mutex
	p       ObjectRestoreProgress
	class   int
	pending []*restoreJob // started, in key order; pending[0] is not done
}

type restoreJob struct {
	e    *restoreEntry
	key  string
	done bool
	d    restoreDelta
}

func newRestoreTracker(resume ObjectRestoreProgress) *restoreTracker {
	resume.Classes = slices.Clone(resume.Classes)
	return &restoreTracker{p: resume}
}

// startClass begins class c; the cursor stays where a resumed attempt left
// it.
func (t *restoreTracker) startClass(c int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.p.Class != c {
		t.p.Class, t.p.Cursor = c, ""
	}
	t.class = c
}

// endClass records that every class before next is done.
func (t *restoreTracker) endClass(next int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.p.Class, t.p.Cursor = next, ""
}

// skip records key as done with d, without a step.
func (t *restoreTracker) skip(key string, d restoreDelta) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.pending) == 0 {
		t.commit(key, d)
		return
	}
	t.pending = append(t.pending, &restoreJob{key: key, done: true, d: d})
}

// start records that e's step is running.
func (t *restoreTracker) start(e *restoreEntry) *restoreJob {
	t.mu.Lock()
	defer t.mu.Unlock()
	j := &restoreJob{e: e, key: e.key}
	t.pending = append(t.pending, j)
	return j
}

// finish records that j is done with d.
func (t *restoreTracker) finish(j *restoreJob, d restoreDelta) {
	t.mu.Lock()
	defer t.mu.Unlock()
	j.done, j.d = true, d
	for len(t.pending) > 0 && t.pending[0].done {
		t.commit(t.pending[0].key, t.pending[0].d)
		t.pending[0] = nil
		t.pending = t.pending[1:]
	}
}

func (t *restoreTracker) commit(key string, d restoreDelta) {
	t.p.Cursor = key
	t.p.Restored += d.missing + d.overwrite
	t.p.RestoredBytes += d.bytes
	t.p.SafetyCopied += d.safety
	t.p.KeptNewer += d.kept
	t.p.Unchanged += d.unchanged
	c := &t.p.Classes[t.class]
	c.Missing += d.missing
	c.Overwrite += d.overwrite
	c.KeepNewer += d.kept
	c.Unchanged += d.unchanged
	c.Bytes += d.bytes
}

// createdBucket records that the bucket was created.
func (t *restoreTracker) createdBucket() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.p.CreatedBucket = true
}

// progress returns a copy of the progress, safe to hand to the SDK.
func (t *restoreTracker) progress() ObjectRestoreProgress {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.p
	p.Classes = slices.Clone(t.p.Classes)
	return p
}

// ---- verifying ----

// verifyJob is a listed object whose live and mirror copies are compared;
// seq is its place in the listing, for the order of the problems.
type verifyJob struct {
	seq int
	obj ListedObject
}

// compareContent reads the live object and its mirror copy and returns what
// differs ("" when nothing does). The error is for the infrastructure only.
func (o *Objects) compareContent(ctx context.Context, in ObjectRestoreInput, j verifyJob) (string, error) {
	bucket, key := in.Mirror.Bucket, j.obj.Key
	what := "verify restore of " + bucket
	var (
		liveSum, mirrorSum string
		liveN, mirrorN     int64
		liveGone           bool
	)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		body, _, _, err := minio.Core{Client: o.Client}.GetObject(gctx, bucket, key, minio.GetObjectOptions{})
		if err != nil {
			if minio.ToErrorResponse(err).Code == "NoSuchKey" {
				liveGone = true
				return nil
			}
			return restoreSourceErr(what, bucket, "get "+key, err)
		}
		defer body.Close()
		h := sha256.New()
		if liveN, err = io.Copy(h, body); err != nil {
			return restoreSourceErr(what, bucket, "read "+key, err)
		}
		liveSum = hex.EncodeToString(h.Sum(nil))
		return nil
	})
	g.Go(func() error {
		src := in.Mirror.Prefix + key
		rc, err := o.Store.Get(gctx, src)
		if err != nil {
			return restoreStoreErr(what, "read "+src, err)
		}
		defer rc.Close()
		h := sha256.New()
		if mirrorN, err = io.Copy(h, rc); err != nil {
			return restoreStoreErr(what, "read "+src, err)
		}
		mirrorSum = hex.EncodeToString(h.Sum(nil))
		return nil
	})
	if err := g.Wait(); err != nil {
		return "", err
	}
	switch {
	case liveGone:
		return fmt.Sprintf("%s: missing from the live bucket (listed with %d bytes)", key, j.obj.Size), nil
	case liveN != mirrorN || liveSum != mirrorSum:
		return fmt.Sprintf("%s: live content differs from the mirror copy (live %d bytes, sha256 %s; mirror %d bytes, sha256 %s)",
			key, liveN, liveSum, mirrorN, mirrorSum), nil
	case liveN != j.obj.Size:
		return fmt.Sprintf("%s: %d bytes live and in the mirror, %d in the set's listing: the mirror was updated after the set",
			key, liveN, j.obj.Size), nil
	}
	return "", nil
}

// problemList keeps the first restoreReportMax problems in key order (by
// sequence number) and counts the rest.
type problemList struct {
	mu    sync.Mutex
	n     int64
	items []seqProblem
}

type seqProblem struct {
	seq int
	msg string
}

func (p *problemList) add(seq int, msg string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n++
	i, _ := slices.BinarySearchFunc(p.items, seq, func(e seqProblem, s int) int { return e.seq - s })
	if i >= restoreReportMax {
		return
	}
	p.items = slices.Insert(p.items, i, seqProblem{seq, msg})
	if len(p.items) > restoreReportMax {
		p.items = p.items[:restoreReportMax]
	}
}

func (p *problemList) list() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, it := range p.items {
		out = append(out, it.msg)
	}
	if rest := p.n - int64(len(p.items)); rest > 0 {
		out = append(out, fmt.Sprintf("… %d more problems (%d in all)", rest, p.n))
	}
	return out
}

// ---- errors ----

// bucketExists tells whether the app's MinIO has bucket. The answer to a
// HEAD request has no body, so a refusal is always "AccessDenied"; it then
// asks again with a GET, whose answer says whether the key is denied or the
// credentials are wrong.
func (o *Objects) bucketExists(ctx context.Context, what, bucket string) (bool, error) {
	exists, err := o.Client.BucketExists(ctx, bucket)
	if err == nil {
		return exists, nil
	}
	if minio.ToErrorResponse(err).Code == "AccessDenied" {
		lctx, cancel := context.WithCancel(ctx)
		defer cancel()
		// The first answer is enough; cancel ends the listing.
		if obj, ok := <-o.Client.ListObjects(lctx, bucket, minio.ListObjectsOptions{MaxKeys: 1}); ok && obj.Err != nil {
			err = obj.Err
		}
	}
	return false, restoreSourceErr(what, bucket, "check the bucket", err)
}

// restoreSourceErr classifies an error of the app's MinIO during a restore,
// with the error types Mirror uses.
func restoreSourceErr(what, bucket, op string, err error) error {
	switch minio.ToErrorResponse(err).Code {
	case "AccessDenied", "AllAccessDisabled", "AccountProblem":
		return NonRetryable(ErrBucketAccessDenied, fmt.Errorf("%s: %s: access to bucket %q is denied; a restore needs s3:ListBucket, s3:GetObject, s3:PutObject and s3:CreateBucket for the app's MinIO key (DRFLOW_MINIO_ACCESS_KEY): %w", what, op, bucket, err))
	case "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken":
		return NonRetryable(ErrMinIOCredentials, fmt.Errorf("%s: %s: the app's MinIO rejected the credentials for bucket %q (DRFLOW_MINIO_ACCESS_KEY, DRFLOW_MINIO_SECRET_KEY): %w", what, op, bucket, err))
	case "InvalidBucketName":
		return NonRetryable(ErrInvalidInput, fmt.Errorf("%s: %q is not a valid bucket name (input field \"mirror.bucket\"): %w", what, bucket, err))
	}
	return fmt.Errorf("%s: %s: %w", what, op, err)
}

// restoreStoreErr classifies an error of the backup store during a restore.
func restoreStoreErr(what, op string, err error) error {
	wrapped := fmt.Errorf("%s: %s: %w", what, op, err)
	if store.IsPermanent(err) {
		return NonRetryable(ErrStore, wrapped)
	}
	return wrapped
}
