# microVM guest (issue 14 groundwork): the kernel and initramfs with the
# agent as /init, and a TCG boot that runs the agent protocol over
# virtio-serial. Assets are cached by input hash (scripts/vm/build-assets.sh).
VM_ASSETS := $(CURDIR)/build/vm

# The boot test takes ~30 s under TCG on this loaded machine.
TEST_STEPS += 32:test-vm

.PHONY: vm-assets test-vm bench-vm
# The guest's agent is the release helper from release-bins (one build of
# it per tier, with the reproducible-build flags); the test binary that
# drives qemu is the debug one test-agent already built.
vm-assets: release-bins
	scripts/vm/build-assets.sh $(VM_ASSETS) $(RELEASE_HELPER)

test-vm: vm-assets
	LOCKBOX_VM_ASSETS=$(VM_ASSETS) cargo test --locked -p lockbox-agent --test guest_boot

# Boot to handshake, median of 3 cold TCG boots.
BENCH_STEPS += bench-vm
bench-vm: vm-assets
	LOCKBOX_VM_ASSETS=$(VM_ASSETS) cargo test --locked -p lockbox-agent --test guest_boot -- --ignored --nocapture bench_guest_boot
