package kohakku

import (
	"context"
	"fmt"

	"github.com/minio/minio-go/v7"
	"golang.org/x/sync/errgroup"

	"github.com/kohakku/drflow/schemas"
)

// Snapshot reads the Summary figures from the live systems: row counts from
// both databases, key counts from Redis and a full listing of the bucket. It
// only reads. The tables and the bucket must exist; an empty Redis is fine
// (zero counts). Each store is read on its own, so the figures are not one
// consistent point in time while the stack is changing.
func Snapshot(ctx context.Context, t Target) (Summary, error) {
	if err := t.validate(); err != nil {
		return Summary{}, err
	}
	s := newSummary()
	g, ctx := errgroup.WithContext(ctx)
	// Each goroutine writes its own fields of s; g.Wait orders the writes
	// before the return.
	g.Go(func() error {
		rows, err := t.Controller.Query(ctx, "SELECT status, count(*) FROM "+schemas.TasksTable+" GROUP BY status")
		if err != nil {
			return fmt.Errorf("count %s.%s: %w", schemas.ControllerDB, schemas.TasksTable, err)
		}
		byStatus := map[string]int{}
		var status string
		var n int
		for rows.Next() {
			if err := rows.Scan(&status, &n); err != nil {
				rows.Close()
				return fmt.Errorf("count %s.%s: %w", schemas.ControllerDB, schemas.TasksTable, err)
			}
			byStatus[status] = n
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("count %s.%s: %w", schemas.ControllerDB, schemas.TasksTable, err)
		}
		var briefs int
		if err := t.Controller.QueryRow(ctx, "SELECT count(*) FROM "+schemas.BriefsTable).Scan(&briefs); err != nil {
			return fmt.Errorf("count %s.%s: %w", schemas.ControllerDB, schemas.BriefsTable, err)
		}
		for st, n := range byStatus {
			s.ByStatus[st] = n
			s.Tasks += n
		}
		s.BriefRows = briefs
		return nil
	})
	g.Go(func() error {
		err := t.Dispatcher.QueryRow(ctx, `SELECT
			count(*) FILTER (WHERE status = $1),
			count(*) FILTER (WHERE status <> $1)
			FROM `+schemas.AgentContainersTable, schemas.ContainerLive).Scan(&s.Containers, &s.DeadContainers)
		if err != nil {
			return fmt.Errorf("count %s.%s: %w", schemas.DispatcherDB, schemas.AgentContainersTable, err)
		}
		err = t.Dispatcher.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE released_at IS NULL) FROM `+
			schemas.DispatchAssignmentsTable).Scan(&s.Assignments, &s.OpenAssignments)
		if err != nil {
			return fmt.Errorf("count %s.%s: %w", schemas.DispatcherDB, schemas.DispatchAssignmentsTable, err)
		}
		return nil
	})
	g.Go(func() error {
		pipe := t.Redis.Pipeline()
		llen := pipe.LLen(ctx, schemas.PendingQueueKey)
		zcard := pipe.ZCard(ctx, schemas.LiveContainersKey)
		if _, err := pipe.Exec(ctx); err != nil {
			return fmt.Errorf("count redis keys: %w", err)
		}
		s.PendingQueued = int(llen.Val())
		s.LiveContainers = int(zcard.Val())
		// SCAN may return a key more than once while the keyspace is
		// rehashing; the set counts it once.
		seen := map[string]struct{}{}
		iter := t.Redis.Scan(ctx, 0, schemas.TaskKeyPattern, 1000).Iterator()
		for iter.Next(ctx) {
			if _, err := schemas.ParseTaskKey(iter.Val()); err == nil {
				seen[iter.Val()] = struct{}{}
			}
		}
		if err := iter.Err(); err != nil {
			return fmt.Errorf("scan redis %s: %w", schemas.TaskKeyPattern, err)
		}
		s.TaskHashes = len(seen)
		return nil
	})
	g.Go(func() error {
		skills := map[string]bool{}
		for obj := range t.Objects.ListObjects(ctx, t.bucket(), minio.ListObjectsOptions{Recursive: true}) {
			if obj.Err != nil {
				return fmt.Errorf("list bucket %s: %w", t.bucket(), obj.Err)
			}
			s.Objects++
			s.Bytes += obj.Size
			if _, err := schemas.ParseBriefKey(obj.Key); err == nil {
				s.Briefs++
			} else if name, ok := schemas.SkillName(obj.Key); ok {
				skills[name] = true
			}
		}
		s.Skills = len(skills)
		return nil
	})
	if err := g.Wait(); err != nil {
		return Summary{}, fmt.Errorf("snapshot: %w", err)
	}
	return s, nil
}
