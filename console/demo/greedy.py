"""A deliberately greedy job for the demo: it takes memory in steps up to `--mib` and holds it.

`--mib` below the job's memory request (the demo asks for ~95 % of it) keeps the job running at its
limit, so its pipeline's quota shows near its limit (`quota_near_limit`); `--mib` above it is a job the
agent stops for memory: it ends OUT_OF_MEMORY. The pages are written, so the memory is really resident.
"""

from __future__ import annotations

import argparse
import sys
import time

MIB = 2**20


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mib", type=int, required=True, help="how much to take, MiB")
    p.add_argument("--step-mib", type=int, default=16, help="taken per step")
    p.add_argument("--step-s", type=float, default=0.5, help="seconds between steps")
    p.add_argument("--hold-s", type=float, default=600.0, help="then hold it this long and exit 0")
    args = p.parse_args(argv)
    held: list[bytearray] = []
    while len(held) * args.step_mib < args.mib:
        chunk = bytearray(args.step_mib * MIB)
        for i in range(0, len(chunk), 4096):  # touch every page: resident, not just reserved
            chunk[i] = 1
        held.append(chunk)
        print(f"holding {len(held) * args.step_mib} MiB", flush=True)
        time.sleep(args.step_s)
    print(f"holding {len(held) * args.step_mib} MiB for {args.hold_s:g}s", flush=True)
    time.sleep(args.hold_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
