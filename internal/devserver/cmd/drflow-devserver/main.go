// Command drflow-devserver runs the embedded Temporal server of `worker --dev`
// (package devserver) as a process of its own, so a test can stop, SIGKILL and
// restart it like any other server of the local stack (internal/stack).
//
// Usage:
//
//	drflow-devserver --state-dir DIR [--grpc-addr HOST:PORT] [--ui-addr HOST:PORT]
//	                 [--no-ui] [--namespace NAME] [--log-level LEVEL]
//	                 [--tls-cert FILE --tls-key FILE --tls-ca FILE [--tls-client-ca FILE]]
//
// contract: once the frontend answers, the namespace exists and the search
// attributes of package workflows are registered (and the Web UI answers,
// unless --no-ui), it prints exactly one line to stdout:
//
//	ready grpc=<host:port> ui=<http://host:port, or empty with --no-ui>
//
// SIGTERM or SIGINT stops the UI and the server and exits 0; state in
// --state-dir is kept, so the next start resumes every workflow. A SIGKILL
// loses no acknowledged state either (see devserver). Any error is written
// to stderr and exits 1, bad flags included.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/kohakku/drflow/internal/devserver"
	"github.com/kohakku/drflow/workflows"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("drflow-devserver", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var opts devserver.Options
	fs.StringVar(&opts.StateDir, "state-dir", ".drflow", "directory of the SQLite state file and the server log")
	fs.StringVar(&opts.GRPCAddr, "grpc-addr", "127.0.0.1:7233", "frontend gRPC host:port (port 0 picks a free port)")
	fs.StringVar(&opts.UIAddr, "ui-addr", "127.0.0.1:8233", "Web UI host:port (port 0 picks a free port)")
	fs.BoolVar(&opts.NoUI, "no-ui", false, "do not start the Web UI")
	fs.StringVar(&opts.Namespace, "namespace", "default", "namespace to create and keep up to date")
	fs.StringVar(&opts.LogLevel, "log-level", "warn", "level of the server log in the state dir (debug, info, warn, error)")
	var tls devserver.TLS
	fs.StringVar(&tls.CertFile, "tls-cert", "", "serve the frontend over TLS with this certificate (PEM; needs --tls-key and --tls-ca)")
	fs.StringVar(&tls.KeyFile, "tls-key", "", "private key of --tls-cert (PEM)")
	fs.StringVar(&tls.CAFile, "tls-ca", "", "CA that signed --tls-cert (PEM), trusted by the server's own clients")
	fs.StringVar(&tls.ClientCAFile, "tls-client-ca", "", "require client certificates signed by this CA (mTLS; PEM)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 1 // the flag package has printed the error and the usage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "drflow-devserver: unexpected arguments %q\n", fs.Args())
		return 1
	}
	opts.SearchAttributes = workflows.SearchAttributeTypes
	if tls != (devserver.TLS{}) {
		opts.TLS = &tls
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	srv, err := devserver.Start(ctx, opts)
	if err != nil {
		if ctx.Err() != nil {
			// Asked to stop while starting; Start has stopped what it started.
			fmt.Fprintf(stderr, "drflow-devserver: stopped while starting: %v\n", err)
			return 0
		}
		fmt.Fprintf(stderr, "drflow-devserver: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "ready grpc=%s ui=%s\n", srv.GRPCAddr(), srv.UIURL())

	<-ctx.Done()
	// A second signal during the shutdown takes the default action (exit at once).
	stop()
	srv.Stop()
	return 0
}
