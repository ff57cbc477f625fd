"""Pattern lookup latency at pop909-dev scale: the n-gram index against a full scan of the
stored streams and against a naive scan of the ``notes`` table, in the same run.

Each method answers the same queries (motifs cut from random places of the corpus, so
every one has at least one occurrence); the script checks that all three return the same
occurrences, then prints latency per method and the ratios.

    .venv/bin/python benchmarks/patterns.py                 # builds a temporary database
    .venv/bin/python benchmarks/patterns.py --db /tmp/pop   # reuse / keep a database
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from atlas_db.connection import db_file, reading  # noqa: E402
from query.pattern_search import (  # noqa: E402
    NOTE_COLUMNS,
    Motif,
    _collect,
    _variants,
    build_streams,
    match_in_pool,
    pool_from_streams,
    search,
)

POP909 = ROOT.parent / "shared" / "data" / "pop909-dev"


def build_db(db: Path, songs: int | None) -> None:
    from ingest.derived import run_stages
    from ingest.pipeline import ingest_paths

    db.parent.mkdir(parents=True, exist_ok=True)
    folders = sorted(p for p in POP909.iterdir() if p.is_dir())[: songs or None]
    t0 = time.perf_counter()
    s = ingest_paths([str(p) for p in folders], db, derive=False)
    t1 = time.perf_counter()
    run_stages(db, only=["patterns"])
    t2 = time.perf_counter()
    print(f"ingest {s.added} files, {s.notes_added:,} notes: {t1 - t0:.1f} s (notes only)")
    print(f"pattern index build: {t2 - t1:.1f} s = {s.notes_added / (t2 - t1) / 1e6:.2f}M notes/s")


def naive_search(db, motif: Motif, transforms, approximate=False):
    """What a user without the index does: read every note, cut the streams, scan them."""
    with reading(db) as con:
        notes = con.sql(f"SELECT piece_id, {', '.join(NOTE_COLUMNS)} FROM notes").to_arrow_table()
        pid = notes.column("piece_id").to_numpy(zero_copy_only=False)
        order = np.argsort(pid, kind="stable")
        cols = {c: notes.column(c).to_numpy(zero_copy_only=False)[order] for c in NOTE_COLUMNS}
        ps = pid[order]
        b = np.flatnonzero(ps[1:] != ps[:-1]) + 1
        parts = [build_streams(str(ps[lo]), {c: v[lo:hi] for c, v in cols.items()}, stage_version="naive")
                 for lo, hi in zip(np.concatenate([[0], b]), np.concatenate([b, [len(ps)]]))]
        pool = pool_from_streams(pa.concat_tables(parts))
        m = len(motif.pitches)
        found = [(t, m, match_in_pool(pool, v, approximate=approximate)) for t, v in _variants(motif, transforms)]
        paths = dict(con.execute("SELECT piece_id, path FROM pieces").fetchall())
        return _collect(pool, found, False, paths)


def key(table):
    return {(r["piece_id"], r["track_index"], r["note_index"], r["transform"]) for r in table.to_pylist()}


def timed(fn, *a, **kw):
    t = time.perf_counter()
    out = fn(*a, **kw)
    return time.perf_counter() - t, out


def summary(name, xs, base=None):
    med = statistics.median(xs)
    p95 = sorted(xs)[max(0, int(round(0.95 * len(xs))) - 1)]
    ratio = f"   x{base / med:,.0f} faster than naive" if base else ""
    return f"  {name:<34} median {med * 1e3:8.1f} ms   p95 {p95 * 1e3:8.1f} ms{ratio}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", type=Path, default=None, help="database folder (built if missing)")
    ap.add_argument("--songs", type=int, default=None, help="only the first N song folders")
    ap.add_argument("--queries", type=int, default=8, help="queries per motif length")
    ap.add_argument("--naive-queries", type=int, default=3, help="queries per length also run naively (slow)")
    args = ap.parse_args()
    tmp = None
    db = args.db
    if db is None:
        tmp = Path(tempfile.mkdtemp(prefix="atlas_bench_patterns_"))
        db = tmp / "db"
    try:
        if not db_file(db).exists():
            build_db(db, args.songs)
        with reading(db) as con:
            n_notes = con.execute("SELECT count(*) FROM notes").fetchall()[0][0]
            n_pieces = con.execute("SELECT count(*) FROM pieces").fetchall()[0][0]
            n_grams = con.execute("SELECT count(*) FROM pattern_ngrams").fetchall()[0][0]
            streams = con.execute("SELECT pitch FROM pattern_streams WHERE n_notes >= 40 ORDER BY stream_id").fetchall()
        print(f"corpus: {n_pieces} pieces, {n_notes:,} notes, {n_grams:,} n-gram rows")
        rng = random.Random(7)
        transforms = ("P", "I", "R", "RI")
        for length, approximate in ((5, False), (8, False), (12, False), (8, True)):
            motifs = []
            for _ in range(args.queries):
                p = rng.choice(streams)[0]
                i = rng.randrange(0, len(p) - length)
                motifs.append(Motif(tuple(p[i : i + length]), False, None, "bench"))
            t_idx, t_scan, t_naive, hits = [], [], [], []
            for j, m in enumerate(motifs):
                st = {}
                dt, r_idx = timed(search, db, m, transforms=transforms, approximate=approximate, stats=st)
                t_idx.append(dt)
                dt, r_scan = timed(search, db, m, transforms=transforms, approximate=approximate, method="scan")
                t_scan.append(dt)
                assert key(r_idx) == key(r_scan), f"index and scan disagree on {m.intervals}"
                if j < args.naive_queries:
                    dt, r_naive = timed(naive_search, db, m, transforms, approximate)
                    t_naive.append(dt)
                    assert key(r_idx) == key(r_naive), f"index and naive disagree on {m.intervals}"
                hits.append(r_idx.num_rows)
            label = f"{length} notes, P/I/R/RI" + (", approximate" if approximate else "")
            print(f"\n{label}: {len(motifs)} queries, median {statistics.median(hits):.0f} occurrences "
                  f"(method: {st.get('method')}); results identical across methods")
            base = statistics.median(t_naive) if t_naive else None
            print(summary("naive (read notes, cut, scan)", t_naive) if t_naive else "  naive: skipped")
            print(summary("scan of pattern_streams", t_scan, base))
            print(summary("n-gram index (atlas pattern)", t_idx, base))
            print(f"  index vs stream scan: x{statistics.median(t_scan) / statistics.median(t_idx):.1f}")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
