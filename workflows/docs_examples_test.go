package workflows

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"
)

// The tests in this file check every workflow input shown in the documentation
// (README.md and docs/**/*.md) against the code: each `--input '…'` of a command that
// starts a workflow — `starter start TYPE`, `starter backup`, `starter schedule create`,
// `temporal workflow start|execute --type TYPE`, `tctl workflow start|run --workflow_type
// TYPE` — and each ```json block labelled with the HTML comment
// `<!-- workflow-input: TYPE -->` on the line before it. Every input must decode into the
// registered input type of TYPE (workflows.All) with unknown fields refused, as the
// starter decodes it, and pass the input's own checks (its normalize method), as the
// workflow runs them first. `temporal workflow update execute --name approve|reject`
// inputs must decode into Decision. The task queue of a temporal or tctl start is
// TaskQueue, every registered workflow has an example for each of the three tools, and
// the input tables of the runbook pages name exactly the fields of their input types.

// docExample is one workflow input found in the documentation.
type docExample struct {
	where string // file:line
	tool  string // starter, temporal, tctl or json
	typ   string // workflow type, or "update approve"/"update reject"
	input string // the JSON, as written; "" when the command gives none
	queue string // task queue given on the command line, if any
	err   string // what is wrong with the command itself
}

func (e docExample) String() string {
	return fmt.Sprintf("%s: %s %s --input '%s'", e.where, e.tool, e.typ, e.input)
}

// docFiles returns README.md and every Markdown file under docs/.
func docFiles(t *testing.T) []string {
	t.Helper()
	files := []string{"../README.md"}
	err := filepath.WalkDir("../docs", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".md") {
			files = append(files, p)
		}
		return err
	})
	require.NoError(t, err)
	return files
}

var (
	inlineCodeRE = regexp.MustCompile("`([^`]+)`")
	inputLabelRE = regexp.MustCompile(`^<!--\s*workflow-input:\s*(\w+)\s*-->$`)
)

// docExamples scans one Markdown file. Commands are read from fenced code blocks
// (lines ending in a backslash continue on the next) and from inline code spans, which
// may wrap onto the next line of their paragraph.
func docExamples(name, text string) []docExample {
	var out []docExample
	lines := strings.Split(text, "\n")
	para, paraStart := "", 0
	endPara := func() {
		for _, m := range inlineCodeRE.FindAllStringSubmatch(para, -1) {
			out = append(out, commandExamples(fmt.Sprintf("%s:%d", name, paraStart), m[1])...)
		}
		para = ""
	}
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		fence := strings.TrimSpace(line)
		if !strings.HasPrefix(fence, "```") {
			switch {
			case fence == "":
				endPara()
			case para == "":
				para, paraStart = fence, i+1
			default:
				para += " " + fence
			}
			continue
		}
		endPara()
		lang := strings.TrimSpace(strings.TrimPrefix(fence, "```"))
		label := ""
		if i > 0 {
			if m := inputLabelRE.FindStringSubmatch(strings.TrimSpace(lines[i-1])); m != nil {
				label = m[1]
			}
		}
		start := i + 1
		var body []string
		for i++; i < len(lines) && strings.TrimSpace(lines[i]) != "```"; i++ {
			body = append(body, lines[i])
		}
		if label != "" {
			e := docExample{where: fmt.Sprintf("%s:%d", name, start+1), tool: "json", typ: label, input: strings.Join(body, "\n")}
			if lang != "json" {
				e.err = fmt.Sprintf("the block labelled workflow-input is ```%s, not ```json", lang)
			}
			out = append(out, e)
			continue
		}
		if lang == "json" || lang == "yaml" || lang == "sql" {
			continue
		}
		for j := 0; j < len(body); j++ {
			first := j
			cmd := body[j]
			for strings.HasSuffix(cmd, `\`) && j+1 < len(body) {
				j++
				cmd = strings.TrimSuffix(cmd, `\`) + " " + body[j]
			}
			out = append(out, commandExamples(fmt.Sprintf("%s:%d", name, start+first+1), cmd)...)
		}
	}
	endPara()
	return out
}

// shellWords splits a command line the way sh does for the cases the docs use: single
// and double quotes, backslash escapes, comments, and the operators && || ; | which end a
// command. It returns one word list per command.
func shellWords(line string) ([][]string, error) {
	var cmds [][]string
	var words []string
	var cur strings.Builder
	inWord := false
	flush := func() {
		if inWord {
			words = append(words, cur.String())
			cur.Reset()
			inWord = false
		}
	}
	end := func() {
		flush()
		if len(words) > 0 {
			cmds = append(cmds, words)
		}
		words = nil
	}
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == '\'':
			j := strings.IndexByte(line[i+1:], '\'')
			if j < 0 {
				return nil, errors.New("unterminated single quote")
			}
			cur.WriteString(line[i+1 : i+1+j])
			inWord, i = true, i+1+j
		case c == '"':
			i++
			for ; i < len(line) && line[i] != '"'; i++ {
				if line[i] == '\\' && i+1 < len(line) && strings.IndexByte("\"\\$`", line[i+1]) >= 0 {
					i++
				}
				cur.WriteByte(line[i])
			}
			if i >= len(line) {
				return nil, errors.New("unterminated double quote")
			}
			inWord = true
		case c == '\\' && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
			inWord = true
		case c == ' ' || c == '\t':
			flush()
		case c == '#' && !inWord:
			end()
			return cmds, nil
		case c == ';' || c == '|' || c == '&':
			if c != ';' && i+1 < len(line) && line[i+1] == c {
				i++
			}
			end()
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	end()
	return cmds, nil
}

// flagValue returns the value of the first of names in args ("--name value" or
// "--name=value"), and whether it is there.
func flagValue(args []string, names ...string) (string, bool) {
	for i, a := range args {
		for _, n := range names {
			if a == n && i+1 < len(args) {
				return args[i+1], true
			}
			if v, ok := strings.CutPrefix(a, n+"="); ok {
				return v, true
			}
		}
	}
	return "", false
}

// commandExamples returns the workflow inputs of the starter, temporal and tctl
// commands on one command line; other commands are ignored.
func commandExamples(where, line string) []docExample {
	if !slices.ContainsFunc(strings.Fields(line), func(w string) bool {
		b := path.Base(strings.Trim(w, "`"))
		return b == "starter" || b == "temporal" || b == "tctl"
	}) {
		return nil // no command word: prose, such as a message that names temporal.internal
	}
	cmds, err := shellWords(line)
	if err != nil {
		return []docExample{{where: where, err: fmt.Sprintf("%v in %q", err, line)}}
	}
	var out []docExample
	for _, words := range cmds {
		tool := -1
		for i, w := range words {
			if b := path.Base(w); b == "starter" || b == "temporal" || b == "tctl" {
				tool = i
				break
			}
		}
		if tool < 0 || tool+1 >= len(words) {
			continue
		}
		e := docExample{where: where, tool: path.Base(words[tool])}
		args := words[tool+1:]
		input, hasInput := flagValue(args, "--input", "-input", "-i")
		e.input = input
		sub := strings.Join(args[:min(2, len(args))], " ")
		switch e.tool {
		case "starter":
			switch {
			case args[0] == "start" && len(args) > 1 && !strings.HasPrefix(args[1], "-"):
				e.typ = args[1]
			case args[0] == "start":
				continue // "starter start" named in prose
			case args[0] == "backup":
				e.typ = NightlyBackupName
			case sub == "schedule create":
				e.typ = NightlyBackupName
				if slices.Contains(args, "--drill") {
					e.typ = VerifyBackupName
				}
			case hasInput:
				e.err = fmt.Sprintf("starter %s takes no --input", args[0])
			default:
				continue
			}
		case "temporal":
			switch {
			case sub == "workflow start" || sub == "workflow execute":
				e.typ, _ = flagValue(args, "--type")
				e.queue, _ = flagValue(args, "--task-queue", "-t")
			case sub == "workflow update" && len(args) > 2:
				name, _ := flagValue(args, "--name")
				e.typ = "update " + name
			case hasInput:
				e.err = fmt.Sprintf("temporal %s: not a command that starts a workflow; the docs test does not know its input type", sub)
			default:
				continue
			}
		case "tctl":
			switch {
			case sub == "workflow start" || sub == "workflow run":
				e.typ, _ = flagValue(args, "--workflow_type", "--wt")
				e.queue, _ = flagValue(args, "--taskqueue", "--tq", "-t")
			case hasInput:
				e.err = fmt.Sprintf("tctl %s: not a command that starts a workflow; the docs test does not know its input type", sub)
			default:
				continue
			}
		}
		if isPlaceholder(e.typ) {
			continue // a synopsis such as "starter start <type> --input <json>"
		}
		if e.typ == "" && e.err == "" {
			e.err = fmt.Sprintf("%s command without a workflow type: %q", e.tool, line)
		}
		out = append(out, e)
	}
	return out
}

// isPlaceholder reports whether a workflow type is a placeholder of a synopsis.
func isPlaceholder(typ string) bool {
	return strings.HasPrefix(typ, "<") && strings.HasSuffix(typ, ">") || typ == "TYPE"
}

// inputChecker and inputCheckerCtx are the two forms of the input checks the workflows
// run before anything else.
type (
	inputChecker    interface{ normalize() error }
	inputCheckerCtx interface {
		normalize(workflow.Context) error
	}
)

// checkInput decodes raw into typ's input as the starter does and runs its checks.
func checkInput(typ, raw string) error {
	var in any
	if name, ok := strings.CutPrefix(typ, "update "); ok {
		if name != ApproveUpdate && name != RejectUpdate {
			return fmt.Errorf("update %q is not %q or %q", name, ApproveUpdate, RejectUpdate)
		}
		in = new(Decision)
	} else {
		def, ok := Lookup(typ)
		if !ok {
			return fmt.Errorf("no workflow type %q is registered (workflows.All)", typ)
		}
		in = def.NewInput()
	}
	if raw == "" {
		return nil
	}
	dec := json.NewDecoder(strings.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(in); err != nil {
		return fmt.Errorf("decode into %T: %w", in, err)
	}
	if dec.More() {
		return fmt.Errorf("trailing data after the JSON object")
	}
	switch c := in.(type) {
	case *Decision:
		return nil
	case inputChecker:
		return c.normalize()
	case inputCheckerCtx:
		var s testsuite.WorkflowTestSuite
		env := s.NewTestWorkflowEnvironment()
		env.ExecuteWorkflow(func(ctx workflow.Context) error { return c.normalize(ctx) })
		return env.GetWorkflowError()
	}
	return fmt.Errorf("%T has no normalize method: teach docs_examples_test.go how to check it", in)
}

func allDocExamples(t *testing.T) []docExample {
	t.Helper()
	var all []docExample
	for _, f := range docFiles(t) {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		all = append(all, docExamples(strings.TrimPrefix(f, "../"), string(b))...)
	}
	return all
}

// TestDocsWorkflowInputs: every workflow input in the docs decodes into its workflow's
// input type, with unknown fields refused, and passes the workflow's input checks.
func TestDocsWorkflowInputs(t *testing.T) {
	examples := allDocExamples(t)
	require.NotEmpty(t, examples)
	withInput := 0
	for _, e := range examples {
		if e.err != "" {
			t.Errorf("%s: %s", e.where, e.err)
			continue
		}
		if e.input != "" {
			withInput++
		}
		if err := checkInput(e.typ, e.input); err != nil {
			t.Errorf("%s\n\t%v", e, err)
		}
	}
	t.Logf("%d workflow commands and inputs checked, %d with an input", len(examples), withInput)
}

// TestDocsTaskQueue: a temporal or tctl command that starts a workflow names the task
// queue the workers poll.
func TestDocsTaskQueue(t *testing.T) {
	for _, e := range allDocExamples(t) {
		if (e.tool != "temporal" && e.tool != "tctl") || strings.HasPrefix(e.typ, "update ") || e.err != "" {
			continue
		}
		assert.Equal(t, TaskQueue, e.queue, "%s: task queue of %s %s", e.where, e.tool, e.typ)
	}
}

// TestDocsStartEveryWorkflow: every registered workflow is shown started with the
// starter, the temporal CLI and tctl, each with an input.
func TestDocsStartEveryWorkflow(t *testing.T) {
	seen := map[string]bool{}
	for _, e := range allDocExamples(t) {
		if e.err == "" && e.input != "" {
			seen[e.tool+" "+e.typ] = true
		}
	}
	for _, def := range All() {
		for _, tool := range []string{"starter", "temporal", "tctl"} {
			assert.True(t, seen[tool+" "+def.Name], "no %s example in the docs starts %s with an --input", tool, def.Name)
		}
	}
}

// jsonFields returns the JSON names of the fields of struct type t.
func jsonFields(t reflect.Type) map[string]bool {
	out := map[string]bool{}
	for _, f := range JSONFields(t) {
		out[f.Name] = true
	}
	return out
}

// TestDocsInputTables: the input tables of the runbook pages (the tables whose first
// column is "field") name only JSON fields of the workflows the page starts, and the
// page named after a workflow (total-db-loss.md: TotalDBLoss) lists every field of its
// input.
func TestDocsInputTables(t *testing.T) {
	pages, err := filepath.Glob("../docs/runbooks/*.md")
	require.NoError(t, err)
	for _, page := range pages {
		raw, err := os.ReadFile(page)
		require.NoError(t, err)
		name := strings.TrimPrefix(page, "../")
		var own *Definition
		for _, def := range All() {
			if strings.EqualFold(def.Name, strings.ReplaceAll(strings.TrimSuffix(filepath.Base(page), ".md"), "-", "")) {
				own = &def
			}
		}
		known := map[string]bool{}
		types := map[string]bool{}
		if own != nil {
			types[own.Name] = true
		}
		for _, e := range docExamples(name, string(raw)) {
			if _, ok := Lookup(e.typ); ok {
				types[e.typ] = true
			}
		}
		for typ := range types {
			def, _ := Lookup(typ)
			for f := range jsonFields(reflect.TypeOf(def.NewInput()).Elem()) {
				known[f] = true
			}
		}
		listed := map[string]bool{}
		inTable := false
		for i, line := range strings.Split(string(raw), "\n") {
			switch {
			case strings.HasPrefix(line, "| field |"):
				inTable = true
				continue
			case !strings.HasPrefix(line, "|"):
				inTable = false
				continue
			case !inTable || strings.HasPrefix(line, "|---"):
				continue
			}
			cell := strings.SplitN(line, "|", 3)[1]
			for _, m := range inlineCodeRE.FindAllStringSubmatch(cell, -1) {
				listed[m[1]] = true
				assert.True(t, known[m[1]], "%s:%d: input field %q is not a JSON field of %v", name, i+1, m[1], slices.Sorted(maps.Keys(types)))
			}
		}
		if own == nil {
			continue
		}
		for f := range jsonFields(reflect.TypeOf(own.NewInput()).Elem()) {
			assert.True(t, listed[f], "%s: the input table does not list %s's field %q", name, own.Name, f)
		}
	}
}

// TestDocsExampleScanner guards the scanner itself: what it must find and what it must
// refuse.
func TestDocsExampleScanner(t *testing.T) {
	doc := strings.Join([]string{
		"Run `bin/starter start RedisLoss",
		"--input '{\"dryRun\": true}' --wait` now.",
		"```sh",
		"starter plan fcr-1 && starter approve fcr-1",
		"temporal workflow start --type TotalDBLoss --task-queue drflow --workflow-id t-1 \\",
		"  --input '{\"setId\": \"2026-11-21T02-00-00Z\"}'   # a comment with --input '{'",
		"tctl workflow start --taskqueue drflow --workflow_type MinIOLoss --workflow_id m-1 --input '{\"bucket\":\"kohakku\"}'",
		"starter schedule create --drill --input '{\"restore\": false}'",
		"temporal workflow update execute --workflow-id t-1 --name approve --input '{\"by\":\"alice\"}'",
		"```",
		"<!-- workflow-input: FullClusterRecovery -->",
		"```json",
		`{"scope": "all"}`,
		"```",
	}, "\n")
	got := docExamples("x.md", doc)
	want := []docExample{
		{where: "x.md:1", tool: "starter", typ: "RedisLoss", input: `{"dryRun": true}`},
		{where: "x.md:5", tool: "temporal", typ: "TotalDBLoss", input: `{"setId": "2026-11-21T02-00-00Z"}`, queue: "drflow"},
		{where: "x.md:7", tool: "tctl", typ: "MinIOLoss", input: `{"bucket":"kohakku"}`, queue: "drflow"},
		{where: "x.md:8", tool: "starter", typ: "VerifyBackup", input: `{"restore": false}`},
		{where: "x.md:9", tool: "temporal", typ: "update approve", input: `{"by":"alice"}`},
		{where: "x.md:13", tool: "json", typ: "FullClusterRecovery", input: `{"scope": "all"}`},
	}
	assert.Equal(t, want, got)
	for _, e := range got {
		assert.NoError(t, checkInput(e.typ, e.input), e.String())
	}

	for _, tc := range []struct{ typ, input, want string }{
		{"RedisLoss", `{"instanse": "default"}`, `unknown field "instanse"`},
		{"TotalDBLoss", `{"targetSuffix": "-DRILL"}`, `targetSuffix`},
		{"FullClusterRecovery", `{"lostAfter": 120}`, `duration string`},
		{"RedispatchLostTasks", `{"batchSize": 0, "pollEvery": "1ms"}`, `pollEvery`},
		{"NightlyBackup", `{} {}`, `trailing data`},
		{"NoSuchRunbook", `{}`, `no workflow type`},
		{"update approve", `{"who": "alice"}`, `unknown field "who"`},
	} {
		err := checkInput(tc.typ, tc.input)
		if assert.Error(t, err, "%s %s", tc.typ, tc.input) {
			assert.Contains(t, err.Error(), tc.want)
		}
	}
	bad := docExamples("y.md", "`starter start RedisLoss --input '{\"dryRun\": true}`")
	require.Len(t, bad, 1)
	assert.Contains(t, bad[0].err, "unterminated single quote")
}
