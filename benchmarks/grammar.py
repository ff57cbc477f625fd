"""Grammar benchmark: build speed, compression, rule lookup latency.

Run:  .venv/bin/python benchmarks/grammar.py [--pop909 DIR] [--music21-cache DIR]
      .venv/bin/python benchmarks/grammar.py --incremental [--pieces 1000 | --generated 10000] [--repeats 3]

1. Build speed (notes/s) of the grammar core (terminals + Re-Pair + every occurrence)
   on POP909 dev, on music21's corpus (the ``atlas demo`` selection, rendered to MIDI once
   into a cache folder) and on both together; baseline in the same run: classic Re-Pair
   (one count level per round, ``ROUND_RATIO = 1``) on a 100k-note prefix, against ours
   on the same prefix.
2. Compression: bytes of grammar + sequences + residuals (decoded and checked equal to the
   notes) against the .mid files and ``xz -9`` of them (each file, and all concatenated).
3. Lookup latency in a DuckDB database holding the POP909 grammar: occurrences of a rule
   by id, rules by contour, against a NumPy scan of every note for the same contour.

``--incremental``: the cost of adding ONE file to a live database. A database of the first
``--pieces`` POP909 files (the last song folder held out) is built with the grammar and
patterns stages; then the held-out song's file is added, stage by stage, once to a copy of
that database and once to an empty one, in the same run (after a warm-up add, so numba's
cache and the imports are not counted). Prints each stage's best-of-``--repeats`` seconds
and the ratio live / empty (goal <= 1.5x at 1k pieces). ``--generated N``: the live
database holds N generated pieces instead (``benchmarks/ingest_scale.py``'s
``write_pieces``: about 140 notes each, all distinct).
"""

from __future__ import annotations

import argparse
import lzma
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "harmony-atlas" / "numba"))

from ingest import grammar, grammar_codec, grammar_core as gc  # noqa: E402
from ingest.midi_parse import parse_midi  # noqa: E402


def load(paths):
    parsed, raw = [], []
    for i, p in enumerate(paths):
        b = Path(p).read_bytes()
        try:
            parsed.append(parse_midi(b, piece_id=f"{i:06d}", path=str(p)))
            raw.append(b)
        except Exception as e:  # noqa: BLE001 - a benchmark reports and goes on
            print(f"  skipped {p}: {e}", file=sys.stderr)
    return parsed, raw


def pieces_meta(parsed):
    tempo = [(i, t, u) for i, p in enumerate(parsed)
             for t, u in zip(p["tempo_changes"].column("time_ticks").to_pylist(),
                             p["tempo_changes"].column("us_per_beat").to_pylist())]
    return {"piece_ids": [f"{i:06d}" for i in range(len(parsed))],
            "ticks_per_beat": np.array([int(p["pieces"]["ticks_per_beat"]) for p in parsed]),
            "tempo_piece": np.array([t[0] for t in tempo], np.int64),
            "tempo_ticks": np.array([t[1] for t in tempo], np.int64),
            "tempo_us": np.array([t[2] for t in tempo], np.int64)}


def build_once(notes, ratio=None):
    old = gc.ROUND_RATIO
    if ratio is not None:
        gc.ROUND_RATIO = ratio
    try:
        t = time.perf_counter()
        g, seq, _ = grammar.track_parse(notes, None, learn=True)
        occ = gc.expand(seq, g)
        dt = time.perf_counter() - t
    finally:
        gc.ROUND_RATIO = old
    return dt, g, seq, len(occ[0])


def prefix(notes, n_max):
    ts = notes["track_starts"]
    k = int(np.searchsorted(ts, n_max, side="right"))  # whole tracks only
    n = int(ts[k - 1])
    out = {key: (v[:n] if isinstance(v, np.ndarray) and len(v) == notes["n"] else v) for key, v in notes.items()}
    out["track_starts"] = ts[:k]
    out["track_piece"] = notes["track_piece"][: k - 1]
    out["track_track"] = notes["track_track"][: k - 1]
    out["n"] = n
    return out


def bench_build(name, notes, repeats=3):
    times = []
    for _ in range(repeats):
        dt, g, seq, n_occ = build_once(notes)
        times.append(dt)
    best = min(times)
    print(f"{name:<22} {notes['n']:>10,} notes  build {best:6.2f} s (median {statistics.median(times):.2f})"
          f"  {notes['n'] / best / 1e6:5.2f} M notes/s  rules {g.n_rules:,}  top-level symbols {len(seq):,}"
          f"  occurrences {n_occ:,}")
    return g, seq


def bench_compression(name, notes, raw, parsed, g, seq):
    pieces = pieces_meta(parsed)
    t = time.perf_counter()
    streams = grammar_codec.encode(notes, seq, g, pieces)
    t_enc = time.perf_counter() - t
    t = time.perf_counter()
    back = grammar_codec.decode(streams)
    t_dec = time.perf_counter() - t
    ok = all(np.array_equal(back[k], notes[k].astype(np.int64)) for k in
             ("track_index", "note_index", "onset_ticks", "duration_ticks", "pitch", "velocity", "channel"))
    sizes = grammar_codec.stream_sizes(streams)
    total = sizes["grammar"] + sizes["sequences"] + sizes["residuals"]
    midi = sum(len(b) for b in raw)
    xz_files = sum(len(lzma.compress(b, preset=9)) for b in raw)
    xz_solid = len(lzma.compress(b"".join(raw), preset=9))
    print(f"{name}: {'lossless' if ok else 'NOT LOSSLESS'} ({notes['n']:,} notes, encode {t_enc:.1f} s, decode {t_dec:.1f} s)")
    print(f"  grammar {sizes['grammar']:,} + sequences {sizes['sequences']:,} + residuals {sizes['residuals']:,}"
          f" = {total:,} bytes ({total / notes['n']:.3f} bytes/note)")
    print(f"  .mid files           {midi:>12,} bytes  ratio {midi / total:5.2f}x")
    print(f"  xz -9 each file      {xz_files:>12,} bytes  ratio {xz_files / total:5.2f}x")
    print(f"  xz -9 concatenated   {xz_solid:>12,} bytes  ratio {xz_solid / total:5.2f}x")


def bench_lookup(pop_paths, notes):
    from atlas_db.connection import connect
    from ingest.pipeline import ingest_paths

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "db"
        ingest_paths([str(p) for p in pop_paths], db, workers=1, derive=False)
        con = connect(db, read_only=False)
        con.execute("BEGIN")
        t = time.perf_counter()
        grammar.rebuild(con)
        con.execute("COMMIT")
        print(f"database rebuild (grammar stage incl. writes, transforms): {time.perf_counter() - t:.1f} s")
        rng = np.random.default_rng(0)
        rules = con.execute("SELECT rule_id, intervals FROM rules WHERE length BETWEEN 4 AND 12 "
                            "AND n_pieces >= 2 ORDER BY rule_id").fetchall()
        pick = [rules[i] for i in rng.choice(len(rules), size=min(100, len(rules)), replace=False)]
        by_id, by_contour, scan = [], [], []
        pitch = notes["pitch"].astype(np.int64)
        ts = notes["track_starts"]
        d = np.diff(pitch)
        d_ok = np.ones(len(d), np.bool_)
        d_ok[ts[1:-1] - 1] = False  # no interval across tracks
        n_hits_db = n_hits_scan = 0
        for rid, iv in pick:
            t = time.perf_counter()
            rows = con.execute("SELECT piece_id, track_index, onset_s, first_pitch FROM occurrences "
                               "WHERE rule_id = ?", [rid]).fetchall()
            by_id.append(time.perf_counter() - t)
            n_hits_db += len(rows)
            t = time.perf_counter()
            con.execute("SELECT rule_id, count FROM rules WHERE intervals = ?::SMALLINT[]", [iv]).fetchall()
            by_contour.append(time.perf_counter() - t)
            if len(scan) < 20:
                t = time.perf_counter()
                m = d_ok[: len(d) - len(iv) + 1].copy()
                for j, x in enumerate(iv):
                    m &= (d[j: len(d) - len(iv) + 1 + j] == x) & d_ok[j: len(d) - len(iv) + 1 + j]
                n_hits_scan += int(m.sum())
                scan.append(time.perf_counter() - t)
        con.close()

    def ms(x):
        return f"median {1e3 * statistics.median(x):.2f} ms, p95 {1e3 * np.percentile(x, 95):.2f} ms"

    print(f"occurrences of a rule by id ({len(by_id)} rules): {ms(by_id)}")
    print(f"rules with a given contour (intervals = [...]): {ms(by_contour)}")
    print(f"baseline, NumPy scan of all {notes['n']:,} notes for the contour ({len(scan)} queries): {ms(scan)}"
          f"  -> by-id lookup {statistics.median(scan) / statistics.median(by_id):.1f}x faster")


def _add_one(db_dir, new_file, stage_names) -> dict[str, float]:
    """Store ``new_file`` (no stages), then run each stage on it; seconds per stage."""
    from ingest.derived import run_stages
    from ingest.pipeline import ingest_paths

    ingest_paths([str(new_file)], db_dir, workers=1, derive=False)
    out = {}
    for name in stage_names:
        t = time.perf_counter()
        run_stages(db_dir, only=[name])
        out[name] = time.perf_counter() - t
    return out


def bench_incremental(pop_dir: Path, n_pieces: int, repeats: int, generated: int = 0) -> None:
    import shutil

    from ingest.derived import run_stages
    from ingest.pipeline import ingest_paths

    folders = sorted(p for p in pop_dir.iterdir() if p.is_dir())
    held_out = folders[-1]
    new_file = sorted(held_out.glob("*.mid"))[0]
    paths = [p for f in folders[:-1] for p in sorted(f.glob("**/*.mid"))][:n_pieces]
    stage_names = ["grammar", "patterns"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if generated:
            from benchmarks.ingest_scale import write_pieces

            paths = write_pieces(tmp / "generated", 0, generated, 0)  # folders of generated files
        _add_one(tmp / "warm", new_file, stage_names)  # imports, numba cache, schema
        live = tmp / "live"
        t = time.perf_counter()
        s = ingest_paths([str(p) for p in paths], live, workers=1, derive=False)
        t_store = time.perf_counter() - t
        build = {}
        for name in stage_names:
            t = time.perf_counter()
            run_stages(live, only=[name])
            build[name] = time.perf_counter() - t
        n_live = generated or len(paths)
        print(f"live database: {n_live} files, {s.notes_added:,} notes; store {t_store:.1f} s, "
              + ", ".join(f"{k} {v:.1f} s" for k, v in build.items()))
        print(f"adding {new_file.relative_to(pop_dir)} (best of {repeats}):")
        best = {"empty": {}, "live": {}}
        for _ in range(repeats):
            for label in ("empty", "live"):
                db = tmp / f"add_{label}"
                shutil.rmtree(db, ignore_errors=True)
                if label == "live":
                    shutil.copytree(live, db)
                    # else the add's first checkpoint writes out the copy's dirty pages
                    # (0.2 s at 10k pieces), which says nothing about the add
                    os.sync()
                for k, v in _add_one(db, new_file, stage_names).items():
                    best[label][k] = min(best[label].get(k, float("inf")), v)
        for k in stage_names:
            e, li = best["empty"][k], best["live"][k]
            print(f"  {k:<10} empty {e:6.3f} s   live ({n_live} pieces) {li:6.3f} s   ratio {li / e:5.2f}x")
        e, li = sum(best["empty"].values()), sum(best["live"].values())
        print(f"  {'both':<10} empty {e:6.3f} s   live ({n_live} pieces) {li:6.3f} s   ratio {li / e:5.2f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pop909", default=str(ROOT.parent / "shared" / "data" / "pop909-dev"))
    ap.add_argument("--music21-cache", default=str(Path.home() / ".cache" / "harmony-atlas" / "bench_music21"))
    ap.add_argument("--no-lookup", action="store_true", help="Skip the database lookup part.")
    ap.add_argument("--no-compression", action="store_true", help="Skip the compression part (xz is slow).")
    ap.add_argument("--incremental", action="store_true",
                    help="Only measure adding one file to a live database against an empty one.")
    ap.add_argument("--pieces", type=int, default=1000, help="Files in the live database (--incremental).")
    ap.add_argument("--repeats", type=int, default=3, help="Adds per database (--incremental); best is shown.")
    ap.add_argument("--generated", type=int, default=0,
                    help="Live database of this many generated pieces instead of POP909 files (--incremental).")
    args = ap.parse_args()
    if args.incremental:
        bench_incremental(Path(args.pop909), args.pieces, args.repeats, args.generated)
        return
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    print(f"cores available: {cores}; grammar core is single-threaded NumPy + numba")

    pop_paths = sorted(Path(args.pop909).glob("*/**/*.mid"))
    from ingest.demo_corpus import build_demo_corpus

    m21_paths, failures = build_demo_corpus(args.music21_cache, workers=2)
    t = time.perf_counter()
    pop, pop_raw = load(pop_paths)
    m21, m21_raw = load(m21_paths)
    print(f"parsed {len(pop)} POP909 files and {len(m21)} music21 files in {time.perf_counter() - t:.1f} s")
    pop_notes = grammar.notes_from_tables(pop)
    m21_notes = grammar.notes_from_tables(m21)
    both_notes = grammar.notes_from_tables(  # fresh piece ids: both corpora numbered from 0
        [{**p, "notes": p["notes"].set_column(0, "piece_id", pa.array([f"{k:06d}"] * p["notes"].num_rows))}
         for k, p in enumerate(pop + m21)])
    build_once(prefix(pop_notes, 5000))  # compile numba functions outside the timings

    print("\n== build speed ==")
    g_pop, s_pop = bench_build("pop909-dev", pop_notes)
    g_m21, s_m21 = bench_build("music21 corpus", m21_notes)
    bench_build("pop909-dev + music21", both_notes)
    sub = prefix(pop_notes, 100_000)
    dt_ours, g1, s1, _ = build_once(sub)
    dt_base, g0, s0, _ = build_once(sub, ratio=1.0)
    print(f"baseline classic Re-Pair (one count level per round) on {sub['n']:,} notes: {dt_base:.2f} s,"
          f" grammar size {2 * g0.n_rules + len(s0):,} symbols; ours {dt_ours:.2f} s"
          f" ({dt_base / dt_ours:.1f}x faster), grammar size {2 * g1.n_rules + len(s1):,} symbols"
          f" ({(2 * g1.n_rules + len(s1)) / (2 * g0.n_rules + len(s0)) - 1:+.1%})")

    if not args.no_compression:
        print("\n== compression ==")
        bench_compression("pop909-dev", pop_notes, pop_raw, pop, g_pop, s_pop)
        bench_compression("music21 corpus", m21_notes, m21_raw, m21, g_m21, s_m21)

    if not args.no_lookup:
        print("\n== lookup latency (DuckDB, POP909 dev grammar) ==")
        bench_lookup(pop_paths, pop_notes)


if __name__ == "__main__":
    main()
