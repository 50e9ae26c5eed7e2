// Package profile holds everything drflow knows about the application it protects:
// which tasks are unfinished, how Redis is rebuilt from PostgreSQL, which objects a
// restore needs first. The runbooks only talk to the Profile interface, so another
// application plugs in by implementing it; Kohakku (kohakku.go) is the one shipped.
package profile

import (
	"context"

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
