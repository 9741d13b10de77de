# lockbox-net (net/): egress policy, DNS filter and the user-mode forwarder.
# The integration test builds its own network namespaces (needs root).
TEST_STEPS += test-net

.PHONY: test-net
test-net:
	$(call cargo_test,net)

# Throughput (1 GiB), connection latency, DNS answer time and memory,
# through the forwarder against the direct path.
BENCH_STEPS += bench-net
.PHONY: bench-net
bench-net:
	cargo test -p lockbox-net --release --test bench -- --ignored --nocapture

# A real sandbox with a network policy (engine/tests/network_e2e.rs, root):
# the helper's tap and forwarder, the engine's control socket, traffic to
# test hosts in namespaces the test makes. About 5 s. Not a make test step
# of its own: test-engine runs every engine test, this one included.
.PHONY: test-net-wire
test-net-wire: engine-helper-debug image-base
	$(call cargo_test,engine:test:network_e2e)

# What a policy adds to a sandbox's start and its host memory (the
# forwarder process), against the same sandbox without network.
BENCH_STEPS += bench-net-wire
.PHONY: bench-net-wire
bench-net-wire: engine-helper-debug image-base
	cargo test --locked -p lockbox-engine --test network_e2e -- --ignored --nocapture network_policy_start_cost
