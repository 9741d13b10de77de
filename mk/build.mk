# The builds: each binary has exactly one target that builds it, so one
# tier builds it once (cargo is a no-op when nothing changed).
#   make release-bins   liblockbox.so + lockbox-helper, release, reproducible ($(RELEASE_LIB), $(RELEASE_HELPER))
#   make installer      lockbox-installer, release ($(INSTALLER_BIN))
#   make helper-debug   lockbox-helper, debug, for dev tests ($(DEBUG_HELPER))
#   make build          release-bins + installer
# engine-release, ffi-release, engine-helper-debug and installer-debug are
# the older names, kept for the steps that use them.
#
# Reproducible release builds: the same source gives the same library and
# helper bytes wherever it is built. Nothing of the build's place may end
# up in them: the checkout, the target dir, $CARGO_HOME (registry sources
# in panic messages) and the toolchain's sysroot are remapped to fixed
# names, for rustc and for C compiled by build scripts. The library names
# its source by SOURCE_COMMIT (the last commit that changed a build input),
# not HEAD, so a later commit that only touches other files (a pin, docs)
# rebuilds the same bytes. Dependencies come from Cargo.lock (--locked).
# ffi and agent are built in one cargo invocation, always the same one:
# which packages are built together decides the features of shared deps.
# `make check-pin` proves it (mk/installer.mk).

.PHONY: build release-bins installer helper-debug engine-release ffi-release engine-helper-debug installer-debug

# Everything that decides the release bytes, for SOURCE_COMMIT and the
# reproducibility check's copy: the workspace, its lock, this file.
CARGO_MEMBERS := $(shell awk '/^members/,/\]/' $(ROOT)/Cargo.toml | grep -o '"[^"]*"' | tr -d '"')
REPRO_INPUTS  := Cargo.toml Cargo.lock mk/build.mk $(wildcard rust-toolchain rust-toolchain.toml .cargo) $(CARGO_MEMBERS)
# Computed once per make, on first use.
SOURCE_COMMIT = $(eval SOURCE_COMMIT := $(shell git -C $(ROOT) log -1 --format=%H -- $(REPRO_INPUTS) 2>/dev/null))$(SOURCE_COMMIT)
SOURCE_EPOCH  = $(eval SOURCE_EPOCH := $(or $(shell git -C $(ROOT) log -1 --format=%ct $(SOURCE_COMMIT) 2>/dev/null),0))$(SOURCE_EPOCH)
RUSTC_SYSROOT = $(eval RUSTC_SYSROOT := $(shell rustc --print sysroot))$(RUSTC_SYSROOT)
CARGO_HOME_DIR := $(or $(CARGO_HOME),$(HOME)/.cargo)

# The second place make check-pin builds in (mk/installer.mk).
REPRO_DIR    := $(BUILD)/repro
REPRO_SRC    := $(REPRO_DIR)/source-copy
REPRO_TARGET := $(REPRO_DIR)/target

# release_env(target dir): the environment of a release build. The remaps
# name both places a release is built in here, so the two builds' flags
# are the same string (cargo rebuilds everything when RUSTFLAGS change).
# rustc applies the last matching remap: inner directories come later.
repro_remaps = $(CARGO_HOME_DIR)=/cargo $(RUSTC_SYSROOT)=/rustc-sysroot $(ROOT)=/lockbox \
  $(TARGET)=/lockbox/target $(REPRO_SRC)=/lockbox $(REPRO_TARGET)=/lockbox/target
release_env = RUSTFLAGS="$(foreach m,$(repro_remaps),--remap-path-prefix=$(m))" \
  CFLAGS="$(foreach m,$(repro_remaps),-ffile-prefix-map=$(m))" \
  LOCKBOX_SOURCE_COMMIT=$(SOURCE_COMMIT) SOURCE_DATE_EPOCH=$(SOURCE_EPOCH) CARGO_TARGET_DIR=$(1)
RELEASE_BUILD = cargo build --release --locked -p lockbox-ffi -p lockbox-agent

build: release-bins installer

release-bins:
	$(call release_env,$(TARGET)) $(RELEASE_BUILD)

# The same environment as release-bins: shared dependencies are built once.
installer:
	$(call release_env,$(TARGET)) cargo build --release --locked -p lockbox-installer

# The dev build of every test target (mk/cargo-tests.mk): the agent's
# integration tests need the helper, so it lands in target/debug.
helper-debug:
	$(DEV_BUILD)

engine-release ffi-release: release-bins
engine-helper-debug: helper-debug
installer-debug: installer
