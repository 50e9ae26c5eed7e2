// Package app builds drflow's activities from a Config and registers them, with every
// workflow, on a Temporal worker. The worker binary and the end-to-end tests share it, so
// a test runs exactly what production runs.
package app

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/kohakku/drflow/activities"
	"github.com/kohakku/drflow/internal/config"
	"github.com/kohakku/drflow/internal/profile"
	"github.com/kohakku/drflow/internal/store"
	"github.com/kohakku/drflow/workflows"
)

// DefaultRedisInstance names the Redis at DRFLOW_REDIS_ADDR in workflow inputs and set keys.
const DefaultRedisInstance = "default"

// Activities are the activity structs a worker registers, built once with their clients.
type Activities struct {
	Host        *activities.Host
	Inventory   *activities.Inventory
	BackupStore *activities.BackupStore
	Postgres    *activities.Postgres
	Redis       *activities.Redis
	Objects     *activities.Objects
	SQLite      *activities.SQLite
	Services    *activities.Services
	AppState    *activities.AppState
	RedisHost   *activities.RedisHost
}

// New builds the activities for cfg. Parts that are not configured are left out of the
// Inventory, so a runbook naming them fails fast with what to set; a missing backup store
// fails the runbook's preflight the same way. New itself fails only on settings that
// cannot work (e.g. a malformed endpoint).
func New(ctx context.Context, cfg *config.Config) (*Activities, error) {
	a := &Activities{
		Host: activities.NewHost(),
		Inventory: &activities.Inventory{
			Retention: activities.RetentionPolicy{
				Days:            cfg.Backup.RetentionDays,
				KeepNewest:      3,
				IncompleteGrace: 24 * time.Hour,
			},
		},
	}

	var st store.Store
	bs := &activities.BackupStore{Describe: "(not configured)"}
	if err := cfg.Require(config.PartBackup); err != nil {
		bs.Check = func(context.Context) error {
			return fmt.Errorf("%w: %v", store.ErrInvalidBucket, err)
		}
	} else {
		s3, err := store.NewS3(ctx, store.S3Config{
			Bucket:          cfg.Backup.Bucket,
			Endpoint:        cfg.Backup.Endpoint,
			Region:          cfg.Backup.Region,
			AccessKeyID:     cfg.Backup.AccessKeyID,
			SecretAccessKey: cfg.Backup.SecretAccessKey.Reveal(),
			ForcePathStyle:  cfg.Backup.ForcePathStyle,
			Prefix:          cfg.Backup.Prefix,
		})
		if err != nil {
			return nil, fmt.Errorf("backup store: %w", err)
		}
		st = s3
		bs.Store = s3
		bs.Check = s3.Check
		bs.Describe = describeS3(cfg.Backup)
	}
	a.BackupStore = bs

	// One set of age keys for every artifact writer and reader (nil: none).
	keys, err := activities.NewAgeKeys(cfg.Encryption)
	if err != nil {
		return nil, fmt.Errorf("encryption: %w", err)
	}
	a.Postgres = &activities.Postgres{Config: cfg.Postgres, Store: st, Age: keys}
	if cfg.Require(config.PartPostgres) == nil {
		a.Inventory.Databases = append(a.Inventory.Databases, cfg.Postgres.Databases...)
	}
	a.Redis = &activities.Redis{Config: cfg.Redis, Store: st, Instance: DefaultRedisInstance, Age: keys}
	if cfg.Require(config.PartRedis) == nil && cfg.Redis.Addr != "" {
		a.Inventory.Redis = []string{DefaultRedisInstance}
	}
	a.Objects = &activities.Objects{Store: st, Age: keys}
	if cfg.Require(config.PartMinIO) == nil {
		mc, err := activities.NewMinIOClient(cfg.MinIO, activities.DefaultObjectsConcurrency)
		if err != nil {
			return nil, fmt.Errorf("minio client for %s (DRFLOW_MINIO_ENDPOINT): %w", cfg.MinIO.Endpoint, err)
		}
		a.Objects.Client = mc
		a.Inventory.Buckets = append(a.Inventory.Buckets, cfg.MinIO.Buckets...)
	}
	a.AppState = &activities.AppState{Profile: profile.Kohakku{}, Postgres: cfg.Postgres, Redis: cfg.Redis, Instance: DefaultRedisInstance}
	a.Objects.Classes = activities.ObjectClassesFunc(a.AppState)
	a.RedisHost = &activities.RedisHost{AOFDir: cfg.Redis.AOFDir}
	a.Inventory.RedisHostQueue = cfg.Redis.HostQueue
	a.Services = &activities.Services{Hooks: cfg.Services.Hooks}
	a.Inventory.Services = map[string]string{}
	for _, svc := range cfg.Services.Hooks.Services {
		a.Inventory.Services[svc.Name] = svc.TaskQueue
	}
	a.SQLite = &activities.SQLite{Databases: cfg.SQLite.Paths(), Store: st, Age: keys}
	for _, db := range cfg.SQLite.Databases {
		a.Inventory.SQLite = append(a.Inventory.SQLite, db.Name)
	}
	if st == nil {
		// Without a store nothing can be written; the sources stay listed so the error
		// a run gets is about the store, which is what needs fixing.
		a.Inventory.Retention.Days = max(a.Inventory.Retention.Days, 1)
	}
	return a, nil
}

func describeS3(b config.Backup) string {
	where := "AWS"
	if b.Endpoint != "" {
		where = b.Endpoint
	}
	d := fmt.Sprintf("s3://%s", b.Bucket)
	if b.Prefix != "" {
		d += "/" + b.Prefix
	}
	return d + " at " + where
}

// Register registers every workflow under its stable type name, behind the check of
// its input against its JSON Schema (workflows.Definition.Strict), and every activity
// struct's methods under their method names.
func Register(r worker.Registry, a *Activities) error {
	if a == nil {
		return errors.New("register: no activities")
	}
	for _, def := range workflows.All() {
		r.RegisterWorkflowWithOptions(def.Strict(), workflow.RegisterOptions{Name: def.Name})
	}
	for _, s := range []any{a.Host, a.Inventory, a.BackupStore, a.Postgres, a.Redis, a.Objects, a.SQLite, a.Services, a.AppState, a.RedisHost} {
		r.RegisterActivityWithOptions(s, activity.RegisterOptions{})
	}
	return nil
}

// RegisterHost registers the activities a host-specific task queue serves
// (DRFLOW_HOST_QUEUES): the steps that need this host's file system, and the service
// hooks, which a service may run on its host's queue.
func RegisterHost(r worker.Registry, a *Activities) error {
	if a == nil {
		return errors.New("register: no activities")
	}
	for _, s := range []any{a.RedisHost, a.Services} {
		r.RegisterActivityWithOptions(s, activity.RegisterOptions{})
	}
	return nil
}
