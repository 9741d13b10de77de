# The spine: the C ABI crate (ffi/ -> liblockbox.so) and the Go loader (go/).
#   (the release cdylib and the debug helper are built in mk/build.mk)
#   make ffi-test-lib    debug cdylib with the test-hooks methods, copied to
#                        $(FFI_TEST_LIB) so other cargo builds cannot replace it
#   make test-ffi        ffi unit tests (with and without test-hooks), contract tests
#                        (libloading) and a C smoke test against the built cdylib
#   make test-go         go vet + go test (CGO_ENABLED=0) in go/ against the test-hooks build
#   make test-go-race    the same with the race detector (needs cgo; the SDK itself does not)
#   make header          regenerate ffi/include/lockbox.h
#   make check-header    fail if the committed header differs from the generated one
#   make bench-ffi       per-call cost and memory from Go, against the release cdylib
#   make bench-threads   10,000 execs in flight over 100 sandboxes: thread count and RSS
CHECK_STEPS += 14:check-header
TEST_STEPS += 30:test-ffi 40:test-go 41:test-go-race
BENCH_STEPS += bench-ffi bench-threads

FFI_TEST_LIB    := $(TARGET)/lockbox-test-hooks/liblockbox.so
FFI_HEADER      := ffi/include/lockbox.h
# The Go package's tests include the sandbox API's, which start real
# sandboxes: they need the helper (built here) and whatever other fragments
# add (e.g. GO_TEST_DEPS += image-base, GO_TEST_ENV += LOCKBOX_IMAGES=...).
GO_TEST_DEPS    += ffi-test-lib helper-debug
GO_TEST_ENV     += LOCKBOX_LIB=$(FFI_TEST_LIB) LOCKBOX_HELPER=$(DEBUG_HELPER)
CBINDGEN        := cbindgen -q --config ffi/cbindgen.toml --crate lockbox-ffi

.PHONY: ffi-test-lib test-ffi test-go test-go-race header check-header bench-ffi bench-threads

# Copied with a rename: a running test may have the old file mapped. Built
# by the one dev build of every test target (mk/cargo-tests.mk), where the
# cdylib is a dependency of ffi's contract tests: cargo leaves it in deps/
# (a cdylib's name has no hash), not in target/debug.
ffi-test-lib:
	$(DEV_BUILD)
	@mkdir -p $(dir $(FFI_TEST_LIB))
	@cp $(TARGET)/debug/deps/liblockbox.so $(FFI_TEST_LIB).tmp && mv -f $(FFI_TEST_LIB).tmp $(FFI_TEST_LIB)

# The unit tests run twice: without test-hooks they check that a release
# build has no debug.* methods.
# (--lib: only the unit test harnesses are built without the hooks; the
# cdylib, unhashed, would be rebuilt twice over.)
test-ffi: ffi-test-lib
	$(call cargo_test_flags,ffi:lib,,,--lib)
	$(call cargo_test,ffi,,LOCKBOX_TEST_LIB=$(FFI_TEST_LIB))
	@d=$(dir $(FFI_TEST_LIB)); gcc -std=c99 -Wall -Wextra -Werror -I ffi/include ffi/tests/c/smoke.c \
	  -L $$d -llockbox -Wl,-rpath,$$d -o $$d/c-smoke; \
	  $$d/c-smoke 2>$$d/c-smoke.err || { cat $$d/c-smoke.err; exit 1; }; \
	  if [ -s $$d/c-smoke.err ]; then echo "liblockbox wrote to the host's stderr:"; cat $$d/c-smoke.err; exit 1; fi

test-go: $$(GO_TEST_DEPS)
	cd go && CGO_ENABLED=0 go build ./... && CGO_ENABLED=0 go vet ./...
	cd go && $(GO_TEST_ENV) CGO_ENABLED=0 go test -count=1 ./...

test-go-race: $$(GO_TEST_DEPS)
	cd go && $(GO_TEST_ENV) CGO_ENABLED=1 go test -race -count=1 ./...

header:
	$(CBINDGEN) --output $(FFI_HEADER) ffi

check-header:
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	$(CBINDGEN) --output $$tmp/lockbox.h ffi; \
	if ! diff -u $(FFI_HEADER) $$tmp/lockbox.h; then \
	  echo "check-header: $(FFI_HEADER) is stale: run make header and commit it"; exit 1; fi; \
	printf '#include "lockbox.h"\nint main(void){return lockbox_abi_version()==LOCKBOX_ABI_VERSION?0:1;}\n' > $$tmp/use.c; \
	gcc -std=c99 -Wall -Wextra -Werror -fsyntax-only -I ffi/include $$tmp/use.c; \
	g++ -Wall -Werror -fsyntax-only -x c++ -I ffi/include $$tmp/use.c; \
	echo "check-header: $(FFI_HEADER) is current and compiles as C and C++"

bench-ffi: ffi-release
	cd go && LOCKBOX_LIB=$(RELEASE_LIB) CGO_ENABLED=0 go test -count=1 -run '^$$' \
	  -bench '^Benchmark(NoopCall|HandleCreateClose)$$' -benchmem .
	cd go && LOCKBOX_LIB=$(RELEASE_LIB) CGO_ENABLED=0 go test -count=1 -run '^$$' \
	  -bench '^Benchmark(Latency|Memory)' -benchtime 1x .

bench-threads: $$(GO_TEST_DEPS)
	cd go && $(GO_TEST_ENV) LOCKBOX_THREADS_EXECS=10000 LOCKBOX_THREADS_SANDBOXES=100 CGO_ENABLED=0 \
	  go test -count=1 -v -run '^TestThousandsOfExecsHoldNoThreadEach$$' .
