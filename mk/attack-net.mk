# Attack review (session 4, ATTACK-2): a policy sandbox holding a secret's
# placeholder tries to have the forwarder substitute the real value into a
# request a shared server routes to another name (no Host, another Host,
# absolute target, pipelining, CL.TE smuggling, Upgrade, CONNECT), against
# the network lab of tests/network_hosts_test.go (root). Session 5 adds
# long TLS server names against the control socket and TRACE at a secret
# host (tests/attack_s5_net_test.go). About 8 s.
#   make test-attack-net   tests/attack_net_*_test.go (each with a control)
TEST_STEPS += 55:test-attack-net

ATTACK_NET_SCRATCH := $(BUILD)/attack-net-test

.PHONY: test-attack-net
test-attack-net: engine-release image-base
	@rm -rf $(ATTACK_NET_SCRATCH)/home && mkdir -p $(ATTACK_NET_SCRATCH)/home
	cd tests && LOCKBOX_LIB=$(RELEASE_LIB) LOCKBOX_HELPER=$(RELEASE_HELPER) \
	  LOCKBOX_IMAGES=$(IMAGES) LOCKBOX_HOME=$(ATTACK_NET_SCRATCH)/home \
	  CGO_ENABLED=0 go test -count=1 -timeout 3m -run '^TestNetAttack' -v . 2>&1 | \
	  grep -E '^(=== RUN|--- |PASS|FAIL|ok)|LEAK|control|attack_net_' ; exit $${PIPESTATUS[0]}
