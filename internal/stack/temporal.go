package stack

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.temporal.io/sdk/client"
	sdklog "go.temporal.io/sdk/log"
)

const (
	// TemporalNamespace is the namespace every private Temporal server
	// creates, with the search attributes of package workflows.
	TemporalNamespace = "default"
	// DevServerBinEnv names an existing drflow-devserver binary to use
	// instead of the project-local one (no staleness check is made on it).
	DevServerBinEnv = "DRFLOW_DEVSERVER_BIN"
	// DevServerPackage is the main package of the drflow-devserver binary,
	// relative to the repo root.
	DevServerPackage = "./internal/devserver/cmd/drflow-devserver"
)

// Temporal is a private Temporal server: the embedded dev server of
// `worker --dev` (package devserver) with its Web UI, run as a subprocess of
// the drflow-devserver binary so that Kill is a real SIGKILL.
//
// contract: the gRPC frontend and the UI listen on 127.0.0.1 ports picked
// once (the server's internal services take fresh ports on every start).
// State is one SQLite file written with synchronous=FULL, so Kill loses no
// acknowledged state: a restarted server resumes every workflow. Every start
// (first, after Stop, Kill or Wipe) makes sure namespace "default" exists
// with the search attributes of workflows.SearchAttributeTypes. Layout under
// <dir>/temporal:
//
//	state/         StateDir(): temporal.db and the server's own log,
//	               temporal-server.log (Wipe deletes it)
//	temporal.log   process output (the ready line, start errors), kept by Wipe
type Temporal struct {
	root     string
	stateDir string
	logPath  string
	grpcPort int
	uiPort   int
	bin      string
	tls      *TemporalTLS

	mu        sync.Mutex
	proc      *proc
	logOffset int64 // size of logPath when proc started
}

// TemporalOptions configure StartTemporalWith; the zero value is StartTemporal's
// plaintext server.
type TemporalOptions struct {
	// TLS, when set, serves the frontend over TLS (mTLS with ClientCAFile).
	TLS *TemporalTLS
}

// TemporalTLS is the frontend's transport security (files are PEM), for
// testing clients against a server that requires TLS or mTLS.
//
// contract: CertFile must be valid for 127.0.0.1 and signed by CAFile. The
// server's own clients (its system worker, the Web UI, Client) trust CAFile
// and, under mTLS, present CertFile, which must then be signed by
// ClientCAFile and allow client authentication as well as server
// authentication (see devserver.TLS).
type TemporalTLS struct {
	CertFile, KeyFile string
	CAFile            string
	// ClientCAFile, when set, makes the frontend require client certificates
	// signed by it (mTLS).
	ClientCAFile string
}

// StartTemporal starts a Temporal server in <dir>/temporal on free ports,
// building the drflow-devserver binary first if needed (see DevServerBinary).
// On error nothing is left running.
func StartTemporal(ctx context.Context, dir string) (*Temporal, error) {
	return StartTemporalWith(ctx, dir, TemporalOptions{})
}

// StartTemporalWith is StartTemporal with options.
func StartTemporalWith(ctx context.Context, dir string, opts TemporalOptions) (*Temporal, error) {
	dir, err := absDir(dir)
	if err != nil {
		return nil, fmt.Errorf("temporal dir: %w", err)
	}
	bin, err := DevServerBinary(ctx, nil)
	if err != nil {
		return nil, err
	}
	t := &Temporal{root: filepath.Join(dir, "temporal"), bin: bin, tls: opts.TLS}
	t.stateDir = filepath.Join(t.root, "state")
	t.logPath = filepath.Join(t.root, "temporal.log")
	if err := os.MkdirAll(t.stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("temporal dir: %w", err)
	}
	for attempt := 1; ; attempt++ {
		if t.grpcPort, err = pickPort(); err != nil {
			break
		}
		if t.uiPort, err = pickPort(); err != nil {
			break
		}
		err = t.Start(ctx)
		if err == nil || !addrInUse(err) || attempt == startRetries {
			break
		}
	}
	if err != nil {
		return nil, errors.Join(err, t.Close())
	}
	return t, nil
}

// Name returns "temporal".
func (t *Temporal) Name() string { return "temporal" }

// GRPCAddr returns host:port of the frontend, for client.Options.HostPort;
// it stays the same across restarts and wipes.
func (t *Temporal) GRPCAddr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(t.grpcPort))
}

// UIURL returns the Web UI's base URL (http://host:port).
func (t *Temporal) UIURL() string {
	return "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(t.uiPort))
}

// Namespace returns TemporalNamespace.
func (t *Temporal) Namespace() string { return TemporalNamespace }

// StateDir returns the directory of the SQLite state file.
func (t *Temporal) StateDir() string { return t.stateDir }

// LogPath returns the process output (ready line, start errors).
func (t *Temporal) LogPath() string { return t.logPath }

// ServerLogPath returns the server's own log (JSON, warnings and errors),
// inside StateDir, so Wipe deletes it.
func (t *Temporal) ServerLogPath() string { return filepath.Join(t.stateDir, "temporal-server.log") }

// TLS returns the frontend's TLS settings, nil for plaintext.
func (t *Temporal) TLS() *TemporalTLS { return t.tls }

// Client dials the server for Namespace (over TLS when the server has it,
// presenting CertFile under mTLS). Each call returns a new client; the
// caller closes it.
func (t *Temporal) Client(ctx context.Context) (client.Client, error) {
	opts := client.Options{
		HostPort:  t.GRPCAddr(),
		Namespace: TemporalNamespace,
		Logger:    sdklog.NewStructuredLogger(slog.New(slog.DiscardHandler)),
	}
	if t.tls != nil {
		tc, err := t.tls.clientConfig()
		if err != nil {
			return nil, err
		}
		opts.ConnectionOptions.TLS = tc
	}
	return client.DialContext(ctx, opts)
}

// clientConfig trusts CAFile and, under mTLS, presents CertFile.
func (s *TemporalTLS) clientConfig() (*tls.Config, error) {
	ca, err := os.ReadFile(s.CAFile)
	if err != nil {
		return nil, fmt.Errorf("temporal tls: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("temporal tls: no PEM certificate in %s", s.CAFile)
	}
	tc := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if s.ClientCAFile != "" {
		cert, err := tls.LoadX509KeyPair(s.CertFile, s.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("temporal tls: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// args are drflow-devserver's flags for s.
func (s *TemporalTLS) args() []string {
	if s == nil {
		return nil
	}
	args := []string{"--tls-cert", s.CertFile, "--tls-key", s.KeyFile, "--tls-ca", s.CAFile}
	if s.ClientCAFile != "" {
		args = append(args, "--tls-client-ca", s.ClientCAFile)
	}
	return args
}

// Running tells whether the server process is alive.
func (t *Temporal) Running() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.proc != nil && !t.proc.exited()
}

func (t *Temporal) pid() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.proc == nil || t.proc.exited() {
		return 0
	}
	return t.proc.pid()
}

// Start starts the server (creating an empty state on first start and after
// Wipe) and returns once it has printed its ready line, answers a gRPC health
// check and holds both of its ports.
func (t *Temporal) Start(ctx context.Context) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.proc != nil && !t.proc.exited() {
		return nil
	}
	if err := os.MkdirAll(t.stateDir, 0o700); err != nil {
		return fmt.Errorf("start temporal: %w", err)
	}
	offset := fileSize(t.logPath)
	pr, err := startProc(procSpec{
		path: t.bin,
		args: append([]string{
			"--state-dir", t.stateDir,
			"--grpc-addr", t.GRPCAddr(),
			"--ui-addr", net.JoinHostPort("127.0.0.1", strconv.Itoa(t.uiPort)),
			"--namespace", TemporalNamespace,
		}, t.tls.args()...),
		// A developer's TEMPORAL_* client settings (address, namespace, TLS)
		// must not leak into a private server.
		env:     environ([]string{"TEMPORAL_"}),
		dir:     t.root,
		logPath: t.logPath,
	})
	if err != nil {
		return fmt.Errorf("start drflow-devserver: %w", err)
	}
	t.proc, t.logOffset = pr, offset
	want := fmt.Sprintf("ready grpc=%s ui=%s", t.GRPCAddr(), t.UIURL())
	err = waitReady(ctx, pr, t.grpcPort, t.logPath, offset, func(ctx context.Context) error {
		line, err := readyLine(t.logPath, offset)
		if err != nil {
			return err
		}
		if line != want {
			return fmt.Errorf("unexpected ready line %q, want %q", line, want)
		}
		// The UI port is not covered by waitReady; a UI that lost its port
		// to another process would otherwise go unnoticed.
		if err := listensOn(pr.pid(), t.uiPort); err != nil {
			return fmt.Errorf("web ui: %w", err)
		}
		c, err := t.Client(ctx)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.CheckHealth(ctx, &client.CheckHealthRequest{})
		return err
	})
	if err != nil {
		return errors.Join(fmt.Errorf("temporal on %s: %w", t.GRPCAddr(), err), pr.kill())
	}
	return nil
}

// readyLine returns the "ready …" line drflow-devserver printed to the log
// since offset.
func readyLine(logPath string, offset int64) (string, error) {
	f, err := os.Open(logPath)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if _, err := f.Seek(offset, 0); err != nil {
		return "", err
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, "ready ") {
			return line, nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", errors.New("no ready line yet")
}

// Stop shuts the server down (SIGTERM: the UI and the server stop, the state
// file is closed) and reports an unclean exit.
func (t *Temporal) Stop(ctx context.Context) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.proc == nil || t.proc.exited() {
		return nil
	}
	if err := t.proc.stop(ctx, syscall.SIGTERM); err != nil {
		return err
	}
	if t.proc.err != nil {
		return fmt.Errorf("temporal exited uncleanly after SIGTERM (%v)\n%s", t.proc.err, logTail(t.logPath, t.logOffset))
	}
	return nil
}

// Kill sends SIGKILL to the server, as a crash would; the next Start resumes
// from the state file.
func (t *Temporal) Kill() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.proc == nil {
		return nil
	}
	return t.proc.kill()
}

// Wipe stops the server and deletes StateDir(); the next Start gives a fresh
// server (no workflows, schedules or history) on the same ports.
func (t *Temporal) Wipe() error {
	if err := t.Stop(context.Background()); err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := resetDir(t.stateDir, 0o700); err != nil {
		return fmt.Errorf("wipe temporal: %w", err)
	}
	return nil
}

// Close stops the server.
func (t *Temporal) Close() error { return t.Stop(context.Background()) }

var (
	devServerBinMu   sync.Mutex
	devServerBinPath string // cached after the first successful lookup
)

// DevServerBinary returns the path of an up-to-date drflow-devserver binary:
// $DRFLOW_DEVSERVER_BIN as given, else <repo root>/bin/drflow-devserver,
// which it (re)builds with `go build` in the repo root when it is missing or
// stale. The first build of the Temporal server packages takes minutes on a
// cold build cache; it is logged through logf (nil means slog.Default()).
//
// contract: the binary is stale when anything it is built from is newer:
// go.mod, go.sum, or a source file or directory of a package of this module
// that it imports (per `go list -deps`: internal/devserver, workflows and
// what they import), so a test never runs an old server. Builds are
// serialized across processes by a lock file (bin/.drflow-devserver-build.lock)
// and written to a temporary name that is renamed into place; the binary's
// modification time is set to when the build began, so an edit made during
// the build makes it stale again. The lookup is cached for the life of the
// process.
func DevServerBinary(ctx context.Context, logf func(string, ...any)) (string, error) {
	if logf == nil {
		logf = func(format string, args ...any) { slog.Info(fmt.Sprintf(format, args...)) }
	}
	devServerBinMu.Lock()
	defer devServerBinMu.Unlock()
	if devServerBinPath != "" {
		return devServerBinPath, nil
	}
	path, err := findOrBuildDevServer(ctx, logf)
	if err != nil {
		return "", err
	}
	devServerBinPath = path
	return path, nil
}

func findOrBuildDevServer(ctx context.Context, logf func(string, ...any)) (string, error) {
	if p := os.Getenv(DevServerBinEnv); p != "" {
		if !isExecutable(p) {
			return "", fmt.Errorf("%s=%s: not an executable file", DevServerBinEnv, p)
		}
		return p, nil
	}
	root, err := drflowRoot()
	if err != nil {
		return "", &MissingBinaryError{
			Program: "drflow-devserver",
			Install: fmt.Sprintf("it with `go build -o DIR/drflow-devserver %s` in the drflow repo and set $%s", DevServerPackage, DevServerBinEnv),
			Err:     err,
		}
	}
	goBin, err := goTool()
	if err != nil {
		return "", &MissingBinaryError{
			Program: "go (to build drflow-devserver)",
			Install: fmt.Sprintf("Go, or build drflow-devserver elsewhere and set $%s", DevServerBinEnv),
			Err:     err,
		}
	}
	binDir := filepath.Join(root, "bin")
	bin := filepath.Join(binDir, "drflow-devserver")
	why, err := devServerStale(ctx, goBin, root, bin)
	if err != nil {
		return "", err
	}
	if why == "" {
		return bin, nil
	}

	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return "", fmt.Errorf("build drflow-devserver: %w", err)
	}
	lockPath := filepath.Join(binDir, ".drflow-devserver-build.lock")
	unlock, err := lockFile(ctx, lockPath, func(string, ...any) {
		logf("stack: waiting for another process building drflow-devserver (lock %s)", lockPath)
	})
	if err != nil {
		return "", fmt.Errorf("build drflow-devserver: %w", err)
	}
	defer unlock()
	// Someone else may have built it while we waited for the lock.
	if why, err = devServerStale(ctx, goBin, root, bin); err != nil || why == "" {
		return bin, err
	}
	if err := buildDevServer(ctx, goBin, root, bin, why, logf); err != nil {
		return "", err
	}
	return bin, nil
}

// devServerStale returns why bin must be (re)built, or "" when it is up to date.
func devServerStale(ctx context.Context, goBin, root, bin string) (string, error) {
	fi, err := os.Stat(bin)
	if errors.Is(err, os.ErrNotExist) {
		return bin + " does not exist", nil
	}
	if err != nil {
		return "", fmt.Errorf("drflow-devserver: %w", err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return bin + " is not an executable file", nil
	}
	inputs, err := devServerInputs(ctx, goBin, root)
	if err != nil {
		return "", err
	}
	if newer, ok := newestAfter(inputs, fi.ModTime()); ok {
		return newer + " is newer than " + bin, nil
	}
	return "", nil
}

// devServerInputs returns the files and directories drflow-devserver is
// built from: go.mod, go.sum, and for each package of this module that it
// imports, the package directory (its time changes when a file is added or
// removed) and its Go and embedded files.
func devServerInputs(ctx context.Context, goBin, root string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	// -e: a package broken by an edit in progress still lists its files; the
	// build that follows reports the error.
	cmd := exec.CommandContext(ctx, goBin, "list", "-e", "-deps", "-f",
		`{{if .Module}}{{if .Module.Main}}{{.Dir}}{{range .GoFiles}}{{"\n"}}{{$.Dir}}/{{.}}{{end}}{{range .CgoFiles}}{{"\n"}}{{$.Dir}}/{{.}}{{end}}{{range .EmbedFiles}}{{"\n"}}{{$.Dir}}/{{.}}{{end}}{{end}}{{end}}`,
		DevServerPackage)
	cmd.Dir = root
	cmd.Env = environ([]string{"GOOS", "GOARCH"})
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("drflow-devserver: go list -deps %s: %w\n%s", DevServerPackage, err, tail(stderr.String(), tailBytes))
	}
	inputs := []string{filepath.Join(root, "go.mod"), filepath.Join(root, "go.sum")}
	for _, line := range strings.Split(string(out), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			inputs = append(inputs, line)
		}
	}
	return inputs, nil
}

// newestAfter returns one of paths modified after t. Missing paths are
// skipped (a file deleted since `go list` changed its directory's time).
func newestAfter(paths []string, t time.Time) (string, bool) {
	var (
		newest     string
		newestTime time.Time
	)
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil || !fi.ModTime().After(t) {
			continue
		}
		if newest == "" || fi.ModTime().After(newestTime) {
			newest, newestTime = p, fi.ModTime()
		}
	}
	return newest, newest != ""
}

func buildDevServer(ctx context.Context, goBin, root, bin, why string, logf func(string, ...any)) error {
	tmp, err := os.CreateTemp(filepath.Dir(bin), ".drflow-devserver-build-")
	if err != nil {
		return fmt.Errorf("build drflow-devserver: %w", err)
	}
	tmp.Close()
	defer os.Remove(tmp.Name()) // after a successful rename there is nothing left to remove

	logf("stack: building drflow-devserver (%s) into %s; the first build of the Temporal server takes several minutes", why, bin)
	began := time.Now()
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", tmp.Name(), DevServerPackage)
	cmd.Env = environ([]string{"GOOS", "GOARCH", "GOBIN"})
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build drflow-devserver: go build %s: %w\n%s", DevServerPackage, err, tail(string(out), tailBytes))
	}
	// Sources edited while go build ran are newer than this, so the next
	// lookup rebuilds.
	if err := os.Chtimes(tmp.Name(), began, began); err != nil {
		return fmt.Errorf("build drflow-devserver: %w", err)
	}
	if err := os.Rename(tmp.Name(), bin); err != nil {
		return fmt.Errorf("build drflow-devserver: %w", err)
	}
	logf("stack: built drflow-devserver in %s", time.Since(began).Round(time.Second))
	return nil
}

// drflowRoot returns the repo root (see repoRoot) after checking that its
// go.mod is drflow's, whose sources drflow-devserver is built from.
func drflowRoot() (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		return "", err
	}
	const want = "github.com/kohakku/drflow"
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "module" {
			if strings.Trim(f[1], `"`) == want {
				return root, nil
			}
			return "", fmt.Errorf("%s/go.mod is module %s, not %s", root, f[1], want)
		}
	}
	return "", fmt.Errorf("%s/go.mod has no module line", root)
}

// goTool returns the go command: the one on PATH, else $GOROOT/bin/go.
func goTool() (string, error) {
	p, err := exec.LookPath("go")
	if err == nil {
		return p, nil
	}
	if g := filepath.Join(os.Getenv("GOROOT"), "bin", "go"); os.Getenv("GOROOT") != "" && isExecutable(g) {
		return g, nil
	}
	return "", err
}
