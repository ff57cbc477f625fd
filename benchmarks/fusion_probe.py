"""Does a new per-candidate signal add to the cover search's fusion? Measured on the fit
part of the honest benchmark only, cross-validated over its songs.

    nice .venv/bin/python benchmarks/fusion_probe.py                 # seeds 1-3, ~4 min
    nice .venv/bin/python benchmarks/fusion_probe.py --seeds 4,5,6 --gaps 0.5 1.0

For every query of the fit part (odd-numbered POP909-dev songs; queries drawn with each
of ``--seeds``, none of them the table's seed 0), every candidate the search aligns gets
its fusion features (``query.cover_fusion.FEATURES``, as ``benchmarks/fit_cover_fusion.py``
collects them) and the probe's columns. The fit songs are split in two halves at random;
``query.cover_fusion.fit_ranking`` (as the shipped fit) is fitted
on the queries of one half and ranks the other's, both ways; the table is each cell's
MAP over the aligned candidates, without and with the probe. The held-out part is read
only with ``--heldout SEEDS``: each arm is then fitted on all the fit part's queries and
ranks the held-out part's queries of those seeds (a second table); vienna4x22 is never
read.

The probe here is the **bass line**, now one of the shipped features (``bass``,
``bass_rel``): the "without" arm leaves those two out, so the table says what they add,
and ``--gaps`` computes them with other gap costs in their place (``CoverIndex._bass``
with ``ALIGN["bass_gap"]`` set; 0.5 is the shipped one). The bass line
(``indexers.features.bass_line``): the lowest sounding pitch class at each onset (onsets
within 1/8 beat are one; a repeated pitch class counts once), of the query's notes and of
every stored piece's notes (all tracks), aligned by
``indexers.align.sw_pitch_classes_score`` at the candidate's harmony transposition (match
+1, mismatch -1, each gap ``--gaps``), the query's middle 96 bass notes for a long one,
divided by the query's bass length (at least 12); its columns are that score and the
score minus the query's best.
Versions of a song share their chord roots in time even where the arrangements differ,
and a merged or degraded query keeps its lowest notes.

Other probes:

- ``--probe FILE``: a probe module (``benchmarks/probes/*.py``) defines ``columns(index,
  q, r, arrays)`` (its columns for one query's aligned candidates ``r["rows"]``: float
  [shape=(k, c)]; ``arrays`` are the query's note arrays), ``ARMS`` (arm name -> the
  columns it adds to the shipped features) and optionally ``DROP`` (shipped features
  left out of every arm), ``BASE`` (the first arm's name) and ``prepare(index)``
  (called once). The table's first arm, "shipped", is the shipped features (less
  ``DROP``). docs/covers-history.md ("Probes of the session of 2026-12-04 (afternoon)") has
  what each probe in ``benchmarks/probes`` measured.
- ``--set KEY=VALUE`` (repeatable): a search setting for the whole run, an ``ALIGN``
  key or ``tempo.NAME`` (a constant of ``indexers.tempo``), set before the collection
  is indexed. Compare the shipped arm of a run with the setting against one without.

    nice .venv/bin/python benchmarks/fusion_probe.py --probe benchmarks/probes/version_support.py
    nice .venv/bin/python benchmarks/fusion_probe.py --set tempo.SIGMA_OCT=0.08 --seeds 4,5,6
"""

from __future__ import annotations

import argparse
import ast
import runpy
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from covers_honest import CELLS, DATA, pop909_queries, setup  # noqa: E402
from indexers.blas_threads import one_blas_thread  # noqa: E402
from query.cover_fusion import FEATURES, fit_ranking, fuse  # noqa: E402
from query.covers import ALIGN  # noqa: E402


class BassGaps:
    """The default probe: the bass features (``CoverIndex._bass``) at each of ``gaps``
    gap costs, in place of the shipped ones."""
    DROP = ("bass", "bass_rel")
    BASE = "without bass"

    def __init__(self, gaps):
        self.gaps = gaps
        self.ARMS = {f"+ bass gap {g:g}": [2 * i, 2 * i + 1] for i, g in enumerate(gaps)}

    def columns(self, index, q, r, arrays):
        e = np.zeros((r["rows"].size, 2 * len(self.gaps)), np.float32)
        shipped = ALIGN["bass_gap"]
        try:
            for g, gap in enumerate(self.gaps):
                ALIGN["bass_gap"] = gap
                s = index._bass(q, r)
                if s.size:
                    e[:, 2 * g], e[:, 2 * g + 1] = s, s - s.max()
        finally:
            ALIGN["bass_gap"] = shipped
        return e


def collect(index, notes, bench, seed, probe, part="fit"):
    """Per candidate: fusion features, the probe's columns, right or not, query number;
    per query: (cell, level, song, number of right answers)."""
    xs, es, ys, qs, meta = [], [], [], [], []
    for (_p, cell, level), song, q, arrays, rel in pop909_queries(notes, bench, CELLS, [1, 2], [part], None, seed):
        with one_blas_thread():
            r = index._aligned(q)
            x = index._features(q, r)
        rows = r["rows"]
        xs.append(x)
        es.append(np.asarray(probe.columns(index, q, r, arrays), np.float32).reshape(rows.size, -1))
        ys.append(np.fromiter((index.ids[k] in rel for k in rows), bool, rows.size))
        qs.append(np.full(rows.size, len(meta)))
        meta.append((cell, level, song, len(rel)))
    return np.concatenate(xs), np.concatenate(es), np.concatenate(ys), np.concatenate(qs), meta


def apply_setting(kv: str) -> None:
    """``KEY=VALUE``: an ALIGN key, or ``tempo.NAME`` for a constant of indexers.tempo."""
    import indexers.tempo as tempo

    key, value = kv.split("=", 1)
    value = ast.literal_eval(value)
    if key.startswith("tempo."):
        if not hasattr(tempo, key[6:]):
            raise SystemExit(f"--set {kv}: indexers.tempo has no {key[6:]}")
        setattr(tempo, key[6:], value)
    elif key in ALIGN:
        ALIGN[key] = value
    else:
        raise SystemExit(f"--set {kv}: not an ALIGN key (query.covers.ALIGN) nor tempo.NAME")


def average_precision(score, y, q, nrel):
    ap = np.zeros(nrel.size)
    order = np.lexsort((-score, q))
    qo, yo = q[order], y[order]
    bounds = np.r_[0, np.flatnonzero(np.diff(qo)) + 1, qo.size]
    for a, b in zip(bounds[:-1], bounds[1:]):
        ranks = np.flatnonzero(yo[a:b]) + 1
        if nrel[qo[a]]:
            ap[qo[a]] = np.sum(np.arange(1, ranks.size + 1) / ranks) / nrel[qo[a]]
    return ap


def cross_validated(x, y, q, song_of_query, nrel):
    """Each query's AP, ranked by a fit on the other half of the songs."""
    songs = np.unique(song_of_query)
    half = dict(zip(np.random.default_rng(0).permutation(songs), np.arange(songs.size) % 2))
    q_half = np.array([half[s] for s in song_of_query])
    ap = np.zeros(nrel.size)
    for h in (0, 1):
        train = q_half[q] != h
        beta, _ = fit_ranking(x[train], y[train], q[train])  # standardises for its penalty itself
        test = np.flatnonzero(q_half == h)
        ap[test] = average_precision(x @ beta, y, q, nrel)[test]
    return ap


def stacked(parts, probe):
    """``collect`` results of several seeds as one set: features (less the probe's
    ``DROP``), probe columns, labels, query numbers, per-query meta."""
    x = np.concatenate([p[0] for p in parts])
    x = np.delete(x, [FEATURES.index(f) for f in getattr(probe, "DROP", ())], axis=1)
    e = np.concatenate([p[1] for p in parts])
    y = np.concatenate([p[2] for p in parts])
    q = np.concatenate([p[3] + sum(len(o[4]) for o in parts[:i]) for i, p in enumerate(parts)])
    return x, e, y, q, [m for p in parts for m in p[4]]


def arms_of(x, e, probe):
    """The shipped features, then each arm's: the shipped plus its probe columns."""
    arms = {getattr(probe, "BASE", "shipped"): x}
    arms.update({name: np.hstack([x, e[:, cols]]) for name, cols in probe.ARMS.items()})
    return arms


def print_table(title, cells, aps):
    print(title)
    print("cell".ljust(24) + "".join(name.rjust(18) for name in aps))
    for c in sorted(set(cells)):
        m = cells == c
        print(f"{c} ({m.sum()})".ljust(24) + "".join(f"{a[m].mean():18.3f}" for a in aps.values()))
    print("mean".ljust(24) + "".join(f"{a.mean():18.4f}" for a in aps.values()))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--no-second-line", action="store_true",
                    help="index without the pieces' second melody lines (both arms' fusion refitted on it)")
    ap.add_argument("--gaps", nargs="+", type=float, default=[0.5],
                    help="gap costs of the bass alignment (ALIGN['bass_gap'], either side), one probe each")
    ap.add_argument("--probe", metavar="FILE", help="a probe module (see above) instead of the bass gaps")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a search setting for this run: an ALIGN key or tempo.NAME (repeatable)")
    ap.add_argument("--heldout", metavar="SEEDS",
                    help="also rank the held-out part's queries of these seeds (e.g. 0), each arm fitted on "
                         "the whole fit part: the one figure here that nothing was fitted on")
    args = ap.parse_args(argv)
    for kv in args.set:
        apply_setting(kv)
    if args.probe:
        probe = SimpleNamespace(**runpy.run_path(args.probe))
    else:
        probe = BassGaps(args.gaps)
    t0 = time.perf_counter()
    notes, bench, index, _, _ = setup(Path(DATA), None, not args.no_second_line)
    if hasattr(probe, "prepare"):
        # prepare(index) or prepare(index, notes): the second gets every file's notes (path -> arrays)
        n_args = probe.prepare.__code__.co_argcount
        probe.prepare(index, notes) if n_args >= 2 else probe.prepare(index)
    parts = [collect(index, notes, bench, int(s), probe) for s in args.seeds.split(",")]
    x, e, y, q, meta = stacked(parts, probe)
    cells = np.array([f"{m[0]}:{m[1]}" for m in meta])
    song = np.array([m[2] for m in meta])
    nrel = np.array([m[3] for m in meta])
    arms = arms_of(x, e, probe)
    aps = {name: cross_validated(a, y, q, song, nrel) for name, a in arms.items()}
    print_table(f"fit part, seeds {args.seeds}: {len(meta)} queries, {y.size:,} aligned candidates "
                f"({time.perf_counter() - t0:.0f} s); MAP over the aligned candidates, fitted on the other half "
                "of the songs", cells, aps)
    if args.heldout:
        heldout(args, index, notes, bench, probe, arms, y, q)


def heldout(args, index, notes, bench, probe, arms, y, q):
    """Each arm fitted on all the fit part's queries above, then ranking the held-out
    part's queries drawn with ``--heldout`` seeds: what the probe adds where nothing was
    fitted (the song split of the table above is not needed here)."""
    t0 = time.perf_counter()
    hp = [collect(index, notes, bench, int(s), probe, "heldout") for s in args.heldout.split(",")]
    hx, he, hy, hq, hmeta = stacked(hp, probe)
    hnrel = np.array([m[3] for m in hmeta])
    harms = arms_of(hx, he, probe)
    aps = {}
    if not getattr(probe, "DROP", ()):
        # the shipped coefficients (query/cover_fusion.json, fitted on the fit part's seed 1)
        aps["as shipped"] = average_precision(fuse(hx), hy, hq, hnrel)
    for name, a in arms.items():
        beta, _ = fit_ranking(a, y, q)
        aps[name] = average_precision(harms[name] @ beta, hy, hq, hnrel)
    print_table(f"held-out part, seeds {args.heldout}: {len(hmeta)} queries ({time.perf_counter() - t0:.0f} s); "
                f"each arm fitted on the fit part's seeds {args.seeds} (all of its songs)",
                np.array([f"{m[0]}:{m[1]}" for m in hmeta]), aps)

if __name__ == "__main__":
    main()
