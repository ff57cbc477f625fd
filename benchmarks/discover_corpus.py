"""``atlas discover`` against a plain SIATEC baseline on annotated corpus pieces.

The pieces and their patterns come from ``benchmarks/mirex_corpus.py`` (music21 corpus
scores with repeat signs; sections and opening motifs derived by rule, see there). Both
methods run on the same MIDI files in the same run and are scored with mir_eval.pattern:
establishment F1 (F_est), occurrence F1 at c = 0.75 (F_occ) and three-layer F1 (F_3),
means over the pieces of the *fit* part (where discover's constants were chosen) and of
the *held-out* part. SIATEC's output grows with the square of the piece and mir_eval's
time with the square of that, so the comparison is made on the pieces of at most
``--baseline-max-notes`` notes (discover is also reported on every piece). Two reduced
variants of discover (repeated lines only, sections only) are measured in the same run. Timing: seconds per piece (numba compiled before
timing, mir_eval not counted) and both methods on the largest piece (about 3,500 notes).

The baseline is ``benchmarks/siatec.py``: every TEC of SIATEC, in discovery order, with
patterns of at least ``--baseline-min`` notes, the same minimum as discover's default
(SIATEC's smaller TECs are patterns too; leaving them out keeps mir_eval's time bounded
and raises the baseline's precision; it could lower its recall only for annotated
patterns of fewer notes).

    .venv/bin/python benchmarks/discover_corpus.py [--work /tmp/mirex_corpus] [--part fit|held-out|all]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "benchmarks"))  # after ROOT: benchmarks/ingest.py is not ingest/

import mir_eval.pattern  # noqa: E402
import numpy as np  # noqa: E402

import mirex_corpus  # noqa: E402
import siatec  # noqa: E402
from ingest.midi_parse import read_midi_file  # noqa: E402
from query.discover import discover_notes  # noqa: E402

METRICS = ("F_est", "F_occ", "F_3")


def _score(ref, est):
    est = est or [[[(0.0, 0)]]]
    return {
        "F_est": mir_eval.pattern.establishment_FPR(ref, est)[0],
        "F_occ": mir_eval.pattern.occurrence_FPR(ref, est, thres=0.75)[0],
        "F_3": mir_eval.pattern.three_layer_FPR(ref, est)[0],
    }


def ours(notes, **kw):
    pats = discover_notes(notes, **kw)
    return [[[tuple(n) for n in occ] for occ in p.occurrences] for p in pats]


def baseline(notes, min_size, tpq):
    keep = notes["channel"] != 9
    return siatec.siatec_patterns(notes["onset_ticks"][keep], notes["pitch"][keep], grid_per_beat=tpq,
                                  min_size=min_size)


def _read(path):
    midi = read_midi_file(path)
    t = midi["notes"]
    return {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names}, midi["pieces"]["ticks_per_beat"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/mirex_corpus"))
    ap.add_argument("--part", choices=["fit", "held-out", "all"], default="all")
    ap.add_argument("--baseline-min", type=int, default=5, help="smallest SIATEC pattern reported")
    ap.add_argument("--baseline-max-notes", type=int, default=1300,
                    help="compare with SIATEC on pieces of at most this many notes (mir_eval's time "
                         "grows with the square of SIATEC's output)")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    log = (lambda *a: print(*a, file=sys.stderr)) if args.verbose else (lambda *a: None)
    files = mirex_corpus.build(args.work, log=log)
    fit, held = mirex_corpus.split([f.name for f in files])
    parts = {"fit": fit, "held-out": held}
    if args.part != "all":
        parts = {args.part: parts[args.part]}
    small = f"<= {args.baseline_max_notes} notes"
    methods = {("atlas discover", "all"): lambda n, tpq: ours(n, top=args.top),
               ("  contours only", "all"): lambda n, tpq: ours(n, top=args.top, methods=("contours",)),
               ("  sections only", "all"): lambda n, tpq: ours(n, top=args.top, methods=("sections",)),
               ("atlas discover", small): lambda n, tpq: ours(n, top=args.top),
               ("SIATEC (baseline)", small): lambda n, tpq: baseline(n, args.baseline_min, tpq)}
    # compile numba before timing
    warm = _read(args.work / json.loads(files[0].read_text())["midi"])
    for f in methods.values():
        f(*warm)
    res = {p: {m: {k: [] for k in METRICS + ("s", "n_patterns")} for m in methods} for p in parts}
    largest = (0, None)
    for part, names in parts.items():
        for name in names:
            meta = json.loads((args.work / name).read_text())
            ref = [[[tuple(n) for n in occ] for occ in p["occurrences"]] for p in meta["patterns"]]
            notes = _read(args.work / meta["midi"])
            if meta["n_notes"] > largest[0]:
                largest = (meta["n_notes"], meta["piece"], notes)
            for (mname, subset), f in methods.items():
                if subset != "all" and meta["n_notes"] > args.baseline_max_notes:
                    continue
                t0 = time.perf_counter()
                est = f(*notes)
                dt = time.perf_counter() - t0
                sc = _score(ref, est)
                for k in METRICS:
                    res[part][mname, subset][k].append(sc[k])
                res[part][mname, subset]["s"].append(dt)
                res[part][mname, subset]["n_patterns"].append(len(est))
                log(f"{part:9} {meta['piece']:40} {mname:18} " + " ".join(f"{k}={sc[k]:.3f}" for k in METRICS)
                    + f" patterns={len(est)} {dt:.2f}s")
    print(f"{sum(len(v) for v in parts.values())} annotated corpus pieces (benchmarks/mirex_corpus.py); "
          f"mir_eval.pattern; top {args.top} for atlas discover; SIATEC: TECs of >= {args.baseline_min} notes")
    print(f"{'part':<10}{'method':<20}{'pieces':<16}{'n':>3}{'F_est':>7}{'F_occ':>7}{'F_3':>7}{'patterns':>9}"
          f"{'s/piece':>9}")
    for part, by in res.items():
        for (mname, subset), sc in by.items():
            if not sc["s"]:
                continue
            row = "".join(f"{statistics.mean(sc[k]):7.3f}" for k in METRICS)
            print(f"{part:<10}{mname:<20}{subset:<16}{len(sc['s']):>3}{row}{statistics.mean(sc['n_patterns']):9.1f}"
                  f"{statistics.mean(sc['s']):9.3f}")
    if largest[1]:
        n, piece, notes = largest
        t0 = time.perf_counter()
        ours(*notes[:1], top=args.top)
        print(f"time on {piece} ({n} notes): atlas discover {time.perf_counter() - t0:.2f} s", end="", flush=True)
        keep = notes[0]["channel"] != 9
        t0 = time.perf_counter()
        tecs = siatec.siatec(notes[0]["onset_ticks"][keep], notes[0]["pitch"][keep], min_size=args.baseline_min)
        print(f"; SIATEC {time.perf_counter() - t0:.2f} s ({len(tecs)} TECs of >= {args.baseline_min} notes, "
              f"not scored)")


if __name__ == "__main__":
    main()
