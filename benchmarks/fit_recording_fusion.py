"""Fit the cover search's fusion for pairs with a recording on at least one side
(``query/cover_fusion_recordings.json``, ``query.cover_fusion.RECORDING_FEATURES``).

    nice .venv/bin/python benchmarks/audio.py 0 16 WORK_A 0       # songs 0-15 rendered, ingested
    nice .venv/bin/python benchmarks/audio.py 0 16 WORK_B 16      # songs 16-31
    nice .venv/bin/python benchmarks/fit_recording_fusion.py WORK_A WORK_B [--out FILE] [--l2 X]

Each WORK folder is one ``benchmarks/audio.py`` built: two fluidsynth renders of 60 s
per POP909 song (transposed, re-timed, other GM programs) and the song's NNN.mid,
ingested, and recordings that are not in its collection: per song two degraded excerpts
(WORK/queries) and one recording of nothing stored (WORK/none: a sine tone, noise or a
random tune). Every piece of its database and every such recording is a query; a
candidate is right when it is of the query's song (the first three characters of the
file name). Each query's aligned candidates that form a pair with a recording
(``CoverIndex.recording_candidate_features``) are the examples, and each query that has
right candidates again without them (its song absent from the collection, the relative
features computed again), so that the score is a probability that also says "nothing
here". The median -log distance of each kind of pair (recording <-> recording,
recording <-> MIDI) is stored as ``css_typical``: what a pair whose distance is not
measured at search time counts as (``query.cover_fusion.css_columns``). ``--method
logistic`` (the default, shipped): a weighted logistic regression, each query weighing
the same (``query.cover_fusion.fit_logistic``); ``ranking``: ``fit_ranking`` (each
query's right candidates above its wrong ones, then scaled), which ranked as well held
out but scored a query of noise 0.94, as it learns only the order within a query.
``--stored-only``: the stored pieces as queries only (as the fit before 2026-12-06 was made;
that fit also lacked the short and spread features).
The shipped fit is on songs 0-31; songs 32-47 (``benchmarks/audio.py 0 16 DIR 32``) are
the held-out part, never fitted on.

Measured (2026-12-06; ``benchmarks/audio.py`` on songs 32-47, MAP audio->audio /
audio->MIDI / MIDI->audio / 10-15 s excerpts->audio / ->MIDI / 30-40 s excerpts->audio /
->MIDI): the shipped fit 0.884 / 0.979 / 0.749 / 0.772 / 0.922 / 0.929 / 1.000, and
recordings of nothing stored score 0.39 at the median (3 of 16 above 0.5); fitted on the
stored pieces only, without the short and spread features, 0.918 / 0.979 / 0.763 /
0.727 / 0.922 / 0.916 / 0.969 and 0.59 (9 of 16); the alignment score plus the chroma
bonus it replaced 0.813 / 0.884 / 0.672 / 0.770 / 0.884 / 0.882 / 1.000 and 0.51
(docs/audio.md, "Measurements").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "harmony-atlas" / "numba"))

import numpy as np  # noqa: E402

from covers import average_precision  # noqa: E402


def collect(work: Path, excerpts: bool = True):
    """Every query of ``work``/db's candidates (a stored query itself left out): their
    ``RECORDING_FEATURES``, whether they are right, their query's number, whether the pair
    has a recording, and its chroma distance (NaN: not measured). The queries: every
    stored piece, and (``excerpts``) the recordings ``benchmarks/audio.py`` made that are
    not in the collection: excerpts in ``work``/queries (NNN + short/long .wav) and
    recordings of nothing stored in ``work``/none (every candidate wrong)."""
    from atlas_db.connection import reading
    from query.covers import load_index, query_from_file

    with reading(work / "db") as con:
        title = dict(con.execute("SELECT piece_id, title FROM pieces").fetchall())
    index = load_index(work / "db")
    queries = [(pid, title[pid][:3]) for pid in sorted(title)]
    if excerpts:
        queries += [(wav, wav.name[:3]) for wav in sorted((work / "queries").glob("*.wav"))]
        queries += [(wav, "none") for wav in sorted((work / "none").glob("*.wav"))]
    out = []
    for n, (query, query_song) in enumerate(queries):
        q = query_from_file(query) if isinstance(query, Path) else index.query_for_piece(query)
        rows, x, rec, d = index.recording_candidate_features(q)
        ids = index.ids[rows]
        keep = np.ones(ids.size, bool) if isinstance(query, Path) else ids != query
        song = np.array([title[str(i)][:3] for i in ids[keep]])
        out.append((x[keep], song == query_song, np.full(int(keep.sum()), n), rec[keep], d[keep]))
    x, y, query, rec, d = (np.concatenate(c) for c in zip(*out))
    return x, y, query, rec, d


def without_answers(x, y, query, rec, d, typical):
    """Each query again with its right candidates left out (its song not in the
    collection: every candidate wrong), the features relative to the query's best (over
    all its candidates, as in a search) or median (``css_columns``) computed again over
    what is left; the pairs with a recording."""
    from query.cover_fusion import RECORDING_FEATURES as F
    from query.cover_fusion import css_columns

    xs, qs = [], []
    offset = int(query.max()) + 1
    both = F.index("both_recordings")
    for qn in np.unique(query):
        m = (query == qn) & ~y
        if not (m & rec).any() or not y[query == qn].any():  # (no right candidate: seen once)
            continue
        g = x[m].copy()
        for col in ("align", "mel", "harm"):
            g[:, F.index(f"{col}_rel")] = g[:, F.index(col)] - g[:, F.index(col)].max()
        g[:, F.index("css")], g[:, F.index("css_rel")] = css_columns(d[m], g[:, both], typical)
        xs.append(g[rec[m]])
        qs.append(np.full(int((rec[m]).sum()), offset + qn))
    return np.concatenate(xs), np.zeros(sum(len(g) for g in xs), bool), np.concatenate(qs)


def query_weights(y, query) -> np.ndarray:
    """Each query weighs 1: a query with right candidates half on them and half on its
    wrong ones; a query without any, 1/2 on its wrong ones (the weight of the wrong half)."""
    w = np.zeros(y.size)
    for qn in np.unique(query):
        m = query == qn
        n_pos = int(y[m].sum())
        w[m] = np.where(y[m], 0.5 / max(n_pos, 1), 0.5 / max(int(m.sum()) - n_pos, 1))
    return w


def mean_ap(score, y, query) -> float:
    """MAP of ranking each query's candidates by ``score`` (queries with a right one)."""
    aps = []
    for qn in np.unique(query):
        m = np.flatnonzero(query == qn)
        if y[m].any():
            ranked = m[np.argsort(-score[m], kind="stable")].tolist()
            aps.append(average_precision(ranked, set(m[y[m]].tolist())))
    return float(np.mean(aps))


def main():
    from query.cover_fusion import (RECORDING_FEATURES, RECORDING_FUSION_FILE, css_columns, fit_logistic,
                                    fit_ranking, fuse)

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work_dir", type=Path, nargs="+", help="one or more folders benchmarks/audio.py built")
    ap.add_argument("--out", type=Path, default=RECORDING_FUSION_FILE)
    ap.add_argument("--l2", type=float, default=1e-3)
    ap.add_argument("--method", choices=("logistic", "ranking"), default="logistic")
    ap.add_argument("--stored-only", action="store_true",
                    help="fit on the stored pieces as queries only, not the recordings outside the "
                         "collection (excerpts, recordings of nothing)")
    a = ap.parse_args()
    t0 = time.perf_counter()
    parts = [collect(w, excerpts=not a.stored_only) for w in a.work_dir]
    for i in range(1, len(parts)):  # query numbers stay apart
        parts[i][2][:] += max(int(p[2].max()) + 1 for p in parts[:i])
    x, y, query, rec, d = (np.concatenate(c) for c in zip(*parts))
    both = x[:, RECORDING_FEATURES.index("both_recordings")]
    css = x[:, RECORDING_FEATURES.index("css")]
    measured = rec & np.isfinite(d)
    # a pair whose distance is not measured at search time gets its kind's median
    typical = [float(np.median(css[measured & (both == k)])) if (measured & (both == k)).any() else 0.0
               for k in (0, 1)]
    for qn in np.unique(query):  # the pairs not measured, at this typical distance
        m = query == qn
        x[m, RECORDING_FEATURES.index("css")], x[m, RECORDING_FEATURES.index("css_rel")] = css_columns(
            d[m], both[m], typical)
    if a.method == "ranking":
        coef, intercept = fit_ranking(x[rec], y[rec], query[rec], l2=a.l2)
    else:
        xn, yn, qn = without_answers(x, y, query, rec, d, typical)
        xa = np.concatenate([x[rec], xn])
        ya, qa = np.concatenate([y[rec], yn]), np.concatenate([query[rec], qn])
        coef, intercept = fit_logistic(xa, ya, query_weights(ya, qa), l2=a.l2)
    x, y, query = x[rec], y[rec], query[rec]
    params = {"features": list(RECORDING_FEATURES), "coef": coef.tolist(), "intercept": intercept,
              "css_typical": typical}
    align = x[:, RECORDING_FEATURES.index("align")]
    print(f"{np.unique(query).size} queries, {y.size} pairs with a recording ({int(y.sum())} right), "
          f"collected and fitted in {time.perf_counter() - t0:.0f} s")
    print(f"MAP on the fit part over these pairs: alignment score {mean_ap(align, y, query):.3f}, "
          f"fitted fusion {mean_ap(fuse(x, params), y, query):.3f}")
    for f, c in zip(RECORDING_FEATURES, coef):
        print(f"  {f:16s} {c:+.3f}")
    params["fitted_on"] = (f"benchmarks/fit_recording_fusion.py {' '.join(w.name for w in a.work_dir)} "
                           f"(benchmarks/audio.py renders{'' if a.stored_only else ', excerpts and recordings of nothing stored'}: "
                           f"{np.unique(query).size} queries, {y.size} pairs), "
                           f"{a.method}, l2 {a.l2:g}")
    a.out.write_text(json.dumps(params, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
