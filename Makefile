# Lockbox: the one entry point.
#   make check  formatting, lints (clippy, go vet, staticcheck), MSRV, header
#               and pin copies, unit tests. No root, no sandboxes, no network
#               once `make deps` has run; a few minutes with warm caches.
#   make test   everything CI runs (.ci/run): the static checks of `make
#               check`, then every TEST_STEPS step. Each step runs even after
#               another failed; the exit status is non-zero if any failed.
#   make run    build, sign a development release, serve it over HTTP on
#               127.0.0.1, install it with the Go SDK and run a sandbox
#   make bench  benchmarks (timings live here, never in tests)
#   make release [SIGNING_KEY=file] / check-pin / fmt / clean
#
# Fragments. Every mk/*.mk is included (in name order, though nothing may
# depend on it). A fragment adds its steps to
#     CHECK_STEPS += NN:name   fast, static or unit: make check (and make test)
#     TEST_STEPS  += NN:name   make test only
#     BENCH_STEPS += name      make bench, in include order
# NN places a step in the run, lowest first; equal NN run in name order; a
# step without "NN:" gets 50. The ranges:
#     10-19 static checks           20-29 unit tests
#     30-49 component tests         50-69 end to end (escape, install, CLI)
#     70-89 slow (python image, rootless, examples)
# Variables shared by fragments are defined here, above the includes. A
# fragment may use another fragment's variables in recipes, and in
# prerequisites only as $$(VAR) (second expansion), so that include order
# never matters. No target may write a tracked file.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.SECONDEXPANSION:

ROOT    := $(abspath .)
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' $(ROOT)/Cargo.toml | head -1)
DIST    := $(ROOT)/dist
BUILD   := $(ROOT)/build
# The one cargo target dir: every fragment derives its paths from TARGET,
# and cargo itself is told the same through the environment.
TARGET  := $(abspath $(or $(CARGO_TARGET_DIR),$(ROOT)/target))
export CARGO_TARGET_DIR := $(TARGET)
RELEASE_LIB    := $(TARGET)/release/liblockbox.so
RELEASE_HELPER := $(TARGET)/release/lockbox-helper
DEBUG_HELPER   := $(TARGET)/debug/lockbox-helper
INSTALLER_BIN  := $(TARGET)/release/lockbox-installer
IMAGES         := $(BUILD)/images
TOOLS          := $(BUILD)/tools
export PATH := $(TOOLS):$(HOME)/.cargo/bin:/usr/local/go/bin:$(PATH)
export CARGO_TERM_COLOR := never
export GOFLAGS := -buildvcs=false

CHECK_STEPS :=
TEST_STEPS  :=
BENCH_STEPS :=

.PHONY: help deps check test bench run fmt clean
help:
	@echo "make check | make test | make run | make bench | make release | make check-pin | make fmt | make clean"
	@echo "(the top of the Makefile says what each does)"

deps:
	@bash scripts/deps.sh $(TOOLS)

include $(sort $(wildcard $(ROOT)/mk/*.mk))

# "NN:step" -> steps ordered by NN, then name; a bare step counts as 50.
ordered = $(shell for s in $(1); do case $$s in (*:*) echo "$$s";; (*) echo "50:$$s";; esac; done | sort -t: -k1,1n -k2,2 | cut -d: -f2-)
CHECK_ORDER = $(call ordered,$(CHECK_STEPS))
# make test runs the static part of make check (NN < 20); the unit tests
# run again inside the component steps, so not twice.
TEST_ORDER = $(call ordered,$(filter 1%,$(CHECK_STEPS)) $(TEST_STEPS))

# What the checkout holds, tracked and untracked (not ignored): a step that
# writes a tracked file, or leaves a new one, changes it.
tree_state = { git -C $(ROOT) status --porcelain; git -C $(ROOT) diff HEAD; } | sha256sum

# Runs every step even after a failure, so one run shows every problem;
# exits non-zero if any step failed, or (under CI) if the checkout changed.
# $(1): tier name, $(2): steps.
define run_steps
	@failed=""; start=$$(date +%s); tree0=$$($(tree_state)); \
	for s in $(2); do \
	  t0=$$(date +%s); echo "==> $$s"; \
	  if $(MAKE) --no-print-directory $$s; then echo "<== $$s ok ($$(( $$(date +%s) - t0 ))s)"; \
	  else echo "<== $$s FAILED ($$(( $$(date +%s) - t0 ))s)"; failed="$$failed $$s"; fi; \
	done; \
	echo "==> $(1) steps took $$(( $$(date +%s) - start ))s"; \
	if [ "$$tree0" != "$$($(tree_state))" ]; then git -C $(ROOT) status --short; \
	  if [ -n "$${CI:-}" ]; then echo "==> $(1): the checkout changed during the run (no target may write a tracked file)"; failed="$$failed (checkout-changed)"; \
	  else echo "==> $(1): warning: the checkout changed during the run (yours or another editor's edits?)"; fi; fi; \
	if [ -n "$$failed" ]; then echo "==> $(1): FAILED steps:$$failed"; exit 1; fi; \
	echo "==> $(1): all steps passed"
endef

check: deps
	$(call run_steps,check,$(CHECK_ORDER))

test: deps
	$(call run_steps,test,$(TEST_ORDER))

bench: deps
	@for s in $(BENCH_STEPS); do echo "==> $$s"; $(MAKE) --no-print-directory $$s; done

run: deps
	@bash scripts/run.sh

fmt:
	cargo fmt --all
	gofmt -w go examples tests bench

clean:
	rm -rf $(TARGET) $(DIST) $(BUILD)
