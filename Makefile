# zeoraid - run "make help" for the targets.
SHELL := /usr/bin/env bash
GO ?= go
BIN := bin/zeoraid
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
FUZZTIME ?= 10s
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)

.PHONY: chaos help build demo test unit check fmt vet staticcheck imports tidy fuzz integration bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## build bin/zeoraid
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/zeoraid

demo: build ## build and start the demo: 3 built-in backends + a cluster of 3 RAID-1 proxies on 127.0.0.1:8100-8102, status pages on :8180-8182 (DEMOFLAGS=--load for a write workload)
	$(BIN) demo $(DEMOFLAGS)

test: check unit fuzz ## everything CI runs: static checks, all tests with -race, short fuzzing; ends with what was skipped and why
	@cat bin/test-summary.txt
	@echo "make test: all checks and tests passed"

PKGS ?= ./...
TESTFLAGS ?=

unit: ## all tests with the race detector, then a summary of skipped tests and why (Python interop tests skip without ZEO); PKGS=./cmd/... TESTFLAGS=-short for less
	@set -o pipefail; $(GO) build -o bin/testsummary ./scripts/testsummary && \
	echo "$(strip $(GO) test -race -count=1 -timeout 20m $(TESTFLAGS) $(PKGS))" && \
	$(GO) test -json -race -count=1 -timeout 20m $(TESTFLAGS) $(PKGS) 2>&1 | bin/testsummary -o bin/test-summary.txt

check: fmt vet imports tidy staticcheck ## gofmt, go vet, import boundaries, go.mod drift, staticcheck

fmt: ## fail if gofmt would change a file
	@out=$$(gofmt -l $$(git ls-files '*.go') 2>/dev/null || gofmt -l .); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet: ## go vet
	$(GO) vet ./...

imports: ## check the import boundaries between packages (see docs/design.md)
	scripts/check-imports.sh

tidy: ## fail if go mod tidy would change go.mod or go.sum
	@cp go.mod /tmp/zeoraid-go.mod.bak; cp go.sum /tmp/zeoraid-go.sum.bak; \
	$(GO) mod tidy; \
	if ! cmp -s go.mod /tmp/zeoraid-go.mod.bak || ! cmp -s go.sum /tmp/zeoraid-go.sum.bak; then \
		echo "go mod tidy changed go.mod/go.sum; commit the result"; diff /tmp/zeoraid-go.mod.bak go.mod; exit 1; fi

staticcheck: ## staticcheck (fetched through the Go module proxy)
	$(GO) run $(STATICCHECK) ./...

fuzz: ## run every fuzz target for FUZZTIME (default 10s)
	FUZZTIME=$(FUZZTIME) scripts/fuzz.sh

integration: ## interop and process tests, including the long ZODB suites (need Python ZEO)
	$(GO) test -race -count=1 -timeout 30m -v ./integration/

chaos: ## the long chaos run: 10 min of kill -9 of backends and proxy under load (CHAOS=10m, SEED=...)
	ZEORAID_CHAOS_DURATION=$${CHAOS:-10m} ZEORAID_CHAOS_SEED=$(SEED) ZEORAID_CHAOS_REPORT=$(CURDIR)/bin/chaos-report.txt \
		$(GO) test -race -count=1 -timeout 60m -run '^TestChaos$$' -v ./integration/

bench: ## codec and client/server benchmarks
	$(GO) test -run '^$$' -bench . -benchmem ./transport/...

clean: ## remove build output
	rm -rf bin
