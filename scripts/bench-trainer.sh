#!/usr/bin/env bash
# Trainer speed benchmark: our inner loop (trellis train, one worker) against a plain PyTorch
# training loop of the same model, batch and threads, in the same invocation, on the same torch.
#   scripts/bench-trainer.sh [PRESET] [BATCH] [STEPS] [THREADS]
# Also reports the trail overhead (checkpoints every 10 steps, written to disk).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
preset=${1:-micro}; batch=${2:-16}; steps=${3:-40}; threads=${4:-$(nproc)}
data=${DATA:-$root/../shared/data/tinyshakespeare.txt}
venv=${VENV:-$root/.venv}
export MKL_CBWR=${MKL_CBWR:-AVX2,STRICT}
bin=$(cd "$root" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/trellis
[ -x "$bin" ] || { echo "error: build first: make build" >&2; exit 1; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT

ours=$("$bin" train --data "$data" --model "$preset" --workers 1 --rounds 1 --inner-steps "$steps" --batch-size "$batch" \
  --threads "$threads" --checkpoint-interval 10 --trail-dir "$work/trail" --json --out "$work/m.safetensors")
theirs=$("$venv/bin/python" "$root/bench/pytorch_loop.py" --data "$data" --model "$preset" --batch-size "$batch" --steps "$steps" --threads "$threads")
python3 - "$ours" "$theirs" <<'PY'
import json, sys
ours = json.loads(sys.argv[1])["diloco"]; theirs = json.loads(sys.argv[2])
ratio = ours["tokens_per_second"] / theirs["tokens_per_second"]
overhead = ours["checkpoint_seconds"] / (ours["checkpoint_seconds"] + ours["compute_seconds"])
print(f"trellis inner loop: {ours['tokens_per_second']:.0f} tokens/s")
print(f"plain PyTorch loop: {theirs['tokens_per_second']:.0f} tokens/s (torch {theirs['torch']}, {theirs['threads']} threads)")
print(f"ratio trellis/pytorch: {ratio:.2f}")
print(f"trail overhead at c=10: {100 * overhead:.1f}% of training time ({ours['checkpoint_seconds']:.2f} s of {ours['checkpoint_seconds'] + ours['compute_seconds']:.2f} s)")
PY
