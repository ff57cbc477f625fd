"""Chord and key accuracy on pop909-dev, against a simple baseline measured in the same
run, and the speed of the harmony stage.

Chords: each song's NNN.mid against its ``chord_midi.txt`` with ``mir_eval.chord``
(majmin, root, thirds, sevenths, mirex; duration-weighted over the whole set).
Keys: the piece key against ``key_audio.txt`` (the key that lasts longest) with
``mir_eval.key`` (exact accuracy and the MIREX weighted score, which gives 0.5 for a
fifth, 0.3 relative, 0.2 parallel); local keys against every key segment.

Baselines, same notes and same beat grid:

- chords: plain template matching per beat, major/minor triads only, no bass emphasis,
  no smoothing (each beat's best triad, equal neighbours merged);
- keys: the pitch class that sounds longest, taken as a major tonic.

Parameters were tuned by hand on songs 001-100 and on every third song (001, 004, ...);
``--held-out`` measures only the 134 songs used for neither.

Usage::

    .venv/bin/python benchmarks/harmony.py              # all 300 songs
    .venv/bin/python benchmarks/harmony.py --songs 50   # the first 50
    .venv/bin/python benchmarks/harmony.py --no-stage   # skip the database timing
    .venv/bin/python benchmarks/harmony.py --held-out --no-stage

Also times the stage: ``analyze_notes`` per piece (pure function, parsing excluded) and
``run_stages(only=["harmony"])`` on a database of the songs (read notes, analyse, write),
plus ``atlas progression`` search latency.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mir_eval  # noqa: E402

from ingest.harmony import (  # noqa: E402
    analyze_notes, beat_chroma, chord_label, key_name,
)
from ingest.midi_parse import parse_midi  # noqa: E402

POP909 = Path(os.environ.get("ATLAS_POP909", ROOT.parent / "shared" / "data" / "pop909-dev"))
METRICS = ("majmin", "root", "thirds", "sevenths", "mirex")


def baseline_chords(notes, tracks):
    """Per-beat triad template matching without smoothing (or bass emphasis)."""
    f = beat_chroma(notes, tracks=tracks, bass_weight=0.0)
    chroma, edges = f["chroma"], f["frame_onset_beats"]
    t = np.zeros((24, 12))
    for r in range(12):
        for iv in (0, 4, 7):
            t[r, (r + iv) % 12] = 1
        for iv in (0, 3, 7):
            t[12 + r, (r + iv) % 12] = 1
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    best = np.argmax(chroma @ t.T, axis=1)
    silent = chroma.sum(axis=1) <= 0
    labels = [("N" if s else chord_label(b % 12, "min" if b >= 12 else "maj")) for b, s in zip(best, silent)]
    return edges, labels


def baseline_key(notes, tracks):
    f = beat_chroma(notes, tracks=tracks, bass_weight=0.0)
    return key_name(int(np.argmax(f["chroma"].sum(axis=0))), "major")


def ref_key(path):
    iv, labels = mir_eval.io.load_labeled_intervals(str(path))
    dur = iv[:, 1] - iv[:, 0]
    return iv, [_mirkey(x) for x in labels], _mirkey(labels[int(np.argmax(dur))])


def _mirkey(lab: str) -> str:
    tonic, mode = lab.split(":")
    return f"{tonic} {'minor' if mode.startswith('min') else 'major'}"


def _to_s(piece, beats):
    from ingest.harmony import beats_to_seconds

    return beats_to_seconds(beats, tempo=piece["tempo_changes"], ticks_per_beat=piece["pieces"]["ticks_per_beat"])


def chord_scores(ref_path, est_iv, est_labels):
    ref_iv, ref_lab = mir_eval.io.load_labeled_intervals(str(ref_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc = mir_eval.chord.evaluate(ref_iv, ref_lab, est_iv, est_labels)
    dur = float((ref_iv[:, 1] - ref_iv[:, 0]).sum())
    return {m: sc[m] for m in METRICS}, dur


def weighted(rows, durs):
    d = np.asarray(durs)
    return {m: float(np.sum([r[m] for r in rows] * d) / d.sum()) for m in METRICS}


def local_key_score(ref_iv, ref_keys, key_segments):
    """Per reference key segment: the estimated local key covering most of it."""
    on = key_segments.column("onset_s").to_numpy()
    end = key_segments.column("end_s").to_numpy()
    names = key_segments.column("key_name").to_pylist()
    out = []
    for (a, b), ref in zip(ref_iv, ref_keys):
        overlap = np.clip(np.minimum(end, b) - np.maximum(on, a), 0, None)
        est = names[int(np.argmax(overlap))] if overlap.max() > 0 else names[0]
        out.append((mir_eval.key.weighted_score(ref, est), b - a))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--songs", type=int, default=300, help="use the first N songs (default all 300)")
    ap.add_argument("--first", type=int, default=1, help="first song number (default 1)")
    ap.add_argument("--no-stage", action="store_true", help="skip the database stage timing")
    ap.add_argument("--held-out", action="store_true",
                    help="only the songs never used to tune the parameters (101-300 without every third)")
    args = ap.parse_args(argv)
    songs = sorted(p for p in POP909.iterdir() if p.is_dir() and p.name.isdigit())
    songs = [s for s in songs if int(s.name) >= args.first][: args.songs]
    if args.held_out:
        songs = [s for s in songs if int(s.name) > 100 and (int(s.name) - 1) % 3 != 0]
    print(f"pop909-dev: {len(songs)} songs ({songs[0].name}-{songs[-1].name}), {POP909}")

    parsed = []
    for s in songs:
        data = (s / f"{s.name}.mid").read_bytes()
        parsed.append(parse_midi(data, piece_id=s.name, path=str(s)))

    # warm up the numba-compiled parts so the timing measures analysis only
    analyze_notes(parsed[0]["notes"], tracks=parsed[0]["tracks"])

    ours, base, durs = [], [], []
    key_hits = {"ours": [], "ours_weighted": [], "temperley": [], "temperley_weighted": [],
                "baseline": [], "baseline_weighted": []}
    local = []
    t_ours = 0.0
    n_notes = 0
    for s, p in zip(songs, parsed):
        n_notes += p["notes"].num_rows
        t0 = time.perf_counter()
        res = analyze_notes(p["notes"], tracks=p["tracks"], tempo=p["tempo_changes"],
                            ticks_per_beat=p["pieces"]["ticks_per_beat"], piece_id=s.name)
        t_ours += time.perf_counter() - t0
        c = res["chords"]
        est_iv = np.c_[c.column("onset_s").to_numpy(), c.column("end_s").to_numpy()]
        sc, dur = chord_scores(s / "chord_midi.txt", est_iv, c.column("label").to_pylist())
        ours.append(sc)
        durs.append(dur)

        edges, labels = baseline_chords(p["notes"], p["tracks"])
        e_s = _to_s(p, edges)
        b_iv = np.c_[e_s[:-1], e_s[1:]]
        bsc, _ = chord_scores(s / "chord_midi.txt", b_iv, labels)
        base.append(bsc)

        ref_iv, ref_keys, ref_main = ref_key(s / "key_audio.txt")
        est = res["piece_keys"].column("key_name")[0].as_py()
        key_hits["ours"].append(est == ref_main or _same_key(est, ref_main))
        key_hits["ours_weighted"].append(mir_eval.key.weighted_score(ref_main, est))
        tk = analyze_notes(p["notes"], tracks=p["tracks"], key_profile="temperley")["piece_keys"]
        tk = tk.column("key_name")[0].as_py()
        key_hits["temperley"].append(_same_key(tk, ref_main))
        key_hits["temperley_weighted"].append(mir_eval.key.weighted_score(ref_main, tk))
        bk = baseline_key(p["notes"], p["tracks"])
        key_hits["baseline"].append(_same_key(bk, ref_main))
        key_hits["baseline_weighted"].append(mir_eval.key.weighted_score(ref_main, bk))
        local += local_key_score(ref_iv, ref_keys, res["key_segments"])

    w_ours, w_base = weighted(ours, durs), weighted(base, durs)
    print("\nchords vs chord_midi.txt (mir_eval.chord, duration-weighted over all songs)")
    print(f"{'metric':10s} {'ours':>8s} {'baseline':>9s} {'ratio':>7s}")
    for m in METRICS:
        print(f"{m:10s} {w_ours[m]:8.3f} {w_base[m]:9.3f} {w_ours[m] / max(w_base[m], 1e-9):7.2f}")

    print("\nkeys vs key_audio.txt (longest key of each song; mir_eval.key)")
    for name, label in (("ours", "ours (Krumhansl-Kessler, default)"), ("temperley", "Temperley profile"),
                        ("baseline", "baseline (longest pitch class, major)")):
        print(f"{label:40s} accuracy {np.mean(key_hits[name]):.3f}   weighted score {np.mean(key_hits[name + '_weighted']):.3f}")
    lw = np.array(local)
    print(f"{'local keys (ours), per reference segment':40s} weighted score {np.sum(lw[:, 0] * lw[:, 1]) / lw[:, 1].sum():.3f}"
          f" (duration-weighted, {len(lw)} segments)")

    print(f"\nspeed: analyze_notes {len(songs) / t_ours:.1f} pieces/s, {n_notes / t_ours / 1e6:.2f}M notes/s "
          f"({t_ours:.2f} s for {len(songs)} pieces, {n_notes:,} notes; parsing excluded; 1 process)")

    if not args.no_stage:
        stage_timing(songs)


def _same_key(a: str, b: str) -> bool:
    return mir_eval.key.weighted_score(b, a) == 1.0


def stage_timing(songs):
    from atlas_db.connection import reading
    from ingest.derived import run_stages
    from ingest.pipeline import ingest_paths
    from query.progression import find_progression

    tmp = Path(tempfile.mkdtemp(prefix="atlas-harmony-bench-"))
    try:
        db = tmp / "db"
        ingest_paths([str(s / f"{s.name}.mid") for s in songs], db, workers=1, derive=False)
        t0 = time.perf_counter()
        run_stages(db, only=["harmony"])
        dt = time.perf_counter() - t0
        with reading(db) as con:
            n_chords = con.execute("SELECT count(*) FROM chords").fetchone()[0]
        print(f"stage:  run_stages(only=['harmony']) {len(songs) / dt:.1f} pieces/s "
              f"({dt:.2f} s: read notes, analyse, write {n_chords:,} chords; database of {len(songs)} songs)")
        for q in ("ii V I", "I V vi IV", "Dm7 G7 Cmaj7", "C G Am F"):
            find_progression(db, q)  # warm
            t0 = time.perf_counter()
            res = find_progression(db, q)
            ms = (time.perf_counter() - t0) * 1e3
            print(f"search: atlas progression {q!r:16s} {res.num_rows:5d} matches in "
                  f"{len(set(res.column('piece_id').to_pylist())):3d} pieces, {ms:6.1f} ms (includes opening the db)")
        # the vectorised core alone, on the corpus's chords repeated 100 times
        from atlas_db.schema_harmony import QUALITIES
        from query.progression import parse_progression, search_chords

        kind, q = parse_progression("ii V I")
        with reading(db) as con:
            ch = con.sql("""SELECT dense_rank() OVER (ORDER BY piece_id) AS piece_no, chord_index,
                                   list_position(?, quality) - 1 AS quality_ix, coalesce(root_pc, -1) AS root_pc,
                                   key_tonic_pc, key_mode = 'minor' AS is_minor FROM chords WHERE quality <> 'N'
                            ORDER BY piece_id, chord_index""", params=[list(QUALITIES)]).to_arrow_table()
        ch = {c: ch.column(c).to_numpy(zero_copy_only=False) for c in ch.column_names}
        reps = 100
        big = {c: np.concatenate([v] * reps) for c, v in ch.items()}
        big["piece_no"] = np.concatenate([ch["piece_no"] + i * (ch["piece_no"].max() + 1) for i in range(reps)])
        t0 = time.perf_counter()
        n = len(search_chords(big, kind, q))
        ms = (time.perf_counter() - t0) * 1e3
        print(f"search: search_chords('ii V I') over {len(big['root_pc']):,} chords in memory: "
              f"{n:,} matches, {ms:.0f} ms ({len(big['root_pc']) / ms / 1e3:.1f}M chords/s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
