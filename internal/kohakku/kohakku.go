// Package kohakku fills a Kohakku stack (both PostgreSQL databases, Redis and
// the MinIO bucket) with tasks in realistic states, and reads back the figures
// a backup or a recovery is compared by.
//
// It is a test and demo tool: Seed writes into empty stores only and refuses
// anything else (ErrNotEmpty). The layout it writes is the one defined in
// package schemas.
package kohakku

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/minio/minio-go/v7"
	"github.com/redis/go-redis/v9"

	"github.com/kohakku/drflow/schemas"
)

// Target is one Kohakku stack.
//
// contract: every field but Bucket is required; Bucket "" means
// schemas.DefaultBucket. The clients belong to the caller, who closes them.
type Target struct {
	Controller *pgxpool.Pool // database kohakku-controller
	Dispatcher *pgxpool.Pool // database kohakku-dispatcher
	Redis      *redis.Client
	Objects    *minio.Client
	Bucket     string
}

func (t Target) bucket() string {
	if t.Bucket == "" {
		return schemas.DefaultBucket
	}
	return t.Bucket
}

func (t Target) validate() error {
	var missing []string
	if t.Controller == nil {
		missing = append(missing, "Controller")
	}
	if t.Dispatcher == nil {
		missing = append(missing, "Dispatcher")
	}
	if t.Redis == nil {
		missing = append(missing, "Redis")
	}
	if t.Objects == nil {
		missing = append(missing, "Objects")
	}
	if len(missing) > 0 {
		return fmt.Errorf("kohakku target: missing %v", missing)
	}
	return nil
}

// Summary is the set of figures that describe a stack's contents, as written by
// Seed or read back by Snapshot. Two Summaries of the same data are equal
// (reflect.DeepEqual; ByStatus always has every status of
// schemas.TaskStatuses, zeros included), so before/after comparisons can use
// Diff.
type Summary struct {
	// Tasks is the row count of tasks_task; ByStatus splits it by status.
	Tasks    int            `json:"tasks"`
	ByStatus map[string]int `json:"byStatus"`
	// BriefRows is the row count of the briefs table.
	BriefRows int `json:"briefRows"`
	// Containers and DeadContainers count agent_containers by status.
	Containers     int `json:"containers"`
	DeadContainers int `json:"deadContainers"`
	// Assignments is the row count of dispatch_assignments; OpenAssignments
	// those not released.
	Assignments     int `json:"assignments"`
	OpenAssignments int `json:"openAssignments"`

	// PendingQueued is the length of the Redis pending queue, TaskHashes the
	// number of per-task hashes, LiveContainers the size of the live set.
	PendingQueued  int `json:"pendingQueued"`
	TaskHashes     int `json:"taskHashes"`
	LiveContainers int `json:"liveContainers"`

	// Briefs counts brief objects (keys of the form schemas.BriefKey),
	// Skills the distinct skill folders under schemas.SkillsPrefix.
	Briefs int `json:"briefs"`
	Skills int `json:"skills"`
	// Objects and Bytes count every object in the bucket.
	Objects int   `json:"objects"`
	Bytes   int64 `json:"bytes"`
}

func newSummary() Summary {
	s := Summary{ByStatus: make(map[string]int, len(schemas.TaskStatuses))}
	for _, st := range schemas.TaskStatuses {
		s.ByStatus[st] = 0
	}
	return s
}

// Diff lists the figures in which s and other differ, one "name: s → other"
// line each, in a fixed order; nil means equal.
func (s Summary) Diff(other Summary) []string {
	var out []string
	add := func(name string, a, b int64) {
		if a != b {
			out = append(out, fmt.Sprintf("%s: %d → %d", name, a, b))
		}
	}
	add("tasks", int64(s.Tasks), int64(other.Tasks))
	statuses := slices.Clone(schemas.TaskStatuses)
	for st := range s.ByStatus {
		if !slices.Contains(statuses, st) {
			statuses = append(statuses, st)
		}
	}
	for st := range other.ByStatus {
		if !slices.Contains(statuses, st) {
			statuses = append(statuses, st)
		}
	}
	sort.Strings(statuses[len(schemas.TaskStatuses):])
	for _, st := range statuses {
		add("tasks."+st, int64(s.ByStatus[st]), int64(other.ByStatus[st]))
	}
	add("briefRows", int64(s.BriefRows), int64(other.BriefRows))
	add("containers", int64(s.Containers), int64(other.Containers))
	add("deadContainers", int64(s.DeadContainers), int64(other.DeadContainers))
	add("assignments", int64(s.Assignments), int64(other.Assignments))
	add("openAssignments", int64(s.OpenAssignments), int64(other.OpenAssignments))
	add("pendingQueued", int64(s.PendingQueued), int64(other.PendingQueued))
	add("taskHashes", int64(s.TaskHashes), int64(other.TaskHashes))
	add("liveContainers", int64(s.LiveContainers), int64(other.LiveContainers))
	add("briefs", int64(s.Briefs), int64(other.Briefs))
	add("skills", int64(s.Skills), int64(other.Skills))
	add("objects", int64(s.Objects), int64(other.Objects))
	add("bytes", s.Bytes, other.Bytes)
	return out
}

// ErrNotEmpty is returned (wrapped, naming what is not empty) by Seed when a
// store already holds Kohakku data.
var ErrNotEmpty = errors.New("kohakku stack is not empty")

// schemaLockID serialises concurrent ApplySchemas on one database: CREATE …
// IF NOT EXISTS is not safe against a concurrent creator of the same name.
const schemaLockID = 0x6b6f68616b6b75 // "kohakku"

// ApplySchemas creates the tables of both databases (schemas.ControllerSQL,
// schemas.DispatcherSQL) and the bucket. It is idempotent and safe to run
// concurrently: each database's DDL runs in one transaction under an advisory
// lock. The databases themselves must exist.
func ApplySchemas(ctx context.Context, t Target) error {
	if err := t.validate(); err != nil {
		return err
	}
	for _, db := range []struct {
		name string
		pool *pgxpool.Pool
		sql  string
	}{
		{schemas.ControllerDB, t.Controller, schemas.ControllerSQL},
		{schemas.DispatcherDB, t.Dispatcher, schemas.DispatcherSQL},
	} {
		err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(schemaLockID)); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, db.sql)
			return err
		})
		if err != nil {
			return fmt.Errorf("apply schema %s: %w", db.name, err)
		}
	}
	if err := ensureBucket(ctx, t.Objects, t.bucket()); err != nil {
		return fmt.Errorf("make bucket %s: %w", t.bucket(), err)
	}
	return nil
}

func ensureBucket(ctx context.Context, c *minio.Client, bucket string) error {
	ok, err := c.BucketExists(ctx, bucket)
	if err != nil {
		return err
	}
	if ok {
		return nil
	}
	err = c.MakeBucket(ctx, bucket, minio.MakeBucketOptions{})
	if err != nil {
		// Lost a race with another creator: that is success too.
		if code := minio.ToErrorResponse(err).Code; code == "BucketAlreadyOwnedByYou" || code == "BucketAlreadyExists" {
			return nil
		}
	}
	return err
}
