"""How long a query from another process waits while `atlas ingest` runs.

Generates N pieces (``benchmarks/ingest_scale.py``'s generator), starts `atlas ingest`
of them into a new database, and meanwhile runs `atlas sql "SELECT count(*) FROM
pieces"` back to back; prints the ingest's line and each query's start and wall time
(the wait plus ~0.25 s of process start), then the longest wait in each phase.

    NUMBA_CACHE_DIR=$HOME/.cache/harmony-atlas/numba .venv/bin/python \\
        benchmarks/readers_during_ingest.py --pieces 20000 --work /tmp/atlas-readers

Measured figures: README ("A query from another process ..."), 2026-12-06: longest query
1.56 s (65 queries) during a 34.4 s ingest; the code before: 14.5 s (29) during 25.7 s.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ingest_scale import write_pieces  # noqa: E402

ATLAS = [sys.executable, "-m", "query.cli"]
ROOT = Path(__file__).parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pieces", type=int, default=20000)
    ap.add_argument("--work", default="/tmp/atlas-readers")
    args = ap.parse_args()
    work = Path(args.work)
    files = work / "files"
    if not files.exists():
        write_pieces(files, 0, args.pieces, 0)
    db = work / "db"
    shutil.rmtree(db, ignore_errors=True)
    t0 = time.monotonic()
    ingest = subprocess.Popen([*ATLAS, "ingest", str(files), "--db", str(db)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not (db / "atlas.duckdb").exists() and ingest.poll() is None:
        time.sleep(0.05)
    waits = []
    while ingest.poll() is None:
        a = time.monotonic()
        r = subprocess.run([*ATLAS, "sql", "SELECT count(*) AS n FROM pieces", "--db", str(db), "--format", "csv"],
                           cwd=ROOT, capture_output=True, text=True)
        waits.append((a - t0, time.monotonic() - a, r.stdout.splitlines()[-1] if r.returncode == 0 else r.stderr.strip()))
    line = ingest.communicate()[1].strip().splitlines()[-1]
    print(line)
    for start, wall, out in waits:
        print(f"  query at {start:5.1f} s: {wall:5.2f} s  ({out} pieces)")
    print(f"queries: {len(waits)}, longest {max(w for _, w, _ in waits):.2f} s" if waits else "no query ran")


if __name__ == "__main__":
    main()
