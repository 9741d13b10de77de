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
	$(call cargo_test,agent:test:guest_boot,,LOCKBOX_VM_ASSETS=$(VM_ASSETS))

# Boot to handshake, median of 3 cold TCG boots.
BENCH_STEPS += bench-vm
bench-vm: vm-assets
	LOCKBOX_VM_ASSETS=$(VM_ASSETS) cargo test --locked -p lockbox-agent --test guest_boot -- --ignored --nocapture bench_guest_boot

# The backend matrix (tests/vm_backend_test.go): the sandbox API against
# native and microVM (TCG: this host's nested KVM does not boot the guest);
# one VM boot per run.
VM_SCRATCH := $(CURDIR)/build/vm-test
TEST_STEPS += 34:test-vm-backend
.PHONY: test-vm-backend bench-vm-backend
# The KVM probe behind host.vm_check: bounded (20 s where KVM hangs the
# guest, as here), cached.
test-vm-backend: vm-assets image-base
	$(call cargo_test,engine:lib,vm_check --nocapture,LOCKBOX_VM_ASSETS=$(VM_ASSETS) LOCKBOX_HELPER=$(RELEASE_HELPER))
	@rm -rf $(VM_SCRATCH)/home && mkdir -p $(VM_SCRATCH)/home
	cd tests && LOCKBOX_LIB=$(RELEASE_LIB) LOCKBOX_HELPER=$(RELEASE_HELPER) LOCKBOX_IMAGES=$(IMAGES) \
	  LOCKBOX_HOME=$(VM_SCRATCH)/home LOCKBOX_VM_ASSETS=$(VM_ASSETS) LOCKBOX_VM_ACCEL=tcg \
	  CGO_ENABLED=0 go test -count=1 -run '^(TestBackendMatrix|TestMicroVMUnsupported|TestVMCheckpointRestoreFork|TestEscapeVM|TestMicroVMVolumes|TestMicroVMNetwork|TestVMAttackS6|TestVMAttackS6ErofsMemory)$$' -v . 2>&1 | \
	  grep -E '^(=== RUN|--- |PASS|FAIL|ok)|_test.go' ; exit $${PIPESTATUS[0]}

# Create -> first output and exec round trip, microVM (TCG) beside native.
BENCH_STEPS += bench-vm-backend
bench-vm-backend: vm-assets image-base
	@rm -rf $(VM_SCRATCH)/bench-home && mkdir -p $(VM_SCRATCH)/bench-home
	cd tests && LOCKBOX_LIB=$(RELEASE_LIB) LOCKBOX_HELPER=$(RELEASE_HELPER) LOCKBOX_IMAGES=$(IMAGES) \
	  LOCKBOX_HOME=$(VM_SCRATCH)/bench-home LOCKBOX_VM_ASSETS=$(VM_ASSETS) LOCKBOX_VM_ACCEL=tcg LOCKBOX_VM_BENCH=1 \
	  CGO_ENABLED=0 go test -count=1 -run '^(TestVMBenchFigures|TestVMRestoreBench|TestVMNetworkBench)$$' -v . 2>&1 | grep -E 'BENCH|^(--- |FAIL|ok)' ; exit $${PIPESTATUS[0]}
