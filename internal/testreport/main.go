// Command testreport reads `go test -json` on stdin and prints a short report: the output
// of every failed test, the packages, and one closing line "N passed, N failed, N skipped".
//
// It exits non-zero when a test or package failed, when the stream has no test at all, or
// when any test skipped: drflow's tests start the servers they need, so a skip means a
// required integration test did not run, and CI must not count that as passing.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"
)

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action  string
	Package string
	Test    string
	Output  string
	Elapsed float64
}

type report struct {
	passed, failed, skipped []string
	pkgFailed               []string
	pkgElapsed              map[string]float64
	output                  map[string]*strings.Builder // "pkg test" → output
	buildOutput             strings.Builder
}

func main() {
	code, err := run(os.Stdin, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testreport:", err)
		os.Exit(2)
	}
	os.Exit(code)
}

func run(in io.Reader, out io.Writer) (int, error) {
	r := &report{pkgElapsed: map[string]float64{}, output: map[string]*strings.Builder{}}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var ev event
		if err := json.Unmarshal(line, &ev); err != nil || ev.Action == "" {
			// Not a test2json line (e.g. a build error printed by go itself).
			r.buildOutput.Write(line)
			r.buildOutput.WriteByte('\n')
			continue
		}
		r.add(ev)
	}
	if err := sc.Err(); err != nil {
		return 2, err
	}
	return r.print(out), nil
}

func (r *report) add(ev event) {
	id := ev.Package + " " + ev.Test
	switch ev.Action {
	case "output", "build-output":
		b := r.output[id]
		if b == nil {
			b = &strings.Builder{}
			r.output[id] = b
		}
		b.WriteString(ev.Output)
	case "pass":
		if ev.Test != "" {
			r.passed = append(r.passed, id)
		} else {
			r.pkgElapsed[ev.Package] = ev.Elapsed
		}
	case "fail", "build-fail":
		if ev.Test != "" {
			r.failed = append(r.failed, id)
		} else {
			r.pkgFailed = append(r.pkgFailed, ev.Package)
		}
	case "skip":
		if ev.Test != "" {
			r.skipped = append(r.skipped, id)
		}
	}
}

func (r *report) print(out io.Writer) int {
	if s := strings.TrimSpace(r.buildOutput.String()); s != "" {
		fmt.Fprintln(out, s)
	}
	for _, id := range r.failed {
		fmt.Fprintf(out, "=== FAIL %s\n%s", id, r.output[id])
	}
	for _, pkg := range r.pkgFailed {
		fmt.Fprintf(out, "=== FAIL package %s\n%s", pkg, r.output[pkg+" "])
	}
	for _, id := range r.skipped {
		fmt.Fprintf(out, "=== SKIP %s (a required test did not run)\n%s", id, r.output[id])
	}
	pkgs := make([]string, 0, len(r.pkgElapsed))
	for p := range r.pkgElapsed {
		pkgs = append(pkgs, p)
	}
	sort.Strings(pkgs)
	for _, p := range pkgs {
		fmt.Fprintf(out, "ok   %-60s %s\n", p, time.Duration(r.pkgElapsed[p]*float64(time.Second)).Round(time.Millisecond))
	}
	for _, p := range r.pkgFailed {
		fmt.Fprintf(out, "FAIL %s\n", p)
	}
	fmt.Fprintf(out, "%d passed, %d failed, %d skipped\n", len(r.passed), len(r.failed)+len(r.pkgFailed), len(r.skipped))
	switch {
	case len(r.failed) > 0 || len(r.pkgFailed) > 0:
		return 1
	case len(r.skipped) > 0:
		fmt.Fprintln(out, "FAIL: skipped tests count as failures: every test must start what it needs")
		return 1
	case len(r.passed) == 0:
		fmt.Fprintln(out, "FAIL: no test ran")
		return 1
	}
	return 0
}
