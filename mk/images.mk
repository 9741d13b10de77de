# Images: the named release images (base, python) and the image store crate.
#   make image-base     build/images/base/rootfs + build/images/base.tar.zst
#   make image-python   build/images/python/rootfs + build/images/python.tar.zst (debootstrap, root)
#   make images         both; each is instant when its inputs did not change
IMAGES_OUT := $(IMAGES)
TEST_STEPS += 33:test-images
BENCH_STEPS += bench-images

.PHONY: image-base image-python images test-images bench-images
image-base:
	@bash scripts/images/build-base.sh $(IMAGES_OUT)

image-python:
	@bash scripts/images/build-python.sh $(IMAGES_OUT)

images: image-base image-python

# The workspace's doc tests run here, once (mk/cargo-tests.mk).
test-images: image-base
	$(call cargo_test,images,,LOCKBOX_TEST_IMAGES=$(IMAGES_OUT))
	cargo test --locked --workspace --doc $(DEV_FLAGS)

bench-images: images
	cargo run --locked --release -q -p lockbox-images --example images_bench -- $(IMAGES_OUT)

# The python image is built from Debian's packages (debootstrap, a few
# minutes on a cold cache) and must run python3 in a real sandbox.
TEST_STEPS += 72:test-image-python
.PHONY: test-image-python
test-image-python: image-python $$(GO_TEST_DEPS)
	cd go && $(GO_TEST_ENV) LOCKBOX_REQUIRE_PYTHON=1 CGO_ENABLED=0 \
	  go test -count=1 -run '^TestImagePythonFromTheStore$$' -v . | grep -E '^(=== RUN|--- |ok|FAIL|PASS)'
