"""``atlas discover``: a piece's repeated themes, ranked by the description length they save.

Output is the MIREX "discovery of repeated themes and sections" form that
``mir_eval.pattern`` scores: a list of patterns, each a list of occurrences, each a list
of ``(onset_beats, pitch)`` notes (onset in beats from the start of the piece).

Method
------
1. The piece's streams (``query.pattern_search.build_streams``: each track's line -- its
   top line where the track plays chords, since chord tones in onset order are no
   melody -- and the skyline over all tracks) are read as sequences of symbols
   ``(pitch interval, inter-onset interval)`` -- transposition-invariant, rhythm-aware.
   Themes in any voice, and themes that pass between voices (through the skyline), are
   sequences here.
2. Every repeated symbol sequence of ``min_notes`` notes or more is found length by length
   with rolling hashes; the same notes seen in two streams count once. A repeat is kept
   when it is maximal (its occurrences do not all extend by the same symbol to the left
   or to the right).
3. For the most promising repeats, occurrences with one note changed, or with the rhythm
   scaled by a constant factor (augmentation), are added with the verifier of
   ``atlas pattern`` (``match_in_pool``); occurrences that share notes are reduced to a
   non-overlapping set.
4. Score = description length saved, in bits: ``(k - 1) * C - (k + 1) * log2(N) - v * 8`` for
   ``k`` occurrences, ``C`` the pattern's content (the sum of ``-log2 p(symbol)`` over
   its symbols, ``p`` the symbol's frequency in the piece's streams), ``N`` the number of
   symbols (the cost of a reference: one per occurrence and one for the pattern's own
   dictionary entry) and ``v`` the varied occurrences
   (8 bits each to say which note changed and how). A pattern written once replaces its
   other ``k - 1`` statements; repeats of common symbols (a chord repeated, a scale step)
   save little, which keeps accompaniment figures below themes.
   Patterns are taken best first; one whose notes are mostly (``MAX_COVERED``) notes of
   patterns already taken is dropped as a duplicate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from atlas_db.connection import reading
from atlas_db.errors import BadInputError
from query.pattern_search import NOTE_COLUMNS, Motif, Pool, build_streams, match_in_pool, pool_from_streams

__all__ = ["DiscoveredPattern", "discover_notes", "discover_piece", "discover_file", "patterns_to_rows",
           "MAX_COVERED"]

IOI_STEPS_PER_BEAT = 48  # rhythm symbols: inter-onset intervals rounded to 1/48 beat
MAX_LEN = 256  # longest repeat searched, in intervals
N_REFINE = 300  # repeats refined with varied occurrences
MAX_COVERED = 0.6  # drop a pattern when this share of its notes is already explained
MIN_NOTES_VARIED = 8  # varied occurrences are looked for only for patterns this long
RHYTHM_FACTORS = (0.5, 1.0, 2.0)  # augmentation/diminution accepted for varied occurrences
VARIATION_BITS = 8.0  # cost of saying how an occurrence differs (which note, what change)


@dataclass
class DiscoveredPattern:
    """One repeated pattern: ``occurrences`` is a list of occurrences, each a list of
    ``[onset_beats, pitch]``; ``saving`` is the description length it saves (bits)."""

    pattern_id: str
    n_notes: int
    saving: float
    intervals: tuple[int, ...]
    occurrences: list[list[list]] = field(default_factory=list)
    n_varied: int = 0
    tracks: tuple[int, ...] = ()


def _symbols(pool: Pool) -> np.ndarray:
    """Symbol of each pool position: (interval to the next note, IOI in 1/48 beats);
    a unique negative separator at the last note of each stream."""
    n = len(pool)
    sym = np.empty(n, dtype=np.int64)
    if n == 0:
        return sym
    iv = np.diff(pool.pitch).astype(np.int64)
    ioi = np.rint(np.diff(pool.onset_beats) * IOI_STEPS_PER_BEAT).astype(np.int64)
    ioi = np.clip(ioi, 0, (1 << 20) - 1)
    sym[:-1] = (iv + 128) * (1 << 20) + ioi
    last = np.append(pool.row[1:] != pool.row[:-1], True)
    sym[last] = -1 - np.arange(int(last.sum()))
    return sym


def _note_ids(pool: Pool) -> np.ndarray:
    return (pool.track_index.astype(np.int64) << 32) | pool.note_index.astype(np.int64)


def _maximal_repeats(pool: Pool, min_notes: int, sym: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """``(length_in_intervals, flat starts)`` of maximal repeats with >= 2 distinct
    occurrences (distinct = not the same notes); sym: :func:`_symbols` of the pool."""
    n = len(sym)
    if n == 0:
        return []
    ids = _note_ids(pool)
    mult = np.uint64(0x9E3779B97F4A7C15)
    mult2 = np.uint64(0xC2B2AE3D27D4EB4F)
    usym = sym.astype(np.uint64)
    uid = ids.astype(np.uint64)
    H = np.zeros(n, dtype=np.uint64)  # hash of the symbols of the window
    K = uid.copy()  # hash of the note identities of the window
    valid = np.ones(n, dtype=bool)
    prev = np.concatenate([[np.int64(-1 << 40)], sym[:-1]])
    first_of_stream = np.insert(pool.row[1:] != pool.row[:-1], 0, True)
    prev[first_of_stream] = -(1 << 40)
    out = []
    with np.errstate(over="ignore"):
        for L in range(1, min(MAX_LEN, n - 1) + 1):
            # windows of L symbols = L + 1 notes starting at i
            idx = np.arange(n - L)
            valid = valid[: n - L] & (sym[idx + L - 1] >= 0)
            H = H[: n - L] * mult + usym[idx + L - 1]
            K = K[: n - L] * mult2 + uid[idx + L]
            if L + 1 < min_notes:
                continue
            v = np.flatnonzero(valid)
            if len(v) < 2:
                break
            # distinct (H, K): the same notes in two streams are one occurrence
            o = np.lexsort((K[v], H[v]))
            vs = v[o]
            hs, ks = H[vs], K[vs]
            new = np.ones(len(vs), dtype=bool)
            new[1:] = (hs[1:] != hs[:-1]) | (ks[1:] != ks[:-1])
            vs, hs = vs[new], hs[new]
            gstart = np.flatnonzero(np.insert(hs[1:] != hs[:-1], 0, True))
            counts = np.diff(np.append(gstart, len(hs)))
            rep = counts >= 2
            if not rep.any():
                break
            nxt_idx = vs + L
            nxt = np.where(nxt_idx < n, sym[np.minimum(nxt_idx, n - 1)], -2)
            prv = prev[vs]
            for g, c in zip(gstart[rep], counts[rep]):
                members = vs[g : g + c]
                nx = nxt[g : g + c]
                pv = prv[g : g + c]
                right_max = nx[0] < 0 or not (nx == nx[0]).all()
                left_max = pv[0] < 0 or not (pv == pv[0]).all()
                if right_max and left_max:
                    out.append((L, members))
    return out


def _occurrence_sets(pool: Pool, starts: np.ndarray, m: int):
    ids = _note_ids(pool)
    return [frozenset(ids[s : s + m].tolist()) for s in starts]


def _non_overlapping(pool: Pool, starts, m, varied):
    """Occurrences sorted by onset, dropping any that shares a note with one kept."""
    order = sorted(range(len(starts)), key=lambda j: (varied[j], pool.onset_beats[starts[j]], starts[j]))
    sets = _occurrence_sets(pool, np.asarray(starts), m)
    used: set = set()
    keep = []
    for j in order:
        if sets[j] & used:
            continue
        used |= sets[j]
        keep.append(j)
    keep.sort(key=lambda j: (pool.onset_beats[starts[j]], int(pool.pitch[starts[j]])))
    return keep, sets


def discover_notes(notes, *, top: int = 10, min_notes: int = 5, variations: bool = True,
                   piece_id: str = "0" * 16, stream_kinds=("track", "skyline")
                   ) -> list[DiscoveredPattern]:
    """Repeated patterns of one piece's notes (Arrow ``notes`` table or dict of arrays:
    ``track_index, note_index, onset_ticks, onset_beats, duration_beats, onset_s, pitch,
    channel``),
    best first.

    variations: also count occurrences with one note changed and/or the rhythm doubled or
    halved (patterns of ``MIN_NOTES_VARIED`` notes or more).
    stream_kinds: ``"track"`` (each track's line: its top line where it plays chords) and/or
    ``"skyline"``; both by default (the benchmark compares).

    >>> [p.n_notes for p in discover_notes(notes_of_a_piece)]  # doctest: +SKIP
    [16, 8, ...]
    """
    if top < 1:
        raise BadInputError(f"--top {top}: give at least 1")
    if min_notes < 3:
        raise BadInputError(f"--min-notes {min_notes}: patterns need at least 3 notes")
    if not isinstance(notes, dict):
        notes = {c: notes.column(c).to_numpy(zero_copy_only=False) for c in NOTE_COLUMNS}
    streams = build_streams(piece_id, notes, stage_version="discover")
    kinds = streams.column("stream").to_pylist()
    tracks = streams.column("stream_track").to_pylist()
    onsets = streams.column("onset_ticks").to_pylist()
    chordal = {t for k, t, o in zip(kinds, tracks, onsets) if k == "track" and len(set(o)) < len(o)}
    # a track's line is its top line where it plays chords (chord tones in onset order are
    # not a melody), else all its notes; the skyline stands for the lone track of a
    # one-track piece
    line = [(k == "track_top" and t in chordal) or (k == "track" and t not in chordal)
            for k, t in zip(kinds, tracks)]
    sky = [k == "skyline" for k in kinds] if "skyline" in kinds else line
    keep = [("track" in stream_kinds and a) or ("skyline" in stream_kinds and b) for a, b in zip(line, sky)]
    streams = streams.filter(pa.array(keep, pa.bool_()))
    pool = pool_from_streams(streams)
    sym = _symbols(pool)
    repeats = _maximal_repeats(pool, min_notes, sym)
    if not repeats:
        return []
    # information content of each symbol in this piece (bits), and of a reference
    real = sym[sym >= 0]
    uniq, cnt = np.unique(real, return_counts=True)
    bits = np.zeros(len(sym))
    pos = np.searchsorted(uniq, np.where(sym >= 0, sym, uniq[0]))
    bits[sym >= 0] = -np.log2(cnt[pos[sym >= 0]] / len(real))
    cum = np.concatenate([[0.0], np.cumsum(bits)])
    ref_bits = np.log2(max(len(real), 2))

    def content(s, L):
        return cum[s + L] - cum[s]

    # rough score first (distinct occurrences, overlaps not yet removed)
    repeats.sort(key=lambda r: -((len(r[1]) - 1) * content(int(r[1][0]), r[0]) - len(r[1]) * ref_bits))
    cands = []
    ids = _note_ids(pool)
    for L, members in repeats[:N_REFINE]:
        m = L + 1
        starts = [int(s) for s in members]
        varied = [0] * len(starts)
        if variations and m >= MIN_NOTES_VARIED:
            q = Motif(tuple(int(x) for x in pool.pitch[members[0] : members[0] + m]), True,
                      tuple(float(x) for x in np.diff(pool.onset_beats[members[0] : members[0] + m])), "theme")
            if sum(q.ioi_beats) > 0:
                res = match_in_pool(pool, q, approximate=True, rhythm="augmentation")
                have = {frozenset(ids[s : s + m].tolist()) for s in starts}
                for s, mm, f in zip(res["start"], res["mismatch"], res["rhythm_factor"]):
                    if min(abs(f - r) for r in RHYTHM_FACTORS) > 0.02:
                        continue
                    key = frozenset(ids[s : s + m].tolist())
                    if key in have:
                        continue
                    have.add(key)
                    starts.append(int(s))
                    varied.append(int(mm >= 0) + int(abs(f - 1.0) > 1e-6))
        keep, sets = _non_overlapping(pool, starts, m, varied)
        k = len(keep)
        if k < 2:
            continue
        n_var = sum(varied[j] for j in keep)
        # a pattern written once replaces k - 1 statements; it costs k references plus its
        # own dictionary entry (one more), and each varied occurrence what changed
        saving = (k - 1) * content(int(members[0]), L) - (k + 1) * ref_bits - n_var * VARIATION_BITS
        notes_all = frozenset().union(*(sets[j] for j in keep))
        cands.append((round(float(saving), 3), m, [starts[j] for j in keep], n_var, notes_all))
    cands.sort(key=lambda c: (-c[0], -c[1], pool.onset_beats[c[2][0]]))
    chosen: list[DiscoveredPattern] = []
    explained: set = set()
    for saving, m, starts, n_var, notes_all in cands:
        if saving <= 0:
            break
        if len(notes_all & explained) >= MAX_COVERED * len(notes_all):
            continue
        explained |= notes_all
        occs = []
        for s in starts:
            o = pool.onset_beats[s : s + m]
            p = pool.pitch[s : s + m]
            occ = sorted((round(float(a), 6), int(b)) for a, b in zip(o, p))
            occs.append([[a, b] for a, b in occ])
        s0 = starts[0]
        chosen.append(DiscoveredPattern(
            pattern_id=f"p{len(chosen) + 1}",
            n_notes=m,
            saving=float(saving),
            intervals=tuple(int(x) for x in np.diff(pool.pitch[s0 : s0 + m])),
            occurrences=occs,
            n_varied=n_var,
            tracks=tuple(sorted({int(t) for s in starts for t in pool.track_index[s : s + m]})),
        ))
        if len(chosen) >= top:
            break
    return chosen


_NOTE_COLS = ", ".join(NOTE_COLUMNS)


def discover_piece(db_dir, piece: str, **kw) -> list[DiscoveredPattern]:
    """:func:`discover_notes` for a stored piece (id, unique id prefix or ingested path)."""
    from query.export import resolve_piece

    with reading(db_dir) as con:
        pid = resolve_piece(con, piece)
        # a fresh cursor: resolve_piece may leave a result open on ``con``
        notes = con.cursor().sql(f"SELECT {_NOTE_COLS} FROM notes WHERE piece_id = ?", params=[pid]).to_arrow_table()
    if notes.num_rows == 0:
        raise BadInputError(f"{piece}: the piece has no notes (an audio file not transcribed?)")
    return discover_notes(notes, piece_id=pid, **kw)


def discover_file(path, **kw) -> list[DiscoveredPattern]:
    """:func:`discover_notes` for a MIDI file that is not in the database."""
    from ingest.midi_parse import read_midi_file

    return discover_notes(read_midi_file(path)["notes"], **kw)


def patterns_to_rows(patterns: list[DiscoveredPattern]) -> pa.Table:
    """One row per note: ``pattern, rank, saving, n_notes, occurrence, onset_beats, pitch``
    (the flat form of the MIREX output, for CSV)."""
    cols = {k: [] for k in ("pattern", "rank", "saving", "n_notes", "occurrence", "onset_beats", "pitch")}
    for rank, pt in enumerate(patterns, 1):
        for j, occ in enumerate(pt.occurrences, 1):
            for onset, pitch in occ:
                cols["pattern"].append(pt.pattern_id)
                cols["rank"].append(rank)
                cols["saving"].append(pt.saving)
                cols["n_notes"].append(pt.n_notes)
                cols["occurrence"].append(j)
                cols["onset_beats"].append(float(onset))
                cols["pitch"].append(int(pitch))
    return pa.table({
        "pattern": pa.array(cols["pattern"], pa.string()),
        "rank": pa.array(cols["rank"], pa.int32()),
        "saving": pa.array(cols["saving"], pa.float64()),
        "n_notes": pa.array(cols["n_notes"], pa.int32()),
        "occurrence": pa.array(cols["occurrence"], pa.int32()),
        "onset_beats": pa.array(cols["onset_beats"], pa.float64()),
        "pitch": pa.array(cols["pitch"], pa.int16()),
    })
