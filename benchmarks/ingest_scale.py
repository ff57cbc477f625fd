"""Ingest at scale: a real database on disk grown to 1k, 10k and 100k generated pieces;
at each size its ingest time, disk size, peak memory and the cost of adding ONE real
MIDI file to it, next to the same add into an empty database in the same run.

    NUMBA_CACHE_DIR=$HOME/.cache/harmony-atlas/numba nice .venv/bin/python \\
        benchmarks/ingest_scale.py --sizes 1000,10000,100000 --work /tmp/atlas-scale

How the pieces are made: ``piece_bytes(i, seed)`` writes a Standard MIDI File (format 1,
480 ticks per beat) with the encoder of ``atlas export`` (``query.export``; far cheaper
than mido): a conductor track (tempo 70-150 bpm, 4/4) and three parts on channels
0-2 (melody, block chords, bass) over 8-16 bars of a diatonic progression in a random
key, with a random-walk melody of eighths and quarters. Everything comes from
``numpy.random.default_rng((seed, i))``, so piece ``i`` is the same bytes in every run
and every piece is distinct (no two share a content hash). About 140 notes a piece.
They are written to ``WORK/files/NNN/`` (1000 a folder) and ingested with
``ingest.pipeline.ingest_paths``, the path ``atlas ingest`` takes: parse, store and every
derived stage (harmony, grammar, vectors, patterns).

The database is grown, not rebuilt: 1k, then the next 9k added to it, then the next
90k (each step one ``ingest_paths`` of the new folders, in a subprocess of its own so
its peak memory, ``resource.getrusage().ru_maxrss``, is its own). After each step a
subprocess copies the new vectors into Lance and builds the FAISS file (timed; what a
first query would otherwise do), then a fresh subprocess imports everything and warms up
(an add into a scratch database), then times one new real file (a POP909 song, a
different one per size) added to an empty database and then to the live one, and
prints both with each stage's seconds; last, ``atlas ingest`` of one more file in a new
process, into an empty database and into the live one.

Measured figures (1k/10k/100k): docs/scale-out.md.

Each step's results are printed as they come and appended as JSON lines to
``WORK/results.jsonl``; ``--resume`` continues a grown database (skips the sizes
already there); ``--measure-only`` grows nothing and measures the one-file adds on the
database WORK holds (``--repeat N`` times, each with POP909 songs it does not hold yet),
e.g. after a code change:

    NUMBA_CACHE_DIR=$HOME/.cache/harmony-atlas/numba nice .venv/bin/python \\
        benchmarks/ingest_scale.py --work /tmp/atlas-scale --measure-only --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TPB = 480
PER_FOLDER = 1000
POP909 = ROOT.parent / "shared" / "data" / "pop909-dev"
STAGE_NAMES = ("harmony", "grammar", "vectors", "patterns")

# --------------------------------------------------------------------------- pieces

_MAJOR = (0, 2, 4, 5, 7, 9, 11)
_PROGRESSIONS = ((0, 4, 5, 3), (0, 3, 4, 0), (5, 3, 0, 4), (0, 5, 1, 4), (1, 4, 0, 0), (0, 2, 3, 4))


def _track(events: list[tuple[int, bytes]]) -> bytes:
    """An MTrk chunk from (absolute tick, event bytes), stably sorted by tick (the
    encoder `atlas export` writes files with)."""
    from query.export import _track_chunk

    return _track_chunk(sorted(events, key=lambda e: e[0]))


def _notes(ch: int, notes) -> list[tuple[int, bytes]]:
    """note-on/off events of (onset tick, duration ticks, pitch, velocity); offs first at a tick."""
    ev = []
    for on, dur, p, v in notes:
        ev.append((on + dur, bytes((0x80 | ch, p, 0))))
        ev.append((on, bytes((0x90 | ch, p, v))))
    # at equal ticks a note-off must come before the next note-on of the same pitch
    return sorted(ev, key=lambda e: (e[0], e[1][0] & 0xF0 == 0x90))


def piece_bytes(i: int, seed: int = 0) -> bytes:
    """The bytes of generated piece ``i`` (a deterministic function of ``(seed, i)``)."""
    rng = np.random.default_rng((seed, i))
    bars = int(rng.integers(8, 17))
    key = int(rng.integers(0, 12))
    bpm = float(rng.uniform(70, 150))
    prog = _PROGRESSIONS[int(rng.integers(len(_PROGRESSIONS)))]
    bar = 4 * TPB
    melody, chords, bass = [], [], []
    deg = int(rng.integers(0, 7))
    for b in range(bars):
        root_deg = prog[b % len(prog)]
        triad = [_MAJOR[(root_deg + k) % 7] + 12 * ((root_deg + k) // 7) for k in (0, 2, 4)]
        for iv in triad:
            chords.append((b * bar, bar - 10, 48 + key + iv, int(rng.integers(50, 70))))
        bass.append((b * bar, 2 * TPB - 20, 36 + key + triad[0] % 12, 80))
        bass.append((b * bar + 2 * TPB, 2 * TPB - 20, 36 + key + triad[0 if rng.random() < 0.6 else 2] % 12, 75))
        t = b * bar
        while t < (b + 1) * bar:
            step = TPB // 2 if rng.random() < 0.6 else TPB
            deg = int(np.clip(deg + rng.integers(-2, 3), 0, 13))
            pitch = 60 + key + _MAJOR[deg % 7] + 12 * (deg // 7)
            melody.append((t, step - 20, pitch, int(rng.integers(70, 110))))
            t += step
    us = int(round(60_000_000 / bpm))
    conductor = [(0, b"\xff\x51\x03" + us.to_bytes(3, "big")), (0, b"\xff\x58\x04\x04\x02\x18\x08")]
    parts = [(0, 0, melody), (1, 0, chords), (2, 33, bass)]
    tracks = [_track(conductor)]
    for ch, program, notes in parts:
        tracks.append(_track([(0, bytes((0xC0 | ch, program)))] + _notes(ch, notes)))
    header = b"MThd" + struct.pack(">IHHH", 6, 1, len(tracks), TPB)
    return header + b"".join(tracks)


def write_pieces(files_dir: Path, start: int, stop: int, seed: int) -> list[Path]:
    """Write pieces ``start..stop-1``; returns the folders that hold them."""
    folders = []
    for i in range(start, stop):
        folder = files_dir / f"{i // PER_FOLDER:04d}"
        if not folders or folders[-1] != folder:
            folder.mkdir(parents=True, exist_ok=True)
            folders.append(folder)
        (folder / f"piece_{i:06d}.mid").write_bytes(piece_bytes(i, seed))
    return folders


# --------------------------------------------------------------------------- measuring

def disk_bytes(db: Path) -> dict[str, int]:
    def size(p: Path) -> int:
        if p.is_file():
            return p.stat().st_size
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.exists() else 0

    out = {"duckdb": sum(size(f) for f in db.glob("atlas.duckdb*")), "lance": size(db / "lance"),
           "faiss": size(db / "faiss")}
    out["total"] = size(db)
    return out


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _timed_ingest(paths, db) -> dict:
    from ingest.pipeline import ingest_paths

    t0 = time.perf_counter()
    s = ingest_paths([str(p) for p in paths], db, workers=1)
    return {"seconds": time.perf_counter() - t0, "store_s": s.store_seconds, "added": s.added,
            "notes": s.notes_added, "failed": s.failed, "stages_s": dict(s.stage_seconds)}


def step_main(args) -> None:
    """Subprocess: ingest the given folders into the database; print one JSON line."""
    out = _timed_ingest(args.paths, Path(args.db))
    out["peak_rss_mb"] = _peak_mb()
    print(json.dumps(out))


def index_main(args) -> None:
    """Subprocess: copy the new vectors into Lance and build the FAISS file; print seconds."""
    t0 = time.perf_counter()
    import lancedb  # noqa: F401  (timed on its own: what any first opening of Lance pays)

    from indexers.faiss_index import build_from_lance
    from indexers.vectors import sync_lance

    t1 = time.perf_counter()
    written = sync_lance(args.db)
    t2 = time.perf_counter()
    build_from_lance(args.db)
    t3 = time.perf_counter()
    print(json.dumps({"import_s": t1 - t0, "lance_sync_s": t2 - t1, "faiss_s": t3 - t2, "written": written,
                      "peak_rss_mb": _peak_mb()}))


def add_main(args) -> None:
    """Subprocess: warm up, then one real file into an empty database and into the live one."""
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix="atlas-add-", dir="/tmp"))
    try:
        warm = scratch / "warm.mid"
        warm.write_bytes(piece_bytes(10**9, 99))  # imports, numba cache loads, Lance
        _timed_ingest([warm], scratch / "warm")
        empty = _timed_ingest([args.file], scratch / "empty")
        live = _timed_ingest([args.file], Path(args.db))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps({"empty": empty, "live": live, "peak_rss_mb": _peak_mb()}))


def _sub(argv: list[str]) -> dict:
    r = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"subprocess {argv[:2]} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _cli_add(path: Path, db: Path, *, fresh: bool = False) -> float:
    """Seconds of `atlas ingest PATH --db DB` in a new process (imports included);
    ``fresh``: into a new empty database."""
    if fresh:
        shutil.rmtree(db, ignore_errors=True)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "query.cli", "ingest", str(path), "--db", str(db)],
                       capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"atlas ingest failed:\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def _stages(d: dict) -> str:
    st = d.get("stages_s", {})
    return ", ".join([f"store {d['store_s']:.2f}"] + [f"{k} {st[k]:.2f}" for k in STAGE_NAMES if k in st])


def _pieces_in(db: Path) -> int:
    from atlas_db.connection import reading

    if not (db / "atlas.duckdb").exists():
        return 0
    with reading(db) as con:
        return con.execute("SELECT count(*) FROM pieces WHERE path LIKE '%piece_%'").fetchall()[0][0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000,100000", help="comma-separated piece counts, ascending")
    ap.add_argument("--work", default="/tmp/atlas-scale", help="folder for the files and the database")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="keep WORK's database and files; grow from there")
    ap.add_argument("--add-files", default=None,
                    help="comma-separated real MIDI files to add, one per size (default: POP909 songs)")
    ap.add_argument("--measure-only", action="store_true",
                    help="grow nothing: measure the one-file adds on WORK's database as it is")
    ap.add_argument("--repeat", type=int, default=1, help="with --measure-only: how many adds (new files each)")
    sub = ap.add_subparsers(dest="cmd")
    s1 = sub.add_parser("_step")
    s1.add_argument("db")
    s1.add_argument("paths", nargs="+")
    s3 = sub.add_parser("_index")
    s3.add_argument("db")
    s2 = sub.add_parser("_add")
    s2.add_argument("db")
    s2.add_argument("file")
    args = ap.parse_args()
    if args.cmd == "_step":
        return step_main(args)
    if args.cmd == "_add":
        return add_main(args)
    if args.cmd == "_index":
        return index_main(args)

    sizes = [int(x) for x in args.sizes.split(",")]
    work = Path(args.work)
    if work.exists() and not (args.resume or args.measure_only):
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    db, files_dir = work / "db", work / "files"
    if args.add_files:
        adds = [Path(p) for p in args.add_files.split(",")]
    else:
        adds = sorted(POP909.glob("*/*.mid"))[:: max(1, len(list(POP909.glob("*/*.mid"))) // 8)]
    have = _pieces_in(db)
    print(f"work {work}, seed {args.seed}, {os.cpu_count()} cores; database holds {have} generated pieces",
          flush=True)
    log = open(work / "results.jsonl", "a")
    if args.measure_only:
        return measure_only(work, db, have, args.repeat, log)
    for k, n in enumerate(sizes):
        if n <= have:
            continue
        t0 = time.perf_counter()
        folders = write_pieces(files_dir, have, n, args.seed)
        gen_s = time.perf_counter() - t0
        # only the folders holding new pieces: a folder's old pieces are "already present"
        step = _sub(["_step", str(db), *map(str, folders)])
        idx = _sub(["_index", str(db)])
        size = disk_bytes(db)
        rate = step["notes"] / step["seconds"] if step["seconds"] else 0.0
        print(f"\n== {n:,} pieces: grew by {step['added']:,} pieces ({step['notes']:,} notes, written in "
              f"{gen_s:.1f} s) in {step['seconds']:.1f} s ({rate:,.0f} notes/s; {_stages(step)}), "
              f"peak RSS {step['peak_rss_mb']:,.0f} MB", flush=True)
        print(f"   then (a new process) Lance filled from DuckDB in {idx['lance_sync_s']:.1f} s "
              f"({idx['written']}), FAISS file built in {idx['faiss_s']:.1f} s, lancedb import "
              f"{idx['import_s']:.1f} s, peak RSS {idx['peak_rss_mb']:,.0f} MB", flush=True)
        print(f"   disk: total {size['total'] / 1e6:,.1f} MB (DuckDB {size['duckdb'] / 1e6:,.1f}, "
              f"Lance {size['lance'] / 1e6:,.1f}, FAISS {size['faiss'] / 1e6:,.1f})", flush=True)
        add_file = adds[k % len(adds)]
        add = _sub(["_add", str(db), str(add_file)])
        _report_add(add_file, add)
        cli_file = adds[(k + len(sizes)) % len(adds)]
        cli_empty = _cli_add(cli_file, work / "cli-empty", fresh=True)
        cli_live = _cli_add(cli_file, db)
        print(f"   `atlas ingest` of one more file ({cli_file.name}), a new process each: live {cli_live:.2f} s, "
              f"empty {cli_empty:.2f} s ({cli_live / cli_empty:.2f}x)", flush=True)
        log.write(json.dumps({"size": n, "step": step, "gen_s": gen_s, "disk": size, "index": idx,
                              "add_file": str(add_file),
                              "add": add, "cli_file": str(cli_file), "cli_live_s": cli_live,
                              "cli_empty_s": cli_empty}) + "\n")
        log.flush()
        have = n


def _report_add(add_file: Path, add: dict) -> None:
    e, live = add["empty"], add["live"]
    print(f"   one file ({add_file.name}, {live['notes']:,} notes) into the live database: "
          f"{live['seconds']:.2f} s ({_stages(live)})", flush=True)
    print(f"   the same file into an empty database:   {e['seconds']:.2f} s ({_stages(e)})", flush=True)
    print(f"   ratio live / empty: {live['seconds'] / e['seconds']:.2f}x "
          f"(goal <= 1.5x at 1k, <= 1 s absolute at 100k)", flush=True)


def _new_songs(db: Path, n: int) -> list[Path]:
    """``n`` POP909 songs whose content the database does not hold yet."""
    import hashlib

    from atlas_db.store import known_piece_ids
    from ingest.pipeline import piece_id_for

    known = known_piece_ids(db)
    out = []
    for f in sorted(POP909.glob("*/*.mid")):
        if piece_id_for(hashlib.sha256(f.read_bytes()).hexdigest()) not in known:
            out.append(f)
            if len(out) == n:
                return out
    raise SystemExit(f"{POP909}: fewer than {n} songs the database does not hold")


def _upgrade(db: Path) -> None:
    from atlas_db.connection import connect

    connect(db, read_only=False).close()


def measure_only(work: Path, db: Path, have: int, repeat: int, log) -> None:
    """The one-file adds (warmed-up process; `atlas ingest` in a new process) on the
    database as it is, ``repeat`` times with new files each."""
    songs = _new_songs(db, 2 * repeat)
    # a database made by older code is upgraded when it is first opened for writing: do
    # that first, so that the first add does not count it
    t0 = time.perf_counter()
    _upgrade(db)
    print(f"schema up to date ({time.perf_counter() - t0:.2f} s to open the database for writing, "
          "upgrade included)", flush=True)
    for r in range(repeat):
        add_file, cli_file = songs[2 * r], songs[2 * r + 1]
        print(f"\n== {have:,} generated pieces, add {r + 1} of {repeat}", flush=True)
        add = _sub(["_add", str(db), str(add_file)])
        _report_add(add_file, add)
        cli_empty = _cli_add(cli_file, work / "cli-empty", fresh=True)
        cli_live = _cli_add(cli_file, db)
        print(f"   `atlas ingest` of one more file ({cli_file.name}), a new process each: live {cli_live:.2f} s, "
              f"empty {cli_empty:.2f} s ({cli_live / cli_empty:.2f}x)", flush=True)
        log.write(json.dumps({"size": have, "measure_only": True, "add_file": str(add_file), "add": add,
                              "cli_file": str(cli_file), "cli_live_s": cli_live, "cli_empty_s": cli_empty}) + "\n")
        log.flush()


if __name__ == "__main__":
    main()
