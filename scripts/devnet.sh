#!/usr/bin/env bash
# `make devnet`: starts a local devnet of 4 validators on loopback with the built `trellis`
# (homes under ./devnet, RPC on 127.0.0.1:26600, 26610, ...), until Ctrl-C.
#   DEVNET_ARGS="--validators 7 --base-port 27000" make devnet
# Training on chain (miners, jobs) arrives with the training-on-chain issue; meanwhile
# `trellis train` runs DiLoCo locally (see README).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$(cd "$root" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/trellis
[ -x "$bin" ] || { echo "error: $bin not built; run 'make build'" >&2; exit 1; }
"$bin" doctor
echo
# shellcheck disable=SC2086
exec "$bin" devnet --home "$root/devnet" ${DEVNET_ARGS:-}
