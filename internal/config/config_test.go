package config

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"
)

// TestMain points the user config directory at an empty place, so that no
// developer's ~/.config/temporalio/temporal.toml leaks into the tests.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "drflow-config-test")
	if err != nil {
		panic(err)
	}
	os.Setenv("HOME", dir)
	os.Setenv("XDG_CONFIG_HOME", dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// env is a getenv over a map.
func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// writeFile writes content into a new file in a test directory.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
	return path
}

// errs splits a joined error into its messages.
func errs(err error) []string {
	if err == nil {
		return nil
	}
	j, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return []string{err.Error()}
	}
	var out []string
	for _, e := range j.Unwrap() {
		out = append(out, e.Error())
	}
	return out
}

func ptr[T any](v T) *T { return &v }

func TestDefaults(t *testing.T) {
	c, err := Load("", env(nil))
	require.NoError(t, err)
	want := &Config{
		Temporal: Temporal{Address: "127.0.0.1:7233", Namespace: "default", TaskQueue: "drflow"},
		Postgres: Postgres{Databases: []string{"kohakku-controller", "kohakku-dispatcher"}},
		Redis:    Redis{Addr: "127.0.0.1:6379"},
		MinIO:    MinIO{Buckets: []string{"kohakku"}},
		Backup:   Backup{Region: "us-east-1", RetentionDays: 7},
		Worker: Worker{
			HTTPAddr: "127.0.0.1:9090", StateDir: ".drflow", DevGRPCAddr: "127.0.0.1:7233",
			DevUIAddr: "127.0.0.1:8233", LogLevel: slog.LevelInfo,
		},
	}
	assert.Equal(t, want, c)
	assert.Equal(t, want, Defaults())
	assert.NoError(t, c.Require(PartRedis), "Redis works on defaults alone")
	assert.Empty(t, c.Secrets())
}

// TestEnvironment sets each variable alone: the value lands in its field,
// and the field keeps its default while the variable is unset or empty.
func TestEnvironment(t *testing.T) {
	tests := []struct {
		env   string
		value string
		get   func(*Config) any
		def   any // the field with the variable unset
		want  any // the field with the variable set to value
	}{
		{"TEMPORAL_ADDRESS", "temporal.internal:7233", func(c *Config) any { return c.Temporal.Address }, "127.0.0.1:7233", "temporal.internal:7233"},
		{"TEMPORAL_NAMESPACE", "drflow", func(c *Config) any { return c.Temporal.Namespace }, "default", "drflow"},
		{"TEMPORAL_API_KEY", "tk-123", func(c *Config) any { return c.Temporal.APIKey }, Secret(""), Secret("tk-123")},
		{"DRFLOW_TASK_QUEUE", "dr-q", func(c *Config) any { return c.Temporal.TaskQueue }, "drflow", "dr-q"},
		{"TEMPORAL_PROFILE", "ops", func(c *Config) any { return c.Temporal.Profile }, "", "ops"},
		{"TEMPORAL_CONFIG_FILE", "testdata-temporal.toml", func(c *Config) any { return c.Temporal.ConfigFile }, "", "testdata-temporal.toml"},
		{"TEMPORAL_TLS", "no", func(c *Config) any { return c.Temporal.TLS.Enabled }, (*bool)(nil), ptr(false)},
		{"TEMPORAL_TLS_CLIENT_CERT_PATH", "/c.pem", func(c *Config) any { return c.Temporal.TLS.ClientCertPath }, "", "/c.pem"},
		{"TEMPORAL_TLS_CLIENT_CERT_DATA", "CERT", func(c *Config) any { return c.Temporal.TLS.ClientCertData }, "", "CERT"},
		{"TEMPORAL_TLS_CLIENT_KEY_PATH", "/c.key", func(c *Config) any { return c.Temporal.TLS.ClientKeyPath }, "", "/c.key"},
		{"TEMPORAL_TLS_CLIENT_KEY_DATA", "KEY", func(c *Config) any { return c.Temporal.TLS.ClientKeyData }, Secret(""), Secret("KEY")},
		{"TEMPORAL_TLS_SERVER_CA_CERT_PATH", "/ca.pem", func(c *Config) any { return c.Temporal.TLS.ServerCACertPath }, "", "/ca.pem"},
		{"TEMPORAL_TLS_SERVER_CA_CERT_DATA", "CA", func(c *Config) any { return c.Temporal.TLS.ServerCACertData }, "", "CA"},
		{"TEMPORAL_TLS_SERVER_NAME", "t.example", func(c *Config) any { return c.Temporal.TLS.ServerName }, "", "t.example"},
		{"TEMPORAL_TLS_DISABLE_HOST_VERIFICATION", "1", func(c *Config) any { return c.Temporal.TLS.DisableHostVerification }, false, true},
		{"DRFLOW_POSTGRES_URL", "postgres://u:pw@db:5432/x?sslmode=disable", func(c *Config) any { return [2]any{c.Postgres.URL, c.Postgres.Password} },
			[2]any{"", Secret("")}, [2]any{"postgres://u@db:5432/x?sslmode=disable", Secret("pw")}},
		{"DRFLOW_POSTGRES_DATABASES", " a , b ", func(c *Config) any { return c.Postgres.Databases }, []string{"kohakku-controller", "kohakku-dispatcher"}, []string{"a", "b"}},
		{"DRFLOW_REDIS_ADDR", "redis:6380", func(c *Config) any { return c.Redis.Addr }, "127.0.0.1:6379", "redis:6380"},
		{"DRFLOW_REDIS_PASSWORD", " rp ", func(c *Config) any { return c.Redis.Password }, Secret(""), Secret(" rp ")},
		{"DRFLOW_REDIS_AOF_DIR", " /var/lib/redis/appendonlydir/ ", func(c *Config) any { return c.Redis.AOFDir }, "", "/var/lib/redis/appendonlydir"},
		{"DRFLOW_REDIS_HOST_QUEUE", "drflow-redis-host", func(c *Config) any { return c.Redis.HostQueue }, "", "drflow-redis-host"},
		{"DRFLOW_SQLITE_DATABASES", " bunqueue = /var/lib/bunqueue/queue.db , drflow-dev=.drflow/temporal.db", func(c *Config) any { return c.SQLite.Databases },
			[]SQLiteDatabase(nil), []SQLiteDatabase{{"bunqueue", "/var/lib/bunqueue/queue.db"}, {"drflow-dev", ".drflow/temporal.db"}}},
		{"DRFLOW_MINIO_ENDPOINT", "minio:9000", func(c *Config) any { return c.MinIO.Endpoint }, "", "minio:9000"},
		{"DRFLOW_MINIO_ACCESS_KEY", "ak", func(c *Config) any { return c.MinIO.AccessKey }, "", "ak"},
		{"DRFLOW_MINIO_SECRET_KEY", "sk", func(c *Config) any { return c.MinIO.SecretKey }, Secret(""), Secret("sk")},
		{"DRFLOW_MINIO_BUCKETS", "kohakku,kohakku-archive", func(c *Config) any { return c.MinIO.Buckets }, []string{"kohakku"}, []string{"kohakku", "kohakku-archive"}},
		{"DRFLOW_MINIO_SECURE", "YES", func(c *Config) any { return c.MinIO.Secure }, false, true},
		{"S3_BUCKET", "kohakku-backups", func(c *Config) any { return c.Backup.Bucket }, "", "kohakku-backups"},
		{"S3_ENDPOINT", "http://127.0.0.1:9000/", func(c *Config) any { return c.Backup.Endpoint }, "", "http://127.0.0.1:9000"},
		{"S3_REGION", "eu-central-1", func(c *Config) any { return c.Backup.Region }, "us-east-1", "eu-central-1"},
		{"S3_ACCESS_KEY_ID", "AKIA", func(c *Config) any { return c.Backup.AccessKeyID }, "", "AKIA"},
		{"S3_SECRET_ACCESS_KEY", "sak", func(c *Config) any { return c.Backup.SecretAccessKey }, Secret(""), Secret("sak")},
		{"S3_PREFIX", "/kohakku/prod/", func(c *Config) any { return c.Backup.Prefix }, "", "kohakku/prod"},
		{"S3_BACKUP_RETENTION", "30", func(c *Config) any { return c.Backup.RetentionDays }, 7, 30},
		{"S3_FORCE_PATH_STYLE", "true", func(c *Config) any { return c.Backup.ForcePathStyle }, false, true},
		{"DRFLOW_AGE_RECIPIENTS", " " + exampleAgeRecipient + " ", func(c *Config) any { return c.Encryption.AgeRecipients }, []string(nil), []string{exampleAgeRecipient}},
		{"DRFLOW_AGE_RECIPIENTS_FILE", "(a recipients file, written below)", func(c *Config) any { return c.Encryption.AgeRecipientsFile }, "", "(the same path)"},
		{"DRFLOW_AGE_IDENTITY_FILE", "(an identity file, written below)", func(c *Config) any { return c.Encryption.AgeIdentityFile }, "", "(the same path)"},
		{"DRFLOW_HTTP_ADDR", ":0", func(c *Config) any { return c.Worker.HTTPAddr }, "127.0.0.1:9090", ":0"},
		{"DRFLOW_STATE_DIR", "/var/lib/drflow", func(c *Config) any { return c.Worker.StateDir }, ".drflow", "/var/lib/drflow"},
		{"DRFLOW_DEV_GRPC_ADDR", "0.0.0.0:7234", func(c *Config) any { return c.Worker.DevGRPCAddr }, "127.0.0.1:7233", "0.0.0.0:7234"},
		{"DRFLOW_DEV_UI_ADDR", "[::1]:8234", func(c *Config) any { return c.Worker.DevUIAddr }, "127.0.0.1:8233", "[::1]:8234"},
		{"DRFLOW_LOG_LEVEL", "Debug", func(c *Config) any { return c.Worker.LogLevel }, slog.LevelInfo, slog.LevelDebug},
		{"DRFLOW_HOST_QUEUES", "drflow-redis-host, drflow-db-host", func(c *Config) any { return c.Worker.HostQueues }, []string(nil), []string{"drflow-redis-host", "drflow-db-host"}},
		{"DRFLOW_HOOKS_FILE", "(a hooks file, written below)", func(c *Config) any { return c.Services.HooksFile }, "", "(the same path)"},
	}
	var covered []string
	for _, tt := range tests {
		covered = append(covered, tt.env)
		t.Run(tt.env, func(t *testing.T) {
			vars := map[string]string{}
			c, err := Load("", env(vars))
			require.NoError(t, err)
			assert.Equal(t, tt.def, tt.get(c), "unset")

			vars[tt.env] = ""
			c, err = Load("", env(vars))
			require.NoError(t, err)
			assert.Equal(t, tt.def, tt.get(c), "empty counts as unset")

			// The other half of a pair, so that the pair check stays quiet.
			partner := map[string][2]string{
				"TEMPORAL_TLS_CLIENT_CERT_PATH": {"TEMPORAL_TLS_CLIENT_KEY_PATH", "/k"},
				"TEMPORAL_TLS_CLIENT_KEY_PATH":  {"TEMPORAL_TLS_CLIENT_CERT_PATH", "/c"},
				"TEMPORAL_TLS_CLIENT_CERT_DATA": {"TEMPORAL_TLS_CLIENT_KEY_DATA", "K"},
				"TEMPORAL_TLS_CLIENT_KEY_DATA":  {"TEMPORAL_TLS_CLIENT_CERT_DATA", "C"},
				"DRFLOW_MINIO_ACCESS_KEY":       {"DRFLOW_MINIO_SECRET_KEY", "s"},
				"DRFLOW_MINIO_SECRET_KEY":       {"DRFLOW_MINIO_ACCESS_KEY", "a"},
				"S3_ACCESS_KEY_ID":              {"S3_SECRET_ACCESS_KEY", "s"},
				"S3_SECRET_ACCESS_KEY":          {"S3_ACCESS_KEY_ID", "a"},
			}
			if p, ok := partner[tt.env]; ok {
				vars[p[0]] = p[1]
			}
			switch tt.env {
			case "TEMPORAL_CONFIG_FILE":
				tt.value = writeFile(t, "temporal.toml", "")
				tt.want = tt.value
			case "TEMPORAL_PROFILE": // a named profile must exist
				vars["TEMPORAL_CONFIG_FILE"] = writeFile(t, "temporal.toml", "[profile.ops]\n")
			case "DRFLOW_HOOKS_FILE": // the file is read and checked
				tt.value = writeFile(t, "hooks.yaml", "services:\n  monitor:\n    restart: {argv: [systemctl, restart, kohakku-monitor]}\n")
				tt.want = tt.value
			case "DRFLOW_AGE_RECIPIENTS_FILE", "DRFLOW_AGE_IDENTITY_FILE": // the file is read and checked
				tt.value = writeFile(t, "age.txt", ageFileFor(t, tt.env))
				tt.want = tt.value
			}
			vars[tt.env] = tt.value
			c, err = Load("", env(vars))
			require.NoError(t, err)
			assert.Equal(t, tt.want, tt.get(c), "set")
		})
	}
	var all []string
	for _, v := range variables {
		all = append(all, v.env)
	}
	assert.ElementsMatch(t, all, covered, "one case per variable")
}

// TestBadValues checks the exact message for a bad value of every checked
// variable: it names the variable, says what is wrong and shows a valid value.
func TestBadValues(t *testing.T) {
	tests := []struct {
		env, value, want string
	}{
		{"TEMPORAL_ADDRESS", "localhost", `TEMPORAL_ADDRESS: "localhost" is not a host:port address (want e.g. temporal.example.internal:7233)`},
		{"TEMPORAL_ADDRESS", ":7233", `TEMPORAL_ADDRESS: ":7233" has no host (want e.g. temporal.example.internal:7233)`},
		{"TEMPORAL_TLS", "on", `TEMPORAL_TLS: "on" is not a boolean (want true or false; 1/0 and yes/no also work)`},
		{"TEMPORAL_TLS_DISABLE_HOST_VERIFICATION", "2", `TEMPORAL_TLS_DISABLE_HOST_VERIFICATION: "2" is not a boolean (want true or false; 1/0 and yes/no also work)`},
		{"TEMPORAL_CONFIG_FILE", "/nonexistent/temporal.toml", `TEMPORAL_CONFIG_FILE: stat /nonexistent/temporal.toml: no such file or directory (want the path of a Temporal client config TOML file, or unset)`},
		{"DRFLOW_POSTGRES_URL", "mysql://u:pw@db/", `DRFLOW_POSTGRES_URL: scheme "mysql" is not postgres or postgresql (want e.g. postgres://drflow:secret@127.0.0.1:5432/?sslmode=disable)`},
		{"DRFLOW_POSTGRES_URL", "postgres://u:p#w@db/", `DRFLOW_POSTGRES_URL: is not a valid URL; the value is not shown as it may hold a password; percent-encode / ? # @ : in the user or password (want e.g. postgres://drflow:secret@127.0.0.1:5432/?sslmode=disable)`},
		{"DRFLOW_POSTGRES_URL", "postgres:///?sslmode=disable", `DRFLOW_POSTGRES_URL: has no host (want e.g. postgres://drflow:secret@127.0.0.1:5432/?sslmode=disable)`},
		{"DRFLOW_POSTGRES_URL", "postgres://u:1234/pw@db/", `DRFLOW_POSTGRES_URL: has an @ after the host, as a password with an unescaped / or ? does; the value is not shown as it may hold a password; percent-encode / ? # @ : in the user or password (want e.g. postgres://drflow:secret@127.0.0.1:5432/?sslmode=disable)`},
		{"DRFLOW_POSTGRES_URL", "postgres://u:12?pw@db/", `DRFLOW_POSTGRES_URL: has an @ after the host, as a password with an unescaped / or ? does; the value is not shown as it may hold a password; percent-encode / ? # @ : in the user or password (want e.g. postgres://drflow:secret@127.0.0.1:5432/?sslmode=disable)`},
		{"DRFLOW_POSTGRES_URL", "postgres://u@db/?sslkey=/k.pem&sslpassword=pw", `DRFLOW_POSTGRES_URL: sets sslpassword, which drflow cannot keep out of logs and pg_dump's arguments; the value is not shown; use a client key without a passphrase (want e.g. postgres://drflow:secret@127.0.0.1:5432/?sslmode=disable)`},
		{"DRFLOW_POSTGRES_URL", "postgres://u@db/?oauth_client_secret=pw", `DRFLOW_POSTGRES_URL: sets a credential query parameter, which drflow cannot keep out of logs and pg_dump's arguments; the value is not shown; use a client key without a passphrase (want e.g. postgres://drflow:secret@127.0.0.1:5432/?sslmode=disable)`},
		{"DRFLOW_POSTGRES_DATABASES", "a,,b", `DRFLOW_POSTGRES_DATABASES: entry 2 of "a,,b" is empty (want e.g. kohakku-controller,kohakku-dispatcher)`},
		{"DRFLOW_POSTGRES_DATABASES", "a,a", `DRFLOW_POSTGRES_DATABASES: "a" is listed twice in "a,a" (want e.g. kohakku-controller,kohakku-dispatcher)`},
		{"DRFLOW_POSTGRES_DATABASES", "a\x00b", `DRFLOW_POSTGRES_DATABASES: database name "a\x00b" contains a NUL byte (want e.g. kohakku-controller,kohakku-dispatcher)`},
		{"DRFLOW_POSTGRES_DATABASES", strings.Repeat("d", 64), `DRFLOW_POSTGRES_DATABASES: database name "` + strings.Repeat("d", 64) + `" is longer than 63 bytes, which PostgreSQL truncates (want e.g. kohakku-controller,kohakku-dispatcher)`},
		{"DRFLOW_REDIS_ADDR", "redis:six", `DRFLOW_REDIS_ADDR: "redis:six": port "six" is not a number from 1 to 65535 (want e.g. 127.0.0.1:6379)`},
		{"DRFLOW_REDIS_ADDR", "redis:0", `DRFLOW_REDIS_ADDR: "redis:0": port "0" is not a number from 1 to 65535 (want e.g. 127.0.0.1:6379)`},
		{"DRFLOW_SQLITE_DATABASES", "bunqueue=/a.db,bunqueue=/b.db", `DRFLOW_SQLITE_DATABASES: name "bunqueue" is listed twice (want e.g. bunqueue=/var/lib/bunqueue/queue.db,drflow-dev=.drflow/temporal.db)`},
		{"DRFLOW_SQLITE_DATABASES", "bunqueue=/a.db,bunqueue=/a.db", `DRFLOW_SQLITE_DATABASES: "bunqueue=/a.db" is listed twice in "bunqueue=/a.db,bunqueue=/a.db" (want e.g. bunqueue=/var/lib/bunqueue/queue.db,drflow-dev=.drflow/temporal.db)`},
		{"DRFLOW_SQLITE_DATABASES", "/var/lib/bunqueue/queue.db", `DRFLOW_SQLITE_DATABASES: entry "/var/lib/bunqueue/queue.db" is not name=path (want e.g. bunqueue=/var/lib/bunqueue/queue.db,drflow-dev=.drflow/temporal.db)`},
		{"DRFLOW_SQLITE_DATABASES", "bunqueue=/a.db,dev=", `DRFLOW_SQLITE_DATABASES: entry "dev=" has an empty path (want e.g. bunqueue=/var/lib/bunqueue/queue.db,drflow-dev=.drflow/temporal.db)`},
		{"DRFLOW_SQLITE_DATABASES", "=/a.db", `DRFLOW_SQLITE_DATABASES: entry "=/a.db" has an empty name (want e.g. bunqueue=/var/lib/bunqueue/queue.db,drflow-dev=.drflow/temporal.db)`},
		{"DRFLOW_SQLITE_DATABASES", "BunQueue=/a.db", `DRFLOW_SQLITE_DATABASES: "BunQueue" is not a valid SQLite database name: use 1 to 63 lowercase letters, digits, - and _ (want e.g. bunqueue=/var/lib/bunqueue/queue.db,drflow-dev=.drflow/temporal.db)`},
		{"DRFLOW_SQLITE_DATABASES", "bun.queue=/a.db", `DRFLOW_SQLITE_DATABASES: "bun.queue" is not a valid SQLite database name: use 1 to 63 lowercase letters, digits, - and _ (want e.g. bunqueue=/var/lib/bunqueue/queue.db,drflow-dev=.drflow/temporal.db)`},
		{"DRFLOW_SQLITE_DATABASES", strings.Repeat("q", 64) + "=/a.db", `DRFLOW_SQLITE_DATABASES: "` + strings.Repeat("q", 64) + `" is not a valid SQLite database name: use 1 to 63 lowercase letters, digits, - and _ (want e.g. bunqueue=/var/lib/bunqueue/queue.db,drflow-dev=.drflow/temporal.db)`},
		{"DRFLOW_SQLITE_DATABASES", "bunqueue=/a\x00.db", `DRFLOW_SQLITE_DATABASES: the path of "bunqueue" contains a NUL byte (want e.g. bunqueue=/var/lib/bunqueue/queue.db,drflow-dev=.drflow/temporal.db)`},
		{"DRFLOW_MINIO_ENDPOINT", "http://minio:9000", `DRFLOW_MINIO_ENDPOINT: "http://minio:9000" has a scheme; want host:port (e.g. 127.0.0.1:9000) and DRFLOW_MINIO_SECURE=true for https`},
		{"DRFLOW_MINIO_ENDPOINT", "minio", `DRFLOW_MINIO_ENDPOINT: "minio" is not a host:port address (want e.g. 127.0.0.1:9000)`},
		{"DRFLOW_MINIO_BUCKETS", "kohakku,My_Bucket", `DRFLOW_MINIO_BUCKETS: "My_Bucket" is not a valid bucket name: only lowercase letters, digits, dots and hyphens are allowed (want e.g. kohakku)`},
		{"DRFLOW_MINIO_SECURE", "maybe", `DRFLOW_MINIO_SECURE: "maybe" is not a boolean (want true or false; 1/0 and yes/no also work)`},
		{"S3_BUCKET", "ab", `S3_BUCKET: "ab" is not a valid bucket name: it is 2 characters long, not 3 to 63 (want e.g. kohakku-backups)`},
		{"S3_BUCKET", "-backups", `S3_BUCKET: "-backups" is not a valid bucket name: it must start and end with a lowercase letter or digit (want e.g. kohakku-backups)`},
		{"S3_BUCKET", "my..backups", `S3_BUCKET: "my..backups" is not a valid bucket name: it has two dots in a row (want e.g. kohakku-backups)`},
		{"S3_BUCKET", "192.168.1.1", `S3_BUCKET: "192.168.1.1" is not a valid bucket name: it looks like an IP address (want e.g. kohakku-backups)`},
		{"S3_ENDPOINT", "ftp://s3:21", `S3_ENDPOINT: "ftp://s3:21": scheme "ftp" is not http or https (want e.g. http://127.0.0.1:9000, or unset for AWS S3)`},
		{"S3_ENDPOINT", "http://ak:sk@s3:9000", `S3_ENDPOINT: holds credentials; the value is not shown; set them as the access key and secret key instead (want e.g. http://127.0.0.1:9000, or unset for AWS S3)`},
		{"S3_ENDPOINT", "http://s3:99999", `S3_ENDPOINT: "http://s3:99999": port "99999" is not a number from 1 to 65535 (want e.g. http://127.0.0.1:9000, or unset for AWS S3)`},
		{"S3_REGION", "EU West", `S3_REGION: "EU West" is not a region name: lowercase letters, digits and hyphens (want e.g. us-east-1; auto for Cloudflare R2)`},
		{"S3_PREFIX", "a//b", `S3_PREFIX: "a//b" has an empty path segment (//) (want e.g. kohakku/prod)`},
		{"S3_PREFIX", "a/../b", `S3_PREFIX: "a/../b" has a . or .. path segment (want e.g. kohakku/prod)`},
		{"S3_BACKUP_RETENTION", "seven", `S3_BACKUP_RETENTION: "seven" is not a whole number of days (want e.g. 7)`},
		{"S3_BACKUP_RETENTION", "0", `S3_BACKUP_RETENTION: 0 is less than 1 day: backups must be kept at least a day (want e.g. 7)`},
		{"S3_FORCE_PATH_STYLE", "ja", `S3_FORCE_PATH_STYLE: "ja" is not a boolean (want true or false; 1/0 and yes/no also work)`},
		{"DRFLOW_HTTP_ADDR", "9090", `DRFLOW_HTTP_ADDR: "9090" is not a host:port address (want e.g. 0.0.0.0:9090)`},
		{"DRFLOW_DEV_GRPC_ADDR", "127.0.0.1:70000", `DRFLOW_DEV_GRPC_ADDR: "127.0.0.1:70000": port "70000" is not a number from 0 to 65535 (want e.g. 127.0.0.1:7233)`},
		{"DRFLOW_DEV_UI_ADDR", "ui", `DRFLOW_DEV_UI_ADDR: "ui" is not a host:port address (want e.g. 127.0.0.1:8233)`},
		{"DRFLOW_STATE_DIR", "a\x00b", `DRFLOW_STATE_DIR: contains a NUL byte`},
		{"DRFLOW_LOG_LEVEL", "verbose", `DRFLOW_LOG_LEVEL: "verbose" is not a log level (want debug, info, warn or error)`},
		{"DRFLOW_REDIS_AOF_DIR", "appendonlydir", `DRFLOW_REDIS_AOF_DIR: "appendonlydir" is not an absolute path (want e.g. /var/lib/redis/appendonlydir)`},
		{"DRFLOW_REDIS_HOST_QUEUE", "redis host", `DRFLOW_REDIS_HOST_QUEUE: task queue name "redis host" has a space or control character (want e.g. drflow-redis-host)`},
		{"DRFLOW_REDIS_HOST_QUEUE", "/_sys/q", `DRFLOW_REDIS_HOST_QUEUE: task queue name "/_sys/q" is under /_sys/, which Temporal reserves (want e.g. drflow-redis-host)`},
		{"DRFLOW_HOST_QUEUES", "a,a", `DRFLOW_HOST_QUEUES: "a" is listed twice in "a,a" (want e.g. drflow-redis-host)`},
		{"DRFLOW_HOST_QUEUES", "drflow", `DRFLOW_HOST_QUEUES lists "drflow", the shared task queue (DRFLOW_TASK_QUEUE): the worker polls it anyway; list only host queues (want e.g. drflow-redis-host)`},
		{"DRFLOW_HOOKS_FILE", "/nonexistent/hooks.yaml", `DRFLOW_HOOKS_FILE: open /nonexistent/hooks.yaml: no such file or directory (want the path of a service hooks YAML file, e.g. /etc/drflow/hooks.yaml)`},
	}
	for _, tt := range tests {
		t.Run(tt.env+"="+tt.value, func(t *testing.T) {
			_, err := Load("", env(map[string]string{tt.env: tt.value}))
			require.Error(t, err)
			assert.Equal(t, []string{tt.want}, errs(err))
			assert.NotContains(t, err.Error(), "pw", "a password is never echoed")
			assert.NotContains(t, err.Error(), "sk@", "credentials are never echoed")
		})
	}
}

func TestErrorsAreCollected(t *testing.T) {
	_, err := Load("", env(map[string]string{
		"S3_BACKUP_RETENTION":     "seven",
		"DRFLOW_MINIO_SECURE":     "maybe",
		"DRFLOW_LOG_LEVEL":        "loud",
		"DRFLOW_MINIO_ACCESS_KEY": "ak",
	}))
	require.Error(t, err)
	assert.Equal(t, []string{
		`DRFLOW_MINIO_SECURE: "maybe" is not a boolean (want true or false; 1/0 and yes/no also work)`,
		`S3_BACKUP_RETENTION: "seven" is not a whole number of days (want e.g. 7)`,
		`DRFLOW_LOG_LEVEL: "loud" is not a log level (want debug, info, warn or error)`,
		`DRFLOW_MINIO_ACCESS_KEY is set but DRFLOW_MINIO_SECRET_KEY (file key minio.secretKey) is not: set both`,
	}, errs(err))
}

func TestPairs(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want string
	}{
		{"s3 secret without id", map[string]string{"S3_SECRET_ACCESS_KEY": "x"},
			`S3_SECRET_ACCESS_KEY is set but S3_ACCESS_KEY_ID (file key backup.accessKeyId) is not: set both, or neither to use the AWS default credential chain`},
		{"cert without key", map[string]string{"TEMPORAL_TLS_CLIENT_CERT_PATH": "/c"},
			`TEMPORAL_TLS_CLIENT_CERT_PATH is set but TEMPORAL_TLS_CLIENT_KEY_PATH (file key temporal.tls.clientKeyPath) is not: a client certificate needs its key`},
		{"key data without cert data", map[string]string{"TEMPORAL_TLS_CLIENT_KEY_DATA": "k"},
			`TEMPORAL_TLS_CLIENT_KEY_DATA is set but TEMPORAL_TLS_CLIENT_CERT_DATA (file key temporal.tls.clientCertData) is not: a client certificate needs its key`},
		{"path and data", map[string]string{"TEMPORAL_TLS_CLIENT_CERT_PATH": "/c", "TEMPORAL_TLS_CLIENT_KEY_PATH": "/k", "TEMPORAL_TLS_CLIENT_CERT_DATA": "c", "TEMPORAL_TLS_CLIENT_KEY_DATA": "k"},
			`TEMPORAL_TLS_CLIENT_CERT_PATH/_KEY_PATH and TEMPORAL_TLS_CLIENT_CERT_DATA/_KEY_DATA are both set: give the client certificate as files or as data, not both`},
		{"ca path and data", map[string]string{"TEMPORAL_TLS_SERVER_CA_CERT_PATH": "/ca", "TEMPORAL_TLS_SERVER_CA_CERT_DATA": "ca"},
			`TEMPORAL_TLS_SERVER_CA_CERT_PATH and TEMPORAL_TLS_SERVER_CA_CERT_DATA are both set: give the CA as a file or as data, not both`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load("", env(tt.env))
			assert.Equal(t, []string{tt.want}, errs(err))
		})
	}
}

func TestFileThenEnvironment(t *testing.T) {
	path := writeFile(t, "drflow.yaml", `
temporal:
  namespace: from-file
  taskQueue: file-queue
postgres:
  url: postgres://file@db:5432/?sslmode=disable
  databases: [one, two]
minio:
  buckets: kohakku, archive
  secure: yes
backup:
  bucket: file-bucket
  retentionDays: 07
worker:
  logLevel: warn
  stateDir: ""          # empty counts as unset
`)
	c, err := Load(path, env(map[string]string{
		"TEMPORAL_NAMESPACE":  "from-env",
		"S3_BACKUP_RETENTION": "14",
	}))
	require.NoError(t, err)
	assert.Equal(t, "from-env", c.Temporal.Namespace, "environment beats file")
	assert.Equal(t, "file-queue", c.Temporal.TaskQueue, "file beats default")
	assert.Equal(t, "postgres://file@db:5432/?sslmode=disable", c.Postgres.URL)
	assert.Equal(t, []string{"one", "two"}, c.Postgres.Databases, "YAML list")
	assert.Equal(t, []string{"kohakku", "archive"}, c.MinIO.Buckets, "comma string in the file")
	assert.True(t, c.MinIO.Secure)
	assert.Equal(t, "file-bucket", c.Backup.Bucket)
	assert.Equal(t, 14, c.Backup.RetentionDays)
	assert.Equal(t, slog.LevelWarn, c.Worker.LogLevel)
	assert.Equal(t, ".drflow", c.Worker.StateDir)
	assert.Equal(t, "127.0.0.1:7233", c.Temporal.Address, "default")

	c, err = Load(path, env(nil))
	require.NoError(t, err)
	assert.Equal(t, 7, c.Backup.RetentionDays, "07 in the file")
}

func TestFileProblems(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       []string
	}{
		{"unknown keys", "backup:\n  bucket: ok-bucket\n  retention: 7\ns3:\n  bucket: x\ntemporal:\n  tls:\n    insecure: true\n", []string{
			`FILE:3: unknown key "backup.retention" (known keys in backup: bucket, endpoint, region, accessKeyId, secretAccessKey, prefix, retentionDays, forcePathStyle)`,
			`FILE:4: unknown key "s3" (known keys in the top level: temporal, postgres, redis, sqlite, minio, backup, encryption, worker, services)`,
			`FILE:8: unknown key "temporal.tls.insecure" (known keys in temporal.tls: enabled, clientCertPath, clientCertData, clientKeyPath, clientKeyData, serverCaCertPath, serverCaCertData, serverName, disableHostVerification)`,
		}},
		{"bad values name file, line and key", "backup:\n  retentionDays: seven\nminio:\n  secure: maybe\n", []string{
			`FILE:4: minio.secure: "maybe" is not a boolean (want true or false; 1/0 and yes/no also work)`,
			`FILE:2: backup.retentionDays: "seven" is not a whole number of days (want e.g. 7)`,
		}},
		{"shapes", "redis:\n  addr: [a, b]\nminio:\n  buckets: {a: b}\n", []string{
			`FILE:2: redis.addr: want a single value, not a list or mapping (e.g. 127.0.0.1:6379)`,
			`FILE:4: minio.buckets: want a comma-separated string or a list of strings (e.g. kohakku)`,
		}},
		{"list entries", "postgres:\n  databases: [a, '', b]\n", []string{
			`FILE:2: postgres.databases: entry 2 is empty (want e.g. kohakku-controller,kohakku-dispatcher)`,
		}},
		{"sqlite entries", "sqlite:\n  databases:\n    - a=/a.db\n    - a=/b.db\n", []string{
			`FILE:3: sqlite.databases: name "a" is listed twice (want e.g. bunqueue=/var/lib/bunqueue/queue.db,drflow-dev=.drflow/temporal.db)`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, "drflow.yaml", tt.yaml)
			_, err := Load(path, env(nil))
			var want []string
			for _, w := range tt.want {
				want = append(want, strings.ReplaceAll(w, "FILE", path))
			}
			assert.Equal(t, want, errs(err))
		})
	}

	t.Run("missing file", func(t *testing.T) {
		_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"), env(nil))
		assert.ErrorIs(t, err, os.ErrNotExist)
		assert.ErrorContains(t, err, "config file: open ")
	})
	t.Run("syntax error", func(t *testing.T) {
		path := writeFile(t, "drflow.yaml", "backup: [\n")
		_, err := Load(path, env(nil))
		assert.ErrorContains(t, err, "config file "+path+": yaml: ")
	})
	t.Run("empty file", func(t *testing.T) {
		c, err := Load(writeFile(t, "drflow.yaml", "# nothing\n"), env(nil))
		require.NoError(t, err)
		assert.Equal(t, Defaults(), c)
	})
}

// TestFileKeysMatchVariables keeps fileConfig and the variable table in step:
// every file key is a variable and every variable has a file key.
func TestFileKeysMatchVariables(t *testing.T) {
	var fileKeys, varKeys []string
	walkFile(reflect.ValueOf(&fileConfig{}).Elem(), "", func(key string, _ *fileValue) {
		fileKeys = append(fileKeys, key)
	}, nil)
	for _, v := range variables {
		varKeys = append(varKeys, v.key)
	}
	assert.Equal(t, varKeys, fileKeys, "same keys in the same order")
}

// TestDocumentedFileExample loads the full example of docs/configuration.md.
func TestDocumentedFileExample(t *testing.T) {
	doc, err := os.ReadFile("../../docs/configuration.md")
	require.NoError(t, err)
	_, rest, ok := strings.Cut(string(doc), "```yaml\n")
	require.True(t, ok, "the doc has a YAML example")
	example, _, ok := strings.Cut(rest, "```")
	require.True(t, ok)
	c, err := Load(writeFile(t, "drflow.yaml", example), env(map[string]string{"S3_SECRET_ACCESS_KEY": "s", "DRFLOW_MINIO_SECRET_KEY": "m"}))
	require.NoError(t, err)
	assert.Equal(t, "kohakku-backups", c.Backup.Bucket)
	assert.Equal(t, 30, c.Backup.RetentionDays)
	assert.Equal(t, ptr(true), c.Temporal.TLS.Enabled)
}

// TestDocsListEveryVariable fails when a variable is added without a row in
// docs/configuration.md, or the row's key or default drifts.
func TestDocsListEveryVariable(t *testing.T) {
	doc, err := os.ReadFile("../../docs/configuration.md")
	require.NoError(t, err)
	rows := map[string]string{}
	for _, line := range strings.Split(string(doc), "\n") {
		if name, _, ok := strings.Cut(strings.TrimPrefix(line, "| `"), "`"); ok && strings.HasPrefix(line, "| `") {
			rows[name] = line
		}
	}
	assert.Contains(t, rows, FileEnv)
	for _, v := range variables {
		t.Run(v.env, func(t *testing.T) {
			row, ok := rows[v.env]
			require.True(t, ok, "docs/configuration.md has no table row for %s", v.env)
			assert.Contains(t, row, "| `"+v.key+"` |", "file key")
			if v.def != "" && v.def != "false" {
				assert.Contains(t, row, "| `"+v.def+"` |", "default")
			}
			if v.def == "false" {
				assert.Contains(t, row, "| `false` |", "default")
			}
			assert.Equal(t, v.secret, strings.Contains(row, "🔒"), "secret marker")
		})
	}
}

// TestSQLiteDatabases covers the name=path list in its valid forms: the
// environment, a YAML list, a comma string in the file, Set and Paths.
func TestSQLiteDatabases(t *testing.T) {
	want := []SQLiteDatabase{{"bunqueue", "/var/lib/bunqueue/queue.db"}, {"drflow_dev-2", ".drflow/temporal.db"}}
	tests := []struct {
		name string
		env  string
		file string
		want []SQLiteDatabase
	}{
		{name: "unset", want: nil},
		{name: "environment", env: "bunqueue=/var/lib/bunqueue/queue.db,drflow_dev-2=.drflow/temporal.db", want: want},
		{name: "YAML list", file: "sqlite:\n  databases:\n    - bunqueue=/var/lib/bunqueue/queue.db\n    - drflow_dev-2 = .drflow/temporal.db\n", want: want},
		{name: "comma string in the file", file: "sqlite:\n  databases: bunqueue=/var/lib/bunqueue/queue.db, drflow_dev-2=.drflow/temporal.db\n", want: want},
		{name: "environment beats file", env: "x=/x.db", file: "sqlite:\n  databases: [a=/a.db]\n", want: []SQLiteDatabase{{"x", "/x.db"}}},
		{name: "path with = and spaces", env: "q=/srv/my data/a=b.db", want: []SQLiteDatabase{{"q", "/srv/my data/a=b.db"}}},
		{name: "a path twice under two names", env: "a=/x.db,b=/x.db", want: []SQLiteDatabase{{"a", "/x.db"}, {"b", "/x.db"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := ""
			if tt.file != "" {
				path = writeFile(t, "drflow.yaml", tt.file)
			}
			c, err := Load(path, env(map[string]string{"DRFLOW_SQLITE_DATABASES": tt.env}))
			require.NoError(t, err)
			assert.Equal(t, tt.want, c.SQLite.Databases)
			if tt.want == nil {
				assert.Nil(t, c.SQLite.Paths())
				return
			}
			paths := map[string]string{}
			for _, d := range tt.want {
				paths[d.Name] = d.Path
			}
			assert.Equal(t, paths, c.SQLite.Paths())
		})
	}

	c := Defaults()
	require.NoError(t, c.Set("sqlite.databases", "a=/a.db"))
	assert.Equal(t, []SQLiteDatabase{{"a", "/a.db"}}, c.SQLite.Databases)
	assert.EqualError(t, c.Set("DRFLOW_SQLITE_DATABASES", "a=/a.db,A=/b.db"),
		`DRFLOW_SQLITE_DATABASES: "A" is not a valid SQLite database name: use 1 to 63 lowercase letters, digits, - and _ (want e.g. bunqueue=/var/lib/bunqueue/queue.db,drflow-dev=.drflow/temporal.db)`)
	assert.Equal(t, []SQLiteDatabase{{"a", "/a.db"}}, c.SQLite.Databases, "a failed Set changes nothing")
}

func TestRequire(t *testing.T) {
	tests := []struct {
		name  string
		env   map[string]string
		parts []Part
		want  []string
	}{
		{"nothing asked", nil, nil, nil},
		{"postgres", nil, []Part{PartPostgres}, []string{
			`DRFLOW_POSTGRES_URL (file key postgres.url) is not set: PostgreSQL needs the server URL (want e.g. postgres://drflow:secret@127.0.0.1:5432/?sslmode=disable)`,
		}},
		{"redis on defaults", nil, []Part{PartRedis}, nil},
		{"minio", map[string]string{"DRFLOW_MINIO_ENDPOINT": "minio:9000"}, []Part{PartMinIO}, []string{
			`DRFLOW_MINIO_ACCESS_KEY (file key minio.accessKey) is not set: the app's MinIO needs an access key (want e.g. drflow)`,
			`DRFLOW_MINIO_SECRET_KEY (file key minio.secretKey) is not set: the app's MinIO needs a secret key (want e.g. (the MinIO secret key))`,
		}},
		{"backup on AWS", nil, []Part{PartBackup}, []string{
			`S3_BUCKET (file key backup.bucket) is not set: the backup store needs a bucket (want e.g. kohakku-backups)`,
		}},
		{"backup elsewhere", map[string]string{"S3_BUCKET": "b-backups", "S3_ENDPOINT": "http://s3:9000"}, []Part{PartBackup}, []string{
			`S3_ACCESS_KEY_ID (file key backup.accessKeyId) is not set: a backup store at S3_ENDPOINT needs an access key (want e.g. AKIAIOSFODNN7EXAMPLE)`,
			`S3_SECRET_ACCESS_KEY (file key backup.secretAccessKey) is not set: a backup store at S3_ENDPOINT needs a secret key (want e.g. (the secret access key))`,
		}},
		{"all met", map[string]string{
			"DRFLOW_POSTGRES_URL": "postgres://u:p@db/", "DRFLOW_MINIO_ENDPOINT": "minio:9000", "DRFLOW_MINIO_ACCESS_KEY": "a",
			"DRFLOW_MINIO_SECRET_KEY": "s", "S3_BUCKET": "b-backups",
		}, []Part{PartPostgres, PartRedis, PartMinIO, PartBackup}, nil},
		{"unknown part", nil, []Part{"s3"}, []string{`config: unknown part "s3" (want postgres, redis, minio or backup)`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Load("", env(tt.env))
			require.NoError(t, err)
			assert.Equal(t, tt.want, errs(c.Require(tt.parts...)))
		})
	}
}

func TestSet(t *testing.T) {
	c := Defaults()
	require.NoError(t, c.Set("worker.httpAddr", ":0"))
	require.NoError(t, c.Set("DRFLOW_LOG_LEVEL", "debug"))
	require.NoError(t, c.Set("postgres.databases", "a,b"))
	assert.Equal(t, ":0", c.Worker.HTTPAddr)
	assert.Equal(t, slog.LevelDebug, c.Worker.LogLevel)
	assert.Equal(t, []string{"a", "b"}, c.Postgres.Databases)

	assert.EqualError(t, c.Set("worker.logLevel", "loud"), `worker.logLevel: "loud" is not a log level (want debug, info, warn or error)`)
	assert.EqualError(t, c.Set("worker.stateDir", ""), `worker.stateDir: empty value (want e.g. /var/lib/drflow)`)
	assert.EqualError(t, c.Set("worker.nope", "x"), `config: no setting named "worker.nope"`)
	assert.Equal(t, slog.LevelDebug, c.Worker.LogLevel, "a failed Set changes nothing")
}

func TestPostgresURL(t *testing.T) {
	tests := []struct {
		name, url             string
		wantURL, wantRedacted string
		wantDB                string // DatabaseURL("kohakku-controller")
	}{
		{"password in user info", "postgres://drflow:s3cr%2Ft@db:5432/ignored?sslmode=disable",
			"postgres://drflow@db:5432/ignored?sslmode=disable",
			"postgres://drflow:xxxxx@db:5432/ignored?sslmode=disable",
			"postgres://drflow:s3cr%2Ft@db:5432/kohakku-controller?sslmode=disable"},
		{"password as query parameter", "postgresql://drflow@db/?password=s3cret&sslmode=require",
			"postgresql://drflow@db/?sslmode=require",
			"postgresql://drflow:xxxxx@db/?sslmode=require",
			"postgresql://drflow:s3cret@db/kohakku-controller?sslmode=require"},
		{"no password", "postgres://drflow@db:5432/",
			"postgres://drflow@db:5432/", "postgres://drflow@db:5432/",
			"postgres://drflow@db:5432/kohakku-controller"},
		{"unix socket", "postgres:///?host=/run/postgresql",
			"postgres:///?host=/run/postgresql", "postgres:///?host=/run/postgresql",
			"postgres:///kohakku-controller?host=/run/postgresql"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Load("", env(map[string]string{"DRFLOW_POSTGRES_URL": tt.url}))
			require.NoError(t, err)
			assert.Equal(t, tt.wantURL, c.Postgres.URL)
			assert.Equal(t, tt.wantRedacted, c.Postgres.Redacted())
			got, err := c.Postgres.DatabaseURL("kohakku-controller")
			require.NoError(t, err)
			assert.Equal(t, tt.wantDB, got)
		})
	}

	t.Run("database names are escaped", func(t *testing.T) {
		p := Postgres{URL: "postgres://u@db/", Password: "pw"}
		got, err := p.DatabaseURL("my db?#")
		require.NoError(t, err)
		assert.Equal(t, "postgres://u:pw@db/my%20db%3F%23", got)
	})
	t.Run("errors", func(t *testing.T) {
		_, err := Postgres{}.DatabaseURL("x")
		assert.EqualError(t, err, "postgres: DRFLOW_POSTGRES_URL is not set")
		_, err = Postgres{URL: "postgres://db/"}.DatabaseURL("")
		assert.EqualError(t, err, "postgres: database name is empty")
		assert.Equal(t, "", Postgres{}.Redacted())
	})
	t.Run("hand-built URL with password still redacts", func(t *testing.T) {
		assert.Equal(t, "postgres://u:xxxxx@db/", Postgres{URL: "postgres://u:pw@db/"}.Redacted())
	})
}

func TestSecretFormatting(t *testing.T) {
	s := Secret("hunter2")
	tests := []struct {
		format string
		want   string
	}{
		{"%v", "**redacted**"},
		{"%+v", "**redacted**"},
		{"%#v", `"**redacted**"`},
		{"%s", "**redacted**"},
		{"%q", `"**redacted**"`},
		{"%x", "**redacted**"},
		{"%d", "**redacted**"},
		{"%14s|", "  **redacted**|"},
		{"%-14v|", "**redacted**  |"},
	}
	for _, tt := range tests {
		t.Run(tt.format, func(t *testing.T) {
			assert.Equal(t, tt.want, fmt.Sprintf(tt.format, s))
			assert.Equal(t, tt.want, fmt.Sprintf(tt.format, &s), "pointer")
		})
	}
	assert.Equal(t, "**redacted**", s.String())
	assert.Equal(t, `"**redacted**"`, s.GoString())
	assert.Equal(t, "hunter2", s.Reveal())
	j, err := json.Marshal(s)
	require.NoError(t, err)
	assert.Equal(t, `"**redacted**"`, string(j))
	txt, err := s.MarshalText()
	require.NoError(t, err)
	assert.Equal(t, "**redacted**", string(txt))
	assert.Equal(t, "**redacted**", s.LogValue().String())

	var empty Secret
	assert.Equal(t, "", fmt.Sprintf("%v", empty))
	assert.Equal(t, `""`, fmt.Sprintf("%#v", empty))
	j, err = json.Marshal(empty)
	require.NoError(t, err)
	assert.Equal(t, `""`, string(j))
}

// loadWithSecrets returns a Config holding every kind of secret.
func loadWithSecrets(t *testing.T) *Config {
	t.Helper()
	c, err := Load("", env(map[string]string{
		"TEMPORAL_API_KEY":              "temporal-api-key-1",
		"TEMPORAL_TLS_CLIENT_CERT_DATA": "CERT",
		"TEMPORAL_TLS_CLIENT_KEY_DATA":  "tls-key-data-2",
		"DRFLOW_POSTGRES_URL":           "postgres://kohakku:pg-password-3@db:5432/?sslmode=disable",
		"DRFLOW_REDIS_PASSWORD":         "redis-password-4",
		"DRFLOW_MINIO_ACCESS_KEY":       "minio-access",
		"DRFLOW_MINIO_SECRET_KEY":       "minio-secret-5",
		"S3_ACCESS_KEY_ID":              "s3-access",
		"S3_SECRET_ACCESS_KEY":          "s3-secret-6",
	}))
	require.NoError(t, err)
	return c
}

func TestConfigNeverShowsSecrets(t *testing.T) {
	c := loadWithSecrets(t)
	secrets := c.Secrets()
	require.Equal(t, []string{
		"temporal-api-key-1", "tls-key-data-2", "pg-password-3", "redis-password-4", "minio-secret-5", "s3-secret-6",
	}, secrets)

	render := map[string]func() string{
		"%v":        func() string { return fmt.Sprintf("%v", c) },
		"%+v":       func() string { return fmt.Sprintf("%+v", c) },
		"%#v":       func() string { return fmt.Sprintf("%#v", c) },
		"%v value":  func() string { return fmt.Sprintf("%v", *c) },
		"%+v value": func() string { return fmt.Sprintf("%+v", *c) },
		"%#v value": func() string { return fmt.Sprintf("%#v", *c) },
		"json": func() string {
			b, err := json.Marshal(c)
			require.NoError(t, err)
			return string(b)
		},
		"yaml": func() string {
			b, err := yaml.Marshal(c)
			require.NoError(t, err)
			return string(b)
		},
		"slog json": func() string {
			var buf bytes.Buffer
			slog.New(slog.NewJSONHandler(&buf, nil)).Info("loaded", "config", c)
			return buf.String()
		},
		"slog text": func() string {
			var buf bytes.Buffer
			slog.New(slog.NewTextHandler(&buf, nil)).Info("loaded", "config", c, "postgres", c.Postgres.Redacted())
			return buf.String()
		},
	}
	for name, f := range render {
		t.Run(name, func(t *testing.T) {
			out := f()
			for _, s := range secrets {
				assert.NotContains(t, out, s)
			}
			assert.Contains(t, out, "redacted", "secrets show as redacted")
			assert.Contains(t, out, "kohakku", "the postgres user is still shown")
		})
	}
}

// TestErrorsNeverShowSecrets: a bad value next to secrets does not bring
// them into the error.
func TestErrorsNeverShowSecrets(t *testing.T) {
	_, err := Load("", env(map[string]string{
		"DRFLOW_POSTGRES_URL":   "mysql://kohakku:pg-password-3@db/",
		"S3_ENDPOINT":           "http://key:s3-secret-6@s3:9000",
		"DRFLOW_REDIS_PASSWORD": "redis-password-4",
		"DRFLOW_REDIS_ADDR":     "bad",
	}))
	require.Error(t, err)
	for _, s := range []string{"pg-password-3", "s3-secret-6", "redis-password-4"} {
		assert.NotContains(t, err.Error(), s)
	}
}

func TestTemporalClientOptions(t *testing.T) {
	t.Run("API key", func(t *testing.T) {
		c, err := Load("", env(map[string]string{
			"TEMPORAL_ADDRESS":   "drflow.a1b2c.tmprl.cloud:7233",
			"TEMPORAL_NAMESPACE": "drflow.a1b2c",
			"TEMPORAL_API_KEY":   "the-api-key",
		}))
		require.NoError(t, err)
		opts, err := c.TemporalClientOptions()
		require.NoError(t, err)
		assert.Equal(t, "drflow.a1b2c.tmprl.cloud:7233", opts.HostPort)
		assert.Equal(t, "drflow.a1b2c", opts.Namespace)
		assert.Equal(t, "the-api-key", apiKey(t, opts.Credentials))
		assert.NotNil(t, opts.ConnectionOptions.TLS, "an API key turns TLS on")
		assert.False(t, opts.ConnectionOptions.TLSDisabled)
	})
	t.Run("defaults", func(t *testing.T) {
		opts, err := Defaults().TemporalClientOptions()
		require.NoError(t, err)
		assert.Equal(t, "127.0.0.1:7233", opts.HostPort)
		assert.Equal(t, "default", opts.Namespace)
		assert.Nil(t, opts.Credentials)
		assert.Nil(t, opts.ConnectionOptions.TLS)
	})
	t.Run("TLS off despite API key", func(t *testing.T) {
		c, err := Load("", env(map[string]string{"TEMPORAL_API_KEY": "k", "TEMPORAL_TLS": "false"}))
		require.NoError(t, err)
		opts, err := c.TemporalClientOptions()
		require.NoError(t, err)
		assert.True(t, opts.ConnectionOptions.TLSDisabled)
	})
	t.Run("mTLS from data", func(t *testing.T) {
		cert, key := selfSigned(t)
		c, err := Load("", env(map[string]string{
			"TEMPORAL_TLS_CLIENT_CERT_DATA":    cert,
			"TEMPORAL_TLS_CLIENT_KEY_DATA":     key,
			"TEMPORAL_TLS_SERVER_CA_CERT_DATA": cert,
			"TEMPORAL_TLS_SERVER_NAME":         "temporal.internal",
		}))
		require.NoError(t, err)
		opts, err := c.TemporalClientOptions()
		require.NoError(t, err)
		require.NotNil(t, opts.ConnectionOptions.TLS)
		assert.Len(t, opts.ConnectionOptions.TLS.Certificates, 1)
		assert.NotNil(t, opts.ConnectionOptions.TLS.RootCAs)
		assert.Equal(t, "temporal.internal", opts.ConnectionOptions.TLS.ServerName)
		assert.NotContains(t, fmt.Sprintf("%+v", c), "PRIVATE KEY")
	})
	t.Run("mTLS from missing files", func(t *testing.T) {
		c, err := Load("", env(map[string]string{
			"TEMPORAL_TLS_CLIENT_CERT_PATH": "/nonexistent/c.pem",
			"TEMPORAL_TLS_CLIENT_KEY_PATH":  "/nonexistent/c.key",
		}))
		require.NoError(t, err, "files are read when the client is built")
		_, err = c.TemporalClientOptions()
		assert.ErrorContains(t, err, "temporal client (TEMPORAL_TLS_* settings): invalid TLS config: failed loading client cert/key path: open /nonexistent/c.pem")
	})
}

// apiKey calls the SDK's static API key credentials, which are a func.
func apiKey(t *testing.T, creds any) string {
	t.Helper()
	v := reflect.ValueOf(creds)
	require.Equal(t, reflect.Func, v.Kind(), "API key credentials")
	out := v.Call([]reflect.Value{reflect.ValueOf(context.Background())})
	require.Nil(t, out[1].Interface())
	return out[0].String()
}

func selfSigned(t *testing.T) (certPEM, keyPEM string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "drflow"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}))
}

func TestTemporalProfile(t *testing.T) {
	toml := writeFile(t, "temporal.toml", `
[profile.default]
address = "default.example:7233"

[profile.prod]
address = "prod.example:7233"
namespace = "prod-ns"
api_key = "profile-key"

[profile.prod.tls]
server_name = "prod.internal"

[profile.meta]
address = "meta.example:7233"
[profile.meta.grpc_meta]
x-token = "t"

[profile.bad]
address = "no-port"
`)
	tests := []struct {
		name    string
		env     map[string]string
		file    string
		want    Temporal
		wantErr string
	}{
		{name: "default profile", env: map[string]string{"TEMPORAL_CONFIG_FILE": toml},
			want: Temporal{Address: "default.example:7233", Namespace: "default", TaskQueue: "drflow", ConfigFile: toml}},
		{name: "named profile, environment wins", env: map[string]string{"TEMPORAL_CONFIG_FILE": toml, "TEMPORAL_PROFILE": "prod", "TEMPORAL_NAMESPACE": "env-ns"},
			want: Temporal{Address: "prod.example:7233", Namespace: "env-ns", APIKey: "profile-key", TaskQueue: "drflow", Profile: "prod", ConfigFile: toml,
				TLS: TemporalTLS{Enabled: ptr(true), ServerName: "prod.internal"}}},
		{name: "drflow file wins over profile", env: map[string]string{"TEMPORAL_CONFIG_FILE": toml, "TEMPORAL_PROFILE": "prod"},
			file: "temporal:\n  address: file.example:7233\n  tls:\n    enabled: false\n",
			want: Temporal{Address: "file.example:7233", Namespace: "prod-ns", APIKey: "profile-key", TaskQueue: "drflow", Profile: "prod", ConfigFile: toml,
				TLS: TemporalTLS{Enabled: ptr(false), ServerName: "prod.internal"}}},
		{name: "profile chosen in the drflow file", file: "temporal:\n  profile: prod\n  configFile: " + toml + "\n",
			want: Temporal{Address: "prod.example:7233", Namespace: "prod-ns", APIKey: "profile-key", TaskQueue: "drflow", Profile: "prod", ConfigFile: toml,
				TLS: TemporalTLS{Enabled: ptr(true), ServerName: "prod.internal"}}},
		{name: "missing profile", env: map[string]string{"TEMPORAL_CONFIG_FILE": toml, "TEMPORAL_PROFILE": "staging"},
			wantErr: `temporal profile "staging" in ` + toml + `: unable to find profile staging in config data (want TEMPORAL_PROFILE to name a profile in that file)`},
		{name: "grpc meta", env: map[string]string{"TEMPORAL_CONFIG_FILE": toml, "TEMPORAL_PROFILE": "meta"},
			wantErr: `temporal profile "meta" in ` + toml + `: grpc_meta and authority are not supported by drflow (want a profile without them)`},
		{name: "bad value in profile", env: map[string]string{"TEMPORAL_CONFIG_FILE": toml, "TEMPORAL_PROFILE": "bad"},
			wantErr: `temporal profile "bad" in ` + toml + `: TEMPORAL_ADDRESS: "no-port" is not a host:port address (want e.g. temporal.example.internal:7233)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := ""
			if tt.file != "" {
				path = writeFile(t, "drflow.yaml", tt.file)
			}
			c, err := Load(path, env(tt.env))
			if tt.wantErr != "" {
				assert.Equal(t, []string{tt.wantErr}, errs(err))
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, c.Temporal)
		})
	}
}

func TestFromEnvironment(t *testing.T) {
	path := writeFile(t, "drflow.yaml", "backup:\n  bucket: from-file\n")
	t.Setenv(FileEnv, path)
	t.Setenv("S3_REGION", "eu-west-1")
	c, err := FromEnvironment()
	require.NoError(t, err)
	assert.Equal(t, "from-file", c.Backup.Bucket)
	assert.Equal(t, "eu-west-1", c.Backup.Region)
}

// TestVariablesAreWellFormed guards the table itself.
func TestVariablesAreWellFormed(t *testing.T) {
	var names []string
	for _, v := range variables {
		assert.NotEmpty(t, v.example, v.env)
		assert.True(t, (v.store == nil) == v.list && (v.storeList == nil) != v.list, "%s: store or storeList, by list", v.env)
		names = append(names, v.env, v.key)
	}
	slices.Sort(names)
	assert.Equal(t, len(names), len(slices.Compact(names)), "names and keys are unique")
}
