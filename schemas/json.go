package schemas

import (
	"bytes"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"
)

// JSONSchemas holds the JSON Schemas of drflow's documents (json/*.schema.json).
//
//go:embed json/*.schema.json
var JSONSchemas embed.FS

// ManifestSchemaFile is the JSON Schema of a backup set's manifest.json.
const ManifestSchemaFile = "json/manifest.schema.json"

// InputSchemaFile is the JSON Schema of the input of the workflow type workflowType:
// json/<workflowType>.input.schema.json. Each is self-contained (no reference to another
// file), so any JSON Schema 2020-12 validator can check an input with it alone.
func InputSchemaFile(workflowType string) string {
	return "json/" + workflowType + ".input.schema.json"
}

var (
	compiled   = map[string]*jsonschema.Schema{}
	compiledMu sync.Mutex
)

func schema(file string) (*jsonschema.Schema, error) {
	compiledMu.Lock()
	defer compiledMu.Unlock()
	if s, ok := compiled[file]; ok {
		return s, nil
	}
	raw, err := JSONSchemas.ReadFile(file)
	if err != nil {
		return nil, err
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	if err := c.AddResource(file, doc); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	s, err := c.Compile(file)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	compiled[file] = s
	return s, nil
}

// Validate checks the JSON document doc against the schema in file (e.g.
// ManifestSchemaFile). The error lists every violation with its JSON pointer.
func Validate(file string, doc []byte) error {
	s, err := schema(file)
	if err != nil {
		return err
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(doc))
	if err != nil {
		return fmt.Errorf("not valid JSON: %w", err)
	}
	return s.Validate(v)
}

// Violation is one way a JSON document breaks its schema, in terms an operator can act on.
type Violation struct {
	// Pointer is the JSON pointer of the offending value ("/tables/1"); for a missing or
	// unknown property, the pointer the property has or would have ("/database").
	Pointer string
	// Property is the top-level property the value is in ("tables"); "" for the document
	// itself.
	Property string
	// Problem says what is wrong with the value, without naming it:
	// `"most" is not one of "needed", "all"`, `-1 is less than 0`, `missing`. A value that
	// breaks a shared definition ($defs) is described by it:
	// `"My_Bucket" is not a bucket name by the S3 rules: …`.
	Problem string
	// Description is the schema's description of Property: what a valid value looks
	// like. Empty when Property itself is unknown.
	Description string
	// Unknown: the property at Pointer is not in the schema. Missing: it is required
	// and absent.
	Unknown, Missing bool
}

// Violations validates the JSON document doc against the schema in file and returns
// every violation, sorted by pointer, then problem (nil when doc is valid). The order
// and the wording depend only on the schema and doc, so workflow code may use them. The
// error is for a schema that does not compile and a document that is not JSON.
func Violations(file string, doc []byte) ([]Violation, error) {
	s, err := schema(file)
	if err != nil {
		return nil, err
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(doc))
	if err != nil {
		return nil, fmt.Errorf("not valid JSON: %w", err)
	}
	err = s.Validate(v)
	if err == nil {
		return nil, nil
	}
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		return nil, err
	}
	var out []Violation
	add := func(loc []string, problem string, unknown, missing bool) {
		vi := Violation{Pointer: pointer(loc), Problem: problem, Unknown: unknown, Missing: missing}
		if len(loc) > 0 {
			vi.Property = loc[0]
			if p := s.Properties[loc[0]]; p != nil && !(unknown && len(loc) == 1) {
				vi.Description = p.Description
			}
		}
		out = append(out, vi)
	}
	subschemas := map[string]*jsonschema.Schema{}
	index(s, subschemas)
	// invalid says a value is not valid, by the rule of the definition it breaks.
	invalid := func(e *jsonschema.ValidationError, value any) string {
		loc := e.InstanceLocation
		if sub := subschemas[e.SchemaURL]; sub != nil && sub.Description != "" && len(loc) > 0 {
			if p := s.Properties[loc[0]]; p == nil || p.Location != sub.Location {
				return fmt.Sprintf("%s is not %s", show(value), sub.Description)
			}
		}
		return fmt.Sprintf("%s is not valid", show(value))
	}
	var walk func(e *jsonschema.ValidationError)
	walk = func(e *jsonschema.ValidationError) {
		loc := e.InstanceLocation
		got := func() any { return valueAt(v, loc) }
		switch k := e.ErrorKind.(type) {
		case *kind.Schema, *kind.Reference, *kind.Group, *kind.AllOf:
			for _, c := range e.Causes {
				walk(c)
			}
		case *kind.Required:
			for _, name := range k.Missing {
				add(append(slices.Clip(loc), name), "missing", false, true)
			}
		case *kind.AdditionalProperties:
			for _, name := range k.Properties {
				add(append(slices.Clip(loc), name), "unknown field", true, false)
			}
		case *kind.Type:
			add(loc, fmt.Sprintf("got %s, want %s", describe(got()), strings.Join(k.Want, " or ")), false, false)
		case *kind.Enum:
			var want []string
			for _, w := range k.Want {
				if w != "" { // "" stands for "left out": not worth offering
					want = append(want, show(w))
				}
			}
			add(loc, fmt.Sprintf("%s is not one of %s", show(k.Got), strings.Join(want, ", ")), false, false)
		case *kind.Const:
			add(loc, fmt.Sprintf("%s is not %s", show(k.Got), show(k.Want)), false, false)
		case *kind.Pattern, *kind.Not:
			add(loc, invalid(e, got()), false, false)
		case *kind.Format:
			add(loc, fmt.Sprintf("%s is not a valid %s", show(k.Got), k.Want), false, false)
		case *kind.Minimum:
			add(loc, fmt.Sprintf("%s is less than %s", rat(k.Got), rat(k.Want)), false, false)
		case *kind.Maximum:
			add(loc, fmt.Sprintf("%s is more than %s", rat(k.Got), rat(k.Want)), false, false)
		case *kind.ExclusiveMinimum:
			add(loc, fmt.Sprintf("%s is not more than %s", rat(k.Got), rat(k.Want)), false, false)
		case *kind.ExclusiveMaximum:
			add(loc, fmt.Sprintf("%s is not less than %s", rat(k.Got), rat(k.Want)), false, false)
		case *kind.MinLength:
			add(loc, fmt.Sprintf("%s is %d characters long, fewer than %d", show(got()), k.Got, k.Want), false, false)
		case *kind.MaxLength:
			add(loc, fmt.Sprintf("%s is %d characters long, more than %d", show(got()), k.Got, k.Want), false, false)
		case *kind.MinItems:
			add(loc, fmt.Sprintf("has %d items, fewer than %d", k.Got, k.Want), false, false)
		case *kind.MaxItems:
			add(loc, fmt.Sprintf("has %d items, more than %d", k.Got, k.Want), false, false)
		case *kind.UniqueItems:
			dup := valueAt(v, append(slices.Clip(loc), strconv.Itoa(k.Duplicates[1])))
			add(loc, fmt.Sprintf("%s is listed twice (items %d and %d)", show(dup), k.Duplicates[0], k.Duplicates[1]), false, false)
		default:
			// A keyword without wording of its own: the library's, without its "at '…': ".
			msg := e.Error()
			if _, after, ok := strings.Cut(msg, "': "); ok && strings.HasPrefix(msg, "at '") {
				msg = after
			}
			add(loc, msg, false, false)
		}
	}
	walk(ve)
	slices.SortStableFunc(out, func(a, b Violation) int {
		if c := strings.Compare(a.Pointer, b.Pointer); c != 0 {
			return c
		}
		return strings.Compare(a.Problem, b.Problem)
	})
	return slices.CompactFunc(out, func(a, b Violation) bool { return a == b }), nil
}

// index maps the location of s and of every schema under it to the schema.
func index(s *jsonschema.Schema, m map[string]*jsonschema.Schema) {
	if s == nil || m[s.Location] != nil {
		return
	}
	m[s.Location] = s
	for _, sub := range []*jsonschema.Schema{s.Ref, s.Not, s.Items2020, s.Contains, s.If, s.Then, s.Else} {
		index(sub, m)
	}
	for _, list := range [][]*jsonschema.Schema{s.AllOf, s.AnyOf, s.OneOf, s.PrefixItems} {
		for _, sub := range list {
			index(sub, m)
		}
	}
	for _, sub := range s.Properties {
		index(sub, m)
	}
	if sub, ok := s.AdditionalProperties.(*jsonschema.Schema); ok {
		index(sub, m)
	}
}

// pointer returns the JSON pointer of loc ("" for the document).
func pointer(loc []string) string {
	var sb strings.Builder
	for _, s := range loc {
		sb.WriteByte('/')
		sb.WriteString(strings.NewReplacer("~", "~0", "/", "~1").Replace(s))
	}
	return sb.String()
}

// valueAt returns the value at loc in a document read by jsonschema.UnmarshalJSON.
func valueAt(v any, loc []string) any {
	for _, s := range loc {
		switch c := v.(type) {
		case map[string]any:
			v = c[s]
		case []any:
			i, err := strconv.Atoi(s)
			if err != nil || i < 0 || i >= len(c) {
				return nil
			}
			v = c[i]
		default:
			return nil
		}
	}
	return v
}

// show writes a JSON value short enough for a one-line message.
func show(v any) string {
	switch v.(type) {
	case map[string]any:
		return "an object"
	case []any:
		return "an array"
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	if r := []rune(string(b)); len(r) > 80 {
		return string(r[:72]) + "…" + string(r[len(r)-4:])
	}
	return string(b)
}

// describe names the JSON type of v and, for a scalar, shows it: `string "three"`.
func describe(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case map[string]any:
		return "an object"
	case []any:
		return "an array"
	case string:
		return "string " + show(v)
	case bool:
		return "boolean " + show(v)
	}
	return "number " + show(v)
}

func rat(r *big.Rat) string {
	if r == nil {
		return "?"
	}
	if r.IsInt() {
		return r.Num().String()
	}
	f, _ := r.Float64()
	return strconv.FormatFloat(f, 'g', -1, 64)
}
