package activities_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	tlog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/testsuite"

	"github.com/kohakku/drflow/activities"
	"github.com/kohakku/drflow/internal/config"
	"github.com/kohakku/drflow/internal/profile"
	"github.com/kohakku/drflow/internal/store"
)

// connectMarker is a password that must never show: it holds every character that a
// URL escapes, and its first four letters appear in no other text.
const connectMarker = "Mk3r p@ss/w?rd&=x#y:z"

// TestConnectFailuresHideThePassword runs every activity that connects to PostgreSQL or
// Redis against a closed port, and against a URL that pgx refuses to parse, with
// connectMarker as the password: no error, in any form Temporal records, and no log
// line may show it. Needs no server.
func TestConnectFailuresHideThePassword(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closed := l.Addr().String()
	require.NoError(t, l.Close())

	fs, err := store.NewFS(t.TempDir())
	require.NoError(t, err)
	const dump = "not a dump"
	sum := sha256.Sum256([]byte(dump))
	art := activities.Artifact{Kind: "postgres", Source: "db", Key: "sets/s/postgres/db.dump.zst", Compression: "zstd",
		Size: int64(len(dump)), SHA256: hex.EncodeToString(sum[:])}
	_, err = fs.Put(context.Background(), art.Key, strings.NewReader(dump), store.PutOptions{})
	require.NoError(t, err)

	userinfo := url.UserPassword("drflow", connectMarker).String()
	urls := map[string]string{
		"closed port": "postgres://" + userinfo + "@" + closed + "/?sslmode=disable&connect_timeout=5",
		"pgx parse":   "postgres://" + userinfo + "@" + closed + "/?sslmode=bogus",
		"query pw":    "postgres://drflow@" + closed + "/?sslmode=disable&password=" + url.QueryEscape(connectMarker),
		"bad timeout": "postgres://" + userinfo + "@" + closed + "/?connect_timeout=soon",
		"two hosts":   "postgres://" + userinfo + "@" + closed + ",127.0.0.1:1/?connect_timeout=5",
	}
	for name, raw := range urls {
		cfg, err := config.Load("", func(k string) string {
			return map[string]string{"DRFLOW_POSTGRES_URL": raw, "DRFLOW_REDIS_ADDR": closed, "DRFLOW_REDIS_PASSWORD": connectMarker}[k]
		})
		require.NoError(t, err, name)
		require.Equal(t, connectMarker, cfg.Postgres.Password.Reveal(), name)
		pg := &activities.Postgres{Config: cfg.Postgres, Store: fs}
		as := &activities.AppState{Profile: profile.Kohakku{}, Postgres: cfg.Postgres, Redis: cfg.Redis, Instance: "default"}
		rd := &activities.Redis{Config: cfg.Redis, Store: fs, Instance: "default"}
		calls := []struct {
			name string
			reg  any
			fn   any
			in   []any
		}{
			{"Dump", pg, pg.Dump, []any{activities.DumpInput{Database: "db", Key: "sets/t/postgres/db.dump.zst"}}},
			{"RestoreDatabase", pg, pg.RestoreDatabase, []any{activities.RestoreDatabaseInput{SetID: "s", Artifact: art, Target: "db"}}},
			{"InspectDatabase", pg, pg.InspectDatabase, []any{activities.InspectDatabaseInput{Database: "db"}}},
			{"PlanTableRestore", pg, pg.PlanTableRestore, []any{activities.PlanTableRestoreInput{SetID: "s", Artifact: art, Database: "db", Tables: []string{"t"}, Scratch: "drflow_verify_t"}}},
			{"RestoreTablesSide", pg, pg.RestoreTablesSide, []any{activities.RestoreTablesSideInput{SetID: "s", Artifact: art, Database: "db", Tables: []string{"t"}, Scratch: "drflow_verify_t", SideSchema: "drflow_restore_t"}}},
			{"ReplaceTables", pg, pg.ReplaceTables, []any{activities.ReplaceTablesInput{Database: "db", Tables: []string{"t"}, SideSchema: "drflow_restore_t"}}},
			{"CompareTables", pg, pg.CompareTables, []any{activities.CompareTablesInput{Database: "db", Tables: []string{"t"}, SideSchema: "drflow_restore_t"}}},
			// VerifyDump decodes the archive before it connects; its connect is DropScratch's.
			{"DropScratch", pg, pg.DropScratch, []any{activities.DropScratchInput{Database: "drflow_verify_t"}}},
			{"CheckRedis", as, as.CheckRedis, nil},
			{"PlanRedisRebuild", as, as.PlanRedisRebuild, nil},
			{"RebuildRedis", as, as.RebuildRedis, nil},
			{"VerifyRedisState", as, as.VerifyRedisState, nil},
			{"RequeueLost", as, as.RequeueLost, []any{activities.LostTasksInput{RecoveryID: "r", LostAfter: time.Minute, Batch: 10}}},
			{"TrackRequeued", as, as.TrackRequeued, []any{activities.TrackInput{RecoveryID: "r"}}},
			{"CleanupAgents", as, as.CleanupAgents, []any{activities.LostTasksInput{RecoveryID: "r", LostAfter: time.Minute, Batch: 10}}},
			{"LatestGeneration", as, as.LatestGeneration, nil},
			{"DumpRDB", rd, rd.DumpRDB, []any{activities.RDBInput{SetID: "s", Instance: "default", Key: "sets/s/redis/default.rdb.zst"}}},
		}
		for _, c := range calls {
			t.Run(name+"/"+c.name, func(t *testing.T) {
				var logs bytes.Buffer
				var s testsuite.WorkflowTestSuite
				s.SetLogger(tlog.NewStructuredLogger(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))))
				env := s.NewTestActivityEnvironment()
				env.RegisterActivity(c.reg)
				env.SetTestTimeout(30 * time.Second)
				v, err := env.ExecuteActivity(c.fn, c.in...)
				text := allText(err) + logs.String()
				if err == nil {
					// Some report an unreachable server in their result.
					var res json.RawMessage
					if v != nil && v.HasValue() {
						require.NoError(t, v.Get(&res))
					}
					text += string(res)
					t.Logf("result: %s", res)
				}
				t.Logf("error: %v", err)
				assert.Regexp(t, closed+"|cannot parse|not a valid PostgreSQL URL", text, "it tried to connect")
				assert.NotContains(t, text, "Mk3r", "the password, in any form")
			})
		}
	}
}
