package config

import (
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/contrib/envconfig"
)

// The tests in this file keep docs/configuration.md and the environment the code reads
// in step, in both directions. The names the code reads are taken from the code itself
// (Load is run with a getenv that records every name it asks for), never from a list
// kept by hand, so a variable added to the table below Load is checked at once.

const configDoc = "../../docs/configuration.md"

// envNameRE matches what looks like an environment variable in the doc: upper case
// words joined by underscores, optionally ending in "_*" for a family of names.
var envNameRE = regexp.MustCompile(`\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+(?:_\*)?`)

// ownPrefixes are the prefixes of the names drflow's configuration owns: a documented
// name with one of them must be read by the code (or be a Temporal SDK name the doc says
// drflow does not read).
var ownPrefixes = []string{"DRFLOW_", "S3_", "TEMPORAL_"}

// foreignNames are names the doc may mention although drflow's configuration does not
// read them, each with who does. The credential variables hooks never inherit are added
// from SecretVariables, and the Temporal SDK's own names from temporalSDKNames.
var foreignNames = map[string]string{
	"AWS_ACCESS_KEY_ID": "read by the AWS SDK's default credential chain when S3_ACCESS_KEY_ID is unset (internal/store)",
	"AWS_PROFILE":       "read by the AWS SDK's default credential chain when S3_ACCESS_KEY_ID is unset (internal/store)",
	"XDG_CONFIG_HOME":   "read by os.UserConfigDir for the default Temporal client config file (envconfig.DefaultConfigFilePath)",
}

// envReadByCode returns every environment variable the configuration code reads: the
// names Load asks its getenv for, and FileEnv, which the binaries and FromEnvironment read
// before calling Load.
func envReadByCode(t *testing.T) map[string]bool {
	t.Helper()
	read := map[string]bool{FileEnv: true}
	_, err := Load("", func(name string) string {
		read[name] = true
		return ""
	})
	require.NoError(t, err, "Load with an empty environment")
	return read
}

// temporalSDKNames returns the environment variables the Temporal SDK's envconfig
// package reads (it applies them on top of a client config profile), found by running
// it against a recording environment. The gRPC metadata variables are a family the SDK
// finds by scanning the environment; it is returned as "TEMPORAL_GRPC_META_*" when a
// probe variable of that family reaches the profile.
func temporalSDKNames(t *testing.T) map[string]bool {
	t.Helper()
	env := &recordingEnv{names: map[string]bool{}, environ: []string{"TEMPORAL_GRPC_META_DRFLOW_PROBE=1"}}
	var prof envconfig.ClientConfigProfile
	require.NoError(t, prof.ApplyEnvVars(env))
	if len(prof.GRPCMeta) > 0 {
		env.names["TEMPORAL_GRPC_META_*"] = true
	}
	require.NotEmpty(t, env.names, "the Temporal SDK read no variable: has envconfig changed?")
	return env.names
}

type recordingEnv struct {
	names   map[string]bool
	environ []string
}

func (e *recordingEnv) Environ() []string { return e.environ }
func (e *recordingEnv) LookupEnv(name string) (string, bool) {
	e.names[name] = true
	return "", false
}

// covers reports whether name, or a family "X_*" in names, covers want.
func covers(names map[string]bool, want string) bool {
	if names[want] {
		return true
	}
	for n := range names {
		if p, ok := strings.CutSuffix(n, "*"); ok && strings.HasPrefix(want, p) {
			return true
		}
	}
	return false
}

// docRows returns the variable named in the first cell of each table row, and the row.
func docRows(doc string) map[string]string {
	rows := map[string]string{}
	for _, line := range strings.Split(doc, "\n") {
		if rest, ok := strings.CutPrefix(line, "| `"); ok {
			if name, _, ok := strings.Cut(rest, "`"); ok && envNameRE.FindString(name) == name {
				rows[name] = line
			}
		}
	}
	return rows
}

// notReadSentence returns the names in the doc's sentence that says which Temporal SDK
// variables drflow does not read: from "does not read" to the end of the clause.
func notReadSentence(t *testing.T, doc string) map[string]bool {
	t.Helper()
	_, rest, ok := strings.Cut(strings.Join(strings.Fields(doc), " "), "drflow does not read ")
	require.True(t, ok, `%s says nowhere "drflow does not read …" for the Temporal SDK variables it ignores`, configDoc)
	clause, _, _ := strings.Cut(rest, ";")
	names := map[string]bool{}
	for _, n := range envNameRE.FindAllString(clause, -1) {
		names[n] = true
	}
	return names
}

// TestConfigDocListsEveryVariableRead: every variable the configuration code reads has
// a row of its own in the doc's tables.
func TestConfigDocListsEveryVariableRead(t *testing.T) {
	doc, err := os.ReadFile(configDoc)
	require.NoError(t, err)
	rows := docRows(string(doc))
	read := envReadByCode(t)

	// The recorder and the table agree: nothing is read outside the table but FileEnv.
	var table []string
	for _, v := range variables {
		table = append(table, v.env)
	}
	assert.ElementsMatch(t, append(table, FileEnv), sortedNames(read), "variables Load reads vs the variables table")

	for _, name := range sortedNames(read) {
		t.Run(name, func(t *testing.T) {
			_, ok := rows[name]
			assert.True(t, ok, "internal/config reads %s, but %s has no table row for it", name, configDoc)
		})
	}
}

// TestConfigDocNamesOnlyVariablesRead: every name in the doc that looks like one of
// drflow's variables is one the code reads; the Temporal SDK variables drflow ignores
// are all named as such; other names are known to be read by a library drflow uses.
func TestConfigDocNamesOnlyVariablesRead(t *testing.T) {
	raw, err := os.ReadFile(configDoc)
	require.NoError(t, err)
	doc := string(raw)
	read := envReadByCode(t)
	sdk := temporalSDKNames(t)
	notRead := notReadSentence(t, doc)

	// Every SDK variable drflow does not read is named in the "does not read" sentence,
	// and that sentence names nothing else.
	for _, name := range sortedNames(sdk) {
		if !covers(read, name) {
			assert.True(t, covers(notRead, name), "the Temporal SDK reads %s and drflow does not: say so in the \"drflow does not read\" sentence of %s", name, configDoc)
		}
	}
	for _, name := range sortedNames(notRead) {
		family := map[string]bool{name: true}
		for _, r := range sortedNames(read) {
			assert.False(t, covers(family, r), "%s says drflow does not read %s, but it reads %s", configDoc, name, r)
		}
		assert.True(t, slices.ContainsFunc(sortedNames(sdk), func(s string) bool { return covers(family, s) }),
			"%s names %s as a Temporal SDK variable drflow does not read, but the SDK does not read it either", configDoc, name)
	}

	foreign := map[string]string{}
	for name, who := range foreignNames {
		foreign[name] = who
	}
	for _, name := range SecretVariables() {
		if !read[name] {
			foreign[name] = "a credential hook commands do not inherit (SecretVariables)"
		}
	}

	rows := docRows(doc)
	for name := range rows {
		assert.True(t, read[name], "%s has a table row for %s, which the code does not read", configDoc, name)
	}
	seen := map[string]bool{}
	for _, name := range envNameRE.FindAllString(doc, -1) {
		if seen[name] {
			continue
		}
		seen[name] = true
		own := slices.ContainsFunc(ownPrefixes, func(p string) bool { return strings.HasPrefix(name, p) })
		switch {
		case read[name]:
		case strings.HasSuffix(name, "_*") && slices.ContainsFunc(sortedNames(read), func(r string) bool { return covers(map[string]bool{name: true}, r) }):
			// A family such as TEMPORAL_TLS_*: some of its members are read.
		case own && notRead[name]:
		case own:
			t.Errorf("%s names %s, which the code does not read (a typo, or a variable that was removed?)", configDoc, name)
		case foreign[name] != "":
		default:
			t.Errorf("%s names %s, which neither drflow nor a library it uses reads; if one does, add it to foreignNames with who reads it", configDoc, name)
		}
	}
}

// TestConfigDocHookCredentials: the doc's list of the credential variables hook
// commands do not inherit is exactly SecretVariables.
func TestConfigDocHookCredentials(t *testing.T) {
	raw, err := os.ReadFile(configDoc)
	require.NoError(t, err)
	text := strings.Join(strings.Fields(string(raw)), " ")
	_, rest, ok := strings.Cut(text, "Hook commands do not inherit drflow's own credential variables (")
	require.True(t, ok, "%s lists the credential variables hook commands do not inherit", configDoc)
	list, _, ok := strings.Cut(rest, ")")
	require.True(t, ok)
	got := envNameRE.FindAllString(list, -1)
	got = append(got, regexp.MustCompile(`\b[A-Z]{4,}\b`).FindAllString(list, -1)...) // PGPASSWORD has no underscore
	slices.Sort(got)
	want := SecretVariables()
	sort.Strings(want)
	assert.Equal(t, want, slices.Compact(got))
}

func sortedNames(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for n := range m {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
