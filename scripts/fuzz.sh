#!/usr/bin/env bash
# Runs each fuzz target for a bounded time on the stable toolchain.
#   scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 60)
# libFuzzer's coverage instrumentation uses only stable rustc flags; what needs nightly in
# cargo-fuzz is AddressSanitizer, which safe Rust decoders do not need. Seeds in fuzz/seeds/
# are the golden-vector transactions and block of proto/tests/golden.rs.
set -euo pipefail
seconds=${1:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
target_dir=${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$root/target}-fuzz}
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
host=$(rustc -vV | sed -n 's/^host: //p')
cd "$root/fuzz"
# An explicit --target keeps the instrumentation flags away from build scripts.
cargo build --release --target "$host" --target-dir "$target_dir" --bins
for target in decode_tx decode_block; do
  corpus="$root/fuzz/corpus/$target"
  mkdir -p "$corpus" "$root/fuzz/artifacts/$target"
  if [ -d "$root/fuzz/seeds/$target" ]; then cp -n "$root/fuzz/seeds/$target"/* "$corpus"/ 2>/dev/null || true; fi
  echo "fuzzing $target for ${seconds}s"
  set +e
  "$target_dir/$host/release/$target" "$corpus" -max_total_time="$seconds" -max_len=65536 \
    -artifact_prefix="$root/fuzz/artifacts/$target/" -print_final_stats=1 2>&1 | grep -E "^(#|Done|stat::number_of_executed_units|==|SUMMARY)|panicked|ERROR" | tail -n 6
  status=${PIPESTATUS[0]}
  set -e
  if [ "$status" -ne 0 ]; then echo "fuzz target $target failed (exit $status); crash input in fuzz/artifacts/$target/"; exit 1; fi
done
echo "fuzzing passed"
