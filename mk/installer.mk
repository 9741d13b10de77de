# Releases and installs (installer/: the release tool; go/internal/install:
# the one installer; manifests/; tests/install*).
#   make release        dist/$(VERSION)/ signed, with the microVM guest (make vm-assets). With SIGNING_KEY: refreshes the committed pin in
#                       manifests/ and go/internal/pin/; without: a development pin in build/pin
#                       key: SIGNING_KEY=file, or LOCKBOX_SIGNING_KEY (base64 seed), else a local dev key
#   make check-pin      the pin copies agree (check-pin-copies, also in make check); the release
#                       build is reproducible (check-repro); and each pin that records the source
#                       this checkout has is matched byte for byte (check-pin-source)
#   make test-install   release tool unit tests + end-to-end installs with the Go installer over
#                       HTTP on 127.0.0.1 (tamper, truncation, missing files, wrong signature,
#                       killed halfway, hostile local users), the release in dist/ included
#   make bench-install  warm EnsureInstalled p50; cold install throughput vs curl
CHECK_STEPS += 14:check-pin-copies
TEST_STEPS += 55:test-install 60:check-pin
BENCH_STEPS += bench-install

DEV_SIGNING_KEY := $(BUILD)/dev-signing-key
# Where a development release's pin goes, and how a Go program is linked
# to trust it (go/manifest_trust.go devPin) instead of the committed pin.
DEV_PIN := $(BUILD)/pin
DEV_PIN_LDFLAGS := -X lockbox.dev/lockbox.devPin=$(DEV_PIN)
PIN_GO_DIR := $(ROOT)/go/internal/pin/data
SIGNING_KEY ?=

.PHONY: release release-only check-pin check-pin-copies check-repro check-pin-source test-install bench-install

# The microVM guest's assets are always in a release: built from the
# release helper (the initramfs holds it as /init) and cached by input
# hash, they cost ~0.1 s warm, ~5 s cold (one apt download of the kernel
# package, then cached in build/vm/cache); installs download them only
# when asked (WithVMAssets, lockbox install --vm).
release: build vm-assets release-only

# The build inputs are committed: the manifest may say what it was built from.
INPUTS_STATE = $$(if [ -z "$$(git -C $(ROOT) status --porcelain -- $(REPRO_INPUTS))" ]; then echo clean; else echo dirty; fi)
SET_RELEASE_SOURCE = src=(); if [ "$(INPUTS_STATE)" = clean ]; then src=(--source-commit $(SOURCE_COMMIT) --rustc "$$(rustc -V)"); \
  else echo "release: the build inputs have uncommitted changes: the manifest records no source"; fi

# release-only adds $(VM_ASSETS) when make vm-assets built it from this
# release helper, never a guest holding another build's helper.
SET_RELEASE_VM = vm=(); helper_sum=$$(sha256sum < $(RELEASE_HELPER) | cut -d' ' -f1); \
  if [ ! -f $(VM_ASSETS)/vmlinuz ] || [ ! -f $(VM_ASSETS)/initramfs.img ]; then \
    echo "release: no VM assets in $(VM_ASSETS) (make vm-assets): releasing without them"; \
  elif grep -qF "\"agent_sha256\": \"$$helper_sum\"" $(VM_ASSETS)/assets.json; then vm=(--vm-assets $(VM_ASSETS)); \
  else echo "release: $(VM_ASSETS) holds another helper than $(RELEASE_HELPER): releasing without VM assets (make vm-assets)"; fi

# Packs whatever `make build` (and `make images`, `make vm-assets`, if run) left in target/release, build/images and build/vm.
release-only:
	@$(SET_RELEASE_SOURCE); $(SET_RELEASE_VM); \
	if [ -n "$(SIGNING_KEY)$${LOCKBOX_SIGNING_KEY:-}" ]; then \
	  if [ -n "$(SIGNING_KEY)" ]; then keyarg="--key $(SIGNING_KEY)"; else keyarg=""; fi; \
	  pub=$$($(INSTALLER_BIN) public-key $$keyarg); \
	  grep -qxF "$$pub" manifests/keys/*.pub || { \
	    echo "release: the signing key's public key ($$pub) is not in manifests/keys/: add it there first"; exit 1; }; \
	  $(INSTALLER_BIN) release --version $(VERSION) --out $(DIST) --root $(ROOT) --pin manifests $$keyarg \
	    --lib $(RELEASE_LIB) --helper $(RELEASE_HELPER) "$${src[@]}" "$${vm[@]}"; \
	  rm -rf $(PIN_GO_DIR)/keys $(PIN_GO_DIR)/$(VERSION); \
	  mkdir -p $(PIN_GO_DIR)/keys $(PIN_GO_DIR)/$(VERSION); \
	  cp manifests/keys/*.pub $(PIN_GO_DIR)/keys/; \
	  cp manifests/$(VERSION)/manifest.json manifests/$(VERSION)/manifest.json.sig $(PIN_GO_DIR)/$(VERSION)/; \
	  echo "release: $(DIST)/$(VERSION) (pin refreshed in manifests/$(VERSION) and go/internal/pin/data)"; \
	else \
	  if [ ! -f $(DEV_SIGNING_KEY) ]; then \
	    $(INSTALLER_BIN) keygen --out $(DEV_SIGNING_KEY) --public $(DEV_SIGNING_KEY).pub >/dev/null; fi; \
	  echo "######################################################################"; \
	  echo "# release: NO SIGNING KEY GIVEN - signing with this machine's DEVELOPMENT KEY"; \
	  echo "#   $(DEV_SIGNING_KEY), trusted only through the development pin"; \
	  echo "#   $(DEV_PIN) (programs linked with $(DEV_PIN_LDFLAGS))."; \
	  echo "#   Tracked files are not touched. For a real release:"; \
	  echo "#   make release SIGNING_KEY=file (or LOCKBOX_SIGNING_KEY)"; \
	  echo "######################################################################"; \
	  rm -rf $(DEV_PIN) && mkdir -p $(DEV_PIN)/keys; \
	  $(INSTALLER_BIN) public-key --key $(DEV_SIGNING_KEY) > $(DEV_PIN)/keys/dev.pub; \
	  $(INSTALLER_BIN) release --version $(VERSION) --out $(DIST) --root $(ROOT) --pin $(DEV_PIN) \
	    --key $(DEV_SIGNING_KEY) \
	    --lib $(RELEASE_LIB) --helper $(RELEASE_HELPER) "$${src[@]}" "$${vm[@]}"; \
	  echo "release: $(DIST)/$(VERSION) (development pin in $(DEV_PIN))"; \
	fi

check-pin: check-pin-copies check-repro check-pin-source

check-pin-copies:
	@diff -r manifests/keys $(PIN_GO_DIR)/keys
	@for d in manifests/*/manifest.json; do [ -e "$$d" ] || continue; v=$$(basename $$(dirname $$d)); \
	  diff -r manifests/$$v $(PIN_GO_DIR)/$$v || { echo "pin of $$v differs: run make release"; exit 1; }; done
	@for d in $(PIN_GO_DIR)/*/manifest.json; do [ -e "$$d" ] || continue; v=$$(basename $$(dirname $$d)); \
	  [ -d manifests/$$v ] || { echo "go/internal/pin has $$v, manifests/ does not"; exit 1; }; done
	@echo "pin: manifests/ and go/internal/pin/data agree"

# Reproducibility: the build inputs as this checkout has them are copied
# to another path ($(REPRO_SRC)) and built there into another target dir,
# with the same release environment; the library and helper must be
# byte-identical to target/release's, and neither may name a directory of
# the build machine (the probe for such names is first shown to find them
# in the debug helper, built without the remapping). $HOME itself is not
# probed: the places a build embeds ($CARGO_HOME, the sysroot) are, and a
# HOME of /root matches the sandbox's own "/root" + "/proc/..." strings.
# The copy's files are new, so every workspace crate (ffi, engine, agent,
# protocol, images...) is compiled again from the other path. The registry
# dependencies are compiled once per machine: the first run seeds the
# second target dir with target/release's (REPRO_FULL=1: from nothing; a
# full second release build, minutes); their own build paths are covered
# by the probe.
REPRO_FULL ?=
check-repro: release-bins helper-debug
	@rm -rf $(REPRO_SRC) && mkdir -p $(REPRO_SRC)
	@git ls-files -z --cached --others --exclude-standard -- $(REPRO_INPUTS) | \
	  while IFS= read -r -d '' f; do [ -e "$$f" ] && printf '%s\0' "$$f"; done | \
	  xargs -0 cp -P --parents -t $(REPRO_SRC)
	@if [ -n "$(REPRO_FULL)" ]; then rm -rf $(REPRO_TARGET); echo "repro: second build from an empty target dir"; \
	elif [ ! -d $(REPRO_TARGET)/release ]; then mkdir -p $(REPRO_TARGET)/release; \
	  cp -a --reflink=auto $(TARGET)/release/deps $(TARGET)/release/build $(TARGET)/release/.fingerprint $(REPRO_TARGET)/release/; \
	  echo "repro: dependencies seeded from $(TARGET)/release"; fi
	@t0=$$(date +%s); cd $(REPRO_SRC) && $(call release_env,$(REPRO_TARGET)) $(RELEASE_BUILD) -q; \
	  echo "repro: second build in $(REPRO_SRC) took $$(( $$(date +%s) - t0 ))s"
	@grep -q -a -F "$(CARGO_HOME_DIR)/registry" $(DEBUG_HELPER) || \
	  { echo "repro: control failed: the debug helper names no $(CARGO_HOME_DIR)/registry path, the leak probe is blind"; exit 1; }
	@fail=0; for f in liblockbox.so lockbox-helper; do \
	  a=$(TARGET)/release/$$f; b=$(REPRO_TARGET)/release/$$f; \
	  if cmp -s $$a $$b; then echo "repro: $$f: byte-identical from $(ROOT) and $(REPRO_SRC) (sha256 $$(sha256sum < $$a | cut -c1-16)...)"; \
	  else echo "repro: $$f: the builds in $(ROOT) and $(REPRO_SRC) differ"; fail=1; fi; \
	  for d in $(ROOT) $(REPRO_DIR) $(CARGO_HOME_DIR) $(RUSTC_SYSROOT); do \
	    if grep -q -a -F "$$d/" $$a; then echo "repro: $$f names $$d/ (a build path leaks into the release)"; fail=1; fi; done; \
	done; exit $$fail

check-pin-source: release-bins
	@python3 scripts/check-pin-source linux-$$(uname -m) $(SOURCE_COMMIT) $(INPUTS_STATE) \
	  $(RELEASE_LIB) $(RELEASE_HELPER) manifests/$(VERSION)/manifest.json $(wildcard $(DEV_PIN)/$(VERSION)/manifest.json)

# The release server of make run and test-examples, built before it is
# started (scripts/with-dist-server waits for its URL, not for a build).
SERVEDIST := $(BUILD)/servedist
.PHONY: servedist
servedist:
	cd tests && CGO_ENABLED=0 go build -o $(SERVEDIST) ./cmd/servedist

# When a development release exists (make run or an earlier make test made
# one), the tests are linked to trust its pin, as the release in dist/ is
# signed with that machine's key.
DEV_PIN_TEST = $(if $(wildcard $(DEV_PIN)/keys/dev.pub),LOCKBOX_DEV_PIN=$(DEV_PIN))
DEV_PIN_TEST_FLAGS = $(if $(wildcard $(DEV_PIN)/keys/dev.pub),-ldflags "$(DEV_PIN_LDFLAGS)")

test-install: installer release
	$(call cargo_test,installer)
	cd tests && LOCKBOX_INSTALLER_BIN=$(INSTALLER_BIN) LOCKBOX_DIST=$(DIST) $(DEV_PIN_TEST) \
	  go test $(DEV_PIN_TEST_FLAGS) -count=1 -run 'Install' ./...

bench-install: installer
	cd tests && LOCKBOX_INSTALLER_BIN=$(INSTALLER_BIN) LOCKBOX_DIST=$(DIST) $(DEV_PIN_TEST) \
	  go test $(DEV_PIN_TEST_FLAGS) -count=1 -run '^$$' -bench 'Install' -benchtime=1x ./...
