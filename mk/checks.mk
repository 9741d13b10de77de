# Static checks and unit tests: the `make check` tier.
#   make check-version     Cargo.toml and go/version.go name one version
#   make check-fmt         rustfmt and gofmt
#   make check-vet         go vet of every Go module
#   make check-clippy      clippy, every target, warnings are errors
#   make check-staticcheck staticcheck of every Go module (make deps installs it)
#   make check-msrv        the declared MSRV is honest (scripts/check-msrv)
#   make check-unit        Rust unit tests (--lib) and the Go packages that
#                          need no engine (internal/..., cmd/...)
CHECK_STEPS += 10:check-version 10:check-fmt 11:check-vet 12:check-clippy 12:check-staticcheck 13:check-msrv 20:check-unit

GO_MODULES := go examples tests bench

.PHONY: check-version check-fmt check-vet check-clippy check-staticcheck check-msrv check-unit
check-version:
	@gov=$$(sed -n 's/^const Version = "\(.*\)"/\1/p' go/version.go); \
	if [ "$$gov" != "$(VERSION)" ]; then \
	  echo "version mismatch: Cargo.toml says $(VERSION), go/version.go says $$gov"; exit 1; fi; \
	echo "version $(VERSION) (Cargo and Go agree)"

check-fmt:
	cargo fmt --all -- --check
	@out=$$(gofmt -l $(GO_MODULES)); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

check-vet:
	@for m in $(GO_MODULES); do (cd $$m && CGO_ENABLED=0 go vet ./...) || exit 1; done

check-clippy:
	cargo clippy --workspace --all-targets --locked -- -D warnings

check-staticcheck:
	@command -v staticcheck >/dev/null || { echo "staticcheck is not installed: run make deps"; exit 1; }
	@for m in $(GO_MODULES); do (cd $$m && CGO_ENABLED=0 staticcheck ./...) || exit 1; done

check-msrv:
	@python3 scripts/check-msrv

# No root and no sandboxes: the Rust library unit tests, and the Go
# packages below the public API (the public package's tests load the
# engine and start sandboxes: make test-go).
check-unit:
	cargo test --locked --workspace --lib
	cd go && CGO_ENABLED=0 go test -count=1 ./internal/... ./cmd/...
