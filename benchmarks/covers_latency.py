"""Latency of the cover search (``CoverIndex.search``) on the honest benchmark's queries.

    nice .venv/bin/python benchmarks/covers_latency.py                  # clean + merge, held out, 40 songs
    nice .venv/bin/python benchmarks/covers_latency.py --cells clean,merge,perf,combined --passes 3
    nice .venv/bin/python benchmarks/covers_latency.py --cells excerpt --no-vienna --large 100000   # ~5 min

The collection and queries are those of ``benchmarks/covers_honest.py`` (the POP909-dev
files left after holding out each song's query group, plus vienna4x22 unless
``--no-vienna``); the queries are built once, then each is searched ``--passes`` times
in turn (a pass over all queries, then the next), and every call is timed in wall clock
and in CPU time of this process (``time.process_time``: on a shared machine the wall
clock also counts the other jobs' time slices, the CPU time does not). The search runs
its kernels on two threads where there are two cores, and the CPU time counts both, so
it exceeds the wall time; ``ATLAS_ALIGN_THREADS=1`` keeps one thread (the answers are
the same). The first pass also warms the caches; it is reported, but the summary is over
the later passes.

``--sections`` also prints where the CPU time of the later passes goes: each kernel of
``indexers.align`` and each step of the search, timed by wrappers (nested: a step's time
includes its kernels'; the wrappers' own cost is in the total). Run it with
``ATLAS_ALIGN_THREADS=1``: on two threads a section's CPU time also counts whatever the
other thread did meanwhile.

The printed ``answers`` digest is a hash of every query's whole answer (the top 50 with
every column: scores, transpositions, time scales, aligned regions): two versions of the
search that print the same digest answered every query identically, a stricter check
than an unchanged MAP. The answers name pieces by their files' paths, which start at the
checkout's parent folder by default (``../shared``): compare digests of checkouts at the same depth.
They also depend on the machine or the installed packages (not pinned): for 4105a32 the
session of 2026-12-07 from 08:50 recorded bce9b892bf2ddbee on an AVX2-only EPYC, and the
next session read 3e24f945855d97fe on an AVX-512 EPYC with a fresh install, every cell's
MAP and P@1 the same: compare digests within one machine and install.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from covers_honest import DATA, TOP, VIENNA, pop909_queries, setup  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", default="clean,merge")
    ap.add_argument("--level", type=int, default=2)
    ap.add_argument("--songs", type=int, default=40, help="the first this many held-out songs")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--no-vienna", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", default=None, help="write a cProfile of the later passes to this file")
    ap.add_argument("--sections", action="store_true", help="CPU ms per query of each kernel and step (later passes)")
    ap.add_argument("--large", type=int, default=0,
                    help="search a collection of this many pieces instead: the real ones + synthetic ones "
                         "(benchmarks/covers.py synthetic_index, as covers_honest.py --large builds it)")
    args = ap.parse_args(argv)
    spent = _time_sections() if args.sections else None
    notes, bench, index, _, _ = setup(DATA, None if args.no_vienna else VIENNA)
    if args.large:
        from covers import synthetic_index

        t0 = time.perf_counter()
        index = synthetic_index(index, args.large, np.random.default_rng(args.seed))
        print(f"synthetic collection of {len(index):,} pieces built in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr)
    queries = [(key, q) for key, _, q, _, _ in pop909_queries(notes, bench, args.cells.split(","), [args.level],
                                                             ["heldout"], args.songs, args.seed)]
    index.search(index.query_for_piece(index.ids[0]), top=5)  # compile the kernels
    wall = np.zeros((args.passes, len(queries)))
    cpu = np.zeros_like(wall)
    digest = hashlib.sha256()
    prof = None
    for p in range(args.passes):
        if p == 1 and spent is not None:
            spent.clear()
        if p == 1 and args.profile:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        for i, (key, q) in enumerate(queries):
            w0, c0 = time.perf_counter(), time.process_time()
            res = index.search(q, top=TOP, explain_top=10)
            cpu[p, i] = time.process_time() - c0
            wall[p, i] = time.perf_counter() - w0
            if p == 0:
                digest.update(repr((key, q.label, res.to_pydict())).encode())
    if prof is not None:
        prof.disable()
        prof.dump_stats(args.profile)
    print(f"{len(index)} pieces; {len(queries)} queries ({args.cells}, held out, first {args.songs} songs, "
          f"level {args.level}); answers digest {digest.hexdigest()[:16]}")
    for p in range(args.passes):
        print(f"pass {p + 1}: wall p50 {np.percentile(wall[p], 50) * 1e3:6.1f} ms p95 "
              f"{np.percentile(wall[p], 95) * 1e3:6.1f} ms | CPU p50 {np.percentile(cpu[p], 50) * 1e3:6.1f} ms "
              f"p95 {np.percentile(cpu[p], 95) * 1e3:6.1f} ms")
    w, c = wall[1:].ravel() if args.passes > 1 else wall.ravel(), cpu[1:].ravel() if args.passes > 1 else cpu.ravel()
    print(f"passes {'2-' + str(args.passes) if args.passes > 1 else '1'}: wall p50 {np.percentile(w, 50) * 1e3:.1f} "
          f"ms p95 {np.percentile(w, 95) * 1e3:.1f} ms | CPU p50 {np.percentile(c, 50) * 1e3:.1f} ms p95 "
          f"{np.percentile(c, 95) * 1e3:.1f} ms (load average {os.getloadavg()[0]:.1f})")
    if spent is not None:
        n = max(args.passes - 1, 1) * len(queries)
        print(f"CPU ms per query, passes 2-{args.passes} (all: {cpu[1:].sum() / n * 1e3:.1f}):")
        for name, t in sorted(spent.items(), key=lambda x: -x[1]):
            print(f"  {name:32s} {t / n * 1e3:6.2f}")


def _time_sections() -> dict:
    """Wrap the search's kernels and steps with CPU timers; returns name -> seconds."""
    import query.covers as qc

    spent = defaultdict(float)

    def wrap(owner, name, label):
        f = getattr(owner, name, None)
        if f is None:  # a step another version of the search does not have
            return

        def timed(*a, **k):
            t = time.process_time()
            try:
                return f(*a, **k)
            finally:
                spent[label] += time.process_time() - t
        setattr(owner, name, timed)

    for name in ("sw_symbols_score", "sw_chroma_score", "sw_pitch_classes_score", "sw_pitch_classes_rhythm_score",
                 "sw_symbols", "sw_chroma"):
        wrap(qc, name, "kernel " + name)
    for name in ("candidates", "rerank", "_harmony", "_probe_scale", "_shifts", "_phase_frames", "_frames_of",
                 "_tune_in_notes", "_rhythm", "_bass", "_support", "_expand", "_versions_of_best", "_fuse", "_explain"):
        wrap(qc.CoverIndex, name, "step " + name)
    return spent


if __name__ == "__main__":
    main()
