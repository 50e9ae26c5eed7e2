// Package schemas is the single definition of the Kohakku stack's data layout:
// the PostgreSQL schemas of both databases (embedded SQL), the names of their
// databases, tables and status values, the object keys in the app's bucket and
// the Redis key layout (redis.go, documented in redis.md).
//
// Activities, the simulator, the seeder and the tests use these names instead of
// spelling them out, so a change to the layout is made here once.
package schemas

import (
	_ "embed"
	"fmt"
	"strconv"
	"strings"
)

// ControllerSQL creates the schema of the kohakku-controller database. It is
// idempotent (IF NOT EXISTS throughout) and contains no transaction control.
//
//go:embed controller.sql
var ControllerSQL string

// DispatcherSQL creates the schema of the kohakku-dispatcher database. It is
// idempotent (IF NOT EXISTS throughout) and contains no transaction control.
//
//go:embed dispatcher.sql
var DispatcherSQL string

// RedisLayout is redis.md, the documented Redis key layout.
//
//go:embed redis.md
var RedisLayout string

// Database names.
const (
	ControllerDB = "kohakku-controller"
	DispatcherDB = "kohakku-dispatcher"
)

// Tables of kohakku-controller.
const (
	TasksTable  = "tasks_task"
	BriefsTable = "briefs"
)

// Tables of kohakku-dispatcher.
const (
	AgentContainersTable     = "agent_containers"
	DispatchAssignmentsTable = "dispatch_assignments"
)

// Task statuses, the values allowed by tasks_task_status_check.
const (
	StatusPending    = "pending"
	StatusDispatched = "dispatched"
	StatusRunning    = "running"
	StatusCompleted  = "completed"
	StatusFailed     = "failed"
	StatusCancelled  = "cancelled"
)

// TaskStatuses lists every task status, in lifecycle order. Callers must not
// modify it.
var TaskStatuses = []string{
	StatusPending, StatusDispatched, StatusRunning,
	StatusCompleted, StatusFailed, StatusCancelled,
}

// IsTerminal reports whether a task in this status will never run again:
// completed, failed or cancelled.
func IsTerminal(status string) bool {
	switch status {
	case StatusCompleted, StatusFailed, StatusCancelled:
		return true
	}
	return false
}

// IsInFlight reports whether a task in this status is held by an agent
// container: dispatched or running. These are the tasks lost with their agent.
func IsInFlight(status string) bool {
	return status == StatusDispatched || status == StatusRunning
}

// ValidTaskStatus reports whether s is one of TaskStatuses.
func ValidTaskStatus(s string) bool {
	for _, v := range TaskStatuses {
		if v == s {
			return true
		}
	}
	return false
}

// Agent container statuses, the values allowed by agent_containers_status_check.
const (
	ContainerLive = "live"
	ContainerDead = "dead"
)

// DispatchOrderSQL is the ORDER BY list that defines dispatch order: higher
// priority first, then older first, then lower id. The Redis pending queue holds
// pending task ids in exactly this order (see redis.md), and the index
// tasks_task_status_dispatch_idx serves it.
const DispatchOrderSQL = "priority DESC, created_at ASC, id ASC"

// PendingInDispatchOrderSQL selects the ids of all pending tasks in dispatch
// order: the contents of the Redis pending queue, rebuilt from PostgreSQL.
const PendingInDispatchOrderSQL = "SELECT id FROM " + TasksTable +
	" WHERE status = '" + StatusPending + "' ORDER BY " + DispatchOrderSQL

// DefaultBucket is the app's MinIO bucket.
const DefaultBucket = "kohakku"

// Object key prefixes in the app's bucket.
const (
	// BriefsPrefix holds one brief per task, at BriefKey(id).
	BriefsPrefix = "briefs/"
	// SkillsPrefix holds the skills agents load, each a folder
	// skills/<name>/ with at least a SKILL.md.
	SkillsPrefix = "skills/"
)

// BriefObjectName is the last element of every brief's object key.
const BriefObjectName = "brief.json"

// BriefKey is the object key of task id's brief: briefs/<id>/brief.json. The
// same string is stored in tasks_task.brief_key and briefs.key.
func BriefKey(taskID int64) string {
	return BriefsPrefix + strconv.FormatInt(taskID, 10) + "/" + BriefObjectName
}

// ParseBriefKey returns the task id of a key made by BriefKey.
func ParseBriefKey(key string) (int64, error) {
	rest, ok := strings.CutPrefix(key, BriefsPrefix)
	if !ok {
		return 0, fmt.Errorf("brief key %q: no %q prefix", key, BriefsPrefix)
	}
	idText, ok := strings.CutSuffix(rest, "/"+BriefObjectName)
	if !ok {
		return 0, fmt.Errorf("brief key %q: no %q suffix", key, "/"+BriefObjectName)
	}
	id, err := strconv.ParseInt(idText, 10, 64)
	if err != nil || id <= 0 || strconv.FormatInt(id, 10) != idText {
		return 0, fmt.Errorf("brief key %q: bad task id %q", key, idText)
	}
	return id, nil
}

// SkillFileName is the file every skill folder holds.
const SkillFileName = "SKILL.md"

// SkillKey is the object key of file within skill name: skills/<name>/<file>.
func SkillKey(name, file string) string {
	return SkillsPrefix + name + "/" + file
}

// SkillName returns the skill a key under SkillsPrefix belongs to, or false for
// any other key.
func SkillName(key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, SkillsPrefix)
	if !ok {
		return "", false
	}
	name, _, ok := strings.Cut(rest, "/")
	if !ok || name == "" {
		return "", false
	}
	return name, true
}
