# The Go side of network egress policy (issue 12) end to end: real
# sandboxes with a policy against test hosts in a network namespace the
# tests build (lbx-net-*, TEST-NET-2 addresses routed through a veth).
# Needs root.
#   make test-net-go   policy rules, DNS, SNI, IPv6, events, live change,
#                      secrets, the CLI flags, published ports
#                      (tests/network_*_test.go)
TEST_STEPS += 54:test-net-go

NET_GO_SCRATCH := $(BUILD)/net-go-test

.PHONY: test-net-go
test-net-go: engine-release image-base
	@rm -rf $(NET_GO_SCRATCH)/home && mkdir -p $(NET_GO_SCRATCH)/home
	cd go && CGO_ENABLED=0 go test -count=1 -run 'TestNetworkPolicy|TestNetworkRule|TestCreateSandboxRefuses|TestWithSecret|Example(NetworkPolicy|AllowPreset)|TestGolden' . ./internal/wire
	cd tests && LOCKBOX_LIB=$(RELEASE_LIB) LOCKBOX_HELPER=$(RELEASE_HELPER) \
	  LOCKBOX_IMAGES=$(IMAGES) LOCKBOX_HOME=$(NET_GO_SCRATCH)/home \
	  CGO_ENABLED=0 go test -count=1 -timeout 5m -run '^TestNetwork(Policy|Secret|Events|CLI|Ingress)' -v . 2>&1 | \
	  grep -E '^(=== RUN|--- |PASS|FAIL|ok)|EGRESS|LEAK|control|network_' ; exit $${PIPESTATUS[0]}
