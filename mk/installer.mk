# Releases and installs (installer/, manifests/, go/install*.go, tests/install*).
#   make release        dist/$(VERSION)/ signed. With SIGNING_KEY: refreshes the committed pin in
#                       manifests/ and go/internal/pin/; without: a development pin in build/pin
#                       key: SIGNING_KEY=file, or LOCKBOX_SIGNING_KEY (base64 seed), else a local dev key
#   make check-pin      manifests/ and the Go SDK's embedded copy agree
#   make test-install   installer unit tests + end-to-end install tests over HTTP on 127.0.0.1
#   make bench-install  warm EnsureInstalled p50; cold install throughput vs curl
TEST_STEPS += check-pin test-install
BENCH_STEPS += bench-install

INSTALLER_TARGET := $(or $(CARGO_TARGET_DIR),$(ROOT)/target)
INSTALLER_RELEASE_BIN := $(INSTALLER_TARGET)/release/lockbox-installer
INSTALLER_DEBUG_BIN := $(INSTALLER_TARGET)/debug/lockbox-installer
DEV_SIGNING_KEY := $(BUILD)/dev-signing-key
# Where a development release's pin goes, and how a Go program is linked
# to trust it (go/manifest_trust.go devPin) instead of the committed pin.
DEV_PIN := $(BUILD)/pin
DEV_PIN_LDFLAGS := -X lockbox.dev/lockbox.devPin=$(DEV_PIN)
PIN_GO_DIR := $(ROOT)/go/internal/pin/data
SIGNING_KEY ?=

.PHONY: release release-only check-pin test-install bench-install installer-debug

release: build release-only

# Packs whatever `make build` (and `make images`, if run) left in target/release and build/images.
release-only:
	@if [ -n "$(SIGNING_KEY)$${LOCKBOX_SIGNING_KEY:-}" ]; then \
	  if [ -n "$(SIGNING_KEY)" ]; then keyarg="--key $(SIGNING_KEY)"; else keyarg=""; fi; \
	  pub=$$($(INSTALLER_RELEASE_BIN) public-key $$keyarg); \
	  grep -qxF "$$pub" manifests/keys/*.pub || { \
	    echo "release: the signing key's public key ($$pub) is not in manifests/keys/: add it there first"; exit 1; }; \
	  $(INSTALLER_RELEASE_BIN) release --version $(VERSION) --out $(DIST) --root $(ROOT) --pin manifests $$keyarg \
	    --lib $(INSTALLER_TARGET)/release/liblockbox.so --helper $(INSTALLER_TARGET)/release/lockbox-helper; \
	  rm -rf $(PIN_GO_DIR)/keys $(PIN_GO_DIR)/$(VERSION); \
	  mkdir -p $(PIN_GO_DIR)/keys $(PIN_GO_DIR)/$(VERSION); \
	  cp manifests/keys/*.pub $(PIN_GO_DIR)/keys/; \
	  cp manifests/$(VERSION)/manifest.json manifests/$(VERSION)/manifest.json.sig $(PIN_GO_DIR)/$(VERSION)/; \
	  echo "release: $(DIST)/$(VERSION) (pin refreshed in manifests/$(VERSION) and go/internal/pin/data)"; \
	else \
	  if [ ! -f $(DEV_SIGNING_KEY) ]; then \
	    $(INSTALLER_RELEASE_BIN) keygen --out $(DEV_SIGNING_KEY) --public $(DEV_SIGNING_KEY).pub >/dev/null; fi; \
	  echo "######################################################################"; \
	  echo "# release: NO SIGNING KEY GIVEN - signing with this machine's DEVELOPMENT KEY"; \
	  echo "#   $(DEV_SIGNING_KEY), trusted only through the development pin"; \
	  echo "#   $(DEV_PIN) (programs linked with $(DEV_PIN_LDFLAGS))."; \
	  echo "#   Tracked files are not touched. For a real release:"; \
	  echo "#   make release SIGNING_KEY=file (or LOCKBOX_SIGNING_KEY)"; \
	  echo "######################################################################"; \
	  rm -rf $(DEV_PIN) && mkdir -p $(DEV_PIN)/keys; \
	  $(INSTALLER_RELEASE_BIN) public-key --key $(DEV_SIGNING_KEY) > $(DEV_PIN)/keys/dev.pub; \
	  $(INSTALLER_RELEASE_BIN) release --version $(VERSION) --out $(DIST) --root $(ROOT) --pin $(DEV_PIN) \
	    --key $(DEV_SIGNING_KEY) \
	    --lib $(INSTALLER_TARGET)/release/liblockbox.so --helper $(INSTALLER_TARGET)/release/lockbox-helper; \
	  echo "release: $(DIST)/$(VERSION) (development pin in $(DEV_PIN))"; \
	fi

check-pin:
	@diff -r manifests/keys $(PIN_GO_DIR)/keys
	@for d in manifests/*/manifest.json; do [ -e "$$d" ] || continue; v=$$(basename $$(dirname $$d)); \
	  diff -r manifests/$$v $(PIN_GO_DIR)/$$v || { echo "pin of $$v differs: run make release"; exit 1; }; done
	@for d in $(PIN_GO_DIR)/*/manifest.json; do [ -e "$$d" ] || continue; v=$$(basename $$(dirname $$d)); \
	  [ -d manifests/$$v ] || { echo "go/internal/pin has $$v, manifests/ does not"; exit 1; }; done
	@echo "pin: manifests/ and go/internal/pin/data agree"

installer-debug:
	cargo build --locked -q -p lockbox-installer

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

test-install: installer-debug
	cargo test --locked -p lockbox-installer
	cd tests && LOCKBOX_INSTALLER_BIN=$(INSTALLER_DEBUG_BIN) LOCKBOX_DIST=$(DIST) $(DEV_PIN_TEST) \
	  go test $(DEV_PIN_TEST_FLAGS) -count=1 -run 'Install' ./...

bench-install: installer-debug
	cd tests && LOCKBOX_INSTALLER_BIN=$(INSTALLER_DEBUG_BIN) LOCKBOX_DIST=$(DIST) $(DEV_PIN_TEST) \
	  go test $(DEV_PIN_TEST_FLAGS) -count=1 -run '^$$' -bench 'Install' -benchtime=1x ./...
