package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestReport(t *testing.T) {
	tests := []struct {
		name     string
		in       string
		code     int
		contains []string
	}{
		{
			name: "all pass",
			in: `{"Action":"run","Package":"p","Test":"TestA"}
{"Action":"output","Package":"p","Test":"TestA","Output":"hello\n"}
{"Action":"pass","Package":"p","Test":"TestA"}
{"Action":"pass","Package":"p","Elapsed":1.5}`,
			code:     0,
			contains: []string{"1 passed, 0 failed, 0 skipped", "ok   p"},
		},
		{
			name: "failure shows its output",
			in: `{"Action":"output","Package":"p","Test":"TestB","Output":"boom at x_test.go:3\n"}
{"Action":"fail","Package":"p","Test":"TestB"}
{"Action":"pass","Package":"p","Test":"TestA"}
{"Action":"fail","Package":"p"}`,
			code:     1,
			contains: []string{"=== FAIL p TestB", "boom at x_test.go:3", "1 passed, 2 failed, 0 skipped"},
		},
		{
			name: "a skip fails the run",
			in: `{"Action":"pass","Package":"p","Test":"TestA"}
{"Action":"output","Package":"p","Test":"TestC","Output":"needs redis\n"}
{"Action":"skip","Package":"p","Test":"TestC"}`,
			code:     1,
			contains: []string{"=== SKIP p TestC", "needs redis", "1 passed, 0 failed, 1 skipped", "skipped tests count as failures"},
		},
		{
			name:     "no test at all",
			in:       `{"Action":"skip","Package":"p"}`,
			code:     1,
			contains: []string{"0 passed, 0 failed, 0 skipped", "no test ran"},
		},
		{
			name: "build failure",
			in: `# p
p/x.go:1:1: syntax error
{"Action":"fail","Package":"p"}`,
			code:     1,
			contains: []string{"syntax error", "FAIL p"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out strings.Builder
			code, err := run(strings.NewReader(tt.in), &out)
			assert.NoError(t, err)
			assert.Equal(t, tt.code, code, out.String())
			for _, c := range tt.contains {
				assert.Contains(t, out.String(), c)
			}
		})
	}
}
