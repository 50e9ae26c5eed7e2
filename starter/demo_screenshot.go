package main

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/kohakku/drflow/workflows"
)

// chromiumInstall is what to do when the screenshot cannot be taken for want of Chromium.
const chromiumInstall = "install it (apt-get install chromium) or put chromium on PATH"

// chromiumPath finds a Chromium to take the screenshot with: /usr/bin/chromium (the
// Debian package), else chromium or another Chromium build on PATH.
func chromiumPath() (string, error) {
	if fi, err := os.Stat("/usr/bin/chromium"); err == nil && fi.Mode()&0o111 != 0 {
		return "/usr/bin/chromium", nil
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("--screenshot needs Chromium, which is not installed: %s", chromiumInstall)
}

// checkScreenshotFlag fails fast, before anything starts, when --screenshot cannot work:
// no Chromium, or no directory to write the file to.
func checkScreenshotFlag(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	if _, err := chromiumPath(); err != nil {
		return "", err
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	if fi, err := os.Stat(filepath.Dir(abs)); err != nil || !fi.IsDir() {
		return "", fmt.Errorf("--screenshot %s: directory %s does not exist; create it or choose another file", path, filepath.Dir(abs))
	}
	return abs, nil
}

// screenshotWait is how much virtual time Chromium gives the Web UI before it takes the
// picture. Virtual time stands still while requests are in flight, so the single-page
// app has fetched the workflow, its history and its children by then; the budget covers
// the app's own timers (rendering, animations).
const screenshotWait = 8 * time.Second

// screenshot takes a PNG of the recovery's page in the Web UI with headless Chromium.
func (d *demo) screenshot(ctx context.Context) (string, error) {
	bin, err := chromiumPath()
	if err != nil {
		return "", err
	}
	profile, err := os.MkdirTemp("", "drflow-chromium-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(profile)
	url := d.workflowURL(d.rec.id)
	_ = os.Remove(d.opts.screenshot) // a stale file must not pass for a new one
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin,
		// Headless, as root, offline: no sandbox (it needs user namespaces), no GPU, and
		// none of the background traffic that would wait for a network that is not there.
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir="+profile,
		"--window-size=1440,1100", "--hide-scrollbars",
		fmt.Sprintf("--virtual-time-budget=%d", screenshotWait.Milliseconds()),
		"--screenshot="+d.opts.screenshot,
		// The rendered page on stdout, to check that it shows the workflow (not an error
		// page or a loading skeleton) without reading pixels.
		"--dump-dom", url)
	// Chromium's helpers (GPU, renderer, crashpad) share its process group: a timeout
	// ends them all, and so does the demo's death.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var dom, out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &dom, &out
	err = cmd.Run()
	if cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // helpers that outlived it
	}
	if err != nil {
		return "", fmt.Errorf("chromium %s: %w\n%s", url, err, tailLines(out.String(), 10))
	}
	b, err := os.ReadFile(d.opts.screenshot)
	if err != nil {
		return "", fmt.Errorf("chromium wrote no screenshot of %s: %w\n%s", url, err, tailLines(out.String(), 10))
	}
	img, err := png.DecodeConfig(bytes.NewReader(b))
	if err != nil {
		return "", fmt.Errorf("screenshot %s is not a PNG: %w", d.opts.screenshot, err)
	}
	for _, want := range []string{d.rec.id, workflows.FullClusterRecoveryName} {
		if !bytes.Contains(dom.Bytes(), []byte(want)) {
			return "", fmt.Errorf("the Web UI page %s shows no %q after %s: the screenshot %s would not show the recovery; open the page to see why",
				url, want, screenshotWait, d.opts.screenshot)
		}
	}
	d.shot = fmt.Sprintf("%s (%d×%d)", d.opts.screenshot, img.Width, img.Height)
	return d.shot, nil
}

// workflowURL is the Web UI page of workflow id.
func (d *demo) workflowURL(id string) string {
	return fmt.Sprintf("http://%s/namespaces/default/workflows/%s", d.uiAddr, id)
}

// tailLines is the last n lines of s.
func tailLines(s string, n int) string {
	lines := bytes.Split(bytes.TrimRight([]byte(s), "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}
