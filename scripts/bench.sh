#!/usr/bin/env bash
# Every benchmark that prints figures against a baseline run in the same invocation, one after
# the other (docs/benchmarks.md says what each measures and what it gave). About 15 minutes on
# two cores once built; the numbers are only meaningful on an otherwise quiet machine.
#   scripts/bench.sh            (or: make bench)
# DATA picks the text the trainer benchmarks read: ../shared/data/tinyshakespeare.txt when it
# exists (what docs/benchmarks.md used), this repository's docs/ otherwise.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if [ -z "${DATA:-}" ]; then
  DATA=$root/../shared/data/tinyshakespeare.txt
  [ -f "$DATA" ] || DATA=$root/docs
fi
export DATA
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')

section() { printf '\n== %s\n' "$*"; }

cargo build --release -p trellis-node --bin trellis --example bench_chain
cargo build --release -p trellis-contracts --example state_growth --example detection_rate
cargo build --release -p trellis-trainer --example bench_hash

section "trainer: our inner loop against plain PyTorch (micro, batch 16, 40 steps)"
scripts/bench-trainer.sh micro 16 40 "$(nproc)"
section "trainer: checkpoint hashing"
"$target/release/examples/bench_hash"
section "verifier: false rejects and the cost of checking (nano, K = 4, H = 50, c = 2, s = 2)"
scripts/bench-verifier.sh nano 2 4 50 2 2
section "sampling: detection rate against the formula"
"$target/release/examples/detection_rate" 2000 20
section "state: blocks per second with 10,000 finished jobs against none"
"$target/release/examples/state_growth"
section "chain: committed tx/s, finality, finality under a flood (4 validators on loopback)"
"$target/release/examples/bench_chain" --txs 20000 --senders 128 --catchup 0
