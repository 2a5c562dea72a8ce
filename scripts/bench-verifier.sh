#!/usr/bin/env bash
# Verifier benchmark: false rejects of honest trails (exact mode) re-executed on 1 and 2
# threads from their own checkpoints, and the cost of checking s segments per miner against
# the miner's training compute.
#   scripts/bench-verifier.sh [PRESET] [ROUNDS] [WORKERS] [H] [C] [S]
# TRELLIS_BIN picks another `trellis` binary (e.g. an older build, for a before/after figure).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
preset=${1:-nano}; rounds=${2:-2}; workers=${3:-4}; inner=${4:-50}; interval=${5:-2}; sampled=${6:-2}
data=${DATA:-$root/../shared/data/tinyshakespeare.txt}
bin=${TRELLIS_BIN:-$(cd "$root" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/trellis}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT

"$bin" train --data "$data" --model "$preset" --workers "$workers" --inner-steps "$inner" --rounds "$rounds" \
  --batch-size 8 --checkpoint-interval "$interval" --threads 2 --trail-dir "$work/trail" --json --out "$work/m.safetensors" > "$work/train.json"
for threads in 1 2; do
  start=$(date +%s.%N)
  "$bin" verify trail --trail-dir "$work/trail" --data "$data" --threads "$threads" --json > "$work/verify-$threads.jsonl" || true
  end=$(date +%s.%N)
  echo "$start $end" > "$work/verify-$threads.time"
done
start=$(date +%s.%N)
"$bin" verify trail --trail-dir "$work/trail" --data "$data" --segments "$sampled" --threads 2 --json > "$work/sampled.jsonl" || true
end=$(date +%s.%N)
echo "$start $end" > "$work/sampled.time"
python3 - "$work" "$sampled" <<'PY'
import json, sys
work, sampled = sys.argv[1], int(sys.argv[2])
train = json.load(open(f"{work}/train.json"))["diloco"]
def reports_of(path):
    lines = [json.loads(line) for line in open(path)]
    return [l["report"] for l in lines if "report" in l], next(l["summary"] for l in lines if "summary" in l)
for threads in (1, 2):
    reports, _ = reports_of(f"{work}/verify-{threads}.jsonl")
    bad = [r for r in reports if r["outcome"]["outcome"] != "valid"]
    start, end = map(float, open(f"{work}/verify-{threads}.time").read().split())
    print(f"exact mode, verifier on {threads} thread(s) (trained on 2): {len(reports)} segments, {len(bad)} false rejects, {end - start:.1f} s")
reports, summary = reports_of(f"{work}/sampled.jsonl")
start, end = map(float, open(f"{work}/sampled.time").read().split())
train_time = train["compute_seconds"] + train["checkpoint_seconds"]
print(f"checking {sampled} segments per trail: {len(reports)} segments in {end - start:.1f} s (process start and data loading included)")
print(f"  of which segment checks (checkpoint loads + re-execution): {summary['segment_seconds']:.2f} s")
print(f"training the same trails: {train_time:.1f} s")
print(f"verification/training: {(end - start) / train_time:.3f} with start-up, {summary['segment_seconds'] / train_time:.3f} for the segment checks alone")
PY
