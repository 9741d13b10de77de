# Rust tests in the dev profile: one cargo selection for every step.
#
# cargo resolves the features of shared dependencies per selection of
# packages, and `cargo test -p X` selected a different X in each step
# (ffi, agent, images, engine, net, installer): each wanted its own mix for
# libc, tokio, getrandom, rustls, url..., and every difference cascades to
# whatever depends on them, so a fresh clone compiled some 40 dependencies
# two or three times over. Every dev-profile build now selects the whole
# workspace with the same flags (all test targets, ffi's test hooks on):
# the first builds everything once, the others are no-ops. A step then runs
# only its own package's test executables, from the package's directory,
# as `cargo test -p` did; the doc tests run once (test-images).
#   $(call cargo_test,SPECS,HARNESS ARGS,ENV)
#     SPECS   dir[:kind[:name]] ...: agent, agent:test:guest_boot, engine:lib
#             (dir: the member's directory; kind: lib, bin or test)
#     HARNESS ARGS  given to each executable (a name filter, --nocapture)
#     ENV     VAR=value ... for the test executables
#   $(call cargo_test_flags,SPECS,HARNESS ARGS,ENV,BUILD FLAGS): other
#     build flags than $(DEV_FLAGS) (ffi's unit tests without the hooks)
# A filter with no executable to run is an error, never a silent pass.
DEV_FLAGS      := --features lockbox-ffi/test-hooks
DEV_TEST_BUILD := cargo test --locked --workspace --no-run
# The same build for a step that only needs its outputs (the debug helper,
# the hooked cdylib), without the list of some 40 test executables.
DEV_BUILD      := $(DEV_TEST_BUILD) $(DEV_FLAGS) 2>&1 | grep -v '^ *Executable '

cargo_test = $(call cargo_test_flags,$(1),$(2),$(3),$(DEV_FLAGS))
cargo_test_flags = list=$$($(DEV_TEST_BUILD) $(4) --message-format=json-render-diagnostics | \
	  python3 -c "$$CARGO_TEST_PICK" '$(1)') && \
	while read -r dir name exe; do echo "     Running $$name ($${exe\#$(TARGET)/})"; \
	  (cd "$$dir" && env CARGO_MANIFEST_DIR="$$dir" $(3) "$$exe" $(2) </dev/null) || exit 1; done <<< "$$list"

# Reads cargo's JSON messages; prints "dir target executable" for each
# test executable the specs (argv[1]) name, libs first, then bins, tests.
define CARGO_TEST_PICK
import json, os, sys
specs = [s.split(":") for s in sys.argv[1].split()]
rank = {"lib": 0, "bin": 1, "test": 2}
picked = set()
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable") or not m["profile"]["test"]:
        continue
    kinds = m["target"]["kind"]
    kind = "lib" if set(kinds) & {"lib", "rlib", "cdylib", "dylib", "staticlib"} else kinds[0]
    d = os.path.dirname(m["manifest_path"])
    name = m["target"]["name"]
    for s in specs:
        if s[0] == os.path.basename(d) and s[1:2] in ([], [kind]) and s[2:3] in ([], [name]):
            picked.add((d, rank.get(kind, 3), name, m["executable"]))
if not picked:
    sys.exit("cargo_test: no test executable for " + sys.argv[1])
for d, _, name, exe in sorted(picked):
    print(d, name, exe)
endef
export CARGO_TEST_PICK
