package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.temporal.io/sdk/client"
	temporalotel "go.temporal.io/sdk/contrib/opentelemetry"
	"go.temporal.io/sdk/interceptor"
	sdklog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/worker"

	"github.com/kohakku/drflow/internal/app"
	"github.com/kohakku/drflow/internal/config"
	"github.com/kohakku/drflow/internal/devserver"
	"github.com/kohakku/drflow/internal/health"
	"github.com/kohakku/drflow/internal/scratch"
	"github.com/kohakku/drflow/workflows"
)

// serve runs until ctx ends or a component fails, then stops everything it started.
func serve(ctx context.Context, cfg *config.Config, opts options, logger *slog.Logger) error {
	clientOpts, err := cfg.TemporalClientOptions()
	if err != nil {
		return err
	}
	// Before polling: what a killed worker staged in TMPDIR (dumps, SQLite
	// copies, RDBs) is removed here, or when this worker next stages there.
	scratch.SetLogger(logger)
	scratch.SweepAndLog(os.TempDir())
	if opts.dev {
		srv, err := devserver.Start(ctx, devserver.Options{
			StateDir:         cfg.Worker.StateDir,
			GRPCAddr:         cfg.Worker.DevGRPCAddr,
			UIAddr:           cfg.Worker.DevUIAddr,
			NoUI:             opts.noUI,
			Namespace:        cfg.Temporal.Namespace,
			SearchAttributes: workflows.SearchAttributeTypes,
		})
		if err != nil {
			return fmt.Errorf("embedded temporal: %w", err)
		}
		defer srv.Stop()
		logger.Info("embedded temporal ready", "grpc", srv.GRPCAddr(), "ui", srv.UIURL(),
			"namespace", srv.Namespace(), "state", cfg.Worker.StateDir, "serverLog", srv.LogPath())
		clientOpts.HostPort = srv.GRPCAddr()
		clientOpts.Credentials = nil
		clientOpts.ConnectionOptions.TLS = nil
	}

	registry := prometheus.NewRegistry()
	registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metricsHandler, err := sdkMetrics(registry)
	if err != nil {
		return err
	}
	clientOpts.MetricsHandler = metricsHandler
	clientOpts.Logger = sdklog.NewStructuredLogger(logger)

	dialCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	c, err := client.DialContext(dialCtx, clientOpts)
	cancel()
	if err != nil {
		return fmt.Errorf("connect to temporal at %s (namespace %s): %w", clientOpts.HostPort, clientOpts.Namespace, err)
	}
	defer c.Close()

	acts, err := app.New(ctx, cfg)
	if err != nil {
		return err
	}
	checker := &health.Checker{
		Sets:      acts.BackupStore,
		Temporal:  c,
		Namespace: clientOpts.Namespace,
		Interval:  opts.backupInterval,
		CacheTTL:  30 * time.Second,
	}
	if cfg.Require(config.PartBackup) == nil {
		registry.MustRegister(health.NewCollector(checker))
	} else {
		checker = nil
	}
	w := worker.New(c, cfg.Temporal.TaskQueue, worker.Options{
		Interceptors: []interceptor.WorkerInterceptor{health.NewInterceptor(registry, checker)},
	})
	if err := app.Register(w, acts); err != nil {
		return err
	}
	if err := w.Start(); err != nil {
		return fmt.Errorf("start worker on task queue %s: %w", cfg.Temporal.TaskQueue, err)
	}
	defer w.Stop()
	// Host queues: the steps that must run on this host (its Redis AOF, its services).
	for _, q := range cfg.Worker.HostQueues {
		hw := worker.New(c, q, worker.Options{})
		if err := app.RegisterHost(hw, acts); err != nil {
			return err
		}
		if err := hw.Start(); err != nil {
			return fmt.Errorf("start worker on host task queue %s (DRFLOW_HOST_QUEUES): %w", q, err)
		}
		defer hw.Stop()
	}

	httpSrv, httpErr, err := serveHTTP(cfg.Worker.HTTPAddr, registry, c, checker)
	if err != nil {
		return err
	}
	defer func() {
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = httpSrv.Shutdown(shutdown)
	}()
	logger.Info("worker ready", "taskQueue", cfg.Temporal.TaskQueue, "hostQueues", cfg.Worker.HostQueues, "temporal", clientOpts.HostPort,
		"namespace", clientOpts.Namespace, "http", httpSrv.Addr)

	select {
	case <-ctx.Done():
		logger.Info("shutting down")
		return nil
	case err := <-httpErr:
		return fmt.Errorf("http server: %w", err)
	}
}

// sdkMetrics exports the Temporal SDK's metrics (workflow/activity task latencies, poll
// counts, failures …) through the Prometheus registry.
func sdkMetrics(reg *prometheus.Registry) (client.MetricsHandler, error) {
	exporter, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, fmt.Errorf("metrics exporter: %w", err)
	}
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter))
	return temporalotel.NewMetricsHandler(temporalotel.MetricsHandlerOptions{
		Meter: provider.Meter("drflow"),
	}), nil
}

// serveHTTP serves /healthz (the worker reaches Temporal), /health (backup freshness,
// 503 when stale or the last run failed) and /metrics. The listener is bound before returning, so a
// taken address is an error at start rather than a silent background failure.
func serveHTTP(addr string, reg *prometheus.Registry, c client.Client, checker *health.Checker) (*http.Server, <-chan error, error) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		var rep health.Report
		var err error
		if checker == nil {
			rep = health.Report{At: time.Now().UTC(), Problems: []string{"backup store not configured (set S3_BUCKET and its credentials)"}}
		} else {
			ctx, cancel := context.WithTimeout(r.Context(), 20*time.Second)
			rep, err = checker.Report(ctx)
			cancel()
			if err != nil {
				rep = health.Report{At: time.Now().UTC(), Problems: []string{err.Error()}}
			}
		}
		if !rep.Healthy {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(rep)
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		if _, err := c.CheckHealth(ctx, &client.CheckHealthRequest{}); err != nil {
			http.Error(w, "temporal unreachable: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = fmt.Fprintln(w, "ok")
	})
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("listen on %s (DRFLOW_HTTP_ADDR / --http-addr): %w", addr, err)
	}
	srv := &http.Server{Addr: l.Addr().String(), Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	}()
	return srv, errc, nil
}
