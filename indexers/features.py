"""Transposition- and tempo-invariant features of a set of notes (pure NumPy/numba).

Everything here takes note arrays (``onset_beats``, ``duration_beats``, ``pitch``; beats
are quarter notes) and returns arrays, so the same code serves pieces in the database
and query files that are not in it.

Two kinds of output:

- **sequences** for alignment (cover re-rank): a beat-synchronous 12-bin chroma
  (``beat_chroma``, one frame per beat, so a change of tempo does not change it) and the
  skyline melody (``skyline``: the highest sounding note at each onset, as pitches and
  onsets in beats);
- **one global vector** (``embedding``) for fast candidate retrieval, whose blocks are each
  invariant to transposition (no absolute pitch class survives) and to tempo (no
  absolute time survives): see ``docs/covers.md`` for what each block encodes.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = [
    "beat_chroma",
    "skyline",
    "melody_intervals",
    "embedding",
    "EMBED_DIM",
    "BLOCKS",
    "quantize_chroma",
    "dequantize_chroma",
    "features_from_notes",
    "lead_mask",
    "second_line_mask",
    "lead_masks",
    "beat_chroma_groups",
    "lead_mask_groups",
    "lead_masks_groups",
    "skyline_groups",
    "melody_intervals_groups",
    "embedding_groups",
    "bass_line",
    "bass_line_groups",
]

# Notes longer than this many beats count only this long in the chroma (held pedal
# notes would otherwise swamp the frames they span).
MAX_NOTE_BEATS = 4.0
# 2D-FFT patches: this many beat frames x 12 pitch classes.
PATCH_BEATS = 8

# Embedding layout: block name -> (start, stop). Each block is L2-normalised on its own,
# then scaled by its weight, so the inner product of two embeddings is a weighted sum of
# per-block cosines.
_BLOCK_SIZES = [
    ("melody_intervals", 11 + 121),  # pitch-class interval unigrams + bigrams of the skyline
    ("chroma_2dfft", 7 * (PATCH_BEATS // 2 + 1)),  # median |2D-FFT| of 8-beat chroma patches
    ("chroma_intervals", 7),  # circular autocorrelation of each beat's chroma
    ("chroma_motion", 12),  # circular cross-correlation of successive beats' chroma
]
BLOCKS: dict[str, tuple[int, int]] = {}
_o = 0
for _name, _n in _BLOCK_SIZES:
    BLOCKS[_name] = (_o, _o + _n)
    _o += _n
EMBED_DIM = _o
BLOCK_WEIGHTS = {"melody_intervals": 1.0, "chroma_2dfft": 1.0, "chroma_intervals": 0.5, "chroma_motion": 0.7}
MELODY_BLOCKS = ("melody_intervals",)
HARMONY_BLOCKS = ("chroma_2dfft", "chroma_intervals", "chroma_motion")
# Bass line: notes starting within this many beats are one onset (a chord played a
# little unevenly is one bass note), and a note still sounds at an onset when it started
# at most this many notes before it (a bounded look back keeps the loop linear).
BASS_ONSET_TOL_BEATS = 0.125
BASS_LOOK_BACK_NOTES = 64


def beat_chroma(onset_beats, duration_beats, pitch, *, frame_beats: float = 1.0,
                start_beats: float = 0.0) -> np.ndarray:
    """Pitch-class energy per frame of ``frame_beats`` beats.

    Each note adds the length of its overlap with a frame (in beats, capped at
    ``MAX_NOTE_BEATS``) to its pitch class in that frame; each frame is then divided by
    its maximum, so a frame's loudest pitch class is 1 and silent frames are all 0.

    Returns
    -------
    np.ndarray [shape=(n_frames, 12), dtype=float32]
    """
    on = np.asarray(onset_beats, np.float64) - start_beats
    dur = np.minimum(np.asarray(duration_beats, np.float64), MAX_NOTE_BEATS)
    pc = np.asarray(pitch, np.int64) % 12
    if on.size == 0:
        return np.zeros((0, 12), np.float32)
    on = on / frame_beats
    off = on + np.maximum(dur / frame_beats, 1e-3)
    keep = off > 0
    on, off, pc = np.maximum(on[keep], 0.0), off[keep], pc[keep]
    n_frames = int(np.ceil(off.max())) if off.size else 0
    first = np.floor(on).astype(np.int64)
    last = np.minimum(np.ceil(off).astype(np.int64) - 1, n_frames - 1)
    span = np.maximum(last - first + 1, 1)
    idx = np.repeat(np.arange(on.size), span)
    frame = first[idx] + (np.arange(idx.size) - np.repeat(np.cumsum(span) - span, span))
    overlap = np.minimum(off[idx], frame + 1.0) - np.maximum(on[idx], frame)
    out = np.zeros((n_frames, 12), np.float64)
    np.add.at(out, (frame, pc[idx]), np.maximum(overlap, 0.0))
    peak = out.max(axis=1, keepdims=True)
    np.divide(out, peak, out=out, where=peak > 0)
    return out.astype(np.float32)


def quantize_chroma(chroma: np.ndarray) -> np.ndarray:
    """float [0, 1] chroma -> int8 0..127 (what the database stores)."""
    return np.round(np.clip(chroma, 0, 1) * 127).astype(np.int8)


def dequantize_chroma(q: np.ndarray) -> np.ndarray:
    return np.asarray(q, np.float32).reshape(-1, 12) / 127.0


@njit(cache=True)
def _skyline_keep(onset, offset, pitch):
    # notes sorted by (onset, -pitch): keep the highest note of each onset unless a
    # higher note that started earlier is still sounding.
    n = onset.size
    keep = np.zeros(n, np.bool_)
    top_pitch = -1
    top_end = -1e18
    i = 0
    eps = 1e-6
    while i < n:
        t = onset[i]
        p = pitch[i]  # highest at this onset
        if p >= top_pitch or t >= top_end - 0.25:
            keep[i] = True
            top_pitch = p
            top_end = offset[i]
        j = i + 1
        while j < n and onset[j] <= t + eps:
            j += 1
        i = j
    return keep


def skyline(onset_beats, duration_beats, pitch, *, register_drop: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The highest voice: at each onset the highest note, unless a higher earlier note
    is still sounding (with a quarter-beat of tolerance at its end); then notes more
    than ``REGISTER_DROP`` semitones under the median of their 16 neighbours are dropped
    (accompaniment heard through the melody's rests).

    Returns
    -------
    pitches : np.ndarray [shape=(n,), dtype=int16]
    onsets_beats : np.ndarray [shape=(n,), dtype=float32]
    """
    on = np.asarray(onset_beats, np.float64)
    p = np.asarray(pitch, np.int64)
    if on.size == 0:
        return np.zeros(0, np.int16), np.zeros(0, np.float32)
    off = on + np.asarray(duration_beats, np.float64)
    # onsets closer than 1/32 beat are one chord (quantisation jitter)
    q = np.round(on * 32) / 32
    order = np.lexsort((-p, q))
    keep = _skyline_keep(q[order], off[order], p[order])
    sel = order[keep]
    sel = sel[_in_register(p[sel], REGISTER_DROP if register_drop is None else register_drop)]
    return p[sel].astype(np.int16), on[sel].astype(np.float32)


# A skyline note more than this far below the median of its neighbours is accompaniment
# showing through a rest of the melody, not melody.
REGISTER_DROP = 8
REGISTER_NEIGHBOURS = 8


def _in_register(p: np.ndarray, drop: float) -> np.ndarray:
    if p.size <= 2 * REGISTER_NEIGHBOURS:
        return np.ones(p.size, bool)
    w = REGISTER_NEIGHBOURS
    padded = np.pad(p.astype(np.float64), w, mode="edge")
    med = np.median(np.lib.stride_tricks.sliding_window_view(padded, 2 * w + 1), axis=1)
    return p >= med - drop


def melody_intervals(pitches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pitch-class intervals (1..11) between successive different notes of a melody.

    Repeated notes are merged first (a transcription splits and merges them freely) and
    intervals are taken modulo 12 (so an octave error costs nothing).

    Returns
    -------
    intervals : np.ndarray [shape=(m,), dtype=int8], values 1..11
    index : np.ndarray [shape=(m,), dtype=int64]: the melody note each interval starts at
    """
    p = np.asarray(pitches, np.int64)
    if p.size < 2:
        return np.zeros(0, np.int8), np.zeros(0, np.int64)
    pc = p % 12
    change = np.concatenate([[True], pc[1:] != pc[:-1]])
    idx = np.flatnonzero(change)
    iv = (pc[idx[1:]] - pc[idx[:-1]]) % 12
    return iv.astype(np.int8), idx[:-1]


def _l2(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def _melody_block(intervals: np.ndarray) -> np.ndarray:
    uni = np.bincount(intervals.astype(np.int64) - 1, minlength=11)[:11].astype(np.float64)
    bi = np.zeros(121, np.float64)
    if intervals.size >= 2:
        code = (intervals[:-1].astype(np.int64) - 1) * 11 + (intervals[1:].astype(np.int64) - 1)
        bi = np.bincount(code, minlength=121).astype(np.float64)
    return np.concatenate([_l2(np.sqrt(uni)), _l2(np.sqrt(bi))])


def _chroma_blocks(chroma: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    voiced = chroma[chroma.sum(axis=1) > 0]
    n_t = PATCH_BEATS // 2 + 1
    if voiced.shape[0] == 0:
        return np.zeros(7 * n_t), np.zeros(7), np.zeros(12)
    x = voiced.astype(np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    # interval content of each frame: circular autocorrelation, lags 0..6
    spec = np.fft.rfft(x, axis=1)
    ac = np.fft.irfft(np.abs(spec) ** 2, n=12, axis=1)[:, :7]
    intervals = ac.mean(axis=0)
    # motion between successive frames: circular cross-correlation (all 12 lags, so
    # "up a fourth" and "up a fifth" differ), transposition-invariant
    if x.shape[0] >= 2:
        xc = np.fft.irfft(np.conj(spec[:-1]) * spec[1:], n=12, axis=1)
        motion = xc.mean(axis=0)
    else:
        motion = np.zeros(12)
    # |2D-FFT| of 8-beat patches (Bertin-Mahieux & Ellis 2012): invariant to circular
    # pitch shift, and to the patch's time offset
    if x.shape[0] < PATCH_BEATS:
        x = np.concatenate([x, np.zeros((PATCH_BEATS - x.shape[0], 12))])
    win = np.lib.stride_tricks.sliding_window_view(x, PATCH_BEATS, axis=0)  # (n, 12, PATCH)
    mag = np.abs(np.fft.fft2(win, axes=(1, 2)))  # (n, 12, PATCH)
    fft2 = np.median(mag[:, :7, :n_t], axis=0).ravel()
    return np.sqrt(fft2), intervals, motion


def embedding(chroma: np.ndarray, intervals: np.ndarray) -> np.ndarray:
    """The global vector of a piece (or track) from its beat chroma and skyline intervals.

    Returns
    -------
    np.ndarray [shape=(EMBED_DIM,), dtype=float32]; each block L2-normalised and
    weighted by ``BLOCK_WEIGHTS`` (blocks of a silent input are zero).
    """
    fft2, ivs, motion = _chroma_blocks(np.asarray(chroma, np.float32))
    parts = {
        "melody_intervals": _melody_block(np.asarray(intervals)),
        "chroma_2dfft": fft2,
        "chroma_intervals": ivs,
        "chroma_motion": motion,
    }
    out = np.zeros(EMBED_DIM, np.float32)
    for name, (a, b) in BLOCKS.items():
        w = BLOCK_WEIGHTS[name]
        v = parts[name]
        if name == "melody_intervals":
            # two halves (unigrams, bigrams) each unit length; renormalise the pair
            v = _l2(v)
        out[a:b] = w * _l2(np.asarray(v, np.float64))
    return out


# A piece with this many single-line tracks is an ensemble of parts (a string quartet, a
# choir, a wind quintet). When the part that looks most like a melody is its lowest (a
# cello plays fewer double stops than a violin), that is its bass, not its tune: the
# lead line is then the top line of all parts, where such music mostly carries its tune,
# and the second line stays the runner-up (in a pop arrangement whose piano part is that
# monophonic, the sung melody).
ENSEMBLE_LINES = 3


def note_parts(track_index, channel) -> np.ndarray:
    """Each note's part for the lead rule (int64): its track and channel as one number
    (``track * 16 + channel``). A file of one track per part gives its tracks; a type-0
    file holds every part in one track, told apart by channel only, and would otherwise
    have no lead track (its lead line the skyline of all notes, which loses the tune of a
    version whose melody lies under its accompaniment: docs/covers-history.md, "Parts of type-0
    files")."""
    return np.asarray(track_index, np.int64) * 16 + np.asarray(channel, np.int64)


def lead_masks(track_index, onset_beats, pitch, *, min_notes: int = 8, mono: float = 0.8
               ) -> tuple[np.ndarray, np.ndarray]:
    """(:func:`lead_mask`, :func:`second_line_mask`) of one piece's notes, scored once."""
    trk = np.asarray(track_index)
    keep, none = np.ones(trk.size, bool), np.zeros(trk.size, bool)
    tracks, inv = np.unique(trk, return_inverse=True)
    if tracks.size < 2:
        return keep, none
    q = np.round(np.asarray(onset_beats, np.float64) * 32).astype(np.int64)
    n = np.bincount(inv, minlength=tracks.size)
    distinct = np.zeros(tracks.size)
    pairs = np.unique(np.stack([inv, q]), axis=1)
    np.add.at(distinct, pairs[0], 1)
    ratio = distinct / np.maximum(n, 1)
    ok = (ratio >= mono) & (n >= min_notes)
    if not ok.any() or ok[n >= min_notes].all() and (n >= min_notes).sum() > 1 and ratio.min() >= 0.98:
        return keep, none
    score = np.where(ok, np.round(ratio, 2) + 0.05 * n / n.max(), -1.0)
    lead = int(np.argmax(score))
    score[lead] = -1.0
    second = none if score.max() < 0 else inv == int(np.argmax(score))
    if ok.sum() >= ENSEMBLE_LINES:
        mean_pitch = np.bincount(inv, weights=np.asarray(pitch, np.float64), minlength=tracks.size) / np.maximum(n, 1)
        if mean_pitch[lead] <= mean_pitch[ok].min():  # the bass of an ensemble of lines
            return keep, second
    return inv == lead, second


def lead_mask(track_index, onset_beats, pitch, *, min_notes: int = 8, mono: float = 0.8) -> np.ndarray:
    """Notes of the lead track, when a piece has one.

    The lead is the most monophonic track (share of its notes that start alone, at least
    ``mono``), more notes breaking near-ties: a sung melody is strictly one note at a
    time, a countermelody nearly so, a piano part far from it. When every track is alike
    (one track, or no monophonic one, or all monophonic with none clearly leading) or
    that track is the bass of an ensemble of single lines (``ENSEMBLE_LINES`` monophonic
    tracks or more, and none lower in mean pitch), the whole piece is kept and the lead
    line is its skyline.
    """
    return lead_masks(track_index, onset_beats, pitch, min_notes=min_notes, mono=mono)[0]


def second_line_mask(track_index, onset_beats, pitch, *, min_notes: int = 8, mono: float = 0.8) -> np.ndarray:
    """Notes of the runner-up to the lead (:func:`lead_mask`): the next monophonic track
    by the same score, when the piece has a lead and such a track (also in an ensemble of
    single lines whose lead line is the skyline of all parts, :func:`lead_mask`: the
    runner-up to its bass). Which of two monophonic tracks carries the tune (a sung
    melody, a countermelody, a bridge) is not always the one that looks most like a
    melody; the search aligns both."""
    return lead_masks(track_index, onset_beats, pitch, min_notes=min_notes, mono=mono)[1]


@njit(cache=True, nogil=True)
def _bass_line(onset, duration, pitch, tol, look_back, out):
    """Write the bass line of notes sorted by onset into ``out``; returns its length."""
    n = onset.size
    k = 0
    i = 0
    while i < n:
        t = onset[i]
        j = i
        while j < n and onset[j] - t <= tol:
            j += 1
        low = 1000
        for a in range(i, j):
            low = min(low, pitch[a])
        a = i - 1
        while a >= 0 and a >= i - look_back:  # notes still sounding
            if onset[a] + duration[a] > t + tol:
                low = min(low, pitch[a])
            a -= 1
        if k == 0 or out[k - 1] != low % 12:
            out[k] = low % 12
            k += 1
        i = j
    return k


def bass_line(onset_beats, duration_beats, pitch) -> np.ndarray:
    """The pitch class (0-11, int8) of the lowest sounding note at each onset (notes
    starting within ``BASS_ONSET_TOL_BEATS`` are one onset; notes still sounding from up
    to ``BASS_LOOK_BACK_NOTES`` earlier notes count), a repeated pitch class once."""
    on = np.asarray(onset_beats, np.float64)
    o = np.argsort(on, kind="stable")
    out = np.empty(on.size, np.int8)
    k = _bass_line(on[o], np.asarray(duration_beats, np.float64)[o], np.asarray(pitch, np.int64)[o],
                   BASS_ONSET_TOL_BEATS, BASS_LOOK_BACK_NOTES, out)
    return out[:k].copy()


@njit(cache=True, nogil=True)
def _bass_line_groups(onset, duration, pitch, offsets, tol, look_back, out, out_off):
    for g in range(offsets.size - 1):
        a, b = offsets[g], offsets[g + 1]
        k = _bass_line(onset[a:b], duration[a:b], pitch[a:b], tol, look_back, out[out_off[g]:])
        out_off[g + 1] = out_off[g] + k


def bass_line_groups(onset_beats, duration_beats, pitch, offsets) -> tuple[np.ndarray, np.ndarray]:
    """:func:`bass_line` of each group of notes (group ``g``: notes ``offsets[g]:offsets[g + 1]``).
    Returns (pitch classes int8, bass offsets [shape=(G + 1,)])."""
    offsets = np.asarray(offsets, np.int64)
    on = np.asarray(onset_beats, np.float64)
    dur, pitch = np.asarray(duration_beats, np.float64), np.asarray(pitch, np.int64)
    # by group, then onset, stably: each group in the order bass_line sorts it. The
    # stage's notes are in onset order within each piece already: then that order is
    # the identity and the sort (~0.2 s for 1.7M notes) is skipped
    g = _group_of(offsets)
    if not np.all((on[1:] >= on[:-1]) | (g[1:] != g[:-1])):
        o = np.lexsort((on, g))
        on, dur, pitch = on[o], dur[o], pitch[o]
    out = np.empty(on.size, np.int8)
    out_off = np.zeros(offsets.size, np.int64)
    _bass_line_groups(on, dur, pitch, offsets, BASS_ONSET_TOL_BEATS, BASS_LOOK_BACK_NOTES, out, out_off)
    return out[:out_off[-1]].copy(), out_off


def third_line(onset_beats, duration_beats, pitch, lead, lead_pitch) -> tuple[np.ndarray, np.ndarray]:
    """A piece's third melody line (pitches int16, onsets float32): the skyline of all its
    notes when its lead line is one track's (``lead``: :func:`lead_mask`) and is not that
    skyline already (``lead_pitch``: the lead line's pitches); else empty.

    A query made of all of a version's parts at once (merged tracks, a transcription, a
    short excerpt whose tune moves between parts) has that skyline as its own lead line:
    it matches the top of all stored parts better than the stored lead track. As the only
    stored line it loses the tune of a version whose melody lies under its accompaniment,
    so it is stored beside the lead and second lines and the search takes the best
    (docs/covers-history.md, "A stored skyline of all notes")."""
    on = np.asarray(onset_beats, np.float64)
    if np.all(lead):
        return np.zeros(0, np.int16), np.zeros(0, np.float32)
    tp, to = skyline(on, duration_beats, pitch)
    if np.array_equal(tp, lead_pitch):
        return np.zeros(0, np.int16), np.zeros(0, np.float32)
    return tp, to


def features_from_notes(onset_beats, duration_beats, pitch, track_index=None, *, chroma=None) -> dict:
    """All features of one set of notes (drums already removed).

    ``track_index`` (optional, one per note) lets the melody come from the lead tracks
    (see :func:`lead_mask`); without it the melody is the skyline of all notes.
    ``chroma`` (optional, (n_beats, 12), frame maximum 1) replaces the notes' beat chroma
    as the harmony sequence (a recording's measured chroma on the notes' beat grid:
    ``indexers.audio_chroma``); the melody still comes from the notes.

    Returns a dict with ``beat_chroma`` (n_beats, 12) float32, ``melody_pitch`` int16,
    ``melody_onset_beats`` float32, ``intervals`` int8, ``interval_index`` int64,
    ``vector`` (EMBED_DIM,) float32, ``bass_pc`` int8 (:func:`bass_line` of all notes),
    ``second_pitch``/``second_onset_beats`` (:func:`second_line_mask`'s skyline) and
    ``third_pitch``/``third_onset_beats`` (:func:`third_line`).
    """
    on = np.asarray(onset_beats, np.float64)
    dur = np.asarray(duration_beats, np.float64)
    pitch = np.asarray(pitch)
    chroma = beat_chroma(on, dur, pitch) if chroma is None else np.asarray(chroma, np.float32).reshape(-1, 12)
    m, m2 = lead_masks(track_index, on, pitch) if track_index is not None else (np.ones(on.size, bool),
                                                                                 np.zeros(on.size, bool))
    mp, mo = skyline(on[m], dur[m], pitch[m])
    iv, ivi = melody_intervals(mp)
    ap, ao = skyline(on[m2], dur[m2], pitch[m2])
    tp, to = third_line(on, dur, pitch, m, mp)
    return {
        "beat_chroma": chroma,
        "melody_pitch": mp,
        "melody_onset_beats": mo,
        "second_pitch": ap,
        "second_onset_beats": ao,
        "third_pitch": tp,
        "third_onset_beats": to,
        "intervals": iv,
        "interval_index": ivi,
        "vector": embedding(chroma, iv),
        "bass_pc": bass_line(on, dur, pitch),
    }


# --------------------------------------------------------------------------- many at once
# The same features for many groups of notes (pieces, tracks) in one pass: what the
# vectors stage computes for a batch. Each group's result equals the single-group
# function's (tests/test_vectors_batch.py); the work is whole-array NumPy and numba
# loops instead of ~100 small NumPy calls per group.

def _group_of(offsets: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))


def beat_chroma_groups(onset_beats, duration_beats, pitch, offsets) -> tuple[np.ndarray, np.ndarray]:
    """:func:`beat_chroma` (one frame per beat, from beat 0) of each group of notes.

    ``offsets`` [shape=(G + 1,)]: group g is notes ``offsets[g]:offsets[g + 1]``.
    Returns (chroma [shape=(F, 12), float32], frame offsets [shape=(G + 1,)]).
    """
    offsets = np.asarray(offsets, np.int64)
    n_groups = len(offsets) - 1
    on = np.asarray(onset_beats, np.float64)
    dur = np.minimum(np.asarray(duration_beats, np.float64), MAX_NOTE_BEATS)
    pc = np.asarray(pitch, np.int64) % 12
    g = _group_of(offsets)
    off = on + np.maximum(dur, 1e-3)
    keep = off > 0
    on, off, pc, g = np.maximum(on[keep], 0.0), off[keep], pc[keep], g[keep]
    n_frames = np.zeros(n_groups, np.int64)
    if off.size:
        top = np.full(n_groups, -np.inf)
        np.maximum.at(top, g, off)
        has = np.isfinite(top)
        n_frames[has] = np.ceil(top[has]).astype(np.int64)
    frame_off = np.concatenate([[0], np.cumsum(n_frames)]).astype(np.int64)
    first = np.floor(on).astype(np.int64)
    last = np.minimum(np.ceil(off).astype(np.int64) - 1, n_frames[g] - 1)
    span = np.maximum(last - first + 1, 1)
    out = np.zeros((int(frame_off[-1]), 12), np.float64)
    _add_overlaps(on, off, pc, first, span, frame_off[g], out)
    return _by_row_peak_f32(out), frame_off


@njit(cache=True)
def _by_row_peak_f32(x):
    # float32(x / x.max(axis=1)) where that maximum is > 0, else float32(x): what
    # np.divide(x, peak, where=peak > 0) then astype(np.float32) give, in one pass (a
    # NaN in a row is its maximum, as np.max says, and leaves the row undivided)
    out = np.empty(x.shape, np.float32)
    for i in range(x.shape[0]):
        peak = x[i, 0]
        for c in range(1, x.shape[1]):
            v = x[i, c]
            if v > peak or v != v:
                peak = v
                if v != v:
                    break
        for c in range(x.shape[1]):
            out[i, c] = x[i, c] / peak if peak > 0 else x[i, c]
    return out


@njit(cache=True, nogil=True)
def _add_overlaps(on, off, pc, first, span, row0, out):
    # out[row0[i] + f, pc[i]] += the overlap of note i with frame f, for its frames
    # f = first[i] .. first[i] + span[i] - 1: note by note, frame by frame, in the order
    # np.add.at adds them (so each sum is the same to the bit), without the note x frame
    # index arrays
    for i in range(on.size):
        for k in range(span[i]):
            f = first[i] + k
            ov = np.minimum(off[i], f + 1.0) - np.maximum(on[i], np.float64(f))
            out[row0[i] + f, pc[i]] += np.maximum(ov, 0.0)


def lead_mask_groups(track_index, onset_beats, pitch, offsets, *, min_notes: int = 8, mono: float = 0.8) -> np.ndarray:
    """:func:`lead_mask` of each group (piece) of notes, as one mask over all notes."""
    return lead_masks_groups(track_index, onset_beats, pitch, offsets, min_notes=min_notes, mono=mono)[0]


def lead_masks_groups(track_index, onset_beats, pitch, offsets, *, min_notes: int = 8, mono: float = 0.8
                      ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`lead_mask` and :func:`second_line_mask` of each group (piece) of notes, as
    two masks over all notes."""
    offsets = np.asarray(offsets, np.int64)
    trk = np.asarray(track_index).astype(np.int64)
    n_all = trk.size
    if n_all == 0:
        return np.ones(0, bool), np.zeros(0, bool)
    g = _group_of(offsets)
    n_groups = len(offsets) - 1
    span = int(trk.max() - trk.min()) + 1
    key = g * span + (trk - trk.min())
    pairs, inv, n = _pairs_of(key, n_groups * span)  # (piece, track), sorted
    pg = pairs // span  # piece of each pair
    q = np.round(np.asarray(onset_beats, np.float64) * 32).astype(np.int64)
    q = q - q.min()
    distinct = _distinct_onsets(inv, q, g, pairs.size).astype(np.float64)
    ratio = distinct / np.maximum(n, 1)
    ok = (ratio >= mono) & (n >= min_notes)
    big = n >= min_notes
    n_tracks = np.bincount(pg, minlength=n_groups)
    any_ok = np.bincount(pg, weights=ok, minlength=n_groups) > 0
    n_big = np.bincount(pg, weights=big, minlength=n_groups)
    all_big_ok = np.bincount(pg, weights=big & ~ok, minlength=n_groups) == 0
    min_ratio = np.full(n_groups, np.inf)
    np.minimum.at(min_ratio, pg, ratio)
    n_max = np.zeros(n_groups, np.int64)
    np.maximum.at(n_max, pg, n)
    keep_all = (n_tracks < 2) | ~any_ok | (all_big_ok & (n_big > 1) & (min_ratio >= 0.98))
    score = np.where(ok, np.round(ratio, 2) + 0.05 * n / n_max[pg], -1.0)
    lead = _first_best(score, pg, n_groups)
    # the bass of an ensemble of single lines leads: the piece's skyline instead (lead_masks)
    mean_pitch = np.bincount(inv, weights=np.asarray(pitch, np.float64), minlength=pairs.size) / np.maximum(n, 1)
    lowest = np.full(n_groups, np.inf)
    np.minimum.at(lowest, pg[ok], mean_pitch[ok])
    ensemble = (~keep_all & (np.bincount(pg, weights=ok, minlength=n_groups) >= ENSEMBLE_LINES) & (lead >= 0)
                & (mean_pitch[np.maximum(lead, 0)] <= lowest))
    score[lead[lead >= 0]] = -1.0
    second = _first_best(score, pg, n_groups)
    second[keep_all] = -1
    return keep_all[g] | ensemble[g] | (inv == lead[g]), (inv == second[g]) & (second[g] >= 0)


def _first_best(score: np.ndarray, pg: np.ndarray, n_groups: int) -> np.ndarray:
    """Per group, the first pair (lowest track) with the group's best score, as
    np.argmax picks (-1: the group has no pair scoring above -1, or no pair); pg is
    sorted, so a group's first candidate is where pg[cand] changes."""
    best = np.full(n_groups, -np.inf)
    np.maximum.at(best, pg, score)
    cand = np.flatnonzero((score == best[pg]) & (score > -1.0))
    first = cand[np.concatenate([[True], pg[cand][1:] != pg[cand][:-1]])] if cand.size else cand
    out = np.full(n_groups, -1, np.int64)
    out[pg[first]] = first
    return out


def _pairs_of(key: np.ndarray, n_keys: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``np.unique(key, return_inverse=True, return_counts=True)`` for keys in
    ``0..n_keys - 1``: by a count of each key when that table is not much larger than
    the keys (pieces x track span: a few thousand entries), instead of a sort."""
    if n_keys > 4 * key.size + 1024:
        return np.unique(key, return_inverse=True, return_counts=True)
    counts = np.bincount(key, minlength=n_keys)
    present = counts > 0
    rank = np.cumsum(present) - 1
    return np.flatnonzero(present), rank[key], counts[present]


@njit(cache=True)
def _distinct_onsets_sorted(inv, q, n_pairs):
    # notes of each pair in order of q (rising): a note whose q differs from the pair's
    # previous note's starts a new distinct onset (q >= 0, so -1 is "none yet")
    last = np.full(n_pairs, -1, np.int64)
    out = np.zeros(n_pairs, np.int64)
    for i in range(inv.size):
        k = inv[i]
        if q[i] != last[k]:
            out[k] += 1
            last[k] = q[i]
    return out


def _distinct_onsets(inv: np.ndarray, q: np.ndarray, g: np.ndarray, n_pairs: int) -> np.ndarray:
    """Distinct values of ``q`` (>= 0) among each pair's notes. When ``q`` rises within
    each group (the stage's notes are in onset order) one pass counts them; otherwise the
    (pair, onset) codes are sorted and the distinct ones counted."""
    if np.all((q[1:] >= q[:-1]) | (g[1:] != g[:-1])):
        return _distinct_onsets_sorted(inv, q, n_pairs)
    pq = np.sort(inv * (int(q.max()) + 1) + q)
    pq = pq[np.concatenate([[True], pq[1:] != pq[:-1]])]  # distinct (pair, onset)
    return np.bincount(pq // (int(q.max()) + 1), minlength=n_pairs)


@njit(cache=True)
def _skyline_keep_groups(onset, offset, pitch, group):
    # _skyline_keep, restarted at each group (rows sorted by group, onset, -pitch)
    n = onset.size
    keep = np.zeros(n, np.bool_)
    eps = 1e-6
    i = 0
    while i < n:
        g = group[i]
        top_pitch = -1
        top_end = -1e18
        while i < n and group[i] == g:
            t = onset[i]
            p = pitch[i]
            if p >= top_pitch or t >= top_end - 0.25:
                keep[i] = True
                top_pitch = p
                top_end = offset[i]
            j = i + 1
            while j < n and group[j] == g and onset[j] <= t + eps:
                j += 1
            i = j
    return keep


@njit(cache=True)
def _in_register_groups(p, offsets, w, drop):
    # _in_register per group: a note is kept unless it lies more than `drop` under the
    # median of the edge-padded window of 2w + 1 notes around it. The median is the
    # (w + 1)-th smallest value, so it is <= p + drop exactly when at least w + 1 of
    # the window's values are: a count, no sort.
    keep = np.ones(p.size, np.bool_)
    for g in range(offsets.size - 1):
        a, b = offsets[g], offsets[g + 1]
        m = b - a
        if m <= 2 * w:
            continue
        for i in range(m):
            limit = p[a + i] + drop
            n_le = 0
            for k in range(2 * w + 1):
                j = min(max(i + k - w, 0), m - 1)
                if p[a + j] <= limit:
                    n_le += 1
            keep[a + i] = n_le >= w + 1
    return keep


def skyline_groups(onset_beats, duration_beats, pitch, offsets):
    """:func:`skyline` of each group of notes. Returns (pitches int16, onsets float32,
    melody offsets [shape=(G + 1,)])."""
    offsets = np.asarray(offsets, np.int64)
    on = np.asarray(onset_beats, np.float64)
    p = np.asarray(pitch, np.int64)
    n_groups = len(offsets) - 1
    if on.size == 0:
        return np.zeros(0, np.int16), np.zeros(0, np.float32), np.zeros(n_groups + 1, np.int64)
    g = _group_of(offsets)
    off = on + np.asarray(duration_beats, np.float64)
    q = np.round(on * 32) / 32
    order = _order_group_onset_pitch_down(g, q, p)
    keep = _skyline_keep_groups(q[order], off[order], p[order], g[order])
    sel = order[keep]
    sky_off = np.concatenate([[0], np.cumsum(np.bincount(g[sel], minlength=n_groups))]).astype(np.int64)
    sel = sel[_in_register_groups(p[sel].astype(np.float64), sky_off, REGISTER_NEIGHBOURS, float(REGISTER_DROP))]
    mel_off = np.concatenate([[0], np.cumsum(np.bincount(g[sel], minlength=n_groups))]).astype(np.int64)
    return p[sel].astype(np.int16), on[sel].astype(np.float32), mel_off


def _order_group_onset_pitch_down(g: np.ndarray, q: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``np.lexsort((-p, q, g))``: by group, onset ``q`` (a multiple of 1/32 beat), pitch
    down, ties in input order. One stable argsort of a single int64 key (group, onset in
    32nds, 127 - pitch) when it fits, which is ~3x faster than lexsort's three passes on
    the nearly sorted notes the stage gives (by onset, then pitch up)."""
    if p.size and np.isfinite(q).all() and p.min() >= 0 and p.max() <= 127:
        qi = np.round(q * 32).astype(np.int64)  # exact: q is a multiple of 1/32
        q0, span = int(qi.min()), int(qi.max()) - int(qi.min()) + 1
        if (int(g.max()) + 1) * span * 128 < 2 ** 62:
            key = (g.astype(np.int64) * span + (qi - q0)) * 128 + (127 - p)
            return np.argsort(key, kind="stable")
    return np.lexsort((-p, q, g))


def melody_intervals_groups(pitches, offsets, with_index: bool = False):
    """:func:`melody_intervals` of each group. Returns (intervals int8, offsets), and
    with ``with_index`` (intervals, each one's note in its own group int64, offsets).
    One numba pass to count and one to fill: the NumPy form's int64 temporaries raised the
    peak memory of loading a 100,000-piece cover index (12.4M melody notes) by ~530 MB
    (docs/covers.md, "Loading the index at 100,000 pieces")."""
    offsets = np.asarray(offsets, np.int64)
    p = np.asarray(pitches)
    if not np.issubdtype(p.dtype, np.integer):
        p = p.astype(np.int64)
    iv, at, iv_off = _intervals_groups(p, offsets, with_index)
    return (iv, at, iv_off) if with_index else (iv, iv_off)


@njit(cache=True)
def _intervals_groups(pitches, offsets, with_index):
    n_groups = offsets.size - 1
    iv_off = np.zeros(n_groups + 1, np.int64)
    for g in range(n_groups):  # how many: a group's pitch-class changes
        runs, prev = 0, -1
        for i in range(offsets[g], offsets[g + 1]):
            pc = pitches[i] % 12
            if pc != prev:
                runs += 1
                prev = pc
        iv_off[g + 1] = iv_off[g] + max(runs - 1, 0)
    iv = np.empty(iv_off[-1], np.int8)
    at = np.empty(iv_off[-1] if with_index else 0, np.int64)
    for g in range(n_groups):
        k, prev, prev_i = iv_off[g], -1, 0
        for i in range(offsets[g], offsets[g + 1]):
            pc = pitches[i] % 12
            if pc != prev:
                if prev >= 0:  # from the run before (its first note) to this one
                    iv[k] = (pc - prev) % 12
                    if with_index:
                        at[k] = prev_i - offsets[g]
                    k += 1
                prev, prev_i = pc, i
    return iv, at, iv_off


def _l2_rows(v: np.ndarray) -> np.ndarray:
    n = np.sqrt(np.einsum("ij,ij->i", v, v))
    return np.divide(v, n[:, None], out=v.copy(), where=n[:, None] > 0)


@njit(cache=True)
def _select(a, k):
    # the k-th smallest value of a, with a[:k] left holding values <= it (a is reordered
    # in place). Each round splits the range around a pivot with a branchless partition
    # (a compare, two stores and an add per value: the medians of a 400k-note batch took
    # 0.08-0.11 s CPU instead of 0.19 s with a Hoare partition, whose branches on
    # magnitudes mispredict half the time), then the values equal to it, so that ties
    # always make progress. The k-th smallest value does not depend on how it is found.
    lo, hi = 0, a.size
    while hi - lo > 16:
        x, y, z = a[lo], a[(lo + hi) // 2], a[hi - 1]
        pivot = max(min(x, y), min(max(x, y), z))  # median of three
        j = lo
        for i in range(lo, hi):  # a[lo:j] < pivot <= a[j:i]
            v = a[i]
            a[i] = a[j]
            a[j] = v
            j += v < pivot
        if k < j:
            hi = j
            continue
        j2 = j
        for i in range(j, hi):  # a[j:j2] == pivot < a[j2:i]
            v = a[i]
            a[i] = a[j2]
            a[j2] = v
            j2 += v <= pivot
        if k < j2:
            return pivot
        lo = j2
    for i in range(lo + 1, hi):  # the rest: insertion sort
        v = a[i]
        t = i - 1
        while t >= lo and a[t] > v:
            a[t + 1] = a[t]
            t -= 1
        a[t + 1] = v
    return a[k]


@njit(cache=True)
def _median_cols_groups(xt, offsets):
    # xt [columns, rows]: per group and column np.median over the group's rows (the
    # mean of the two middle values for an even count, as numpy computes it)
    n_groups = offsets.size - 1
    out = np.zeros((n_groups, xt.shape[0]), np.float64)
    for g in range(n_groups):
        a, b = offsets[g], offsets[g + 1]
        m = b - a
        if m == 0:
            continue
        for c in range(xt.shape[0]):
            s = xt[c, a:b].copy()
            hi = _select(s, m // 2)
            if m % 2 == 1:
                out[g, c] = hi
            else:
                # the largest of the values left below the upper middle one
                lo = s[0]
                for t in range(1, m // 2):
                    lo = max(lo, s[t])
                out[g, c] = (lo + hi) / 2.0
    return out


@njit(cache=True)
def _sum_rows_groups(x, starts, counts):
    # row sums of each group, added one row after the other from the first, as
    # x.sum(axis=0) does for a group alone (np.add.reduceat adds in another order)
    out = np.empty((starts.size, x.shape[1]), np.float64)
    for g in range(starts.size):
        a = starts[g]
        for c in range(x.shape[1]):
            acc = x[a, c]
            for i in range(a + 1, a + counts[g]):
                acc += x[i, c]
            out[g, c] = acc
    return out


_WINDOWS_PER_FFT = 4096  # windows per FFT call: 4096 x 96 complex values (6 MiB) stay in cache


@njit(cache=True, nogil=True)
def _gather_windows(xpt, w_start, out):
    # out[c, t, i] = xpt[c, w_start[i] + t] as a complex number (imaginary part 0): the
    # (pitch, time) window i, time on the middle axis
    for c in range(out.shape[0]):
        for t in range(out.shape[1]):
            for i in range(w_start.size):
                out[c, t, i] = xpt[c, w_start[i] + t]


def _patch_magnitudes(xpt: np.ndarray, w_start: np.ndarray) -> np.ndarray:
    """|2D-FFT| of the 8-beat patches ``xpt[:, s:s + PATCH_BEATS]`` (pitch-class rows) for
    each start ``s`` in ``w_start``, the 7 pitch bins x ``PATCH_BEATS // 2 + 1`` time bins
    that :func:`_chroma_blocks` keeps -> [shape=(7 * n_t, len(w_start))] (bin-major: each
    bin's values contiguous, for the medians).

    ``np.fft.fft2(axes=(pitch, time))`` is an FFT over time, then one over pitch; here the
    same two transforms, the second only on the kept time bins, through ``scipy.fft``:
    the same pocketfft code as NumPy's (the same numbers to the bit, checked on every
    patch of pop909-dev), but it transforms several rows at once with SIMD where NumPy
    loops over them one by one: 2x faster on 2 cores."""
    import scipy.fft

    n_t = PATCH_BEATS // 2 + 1
    mag = np.empty((7, n_t, w_start.size))
    for a in range(0, w_start.size, _WINDOWS_PER_FFT):
        ws = w_start[a:a + _WINDOWS_PER_FFT]
        win = np.empty((12, PATCH_BEATS, ws.size), np.complex128)
        _gather_windows(xpt, ws, win)
        f = scipy.fft.fft(win, axis=1, overwrite_x=True)[:, :n_t]
        f = scipy.fft.fft(f, axis=0, overwrite_x=True)[:7]
        np.abs(f, out=mag[:, :, a:a + ws.size])
    return mag.reshape(7 * n_t, w_start.size)


@njit(cache=True)
def _place_transposed(x, rows, out):
    # out[:, rows[i]] = x[i]: the frames put in place and transposed in one copy
    for i in range(x.shape[0]):
        for c in range(x.shape[1]):
            out[c, rows[i]] = x[i, c]


def _chroma_blocks_groups(chroma: np.ndarray, offsets: np.ndarray):
    """:func:`_chroma_blocks` of each group of chroma frames -> (fft2 [G, 35], intervals
    [G, 7], motion [G, 12])."""
    n_groups = len(offsets) - 1
    n_t = PATCH_BEATS // 2 + 1
    fft2 = np.zeros((n_groups, 7 * n_t))
    ivs = np.zeros((n_groups, 7))
    motion = np.zeros((n_groups, 12))
    g = _group_of(offsets)
    voiced = chroma.sum(axis=1) > 0
    x = chroma[voiced].astype(np.float64)
    gv = g[voiced]
    if x.shape[0] == 0:
        return fft2, ivs, motion
    counts = np.bincount(gv, minlength=n_groups)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    spec = np.fft.rfft(x, axis=1)
    ac = np.fft.irfft(np.abs(spec) ** 2, n=12, axis=1)[:, :7]
    has = np.flatnonzero(counts > 0)
    starts = np.concatenate([[0], np.cumsum(counts)])[:-1]
    ivs[has] = _sum_rows_groups(np.ascontiguousarray(ac), starts[has], counts[has]) / counts[has][:, None]
    # successive frames within a group
    same = np.flatnonzero(gv[1:] == gv[:-1])
    if same.size:
        # the products of all successive rows, then those within a group: the same
        # elementwise products as of the two gathered rows, without gathering twice
        prod = np.conj(spec[:-1])
        prod *= spec[1:]
        xc = np.fft.irfft(prod[same], n=12, axis=1)
        mc = np.bincount(gv[same], minlength=n_groups)
        mh = np.flatnonzero(mc > 0)
        mstarts = np.concatenate([[0], np.cumsum(mc)])[:-1]
        motion[mh] = _sum_rows_groups(xc, mstarts[mh], mc[mh]) / mc[mh][:, None]
    # 8-beat patches: each voiced group padded with silent frames to at least 8
    padded = np.maximum(counts, PATCH_BEATS) * (counts > 0)
    p_off = np.concatenate([[0], np.cumsum(padded)]).astype(np.int64)
    rank = np.arange(x.shape[0]) - np.repeat(starts, counts)
    xpt = np.zeros((12, int(p_off[-1])))  # pitch-class rows, frames along them
    _place_transposed(x, p_off[gv] + rank, xpt)
    n_win = np.where(counts > 0, padded - PATCH_BEATS + 1, 0)
    w_off = np.concatenate([[0], np.cumsum(n_win)]).astype(np.int64)
    w_start = np.repeat(p_off[:-1], n_win) + (np.arange(int(w_off[-1])) - np.repeat(w_off[:-1], n_win))
    mag = _patch_magnitudes(xpt, w_start)  # bins x windows
    fft2[:] = np.sqrt(_median_cols_groups(mag, w_off))
    return fft2, ivs, motion


def embedding_groups(chroma: np.ndarray, chroma_offsets, intervals: np.ndarray, interval_offsets) -> np.ndarray:
    """:func:`embedding` of each group: its frames of ``chroma`` and its ``intervals``.

    Returns np.ndarray [shape=(G, EMBED_DIM), dtype=float32].
    """
    chroma_offsets = np.asarray(chroma_offsets, np.int64)
    interval_offsets = np.asarray(interval_offsets, np.int64)
    n_groups = len(chroma_offsets) - 1
    fft2, ivs, motion = _chroma_blocks_groups(np.asarray(chroma, np.float32), chroma_offsets)
    iv = np.asarray(intervals).astype(np.int64)
    gi = _group_of(interval_offsets)
    uni = np.bincount(gi * 11 + iv - 1, minlength=n_groups * 11).reshape(n_groups, 11).astype(np.float64)
    pair = np.flatnonzero(gi[1:] == gi[:-1])
    code = (iv[pair] - 1) * 11 + (iv[pair + 1] - 1)
    bi = np.bincount(gi[pair] * 121 + code, minlength=n_groups * 121).reshape(n_groups, 121).astype(np.float64)
    melody = np.concatenate([_l2_rows(np.sqrt(uni)), _l2_rows(np.sqrt(bi))], axis=1)
    parts = {"melody_intervals": _l2_rows(melody), "chroma_2dfft": fft2, "chroma_intervals": ivs,
             "chroma_motion": motion}
    out = np.zeros((n_groups, EMBED_DIM), np.float32)
    for name, (a, b) in BLOCKS.items():
        out[:, a:b] = BLOCK_WEIGHTS[name] * _l2_rows(np.asarray(parts[name], np.float64))
    return out
