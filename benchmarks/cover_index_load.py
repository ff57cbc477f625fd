"""The cover index of a database on disk: built (and saved) against mapped in from the
saved copy (``query.cover_cache``), each in a new process, alternated.

    .venv/bin/python benchmarks/cover_index_load.py                              # 30 POP909 songs, ingested here
    .venv/bin/python benchmarks/cover_index_load.py --db /tmp/atlas-scale/db     # a database: 2 rounds, 40 queries
    .venv/bin/python benchmarks/cover_index_load.py --db ./atlas_data --rounds 3 --queries 80

Each round runs two new processes on the database: ``built`` removes the saved index
first, then loads (builds) the index and saves it, as the first search after an ingest
does; ``mapped`` loads the copy that one saved. Each then searches the same stored pieces
(drawn with seed 0; each piece's own query, as ``atlas covers ID`` makes it) and prints
the wall seconds of the load and of the save, the peak RSS, the first search and the
median of the others, and a digest of the answers (piece ids, in order), which must be
the same both ways. The database is only read (the saved index is written in its folder).
Without ``--db``, the first ``--songs`` POP909 dev songs (their NNN.mid and versions) are
ingested into a temporary database first.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # (this folder's ingest.py is not the ingest package)
POP909 = Path(os.environ.get("ATLAS_POP909", ROOT.parent / "shared" / "data" / "pop909-dev"))


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM: ru_maxrss would keep the parent's peak,
    which Linux carries across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(db: Path, mode: str, n_queries: int) -> dict:
    import numpy as np

    import query.cover_cache as cache
    import query.covers as qc

    saving = []
    save = cache.save_index

    def timed_save(*args):
        t = time.perf_counter()
        out = save(*args)
        saving.append(time.perf_counter() - t)
        return out

    cache.save_index = timed_save  # (load_index imports it at call time)
    if mode == "built":
        shutil.rmtree(cache.cache_dir(db), ignore_errors=True)
    t = time.perf_counter()
    index = qc.load_index(db)
    load_s = time.perf_counter() - t - sum(saving)
    if mode == "mapped" and saving:
        sys.exit("cover_index_load: the saved index was not read (built again): is the folder writable?")
    rows = np.random.default_rng(0).choice(len(index), min(n_queries, len(index)), replace=False)
    queries = [index.query_for_piece(index.ids[r]) for r in rows]
    times, answers = [], []
    for q in queries:
        t = time.perf_counter()
        table = index.search(q, top=10)
        times.append(time.perf_counter() - t)
        answers.append(table.column("piece_id").to_pylist())
    return {"mode": mode, "pieces": len(index), "load_s": load_s, "save_s": sum(saving) if saving else None,
            "peak_rss_mb": peak_rss_mb(),
            "first_ms": times[0] * 1e3, "p50_rest_ms": statistics.median(times[1:]) * 1e3 if len(times) > 1 else None,
            "digest": hashlib.sha256(json.dumps(answers).encode()).hexdigest()[:16]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", type=Path, help="a database folder (default: --songs POP909 songs ingested here)")
    ap.add_argument("--songs", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--child", choices=["built", "mapped"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.db, args.child, args.queries)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        if args.db is None:
            from ingest.pipeline import ingest_paths

            songs = sorted(p for p in POP909.iterdir() if p.is_dir())[:args.songs] if POP909.is_dir() else []
            if not songs:
                sys.exit(f"cover_index_load: POP909 dev data not found at {POP909} (set ATLAS_POP909)")
            args.db = Path(tmp) / "db"
            ingest_paths([str(p) for p in songs], args.db, workers=1)
        if not (args.db / "atlas.duckdb").exists():
            sys.exit(f"cover_index_load: {args.db}: no atlas.duckdb there")
        compare(args)


def compare(args) -> None:
    runs = []
    for r in range(args.rounds):
        for mode in ("built", "mapped"):
            out = subprocess.run([sys.executable, __file__, "--db", str(args.db), "--queries", str(args.queries),
                                  "--child", mode], cwd=ROOT, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"cover_index_load: the {mode} run failed: {out.stderr[-800:]}")
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1} {mode:6s}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                                        for k, v in runs[-1].items() if k != "mode"), flush=True)
    def figures(rows, key, fmt):
        return ", ".join(format(x[key], fmt) for x in rows if x[key] is not None)

    for mode in ("built", "mapped"):
        mine = [x for x in runs if x["mode"] == mode]
        print(f"{mode:6s}: load {figures(mine, 'load_s', '.2f')} s; peak RSS {figures(mine, 'peak_rss_mb', '.0f')} MB; "
              f"first search {figures(mine, 'first_ms', '.0f')} ms; median of the rest "
              f"{figures(mine, 'p50_rest_ms', '.1f')} ms")
    saves = [x["save_s"] for x in runs if x["save_s"] is not None]
    size = sum(p.stat().st_size for p in (args.db / "cover_index").rglob("*") if p.is_file()) / 2 ** 20
    print(f"saving: {', '.join(format(s, '.2f') for s in saves)} s; the saved index {size:.0f} MiB; "
          f"answers the same both ways: {'yes' if len({x['digest'] for x in runs}) == 1 else 'NO'}")


if __name__ == "__main__":
    main()
