"""``atlas discover``: a piece's repeated themes, ranked by the description length they save.

Output is the MIREX "discovery of repeated themes and sections" form that
``mir_eval.pattern`` scores: a list of patterns, each a list of occurrences, each a list
of ``(onset_beats, pitch)`` notes (onset in beats from the start of the piece).

Method
------
Two kinds of candidates, one currency (bits saved), one selection.

*Contours* (repeated lines, the grammar's view):

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
4. Saving, in bits: ``(k - 1) * C - (k + 1) * log2(N) - v * 8`` for ``k`` occurrences,
   ``C`` the pattern's content (the sum of ``-log2 p(symbol)`` over its symbols, ``p``
   the symbol's frequency in the piece's streams), ``N`` the number of symbols (the cost
   of a reference: one per occurrence and one for the pattern's own dictionary entry)
   and ``v`` the varied occurrences (8 bits each to say which note changed and how).
   Repeats of common symbols (a chord repeated, a scale step) save little.

*Sections* (point sets over all voices, SIATEC's view, ``query.point_sets``):

5. The notes are points ``(onset, pitch)``; every maximal translatable pattern (MTP) of
   the piece comes from one sort of the point pairs by vector (numba). Each MTP is cut
   where it has a gap in time or skips over other notes, and where the pattern would run
   into its own image; pieces of ``MIN_SECTION_NOTES`` or more whose pattern and image
   are compact (``MIN_COMPACTNESS`` of the notes sounding in their time span belong to
   them) are sections. Every translation under which a section occurs with at least
   ``OCC_SHARE`` of its notes (its TEC with inexact occurrences) comes from the same
   pair table; occurrences share no note. Saving: each further occurrence saves its
   matched notes (at the mean bits per note of the piece's streams) and pays
   ``log2(m)`` bits for each of the pattern's ``m`` notes it lacks (to say which), minus
   ``(k + 1) * log2(N)``.

Selection: best saving first. A pattern whose occurrences each lie inside one occurrence
of a pattern already taken and which occurs no more often (a voice of a repeated
section) is dropped; one nested that way but occurring more often (a theme inside a
section) is kept. One mostly (``MAX_COVERED``) made of notes of taken patterns of about
its size is a duplicate. Patterns saving less than ``MIN_SAVING_SHARE`` of the best are
not reported, so ``top`` is a maximum. The constants were chosen on the fit half of
``benchmarks/discover_corpus.py`` (see docs/patterns.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from atlas_db.connection import reading
from atlas_db.errors import BadInputError
from query.pattern_search import (NOTE_COLUMNS, PERCUSSION_CHANNEL, Motif, Pool, build_streams, match_in_pool,
                                  pool_from_streams)
from query.point_sets import (GRID_PER_BEAT, MAX_POINTS, compact_segments, occurrence_points, pair_table,
                              segment_points, translators)

__all__ = ["DiscoveredPattern", "discover_notes", "discover_piece", "discover_file", "patterns_to_rows",
           "MAX_COVERED", "MIN_SAVING_SHARE", "OCC_SHARE"]

IOI_STEPS_PER_BEAT = 48  # rhythm symbols: inter-onset intervals rounded to 1/48 beat
MAX_LEN = 256  # longest repeat searched, in intervals
N_REFINE = 300  # repeats refined with varied occurrences
MAX_COVERED = 0.6  # drop a pattern when this share of its notes is already explained
MIN_NOTES_VARIED = 8  # varied occurrences are looked for only for patterns this long
RHYTHM_FACTORS = (0.5, 1.0, 2.0)  # augmentation/diminution accepted for varied occurrences
VARIATION_BITS = 8.0  # cost of saying how an occurrence differs (which note, what change)
# sections (compact repeated point sets); chosen on the fit half of benchmarks/discover_corpus.py
MIN_SECTION_NOTES = 24  # smallest section, in notes
SECTION_MAX_GAP_BEATS = 4.0  # an MTP is cut where no note of it starts for this long
SECTION_MAX_SKIP = 8  # ... or where more notes than this that are not in it lie between two of its notes
MIN_COMPACTNESS = 0.6  # share of the notes in a section's time span that belong to it
N_SECTIONS = 40  # compact segments whose occurrences are searched
OCC_SHARE = 0.75  # an inexact occurrence has this share of the pattern's notes
MAX_SECTION_TRANSPOSITION = 12  # sections recur at most an octave up or down (the pair table's size)
OVERLAP_SAME = 0.5  # two point sets sharing more than this share of points are one
NESTED_SHARE = 0.9  # an occurrence this much inside another pattern's occurrence is nested in it
MIN_SAVING_SHARE = 0.3  # a pattern nested in one taken saves at least this share of the best one
MIN_SAVING_SHARE_FREE = 0.05  # ... and one that is not, at least this share


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
            # maximal: the occurrences do not all extend by one same symbol (a negative
            # symbol ends a stream), on the right and on the left
            g0, c0 = gstart[rep], counts[rep]
            right_max = (nxt[g0] < 0) | (np.minimum.reduceat(nxt, gstart)[rep] != np.maximum.reduceat(nxt, gstart)[rep])
            left_max = (prv[g0] < 0) | (np.minimum.reduceat(prv, gstart)[rep] != np.maximum.reduceat(prv, gstart)[rep])
            for g, c in zip(g0[right_max & left_max], c0[right_max & left_max]):
                out.append((L, vs[g : g + c]))
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


def _contour_candidates(notes, *, piece_id, min_notes, variations, stream_kinds):
    """Repeated contours of the piece's streams (steps 1-3 of the module docstring):
    ``(pool, sym, bits, candidates)``, a candidate ``(saving, m, starts, n_varied)`` with
    ``starts`` the pool positions of its non-overlapping occurrences."""
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
    # information content of each symbol in this piece (bits), and of a reference
    real = sym[sym >= 0]
    bits = np.zeros(len(sym))
    if len(real):
        uniq, cnt = np.unique(real, return_counts=True)
        pos = np.searchsorted(uniq, np.where(sym >= 0, sym, uniq[0]))
        bits[sym >= 0] = -np.log2(cnt[pos[sym >= 0]] / len(real))
    if not repeats:
        return pool, sym, bits, []
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
        keep, _ = _non_overlapping(pool, starts, m, varied)
        k = len(keep)
        if k < 2:
            continue
        n_var = sum(varied[j] for j in keep)
        # a pattern written once replaces k - 1 statements; it costs k references plus its
        # own dictionary entry (one more), and each varied occurrence what changed
        saving = (k - 1) * content(int(members[0]), L) - (k + 1) * ref_bits - n_var * VARIATION_BITS
        cands.append((float(saving), m, [starts[j] for j in keep], n_var))
    return pool, sym, bits, cands


@dataclass
class _Points:
    """The piece as a point set: distinct ``(onset grid step, pitch)``, sorted."""

    q: np.ndarray  # onset in 1/GRID_PER_BEAT beats
    pitch: np.ndarray
    onset_beats: np.ndarray  # as reported (the first note's onset at that point)
    track: np.ndarray
    note_key: np.ndarray  # sorted (track << 32 | note_index) of every note
    note_point: np.ndarray  # point of each note_key


def _points(notes) -> _Points:
    keep = notes["channel"] != PERCUSSION_CHANNEL
    ob = notes["onset_beats"][keep].astype(np.float64)
    pitch = notes["pitch"][keep].astype(np.int64)
    tr = notes["track_index"][keep].astype(np.int64)
    ni = notes["note_index"][keep].astype(np.int64)
    q = np.rint(ob * GRID_PER_BEAT).astype(np.int64)
    order = np.lexsort((tr, ob, pitch, q))
    q, pitch, ob, tr, ni = q[order], pitch[order], ob[order], tr[order], ni[order]
    first = np.ones(len(q), bool)
    first[1:] = (q[1:] != q[:-1]) | (pitch[1:] != pitch[:-1])
    point_of_note = np.cumsum(first) - 1
    nk = (tr << 32) | ni
    o2 = np.argsort(nk)
    return _Points(q[first], pitch[first], np.round(ob[first], 6), tr[first], nk[o2], point_of_note[o2])


def _section_candidates(pts: _Points, table, *, min_notes: int, bits_per_note: float, ref_bits: float,
                        occ_share: float):
    """Compact repeated point sets (typically sections of all voices), each with its
    translational equivalence class including inexact occurrences: candidates
    ``(saving, m, occurrences, n_varied)``, occurrences as sorted point-index arrays;
    an inexact occurrence has ``occ_share`` of the section's notes or more."""
    n = len(pts.q)
    segs = compact_segments(table, pts.q, min_size=max(min_notes, MIN_SECTION_NOTES),
                            max_gap=int(SECTION_MAX_GAP_BEATS * GRID_PER_BEAT),
                            max_skip=SECTION_MAX_SKIP, min_compact=MIN_COMPACTNESS)
    if len(segs) == 0:
        return []
    # biggest first; a segment mostly made of the points of one taken is the same pattern
    segs = segs[np.lexsort((segs[:, 0], -segs[:, 2] * segs[:, 3]))]
    taken = np.zeros(n, np.int32)
    picks = []
    for first, end, size, _, _ in segs:
        pat, img = segment_points(table, int(first), int(end))
        if taken[pat].sum() > OVERLAP_SAME * size and taken[img].sum() > OVERLAP_SAME * size:
            continue
        taken[pat] = 1
        taken[img] = 1
        picks.append(pat)
        if len(picks) >= N_SECTIONS:
            break
    cands = []
    for pat in picks:
        m = len(pat)
        tr = translators(table, pat, n, min_count=int(np.ceil(occ_share * m)))
        occs = [(m, np.sort(pat))]
        for g, side, c in tr[np.argsort(-tr[:, 2], kind="stable")]:
            occs.append((int(c), occurrence_points(table, int(g), int(side), pat, n)))
        used = np.zeros(n, bool)
        keep = []
        for c, o in occs:
            if used[o].any():  # occurrences of one pattern share no note
                continue
            used[o] = True
            keep.append((c, o))
        k = len(keep)
        if k < 2:
            continue
        n_var = sum(c < m for c, _ in keep)
        # every further occurrence saves its matched notes and pays for saying which of
        # the pattern's notes it lacks (log2 m bits each)
        saving = sum(c * bits_per_note - (m - c) * np.log2(m) for c, _ in keep[1:]) - (k + 1) * ref_bits
        keep.sort(key=lambda x: (pts.q[x[1][0]], pts.pitch[x[1][0]]))
        cands.append((float(saving), m, [o for _, o in keep], n_var))
    return cands


def discover_notes(notes, *, top: int = 10, min_notes: int = 5, variations: bool = True,
                   piece_id: str = "0" * 16, stream_kinds=("track", "skyline"),
                   methods=("sections", "contours")) -> list[DiscoveredPattern]:
    """Repeated patterns of one piece's notes (Arrow ``notes`` table or dict of arrays:
    ``track_index, note_index, onset_ticks, onset_beats, duration_beats, onset_s, pitch,
    channel``), best first.

    variations: also count occurrences with one note changed and/or the rhythm doubled or
    halved (contours of ``MIN_NOTES_VARIED`` notes or more) and sections that match in
    ``OCC_SHARE`` of their notes.
    stream_kinds: ``"track"`` (each track's line: its top line where it plays chords) and/or
    ``"skyline"``, the streams read for contours; both by default.
    methods: ``"sections"`` (compact repeated point sets, all voices) and/or
    ``"contours"`` (repeated lines); both by default (the benchmark compares).

    >>> [p.n_notes for p in discover_notes(notes_of_a_piece)]  # doctest: +SKIP
    [96, 8, ...]
    """
    if top < 1:
        raise BadInputError(f"--top {top}: give at least 1")
    if min_notes < 3:
        raise BadInputError(f"--min-notes {min_notes}: patterns need at least 3 notes")
    if not isinstance(notes, dict):
        notes = {c: notes.column(c).to_numpy(zero_copy_only=False) for c in NOTE_COLUMNS}
    pts = _points(notes)
    n = len(pts.q)
    if n > MAX_POINTS:
        raise BadInputError(f"{n} distinct notes: discover takes at most {MAX_POINTS}")
    pool, sym, bits, contour = _contour_candidates(notes, piece_id=piece_id, min_notes=min_notes,
                                                   variations=variations, stream_kinds=stream_kinds)
    real = sym >= 0
    bits_per_note = float(bits[real].mean()) if real.any() else 1.0
    ref_bits = float(np.log2(max(int(real.sum()), 2)))
    cands = []  # (saving, m, occurrences as point-index arrays, n_varied)
    if "contours" in methods:
        ids = _note_ids(pool)
        at = np.searchsorted(pts.note_key, ids)
        pool_point = pts.note_point[np.minimum(at, len(pts.note_key) - 1)]
        for saving, m, starts, n_var in contour:
            cands.append((saving, m, [np.unique(pool_point[s : s + m]) for s in starts], n_var))
    if "sections" in methods and n >= 2 * MIN_SECTION_NOTES:
        table = pair_table(pts.q, pts.pitch, max_transposition=MAX_SECTION_TRANSPOSITION)
        cands += _section_candidates(pts, table, min_notes=min_notes, bits_per_note=bits_per_note,
                                     ref_bits=ref_bits, occ_share=OCC_SHARE if variations else 1.0)
    return _select(pts, cands, top)


def _nested(occs, labels) -> bool:
    """Whether every occurrence lies (``NESTED_SHARE`` of its points) inside a single
    occurrence of the pattern whose occurrence labels (point -> number, 0 outside) are given."""
    for o in occs:
        lab = labels[o]
        best = np.bincount(lab).argmax() if len(lab) else 0
        if best == 0 or (lab == best).mean() < NESTED_SHARE:
            return False
    return True


def _select(pts: _Points, cands, top: int) -> list[DiscoveredPattern]:
    """Best saving first; a pattern whose occurrences each lie inside one occurrence of a
    pattern taken, and that occurs no more often, says nothing new (a line of a repeated
    section); one mostly (``MAX_COVERED``) made of notes of patterns of about its own size
    taken is a duplicate. A pattern nested in a bigger one but occurring more often (a
    theme inside a repeated section) is kept. Patterns saving less than
    ``MIN_SAVING_SHARE`` of the best one are not reported."""
    cands.sort(key=lambda c: (-c[0], -c[1], int(pts.q[c[2][0][0]])))
    n = len(pts.q)
    taken = []  # (pattern, occurrence labels, size)
    for saving, m, occs, n_var in cands:
        best = taken[0][0].saving if taken else saving
        if saving <= 0 or saving < MIN_SAVING_SHARE_FREE * best:
            break
        nested_in = [len(pt.occurrences) for pt, lab, _ in taken if _nested(occs, lab)]
        if nested_in and (len(occs) <= max(nested_in) or saving < MIN_SAVING_SHARE * best):
            continue
        allp = np.unique(np.concatenate(occs))
        same_scale = np.zeros(n, bool)
        for _, lab, mm in taken:
            if m <= 2 * mm and mm <= 2 * m:
                same_scale |= lab > 0
        if same_scale[allp].mean() >= MAX_COVERED:
            continue
        labels = np.zeros(n, np.int32)
        for x, o in enumerate(occs):
            labels[o] = x + 1
        first = occs[0]
        taken.append((DiscoveredPattern(
            pattern_id=f"p{len(taken) + 1}",
            n_notes=m,
            saving=round(float(saving), 3),
            intervals=tuple(int(x) for x in np.diff(pts.pitch[first])),
            occurrences=[[[float(pts.onset_beats[x]), int(pts.pitch[x])] for x in o] for o in occs],
            n_varied=n_var,
            tracks=tuple(sorted({int(t) for o in occs for t in pts.track[o]})),
        ), labels, m))
        if len(taken) >= top:
            break
    return [t[0] for t in taken]


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
