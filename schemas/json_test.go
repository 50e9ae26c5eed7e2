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

	// An encrypted set: its artifacts name their recipients by fingerprint, the
	// mirror says it is not encrypted.
	enc := good
	encArt := art
	encArt.Encryption, encArt.RecipientFingerprints = "age", []string{"sha256:" + strings.Repeat("ab", 32), "sha256:" + strings.Repeat("0f", 32)}
	enc.Artifacts = []activities.Artifact{encArt}
	enc.Mirrors = []activities.MirrorResult{{Bucket: "kohakku", Prefix: "mirror/kohakku/", Listing: encArt, Encryption: "none"}}
	b, err = json.Marshal(enc)
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
		{"unknown encryption", func(m *activities.Manifest) { m.Artifacts[0].Encryption = "gpg" }, "/artifacts/0/encryption"},
		{"age without fingerprints", func(m *activities.Manifest) { m.Artifacts[0].Encryption = "age" }, "/artifacts/0"},
		{"age with an empty fingerprint list", func(m *activities.Manifest) {
			m.Artifacts[0].Encryption, m.Artifacts[0].RecipientFingerprints = "age", []string{}
		}, "/artifacts/0"},
		{"a key instead of a fingerprint", func(m *activities.Manifest) {
			m.Artifacts[0].Encryption, m.Artifacts[0].RecipientFingerprints = "age", []string{"age17rfxptexkxqgxve24y846dw5u2ns8qfya26mp5hlwg8sh6axj5wq3x3kme"}
		}, "/artifacts/0/recipientFingerprints/0"},
		{"fingerprints of an unencrypted artifact", func(m *activities.Manifest) {
			m.Artifacts[0].RecipientFingerprints = []string{"sha256:" + strings.Repeat("cd", 32)}
		}, "/artifacts/0"},
		{"an encrypted mirror", func(m *activities.Manifest) { m.Mirrors[0].Encryption = "age" }, "/mirrors/0/encryption"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := good
			m.Artifacts = []activities.Artifact{art}
			m.Mirrors = []activities.MirrorResult{{Bucket: "kohakku", Prefix: "mirror/kohakku/", Listing: art}}
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
