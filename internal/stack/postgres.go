package stack

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sys/unix"
)

// PostgresSuperuser is the trusted superuser role of every private cluster.
const PostgresSuperuser = "drflow"

// Postgres is a private PostgreSQL cluster (initdb + postgres from the
// machine) listening on 127.0.0.1 with trust authentication.
//
// contract: the postgres server runs in the foreground as our child rather
// than daemonized by pg_ctl, so it shares the process-group and Pdeathsig
// guarantees of every other server. When the test runs as root the server
// runs as the unprivileged "postgres" (or "nobody") user and owns its
// directory. Layout under Dir():
//
//	data/          PGDATA (Wipe deletes it; Start runs initdb again)
//	sock/          unix socket directory (see setupSocketDir for long paths)
//	postgres.log   server output, kept by Wipe
type Postgres struct {
	dir     string
	dataDir string
	sockDir string
	ownSock bool // sockDir is outside dir and removed by Close
	logPath string
	port    int
	fsync   bool
	bin     string // directory holding initdb and postgres
	cred    *syscall.Credential

	mu   sync.Mutex
	proc *proc
}

// PostgresOption changes how StartPostgres configures the cluster.
type PostgresOption func(*Postgres)

// WithFsync sets PostgreSQL's fsync (default off, see Options.PostgresFsync).
func WithFsync(on bool) PostgresOption { return func(p *Postgres) { p.fsync = on } }

// StartPostgres creates a cluster in <dir>/postgres, with superuser
// "drflow", and starts it on a free port. On error nothing is left running.
func StartPostgres(ctx context.Context, dir string, opts ...PostgresOption) (*Postgres, error) {
	dir, err := absDir(dir)
	if err != nil {
		return nil, fmt.Errorf("postgres dir: %w", err)
	}
	bin, err := postgresBinDir()
	if err != nil {
		return nil, err
	}
	p := &Postgres{dir: filepath.Join(dir, "postgres"), bin: bin}
	for _, o := range opts {
		o(p)
	}
	p.dataDir = filepath.Join(p.dir, "data")
	p.logPath = filepath.Join(p.dir, "postgres.log")
	if err := os.MkdirAll(p.dir, 0o700); err != nil {
		return nil, fmt.Errorf("postgres dir: %w", err)
	}
	if p.cred, err = postgresCredential(); err != nil {
		return nil, err
	}
	if p.cred != nil {
		if err := makeReachable(p.dir, p.cred); err != nil {
			return nil, err
		}
	}
	if err := p.setupSocketDir(); err != nil {
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		if p.port, err = pickPort(); err != nil {
			break
		}
		err = p.Start(ctx)
		if err == nil || !addrInUse(err) || attempt == startRetries {
			break
		}
	}
	if err != nil {
		return nil, errors.Join(err, p.Close())
	}
	return p, nil
}

// Name returns "postgres".
func (p *Postgres) Name() string { return "postgres" }

// Dir returns the server's directory (<dir>/postgres).
func (p *Postgres) Dir() string { return p.dir }

// DataDir returns PGDATA.
func (p *Postgres) DataDir() string { return p.dataDir }

// SocketDir returns the unix socket directory.
func (p *Postgres) SocketDir() string { return p.sockDir }

// BinDir returns the directory holding the PostgreSQL programs used
// (pg_dump and pg_restore of the same version live there too).
func (p *Postgres) BinDir() string { return p.bin }

// LogPath returns the server log.
func (p *Postgres) LogPath() string { return p.logPath }

// Port returns the TCP port; it stays the same across restarts and wipes.
func (p *Postgres) Port() int { return p.port }

// URL returns a connection URL for database db as the trusted superuser.
func (p *Postgres) URL(db string) string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", PostgresSuperuser, p.port, db)
}

// Running tells whether the server process is alive.
func (p *Postgres) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.proc != nil && !p.proc.exited()
}

func (p *Postgres) pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc == nil || p.proc.exited() {
		return 0
	}
	return p.proc.pid()
}

// Start starts the server, running initdb first when there is no cluster
// (first start, after Wipe). It returns once the server accepts connections.
func (p *Postgres) Start(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc != nil && !p.proc.exited() {
		return nil
	}
	if _, err := os.Stat(filepath.Join(p.dataDir, "PG_VERSION")); errors.Is(err, os.ErrNotExist) {
		if err := p.initdb(ctx); err != nil {
			return err
		}
	}
	// The port, socket dir and fsync may differ from the last start (port
	// race on first start), so they are passed on every start rather than
	// written once into postgresql.conf.
	args := []string{
		"-D", p.dataDir,
		"-p", strconv.Itoa(p.port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories=" + p.sockDir,
		"-c", "fsync=" + onOff(p.fsync),
		"-c", "full_page_writes=" + onOff(p.fsync),
	}
	offset := fileSize(p.logPath)
	pr, err := startProc(procSpec{
		path:    filepath.Join(p.bin, "postgres"),
		args:    args,
		env:     environ([]string{"PG"}),
		dir:     p.dir,
		cred:    p.cred,
		logPath: p.logPath,
	})
	if err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	p.proc = pr
	err = waitReady(ctx, pr, p.port, p.logPath, offset, func(ctx context.Context) error {
		conn, err := pgx.Connect(ctx, p.URL("postgres"))
		if err != nil {
			return err
		}
		return conn.Close(ctx)
	})
	if err != nil {
		return errors.Join(fmt.Errorf("postgres on port %d: %w", p.port, err), pr.kill())
	}
	return nil
}

// initdb creates the cluster. Settings that never change go into
// postgresql.conf and pg_hba.conf here.
func (p *Postgres) initdb(ctx context.Context) error {
	if err := resetDir(p.dataDir, 0o700); err != nil {
		return fmt.Errorf("initdb: %w", err)
	}
	if err := p.chown(p.dataDir); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, filepath.Join(p.bin, "initdb"),
		"-D", p.dataDir,
		"-U", PostgresSuperuser,
		"-A", "trust",
		"-E", "UTF8",
		"--locale=C",
		"--no-sync",
		"--no-instructions",
	)
	cmd.Env = environ([]string{"PG", "LC_", "LANG"})
	cmd.Dir = p.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: p.cred}
	// initdb runs a bootstrap postgres; a cancelled ctx ends both.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb: %w\n%s", err, strings.TrimSpace(string(out)))
	}
	// Only loopback TCP, besides the private socket directory.
	hba := "local all all trust\nhost all all 127.0.0.1/32 trust\n"
	conf := strings.Join([]string{
		"",
		"# drflow/stack: a private test cluster",
		// Dynamic shared memory in files under PGDATA instead of /dev/shm,
		// so a killed server leaves nothing outside its directory.
		"dynamic_shared_memory_type = mmap",
		"max_connections = 100",
		"shared_buffers = 32MB",
		"logging_collector = off",
		"log_min_messages = warning",
		"log_line_prefix = '%m [%p] '",
		"",
	}, "\n")
	if err := p.writeFile("pg_hba.conf", hba, false); err != nil {
		return err
	}
	return p.writeFile("postgresql.conf", conf, true)
}

func (p *Postgres) writeFile(name, content string, appendTo bool) error {
	flag := os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	if appendTo {
		flag = os.O_WRONLY | os.O_APPEND
	}
	path := filepath.Join(p.dataDir, name)
	f, err := os.OpenFile(path, flag, 0o600)
	if err != nil {
		return fmt.Errorf("initdb: %w", err)
	}
	_, err = f.WriteString(content)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("initdb: write %s: %w", name, err)
	}
	return p.chown(path)
}

// Stop shuts the server down with a fast shutdown (SIGINT: clients are
// disconnected, a checkpoint is written).
func (p *Postgres) Stop(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc == nil {
		return nil
	}
	return p.proc.stop(ctx, syscall.SIGINT)
}

// Kill sends SIGKILL to the postmaster and its backends, as a crash would;
// the next Start runs crash recovery.
func (p *Postgres) Kill() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc == nil {
		return nil
	}
	return p.proc.kill()
}

// Wipe stops the server and deletes the cluster; the next Start runs initdb
// and gives an empty cluster (databases created by CreateDatabase are gone).
func (p *Postgres) Wipe() error {
	if err := p.Stop(context.Background()); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	removeStaleShm(p.dataDir)
	if err := os.RemoveAll(p.dataDir); err != nil {
		return fmt.Errorf("wipe postgres: %w", err)
	}
	return nil
}

// Close stops the server and removes the socket directory when it lies
// outside Dir. After a Kill it also removes the System V shared memory
// interlock segment that only a clean shutdown or the next start would.
func (p *Postgres) Close() error {
	err := p.Stop(context.Background())
	p.mu.Lock()
	defer p.mu.Unlock()
	removeStaleShm(p.dataDir)
	if p.ownSock {
		err = errors.Join(err, os.RemoveAll(p.sockDir))
	}
	return err
}

// CreateDatabase creates database name (any name, e.g. "kohakku-controller");
// it returns nil when the database exists already.
func (p *Postgres) CreateDatabase(ctx context.Context, name string) error {
	conn, err := pgx.Connect(ctx, p.URL("postgres"))
	if err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P04" { // duplicate_database
		return nil
	}
	if err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

// setupSocketDir picks the unix socket directory: sock/ inside Dir, or a
// short private directory under the system temp dir when that path would
// exceed the 107-byte limit of a socket address.
func (p *Postgres) setupSocketDir() error {
	p.sockDir = filepath.Join(p.dir, "sock")
	if len(p.sockDir)+len("/.s.PGSQL.65535.lock") > 100 {
		d, err := os.MkdirTemp("", "drflow-pg-")
		if err != nil {
			return fmt.Errorf("postgres socket dir: %w", err)
		}
		p.sockDir, p.ownSock = d, true
	} else if err := os.MkdirAll(p.sockDir, 0o700); err != nil {
		return fmt.Errorf("postgres socket dir: %w", err)
	}
	if err := os.Chmod(p.sockDir, 0o700); err != nil {
		return fmt.Errorf("postgres socket dir: %w", err)
	}
	return errors.Join(p.chown(p.dir), p.chown(p.sockDir))
}

func (p *Postgres) chown(path string) error {
	if p.cred == nil {
		return nil
	}
	if err := os.Chown(path, int(p.cred.Uid), int(p.cred.Gid)); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	return nil
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// postgresBinDir finds the directory holding initdb and postgres: the one of
// initdb on PATH, else `pg_config --bindir`. Symlinks are resolved because
// initdb looks for postgres next to its own real path.
func postgresBinDir() (string, error) {
	var candidates []string
	if path, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(path); err == nil {
			candidates = append(candidates, filepath.Dir(real))
		}
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		candidates = append(candidates, strings.TrimSpace(string(out)))
	}
	for _, dir := range candidates {
		if isExecutable(filepath.Join(dir, "initdb")) && isExecutable(filepath.Join(dir, "postgres")) {
			return dir, nil
		}
	}
	return "", &MissingBinaryError{
		Program: "initdb/postgres",
		Install: "the PostgreSQL 15 server (e.g. apt-get install postgresql-15) and put its bin directory on PATH",
		Err:     errors.New("not on PATH and not in pg_config --bindir"),
	}
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// postgresCredential returns the user to run PostgreSQL as: nil (ourselves)
// unless we are root, which PostgreSQL refuses; then "postgres", else "nobody".
func postgresCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 != nil || err2 != nil || uid == 0 {
			continue
		}
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}, nil
	}
	return nil, errors.New("postgres: running as root and neither user postgres nor nobody exists to run the server as")
}

// makeReachable makes sure the unprivileged server user can reach dir: each
// ancestor must be searchable by it. Ancestors inside the system temp
// directory (t.TempDir and os.MkdirTemp make them 0700) get o+x — search
// only, no listing; elsewhere it is an error naming the directory.
func makeReachable(dir string, cred *syscall.Credential) error {
	tmp, err := filepath.EvalSymlinks(os.TempDir())
	if err != nil {
		tmp = os.TempDir()
	}
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return fmt.Errorf("postgres dir: %w", err)
	}
	for d := filepath.Dir(real); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("postgres dir: %w", err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		mode := fi.Mode().Perm()
		ok := mode&0o001 != 0 ||
			(st.Uid == cred.Uid && mode&0o100 != 0) ||
			(st.Gid == cred.Gid && mode&0o010 != 0)
		if !ok {
			if !strings.HasPrefix(d, tmp+string(filepath.Separator)) {
				return fmt.Errorf("postgres runs as uid %d, which cannot reach %s: make it searchable (chmod o+x) or use a directory under %s", cred.Uid, d, tmp)
			}
			if err := os.Chmod(d, fi.Mode().Perm()|0o001); err != nil {
				return fmt.Errorf("postgres dir: %w", err)
			}
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

// removeStaleShm removes the System V shared memory segment named in a
// postmaster.pid left behind by a killed server, when nothing is attached to
// it any more. A clean shutdown removes both; so does the next start, which
// is why this runs only on Wipe and Close.
func removeStaleShm(dataDir string) {
	f, err := os.Open(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	// Line 7 holds "<shm key> <shm id>" (see PostgreSQL's pidfile.h).
	for line := 1; sc.Scan(); line++ {
		if line != 7 {
			continue
		}
		fields := strings.Fields(sc.Text())
		if len(fields) != 2 {
			return
		}
		key, err1 := strconv.ParseInt(fields[0], 10, 64)
		id, err2 := strconv.Atoi(fields[1])
		if err1 != nil || err2 != nil {
			return
		}
		var ds unix.SysvShmDesc
		if _, err := unix.SysvShmCtl(id, unix.IPC_STAT, &ds); err != nil {
			return
		}
		if int64(ds.Perm.Key) == key && ds.Nattch == 0 {
			_, _ = unix.SysvShmCtl(id, unix.IPC_RMID, nil)
		}
		return
	}
}
