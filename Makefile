# cmq: the two commands are `make run` and `make test`.
# Everything they need comes from the Rust toolchain and crates.io.

CARGO ?= cargo
RELEASE_BIN := target/release
NEXTEST := $(shell command -v cargo-nextest 2>/dev/null)
# Quiet, non-interactive, no recommends; apt-get update first (a fresh machine has no lists).
APT_INSTALL := DEBIAN_FRONTEND=noninteractive sh -c 'apt-get update -qq && apt-get install -y -qq --no-install-recommends "$$0"'

.PHONY: all build run cluster cluster-bench peer-tls-bench test test-only sim sim-explore tools sdk-venv console-venv lint fmt bench install clean package package-test

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

test-only: tools sdk-venv console-venv
	$(CARGO) build --locked --bins
ifneq ($(NEXTEST),)
	$(CARGO) nextest run --workspace --locked --no-fail-fast
	$(CARGO) test --workspace --locked --doc
else
	$(CARGO) test --workspace --locked --no-fail-fast
endif
	$(MAKE) sim package-test

## sim: the deterministic simulator over a FIXED range of SIM_SEEDS seeds
## from SIM_FROM, from a release build (the same profile as the binaries, so
## nothing is built twice): `make test` fails only on a seed someone has seen
## pass before; a failure prints how to replay it
SIM_SEEDS ?= 3000
SIM_FROM ?= 1
sim:
	$(CARGO) run --release --locked -p cmq-broker --example simulate -- $(SIM_SEEDS) $(SIM_FROM)

## sim-explore: bug hunting, SIM_SEEDS seeds from a start taken from the
## clock (printed); `make sim-explore SIM_SEEDS=100000` for a long run
sim-explore:
	$(CARGO) run --release --locked -p cmq-broker --example simulate -- $(SIM_SEEDS)

## tools: what the deploy/ tests need (promtool, systemd-analyze), from
## Debian's packages when missing; fails loudly if they cannot be installed
tools:
	@command -v promtool >/dev/null 2>&1 || { \
	    echo "installing promtool (Debian package prometheus)"; \
	    $(APT_INSTALL) prometheus; } || { echo "error: cannot install promtool (apt-get install prometheus)" >&2; exit 1; }
	@command -v systemd-analyze >/dev/null 2>&1 || { \
	    echo "installing systemd-analyze (Debian package systemd)"; \
	    $(APT_INSTALL) systemd; } || { echo "error: cannot install systemd-analyze (apt-get install systemd)" >&2; exit 1; }
	@command -v promtool >/dev/null 2>&1 && command -v systemd-analyze >/dev/null 2>&1

## package: the Debian package (cmqd, cmq, cmq-loadgen, the systemd unit,
## a default config, docs) in target/debian/, built with cargo-deb
package:
	@command -v cargo-deb >/dev/null 2>&1 || $(CARGO) install --locked cargo-deb
	$(CARGO) build --release --locked --bins
	mkdir -p target/help
	for p in cmqd cmq cmq-loadgen; do $(RELEASE_BIN)/$$p --help > target/help/$$p.txt; done
	$(CARGO) deb --no-build --locked -p cmq-broker

## package-test: install the package into a scratch root and run it
package-test: package
	deploy/package-test.sh

## sdk-venv: the real CMQ Python SDK (qcloud-cmq-sdk-py3 0.1, from PyPI) in
## a virtual environment, for the gateway's conformance test (tests/tests/cmq_sdk.rs);
## python3 and its venv module from Debian's packages when missing
SDK_VENV ?= .venv-cmq-sdk
SDK_PYTHON := $(SDK_VENV)/bin/python
sdk-venv:
	@command -v python3 >/dev/null 2>&1 || $(APT_INSTALL) python3
	@test -x $(SDK_VENV)/bin/pip || python3 -m venv $(SDK_VENV) 2>/dev/null || \
	    { rm -rf $(SDK_VENV); $(APT_INSTALL) python3-venv && python3 -m venv $(SDK_VENV); }
	@$(SDK_PYTHON) -c 'import cmq' 2>/dev/null || { \
	    echo "installing the CMQ Python SDK into $(SDK_VENV)"; \
	    $(SDK_VENV)/bin/pip install -q qcloud-cmq-sdk-py3==0.1; }
	@# The SDK's subscription.py imports mailcap, gone in Python 3.13; it never calls it: a stub.
	@$(SDK_PYTHON) -c 'import mailcap' 2>/dev/null || \
	    echo 'def subst(*args, **kwargs): raise NotImplementedError("mailcap")' \
	    > "$$($(SDK_PYTHON) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/mailcap.py"
	@$(SDK_PYTHON) -c 'import cmq.account, cmq.subscription'

## console-venv: the web console's browser tests (tests/tests/console_browser.rs, console_cluster.rs):
## Debian's chromium when missing, and Playwright for Python from PyPI in a
## virtual environment, driving that chromium (no browser download)
CONSOLE_VENV ?= .venv-console
console-venv:
	@command -v python3 >/dev/null 2>&1 || $(APT_INSTALL) python3
	@test -x /usr/bin/chromium || { echo "installing chromium (Debian package chromium)"; $(APT_INSTALL) chromium; } || \
	    { echo "error: cannot install chromium (apt-get install chromium)" >&2; exit 1; }
	@test -x $(CONSOLE_VENV)/bin/pip || python3 -m venv $(CONSOLE_VENV) 2>/dev/null || \
	    { rm -rf $(CONSOLE_VENV); $(APT_INSTALL) python3-venv && python3 -m venv $(CONSOLE_VENV); }
	@$(CONSOLE_VENV)/bin/python -c 'import playwright' 2>/dev/null || { \
	    echo "installing Playwright for Python into $(CONSOLE_VENV)"; \
	    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(CONSOLE_VENV)/bin/pip install -q playwright==1.65.3; }
	@$(CONSOLE_VENV)/bin/python -c 'import playwright.sync_api'

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

## cluster-bench: replicated (three local nodes) against single-node
## throughput and latency; rewrites its block of docs/BENCHMARKS.md
cluster-bench:
	scripts/cluster-bench.sh

## peer-tls-bench: replicated throughput with plaintext against TLS peer links (prints a table)
peer-tls-bench:
	scripts/peer-tls-bench.sh

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
