package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// writeStarterConfig writes the configuration file that points starter at the demo's
// embedded Temporal, for the schedule (below) and for an operator who explores the
// stack with --keep (DRFLOW_CONFIG=<file> starter progress …). Its Temporal client
// profile is an empty file of its own, so a profile in the operator's home directory
// (Temporal Cloud, say) is not mixed in.
func (d *demo) writeStarterConfig() error {
	profile := filepath.Join(d.st.Dir, "temporal.toml")
	if err := os.WriteFile(profile, nil, 0o600); err != nil {
		return err
	}
	d.configPath = filepath.Join(d.st.Dir, "starter.yaml")
	yaml := fmt.Sprintf("# starter configuration for the demo's embedded Temporal\ntemporal:\n  address: %q\n  namespace: default\n  configFile: %q\n",
		d.grpcAddr, profile)
	if err := os.WriteFile(d.configPath, []byte(yaml), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", d.configPath, err)
	}
	return nil
}

// createSchedule creates the nightly backup Schedule through `starter schedule create`'s
// own code (runSchedule), against the demo's Temporal.
func (d *demo) createSchedule(ctx context.Context) (string, error) {
	if err := d.writeStarterConfig(); err != nil {
		return "", err
	}
	var out strings.Builder
	err := withoutTemporalEnv(func() error {
		return runSchedule(ctx, []string{"create", "--config", d.configPath}, &out, io.Discard)
	})
	if err != nil {
		return "", err
	}
	d.schedule = strings.TrimPrefix(strings.TrimSpace(out.String()), "created schedule ")
	return d.schedule, nil
}

// withoutTemporalEnv runs fn with the TEMPORAL_* variables unset. starter reads them over
// its configuration file, so a shell that points at another Temporal (a staging cluster,
// Temporal Cloud) would otherwise get the demo's schedule. The demo is a process of its
// own; the variables are back when fn returns.
func withoutTemporalEnv(fn func() error) error {
	saved := map[string]string{}
	for _, kv := range os.Environ() {
		name, value, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "TEMPORAL_") {
			saved[name] = value
			_ = os.Unsetenv(name)
		}
	}
	defer func() {
		for name, value := range saved {
			_ = os.Setenv(name, value)
		}
	}()
	return fn()
}
