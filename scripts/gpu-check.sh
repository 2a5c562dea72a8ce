#!/usr/bin/env bash
# The trainer's GPU check (issue 3), for a machine with an NVIDIA GPU and a python3 whose torch is
# 2.11.0 with CUDA: the trellis binary built here runs on that torch's libraries.
#   scripts/gpu-check.sh BIN DATA OUTDIR [SWEEP_SECONDS]
# 1. `small` on --device cuda, twice: tokens/s, and whether the two trails (and the saved models)
#    are bit-identical; then `trellis verify trail` re-executes sampled segments on the GPU.
# 2. The same model in the plain PyTorch loop on the GPU, deterministic and default.
# 3. A DiLoCo/DDP quality sweep on `micro` (K = 4, H = 50): settings from gpu-sweep.txt beside this
#    script, run side by side, each cut at SWEEP_SECONDS.
# Everything it prints also lands in OUTDIR/log.txt; figures in OUTDIR/*.json.
set -uo pipefail
bin=$1; data=$2; out=$3; sweep_seconds=${4:-200}
here=$(cd "$(dirname "$0")" && pwd)
# Overridable for a dry run on a CPU: DEVICE=cpu SMALL_MODEL=nano STEPS=20 SWEEP_MODEL=nano SWEEP=file
device=${DEVICE:-cuda}; small=${SMALL_MODEL:-small}; steps=${STEPS:-200}
sweep_model=${SWEEP_MODEL:-micro}; sweep=${SWEEP:-$here/gpu-sweep.txt}
mkdir -p "$out"; exec > >(tee -a "$out/log.txt") 2>&1
work=$(mktemp -d)
torch_lib=$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH=$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
stamp() { echo "== $(date -u +%H:%M:%S) $*"; }

stamp "machine"
nvidia-smi -L || true; nproc; python3 -c 'import torch; print("torch", torch.__version__, torch.version.cuda)'
"$bin" doctor || true

stamp "$small on $device, twice"
for run in a b; do
  "$bin" train --device "$device" --threads 4 --data "$data" --model "$small" --workers 1 --rounds 1 --inner-steps "$steps" \
    --batch-size 16 --checkpoint-interval 10 --trail-dir "$work/$run" --out "$work/$run.safetensors" --json \
    > "$out/small-$run.json"
  echo "run $run: exit $?"
done
python3 - "$out" <<'PY'
import json, sys
for run in "ab":
    d = json.load(open(f"{sys.argv[1]}/small-{run}.json"))["diloco"]
    print(f"run {run}: {d['tokens_per_second']:.0f} tokens/s, compute {d['compute_seconds']:.1f} s, "
          f"checkpoints {d['checkpoint_seconds']:.2f} s, final loss {d['final_validation_loss']:.4f}")
PY
if cmp "$work/a/round-0000/worker-00/trail.json" "$work/b/round-0000/worker-00/trail.json" \
   && cmp "$work/a.safetensors" "$work/b.safetensors"; then
  echo "REPEAT: bit-identical (trail and model)"
else
  echo "REPEAT: DIFFERENT"
fi
grep -m1 '"root"' "$work/a/round-0000/worker-00/trail.json"

stamp "verify trail on $device (resume from sampled checkpoints)"
"$bin" verify trail --device "$device" --threads 4 --trail-dir "$work/a" --data "$data" --segments 6 --json > "$out/verify.jsonl"
echo "verify exit $?"; tail -n 3 "$out/verify.jsonl"

stamp "plain PyTorch loop on $device"
python3 "$here/../bench/pytorch_loop.py" --device "$device" --deterministic --data "$data" --model "$small" --batch-size 16 --steps "$steps" --threads 4
python3 "$here/../bench/pytorch_loop.py" --device "$device" --data "$data" --model "$small" --batch-size 16 --steps "$steps" --threads 4
rm -rf "$work/a" "$work/b"

stamp "quality sweep on $sweep_model, K=4, H=50 (cut at ${sweep_seconds}s)"
pids=()
while read -r name args; do
  case "$name" in ''|'#'*) continue ;; esac
  # shellcheck disable=SC2086
  timeout "$sweep_seconds" "$bin" train --device "$device" --threads 1 --data "$data" --model "$sweep_model" --workers 4 \
    --inner-steps 50 --batch-size 16 $args --out "$work/$name.safetensors" --metrics "$out/sweep-$name.json" \
    > "$work/$name.log" 2>&1 &
  pids+=($!)
done < "$sweep"
wait "${pids[@]}"
stamp "sweep done"
python3 - "$out" "$sweep" <<'PY'
import json, os, sys
out, spec = sys.argv[1], sys.argv[2]
rows = {}
for line in open(spec):
    if not line.strip() or line.startswith("#"):
        continue
    name, *args = line.split()
    path = f"{out}/sweep-{name}.json"
    if not os.path.exists(path):
        print(f"{name:14} {' '.join(args):60} (did not finish)")
        continue
    m = json.load(open(path))
    d = m["diloco"]; ddp = m.get("ddp")
    curve = " ".join(f"{r['validation_loss']:.3f}" for r in d["rounds"])
    line = f"{name:14} {' '.join(args):60} diloco {d['final_validation_loss']:.4f}"
    if ddp:
        line += f" ddp {ddp['final_validation_loss']:.4f} ratio {d['final_validation_loss'] / ddp['final_validation_loss']:.4f}"
    print(line, f"{d['tokens_per_second']:.0f} tok/s", "|", curve)
    rows[name] = {"args": args, "diloco": [r["validation_loss"] for r in d["rounds"]],
                  "ddp": [r["validation_loss"] for r in ddp["rounds"]] if ddp else None}
json.dump(rows, open(f"{out}/sweep.json", "w"), indent=1)
PY
while read -r name args; do
  case "$name" in ''|'#'*) continue ;; esac
  [ -f "$out/sweep-$name.json" ] || { echo "-- $name (cut): last lines"; grep ' round ' "$work/$name.log" | tail -n 40; }
done < "$sweep"
for f in "$out"/sweep-*.json; do rm -f "$f"; done
stamp "end"
