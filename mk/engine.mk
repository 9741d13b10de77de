# The sandbox engine (engine/), its Go API (go/) and the escape suite (tests/).
#   make test-engine           engine unit tests + end-to-end tests with the real helper
#   make test-escape           escape suite + load test as root, against the release library
#   make test-escape-rootless  the escape suite again as nobody (where user namespaces allow)
#   make bench-engine          create-to-first-output, exec round trip, FS throughput,
#                              RSS per idle sandbox, most sandboxes at once (medians)
#   make bench-soak            SOAK_CYCLES (10000) create/exec/remove cycles + an exec
#                              burst: p50/p99, execs/s, threads and RSS as it goes
TEST_STEPS += 35:test-engine 50:test-escape 70:test-escape-rootless
BENCH_STEPS += bench-engine bench-soak

ENGINE_LIB     := $(RELEASE_LIB)
ENGINE_HELPER  := $(RELEASE_HELPER)
ENGINE_IMAGES  := $(IMAGES)
ENGINE_SCRATCH := $(BUILD)/engine-test
NOBODY         := setpriv --reuid=65534 --regid=65534 --clear-groups

.PHONY: test-engine test-escape test-escape-rootless bench-engine bench-soak

# The Go API tests (test-go) create real sandboxes: they need the helper
# next to the cargo output and the base image.
GO_TEST_DEPS += helper-debug image-base

# The protocol crate's unit tests run here (no step of its own).
test-engine: engine-helper-debug image-base
	$(call cargo_test,engine protocol)

test-escape: engine-release image-base
	@rm -rf $(ENGINE_SCRATCH)/home && mkdir -p $(ENGINE_SCRATCH)/home
	cd tests && LOCKBOX_LIB=$(ENGINE_LIB) LOCKBOX_HELPER=$(ENGINE_HELPER) \
	  LOCKBOX_IMAGES=$(ENGINE_IMAGES) LOCKBOX_HOME=$(ENGINE_SCRATCH)/home \
	  CGO_ENABLED=0 go test -count=1 -run 'Escape|Load|Lifecycle|Reliab' -v . 2>&1 | \
	  grep -E '^(=== RUN|--- |PASS|FAIL|ok)|ESCAPE|CHANGED|probe ' ; exit $${PIPESTATUS[0]}

# As an unprivileged user: the test binary, probe, library and helper are
# copied where nobody can read them; skipped (with the reason) when this
# machine gives unprivileged users no user namespaces.
test-escape-rootless: engine-release image-base
	@d=$(ENGINE_SCRATCH)/rootless; rm -rf $$d; mkdir -p $$d/home; \
	if ! $(NOBODY) unshare --user --map-root-user true 2>/dev/null; then \
	  echo "test-escape-rootless: SKIPPED: unprivileged user namespaces are not available here"; exit 0; fi; \
	(cd tests && CGO_ENABLED=0 go test -c -o $$d/tests.test . && CGO_ENABLED=0 go build -o $$d/escapeprobe ./cmd/escapeprobe && CGO_ENABLED=0 go build -o $$d/hostprobe ./cmd/hostprobe && CGO_ENABLED=0 go build -o $$d/hostfileracer ./cmd/hostfileracer); \
	cp $(ENGINE_LIB) $(ENGINE_HELPER) $$d/; chmod -R a+rX $$d; chown 65534:65534 $$d/home; chmod 755 $(ENGINE_SCRATCH); \
	cd /tmp && $(NOBODY) env -i PATH=/usr/bin:/bin HOME=$$d/home LOCKBOX_HOME=$$d/home \
	  LOCKBOX_LIB=$$d/liblockbox.so LOCKBOX_HELPER=$$d/lockbox-helper LOCKBOX_IMAGES=$(ENGINE_IMAGES) \
	  LOCKBOX_ESCAPE_PROBE_DIR=$$d $$d/tests.test -test.count=1 -test.run 'Escape|Lifecycle' -test.v 2>&1 | \
	  grep -E '^(--- |PASS|FAIL|ok)|ESCAPE|CHANGED|not enforced' ; exit $${PIPESTATUS[0]}

bench-engine: engine-release image-base
	@rm -rf $(ENGINE_SCRATCH)/bench-home && mkdir -p $(ENGINE_SCRATCH)/bench-home
	cd tests && LOCKBOX_LIB=$(ENGINE_LIB) LOCKBOX_HELPER=$(ENGINE_HELPER) \
	  LOCKBOX_IMAGES=$(ENGINE_IMAGES) LOCKBOX_HOME=$(ENGINE_SCRATCH)/bench-home LOCKBOX_ENGINE_BENCH=1 \
	  CGO_ENABLED=0 go test -count=1 -run '^TestEngineBench$$' -v -timeout 20m . 2>&1 | \
	  grep -E '^(--- |PASS|FAIL|ok)|bench:' ; exit $${PIPESTATUS[0]}

# The reliability suite's long variant: SOAK_CYCLES create/exec/remove
# cycles, then an exec burst; latency percentiles, execs/s, threads and RSS.
SOAK_CYCLES ?= 10000
bench-soak: engine-release image-base
	@rm -rf $(ENGINE_SCRATCH)/soak-home && mkdir -p $(ENGINE_SCRATCH)/soak-home
	cd tests && LOCKBOX_LIB=$(ENGINE_LIB) LOCKBOX_HELPER=$(ENGINE_HELPER) \
	  LOCKBOX_IMAGES=$(ENGINE_IMAGES) LOCKBOX_HOME=$(ENGINE_SCRATCH)/soak-home LOCKBOX_SOAK=$(SOAK_CYCLES) \
	  CGO_ENABLED=0 go test -count=1 -run '^TestSoakBench$$' -v -timeout 60m . 2>&1 | \
	  grep -E '^(--- |PASS|FAIL|ok)|soak:' ; exit $${PIPESTATUS[0]}
