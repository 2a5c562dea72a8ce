#!/usr/bin/env bash
# Runs each fuzz target for a bounded time on the stable toolchain.
#   scripts/fuzz.sh [--build-only | --no-build] [SECONDS_PER_TARGET] [TARGET...]
#   (default 60 s; every target in fuzz/fuzz_targets/). CI builds the targets beside its test build
#   (`--build-only`, they need neither libtorch nor RocksDB) and fuzzes them at the end (`--no-build`).
# libFuzzer's coverage instrumentation uses only stable rustc flags; what needs nightly in
# cargo-fuzz is AddressSanitizer, which safe Rust decoders do not need. Seeds in fuzz/seeds/TARGET/
# are valid encodings (see docs/fuzzing.md for where each set comes from); the growing corpus is
# kept in fuzz/corpus/TARGET/ and a crashing input is written to fuzz/artifacts/TARGET/.
set -euo pipefail
build=1
run=1
case "${1:-}" in
  --build-only) run=0; shift ;;
  --no-build) build=0; shift ;;
esac
seconds=${1:-60}
shift || true
# The fuzz crate is built with its own flags, never through CI's clippy wrapper (.ci/run).
unset RUSTC_WORKSPACE_WRAPPER CLIPPY_ARGS
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
if [ "$build" -eq 1 ]; then
  built_from=$(date +%s)
  cargo build --release --target "$host" --target-dir "$target_dir" --bins
  echo "fuzz targets built in $(( $(date +%s) - built_from ))s"
fi
if [ "$run" -eq 0 ]; then exit 0; fi
# libFuzzer runs on one core: the targets run side by side, `FUZZ_JOBS` at a time (default: one
# per core), each into its own log, printed whole when it ends.
jobs=${FUZZ_JOBS:-$(nproc)}
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
fuzz_one() {
  local target=$1 corpus="$root/fuzz/corpus/$1"
  mkdir -p "$corpus" "$root/fuzz/artifacts/$target"
  if [ -d "$root/fuzz/seeds/$target" ]; then cp -n "$root/fuzz/seeds/$target"/* "$corpus"/ 2>/dev/null || true; fi
  "$target_dir/$host/release/$target" "$corpus" -max_total_time="$seconds" -max_len=65536 \
    -artifact_prefix="$root/fuzz/artifacts/$target/" -print_final_stats=1 > "$logs/$target.log" 2>&1
}
declare -A running=()
failed=()
# Waits for one running target, prints its summary and records a failure.
reap_one() {
  local pid status target
  set +e
  wait -n -p pid "${!running[@]}"
  status=$?
  set -e
  target=${running[$pid]}
  unset "running[$pid]"
  echo "fuzzed $target for ${seconds}s"
  grep -E "^(#|Done|stat::(number_of_executed_units|average_exec_per_sec)|==|SUMMARY)|panicked|ERROR" \
    "$logs/$target.log" | tail -n 7 || true
  if [ "$status" -ne 0 ]; then
    echo "fuzz target $target failed (exit $status); crash input in fuzz/artifacts/$target/"
    failed+=("$target")
  fi
}
for target in "${targets[@]}"; do
  while [ "${#running[@]}" -ge "$jobs" ]; do reap_one; done
  echo "fuzzing $target for ${seconds}s"
  fuzz_one "$target" &
  running[$!]=$target
done
while [ "${#running[@]}" -gt 0 ]; do reap_one; done
if [ "${#failed[@]}" -gt 0 ]; then exit 1; fi
echo "fuzzing passed (${#targets[@]} targets, ${seconds}s each, $jobs at a time)"
