# Instant sandboxes (issue 13): pause/resume, snapshot, fork, the warm pool.
#   make test-snapshot   snapshot content and isolation, a hostile writable layer,
#                        pause of a busy loop, fork isolation + fresh identity,
#                        32 concurrent Pool.Gets, cleanup after Remove/Close and after
#                        the owner of a paused sandbox is killed; OCI export round trip
TEST_STEPS += 52:test-snapshot

SNAPSHOT_SCRATCH := $(BUILD)/snapshot-test

.PHONY: test-snapshot

test-snapshot: engine-release image-base
	@rm -rf $(SNAPSHOT_SCRATCH)/home && mkdir -p $(SNAPSHOT_SCRATCH)/home
	cd go && CGO_ENABLED=0 go test -count=1 -run 'TestNewPool|TestPoolClosed' .
	cd tests && LOCKBOX_LIB=$(RELEASE_LIB) LOCKBOX_HELPER=$(RELEASE_HELPER) \
	  LOCKBOX_IMAGES=$(IMAGES) LOCKBOX_HOME=$(SNAPSHOT_SCRATCH)/home \
	  CGO_ENABLED=0 go test -count=1 -run '^(TestSnapshot|TestPauseResume|TestPausedSandbox|TestForkIsolation|TestCheckpoint|TestPool|TestForkCrashReclaimed)' -v . 2>&1 | \
	  grep -E '^(=== RUN|--- |PASS|FAIL|ok)|snapshot_test|pool_test' ; exit $${PIPESTATUS[0]}
