// Package config is the one configuration of the drflow worker and starter.
//
// A Config is built in layers, each overriding the one before: built-in
// defaults, then an optional YAML file, then environment variables (Load).
// The binaries apply their command-line flags last, with Config.Set. The
// Temporal settings have one more layer under the file: a Temporal client
// config profile (TOML, as written by `temporal config set`), chosen by
// TEMPORAL_CONFIG_FILE and TEMPORAL_PROFILE exactly as the Temporal SDK does.
//
// Load checks the form of every value and reports all problems at once, each
// naming the variable or file key. It does not decide what is required: a
// command asks for the parts it uses with Config.Require, so `worker --dev`
// runs without a backup store while `starter backup` cannot.
//
// Credentials are held as Secret, which prints redacted; a Config can be
// printed, logged and JSON-encoded without revealing any of them.
// docs/configuration.md is the reference for every setting.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/contrib/envconfig"
	"google.golang.org/grpc"
	"gopkg.in/yaml.v3"

	"github.com/kohakku/drflow/internal/store"
)

// FileEnv is the environment variable that names the YAML config file when
// the binary's --config flag does not.
const FileEnv = "DRFLOW_CONFIG"

// Config is the configuration shared by the worker and the starter.
// It is safe to print with any fmt verb, to log with slog and to encode as
// JSON: credentials are Secret values and the PostgreSQL password is kept
// apart from the URL.
type Config struct {
	// Temporal is the cluster the worker polls and the starter talks to.
	Temporal Temporal `json:"temporal"`
	// Postgres is the PostgreSQL server that holds the app's databases.
	Postgres Postgres `json:"postgres"`
	// Redis is the app's Redis.
	Redis Redis `json:"redis"`
	// SQLite is the SQLite database files backed up from the worker's host.
	SQLite SQLite `json:"sqlite"`
	// MinIO is the app's object store.
	MinIO MinIO `json:"minio"`
	// Backup is the S3-compatible store the backups are written to.
	Backup Backup `json:"backup"`
	// Encryption is the client-side encryption of the backup artifacts (age).
	Encryption Encryption `json:"encryption"`
	// Worker holds settings of the worker process itself.
	Worker Worker `json:"worker"`
	// Services holds the hooks that stop, start, restart and health-check
	// the app's services.
	Services Services `json:"services"`
}

// Temporal is the Temporal connection of both binaries. It must not be the
// Temporal cluster of the application drflow recovers.
type Temporal struct {
	// Address is the frontend host:port (TEMPORAL_ADDRESS), or a gRPC
	// resolver target such as dns:///temporal.internal:7233.
	Address string `json:"address"`
	// Namespace is the Temporal namespace (TEMPORAL_NAMESPACE).
	Namespace string `json:"namespace"`
	// APIKey authenticates to Temporal Cloud or a cluster that takes API keys
	// (TEMPORAL_API_KEY). Setting it turns TLS on unless TLS.Enabled is false.
	APIKey Secret `json:"apiKey"`
	// TaskQueue is the shared task queue of all drflow workers (DRFLOW_TASK_QUEUE).
	TaskQueue string `json:"taskQueue"`
	// Profile is the Temporal client config profile to read
	// (TEMPORAL_PROFILE); "" reads the profile "default" if it exists.
	Profile string `json:"profile"`
	// ConfigFile is the Temporal client config file (TEMPORAL_CONFIG_FILE);
	// "" means the SDK's default, <os.UserConfigDir>/temporalio/temporal.toml,
	// which may be absent.
	ConfigFile string `json:"configFile"`
	// TLS is the transport security towards the frontend.
	TLS TemporalTLS `json:"tls"`
}

// TemporalTLS mirrors the SDK's TEMPORAL_TLS_* settings. TLS is used when
// Enabled is true, or when Enabled is nil and an API key or any other field
// here is set; Enabled false turns it off whatever else is set.
type TemporalTLS struct {
	// Enabled forces TLS on or off (TEMPORAL_TLS); nil decides as above.
	Enabled *bool `json:"enabled"`
	// ClientCertPath is the mTLS client certificate file
	// (TEMPORAL_TLS_CLIENT_CERT_PATH). Needs ClientKeyPath.
	ClientCertPath string `json:"clientCertPath"`
	// ClientCertData is the mTLS client certificate as PEM
	// (TEMPORAL_TLS_CLIENT_CERT_DATA). Needs ClientKeyData.
	ClientCertData string `json:"clientCertData"`
	// ClientKeyPath is the mTLS client key file (TEMPORAL_TLS_CLIENT_KEY_PATH).
	ClientKeyPath string `json:"clientKeyPath"`
	// ClientKeyData is the mTLS client key as PEM (TEMPORAL_TLS_CLIENT_KEY_DATA).
	ClientKeyData Secret `json:"clientKeyData"`
	// ServerCACertPath is a CA file to trust instead of the system roots
	// (TEMPORAL_TLS_SERVER_CA_CERT_PATH).
	ServerCACertPath string `json:"serverCaCertPath"`
	// ServerCACertData is that CA as PEM (TEMPORAL_TLS_SERVER_CA_CERT_DATA).
	ServerCACertData string `json:"serverCaCertData"`
	// ServerName overrides the name checked against the server certificate
	// (TEMPORAL_TLS_SERVER_NAME).
	ServerName string `json:"serverName"`
	// DisableHostVerification skips the server certificate check
	// (TEMPORAL_TLS_DISABLE_HOST_VERIFICATION). For tests only.
	DisableHostVerification bool `json:"disableHostVerification"`
}

// isSet reports whether any setting other than Enabled asks for TLS.
func (t TemporalTLS) isSet() bool {
	return t.ClientCertPath != "" || t.ClientCertData != "" || t.ClientKeyPath != "" ||
		t.ClientKeyData != "" || t.ServerCACertPath != "" || t.ServerCACertData != "" ||
		t.ServerName != "" || t.DisableHostVerification
}

// Postgres is the PostgreSQL server of the app.
type Postgres struct {
	// URL is the server URL from DRFLOW_POSTGRES_URL with the password
	// removed (it is in Password); "" when not configured. Connect with
	// DatabaseURL, which puts the password back.
	URL string `json:"url"`
	// Password is the password that DRFLOW_POSTGRES_URL carried, either in
	// its user info or as a password query parameter.
	Password Secret `json:"password"`
	// Databases are the databases backed up and restored, in that order
	// (DRFLOW_POSTGRES_DATABASES).
	Databases []string `json:"databases"`
}

// DatabaseURL returns the server URL with its database set to db and the
// password included: a credential, to hand to pgx or pg_dump and never to log
// (log Redacted instead). It fails when no URL is configured or db is not a
// usable database name.
func (p Postgres) DatabaseURL(db string) (string, error) {
	if p.URL == "" {
		return "", errors.New("postgres: DRFLOW_POSTGRES_URL is not set")
	}
	if err := checkDatabaseName(db); err != nil {
		return "", fmt.Errorf("postgres: database %w", err)
	}
	u, err := url.Parse(p.URL)
	if err != nil {
		return "", errors.New("postgres: the configured URL does not parse")
	}
	u.Path, u.RawPath = "/"+db, ""
	if p.Password != "" {
		u.User = url.UserPassword(u.User.Username(), p.Password.Reveal())
	}
	return u.String(), nil
}

// Redacted returns the server URL with the password, if any, shown as
// "xxxxx", like url.URL.Redacted: safe to log. It returns "" when no URL is
// configured.
func (p Postgres) Redacted() string {
	if p.URL == "" {
		return ""
	}
	u, err := url.Parse(p.URL)
	if err != nil {
		return "(unparsable URL)"
	}
	if p.Password != "" {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.Redacted()
}

// Redis is the app's Redis server.
type Redis struct {
	// Addr is host:port (DRFLOW_REDIS_ADDR).
	Addr string `json:"addr"`
	// Password is the AUTH password (DRFLOW_REDIS_PASSWORD); "" for none.
	Password Secret `json:"password"`
	// AOFDir is the Redis server's AOF directory on the Redis host, Redis 7's
	// appendonlydir, as an absolute path (DRFLOW_REDIS_AOF_DIR); "" when not
	// configured.
	AOFDir string `json:"aofDir"`
	// HostQueue is the task queue of the drflow worker on the Redis host, for
	// steps that need its file system (DRFLOW_REDIS_HOST_QUEUE); "" means the
	// shared task queue.
	HostQueue string `json:"hostQueue"`
}

// SQLite names the SQLite database files that NightlyBackup snapshots.
type SQLite struct {
	// Databases are the files to back up, in the order given
	// (DRFLOW_SQLITE_DATABASES); names are unique.
	Databases []SQLiteDatabase `json:"databases"`
}

// SQLiteDatabase is one SQLite database file.
type SQLiteDatabase struct {
	// Name identifies the database in workflow inputs, store keys
	// (sets/<id>/sqlite/<name>.db.zst) and the manifest: 1 to 63 lowercase
	// letters, digits, - and _.
	Name string `json:"name"`
	// Path is the database file on the host of the worker that snapshots it;
	// a relative path is relative to that worker's working directory.
	Path string `json:"path"`
}

// Paths returns the databases as a map from name to path, the form the
// SQLite activities take; nil when none are configured.
func (s SQLite) Paths() map[string]string {
	if len(s.Databases) == 0 {
		return nil
	}
	m := make(map[string]string, len(s.Databases))
	for _, d := range s.Databases {
		m[d.Name] = d.Path
	}
	return m
}

// MinIO is the app's object store.
type MinIO struct {
	// Endpoint is host:port without a scheme (DRFLOW_MINIO_ENDPOINT).
	Endpoint string `json:"endpoint"`
	// AccessKey is the access key id (DRFLOW_MINIO_ACCESS_KEY).
	AccessKey string `json:"accessKey"`
	// SecretKey is the secret key (DRFLOW_MINIO_SECRET_KEY).
	SecretKey Secret `json:"secretKey"`
	// Buckets are the app's buckets that are mirrored (DRFLOW_MINIO_BUCKETS).
	Buckets []string `json:"buckets"`
	// Secure selects https (DRFLOW_MINIO_SECURE).
	Secure bool `json:"secure"`
}

// Backup is the S3-compatible backup store (AWS S3, R2, B2, MinIO, ...).
// The variable names are the ones bunqueue uses.
type Backup struct {
	// Bucket holds all backups (S3_BUCKET).
	Bucket string `json:"bucket"`
	// Endpoint is the service URL with scheme, e.g. http://127.0.0.1:9000
	// (S3_ENDPOINT); "" means AWS S3. A bare host:port is taken as https.
	Endpoint string `json:"endpoint"`
	// Region is the signing region (S3_REGION).
	Region string `json:"region"`
	// AccessKeyID is the access key id (S3_ACCESS_KEY_ID). With SecretAccessKey
	// empty too, the AWS SDK's default credential chain is used.
	AccessKeyID string `json:"accessKeyId"`
	// SecretAccessKey is the secret access key (S3_SECRET_ACCESS_KEY).
	SecretAccessKey Secret `json:"secretAccessKey"`
	// Prefix is the key prefix under which drflow writes, without leading or
	// trailing slash; "" writes at the bucket root (S3_PREFIX).
	Prefix string `json:"prefix"`
	// RetentionDays is how many days of backup sets the retention sweep
	// keeps, at least 1 (S3_BACKUP_RETENTION). The newest verified sets are
	// kept regardless.
	RetentionDays int `json:"retentionDays"`
	// ForcePathStyle addresses buckets as host/bucket instead of
	// bucket.host, as MinIO needs (S3_FORCE_PATH_STYLE).
	ForcePathStyle bool `json:"forcePathStyle"`
}

// Worker holds settings of the worker process.
type Worker struct {
	// HTTPAddr is the listen address of /healthz, /health and /metrics
	// (DRFLOW_HTTP_ADDR).
	HTTPAddr string `json:"httpAddr"`
	// StateDir is where the worker keeps local state, such as the --dev
	// server's SQLite file (DRFLOW_STATE_DIR).
	StateDir string `json:"stateDir"`
	// DevGRPCAddr is the listen address of the embedded dev server's
	// frontend under --dev (DRFLOW_DEV_GRPC_ADDR).
	DevGRPCAddr string `json:"devGrpcAddr"`
	// DevUIAddr is the listen address of the embedded Web UI under --dev
	// (DRFLOW_DEV_UI_ADDR).
	DevUIAddr string `json:"devUiAddr"`
	// LogLevel is the minimum slog level (DRFLOW_LOG_LEVEL).
	LogLevel slog.Level `json:"logLevel"`
	// HostQueues are extra task queues this worker polls with its host-local
	// activities, besides the shared one (DRFLOW_HOST_QUEUES), e.g. the value
	// of DRFLOW_REDIS_HOST_QUEUE on the Redis host.
	HostQueues []string `json:"hostQueues"`
}

// Defaults returns the configuration used when neither a file nor the
// environment says otherwise.
func Defaults() *Config {
	c := &Config{}
	for _, v := range variables {
		if v.def == "" {
			continue
		}
		if err := v.set(c, v.def); err != nil {
			panic(fmt.Sprintf("config: default of %s: %v", v.env, err))
		}
	}
	return c
}

// FromEnvironment loads the file named by DRFLOW_CONFIG, if set, and the
// process environment: Load(os.Getenv(FileEnv), os.Getenv).
func FromEnvironment() (*Config, error) {
	return Load(os.Getenv(FileEnv), os.Getenv)
}

// Load builds a Config from the defaults, the YAML file at path (none when
// path is ""), and the environment read through getenv (os.Getenv when nil).
// An empty variable counts as unset, as do null, "" and [] in the file.
// Temporal settings that neither sets come from the Temporal client config
// profile, if there is one.
//
// On any problem Load returns a nil Config. A missing or malformed file fails
// at once; otherwise every bad value, unknown file key and inconsistent pair
// is collected, and the error joins them all (errors.Join), each naming its
// variable or file:line key, saying what is wrong and giving a valid example.
// Missing required values are not errors here: see Require.
func Load(path string, getenv func(string) string) (*Config, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	l := &loader{c: Defaults(), set: map[*variable]bool{}}

	if path != "" {
		values, problems, err := readFile(path)
		if err != nil {
			return nil, err
		}
		l.errs = append(l.errs, problems...)
		for _, v := range variables {
			fv := values[v.key]
			if fv == nil || fv.kind == yaml.ScalarNode && strings.TrimSpace(fv.value) == "" ||
				fv.kind == yaml.SequenceNode && len(fv.items) == 0 {
				continue // null, "" and [] leave the setting unset
			}
			label := fmt.Sprintf("%s:%d: %s", path, fv.line, v.key)
			switch {
			case fv.kind == yaml.SequenceNode && v.list:
				l.apply(v, label, "", fv.items)
			case fv.kind == yaml.ScalarNode:
				l.apply(v, label, fv.value, nil)
			case v.list:
				l.errs = append(l.errs, fmt.Errorf("%s: want a comma-separated string or a list of strings (e.g. %s)", label, v.example))
			default:
				l.errs = append(l.errs, fmt.Errorf("%s: want a single value, not a list or mapping (e.g. %s)", label, v.example))
			}
		}
	}
	for _, v := range variables {
		if raw := getenv(v.env); raw != "" {
			l.apply(v, v.env, raw, nil)
		}
	}
	l.applyTemporalProfile()
	l.checkPairs()
	l.checkEncryption()
	if err := errors.Join(l.errs...); err != nil {
		return nil, err
	}
	return l.c, nil
}

// Set applies one setting, named by its environment variable or its YAML
// key, with the same checks as Load; the binaries use it for their flags.
// Do not offer secrets as flags: flags show in the process list.
func (c *Config) Set(name, value string) error {
	for _, v := range variables {
		if v.env == name || v.key == name {
			if value == "" {
				return fmt.Errorf("%s: empty value (want e.g. %s)", name, v.example)
			}
			if err := v.set(c, value); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			return nil
		}
	}
	return fmt.Errorf("config: no setting named %q", name)
}

// Part is a part of the system a command needs; see Config.Require.
type Part string

// The parts Require knows. Temporal and the worker settings all have usable
// defaults and are never missing.
const (
	PartPostgres Part = "postgres" // DRFLOW_POSTGRES_URL
	PartRedis    Part = "redis"    // DRFLOW_REDIS_ADDR
	PartMinIO    Part = "minio"    // DRFLOW_MINIO_ENDPOINT, DRFLOW_MINIO_ACCESS_KEY, DRFLOW_MINIO_SECRET_KEY
	PartBackup   Part = "backup"   // S3_BUCKET; the S3 keys too when S3_ENDPOINT is set
)

// Require reports, as one joined error, every setting that the given parts
// need and that is not set, each naming the variable and its file key. It
// returns nil when nothing is missing. Load's checks of form are not
// repeated.
func (c *Config) Require(parts ...Part) error {
	var errs []error
	missing := func(empty bool, env, what string) {
		if !empty {
			return
		}
		v := lookup(env)
		errs = append(errs, fmt.Errorf("%s (file key %s) is not set: %s (want e.g. %s)", v.env, v.key, what, v.example))
	}
	for _, p := range parts {
		switch p {
		case PartPostgres:
			missing(c.Postgres.URL == "", "DRFLOW_POSTGRES_URL", "PostgreSQL needs the server URL")
			missing(len(c.Postgres.Databases) == 0, "DRFLOW_POSTGRES_DATABASES", "PostgreSQL needs the databases to work on")
		case PartRedis:
			missing(c.Redis.Addr == "", "DRFLOW_REDIS_ADDR", "Redis needs its address")
		case PartMinIO:
			missing(c.MinIO.Endpoint == "", "DRFLOW_MINIO_ENDPOINT", "the app's MinIO needs its address")
			missing(c.MinIO.AccessKey == "", "DRFLOW_MINIO_ACCESS_KEY", "the app's MinIO needs an access key")
			missing(c.MinIO.SecretKey == "", "DRFLOW_MINIO_SECRET_KEY", "the app's MinIO needs a secret key")
			missing(len(c.MinIO.Buckets) == 0, "DRFLOW_MINIO_BUCKETS", "the app's MinIO needs the buckets to mirror")
		case PartBackup:
			missing(c.Backup.Bucket == "", "S3_BUCKET", "the backup store needs a bucket")
			// Off AWS there is no instance role or shared profile to fall back on.
			custom := c.Backup.Endpoint != ""
			missing(custom && c.Backup.AccessKeyID == "", "S3_ACCESS_KEY_ID", "a backup store at S3_ENDPOINT needs an access key")
			missing(custom && c.Backup.SecretAccessKey == "", "S3_SECRET_ACCESS_KEY", "a backup store at S3_ENDPOINT needs a secret key")
		default:
			errs = append(errs, fmt.Errorf("config: unknown part %q (want postgres, redis, minio or backup)", p))
		}
	}
	return errors.Join(errs...)
}

// Secrets returns every non-empty credential in c, for tests that scan logs,
// workflow histories and files for leaks.
func (c *Config) Secrets() []string {
	var out []string
	for _, s := range []Secret{
		c.Temporal.APIKey, c.Temporal.TLS.ClientKeyData, c.Postgres.Password,
		c.Redis.Password, c.MinIO.SecretKey, c.Backup.SecretAccessKey,
	} {
		if s != "" {
			out = append(out, s.Reveal())
		}
	}
	out = append(out, c.Encryption.RevealIdentities()...)
	return out
}

// TemporalClientOptions returns client options with the address, namespace,
// API key credentials and TLS settings of c.Temporal, built by the SDK's
// envconfig package. Certificate and key files are read here, so this is
// where a bad file shows up. A connection that fails for a TLS or
// credentials mistake reports the setting to fix (see explainConnErrors).
// The caller adds its logger, identity and interceptors.
func (c *Config) TemporalClientOptions() (client.Options, error) {
	t := c.Temporal
	prof := envconfig.ClientConfigProfile{
		Address:   t.Address,
		Namespace: t.Namespace,
		APIKey:    t.APIKey.Reveal(),
	}
	if t.TLS.Enabled != nil || t.TLS.isSet() {
		prof.TLS = &envconfig.ClientConfigTLS{
			Disabled:                t.TLS.Enabled != nil && !*t.TLS.Enabled,
			ClientCertPath:          t.TLS.ClientCertPath,
			ClientCertData:          []byte(t.TLS.ClientCertData),
			ClientKeyPath:           t.TLS.ClientKeyPath,
			ClientKeyData:           []byte(t.TLS.ClientKeyData.Reveal()),
			ServerCACertPath:        t.TLS.ServerCACertPath,
			ServerCACertData:        []byte(t.TLS.ServerCACertData),
			ServerName:              t.TLS.ServerName,
			DisableHostVerification: t.TLS.DisableHostVerification,
		}
	}
	opts, err := prof.ToClientOptions(envconfig.ToClientOptionsRequest{})
	if err != nil {
		return client.Options{}, fmt.Errorf("temporal client (TEMPORAL_TLS_* settings): %w", err)
	}
	tlsOn := opts.ConnectionOptions.TLS != nil && !opts.ConnectionOptions.TLSDisabled
	opts.ConnectionOptions.DialOptions = append(opts.ConnectionOptions.DialOptions,
		grpc.WithChainUnaryInterceptor(explainConnErrors(t, tlsOn)))
	return opts, nil
}

// loader carries one Load: the config being built, which settings the file
// or environment set (the Temporal profile fills only the others), and the
// problems found.
type loader struct {
	c    *Config
	set  map[*variable]bool
	errs []error
}

// apply sets v from raw (or from items, a YAML list) and records a problem
// under label on failure.
func (l *loader) apply(v *variable, label, raw string, items []string) {
	var err error
	if items != nil {
		err = v.setList(l.c, items)
	} else {
		err = v.set(l.c, raw)
	}
	if err != nil {
		// A setting that is a file of its own (DRFLOW_HOOKS_FILE) reports
		// each of its problems apart.
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				l.errs = append(l.errs, fmt.Errorf("%s: %w", label, e))
			}
			return
		}
		l.errs = append(l.errs, fmt.Errorf("%s: %w", label, err))
		return
	}
	l.set[v] = true
}

// applyTemporalProfile fills the Temporal settings that neither the file nor
// the environment set from the Temporal client config profile, if one exists.
func (l *loader) applyTemporalProfile() {
	t := &l.c.Temporal
	file := t.ConfigFile
	if file != "" {
		if _, err := os.Stat(file); err != nil {
			l.errs = append(l.errs, fmt.Errorf("TEMPORAL_CONFIG_FILE: %w (want the path of a Temporal client config TOML file, or unset)", err))
			return
		}
	} else {
		file = envconfig.DefaultConfigFilePath()
	}
	prof, err := envconfig.LoadClientConfigProfile(envconfig.LoadClientConfigProfileOptions{
		ConfigFilePath:    file,
		ConfigFileProfile: t.Profile,
		DisableEnv:        true, // drflow applies the TEMPORAL_* variables itself, with its checks
		EnvLookup:         noEnv{},
	})
	name := t.Profile
	if name == "" {
		name = envconfig.DefaultConfigFileProfile
	}
	label := fmt.Sprintf("temporal profile %q in %s", name, file)
	if err != nil {
		l.errs = append(l.errs, fmt.Errorf("%s: %w (want TEMPORAL_PROFILE to name a profile in that file)", label, err))
		return
	}
	if len(prof.GRPCMeta) > 0 || prof.Authority != "" {
		l.errs = append(l.errs, fmt.Errorf("%s: grpc_meta and authority are not supported by drflow (want a profile without them)", label))
	}
	values := map[string]string{
		"TEMPORAL_ADDRESS":   prof.Address,
		"TEMPORAL_NAMESPACE": prof.Namespace,
		"TEMPORAL_API_KEY":   prof.APIKey,
	}
	if tls := prof.TLS; tls != nil {
		values["TEMPORAL_TLS"] = strconv.FormatBool(!tls.Disabled)
		values["TEMPORAL_TLS_CLIENT_CERT_PATH"] = tls.ClientCertPath
		values["TEMPORAL_TLS_CLIENT_CERT_DATA"] = string(tls.ClientCertData)
		values["TEMPORAL_TLS_CLIENT_KEY_PATH"] = tls.ClientKeyPath
		values["TEMPORAL_TLS_CLIENT_KEY_DATA"] = string(tls.ClientKeyData)
		values["TEMPORAL_TLS_SERVER_CA_CERT_PATH"] = tls.ServerCACertPath
		values["TEMPORAL_TLS_SERVER_CA_CERT_DATA"] = string(tls.ServerCACertData)
		values["TEMPORAL_TLS_SERVER_NAME"] = tls.ServerName
		if tls.DisableHostVerification {
			values["TEMPORAL_TLS_DISABLE_HOST_VERIFICATION"] = "true"
		}
	}
	for _, v := range variables {
		if raw := values[v.env]; raw != "" && !l.set[v] {
			l.apply(v, label+": "+v.env, raw, nil)
		}
	}
}

// checkPairs reports settings that only make sense together.
func (l *loader) checkPairs() {
	c := l.c
	pair := func(a, b bool, envA, envB, why string) {
		if a == b {
			return
		}
		set, unset := lookup(envA), lookup(envB)
		if b {
			set, unset = unset, set
		}
		l.errs = append(l.errs, fmt.Errorf("%s is set but %s (file key %s) is not: %s", set.env, unset.env, unset.key, why))
	}
	pair(c.MinIO.AccessKey != "", c.MinIO.SecretKey != "", "DRFLOW_MINIO_ACCESS_KEY", "DRFLOW_MINIO_SECRET_KEY",
		"set both")
	pair(c.Backup.AccessKeyID != "", c.Backup.SecretAccessKey != "", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY",
		"set both, or neither to use the AWS default credential chain")
	tls := c.Temporal.TLS
	pair(tls.ClientCertPath != "", tls.ClientKeyPath != "", "TEMPORAL_TLS_CLIENT_CERT_PATH", "TEMPORAL_TLS_CLIENT_KEY_PATH",
		"a client certificate needs its key")
	pair(tls.ClientCertData != "", tls.ClientKeyData != "", "TEMPORAL_TLS_CLIENT_CERT_DATA", "TEMPORAL_TLS_CLIENT_KEY_DATA",
		"a client certificate needs its key")
	if (tls.ClientCertPath != "" || tls.ClientKeyPath != "") && (tls.ClientCertData != "" || tls.ClientKeyData != "") {
		l.errs = append(l.errs, errors.New("TEMPORAL_TLS_CLIENT_CERT_PATH/_KEY_PATH and TEMPORAL_TLS_CLIENT_CERT_DATA/_KEY_DATA are both set: give the client certificate as files or as data, not both"))
	}
	if tls.ServerCACertPath != "" && tls.ServerCACertData != "" {
		l.errs = append(l.errs, errors.New("TEMPORAL_TLS_SERVER_CA_CERT_PATH and TEMPORAL_TLS_SERVER_CA_CERT_DATA are both set: give the CA as a file or as data, not both"))
	}
	if slices.Contains(c.Worker.HostQueues, c.Temporal.TaskQueue) {
		l.errs = append(l.errs, fmt.Errorf("DRFLOW_HOST_QUEUES lists %q, the shared task queue (DRFLOW_TASK_QUEUE): the worker polls it anyway; list only host queues (want e.g. drflow-redis-host)", c.Temporal.TaskQueue))
	}
}

// noEnv keeps envconfig from reading the process environment: Load reads
// the TEMPORAL_* variables itself, through its getenv.
type noEnv struct{}

func (noEnv) Environ() []string               { return nil }
func (noEnv) LookupEnv(string) (string, bool) { return "", false }

// variable is one setting: its environment variable, its file key, its
// default and how a value is checked and stored. The table below is the
// single source of Defaults, Load, Set and the documentation test.
type variable struct {
	env     string // environment variable
	key     string // YAML key, "section.name"
	def     string // default as it would be written in the environment; "" for none
	example string // a valid value, shown in error messages
	secret  bool   // a credential: never trimmed, never echoed in errors
	list    bool   // a comma-separated list; in the file also a YAML list
	// store checks a non-empty value and stores it; its error says what is
	// wrong and what a valid value looks like, without the variable name.
	store func(c *Config, v *variable, raw string) error
	// storeList is store for lists, given the entries.
	storeList func(c *Config, v *variable, items []string) error
}

// set stores raw, a comma-separated list if v is a list.
func (v *variable) set(c *Config, raw string) error {
	if !v.secret {
		raw = strings.TrimSpace(raw)
	}
	if v.list {
		items, err := splitList(raw)
		if err != nil {
			return fmt.Errorf("%w (want e.g. %s)", err, v.example)
		}
		return v.storeList(c, v, items)
	}
	return v.store(c, v, raw)
}

// setList stores the entries of a YAML list.
func (v *variable) setList(c *Config, items []string) error {
	for i, it := range items {
		if strings.TrimSpace(it) == "" {
			return fmt.Errorf("entry %d is empty (want e.g. %s)", i+1, v.example)
		}
		if slices.Contains(items[:i], it) {
			return fmt.Errorf("%q is listed twice (want e.g. %s)", it, v.example)
		}
	}
	return v.storeList(c, v, items)
}

// lookup returns the variable named env; it panics on a name not in the
// table, which is a bug.
func lookup(env string) *variable {
	for _, v := range variables {
		if v.env == env {
			return v
		}
	}
	panic("config: unknown variable " + env)
}

// variables is every setting, grouped by section, in the order of
// docs/configuration.md.
var variables = []*variable{
	// Temporal.
	{env: "TEMPORAL_ADDRESS", key: "temporal.address", def: "127.0.0.1:7233", example: "temporal.example.internal:7233",
		store: temporalAddress(func(c *Config) *string { return &c.Temporal.Address })},
	{env: "TEMPORAL_NAMESPACE", key: "temporal.namespace", def: "default", example: "drflow",
		store: text(func(c *Config) *string { return &c.Temporal.Namespace })},
	{env: "TEMPORAL_API_KEY", key: "temporal.apiKey", example: "(the key from Temporal Cloud)", secret: true,
		store: secret(func(c *Config) *Secret { return &c.Temporal.APIKey })},
	{env: "DRFLOW_TASK_QUEUE", key: "temporal.taskQueue", def: "drflow", example: "drflow",
		store: text(func(c *Config) *string { return &c.Temporal.TaskQueue })},
	{env: "TEMPORAL_PROFILE", key: "temporal.profile", example: "prod",
		store: text(func(c *Config) *string { return &c.Temporal.Profile })},
	{env: "TEMPORAL_CONFIG_FILE", key: "temporal.configFile", example: "/etc/drflow/temporal.toml",
		store: text(func(c *Config) *string { return &c.Temporal.ConfigFile })},
	{env: "TEMPORAL_TLS", key: "temporal.tls.enabled", example: "true",
		store: optBool(func(c *Config) **bool { return &c.Temporal.TLS.Enabled })},
	{env: "TEMPORAL_TLS_CLIENT_CERT_PATH", key: "temporal.tls.clientCertPath", example: "/etc/drflow/client.pem",
		store: text(func(c *Config) *string { return &c.Temporal.TLS.ClientCertPath })},
	{env: "TEMPORAL_TLS_CLIENT_CERT_DATA", key: "temporal.tls.clientCertData", example: "-----BEGIN CERTIFICATE-----...",
		store: text(func(c *Config) *string { return &c.Temporal.TLS.ClientCertData })},
	{env: "TEMPORAL_TLS_CLIENT_KEY_PATH", key: "temporal.tls.clientKeyPath", example: "/etc/drflow/client.key",
		store: text(func(c *Config) *string { return &c.Temporal.TLS.ClientKeyPath })},
	{env: "TEMPORAL_TLS_CLIENT_KEY_DATA", key: "temporal.tls.clientKeyData", example: "-----BEGIN PRIVATE KEY-----...", secret: true,
		store: secret(func(c *Config) *Secret { return &c.Temporal.TLS.ClientKeyData })},
	{env: "TEMPORAL_TLS_SERVER_CA_CERT_PATH", key: "temporal.tls.serverCaCertPath", example: "/etc/drflow/ca.pem",
		store: text(func(c *Config) *string { return &c.Temporal.TLS.ServerCACertPath })},
	{env: "TEMPORAL_TLS_SERVER_CA_CERT_DATA", key: "temporal.tls.serverCaCertData", example: "-----BEGIN CERTIFICATE-----...",
		store: text(func(c *Config) *string { return &c.Temporal.TLS.ServerCACertData })},
	{env: "TEMPORAL_TLS_SERVER_NAME", key: "temporal.tls.serverName", example: "temporal.example.internal",
		store: text(func(c *Config) *string { return &c.Temporal.TLS.ServerName })},
	{env: "TEMPORAL_TLS_DISABLE_HOST_VERIFICATION", key: "temporal.tls.disableHostVerification", def: "false", example: "false",
		store: boolean(func(c *Config) *bool { return &c.Temporal.TLS.DisableHostVerification })},

	// PostgreSQL.
	{env: "DRFLOW_POSTGRES_URL", key: "postgres.url", example: "postgres://drflow:secret@127.0.0.1:5432/?sslmode=disable", secret: true,
		store: postgresURL},
	{env: "DRFLOW_POSTGRES_DATABASES", key: "postgres.databases", def: "kohakku-controller,kohakku-dispatcher",
		example: "kohakku-controller,kohakku-dispatcher", list: true,
		storeList: databases(func(c *Config) *[]string { return &c.Postgres.Databases })},

	// Redis.
	{env: "DRFLOW_REDIS_ADDR", key: "redis.addr", def: "127.0.0.1:6379", example: "127.0.0.1:6379",
		store: dialAddr(func(c *Config) *string { return &c.Redis.Addr })},
	{env: "DRFLOW_REDIS_PASSWORD", key: "redis.password", example: "(the requirepass value)", secret: true,
		store: secret(func(c *Config) *Secret { return &c.Redis.Password })},
	{env: "DRFLOW_REDIS_AOF_DIR", key: "redis.aofDir", example: "/var/lib/redis/appendonlydir",
		store: absPath(func(c *Config) *string { return &c.Redis.AOFDir })},
	{env: "DRFLOW_REDIS_HOST_QUEUE", key: "redis.hostQueue", example: "drflow-redis-host",
		store: taskQueue(func(c *Config) *string { return &c.Redis.HostQueue })},

	// SQLite database files on the worker's host.
	{env: "DRFLOW_SQLITE_DATABASES", key: "sqlite.databases",
		example: "bunqueue=/var/lib/bunqueue/queue.db,drflow-dev=.drflow/temporal.db", list: true,
		storeList: sqliteDatabases},

	// The app's MinIO.
	{env: "DRFLOW_MINIO_ENDPOINT", key: "minio.endpoint", example: "127.0.0.1:9000",
		store: minioEndpoint(func(c *Config) *string { return &c.MinIO.Endpoint })},
	{env: "DRFLOW_MINIO_ACCESS_KEY", key: "minio.accessKey", example: "drflow",
		store: text(func(c *Config) *string { return &c.MinIO.AccessKey })},
	{env: "DRFLOW_MINIO_SECRET_KEY", key: "minio.secretKey", example: "(the MinIO secret key)", secret: true,
		store: secret(func(c *Config) *Secret { return &c.MinIO.SecretKey })},
	{env: "DRFLOW_MINIO_BUCKETS", key: "minio.buckets", def: "kohakku", example: "kohakku", list: true,
		storeList: buckets(func(c *Config) *[]string { return &c.MinIO.Buckets })},
	{env: "DRFLOW_MINIO_SECURE", key: "minio.secure", def: "false", example: "false",
		store: boolean(func(c *Config) *bool { return &c.MinIO.Secure })},

	// The backup store.
	{env: "S3_BUCKET", key: "backup.bucket", example: "kohakku-backups",
		store: bucket(func(c *Config) *string { return &c.Backup.Bucket })},
	{env: "S3_ENDPOINT", key: "backup.endpoint", example: "http://127.0.0.1:9000",
		store: s3Endpoint},
	{env: "S3_REGION", key: "backup.region", def: "us-east-1", example: "us-east-1",
		store: region},
	{env: "S3_ACCESS_KEY_ID", key: "backup.accessKeyId", example: "AKIAIOSFODNN7EXAMPLE",
		store: text(func(c *Config) *string { return &c.Backup.AccessKeyID })},
	{env: "S3_SECRET_ACCESS_KEY", key: "backup.secretAccessKey", example: "(the secret access key)", secret: true,
		store: secret(func(c *Config) *Secret { return &c.Backup.SecretAccessKey })},
	{env: "S3_PREFIX", key: "backup.prefix", example: "kohakku/prod",
		store: prefix},
	{env: "S3_BACKUP_RETENTION", key: "backup.retentionDays", def: "7", example: "7",
		store: retention},
	{env: "S3_FORCE_PATH_STYLE", key: "backup.forcePathStyle", def: "false", example: "true",
		store: boolean(func(c *Config) *bool { return &c.Backup.ForcePathStyle })},

	// Client-side encryption of the backup artifacts (age).
	{env: AgeRecipientsEnv, key: "encryption.ageRecipients", example: exampleAgeRecipient,
		store: ageRecipients},
	{env: AgeRecipientsFileEnv, key: "encryption.ageRecipientsFile", example: "/etc/drflow/age-recipients.txt",
		store: ageRecipientsFile},
	{env: AgeIdentityFileEnv, key: "encryption.ageIdentityFile", example: "/etc/drflow/age-identity.txt",
		store: ageIdentityFile},

	// The worker process.
	{env: "DRFLOW_HTTP_ADDR", key: "worker.httpAddr", def: "127.0.0.1:9090", example: "0.0.0.0:9090",
		store: listenAddr(func(c *Config) *string { return &c.Worker.HTTPAddr })},
	{env: "DRFLOW_STATE_DIR", key: "worker.stateDir", def: ".drflow", example: "/var/lib/drflow",
		store: text(func(c *Config) *string { return &c.Worker.StateDir })},
	{env: "DRFLOW_DEV_GRPC_ADDR", key: "worker.devGrpcAddr", def: "127.0.0.1:7233", example: "127.0.0.1:7233",
		store: listenAddr(func(c *Config) *string { return &c.Worker.DevGRPCAddr })},
	{env: "DRFLOW_DEV_UI_ADDR", key: "worker.devUiAddr", def: "127.0.0.1:8233", example: "127.0.0.1:8233",
		store: listenAddr(func(c *Config) *string { return &c.Worker.DevUIAddr })},
	{env: "DRFLOW_LOG_LEVEL", key: "worker.logLevel", def: "info", example: "info",
		store: logLevel},
	{env: "DRFLOW_HOST_QUEUES", key: "worker.hostQueues", example: "drflow-redis-host", list: true,
		storeList: taskQueues(func(c *Config) *[]string { return &c.Worker.HostQueues })},

	// Service hooks.
	{env: "DRFLOW_HOOKS_FILE", key: "services.hooksFile", example: "/etc/drflow/hooks.yaml",
		store: hooksFile},
}

type storeFunc = func(c *Config, v *variable, raw string) error

func text(field func(*Config) *string) storeFunc {
	return func(c *Config, _ *variable, raw string) error {
		if strings.ContainsRune(raw, 0) {
			return errors.New("contains a NUL byte")
		}
		*field(c) = raw
		return nil
	}
}

func secret(field func(*Config) *Secret) storeFunc {
	return func(c *Config, _ *variable, raw string) error {
		*field(c) = Secret(raw)
		return nil
	}
}

func parseBool(raw string) (bool, error) {
	switch strings.ToLower(raw) {
	case "true", "1", "yes":
		return true, nil
	case "false", "0", "no":
		return false, nil
	}
	return false, fmt.Errorf("%q is not a boolean (want true or false; 1/0 and yes/no also work)", raw)
}

func boolean(field func(*Config) *bool) storeFunc {
	return func(c *Config, _ *variable, raw string) error {
		b, err := parseBool(raw)
		if err != nil {
			return err
		}
		*field(c) = b
		return nil
	}
}

func optBool(field func(*Config) **bool) storeFunc {
	return func(c *Config, _ *variable, raw string) error {
		b, err := parseBool(raw)
		if err != nil {
			return err
		}
		*field(c) = &b
		return nil
	}
}

// checkHostPort checks a host:port address; a listener may leave the host
// empty (all interfaces) and use port 0 (any free port).
func checkHostPort(raw, example string, listen bool) error {
	host, port, err := net.SplitHostPort(raw)
	if err != nil {
		return fmt.Errorf("%q is not a host:port address (want e.g. %s)", raw, example)
	}
	if host == "" && !listen {
		return fmt.Errorf("%q has no host (want e.g. %s)", raw, example)
	}
	lo := 1
	if listen {
		lo = 0
	}
	if p, err := strconv.Atoi(port); err != nil || p < lo || p > 65535 {
		return fmt.Errorf("%q: port %q is not a number from %d to 65535 (want e.g. %s)", raw, port, lo, example)
	}
	return nil
}

func dialAddr(field func(*Config) *string) storeFunc {
	return func(c *Config, v *variable, raw string) error {
		if err := checkHostPort(raw, v.example, false); err != nil {
			return err
		}
		*field(c) = raw
		return nil
	}
}

func listenAddr(field func(*Config) *string) storeFunc {
	return func(c *Config, v *variable, raw string) error {
		if err := checkHostPort(raw, v.example, true); err != nil {
			return err
		}
		*field(c) = raw
		return nil
	}
}

// temporalAddress accepts host:port or a gRPC resolver target
// ("dns:///host:port"), which the SDK passes to grpc as it is.
func temporalAddress(field func(*Config) *string) storeFunc {
	return func(c *Config, v *variable, raw string) error {
		if !strings.Contains(raw, ":///") {
			if err := checkHostPort(raw, v.example, false); err != nil {
				return err
			}
		}
		*field(c) = raw
		return nil
	}
}

func minioEndpoint(field func(*Config) *string) storeFunc {
	return func(c *Config, v *variable, raw string) error {
		if strings.Contains(raw, "://") {
			return fmt.Errorf("%q has a scheme; want host:port (e.g. %s) and DRFLOW_MINIO_SECURE=true for https", raw, v.example)
		}
		if err := checkHostPort(raw, v.example, false); err != nil {
			return err
		}
		*field(c) = raw
		return nil
	}
}

// postgresURL splits the server URL into the URL without password and the
// password. Its errors never quote the value, which may hold the password.
func postgresURL(c *Config, v *variable, raw string) error {
	want := " (want e.g. " + v.example + ")"
	u, err := url.Parse(raw)
	if err != nil || u.Opaque != "" {
		return errors.New("is not a valid URL; the value is not shown as it may hold a password; " +
			"percent-encode / ? # @ : in the user or password" + want)
	}
	if u.Scheme != "postgres" && u.Scheme != "postgresql" {
		return fmt.Errorf("scheme %q is not postgres or postgresql%s", u.Scheme, want)
	}
	q := u.Query()
	if u.Host == "" && q.Get("host") == "" {
		return errors.New("has no host" + want)
	}
	if u.Fragment != "" {
		return errors.New("has a #fragment" + want)
	}
	// A password with an unescaped / or ? can still parse, its start as a port and
	// the rest as path or query (postgres://u:1234/5678@db/). The @ left after the
	// host gives it away; nothing could redact such a password later.
	if strings.Contains(u.Path, "@") || slices.ContainsFunc(slices.Collect(maps.Keys(q)), func(k string) bool { return strings.Contains(k, "@") }) {
		return errors.New("has an @ after the host, as a password with an unescaped / or ? does; the value is not shown as it may hold a password; " +
			"percent-encode / ? # @ : in the user or password" + want)
	}
	// Other credentials in the query (sslpassword, the key's passphrase) would stay
	// in the URL, which is printed and given to pg_dump as an argument.
	for k := range q {
		if l := strings.ToLower(k); l != "password" && (strings.Contains(l, "password") || strings.Contains(l, "secret")) {
			name := "a credential query parameter" // the name itself could be the mistyped value
			if l == "sslpassword" {
				name = "sslpassword"
			}
			return fmt.Errorf("sets %s, which drflow cannot keep out of logs and pg_dump's arguments; the value is not shown; "+
				"use a client key without a passphrase%s", name, want)
		}
	}
	pw, _ := u.User.Password()
	if qpw := q.Get("password"); qpw != "" {
		pw = qpw
		q.Del("password")
		u.RawQuery = q.Encode()
	}
	if u.User != nil {
		u.User = url.User(u.User.Username())
	}
	c.Postgres.URL, c.Postgres.Password = u.String(), Secret(pw)
	return nil
}

// checkDatabaseName accepts what PostgreSQL keeps intact: a non-empty name
// without NUL of at most 63 bytes (longer names are silently truncated).
func checkDatabaseName(db string) error {
	switch {
	case db == "":
		return errors.New("name is empty")
	case strings.ContainsRune(db, 0):
		return fmt.Errorf("name %q contains a NUL byte", db)
	case len(db) > 63:
		return fmt.Errorf("name %q is longer than 63 bytes, which PostgreSQL truncates", db)
	}
	return nil
}

func databases(field func(*Config) *[]string) func(*Config, *variable, []string) error {
	return func(c *Config, v *variable, items []string) error {
		for _, db := range items {
			if err := checkDatabaseName(db); err != nil {
				return fmt.Errorf("database %w (want e.g. %s)", err, v.example)
			}
		}
		*field(c) = slices.Clone(items)
		return nil
	}
}

var sqliteNameRE = regexp.MustCompile(`^[a-z0-9_-]{1,63}$`)

// sqliteDatabases stores name=path entries. A name is what store keys and
// workflow inputs use, so it is held to the rules of an identifier; the path
// may hold anything but NUL, '=' included (the first '=' ends the name).
func sqliteDatabases(c *Config, v *variable, items []string) error {
	want := " (want e.g. " + v.example + ")"
	dbs := make([]SQLiteDatabase, 0, len(items))
	for _, it := range items {
		name, path, ok := strings.Cut(it, "=")
		name, path = strings.TrimSpace(name), strings.TrimSpace(path)
		switch {
		case !ok:
			return fmt.Errorf("entry %q is not name=path%s", it, want)
		case name == "":
			return fmt.Errorf("entry %q has an empty name%s", it, want)
		case !sqliteNameRE.MatchString(name):
			return fmt.Errorf("%q is not a valid SQLite database name: use 1 to 63 lowercase letters, digits, - and _%s", name, want)
		case path == "":
			return fmt.Errorf("entry %q has an empty path%s", it, want)
		case strings.ContainsRune(path, 0):
			return fmt.Errorf("the path of %q contains a NUL byte%s", name, want)
		case slices.ContainsFunc(dbs, func(d SQLiteDatabase) bool { return d.Name == name }):
			return fmt.Errorf("name %q is listed twice%s", name, want)
		}
		dbs = append(dbs, SQLiteDatabase{Name: name, Path: path})
	}
	c.SQLite.Databases = dbs
	return nil
}

// checkBucket applies the S3 bucket naming rules (the store's, so config and store
// never disagree about a name).
func checkBucket(name string) error { return store.CheckBucketName(name) }

func bucket(field func(*Config) *string) storeFunc {
	return func(c *Config, v *variable, raw string) error {
		if err := checkBucket(raw); err != nil {
			return fmt.Errorf("%w (want e.g. %s)", err, v.example)
		}
		*field(c) = raw
		return nil
	}
}

func buckets(field func(*Config) *[]string) func(*Config, *variable, []string) error {
	return func(c *Config, v *variable, items []string) error {
		for _, b := range items {
			if err := checkBucket(b); err != nil {
				return fmt.Errorf("%w (want e.g. %s)", err, v.example)
			}
		}
		*field(c) = slices.Clone(items)
		return nil
	}
}

// s3Endpoint normalises the endpoint to scheme://host[:port][/path].
func s3Endpoint(c *Config, v *variable, raw string) error {
	want := " (want e.g. " + v.example + ", or unset for AWS S3)"
	s := raw
	if !strings.Contains(s, "://") {
		s = "https://" + s
	}
	u, err := url.Parse(s)
	switch {
	case err == nil && u.User != nil:
		return errors.New("holds credentials; the value is not shown; set them as the access key and secret key instead" + want)
	case err != nil || u.Host == "":
		if strings.Contains(raw, "@") {
			return errors.New("is not an http(s) URL or host:port; the value is not shown as it may hold credentials" + want)
		}
		return fmt.Errorf("%q is not an http(s) URL or host:port%s", raw, want)
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("%q: scheme %q is not http or https%s", raw, u.Scheme, want)
	case u.RawQuery != "" || u.Fragment != "":
		return fmt.Errorf("%q has a query or fragment%s", raw, want)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("%q: port %q is not a number from 1 to 65535%s", raw, p, want)
		}
	}
	c.Backup.Endpoint = strings.TrimRight(u.String(), "/")
	return nil
}

var regionRE = regexp.MustCompile(`^[a-z0-9]+(-[a-z0-9]+)*$`)

func region(c *Config, v *variable, raw string) error {
	if !regionRE.MatchString(raw) {
		return fmt.Errorf("%q is not a region name: lowercase letters, digits and hyphens (want e.g. %s; auto for Cloudflare R2)", raw, v.example)
	}
	c.Backup.Region = raw
	return nil
}

func prefix(c *Config, v *variable, raw string) error {
	p := strings.Trim(raw, "/")
	for _, seg := range strings.Split(p, "/") {
		var why string
		switch {
		case p == "":
			// Only slashes: the bucket root.
		case seg == "":
			why = "has an empty path segment (//)"
		case seg == "." || seg == "..":
			why = "has a . or .. path segment"
		case strings.IndexFunc(seg, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0:
			why = "has a control character"
		}
		if why != "" {
			return fmt.Errorf("%q %s (want e.g. %s)", raw, why, v.example)
		}
	}
	c.Backup.Prefix = p
	return nil
}

func retention(c *Config, v *variable, raw string) error {
	n, err := strconv.Atoi(raw)
	if err != nil {
		return fmt.Errorf("%q is not a whole number of days (want e.g. %s)", raw, v.example)
	}
	if n < 1 {
		return fmt.Errorf("%d is less than 1 day: backups must be kept at least a day (want e.g. %s)", n, v.example)
	}
	c.Backup.RetentionDays = n
	return nil
}

// absPath stores a cleaned absolute path.
func absPath(field func(*Config) *string) storeFunc {
	return func(c *Config, v *variable, raw string) error {
		switch {
		case strings.ContainsRune(raw, 0):
			return fmt.Errorf("contains a NUL byte (want e.g. %s)", v.example)
		case !filepath.IsAbs(raw):
			return fmt.Errorf("%q is not an absolute path (want e.g. %s)", raw, v.example)
		}
		*field(c) = filepath.Clean(raw)
		return nil
	}
}

// checkTaskQueue accepts a Temporal task queue name: at most 1000 bytes of
// UTF-8 without spaces or control characters, not under the reserved /_sys/.
func checkTaskQueue(name string) error {
	switch {
	case !utf8.ValidString(name):
		return fmt.Errorf("%q is not valid UTF-8", name)
	case len(name) > 1000:
		return fmt.Errorf("task queue name is %d bytes long, more than 1000", len(name))
	case strings.IndexFunc(name, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0:
		return fmt.Errorf("task queue name %q has a space or control character", name)
	case strings.HasPrefix(name, "/_sys/"):
		return fmt.Errorf("task queue name %q is under /_sys/, which Temporal reserves", name)
	}
	return nil
}

func taskQueue(field func(*Config) *string) storeFunc {
	return func(c *Config, v *variable, raw string) error {
		if err := checkTaskQueue(raw); err != nil {
			return fmt.Errorf("%w (want e.g. %s)", err, v.example)
		}
		*field(c) = raw
		return nil
	}
}

func taskQueues(field func(*Config) *[]string) func(*Config, *variable, []string) error {
	return func(c *Config, v *variable, items []string) error {
		for _, q := range items {
			if err := checkTaskQueue(q); err != nil {
				return fmt.Errorf("%w (want e.g. %s)", err, v.example)
			}
		}
		*field(c) = slices.Clone(items)
		return nil
	}
}

func logLevel(c *Config, _ *variable, raw string) error {
	levels := map[string]slog.Level{
		"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError,
	}
	l, ok := levels[strings.ToLower(raw)]
	if !ok {
		return fmt.Errorf("%q is not a log level (want debug, info, warn or error)", raw)
	}
	c.Worker.LogLevel = l
	return nil
}

// splitList splits a comma-separated list, trimming spaces around entries;
// empty and repeated entries are errors.
func splitList(raw string) ([]string, error) {
	parts := strings.Split(raw, ",")
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
		if parts[i] == "" {
			return nil, fmt.Errorf("entry %d of %q is empty", i+1, raw)
		}
		if slices.Contains(parts[:i], parts[i]) {
			return nil, fmt.Errorf("%q is listed twice in %q", parts[i], raw)
		}
	}
	return parts, nil
}

// fileConfig is the YAML file: one mapping per section, every leaf a
// fileValue. Each leaf's path of yaml tags is a variable key; the tests
// check that the two agree.
type fileConfig struct {
	Temporal fileTemporal `yaml:"temporal"`
	Postgres struct {
		URL       *fileValue `yaml:"url"`
		Databases *fileValue `yaml:"databases"`
	} `yaml:"postgres"`
	Redis struct {
		Addr      *fileValue `yaml:"addr"`
		Password  *fileValue `yaml:"password"`
		AOFDir    *fileValue `yaml:"aofDir"`
		HostQueue *fileValue `yaml:"hostQueue"`
	} `yaml:"redis"`
	SQLite struct {
		Databases *fileValue `yaml:"databases"`
	} `yaml:"sqlite"`
	MinIO struct {
		Endpoint  *fileValue `yaml:"endpoint"`
		AccessKey *fileValue `yaml:"accessKey"`
		SecretKey *fileValue `yaml:"secretKey"`
		Buckets   *fileValue `yaml:"buckets"`
		Secure    *fileValue `yaml:"secure"`
	} `yaml:"minio"`
	Backup struct {
		Bucket          *fileValue `yaml:"bucket"`
		Endpoint        *fileValue `yaml:"endpoint"`
		Region          *fileValue `yaml:"region"`
		AccessKeyID     *fileValue `yaml:"accessKeyId"`
		SecretAccessKey *fileValue `yaml:"secretAccessKey"`
		Prefix          *fileValue `yaml:"prefix"`
		RetentionDays   *fileValue `yaml:"retentionDays"`
		ForcePathStyle  *fileValue `yaml:"forcePathStyle"`
	} `yaml:"backup"`
	Encryption struct {
		AgeRecipients     *fileValue `yaml:"ageRecipients"`
		AgeRecipientsFile *fileValue `yaml:"ageRecipientsFile"`
		AgeIdentityFile   *fileValue `yaml:"ageIdentityFile"`
	} `yaml:"encryption"`
	Worker struct {
		HTTPAddr    *fileValue `yaml:"httpAddr"`
		StateDir    *fileValue `yaml:"stateDir"`
		DevGRPCAddr *fileValue `yaml:"devGrpcAddr"`
		DevUIAddr   *fileValue `yaml:"devUiAddr"`
		LogLevel    *fileValue `yaml:"logLevel"`
		HostQueues  *fileValue `yaml:"hostQueues"`
	} `yaml:"worker"`
	Services struct {
		HooksFile *fileValue `yaml:"hooksFile"`
	} `yaml:"services"`
}

type fileTemporal struct {
	Address    *fileValue `yaml:"address"`
	Namespace  *fileValue `yaml:"namespace"`
	APIKey     *fileValue `yaml:"apiKey"`
	TaskQueue  *fileValue `yaml:"taskQueue"`
	Profile    *fileValue `yaml:"profile"`
	ConfigFile *fileValue `yaml:"configFile"`
	TLS        struct {
		Enabled                 *fileValue `yaml:"enabled"`
		ClientCertPath          *fileValue `yaml:"clientCertPath"`
		ClientCertData          *fileValue `yaml:"clientCertData"`
		ClientKeyPath           *fileValue `yaml:"clientKeyPath"`
		ClientKeyData           *fileValue `yaml:"clientKeyData"`
		ServerCACertPath        *fileValue `yaml:"serverCaCertPath"`
		ServerCACertData        *fileValue `yaml:"serverCaCertData"`
		ServerName              *fileValue `yaml:"serverName"`
		DisableHostVerification *fileValue `yaml:"disableHostVerification"`
	} `yaml:"tls"`
}

// fileValue is one value of the file as written, checked later by the
// variable it belongs to. UnmarshalYAML never fails, so that decoding goes
// on and every problem is reported.
type fileValue struct {
	line  int
	kind  yaml.Kind
	value string   // a scalar as written: 07 stays "07", yes stays "yes"
	items []string // a list of scalars
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (v *fileValue) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	v.line, v.kind = n.Line, n.Kind
	switch n.Kind {
	case yaml.ScalarNode:
		v.value = n.Value
	case yaml.SequenceNode:
		v.items = []string{}
		for _, it := range n.Content {
			if it.Kind == yaml.AliasNode {
				it = it.Alias
			}
			if it.Kind != yaml.ScalarNode {
				v.kind = yaml.MappingNode // reported as "not a list of strings"
				break
			}
			v.items = append(v.items, it.Value)
		}
	}
	return nil
}

var fileValueType = reflect.TypeFor[*fileValue]()

// walkFile calls leaf for every fileValue field of fileConfig (fv is nil
// when the file did not set it), and section for every mapping, with its
// dotted key ("" for the top level).
func walkFile(v reflect.Value, prefix string, leaf func(key string, fv *fileValue), section func(key string, t reflect.Type)) {
	t := v.Type()
	if section != nil {
		section(strings.TrimSuffix(prefix, "."), t)
	}
	for i := range t.NumField() {
		key := prefix + strings.Split(t.Field(i).Tag.Get("yaml"), ",")[0]
		if t.Field(i).Type == fileValueType {
			if leaf != nil {
				leaf(key, v.Field(i).Interface().(*fileValue))
			}
			continue
		}
		walkFile(v.Field(i), key+".", leaf, section)
	}
}

var unknownFieldRE = regexp.MustCompile(`^line (\d+): field (\S+) not found in type (.+)$`)

// readFile decodes the YAML file at path into its values by key. Unknown
// keys and values of the wrong shape come back as problems; an unreadable or
// unparsable file is err.
func readFile(path string) (values map[string]*fileValue, problems []error, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("config file: %w", err)
	}
	var fc fileConfig
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	err = dec.Decode(&fc)
	var typeErr *yaml.TypeError
	switch {
	case err == nil, errors.Is(err, io.EOF): // io.EOF: an empty file
	case errors.As(err, &typeErr):
		problems = fileProblems(path, typeErr.Errors)
	default:
		return nil, nil, fmt.Errorf("config file %s: %w", path, err)
	}
	values = map[string]*fileValue{}
	walkFile(reflect.ValueOf(&fc).Elem(), "", func(key string, fv *fileValue) {
		if fv != nil {
			values[key] = fv
		}
	}, nil)
	return values, problems, nil
}

// fileProblems rewrites yaml.v3's type errors in terms of the file's keys:
// "line 5: field retention not found in type config.fileBackup" becomes
// `path:5: unknown key "backup.retention" (known keys in backup: ...)`.
func fileProblems(path string, msgs []string) []error {
	sections := map[string]string{} // Go type name -> section key
	known := map[string][]string{}  // section key -> its keys
	walkFile(reflect.ValueOf(&fileConfig{}).Elem(), "", nil, func(key string, t reflect.Type) {
		sections[t.String()] = key
		for i := range t.NumField() {
			known[key] = append(known[key], strings.Split(t.Field(i).Tag.Get("yaml"), ",")[0])
		}
	})
	var out []error
	for _, msg := range msgs {
		m := unknownFieldRE.FindStringSubmatch(msg)
		sec, ok := "", false
		if m != nil {
			sec, ok = sections[m[3]]
		}
		if !ok {
			out = append(out, fmt.Errorf("config file %s: %s", path, msg))
			continue
		}
		key, where := m[2], "the top level"
		if sec != "" {
			key, where = sec+"."+m[2], sec
		}
		out = append(out, fmt.Errorf("%s:%s: unknown key %q (known keys in %s: %s)", path, m[1], key, where, strings.Join(known[sec], ", ")))
	}
	return out
}
