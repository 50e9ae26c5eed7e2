package stack

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// RedisAppendDirName is the AOF directory name (Redis 7 "appenddirname"),
// inside Redis.Dir(): the base RDB/AOF files, the incremental AOF files and
// the manifest "appendonly.aof.manifest".
const RedisAppendDirName = "appendonlydir"

// Redis is a private redis-server with AOF persistence.
//
// contract: appendonly yes with appendfsync everysec (WithAppendFsync
// changes it). Redis writes a command to the AOF file before it replies, so a
// Kill loses no acknowledged write (the data is in the page cache); only a
// host crash could lose up to a second. Automatic RDB snapshots are off
// unless WithRDBSave sets save points; BGSAVE/SAVE still write Dir()/dump.rdb.
// Layout under <dir>/redis:
//
//	data/          Dir(): dump.rdb and appendonlydir/ (Wipe deletes it)
//	redis.log      server output, kept by Wipe
type Redis struct {
	root        string
	dataDir     string
	logPath     string
	port        int
	appendFsync string
	save        string
	bin         string

	mu   sync.Mutex
	proc *proc
}

// RedisOption changes how StartRedis configures the server.
type RedisOption func(*Redis)

// WithAppendFsync sets appendfsync: "always", "everysec" (default) or "no".
func WithAppendFsync(policy string) RedisOption { return func(r *Redis) { r.appendFsync = policy } }

// WithRDBSave sets the RDB save points, e.g. "3600 1 300 100"; "" (default)
// disables automatic snapshots.
func WithRDBSave(points string) RedisOption { return func(r *Redis) { r.save = points } }

// StartRedis starts redis-server in <dir>/redis on a free port. On error
// nothing is left running.
func StartRedis(ctx context.Context, dir string, opts ...RedisOption) (*Redis, error) {
	dir, err := absDir(dir)
	if err != nil {
		return nil, fmt.Errorf("redis dir: %w", err)
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, &MissingBinaryError{
			Program: "redis-server",
			Install: "Redis 7 (e.g. apt-get install redis-server) so that redis-server is on PATH",
			Err:     err,
		}
	}
	r := &Redis{root: filepath.Join(dir, "redis"), bin: bin, appendFsync: "everysec"}
	for _, o := range opts {
		o(r)
	}
	r.dataDir = filepath.Join(r.root, "data")
	r.logPath = filepath.Join(r.root, "redis.log")
	if err := os.MkdirAll(r.dataDir, 0o755); err != nil {
		return nil, fmt.Errorf("redis dir: %w", err)
	}
	for attempt := 1; ; attempt++ {
		if r.port, err = pickPort(); err != nil {
			break
		}
		err = r.Start(ctx)
		if err == nil || !addrInUse(err) || attempt == startRetries {
			break
		}
	}
	if err != nil {
		return nil, errors.Join(err, r.Close())
	}
	return r, nil
}

// Name returns "redis".
func (r *Redis) Name() string { return "redis" }

// Addr returns host:port.
func (r *Redis) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port)) }

// Port returns the TCP port; it stays the same across restarts and wipes.
func (r *Redis) Port() int { return r.port }

// Dir returns Redis' working directory ("dir"): dump.rdb and the AOF directory.
func (r *Redis) Dir() string { return r.dataDir }

// AOFDir returns the AOF directory, so a test can corrupt or remove the AOF
// while the server is stopped.
func (r *Redis) AOFDir() string { return filepath.Join(r.dataDir, RedisAppendDirName) }

// LogPath returns the server log.
func (r *Redis) LogPath() string { return r.logPath }

// Running tells whether the server process is alive.
func (r *Redis) Running() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.proc != nil && !r.proc.exited()
}

func (r *Redis) pid() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc == nil || r.proc.exited() {
		return 0
	}
	return r.proc.pid()
}

// Start starts the server; it loads Dir()'s AOF (or dump.rdb) if there is
// one and returns once it answers PING (not while still loading). A corrupt
// AOF makes Start fail with the server's own message.
func (r *Redis) Start(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc != nil && !r.proc.exited() {
		return nil
	}
	args := r.args()
	offset := fileSize(r.logPath)
	pr, err := startProc(procSpec{path: r.bin, args: args, dir: r.dataDir, logPath: r.logPath})
	if err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	r.proc = pr
	err = waitReady(ctx, pr, r.port, r.logPath, offset, func(ctx context.Context) error {
		return redisPing(ctx, r.Addr())
	})
	if err != nil {
		return errors.Join(fmt.Errorf("redis on %s: %w", r.Addr(), err), pr.kill())
	}
	return nil
}

// DaemonCommand is the argv that starts this server outside the stack, as a
// service manager would: the same port, data directory and AOF settings,
// daemonized, with its pid in PIDPath(). The stack does not track a server
// started that way: stop it with SHUTDOWN or the pid.
func (r *Redis) DaemonCommand() []string {
	args := append([]string{r.bin}, r.args()...)
	for i := range args {
		if args[i] == "--daemonize" {
			args[i+1] = "yes"
		}
	}
	return append(args, "--pidfile", r.PIDPath(), "--logfile", r.logPath)
}

// PIDPath is where a server started with DaemonCommand writes its pid.
func (r *Redis) PIDPath() string { return filepath.Join(r.root, "redis-daemon.pid") }

func (r *Redis) args() []string {
	return []string{
		"--port", strconv.Itoa(r.port),
		"--bind", "127.0.0.1",
		"--protected-mode", "yes",
		"--daemonize", "no",
		"--dir", r.dataDir,
		"--appendonly", "yes",
		"--appendfsync", r.appendFsync,
		"--appenddirname", RedisAppendDirName,
		"--dbfilename", "dump.rdb",
		"--save", r.save,
	}
}

// redisPing sends one PING over a fresh connection. A plain RESP exchange
// instead of a go-redis client: the pool would log every refused dial while
// the server starts. "-LOADING …" (still reading the AOF) is not ready.
func redisPing(ctx context.Context, addr string) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if line = strings.TrimSpace(line); line != "+PONG" {
		return fmt.Errorf("PING: %s", line)
	}
	return nil
}

// Stop shuts the server down (SIGTERM: the AOF is flushed and fsynced; an
// RDB is saved only when save points are set).
func (r *Redis) Stop(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc == nil {
		return nil
	}
	return r.proc.stop(ctx, syscall.SIGTERM)
}

// Kill sends SIGKILL to redis-server and any rewrite/save child.
func (r *Redis) Kill() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc == nil {
		return nil
	}
	return r.proc.kill()
}

// Wipe stops the server and deletes Dir() (AOF and RDB); the next Start gives
// an empty server.
func (r *Redis) Wipe() error {
	if err := r.Stop(context.Background()); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := resetDir(r.dataDir, 0o755); err != nil {
		return fmt.Errorf("wipe redis: %w", err)
	}
	return nil
}

// Close stops the server.
func (r *Redis) Close() error { return r.Stop(context.Background()) }
