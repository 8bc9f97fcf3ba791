# Every target works from a fresh clone with only Go, gcc, git and make.
SHELL := /bin/bash
GO ?= go
MODULES := $(shell $(GO) list -m -f "{{.Dir}}" | sed "s|^$(CURDIR)/||")
SERVICES := gateway provisioner botworker
PKGS := $(addsuffix /...,$(addprefix ./,$(MODULES)))
TESTFLAGS ?= -race -count=1 -timeout 15m
BENCHFLAGS ?= -run '^$$' -bench . -benchmem -count 1
# What --version and cactus_build_info report: the latest tag (or dev) and
# the commit, marked -dirty when the tree has uncommitted changes.
VERSION ?= $(shell git describe --tags --dirty 2>/dev/null || echo dev)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)$(shell git status --porcelain 2>/dev/null | grep -q . && echo -dirty)
BUILDINFO := github.com/cactus-comments/appservice/pkg/buildinfo
LDFLAGS := -X $(BUILDINFO).version=$(VERSION) -X $(BUILDINFO).revision=$(REVISION)

.PHONY: all build run test test-short bench bench-report lint fmt vet fuzz tidy images clean

all: lint test build

## build: every binary into bin/
build:
	@mkdir -p bin
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/ $(addprefix ./services/,$(SERVICES)) ./cmd/cactusctl ./cmd/cactus-dev ./cmd/hssim

## run: the whole system in one process (embedded NATS, simulator unless CACTUS_HOMESERVER_URL is set)
DEVBIN ?= bin/cactus-dev
run:
	@mkdir -p $(dir $(DEVBIN))
	@test -x $(DEVBIN) || echo "Building the dev runner; the first build downloads and compiles every dependency and may take a few minutes..."
	@$(GO) build -ldflags "$(LDFLAGS)" -o $(DEVBIN) ./cmd/cactus-dev
	@# exec: the runner takes the terminal's foreground, so Ctrl-C stops it
	@# alone and make exits with its status, 0 after a clean stop.
	@exec $(DEVBIN)

## test: every module's tests, with the race detector
test:
	$(GO) test $(TESTFLAGS) $(PKGS)

test-short:
	$(GO) test -short -count=1 $(PKGS)

## bench: go benchmarks of every module (see docs/benchmarks.md for the load tools)
bench:
	$(GO) test $(BENCHFLAGS) $(PKGS)

## bench-report: measure ingest and alias queries with every piece in its own
## process and rewrite the generated tables of docs/benchmarks.md and the
## README (a few minutes); BENCH_LONG=1 for longer runs plus nats-server's
## memory under the duplicate window (about an hour on a busy machine)
BENCH_LONG ?=
bench-report:
	$(GO) run ./tools/gatewaybench -write $(if $(BENCH_LONG),-long)

## fuzz: run each fuzz target for FUZZTIME (default 20s)
FUZZTIME ?= 20s
fuzz:
	@set -e; for pkg in $$($(GO) list $(PKGS)); do \
	  dir=$$($(GO) list -f '{{.Dir}}' $$pkg); \
	  for f in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$dir/*_test.go 2>/dev/null | sed 's/func //'); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

## lint: gofmt check and go vet on every module
lint: vet
	@out=$$(gofmt -l $(MODULES)); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

fmt:
	gofmt -w $(MODULES)

tidy:
	@for m in $(MODULES); do (cd $$m && $(GO) mod tidy) || exit 1; done

## images: container images (needs a Docker engine)
images:
	@for s in $(SERVICES) cactusctl; do docker build --build-arg SERVICE=$$s --build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) -t cactus-$$s:dev . || exit 1; done

clean:
	rm -rf bin
