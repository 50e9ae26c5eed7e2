package kohakku

// The Kohakku simulator: the app's dispatcher, its agent containers and its
// monitor, played by goroutines against the same tables and keys as the real
// stack (package schemas). Tests and the demo use it so that tasks really run
// to completion, before and after a recovery. drflow's runbooks must never
// depend on it: nothing under activities/ or workflows/ imports it.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/redis/go-redis/v9"

	"github.com/kohakku/drflow/schemas"
)

// Defaults for the zero fields of SimOptions.
const (
	DefaultSimAgents         = 8
	DefaultSimTaskDuration   = 2 * time.Second
	DefaultSimHeartbeatEvery = 500 * time.Millisecond
	DefaultSimAgentTimeout   = 5 * time.Second
	DefaultSimPollEvery      = 200 * time.Millisecond
	DefaultSimGeneration     = "sim-"
)

const (
	// simBackoffMin and simBackoffMax bound the pause of a loop after an error.
	simBackoffMin = 200 * time.Millisecond
	simBackoffMax = 2 * time.Second
	// simOpTimeout bounds one round trip to PostgreSQL or Redis, so a server
	// that stops answering (rather than refusing) cannot hang a loop.
	simOpTimeout = 5 * time.Second
	// simStopTimeout bounds the clean-up done by Stop.
	simStopTimeout = 5 * time.Second
	// simMaxErrors is how many recent errors SimStats.Errors keeps.
	simMaxErrors = 32
	// simRegisterLockID serialises container registrations, which hand out
	// max(generation)+1.
	simRegisterLockID = schemaLockID + 1
)

// SimOptions configures StartSim. Zero fields take the defaults above
// (FailRate, Jitter and Seed default to zero).
type SimOptions struct {
	// Agents is the number of agent containers working at the same time.
	Agents int
	// TaskDuration is how long an agent works on one task, plus a uniform
	// random offset in [-Jitter, +Jitter] (never below zero).
	TaskDuration time.Duration
	Jitter       time.Duration
	// FailRate is the probability, in [0, 1], that a task ends failed
	// instead of completed.
	FailRate float64
	// HeartbeatEvery is the agents' heartbeat period: ZADD to the live set,
	// and agent_containers.last_heartbeat_at through the dispatcher.
	HeartbeatEvery time.Duration
	// AgentTimeout is how old a container's heartbeat may get before the
	// monitor marks it dead. It also sets the monitor's period (half of it).
	AgentTimeout time.Duration
	// PollEvery is the dispatcher's BLPOP timeout. Below a second it is sent
	// as a fractional timeout, which needs the Redis client's ReadTimeout to
	// be longer (go-redis' default of 3s is).
	PollEvery time.Duration
	// Generation prefixes the container ids: agent n (1-based) registers as
	// Generation+n, e.g. "gen2-3", so the containers of a new simulator differ
	// from those before a disaster. An id that is already registered is never
	// reused: the agent takes Generation+n+"."+k with the first free k.
	Generation string
	// Seed selects the task durations and which tasks fail.
	Seed int64
	// Log receives the simulator's errors (at most one line per second per
	// step) and container events; nil logs nothing.
	Log *slog.Logger
}

func (o SimOptions) withDefaults() (SimOptions, error) {
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"TaskDuration", o.TaskDuration}, {"Jitter", o.Jitter}, {"HeartbeatEvery", o.HeartbeatEvery},
		{"AgentTimeout", o.AgentTimeout}, {"PollEvery", o.PollEvery},
	} {
		if d.v < 0 {
			return o, fmt.Errorf("sim options: %s is %s, must not be negative", d.name, d.v)
		}
	}
	if o.Agents < 0 {
		return o, fmt.Errorf("sim options: Agents is %d, must not be negative", o.Agents)
	}
	if math.IsNaN(o.FailRate) || o.FailRate < 0 || o.FailRate > 1 {
		return o, fmt.Errorf("sim options: FailRate is %v, must be in [0, 1]", o.FailRate)
	}
	if o.Agents == 0 {
		o.Agents = DefaultSimAgents
	}
	if o.TaskDuration == 0 {
		o.TaskDuration = DefaultSimTaskDuration
	}
	if o.HeartbeatEvery == 0 {
		o.HeartbeatEvery = DefaultSimHeartbeatEvery
	}
	if o.AgentTimeout == 0 {
		o.AgentTimeout = DefaultSimAgentTimeout
	}
	if o.PollEvery == 0 {
		o.PollEvery = DefaultSimPollEvery
	}
	if o.Generation == "" {
		o.Generation = DefaultSimGeneration
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return o, nil
}

// SimStats are the simulator's counters since StartSim.
type SimStats struct {
	// Dispatched counts tasks the dispatcher claimed in PostgreSQL and
	// handed to an agent.
	Dispatched int64
	// Started counts runs: tasks an agent moved from dispatched to running.
	Started int64
	// Running counts the runs started and not yet ended, whatever their end:
	// 0 once every run's bookkeeping (PostgreSQL, assignment, Redis hash) is
	// done.
	Running int64
	// Completed and Failed count runs that ended so (in PostgreSQL), once
	// their assignment is released and their Redis hash deleted.
	Completed int64
	Failed    int64
	// Abandoned counts runs an agent gave up because the task was no longer
	// its own (another attempt holds it) or its container was declared dead.
	Abandoned int64
	// Dropped counts queue entries dropped because the task was not pending.
	Dropped int64
	// StaleAssignments counts open dispatch_assignments rows of earlier
	// attempts that the dispatcher released when it dispatched a new attempt;
	// whoever re-queued the task should have released them.
	StaleAssignments int64
	// Registered counts container registrations (restarts included);
	// ContainersDead the containers the monitor marked dead.
	Registered     int64
	ContainersDead int64
	// Runs is the number of runs per task id. A task run twice by this
	// simulator shows 2.
	Runs map[int64]int
	// ErrorCount counts every error; Errors holds the last few, oldest first,
	// each prefixed with the step that met it.
	ErrorCount int64
	Errors     []string
}

// Sim is a running simulator; see StartSim.
//
// contract: its methods are safe for concurrent use. Call Stop when done, also
// after ctx ended: it waits for the goroutines and does the clean-up.
type Sim struct {
	t Target
	o SimOptions

	stopAll    context.CancelFunc // ends dispatcher, monitor and agents
	killAgents context.CancelFunc // ends the agents only
	agentsWG   sync.WaitGroup
	loopsWG    sync.WaitGroup

	// idle carries the offers of idle agents to the dispatcher. An agent
	// offers itself once per task; offers of containers that have since gone
	// are dropped by the dispatcher.
	idle chan *slot

	stopOnce sync.Once
	stopErr  error

	mu         sync.Mutex
	stats      SimStats
	containers map[int]string // agent number → its current container id
	killed     bool
	held       int64                // id popped by the dispatcher and not yet claimed at its exit
	loggedAt   map[string]time.Time // step → last logged error
}

type slot struct {
	container string
	tasks     chan job        // capacity 1: the dispatcher never blocks on it
	gone      <-chan struct{} // closed when the container stops
}

type job struct {
	id      int64
	attempt int32
}

// StartSim starts the simulator on t and returns at once; ctx bounds its
// life (Stop ends it earlier). t.Controller, t.Dispatcher and t.Redis are
// used, t.Objects and t.Bucket are not; the tables must exist (ApplySchemas
// or Seed). It does no I/O itself, so it succeeds while the stores are down:
// every loop retries until they are back.
//
// The simulator plays three parts of the app:
//
//   - The dispatcher takes task ids from the pending queue (BLPOP), one per
//     idle agent and never more, claims each in kohakku-controller (pending →
//     dispatched, container, attempt+1) and drops ids whose task is not
//     pending, then records a dispatch_assignments row and the task hash.
//   - Each agent registers a container (agent_containers, live set),
//     heartbeats, and runs the tasks given to it: running, progress every
//     quarter, then completed or failed with the assignment released and the
//     task hash deleted. Every write is fenced by (task, container, attempt),
//     so an agent whose task was re-dispatched meanwhile gives it up instead
//     of finishing it a second time. An agent whose container is declared
//     dead restarts as a new container; the tasks it held stay in flight.
//   - The monitor marks containers dead whose heartbeat is older than
//     AgentTimeout and removes them from the live set.
//
// The simulator never re-queues a task: finding in-flight tasks whose agent is
// gone and putting them back (RedispatchLostTasks) is drflow's job, and the
// simulator leaves them exactly as they are, so that job can be tested.
// Errors (servers down, wiped or restoring) are counted in Stats, and the
// failing loop backs off (200ms doubling to 2s) and keeps going; it never
// exits early and never panics.
func StartSim(ctx context.Context, t Target, o SimOptions) (*Sim, error) {
	if t.Controller == nil || t.Dispatcher == nil || t.Redis == nil {
		return nil, errors.New("kohakku sim: target needs Controller, Dispatcher and Redis")
	}
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &Sim{
		t:          t,
		o:          o,
		idle:       make(chan *slot, 4*o.Agents),
		containers: map[int]string{},
		loggedAt:   map[string]time.Time{},
	}
	s.stats.Runs = map[int64]int{}
	ctx, s.stopAll = context.WithCancel(ctx)
	agentsCtx, killAgents := context.WithCancel(ctx)
	s.killAgents = killAgents
	for n := 1; n <= o.Agents; n++ {
		rng := rand.New(rand.NewPCG(uint64(o.Seed), uint64(n)))
		s.agentsWG.Go(func() { s.agent(agentsCtx, n, rng) })
	}
	s.loopsWG.Go(func() { s.dispatcher(ctx) })
	s.loopsWG.Go(func() { s.monitor(ctx) })
	return s, nil
}

// Stop ends the simulator and waits for its goroutines. Agents finish
// nothing more: a task being worked on stays as it is in PostgreSQL and Redis,
// held by its container, as if the agent had crashed. Then, unless
// KillAgents ran, the agents' containers are marked dead and removed from the
// live set (a clean shutdown says so rather than waiting for the timeout),
// and an id the dispatcher had popped but not claimed is put back at the head
// of the queue. The returned error is that clean-up's, bounded to 5s; Stop is
// idempotent and returns the same error again.
func (s *Sim) Stop() error {
	s.stopOnce.Do(func() {
		s.stopAll()
		s.agentsWG.Wait()
		s.loopsWG.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), simStopTimeout)
		defer cancel()
		s.mu.Lock()
		held := s.held
		var containers []string
		if !s.killed {
			for _, c := range s.containers {
				containers = append(containers, c)
			}
		}
		s.mu.Unlock()
		var errs []error
		if held != 0 {
			if err := s.t.Redis.LPush(ctx, schemas.PendingQueueKey, strconv.FormatInt(held, 10)).Err(); err != nil {
				errs = append(errs, fmt.Errorf("kohakku sim: put task %d back in the queue: %w", held, err))
			}
		}
		if len(containers) > 0 {
			slices.Sort(containers)
			if _, err := s.t.Dispatcher.Exec(ctx, sqlDeregister, containers, schemas.ContainerDead, schemas.ContainerLive); err != nil {
				errs = append(errs, fmt.Errorf("kohakku sim: mark containers dead: %w", err))
			}
			if err := s.t.Redis.ZRem(ctx, schemas.LiveContainersKey, anySlice(containers)...).Err(); err != nil {
				errs = append(errs, fmt.Errorf("kohakku sim: remove containers from the live set: %w", err))
			}
		}
		s.stopErr = errors.Join(errs...)
	})
	return s.stopErr
}

// KillAgents simulates every agent dying at once and returns when they have
// stopped: no further completion, progress or heartbeat. Their tasks stay
// dispatched or running in PostgreSQL and Redis, held by their containers,
// which stay live until the monitor times them out. The dispatcher and the
// monitor keep running; with no agent left the dispatcher pops nothing more.
// The agents do not come back; start a new Sim (another Generation) for that.
func (s *Sim) KillAgents() {
	s.mu.Lock()
	s.killed = true
	s.mu.Unlock()
	s.killAgents()
	s.agentsWG.Wait()
}

// Stats returns a copy of the counters.
func (s *Sim) Stats() SimStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Runs = make(map[int64]int, len(s.stats.Runs))
	for id, n := range s.stats.Runs {
		st.Runs[id] = n
	}
	st.Errors = slices.Clone(s.stats.Errors)
	return st
}

// Containers returns the ids of the agents' current containers, sorted.
func (s *Sim) Containers() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.containers))
	for _, c := range s.containers {
		out = append(out, c)
	}
	slices.Sort(out)
	return out
}

// SQL of the simulator. Statuses are parameters, filled from package schemas.
var (
	// sqlClaim is idempotent for the container that claimed: a retry after a
	// lost reply finds the task dispatched to it and does not count another
	// attempt. An idle container holds nothing, so such a task is its own.
	// $3 pending, $4 dispatched.
	sqlClaim = `UPDATE ` + schemas.TasksTable + ` SET
		attempt = CASE WHEN status = $3 THEN attempt + 1 ELSE attempt END,
		dispatched_at = CASE WHEN status = $3 THEN now() ELSE dispatched_at END,
		status = $4, container_id = $2, progress = 0, updated_at = now()
		WHERE id = $1 AND (status = $3 OR (status = $4 AND container_id = $2))
		RETURNING attempt`
	// $1 task, $2 attempt.
	sqlReleaseStale = `UPDATE ` + schemas.DispatchAssignmentsTable + `
		SET released_at = GREATEST(now(), assigned_at)
		WHERE task_id = $1 AND attempt < $2 AND released_at IS NULL`
	sqlAssign = `INSERT INTO ` + schemas.DispatchAssignmentsTable + ` (task_id, container_id, attempt, assigned_at)
		VALUES ($1, $2, $3, now()) ON CONFLICT (task_id, attempt) DO NOTHING`
	// $4 dispatched, $5 running. Idempotent for a retry.
	sqlStart = `UPDATE ` + schemas.TasksTable + ` SET
		started_at = CASE WHEN status = $4 THEN now() ELSE started_at END,
		status = $5, updated_at = now()
		WHERE id = $1 AND container_id = $2 AND attempt = $3 AND status IN ($4, $5)`
	// $4 progress, $5 running.
	sqlProgress = `UPDATE ` + schemas.TasksTable + ` SET progress = $4, updated_at = now()
		WHERE id = $1 AND container_id = $2 AND attempt = $3 AND status = $5`
	// $4 final status, $5 progress, $6 running. Idempotent for a retry.
	sqlFinish = `UPDATE ` + schemas.TasksTable + ` SET
		finished_at = CASE WHEN status = $6 THEN now() ELSE finished_at END,
		status = $4, progress = $5, updated_at = now()
		WHERE id = $1 AND container_id = $2 AND attempt = $3 AND status IN ($6, $4)`
	sqlRelease = `UPDATE ` + schemas.DispatchAssignmentsTable + `
		SET released_at = GREATEST(now(), assigned_at)
		WHERE task_id = $1 AND attempt = $2 AND released_at IS NULL`
	// $3 live.
	sqlRegister = `INSERT INTO ` + schemas.AgentContainersTable + `
		(container_id, host, generation, status, started_at, last_heartbeat_at)
		SELECT $1, $2, COALESCE(max(generation), 0) + 1, $3, now(), now() FROM ` + schemas.AgentContainersTable + `
		ON CONFLICT (container_id) DO NOTHING`
	// $2 live.
	sqlHeartbeat = `UPDATE ` + schemas.AgentContainersTable + ` SET last_heartbeat_at = now()
		WHERE container_id = $1 AND status = $2`
	// $1 ids, $2 dead, $3 live.
	sqlDeregister = `UPDATE ` + schemas.AgentContainersTable + ` SET status = $2
		WHERE container_id = ANY($1) AND status = $3`
	// $1 timeout in ms, $2 ids with a fresh score in the live set, $3 dead, $4 live.
	sqlTimeOut = `UPDATE ` + schemas.AgentContainersTable + ` SET status = $3
		WHERE status = $4 AND last_heartbeat_at < now() - $1 * interval '1 millisecond'
		AND NOT (container_id = ANY($2))
		RETURNING container_id`
	// $1 ids, $2 live.
	sqlStillLive = `SELECT container_id FROM ` + schemas.AgentContainersTable + `
		WHERE container_id = ANY($1) AND status = $2`
)

// Redis scripts of the simulator.
var (
	// setTaskScript writes the whole task hash unless it belongs to another
	// container or attempt (the task was re-dispatched). A missing hash (Redis
	// wiped) is written whole. KEYS[1] task key; ARGV container, attempt,
	// status, progress, updated_at.
	setTaskScript = redis.NewScript(`
local cur = redis.call('HMGET', KEYS[1], 'container', 'attempt')
if cur[1] and (cur[1] ~= ARGV[1] or cur[2] ~= ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'container', ARGV[1], 'attempt', ARGV[2], 'progress', ARGV[4], 'updated_at', ARGV[5])
return 1`)
	// zremStaleScript removes members whose score is still at most ARGV[1], so a
	// heartbeat that arrived after the monitor looked keeps its container.
	zremStaleScript = redis.NewScript(`
local n = 0
for i = 2, #ARGV do
  local s = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if s and tonumber(s) <= tonumber(ARGV[1]) then n = n + redis.call('ZREM', KEYS[1], ARGV[i]) end
end
return n`)
)

// dispatcher hands pending tasks to idle agents until ctx is done.
func (s *Sim) dispatcher(ctx context.Context) {
	var held int64 // popped, not yet claimed or dropped
	defer func() {
		s.mu.Lock()
		s.held = held
		s.mu.Unlock()
	}()
	var bo backoff
	for {
		var sl *slot
		select {
		case <-ctx.Done():
			return
		case sl = <-s.idle:
		}
		for ctx.Err() == nil {
			if isClosed(sl.gone) {
				// The agent died between its offer and a task: give the id
				// back at the head, or keep it for the next agent.
				if held != 0 && s.pushBack(ctx, held) {
					held = 0
				}
				break
			}
			if held == 0 {
				id, err := s.pop(ctx)
				if err != nil {
					s.fail(ctx, "dispatcher: pop", err)
					bo.wait(ctx, sl.gone)
					continue
				}
				bo.reset()
				if id == 0 {
					continue // BLPOP timed out
				}
				held = id
				continue // re-check the agent before claiming
			}
			attempt, ok, err := s.claim(ctx, held, sl.container)
			if err != nil {
				s.fail(ctx, fmt.Sprintf("dispatcher: claim task %d", held), err)
				bo.wait(ctx, sl.gone)
				continue
			}
			bo.reset()
			id := held
			held = 0
			if !ok {
				s.count(func(st *SimStats) { st.Dropped++ })
				continue
			}
			s.count(func(st *SimStats) { st.Dispatched++ })
			s.recordDispatch(ctx, sl, id, attempt)
			sl.tasks <- job{id: id, attempt: attempt}
			break
		}
	}
}

// pop takes the next id from the pending queue, waiting up to PollEvery; 0
// means none. An entry that is not a task id is dropped with an error.
func (s *Sim) pop(ctx context.Context) (int64, error) {
	var cmd *redis.StringSliceCmd
	if s.o.PollEvery >= time.Second {
		cmd = s.t.Redis.BLPop(ctx, s.o.PollEvery, schemas.PendingQueueKey)
	} else {
		// go-redis' BLPop rounds a sub-second timeout up to 1s.
		cmd = redis.NewStringSliceCmd(ctx, "blpop", schemas.PendingQueueKey,
			strconv.FormatFloat(s.o.PollEvery.Seconds(), 'f', -1, 64))
		_ = s.t.Redis.Process(ctx, cmd)
	}
	res, err := cmd.Result()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	if len(res) != 2 {
		return 0, fmt.Errorf("blpop %s: unexpected reply %q", schemas.PendingQueueKey, res)
	}
	id, err := strconv.ParseInt(res[1], 10, 64)
	if err != nil || id <= 0 {
		s.count(func(st *SimStats) { st.Dropped++ })
		s.fail(ctx, "dispatcher: pop", fmt.Errorf("dropped queue entry %q: not a task id", res[1]))
		return 0, nil
	}
	return id, nil
}

func (s *Sim) pushBack(ctx context.Context, id int64) bool {
	octx, cancel := context.WithTimeout(ctx, simOpTimeout)
	defer cancel()
	if err := s.t.Redis.LPush(octx, schemas.PendingQueueKey, strconv.FormatInt(id, 10)).Err(); err != nil {
		s.fail(ctx, fmt.Sprintf("dispatcher: put task %d back", id), err)
		return false
	}
	return true
}

// claim moves task id from pending to dispatched to container in
// kohakku-controller; ok false means the task was not pending (drop it).
func (s *Sim) claim(ctx context.Context, id int64, container string) (attempt int32, ok bool, err error) {
	octx, cancel := context.WithTimeout(ctx, simOpTimeout)
	defer cancel()
	err = s.t.Controller.QueryRow(octx, sqlClaim, id, container, schemas.StatusPending, schemas.StatusDispatched).Scan(&attempt)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	return attempt, true, nil
}

// recordDispatch writes the dispatcher's side of a claimed task: the
// assignment row and the task hash. It retries until both are written or the
// agent is gone; then the task stays dispatched to that container, which is
// what a crash at this point leaves too.
func (s *Sim) recordDispatch(ctx context.Context, sl *slot, id int64, attempt int32) {
	step := fmt.Sprintf("dispatcher: assign task %d attempt %d", id, attempt)
	s.retry(ctx, sl.gone, step, func(ctx context.Context) error {
		var stale int64
		err := pgx.BeginFunc(ctx, s.t.Dispatcher, func(tx pgx.Tx) error {
			tag, err := tx.Exec(ctx, sqlReleaseStale, id, attempt)
			if err != nil {
				return err
			}
			stale = tag.RowsAffected()
			_, err = tx.Exec(ctx, sqlAssign, id, sl.container, attempt)
			return err
		})
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && (pgErr.Code == "23505" || pgErr.Code == "23503") {
			// A unique or foreign key violation will not go away by
			// retrying (a newer open attempt; a container missing after a
			// restore): run the task without the row.
			s.fail(ctx, step, fmt.Errorf("assignment not recorded: %w", err))
			return nil
		}
		if err == nil && stale > 0 {
			s.count(func(st *SimStats) { st.StaleAssignments += stale })
		}
		return err
	})
	s.retry(ctx, sl.gone, fmt.Sprintf("dispatcher: hset task %d", id), func(ctx context.Context) error {
		return s.t.Redis.HSet(ctx, schemas.TaskKey(id),
			schemas.TaskFieldStatus, schemas.StatusDispatched,
			schemas.TaskFieldContainer, sl.container,
			schemas.TaskFieldAttempt, strconv.Itoa(int(attempt)),
			schemas.TaskFieldProgress, "0",
			schemas.TaskFieldUpdatedAt, strconv.FormatInt(time.Now().UnixMilli(), 10),
		).Err()
	})
}

// agent is agent number n: one container at a time, restarted as a new
// container whenever the current one is declared dead, until ctx is done.
func (s *Sim) agent(ctx context.Context, n int, rng *rand.Rand) {
	next := 0 // suffix of the next container id to try
	for ctx.Err() == nil {
		container, ok := s.register(ctx, n, &next)
		if !ok {
			return
		}
		cctx, fence := context.WithCancel(ctx)
		var hb sync.WaitGroup
		hb.Go(func() { s.heartbeat(cctx, fence, container) })
		s.work(cctx, container, rng)
		fence()
		hb.Wait()
	}
}

// register inserts a new live container for agent n, retrying until it
// succeeds or ctx is done. Ids already registered are skipped (*next counts
// them), so a container that comes back never inherits a dead one's tasks.
func (s *Sim) register(ctx context.Context, n int, next *int) (string, bool) {
	host := fmt.Sprintf("sim-host-%02d", n)
	var container string
	ok := s.retry(ctx, nil, fmt.Sprintf("agent %d: register", n), func(ctx context.Context) error {
		for {
			container = s.o.Generation + strconv.Itoa(n)
			if *next > 0 {
				container += "." + strconv.Itoa(*next)
			}
			var inserted bool
			err := pgx.BeginFunc(ctx, s.t.Dispatcher, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(simRegisterLockID)); err != nil {
					return err
				}
				tag, err := tx.Exec(ctx, sqlRegister, container, host, schemas.ContainerLive)
				inserted = tag.RowsAffected() == 1
				return err
			})
			if err != nil {
				return err
			}
			*next++
			if inserted {
				return nil
			}
		}
	})
	if !ok {
		return "", false
	}
	s.mu.Lock()
	s.containers[n] = container
	s.stats.Registered++
	s.mu.Unlock()
	s.o.Log.Info("kohakku sim: container registered", "container", container, "host", host)
	return container, true
}

// heartbeat reports container alive every HeartbeatEvery until ctx is done:
// ZADD to the live set and, as the dispatcher would on receiving it,
// agent_containers.last_heartbeat_at. The two go out side by side, so a
// store that is slow to fail does not delay the other. When the dispatcher's
// side finds the container no longer live — declared dead, or gone with a
// restore — the container is fenced: heartbeat removes it from the live set
// and calls fence, which ends the container's work.
func (s *Sim) heartbeat(ctx context.Context, fence context.CancelFunc, container string) {
	tick := time.NewTicker(s.o.HeartbeatEvery)
	defer tick.Stop()
	step := "agent " + container + ": heartbeat"
	for {
		octx, cancel := context.WithTimeout(ctx, simOpTimeout)
		var zadd sync.WaitGroup
		zadd.Go(func() {
			err := s.t.Redis.ZAdd(octx, schemas.LiveContainersKey,
				redis.Z{Score: float64(time.Now().UnixMilli()), Member: container}).Err()
			if err != nil {
				s.fail(ctx, step+" zadd", err)
			}
		})
		tag, err := s.t.Dispatcher.Exec(octx, sqlHeartbeat, container, schemas.ContainerLive)
		zadd.Wait()
		cancel()
		switch {
		case err != nil:
			s.fail(ctx, step, err)
		case tag.RowsAffected() == 0:
			s.fail(ctx, step, errors.New("container is no longer live (declared dead or not registered); restarting as a new container"))
			octx, cancel := context.WithTimeout(ctx, simOpTimeout)
			if err := s.t.Redis.ZRem(octx, schemas.LiveContainersKey, container).Err(); err != nil {
				s.fail(ctx, step+" zrem", err)
			}
			cancel()
			fence()
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// work offers container to the dispatcher and runs what it is given, one task
// at a time, until ctx is done.
func (s *Sim) work(ctx context.Context, container string, rng *rand.Rand) {
	sl := &slot{container: container, tasks: make(chan job, 1), gone: ctx.Done()}
	for {
		select {
		case s.idle <- sl:
		case <-ctx.Done():
			return
		}
		select {
		case a := <-sl.tasks:
			s.run(ctx, container, a, rng)
		case <-ctx.Done():
			return
		}
	}
}

// run works on one task. Every PostgreSQL write is conditional on the task
// still being (container, attempt)'s: when it is not, the run is abandoned.
// When ctx ends (kill, stop, fence) run returns at once and leaves the task
// as it is.
func (s *Sim) run(ctx context.Context, container string, a job, rng *rand.Rand) {
	key := schemas.TaskKey(a.id)
	step := fmt.Sprintf("agent %s: task %d attempt %d", container, a.id, a.attempt)
	attempt := strconv.Itoa(int(a.attempt))
	d := s.o.TaskDuration
	if s.o.Jitter > 0 {
		d += time.Duration(rng.Int64N(int64(2*s.o.Jitter)+1)) - s.o.Jitter
	}
	d = max(d, 0)
	failAt := 0 // quarter after which the task fails; 0 never
	if rng.Float64() < s.o.FailRate {
		failAt = 1 + rng.IntN(4)
	}

	// exec runs a fenced update until it is done; mine reports whether the
	// task was still this attempt's.
	exec := func(what, sql string, args ...any) (mine, ok bool) {
		ok = s.retry(ctx, nil, step+": "+what, func(ctx context.Context) error {
			tag, err := s.t.Controller.Exec(ctx, sql, args...)
			mine = tag.RowsAffected() == 1
			return err
		})
		if ok && !mine {
			s.count(func(st *SimStats) { st.Abandoned++ })
			s.fail(ctx, step, errors.New("task is no longer this attempt's; abandoned"))
		}
		return mine, ok
	}
	setHash := func(status string, progress int) error {
		return setTaskScript.Run(ctx, s.t.Redis, []string{key}, container, attempt, status,
			strconv.Itoa(progress), strconv.FormatInt(time.Now().UnixMilli(), 10)).Err()
	}

	if mine, ok := exec("start", sqlStart, a.id, container, a.attempt, schemas.StatusDispatched, schemas.StatusRunning); !mine || !ok {
		return
	}
	s.count(func(st *SimStats) {
		st.Started++
		st.Running++
		st.Runs[a.id]++
	})
	defer s.count(func(st *SimStats) { st.Running-- })
	if !s.retry(ctx, nil, step+": hset running", func(context.Context) error { return setHash(schemas.StatusRunning, 0) }) {
		return
	}

	progress := 0
	final := schemas.StatusCompleted
	for q := 1; q <= 4; q++ {
		if !sleep(ctx, d/4) {
			return
		}
		if q == failAt {
			final = schemas.StatusFailed
			break
		}
		if q == 4 {
			progress = 100
			break
		}
		// Progress is best effort: one try, no retry.
		octx, cancel := context.WithTimeout(ctx, simOpTimeout)
		tag, err := s.t.Controller.Exec(octx, sqlProgress, a.id, container, a.attempt, q*25, schemas.StatusRunning)
		cancel()
		if err != nil {
			s.fail(ctx, step+": progress", err)
			continue
		}
		if tag.RowsAffected() == 0 {
			s.count(func(st *SimStats) { st.Abandoned++ })
			s.fail(ctx, step, errors.New("task is no longer this attempt's; abandoned"))
			return
		}
		progress = q * 25
		if err := setHash(schemas.StatusRunning, progress); err != nil {
			s.fail(ctx, step+": hset progress", err)
		}
	}

	if mine, ok := exec("finish", sqlFinish, a.id, container, a.attempt, final, progress, schemas.StatusRunning); !mine || !ok {
		return
	}
	s.retry(ctx, nil, step+": release assignment", func(ctx context.Context) error {
		_, err := s.t.Dispatcher.Exec(ctx, sqlRelease, a.id, a.attempt)
		return err
	})
	s.retry(ctx, nil, step+": del hash", func(ctx context.Context) error {
		return s.t.Redis.Del(ctx, key).Err()
	})
	// Counted last: a run counted as ended has left nothing behind.
	s.count(func(st *SimStats) {
		if final == schemas.StatusCompleted {
			st.Completed++
		} else {
			st.Failed++
		}
	})
}

// monitor times out dead containers every AgentTimeout/2 until ctx is done.
// It never touches tasks.
func (s *Sim) monitor(ctx context.Context) {
	tick := time.NewTicker(max(s.o.AgentTimeout/2, time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if err := s.sweep(ctx); err != nil {
			s.fail(ctx, "monitor", err)
		}
	}
}

// sweep marks dead the live containers whose heartbeat is older than
// AgentTimeout, and removes them from the live set.
//
// A container counts as timed out when both its heartbeats are old: the live
// set's score (missing counts as old) and agent_containers.last_heartbeat_at.
// Requiring both keeps a live agent alive across a Redis rebuilt from an old
// copy or a PostgreSQL restored from a backup, whose heartbeats are old until
// the agent's next beat; and it still times out containers that vanished
// from a wiped Redis. Members of the live set whose row is not live (dead,
// missing) are removed too, restoring the invariant of schemas/redis.md.
func (s *Sim) sweep(ctx context.Context) error {
	octx, cancel := context.WithTimeout(ctx, simOpTimeout)
	defer cancel()
	cutoff := time.Now().Add(-s.o.AgentTimeout).UnixMilli()
	members, err := s.t.Redis.ZRangeWithScores(octx, schemas.LiveContainersKey, 0, -1).Result()
	if err != nil {
		return fmt.Errorf("read live set: %w", err)
	}
	// Empty, not nil: ANY(NULL) would make sqlTimeOut match nothing.
	fresh, stale := []string{}, []string{}
	for _, z := range members {
		id, _ := z.Member.(string)
		if int64(z.Score) > cutoff {
			fresh = append(fresh, id)
		} else {
			stale = append(stale, id)
		}
	}
	rows, err := s.t.Dispatcher.Query(octx, sqlTimeOut, s.o.AgentTimeout.Milliseconds(), fresh,
		schemas.ContainerDead, schemas.ContainerLive)
	if err != nil {
		return fmt.Errorf("mark timed-out containers dead: %w", err)
	}
	dead, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("mark timed-out containers dead: %w", err)
	}
	if len(dead) > 0 {
		s.count(func(st *SimStats) { st.ContainersDead += int64(len(dead)) })
		s.o.Log.Info("kohakku sim: containers timed out", "containers", dead)
	}
	if len(stale) == 0 {
		return nil
	}
	rows, err = s.t.Dispatcher.Query(octx, sqlStillLive, stale, schemas.ContainerLive)
	if err != nil {
		return fmt.Errorf("read live containers: %w", err)
	}
	live, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("read live containers: %w", err)
	}
	remove := []any{cutoff}
	for _, id := range stale {
		if !slices.Contains(live, id) {
			remove = append(remove, id)
		}
	}
	if len(remove) > 1 {
		if err := zremStaleScript.Run(octx, s.t.Redis, []string{schemas.LiveContainersKey}, remove...).Err(); err != nil {
			return fmt.Errorf("remove dead containers from the live set: %w", err)
		}
	}
	return nil
}

// retry runs f, each call bounded by simOpTimeout, until it returns nil (true)
// or ctx is done or gone closed (false). Errors are recorded and followed by a
// backoff.
func (s *Sim) retry(ctx context.Context, gone <-chan struct{}, step string, f func(context.Context) error) bool {
	var bo backoff
	for {
		if ctx.Err() != nil || isClosed(gone) {
			return false
		}
		octx, cancel := context.WithTimeout(ctx, simOpTimeout)
		err := f(octx)
		cancel()
		if err == nil {
			return true
		}
		s.fail(ctx, step, err)
		if !bo.wait(ctx, gone) {
			return false
		}
	}
}

// fail records err of step unless ctx is done (the error is then ours: a
// stop, kill or fence cancelled the call).
func (s *Sim) fail(ctx context.Context, step string, err error) {
	if ctx.Err() != nil {
		return
	}
	msg := step + ": " + err.Error()
	now := time.Now()
	s.mu.Lock()
	s.stats.ErrorCount++
	if len(s.stats.Errors) == simMaxErrors {
		s.stats.Errors = slices.Delete(s.stats.Errors, 0, 1)
	}
	s.stats.Errors = append(s.stats.Errors, msg)
	logIt := now.Sub(s.loggedAt[step]) >= time.Second
	if logIt {
		if len(s.loggedAt) >= 1000 { // steps name tasks: keep the map bounded
			clear(s.loggedAt)
		}
		s.loggedAt[step] = now
	}
	s.mu.Unlock()
	if logIt {
		s.o.Log.Warn("kohakku sim: "+step, "err", err)
	}
}

func (s *Sim) count(f func(*SimStats)) {
	s.mu.Lock()
	f(&s.stats)
	s.mu.Unlock()
}

// backoff is the pause after consecutive errors: simBackoffMin, doubling up
// to simBackoffMax. The zero value is ready.
type backoff struct{ next time.Duration }

// wait pauses; false means ctx is done or gone closed.
func (b *backoff) wait(ctx context.Context, gone <-chan struct{}) bool {
	if b.next == 0 {
		b.next = simBackoffMin
	}
	d := b.next
	b.next = min(2*b.next, simBackoffMax)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-gone:
		return false
	case <-t.C:
		return true
	}
}

func (b *backoff) reset() { b.next = 0 }

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// isClosed reports whether ch is closed; a nil channel never is.
func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func anySlice(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}
