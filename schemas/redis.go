package schemas

import (
	"fmt"
	"strconv"
	"strings"
)

// The Redis key layout of the Kohakku stack. Every exported name in this file is
// documented in redis.md (a test checks it); read that for the commands each
// key is used with and how it is rebuilt from PostgreSQL.

// KeyPrefix starts every Kohakku key. SCAN MATCH KeyPattern finds them all.
const (
	KeyPrefix  = "kohakku:"
	KeyPattern = KeyPrefix + "*"
)

// PendingQueueKey is a list of pending task ids (decimal strings) in dispatch
// order, head first. Enqueue with RPUSH, dequeue with LPOP / BLPOP.
const PendingQueueKey = "kohakku:queue:pending"

// TaskKeyPrefix starts every per-task state hash; TaskKeyPattern matches them
// all (SCAN MATCH).
const (
	TaskKeyPrefix  = "kohakku:task:"
	TaskKeyPattern = TaskKeyPrefix + "*"
)

// TaskKey is the state hash of a task that is not terminal:
// kohakku:task:<id>, with the TaskField… fields.
func TaskKey(id int64) string {
	return TaskKeyPrefix + strconv.FormatInt(id, 10)
}

// ParseTaskKey returns the task id of a key made by TaskKey.
func ParseTaskKey(key string) (int64, error) {
	idText, ok := strings.CutPrefix(key, TaskKeyPrefix)
	if !ok {
		return 0, fmt.Errorf("task key %q: no %q prefix", key, TaskKeyPrefix)
	}
	id, err := strconv.ParseInt(idText, 10, 64)
	if err != nil || id <= 0 || strconv.FormatInt(id, 10) != idText {
		return 0, fmt.Errorf("task key %q: bad task id %q", key, idText)
	}
	return id, nil
}

// Fields of the TaskKey hash. All values are decimal strings except status and
// container; container is "" while no agent holds the task.
const (
	TaskFieldStatus    = "status"
	TaskFieldContainer = "container"
	TaskFieldAttempt   = "attempt"
	TaskFieldProgress  = "progress"
	// TaskFieldUpdatedAt is unix milliseconds of the last change.
	TaskFieldUpdatedAt = "updated_at"
)

// LiveContainersKey is a sorted set of live agent containers: member the
// container id, score its last heartbeat in unix milliseconds. Agents ZADD on
// every heartbeat; ZRANGE BYSCORE -inf <now-timeout> lists timed-out agents.
const LiveContainersKey = "kohakku:containers:live"
