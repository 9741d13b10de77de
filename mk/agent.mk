# lockbox-helper (agent/): end-to-end sandbox tests with real namespaces.
TEST_STEPS += 31:test-agent
BENCH_STEPS += bench-agent

.PHONY: test-agent bench-agent
test-agent:
	$(call cargo_test,agent)

# Exec round trip and 256 MiB stream throughput through the agent protocol.
bench-agent:
	cargo test -p lockbox-agent --release --test sandbox -- --ignored --nocapture bench_exec_and_stream
