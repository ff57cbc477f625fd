"""Standard MIDI File decoding: bytes in, Arrow tables out (notes, tracks, tempo map,
signatures, program changes).

Why our own decoder: symusic is fast but regroups notes by (track, program) and drops
each note's channel and the real track index; mido keeps everything but decodes
~100x slower (see ``benchmarks/ingest.py``). The byte loop below is compiled with numba.

Note pairing: a note-off (or note-on with velocity 0) ends the *earliest* open note of
the same channel and pitch (FIFO, as pretty_midi does); notes still open at the end of
their track end at the track's last event.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
from numba import njit

from atlas_db.errors import IngestError
from atlas_db.schema import TABLES
from ingest.limits import size_problem

__all__ = ["parse_midi", "read_midi_file", "ticks_to_seconds", "MIN_TEMPO_BPM", "MAX_TEMPO_BPM"]

# Tempos outside this range are treated as corrupt rather than music.
MIN_TEMPO_BPM = 1.0
MAX_TEMPO_BPM = 1000.0
DEFAULT_US_PER_BEAT = 500_000  # 120 bpm, the SMF default
MAX_TIME_SIG_EXPONENT = 7  # a denominator of 2^7 = 128 already is beyond notated music

_ERRORS = {
    1: "bad variable-length delta time",
    2: "event cut off by the end of its track chunk",
    3: "meta or sysex event longer than its track chunk",
    4: "system message (0xF1-0xFE) inside a track",
    5: "data byte with no status byte before it",
    6: "data byte >= 0x80 inside a channel message",
}


def meta_text(payload: bytes) -> str:
    """A text meta event (a track name): UTF-8, as today's editors write it, else
    Latin-1 (any byte is a character, so an older file's name is never lost); read as
    Latin-1 alone, a UTF-8 'í' was stored as two characters, 'Ã' and a soft hyphen."""
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return payload.decode("latin-1")


@njit(cache=True, nogil=True)
def _read_vlq(data, pos, end):
    value = 0
    for _ in range(4):
        if pos >= end:
            return -1, pos
        b = data[pos]
        pos += 1
        value = (value << 7) | (b & 0x7F)
        if b < 0x80:
            return value, pos
    return -1, pos


@njit(cache=True, nogil=True)
def _decode_track(data, start, end):
    """Decode one MTrk body into parallel event arrays.

    status: the channel status byte, 0xFF for meta, 0xF0 for sysex.
    d1/d2: channel data bytes; for meta: d1 = meta type, d2 = payload offset, d3 = length.
    """
    n_max = (end - start) // 2 + 2
    ticks = np.empty(n_max, np.int64)
    status = np.empty(n_max, np.int32)
    d1 = np.empty(n_max, np.int32)
    d2 = np.empty(n_max, np.int32)
    d3 = np.empty(n_max, np.int32)
    n = 0
    pos = start
    tick = 0
    running = 0
    err = 0
    while pos < end:
        delta, pos = _read_vlq(data, pos, end)
        if delta < 0:
            err = 1
            break
        tick += delta
        if pos >= end:
            err = 2
            break
        b = data[pos]
        if b == 0xFF:
            if pos + 2 > end:
                err = 2
                break
            mtype = data[pos + 1]
            length, p2 = _read_vlq(data, pos + 2, end)
            if length < 0 or p2 + length > end:
                err = 3
                break
            ticks[n] = tick
            status[n] = 0xFF
            d1[n] = mtype
            d2[n] = p2
            d3[n] = length
            n += 1
            pos = p2 + length
            if mtype == 0x2F:  # end of track
                break
        elif b == 0xF0 or b == 0xF7:
            length, p2 = _read_vlq(data, pos + 1, end)
            if length < 0 or p2 + length > end:
                err = 3
                break
            ticks[n] = tick
            status[n] = 0xF0
            d1[n] = 0
            d2[n] = p2
            d3[n] = length
            n += 1
            pos = p2 + length
            running = 0
        else:
            if b >= 0x80:
                if b >= 0xF0:
                    err = 4
                    break
                running = b
                pos += 1
            elif running == 0:
                err = 5
                break
            hi = running & 0xF0
            nbytes = 1 if (hi == 0xC0 or hi == 0xD0) else 2
            if pos + nbytes > end:
                err = 2
                break
            a = data[pos]
            c = data[pos + 1] if nbytes == 2 else 0
            if a >= 0x80 or c >= 0x80:
                err = 6
                break
            ticks[n] = tick
            status[n] = running
            d1[n] = a
            d2[n] = c
            d3[n] = 0
            n += 1
            pos += nbytes
    return ticks[:n], status[:n], d1[:n], d2[:n], d3[:n], err, pos


@njit(cache=True, nogil=True)
def _pair_notes(ticks, status, d1, d2, end_tick):
    """FIFO note-on/note-off pairing per (channel, pitch). Returns notes in note-on order."""
    n = ticks.shape[0]
    onset = np.empty(n, np.int64)
    offset = np.empty(n, np.int64)
    pitch = np.empty(n, np.int16)
    vel = np.empty(n, np.int16)
    chan = np.empty(n, np.int16)
    nxt = np.empty(n, np.int64)
    head = np.full(16 * 128, -1, np.int64)
    tail = np.full(16 * 128, -1, np.int64)
    m = 0
    for i in range(n):
        s = status[i]
        if s >= 0xF0:
            continue
        hi = s & 0xF0
        if hi != 0x80 and hi != 0x90:
            continue
        ch = s & 0x0F
        key = ch * 128 + d1[i]
        if hi == 0x90 and d2[i] > 0:
            onset[m] = ticks[i]
            offset[m] = -1
            pitch[m] = d1[i]
            vel[m] = d2[i]
            chan[m] = ch
            nxt[m] = -1
            if tail[key] == -1:
                head[key] = m
            else:
                nxt[tail[key]] = m
            tail[key] = m
            m += 1
        else:
            j = head[key]
            if j != -1:
                offset[j] = ticks[i]
                head[key] = nxt[j]
                if head[key] == -1:
                    tail[key] = -1
    for j in range(m):
        if offset[j] < 0:
            offset[j] = end_tick
    return onset[:m], offset[:m] - onset[:m], pitch[:m], vel[:m], chan[:m]


def ticks_to_seconds(
    ticks: np.ndarray, tempo_ticks: np.ndarray, us_per_beat: np.ndarray, ticks_per_beat: int
) -> np.ndarray:
    """Map tick positions to seconds through a tempo map.

    Parameters
    ----------
    ticks : np.ndarray [shape=(n,)], int
    tempo_ticks : np.ndarray [shape=(k,)], int, sorted, ``tempo_ticks[0] == 0``
    us_per_beat : np.ndarray [shape=(k,)], microseconds per quarter note from each change
    ticks_per_beat : int

    Example: at 120 bpm (500000 us) and 480 ticks per beat, tick 960 is 1.0 s.
    """
    us = us_per_beat.astype(np.float64)
    seg_start_s = np.zeros(len(tempo_ticks))
    seg_start_s[1:] = np.cumsum(np.diff(tempo_ticks) * us[:-1]) / (1e6 * ticks_per_beat)
    idx = np.searchsorted(tempo_ticks, ticks, side="right") - 1
    return seg_start_s[idx] + (ticks - tempo_ticks[idx]) * us[idx] / (1e6 * ticks_per_beat)


_KEY_NAMES_MAJOR = ["Cb", "Gb", "Db", "Ab", "Eb", "Bb", "F", "C", "G", "D", "A", "E", "B", "F#", "C#"]
_KEY_NAMES_MINOR = ["Ab", "Eb", "Bb", "F", "C", "G", "D", "A", "E", "B", "F#", "C#", "G#", "D#", "A#"]


def _chunks(data: bytes, path: str):
    """Yield (type, body_start, body_end) for each chunk; raise on truncation."""
    pos = 0
    size = len(data)
    while pos + 8 <= size:
        ctype = data[pos : pos + 4]
        length = int.from_bytes(data[pos + 4 : pos + 8], "big")
        start = pos + 8
        if start + length > size:
            raise IngestError(
                path,
                f"truncated: chunk {ctype!r} at byte {pos} declares {length} bytes "
                f"but only {size - start} remain",
            )
        yield ctype, start, start + length
        pos = start + length
    if pos != size and data[pos:].strip(b"\x00"):
        raise IngestError(path, f"truncated: {size - pos} stray bytes after the last chunk")


def parse_midi(data: bytes, *, piece_id: str, path: str) -> dict[str, pa.Table]:
    """Decode a Standard MIDI File.

    Returns one Arrow table per table name in ``atlas_db.schema.TABLES`` that a MIDI
    file fills: ``pieces`` (one row, without ingest-time columns filled),
    ``tracks``, ``notes``, ``program_changes``, ``tempo_changes``,
    ``time_signatures``, ``key_signatures``.

    Raises
    ------
    IngestError
        with a one-line reason (empty file, not MIDI, truncated, corrupt event,
        SMPTE timing, absurd tempo, no notes).
    """
    if len(data) == 0:
        raise IngestError(path, "empty file (0 bytes)")
    if data[:4] != b"MThd":
        raise IngestError(path, "not a MIDI file (no 'MThd' header)")
    if len(data) < 14:
        raise IngestError(path, "truncated: header chunk is shorter than 14 bytes")
    hdr_len = int.from_bytes(data[4:8], "big")
    fmt = int.from_bytes(data[8:10], "big")
    division = int.from_bytes(data[12:14], "big")
    if hdr_len < 6:
        raise IngestError(path, f"corrupt header: length {hdr_len} < 6")
    if fmt > 2:
        raise IngestError(path, f"unknown MIDI format {fmt} (expected 0, 1 or 2)")
    if division & 0x8000:
        raise IngestError(path, "SMPTE time division is not supported (only ticks per beat)")
    tpq = division
    if tpq == 0:
        raise IngestError(path, "corrupt header: 0 ticks per beat")

    buf = np.frombuffer(data, dtype=np.uint8)
    track_rows = []
    note_parts = []
    prog_parts = []
    tempo_t, tempo_us = [], []
    ts_rows, ks_rows = [], []
    track_index = 0
    for ctype, start, end in _chunks(data, path):
        if ctype == b"MThd":
            continue
        if ctype != b"MTrk":
            continue  # unknown chunks are allowed by the standard and skipped
        ticks, status, d1, d2, d3, err, _ = _decode_track(buf, start, end)
        if err:
            raise IngestError(path, f"corrupt track {track_index}: {_ERRORS[err]}")
        end_tick = int(ticks[-1]) if len(ticks) else 0
        onset, dur, pitch, vel, chan = _pair_notes(ticks, status, d1, d2, end_tick)
        name = ""
        meta = np.flatnonzero(status == 0xFF)
        for i in meta:
            mtype, off, ln, t = int(d1[i]), int(d2[i]), int(d3[i]), int(ticks[i])
            payload = data[off : off + ln]
            if mtype == 0x03 and not name:
                name = meta_text(payload).strip("\x00")
            elif mtype == 0x51:
                if ln != 3:
                    raise IngestError(path, f"corrupt tempo event in track {track_index}")
                tempo_t.append(t)
                tempo_us.append(int.from_bytes(payload, "big"))
            elif mtype == 0x58 and ln >= 2:
                if payload[1] > MAX_TIME_SIG_EXPONENT:
                    raise IngestError(
                        path,
                        f"corrupt time signature in track {track_index} at tick {t}: denominator "
                        f"2^{payload[1]} (expected 2^0-2^{MAX_TIME_SIG_EXPONENT}, i.e. 1-{2 ** MAX_TIME_SIG_EXPONENT})",
                    )
                ts_rows.append((t, payload[0], 2 ** payload[1]))
            elif mtype == 0x59 and ln >= 2:
                sf = int.from_bytes(payload[:1], "big", signed=True)
                mode = "minor" if payload[1] == 1 else "major"
                if -7 <= sf <= 7:
                    names = _KEY_NAMES_MINOR if mode == "minor" else _KEY_NAMES_MAJOR
                    ks_rows.append((t, f"{names[sf + 7]} {mode}", sf, mode))
        pc = np.flatnonzero((status & 0xF0) == 0xC0) if len(status) else np.empty(0, np.int64)
        pc = pc[status[pc] < 0xF0]
        if len(pc):
            prog_parts.append(
                (np.full(len(pc), track_index, np.int32), (status[pc] & 0x0F).astype(np.int16),
                 ticks[pc], d1[pc].astype(np.int16))
            )
        if len(onset):
            note_parts.append((track_index, onset, dur, pitch, vel, chan))
            main_chan = int(np.bincount(chan, minlength=16).argmax())
            progs_main = d1[pc][(status[pc] & 0x0F) == main_chan] if len(pc) else []
            program = int(progs_main[0]) if len(progs_main) else (int(d1[pc][0]) if len(pc) else 0)
            track_rows.append((track_index, name, program, main_chan, main_chan == 9,
                               len(onset), int(pitch.min()), int(pitch.max())))
        else:
            program = int(d1[pc][0]) if len(pc) else 0
            track_rows.append((track_index, name, program, None, False, 0, None, None))
        track_index += 1

    if track_index == 0:
        raise IngestError(path, "no MTrk track chunks")
    n_notes = sum(len(p[1]) for p in note_parts)
    if n_notes == 0:
        raise IngestError(path, "no notes")

    # Tempo map: stable sort by tick, default tempo at tick 0 unless the file sets one.
    order = np.argsort(np.asarray(tempo_t, np.int64), kind="stable")
    t_ticks = np.asarray(tempo_t, np.int64)[order]
    t_us = np.asarray(tempo_us, np.int64)[order]
    if len(t_us):
        bpm = 60e6 / np.maximum(t_us, 1)
        bad = (t_us == 0) | (bpm < MIN_TEMPO_BPM) | (bpm > MAX_TEMPO_BPM)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            shown = "infinite" if t_us[i] == 0 else f"{bpm[i]:.3g}"
            raise IngestError(
                path,
                f"absurd tempo {shown} bpm at tick {t_ticks[i]} "
                f"(accepted: {MIN_TEMPO_BPM:g}-{MAX_TEMPO_BPM:g} bpm)",
            )
    map_ticks, map_us = t_ticks, t_us
    if len(map_ticks) == 0 or map_ticks[0] != 0:
        map_ticks = np.concatenate([[0], map_ticks]).astype(np.int64)
        map_us = np.concatenate([[DEFAULT_US_PER_BEAT], map_us]).astype(np.int64)

    # One pass through the tempo map for every tick position the tables need.
    ts_t = np.asarray([r[0] for r in ts_rows], np.int64)
    ks_t = np.asarray([r[0] for r in ks_rows], np.int64)
    pt = np.concatenate([p[2] for p in prog_parts]) if prog_parts else np.empty(0, np.int64)
    onset = np.concatenate([p[1] for p in note_parts])
    dur = np.concatenate([p[2] for p in note_parts])
    end_ticks = int((onset + dur).max())
    parts = [onset, onset + dur, pt, t_ticks, ts_t, ks_t, np.asarray([end_ticks], np.int64)]
    all_s = ticks_to_seconds(np.concatenate(parts), map_ticks, map_us, tpq)
    bounds = np.cumsum([0] + [len(x) for x in parts])
    onset_s, offset_s, pt_s, tempo_s, ts_s, ks_s, end_s = (
        all_s[bounds[i] : bounds[i + 1]] for i in range(len(parts))
    )

    track_col = np.concatenate([np.full(len(p[1]), p[0], np.int32) for p in note_parts])
    note_index = np.concatenate([np.arange(len(p[1]), dtype=np.int32) for p in note_parts])
    pid = pa.scalar(piece_id, pa.string())

    def const_id(n):
        return pa.repeat(pid, n)

    notes = pa.Table.from_arrays(
        [
            const_id(n_notes),
            track_col,
            note_index,
            onset,
            dur,
            onset / tpq,
            dur / tpq,
            onset_s,
            offset_s - onset_s,
            np.concatenate([p[3] for p in note_parts]),
            np.concatenate([p[4] for p in note_parts]),
            np.concatenate([p[5] for p in note_parts]),
        ],
        schema=TABLES["notes"],
    )
    tracks = pa.Table.from_pylist(
        [dict(zip(TABLES["tracks"].names, (piece_id, *row))) for row in track_rows],
        schema=TABLES["tracks"],
    )
    if prog_parts:
        programs = pa.Table.from_arrays(
            [const_id(len(pt)), np.concatenate([p[0] for p in prog_parts]),
             np.concatenate([p[1] for p in prog_parts]), pt, pt_s,
             np.concatenate([p[3] for p in prog_parts])],
            schema=TABLES["program_changes"],
        )
    else:
        programs = TABLES["program_changes"].empty_table()
    tempos = pa.Table.from_arrays(
        [const_id(len(t_ticks)), t_ticks, tempo_s, 60e6 / np.maximum(t_us, 1), t_us],
        schema=TABLES["tempo_changes"],
    )
    time_sigs = pa.Table.from_arrays(
        [const_id(len(ts_rows)), ts_t, ts_s,
         pa.array([r[1] for r in ts_rows], pa.int16()), pa.array([r[2] for r in ts_rows], pa.int16())],
        schema=TABLES["time_signatures"],
    )
    key_sigs = pa.Table.from_arrays(
        [const_id(len(ks_rows)), ks_t, ks_s, pa.array([r[1] for r in ks_rows], pa.string()),
         pa.array([r[2] for r in ks_rows], pa.int16()), pa.array([r[3] for r in ks_rows], pa.string())],
        schema=TABLES["key_signatures"],
    )
    too_big = size_problem(n_notes, end_ticks / tpq, float(end_s[0]))
    if too_big:
        raise IngestError(path, too_big)
    piece = {
        "piece_id": piece_id,
        "path": path,
        "kind": "midi",
        "title": Path(path).stem,
        "size_bytes": len(data),
        "midi_format": fmt,
        "ticks_per_beat": tpq,
        "n_tracks": track_index,
        "n_notes": n_notes,
        "duration_ticks": end_ticks,
        "duration_beats": end_ticks / tpq,
        "duration_s": float(end_s[0]),
    }
    return {
        "pieces": piece,  # completed into a table row by the store (hash, time, version)
        "tracks": tracks,
        "notes": notes,
        "program_changes": programs,
        "tempo_changes": tempos,
        "time_signatures": time_sigs,
        "key_signatures": key_sigs,
    }


def read_midi_file(path, *, what: str = "MIDI file") -> dict:
    """:func:`parse_midi` for a file given on the command line (a query, a motif) that need
    not be in the database; its ``piece_id`` is its content id, as at ingest.

    Raises BadInputError with one line naming the file and the reason, e.g.
    ``q.mid: not a usable query (truncated: ...)``; ``what`` names the file's role.
    """
    import hashlib

    from atlas_db.errors import BadInputError

    from ingest.sources import read_regular_file

    path = Path(path)
    try:
        data = read_regular_file(path)
    except OSError as e:
        raise BadInputError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    except ValueError as e:  # a FIFO would block the read forever
        raise BadInputError(f"{path}: cannot read the {what} ({e})") from None
    try:
        return parse_midi(data, piece_id=hashlib.sha256(data).hexdigest()[:16], path=str(path))
    except IngestError as e:
        raise BadInputError(f"{path}: not a usable {what} ({e.reason})") from None
