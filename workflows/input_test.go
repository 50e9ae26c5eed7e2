package workflows

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	commonpb "go.temporal.io/api/common/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/kohakku/drflow/internal/historytest"
)

// TestCheckInput: every kind of bad input is refused with the field named and what a
// valid value looks like; good inputs decode into the input type.
func TestCheckInput(t *testing.T) {
	tests := []struct {
		name, typ, input string
		want             []string // substrings of the error; none: the input is good
	}{
		{"defaults", SelfCheckName, `{}`, nil},
		{"fields", SelfCheckName, `{"steps": 3, "stepInterval": "250ms", "heartbeatTimeout": "1m30s"}`, nil},
		{"required fields", RestoreTablesName, `{"database": "kohakku-controller", "tables": ["tasks_task", "public.briefs"]}`, nil},
		{"nullable pointer", VerifyBackupName, `{"restore": null}`, nil},

		{"malformed", SelfCheckName, `{"steps": `, []string{"not valid JSON", "unexpected EOF", `field "steps"`, `such as {"steps":3`}},
		{"single quotes", MinIOLossName, `{'scope': 'all'}`, []string{"not valid JSON", "offset 1"}},
		{"trailing data", SelfCheckName, `{} {}`, []string{"trailing data"}},
		{"empty", SelfCheckName, ` `, []string{"empty", "{} for the defaults"}},
		{"not an object", TotalDBLossName, `["kohakku-controller"]`, []string{"got a JSON array, want one object such as {"}},
		{"null", TotalDBLossName, `null`, []string{"got null, want object"}},
		{"unknown field", SelfCheckName, `{"stepz": 3}`, []string{`json: unknown field "stepz"`, `did you mean "steps"?`, "use one of steps, stepInterval, heartbeatTimeout"}},
		{"wrong case", RedisLossName, `{"dryrun": true}`, []string{`unknown field "dryrun"`, `did you mean "dryRun"? names are case-sensitive`}},
		{"unknown nested field", RedispatchLostTasksName, `{"state": {"requeued": 1, "cursor": 2}}`, []string{`input field "state": unknown field at /state/cursor`, "leave it out"}},
		{"wrong type", SelfCheckName, `{"steps": "three"}`, []string{`input field "steps"`, "SelfCheckInput.steps of type int", "an integer from 1 to 10000"}},
		{"wrong type embedded", TotalDBLossName, `{"dryRun": "yes"}`, []string{`input field "dryRun"`, "of type bool"}},
		{"fraction for int", VerifyBackupName, `{"sampleObjects": 2.5}`, []string{`input field "sampleObjects"`}},
		{"null for a string", MinIOLossName, `{"scope": null}`, []string{`input field "scope": got null, want string`}},
		{"bare number duration", SelfCheckName, `{"stepInterval": 5}`, []string{`input field "stepInterval"`, `want a duration string such as "90s"`}},
		{"bad duration", FullClusterRecoveryName, `{"lostAfter": "2 minutes"}`, []string{`input field "lostAfter"`, `"2 minutes"`, `e.g. "2m"`}},
		{"negative duration", TotalDBLossName, `{"approvalTimeout": "-5m"}`, []string{`input field "approvalTimeout": "-5m" is not a Go duration string`, "not negative", `"1m" to "168h"`}},
		{"negative size", VerifyBackupName, `{"sampleObjects": -1}`, []string{`input field "sampleObjects": -1 is less than 0`, "1 to 100000"}},
		{"too big", TotalDBLossName, `{"jobs": 65}`, []string{`input field "jobs": 65 is more than 64`}},
		{"unknown scope", MinIOLossName, `{"scope": "most"}`, []string{`input field "scope": "most" is not one of "needed", "all"`}},
		{"unknown mode", RestoreTablesName, `{"database": "kohakku-controller", "tables": ["tasks_task"], "mode": "merge"}`, []string{`input field "mode"`, `"side"`, `"replace"`}},
		{"bad set id", TotalDBLossName, `{"setId": "yesterday"}`, []string{`input field "setId": "yesterday" is not a set id`, `"2026-11-21T02-00-00Z"`}},
		{"bucket S3 rejects", MinIOLossName, `{"bucket": "My_Bucket"}`, []string{`input field "bucket": "My_Bucket" is not a bucket name by the S3 rules: 3 to 63 lowercase letters`}},
		{"bucket like an IP address", NightlyBackupName, `{"buckets": ["192.168.5.4"]}`, []string{`input field "buckets": at /buckets/0: "192.168.5.4" is not a bucket name by the S3 rules`, "not an IP address"}},
		{"database with a space", TotalDBLossName, `{"databases": ["kohakku controller"]}`, []string{`input field "databases": at /databases/0: "kohakku controller" is not a PostgreSQL database name`, "no spaces or quotes"}},
		{"database with quotes", RestoreTablesName, `{"database": "kohakku\"; DROP DATABASE x; --", "tables": ["tasks_task"]}`, []string{`input field "database": "kohakku\"; DROP DATABASE x; --" is not a PostgreSQL database name`, "no spaces or quotes"}},
		{"listed twice", NightlyBackupName, `{"databases": ["a", "a"]}`, []string{`input field "databases": "a" is listed twice`}},
		{"missing required", RestoreTablesName, `{"database": "kohakku-controller"}`, []string{`input field "tables": missing`, `e.g. ["tasks_task"]`}},
		{"no tables", RestoreTablesName, `{"database": "kohakku-controller", "tables": []}`, []string{`input field "tables": has 0 items, fewer than 1`}},
		{"bad table", RestoreTablesName, `{"database": "kohakku-controller", "tables": ["tasks task"]}`, []string{`input field "tables": at /tables/0: "tasks task" is not a table name`}},
		{"bad instance", RedisLossName, `{"instance": "a b"}`, []string{`input field "instance": "a b" is not valid; instance: the Redis instance`}},
		{"bad suffix", TotalDBLossName, `{"targetSuffix": "-Drill!"}`, []string{`input field "targetSuffix": "-Drill!" is not valid`, `e.g. "_drill"`}},
		{"type errors first", MinIOLossName, `{"scope": "most", "bucket": "x", "force": "yes"}`, []string{`input field "force"`}},
		{"several violations", MinIOLossName, `{"scope": "most", "bucket": "x"}`, []string{`input field "bucket"`, "\n", `input field "scope"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in, err := CheckInput(tt.typ, []byte(tt.input))
			if tt.want == nil {
				require.NoError(t, err)
				def, _ := Lookup(tt.typ)
				assert.IsType(t, def.NewInput(), in)
				return
			}
			require.Error(t, err)
			var ie *InputError
			require.ErrorAs(t, err, &ie)
			assert.Equal(t, tt.typ, ie.Workflow)
			for _, w := range tt.want {
				assert.Contains(t, err.Error(), w)
			}
		})
	}
	_, err := CheckInput("NightlyBakup", []byte(`{}`))
	assert.EqualError(t, err, `unknown workflow type "NightlyBakup"`)
}

// jsonPayload is an input as `temporal workflow start --input` sends it.
func jsonPayload(s string) converter.RawValue {
	return converter.NewRawValue(&commonpb.Payload{
		Metadata: map[string][]byte{converter.MetadataEncoding: []byte(converter.MetadataEncodingJSON)},
		Data:     []byte(s),
	})
}

// TestStrict runs a workflow registered through Strict in the test environment: a good
// input reaches the function decoded, a bad one fails the run non-retryably.
func TestStrict(t *testing.T) {
	echo := Definition{Name: SelfCheckName, NewInput: func() any { return new(SelfCheckInput) },
		Func: func(_ workflow.Context, in SelfCheckInput) (SelfCheckInput, error) { return in, nil }}
	run := func(t *testing.T, args ...any) (SelfCheckInput, error) {
		t.Helper()
		var s testsuite.WorkflowTestSuite
		env := s.NewTestWorkflowEnvironment()
		env.RegisterWorkflowWithOptions(echo.Strict(), workflow.RegisterOptions{Name: echo.Name})
		env.ExecuteWorkflow(echo.Name, args...)
		require.True(t, env.IsWorkflowCompleted())
		var out SelfCheckInput
		err := env.GetWorkflowError()
		if err == nil {
			require.NoError(t, env.GetWorkflowResult(&out))
		}
		return out, err
	}
	invalid := func(t *testing.T, err error, contains ...string) {
		t.Helper()
		var ae *temporal.ApplicationError
		require.ErrorAs(t, err, &ae)
		assert.Equal(t, ErrInvalidInput, ae.Type())
		assert.True(t, ae.NonRetryable())
		for _, c := range contains {
			assert.Contains(t, ae.Error(), c)
		}
	}

	out, err := run(t, jsonPayload(`{"steps": 3, "stepInterval": "250ms"}`))
	require.NoError(t, err)
	assert.Equal(t, SelfCheckInput{Steps: 3, StepInterval: Duration(250e6)}, out)
	out, err = run(t, SelfCheckInput{Steps: 4}) // a Go caller's input (a child workflow's)
	require.NoError(t, err)
	assert.Equal(t, SelfCheckInput{Steps: 4}, out)
	out, err = run(t)
	require.NoError(t, err, "no input means the defaults")
	assert.Equal(t, SelfCheckInput{}, out)
	out, err = run(t, nil)
	require.NoError(t, err, "the SDK's nil payload means the defaults")
	assert.Equal(t, SelfCheckInput{}, out)

	_, err = run(t, jsonPayload(`{"steps": `))
	invalid(t, err, "not valid JSON", "unexpected EOF")
	_, err = run(t, jsonPayload(`{"stepz": 3}`))
	invalid(t, err, `unknown field "stepz"`)
	_, err = run(t, jsonPayload(`{"steps": -3}`))
	invalid(t, err, `input field "steps": -3 is less than 0`)
	_, err = run(t, jsonPayload(`{}`), jsonPayload(`{}`))
	invalid(t, err, "more than one input")
	_, err = run(t, converter.NewRawValue(&commonpb.Payload{
		Metadata: map[string][]byte{converter.MetadataEncoding: []byte(converter.MetadataEncodingBinary)}, Data: []byte("{}")}))
	invalid(t, err, `encoding "binary/plain" is not accepted`, `--input '{"steps":3,"stepInterval":"250ms"}'`)
}

func TestStrictRefusesOddFunctions(t *testing.T) {
	for _, d := range []Definition{
		{Name: "NoInput", Func: func(workflow.Context) error { return nil }, NewInput: func() any { return new(SelfCheckInput) }},
		{Name: "OtherInput", Func: SelfCheck, NewInput: func() any { return new(VerifyBackupInput) }},
		{Name: "NoNewInput", Func: SelfCheck},
	} {
		assert.Panics(t, func() { d.Strict() }, d.Name)
	}
	for _, d := range All() {
		assert.NotPanics(t, func() { d.Strict() }, d.Name)
	}
}

// shippedHistories returns the histories in testdata/ by file name.
func shippedHistories(t *testing.T) map[string]string {
	t.Helper()
	files, err := filepath.Glob("testdata/*.json")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	out := map[string]string{}
	for _, f := range files {
		out[filepath.Base(f)] = f
	}
	return out
}

// TestStrictReplaysShippedHistories: the registration workers use (Strict) replays every
// shipped history, which was recorded before inputs were checked.
func TestStrictReplaysShippedHistories(t *testing.T) {
	ids, err := historytest.IDs("testdata")
	require.NoError(t, err)
	for name, path := range shippedHistories(t) {
		t.Run(name, func(t *testing.T) {
			r := worker.NewWorkflowReplayer()
			for _, def := range All() {
				r.RegisterWorkflowWithOptions(def.Strict(), workflow.RegisterOptions{Name: def.Name})
			}
			f, err := os.Open(path)
			require.NoError(t, err)
			defer f.Close()
			hist, err := client.HistoryFromJSON(f, client.HistoryJSONOptions{})
			require.NoError(t, err)
			opts := worker.ReplayWorkflowHistoryOptions{}
			if id, ok := ids[name]; ok {
				opts.OriginalExecution = workflow.Execution{ID: id}
			}
			require.NoError(t, r.ReplayWorkflowHistoryWithOptions(nil, hist, opts))
		})
	}
}

// TestShippedInputsPassCheck: every input in the shipped histories (the run's own, the
// children's, continue-as-new's) passes the check, so what the code sends is accepted.
func TestShippedInputsPassCheck(t *testing.T) {
	checked := 0
	for name, path := range shippedHistories(t) {
		f, err := os.Open(path)
		require.NoError(t, err)
		hist, err := client.HistoryFromJSON(f, client.HistoryJSONOptions{})
		f.Close()
		require.NoError(t, err)
		for _, ev := range hist.GetEvents() {
			var typ string
			var input *commonpb.Payloads
			if a := ev.GetWorkflowExecutionStartedEventAttributes(); a != nil {
				typ, input = a.GetWorkflowType().GetName(), a.GetInput()
			} else if a := ev.GetStartChildWorkflowExecutionInitiatedEventAttributes(); a != nil {
				typ, input = a.GetWorkflowType().GetName(), a.GetInput()
			} else if a := ev.GetWorkflowExecutionContinuedAsNewEventAttributes(); a != nil {
				typ, input = a.GetWorkflowType().GetName(), a.GetInput()
			} else {
				continue
			}
			require.Len(t, input.GetPayloads(), 1, "%s event %d", name, ev.GetEventId())
			_, err := CheckInput(typ, input.GetPayloads()[0].GetData())
			assert.NoError(t, err, "%s event %d: %s input %s", name, ev.GetEventId(), typ, input.GetPayloads()[0].GetData())
			checked++
		}
	}
	t.Logf("%d inputs checked", checked)
}

// TestDocsInputsPassCheck: every workflow input shown in the docs passes the check the
// starter and the worker run (docs_examples_test.go finds them).
func TestDocsInputsPassCheck(t *testing.T) {
	checked := 0
	for _, e := range allDocExamples(t) {
		if e.err != "" || e.input == "" || strings.HasPrefix(e.typ, "update ") || isPlaceholder(e.typ) {
			continue
		}
		if _, ok := Lookup(e.typ); !ok {
			continue // TestDocsWorkflowInputs reports it
		}
		_, err := CheckInput(e.typ, []byte(e.input))
		var ie *InputError
		if err != nil && !errors.As(err, &ie) {
			t.Errorf("%s: %v", e, err)
			continue
		}
		assert.NoError(t, err, "%s", e)
		checked++
	}
	t.Logf("%d documented inputs checked", checked)
}
