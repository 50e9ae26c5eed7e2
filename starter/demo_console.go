package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// spinnerFrames are drawn in turn at the head of the running step's line on a terminal.
var spinnerFrames = []string{"⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"}

// console prints the demo's live step list. On a terminal the running step's line is
// redrawn in place every 100ms with a spinner, its elapsed time and its latest status
// (the FullClusterRecovery stage running, say), and lines printed meanwhile appear above
// it. Anywhere else (a pipe, a log file, a test) it prints finished lines only, so the
// output stays plain text without carriage returns or escape codes.
//
// All writes go through mu: the spinner goroutine and the step's own goroutines print
// concurrently.
type console struct {
	mu  sync.Mutex
	out io.Writer
	tty bool

	// The running step (terminal only).
	name, status string
	start        time.Time
	frame        int
	stopSpin     chan struct{}
	spinDone     chan struct{}
}

func newConsole(out io.Writer) *console {
	return &console{out: out, tty: isTerminal(out)}
}

// printf writes a line, under any running step's line.
func (c *console) printf(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tty && c.stopSpin != nil {
		fmt.Fprint(c.out, "\r\033[K")
		fmt.Fprintf(c.out, format+"\n", args...)
		c.draw()
		return
	}
	fmt.Fprintf(c.out, format+"\n", args...)
}

// begin shows name as the running step and, on a terminal, starts the spinner.
func (c *console) begin(name string) {
	if !c.tty {
		return
	}
	c.mu.Lock()
	c.name, c.status, c.start, c.frame = name, "", time.Now(), 0
	c.stopSpin, c.spinDone = make(chan struct{}), make(chan struct{})
	c.draw()
	c.mu.Unlock()
	go c.spin(c.stopSpin, c.spinDone)
}

func (c *console) spin(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
			c.mu.Lock()
			c.frame++
			c.draw()
			c.mu.Unlock()
		}
	}
}

// setStatus changes what the running step's line says after its name (terminal only).
func (c *console) setStatus(status string) {
	c.mu.Lock()
	c.status = status
	c.mu.Unlock()
}

// end stops the spinner and replaces the running step's line with line.
func (c *console) end(line string) {
	if c.tty && c.stopSpin != nil {
		close(c.stopSpin)
		<-c.spinDone
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tty {
		fmt.Fprint(c.out, "\r\033[K")
	}
	c.stopSpin = nil
	fmt.Fprintln(c.out, line)
}

// draw redraws the running step's line, cut to the terminal's width so that it never
// wraps (a wrapped line cannot be redrawn with \r). Called with mu held.
func (c *console) draw() {
	line := fmt.Sprintf("  %s  %s", spinnerFrames[c.frame%len(spinnerFrames)], c.name)
	if c.status != "" {
		line += " — " + c.status
	}
	line += fmt.Sprintf(" (%s)", time.Since(c.start).Round(100*time.Millisecond))
	fmt.Fprint(c.out, "\r\033[K"+truncate(line, terminalWidth(c.out)-1))
}

// truncate cuts s to n runes, marking the cut with an ellipsis.
func truncate(s string, n int) string {
	if n < 1 || utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return strings.TrimRight(string(r[:n-1]), " ") + "…"
}

// terminalWidth is w's width in columns, 80 when it cannot be read.
func terminalWidth(w io.Writer) int {
	if f, ok := w.(*os.File); ok {
		if ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ); err == nil && ws.Col > 0 {
			return int(ws.Col)
		}
	}
	return 80
}

// isTerminal reports whether w is a terminal, where a step line is redrawn in place.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
