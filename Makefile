# Tidemark: `make demo` shows two agents replicating a disk and restoring a
# checkpoint; `make test` runs the whole suite. Both install what they need.
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: all deps build image ova demo test unit e2e bench fuzz lint clean simulate simulate-reverts

all: build

deps:
	@scripts/deps.sh

build: deps
	@scripts/build-static.sh

# The appliance from Debian 12 packages + build/tidemark (build/image/).
image: build
	@image/build.sh

# The OVA for ESXi (build/ova/tidemark.ova).
ova: image
	@ova/package.sh

demo: build
	@tests/demo.sh

# The unit tests, then those that set failpoints (process-wide: one at a time).
unit: deps
	cargo test --workspace --locked
	cargo test --locked -p tidemark --features test-build --lib failpoints:: -- --test-threads=1

lint: deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
	python3 tests/sim/reverts.py --check .

e2e: build image
	@tests/run-e2e.sh

test: build lint unit e2e

bench: build image
	@tests/bench/run.sh
	@tests/bench/appliance.sh
	@tests/bench/iscsi.sh
	@tests/bench/page_churn.sh
	@tests/bench/index.sh
	@tests/bench/detection.sh
	@tests/bench/verify.sh
	@tests/bench/delta.sh
	@tests/bench/outage_latency.sh
	@tests/bench/api_latency.sh
	@tests/bench/coordinated_hold.sh

# The deterministic fault simulator (agent/src/simulator, docs/simulator.md)
# over SEEDS seeds from 0, or one SEED with its whole trace. `make test`
# runs a fixed set of seeds in the unit tests.
SEEDS ?= 1000
simulate: deps
	cargo build --release --locked -p tidemark --features simulate --example simulate
	@if [ -n "$(SEED)" ]; then target/release/examples/simulate --seed $(SEED); \
	else target/release/examples/simulate --seeds $(SEEDS); fi

# Each earlier defect's fix reverted in turn: the simulator must find it.
simulate-reverts: deps
	@SEEDS=$(SEEDS) tests/sim/reverts.sh

# Fuzz every parser of outside input for FUZZ_SECONDS each (nightly +
# cargo-fuzz; not part of `make test`).
FUZZ_SECONDS ?= 60
fuzz: deps
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	@for t in record_decode batch_decode summary_decode nbd_request nbd_server control_message local_request appliance_files; do \
		echo "fuzz: $$t for $(FUZZ_SECONDS) s"; \
		(cd fuzz && cargo +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=512) || exit 1; \
	done

clean:
	rm -rf build target
