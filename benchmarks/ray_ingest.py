"""Wall time of `atlas ingest` into a new database: local, and with --ray on a private
local Ray instance (its start included), alternating; docs/scale-out.md quotes it.

    python benchmarks/ray_ingest.py [--runs 1] [--data ../shared/data/pop909-dev] [--workers 2]

Prints per run the wall time, the command's own summary line and the load average
before the run (the machine may be shared: the figures are only as quiet as it is).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} -> exit {r.returncode}: {r.stderr.strip()[-500:]}")
    return wall, r.stderr.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "pop909-dev"))
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    atlas = [sys.executable, "-m", "query.cli", "ingest", args.data, "--workers", str(args.workers)]
    print(f"{args.data}, {os.cpu_count()} cores, --workers {args.workers}")
    walls: dict[str, list[float]] = {"local": [], "ray": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            for mode, extra in (("local", []), ("ray", ["--ray"])):
                db = Path(tmp) / mode
                shutil.rmtree(db, ignore_errors=True)
                load = os.getloadavg()[0]
                wall, line = run([*atlas, "--db", str(db), *extra])
                walls[mode].append(wall)
                print(f"run {i + 1} {mode:5s} {wall:6.1f} s wall (load {load:.1f} before) | {line}", flush=True)
    for mode, w in walls.items():
        print(f"{mode:5s} median {statistics.median(w):.1f} s over {len(w)} runs")


if __name__ == "__main__":
    main()
