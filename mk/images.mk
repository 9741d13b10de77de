# Images: the named release images (base, python) and the image store crate.
#   make image-base     build/images/base/rootfs + build/images/base.tar.zst
#   make image-python   build/images/python/rootfs + build/images/python.tar.zst (debootstrap, root)
#   make images         both; each is instant when its inputs did not change
IMAGES_OUT := $(BUILD)/images
TEST_STEPS += test-images
BENCH_STEPS += bench-images

.PHONY: image-base image-python images test-images bench-images
image-base:
	@bash scripts/images/build-base.sh $(IMAGES_OUT)

image-python:
	@bash scripts/images/build-python.sh $(IMAGES_OUT)

images: image-base image-python

test-images: image-base
	LOCKBOX_TEST_IMAGES=$(IMAGES_OUT) cargo test --locked -p lockbox-images

bench-images: images
	cargo run --locked --release -q -p lockbox-images --example images_bench -- $(IMAGES_OUT)
