package activities

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"

	"go.temporal.io/sdk/activity"
)

// Error types of the non-retryable errors raised by RedisHost.
const (
	// ErrAOFNotFound: QuarantineAOF found neither the AOF directory nor an
	// earlier quarantine under the same stamp, so there is nothing to move.
	ErrAOFNotFound = "AOFNotFound"
	// ErrAOFQuarantineConflict: both the AOF directory and the quarantine
	// target of the stamp exist; QuarantineAOF never overwrites.
	ErrAOFQuarantineConflict = "AOFQuarantineConflict"
)

// AOFManifestName is the manifest of a Redis 7 multi-part AOF inside the
// appendonlydir (appendfilename "appendonly.aof", the default).
const AOFManifestName = "appendonly.aof.manifest"

// aofDetailLines is how many of redis-check-aof's last output lines
// AOFState.Detail keeps.
const aofDetailLines = 3

// quarantineStamp is what QuarantineInput.Stamp may hold.
var quarantineStamp = regexp.MustCompile(`^[0-9TZ]{1,32}$`)

// RedisHost holds the steps that need the Redis host's file system. Its
// methods are activities; they run only on a worker on the Redis host, on
// that host's task queue.
type RedisHost struct {
	// AOFDir is Redis 7's appendonlydir (config DRFLOW_REDIS_AOF_DIR), an
	// absolute path; "" means not configured. A regular file is taken as
	// an old-style single-file AOF.
	AOFDir string
	// CheckAOFPath is the redis-check-aof binary; "" looks it up on PATH.
	CheckAOFPath string
}

// AOFState is what InspectAOF found.
type AOFState struct {
	// Dir is the AOF directory inspected.
	Dir string `json:"dir"`
	// Configured is false when the worker has no AOF directory; then
	// nothing else is set.
	Configured bool `json:"configured"`
	// Exists is false when the directory does not exist (no AOF yet, or
	// quarantined already).
	Exists bool `json:"exists"`
	// Files and Bytes count the regular files in the directory.
	Files int   `json:"files"`
	Bytes int64 `json:"bytes"`
	// Corrupt is true when redis-check-aof finds the AOF invalid (or its
	// files have no manifest), so Redis may refuse to start from it.
	Corrupt bool `json:"corrupt"`
	// Detail is redis-check-aof's verdict: its last output lines.
	Detail string `json:"detail,omitempty"`
}

// QuarantineInput says where QuarantineAOF moves the AOF.
type QuarantineInput struct {
	// Stamp is the UTC time chosen by the workflow, e.g. "20261121T031500Z"
	// (digits, T and Z only); the AOF moves to <dir>.corrupt-<stamp>.
	Stamp string `json:"stamp"`
}

// QuarantineResult reports a quarantine.
type QuarantineResult struct {
	// From is the AOF directory, To where it is now.
	From string `json:"from"`
	To   string `json:"to"`
	// Files and Bytes count the regular files moved.
	Files int   `json:"files"`
	Bytes int64 `json:"bytes"`
	// AlreadyDone is true when an earlier attempt had moved it already.
	AlreadyDone bool `json:"alreadyDone"`
}

// dir returns the configured AOF directory, cleaned, or a non-retryable
// ErrInvalidConfig when it is not an absolute path.
func (h *RedisHost) dir(step string) (string, error) {
	if h.AOFDir == "" {
		return "", NonRetryable(ErrInvalidConfig, fmt.Errorf("%s: no AOF directory configured (DRFLOW_REDIS_AOF_DIR)", step))
	}
	if !filepath.IsAbs(h.AOFDir) {
		return "", NonRetryable(ErrInvalidConfig, fmt.Errorf("%s: DRFLOW_REDIS_AOF_DIR %q is not an absolute path", step, h.AOFDir))
	}
	d := filepath.Clean(h.AOFDir)
	if d == string(filepath.Separator) {
		return "", NonRetryable(ErrInvalidConfig, fmt.Errorf("%s: DRFLOW_REDIS_AOF_DIR is the root directory", step))
	}
	return d, nil
}

// fsError wraps a file system error; a denied permission is non-retryable.
func fsError(step string, err error) error {
	err = fmt.Errorf("%s: %w", step, err)
	if errors.Is(err, fs.ErrPermission) {
		return NonRetryable(ErrPermissionDenied, fmt.Errorf("%w (the worker's user needs access to the Redis AOF directory)", err))
	}
	return err
}

// usage counts the regular files at path (a directory, or one file) and
// their bytes.
func usage(path string) (files int, bytes int64, err error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return 0, 0, err
	}
	if fi.Mode().IsRegular() {
		return 1, fi.Size(), nil
	}
	entries, err := os.ReadDir(path)
	if err != nil {
		return 0, 0, err
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			return 0, 0, err
		}
		files++
		bytes += info.Size()
	}
	return files, bytes, nil
}

// exists reports whether path exists (without following a final symlink).
func exists(path string) (bool, error) {
	_, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

// InspectAOF checks the AOF with `redis-check-aof <dir>/appendonly.aof.manifest`
// (Redis 7 multi-part AOF; a directory with one other *.manifest uses that
// one) WITHOUT --fix: it only reads. Corrupt is set when redis-check-aof
// exits 1, which includes a last file cut short mid-command (Redis itself
// loads such a tail with aof-load-truncated yes, the default) and a file
// named in the manifest that is missing; files without any manifest are
// Corrupt too. A missing directory is Exists=false and an empty one is
// clean. Not configured is Configured=false, not an error.
//
// Run it while Redis is stopped: a running Redis appends to the last file,
// and a half-written command looks like a truncated one. It heartbeats its
// state while redis-check-aof runs. Errors: redis-check-aof missing and a
// bad directory setting are ErrInvalidConfig, a denied permission is
// ErrPermissionDenied (non-retryable); redis-check-aof failing otherwise
// (killed, another exit status) is returned for the retry policy.
func (h *RedisHost) InspectAOF(ctx context.Context) (AOFState, error) {
	const step = "inspect aof"
	st := AOFState{Dir: h.AOFDir}
	if h.AOFDir == "" {
		return st, nil
	}
	dir, err := h.dir(step)
	if err != nil {
		return st, err
	}
	st.Dir, st.Configured = dir, true
	fi, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, fsError(step, err)
	}
	st.Exists = true
	if st.Files, st.Bytes, err = usage(dir); err != nil {
		return st, fsError(step, err)
	}
	target := dir // an old-style single-file AOF is checked as it is
	if fi.IsDir() {
		var why string
		if target, why, err = findManifest(dir); err != nil {
			return st, fsError(step, err)
		}
		if target == "" {
			if st.Files > 0 {
				st.Corrupt, st.Detail = true, why
			}
			return st, nil
		}
	} else if !fi.Mode().IsRegular() {
		return st, NonRetryable(ErrInvalidConfig, fmt.Errorf("%s: %s is neither a directory nor a file: DRFLOW_REDIS_AOF_DIR must name Redis' appendonlydir", step, dir))
	}
	// The manifest must be readable by us, or redis-check-aof's "cannot
	// open" would pass for corruption.
	f, err := os.Open(target)
	if err != nil {
		return st, fsError(step, err)
	}
	f.Close()

	bin := h.CheckAOFPath
	if bin == "" {
		if bin, err = exec.LookPath("redis-check-aof"); err != nil {
			return st, NonRetryable(ErrInvalidConfig, fmt.Errorf("%s: redis-check-aof is not on PATH: install Redis' tools on this host (Debian: redis-tools) or set RedisHost.CheckAOFPath", step))
		}
	}
	var mu sync.Mutex
	stop := startHeartbeat(ctx, 0, func() {
		mu.Lock()
		s := st
		mu.Unlock()
		activity.RecordHeartbeat(ctx, s)
	})
	out := &tailBuffer{limit: 16 << 10}
	cmd := exec.CommandContext(ctx, bin, target)
	cmd.Dir = filepath.Dir(target)
	cmd.Stdout, cmd.Stderr = out, out // stdin is /dev/null: nothing to answer
	err = cmd.Run()
	stop()
	mu.Lock()
	defer mu.Unlock()
	var exit *exec.ExitError
	switch {
	case ctx.Err() != nil:
		return st, fmt.Errorf("%s %s: %w", step, target, context.Cause(ctx))
	case err == nil:
		st.Detail = lastLines(out, aofDetailLines)
	case errors.As(err, &exit) && exit.ExitCode() == 1:
		st.Corrupt, st.Detail = true, lastLines(out, aofDetailLines)
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, exec.ErrNotFound):
		return st, NonRetryable(ErrInvalidConfig, fmt.Errorf("%s: %w (RedisHost.CheckAOFPath)", step, err))
	default:
		return st, fmt.Errorf("%s: %s %s: %w: %s", step, bin, target, err, lastLines(out, aofDetailLines))
	}
	activity.GetLogger(ctx).Info("aof inspected", "dir", dir, "files", st.Files, "bytes", st.Bytes, "corrupt", st.Corrupt, "detail", st.Detail)
	return st, nil
}

// findManifest returns the manifest of the AOF in dir, or "" and why there
// is none to check.
func findManifest(dir string) (path, why string, err error) {
	def := filepath.Join(dir, AOFManifestName)
	if ok, err := exists(def); err != nil || ok {
		return def, "", err
	}
	found, err := filepath.Glob(filepath.Join(dir, "*.manifest"))
	if err != nil {
		return "", "", err
	}
	switch len(found) {
	case 1:
		return found[0], "", nil
	case 0:
		return "", fmt.Sprintf("no manifest (%s) in %s: Redis cannot load the files there", AOFManifestName, dir), nil
	}
	return "", fmt.Sprintf("%d manifests in %s and none is %s: which one Redis loads depends on its appendfilename", len(found), dir, AOFManifestName), nil
}

// QuarantineAOF moves the AOF directory aside to <dir>.corrupt-<stamp>, next
// to it, so Redis starts empty; it never deletes and never overwrites. It is
// idempotent: when the target exists and the directory does not, an earlier
// attempt moved it (AlreadyDone). When both exist it fails with a
// non-retryable ErrAOFQuarantineConflict naming both paths; when neither
// does, ErrAOFNotFound. Redis must be stopped: a running Redis would keep
// writing to the moved files.
//
// A directory is moved with one rename(2), which can only ever replace an
// empty directory created in the instant after the check; an old-style
// single file is hard-linked to the target (which fails if it exists) and
// then unlinked. The parent directory is fsynced after the move.
func (h *RedisHost) QuarantineAOF(ctx context.Context, in QuarantineInput) (QuarantineResult, error) {
	const step = "quarantine aof"
	if !quarantineStamp.MatchString(in.Stamp) {
		return QuarantineResult{}, NonRetryable(ErrInvalidInput, fmt.Errorf(
			"%s: input field \"stamp\" is %q: want a UTC stamp of digits, T and Z (at most 32), e.g. 20261121T031500Z", step, in.Stamp))
	}
	dir, err := h.dir(step)
	if err != nil {
		return QuarantineResult{}, err
	}
	res := QuarantineResult{From: dir, To: dir + ".corrupt-" + in.Stamp}
	fromOK, err := exists(res.From)
	if err != nil {
		return res, fsError(step, err)
	}
	toOK, err := exists(res.To)
	if err != nil {
		return res, fsError(step, err)
	}
	log := activity.GetLogger(ctx)
	switch {
	case !fromOK && toOK:
		res.AlreadyDone = true
		if res.Files, res.Bytes, err = usage(res.To); err != nil {
			return res, fsError(step, err)
		}
		log.Info("aof quarantined already", "from", res.From, "to", res.To, "files", res.Files, "bytes", res.Bytes)
		return res, nil
	case fromOK && toOK:
		return res, NonRetryable(ErrAOFQuarantineConflict, fmt.Errorf(
			"%s: both %s and %s exist, and a quarantine never overwrites: if the second is an earlier quarantine under stamp %s, "+
				"Redis has written a new AOF since; inspect %s and, if it must go too, quarantine it with a new stamp",
			step, res.From, res.To, in.Stamp, res.From))
	case !fromOK:
		return res, NonRetryable(ErrAOFNotFound, fmt.Errorf(
			"%s: %s does not exist and nothing was quarantined under stamp %s (no %s): check DRFLOW_REDIS_AOF_DIR", step, res.From, in.Stamp, res.To))
	}
	if res.Files, res.Bytes, err = usage(res.From); err != nil {
		return res, fsError(step, err)
	}
	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("%s: %w", step, context.Cause(ctx))
	}
	if err := moveNoReplace(res.From, res.To); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return res, NonRetryable(ErrAOFQuarantineConflict, fmt.Errorf("%s: %s appeared while moving %s there: %w", step, res.To, res.From, err))
		}
		return res, fsError(step, err)
	}
	if err := syncDir(filepath.Dir(res.To)); err != nil {
		return res, fsError(step, fmt.Errorf("moved %s to %s, then: %w", res.From, res.To, err))
	}
	log.Info("aof quarantined", "from", res.From, "to", res.To, "files", res.Files, "bytes", res.Bytes)
	return res, nil
}

// moveNoReplace moves from to to, failing if to exists (see QuarantineAOF).
func moveNoReplace(from, to string) error {
	fi, err := os.Lstat(from)
	if err != nil {
		return err
	}
	if fi.IsDir() {
		// rename(2) of a directory fails on a non-empty target (ENOTEMPTY
		// or EEXIST) and on a file (ENOTDIR): nothing existing is lost.
		err := os.Rename(from, to)
		if errors.Is(err, syscall.ENOTEMPTY) {
			return fmt.Errorf("%w: %v", fs.ErrExist, err)
		}
		return err
	}
	if err := os.Link(from, to); err != nil {
		return err
	}
	return os.Remove(from)
}

// syncDir fsyncs a directory, so a rename in it survives a crash.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, errors.ErrUnsupported) {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

// lastLines returns the last n non-empty lines of b, joined by "; ".
func lastLines(b *tailBuffer, n int) string {
	var lines []string
	for _, l := range strings.Split(string(b.buf), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "; ")
}
