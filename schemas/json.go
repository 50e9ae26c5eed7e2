package schemas

import (
	"bytes"
	"embed"
	"fmt"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// JSONSchemas holds the JSON Schemas of drflow's documents (json/*.schema.json).
//
//go:embed json/*.schema.json
var JSONSchemas embed.FS

// ManifestSchemaFile is the JSON Schema of a backup set's manifest.json.
const ManifestSchemaFile = "json/manifest.schema.json"

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
