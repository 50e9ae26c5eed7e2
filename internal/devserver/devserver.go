// Package devserver runs a persistent Temporal server and the Temporal Web UI inside the
// current process, for `worker --dev`, tests and the demo.
//
// State lives in one SQLite file under Options.StateDir, so workflows survive a crash or
// restart of the process: start again on the same state directory and every workflow,
// timer and activity retry carries on. The namespace is created on first start with the
// retention and search attributes drflow needs, and both are re-checked on every start so
// an older state directory is brought up to date.
//
// This is for a single host. Production points the worker at a real Temporal cluster or
// Temporal Cloud instead; the DR system's own Temporal must never be the cluster it recovers.
package devserver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	uiserver "github.com/temporalio/ui-server/v2/server"
	uiconfig "github.com/temporalio/ui-server/v2/server/config"
	uiopts "github.com/temporalio/ui-server/v2/server/server_options"
	enumspb "go.temporal.io/api/enums/v1"
	namespacepb "go.temporal.io/api/namespace/v1"
	"go.temporal.io/api/operatorservice/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	sdklog "go.temporal.io/sdk/log"
	"go.temporal.io/server/common/authorization"
	"go.temporal.io/server/common/cluster"
	"go.temporal.io/server/common/config"
	"go.temporal.io/server/common/dynamicconfig"
	"go.temporal.io/server/common/log"
	"go.temporal.io/server/common/membership/static"
	sqliteplugin "go.temporal.io/server/common/persistence/sql/sqlplugin/sqlite"
	"go.temporal.io/server/common/primitives"
	sqliteschema "go.temporal.io/server/schema/sqlite"
	"go.temporal.io/server/temporal"
	"google.golang.org/protobuf/types/known/durationpb"
)

// DatabaseFile is the name of the SQLite file inside the state directory.
const DatabaseFile = "temporal.db"

// MinRetention is the shortest namespace retention the dev server accepts: closed
// runbook runs stay visible for audits for at least this long.
const MinRetention = 30 * 24 * time.Hour

// Options configure Start. Zero values take the documented defaults.
type Options struct {
	// StateDir holds the SQLite database and the server log. Created when missing.
	StateDir string
	// GRPCAddr is the frontend's host:port. Default 127.0.0.1:7233; port 0 picks a free port.
	GRPCAddr string
	// UIAddr is the Web UI's host:port. Default 127.0.0.1:8233; port 0 picks a free port.
	UIAddr string
	// NoUI disables the Web UI.
	NoUI bool
	// Namespace to create and keep up to date. Default "default".
	Namespace string
	// Retention of closed workflows in Namespace. Default and minimum MinRetention.
	Retention time.Duration
	// SearchAttributes are registered in Namespace (name → type).
	SearchAttributes map[string]enumspb.IndexedValueType
	// LogLevel of the server's own log, written to <StateDir>/temporal-server.log.
	// Default "warn".
	LogLevel string
	// TLS, when set, serves the frontend over TLS (mTLS with ClientCAFile). nil means
	// plaintext, the default for a single host.
	TLS *TLS
}

// TLS is the frontend's transport security, for testing clients against a server that
// requires TLS or mTLS (files are PEM).
//
// contract: the server's own clients (its system worker, the Web UI and the namespace
// setup of Start) dial the frontend too: they trust CAFile and, under mTLS, present
// CertFile, which must then be signed by a CA in ClientCAFile and allow client
// authentication (extended key usage clientAuth as well as serverAuth).
type TLS struct {
	// CertFile and KeyFile are the frontend's certificate (valid for the host of GRPCAddr)
	// and its private key.
	CertFile, KeyFile string
	// CAFile is the CA that signed CertFile.
	CAFile string
	// ClientCAFile, when set, makes the frontend require a client certificate signed by
	// it (mTLS).
	ClientCAFile string
}

// Server is a running embedded Temporal server with its Web UI.
type Server struct {
	server    temporal.Server
	ui        *uiserver.Server
	grpcAddr  string
	uiAddr    string
	namespace string
	logPath   string
}

// Start starts the server and the UI and returns once the frontend answers and the
// namespace is ready. The caller must call Stop.
func Start(ctx context.Context, opts Options) (*Server, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(opts.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir %s: %w", opts.StateDir, err)
	}
	host, port, err := resolveAddr("grpc address", opts.GRPCAddr)
	if err != nil {
		return nil, err
	}
	s := &Server{
		grpcAddr:  net.JoinHostPort(host, strconv.Itoa(port)),
		namespace: opts.Namespace,
		logPath:   filepath.Join(opts.StateDir, "temporal-server.log"),
	}

	srv, err := buildServer(opts, host, port, s.logPath)
	if err != nil {
		return nil, err
	}
	if err := srv.Start(); err != nil {
		return nil, fmt.Errorf("start temporal server (log: %s): %w", s.logPath, err)
	}
	s.server = srv

	if err := s.ensureNamespace(ctx, opts); err != nil {
		s.Stop()
		return nil, err
	}

	if !opts.NoUI {
		uiHost, uiPort, err := resolveAddr("ui address", opts.UIAddr)
		if err != nil {
			s.Stop()
			return nil, err
		}
		s.uiAddr = net.JoinHostPort(uiHost, strconv.Itoa(uiPort))
		if err := s.startUI(ctx, uiHost, uiPort, opts.TLS); err != nil {
			s.Stop()
			return nil, err
		}
	}
	return s, nil
}

// GRPCAddr is the frontend address clients and workers dial.
func (s *Server) GRPCAddr() string { return s.grpcAddr }

// UIURL is the Web UI's base URL, or "" when the UI is off.
func (s *Server) UIURL() string {
	if s.uiAddr == "" {
		return ""
	}
	return "http://" + s.uiAddr
}

// Namespace is the namespace the server was started with.
func (s *Server) Namespace() string { return s.namespace }

// LogPath is the file the server writes its own log to.
func (s *Server) LogPath() string { return s.logPath }

// Stop stops the UI, then the server. Workflows in flight resume on the next Start.
func (s *Server) Stop() {
	if s.ui != nil {
		s.ui.Stop()
		s.ui = nil
	}
	if s.server != nil {
		_ = s.server.Stop()
		s.server = nil
	}
}

func (o Options) withDefaults() (Options, error) {
	if o.StateDir == "" {
		o.StateDir = ".drflow"
	}
	if o.GRPCAddr == "" {
		o.GRPCAddr = "127.0.0.1:7233"
	}
	if o.UIAddr == "" {
		o.UIAddr = "127.0.0.1:8233"
	}
	if o.Namespace == "" {
		o.Namespace = "default"
	}
	if o.Retention == 0 {
		o.Retention = MinRetention
	}
	if o.Retention < MinRetention {
		return o, fmt.Errorf("retention %s is shorter than the minimum %s", o.Retention, MinRetention)
	}
	if o.LogLevel == "" {
		o.LogLevel = "warn"
	}
	if o.TLS != nil {
		if err := o.TLS.check(); err != nil {
			return o, err
		}
	}
	abs, err := filepath.Abs(o.StateDir)
	if err != nil {
		return o, fmt.Errorf("state dir %s: %w", o.StateDir, err)
	}
	o.StateDir = abs
	return o, nil
}

// resolveAddr splits host:port and replaces port 0 by a free port. A port that is taken
// is reported here, with the fix, rather than later by a server that exits the process.
func resolveAddr(what, addr string) (string, int, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("%s %q: want host:port, e.g. 127.0.0.1:7233", what, addr)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("%s %q: port must be a number from 0 to 65535", what, addr)
	}
	l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return "", 0, fmt.Errorf("%s %s is not available (%v): stop what holds it or choose another address", what, addr, err)
	}
	port = l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	return host, port, nil
}

func freePort(host string) (int, error) {
	_, port, err := resolveAddr("internal port", net.JoinHostPort(host, "0"))
	return port, err
}

func buildServer(opts Options, host string, port int, logPath string) (temporal.Server, error) {
	// Internal services get fresh ports on every start; only the frontend's is stable.
	ports := map[string]int{"frontend": port}
	for _, svc := range []string{"frontendHTTP", "history", "matching", "worker"} {
		p, err := freePort(host)
		if err != nil {
			return nil, err
		}
		ports[svc] = p
	}

	sqlConf, err := prepareDatabase(opts)
	if err != nil {
		return nil, err
	}

	frontend := net.JoinHostPort(host, strconv.Itoa(port))
	var conf config.Config
	conf.Global.Membership.MaxJoinDuration = 30 * time.Second
	conf.Global.Membership.BroadcastAddress = host
	conf.Persistence.DefaultStore = "sqlite"
	conf.Persistence.VisibilityStore = "sqlite"
	conf.Persistence.NumHistoryShards = 1
	conf.Persistence.DataStores = map[string]config.DataStore{"sqlite": {SQL: sqlConf}}
	conf.ClusterMetadata = &cluster.Config{
		FailoverVersionIncrement: 10,
		MasterClusterName:        "active",
		CurrentClusterName:       "active",
		ClusterInformation: map[string]cluster.ClusterInformation{
			"active": {
				Enabled:                true,
				InitialFailoverVersion: 1,
				RPCAddress:             frontend,
				HTTPAddress:            net.JoinHostPort(host, strconv.Itoa(ports["frontendHTTP"])),
				ClusterID:              "drflow-dev",
			},
		},
	}
	conf.DCRedirectionPolicy.Policy = "noop"
	conf.Services = map[string]config.Service{}
	for _, svc := range []string{"frontend", "history", "matching", "worker"} {
		var sc config.Service
		sc.RPC.BindOnIP = host
		sc.RPC.GRPCPort = ports[svc]
		if svc == "frontend" {
			sc.RPC.HTTPPort = ports["frontendHTTP"]
		}
		conf.Services[svc] = sc
	}
	conf.Archival.History.State = "disabled"
	conf.Archival.Visibility.State = "disabled"
	conf.NamespaceDefaults.Archival.History.State = "disabled"
	conf.NamespaceDefaults.Archival.Visibility.State = "disabled"
	conf.PublicClient.HostPort = frontend
	if t := opts.TLS; t != nil {
		conf.Global.TLS.Frontend.Server = config.ServerTLS{CertFile: t.CertFile, KeyFile: t.KeyFile}
		// The system worker reaches the frontend at PublicClient.HostPort with these.
		conf.Global.TLS.SystemWorker.Client.RootCAFiles = []string{t.CAFile}
		if t.ClientCAFile != "" {
			conf.Global.TLS.Frontend.Server.RequireClientAuth = true
			conf.Global.TLS.Frontend.Server.ClientCAFiles = []string{t.ClientCAFile}
			conf.Global.TLS.SystemWorker.CertFile = t.CertFile
			conf.Global.TLS.SystemWorker.KeyFile = t.KeyFile
		}
	}

	logger := log.NewZapLogger(log.BuildZapLogger(log.Config{
		Level:      opts.LogLevel,
		OutputFile: logPath,
		Format:     "json",
	}))
	authorizer, err := authorization.GetAuthorizerFromConfig(&conf.Global.Authorization)
	if err != nil {
		return nil, fmt.Errorf("temporal authorizer: %w", err)
	}
	claimMapper, err := authorization.GetClaimMapperFromConfig(&conf.Global.Authorization, logger)
	if err != nil {
		return nil, fmt.Errorf("temporal claim mapper: %w", err)
	}
	dyn := dynamicconfig.StaticClient{
		dynamicconfig.HistoryCacheHostLevelMaxSize.Key():                 8192,
		dynamicconfig.FrontendMaxNamespaceVisibilityRPSPerInstance.Key(): 100,
	}
	hosts := map[primitives.ServiceName]static.Hosts{}
	for svc, name := range map[string]primitives.ServiceName{
		"frontend": primitives.FrontendService,
		"history":  primitives.HistoryService,
		"matching": primitives.MatchingService,
		"worker":   primitives.WorkerService,
	} {
		hosts[name] = static.SingleLocalHost(net.JoinHostPort(host, strconv.Itoa(ports[svc])))
	}
	return temporal.NewServer(
		temporal.WithConfig(&conf),
		temporal.ForServices(temporal.DefaultServices),
		temporal.WithStaticHosts(hosts),
		temporal.WithLogger(logger),
		temporal.WithAuthorizer(authorizer),
		temporal.WithClaimMapper(func(*config.Config) authorization.ClaimMapper { return claimMapper }),
		temporal.WithDynamicConfigClient(dyn),
	)
}

// prepareDatabase creates the schema on first start and the namespace (with retention and
// search attributes) when it does not exist yet. Both steps are no-ops on an existing file.
func prepareDatabase(opts Options) (*config.SQL, error) {
	dbPath := filepath.Join(opts.StateDir, DatabaseFile)
	conf := &config.SQL{
		PluginName:   sqliteplugin.PluginName,
		DatabaseName: dbPath,
		ConnectAttributes: map[string]string{
			"mode": "rwc",
			// WAL keeps readers and the writer apart; synchronous=FULL makes every commit
			// durable, so a SIGKILL loses no acknowledged state.
			// Temporal's SQLite plugin turns each key into _pragma=<key>=<value>.
			"journal_mode": "wal",
			"synchronous":  "2",
		},
	}
	if _, err := os.Stat(dbPath); errors.Is(err, os.ErrNotExist) {
		if err := sqliteschema.SetupSchema(conf); err != nil {
			return nil, fmt.Errorf("create temporal schema in %s: %w", dbPath, err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("state file %s: %w", dbPath, err)
	}
	ns, err := sqliteschema.NewNamespaceConfig("active", opts.Namespace, false, opts.SearchAttributes)
	if err != nil {
		return nil, fmt.Errorf("namespace %s: %w", opts.Namespace, err)
	}
	ns.Detail.Config.Retention = durationpb.New(opts.Retention)
	if err := sqliteschema.CreateNamespaces(conf, ns); err != nil {
		return nil, fmt.Errorf("create namespace %s: %w", opts.Namespace, err)
	}
	return conf, nil
}

// ensureNamespace waits for the frontend, then brings retention and search attributes of an
// existing namespace up to what Options ask (state dirs made by older versions).
func (s *Server) ensureNamespace(ctx context.Context, opts Options) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	copts := client.Options{
		HostPort:  s.grpcAddr,
		Namespace: opts.Namespace,
		Logger:    sdklog.NewStructuredLogger(slog.New(slog.DiscardHandler)),
	}
	if opts.TLS != nil {
		tc, err := opts.TLS.clientConfig()
		if err != nil {
			return err
		}
		copts.ConnectionOptions.TLS = tc
	}
	c, err := client.DialContext(ctx, copts)
	if err != nil {
		return fmt.Errorf("connect to embedded temporal at %s: %w", s.grpcAddr, err)
	}
	defer c.Close()

	var desc *workflowservice.DescribeNamespaceResponse
	for {
		desc, err = c.WorkflowService().DescribeNamespace(ctx, &workflowservice.DescribeNamespaceRequest{Namespace: opts.Namespace})
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("namespace %s not ready: %w (server log: %s)", opts.Namespace, err, s.logPath)
		case <-time.After(100 * time.Millisecond):
		}
	}
	if desc.GetConfig().GetWorkflowExecutionRetentionTtl().AsDuration() < opts.Retention {
		_, err := c.WorkflowService().UpdateNamespace(ctx, &workflowservice.UpdateNamespaceRequest{
			Namespace: opts.Namespace,
			Config: &namespacepb.NamespaceConfig{
				WorkflowExecutionRetentionTtl: durationpb.New(opts.Retention),
			},
		})
		if err != nil {
			return fmt.Errorf("set retention of namespace %s: %w", opts.Namespace, err)
		}
	}

	have, err := c.OperatorService().ListSearchAttributes(ctx, &operatorservice.ListSearchAttributesRequest{Namespace: opts.Namespace})
	if err != nil {
		return fmt.Errorf("list search attributes: %w", err)
	}
	missing := map[string]enumspb.IndexedValueType{}
	for name, typ := range opts.SearchAttributes {
		if _, ok := have.GetCustomAttributes()[name]; !ok {
			missing[name] = typ
		}
	}
	if len(missing) > 0 {
		_, err := c.OperatorService().AddSearchAttributes(ctx, &operatorservice.AddSearchAttributesRequest{
			Namespace:        opts.Namespace,
			SearchAttributes: missing,
		})
		if err != nil {
			return fmt.Errorf("register search attributes: %w", err)
		}
	}
	return nil
}

// check reports a missing or unreadable file by its option, before the server (which
// would fail later, with a less direct message) starts.
func (t *TLS) check() error {
	for _, f := range []struct{ name, path string }{
		{"tls cert file", t.CertFile}, {"tls key file", t.KeyFile}, {"tls ca file", t.CAFile},
	} {
		if f.path == "" {
			return fmt.Errorf("%s is required with TLS", f.name)
		}
	}
	if t.ClientCAFile != "" {
		if _, err := os.Stat(t.ClientCAFile); err != nil {
			return fmt.Errorf("tls client ca file: %w", err)
		}
	}
	_, err := t.clientConfig()
	return err
}

// clientConfig is the TLS config of the server's own clients (see TLS).
func (t *TLS) clientConfig() (*tls.Config, error) {
	ca, err := os.ReadFile(t.CAFile)
	if err != nil {
		return nil, fmt.Errorf("tls ca file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("tls ca file %s: no PEM certificate in it", t.CAFile)
	}
	cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("tls cert/key file: %w", err)
	}
	tc := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if t.ClientCAFile != "" {
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

func (s *Server) startUI(ctx context.Context, host string, port int, t *TLS) error {
	var uiTLS uiconfig.TLS
	if t != nil {
		uiTLS = uiconfig.TLS{CaFile: t.CAFile, EnableHostVerification: true}
		if t.ClientCAFile != "" {
			uiTLS.CertFile, uiTLS.KeyFile = t.CertFile, t.KeyFile
		}
	}
	s.ui = uiserver.NewServer(uiopts.WithConfigProvider(&uiconfig.Config{
		Host:                host,
		Port:                port,
		TemporalGRPCAddress: s.grpcAddr,
		EnableUI:            true,
		DefaultNamespace:    s.namespace,
		CORS:                uiconfig.CORS{CookieInsecure: true},
		HideLogs:            true,
		DisableNewsFetch:    true,
		TLS:                 uiTLS,
	}))
	ui := s.ui
	go func() { _ = ui.Start() }()

	deadline := time.Now().Add(30 * time.Second)
	url := s.UIURL() + "/healthz"
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("web ui at %s did not become ready: %v", s.UIURL(), err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
