#!/usr/bin/env bash
# `make devnet`: a local devnet of 4 validators and 3 miners on loopback with the built
# `trellis` (homes under ./devnet, RPC on 127.0.0.1:26600, 26610, ...) that trains a demo `nano`
# job on this repository's docs and sources for 3 rounds, shows every round, writes
# devnet/loss.png and devnet/model.safetensors, and stops when the job ends (Ctrl-C stops early).
#   DEVNET_ARGS="--validators 7 --miners 5 --rounds 5 --base-port 27000" make devnet
#   DEVNET_ARGS="--miners 0" make devnet     # the chain alone, until Ctrl-C
#   DEVNET_ARGS="--miners 3 --adversary copy=1" make devnet   # and a cheater (see docs/threat-model.md)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$(cd "$root" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/trellis
[ -x "$bin" ] || { echo "error: $bin not built; run 'make devnet'" >&2; exit 1; }
"$bin" doctor
echo
# shellcheck disable=SC2086
cd "$root"
exec "$bin" devnet --home "$root/devnet" ${DEVNET_ARGS:---validators 4 --miners 3}
