#!/usr/bin/env bash
# Every test (`make test`): the workspace's, with the `adversary` feature so that the attacks run
# end to end, then the chain's arithmetic in a release build (overflow checks on for the chain's
# crates).
#
# The adversary devnets (node/tests/adversaries.rs, ≈ 6 minutes) keep about one core busy, and so
# do the other tests, which run one test binary at a time: on two cores, the devnets run beside
# the rest instead of after it (≈ 4 minutes less; docs/benchmarks.md "CI time"). Their output
# goes to a log that is printed when they end; the script fails if either side fails.
set -euo pipefail
cargo=${CARGO:-cargo}
selection=(--workspace --features trellis-node/adversary)

"$cargo" test "${selection[@]}" --no-run

log=$(mktemp -t trellis-adversaries.XXXXXX.log)
echo "test: the adversary devnets run beside the other tests; their output follows when they end ($log)"
"$cargo" test "${selection[@]}" --test adversaries >"$log" 2>&1 &
adversaries=$!
# Stopped early (Ctrl-C, a failing step): the devnets' test process goes too. Each devnet kills
# its own nodes by pid when its test ends.
trap 'kill "$adversaries" 2>/dev/null || true' EXIT

failed=()
"$cargo" test "${selection[@]}" -- --skip with_adversaries || failed+=("the workspace's tests")
"$cargo" test --release -p trellis-contracts --test invariants --test job_arithmetic \
  || failed+=("the release build's arithmetic tests")

adversaries_status=0
wait "$adversaries" || adversaries_status=$?
trap - EXIT
echo "---- adversary devnets ($log) ----"
cat "$log"
rm -f "$log"
if [ "$adversaries_status" -ne 0 ]; then failed+=("the adversary devnets"); fi

if [ "${#failed[@]}" -gt 0 ]; then
  printf 'test: failed: %s\n' "${failed[@]}"
  exit 1
fi
echo "test: every test passed"
