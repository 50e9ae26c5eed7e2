package workflows

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"sync"

	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/kohakku/drflow/schemas"
)

// Workflow inputs are checked before a runbook does anything, by the starter before it
// starts one and by the worker before the workflow function runs:
//
//  1. the input is one JSON object (a syntax error names its offset and field);
//  2. it decodes into the Go input type (a wrong type names the field);
//  3. it is valid by the workflow's JSON Schema, schemas/json/<type>.input.schema.json:
//     no unknown or misspelt field (names are case-sensitive, unlike encoding/json's),
//     no null where the Go field is not a pointer, and every pattern, enum and range.
//
// Each problem names the field and says what a valid value looks like (the schema's
// description of the field). Checks that need the workflow's context or the worker's
// configuration (normalize, the Inventory) run in the workflow, as before.
//
// Without this, the Go SDK runs a workflow whose input has unknown fields with those
// fields ignored, and fails one whose input does not decode with a retryable
// "unable to decode" error that names neither the field nor the fix.

// strictInputChange is the workflow.GetVersion change id of the input check: a run
// started before workers checked inputs replays with its input decoded as it was then
// (leniently, by the SDK's JSON converter), so an input the check refuses cannot make
// an old run's replay diverge from its history.
const strictInputChange = "strict-input"

// InputError is a workflow input that does not fit its workflow. Each problem names the
// field and says how to fix it.
type InputError struct {
	// Workflow is the workflow type.
	Workflow string
	// Problems, one line each, in the order of the fields' JSON pointers.
	Problems []string
}

func (e *InputError) Error() string { return strings.Join(e.Problems, "\n") }

// CheckInput decodes raw, the JSON input of workflowType, as a worker does before it
// runs the workflow, and returns a pointer to the input value (as Definition.NewInput).
// The error is an *InputError unless workflowType is not registered.
func CheckInput(workflowType string, raw []byte) (any, error) {
	def, ok := Lookup(workflowType)
	if !ok {
		return nil, fmt.Errorf("unknown workflow type %q", workflowType)
	}
	return def.checkInput(raw)
}

// Strict returns d's workflow function behind the input check, to register on a worker
// under d.Name. Its parameter is the raw input payload (converter.RawValue), so the
// check sees the JSON as sent; d.Func keeps its signature for tests. An input that fails
// the check fails the run at once with a non-retryable ApplicationError of type
// ErrInvalidInput, before any activity is scheduled. No input (and the SDK's nil
// payload) means `{}`; a second input is refused. Strict panics when d.Func is not
// func(workflow.Context, In) (Out, error) with d.NewInput returning *In.
func (d Definition) Strict() any {
	fn := reflect.ValueOf(d.Func)
	ft := fn.Type()
	ctxType, errType := reflect.TypeFor[workflow.Context](), reflect.TypeFor[error]()
	if ft.Kind() != reflect.Func || ft.NumIn() != 2 || ft.NumOut() != 2 || ft.In(0) != ctxType || ft.Out(1) != errType ||
		d.NewInput == nil || reflect.TypeOf(d.NewInput()) != reflect.PointerTo(ft.In(1)) {
		panic(fmt.Sprintf("workflows: %s: want func(workflow.Context, In) (Out, error) and NewInput returning *In, got %s", d.Name, ft))
	}
	rawType := reflect.TypeFor[converter.RawValue]()
	wt := reflect.FuncOf([]reflect.Type{ctxType, rawType, rawType}, []reflect.Type{ft.Out(0), errType}, false)
	return reflect.MakeFunc(wt, func(args []reflect.Value) []reflect.Value {
		ctx := args[0].Interface().(workflow.Context)
		in, err := d.decodePayload(ctx, args[1].Interface().(converter.RawValue), args[2].Interface().(converter.RawValue))
		if err != nil {
			return []reflect.Value{reflect.Zero(ft.Out(0)), reflect.ValueOf(&err).Elem()}
		}
		return fn.Call([]reflect.Value{args[0], reflect.ValueOf(in).Elem()})
	}).Interface()
}

// decodePayload turns the run's input payload (and a second one, which should not be
// there) into a pointer to d's input.
func (d Definition) decodePayload(ctx workflow.Context, raw, extra converter.RawValue) (any, error) {
	p := raw.Payload()
	if workflow.GetVersion(ctx, strictInputChange, workflow.DefaultVersion, 1) == workflow.DefaultVersion {
		in := d.NewInput()
		if p != nil {
			if err := converter.GetDefaultDataConverter().FromPayload(p, in); err != nil {
				return nil, fmt.Errorf("unable to decode the workflow function input payload with error: %w, function name: %v", err, d.Name)
			}
		}
		return in, nil
	}
	invalid := func(err error) error {
		return temporal.NewNonRetryableApplicationError(err.Error(), ErrInvalidInput, nil)
	}
	if extra.Payload() != nil {
		return nil, invalid(d.inputError("input: more than one input was sent; send one JSON object such as %s", d.example()))
	}
	if p == nil {
		return d.NewInput(), nil
	}
	switch enc := string(p.GetMetadata()[converter.MetadataEncoding]); enc {
	case converter.MetadataEncodingNil:
		return d.NewInput(), nil
	case converter.MetadataEncodingJSON:
		in, err := d.checkInput(p.GetData())
		if err != nil {
			return nil, invalid(err)
		}
		return in, nil
	default:
		return nil, invalid(d.inputError("input: encoding %q is not accepted; send JSON (encoding %q), e.g. temporal workflow start --type %s --input '%s'",
			enc, converter.MetadataEncodingJSON, d.Name, d.example()))
	}
}

func (d Definition) inputError(format string, args ...any) *InputError {
	return &InputError{Workflow: d.Name, Problems: []string{fmt.Sprintf(format, args...)}}
}

// checkInput runs the three checks on data; see the top of this file.
func (d Definition) checkInput(data []byte) (any, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, d.inputError("input: empty; send one JSON object such as %s, or {} for the defaults", d.example())
	}
	if !json.Valid(data) {
		return nil, d.inputError("%s; send one JSON object such as %s", syntaxProblem(data), d.example())
	}

	// Types first: the Go decoder's message names the Go type the value must fit. Unknown
	// fields are the schema's to report (with their path, and case-sensitively).
	in := d.NewInput()
	if err := json.Unmarshal(data, in); err != nil {
		return nil, d.decodeError(data, err)
	}

	vs, err := schemas.Violations(schemas.InputSchemaFile(d.Name), data)
	if err != nil {
		return nil, d.inputError("input: %v", err)
	}
	if len(vs) > 0 {
		e := &InputError{Workflow: d.Name}
		for _, v := range vs {
			e.Problems = append(e.Problems, d.violation(v))
		}
		return nil, e
	}

	// The schema and the Go type agree (schemas' tests keep them so); decode strictly
	// anyway, so that a field the schema lacks cannot be dropped without a word.
	in = d.NewInput()
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(in); err != nil {
		return nil, d.inputError("input: %v", err)
	}
	return in, nil
}

// decodeError explains an error of json.Unmarshal on valid JSON: a value of the wrong
// type, or one a field's UnmarshalJSON refuses (a Duration that is not a duration).
func (d Definition) decodeError(data []byte, err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		if te.Field == "" {
			return d.inputError("input: got a JSON %s, want one object such as %s", te.Value, d.example())
		}
		return d.inputError("%s", d.fieldProblem(d.topField(te.Field), err.Error()))
	}
	// The error does not say where: decode one top-level field at a time to find it.
	var fields map[string]json.RawMessage
	if json.Unmarshal(data, &fields) == nil {
		names := make([]string, 0, len(fields))
		for name := range fields {
			names = append(names, name)
		}
		slices.Sort(names)
		for _, name := range names {
			one, _ := json.Marshal(map[string]json.RawMessage{name: fields[name]})
			if json.Unmarshal(one, d.NewInput()) != nil {
				return d.inputError("%s", d.fieldProblem(name, err.Error()))
			}
		}
	}
	return d.inputError("input: %v", err)
}

// topField returns the top-level JSON field of a path encoding/json reports:
// "state.requeued" is in "state", "RecoveryOptions.dryRun" (an embedded struct) in "dryRun".
func (d Definition) topField(path string) string {
	parts := strings.Split(path, ".")
	known := d.fieldNames()
	for _, p := range parts {
		if slices.Contains(known, p) {
			return p
		}
	}
	return parts[0]
}

// violation writes one schema violation as a problem line.
func (d Definition) violation(v schemas.Violation) string {
	switch {
	case v.Property == "":
		return fmt.Sprintf("input: %s; send one JSON object such as %s", v.Problem, d.example())
	case v.Unknown && v.Pointer == "/"+v.Property:
		return d.unknownField(v.Property)
	}
	problem := v.Problem
	switch {
	case v.Unknown:
		problem = fmt.Sprintf("unknown field at %s", v.Pointer)
	case v.Pointer != "/"+v.Property:
		problem = fmt.Sprintf("at %s: %s", v.Pointer, v.Problem)
	}
	return d.fieldProblem(v.Property, problem)
}

// fieldProblem is the problem line of a known field: what is wrong, then what the
// field is and what a valid value looks like.
func (d Definition) fieldProblem(field, problem string) string {
	msg := fmt.Sprintf("input field %q: %s", field, problem)
	if desc := d.schemaDoc().Properties[field].Description; desc != "" {
		msg += fmt.Sprintf("; %s: %s", field, desc)
	}
	return msg
}

// unknownField says that name is not a field of d's input and which are, with the one
// it probably meant. It starts as encoding/json's DisallowUnknownFields error does.
func (d Definition) unknownField(name string) string {
	known := d.fieldNames()
	hint := ""
	switch m := closest(name, known); {
	case strings.EqualFold(m, name):
		hint = fmt.Sprintf(" (did you mean %q? names are case-sensitive)", m)
	case m != "":
		hint = fmt.Sprintf(" (did you mean %q?)", m)
	}
	return fmt.Sprintf("json: unknown field %q: %s has no such input field%s; use one of %s", name, d.Name, hint, strings.Join(known, ", "))
}

// closest returns the known name that name is probably a misspelling of (the same
// but for case, or at most two edits away; one for short names), or "".
func closest(name string, known []string) string {
	for _, k := range known {
		if strings.EqualFold(k, name) {
			return k
		}
	}
	best, bestDist := "", 3
	if len(name) < 4 {
		bestDist = 2
	}
	for _, k := range known {
		if dist := editDistance(strings.ToLower(name), strings.ToLower(k)); dist < bestDist {
			best, bestDist = k, dist
		}
	}
	return best
}

// editDistance is the Levenshtein distance of a and b, by bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// fieldNames returns the JSON names of d's input fields in declaration order, embedded
// structs (RecoveryOptions) flattened as encoding/json does.
func (d Definition) fieldNames() []string {
	var out []string
	for _, f := range JSONFields(reflect.TypeOf(d.NewInput()).Elem()) {
		out = append(out, f.Name)
	}
	return out
}

// JSONField is a field of a struct as encoding/json sees it.
type JSONField struct {
	// Name is the field's JSON name.
	Name string
	Type reflect.Type
}

// JSONFields returns the fields of struct type t as encoding/json encodes them, in
// declaration order, embedded structs (RecoveryOptions) flattened.
func JSONFields(t reflect.Type) []JSONField {
	var out []JSONField
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch {
		case name == "-" || !f.IsExported():
		case f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct:
			out = append(out, JSONFields(f.Type)...)
		case name == "":
			out = append(out, JSONField{f.Name, f.Type})
		default:
			out = append(out, JSONField{name, f.Type})
		}
	}
	return out
}

// syntaxProblem says why data, which is not valid JSON, is not: the decoder's error,
// the byte offset and the top-level field it is in.
func syntaxProblem(data []byte) string {
	dec := json.NewDecoder(bytes.NewReader(data))
	type frame struct{ object, wantKey bool }
	var stack []frame
	field, started := "", false
	valueDone := func() {
		if n := len(stack); n > 0 && stack[n-1].object {
			stack[n-1].wantKey = true
		}
	}
	for {
		if started && len(stack) == 0 {
			if _, err := dec.Token(); err == io.EOF {
				return "input is not valid JSON" // not reached: json.Valid said no
			}
			return fmt.Sprintf("input is not valid JSON: trailing data after the JSON object at offset %d", dec.InputOffset())
		}
		tok, err := dec.Token()
		if err != nil {
			offset := dec.InputOffset()
			var se *json.SyntaxError
			if errors.As(err, &se) {
				offset = se.Offset
			}
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			msg := fmt.Sprintf("input is not valid JSON: %v at offset %d", err, offset)
			if field != "" {
				msg += fmt.Sprintf(" (in field %q)", field)
			}
			return msg
		}
		started = true
		switch t := tok.(type) {
		case json.Delim:
			switch t {
			case '{':
				stack = append(stack, frame{object: true, wantKey: true})
			case '[':
				stack = append(stack, frame{})
			default:
				stack = stack[:len(stack)-1]
				valueDone()
			}
		case string:
			if n := len(stack); n > 0 && stack[n-1].object && stack[n-1].wantKey {
				stack[n-1].wantKey = false
				if n == 1 {
					field = t
				}
				continue
			}
			valueDone()
		default:
			valueDone()
		}
	}
}

// inputSchemaDoc is what the messages use of an input schema.
type inputSchemaDoc struct {
	Properties map[string]struct {
		Description string `json:"description"`
	} `json:"properties"`
	Examples []json.RawMessage `json:"examples"`
}

var (
	schemaDocsMu sync.Mutex
	schemaDocs   = map[string]*inputSchemaDoc{}
)

// schemaDoc returns d's input schema as far as messages use it; empty when it cannot
// be read (the check itself then fails on the schema).
func (d Definition) schemaDoc() *inputSchemaDoc {
	schemaDocsMu.Lock()
	defer schemaDocsMu.Unlock()
	if doc, ok := schemaDocs[d.Name]; ok {
		return doc
	}
	doc := &inputSchemaDoc{}
	if raw, err := schemas.JSONSchemas.ReadFile(schemas.InputSchemaFile(d.Name)); err == nil {
		_ = json.Unmarshal(raw, doc)
	}
	schemaDocs[d.Name] = doc
	return doc
}

// example is the schema's last (fullest) example input, on one line.
func (d Definition) example() string {
	ex := d.schemaDoc().Examples
	if len(ex) == 0 {
		return "{}"
	}
	var b bytes.Buffer
	if json.Compact(&b, ex[len(ex)-1]) != nil {
		return "{}"
	}
	return b.String()
}
