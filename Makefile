# Tidemark: `make demo` shows two agents replicating a disk and restoring a
# checkpoint; `make test` runs the whole suite. Both install what they need.
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: all deps build demo test unit e2e bench lint clean

all: build

deps:
	@scripts/deps.sh

build: deps
	@scripts/build-static.sh

demo: build
	@tests/demo.sh

unit: deps
	cargo test --workspace --locked

lint: deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

e2e: build
	@tests/run-e2e.sh

test: build lint unit e2e

bench: build
	@tests/bench/run.sh

clean:
	rm -rf build target
