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


def _track_chunk(events: list[tuple[int, bytes]]) -> bytes:
    """events: (tick, raw event bytes) already in order."""
    body = bytearray()
    last = 0
    for tick, raw in events:
        body += _vlq(tick - last)
        body += raw
        last = tick
    body += _vlq(0) + b"\xff\x2f\x00"
    return b"MTrk" + len(body).to_bytes(4, "big") + bytes(body)


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
    events: list[list[tuple[int, int, int, bytes]]] = [[] for _ in range(n_tracks)]

    # Track 0 carries the tempo map and signatures (where a format-1 file keeps them).
    for t, us in con.execute(
        "SELECT time_ticks, us_per_beat FROM tempo_changes WHERE piece_id = ? ORDER BY time_ticks", [piece_id]
    ).fetchall():
        events[0].append((t, 0, 0, _meta(0x51, int(us).to_bytes(3, "big"))))
    for t, num, den in con.execute(
        "SELECT time_ticks, numerator, denominator FROM time_signatures WHERE piece_id = ? ORDER BY time_ticks",
        [piece_id],
    ).fetchall():
        events[0].append((t, 0, 0, _meta(0x58, bytes([num, int(den).bit_length() - 1, 24, 8]))))
    for t, sf, mode in con.execute(
        "SELECT time_ticks, sharps_flats, mode FROM key_signatures WHERE piece_id = ? ORDER BY time_ticks",
        [piece_id],
    ).fetchall():
        events[0].append((t, 0, 0, _meta(0x59, bytes([sf & 0xFF, 1 if mode == "minor" else 0]))))
    for tr, ch, t, prog in con.execute(
        "SELECT track_index, channel, time_ticks, program FROM program_changes WHERE piece_id = ?", [piece_id]
    ).fetchall():
        events[tr].append((t, 1, 0, bytes([0xC0 | ch, prog])))

    notes = con.execute(
        """SELECT track_index, note_index, onset_ticks, duration_ticks, pitch, velocity, channel
           FROM notes WHERE piece_id = ? ORDER BY track_index, note_index""",
        [piece_id],
    ).fetchnumpy()
    tr = notes["track_index"]
    idx = notes["note_index"].astype(np.int64)
    on = notes["onset_ticks"].astype(np.int64)
    off = on + notes["duration_ticks"].astype(np.int64)
    for i in range(len(tr)):
        ch, p, v = int(notes["channel"][i]), int(notes["pitch"][i]), int(notes["velocity"][i])
        t = int(tr[i])
        events[t].append((int(on[i]), 2, int(idx[i]), bytes([0x90 | ch, p, v])))
        zero = off[i] == on[i]
        events[t].append((int(off[i]), 3 if zero else -1, int(idx[i]), bytes([0x80 | ch, p, 0])))

    chunks = []
    for t in range(n_tracks):
        evs = sorted(events[t], key=lambda e: (e[0], e[1], e[2]))
        head = [(0, _meta(0x03, names.get(t, "").encode("utf-8")))] if names.get(t) else []
        chunks.append(_track_chunk(head + [(e[0], e[3]) for e in evs]))
    header = b"MThd" + (6).to_bytes(4, "big") + int(fmt).to_bytes(2, "big") + n_tracks.to_bytes(2, "big") + int(tpq).to_bytes(2, "big")
    return header + b"".join(chunks)


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
