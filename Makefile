# Lockbox: the one entry point.
#   make run    build everything, make a local release, install it through the
#               real download path (HTTP on 127.0.0.1) and run a real sandbox
#   make test   everything CI checks
#   make bench  benchmarks (timings live here, never in tests)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

ROOT      := $(abspath .)
VERSION   := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
DIST      := $(ROOT)/dist
BUILD     := $(ROOT)/build
RELEASE_DIR := $(ROOT)/target/release
DEBUG_DIR := $(ROOT)/target/debug
export PATH := $(HOME)/.cargo/bin:/usr/local/go/bin:$(PATH)
export CARGO_TERM_COLOR := never
export GOFLAGS := -buildvcs=false

# Each area adds its own steps to these lists in mk/<area>.mk.
TEST_STEPS :=
BENCH_STEPS :=

.PHONY: help deps build test bench run release clean fmt lint
help:
	@echo "make run | make test | make bench | make release | make clean"

deps:
	@bash scripts/deps.sh

# Order matters: cheap static checks first, then each area.
include mk/checks.mk mk/spine.mk mk/agent.mk mk/engine.mk mk/images.mk mk/installer.mk mk/bench.mk

build: deps
	cargo build --release --locked -p lockbox-ffi -p lockbox-agent -p lockbox-installer

# Runs every step even after a failure, so one run shows every problem;
# exits non-zero if any step failed.
test: deps
	@failed=""; start=$$(date +%s); \
	for s in $(TEST_STEPS); do \
	  t0=$$(date +%s); echo "==> $$s"; \
	  if $(MAKE) --no-print-directory $$s; then echo "<== $$s ok ($$(( $$(date +%s) - t0 ))s)"; \
	  else echo "<== $$s FAILED"; failed="$$failed $$s"; fi; \
	done; \
	echo "==> test steps took $$(( $$(date +%s) - start ))s"; \
	if [ -n "$$failed" ]; then echo "==> FAILED steps:$$failed"; exit 1; fi; \
	echo "==> all test steps passed"

bench: deps
	@for s in $(BENCH_STEPS); do echo "==> $$s"; $(MAKE) --no-print-directory $$s; done

# build -> images -> signed release in dist/ -> HTTP on 127.0.0.1 ->
# EnsureInstalled into a fresh LOCKBOX_HOME -> a real sandbox.
run: deps
	@bash scripts/run.sh

fmt:
	cargo fmt --all
	gofmt -w go examples tests

clean:
	rm -rf target dist build
