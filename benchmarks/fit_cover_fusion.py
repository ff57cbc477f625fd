"""Fit the cover search's score fusion (``query/cover_fusion.json``) on the *fit* part of
the honest benchmark only (odd-numbered POP909-dev songs; ``benchmarks/covers_honest.py``).

    nice .venv/bin/python benchmarks/fit_cover_fusion.py            # every cell, both levels (~3.5 min, then ~8 min for the calibration)
    nice .venv/bin/python benchmarks/fit_cover_fusion.py --songs 20 --out /tmp/fusion.json

For every query of the fit part (queries drawn with ``--seed``: 1 and 2 by default, two
draws pooled, neither the draw the benchmark reports with seed 0),
every candidate the search aligns
is one example: its ``query.cover_fusion.FEATURES`` and whether it is a version of the
query's song. By default the coefficients rank each query's right candidates above its
wrong ones (``query.cover_fusion.fit_ranking``: a conditional logit, every query
weighing the same, then scaled into a probability); ``--method logistic`` fits a
weighted L2-regularised logistic regression over all candidates at once instead
(``query.cover_fusion.fit_logistic``; each query weighs the same, its right and wrong
candidates half each). The file records the features, the coefficients and what they
were fitted on. The held-out part (even-numbered songs) and vienna4x22 are never used here.

Then the calibration of the reported score (``query.cover_fusion.fit_calibration``):
the same queries again against the collection without the fit part's songs (so none
of them has a version there) join the queries above, and a logistic regression on the
best 10 candidates of each turns the fusion's logit into the probability that an answer
is a version, once for the short queries (at most 48 melody intervals: the fusion's
``short`` feature) and once for the others. ``--calibration-only`` keeps the file's
fusion coefficients and refits the calibration alone (~8 min on 2 cores):

    nice .venv/bin/python benchmarks/fit_cover_fusion.py --calibration-only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from covers_honest import CELLS, DATA, pop909_queries, setup, without_part  # noqa: E402
from query.cover_fusion import (CALIBRATION_FEATURES, CALIBRATION_KINDS, FEATURES, FUSION_FILE,  # noqa: E402
                                fit_calibration, fit_logistic, fit_ranking, fusion_logits)


def collect(index, notes, bench, cells, levels, max_songs, seed):
    """Feature rows, labels and weights of every candidate of every fit-part query."""
    xs, ys, ws, qs = [], [], [], []
    n_queries = 0
    for _key, _s, q, _arrays, rel in pop909_queries(notes, bench, cells, levels, ["fit"], max_songs, seed):
        rows, x = index.candidate_features(q)
        if rows.size == 0:
            continue
        y = np.fromiter((index.ids[r] in rel for r in rows), bool, rows.size)
        n_pos = int(y.sum())
        w = np.where(y, 0.5 / max(n_pos, 1), 0.5 / max(rows.size - n_pos, 1))
        xs.append(x)
        ys.append(y)
        ws.append(w)
        qs.append(np.full(rows.size, n_queries))
        n_queries += 1
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ws), np.concatenate(qs), n_queries


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--songs", type=int, default=None, help="at most this many fit-part songs")
    ap.add_argument("--cells", default=",".join(CELLS))
    ap.add_argument("--levels", default="1,2")
    ap.add_argument("--seed", default="1,2",
                    help="the draw(s) of the fit part's queries, comma-separated: each seed's queries are "
                         "further examples (e.g. 1,2)")
    ap.add_argument("--l2", type=float, default=1e-3)
    ap.add_argument("--method", choices=["rank", "logistic"], default="rank",
                    help="rank: each query's right candidates above its wrong ones (default); logistic: "
                         "every candidate's probability of being right, all queries at once")
    ap.add_argument("--out", default=str(FUSION_FILE))
    ap.add_argument("--calibration-only", action="store_true",
                    help="keep the fusion coefficients of --out (default: the shipped file) and refit only the "
                         "calibration of the reported score")
    args = ap.parse_args(argv)
    cells, levels = args.cells.split(","), [int(x) for x in args.levels.split(",")]
    command = "benchmarks/fit_cover_fusion.py " + " ".join(argv if argv is not None else sys.argv[1:])
    t0 = time.perf_counter()
    notes, bench, index, _baseline, _v = setup(Path(args.data), None)
    seeds = [int(s) for s in str(args.seed).split(",")]

    def examples(ix):
        x, y, w, query, n_queries = [], [], [], [], 0
        for seed in seeds:
            xs, ys, ws, qs, nq = collect(ix, notes, bench, cells, levels, args.songs, seed)
            x.append(xs)
            y.append(ys)
            w.append(ws)
            query.append(qs + n_queries)
            n_queries += nq
        return *(np.concatenate(a) for a in (x, y, w, query)), n_queries

    x, y, w, query, n_queries = examples(index)
    if args.calibration_only:
        out = json.loads(Path(args.out).read_text())
        if out["features"] != list(FEATURES):
            sys.exit(f"{args.out}: fitted on features {out['features']}, the code has {list(FEATURES)}: refit the "
                     "fusion (without --calibration-only)")
    else:
        if args.method == "rank":
            coef, intercept = fit_ranking(x, y, query, l2=args.l2)
        else:
            coef, intercept = fit_logistic(x, y, w, l2=args.l2)
        out = {
            "features": list(FEATURES),
            "coef": [round(float(c), 6) for c in coef],
            "intercept": round(intercept, 6),
            "fitted_on": {
                "what": "benchmarks/covers_honest.py fit part: odd-numbered POP909-dev songs, queries from NNN.mid "
                        "held out of the collection",
                "cells": cells, "levels": levels, "seed": seeds[0] if len(seeds) == 1 else seeds, "songs": args.songs,
                "queries": n_queries, "examples": int(y.size), "positives": int(y.sum()), "l2": args.l2,
                "method": args.method, "command": command,
            },
        }
        print(f"fusion fitted on {n_queries} queries, {y.size} candidates ({int(y.sum())} right) in "
              f"{time.perf_counter() - t0:.0f} s")
        for name, c in zip(FEATURES, coef):
            print(f"  {name:12s} {c:+.3f}")
        print(f"  {'intercept':12s} {intercept:+.3f}")
    # the calibration: the same queries with their versions, then without (the fit
    # part's songs left out of the collection), each query's fusion logits, by kind
    ax, ay, _aw, aquery, _n = examples(without_part(index, notes, bench, "fit"))
    logits, labels = {kind: [] for kind in CALIBRATION_KINDS}, {kind: [] for kind in CALIBRATION_KINDS}
    for xs, ys, qs in ((x, y, query), (ax, ay, aquery)):
        z = fusion_logits(xs, out)
        cut = np.flatnonzero(np.diff(qs)) + 1
        for zq, yq, short in zip(np.split(z, cut), np.split(ys, cut), np.split(xs[:, FEATURES.index("short")], cut)):
            kind = CALIBRATION_KINDS[int(short[0] > 0)]
            logits[kind].append(zq)
            labels[kind].append(yq)
    out["calibration"] = {
        "features": list(CALIBRATION_FEATURES),
        "fitted_on": {
            "what": "the fusion's queries against the collection with their songs (right answers) and without "
                    "(the fit part's songs left out: every answer wrong); the best 10 candidates of each; short "
                    "queries (the fusion's short feature) and the others apart",
            "command": command,
        },
    }
    for kind in CALIBRATION_KINDS:
        coef, intercept, crowd, cap = fit_calibration(logits[kind], labels[kind])
        out["calibration"][kind] = {
            "coef": [round(float(c), 6) for c in coef],
            "intercept": round(intercept, 6),
            "crowd_logit": round(crowd, 6),
            "crowd_cap": round(cap, 6),
            "queries": len(logits[kind]),
        }
        print(f" {kind} queries ({len(logits[kind])}, with and without versions):")
        for name, c in zip(CALIBRATION_FEATURES, coef):
            print(f"  {name:12s} {c:+.3f}")
        print(f"  {'intercept':12s} {intercept:+.3f}")
        print(f"  {'crowd logit':12s} {crowd:+.3f}")
        print(f"  {'crowd cap':12s} {cap:+.3f}")
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"calibration fitted in {time.perf_counter() - t0:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
