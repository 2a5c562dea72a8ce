# The two commands a new user needs:
#   make devnet   build and start a local devnet
#   make test     run every test
# Both install what is missing first (scripts/setup.sh): a C++ compiler, clang/libclang,
# and a virtualenv with torch==2.11.0 whose libtorch the binary links against (by rpath, so
# the built `trellis` runs without any exported variables).

VENV ?= $(CURDIR)/.venv
export LIBTORCH := $(abspath $(VENV))/libtorch
CARGO ?= cargo
FUZZ_SECONDS ?= 30

.PHONY: setup build build-check devnet wan test lint lint-static fuzz bench clean-venv zk-snarkjs

setup:
	@scripts/setup.sh "$(VENV)"

# A release build for running a node: it cannot be told to cheat.
build: setup
	$(CARGO) build --release -p trellis-node

# What users build (no `adversary` feature), checked in the test profile so that CI compiles
# RocksDB once: `build` above is the same code with optimisations. Its binary must hold none of
# the attacks (`node/src/roles/adversary.rs` logs under the target `node::adversary`).
TRELLIS_DEBUG_BINARY = $(or $(CARGO_TARGET_DIR),target)/debug/trellis
build-check: setup
	$(CARGO) build -p trellis-node
	@if grep -q "node::adversary" "$(TRELLIS_DEBUG_BINARY)"; then \
	  echo "the users' build holds attack code (node::adversary): gate it behind the adversary feature"; exit 1; \
	else echo "the users' build holds no attack code"; fi

# Formatting (rustfmt.toml), the crate graph against docs/architecture.md, and clippy with every
# warning an error ([workspace.lints]). Cargo does not share librocksdb-sys's build between
# `check` and `build`, so clippy alone would compile RocksDB's C++ a second time (≈ 30 min cold,
# docs/benchmarks.md "CI time"); it never links, so it is pointed at the archive a build made.
ROCKSDB_ARCHIVE = $(firstword $(shell ls -t $(or $(CARGO_TARGET_DIR),target)/debug/build/librocksdb-sys-*/out/librocksdb.a 2>/dev/null))
lint: setup lint-static
	$(if $(ROCKSDB_ARCHIVE),ROCKSDB_LIB_DIR=$(dir $(ROCKSDB_ARCHIVE)) ROCKSDB_STATIC=1) \
	$(CARGO) clippy --workspace --all-targets --features trellis-node/adversary -- -D warnings

# The checks that build nothing. CI runs clippy inside its builds instead of beside them
# (`.ci/run`: clippy-driver as the workspace's compiler, so no second, check-mode build of the
# dependencies), and only these from `lint`.
lint-static:
	$(CARGO) fmt --all --check
	scripts/check-architecture.sh

# Every benchmark that prints figures against a baseline (scripts/bench.sh; docs/benchmarks.md).
bench: setup
	VENV="$(abspath $(VENV))" scripts/bench.sh

# The devnet's build has the `adversary` feature, so that
#   DEVNET_ARGS="--miners 3 --adversary fake-trail=1" make devnet
# shows what happens to a cheater (docs/threat-model.md).
devnet: setup
	$(CARGO) build --release -p trellis-node --features adversary
	@scripts/devnet.sh

# The WAN testbed (docs/wan.md; needs root): the devnet with every node in its own network
# namespace behind a model of the internet. WAN_PROFILE is a file of testbed/profiles (lan,
# continents); WAN_MODE=probe only measures the profile.
WAN_PROFILE ?= continents
WAN_MODE ?= devnet
WAN_ARGS ?= --validators 4 --miners 4
wan: setup
	$(CARGO) build --release -p trellis-node -p trellis-testbed
	scripts/wan-testbed.sh $(WAN_PROFILE) $(WAN_MODE) $(if $(filter devnet,$(WAN_MODE)),$(WAN_ARGS))

# The end-to-end adversary tests need the feature too. Supply conservation and the job-spec
# arithmetic are also checked in a release build (overflow checks on for the chain's crates).
# The adversary devnets run beside the other tests (scripts/test.sh says why).
test: setup
	CARGO="$(CARGO)" scripts/test.sh

fuzz: setup
	scripts/fuzz.sh $(FUZZ_SECONDS)

# The Groth16 export checked by snarkjs itself (npm): the one test `make test` leaves out.
SNARKJS_DIR ?= $(HOME)/.cache/trellis/snarkjs
zk-snarkjs:
	@[ -x "$(SNARKJS_DIR)/node_modules/.bin/snarkjs" ] || npm install --prefix "$(SNARKJS_DIR)" snarkjs@0.7.6
	SNARKJS="$(SNARKJS_DIR)/node_modules/.bin/snarkjs" $(CARGO) test -p trellis-zk --test proofs snarkjs -- --ignored

clean-venv:
	rm -rf "$(VENV)"
