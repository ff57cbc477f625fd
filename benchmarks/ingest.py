"""Ingest speed on pop909-dev: parse + store and end to end (every derived stage) in
notes/s, next to plain mido (and symusic) parses of the same files in the same run.

    NUMBA_CACHE_DIR=$HOME/.cache/harmony-atlas/numba .venv/bin/python benchmarks/ingest.py [FOLDER] [--songs N] [--stages]

Prints one line per method with the ratio to mido, then each stage's seconds and share
of the end-to-end ingest (store, harmony, grammar, vectors, patterns), in one process
(``workers=1``) and as ``atlas ingest`` runs it (``--workers``, default the machine's
cores: the per-piece stages in worker processes, ingest/stage_pool.py); for the latter
also its CPU seconds (this process and its workers) and the wall they allow at best on
this machine's cores. Goals (issue 13):
end to end >= 10x mido's notes/s; parse + store >= 1M notes/s on 2 cores.

``--stages``: only the derived stages, each on its own: the files are stored once
(no stages), then each stage brings that database up to date in turn; prints each
stage's wall and CPU seconds (CPU: every thread of this process; on a shared machine it
moves much less than the wall time does). For comparing two checkouts, run each in turn
(docs/ingest-throughput.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ingest.pipeline import default_workers, ingest_paths  # noqa: E402
from ingest.sources import discover  # noqa: E402


def mido_parse(files) -> tuple[int, float]:
    import mido

    t0 = time.perf_counter()
    n = 0
    for f in files:
        for track in mido.MidiFile(f).tracks:
            n += sum(1 for m in track if m.type == "note_on" and m.velocity > 0)
    return n, time.perf_counter() - t0


def _cpu_seconds() -> tuple[float, float]:
    """CPU seconds (user + system) of this process and of its ended, waited-for children."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def symusic_parse(files) -> tuple[int, float]:
    try:
        import symusic
    except ImportError:
        return 0, float("nan")
    t0 = time.perf_counter()
    n = 0
    for f in files:
        score = symusic.Score(f)
        n += sum(len(t.notes) for t in score.tracks)
    return n, time.perf_counter() - t0


def stages_only(files) -> None:
    """Store ``files`` without the derived stages, then run each stage on its own."""
    import importlib

    from ingest.derived import STAGE_MODULES, run_stages

    with tempfile.TemporaryDirectory() as tmp:
        ingest_paths(files[:20], Path(tmp) / "warm")  # numba cache loads, imports
        s = ingest_paths(files, Path(tmp) / "db", derive=False)
        wall, cpu = {}, {}
        for module in STAGE_MODULES:
            name = importlib.import_module(module).STAGE
            t0, c0 = time.perf_counter(), time.process_time()
            run_stages(Path(tmp) / "db", only=[name])
            wall[name], cpu[name] = time.perf_counter() - t0, time.process_time() - c0
    print(f"{s.notes_added:,d} notes stored in {s.store_seconds:.2f} s; derived stages one by one:")
    print(f"{'stage':10s} {'wall s':>8s} {'CPU s':>8s}")
    for name in wall:
        print(f"{name:10s} {wall[name]:8.2f} {cpu[name]:8.2f}")
    print(f"{'all':10s} {sum(wall.values()):8.2f} {sum(cpu.values()):8.2f}")
    print(f"load average at the end: {' '.join(open('/proc/loadavg').read().split()[:3])}"
          if os.path.exists("/proc/loadavg") else "")


def main():
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("folder", nargs="?", default=str(ROOT.parent / "shared" / "data" / "pop909-dev"))
    ap.add_argument("--songs", type=int, default=0, help="only the first N song folders (0: all)")
    ap.add_argument("--stages", action="store_true", help="only the derived stages, wall and CPU seconds each")
    ap.add_argument("--workers", type=int, default=default_workers(),
                    help="processes of the end-to-end ingest (default: as atlas ingest); it is also run with 1")
    args = ap.parse_args()
    folder = Path(args.folder)
    paths = [str(folder)]
    if args.songs:
        paths = [str(p) for p in sorted(q for q in folder.iterdir() if q.is_dir())[:args.songs]]
    files = discover(paths).files
    size_mb = sum(os.path.getsize(f) for f in files) / 1e6
    print(f"corpus: {folder} ({len(files)} MIDI files, {size_mb:.1f} MB), {os.cpu_count()} cores")
    if args.stages:
        return stages_only(files)
    with tempfile.TemporaryDirectory() as tmp:
        ingest_paths(files[:20], Path(tmp) / "warm")  # numba cache loads, imports (lancedb, ...)
        s = ingest_paths(files, Path(tmp) / "db", derive=False)
        store_rate = s.notes_added / s.store_seconds
        t0 = time.perf_counter()
        one = ingest_paths(files, Path(tmp) / "one", workers=1)
        one_s = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), _cpu_seconds()
        e2e = ingest_paths(files, Path(tmp) / "e2e", workers=args.workers)
        e2e_s = time.perf_counter() - t0
        e2e_cpu = [b - a for a, b in zip(c0, _cpu_seconds())]  # this process, its (ended) workers
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "query.cli", "ingest", *paths, "--db", str(Path(tmp) / "cli")],
                           cwd=ROOT, capture_output=True, text=True)
        cli_s = time.perf_counter() - t0
        assert r.returncode == 0, r.stderr
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "query.cli", "ingest", *paths, "--db", str(Path(tmp) / "cli")],
                       cwd=ROOT, capture_output=True, text=True)
        again_s = time.perf_counter() - t0
    n_mido, t_mido = mido_parse(files)
    n_sym, t_sym = symusic_parse(files)
    mido_rate = n_mido / t_mido
    rows = [
        ("mido parse only (baseline)", n_mido, t_mido),
        ("symusic parse only (no channels/track ids)", n_sym, t_sym),
        ("atlas parse + store (ingest_paths, no stages)", s.notes_added, s.store_seconds),
        ("atlas end to end, one process (workers=1)", one.notes_added, one_s),
        (f"atlas end to end (ingest_paths, workers={args.workers})", e2e.notes_added, e2e_s),
        ("atlas ingest CLI end to end (new process)", s.notes_added, cli_s),
    ]
    if t_sym != t_sym:  # not installed: say so instead of a row of nan
        rows = [r for r in rows if not r[0].startswith("symusic")]
        print("(symusic is not installed: its row is left out; pip install symusic to compare)")
    print(f"{'method':44s} {'notes':>10s} {'seconds':>8s} {'notes/s':>12s} {'x mido':>7s}")
    for name, n, t in rows:
        rate = n / t if t == t and t > 0 else float("nan")
        print(f"{name:44s} {n:>10,d} {t:>8.2f} {rate:>12,.0f} {rate / mido_rate:>7.2f}")
    for label, res, secs in (("one process", one, one_s), (f"workers={args.workers}", e2e, e2e_s)):
        shares = {"store": res.store_seconds, **res.stage_seconds}
        print(f"end to end by stage, {label}: "
              + ", ".join(f"{k} {v:.2f} s ({100 * v / secs:.0f}%)" for k, v in shares.items())
              + f"; other {secs - sum(shares.values()):.2f} s")
    print("(with workers > 1, a pooled stage's seconds are the driver's: reading its inputs, waiting for the "
          "workers, writing; the grammar runs first)")
    print(f"end to end goal >= 10x mido: {'met' if e2e.notes_added / e2e_s >= 10 * mido_rate else 'NOT met'} "
          f"({e2e.notes_added / e2e_s / mido_rate:.2f}x)")
    cores = os.cpu_count() or 1
    best_s = sum(e2e_cpu) / cores  # every core busy all the time
    print(f"CPU of the end-to-end ingest (workers={args.workers}): this process {e2e_cpu[0]:.2f} s (DuckDB's "
          f"threads included), its worker processes {e2e_cpu[1]:.2f} s; together {sum(e2e_cpu):.2f} s, so on "
          f"{cores} cores no overlap of the work brings the wall under {best_s:.2f} s "
          f"({e2e.notes_added / best_s / mido_rate:.2f}x mido); 10x mido is a wall of "
          f"{e2e.notes_added / (10 * mido_rate):.2f} s")
    print(f"re-ingest of the same folder (all already present): {again_s:.2f} s")
    print(f"parse + store goal >= 1,000,000 notes/s: {'met' if store_rate >= 1e6 else 'NOT met'} ({store_rate:,.0f})")
    print("cli summary:", r.stderr.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
