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
	"sort"
	"strings"
	"time"

	"go.temporal.io/sdk/activity"

	"github.com/kohakku/drflow/internal/store"
)

// Backup store layout (relative to the store's prefix). DESIGN.md is the reference.
const (
	SetsPrefix   = "sets/"
	MirrorPrefix = "mirror/"
	SafetyPrefix = "safety/"
	ManifestName = "manifest.json"
	VerifyName   = "verify.json"
	// SetIDLayout formats set ids: UTC time, filesystem- and URL-safe.
	SetIDLayout = "2006-01-02T15-04-05Z"
)

// Error types of the backup store activities.
const (
	// ErrStore: the backup store refused for good (missing bucket, bad credentials,
	// access denied); retrying cannot help.
	ErrStore = "BackupStoreError"
	// ErrSetNotFound: a named set does not exist or is incomplete.
	ErrSetNotFound = "SetNotFound"
)

// SetKey is the store key of name inside set id.
func SetKey(id, name string) string { return SetsPrefix + id + "/" + name }

// PostgresKey, RedisKey and ListingKey name a set's artifacts.
func PostgresKey(id, db string) string { return SetKey(id, "postgres/"+db+".dump.zst") }

// RedisKey names the RDB artifact of a Redis instance in set id.
func RedisKey(id, instance string) string { return SetKey(id, "redis/"+instance+".rdb.zst") }

// ListingKey names the source listing of a mirrored bucket in set id.
func ListingKey(id, bucket string) string { return SetKey(id, "objects/"+bucket+".jsonl.zst") }

// SafetyKeyPrefix is where the safety copies of one recovery run live: what the run
// overwrote, copied before it did. A workflow id may hold any character; everything but
// letters, digits, '.', '_' and '-' becomes '_' so the key stays one path segment.
func SafetyKeyPrefix(workflowID string) string {
	b := []byte(workflowID)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			b[i] = '_'
		}
	}
	if len(b) == 0 || string(b) == "." || string(b) == ".." {
		b = append([]byte("_"), b...)
	}
	return SafetyPrefix + string(b) + "/"
}

// SafetyPostgresKey, SafetyRedisKey and SafetyObjectsPrefix name the safety copies of
// one recovery run.
func SafetyPostgresKey(workflowID, db string) string {
	return SafetyKeyPrefix(workflowID) + "postgres/" + db + ".dump.zst"
}

// SafetyRedisKey names the safety copy of a Redis instance's live RDB.
func SafetyRedisKey(workflowID, instance string) string {
	return SafetyKeyPrefix(workflowID) + "redis/" + instance + ".rdb.zst"
}

// SafetyObjectsPrefix is where the live objects a restore overwrites are copied.
func SafetyObjectsPrefix(workflowID, bucket string) string {
	return SafetyKeyPrefix(workflowID) + "objects/" + bucket + "/"
}

// MirrorKeyPrefix is where a bucket's objects are mirrored.
func MirrorKeyPrefix(bucket string) string { return MirrorPrefix + bucket + "/" }

// ParseSetID returns the time a set id names.
func ParseSetID(id string) (time.Time, error) {
	t, err := time.Parse(SetIDLayout, id)
	if err != nil {
		return time.Time{}, fmt.Errorf("set id %q: want UTC time like 2026-11-21T02-00-00Z", id)
	}
	return t, nil
}

// BackupStore holds the backup store client; its methods are the activities that read and
// write set metadata (manifests, listings of sets, retention).
type BackupStore struct {
	Store store.Store
	// Describe names the store in errors ("s3://bucket/prefix at endpoint"), without secrets.
	Describe string
	// Check verifies the store is reachable and writable; nil skips the check.
	Check func(ctx context.Context) error
}

// storeErr classifies a store error: permanent ones become non-retryable.
func (b *BackupStore) storeErr(op string, err error) error {
	err = fmt.Errorf("backup store %s: %s: %w", b.Describe, op, err)
	if store.IsPermanent(err) {
		return NonRetryable(ErrStore, err)
	}
	return err
}

// Preflight checks the store before a run writes anything, so a missing bucket or wrong
// credentials fail in seconds with a message naming them.
func (b *BackupStore) Preflight(ctx context.Context) error {
	if b.Check == nil {
		return nil
	}
	if err := b.Check(ctx); err != nil {
		return b.storeErr("check", err)
	}
	return nil
}

// WriteManifest stores m as the set's manifest.json. It is the last write of a set: once
// it exists the set is complete. Writing the same manifest again is harmless.
func (b *BackupStore) WriteManifest(ctx context.Context, m Manifest) (Artifact, error) {
	if _, err := ParseSetID(m.SetID); err != nil {
		return Artifact{}, NonRetryable(ErrInvalidInput, err)
	}
	body, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return Artifact{}, NonRetryable(ErrInvalidInput, fmt.Errorf("encode manifest: %w", err))
	}
	key := SetKey(m.SetID, ManifestName)
	n, err := b.Store.Put(ctx, key, bytes.NewReader(body), store.PutOptions{ContentType: "application/json", SizeHint: int64(len(body))})
	if err != nil {
		return Artifact{}, b.storeErr("put "+key, err)
	}
	return Artifact{Kind: "manifest", Source: m.SetID, Key: key, Size: n, RawSize: n, Compression: "none", Encryption: "none"}, nil
}

// ReadManifest returns the manifest of set id; an incomplete or missing set is a
// non-retryable ErrSetNotFound.
func (b *BackupStore) ReadManifest(ctx context.Context, id string) (Manifest, error) {
	var m Manifest
	key := SetKey(id, ManifestName)
	rc, err := b.Store.Get(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		return m, NonRetryable(ErrSetNotFound, fmt.Errorf("set %s has no manifest (missing or incomplete)", id))
	}
	if err != nil {
		return m, b.storeErr("get "+key, err)
	}
	defer rc.Close()
	body, err := io.ReadAll(io.LimitReader(rc, 64<<20))
	if err != nil {
		return m, b.storeErr("read "+key, err)
	}
	if err := json.Unmarshal(body, &m); err != nil {
		return m, NonRetryable(ErrSetNotFound, fmt.Errorf("set %s: manifest is not valid JSON: %w", id, err))
	}
	return m, nil
}

// SetInfo describes one set in the store.
type SetInfo struct {
	ID       string    `json:"id"`
	Time     time.Time `json:"time"`
	Complete bool      `json:"complete"`
	// Verified is "passed", "failed" or "" (not verified).
	Verified string `json:"verified,omitempty"`
	Objects  int    `json:"objects"`
	Bytes    int64  `json:"bytes"`
	// Keys of the set's objects, for deletion; not serialized.
	Keys []string `json:"-"`
}

// ListSets lists every set in the store, newest first. Keys under sets/ that do not
// parse as a set id are ignored (and never deleted).
func (b *BackupStore) ListSets(ctx context.Context) ([]SetInfo, error) {
	byID := map[string]*SetInfo{}
	err := b.Store.List(ctx, SetsPrefix, func(o store.ObjectInfo) error {
		rest := strings.TrimPrefix(o.Key, SetsPrefix)
		id, name, ok := strings.Cut(rest, "/")
		if !ok {
			return nil
		}
		t, err := ParseSetID(id)
		if err != nil {
			return nil
		}
		s := byID[id]
		if s == nil {
			s = &SetInfo{ID: id, Time: t}
			byID[id] = s
		}
		s.Objects++
		s.Bytes += o.Size
		s.Keys = append(s.Keys, o.Key)
		if name == ManifestName {
			s.Complete = true
		}
		return nil
	})
	if err != nil {
		return nil, b.storeErr("list "+SetsPrefix, err)
	}
	sets := make([]SetInfo, 0, len(byID))
	for _, s := range byID {
		sets = append(sets, *s)
	}
	sort.Slice(sets, func(i, j int) bool { return sets[i].ID > sets[j].ID })
	for i := range sets {
		if !sets[i].Complete || !hasKey(sets[i].Keys, SetKey(sets[i].ID, VerifyName)) {
			continue
		}
		v, err := b.readVerify(ctx, sets[i].ID)
		if err != nil {
			return nil, err
		}
		sets[i].Verified = v
	}
	return sets, nil
}

func hasKey(keys []string, key string) bool {
	for _, k := range keys {
		if k == key {
			return true
		}
	}
	return false
}

func (b *BackupStore) readVerify(ctx context.Context, id string) (string, error) {
	key := SetKey(id, VerifyName)
	rc, err := b.Store.Get(ctx, key)
	if err != nil {
		return "", b.storeErr("get "+key, err)
	}
	defer rc.Close()
	var v struct {
		Passed bool `json:"passed"`
	}
	if err := json.NewDecoder(io.LimitReader(rc, 16<<20)).Decode(&v); err != nil {
		return VerifiedFailed, nil
	}
	if v.Passed {
		return VerifiedPassed, nil
	}
	return VerifiedFailed, nil
}

// PreviousInput asks for the newest complete set older than Before ("" = newest overall).
type PreviousInput struct {
	Before string `json:"before,omitempty"`
}

// PreviousManifest returns the manifest of the newest complete set older than in.Before,
// and false when there is none (the first backup).
func (b *BackupStore) PreviousManifest(ctx context.Context, in PreviousInput) (*Manifest, error) {
	sets, err := b.ListSets(ctx)
	if err != nil {
		return nil, err
	}
	for _, s := range sets {
		if !s.Complete || (in.Before != "" && s.ID >= in.Before) {
			continue
		}
		m, err := b.ReadManifest(ctx, s.ID)
		if err != nil {
			return nil, err
		}
		return &m, nil
	}
	return nil, nil
}

// RetentionPolicy decides which sets a sweep deletes.
type RetentionPolicy struct {
	// Days a complete set is kept (S3_BACKUP_RETENTION).
	Days int `json:"days"`
	// KeepNewest complete sets are never deleted, whatever their age.
	KeepNewest int `json:"keepNewest"`
	// IncompleteGrace: an incomplete set younger than this may still be being written.
	IncompleteGrace time.Duration `json:"incompleteGrace"`
}

// SweepInput runs a retention sweep as of Now.
type SweepInput struct {
	Policy RetentionPolicy `json:"policy"`
	Now    time.Time       `json:"now"`
	DryRun bool            `json:"dryRun,omitempty"`
}

// SweepResult lists what a sweep deleted (or would delete, in a dry run) and kept.
type SweepResult struct {
	Deleted      []string `json:"deleted"`
	Kept         int      `json:"kept"`
	FreedBytes   int64    `json:"freedBytes"`
	DeletedFiles int      `json:"deletedFiles"`
}

// PlanRetention returns the ids of sets to delete under p as of now. Sets are newest
// first, as ListSets returns them. Never deleted: the newest p.KeepNewest complete sets,
// verified or not; the newest set that passed verification; complete sets younger than
// p.Days; incomplete sets younger than p.IncompleteGrace.
func PlanRetention(sets []SetInfo, p RetentionPolicy, now time.Time) []string {
	var del []string
	complete := 0
	newestVerifiedKept := false
	for _, s := range sets {
		age := now.Sub(s.Time)
		if !s.Complete {
			if age > p.IncompleteGrace {
				del = append(del, s.ID)
			}
			continue
		}
		complete++
		keep := complete <= p.KeepNewest || age <= time.Duration(p.Days)*24*time.Hour
		if s.Verified == VerifiedPassed && !newestVerifiedKept {
			newestVerifiedKept, keep = true, true
		}
		if !keep {
			del = append(del, s.ID)
		}
	}
	return del
}

// Sweep deletes the sets PlanRetention selects. The manifest of a set goes first, so a
// sweep interrupted half-way leaves an incomplete set (never used, swept next time)
// rather than a complete-looking set with missing artifacts.
func (b *BackupStore) Sweep(ctx context.Context, in SweepInput) (SweepResult, error) {
	var res SweepResult
	if in.Policy.Days < 1 || in.Policy.KeepNewest < 1 {
		return res, NonRetryable(ErrInvalidInput, fmt.Errorf("retention: days and keepNewest must be at least 1, got %d and %d", in.Policy.Days, in.Policy.KeepNewest))
	}
	sets, err := b.ListSets(ctx)
	if err != nil {
		return res, err
	}
	del := PlanRetention(sets, in.Policy, in.Now)
	res.Kept = len(sets) - len(del)
	res.Deleted = del
	if in.DryRun {
		return res, nil
	}
	byID := map[string]SetInfo{}
	for _, s := range sets {
		byID[s.ID] = s
	}
	for _, id := range del {
		s := byID[id]
		keys := append([]string(nil), s.Keys...)
		sort.SliceStable(keys, func(i, j int) bool {
			return strings.HasSuffix(keys[i], "/"+ManifestName) && !strings.HasSuffix(keys[j], "/"+ManifestName)
		})
		for _, k := range keys {
			if err := ctx.Err(); err != nil {
				return res, err
			}
			if err := b.Store.Delete(ctx, k); err != nil {
				return res, b.storeErr("delete "+k, err)
			}
			res.DeletedFiles++
		}
		res.FreedBytes += s.Bytes
		activity.RecordHeartbeat(ctx, id)
	}
	return res, nil
}

// Verification verdicts recorded in verify.json and shown by ListSets.
const (
	VerifiedPassed = "passed"
	VerifiedFailed = "failed"
)

// ErrSetUnverified: a restore asked for a verified set and the chosen set is not.
const ErrSetUnverified = "SetUnverified"

// VerifyCheck is one check of a verification run.
type VerifyCheck struct {
	// Name of the check: "postgres kohakku-controller", "redis default", "bucket kohakku".
	Name string `json:"name"`
	// Artifact key the check read.
	Artifact string `json:"artifact"`
	Passed   bool   `json:"passed"`
	// Problems found, each naming the artifact and the figure.
	Problems []string `json:"problems,omitempty"`
	// RTO is what restoring this target from the set took in the drill (0 when the check
	// restores nothing).
	RTO time.Duration `json:"rto,omitempty"`
	// Detail is a one-line summary of what was checked.
	Detail string `json:"detail,omitempty"`
}

// VerifyReport is a set's verify.json: the verdict every restore trusts.
type VerifyReport struct {
	SetID      string        `json:"setId"`
	Passed     bool          `json:"passed"`
	VerifiedAt time.Time     `json:"verifiedAt"`
	WorkflowID string        `json:"workflowId"`
	RunID      string        `json:"runId"`
	Drill      bool          `json:"drill"`
	Restored   bool          `json:"restored"`
	Checks     []VerifyCheck `json:"checks"`
	// TotalRTO is the sum of the checks' RTOs: restoring the targets one after another.
	TotalRTO time.Duration `json:"totalRto"`
	// Elapsed is the wall time of the whole verification.
	Elapsed time.Duration `json:"elapsed"`
}

// WriteVerify stores r as the set's verify.json (replacing an older verdict).
func (b *BackupStore) WriteVerify(ctx context.Context, r VerifyReport) error {
	if _, err := ParseSetID(r.SetID); err != nil {
		return NonRetryable(ErrInvalidInput, err)
	}
	body, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return NonRetryable(ErrInvalidInput, fmt.Errorf("encode verify report: %w", err))
	}
	key := SetKey(r.SetID, VerifyName)
	if _, err := b.Store.Put(ctx, key, bytes.NewReader(body), store.PutOptions{ContentType: "application/json", SizeHint: int64(len(body))}); err != nil {
		return b.storeErr("put "+key, err)
	}
	return nil
}

// SelectSetInput chooses a set for a restore or a verification.
type SelectSetInput struct {
	// SetID names the set; "" picks the newest one that qualifies.
	SetID string `json:"setId,omitempty"`
	// RequireVerified: only a set whose verification passed qualifies (restores).
	RequireVerified bool `json:"requireVerified,omitempty"`
	// AllowFailed lets a named set that failed verification through (an operator's
	// explicit override).
	AllowFailed bool `json:"allowFailed,omitempty"`
}

// SelectedSet is the chosen set with its manifest and verdict.
type SelectedSet struct {
	Manifest Manifest `json:"manifest"`
	// Verified is "passed", "failed" or "" (never verified).
	Verified string `json:"verified"`
}

// PickSet applies in to sets (newest first, as ListSets returns them) and returns the id
// of the chosen set. Incomplete sets never qualify. With RequireVerified and no SetID, the
// newest set that passed; a named set that failed verification is refused unless
// AllowFailed; a named set never verified is refused when RequireVerified.
func PickSet(sets []SetInfo, in SelectSetInput) (string, error) {
	if in.SetID != "" {
		if _, err := ParseSetID(in.SetID); err != nil {
			return "", NonRetryable(ErrInvalidInput, fmt.Errorf("input field \"setId\": %w", err))
		}
		for _, s := range sets {
			if s.ID != in.SetID {
				continue
			}
			switch {
			case !s.Complete:
				return "", NonRetryable(ErrSetNotFound, fmt.Errorf("set %s is incomplete (no manifest): it cannot be used", s.ID))
			case s.Verified == VerifiedFailed && !in.AllowFailed:
				return "", NonRetryable(ErrSetUnverified, fmt.Errorf("set %s failed verification (see its verify.json); pick another set or pass allowFailedVerification to use it anyway", s.ID))
			case s.Verified == "" && in.RequireVerified && !in.AllowFailed:
				return "", NonRetryable(ErrSetUnverified, fmt.Errorf("set %s has not been verified; run VerifyBackup on it first or pass allowFailedVerification", s.ID))
			}
			return s.ID, nil
		}
		return "", NonRetryable(ErrSetNotFound, fmt.Errorf("set %s does not exist in the backup store", in.SetID))
	}
	for _, s := range sets {
		if !s.Complete {
			continue
		}
		if in.RequireVerified && s.Verified != VerifiedPassed {
			continue
		}
		return s.ID, nil
	}
	if in.RequireVerified {
		return "", NonRetryable(ErrSetNotFound, errors.New("no complete set has passed verification; run VerifyBackup, or name a set and pass allowFailedVerification"))
	}
	return "", NonRetryable(ErrSetNotFound, errors.New("the backup store holds no complete set; run NightlyBackup first"))
}

// SelectSet picks a set (PickSet) and returns its manifest and verdict.
func (b *BackupStore) SelectSet(ctx context.Context, in SelectSetInput) (SelectedSet, error) {
	var out SelectedSet
	sets, err := b.ListSets(ctx)
	if err != nil {
		return out, err
	}
	id, err := PickSet(sets, in)
	if err != nil {
		return out, err
	}
	for _, s := range sets {
		if s.ID == id {
			out.Verified = s.Verified
		}
	}
	out.Manifest, err = b.ReadManifest(ctx, id)
	return out, err
}

// CheckArtifact reads an artifact back from the store and compares its size and SHA-256
// with the manifest. A mismatch is a finding in the returned check, not an error.
func (b *BackupStore) CheckArtifact(ctx context.Context, a Artifact) (VerifyCheck, error) {
	c := VerifyCheck{Name: a.Kind + " " + a.Source, Artifact: a.Key}
	started := time.Now()
	rc, err := b.Store.Get(ctx, a.Key)
	if errors.Is(err, store.ErrNotFound) {
		c.Problems = append(c.Problems, fmt.Sprintf("%s: missing from the store", a.Key))
		return c, nil
	}
	if err != nil {
		return c, b.storeErr("get "+a.Key, err)
	}
	defer rc.Close()
	h := sha256.New()
	n, err := io.Copy(h, rc)
	if err != nil {
		return c, b.storeErr("read "+a.Key, err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if n != a.Size {
		c.Problems = append(c.Problems, fmt.Sprintf("%s: size mismatch: %d bytes in the store, %d in the manifest", a.Key, n, a.Size))
	}
	if sum != a.SHA256 {
		c.Problems = append(c.Problems, fmt.Sprintf("%s: checksum mismatch: sha256 %s in the store, %s in the manifest", a.Key, sum, a.SHA256))
	}
	c.Passed = len(c.Problems) == 0
	c.Detail = fmt.Sprintf("%d bytes, sha256 ok (%s)", n, time.Since(started).Round(time.Millisecond))
	return c, nil
}
