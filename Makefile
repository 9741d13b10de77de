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

include mk/*.mk

build: deps
	cargo build --release --locked -p lockbox-ffi -p lockbox-agent -p lockbox-installer

test: deps
	@for s in $(TEST_STEPS); do echo "==> $$s"; $(MAKE) --no-print-directory $$s; done
	@echo "==> all test steps passed"

bench: deps
	@for s in $(BENCH_STEPS); do echo "==> $$s"; $(MAKE) --no-print-directory $$s; done

fmt:
	cargo fmt --all
	gofmt -w go examples tests

clean:
	rm -rf target dist build
