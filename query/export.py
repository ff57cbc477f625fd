"""Rebuilding a Standard MIDI File from the stored tables (``atlas export``).

Lossless at note level: every note's pitch, onset tick, duration tick, velocity and
channel, each track's index, name and program changes, and the tempo map and
signatures come back as stored. Re-parsing the written file yields the same ``notes``
table (tested over all of pop909-dev).

Why the event order below: the parser pairs a note-off with the *earliest* open note of
the same channel and pitch (FIFO). Stored notes come out of that pairing, so for one
(channel, pitch) their end times rise with their onsets; writing, at each tick, the
note-offs of earlier notes, then program changes, then note-ons, then the note-offs of
zero-length notes makes FIFO pair every note-off with its own note again.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from atlas_db.connection import reading
from atlas_db.errors import BadInputError

__all__ = ["NoSuchPieceError", "resolve_piece", "stored_id_of_file", "midi_bytes", "export_piece"]


class NoSuchPieceError(BadInputError):
    """No stored piece has this id, id prefix or path (a prefix too short or shared by
    several pieces is a plain ``BadInputError``: it says what to type instead)."""


def resolve_piece(con, piece: str) -> str:
    """A piece id from an id, a unique id prefix (>= 6 hex digits) or a path it was
    ingested from."""
    # fetchall, not fetchone: DuckDB 2 refuses the caller's next con.sql() while a result
    # is left unfinished
    from ingest.sources import stored_path, utf8_text

    typed, piece = piece, utf8_text(piece)  # a name that is not UTF-8 as stored (\xNN)
    rows = con.execute("SELECT piece_id FROM pieces WHERE piece_id = ?", [piece]).fetchall()
    if rows:
        return rows[0][0]
    # as stored (absolute since 2026-12-05, as typed before), or through links resolved
    candidates = {piece, stored_path(typed), stored_path(str(Path(typed).resolve()))} if piece else set()
    for cand in candidates:
        rows = con.execute(
            "SELECT piece_id FROM piece_paths WHERE path = ? UNION SELECT piece_id FROM pieces WHERE path = ? LIMIT 1",
            [cand, cand],
        ).fetchall()
        if rows:
            return rows[0][0]
    hex_digits = bool(piece) and all(c in "0123456789abcdef" for c in piece.lower())
    if hex_digits and len(piece) < 6:  # 3-5 digits would often name several of thousands of pieces
        raise BadInputError(f"{piece}: no such piece id; an id prefix needs at least 6 of its 16 digits")
    if len(piece) >= 6 and hex_digits:
        rows = con.execute(
            "SELECT piece_id FROM pieces WHERE piece_id LIKE ? LIMIT 2", [piece.lower() + "%"]
        ).fetchall()
        if len(rows) == 1:
            return rows[0][0]
        if len(rows) > 1:
            raise BadInputError(f"{piece}: more than one piece id starts with this; give more digits")
    from ingest.sources import SUFFIXES

    if str(piece).lower().endswith(SUFFIXES) and not Path(typed).exists():
        raise NoSuchPieceError(f"{piece}: no such file (and no piece was ingested from that path)")
    raise NoSuchPieceError(f"{piece}: no such piece (give a piece id or a path that was ingested)")


def stored_id_of_file(con, path) -> str | None:
    """The id of the stored piece with this file's bytes, or None (also when the file
    cannot be read: its own reading then says why). By content, not by path: a file
    changed since it was ingested is not its old stored piece, and a copy of a stored
    file anywhere is."""
    from ingest.pipeline import file_piece_id

    try:
        pid = file_piece_id(path)
    except (OSError, ValueError):
        return None
    return pid if con.execute("SELECT 1 FROM pieces WHERE piece_id = ?", [pid]).fetchall() else None


def _vlq(n: int) -> bytes:
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    return bytes(reversed(out))


def _meta(mtype: int, payload: bytes) -> bytes:
    return bytes([0xFF, mtype]) + _vlq(len(payload)) + payload


def _track_chunk(events: list[tuple[int, bytes]], head: bytes = b"") -> bytes:
    """An MTrk chunk of events (tick, raw event bytes) already in order, after ``head``
    (events at tick 0, already encoded), closed by the end-of-track event."""
    ticks = np.asarray([e[0] for e in events], np.int64)
    body = head + _encode_events(ticks, np.arange(ticks.size), ticks.size, [e[1] for e in events],
                                 np.zeros((0, 3), np.uint8))
    return _chunk(body)


def _chunk(body: bytes) -> bytes:
    """An MTrk chunk of a track's encoded events, closed by the end-of-track event."""
    body += _vlq(0) + b"\xff\x2f\x00"
    return b"MTrk" + len(body).to_bytes(4, "big") + body


def midi_bytes(con, piece_id: str) -> bytes:
    """The SMF bytes rebuilt from the database for one piece."""
    piece = con.execute(
        "SELECT midi_format, ticks_per_beat, n_tracks, kind FROM pieces WHERE piece_id = ?", [piece_id]
    ).fetchone()
    if piece is None:
        raise BadInputError(f"{piece_id}: no such piece")
    fmt, tpq, n_tracks, kind = piece
    if tpq is None:  # audio pieces: their transcribed notes are stored in beats at 480 tpq
        fmt, tpq = 1, 480
    fmt = 1 if fmt is None else fmt
    tracks = con.execute(
        "SELECT track_index, name FROM tracks WHERE piece_id = ? ORDER BY track_index", [piece_id]
    ).fetchall()
    n_tracks = max([n_tracks or 0] + [t[0] + 1 for t in tracks])
    names = {t[0]: t[1] or "" for t in tracks}

    # Track 0 carries the tempo map and signatures (where a format-1 file keeps them).
    # Events other than notes, as (track, tick, order, raw bytes); at one tick the order
    # key (the module's docstring) sorts them, and their ties stay in the order of this list.
    other: list[tuple[int, int, int, bytes]] = []
    for t, us in con.execute(
        "SELECT time_ticks, us_per_beat FROM tempo_changes WHERE piece_id = ? ORDER BY time_ticks", [piece_id]
    ).fetchall():
        other.append((0, t, 0, _meta(0x51, int(us).to_bytes(3, "big"))))
    for t, num, den in con.execute(
        "SELECT time_ticks, numerator, denominator FROM time_signatures WHERE piece_id = ? ORDER BY time_ticks",
        [piece_id],
    ).fetchall():
        other.append((0, t, 0, _meta(0x58, bytes([num, int(den).bit_length() - 1, 24, 8]))))
    for t, sf, mode in con.execute(
        "SELECT time_ticks, sharps_flats, mode FROM key_signatures WHERE piece_id = ? ORDER BY time_ticks",
        [piece_id],
    ).fetchall():
        other.append((0, t, 0, _meta(0x59, bytes([sf & 0xFF, 1 if mode == "minor" else 0]))))
    for tr, ch, t, prog in con.execute(
        "SELECT track_index, channel, time_ticks, program FROM program_changes WHERE piece_id = ?", [piece_id]
    ).fetchall():
        other.append((tr, t, 1, bytes([0xC0 | ch, prog])))

    notes = con.execute(
        """SELECT track_index, note_index, onset_ticks, duration_ticks, pitch, velocity, channel
           FROM notes WHERE piece_id = ? ORDER BY track_index, note_index""",
        [piece_id],
    ).fetchnumpy()
    # each note's on and off, the notes in order (on, off, on, off, ...: [n, 2] raveled)
    on = notes["onset_ticks"].astype(np.int64)
    off = on + notes["duration_ticks"].astype(np.int64)
    ch = notes["channel"].astype(np.int64)
    tr = notes["track_index"].astype(np.int64)
    idx = notes["note_index"].astype(np.int64)
    n = on.size
    note_raw = np.zeros((n, 2, 3), np.uint8)
    note_raw[:, 0, 0], note_raw[:, 1, 0] = 0x90 | ch, 0x80 | ch
    note_raw[:, :, 1] = notes["pitch"].astype(np.int64)[:, None]
    note_raw[:, 0, 2] = notes["velocity"].astype(np.int64)
    ev_track = np.concatenate([np.asarray([e[0] for e in other], np.int64), np.repeat(tr, 2)])
    ev_tick = np.concatenate([np.asarray([e[1] for e in other], np.int64), np.stack([on, off], 1).ravel()])
    ev_order = np.concatenate([np.asarray([e[2] for e in other], np.int64),
                               np.stack([np.full(n, 2), np.where(off == on, 3, -1)], 1).ravel()])
    ev_idx = np.concatenate([np.zeros(len(other), np.int64), np.repeat(idx, 2)])
    # sorted by track, tick, order key and note index; ties of the other events as listed
    by = np.lexsort((np.arange(ev_tick.size), ev_idx, ev_order, ev_tick, ev_track))
    raw = [e[3] for e in other]
    n_other = len(other)

    chunks = []
    bounds = np.searchsorted(ev_track[by], np.arange(n_tracks + 1))
    note_raw = note_raw.reshape(-1, 3)
    for t in range(n_tracks):
        sel = by[bounds[t]:bounds[t + 1]]
        head = _vlq(0) + _meta(0x03, names[t].encode("utf-8")) if names.get(t) else b""
        chunks.append(_chunk(head + _encode_events(ev_tick[sel], sel, n_other, raw, note_raw)))
    header = b"MThd" + (6).to_bytes(4, "big") + int(fmt).to_bytes(2, "big") + n_tracks.to_bytes(2, "big") + int(tpq).to_bytes(2, "big")
    return header + b"".join(chunks)


def _encode_events(ticks: np.ndarray, which: np.ndarray, n_other: int, other_raw: list[bytes],
                   note_raw: np.ndarray) -> bytes:
    """A track's events in order as SMF bytes: each one's delta time from the one before
    (from tick 0 for the first) as a variable-length quantity, then its raw bytes.
    ``which``: each event's number, below ``n_other`` an index into ``other_raw``,
    else ``n_other`` + its row of ``note_raw`` (3 bytes each); without a Python step
    per note."""
    if ticks.size == 0:
        return b""
    delta = np.diff(ticks, prepend=0)
    n_vlq = np.ones(delta.size, np.int64)
    for k in range(1, 10):  # 7 bits per byte: up to 63 bits
        n_vlq += delta >= (1 << (7 * k))
    is_note = which >= n_other
    n_raw = np.full(which.size, 3, np.int64)
    n_raw[~is_note] = [len(other_raw[i]) for i in which[~is_note]]
    start = np.concatenate([[0], np.cumsum(n_vlq + n_raw)])
    out = np.zeros(int(start[-1]), np.uint8)
    for j in range(int(n_vlq.max())):  # byte j of each quantity, most significant group first
        has = n_vlq > j
        shift = 7 * (n_vlq[has] - 1 - j)
        out[start[:-1][has] + j] = ((delta[has] >> shift) & 0x7F) | np.where(shift > 0, 0x80, 0)
    at = start[:-1] + n_vlq
    for b in range(3):
        out[at[is_note] + b] = note_raw[which[is_note] - n_other, b]
    for i in np.flatnonzero(~is_note):
        out[at[i]:at[i] + n_raw[i]] = np.frombuffer(other_raw[which[i]], np.uint8)
    return out.tobytes()


def export_piece(db_dir, piece: str, out_path) -> tuple[str, int]:
    """Write the piece (id or ingested path) as a MIDI file, or to standard output when
    ``out_path`` is ``-``; returns (piece_id, bytes written)."""
    to_stdout = str(out_path) == "-"
    out_path = Path(out_path)
    if not to_stdout and not out_path.parent.exists():
        raise BadInputError(f"{out_path}: folder {out_path.parent} does not exist")
    with reading(db_dir) as con:
        pid = resolve_piece(con, piece)
        data = midi_bytes(con, pid)
    if to_stdout:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        try:
            out_path.write_bytes(data)
        except OSError as e:
            if out_path.is_file():  # a partial file is no MIDI file (a device such as /dev/full stays)
                out_path.unlink()
            raise BadInputError(f"{out_path}: cannot write the MIDI file ({e.strerror or e})") from None
    return pid, len(data)
