"""How long the TUI's Library takes to show a database, against plain queries measured in
the same run.

    python benchmarks/tui.py [--db DIR] [--songs 300] [--repeat 5]

Without ``--db`` (as ``make bench`` runs it) the database is built in a temporary folder
from the POP909 dev set (``$ATLAS_POP909``, else ../shared/data/pop909-dev; files only,
no derived stages); with ``--db`` an existing database is used as it is.

Rows: the baseline ``SELECT * FROM pieces`` (run_sql), the Library's list
(``query.library.list_pieces``: pieces + key + first tempo), one piece's detail
(``piece_detail``: tracks, notes for the piano roll, patterns, features) against fetching
that piece's notes alone, and the headless app from start to the first filled table and
detail panel. Figures are medians in milliseconds; ratios are to the baseline of the row.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would hide
# the `tui` package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]


def _median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def _app_first_paint(db) -> tuple[float, float]:
    from tui.app import AtlasApp

    seen: dict[str, float] = {}
    t0 = time.perf_counter()

    def hook(m):
        name = type(m).__name__
        if name in ("PiecesLoaded", "DetailLoaded") and name not in seen:
            seen[name] = time.perf_counter() - t0

    async def main():
        with tempfile.TemporaryDirectory() as tmp:
            app = AtlasApp(db, history_path=Path(tmp) / "h.json")
            async with app.run_test(size=(160, 48), message_hook=hook) as pilot:
                while len(seen) < 2:
                    await pilot.pause(0.01)

    asyncio.run(main())
    return seen["PiecesLoaded"] * 1000, seen["DetailLoaded"] * 1000


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default=None, help="an existing database folder (default: build one from POP909)")
    ap.add_argument("--songs", type=int, default=300, help="POP909 songs to ingest when building (default 300)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    if args.db:
        _run(Path(args.db), args.repeat)
        return
    import os

    from ingest.pipeline import ingest_paths

    pop = Path(os.environ.get("ATLAS_POP909", _HERE.parent.parent / "shared" / "data" / "pop909-dev"))
    if not pop.is_dir():
        sys.exit(f"benchmarks/tui.py: POP909 dev data not found at {pop} (set ATLAS_POP909 or pass --db)")
    songs = sorted(p for p in pop.iterdir() if p.is_dir())[: args.songs]
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "db"
        ingest_paths([str(p) for p in songs], db, derive=False)
        _run(db, args.repeat)


def _run(db: Path, repeat: int) -> None:
    from query.library import list_pieces, piece_detail
    from query.sql import run_sql

    n = run_sql(db, "SELECT count(*) AS n FROM pieces").column("n")[0].as_py()
    pid = run_sql(db, "SELECT piece_id FROM pieces ORDER BY n_notes DESC LIMIT 1").column("piece_id")[0].as_py()
    base_list = _median_ms(lambda: run_sql(db, "SELECT * FROM pieces"), repeat)
    lib_list = _median_ms(lambda: list_pieces(db), repeat)
    base_notes = _median_ms(lambda: run_sql(db, "SELECT * FROM notes WHERE piece_id = ?", params=[pid]), repeat)
    detail = _median_ms(lambda: piece_detail(db, pid), repeat)
    first_table, first_detail = _app_first_paint(db)
    print(f"database {db}: {n:,} pieces; detail of the largest piece {pid}")
    print(f"{'what':44s} {'ms':>9s} {'baseline ms':>12s} {'ratio':>7s}")
    rows = [
        ("library list (list_pieces)", lib_list, base_list),
        ("piece detail (piece_detail)", detail, base_notes),
        ("app start -> library table filled", first_table, base_list),
        ("app start -> detail panel filled", first_detail, base_list + base_notes),
    ]
    for what, ms, base in rows:
        print(f"{what:44s} {ms:9.1f} {base:12.1f} {ms / base:7.1f}")
    print("baselines: SELECT * FROM pieces; SELECT * FROM notes WHERE piece_id = ? (both via run_sql)")


if __name__ == "__main__":
    main()
