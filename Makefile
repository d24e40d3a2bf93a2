# cmq: the two commands are `make run` and `make test`.
# Everything they need comes from the Rust toolchain and crates.io.

CARGO ?= cargo
RELEASE_BIN := target/release
NEXTEST := $(shell command -v cargo-nextest 2>/dev/null)

.PHONY: all build run cluster test test-only lint fmt bench install clean

all: build

## build: release binaries (cmqd, cmq, cmq-loadgen) in target/release
build:
	$(CARGO) build --release --locked --bins

## run: start cmqd with embedded defaults (data in ./data, 127.0.0.1:7700)
run: build
	@echo "cmq CLI: $(CURDIR)/$(RELEASE_BIN)/cmq  (export PATH=\"$(CURDIR)/$(RELEASE_BIN):\$$PATH\")"
	$(RELEASE_BIN)/cmqd

## cluster: start three nodes on 127.0.0.1:7701-7703 (data in ./data/node{1,2,3}); Ctrl-C stops them
cluster: build
	scripts/cluster.sh

## test: lint, then every unit, property and integration test
test: lint test-only

test-only:
	$(CARGO) build --locked --bins
ifneq ($(NEXTEST),)
	$(CARGO) nextest run --workspace --locked --no-fail-fast
	$(CARGO) test --workspace --locked --doc
else
	$(CARGO) test --workspace --locked --no-fail-fast
endif

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

## bench: criterion micro-benchmarks and cmq-loadgen scenarios; rewrites docs/BENCHMARKS.md
bench:
	scripts/bench.sh

## install: put cmqd, cmq and cmq-loadgen on PATH (~/.cargo/bin)
install:
	$(CARGO) install --locked --path broker
	$(CARGO) install --locked --path client
	$(CARGO) install --locked --path loadgen

clean:
	$(CARGO) clean
