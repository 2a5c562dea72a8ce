#!/usr/bin/env python3
"""Finality as a client sees it: COUNT transfers, one after another, each signed and submitted by
`trellis tx transfer` with KEY, then `tx_get` polled every 20 ms on the same node until it is
committed; prints the p50 and p90 of the time from the node accepting the transaction to the
client seeing it committed (docs/benchmarks.md). The chain must be running (a devnet, or the WAN
testbed's: `scripts/wan-testbed.sh continents devnet --miners 0`).
  scripts/finality.py TRELLIS RPC KEY [COUNT]
"""
import json
import subprocess
import sys
import time
import urllib.request


def tx_status(rpc, tx_hash):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tx_get", "params": [tx_hash]}).encode()
    request = urllib.request.Request(rpc, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer).get("result")


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    trellis, rpc, key = sys.argv[1:4]
    count = int(sys.argv[4]) if len(sys.argv) > 4 else 40
    latencies = []
    for _ in range(count):
        submit = subprocess.run(
            [trellis, "tx", "transfer", "--to", "00" * 20, "--amount", "1", "--key", key, "--rpc", rpc],
            capture_output=True, text=True, check=True)
        accepted = time.monotonic()
        tx_hash = submit.stdout.split()[1]
        while True:
            status = tx_status(rpc, tx_hash)
            if isinstance(status, dict) and status.get("status") in ("committed", "failed"):
                break
            if time.monotonic() - accepted > 60:
                sys.exit(f"{tx_hash} not committed within 60 s")
            time.sleep(0.02)
        latencies.append(time.monotonic() - accepted)
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]
    print(f"finality over {count} transfers: p50 {pick(0.5):.2f} s, p90 {pick(0.9):.2f} s, max {latencies[-1]:.2f} s")


if __name__ == "__main__":
    main()
