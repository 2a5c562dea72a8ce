#!/usr/bin/env bash
# Checks that docs/architecture.md's crate graph (the table between the "crate graph" markers)
# is the workspace's real dependency graph (`cargo metadata`: normal dependencies on workspace
# crates). Prints both sides of every difference and fails if there is one.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo metadata --format-version 1 --no-deps | python3 -c '
import json, re, sys
meta = json.load(sys.stdin)
members = {p["name"] for p in meta["packages"]}
real = {}
for p in meta["packages"]:
    short = p["name"].removeprefix("trellis-")
    real[short] = sorted(d["name"].removeprefix("trellis-") for d in p["dependencies"]
                         if d["name"] in members and d["kind"] is None)
text = open("docs/architecture.md").read()
table = text.split("<!-- crate graph: begin -->")[1].split("<!-- crate graph: end -->")[0]
documented = {}
for line in table.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) != 2 or not cells[0].startswith("`"):
        continue
    documented[cells[0].strip("`")] = sorted(re.findall(r"`([a-z0-9-]+)`", cells[1]))
bad = 0
for crate in sorted(set(real) | set(documented)):
    if real.get(crate) != documented.get(crate):
        bad += 1
        print(f"{crate}: cargo says {real.get(crate)}, docs/architecture.md says {documented.get(crate)}")
if bad:
    sys.exit("docs/architecture.md: the crate graph differs from cargo metadata")
print(f"crate graph: docs/architecture.md agrees with cargo metadata ({len(real)} crates)")
'
