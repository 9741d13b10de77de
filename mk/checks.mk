# Static checks: formatting, lints, one product version.
TEST_STEPS += check-version check-fmt check-clippy

.PHONY: check-version check-fmt check-clippy
check-version:
	@gov=$$(sed -n 's/^const Version = "\(.*\)"/\1/p' go/version.go); \
	if [ "$$gov" != "$(VERSION)" ]; then \
	  echo "version mismatch: Cargo.toml says $(VERSION), go/version.go says $$gov"; exit 1; fi; \
	echo "version $(VERSION) (Cargo and Go agree)"

check-fmt:
	cargo fmt --all -- --check
	@out=$$(gofmt -l go examples tests); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	cd go && CGO_ENABLED=0 go vet ./...
	cd examples && CGO_ENABLED=0 go vet ./...
	cd tests && CGO_ENABLED=0 go vet ./...

check-clippy:
	cargo clippy --workspace --all-targets --locked -- -D warnings
