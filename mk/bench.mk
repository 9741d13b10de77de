# Benchmarks against the tools a user would pick instead, SDK overhead
# benchmarks, and the examples a newcomer copies from.
#   make bench-compare   Lockbox vs bubblewrap vs an OCI runtime
#                        -> docs/benchmarks.md + docs/benchmarks.png
#   make bench-sdk       Go testing.B benchmarks of the SDK's own overhead
#                        (bench-compare runs them too and puts them in the doc)
BENCH_STEPS += bench-compare

BENCH_RUNS   ?= 200
BENCH_WORK   := $(BUILD)/bench
BENCH_VENV   := $(BUILD)/bench-venv
# A busybox root filesystem for when `make image-base` has not built one.
BENCH_ROOTFS_DEV := $(BUILD)/bench-rootfs
BASE_ROOTFS   := $(BUILD)/images/base/rootfs
PYTHON_ROOTFS := $(BUILD)/images/python/rootfs
# Dev builds load the library straight from the cargo output; sandbox
# state goes under build/, apart from the user's own.
BENCH_LIB    := $(RELEASE_LIB)
BENCH_HOME   := $(BENCH_WORK)/home

# bench/ is its own Go module, outside check-fmt's list: checked here,
# with the harness's unit tests (arithmetic and parsing; no tools run).
CHECK_STEPS += 15:check-bench

.PHONY: check-bench
check-bench:
	@out=$$(gofmt -l bench); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	cd bench && CGO_ENABLED=0 go vet ./...
	python3 -B bench/test_compare.py
	@echo "bench: gofmt, vet and the harness's unit tests clean"

.PHONY: bench-compare bench-sdk bench-venv bench-rootfs-dev bench-compare-images bench-driver

bench-compare: deps bench-venv bench-rootfs-dev bench-compare-images bench-driver
	@$(MAKE) --no-print-directory bench-sdk || echo "bench-sdk failed (its output is in the doc)"
	@$(MAKE) --no-print-directory bench-reflink || echo "bench-reflink failed (the doc says so)"
	@rootfs=$(BASE_ROOTFS); [ -d "$$rootfs" ] || rootfs=$(BENCH_ROOTFS_DEV); \
	why=$$(cat $(BENCH_WORK)/driver.missing 2>/dev/null || true); \
	LOCKBOX_LIB=$(BENCH_LIB) LOCKBOX_HOME=$(BENCH_HOME) $(BENCH_VENV)/bin/python bench/compare.py \
	  --runs $(BENCH_RUNS) --rootfs "$$rootfs" --python-rootfs $(PYTHON_ROOTFS) \
	  --lockbox-driver $(BENCH_WORK)/lockbox-bench --lockbox-missing "$$why" \
	  --workdir $(BENCH_WORK) --md docs/benchmarks.md --png docs/benchmarks.png \
	  --sdk $(BENCH_WORK)/sdk.txt --command "make bench-compare" \
	  --reflink $(BENCH_WORK)/reflink.txt --reflink-note "$$(cat $(BENCH_WORK)/reflink.note 2>/dev/null)" \
	  --measured-commit "$$(git describe --always --dirty 2>/dev/null)"

# Fork where the store's filesystem reflinks: a loop-mounted xfs made with
# reflink=1 is the LOCKBOX_HOME of one run of the WithDisk(0) fork
# benchmark (its writable layer and the store on one filesystem, so the
# copy is FICLONE). Root only (mount); otherwise the note says why.
REFLINK_IMG := $(BENCH_WORK)/xfs.img
REFLINK_MNT := $(BENCH_WORK)/xfs
.PHONY: bench-reflink
bench-reflink: deps bench-driver
	@mkdir -p $(BENCH_WORK); rm -f $(BENCH_WORK)/reflink.txt; note=$(BENCH_WORK)/reflink.note; \
	if [ "$$(id -u)" != 0 ]; then echo "not run: a loop mount needs root" > $$note; exit 0; fi; \
	umount -l $(REFLINK_MNT) 2>/dev/null; rm -f $(REFLINK_IMG); mkdir -p $(REFLINK_MNT); \
	if ! { truncate -s 3G $(REFLINK_IMG) && mkfs.xfs -q -f -m reflink=1 $(REFLINK_IMG) && \
	       mount -o loop $(REFLINK_IMG) $(REFLINK_MNT); }; then \
	  echo "not run: could not make and mount an xfs with reflink=1 here" > $$note; rm -f $(REFLINK_IMG); exit 0; fi; \
	trap 'umount -l $(REFLINK_MNT); rm -f $(REFLINK_IMG)' EXIT; \
	mkdir -p $(REFLINK_MNT)/home; \
	echo "LOCKBOX_HOME on a 3 GiB loop-mounted xfs ($$(mkfs.xfs -V | head -1), -m reflink=1); \
	  BenchmarkFork100MiBDiskLayer, the same benchmark as on this disk" > $$note; \
	cd bench && LOCKBOX_LIB=$(BENCH_LIB) LOCKBOX_HOME=$(REFLINK_MNT)/home CGO_ENABLED=0 \
	  go test -run '^$$' -bench '^BenchmarkFork100MiBDiskLayer$$' -benchmem -count 1 -v . 2>&1 | \
	  tee $(BENCH_WORK)/reflink.txt

# The Lockbox side: the engine (cargo) and the Go driver on the public API.
# If either does not build, the comparison still runs the peers and the
# table says why Lockbox is missing; the build log is kept for the reader.
bench-driver:
	@mkdir -p $(BENCH_WORK); rm -f $(BENCH_WORK)/driver.missing $(BENCH_WORK)/lockbox-bench
	@if ! $(MAKE) --no-print-directory build >$(BENCH_WORK)/build.log 2>&1; then \
	  echo "the engine did not build (build/bench/build.log)" >$(BENCH_WORK)/driver.missing; \
	elif ! (cd bench && CGO_ENABLED=0 go build -o $(BENCH_WORK)/lockbox-bench ./lockbox) \
	    >>$(BENCH_WORK)/build.log 2>&1; then \
	  echo "the Go driver did not compile against the Go API (build/bench/build.log)" \
	    >$(BENCH_WORK)/driver.missing; \
	fi; \
	if [ -f $(BENCH_WORK)/driver.missing ]; then echo "bench: lockbox not available: $$(cat $(BENCH_WORK)/driver.missing)"; fi

# The images are built by mk/images.mk when it exists; a failure there only
# means the comparison falls back to the busybox rootfs below, and says so.
bench-compare-images:
	@if grep -qs '^image-base:' mk/*.mk; then $(MAKE) --no-print-directory image-base || echo "bench: image-base failed, using $(BENCH_ROOTFS_DEV)"; fi
	@if grep -qs '^image-python:' mk/*.mk; then $(MAKE) --no-print-directory image-python || echo "bench: image-python failed, the python case is skipped"; fi

bench-rootfs-dev: $(BENCH_ROOTFS_DEV)/bin/busybox
$(BENCH_ROOTFS_DEV)/bin/busybox: /bin/busybox
	rm -rf $(BENCH_ROOTFS_DEV)
	mkdir -p $(BENCH_ROOTFS_DEV)/{bin,dev,proc,sys,tmp,etc,root}
	cp /bin/busybox $(BENCH_ROOTFS_DEV)/bin/busybox
	# Relative links: `busybox --install -s` would point at the host path.
	for n in $$(/bin/busybox --list); do [ "$$n" = busybox ] || ln -s busybox $(BENCH_ROOTFS_DEV)/bin/$$n; done

# matplotlib for the plot, in a venv under build/ so the system stays clean.
bench-venv: $(BENCH_VENV)/.ok
$(BENCH_VENV)/.ok:
	python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q matplotlib
	touch $@

bench-sdk: deps bench-driver bench-rootfs-dev
	mkdir -p $(BENCH_HOME) && cd bench && LOCKBOX_LIB=$(BENCH_LIB) LOCKBOX_HOME=$(BENCH_HOME) LOCKBOX_BENCH_ROOTFS=$$( [ -d $(BASE_ROOTFS) ] && echo $(BASE_ROOTFS) || echo $(BENCH_ROOTFS_DEV) ) \
	  CGO_ENABLED=0 go test -run '^$$' -bench . -benchmem -count 1 -v . 2>&1 | tee $(BENCH_WORK)/sdk.txt

# The examples, run as a user runs them: a release built from this tree,
# served over HTTP on 127.0.0.1, installed by EnsureInstalled into a fresh
# LOCKBOX_HOME. examples/examples_test.go checks each one's output.
TEST_STEPS += 75:test-examples

.PHONY: test-examples
test-examples: image-base release servedist
	@home=$$(mktemp -d /tmp/lockbox-examples.XXXXXX); trap 'rm -rf "$$home"' EXIT; \
	cd examples && LOCKBOX_HOME=$$home LOCKBOX_DEV_PIN=$(DEV_PIN) LOCKBOX_EXAMPLES_REQUIRED=1 CGO_ENABLED=0 \
	  $(ROOT)/scripts/with-dist-server $(DIST) -- go test -count=1 -v ./...
