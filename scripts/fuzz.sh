#!/usr/bin/env bash
# Runs each fuzz target for a bounded time on the stable toolchain.
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   (default 60 s; every target in fuzz/fuzz_targets/)
# libFuzzer's coverage instrumentation uses only stable rustc flags; what needs nightly in
# cargo-fuzz is AddressSanitizer, which safe Rust decoders do not need. Seeds in fuzz/seeds/TARGET/
# are valid encodings (see docs/fuzzing.md for where each set comes from); the growing corpus is
# kept in fuzz/corpus/TARGET/ and a crashing input is written to fuzz/artifacts/TARGET/.
set -euo pipefail
seconds=${1:-60}
shift || true
root=$(cd "$(dirname "$0")/.." && pwd)
target_dir=${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$root/target}-fuzz}
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
host=$(rustc -vV | sed -n 's/^host: //p')
cd "$root/fuzz"
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for source in fuzz_targets/*.rs; do targets+=("$(basename "$source" .rs)"); done
fi
# An explicit --target keeps the instrumentation flags away from build scripts.
built_from=$(date +%s)
cargo build --release --target "$host" --target-dir "$target_dir" --bins
echo "fuzz targets built in $(( $(date +%s) - built_from ))s"
for target in "${targets[@]}"; do
  corpus="$root/fuzz/corpus/$target"
  mkdir -p "$corpus" "$root/fuzz/artifacts/$target"
  if [ -d "$root/fuzz/seeds/$target" ]; then cp -n "$root/fuzz/seeds/$target"/* "$corpus"/ 2>/dev/null || true; fi
  echo "fuzzing $target for ${seconds}s"
  set +e
  "$target_dir/$host/release/$target" "$corpus" -max_total_time="$seconds" -max_len=65536 \
    -artifact_prefix="$root/fuzz/artifacts/$target/" -print_final_stats=1 2>&1 \
    | grep -E "^(#|Done|stat::(number_of_executed_units|average_exec_per_sec)|==|SUMMARY)|panicked|ERROR" | tail -n 7
  status=${PIPESTATUS[0]}
  set -e
  if [ "$status" -ne 0 ]; then echo "fuzz target $target failed (exit $status); crash input in fuzz/artifacts/$target/"; exit 1; fi
done
echo "fuzzing passed (${#targets[@]} targets, ${seconds}s each)"
