#!/usr/bin/env python3
"""Interleaved A/B of Lockbox builds: the same case, one run of each build
in turn (order alternating each round), so that load on a shared machine
falls on all of them alike. Each build is a directory holding
liblockbox.so and lockbox-helper (copy them out of target/release before
and after a change).

    cd bench && CGO_ENABLED=0 go build -o /tmp/lockbox-bench ./lockbox
    python3 bench/ab_builds.py --driver /tmp/lockbox-bench --case echo \
        --runs 40 /tmp/before /tmp/after

Prints the median of first output (cold cases) or of the exec round trip
per build, and each build's ratio to the first one. LOCKBOX_HOME and
LOCKBOX_IMAGES are passed through from the environment.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys


def start(driver: str, case: str, build: str, extra: list[str]) -> subprocess.Popen:
    env = dict(os.environ,
               LOCKBOX_LIB=os.path.join(build, "liblockbox.so"),
               LOCKBOX_HELPER=os.path.join(build, "lockbox-helper"))
    p = subprocess.Popen([driver, "-case", case, "-stdin", *extra], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, env=env, text=True)
    ready = json.loads(p.stdout.readline())
    if not ready.get("ready"):
        sys.exit(f"{build}: not ready: {ready.get('error')}")
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--driver", required=True, help="the bench/lockbox driver binary")
    ap.add_argument("--case", default="echo", help="echo, exec or python")
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--rootfs", default="", help="passed to the driver as -rootfs")
    ap.add_argument("builds", nargs="+")
    a = ap.parse_args()
    extra = ["-rootfs", a.rootfs] if a.rootfs else []
    procs = [(b, start(a.driver, a.case, b, extra)) for b in a.builds]
    times: dict[str, list[float]] = {b: [] for b in a.builds}
    failed = 0
    for i in range(a.runs):
        for b, p in (procs if i % 2 == 0 else list(reversed(procs))):
            p.stdin.write("\n")
            p.stdin.flush()
            line = json.loads(p.stdout.readline())
            if line.get("ok"):
                times[b].append(line["first_ns"] / 1e6)
            else:
                failed += 1
                print(f"{b}: run failed: {line.get('error')}", file=sys.stderr)
    for _, p in procs:
        p.stdin.close()
        p.wait()
    base = statistics.median(times[a.builds[0]])
    for b in a.builds:
        m = statistics.median(times[b])
        print(f"{b}: {a.case} n={len(times[b])} median {m:.3f} ms ({m / base:.2f}x the first)")
    if failed:
        sys.exit(f"{failed} runs failed")


if __name__ == "__main__":
    main()
