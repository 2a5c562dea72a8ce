#!/usr/bin/env bash
# One round of a real-sized model through the whole pipeline on this machine's CPUs: a devnet of
# 2 validators and 1 miner trains MODEL (default gpt2, 86M parameters) for H inner steps, both
# validators check a segment of c steps (fetching what they need from the miner) and compute the
# aggregate; the devnet's summary prints the round's time split, the bytes on the wire, the
# checkers' fetch and replay time and every node's peak resident memory (docs/benchmarks.md,
# "A gpt2 round"). About 2 minutes and 8 GB of memory for gpt2 on two cores.
#   scripts/bench-round.sh [MODEL] [H] [c]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
model=${1:-gpt2}
steps=${2:-6}
interval=${3:-2}
bin=$(cd "$root" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/trellis
[ -x "$bin" ] || { echo "error: $bin not built; run 'cargo build --release -p trellis-node'" >&2; exit 1; }
home=$(mktemp -d "${TMPDIR:-/tmp}/trellis-round.XXXXXX")
trap 'rm -rf "$home"' EXIT
cd "$root"
"$bin" devnet --home "$home/devnet" --base-port "${BASE_PORT:-33300}" --validators 2 --miners 1 \
    --model "$model" --inner-steps "$steps" --rounds 1 --checkpoint-interval "$interval" --dataset "$root/docs" \
  | sed -n '/^round  val loss/,$p'
