package schemas_test

import (
	"encoding/json"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kohakku/drflow/activities"
	"github.com/kohakku/drflow/schemas"
)

// jsonFields returns the JSON names of t's fields.
func jsonFields(t reflect.Type) []string {
	var out []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

func schemaProps(t *testing.T, node map[string]any) []string {
	t.Helper()
	props, ok := node["properties"].(map[string]any)
	require.True(t, ok)
	var out []string
	for k := range props {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// TestManifestSchemaMatchesStructs: every field of the Go types is in the schema and the
// schema has no field the code does not write.
func TestManifestSchemaMatchesStructs(t *testing.T) {
	raw, err := schemas.JSONSchemas.ReadFile(schemas.ManifestSchemaFile)
	require.NoError(t, err)
	var doc map[string]any
	require.NoError(t, json.Unmarshal(raw, &doc))
	defs := doc["$defs"].(map[string]any)
	assert.Equal(t, jsonFields(reflect.TypeFor[activities.Manifest]()), schemaProps(t, doc), "manifest")
	assert.Equal(t, jsonFields(reflect.TypeFor[activities.Artifact]()), schemaProps(t, defs["artifact"].(map[string]any)), "artifact")
	assert.Equal(t, jsonFields(reflect.TypeFor[activities.MirrorResult]()), schemaProps(t, defs["mirror"].(map[string]any)), "mirror")
}

func TestManifestValidation(t *testing.T) {
	now := time.Date(2026, 11, 21, 2, 0, 0, 0, time.UTC)
	art := activities.Artifact{Kind: activities.KindPostgres, Source: "kohakku-controller", Key: "sets/x/postgres/a.dump.zst",
		Size: 10, RawSize: 20, SHA256: strings.Repeat("ab", 32), Compression: "zstd", Encryption: "none",
		RowCounts: map[string]int64{"tasks_task": 3}, StartedAt: now, Duration: time.Second}
	good := activities.Manifest{Version: 1, SetID: "2026-11-21T02-00-00Z", CreatedAt: now, CompletedAt: now,
		WorkflowID: "nightly", RunID: "r", Artifacts: []activities.Artifact{art},
		Mirrors: []activities.MirrorResult{{Bucket: "kohakku", Prefix: "mirror/kohakku/", Listing: art}}}
	b, err := json.Marshal(good)
	require.NoError(t, err)
	require.NoError(t, schemas.Validate(schemas.ManifestSchemaFile, b))

	tests := []struct {
		name   string
		mutate func(m *activities.Manifest)
		want   string
	}{
		{"bad set id", func(m *activities.Manifest) { m.SetID = "yesterday" }, "/setId"},
		{"unknown kind", func(m *activities.Manifest) { m.Artifacts[0].Kind = "mysql" }, "/artifacts/0/kind"},
		{"bad checksum", func(m *activities.Manifest) { m.Artifacts[0].SHA256 = "xyz" }, "/artifacts/0/sha256"},
		{"negative size", func(m *activities.Manifest) { m.Artifacts[0].Size = -1 }, "/artifacts/0/size"},
		{"no run id", func(m *activities.Manifest) { m.RunID = "" }, "/runId"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := good
			m.Artifacts = []activities.Artifact{art}
			tt.mutate(&m)
			b, err := json.Marshal(m)
			require.NoError(t, err)
			err = schemas.Validate(schemas.ManifestSchemaFile, b)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
	assert.ErrorContains(t, schemas.Validate(schemas.ManifestSchemaFile, []byte("{")), "not valid JSON")
}
