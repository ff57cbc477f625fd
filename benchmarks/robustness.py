"""Fuzzing `atlas ingest`: N damaged MIDI files and M damaged audio files, ingested in
several runs into one database, then every invariant checked.

    .venv/bin/python benchmarks/robustness.py [--midi 2000] [--audio 211] [--seed 0] [--work DIR]
    .venv/bin/python benchmarks/robustness.py --code /tmp/old   # the same files through another checkout

Damage: bit flips, truncation, corrupt chunk lengths, huge delta times with 1 tick per
beat, absurd tempos and time/key signatures, well-formed extremes (a note held ~240,000
beats, thousands of 128-note chords, zero-length notes, notes never ended), spliced and
random files; WAV/FLAC with
corrupt headers, absurd float samples (1e38, NaN, inf) and absurd sample rates; odd file
names (not UTF-8, newlines, tabs, 200 characters, a leading dash) and things that are not
regular files (FIFOs, a folder named x.mid, dangling and looping symlinks).

Prints, per damage kind, how many files were stored / refused, and then the counts that
must all be 0: crashed runs (exit status not 0/1, a signal, or a hang past the time
limit), tracebacks, files with neither a stored piece nor an ingest_errors row, partial
rows (notes without their piece, a piece whose note count disagrees with its notes, a
piece missing a derived stage without a derived_failures row), and reasons that only say
"unexpected parser error". Exit status 1 if any of them is not 0.
"""

from __future__ import annotations

import argparse
import io
import os
import struct
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atlas_db.connection import reading  # noqa: E402
from ingest.sources import stored_path  # noqa: E402

POP909 = Path(os.environ.get("ATLAS_POP909", ROOT.parent / "shared" / "data" / "pop909-dev"))
RUN_TIMEOUT_S = 1800  # one `atlas ingest` run over a few hundred files; past it, a hang


# ---- damaged MIDI -------------------------------------------------------------------

def _vlq(n: int) -> bytes:
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def _smf(tpq: int, events: bytes) -> bytes:
    return (b"MThd" + struct.pack(">IHHH", 6, 0, 1, tpq)
            + b"MTrk" + struct.pack(">I", len(events)) + events)


def _chunk_offsets(b: bytes) -> list[int]:
    return [i for i in range(len(b) - 8) if b[i : i + 4] in (b"MThd", b"MTrk")]


def _flip_bits(b: bytearray, rng, most: int) -> bytearray:
    for _ in range(int(rng.integers(1, most))):
        i = int(rng.integers(len(b)))
        b[i] ^= 1 << int(rng.integers(8))
    return b


def midi_damage(kind: str, seed_bytes: bytes, other: bytes, rng) -> bytes:
    b = bytearray(seed_bytes)
    if kind == "bitflip":
        b = _flip_bits(b, rng, 40)
    elif kind == "truncate":
        b = b[: int(rng.integers(0, len(b)))]
    elif kind == "chunk_length":
        offs = _chunk_offsets(bytes(b))
        i = offs[int(rng.integers(len(offs)))] + 4
        value = int(rng.choice([0, 1, 5, 0xFFFFFFFF, 0x7FFFFFFF, len(b), int(rng.integers(0, 2**32))]))
        b[i : i + 4] = value.to_bytes(4, "big")
    elif kind == "huge_delta":
        ev = bytearray()
        for k in range(int(rng.integers(1, 6))):
            ev += _vlq(int(rng.choice([0, 1, 2**21, 2**27 - 1, int(rng.integers(0, 2**28))]))) + bytes([0x90, 60 + k, 64])
            ev += _vlq(int(rng.choice([1, 2**27 - 1, int(rng.integers(0, 2**28))]))) + bytes([0x80, 60 + k, 0])
        ev += b"\x00\xff\x2f\x00"
        b = bytearray(_smf(int(rng.choice([1, 2, 96, 0x7FFF])), bytes(ev)))
    elif kind == "absurd_meta":
        ev = bytearray()
        meta = int(rng.choice([0x51, 0x58, 0x59, 0x03, 0x7F]))
        if meta == 0x51:
            payload = bytes(rng.choice([[0, 0, 0], [0, 0, 1], [255, 255, 255], list(rng.integers(0, 256, 3))]))
        elif meta == 0x58:
            payload = bytes([int(rng.integers(0, 256)), int(rng.choice([0, 7, 8, 31, 255])), 24, 8])
        elif meta == 0x59:
            payload = bytes([int(rng.integers(0, 256)), int(rng.integers(0, 256))])
        else:
            payload = bytes(rng.integers(0, 256, int(rng.integers(0, 3000))).astype(np.uint8))
        ln = len(payload) if rng.random() < 0.7 else int(rng.integers(0, 2**21))
        ev += b"\x00\xff" + bytes([meta]) + _vlq(ln) + payload
        ev += b"\x00\x90\x3c\x40\x60\x80\x3c\x00\x00\xff\x2f\x00"
        b = bytearray(_smf(int(rng.choice([1, 480, 0x7FFF])), bytes(ev)))
    elif kind == "extreme":  # well-formed, but at the edges of what the derived stages accept
        variant = int(rng.integers(0, 5))
        ev = bytearray()
        if variant == 0:  # one note held for ~240,000 beats (just under the limit)
            ev += b"\x00\x90\x3c\x40" + _vlq(int(rng.integers(200_000, 249_000))) + b"\x80\x3c\x00"
        elif variant == 1:  # 128-note chords, many times
            for _ in range(int(rng.integers(100, 1500))):
                ev += b"".join(b"\x00\x90" + bytes([p, 64]) for p in range(128))
                ev += b"\x01\x80\x00\x00" + b"".join(b"\x00\x80" + bytes([p, 0]) for p in range(1, 128))
        elif variant == 2:  # zero-length notes at the extreme pitches
            for p in rng.integers(0, 128, 500):
                ev += b"\x00\x90" + bytes([int(p), 1]) + b"\x00\x80" + bytes([int(p), 0])
        elif variant == 3:  # a few notes far apart
            for p in rng.integers(0, 128, 40):
                ev += _vlq(int(rng.integers(0, 6000))) + b"\x90" + bytes([int(p), 100]) + b"\x01\x80" + bytes([int(p), 0])
        else:  # notes never ended
            for p in rng.integers(0, 128, 300):
                ev += _vlq(int(rng.integers(0, 50))) + b"\x90" + bytes([int(p), 100])
        ev += b"\x00\xff\x2f\x00"
        b = bytearray(_smf(int(rng.choice([1, 4, 480, 0x7FFF])), bytes(ev)))
    elif kind == "splice":
        cut_a, cut_b = int(rng.integers(len(b))), int(rng.integers(len(other)))
        b = b[:cut_a] + other[cut_b:]
    elif kind == "random":
        b = bytearray(b"MThd" + bytes(rng.integers(0, 256, int(rng.integers(0, 4000))).astype(np.uint8)))
    return bytes(b)


MIDI_KINDS = ["bitflip", "truncate", "chunk_length", "huge_delta", "absurd_meta", "extreme", "splice", "random"]


# ---- damaged audio ------------------------------------------------------------------

def _tone(rng, seconds: float, sr: int) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    f = 110.0 * 2 ** (int(rng.integers(0, 36)) / 12)
    return (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32)


def audio_damage(kind: str, rng) -> tuple[bytes, str]:
    import soundfile as sf

    sr = 22050
    y = _tone(rng, float(rng.uniform(1.2, 3.0)), sr)
    buf = io.BytesIO()
    if kind == "float_absurd":
        y = y.copy()
        idx = rng.integers(0, len(y), int(rng.integers(1, len(y))))
        y[idx] = np.float32(rng.choice([1e38, -3e38, np.nan, np.inf, 1e6, 40.0]))
        sf.write(buf, y, sr, format="WAV", subtype="FLOAT")
        return buf.getvalue(), ".wav"
    if kind == "flac_bitflip":
        sf.write(buf, y, sr, format="FLAC")
        return bytes(_flip_bits(bytearray(buf.getvalue()), rng, 30)), ".flac"
    sf.write(buf, y, sr, format="WAV", subtype=str(rng.choice(["PCM_16", "FLOAT"])))
    b = bytearray(buf.getvalue())
    if kind == "bitflip":
        b = _flip_bits(b, rng, 60)
    elif kind == "truncate":
        b = b[: int(rng.integers(0, len(b)))]
    elif kind == "header":
        field = int(rng.choice([4, 22, 24, 28, 32, 34, 40]))  # RIFF size, channels, rate, byte rate, align, bits, data size
        width = 2 if field in (22, 32, 34) else 4
        value = int(rng.choice([0, 1, 2**(8 * width) - 1, int(rng.integers(0, 2**(8 * width)))]))
        b[field : field + width] = value.to_bytes(width, "little")
    elif kind == "random":
        b = bytearray(b"RIFF" + bytes(rng.integers(0, 256, int(rng.integers(0, 20000))).astype(np.uint8)))
    return bytes(b), ".wav"


AUDIO_KINDS = ["bitflip", "truncate", "header", "float_absurd", "flac_bitflip", "random"]


# ---- names and special files ------------------------------------------------------------

def odd_name(i: int, rng, suffix: str) -> bytes:
    style = int(rng.integers(0, 10))
    stem = f"f{i:05d}".encode()
    if style == 0:
        stem += b"\xff\xfe latin-1 \xe9"  # not UTF-8
    elif style == 1:
        stem += b"\nsecond line"
    elif style == 2:
        stem += b"\ttab and \x1b escape"
    elif style == 3:
        stem = b"-" + stem  # looks like an option
    elif style == 4:
        stem += b"_" + b"x" * 200
    elif style == 5:
        stem += " ünïcödé 音楽".encode()
    elif style == 6:
        suffix = suffix.upper()
    return stem + suffix.encode()


def make_specials(folder: Path) -> int:
    os.mkfifo(folder / "fifo.mid")
    os.mkfifo(folder / "fifo.wav")
    (folder / "folder.mid").mkdir()
    os.symlink(folder / "nowhere.mid", folder / "dangling.mid")
    os.symlink(folder / "loop_b.mid", folder / "loop_a.mid")
    os.symlink(folder / "loop_a.mid", folder / "loop_b.mid")
    return 5  # entries that are files by name (the folder named .mid is walked into, not read)


# ---- the run -------------------------------------------------------------------------

def build(work: Path, n_midi: int, n_audio: int, seed: int) -> tuple[list[Path], dict[bytes, str]]:
    rng = np.random.default_rng(seed)
    seeds = sorted(POP909.glob("*/*.mid"))[:40] + sorted(POP909.glob("*/versions/*.mid"))[:40]
    if not seeds:
        sys.exit(f"no seed MIDI files under {POP909} (set ATLAS_POP909)")
    seed_bytes = [p.read_bytes() for p in seeds]
    kinds: dict[bytes, str] = {}
    n_chunks = max(1, (n_midi + n_audio) // 400)
    chunks = [work / "in" / f"run{c}" for c in range(n_chunks)]
    for c in chunks:
        c.mkdir(parents=True)
    for i in range(n_midi):
        kind = MIDI_KINDS[i % len(MIDI_KINDS)]
        a, b = (seed_bytes[int(j)] for j in rng.integers(0, len(seed_bytes), 2))
        name = bytes(chunks[i % n_chunks]) + b"/" + odd_name(i, rng, ".mid")
        with open(name, "wb") as fh:
            fh.write(midi_damage(kind, a, b, rng))
        kinds[name] = "midi " + kind
    if n_audio:
        for i in range(n_audio):
            kind = AUDIO_KINDS[i % len(AUDIO_KINDS)]
            data, suffix = audio_damage(kind, rng)
            name = bytes(chunks[i % n_chunks]) + b"/" + odd_name(n_midi + i, rng, suffix)
            with open(name, "wb") as fh:
                fh.write(data)
            kinds[name] = "audio " + kind
    make_specials(chunks[0])
    return chunks, kinds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--midi", type=int, default=2000)
    ap.add_argument("--audio", type=int, default=211)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="empty or new folder (default: a temporary one)")
    ap.add_argument("--code", default=str(ROOT),
                    help="checkout whose `atlas ingest` is fuzzed (default: this one), e.g. an older commit's worktree")
    args = ap.parse_args()
    if args.audio:
        try:
            import essentia  # noqa: F401
            import soundfile  # noqa: F401
        except ImportError:
            print("audio extra not installed: fuzzing MIDI only", file=sys.stderr)
            args.audio = 0
    import tempfile

    work = Path(args.work or tempfile.mkdtemp(prefix="atlas-fuzz-"))
    work.mkdir(parents=True, exist_ok=True)
    if any(work.iterdir()):
        sys.exit(f"{work}: not empty")
    t0 = time.perf_counter()
    chunks, kinds = build(work, args.midi, args.audio, args.seed)
    print(f"built {len(kinds)} damaged files (+5 special entries) in {time.perf_counter() - t0:.1f} s under {work}")
    db = work / "db"
    crashed, tracebacks, runs_s = 0, 0, []
    for c in chunks:
        t = time.perf_counter()
        try:
            r = subprocess.run([sys.executable, "-m", "query.cli", "ingest", str(c), "--db", str(db)], cwd=args.code,
                               capture_output=True, text=True, timeout=RUN_TIMEOUT_S, errors="backslashreplace")
            runs_s.append(time.perf_counter() - t)
            if r.returncode not in (0, 1):
                crashed += 1
                print(f"  run {c.name}: exit status {r.returncode}: {r.stderr.strip().splitlines()[-1:]}")
            if "Traceback" in r.stderr:
                tracebacks += 1
                print(r.stderr[r.stderr.index("Traceback"):][:3000])
        except subprocess.TimeoutExpired:
            crashed += 1
            print(f"  run {c.name}: no end after {RUN_TIMEOUT_S} s (a hang)")
    with reading(db) as con:
        stored = {r[0] for r in con.execute("SELECT path FROM piece_paths").fetchall()}
        errors = dict(con.execute("SELECT path, reason FROM ingest_errors").fetchall())
        orphan = con.execute("SELECT count(*) FROM notes WHERE piece_id NOT IN (SELECT piece_id FROM pieces)").fetchone()[0]
        orphan += con.execute("SELECT count(*) FROM tracks WHERE piece_id NOT IN (SELECT piece_id FROM pieces)").fetchone()[0]
        miscounted = con.execute("""SELECT count(*) FROM pieces p LEFT JOIN (SELECT piece_id, count(*) AS n FROM notes
                                    GROUP BY ALL) c USING (piece_id) WHERE p.n_notes <> coalesce(c.n, 0)""").fetchone()[0]
        stages = [r[0] for r in con.execute("SELECT DISTINCT stage FROM derived_runs").fetchall()]
        con.execute("CREATE TEMP TABLE IF NOT EXISTS no_failures (stage VARCHAR, piece_id VARCHAR, reason VARCHAR)")
        failures = "derived_failures" if con.execute(  # an older checkout has no such table
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'derived_failures'").fetchone()[0] else "no_failures"
        unfinished = con.execute(f"""SELECT count(*) FROM pieces p, (SELECT unnest(?) AS stage) s
             WHERE NOT EXISTS (SELECT 1 FROM derived_runs r WHERE r.piece_id = p.piece_id AND r.stage = s.stage)
               AND NOT EXISTS (SELECT 1 FROM {failures} f WHERE f.piece_id = p.piece_id AND f.stage = s.stage)""",
                                 [stages]).fetchone()[0]
        stage_failures = con.execute(f"SELECT stage, reason FROM {failures}").fetchall()
    table: dict[str, Counter] = defaultdict(Counter)
    missing = 0
    for name, kind in kinds.items():
        path = stored_path(os.fsdecode(name))
        if path in stored:
            table[kind]["stored"] += 1
        elif path in errors:
            table[kind]["refused"] += 1
        else:
            missing += 1
            if missing <= 10:
                print(f"  no row for {path!r} ({kind})")
    special_rows = sum(1 for p in errors if Path(p).name.startswith(("fifo.", "dangling", "loop_")))
    unclear = [r for r in errors.values() if r.startswith("unexpected")]
    print(f"\n{'damage':<20}{'files':>7}{'stored':>8}{'refused':>9}")
    for kind in sorted(table):
        c = table[kind]
        print(f"{kind:<20}{sum(c.values()):>7}{c['stored']:>8}{c['refused']:>9}")
    print(f"special entries (FIFOs, dangling and looping symlinks) with an error row: {special_rows} of 5")
    print(f"pieces a derived stage recorded as failed (isolated, the rest went on): {len(stage_failures)}"
          + (f", e.g. {stage_failures[0]}" if stage_failures else ""))
    reasons = Counter(r.split(":")[0].split(" (")[0][:60] for r in errors.values())
    print("most common reasons: " + "; ".join(f"{k} ({v})" for k, v in reasons.most_common(8)))
    print(f"ingest runs: {len(runs_s)}, {sum(runs_s):.0f} s in all")
    must_be_zero = {
        "crashed or hung runs": crashed,
        "tracebacks": tracebacks,
        "files with no row": missing + (5 - special_rows),
        "partial rows": orphan + miscounted + unfinished,
        "unclear reasons (unexpected parser error)": len(unclear),
    }
    print()
    for k, v in must_be_zero.items():
        print(f"{k:<45}{v:>6}")
    for r in unclear[:10]:
        print(f"  unclear: {r}")
    return 1 if any(must_be_zero.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
