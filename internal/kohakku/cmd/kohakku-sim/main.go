// Command kohakku-sim runs the Kohakku simulator (kohakku.StartSim) against a
// Kohakku stack until SIGINT or SIGTERM, logging its counters every few
// seconds. It is for the demo and for exploring by hand; tests start the
// simulator in-process.
//
//	kohakku-sim --postgres-url postgres://postgres@127.0.0.1:5432/?sslmode=disable \
//	    --redis-addr 127.0.0.1:6379 --agents 8 --task-duration 2s --fail-rate 0.05 --generation gen1-
//
// The tables must exist (seed the stack first, e.g. with the starter's demo).
// On exit the agents' containers are marked dead; tasks they were working on
// stay in flight, for RedispatchLostTasks to find.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/kohakku/drflow/internal/kohakku"
	"github.com/kohakku/drflow/schemas"
)

// config is everything the command reads, from flags only.
type config struct {
	// PostgresURL is the server's URL; its database name, if any, is
	// replaced by kohakku-controller and kohakku-dispatcher.
	PostgresURL string
	RedisAddr   string
	RedisDB     int
	// StatsEvery is the period of the stats line.
	StatsEvery time.Duration
	Sim        kohakku.SimOptions
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	c := config{
		PostgresURL: "postgres://postgres@127.0.0.1:5432/?sslmode=disable",
		RedisAddr:   "127.0.0.1:6379",
		StatsEvery:  5 * time.Second,
		Sim: kohakku.SimOptions{
			Agents:         kohakku.DefaultSimAgents,
			TaskDuration:   kohakku.DefaultSimTaskDuration,
			HeartbeatEvery: kohakku.DefaultSimHeartbeatEvery,
			AgentTimeout:   kohakku.DefaultSimAgentTimeout,
			PollEvery:      kohakku.DefaultSimPollEvery,
			Generation:     kohakku.DefaultSimGeneration,
			Seed:           time.Now().UnixNano(),
		},
	}
	fs := flag.NewFlagSet("kohakku-sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.PostgresURL, "postgres-url", c.PostgresURL, "PostgreSQL server URL; the database name is replaced by "+schemas.ControllerDB+" and "+schemas.DispatcherDB)
	fs.StringVar(&c.RedisAddr, "redis-addr", c.RedisAddr, "Redis host:port")
	fs.IntVar(&c.RedisDB, "redis-db", c.RedisDB, "Redis database number")
	fs.IntVar(&c.Sim.Agents, "agents", c.Sim.Agents, "concurrent agent containers")
	fs.DurationVar(&c.Sim.TaskDuration, "task-duration", c.Sim.TaskDuration, "how long an agent works on a task")
	fs.DurationVar(&c.Sim.Jitter, "jitter", c.Sim.Jitter, "uniform random ± added to each task's duration")
	fs.Float64Var(&c.Sim.FailRate, "fail-rate", c.Sim.FailRate, "fraction of tasks that end failed, 0..1")
	fs.StringVar(&c.Sim.Generation, "generation", c.Sim.Generation, "container id prefix, e.g. gen2-")
	fs.DurationVar(&c.Sim.HeartbeatEvery, "heartbeat", c.Sim.HeartbeatEvery, "agent heartbeat period")
	fs.DurationVar(&c.Sim.AgentTimeout, "agent-timeout", c.Sim.AgentTimeout, "heartbeat age after which the monitor marks a container dead")
	fs.Int64Var(&c.Sim.Seed, "seed", c.Sim.Seed, "random seed for durations and failures")
	fs.DurationVar(&c.StatsEvery, "stats-every", c.StatsEvery, "period of the stats line")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	// Zero would mean "default" to StartSim; on the command line it is a
	// mistake.
	for _, d := range []struct {
		flag string
		v    time.Duration
	}{
		{"--task-duration", c.Sim.TaskDuration}, {"--heartbeat", c.Sim.HeartbeatEvery},
		{"--agent-timeout", c.Sim.AgentTimeout}, {"--stats-every", c.StatsEvery},
	} {
		if d.v <= 0 {
			return c, fmt.Errorf("%s is %s, must be positive", d.flag, d.v)
		}
	}
	switch {
	case c.Sim.Agents <= 0:
		return c, fmt.Errorf("--agents is %d, must be positive", c.Sim.Agents)
	case c.Sim.Jitter < 0:
		return c, fmt.Errorf("--jitter is %s, must not be negative", c.Sim.Jitter)
	case !(c.Sim.FailRate >= 0 && c.Sim.FailRate <= 1):
		return c, fmt.Errorf("--fail-rate is %v, must be in [0, 1]", c.Sim.FailRate)
	case c.Sim.Generation == "":
		return c, errors.New("--generation must not be empty")
	case c.RedisDB < 0:
		return c, fmt.Errorf("--redis-db is %d, must not be negative", c.RedisDB)
	}
	if _, err := databaseURL(c.PostgresURL, schemas.ControllerDB); err != nil {
		return c, err
	}
	return c, nil
}

// databaseURL is base with its database replaced by db.
func databaseURL(base, db string) (string, error) {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") || u.Host == "" {
		// The parse error may quote the URL, password included.
		return "", errors.New("--postgres-url: want postgres://user@host:port/?options")
	}
	u.Path = "/" + db
	u.RawPath = ""
	return u.String(), nil
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "kohakku-sim:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	cfg, err := parseFlags(args, os.Stderr)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	cfg.Sim.Log = log
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	pools := map[string]*pgxpool.Pool{}
	for _, db := range []string{schemas.ControllerDB, schemas.DispatcherDB} {
		u, err := databaseURL(cfg.PostgresURL, db)
		if err != nil {
			return err
		}
		pool, err := pgxpool.New(ctx, u)
		if err != nil {
			return fmt.Errorf("connect %s: %w", db, err)
		}
		defer pool.Close()
		// Fail fast on a wrong URL; once running, the simulator rides out
		// outages by itself.
		if err := pool.Ping(ctx); err != nil {
			return fmt.Errorf("connect %s: %w", db, err)
		}
		pools[db] = pool
	}
	rdb := redis.NewClient(&redis.Options{Addr: cfg.RedisAddr, DB: cfg.RedisDB})
	defer rdb.Close()
	if err := rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("connect redis %s: %w", cfg.RedisAddr, err)
	}

	sim, err := kohakku.StartSim(ctx, kohakku.Target{
		Controller: pools[schemas.ControllerDB],
		Dispatcher: pools[schemas.DispatcherDB],
		Redis:      rdb,
	}, cfg.Sim)
	if err != nil {
		return err
	}
	log.Info("kohakku sim: started", "agents", cfg.Sim.Agents, "generation", cfg.Sim.Generation,
		"task_duration", cfg.Sim.TaskDuration, "fail_rate", cfg.Sim.FailRate, "redis", cfg.RedisAddr)
	tick := time.NewTicker(cfg.StatsEvery)
	defer tick.Stop()
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-tick.C:
			logStats(log, "kohakku sim: stats", sim.Stats())
		}
	}
	log.Info("kohakku sim: stopping")
	err = sim.Stop()
	logStats(log, "kohakku sim: stopped", sim.Stats())
	return err
}

func logStats(log *slog.Logger, msg string, st kohakku.SimStats) {
	args := []any{
		"dispatched", st.Dispatched, "started", st.Started, "completed", st.Completed, "failed", st.Failed,
		"abandoned", st.Abandoned, "dropped", st.Dropped, "containers_dead", st.ContainersDead,
		"tasks_run_twice", runTwice(st.Runs), "errors", st.ErrorCount,
	}
	if n := len(st.Errors); n > 0 {
		args = append(args, "last_error", strings.TrimSpace(st.Errors[n-1]))
	}
	log.Info(msg, args...)
}

// runTwice counts the tasks this simulator ran more than once.
func runTwice(runs map[int64]int) int {
	n := 0
	for _, r := range runs {
		if r > 1 {
			n++
		}
	}
	return n
}
