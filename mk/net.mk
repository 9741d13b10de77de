# lockbox-net (net/): egress policy, DNS filter and the user-mode forwarder.
# The integration test builds its own network namespaces (needs root).
TEST_STEPS += test-net

.PHONY: test-net
test-net:
	cargo test -p lockbox-net
