package schemas_test

import (
	"encoding/json"
	"io/fs"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kohakku/drflow/activities"
	"github.com/kohakku/drflow/internal/store"
	"github.com/kohakku/drflow/schemas"
	"github.com/kohakku/drflow/workflows"
)

func readSchema(t *testing.T, file string) map[string]any {
	t.Helper()
	raw, err := schemas.JSONSchemas.ReadFile(file)
	require.NoError(t, err, "every registered workflow has an input schema")
	var doc map[string]any
	require.NoError(t, json.Unmarshal(raw, &doc))
	return doc
}

// inputFields returns the JSON fields of struct type t by name.
func inputFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for _, f := range workflows.JSONFields(t) {
		out[f.Name] = f.Type
	}
	return out
}

// schemaTypes returns the "type" of a schema node as a list.
func schemaTypes(node map[string]any) []string {
	switch v := node["type"].(type) {
	case string:
		return []string{v}
	case []any:
		var out []string
		for _, s := range v {
			out = append(out, s.(string))
		}
		return out
	}
	return nil
}

// checkObject: the properties of node are exactly the JSON fields of Go struct type
// typ, each of a matching type, and no other property is allowed.
func checkObject(t *testing.T, where string, root, node map[string]any, typ reflect.Type) {
	t.Helper()
	props, _ := node["properties"].(map[string]any)
	fields := inputFields(typ)
	assert.Equal(t, slices.Sorted(maps.Keys(fields)), slices.Sorted(maps.Keys(props)), "%s: schema properties vs JSON fields of %s", where, typ)
	assert.Equal(t, false, node["additionalProperties"], "%s: additionalProperties", where)
	for name, ft := range fields {
		if p, ok := props[name].(map[string]any); ok {
			checkValue(t, where+"/"+name, root, p, ft)
		}
	}
}

// checkValue: schema node accepts the JSON that Go type typ reads and writes.
func checkValue(t *testing.T, where string, root, node map[string]any, typ reflect.Type) {
	t.Helper()
	if ref, ok := node["$ref"].(string); ok {
		name, ok := strings.CutPrefix(ref, "#/$defs/")
		require.True(t, ok, "%s: $ref %s is not a local definition", where, ref)
		def, ok := root["$defs"].(map[string]any)[name].(map[string]any)
		require.True(t, ok, "%s: no $defs/%s", where, name)
		if typ == reflect.TypeFor[workflows.Duration]() {
			assert.Equal(t, "duration", name, "%s: a Duration refers to $defs/duration", where)
		}
		node = def
	}
	types := schemaTypes(node)
	if typ.Kind() == reflect.Pointer {
		assert.Contains(t, types, "null", "%s: a pointer field (%s) may be null", where, typ)
		typ = typ.Elem()
	} else {
		assert.NotContains(t, types, "null", "%s: %s is not a pointer: null is refused", where, typ)
	}
	types = slices.DeleteFunc(slices.Clone(types), func(s string) bool { return s == "null" })
	want := ""
	switch {
	case typ == reflect.TypeFor[workflows.Duration]():
		want = "string"
		assert.NotEmpty(t, node["pattern"], "%s: a duration has a pattern", where)
	case typ == reflect.TypeFor[time.Time]():
		want = "string"
		assert.Equal(t, "date-time", node["format"], "%s: a time is a date-time", where)
	default:
		switch typ.Kind() {
		case reflect.String:
			want = "string"
		case reflect.Bool:
			want = "boolean"
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
			want = "integer"
		case reflect.Float32, reflect.Float64:
			want = "number"
		case reflect.Slice:
			want = "array"
			if items, ok := node["items"].(map[string]any); assert.True(t, ok, "%s: an array has items", where) {
				checkValue(t, where+"/items", root, items, typ.Elem())
			}
		case reflect.Struct:
			want = "object"
			checkObject(t, where, root, node, typ)
		default:
			t.Errorf("%s: no JSON Schema type for Go type %s: teach input_test.go", where, typ)
		}
	}
	assert.Equal(t, []string{want}, types, "%s: type of Go %s", where, typ)
}

// TestInputSchemasMatchGoTypes: every registered workflow has an input schema whose
// properties are exactly the JSON fields of its Go input type (embedded structs such as
// RecoveryOptions included), with matching types, no other property allowed, and a
// description for each (the fix an error message shows); no schema is left without a
// workflow.
func TestInputSchemasMatchGoTypes(t *testing.T) {
	registered := map[string]bool{}
	for _, def := range workflows.All() {
		file := schemas.InputSchemaFile(def.Name)
		registered[file] = true
		t.Run(def.Name, func(t *testing.T) {
			doc := readSchema(t, file)
			_, err := schemas.Violations(file, []byte(`{}`))
			require.NoError(t, err, "the schema compiles")
			assert.Equal(t, "object", doc["type"])
			assert.Equal(t, "https://github.com/kohakku/drflow/schemas/"+file, doc["$id"])
			checkObject(t, def.Name, doc, doc, reflect.TypeOf(def.NewInput()).Elem())
			for name, p := range doc["properties"].(map[string]any) {
				assert.NotEmpty(t, p.(map[string]any)["description"], "%s.%s has no description", def.Name, name)
			}
			assert.NotEmpty(t, doc["examples"], "%s has no examples", def.Name)
		})
	}
	files, err := fs.Glob(schemas.JSONSchemas, "json/*.input.schema.json")
	require.NoError(t, err)
	for _, f := range files {
		assert.True(t, registered[f], "%s: no registered workflow has this input schema", f)
	}
}

// TestInputSchemaDefsAgree: a definition shared by several input schemas (each file is
// self-contained) is the same in each.
func TestInputSchemaDefsAgree(t *testing.T) {
	seen := map[string]any{}
	where := map[string]string{}
	for _, def := range workflows.All() {
		file := schemas.InputSchemaFile(def.Name)
		defs, _ := readSchema(t, file)["$defs"].(map[string]any)
		for name, d := range defs {
			if first, ok := seen[name]; ok {
				assert.Equal(t, first, d, "$defs/%s differs between %s and %s", name, where[name], file)
				continue
			}
			seen[name], where[name] = d, file
		}
	}
}

// TestInputSchemaExamples: each schema's examples are valid, decode into the Go input
// type and still validate once the Go value is written back as JSON.
func TestInputSchemaExamples(t *testing.T) {
	for _, def := range workflows.All() {
		file := schemas.InputSchemaFile(def.Name)
		for i, ex := range readSchema(t, file)["examples"].([]any) {
			raw, err := json.Marshal(ex)
			require.NoError(t, err)
			vs, err := schemas.Violations(file, raw)
			require.NoError(t, err)
			assert.Empty(t, vs, "%s example %d: %s", def.Name, i, raw)
			in, err := workflows.CheckInput(def.Name, raw)
			require.NoError(t, err, "%s example %d", def.Name, i)
			again, err := json.Marshal(in)
			require.NoError(t, err)
			vs, err = schemas.Violations(file, again)
			require.NoError(t, err)
			assert.Empty(t, vs, "%s example %d written by Go: %s", def.Name, i, again)
		}
	}
}

// TestInputSchemasAcceptGoInputs: what the code itself sends — every field set, as the
// starter and child workflows and continue-as-new write it — is valid.
func TestInputSchemasAcceptGoInputs(t *testing.T) {
	yes, no := true, false
	set := "2026-11-21T02-00-00Z"
	ro := workflows.RecoveryOptions{DryRun: true, AutoApprove: true, ApprovalTimeout: workflows.Duration(4 * time.Hour)}
	now := time.Date(2026, 11, 21, 2, 0, 0, 123456789, time.UTC)
	inputs := map[string]any{
		workflows.NightlyBackupName: workflows.NightlyBackupInput{Databases: []string{"kohakku-controller", "kohakku-dispatcher"},
			Buckets: []string{"kohakku"}, SQLite: []string{"drflow-temporal"}, SkipRedis: true, SkipObjects: true,
			SkipRetention: true, SkipVerify: true, VerifyRestore: &no, AnomalyThreshold: 0.5},
		workflows.VerifyBackupName: workflows.VerifyBackupInput{SetID: set, Restore: &yes, SampleObjects: 100, RestoreJobs: 4},
		workflows.RedisLossName:    workflows.RedisLossInput{Instance: "default", RecoveryOptions: ro},
		workflows.MinIOLossName: workflows.MinIOLossInput{Bucket: "kohakku", SetID: set, Scope: workflows.ScopeNeeded, Force: true,
			AllowFailedVerification: true, RecoveryOptions: ro},
		workflows.TotalDBLossName: workflows.TotalDBLossInput{SetID: set, Databases: []string{"kohakku-controller"}, TargetSuffix: "_drill",
			Jobs: 64, NoOwner: true, SkipRedis: true, SkipServices: true, AllowFailedVerification: true, RecoveryOptions: ro},
		workflows.RestoreTablesName: workflows.RestoreTablesInput{SetID: set, Database: "kohakku-controller",
			Tables: []string{"public.tasks_task", "briefs"}, Mode: workflows.TablesModeReplace, AllowFailedVerification: true, RecoveryOptions: ro},
		workflows.FullClusterRecoveryName: workflows.FullClusterRecoveryInput{SetID: set, Scope: workflows.ScopeAll,
			LostAfter: workflows.Duration(2 * time.Minute), RedispatchDeadline: workflows.Duration(2 * time.Hour),
			RedispatchPollEvery: workflows.Duration(1500 * time.Millisecond), AllowFailedVerification: true, RecoveryOptions: ro},
		workflows.RedispatchLostTasksName: workflows.RedispatchLostTasksInput{RecoveryID: "fcr-e2e", LostAfter: workflows.Duration(time.Minute),
			GenerationUpTo: 7, BatchSize: 1000, Deadline: workflows.Duration(2 * time.Hour), PollEvery: workflows.Duration(10 * time.Second),
			State: &workflows.RedispatchState{StartedAt: now, DeadlineAt: now.Add(time.Hour), Requeueing: true, Requeued: 5,
				Repushed: 1, Batches: 2, Polls: 3, After: 42, Runs: 2}},
		workflows.SelfCheckName: workflows.SelfCheckInput{Steps: 16, StepInterval: workflows.Duration(300 * time.Millisecond),
			HeartbeatTimeout: workflows.Duration(2 * time.Second)},
	}
	for _, def := range workflows.All() {
		in, ok := inputs[def.Name]
		if !assert.True(t, ok, "no full input of %s in this test", def.Name) {
			continue
		}
		raw, err := json.Marshal(in)
		require.NoError(t, err)
		vs, err := schemas.Violations(schemas.InputSchemaFile(def.Name), raw)
		require.NoError(t, err)
		assert.Empty(t, vs, "%s: %s", def.Name, raw)
		// Every field was set: the test covers the whole schema.
		var fields map[string]any
		require.NoError(t, json.Unmarshal(raw, &fields))
		assert.ElementsMatch(t, slices.Collect(maps.Keys(readSchema(t, schemas.InputSchemaFile(def.Name))["properties"].(map[string]any))),
			slices.Collect(maps.Keys(fields)), "%s: set every field", def.Name)
	}
}

// valid reports whether {"<field>": value} is valid by the input schema of typ.
func valid(t *testing.T, typ, field string, value any) bool {
	t.Helper()
	raw, err := json.Marshal(map[string]any{field: value})
	require.NoError(t, err)
	vs, err := schemas.Violations(schemas.InputSchemaFile(typ), raw)
	require.NoError(t, err)
	for _, v := range vs {
		if v.Property == field {
			return false
		}
	}
	return true
}

// TestInputSchemaRules: the shared definitions agree with the Go code that owns each
// rule: bucket names with the store's S3 rules (which config applies), durations with
// time.ParseDuration (not negative), set ids with activities.ParseSetID; database names
// refuse quotes and spaces.
func TestInputSchemaRules(t *testing.T) {
	for _, name := range []string{"kohakku", "abc", "a.b-c", "a-.b", "a-b.c-d", "xn--abc", strings.Repeat("a", 63),
		"ab", strings.Repeat("a", 64), "My_Bucket", "UPPER", "-abc", "abc-", "a..b", ".abc", "abc.", "a b c", "192.168.5.4", "1.2.3", "10.0.0.1.5", ""} {
		assert.Equal(t, store.CheckBucketName(name) == nil, valid(t, workflows.MinIOLossName, "bucket", name), "bucket %q", name)
	}

	for _, d := range []string{"0", "0s", "90s", "1h30m", "1.5h", ".5s", "1.s", "300ms", "1us", "1µs", "1μs", "2m0s", "1h2m3s4ms5us6ns",
		"", "5", "-5s", "+5s", "5 s", "1d", "h", "1h-5m", ".s", "00"} {
		v, err := time.ParseDuration(d)
		goOK := err == nil && v >= 0 && !strings.HasPrefix(d, "+")
		assert.Equal(t, goOK, valid(t, workflows.SelfCheckName, "stepInterval", d), "duration %q", d)
	}

	// Calendar checks (February 30th) are left to the workflow's own check.
	for _, id := range []string{"2026-11-21T02-00-00Z", "1999-01-01T23-59-59Z", "", "yesterday", "2026-11-21T02:00:00Z", "2026-13-01T00-00-00Z",
		"2026-11-21T24-00-00Z", "2026-11-21T02-00-00", "2026-11-21 02-00-00Z"} {
		_, err := activities.ParseSetID(id)
		assert.Equal(t, err == nil || id == "", valid(t, workflows.TotalDBLossName, "setId", id), "set id %q", id)
	}

	for name, ok := range map[string]bool{
		"kohakku-controller": true, "app_db": true, "db.v2": true, "a$b": true, "Kohakku2": true, strings.Repeat("d", 63): true,
		"kohakku controller": false, `kohakku"x`: false, "kohakku'x": false, "": false, strings.Repeat("d", 64): false,
		"-db": false, "db;drop": false, " db": false, "db\n": false,
	} {
		assert.Equal(t, ok, valid(t, workflows.RestoreTablesName, "database", name), "database %q", name)
		assert.Equal(t, ok, valid(t, workflows.TotalDBLossName, "databases", []string{name}), "databases [%q]", name)
		assert.Equal(t, ok, valid(t, workflows.NightlyBackupName, "databases", []string{name}), "nightly databases [%q]", name)
	}
}

// TestViolations: what Violations reports for each kind of problem.
func TestViolations(t *testing.T) {
	file := schemas.InputSchemaFile(workflows.RestoreTablesName)
	vs, err := schemas.Violations(file, []byte(`{"tables": ["a", "a", "b c"], "mode": "merge", "Database": "x", "jobs": -1}`))
	require.NoError(t, err)
	var got []string
	for _, v := range vs {
		got = append(got, v.Pointer+" "+v.Property+": "+v.Problem)
		if !v.Unknown {
			assert.NotEmpty(t, v.Description, v.Pointer)
		}
	}
	assert.Equal(t, []string{
		"/Database Database: unknown field",
		"/database database: missing",
		"/jobs jobs: unknown field",
		`/mode mode: "merge" is not one of "side", "replace"`,
		`/tables tables: "a" is listed twice (items 0 and 1)`,
		`/tables/2 tables: "b c" is not a table name, "table" (schema public) or "schema.table": each part 1 to 63 letters, digits, '_', '-' or '$', no spaces or quotes`,
	}, got)
	assert.True(t, vs[0].Unknown)
	assert.True(t, vs[1].Missing)

	vs, err = schemas.Violations(file, []byte(`{"database": "kohakku-controller", "tables": ["tasks_task"]}`))
	require.NoError(t, err)
	assert.Empty(t, vs)
	_, err = schemas.Violations(file, []byte(`{`))
	assert.ErrorContains(t, err, "not valid JSON")
	_, err = schemas.Violations("json/Nope.input.schema.json", []byte(`{}`))
	assert.Error(t, err)
}
