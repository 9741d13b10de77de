# The lockbox command (go/cmd/lockbox), tested as users run it.
#   make cli        build/bin/lockbox
#   make test-cli   tests/cli_test.go: the built CLI against the release engine
#                   (doctor, run, create/exec/ls/rm/cp, images, usage errors, -it on a pty)
TEST_STEPS += test-cli

CLI_TARGET  := $(TARGET)
CLI_BIN     := $(BUILD)/bin/lockbox
CLI_SCRATCH := $(BUILD)/cli-test

.PHONY: cli test-cli
cli:
	cd go && CGO_ENABLED=0 go build -o $(CLI_BIN) ./cmd/lockbox

test-cli: cli engine-release image-base
	@rm -rf $(CLI_SCRATCH) && mkdir -p $(CLI_SCRATCH)/home
	cd tests && LOCKBOX_CLI=$(CLI_BIN) LOCKBOX_LIB=$(CLI_TARGET)/release/liblockbox.so \
	  LOCKBOX_HELPER=$(CLI_TARGET)/release/lockbox-helper LOCKBOX_IMAGES=$(BUILD)/images \
	  LOCKBOX_HOME=$(CLI_SCRATCH)/home CGO_ENABLED=0 go test -count=1 -run '^TestCLI' -v . 2>&1 | \
	  grep -E '^(=== RUN|--- |PASS|FAIL|ok|\s+cli_test)' ; exit $${PIPESTATUS[0]}
