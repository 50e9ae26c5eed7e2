package config

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestPostgresPasswordNeverShown: whatever shape DRFLOW_POSTGRES_URL has — valid,
// mis-escaped, with the password in the query or in another credential parameter — the
// password is either kept as a Secret or the value is refused, and no part of it shows in
// the error, in any printed form of the Config or in Redacted.
func TestPostgresPasswordNeverShown(t *testing.T) {
	const a, b = "Pw1xq", "Zk9vr" // the two halves of the password; neither may show
	for _, raw := range []string{
		"postgres://u:" + a + b + "@db/",
		"postgres://u:" + a + "%2F" + b + "@db/",
		"postgres://u:" + a + "@" + b + "@db/", // the last @ ends the user info
		"postgres://u@db/?password=" + a + b,
		"postgres://u:" + a + "/" + b + "@db/", // unescaped /: no port, does not parse
		"postgres://u:1234/" + a + b + "@db/",  // unescaped / after digits: parses, as a port and a path
		"postgres://u:1234?" + a + b + "@db/",  // the same with ?: a port and a query
		"postgres://u:1234/?" + a + b + "@db/",
		"postgres://u:" + a + "#" + b + "@db/",
		"postgres://u:" + a + b + "@db/?sslpassword=" + a + b,
		"postgres://u@db/?sslmode=verify-full&SSLPassword=" + a + b,
		"postgres://u:" + a + b + "@db:99999/",
		"postgres://u:" + a + b + "@[::1/",
		"postgres://u:" + a + b + "@/?sslmode=disable",
		"mysql://u:" + a + b + "@db/",
	} {
		t.Run(raw, func(t *testing.T) {
			c, err := Load("", env(map[string]string{"DRFLOW_POSTGRES_URL": raw}))
			var shown string
			if err != nil {
				shown = err.Error()
			} else {
				j, jerr := json.Marshal(c)
				assert.NoError(t, jerr)
				var log strings.Builder
				slog.New(slog.NewTextHandler(&log, nil)).Info("config", "config", c, "postgres", c.Postgres.Redacted())
				shown = fmt.Sprintf("%v %+v %#v %s %s %s", c, c, c, j, c.Postgres.Redacted(), log.String())
				assert.Contains(t, c.Postgres.Password.Reveal(), a, "kept as the Secret")
			}
			t.Log(shown[:min(len(shown), 300)])
			for _, part := range []string{a, b} {
				assert.NotContains(t, shown, part)
			}
		})
	}
}
