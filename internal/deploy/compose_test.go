package deploy

import (
	"bufio"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	repoRoot     = "../.."
	composeFile  = repoRoot + "/docker-compose.temporal.yml"
	dockerfile   = repoRoot + "/Dockerfile"
	dockerignore = repoRoot + "/.dockerignore"

	projectName = "drflow-test"
	worker      = "drflow-worker"
)

// oneShots run to completion and exit: no healthcheck, no restart loop.
var oneShots = []string{"temporal-setup", "minio-init", "backup-s3-init"}

// loadCompose parses the compose file the way `docker compose` does, with interpolation
// from env only: neither the process environment nor an .env file leaks in, so the test
// sees the file's own defaults unless it passes a variable.
func loadCompose(t *testing.T, env ...string) *types.Project {
	t.Helper()
	opts, err := cli.NewProjectOptions(
		[]string{composeFile},
		cli.WithName(projectName),
		cli.WithInterpolation(true),
		cli.WithEnv(env),
	)
	require.NoError(t, err)
	project, err := opts.LoadProject(t.Context())
	require.NoError(t, err, "docker-compose.temporal.yml does not load")
	return project
}

func service(t *testing.T, p *types.Project, name string) types.ServiceConfig {
	t.Helper()
	s, ok := p.Services[name]
	require.Truef(t, ok, "service %q is missing", name)
	return s
}

// env returns a service's environment variable, failing if it is unset.
func env(t *testing.T, s types.ServiceConfig, name string) string {
	t.Helper()
	v, ok := s.Environment[name]
	require.Truef(t, ok && v != nil, "%s: %s is not set", s.Name, name)
	return *v
}

func TestComposeServicesExist(t *testing.T) {
	p := loadCompose(t)
	for _, name := range []string{
		"temporal-db", "temporal", "temporal-setup", "temporal-ui",
		"postgres", "redis", "minio", "minio-init",
		"backup-s3", "backup-s3-init", worker,
	} {
		t.Run(name, func(t *testing.T) {
			_, ok := p.Services[name]
			assert.Truef(t, ok, "service %q is missing", name)
		})
	}
}

// splitImage splits "repo[:tag][@digest]" into repo and tag; a ":" before the last "/"
// belongs to a registry port, not a tag.
func splitImage(ref string) (repo, tag string) {
	ref, _, _ = strings.Cut(ref, "@")
	i := strings.LastIndex(ref, ":")
	if i < 0 || i < strings.LastIndex(ref, "/") {
		return ref, ""
	}
	return ref[:i], ref[i+1:]
}

func TestComposeImagesPinned(t *testing.T) {
	p := loadCompose(t)

	// What each service must run; tag is a regexp for the pinned tag.
	want := map[string]struct{ repo, tag string }{
		"temporal-db":    {"postgres", `^16\.\d+`},
		"temporal":       {"temporalio/auto-setup", `^1\.\d+\.\d+$`},
		"temporal-setup": {"temporalio/admin-tools", `^1\.\d+\.\d+`},
		"temporal-ui":    {"temporalio/ui", `^2\.\d+\.\d+$`},
		"postgres":       {"postgres", `^15\.\d+`},
		"redis":          {"redis", `^7\.\d+`},
		"minio":          {"quay.io/minio/minio", `^RELEASE\.`},
		"minio-init":     {"quay.io/minio/mc", `^RELEASE\.`},
		"backup-s3":      {"quay.io/minio/minio", `^RELEASE\.`},
		"backup-s3-init": {"quay.io/minio/mc", `^RELEASE\.`},
	}

	for name, s := range p.Services {
		t.Run(name, func(t *testing.T) {
			if name == worker {
				require.NotNil(t, s.Build, "drflow-worker must be built from the repository")
				assert.Empty(t, s.Image, "drflow-worker is built, not pulled")
				assert.FileExists(t, filepath.Join(s.Build.Context, s.Build.Dockerfile))
				abs, err := filepath.Abs(repoRoot)
				require.NoError(t, err)
				assert.Equal(t, abs, filepath.Clean(s.Build.Context), "build context is the repository root")
				return
			}
			assert.Nil(t, s.Build, "only drflow-worker is built here")
			repo, tag := splitImage(s.Image)
			require.NotEmptyf(t, tag, "image %q has no tag", s.Image)
			assert.NotEqualf(t, "latest", tag, "image %q floats", s.Image)
			w, ok := want[name]
			require.Truef(t, ok, "no expected image for service %q: add it to the table", name)
			assert.Equal(t, w.repo, repo)
			assert.Regexp(t, w.tag, tag)
		})
	}
}

func TestComposePublishedPorts(t *testing.T) {
	p := loadCompose(t)

	type port struct {
		target    uint32
		published string
	}
	tests := []struct {
		service string
		want    []port
	}{
		{"temporal", []port{{7233, "7233"}}},
		{"temporal-ui", []port{{8080, "8233"}}},
		{worker, []port{{9090, "9090"}}},
		{"minio", []port{{9000, "9000"}, {9001, "9001"}}},
		{"backup-s3", []port{{9000, "9100"}, {9001, "9101"}}},
		// Data services and one-shots stay off the host.
		{"temporal-db", nil},
		{"postgres", nil},
		{"redis", nil},
		{"temporal-setup", nil},
		{"minio-init", nil},
		{"backup-s3-init", nil},
	}
	for _, tt := range tests {
		t.Run(tt.service, func(t *testing.T) {
			s := service(t, p, tt.service)
			var got []port
			for _, pc := range s.Ports {
				got = append(got, port{pc.Target, pc.Published})
				// Nothing here has a login of its own: loopback unless PUBLISH_IP says otherwise.
				assert.Equalf(t, "127.0.0.1", pc.HostIP, "%s port %d", tt.service, pc.Target)
				assert.Equal(t, "tcp", pc.Protocol)
			}
			assert.ElementsMatch(t, tt.want, got)
		})
	}

	t.Run("PUBLISH_IP", func(t *testing.T) {
		p := loadCompose(t, "PUBLISH_IP=0.0.0.0")
		for _, name := range []string{"temporal", "temporal-ui", worker, "minio", "backup-s3"} {
			for _, pc := range service(t, p, name).Ports {
				assert.Equalf(t, "0.0.0.0", pc.HostIP, "%s port %d", name, pc.Target)
			}
		}
	})

	t.Run("worker listens where it is published", func(t *testing.T) {
		s := service(t, p, worker)
		_, listen, err := net.SplitHostPort(env(t, s, "DRFLOW_HTTP_ADDR"))
		require.NoError(t, err)
		require.Len(t, s.Ports, 1)
		assert.Equal(t, strconv.Itoa(int(s.Ports[0].Target)), listen)
	})
}

func TestComposeStatefulServicesUseNamedVolumes(t *testing.T) {
	p := loadCompose(t)
	tests := []struct{ service, target string }{
		{"temporal-db", "/var/lib/postgresql/data"},
		{"postgres", "/var/lib/postgresql/data"},
		{"redis", "/data"},
		{"minio", "/data"},
		{"backup-s3", "/data"},
	}
	for _, tt := range tests {
		t.Run(tt.service, func(t *testing.T) {
			s := service(t, p, tt.service)
			i := slices.IndexFunc(s.Volumes, func(v types.ServiceVolumeConfig) bool { return v.Target == tt.target })
			require.GreaterOrEqualf(t, i, 0, "%s has no volume at %s", tt.service, tt.target)
			v := s.Volumes[i]
			assert.Equal(t, types.VolumeTypeVolume, v.Type, "a named volume, not a bind mount or anonymous volume")
			assert.Contains(t, p.Volumes, v.Source, "volume is declared at top level")
			assert.False(t, v.ReadOnly)
		})
	}

	t.Run("no two services share a data volume", func(t *testing.T) {
		owner := map[string]string{}
		for name, s := range p.Services {
			for _, v := range s.Volumes {
				if v.Type != types.VolumeTypeVolume {
					continue
				}
				prev, dup := owner[v.Source]
				assert.Falsef(t, dup, "volume %s mounted by %s and %s", v.Source, prev, name)
				owner[v.Source] = name
			}
		}
	})
}

// hasArgs reports whether cmd contains the consecutive arguments args.
func hasArgs(cmd []string, args ...string) bool {
	for i := 0; i+len(args) <= len(cmd); i++ {
		if slices.Equal(cmd[i:i+len(args)], args) {
			return true
		}
	}
	return false
}

func TestComposeRedisPersistence(t *testing.T) {
	s := service(t, loadCompose(t), "redis")
	tests := []struct {
		name string
		args []string
	}{
		{"AOF on", []string{"--appendonly", "yes"}},
		{"AOF fsync every second", []string{"--appendfsync", "everysec"}},
		{"data under the volume", []string{"--dir", "/data"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Truef(t, hasArgs(s.Command, tt.args...), "redis command %q lacks %q", s.Command, tt.args)
		})
	}
	t.Run("RDB snapshots not disabled", func(t *testing.T) {
		assert.False(t, hasArgs(s.Command, "--save", ""), "NightlyBackup copies dump.rdb")
	})
}

func TestComposeHealthchecks(t *testing.T) {
	p := loadCompose(t)

	// Long-running services and a fragment their check must contain.
	want := map[string]string{
		"temporal-db": "pg_isready",
		"postgres":    "pg_isready",
		"temporal":    "temporal operator cluster health",
		"temporal-ui": "/healthz",
		"redis":       "redis-cli ping",
		"minio":       "/minio/health/live",
		"backup-s3":   "/minio/health/live",
		worker:        "http://localhost:9090/healthz",
	}
	for name, s := range p.Services {
		t.Run(name, func(t *testing.T) {
			if slices.Contains(oneShots, name) {
				assert.Equal(t, "no", s.Restart, "a one-shot must not be restarted in a loop")
				return
			}
			assert.Contains(t, []string{"always", "unless-stopped"}, s.Restart, "restart policy")
			require.NotNil(t, s.HealthCheck, "long-running service without healthcheck")
			hc := s.HealthCheck
			assert.False(t, hc.Disable)
			require.NotEmpty(t, hc.Test)
			assert.Contains(t, []string{"CMD", "CMD-SHELL"}, hc.Test[0])
			frag, ok := want[name]
			require.Truef(t, ok, "no expected healthcheck for %q: add it to the table", name)
			assert.Contains(t, strings.Join(hc.Test[1:], " "), frag)
			for what, d := range map[string]*types.Duration{"interval": hc.Interval, "timeout": hc.Timeout} {
				if assert.NotNilf(t, d, "%s unset", what) {
					assert.Greaterf(t, time.Duration(*d), time.Duration(0), "%s", what)
				}
			}
		})
	}
}

func TestComposeDependencies(t *testing.T) {
	p := loadCompose(t)

	t.Run("worker", func(t *testing.T) {
		deps := service(t, p, worker).DependsOn
		tests := []struct{ dep, condition string }{
			{"temporal", types.ServiceConditionHealthy},
			{"postgres", types.ServiceConditionHealthy},
			{"redis", types.ServiceConditionHealthy},
			{"minio", types.ServiceConditionHealthy},
			{"backup-s3", types.ServiceConditionHealthy},
			{"temporal-setup", types.ServiceConditionCompletedSuccessfully},
			{"minio-init", types.ServiceConditionCompletedSuccessfully},
			{"backup-s3-init", types.ServiceConditionCompletedSuccessfully},
		}
		for _, tt := range tests {
			t.Run(tt.dep, func(t *testing.T) {
				d, ok := deps[tt.dep]
				require.Truef(t, ok, "drflow-worker does not depend on %s", tt.dep)
				assert.Equal(t, tt.condition, d.Condition)
				assert.True(t, d.Required)
			})
		}
	})

	t.Run("setup jobs wait for their server", func(t *testing.T) {
		for svc, dep := range map[string]string{
			"temporal":       "temporal-db",
			"temporal-setup": "temporal",
			"temporal-ui":    "temporal",
			"minio-init":     "minio",
			"backup-s3-init": "backup-s3",
		} {
			d, ok := service(t, p, svc).DependsOn[dep]
			if assert.Truef(t, ok, "%s does not depend on %s", svc, dep) {
				assert.Equalf(t, types.ServiceConditionHealthy, d.Condition, "%s -> %s", svc, dep)
			}
		}
	})

	// compose refuses to start a service_healthy dependency that has no healthcheck, and
	// waits forever on service_completed_successfully of a service that never exits.
	t.Run("conditions match the dependency", func(t *testing.T) {
		for name, s := range p.Services {
			for dep, d := range s.DependsOn {
				target := service(t, p, dep)
				switch d.Condition {
				case types.ServiceConditionHealthy:
					assert.NotNilf(t, target.HealthCheck, "%s waits for %s to be healthy; it has no healthcheck", name, dep)
				case types.ServiceConditionCompletedSuccessfully:
					assert.Containsf(t, oneShots, dep, "%s waits for %s to exit", name, dep)
				}
			}
		}
	})
}

// workerEnvRequired are the variables drflow reads in this deployment.
var workerEnvRequired = []string{
	"TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE",
	"DRFLOW_TASK_QUEUE", "DRFLOW_HTTP_ADDR",
	"DRFLOW_POSTGRES_URL", "DRFLOW_POSTGRES_DATABASES",
	"DRFLOW_REDIS_ADDR",
	"DRFLOW_MINIO_ENDPOINT", "DRFLOW_MINIO_ACCESS_KEY", "DRFLOW_MINIO_SECRET_KEY", "DRFLOW_MINIO_BUCKETS",
	"S3_BUCKET", "S3_ENDPOINT", "S3_REGION", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY",
	"S3_FORCE_PATH_STYLE", "S3_BACKUP_RETENTION",
}

func TestComposeWorkerEnvironment(t *testing.T) {
	p := loadCompose(t)
	s := service(t, p, worker)

	t.Run("required", func(t *testing.T) {
		for _, name := range workerEnvRequired {
			v, ok := s.Environment[name]
			if assert.Truef(t, ok && v != nil, "%s unset", name) {
				assert.NotEmptyf(t, *v, "%s empty", name)
			}
		}
	})

	t.Run("only drflow's prefixes", func(t *testing.T) {
		for name := range s.Environment {
			ok := strings.HasPrefix(name, "TEMPORAL_") || strings.HasPrefix(name, "DRFLOW_") || strings.HasPrefix(name, "S3_")
			assert.Truef(t, ok, "%s is not a drflow variable (TEMPORAL_*, DRFLOW_*, S3_*)", name)
		}
	})

	tests := []struct{ name, want string }{
		{"TEMPORAL_ADDRESS", "temporal:7233"},
		{"TEMPORAL_NAMESPACE", "default"},
		{"DRFLOW_TASK_QUEUE", "drflow"},
		{"DRFLOW_HTTP_ADDR", "0.0.0.0:9090"},
		{"DRFLOW_POSTGRES_DATABASES", "kohakku-controller,kohakku-dispatcher"},
		{"DRFLOW_REDIS_ADDR", "redis:6379"},
		{"DRFLOW_MINIO_ENDPOINT", "minio:9000"},
		{"DRFLOW_MINIO_BUCKETS", "kohakku"},
		{"S3_BUCKET", "drflow-backups"},
		{"S3_ENDPOINT", "http://backup-s3:9000"},
		{"S3_REGION", "us-east-1"},
		{"S3_FORCE_PATH_STYLE", "true"},
		{"S3_BACKUP_RETENTION", "7"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, env(t, s, tt.name))
		})
	}

	t.Run("DRFLOW_POSTGRES_URL", func(t *testing.T) {
		u, err := url.Parse(env(t, s, "DRFLOW_POSTGRES_URL"))
		require.NoError(t, err)
		assert.Equal(t, "postgres", u.Scheme)
		assert.Equal(t, "postgres:5432", u.Host)
		assert.Contains(t, []string{"", "/"}, u.Path, "databases come from DRFLOW_POSTGRES_DATABASES")
		assert.Equal(t, "disable", u.Query().Get("sslmode"))
		pg := service(t, p, "postgres")
		assert.Equal(t, env(t, pg, "POSTGRES_USER"), u.User.Username())
		pw, _ := u.User.Password()
		assert.Equal(t, env(t, pg, "POSTGRES_PASSWORD"), pw)
	})

	t.Run("command", func(t *testing.T) {
		assert.Equal(t, types.ShellCommand{"worker"}, s.Command)
		assert.NotContains(t, s.Command, "--dev", "the compose worker uses the temporal service, not an embedded server")
	})
}

// TestComposeWiring checks that what the worker is told matches what the other services
// actually are: the same credentials, and the databases and buckets that get created.
func TestComposeWiring(t *testing.T) {
	p := loadCompose(t)
	w := service(t, p, worker)
	minio := service(t, p, "minio")
	backup := service(t, p, "backup-s3")

	tests := []struct{ name, got, want string }{
		{"MinIO access key", env(t, w, "DRFLOW_MINIO_ACCESS_KEY"), env(t, minio, "MINIO_ROOT_USER")},
		{"MinIO secret key", env(t, w, "DRFLOW_MINIO_SECRET_KEY"), env(t, minio, "MINIO_ROOT_PASSWORD")},
		{"S3 access key", env(t, w, "S3_ACCESS_KEY_ID"), env(t, backup, "MINIO_ROOT_USER")},
		{"S3 secret key", env(t, w, "S3_SECRET_ACCESS_KEY"), env(t, backup, "MINIO_ROOT_PASSWORD")},
		{"minio-init access key", env(t, service(t, p, "minio-init"), "ACCESS_KEY"), env(t, minio, "MINIO_ROOT_USER")},
		{"minio-init secret key", env(t, service(t, p, "minio-init"), "SECRET_KEY"), env(t, minio, "MINIO_ROOT_PASSWORD")},
		{"backup-s3-init access key", env(t, service(t, p, "backup-s3-init"), "ACCESS_KEY"), env(t, backup, "MINIO_ROOT_USER")},
		{"backup-s3-init secret key", env(t, service(t, p, "backup-s3-init"), "SECRET_KEY"), env(t, backup, "MINIO_ROOT_PASSWORD")},
		{"temporal DB user", env(t, service(t, p, "temporal"), "POSTGRES_USER"), env(t, service(t, p, "temporal-db"), "POSTGRES_USER")},
		{"temporal DB password", env(t, service(t, p, "temporal"), "POSTGRES_PWD"), env(t, service(t, p, "temporal-db"), "POSTGRES_PASSWORD")},
		{"temporal DB host", env(t, service(t, p, "temporal"), "POSTGRES_SEEDS"), "temporal-db"},
		{"temporal DB plugin", env(t, service(t, p, "temporal"), "DB"), "postgres12"},
		{"UI talks to drflow's Temporal", env(t, service(t, p, "temporal-ui"), "TEMPORAL_ADDRESS"), env(t, w, "TEMPORAL_ADDRESS")},
		{"setup talks to drflow's Temporal", env(t, service(t, p, "temporal-setup"), "TEMPORAL_ADDRESS"), env(t, w, "TEMPORAL_ADDRESS")},
		{"setup configures the worker's namespace", env(t, service(t, p, "temporal-setup"), "NAMESPACE"), env(t, w, "TEMPORAL_NAMESPACE")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, tt.got)
		})
	}

	t.Run("every database is created", func(t *testing.T) {
		pg := service(t, p, "postgres")
		initSQL := initScripts(t, p, pg)
		for db := range strings.SplitSeq(env(t, w, "DRFLOW_POSTGRES_DATABASES"), ",") {
			created := env(t, pg, "POSTGRES_DB") == db ||
				strings.Contains(initSQL, `CREATE DATABASE "`+db+`"`)
			assert.Truef(t, created, "database %s is never created", db)
		}
	})

	t.Run("every bucket is created", func(t *testing.T) {
		mb := regexp.MustCompile(`mc mb --ignore-existing \w+/([a-z0-9.-]+)`)
		created := map[string][]string{}
		for _, job := range []string{"minio-init", "backup-s3-init"} {
			for _, m := range mb.FindAllStringSubmatch(strings.Join(service(t, p, job).Command, " "), -1) {
				created[job] = append(created[job], m[1])
			}
		}
		for b := range strings.SplitSeq(env(t, w, "DRFLOW_MINIO_BUCKETS"), ",") {
			assert.Containsf(t, created["minio-init"], b, "app bucket %s is never created", b)
		}
		assert.Contains(t, created["backup-s3-init"], env(t, w, "S3_BUCKET"), "backup bucket is never created")
	})
}

// initScripts returns the content of every compose config mounted into the postgres
// image's init directory.
func initScripts(t *testing.T, p *types.Project, pg types.ServiceConfig) string {
	t.Helper()
	var sb strings.Builder
	for _, c := range pg.Configs {
		if !strings.HasPrefix(c.Target, "/docker-entrypoint-initdb.d/") {
			continue
		}
		cfg, ok := p.Configs[c.Source]
		require.Truef(t, ok, "config %s is not declared", c.Source)
		sb.WriteString(cfg.Content)
	}
	return sb.String()
}

// Secrets come from interpolation, with defaults that say they are demo values.
func TestComposeSecrets(t *testing.T) {
	raw, err := os.ReadFile(composeFile)
	require.NoError(t, err)

	// Every variable the file interpolates, and each use without a default.
	ref := regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?+][^}]*)?\}`)
	vars := map[string]bool{}
	var noDefault []string
	for _, m := range ref.FindAllStringSubmatch(string(raw), -1) {
		vars[m[1]] = true
		if !strings.HasPrefix(m[2], ":-") {
			noDefault = append(noDefault, m[0])
		}
	}
	require.NotEmpty(t, vars)

	t.Run("every use has a default", func(t *testing.T) {
		assert.Empty(t, noDefault, "`docker compose up` without an .env file needs a :- default on each of these")
	})

	t.Run("every variable is documented in the header", func(t *testing.T) {
		header := leadingComment(string(raw))
		for v := range vars {
			assert.Containsf(t, header, v, "%s is not listed in the header comment", v)
		}
	})

	secret := regexp.MustCompile(`PASSWORD|PWD|SECRET|ACCESS_KEY`)
	secrets := func(p *types.Project) map[string]string {
		out := map[string]string{}
		for name, s := range p.Services {
			for k, v := range s.Environment {
				if v != nil && (secret.MatchString(k) || k == "DRFLOW_POSTGRES_URL") {
					out[name+"."+k] = *v
				}
			}
		}
		return out
	}

	t.Run("defaults are marked demo", func(t *testing.T) {
		got := secrets(loadCompose(t))
		require.NotEmpty(t, got)
		for k, v := range got {
			assert.Containsf(t, v, "demo", "%s default is not marked as a demo value", k)
		}
	})

	t.Run(".env overrides every secret", func(t *testing.T) {
		var overrides []string
		for v := range vars {
			if v != "PUBLISH_IP" && v != "TEMPORAL_NAMESPACE_RETENTION" {
				overrides = append(overrides, v+"=from-env-"+strings.ToLower(v))
			}
		}
		for k, v := range secrets(loadCompose(t, overrides...)) {
			assert.NotContainsf(t, v, "demo", "%s is hardcoded, not taken from the environment", k)
		}
	})
}

// leadingComment returns the comment block at the top of a YAML file.
func leadingComment(s string) string {
	var sb strings.Builder
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line != "" && !strings.HasPrefix(line, "#") {
			break
		}
		sb.WriteString(line)
		sb.WriteByte('\n')
	}
	return sb.String()
}

func TestComposeHeaderWarnsAboutRecoveringItsOwnTemporal(t *testing.T) {
	raw, err := os.ReadFile(composeFile)
	require.NoError(t, err)
	header := strings.ToLower(leadingComment(string(raw)))
	assert.Contains(t, header, "not the cluster it recovers")
	assert.Contains(t, header, ".env")
}

// parseRetention parses a Temporal retention: a Go duration that may also use "d" (24h).
func parseRetention(s string) (time.Duration, error) {
	days := regexp.MustCompile(`(\d+)d`)
	s = days.ReplaceAllStringFunc(s, func(m string) string {
		n, _ := strconv.Atoi(strings.TrimSuffix(m, "d"))
		return strconv.Itoa(24*n) + "h"
	})
	return time.ParseDuration(s)
}

func TestParseRetention(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		err  bool
	}{
		{"30d", 30 * 24 * time.Hour, false},
		{"720h", 720 * time.Hour, false},
		{"1d12h", 36 * time.Hour, false},
		{"30", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseRetention(tt.in)
			if tt.err {
				assert.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestComposeTemporalRetention(t *testing.T) {
	const minRetention = 30 * 24 * time.Hour
	p := loadCompose(t)
	setup := service(t, p, "temporal-setup")
	tests := []struct{ name, value string }{
		{"auto-setup creates the namespace with it", env(t, service(t, p, "temporal"), "DEFAULT_NAMESPACE_RETENTION")},
		{"temporal-setup re-applies it", env(t, setup, "NAMESPACE_RETENTION")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := parseRetention(tt.value)
			require.NoError(t, err)
			assert.GreaterOrEqual(t, d, minRetention, "retention %s is shorter than 30 days", tt.value)
		})
	}
	t.Run("namespace update uses it", func(t *testing.T) {
		script := strings.Join(setup.Command, " ")
		assert.Regexp(t, `temporal operator namespace update .*--retention "\$NAMESPACE_RETENTION"`, script)
	})
	t.Run("auto-setup namespace is the worker's", func(t *testing.T) {
		assert.Equal(t, env(t, service(t, p, worker), "TEMPORAL_NAMESPACE"), env(t, service(t, p, "temporal"), "DEFAULT_NAMESPACE"))
	})
}

func TestComposeSearchAttributes(t *testing.T) {
	setup := service(t, loadCompose(t), "temporal-setup")
	script := strings.Join(append(slices.Clone(setup.Entrypoint), setup.Command...), " ")
	require.Contains(t, script, "temporal operator search-attribute create")

	tests := []struct{ name, typ string }{
		{"DrRunbook", "Keyword"},
		{"DrTarget", "Keyword"},
		{"DrDrill", "Bool"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			re := `--name\s+` + tt.name + `\s+--type\s+` + tt.typ + `\b`
			assert.Regexpf(t, re, script, "%s is not registered as %s", tt.name, tt.typ)
		})
	}
	t.Run("exits on the first error", func(t *testing.T) {
		assert.Contains(t, script, "set -eu")
	})
}

// instruction is one Dockerfile instruction with its continuation lines joined.
type instruction struct {
	cmd  string // upper case: FROM, RUN, …
	args string
}

// parseDockerfile splits a Dockerfile into instructions: comment lines (also those inside
// a continuation) are dropped and "\" continuations joined, as BuildKit does.
func parseDockerfile(t *testing.T, path string) []instruction {
	t.Helper()
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	var out []instruction
	var cur strings.Builder
	for line := range strings.SplitSeq(string(raw), "\n") {
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		if s, ok := strings.CutSuffix(trimmed, `\`); ok {
			cur.WriteString(s)
			cur.WriteByte(' ')
			continue
		}
		cur.WriteString(trimmed)
		cmd, args, _ := strings.Cut(cur.String(), " ")
		out = append(out, instruction{strings.ToUpper(cmd), strings.TrimSpace(args)})
		cur.Reset()
	}
	require.Empty(t, strings.TrimSpace(cur.String()), "Dockerfile ends inside a continuation")
	return out
}

// stages groups instructions by build stage, in order.
func stages(ins []instruction) [][]instruction {
	var out [][]instruction
	for _, in := range ins {
		if in.cmd == "FROM" {
			out = append(out, nil)
		}
		if len(out) > 0 {
			out[len(out)-1] = append(out[len(out)-1], in)
		}
	}
	return out
}

func TestDockerfile(t *testing.T) {
	st := stages(parseDockerfile(t, dockerfile))
	require.Len(t, st, 2, "a build stage and a runtime stage")
	build, runtime := st[0], st[1]

	t.Run("build stage", func(t *testing.T) {
		assert.Regexp(t, `^golang:1\.26\S* AS build$`, build[0].args)
		var envs, runs []string
		for _, in := range build {
			switch in.cmd {
			case "ENV":
				envs = append(envs, in.args)
			case "RUN":
				runs = append(runs, in.args)
			}
		}
		assert.Contains(t, strings.Join(envs, " "), "GOTOOLCHAIN=auto", "go.mod needs a newer toolchain than the image may have")

		// Each `go build` with its output and package, e.g. "-o /out/worker ./worker".
		goBuild := regexp.MustCompile(`(CGO_ENABLED=0 )?go build [^&;]*?-o (\S+) (\./\S+)`)
		built := map[string]string{}
		for _, m := range goBuild.FindAllStringSubmatch(strings.Join(runs, " "), -1) {
			assert.NotEmptyf(t, m[1], "go build %s without CGO_ENABLED=0", m[3])
			built[m[3]] = m[2]
		}
		tests := []struct{ pkg, out string }{
			{"./worker", "/out/worker"},
			{"./starter", "/out/starter"},
		}
		for _, tt := range tests {
			t.Run(tt.pkg, func(t *testing.T) {
				assert.Equalf(t, tt.out, built[tt.pkg], "%s is not built to %s", tt.pkg, tt.out)
				assert.DirExists(t, filepath.Join(repoRoot, tt.pkg), "package directory")
			})
		}
	})

	t.Run("runtime stage", func(t *testing.T) {
		assert.Equal(t, "debian:bookworm-slim", runtime[0].args)
		var runs, copies, user, cmd, entrypoint string
		for _, in := range runtime {
			switch in.cmd {
			case "RUN":
				runs += in.args + " "
			case "COPY":
				copies += in.args + "\n"
			case "USER":
				user = in.args
			case "CMD":
				cmd = in.args
			case "ENTRYPOINT":
				entrypoint = in.args
			}
		}
		for _, pkg := range []string{"postgresql-client-15", "redis-tools", "ca-certificates", "curl"} {
			assert.Regexpf(t, `apt-get install [^&;]*\b`+regexp.QuoteMeta(pkg)+`\b`, runs, "%s is not installed", pkg)
		}
		assert.Regexp(t, `--from=build /out/worker /out/starter /usr/local/bin/`, copies)
		require.NotEmpty(t, user, "runs as root")
		name, _, _ := strings.Cut(user, ":")
		assert.NotContains(t, []string{"root", "0"}, name, "runs as root")
		// compose says `command: worker`: with no ENTRYPOINT that is the binary on PATH.
		assert.Empty(t, entrypoint, "an ENTRYPOINT would swallow `command: worker` as its argument")
		assert.Equal(t, `["worker"]`, cmd)
	})
}

func TestDockerignore(t *testing.T) {
	raw, err := os.ReadFile(dockerignore)
	require.NoError(t, err)
	patterns := map[string]bool{}
	for line := range strings.SplitSeq(string(raw), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		patterns[strings.TrimSuffix(strings.TrimPrefix(line, "/"), "/")] = true
	}
	for _, p := range []string{"bin", ".drflow", ".git", ".env"} {
		t.Run(p, func(t *testing.T) {
			assert.Truef(t, patterns[p], ".dockerignore does not exclude %s", p)
		})
	}
	t.Run("keeps what the build needs", func(t *testing.T) {
		for _, keep := range []string{"go.mod", "go.sum", "worker", "starter", "*", "*.go"} {
			assert.Falsef(t, patterns[keep], ".dockerignore excludes %s, which the build needs", keep)
		}
	})
}
