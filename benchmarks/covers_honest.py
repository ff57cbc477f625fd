"""Honest cover-search benchmark: held-out query files, crossed degradations, real
performances; the TF-IDF baseline measured on the same queries in the same run.

    nice .venv/bin/python benchmarks/covers_honest.py --quick      # ~1-2 min: strong level, 30 songs per part
    nice .venv/bin/python benchmarks/covers_honest.py              # every level, every song (~6 min)
    nice .venv/bin/python benchmarks/covers_honest.py --part fit   # only the part the fusion was fitted on
    nice .venv/bin/python benchmarks/covers_honest.py --quick --no-vienna --large 100000   # + latency at 100k
    nice .venv/bin/python benchmarks/covers_honest.py --no-fusion   # rank by the alignment score alone
    nice .venv/bin/python benchmarks/covers_honest.py --levels 2 --cells combined_short --level2 drop=0   # one strength changed

Why another benchmark (``benchmarks/covers.py`` is too kind): there, the excerpt,
transcription and tempo queries are cut from ``NNN.mid`` while many stored versions are
near-copies of ``NNN.mid``; tempo changes are only 0.5x/1x/2x of the notated beat; and
degradations come one at a time. Here:

- **Held-out query files.** In each POP909-dev song the files are grouped by near-copy
  (two files whose (onset, pitch) notes overlap by 90% or more are in one group,
  transitively). For every song with at least two groups, the group holding ``NNN.mid``
  is left out of the collection, and queries are made from ``NNN.mid``: it differs from
  every stored file of its song (< 0.9 note overlap, checked). The right answers are
  the song's stored files. Songs with one group stay in the collection, as distractors.
- **Two parts.** Songs with an odd number are the *fit* part (every constant of the
  search that is fitted from data is fitted on their queries only:
  ``benchmarks/fit_cover_fusion.py``), songs with an even number the *held-out* part,
  never fitted on. Both parts' files are in the one collection.
- **Crossed degradations** at two strengths (level 1 mild, level 2 strong), every query
  also transposed by -5..+6 semitones:

  ========  =====================================  ===================================
  factor    level 1                                level 2
  ========  =====================================  ===================================
  retime    tick grid x f, f in [0.85, 1.18], a    f in [0.7, 1.4], tempo curve +-15%
            tempo curve of +-5% (period 12-40 beats)
  jitter    onsets +-25 ms (uniform), durations     onsets +-60 ms, durations +-30%
            +-15%
  edit      8% of notes dropped, 4% spurious       20% dropped, 10% spurious
  excerpt   30-40 s from anywhere                  10-15 s from anywhere
  ========  =====================================  ===================================

  ``merge`` puts every note in one track; ``harmony`` keeps only the accompaniment
  (PIANO track). Cells: each factor alone, ``perf`` (a performance-like rendering: no
  beat grid, the file's beats are its seconds at 120 bpm through a rubato curve, plus
  jitter, one track), ``combined`` (retime + jitter + edit + merge + a 40 s excerpt at
  level 2, the whole file at level 1) and ``combined_short`` (the same with the level's
  excerpt length). The dual of ``harmony``, the tune kept and the harmony replaced
  (``benchmarks/covers.py``'s generators, on the held-out file's MELODY track, embellished
  with passing notes and pickups): ``reharm`` (over new diatonic chords, own track),
  ``reharm_merged`` (the same in one track) and ``mashup`` (over another song's PIANO
  track, whose stored versions are then wrong answers holding the query's whole harmony).
- **Real performances**: ``vienna4x22`` (88 performances of 4 pieces by 22 pianists, plus
  the 4 scores) added to the collection. Queries: each performance (the others and the
  score are right; the query itself is left out), and a 30 s excerpt of each performance
  from a random point.

Baseline: TF-IDF cosine over exact-interval 3-grams of the skyline (highest voice), over
every stored file (``benchmarks.covers.Baseline``), on the same queries.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from covers import Baseline, average_precision, first_rank, overlap, synthetic_index  # noqa: E402
from indexers.features import features_from_notes, note_parts, skyline  # noqa: E402
from query.covers import ALIGN, CoverIndex, query_from_notes  # noqa: E402
from query.cover_notes import notes_from_arrays  # noqa: E402

DATA = Path(os.environ.get("ATLAS_POP909", ROOT.parent / "shared" / "data" / "pop909-dev"))
VIENNA = Path(os.environ.get("ATLAS_VIENNA", ROOT.parent / "shared" / "data" / "vienna4x22"))
CELLS = ["clean", "retime", "jitter", "edit", "merge", "harmony", "excerpt", "perf", "combined", "combined_short",
         "reharm", "reharm_merged", "mashup"]
# cells made from the query file's MELODY track over other chords (benchmarks/covers.py's
# generators): the dual of ``harmony`` (the tune kept, the harmony replaced)
TUNE_CELLS = ("reharm", "reharm_merged", "mashup")
LEVELS = {
    1: dict(f=(0.85, 1.18), curve=0.05, jitter_s=0.025, dur_jit=0.15, drop=0.08, extra=0.04, excerpt=(30, 40)),
    2: dict(f=(0.7, 1.4), curve=0.15, jitter_s=0.060, dur_jit=0.30, drop=0.20, extra=0.10, excerpt=(10, 15)),
}
TOP = 50
CACHE = Path(os.environ.get("ATLAS_BENCH_CACHE", "/tmp/atlas_covers_honest"))


# -- the files -----------------------------------------------------------------------
def read_notes(path: Path) -> dict | None:
    """Pitched notes of a MIDI file as arrays (onset_beats, duration_beats, onset_s,
    duration_s, onset_ticks, pitch, track_index, track (upper-case name)), by onset;
    ``track_index`` is the note's (track, channel) part (``indexers.features.note_parts``),
    what the search reads as a track, as ``query_from_file`` and the vectors stage do."""
    from ingest.midi_parse import read_midi_file

    t = read_midi_file(path)
    n = t["notes"]
    names = dict(zip(t["tracks"].column("track_index").to_pylist(),
                     [str(x or "").upper() for x in t["tracks"].column("name").to_pylist()]))
    channel = n.column("channel").to_numpy()
    keep = channel != 9
    cols = {c: n.column(c).to_numpy()[keep] for c in
            ("onset_beats", "duration_beats", "onset_s", "duration_s", "onset_ticks", "pitch", "track_index")}
    if cols["pitch"].size == 0:
        return None
    o = np.lexsort((cols["pitch"], cols["onset_beats"]))
    cols = {c: v[o] for c, v in cols.items()}
    cols["track"] = np.asarray([names.get(int(i), "") for i in cols["track_index"]], dtype=object)
    cols["track_index"] = note_parts(cols["track_index"], channel[keep][o])
    return cols


def load_files(paths: list[Path]) -> dict[str, dict]:
    """path -> notes, cached in ``CACHE`` (keyed by the files' names and sizes)."""
    # (the salt: notes read before track_index held (track, channel) parts are not reused)
    key = hashlib.sha256(("parts\n" + "\n".join(f"{p}:{p.stat().st_size}" for p in paths)).encode()).hexdigest()[:16]
    cache = CACHE / f"notes-{key}.pkl"
    if cache.exists():
        with open(cache, "rb") as fh:
            return pickle.load(fh)
    out = {}
    for p in paths:
        n = read_notes(p)
        if n is not None:
            out[str(p)] = n
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(cache, "wb") as fh:
        pickle.dump(out, fh)
    return out


def near_copy_groups(files: list[str], notes: dict, threshold: float = 0.9) -> list[list[str]]:
    """Connected components of 'overlap >= threshold' among one song's files."""
    parent = list(range(len(files)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(files)):
        for j in range(i + 1, len(files)):
            if root(i) != root(j) and overlap(notes[files[i]], notes[files[j]]) >= threshold:
                parent[root(i)] = root(j)
    groups = defaultdict(list)
    for i, f in enumerate(files):
        groups[root(i)].append(f)
    return list(groups.values())


def song_of(path) -> str:
    """The POP909 song a file belongs to: its folder (NNN/NNN.mid, NNN/versions/*.mid)."""
    p = Path(path)
    return p.parent.parent.name if p.parent.name == "versions" else p.parent.name


def non_query_files(data: Path) -> dict[str, dict]:
    """path -> notes of every file of the POP909-dev songs that are no benchmark query's
    song (their files are all near-copies: stored as distractors only). The learned
    probes' training scripts train on these alone."""
    paths = sorted(data.glob("*/*.mid")) + sorted(data.glob("*/versions/*.mid"))
    notes = load_files(paths)
    _stored, bench, _ = pop909_protocol(data, notes)
    return {f: n for f, n in notes.items() if song_of(f) not in bench}


def training_split(songs: dict, seed: int, min_val: int) -> tuple[np.random.Generator, list, list]:
    """For a training script (benchmarks/train_*.py): torch and NumPy seeded (torch on
    the 2 cores), and the songs' names split into training and validation songs (the
    last tenth by name, at least ``min_val``). Returns (rng, training, validation)."""
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(2)
    names = sorted(songs)
    n_val = max(min_val, len(names) // 10)
    train, val = names[:-n_val], names[-n_val:]
    print(f"{len(train)} training songs, {len(val)} validation songs", flush=True)
    return np.random.default_rng(seed), train, val


def pop909_protocol(data: Path, notes: dict):
    """Songs, their query source (NNN.mid), held-out files and stored right answers.

    Returns (stored paths, {song: (source path, [stored right answers])}, n merged)."""
    songs = defaultdict(list)
    for f in sorted(notes):
        p = Path(f)
        if not p.is_relative_to(data):
            continue
        songs[song_of(p)].append(f)
    main = {s: f for s, fs in songs.items() for f in fs if Path(f).stem == s}
    # POP909 holds a few songs twice under two numbers (017/018): one song
    merged = 0
    mains = sorted(main)
    fp = {s: frozenset(zip(notes[main[s]]["onset_ticks"][:200].tolist(), notes[main[s]]["pitch"][:200].tolist()))
          for s in mains}
    for i, a in enumerate(mains):
        for b in mains[i + 1:]:
            if a in songs and b in songs and len(fp[a] & fp[b]) > 100 and overlap(notes[main[a]], notes[main[b]]) >= 0.9:
                songs[a] += songs.pop(b)
                merged += 1
    held_out, bench = set(), {}
    for s, fs in songs.items():
        if s not in main:
            continue
        groups = near_copy_groups(fs, notes)
        if len(groups) < 2:
            continue
        q_group = next(g for g in groups if main[s] in g)
        stored = [f for f in fs if f not in q_group]
        assert max(overlap(notes[main[s]], notes[f]) for f in stored) < 0.9
        held_out.update(q_group)
        bench[s] = (main[s], stored)
    stored_all = [f for fs in songs.values() for f in fs if f not in held_out]
    return stored_all, bench, merged


def part_of(song: str) -> str:
    """Odd song numbers: the fit part; even: held out (never fitted on)."""
    return "fit" if int(song) % 2 == 1 else "heldout"


# -- degradations ------------------------------------------------------------------
def _transpose(n, rng):
    return n["pitch"].astype(np.int64) + int(rng.choice([-5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 6]))


def _warp(on, off, rng, rate_dev: float):
    """A monotone time warp (of beats or seconds) applied to onsets and offsets: its
    local rate is 1 +- rate_dev along a sine of period 12-40 units, random phase."""
    period = rng.uniform(12, 40)
    phase = rng.uniform(0, 2 * np.pi)
    w = 2 * np.pi / period

    def f(x):
        return x + rate_dev / w * (np.sin(w * x + phase) - np.sin(phase))

    return f(on), f(off)


def _excerpt_mask(on_s, rng, length_s):
    t_end = float(on_s.max())
    t0 = rng.uniform(float(on_s.min()), max(t_end - length_s, float(on_s.min())))
    m = (on_s >= t0) & (on_s < t0 + length_s)
    return m if m.sum() >= 4 else on_s < on_s.min() + length_s


def degrade(n: dict, factors: set, level: dict, rng) -> tuple:
    """Query note arrays (onset_beats, duration_beats, pitch, track_index or None) from a
    file's notes with these factors at this level (see the module docstring)."""
    on_b = n["onset_beats"].astype(np.float64)
    du_b = n["duration_beats"].astype(np.float64)
    on_s = n["onset_s"].astype(np.float64)
    du_s = np.maximum(n["duration_s"].astype(np.float64), 1e-3)
    pitch = _transpose(n, rng)
    trk = n["track_index"].astype(np.int64)
    keep = np.ones(on_b.size, bool)
    if "harmony" in factors:
        keep &= n["track"] == "PIANO" if (n["track"] == "PIANO").any() else trk != trk[np.argmax(pitch)]
    if "excerpt" in factors:
        keep &= _excerpt_mask(on_s, rng, rng.uniform(*level["excerpt"]))
    on_b, du_b, on_s, du_s, pitch, trk = (x[keep] for x in (on_b, du_b, on_s, du_s, pitch, trk))
    # seconds per beat where the notes are (for jitter given in seconds)
    spb = np.clip(np.gradient(on_s) / np.maximum(np.gradient(on_b), 1e-6), 0.2, 2.0) if on_b.size > 2 \
        else np.full(on_b.size, 0.5)
    spb = np.where(np.gradient(on_b) > 1e-6, spb, np.median(spb)) if on_b.size > 2 else spb
    if "edit" in factors:
        k = rng.random(on_b.size) > level["drop"]
        on_b, du_b, on_s, du_s, pitch, trk, spb = (x[k] for x in (on_b, du_b, on_s, du_s, pitch, trk, spb))
        n_extra = int(round(level["extra"] * on_b.size))
        src = rng.integers(0, on_b.size, n_extra)
        frac = rng.uniform(0, 1, n_extra)
        e_on = on_b.min() + frac * (on_b.max() - on_b.min())
        e_s = np.interp(e_on, on_b, on_s)
        on_b, on_s = np.concatenate([on_b, e_on]), np.concatenate([on_s, e_s])
        du_b = np.concatenate([du_b, rng.uniform(0.25, 1.0, n_extra)])
        du_s = np.concatenate([du_s, rng.uniform(0.1, 0.5, n_extra)])
        pitch = np.concatenate([pitch, pitch[src] + rng.integers(-7, 8, n_extra)])
        trk = np.concatenate([trk, trk[src]])
        spb = np.concatenate([spb, spb[src]])
    if "jitter" in factors:
        j = rng.uniform(-level["jitter_s"], level["jitter_s"], on_b.size)
        on_s = on_s + j
        on_b = on_b + j / spb
        d = rng.uniform(1 - level["dur_jit"], 1 + level["dur_jit"], on_b.size)
        du_b, du_s = du_b * d, du_s * d
    if "perf" in factors:
        # no beat grid: the file's beats are its (warped) seconds at 120 bpm
        t0 = on_s.min()
        w_on, w_off = _warp(on_s - t0, on_s - t0 + du_s, rng, level["curve"])
        on_b, du_b = 2.0 * w_on, 2.0 * (w_off - w_on)
    elif "retime" in factors:
        f = rng.uniform(*level["f"])
        t0 = on_b.min()
        w_on, w_off = _warp(on_b - t0, on_b - t0 + du_b, rng, level["curve"])
        on_b, du_b = f * w_on, f * (w_off - w_on)
    if "excerpt" in factors or "perf" in factors or "retime" in factors:
        on_b = on_b - on_b.min()
    on_b = np.maximum(on_b, 0)
    pitch = np.clip(pitch, 0, 127)
    o = np.argsort(on_b, kind="stable")
    merge = "merge" in factors or "perf" in factors
    return on_b[o], np.maximum(du_b[o], 0.02), pitch[o], None if merge else trk[o]


CELL_FACTORS = {
    "clean": set(), "retime": {"retime"}, "jitter": {"jitter"}, "edit": {"edit"}, "merge": {"merge"},
    "harmony": {"harmony"}, "excerpt": {"excerpt"}, "perf": {"perf", "jitter"},
    "combined": {"retime", "jitter", "edit", "merge"},
    "combined_short": {"retime", "jitter", "edit", "merge", "excerpt"},
}


def tune_query(notes, bench, part_songs, s, cell, rng):
    """A ``TUNE_CELLS`` query of song ``s``: its held-out file's MELODY track, embellished
    (passing notes, pickups), over new diatonic chords (``reharm``, ``reharm_merged``: one
    track) or over the PIANO track of another song of the same part (``mashup``: that
    song's stored versions are wrong answers whose whole harmony is in the query). None
    when the file has no MELODY track."""
    from covers import mashup, reharmonised

    n = notes[bench[s][0]]
    if not (n["track"] == "MELODY").any():
        return None
    if cell == "mashup":
        others = [o for o in part_songs if o != s and (notes[bench[o][0]]["track"] == "PIANO").any()]
        other = others[int(rng.integers(0, len(others)))]
        on, du, p, trk = mashup(n, rng, 0, notes[bench[other][0]])
    else:
        on, du, p, trk = reharmonised(n, rng, 0)
    return on, du, np.clip(p, 0, 127), None if cell == "reharm_merged" else trk


def cell_factors(cell: str, level: int) -> set:
    f = set(CELL_FACTORS[cell])
    if cell == "combined" and level == 2:
        f.add("excerpt40")
    return f


# -- running --------------------------------------------------------------------------
def without_part(index: CoverIndex, notes: dict, bench: dict, part: str, second_line: bool = True,
                 third_line: bool = True) -> CoverIndex:
    """The collection without the stored versions of ``part``'s songs: that part's
    queries have no version in it (what the calibrated score is measured and fitted on)."""
    drop = {f for s, (_src, stored) in bench.items() if part_of(s) == part for f in stored}
    return build_index([str(p) for p in index.ids if str(p) not in drop], notes, second_line, third_line)


def build_index(paths: list[str], notes: dict, second_line: bool = True, third_line: bool = True) -> CoverIndex:
    """The cover index of these files, as the ``vectors`` stage would store them
    (``second_line=False`` / ``third_line=False``: every piece without its second / third
    melody line)."""
    from indexers.features import quantize_chroma

    ids, chroma, nb, mp, mo, nm, vec, bass, sp, so, tp, to = ([] for _ in range(12))
    for p in paths:
        n = notes[p]
        f = features_from_notes(n["onset_beats"], n["duration_beats"], n["pitch"], n["track_index"])
        ids.append(p)
        chroma.append(quantize_chroma(f["beat_chroma"]).ravel())
        nb.append(f["beat_chroma"].shape[0])
        mp.append(f["melody_pitch"])
        mo.append(f["melody_onset_beats"])
        nm.append(f["melody_pitch"].size)
        vec.append(f["vector"])
        bass.append(f["bass_pc"])
        sp.append(f["second_pitch"])
        so.append(f["second_onset_beats"])
        tp.append(f["third_pitch"])
        to.append(f["third_onset_beats"])
    if not second_line:
        sp, so = [np.zeros(0, np.int16)] * len(sp), [np.zeros(0, np.float32)] * len(so)
    if not third_line:
        tp, to = [np.zeros(0, np.int16)] * len(tp), [np.zeros(0, np.float32)] * len(to)
    return CoverIndex(ids, paths, np.asarray(vec, np.float32), np.concatenate(chroma), nb, np.concatenate(mp),
                      np.concatenate(mo), nm, np.concatenate(bass), [b.size for b in bass],
                      second_pitch=np.concatenate(sp), second_onset=np.concatenate(so), n_second=[x.size for x in sp],
                      third_pitch=np.concatenate(tp), third_onset=np.concatenate(to), n_third=[x.size for x in tp],
                      notes=notes_from_arrays([notes[p]["onset_beats"] for p in paths],
                                              [notes[p]["pitch"] for p in paths]))


class Recorder:
    """MAP / P@1 / rank of the first right answer / latency per (part, cell, level)."""

    def __init__(self):
        self.rows = defaultdict(lambda: defaultdict(list))

    def add(self, key, method, ranked, relevant, seconds=None):
        r = self.rows[key]
        r[method + "_ap"].append(average_precision(ranked, relevant))
        fr = first_rank(ranked, relevant)
        r[method + "_p1"].append(fr == 1)
        if seconds is not None:
            r["ms"].append(seconds * 1000)

    def table(self, title):
        print(f"\n== {title} ==")
        print(f"{'part':8s} {'cell':15s} {'lvl':>3s} {'n':>4s} | {'MAP':>6s} {'P@1':>6s} | {'base MAP':>8s} "
              f"{'P@1':>6s} | {'diff':>6s} | {'p50 ms':>6s} {'p95 ms':>6s}")
        for key in sorted(self.rows, key=lambda k: (k[0], CELLS.index(k[1]) if k[1] in CELLS else 99, k[1], k[2])):
            r = self.rows[key]
            m, b = np.mean(r["ours_ap"]), np.mean(r["base_ap"])
            flag = "  <-- below baseline" if m < b - 1e-9 else ""
            ms = np.asarray(r["ms"])
            print(f"{key[0]:8s} {key[1]:15s} {key[2]:3d} {len(r['ours_ap']):4d} | {m:6.3f} "
                  f"{np.mean(r['ours_p1']):6.3f} | {b:8.3f} {np.mean(r['base_p1']):6.3f} | {m - b:+6.3f} | "
                  f"{np.percentile(ms, 50):6.1f} {np.percentile(ms, 95):6.1f}{flag}")


def _search(index, q, exclude=None):
    t0 = time.perf_counter()
    res = index.search(q, top=TOP, explain_top=10)
    dt = time.perf_counter() - t0
    ranked = [x for x in res.column("piece_id").to_pylist() if x != exclude]
    return ranked, dt


def _baseline_rank(baseline, on, du, p, exclude=None):
    mel = skyline(on, du, p)[0]
    return baseline.rank(mel, exclude=exclude)


def pop909_queries(notes, bench, cells, levels, parts, max_songs, seed):
    """Yield ((part, cell, level), song, query features, note arrays, right answers) for
    every query of these parts, cells and levels; each (cell, level) draws from its own
    generator seeded by ``seed``, so a cell's queries do not depend on the others."""
    songs = sorted(bench)
    for part in parts:
        ps = [s for s in songs if part_of(s) == part][:max_songs]
        for cell in cells:
            for level in ([0] if cell in ("clean", "merge", "harmony") + TUNE_CELLS else levels):
                rng = np.random.default_rng([seed, CELLS.index(cell), level])
                lv = LEVELS.get(level, LEVELS[2])
                for s in ps:
                    src, stored = bench[s]
                    if cell in TUNE_CELLS:
                        arrays = tune_query(notes, bench, ps, s, cell, rng)
                        if arrays is not None:
                            yield (part, cell, level), s, query_from_notes(f"{cell}:{s}", *arrays), arrays, \
                                set(stored)
                        continue
                    f = cell_factors(cell, level)
                    if "excerpt40" in f:
                        f, lv_s = (f - {"excerpt40"}) | {"excerpt"}, dict(lv, excerpt=(40, 40))
                    else:
                        lv_s = lv
                    arrays = degrade(notes[src], f, lv_s, rng)
                    yield (part, cell, level), s, query_from_notes(f"{cell}:{s}", *arrays), arrays, set(stored)


def run_pop909(index, baseline, notes, bench, cells, levels, parts, max_songs, seed, rec):
    for key, s, q, (on, du, p, _), rel in pop909_queries(notes, bench, cells, levels, parts, max_songs, seed):
        ranked, dt = _search(index, q)
        rec.add(key, "ours", ranked, rel, dt)
        rec.add(key, "base", _baseline_rank(baseline, on, du, p), rel)


def run_vienna(index, baseline, notes, vienna_files, seed, rec, max_queries=None):
    piece = {f: Path(f).stem.rsplit("_p", 1)[0] if "/performances/" in f else Path(f).stem for f in vienna_files}
    perfs = [f for f in vienna_files if "/performances/" in f][:max_queries]
    rng = np.random.default_rng([seed, 99])
    for f in perfs:
        rel = {g for g in vienna_files if piece[g] == piece[f] and g != f}
        n = notes[f]
        for cell in ("perf_full", "perf_excerpt30"):
            if cell == "perf_full":
                on, du, p, trk = n["onset_beats"], n["duration_beats"], n["pitch"], n["track_index"]
            else:
                m = _excerpt_mask(n["onset_s"], rng, 30.0)
                on, du, p, trk = n["onset_beats"][m] - n["onset_beats"][m].min(), n["duration_beats"][m], \
                    n["pitch"][m], n["track_index"][m]
            q = query_from_notes(f"{cell}:{Path(f).stem}", on, du, p, trk, piece_id=f)
            ranked, dt = _search(index, q, exclude=f)
            rec.add(("vienna", cell, 0), "ours", ranked, rel, dt)
            rec.add(("vienna", cell, 0), "base", _baseline_rank(baseline, on, du, p, exclude=f), rel)


def _scored(index, q, rel, exclude=None):
    """(best score, whether the best answer is right, Brier score of the best 10) of one query."""
    res = index.search(q, top=11, explain_top=0)
    keep = [i for i, p in enumerate(res.column("piece_id").to_pylist()) if p != exclude][:10]
    if not keep:
        return 0.0, False, 0.0
    score = res.column("score").to_numpy()[keep].astype(np.float64)
    right = np.array([res.column("piece_id")[i].as_py() in rel for i in keep], np.float64)
    return float(score[0]), bool(right[0]), float(np.mean((score - right) ** 2))


def run_absent(index, notes, bench, cells, levels, parts, max_songs, seed, vienna_files, max_vienna=None,
               lines=(True, True)):
    """What the reported score says: each query against the collection, and again
    against the collection without its song (its part's songs left out; for
    vienna4x22, its piece's 23 files), so that it has no version there. A score of 0.5
    or more should mean a version: the share of queries with versions whose best answer
    is right and scores that much, and the share of queries without whose best answer
    scores that much (wrongly), with the Brier score of the best 10 answers of both.
    "vienna29": the vienna4x22 queries again in a collection of mostly their versions
    (their piece's 23 files and two performances of each other piece) and in the six
    others alone. ``lines``: whether the collections hold the pieces' second and third
    lines."""
    rows = defaultdict(lambda: defaultdict(list))

    def add(key, present, absent):
        r = rows[key]
        r["hit"].append(present[1] and present[0] >= 0.5)
        r["false"].append(absent[0] >= 0.5)
        r["best_absent"].append(absent[0])
        r["brier"] += [present[2], absent[2]]

    for part in parts:
        absent = without_part(index, notes, bench, part, *lines)
        for key, _s, q, arrays, rel in pop909_queries(notes, bench, cells, levels, [part], max_songs, seed):
            add(key, _scored(index, q, rel), _scored(absent, query_from_notes("absent", *arrays), rel))
    piece = {f: Path(f).stem.rsplit("_p", 1)[0] if "/performances/" in f else Path(f).stem for f in vienna_files}
    rng = np.random.default_rng([seed, 99])
    perfs = [f for f in vienna_files if "/performances/" in f][:max_vienna]
    for name in sorted(set(piece.values())):
        absent = build_index([str(p) for p in index.ids if piece.get(str(p)) != name], notes, *lines)
        # a collection of mostly the piece's versions: its 23 files and the first two
        # performances of each other piece (29 pieces), and those six alone
        others = [g for other in sorted(set(piece.values()) - {name})
                  for g in [g for g in vienna_files if piece[g] == other and "/performances/" in g][:2]]
        few = build_index([g for g in vienna_files if piece[g] == name] + others, notes, *lines)
        few_absent = build_index(others, notes, *lines)
        for f in (f for f in perfs if piece[f] == name):
            rel = {g for g in vienna_files if piece[g] == name and g != f}
            n = notes[f]
            m = _excerpt_mask(n["onset_s"], rng, 30.0)
            for cell, sel in (("perf_full", slice(None)), ("perf_excerpt30", m)):
                on = n["onset_beats"][sel] - n["onset_beats"][sel].min()
                arrays = (on, n["duration_beats"][sel], n["pitch"][sel], n["track_index"][sel])
                add(("vienna", cell, 0), _scored(index, query_from_notes(cell, *arrays, piece_id=f), rel, exclude=f),
                    _scored(absent, query_from_notes(cell, *arrays), rel))
                add(("vienna29", cell, 0), _scored(few, query_from_notes(cell, *arrays, piece_id=f), rel, exclude=f),
                    _scored(few_absent, query_from_notes(cell, *arrays), rel))
    print("\n== the reported score: each query with its versions in the collection, and without them ==")
    print(f"{'part':8s} {'cell':15s} {'lvl':>3s} {'n':>4s} | {'with: right best >= 0.5':>23s} | "
          f"{'without: best >= 0.5':>20s} {'median best':>11s} | {'Brier of the best 10':>20s}")
    for key in sorted(rows, key=lambda k: (k[0], CELLS.index(k[1]) if k[1] in CELLS else 99, k[1], k[2])):
        r = rows[key]
        print(f"{key[0]:8s} {key[1]:15s} {key[2]:3d} {len(r['hit']):4d} | {np.mean(r['hit']):23.3f} | "
              f"{np.mean(r['false']):20.3f} {np.median(r['best_absent']):11.3f} | {np.mean(r['brier']):20.4f}")
    every = {k: np.concatenate([rows[key][k] for key in rows if key[0] != "vienna29"])
             for k in ("hit", "false", "brier")}
    print(f"all {every['hit'].size} queries (vienna29 apart): with versions, right best >= 0.5 {every['hit'].mean():.3f}; without, "
          f"best >= 0.5 {every['false'].mean():.3f}; Brier of the best 10 {every['brier'].mean():.4f}")


def setup(data: Path, vienna: Path | None, second_line: bool = True, third_line: bool = True):
    """Notes of every file, the protocol, the collection's index and the baseline."""
    pop_paths = sorted(data.glob("*/*.mid")) + sorted(data.glob("*/versions/*.mid"))
    v_paths = sorted(vienna.glob("performances/*.mid")) + sorted(vienna.glob("scores/*.mid")) if vienna else []
    t0 = time.perf_counter()
    notes = load_files(pop_paths + v_paths)
    stored, bench, merged = pop909_protocol(data, notes)
    v_files = [str(p) for p in v_paths if str(p) in notes]
    collection = stored + v_files
    index = build_index(collection, notes, second_line, third_line)
    mel = [skyline(notes[p]["onset_beats"], notes[p]["duration_beats"], notes[p]["pitch"])[0] for p in collection]
    baseline = Baseline(collection, mel)
    print(f"collection: {len(stored)} POP909-dev files (held out: the near-copy group of NNN.mid of "
          f"{len(bench)} songs; {merged} songs stored twice merged) + {len(v_files)} vienna4x22 files; "
          f"benchmark songs: {sum(part_of(s) == 'fit' for s in bench)} fit, "
          f"{sum(part_of(s) == 'heldout' for s in bench)} held out; ready in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)
    return notes, bench, index, baseline, v_files


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--vienna", default=str(VIENNA))
    ap.add_argument("--quick", action="store_true", help="level 2 only, 30 songs per part, 30 vienna queries")
    ap.add_argument("--songs", type=int, default=None, help="at most this many songs per part")
    ap.add_argument("--cells", default=",".join(CELLS))
    ap.add_argument("--levels", default="1,2")
    ap.add_argument("--part", choices=["fit", "heldout", "both"], default="both")
    ap.add_argument("--no-vienna", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--large", type=int, default=0,
                    help="also search a collection of this many pieces (the real ones + synthetic ones, "
                         "benchmarks/covers.py synthetic_index): held-out part, first 40 songs, level 2")
    ap.add_argument("--no-second-line", action="store_true",
                    help="index without the pieces' second melody lines (the fusion stays the shipped one)")
    ap.add_argument("--no-third-line", action="store_true",
                    help="index without the pieces' third melody lines (the skyline of all notes)")
    ap.add_argument("--no-fusion", action="store_true",
                    help="rank by the alignment score instead of the fitted fusion (query/cover_fusion.json)")
    numbers = [k for k, v in LEVELS[2].items() if not isinstance(v, tuple)]  # (not the ranges)
    ap.add_argument("--level2", action="append", default=[], metavar="KEY=VALUE",
                    help="change one of level 2's strengths, e.g. --level2 drop=0 (no dropped notes), "
                         f"--level2 jitter_s=0; keys: {', '.join(numbers)}")
    ap.add_argument("--absent", action="store_true",
                    help="instead of the MAP table: what the reported score says, each query with its versions in "
                         "the collection and without them (its song left out)")
    args = ap.parse_args(argv)
    if args.no_fusion:
        ALIGN["fusion"] = False
    for kv in args.level2:
        key, _, value = kv.partition("=")
        if key not in numbers or not value:
            ap.error(f"--level2 {kv}: expected KEY=NUMBER with KEY one of {', '.join(numbers)}")
        try:
            LEVELS[2][key] = float(value)
        except ValueError:
            ap.error(f"--level2 {kv}: {value!r} is not a number")
    cells = args.cells.split(",")
    unknown = sorted(set(cells) - set(CELLS))
    if unknown:
        ap.error(f"unknown cell(s) {unknown}; choose from {CELLS}")
    levels = [2] if args.quick else [int(x) for x in args.levels.split(",")]
    max_songs = args.songs or (30 if args.quick else None)
    parts = ["fit", "heldout"] if args.part == "both" else [args.part]
    vienna = None if args.no_vienna else Path(args.vienna)
    notes, bench, index, baseline, v_files = setup(Path(args.data), vienna, not args.no_second_line,
                                                   not args.no_third_line)
    index.search(index.query_for_piece(index.ids[0]), top=5)  # compile the kernels before timing
    if args.absent:
        run_absent(index, notes, bench, cells, levels, parts, max_songs, args.seed, v_files,
                   max_vienna=30 if args.quick else None, lines=(not args.no_second_line, not args.no_third_line))
        return
    rec = Recorder()
    run_pop909(index, baseline, notes, bench, cells, levels, parts, max_songs, args.seed, rec)
    if v_files:
        run_vienna(index, baseline, notes, v_files, args.seed, rec, max_queries=30 if args.quick else None)
    changed = f"; level 2 with {', '.join(args.level2)}" if args.level2 else ""
    rec.table(f"ours vs baseline (interval 3-gram TF-IDF, skyline); {len(index)} pieces; seed {args.seed}{changed}")
    print_latency(rec)
    if args.large:
        t0 = time.perf_counter()
        big = synthetic_index(index, args.large, np.random.default_rng(args.seed))
        notes_mb = big.notes.nbytes / 1e6 if big.notes is not None else 0.0
        print(f"\nsynthetic collection of {len(big):,} pieces built in {time.perf_counter() - t0:.0f} s; the index "
              f"holds {big.nbytes() / 1e6:,.0f} MB ({notes_mb:,.0f} MB of notes)", file=sys.stderr)
        big.search(big.query_for_piece(big.ids[0]), top=5)
        rec_big = Recorder()
        large_cells = [c for c in ("clean", "excerpt", "perf", "combined") if c in cells]
        run_pop909(big, baseline, notes, bench, large_cells, [2], ["heldout"], 40, args.seed, rec_big)
        rec_big.table(f"{len(big):,} pieces (the {len(index)} real ones + synthetic); baseline over the real "
                      "pieces only")
        print_latency(rec_big)


def print_latency(rec):
    allms = np.concatenate([np.asarray(r["ms"]) for r in rec.rows.values()])
    print(f"all {allms.size} queries: latency p50 {np.percentile(allms, 50):.1f} ms, p95 "
          f"{np.percentile(allms, 95):.1f} ms (load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
