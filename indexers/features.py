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


def lead_mask(track_index, onset_beats, pitch, *, min_notes: int = 8, mono: float = 0.8) -> np.ndarray:
    """Notes of the lead track, when a piece has one.

    The lead is the most monophonic track (share of its notes that start alone, at least
    ``mono``), more notes breaking near-ties: a sung melody is strictly one note at a
    time, a countermelody nearly so, a piano part far from it. When every track is alike
    (one track, or no monophonic one, or all monophonic with none clearly leading) the
    whole piece is kept and the lead line is its skyline.
    """
    trk = np.asarray(track_index)
    keep = np.ones(trk.size, bool)
    if trk.size == 0:
        return keep
    tracks, inv = np.unique(trk, return_inverse=True)
    if tracks.size < 2:
        return keep
    q = np.round(np.asarray(onset_beats, np.float64) * 32).astype(np.int64)
    n = np.bincount(inv, minlength=tracks.size)
    distinct = np.zeros(tracks.size)
    pairs = np.unique(np.stack([inv, q]), axis=1)
    np.add.at(distinct, pairs[0], 1)
    ratio = distinct / np.maximum(n, 1)
    ok = (ratio >= mono) & (n >= min_notes)
    if not ok.any() or ok[n >= min_notes].all() and (n >= min_notes).sum() > 1 and ratio.min() >= 0.98:
        return keep
    score = np.where(ok, np.round(ratio, 2) + 0.05 * n / n.max(), -1.0)
    return inv == int(np.argmax(score))


def features_from_notes(onset_beats, duration_beats, pitch, track_index=None, *, chroma=None) -> dict:
    """All features of one set of notes (drums already removed).

    ``track_index`` (optional, one per note) lets the melody come from the lead tracks
    (see :func:`lead_mask`); without it the melody is the skyline of all notes.
    ``chroma`` (optional, (n_beats, 12), frame maximum 1) replaces the notes' beat chroma
    as the harmony sequence (a recording's measured chroma on the notes' beat grid:
    ``indexers.audio_chroma``); the melody still comes from the notes.

    Returns a dict with ``beat_chroma`` (n_beats, 12) float32, ``melody_pitch`` int16,
    ``melody_onset_beats`` float32, ``intervals`` int8, ``interval_index`` int64 and
    ``vector`` (EMBED_DIM,) float32.
    """
    on = np.asarray(onset_beats, np.float64)
    dur = np.asarray(duration_beats, np.float64)
    pitch = np.asarray(pitch)
    chroma = beat_chroma(on, dur, pitch) if chroma is None else np.asarray(chroma, np.float32).reshape(-1, 12)
    m = lead_mask(track_index, on, pitch) if track_index is not None else np.ones(on.size, bool)
    mp, mo = skyline(on[m], dur[m], pitch[m])
    iv, ivi = melody_intervals(mp)
    return {
        "beat_chroma": chroma,
        "melody_pitch": mp,
        "melody_onset_beats": mo,
        "intervals": iv,
        "interval_index": ivi,
        "vector": embedding(chroma, iv),
    }
