# The lockbox command (go/cmd/lockbox), tested as users run it.
#   make cli        build/bin/lockbox (linked to trust the development pin
#                   in build/pin when there is one, as the tests' programs are)
#   make test-cli   tests/cli_test.go: the built CLI against the release engine:
#                   doctor, run, create/exec/ls/rm/cp, images, usage errors,
#                   -it on a real pty, install + verify from dist/ (tampered too)
TEST_STEPS += 58:test-cli

CLI_BIN     := $(BUILD)/bin/lockbox
CLI_SCRATCH := $(BUILD)/cli-test
CLI_LDFLAGS  = $(if $(wildcard $(BUILD)/pin/keys/dev.pub),-ldflags "-X lockbox.dev/lockbox.devPin=$(BUILD)/pin")

.PHONY: cli test-cli
cli:
	cd go && CGO_ENABLED=0 go build $(CLI_LDFLAGS) -o $(CLI_BIN) ./cmd/lockbox

# release first: it makes dist/ and the development pin the CLI is linked to.
test-cli: release engine-release image-base
	@$(MAKE) --no-print-directory cli
	@rm -rf $(CLI_SCRATCH) && mkdir -p $(CLI_SCRATCH)/home
	cd tests && LOCKBOX_CLI=$(CLI_BIN) LOCKBOX_DIST=$(DIST) LOCKBOX_LIB=$(RELEASE_LIB) \
	  LOCKBOX_HELPER=$(RELEASE_HELPER) LOCKBOX_IMAGES=$(IMAGES) \
	  LOCKBOX_HOME=$(CLI_SCRATCH)/home CGO_ENABLED=0 go test -count=1 -run '^TestCLI' -v . 2>&1 | \
	  grep -E '^(=== RUN|--- |PASS|FAIL|ok|\s+cli_)' ; exit $${PIPESTATUS[0]}
