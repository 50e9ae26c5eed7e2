# drflow — build, test, lint, benchmark and demo.
#
#   make demo    the main job on this machine: local stack + worker --dev + Web UI
#   make test    everything CI runs (race detector on; fails on any skipped test)
#   make test-faults  the crash matrix and dependency faults: SIGKILL the worker at every step of
#                every runbook, kill the servers mid-step, compare with uninterrupted runs, write
#                docs/reliability.md (CI runs it after make test)
#   make lint    gofmt, go vet, staticcheck
#   make bench   benchmarks with their baselines (slow; not part of make test)
#   make screenshot  re-take docs/images/full-cluster-recovery.png (runs the demo; needs chromium)

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c

# go.temporal.io/server needs Go >= 1.26.10; auto fetches it through the module proxy.
export GOTOOLCHAIN := auto

GO ?= go
BIN := $(CURDIR)/bin
MINIO_VERSION := v0.0.0-20260212201848-7aac2a2c5b7c
STATICCHECK_VERSION := v0.8.2
TEST_TIMEOUT ?= 20m
TEST_FLAGS ?=

.PHONY: all build test test-faults lint bench demo screenshot tools clean

all: lint test

build:
	$(GO) build ./...
	$(GO) build -o $(BIN)/worker ./worker
	$(GO) build -o $(BIN)/starter ./starter

tools: $(BIN)/minio $(BIN)/staticcheck

$(BIN)/minio:
	@echo "installing the MinIO server into bin/ (about 3 minutes the first time)"
	GOBIN=$(BIN) $(GO) install github.com/minio/minio@$(MINIO_VERSION)

$(BIN)/staticcheck:
	GOBIN=$(BIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

test: $(BIN)/minio
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) -json $(TEST_FLAGS) ./... | $(GO) run ./internal/testreport

# The matrix goes between the crash-matrix markers of docs/reliability.md, also when a
# kill point failed (the table says which); the target then fails.
FAULTS_REPORT := $(CURDIR)/.drflow/crash-matrix.md

test-faults: $(BIN)/minio
	@mkdir -p $(dir $(FAULTS_REPORT)) && rm -f $(FAULTS_REPORT)
	@status=0; \
	DRFLOW_FAULTS_REPORT=$(FAULTS_REPORT) $(GO) test -race -tags faults -count=1 -timeout 30m -run 'TestCrashMatrix|TestDependencyFault' -json ./internal/e2e/ | $(GO) run ./internal/testreport || status=$$?; \
	if [ -s $(FAULTS_REPORT) ]; then \
		awk -v table=$(FAULTS_REPORT) ' \
			/^<!-- crash-matrix:begin/ { print; while ((getline line < table) > 0) print line; skip = 1; found = 1; next } \
			/^<!-- crash-matrix:end/ { skip = 0 } \
			!skip { print } \
			END { exit !found }' docs/reliability.md > docs/reliability.md.tmp \
		|| { rm -f docs/reliability.md.tmp; echo "docs/reliability.md: crash-matrix markers missing"; exit 1; }; \
		mv docs/reliability.md.tmp docs/reliability.md; \
		echo "crash matrix written to docs/reliability.md"; \
	fi; \
	exit $$status

lint: $(BIN)/staticcheck
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(BIN)/staticcheck ./...

bench: $(BIN)/minio
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m ./...

demo: $(BIN)/minio
	$(GO) build -o $(BIN)/worker ./worker
	$(GO) build -o $(BIN)/starter ./starter
	$(BIN)/starter demo --worker-bin $(BIN)/worker $(DEMO_FLAGS)

screenshot:
	$(MAKE) demo DEMO_FLAGS="--screenshot $(CURDIR)/docs/images/full-cluster-recovery.png"

clean:
	rm -rf $(BIN) .drflow
