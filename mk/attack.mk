# Attack review (session 4): hostile inputs to the image store's host-side
# paths, from a layout, an archive or an export destination a sandbox can
# write (tests/attack_*_test.go; each attack has a control that sees a real
# success).
#   make test-attack   hostile OCI layouts and archives on Import (FIFOs,
#                      links out, oversized index, endless layer), an export
#                      whose parent a sandbox swaps for a link while it runs
TEST_STEPS += 53:test-attack

ATTACK_SCRATCH := $(BUILD)/attack-test

.PHONY: test-attack

test-attack: engine-release image-base
	@rm -rf $(ATTACK_SCRATCH)/home && mkdir -p $(ATTACK_SCRATCH)/home
	cd tests && LOCKBOX_LIB=$(RELEASE_LIB) LOCKBOX_HELPER=$(RELEASE_HELPER) \
	  LOCKBOX_IMAGES=$(IMAGES) LOCKBOX_HOME=$(ATTACK_SCRATCH)/home \
	  CGO_ENABLED=0 go test -count=1 -run '^TestAttack' -v . 2>&1 | \
	  grep -E '^(=== RUN|--- |PASS|FAIL|ok)|attack_' ; exit $${PIPESTATUS[0]}
