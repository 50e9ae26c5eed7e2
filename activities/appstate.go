package activities

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/redis/go-redis/v9"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"github.com/kohakku/drflow/internal/config"
	"github.com/kohakku/drflow/internal/profile"
)

// Defaults of the AppState activities.
const (
	// DefaultWaitRedisTimeout is WaitRedisInput.Timeout when it is zero.
	DefaultWaitRedisTimeout = 60 * time.Second
	// DefaultPostgresConnectTimeout bounds connecting to PostgreSQL when
	// the URL has no connect_timeout.
	DefaultPostgresConnectTimeout = 10 * time.Second
)

// How the AppState activities talk to Redis.
const (
	appRedisDialTimeout = 5 * time.Second
	appRedisIOTimeout   = 30 * time.Second
	// waitRedisEvery is the pause between two PINGs of WaitRedis.
	waitRedisEvery = 500 * time.Millisecond
)

// AppState runs the application profile against the app's PostgreSQL and
// Redis. Its methods are activities; build it once in the worker.
//
// Errors are classified here, once: a missing database is ErrDatabaseNotFound,
// missing tables ErrTableNotFound, rejected credentials ErrAuthFailed
// (PostgreSQL) or ErrRedisAuth, a denied command ErrPermissionDenied, a
// missing setting ErrInvalidConfig; all of them are non-retryable. Refused
// connections, a server that is starting or loading and timeouts are returned
// for the retry policy. No error or log line holds a password.
type AppState struct {
	// Profile is the application: what to rebuild and check.
	Profile profile.Profile
	// Postgres is the app's PostgreSQL server: URL without the password, and
	// the password. DatabaseURL(db) gives a connection URL.
	Postgres config.Postgres
	// Redis is the app's Redis server: address and password.
	Redis config.Redis
	// Instance names the Redis in results and errors (default "default").
	Instance string
}

// RedisStatus is what CheckRedis and WaitRedis found.
type RedisStatus struct {
	// Instance is the Redis instance name.
	Instance string `json:"instance"`
	// Reachable is true when Redis answered PING and is not loading its data.
	Reachable bool `json:"reachable"`
	// Error says why Redis is not reachable (connection refused, LOADING …);
	// it holds no secret.
	Error string `json:"error,omitempty"`
	// Version is "redis 7.0.15" (or "valkey …") from INFO server.
	Version string `json:"version,omitempty"`
	// AppKeys counts the keys matching the profile's KeyPattern.
	AppKeys int64 `json:"appKeys"`
	// TotalKeys is DBSIZE: every key of the database, the app's or not.
	TotalKeys int64 `json:"totalKeys"`
}

// WaitRedisInput bounds WaitRedis.
type WaitRedisInput struct {
	// Timeout is how long to wait for Redis to answer; 0 means 60s. The
	// activity's StartToCloseTimeout must be longer.
	Timeout time.Duration `json:"timeout"`
}

// appDB is the profile.DB of PostgresDB.
type appDB struct{ cfg config.Postgres }

// dbConnectError is a failed connection to one database, with any form of
// the password removed from its text.
type dbConnectError struct {
	db  string
	err error
}

func (e *dbConnectError) Error() string {
	return fmt.Sprintf("connect to database %s: %v", e.db, e.err)
}
func (e *dbConnectError) Unwrap() error { return e.err }

// PostgresDB returns a profile.DB over cfg: every Connect opens a new pgx
// connection (the caller closes it) with the configured password, and
// bounds connecting by DefaultPostgresConnectTimeout unless the URL sets
// connect_timeout. Its errors name the database and hold no password; a
// missing setting is a non-retryable ErrInvalidConfig.
//
// It is a function, not a method of AppState, because every exported method
// of an activity struct must be an activity: the worker registers the struct
// whole, and Temporal refuses a method with another signature.
func PostgresDB(cfg config.Postgres) profile.DB { return appDB{cfg: cfg} }

func (a *AppState) db() profile.DB { return PostgresDB(a.Postgres) }

// Connect opens a connection to database.
func (d appDB) Connect(ctx context.Context, database string) (*pgx.Conn, error) {
	dbURL, err := d.cfg.DatabaseURL(database)
	if err != nil {
		return nil, NonRetryable(ErrInvalidConfig, fmt.Errorf("connect to database %s: %w", database, err))
	}
	cfg, err := pgx.ParseConfig(dbURL)
	if err != nil {
		// The parse error may quote the URL; say only where to look.
		return nil, NonRetryable(ErrInvalidConfig, fmt.Errorf("connect to database %s: DRFLOW_POSTGRES_URL is not a valid PostgreSQL URL", database))
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = DefaultPostgresConnectTimeout
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		if secrets := secretForms(d.cfg.Password.Reveal()); leaks(err, secrets) {
			err = &scrubbedError{msg: scrubAll(err.Error(), secrets), cause: err}
		}
		return nil, &dbConnectError{db: database, err: err}
	}
	return conn, nil
}

// scrubbedError replaces an error whose text held a secret. It keeps the
// PostgreSQL error code for classification, not the text.
type scrubbedError struct {
	msg   string
	cause error
}

func (e *scrubbedError) Error() string { return e.msg }

// As lets classification see the *pgconn.PgError of the cause without
// exposing its text through Unwrap.
func (e *scrubbedError) As(target any) bool {
	if t, ok := target.(**pgconn.PgError); ok {
		var pgErr *pgconn.PgError
		if errors.As(e.cause, &pgErr) {
			*t = &pgconn.PgError{Code: pgErr.Code, Severity: pgErr.Severity}
			return true
		}
	}
	return false
}

func (a *AppState) instance() string {
	if a.Instance != "" {
		return a.Instance
	}
	return DefaultRedisInstance
}

func (a *AppState) where() string {
	return fmt.Sprintf("redis %s at %s", a.instance(), a.Redis.Addr)
}

// redisClient returns a client that never retries by itself (a retried
// MULTI/EXEC could push queue entries twice) and fails fast on a dead server.
func (a *AppState) redisClient() (*redis.Client, error) {
	if a.Redis.Addr == "" {
		return nil, NonRetryable(ErrInvalidConfig, fmt.Errorf("redis %s: no address configured (DRFLOW_REDIS_ADDR)", a.instance()))
	}
	return redis.NewClient(&redis.Options{
		Addr:            a.Redis.Addr,
		Password:        a.Redis.Password.Reveal(),
		DialTimeout:     appRedisDialTimeout,
		ReadTimeout:     appRedisIOTimeout,
		WriteTimeout:    appRedisIOTimeout,
		MaxRetries:      -1,
		DialerRetries:   1, // one dial per command: WaitRedis and the retry policy do the waiting
		PoolSize:        2,
		DisableIdentity: true,
	}), nil
}

func (a *AppState) profile() (profile.Profile, error) {
	if a.Profile == nil {
		return nil, NonRetryable(ErrInvalidConfig, errors.New("app state: no application profile configured"))
	}
	return a.Profile, nil
}

func (a *AppState) secrets() []string {
	return append(secretForms(a.Postgres.Password.Reveal()), secretForms(a.Redis.Password.Reveal())...)
}

// classify wraps err with step and makes it non-retryable when retrying
// cannot help; see AppState. The result is a top-level application error,
// which is what Temporal reads the retry decision from.
func (a *AppState) classify(ctx context.Context, step string, err error) error {
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", step, context.Cause(ctx))
	}
	typ, hint := "", ""
	var (
		pgErr *pgconn.PgError
		dbErr *dbConnectError
		appEr *temporal.ApplicationError
	)
	switch {
	case errors.As(err, &pgErr):
		switch pgErr.Code {
		case "3D000": // invalid_catalog_name
			db := "the database"
			if errors.As(err, &dbErr) {
				db = "database " + dbErr.db
			}
			typ, hint = ErrDatabaseNotFound, db+" does not exist on the PostgreSQL server: restore it first (TotalDBLoss), then run this step again"
		case "28P01", "28000": // invalid_password, invalid_authorization_specification
			typ, hint = ErrAuthFailed, "PostgreSQL rejected the role or password of DRFLOW_POSTGRES_URL"
		case "42P01", "3F000": // undefined_table, invalid_schema_name
			typ, hint = ErrTableNotFound, "the database lacks the application's tables: restore it first (TotalDBLoss)"
		case "42501": // insufficient_privilege
			typ, hint = ErrPermissionDenied, "the role of DRFLOW_POSTGRES_URL may not read the application's tables"
		}
	case redis.IsAuthError(err), redis.HasErrorPrefix(err, "AUTH "), redis.HasErrorPrefix(err, "invalid password"):
		typ, hint = ErrRedisAuth, "Redis rejected the password (DRFLOW_REDIS_PASSWORD)"
	case redis.IsPermissionError(err):
		typ, hint = ErrPermissionDenied, "the Redis user may not run a command the step needs"
	case errors.As(err, &appEr) && appEr.NonRetryable():
		typ = appEr.Type()
	}
	if hint != "" {
		err = fmt.Errorf("%s: %s: %w", step, hint, err)
	} else {
		err = fmt.Errorf("%s: %w", step, err)
	}
	if secrets := a.secrets(); leaks(err, secrets) {
		// Temporal records the whole cause chain: keep only scrubbed text.
		err = errors.New(scrubAll(err.Error(), secrets))
	}
	if typ != "" {
		return temporalNonRetryable(err.Error(), typ, err)
	}
	return err
}

// CheckRedis reports whether Redis answers and, if so, its version, DBSIZE
// and the number of keys matching the profile's KeyPattern. An unreachable
// or loading server is not an error: Reachable is false and Error says why.
// Credentials Redis rejects are a non-retryable ErrRedisAuth. It only reads.
func (a *AppState) CheckRedis(ctx context.Context) (RedisStatus, error) {
	st := RedisStatus{Instance: a.instance()}
	p, err := a.profile()
	if err != nil {
		return st, err
	}
	rdb, err := a.redisClient()
	if err != nil {
		return st, err
	}
	defer rdb.Close()
	if err := a.ping(ctx, rdb, &st); err != nil || !st.Reachable {
		return st, err
	}
	if err := a.describe(ctx, rdb, p.KeyPattern(), &st); err != nil {
		return st, a.classify(ctx, "check "+a.where(), err)
	}
	return st, nil
}

// ping sets st.Reachable, or st.Error for a server that is down or loading.
// It returns an error only for rejected credentials and a cancelled ctx.
func (a *AppState) ping(ctx context.Context, rdb *redis.Client, st *RedisStatus) error {
	err := rdb.Ping(ctx).Err()
	st.Reachable, st.Error = err == nil, ""
	if err == nil {
		return nil
	}
	cerr := a.classify(ctx, "check "+a.where(), err)
	var appEr *temporal.ApplicationError
	if ctx.Err() != nil || (errors.As(cerr, &appEr) && appEr.NonRetryable()) {
		return cerr
	}
	st.Error = scrubAll(err.Error(), a.secrets())
	return nil
}

// describe fills in the version and the key counts of a reachable Redis.
func (a *AppState) describe(ctx context.Context, rdb *redis.Client, pattern string, st *RedisStatus) error {
	info, err := rdb.Info(ctx, "server").Result()
	if err != nil && !redis.IsPermissionError(err) {
		return err
	}
	st.Version = redisInfoVersion(info)
	if st.TotalKeys, err = rdb.DBSize(ctx).Result(); err != nil {
		return err
	}
	// SCAN may return a key twice; a set of 64-bit hashes counts each once
	// in a fraction of the memory of the keys themselves.
	seed := maphash.MakeSeed()
	seen := map[uint64]struct{}{}
	iter := rdb.Scan(ctx, 0, pattern, 1000).Iterator()
	for iter.Next(ctx) {
		seen[maphash.String(seed, iter.Val())] = struct{}{}
	}
	if err := iter.Err(); err != nil {
		return err
	}
	st.AppKeys = int64(len(seen))
	return nil
}

// WaitRedis PINGs Redis every half second until it answers (and is not
// loading its data), then returns what CheckRedis returns. It heartbeats
// the last RedisStatus on every attempt. After in.Timeout (0 means 60s) it
// fails with a retryable error "redis <addr> not reachable after <timeout>:
// <last error>". Rejected credentials are a non-retryable ErrRedisAuth at
// once; a negative timeout is ErrInvalidInput.
func (a *AppState) WaitRedis(ctx context.Context, in WaitRedisInput) (RedisStatus, error) {
	st := RedisStatus{Instance: a.instance()}
	if in.Timeout < 0 {
		return st, NonRetryable(ErrInvalidInput, fmt.Errorf("wait for redis: input field \"timeout\" is %s, must not be negative", in.Timeout))
	}
	timeout := in.Timeout
	if timeout == 0 {
		timeout = DefaultWaitRedisTimeout
	}
	p, err := a.profile()
	if err != nil {
		return st, err
	}
	rdb, err := a.redisClient()
	if err != nil {
		return st, err
	}
	defer rdb.Close()
	deadline := time.Now().Add(timeout)
	last := "" // why the last attempt that got an answer or a refusal failed
	for attempt := 1; ; attempt++ {
		pctx, cancel := context.WithDeadline(ctx, deadline)
		err := a.ping(pctx, rdb, &st)
		cut := pctx.Err() != nil // the attempt ran into the deadline or ctx
		cancel()
		if err != nil && !cut {
			return st, err // credentials: waiting will not help
		}
		if st.Reachable {
			activity.RecordHeartbeat(ctx, st)
			if err := a.describe(ctx, rdb, p.KeyPattern(), &st); err != nil {
				return st, a.classify(ctx, "check "+a.where(), err)
			}
			activity.GetLogger(ctx).Info("redis reachable", "instance", st.Instance, "addr", a.Redis.Addr, "attempts", attempt, "version", st.Version)
			return st, nil
		}
		if st.Error != "" {
			last = st.Error
		}
		st.Error = last
		activity.RecordHeartbeat(ctx, st)
		if ctx.Err() != nil {
			return st, fmt.Errorf("wait for %s: %w", a.where(), context.Cause(ctx))
		}
		if !time.Now().Before(deadline) {
			if last == "" {
				last = "no answer within the timeout"
			}
			return st, fmt.Errorf("redis %s not reachable after %s: %s", a.Redis.Addr, timeout, last)
		}
		select {
		case <-ctx.Done():
		case <-time.After(min(waitRedisEvery, time.Until(deadline))):
		}
	}
}

// PlanRedisRebuild reads PostgreSQL and returns what a rebuild would write.
// It only reads.
func (a *AppState) PlanRedisRebuild(ctx context.Context) (profile.RedisPlan, error) {
	p, err := a.profile()
	if err != nil {
		return profile.RedisPlan{}, err
	}
	plan, err := p.RedisPlan(ctx, a.db())
	return plan, a.classify(ctx, "plan redis rebuild", err)
}

// RebuildRedis deletes the application's keys in Redis and writes them again
// from PostgreSQL (Profile.RebuildRedis). It heartbeats the last
// profile.RebuildProgress after every batch and at least every 10 seconds
// (a third of the heartbeat timeout, if shorter). A rebuild cannot resume:
// a retry starts over, deleting what the failed attempt wrote, which the
// profile makes safe. Keys outside the profile's KeyPattern are not touched.
func (a *AppState) RebuildRedis(ctx context.Context) (profile.RebuildResult, error) {
	p, err := a.profile()
	if err != nil {
		return profile.RebuildResult{}, err
	}
	rdb, err := a.redisClient()
	if err != nil {
		return profile.RebuildResult{}, err
	}
	defer rdb.Close()
	log := activity.GetLogger(ctx)
	if attempt := activity.GetInfo(ctx).Attempt; attempt > 1 {
		log.Info("redis rebuild starts over: a rebuild cannot resume", "instance", a.instance(), "attempt", attempt)
	}
	var (
		mu   sync.Mutex
		last = profile.RebuildProgress{Phase: "snapshot"}
	)
	beat := func() {
		mu.Lock()
		p := last
		mu.Unlock()
		activity.RecordHeartbeat(ctx, p)
	}
	beat()
	stop := startHeartbeat(ctx, 0, beat)
	defer stop()
	began := time.Now()
	res, err := p.RebuildRedis(ctx, a.db(), rdb, func(pr profile.RebuildProgress) {
		mu.Lock()
		last = pr
		mu.Unlock()
		activity.RecordHeartbeat(ctx, pr)
	})
	if err != nil {
		return res, a.classify(ctx, "rebuild "+a.where(), err)
	}
	log.Info("redis rebuilt", "instance", a.instance(), "deleted", res.Deleted, "keys", res.Plan.Keys,
		"pending", res.Plan.Pending, "unfinished", res.Plan.Unfinished, "liveContainers", res.Plan.LiveContainers,
		"batches", res.Batches, "duration", time.Since(began))
	return res, nil
}

// VerifyRedisState compares Redis with PostgreSQL (Profile.CheckRedis). A
// mismatch is a result (OK false, Problems), not an error. It only reads.
func (a *AppState) VerifyRedisState(ctx context.Context) (profile.RedisCheck, error) {
	p, err := a.profile()
	if err != nil {
		return profile.RedisCheck{}, err
	}
	rdb, err := a.redisClient()
	if err != nil {
		return profile.RedisCheck{}, err
	}
	defer rdb.Close()
	c, err := p.CheckRedis(ctx, a.db(), rdb)
	if err != nil {
		return c, a.classify(ctx, "verify "+a.where(), err)
	}
	if !c.OK {
		activity.GetLogger(ctx).Warn("redis differs from PostgreSQL", "instance", a.instance(), "problems", c.Problems)
	}
	return c, nil
}

// ObjectClassesFunc returns the profile's ObjectClasses over a's PostgreSQL,
// with errors classified like the activities', for the worker to wire into
// Objects. It is a function rather than a method because an ObjectClass
// holds a func, which cannot cross an activity boundary: a method of
// AppState would be registered as an activity.
func ObjectClassesFunc(a *AppState) func(ctx context.Context, bucket string) ([]profile.ObjectClass, error) {
	return func(ctx context.Context, bucket string) ([]profile.ObjectClass, error) {
		p, err := a.profile()
		if err != nil {
			return nil, err
		}
		classes, err := p.ObjectClasses(ctx, a.db(), bucket)
		return classes, a.classify(ctx, "object classes of bucket "+bucket, err)
	}
}
