"""Cover search on real, independent versions: Bach's settings of the same chorale tune.

    nice .venv/bin/python benchmarks/covers_chorales.py            # ~40 s (the first run renders ~45 s more)
    nice .venv/bin/python benchmarks/covers_chorales.py --seed 1   # other transpositions and degradations

Nothing here was made by this repository, and nothing of the search was fitted on it.
music21's pip package ships Bach's four-part chorales (MusicXML) with the Riemenschneider
catalogue (``music21.corpus.chorales.ChoraleListRKBWV``), which names each setting by its
hymn tune. Bach set many tunes more than once, in other keys, metres and rhythms, with
other harmonies and passing notes: those settings are each other's versions, as
arrangements of a pop song are.

- **Collection**: every chorale of ``music21/corpus/bach`` rendered to MIDI by music21
  (cached under ``ATLAS_BENCH_CACHE``, default /tmp/atlas_covers_honest), ~410 pieces;
  those without a catalogue title, or whose title no other setting shares, stay as
  distractors. Built in memory by the ingest's feature code (``CoverIndex``, as
  ``benchmarks/covers_honest.py``).
- **Queries**: every setting whose title another setting shares; the right answers are
  the other settings of that title. The query's own file is left out of the
  collection for its search, and so are its *near-copies*: any setting whose notes
  (onset relative to the first, pitch) overlap the query's by 90% or more at some
  transposition (Bach reused a few harmonisations verbatim in two cantatas: such a pair
  is a copy, not a version). Titles can hide the same tune under two hymn texts: such
  a pair counts as wrong, for the search and the baseline alike.
- **Cells** (every query transposed by -5..+6, as in ``covers_honest.py``): ``clean``
  (the file), ``combined`` level 1 and level 2 (``covers_honest.degrade``: tick grid
  re-timed by 0.85-1.18 / 0.7-1.4 with a tempo curve, onset jitter, 8% / 20% of the
  notes dropped and 4% / 10% spurious, every voice in one track), ``excerpt`` level 2
  (10-15 s from a random point: two or three phrases) and ``lower_voices`` (the alto,
  tenor and bass alone: the tune left out, the harmony Bach wrote for it; other
  settings harmonise it otherwise, so little is expected there).
- **Baseline**: TF-IDF cosine over exact-interval 3-grams of the skyline
  (``benchmarks.covers.Baseline``), the same queries, the same run.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import ingest.midi_parse  # noqa: E402,F401  (the package, before benchmarks/ingest.py can shadow it)
from ingest.demo_corpus import build_demo_corpus  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))

from covers import Baseline, average_precision, first_rank, overlap  # noqa: E402
from covers_honest import CACHE, LEVELS, build_index, degrade, load_files  # noqa: E402
from indexers.blas_threads import one_blas_thread  # noqa: E402
from indexers.features import skyline  # noqa: E402
from query.covers import query_from_notes  # noqa: E402

TOP = 50
# The catalogue titles name hymns, not tunes: one tune carries several hymns ("Nun ruhen
# alle Wälder", "O Welt, sieh hier dein Leben" and "In allen meinen Taten" are Isaac's
# "Innsbruck"), and a few hymns were set to two tunes. The judged columns leave out of a
# query's answers (as unjudged: out of the ranking, neither right nor wrong) every
# setting whose soprano contradicts its title: same title and less than OTHER_TUNE of
# the soprano's interval 4-grams shared (another tune), or another title and at least
# SAME_TUNE shared (the same tune under another hymn).
OTHER_TUNE, SAME_TUNE = 0.2, 0.7
CELLS = [("clean", 0), ("combined", 1), ("combined", 2), ("excerpt", 2), ("lower_voices", 0)]
FACTORS = {"clean": set(), "combined": {"retime", "jitter", "edit", "merge"}, "excerpt": {"excerpt"},
           "lower_voices": set()}


def chorale_files() -> tuple[list[str], dict[str, str]]:
    """The rendered chorales (MIDI paths) and path -> catalogue title where it has one."""
    import music21
    from music21.corpus.chorales import ChoraleListRKBWV

    root = Path(music21.__file__).parent / "corpus" / "bach"
    sources = sorted(root.glob("bwv*.mxl"))
    t0 = time.perf_counter()
    paths, failures = build_demo_corpus(CACHE / "chorales", workers=2, sources=sources)
    for src, err in failures:
        print(f"{src}: not rendered: {err}", file=sys.stderr)
    by_bwv = ChoraleListRKBWV().byBWV
    title = {}
    for p in paths:
        bwv = Path(p).stem.split("__")[-1].removeprefix("bwv")
        if bwv in by_bwv:
            title[p] = by_bwv[bwv]["title"].strip()
    print(f"{len(paths)} chorales rendered ({time.perf_counter() - t0:.0f} s), {len(title)} with a catalogue title",
          file=sys.stderr)
    return paths, title


def near_copy(a: dict, b: dict, threshold: float = 0.9) -> bool:
    """Whether two files hold the same notes (``covers.overlap`` of (onset tick, pitch),
    the onsets counted from each file's first note) for 90% or more, at some
    transposition."""
    def moved(n, t=0):
        return {"onset_ticks": n["onset_ticks"] - n["onset_ticks"].min(), "pitch": n["pitch"].astype(np.int64) + t}

    a = moved(a)
    return any(overlap(a, moved(b, t)) >= threshold for t in range(-11, 12))


def soprano_mask(n: dict) -> np.ndarray:
    """The notes of the top voice: the track of highest mean pitch."""
    tracks = np.unique(n["track_index"])
    top = tracks[int(np.argmax([n["pitch"][n["track_index"] == t].mean() for t in tracks]))]
    return n["track_index"] == top


def soprano_grams(n: dict) -> set:
    """The interval 4-grams of the top voice (``soprano_mask``), repeated notes merged:
    what two settings of one tune share, in any key and rhythm."""
    p = n["pitch"][soprano_mask(n)].astype(np.int64)
    p = p[np.r_[True, np.diff(p) != 0]]
    iv = np.diff(p)
    return {tuple(iv[i:i + 4]) for i in range(iv.size - 3)}


def tune_similarity(a: set, b: set) -> float:
    """The larger share of either soprano's 4-grams found in the other's (0..1)."""
    inter = len(a & b)
    return max(inter / max(len(a), 1), inter / max(len(b), 1))


def contradicts(same_title: bool, similarity: float) -> bool:
    """Whether a pair's sopranos contradict their titles (see OTHER_TUNE, SAME_TUNE)."""
    return similarity < OTHER_TUNE if same_title else similarity >= SAME_TUNE


def lower_voices(n: dict) -> dict:
    """The notes of every track but the soprano's (``soprano_mask``)."""
    keep = ~soprano_mask(n)
    return {k: v[keep] for k, v in n.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    paths, title = chorale_files()
    notes = load_files([Path(p) for p in paths])
    paths = [p for p in paths if p in notes]
    by_title = defaultdict(list)
    for p in paths:
        if p in title:
            by_title[title[p]].append(p)
    queries = [p for p in paths if len(by_title.get(title.get(p), ())) >= 2]
    t0 = time.perf_counter()
    index = build_index(paths, notes)
    baseline = Baseline(paths, [skyline(notes[p]["onset_beats"], notes[p]["duration_beats"], notes[p]["pitch"])[0]
                                for p in paths])
    copies = {q: {p for p in by_title[title[q]] if p != q and near_copy(notes[q], notes[p])} for q in queries}
    n_copies = sum(len(c) for c in copies.values()) // 2
    grams = {p: soprano_grams(notes[p]) for p in paths}
    unjudged = {q: {p for p in paths if p != q and contradicts(title.get(p) == title[q], tune_similarity(grams[q], grams[p]))}
                for q in queries}
    print(f"collection: {len(paths)} chorales; {len(queries)} queries ({len(by_title)} titles, "
          f"{sum(len(v) >= 2 for v in by_title.values())} set more than once); {n_copies} near-copy pairs left out "
          f"of each other's answers; ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    rows = defaultdict(lambda: defaultdict(list))
    for cell, level in CELLS:
        rng = np.random.default_rng([args.seed, CELLS.index((cell, level))])
        for qp in queries:
            rel = set(by_title[title[qp]]) - {qp} - copies[qp]
            if not rel:
                continue
            n = lower_voices(notes[qp]) if cell == "lower_voices" else notes[qp]
            on, du, p, trk = degrade(n, FACTORS[cell], LEVELS.get(level, LEVELS[1]), rng)
            q = query_from_notes(f"{cell}:{Path(qp).stem}", on, du, p, trk, piece_id=qp)
            skip = {qp} | copies[qp]
            t1 = time.perf_counter()
            with one_blas_thread():
                res = index.search(q, top=TOP + len(skip), explain_top=0)
            ms = (time.perf_counter() - t1) * 1000
            ranked = [x for x in res.column("piece_id").to_pylist() if x not in skip]
            base = [x for x in baseline.rank(skyline(on, du, p)[0], top=TOP + len(skip)) if x not in skip]
            r = rows[(cell, level)]
            r["ap"].append(average_precision(ranked, rel))
            r["p1"].append(first_rank(ranked, rel) == 1)
            r["base_ap"].append(average_precision(base, rel))
            r["base_p1"].append(first_rank(base, rel) == 1)
            r["ms"].append(ms)
            # judged: the pairs where the title and the soprano agree (see JUDGED)
            rel_j = rel - unjudged[qp]
            if rel_j:
                r["j_ap"].append(average_precision([x for x in ranked if x not in unjudged[qp]], rel_j))
                r["j_base_ap"].append(average_precision([x for x in base if x not in unjudged[qp]], rel_j))
    print(f"\n== Bach chorales: other settings of the same tune (seed {args.seed}) ==")
    print("by catalogue title | judged: the pairs where title and soprano agree (condensed lists)")
    print(f"{'cell':13s} {'lvl':>3s} {'n':>4s} | {'MAP':>6s} {'P@1':>6s} | {'base MAP':>8s} {'P@1':>6s} | "
          f"{'n':>4s} {'MAP':>6s} {'base':>6s} | {'p50 ms':>6s}")
    for (cell, level), r in rows.items():
        print(f"{cell:13s} {level:3d} {len(r['ap']):4d} | {np.mean(r['ap']):6.3f} {np.mean(r['p1']):6.3f} | "
              f"{np.mean(r['base_ap']):8.3f} {np.mean(r['base_p1']):6.3f} | {len(r['j_ap']):4d} "
              f"{np.mean(r['j_ap']):6.3f} {np.mean(r['j_base_ap']):6.3f} | {np.percentile(r['ms'], 50):6.1f}")


if __name__ == "__main__":
    main()
