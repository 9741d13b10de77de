# lockbox-net (net/): egress policy, DNS filter and the user-mode forwarder.
# The integration test builds its own network namespaces (needs root).
TEST_STEPS += test-net

.PHONY: test-net
test-net:
	cargo test --locked -p lockbox-net

# Throughput (1 GiB), connection latency, DNS answer time and memory,
# through the forwarder against the direct path.
BENCH_STEPS += bench-net
.PHONY: bench-net
bench-net:
	cargo test -p lockbox-net --release --test bench -- --ignored --nocapture
