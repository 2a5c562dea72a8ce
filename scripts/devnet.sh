#!/usr/bin/env bash
# `make devnet`: runs the built `trellis`. The multi-node devnet arrives with the node-core
# and training-on-chain issues; until then this proves the binary runs and shows its commands.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$(cd "$root" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/trellis
[ -x "$bin" ] || { echo "error: $bin not built; run 'make build'" >&2; exit 1; }
"$bin" --help
echo
"$bin" doctor
echo
echo "devnet not yet implemented: the local multi-node devnet lands with the node-core issue."
