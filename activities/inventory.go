package activities

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// ErrUnknownTarget: the input names a database, bucket or instance that is not configured.
const ErrUnknownTarget = "UnknownTarget"

// Inventory is what the worker's configuration says exists: the databases, Redis
// instances and buckets a runbook may name. Workflow inputs name targets; only the
// worker knows their addresses and credentials.
type Inventory struct {
	Databases []string
	// Redis instances by name; "default" is DRFLOW_REDIS_ADDR.
	Redis   []string
	Buckets []string
	// SQLite databases by name (DRFLOW_SQLITE_DATABASES).
	SQLite []string
	// Retention is the configured policy (S3_BACKUP_RETENTION days).
	Retention RetentionPolicy
	// RedisHostQueue is the task queue of the worker on the Redis host, for the steps
	// that need its file system (DRFLOW_REDIS_HOST_QUEUE); "" means the shared queue.
	RedisHostQueue string
	// Services maps each service with hooks (DRFLOW_HOOKS_FILE) to the task queue its
	// hooks run on ("" = the shared queue).
	Services map[string]string
}

// TargetsInput selects targets by name; empty lists mean every configured one.
type TargetsInput struct {
	Databases []string `json:"databases,omitempty"`
	Redis     []string `json:"redis,omitempty"`
	Buckets   []string `json:"buckets,omitempty"`
	SQLite    []string `json:"sqlite,omitempty"`
}

// Targets are resolved, configured targets and the retention policy.
type Targets struct {
	Databases []string        `json:"databases"`
	Redis     []string        `json:"redis"`
	Buckets   []string        `json:"buckets"`
	SQLite    []string        `json:"sqlite,omitempty"`
	Retention RetentionPolicy `json:"retention"`
	// RedisHostQueue and Services are copied from the Inventory.
	RedisHostQueue string            `json:"redisHostQueue,omitempty"`
	Services       map[string]string `json:"services,omitempty"`
}

// Resolve checks every named target against the configuration. An unknown name fails
// non-retryably, naming the input field, the value and what is configured.
func (inv *Inventory) Resolve(_ context.Context, in TargetsInput) (Targets, error) {
	pick := func(field, what string, asked, have []string) ([]string, error) {
		if len(asked) == 0 {
			return slices.Clone(have), nil
		}
		for _, a := range asked {
			if !slices.Contains(have, a) {
				configured := "none configured"
				if len(have) > 0 {
					configured = "configured: " + strings.Join(have, ", ")
				}
				return nil, NonRetryable(ErrUnknownTarget, fmt.Errorf("input field %q: unknown %s %q (%s)", field, what, a, configured))
			}
		}
		return slices.Clone(asked), nil
	}
	var t Targets
	var err error
	if t.Databases, err = pick("databases", "database", in.Databases, inv.Databases); err != nil {
		return t, err
	}
	if t.Redis, err = pick("redis", "Redis instance", in.Redis, inv.Redis); err != nil {
		return t, err
	}
	if t.Buckets, err = pick("buckets", "bucket", in.Buckets, inv.Buckets); err != nil {
		return t, err
	}
	if t.SQLite, err = pick("sqlite", "SQLite database", in.SQLite, inv.SQLite); err != nil {
		return t, err
	}
	t.Retention = inv.Retention
	t.RedisHostQueue = inv.RedisHostQueue
	t.Services = maps.Clone(inv.Services)
	return t, nil
}
