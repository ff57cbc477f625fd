"""Motif search (``atlas pattern``): every place a melodic shape occurs, at any transposition.

What a "melodic sequence" is in polyphony
-----------------------------------------
A piece's notes (percussion, i.e. MIDI channel 10 / ``channel = 9``, left out) are cut
into *streams*, each a sequence of notes in a fixed order:

``track``
    every note of one track, sorted by ``(onset_ticks, pitch, note_index)`` -- the
    grammar's order (``atlas_db.schema_grammar``): onset order, chord notes low to high.
``track_top``
    one track's highest note at each onset (ties: the later ``note_index``), the melody
    line of a track that also plays chords; a note is left out when a strictly higher
    note of the track, started earlier, is still held more than ``COVER_TOL_BEATS`` after
    its onset (an accompaniment note under a held melody note). Stored only where it
    differs from ``track``.
``skyline``
    the same over all tracks (ties at one onset: the lower track, then the lower
    ``note_index``), so a theme that passes from one voice to another is one sequence.
    Stored only for pieces with two or more tracks with notes.
``track_bottom``
    one track's lowest note at each onset (ties: the earlier ``note_index``), left out
    when a strictly lower note started earlier is still held: the bass line of a track
    that plays chords. Stored only where it differs from ``track``.

A motif of ``m`` notes *occurs* at position ``i`` of a stream when the stream's notes
``i .. i+m-1`` have the motif's pitch intervals (any transposition). The same notes found
in two streams are one occurrence (the first stream in the order above names it).

Transforms of the query: ``P`` (the motif itself), ``I`` (inversion: intervals negated),
``R`` (retrograde: notes reversed), ``RI`` (both). Approximate matching allows one note of
the window to differ in pitch (the other ``m-1`` keep the motif's intervals). Rhythm, when
the query has one (a MIDI snippet, or ``rhythm=`` inter-onset intervals in beats):
``rhythm="exact"`` requires each inter-onset interval within ``RHYTHM_TOL_BEATS`` of the
motif's, ``rhythm="augmentation"`` the same after scaling the motif's rhythm by one
constant factor (reported as ``rhythm_factor``: 2.0 = twice as slow).

How lookup is fast
------------------
The ``patterns`` derived stage (``ingest.pattern_index``) stores every stream
(``pattern_streams``) and, for every position, the n-gram of the next ``NGRAM`` = 3
intervals (``pattern_ngrams``). An exact query of >= 4 notes takes the candidate starts
of its rarest n-gram from the table and verifies them against the stored streams; since
every occurrence contains all of the query's n-grams, no occurrence is missed. An
approximate query of >= 8 notes takes the union of its first and last n-grams' candidates
(they share no note, so one changed note leaves one of them intact). Shorter queries scan
every stream (vectorised). ``brute_force_search`` recomputes everything from the
``notes`` table with none of this and is the reference the tests compare against.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit

from atlas_db.connection import reading
from atlas_db.errors import BadInputError, IndexTroubleError
from atlas_db.schema_patterns import NGRAM, TABLES as PATTERN_TABLES
from ingest.packed_keys import packed_order

__all__ = [
    "Motif",
    "parse_motif",
    "motif_from_midi",
    "TRANSFORMS",
    "STREAM_KINDS",
    "RHYTHM_TOL_BEATS",
    "build_streams",
    "build_streams_batch",
    "NOTE_COLUMNS",
    "stream_id_for",
    "ngram_codes",
    "Pool",
    "pool_from_streams",
    "match_in_pool",
    "search",
    "search_rule",
    "brute_force_search",
    "RESULT_SCHEMA",
]

def _arrow(con, sql: str, params=None) -> pa.Table:
    """Run a query and return Arrow (the relation API, which DuckDB 2 does not warn about)."""
    rel = con.sql(sql, params=params) if params is not None else con.sql(sql)
    return rel.to_arrow_table()


TRANSFORMS = ("P", "I", "R", "RI")
STREAM_KINDS = ("track", "track_top", "skyline", "track_bottom")
_KIND_CODE = {k: i for i, k in enumerate(STREAM_KINDS)}
RHYTHM_TOL_BEATS = 0.0625  # a 64th note, in the motif's own beats
MIN_NOTES = 3
# Columns of ``notes`` that build_streams reads.
NOTE_COLUMNS = ("track_index", "note_index", "onset_ticks", "onset_beats", "duration_beats", "onset_s", "pitch",
                "channel")
# A note under a higher note that is still held this long after its onset is not "top".
COVER_TOL_BEATS = 0.125
MAX_NOTES = 64
PERCUSSION_CHANNEL = 9
_CHUNK = 1 << 20  # windows verified per NumPy step (bounds memory)


# --------------------------------------------------------------------------- the query


@dataclass(frozen=True)
class Motif:
    """A query shape: ``pitches`` (MIDI numbers; relative when ``absolute`` is False) and
    optional ``ioi_beats`` (inter-onset intervals, ``len(pitches) - 1`` values)."""

    pitches: tuple[int, ...]
    absolute: bool = False
    ioi_beats: tuple[float, ...] | None = None
    source: str = ""

    @property
    def intervals(self) -> tuple[int, ...]:
        return tuple(int(b - a) for a, b in zip(self.pitches, self.pitches[1:]))

    def transformed(self, t: str) -> "Motif":
        p = np.asarray(self.pitches, dtype=np.int64)
        r = None if self.ioi_beats is None else list(self.ioi_beats)
        if t in ("I", "RI"):
            p = 2 * p[0] - p
        if t in ("R", "RI"):
            p = p[::-1]
            r = None if r is None else r[::-1]
        if t not in TRANSFORMS:
            raise BadInputError(f"{t}: unknown transform (expected one of {', '.join(TRANSFORMS)})")
        return Motif(tuple(int(x) for x in p), self.absolute, None if r is None else tuple(r), self.source)


_NOTE_RE = re.compile(r"^([A-Ga-g])([#♯b♭]*)(-?\d+)?$")
_PC = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_INT_RE = re.compile(r"^[+-]?\d+$")


def _note_number(tok: str) -> tuple[int, bool]:
    m = _NOTE_RE.match(tok)
    pc = _PC[m.group(1).upper()]
    for ch in m.group(2):
        pc += 1 if ch in "#♯" else -1
    if m.group(3) is None:
        return pc, False
    return pc + 12 * (int(m.group(3)) + 1), True  # C4 = 60


def parse_motif(text: str, *, rhythm: str | None = None) -> Motif:
    """A motif from text: intervals (``"+2 +2 +1 -3"``), note names (``"C D E F"``,
    ``"C4 E4 G4"``; without an octave each note is the nearest one to the previous, a
    tritone going up), or the path of a MIDI file (its skyline is the motif, with rhythm).

    ``rhythm``: optional inter-onset intervals in beats (``"1 1 0.5 0.5"``), one fewer
    than the notes, for interval and note-name queries.

    >>> parse_motif("+2 +2 +1").pitches
    (0, 2, 4, 5)
    >>> parse_motif("C D E F").intervals
    (2, 2, 1)
    """
    if text is None or not str(text).strip():
        raise BadInputError("empty motif: give intervals (\"+2 +2 -1\"), note names (\"C D E\") or a .mid file")
    text = str(text).strip()
    p = Path(text)
    if p.suffix.lower() in (".mid", ".midi", ".smf", ".kar") or (" " not in text and _names_a_file(p)):
        if rhythm is not None:
            raise BadInputError("--rhythm: a MIDI snippet brings its own rhythm; leave --rhythm out")
        return motif_from_midi(p)
    toks = text.replace(",", " ").split()
    if all(_INT_RE.match(t) for t in toks):
        ints = [int(t) for t in toks]
        if any(abs(i) > 127 for i in ints):
            raise BadInputError(f"{_shown(text)}: an interval is larger than 127 semitones")
        pitches = tuple(int(x) for x in np.concatenate([[0], np.cumsum(ints)]))
        motif = Motif(pitches, False, None, text)
    elif all(_NOTE_RE.match(t) for t in toks):
        out, absolute = [], True
        for i, t in enumerate(toks):
            n, has_oct = _note_number(t)
            absolute &= has_oct
            if not has_oct:
                if i == 0:
                    n += 60  # octave 4
                else:
                    d = (n - out[-1]) % 12
                    n = out[-1] + (d if d <= 6 else d - 12)
            out.append(n)
        if any(not 0 <= x <= 127 for x in out):
            raise BadInputError(f"{_shown(text)}: a note is outside MIDI 0-127")
        motif = Motif(tuple(out), absolute, None, text)
    else:
        bad = next((t for t in toks if not (_INT_RE.match(t) or _NOTE_RE.match(t))), None)
        what = f"cannot read {bad!r}" if bad else "intervals and note names are mixed"
        raise BadInputError(
            f"motif {_shown(text)}: {what}; give intervals (\"+2 +2 -1\"), note names "
            "(\"C D Eb\", \"C4 G4\") or a path to a .mid file, not a mixture"
        )
    if rhythm is not None:
        try:
            ioi = tuple(float(x) for x in str(rhythm).replace(",", " ").split())
        except ValueError:
            raise BadInputError(f"--rhythm {rhythm!r}: give inter-onset intervals in beats, e.g. \"1 1 0.5\"") from None
        if len(ioi) != len(motif.pitches) - 1:
            raise BadInputError(
                f"--rhythm {rhythm!r}: {len(ioi)} values for {len(motif.pitches)} notes; "
                f"give {len(motif.pitches) - 1} inter-onset intervals (beats)"
            )
        if any(not np.isfinite(x) or x < 0 for x in ioi) or sum(ioi) <= 0:
            raise BadInputError(f"--rhythm {rhythm!r}: intervals must be >= 0 beats and not all 0")
        motif = Motif(motif.pitches, motif.absolute, ioi, motif.source)
    _check_length(motif)
    return motif


def _names_a_file(p: Path) -> bool:
    try:
        return p.is_file()
    except OSError:  # e.g. longer than a file name may be: a motif of thousands of intervals
        return False


def _shown(text) -> str:
    """The motif as quoted in a message, cut short: it can be thousands of intervals."""
    text = str(text)
    return repr(text if len(text) <= 60 else text[:60] + "…")


def _check_length(motif: Motif) -> None:
    n = len(motif.pitches)
    if n < MIN_NOTES:
        raise BadInputError(
            f"motif {_shown(motif.source)} has {n} note(s); give at least {MIN_NOTES} (2 intervals)"
        )
    if n > MAX_NOTES:
        raise BadInputError(f"motif {_shown(motif.source)} has {n} notes; at most {MAX_NOTES} are searched")


def motif_from_midi(path) -> Motif:
    """The skyline of a MIDI snippet (non-percussion notes, highest at each onset) as a
    motif with absolute pitches and rhythm."""
    from ingest.midi_parse import read_midi_file

    notes = read_midi_file(path, what="motif file")["notes"]
    streams = build_streams("0" * 16, _notes_arrays(notes), stage_version="query")
    sky = [r for r in streams.to_pylist() if r["stream"] == "skyline"]
    row = sky[0] if sky else max(
        (r for r in streams.to_pylist() if r["stream"] == "track_top"), default=None, key=lambda r: r["n_notes"]
    ) or max(streams.to_pylist(), default=None, key=lambda r: r["n_notes"])
    if row is None:
        raise BadInputError(f"{path}: the snippet has no pitched notes (only percussion?)")
    onsets = np.asarray(row["onset_beats"], dtype=np.float64)
    motif = Motif(tuple(int(x) for x in row["pitch"]), True, tuple(float(x) for x in np.diff(onsets)), str(path))
    _check_length(motif)
    return motif


# --------------------------------------------------------------------------- streams


def stream_id_for(piece_id: str, kind: str, track: int) -> int:
    """BIGINT id of a stream: 48 bits of the piece id, 2 bits of kind, 10 bits of track."""
    if track > 1022:
        raise BadInputError(f"piece {piece_id}: track index {track} is beyond the 1022 the pattern index keeps")
    return int(_pack_stream_id(int(piece_id[:12], 16), _KIND_CODE[kind], int(track)))


def _pack_stream_id(prefix, kind_code, track):
    """The id's bits (ints or int64 arrays): the piece id's first 48 bits, the kind's 2,
    the track's 10 (1023: no track)."""
    return (prefix << 12) | (kind_code << 10) | np.where(np.asarray(track) < 0, 1023, track)


def _notes_arrays(notes) -> dict[str, np.ndarray]:
    """NumPy columns of a notes Arrow table (or dict of arrays)."""
    cols = NOTE_COLUMNS
    if isinstance(notes, dict):
        return {c: np.asarray(notes[c]) for c in cols}
    return {c: notes.column(c).to_numpy(zero_copy_only=False) for c in cols}


@njit(cache=True)
def _covered(onset, end, pitch, c_onset, c_pitch, tol):
    """For each candidate (onsets ascending): is a strictly higher note of the scope
    (onsets ascending) still sounding, started before it and ending > tol after it?"""
    n = len(onset)
    out = np.zeros(len(c_onset), dtype=np.bool_)
    a_end = np.empty(n, dtype=np.float64)
    a_pitch = np.empty(n, dtype=np.int64)
    na = 0
    j = 0
    for c in range(len(c_onset)):
        t = c_onset[c]
        while j < n and onset[j] < t:
            a_end[na] = end[j]
            a_pitch[na] = pitch[j]
            na += 1
            j += 1
        k = 0
        for a in range(na):
            if a_end[a] > t + tol:
                a_end[k] = a_end[a]
                a_pitch[k] = a_pitch[a]
                k += 1
        na = k
        for a in range(na):
            if a_pitch[a] > c_pitch[c]:
                out[c] = True
                break
    return out


@njit(cache=True)
def _covered_groups(onset, end, pitch, scope_bounds, c_onset, c_pitch, cand_bounds, tol):
    """:func:`_covered` for consecutive groups: group ``g`` is the scope notes
    ``scope_bounds[g]:scope_bounds[g + 1]`` and the candidates ``cand_bounds[g]:cand_bounds[g + 1]``."""
    out = np.zeros(len(c_onset), dtype=np.bool_)
    for g in range(len(scope_bounds) - 1):
        s0, s1, c0, c1 = scope_bounds[g], scope_bounds[g + 1], cand_bounds[g], cand_bounds[g + 1]
        if c1 > c0:
            out[c0:c1] = _covered(onset[s0:s1], end[s0:s1], pitch[s0:s1], c_onset[c0:c1], c_pitch[c0:c1], tol)
    return out


def _bounds(group: np.ndarray, n_groups: int) -> np.ndarray:
    """Start of each group's run in a nondecreasing array of group numbers, and its end."""
    return np.searchsorted(group, np.arange(n_groups + 1)).astype(np.int64)


def build_streams(piece_id: str, notes: dict[str, np.ndarray], *, stage_version: str) -> pa.Table:
    """The streams of one piece (see the module docstring) as ``pattern_streams`` rows.

    notes: NumPy arrays ``track_index, note_index, onset_ticks, onset_beats,
    duration_beats, onset_s, pitch, channel`` (shape (n,) each) of the piece's notes, any
    order.
    """
    n = len(notes["pitch"])
    return build_streams_batch([piece_id], np.zeros(n, dtype=np.int64), notes, stage_version=stage_version)


def build_streams_batch(piece_ids, piece: np.ndarray, notes: dict[str, np.ndarray], *,
                        stage_version: str) -> pa.Table:
    """The streams of several pieces at once: the rows :func:`build_streams` gives for
    each piece, the pieces in the order of ``piece_ids``.

    piece: for each note, the index of its piece in ``piece_ids``; notes: as for
    :func:`build_streams` (the notes of all the pieces, any order).
    """
    keep = np.asarray(notes["channel"]) != PERCUSSION_CHANNEL
    everything = bool(keep.all())

    def kept(values, dtype):
        values = np.asarray(values).astype(dtype, copy=False)
        return values if everything else values[keep]

    pc_ = kept(piece, np.int64)
    db_ = kept(notes["duration_beats"], np.float64)
    tr = kept(notes["track_index"], np.int32)
    ni = kept(notes["note_index"], np.int32)
    ot = kept(notes["onset_ticks"], np.int64)
    ob = kept(notes["onset_beats"], np.float64)
    os_ = kept(notes["onset_s"], np.float64)
    pi = kept(notes["pitch"], np.int16)
    schema = PATTERN_TABLES["pattern_streams"]
    if not len(pi):
        return schema.empty_table()
    end = ob + db_

    def uncovered(order, group, n_groups, first, sign=1):
        """``order``: notes sorted by group (then onset); ``first``: for each, whether it is
        a candidate (the top (sign=1) or bottom (sign=-1) note of its onset). The candidates
        in order, less those under a held higher note (over a held lower one) of their
        group; and each one's group."""
        o = ob[order]
        if ((o[1:] >= o[:-1]) | (group[1:] != group[:-1])).all():  # the usual case: already in onset order
            sc = order
        else:
            sc = order[np.lexsort((o, group))]  # stable: the group's scope by onset
        cand, c_group = order[first], group[first]
        cov = _covered_groups(ob[sc], end[sc], sign * pi[sc].astype(np.int64), _bounds(group, n_groups), ob[cand],
                              sign * pi[cand].astype(np.int64), _bounds(c_group, n_groups), COVER_TOL_BEATS)
        return cand[~cov], c_group[~cov]

    def onset_edges(order, group, last=False):
        """For each note of ``order`` (sorted by group, then onset): is it the first (the
        last) of its onset in its group?"""
        o = ot[order]
        out = np.ones(len(order), dtype=bool)
        change = (o[1:] != o[:-1]) | (group[1:] != group[:-1])
        if last:
            out[:-1] = change
        else:
            out[1:] = change
        return out

    # per track: (piece, track) groups, each in (onset, pitch, note_index) order
    order = packed_order(pc_, tr, ot, pi, ni)
    new_group = np.flatnonzero((tr[order][1:] != tr[order][:-1]) | (pc_[order][1:] != pc_[order][:-1])) + 1
    starts = np.concatenate([[0], new_group])
    n_groups = len(starts)
    group = np.repeat(np.arange(n_groups), np.diff(np.append(starts, len(order))))
    g_piece, g_track = pc_[order[starts]], tr[order[starts]].astype(np.int64)
    g_size = np.bincount(group, minlength=n_groups)
    top, top_group = uncovered(order, group, n_groups, onset_edges(order, group, last=True))
    bottom, bottom_group = uncovered(order, group, n_groups, onset_edges(order, group), -1)
    n_top = np.bincount(top_group, minlength=n_groups)
    n_bottom = np.bincount(bottom_group, minlength=n_groups)
    # skyline: pieces with two or more tracks with notes
    n_tracks = np.bincount(g_piece, minlength=len(piece_ids))
    sky_piece = np.flatnonzero(n_tracks >= 2)
    many = n_tracks[pc_] >= 2
    sub = np.flatnonzero(many)
    sky_order = sub[packed_order(pc_[sub], ot[sub], -pi[sub].astype(np.int32), tr[sub], ni[sub])]
    sky_rank = np.searchsorted(sky_piece, pc_[sky_order])
    sky, sky_group = uncovered(sky_order, sky_rank, len(sky_piece), onset_edges(sky_order, sky_rank))
    n_sky = np.bincount(sky_group, minlength=len(sky_piece))

    # the rows: each a run of one of the four note lists, piece by piece; in a piece, track
    # by track (track, track_top where it differs, track_bottom where it differs), then skyline
    lists = [order, top, bottom, sky]
    list_start = np.cumsum([0] + [len(x) for x in lists])
    kinds = [("track", g_size, np.ones(n_groups, bool)), ("track_top", n_top, n_top != g_size),
             ("track_bottom", n_bottom, n_bottom != g_size)]
    r_piece, r_key, r_kind, r_track, r_start, r_len = [], [], [], [], [], []
    for k, (kind, size, stored) in enumerate(kinds):
        first = list_start[k] + np.cumsum(size) - size
        r_piece.append(g_piece[stored])
        r_key.append(3 * np.flatnonzero(stored) + k)
        r_kind.append(np.full(int(stored.sum()), _KIND_CODE[kind]))
        r_track.append(g_track[stored])
        r_start.append(first[stored])
        r_len.append(size[stored])
    r_piece.append(sky_piece)
    r_key.append(np.full(len(sky_piece), 3 * n_groups))
    r_kind.append(np.full(len(sky_piece), _KIND_CODE["skyline"]))
    r_track.append(np.full(len(sky_piece), -1))
    r_start.append(list_start[3] + np.cumsum(n_sky) - n_sky)
    r_len.append(n_sky)
    r_piece, r_key, r_kind, r_track, r_start, r_len = (np.concatenate(x).astype(np.int64) for x in
                                                        (r_piece, r_key, r_kind, r_track, r_start, r_len))
    rows = np.lexsort((r_key, r_piece))
    r_piece, r_kind, r_track, r_start, r_len = (x[rows] for x in (r_piece, r_kind, r_track, r_start, r_len))
    idx = np.concatenate(lists)[np.repeat(r_start - np.cumsum(r_len) + r_len, r_len) + np.arange(r_len.sum())]

    prefix = np.zeros(len(piece_ids), dtype=np.int64)
    bad = np.zeros(len(piece_ids), dtype=bool)
    for p in np.unique(r_piece):
        try:
            prefix[p] = int(piece_ids[p][:12], 16)
        except ValueError:
            bad[p] = True
    if (bad[r_piece] | (r_track > 1022)).any():  # the first such row's error, as stream_id_for raises it
        i = int(np.argmax(bad[r_piece] | (r_track > 1022)))
        stream_id_for(piece_ids[r_piece[i]], STREAM_KINDS[r_kind[i]], int(r_track[i]))
    offsets = pa.array(np.concatenate([[0], np.cumsum(r_len)]).astype(np.int32))
    values = {"pitch": pi, "track_index": tr, "note_index": ni, "onset_ticks": ot, "onset_beats": ob,
              "onset_s": os_}
    cols = {
        "stream_id": pa.array(_pack_stream_id(prefix[r_piece], r_kind, r_track), pa.int64()),
        "piece_id": pa.array(list(piece_ids), pa.string()).take(pa.array(r_piece)),
        "stream": pa.array(list(STREAM_KINDS), pa.string()).take(pa.array(r_kind)),
        "stream_track": pa.array(r_track, pa.int32()),
        "n_notes": pa.array(r_len, pa.int32()),
        "stage_version": pa.array([stage_version] * len(r_len), pa.string()),
    }
    for f in schema:
        if pa.types.is_list(f.type):
            cols[f.name] = pa.ListArray.from_arrays(offsets, pa.array(values[f.name][idx], f.type.value_type),
                                                    type=f.type)
    return pa.table([cols[f.name] for f in schema], schema=schema)


def ngram_codes(pitch: np.ndarray) -> np.ndarray:
    """Code of the ``NGRAM`` intervals starting at each position of a pitch sequence
    (shape (n - NGRAM,)): each interval + 128 as one 8-bit digit, first interval highest."""
    iv = np.diff(np.asarray(pitch, dtype=np.int32)) + 128
    n = len(iv) - NGRAM + 1
    if n <= 0:
        return np.zeros(0, dtype=np.int32)
    code = np.zeros(n, dtype=np.int32)
    for k in range(NGRAM):
        code = (code << 8) | iv[k : k + n]
    return code


# --------------------------------------------------------------------------- verification


@dataclass
class Pool:
    """Streams concatenated into flat NumPy arrays (one entry per stream note)."""

    pitch: np.ndarray
    onset_beats: np.ndarray
    onset_s: np.ndarray
    track_index: np.ndarray
    note_index: np.ndarray
    row: np.ndarray  # which stream (index into stream_* arrays)
    position: np.ndarray  # position inside its stream
    stream_offset: np.ndarray  # first flat index of each stream
    stream_id: np.ndarray
    stream_piece: np.ndarray  # piece_id per stream (object array)
    stream_kind: np.ndarray

    def __len__(self) -> int:
        return len(self.pitch)


def pool_from_streams(streams: pa.Table) -> Pool:
    """A :class:`Pool` from ``pattern_streams`` rows."""
    n = streams.column("n_notes").to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(n)[:-1]]) if len(n) else np.zeros(0, np.int64)
    row = np.repeat(np.arange(len(n), dtype=np.int32), n)
    position = (np.arange(int(n.sum()), dtype=np.int64) - np.repeat(offsets, n)).astype(np.int32)

    def flat(name, dtype):
        if name not in streams.column_names:  # filled later (see search); zeros until then
            return np.zeros(int(n.sum()), dtype)
        col = streams.column(name)
        vals = pc.list_flatten(col)
        return vals.to_numpy(zero_copy_only=False).astype(dtype) if len(vals) else np.zeros(0, dtype)

    return Pool(
        pitch=flat("pitch", np.int32),
        onset_beats=flat("onset_beats", np.float64),
        onset_s=flat("onset_s", np.float64),
        track_index=flat("track_index", np.int64),
        note_index=flat("note_index", np.int64),
        row=row,
        position=position,
        stream_offset=offsets.astype(np.int64),
        stream_id=streams.column("stream_id").to_numpy(zero_copy_only=False),
        stream_piece=np.asarray(streams.column("piece_id").to_pylist(), dtype=object),
        stream_kind=np.asarray(streams.column("stream").to_pylist(), dtype=object),
    )


def match_in_pool(pool: Pool, motif: Motif, starts: np.ndarray | None = None, *,
                  approximate: bool = False, rhythm: str | None = None) -> dict[str, np.ndarray]:
    """Windows of the pool that match ``motif`` (already transformed).

    starts: flat indices to try (candidates); None tries every position.
    rhythm: None (pitch only), ``"exact"`` or ``"augmentation"``; needs ``motif.ioi_beats``.
    Returns arrays ``start`` (flat index), ``mismatch`` (position of the differing note,
    -1 if none), ``rhythm_factor`` (NaN without rhythm), ``transposition`` (first pitch
    minus the motif's first pitch).
    """
    q = np.asarray(motif.pitches, dtype=np.int32)
    m = len(q)
    N = len(pool)
    if starts is None:
        starts = np.arange(max(N - m + 1, 0), dtype=np.int64)
    else:
        starts = np.unique(np.asarray(starts, dtype=np.int64))
    r = None if (rhythm is None or motif.ioi_beats is None) else np.asarray(motif.ioi_beats, np.float64)
    outs = {"start": [], "mismatch": [], "rhythm_factor": [], "transposition": []}
    ar = np.arange(m)
    for c0 in range(0, len(starts), _CHUNK):
        s = starts[c0 : c0 + _CHUNK]
        s = s[(s >= 0) & (s + m - 1 < N)]
        s = s[pool.row[s + m - 1] == pool.row[s]]
        if not len(s):
            continue
        W = pool.pitch[s[:, None] + ar]
        D = W - q
        e0 = D == D[:, :1]
        if approximate:
            e1 = D == D[:, 1:2]
            c0_, c1_ = e0.sum(1), e1.sum(1)
            ok = np.maximum(c0_, c1_) >= m - 1
            use1 = c1_ > c0_
            eq = np.where(use1[:, None], e1, e0)
            mism = np.where(eq.all(1), -1, np.argmin(eq, axis=1))
            base = np.where(use1, D[:, 1], D[:, 0])
        else:
            ok = e0.all(1)
            mism = np.full(len(s), -1)
            base = D[:, 0]
        factor = np.full(len(s), np.nan)
        if r is not None:
            O = pool.onset_beats[s[:, None] + ar]
            d = np.diff(O, axis=1)
            if rhythm == "augmentation":
                f = d.sum(1) / r.sum()
            elif rhythm == "exact":
                f = np.ones(len(s))
            else:
                raise BadInputError(f"rhythm={rhythm!r}: expected 'exact' or 'augmentation'")
            with np.errstate(invalid="ignore", divide="ignore"):
                ok &= (f > 0) & (np.abs(d - f[:, None] * r) <= RHYTHM_TOL_BEATS * f[:, None] + 1e-9).all(1)
            factor = f
        k = np.flatnonzero(ok)
        outs["start"].append(s[k])
        outs["mismatch"].append(mism[k])
        outs["rhythm_factor"].append(factor[k])
        outs["transposition"].append(base[k])
    if not outs["start"]:
        return {k: np.zeros(0, dtype=np.float64 if k == "rhythm_factor" else np.int64) for k in outs}
    return {k: np.concatenate(v) for k, v in outs.items()}


def _window_key(pool: Pool, start: np.ndarray, m: int) -> np.ndarray:
    """A hash of the identities of a window's notes, so the same notes found in two
    streams count once."""
    h = np.zeros(len(start), dtype=np.uint64)
    mult = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        for k in range(m):
            ident = (pool.track_index[start + k].astype(np.uint64) << np.uint64(32)) | pool.note_index[
                start + k
            ].astype(np.uint64)
            h = h * mult + ident + np.uint64(k + 1)
    return h


RESULT_SCHEMA = pa.schema(
    [
        ("piece_id", pa.string()),
        ("path", pa.string()),
        ("track_index", pa.int32()),
        ("note_index", pa.int32()),
        ("stream", pa.string()),
        ("onset_s", pa.float64()),
        ("onset_beats", pa.float64()),
        ("end_beats", pa.float64()),
        ("first_pitch", pa.int16()),
        ("transform", pa.string()),
        ("transposition", pa.int16()),
        ("mismatch", pa.int16()),
        ("rhythm_factor", pa.float64()),
        ("n_notes", pa.int32()),
    ]
)


def _collect(pool: Pool, found: list[tuple[str, int, dict]], motif_abs: bool, paths: dict[str, str]) -> pa.Table:
    """Matches of several transforms -> one deduplicated, sorted result table.

    Where the same notes match more than once (two streams, two transforms), the exact
    match wins over the approximate one, then the earlier transform (P, I, R, RI), then
    the earlier stream kind (track, track_top, skyline, track_bottom)."""
    parts = [(t, m, r) for t, m, r in found if len(r["start"])]
    if not parts:
        return RESULT_SCHEMA.empty_table()
    m = parts[0][1]
    st = np.concatenate([r["start"] for _, _, r in parts])
    t_idx = np.concatenate([np.full(len(r["start"]), TRANSFORMS.index(t)) for t, _, r in parts])
    mism = np.concatenate([r["mismatch"] for _, _, r in parts]).astype(np.int64)
    fac = np.concatenate([r["rhythm_factor"] for _, _, r in parts]).astype(np.float64)
    trans = np.concatenate([r["transposition"] for _, _, r in parts]).astype(np.int64)
    rows = pool.row[st]
    kind_code = np.array([STREAM_KINDS.index(k) for k in pool.stream_kind], dtype=np.int64)[rows]
    piece_names, piece_code_s = np.unique(pool.stream_piece.astype(str), return_inverse=True)
    piece_code = piece_code_s.ravel()[rows].astype(np.uint64)
    with np.errstate(over="ignore"):
        key = _window_key(pool, st, m) * np.uint64(0x100000001B3) + piece_code
    order = np.lexsort((kind_code, t_idx, (mism >= 0).astype(np.int64)))
    _, first = np.unique(key[order], return_index=True)
    sel = order[first]
    s = st[sel]
    table = pa.table(
        {
            "piece_id": pa.array(piece_names[piece_code[sel].astype(np.int64)], pa.string()),
            "path": pa.array([paths.get(p) for p in piece_names[piece_code[sel].astype(np.int64)]], pa.string()),
            "track_index": pa.array(pool.track_index[s].astype(np.int32)),
            "note_index": pa.array(pool.note_index[s].astype(np.int32)),
            "stream": pa.array(np.asarray(STREAM_KINDS, dtype=object)[kind_code[sel]].tolist(), pa.string()),
            "onset_s": pa.array(pool.onset_s[s]),
            "onset_beats": pa.array(pool.onset_beats[s]),
            "end_beats": pa.array(pool.onset_beats[s + m - 1]),
            "first_pitch": pa.array(pool.pitch[s].astype(np.int16)),
            "transform": pa.array(np.asarray(TRANSFORMS, dtype=object)[t_idx[sel]].tolist(), pa.string()),
            "transposition": pa.array(trans[sel].astype(np.int16), mask=np.full(len(sel), not motif_abs)),
            "mismatch": pa.array(mism[sel].astype(np.int16), mask=mism[sel] < 0),
            "rhythm_factor": pa.array(np.round(fac[sel], 6), mask=np.isnan(fac[sel])),
            "n_notes": pa.array(np.full(len(sel), m, dtype=np.int32)),
        },
        schema=RESULT_SCHEMA,
    )
    return table.sort_by([("path", "ascending"), ("piece_id", "ascending"), ("onset_beats", "ascending"),
                          ("track_index", "ascending"), ("first_pitch", "ascending"), ("transform", "ascending")])


def _variants(motif: Motif, transforms) -> list[tuple[str, Motif]]:
    """The requested transforms of the motif, skipping ones identical to an earlier one."""
    out, seen = [], set()
    for t in TRANSFORMS:
        if t not in transforms:
            continue
        v = motif.transformed(t)
        key = (v.intervals, v.ioi_beats)
        if key in seen:
            continue
        seen.add(key)
        out.append((t, v))
    return out


def _check_options(motif: Motif, transforms, approximate: bool, rhythm: str | None) -> None:
    bad = [t for t in transforms if t not in TRANSFORMS]
    if bad:
        raise BadInputError(f"{bad[0]}: unknown transform (expected one of {', '.join(TRANSFORMS)})")
    if not transforms:
        raise BadInputError("no transform selected: give at least one of P, I, R, RI")
    if rhythm is not None and motif.ioi_beats is None:
        raise BadInputError(
            f"rhythm-aware matching ({rhythm}) needs the motif's rhythm: give a MIDI snippet or --rhythm \"1 1 0.5 ...\""
        )
    if approximate and len(motif.pitches) < 4:
        raise BadInputError(f"approximate matching needs a motif of at least 4 notes; {_shown(motif.source)} has {len(motif.pitches)}")


# --------------------------------------------------------------------------- database search


def _paths(con, piece_ids) -> dict[str, str]:
    if not len(piece_ids):
        return {}
    rows = con.execute("SELECT piece_id, path FROM pieces WHERE piece_id IN (SELECT unnest(?))",
                       [list(piece_ids)]).fetchall()
    return dict(rows)


_STREAM_COLS = "stream_id, piece_id, stream, n_notes, pitch, track_index, note_index, onset_beats, onset_s"
_VERIFY_COLS = "stream_id, piece_id, stream, n_notes, pitch, onset_beats"


def _index_state(con) -> tuple[int, int]:
    """(pieces in the database, pieces the pattern index has processed)."""
    n_pieces = con.execute("SELECT count(*) FROM pieces").fetchall()[0][0]
    try:
        n_done = con.execute("SELECT count(*) FROM derived_runs WHERE stage = 'patterns'").fetchall()[0][0]
    except Exception:
        n_done = 0
    return n_pieces, n_done


def search(db_dir, motif: Motif, *, transforms=("P",), approximate: bool = False, rhythm: str | None = None,
           piece_ids=None, con=None, stats: dict | None = None, method: str = "auto") -> pa.Table:
    """Every occurrence of ``motif`` (and of its requested transforms) in the database.

    Returns a table with :data:`RESULT_SCHEMA` columns: ``piece_id, path, track_index,
    note_index`` (the first note's, as in ``notes``), ``stream``, ``onset_s``, ``onset_beats``, ``end_beats``
    (onset of the last note), ``first_pitch``, ``transform`` (P, I, R, RI),
    ``transposition`` (semitones from the motif, when it has absolute pitches),
    ``mismatch`` (0-based index of the differing note in approximate matches),
    ``rhythm_factor`` and ``n_notes``.

    stats: optional dict filled with ``candidates`` and ``method`` ('index' or 'scan').
    method: ``"auto"`` (the n-gram index where the query is long enough) or ``"scan"``
    (verify every stream position; the benchmark's comparison).
    Raises IndexTroubleError when pieces are stored but none has been indexed.
    """
    _check_options(motif, transforms, approximate, rhythm)
    if con is None:
        with reading(db_dir) as c:
            return search(db_dir, motif, transforms=transforms, approximate=approximate, rhythm=rhythm,
                          piece_ids=piece_ids, con=c, stats=stats, method=method)
    n_pieces, n_done = _index_state(con)
    if n_pieces and not n_done:
        raise IndexTroubleError(
            f"{db_dir}: the pattern index is empty ({n_pieces} pieces stored); re-run `atlas ingest` "
            "(on any path already ingested) to build it"
        )
    stats = {} if stats is None else stats
    stats.update({"pieces_indexed": n_done, "pieces": n_pieces, "candidates": 0})
    m = len(motif.pitches)
    variants = _variants(motif, transforms)
    piece_filter = ""
    params_extra: list = []
    if piece_ids is not None:
        piece_filter = " AND piece_id IN (SELECT unnest(?))"
        params_extra = [list(piece_ids)]
    if method not in ("auto", "scan"):
        raise BadInputError(f"method={method!r}: expected 'auto' or 'scan'")
    use_index = method == "auto" and ((m >= NGRAM + 1 and not approximate) or (approximate and m >= 2 * (NGRAM + 1)))
    if not use_index:
        stats["method"] = "scan"
        streams = _arrow(con,
            f"SELECT {_STREAM_COLS} FROM pattern_streams WHERE n_notes >= ?{piece_filter} ORDER BY stream_id",
            [m] + params_extra)
        pool = pool_from_streams(streams)
        found = [(t, m, match_in_pool(pool, v, approximate=approximate, rhythm=rhythm)) for t, v in variants]
        stats["candidates"] = len(pool) * len(variants)
        return _collect(pool, found, motif.absolute, _paths(con, set(pool.stream_piece)))

    stats["method"] = "index"
    codes_by_t = {t: ngram_codes(np.asarray(v.pitches)) for t, v in variants}
    all_codes = sorted({int(c) for cs in codes_by_t.values() for c in cs})
    counts = dict(con.execute(
        "SELECT gram, count(*) FROM pattern_ngrams WHERE gram IN (SELECT unnest(?)) GROUP BY gram",
        [all_codes]).fetchall())
    plan = []  # (transform, offset, code) to fetch
    for t, v in variants:
        codes = [int(c) for c in codes_by_t[t]]
        cnt = [counts.get(c, 0) for c in codes]
        plan += [(t, off, codes[off]) for off in _offsets_to_fetch(cnt, approximate)]
    stats["n_grams_fetched"] = len(plan)
    if not plan:
        return _collect(pool_from_streams(PATTERN_TABLES["pattern_streams"].empty_table()), [], motif.absolute, {})
    t_names = [t for t, _ in variants]
    offs_by_t = {t: sorted({off for tt, off, _ in plan if tt == t}) for t in t_names}
    cand = pa.table({
        "t": pa.array([t_names.index(c[0]) for c in plan], pa.int8()),
        "off": pa.array([c[1] for c in plan], pa.int32()),
        "bit": pa.array([1 << offs_by_t[c[0]].index(c[1]) for c in plan], pa.int64()),
        "gram": pa.array([c[2] for c in plan], pa.int32()),
    })
    con.register("_pattern_cand", cand)
    try:
        # one row per (transform, stream, start) with the fetched n-grams it matched as bits
        hits = _arrow(con,
            "SELECT c.t, g.stream_id, g.position - c.off AS start, bit_or(c.bit) AS mask, count(*) AS n "
            "FROM pattern_ngrams g JOIN _pattern_cand c ON g.gram = c.gram "
            "WHERE g.position >= c.off GROUP BY ALL")
    finally:
        con.unregister("_pattern_cand")
    h_t = hits.column("t").to_numpy(zero_copy_only=False).astype(np.int64)
    h_sid = hits.column("stream_id").to_numpy(zero_copy_only=False).astype(np.int64)
    h_start = hits.column("start").to_numpy(zero_copy_only=False).astype(np.int64)
    h_mask = hits.column("mask").to_numpy(zero_copy_only=False).astype(np.int64)
    stats["candidates"] = int(hits.column("n").to_numpy(zero_copy_only=False).sum()) if hits.num_rows else 0
    survivors = []  # (t, stream_id array, start array)
    for ti, t in enumerate(t_names):
        offs = offs_by_t[t]
        if not offs:
            continue
        sel = h_t == ti
        ok = _masks_ok(h_mask[sel], offs, approximate)
        survivors.append((t, h_sid[sel][ok], h_start[sel][ok]))
    stats["candidates_after_filter"] = int(sum(len(x[1]) for x in survivors))
    sids = np.unique(np.concatenate([x[1] for x in survivors])) if survivors else np.zeros(0, np.int64)
    # phase 1: only what verification needs (pitch, onsets) for the candidate streams
    streams = _arrow(con,
        f"SELECT {_VERIFY_COLS} FROM pattern_streams WHERE stream_id IN (SELECT unnest(?)){piece_filter} "
        "ORDER BY stream_id", [sids.tolist()] + params_extra)
    pool = pool_from_streams(streams)
    sid_sorted = pool.stream_id
    found = []
    for t, v in variants:
        sv = [x for x in survivors if x[0] == t]
        if not sv or not len(sid_sorted):
            continue
        _, ssid, sst = sv[0]
        pos = np.searchsorted(sid_sorted, ssid)
        present = (pos < len(sid_sorted)) & (sid_sorted[np.minimum(pos, len(sid_sorted) - 1)] == ssid)
        flat = pool.stream_offset[pos[present]] + sst[present]
        found.append((t, m, match_in_pool(pool, v, flat, approximate=approximate, rhythm=rhythm)))
    # phase 2: note identities and seconds for the streams that hold a match
    hit_rows = np.unique(np.concatenate([pool.row[r["start"]] for _, _, r in found])) if found else []
    if len(hit_rows):
        extra = _arrow(con,
            "SELECT stream_id, track_index, note_index, onset_s FROM pattern_streams "
            "WHERE stream_id IN (SELECT unnest(?)) ORDER BY stream_id", [pool.stream_id[hit_rows].tolist()])
        n = pc.list_value_length(extra.column("track_index")).to_numpy(zero_copy_only=False)
        idx = np.concatenate([np.arange(pool.stream_offset[r], pool.stream_offset[r] + k) for r, k in zip(hit_rows, n)])
        for col, name in ((pool.track_index, "track_index"), (pool.note_index, "note_index"), (pool.onset_s, "onset_s")):
            col[idx] = pc.list_flatten(extra.column(name)).to_numpy(zero_copy_only=False)
    return _collect(pool, found, motif.absolute, _paths(con, set(pool.stream_piece)))


# How many of a query's n-grams to fetch: each one narrows the candidates, each costs a
# lookup; the rarest few are enough.
_MAX_FETCH = 4


def _offsets_to_fetch(cnt: list[int], approximate: bool) -> list[int]:
    """Offsets of the query's n-grams whose index rows are fetched.

    Exact: the rarest few (every occurrence has all of them); none when some n-gram
    occurs nowhere. Approximate (one note changed, which breaks at most the ``NGRAM + 1``
    n-grams that contain it): the cheapest pair of n-grams ``NGRAM + 1`` or more apart
    (one of them survives in every occurrence), plus the rarest others as filters.
    """
    n = len(cnt)
    order = sorted(range(n), key=lambda i: (cnt[i], i))
    if not approximate:
        if min(cnt) == 0:
            return []
        return sorted(order[:_MAX_FETCH])
    best = None
    for a in range(n):
        for b in range(a + NGRAM + 1, n):
            c = cnt[a] + cnt[b]
            if best is None or c < best[0]:
                best = (c, a, b)
    chosen = {best[1], best[2]}
    for i in order:
        if len(chosen) >= _MAX_FETCH + 1:
            break
        chosen.add(i)
    return sorted(chosen)


def _masks_ok(mask: np.ndarray, offs: list[int], approximate: bool) -> np.ndarray:
    """Which windows, having matched the fetched n-grams in ``mask`` (bit i = offs[i]),
    can be occurrences?"""
    full = (1 << len(offs)) - 1
    if not approximate:
        return mask == full
    # one changed note at position k breaks exactly the n-grams at offsets k-NGRAM .. k:
    # the missing offsets must lie within NGRAM of each other
    lo = np.full(len(mask), 1 << 30)
    hi = np.full(len(mask), -1)
    for i, o in enumerate(offs):
        miss = (mask >> i & 1) == 0
        lo = np.where(miss, np.minimum(lo, o), lo)
        hi = np.where(miss, np.maximum(hi, o), hi)
    return (mask != 0) & ((hi < 0) | (hi - lo <= NGRAM))


def search_rule(db_dir, rule_id: int, *, transforms=("P",), approximate: bool = False, stats=None,
                piece_ids=None) -> tuple[Motif, pa.Table]:
    """Look up grammar rule ``rule_id``'s contour (``rules.intervals``) and search it at
    every transposition with :func:`search` (so occurrences that do not line up with the
    grammar's parse are found too)."""
    with reading(db_dir) as con:
        try:
            rows = con.execute("SELECT intervals, length FROM rules WHERE rule_id = ?", [int(rule_id)]).fetchall()
            row = rows[0] if rows else None
        except Exception as e:  # the grammar's tables are missing in an old database
            raise IndexTroubleError(f"{db_dir}: no grammar tables (rules): {' '.join(str(e).split())[:120]}") from None
        if row is None:
            raise BadInputError(f"--rule {rule_id}: no such rule in the rules table")
        intervals = [int(x) for x in (row[0] or [])]
        motif = Motif(tuple(int(x) for x in np.concatenate([[0], np.cumsum(intervals)])), False, None,
                      f"rule {rule_id}")
        if not MIN_NOTES <= len(motif.pitches) <= MAX_NOTES:
            raise BadInputError(
                f"--rule {rule_id}: the rule is {len(motif.pitches)} notes long; --rule searches rules of "
                f"{MIN_NOTES}-{MAX_NOTES} notes (`atlas grammar rules --min-length {MIN_NOTES}` lists them)")
        return motif, search(db_dir, motif, transforms=transforms, approximate=approximate, con=con, stats=stats,
                             piece_ids=piece_ids)


# --------------------------------------------------------------------------- reference


def _brute_streams(rows: list[tuple]) -> list[tuple[str, list[tuple]]]:
    """Streams of one piece computed the slow, obvious way (every stream, no skipping).

    rows: (track_index, note_index, onset_ticks, onset_beats, onset_s, pitch, channel,
    duration_beats).
    """
    notes = [r for r in rows if r[6] != PERCUSSION_CHANNEL]

    def held_over(r, scope, sign=1):
        # scope: (sorted onsets, notes in that order, longest duration); only notes that
        # start less than the longest duration earlier can still be sounding
        onsets, ordered, longest = scope
        t = r[3]
        lo, hi = bisect.bisect_left(onsets, t - longest), bisect.bisect_left(onsets, t)
        return any(n[3] + n[7] > t + COVER_TOL_BEATS and sign * n[5] > sign * r[5] for n in ordered[lo:hi])

    def scope_of(rs):
        ordered = sorted(rs, key=lambda r: r[3])
        return [r[3] for r in ordered], ordered, max((r[7] for r in rs), default=0.0)

    out = []
    by_track: dict[int, list] = {}
    for r in notes:
        by_track.setdefault(r[0], []).append(r)
    for t in sorted(by_track):
        seq = sorted(by_track[t], key=lambda r: (r[2], r[5], r[1]))
        out.append(("track", seq))
        top = {}
        for r in seq:
            top[r[2]] = r  # last in (pitch, note_index) order = highest
        sc = scope_of(seq)
        out.append(("track_top", [top[k] for k in sorted(top) if not held_over(top[k], sc)]))
        bottom = {}
        for r in seq:
            bottom.setdefault(r[2], r)  # first in (pitch, note_index) order = lowest
        out.append(("track_bottom", [bottom[k] for k in sorted(bottom) if not held_over(bottom[k], sc, -1)]))
    sky = {}
    for r in sorted(notes, key=lambda r: (r[2], -r[5], r[0], r[1])):
        sky.setdefault(r[2], r)
    sc = scope_of(notes)
    out.append(("skyline", [sky[k] for k in sorted(sky) if not held_over(sky[k], sc)]))
    return out


def brute_force_search(db_dir, motif: Motif, *, transforms=("P",), approximate: bool = False,
                       rhythm: str | None = None, piece_ids=None) -> set[tuple]:
    """Reference answer straight from the ``notes`` table, for tests and benchmarks:
    the set of ``(piece_id, track_index, note_index of the first note, transform)``."""
    _check_options(motif, transforms, approximate, rhythm)
    with reading(db_dir) as con:
        rows = con.execute(
            "SELECT piece_id, track_index, note_index, onset_ticks, onset_beats, onset_s, pitch, channel, "
            "duration_beats FROM notes ORDER BY piece_id").fetchall()
    if piece_ids is not None:
        rows = [r for r in rows if r[0] in set(piece_ids)]
    per_piece: dict[str, list] = {}
    for r in rows:
        per_piece.setdefault(r[0], []).append(r[1:])
    m = len(motif.pitches)
    variants = _variants(motif, transforms)
    best: dict[tuple, tuple] = {}
    q_iv = [v.intervals for _, v in variants]
    for pid, prow in per_piece.items():
        for kind, seq in _brute_streams(prow):
            p = [r[5] for r in seq]
            iv = tuple(b - a for a, b in zip(p, p[1:]))
            for i in range(len(seq) - m + 1):
                for ti, (t, v) in enumerate(variants):
                    if iv[i : i + m - 1] == q_iv[ti]:
                        approx = 0
                    elif approximate:
                        d = [p[i + k] - v.pitches[k] for k in range(m)]
                        if max(d.count(x) for x in set(d)) < m - 1:
                            continue
                        approx = 1
                    else:
                        continue
                    if rhythm is not None:
                        o = [seq[i + k][3] for k in range(m)]
                        dd = [o[k + 1] - o[k] for k in range(m - 1)]
                        f = 1.0 if rhythm == "exact" else sum(dd) / sum(v.ioi_beats)
                        if f <= 0 or any(abs(a - f * b) > RHYTHM_TOL_BEATS * f + 1e-9 for a, b in zip(dd, v.ioi_beats)):
                            continue
                    key = (pid, tuple((seq[i + k][0], seq[i + k][1]) for k in range(m)))
                    rank = (approx, TRANSFORMS.index(t))
                    if key not in best or rank < best[key][0]:
                        best[key] = (rank, (pid, seq[i][0], seq[i][1], t))
    return {v[1] for v in best.values()}
