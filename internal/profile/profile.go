// Package profile holds everything drflow knows about the application it protects:
// which tasks are unfinished, how Redis is rebuilt from PostgreSQL, which objects a
// restore needs first. The runbooks only talk to the Profile interface, so another
// application plugs in by implementing it; Kohakku (kohakku.go) is the one shipped.
package profile

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
)

// DB opens connections to the application's databases by name. The caller
// closes what it gets.
type DB interface {
	Connect(ctx context.Context, database string) (*pgx.Conn, error)
}

// Profile is the application-specific half of the recovery runbooks.
type Profile interface {
	// Name of the application ("kohakku").
	Name() string
	// KeyPattern matches every Redis key the application owns (SCAN MATCH).
	KeyPattern() string
	// RedisPlan reads PostgreSQL and counts what a rebuild would write.
	RedisPlan(ctx context.Context, db DB) (RedisPlan, error)
	// RebuildRedis deletes the application's keys and writes them again from
	// PostgreSQL, batch after batch, calling progress after each batch. It is
	// idempotent: running it twice leaves the same state as running it once.
	RebuildRedis(ctx context.Context, db DB, rdb redis.UniversalClient, progress func(RebuildProgress)) (RebuildResult, error)
	// CheckRedis compares Redis with PostgreSQL: the figures a rebuild promises.
	CheckRedis(ctx context.Context, db DB, rdb redis.UniversalClient) (RedisCheck, error)
	// ObjectClasses says which objects of bucket a "needed" restore brings back,
	// in the order they are needed. Objects matching no class are restored only
	// with scope "all", after every class.
	ObjectClasses(ctx context.Context, db DB, bucket string) ([]ObjectClass, error)

	// RequeueLost re-queues, in batches, the in-flight tasks whose agent is gone (by
	// rule), each at most once per recoveryID however often it is called: the
	// database change and the queue push are recorded per recovery, and a push
	// interrupted by a crash is completed by the next call.
	RequeueLost(ctx context.Context, db DB, rdb redis.UniversalClient, in RequeueInput) (RequeueResult, error)
	// TrackRequeued counts the tasks recoveryID re-queued by their status now, and
	// lists up to limit of those not finished yet, with ids greater than after.
	TrackRequeued(ctx context.Context, db DB, recoveryID string, after int64, limit int) (RequeueStatus, error)
	// CleanupAgents marks the agents that are gone (by rule) dead and removes them
	// from Redis's live set. It does not touch their tasks.
	CleanupAgents(ctx context.Context, db DB, rdb redis.UniversalClient, rule LostRule) (CleanupResult, error)
	// LatestGeneration is the highest agent registration number in the database:
	// after a restore, every agent at or below it belongs to the lost cluster.
	LatestGeneration(ctx context.Context, db DB) (int64, error)
}

// LostRule says which agents are gone.
type LostRule struct {
	// HeartbeatBefore: an agent whose last heartbeat is older is gone.
	HeartbeatBefore time.Time `json:"heartbeatBefore"`
	// GenerationUpTo: agents registered with this generation or a lower one
	// belong to the cluster that was lost; 0 means no such rule.
	GenerationUpTo int64 `json:"generationUpTo,omitempty"`
}

// RequeueInput selects the lost tasks to re-queue.
type RequeueInput struct {
	RecoveryID string   `json:"recoveryId"`
	Rule       LostRule `json:"rule"`
	// Batch is the number of tasks per statement and queue push.
	Batch int `json:"batch"`
	// Until: batches go on until no lost task is left or this time has passed (zero: one
	// batch).
	Until time.Time `json:"until,omitzero"`
	// Progress, when set, is called with the totals after each batch but the last.
	Progress func(RequeueResult) `json:"-"`
}

// RequeueResult reports one RequeueLost call.
type RequeueResult struct {
	// Requeued tasks in this call (database and queue).
	Requeued int64 `json:"requeued"`
	// Batches is the number of re-queue statements the call ran.
	Batches int `json:"batches,omitempty"`
	// Repushed tasks whose queue push an earlier, interrupted call had not done.
	Repushed int64 `json:"repushed"`
	// Done: no lost task is left to re-queue.
	Done bool `json:"done"`
}

// RequeueStatus is where the tasks of one recovery are now.
type RequeueStatus struct {
	// Requeued is how many tasks the recovery re-queued.
	Requeued int64 `json:"requeued"`
	// ByStatus counts them by current status.
	ByStatus map[string]int64 `json:"byStatus"`
	// Outstanding are those not completed, failed or cancelled yet.
	Outstanding int64 `json:"outstanding"`
	// OutstandingIDs is one page of them, in id order.
	OutstandingIDs []int64 `json:"outstandingIds,omitempty"`
}

// CleanupResult reports a CleanupAgents call.
type CleanupResult struct {
	// Dead is how many agents were marked dead.
	Dead int64 `json:"dead"`
	// Examples of their ids (up to 10).
	Examples []string `json:"examples,omitempty"`
}

// RedisPlan counts what a rebuild from PostgreSQL writes.
type RedisPlan struct {
	// Pending tasks go into the queue, in dispatch order.
	Pending int64 `json:"pending"`
	// Unfinished tasks (not terminal) each get a state hash.
	Unfinished int64 `json:"unfinished"`
	// LiveContainers are re-registered.
	LiveContainers int64 `json:"liveContainers"`
	// Keys is the key count after the rebuild.
	Keys int64 `json:"keys"`
}

// RebuildProgress is reported after each batch of a rebuild.
type RebuildProgress struct {
	// Phase is the step running, e.g. "delete", "tasks", "queue",
	// "containers" for Kohakku (PhaseDelete …).
	Phase string `json:"phase"`
	// Written counts the items of this phase done so far: keys deleted, or
	// rows written.
	Written int64 `json:"written"`
	// Total is the phase's item count, from the plan; 0 when not known in
	// advance (the delete phase).
	Total int64 `json:"total"`
}

// RebuildResult reports a finished rebuild.
type RebuildResult struct {
	// Deleted keys that matched KeyPattern before the rebuild.
	Deleted int64 `json:"deleted"`
	// Plan is what was written.
	Plan RedisPlan `json:"plan"`
	// Batches is the number of MULTI/EXEC transactions written.
	Batches int `json:"batches"`
}

// RedisCheck compares Redis with PostgreSQL.
type RedisCheck struct {
	// OK is true when every figure matches.
	OK bool `json:"ok"`
	// Expected from PostgreSQL, Found in Redis.
	Expected RedisPlan `json:"expected"`
	Found    RedisPlan `json:"found"`
	// Problems name each figure that differs.
	Problems []string `json:"problems,omitempty"`
}

// ObjectClass is one group of objects, restored together.
type ObjectClass struct {
	// Name for plans and progress ("briefs of unfinished tasks").
	Name string
	// Match reports whether a key belongs to the class.
	Match func(key string) bool
}
