"""The time scale of a piece's notated beat, from its onsets alone (no beat grid needed).

A file re-timed by a factor ``f`` (its beats are ``f`` of the original's), or written with
no beat grid at all (a performance: beats are seconds at some fixed tempo), has its note
onsets ``f`` times as far apart. ``relative_tempo`` reads ``f`` modulo octaves: the
lags between onsets of binary-metre music fall on ``2**k`` beats (sixteenths, eighths,
beats, bars), so the lags' log2 taken modulo 1 peak at ``log2(f) mod 1``. Two things
blur that peak and are handled here:

- a tempo curve (rubato, a drifting performance) changes the local rate, so the lags are
  read in windows of ``WINDOW_BEATS`` and the windows' peaks are averaged on the circle
  (each weighted by how clear its peak is);
- onset jitter (a performance, a rough transcription) spreads the notes of one chord:
  onsets closer than ``CLUSTER_BEATS`` are merged into one event at their mean (weighted
  by up to ``CLUSTER_MAX`` notes), which averages the jitter out.

The octave (is the query at half, the same or double the stored pieces' beat?) is not
decided here. The cover search (query.covers) aligns every candidate at ``f`` as well as
at the scale it chose on its best few candidates; trying ``f/2`` and ``2 f`` too helped
whole performances but cost short excerpts more (honest benchmark, fit part: perf
0.942 -> 0.965, excerpt 0.930 -> 0.913), so it does not.

Accuracy (honest benchmark, fit part, level 2, 30 queries each, within 0.085 octave of
the factor the query was re-timed by): re-timed 1.00, re-timed + jitter + edits + merged
tracks 0.57, the same as a 10-15 s excerpt 0.30; onset jitter of +-60 ms is what blurs it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["relative_tempo"]

BINS = 48  # per octave
WINDOW_BEATS = 8.0
HOP_BEATS = 4.0
LAG_BEATS = (0.2, 4.0)  # the lags read (sixteenths to a bar of 4/4)
SIGMA_OCT = 0.05  # the peak's width, octaves
CLUSTER_BEATS = 0.12
CLUSTER_MAX = 3
SPAN_BEATS = 128.0  # a longer query is read in its middle part (as the cover search aligns it)


def _events(onset_beats: np.ndarray) -> np.ndarray:
    on = np.sort(np.asarray(onset_beats, np.float64))
    br = np.flatnonzero(np.diff(on) > CLUSTER_BEATS) + 1
    starts = np.concatenate([[0], br])
    sums = np.add.reduceat(on, starts)
    counts = np.diff(np.concatenate([starts, [on.size]]))
    return np.repeat(sums / counts, np.minimum(counts, CLUSTER_MAX))


def relative_tempo(onset_beats) -> tuple[float, float]:
    """``(f, clarity)``: the onsets' beat is ``f`` times a power-of-two beat, ``f`` in
    [2**-0.5, 2**0.5) (1.0: on the notated grid); ``clarity`` 0..1 is the length of the
    windows' mean direction on the circle (1: every window agrees). ``(1.0, 0.0)`` when
    there are too few onsets to say."""
    on = np.asarray(onset_beats, np.float64)
    if on.size < 8:
        return 1.0, 0.0
    ev = _events(on)
    if ev[-1] - ev[0] > SPAN_BEATS:
        mid = 0.5 * (ev[0] + ev[-1])
        ev = ev[(ev >= mid - SPAN_BEATS / 2) & (ev < mid + SPAN_BEATS / 2)]
        if ev.size < 8:
            return 1.0, 0.0
    lo, hi = LAG_BEATS
    # every pair of events (i < j) whose lag is in (lo, hi), and the windows
    # [t_w, t_w + WINDOW_BEATS) (t_w = ev[0] + w HOP_BEATS < ev[-1]) holding both ends
    n_w = int(np.ceil((ev[-1] - ev[0]) / HOP_BEATS))
    counts = np.maximum(np.searchsorted(ev, ev + hi, "left") - np.arange(ev.size) - 1, 0)
    i = np.repeat(np.arange(ev.size), counts)
    j = i + 1 + np.arange(i.size) - np.repeat(np.cumsum(counts) - counts, counts)
    lag = ev[j] - ev[i]
    ok = lag > lo
    i, j, lag = i[ok], j[ok], lag[ok]
    # a pair is in window w when t_w <= ev[i] and ev[j] < t_w + WINDOW_BEATS
    span = int(np.ceil(WINDOW_BEATS / HOP_BEATS))
    w_min = np.floor((ev[j] - WINDOW_BEATS - ev[0]) / HOP_BEATS).astype(np.int64) + 1
    w = (w_min[:, None] + np.arange(span)).ravel()
    L = np.repeat(np.log2(lag), span)
    inside = (w <= np.repeat(np.floor((ev[i] - ev[0]) / HOP_BEATS), span)) & (w >= 0) & (w < n_w)
    w, L = w[inside], L[inside]
    if n_w <= 0 or w.size == 0:
        return 1.0, 0.0
    # each octave of lags weighs the same within a window (short lags are many more)
    octave = np.floor(L - np.log2(lo)).astype(np.int64)
    n_oct = int(octave.max()) + 1
    wo = w * n_oct + octave
    weight = 1.0 / np.bincount(wo)[wo]
    b = (np.mod(L, 1.0) * BINS).astype(np.int64) % BINS
    h = np.bincount(w * BINS + b, weights=weight, minlength=n_w * BINS).reshape(n_w, BINS)
    valid = np.bincount(w, minlength=n_w) >= 4
    if not valid.any():
        return 1.0, 0.0
    # a circular Gaussian kernel over the bins, applied by FFT to each window's histogram
    d = np.minimum(np.arange(BINS), BINS - np.arange(BINS)) / BINS
    kernel = np.fft.rfft(np.exp(-0.5 * (d / SIGMA_OCT) ** 2))
    h = np.fft.irfft(np.fft.rfft(h[valid], axis=1) * kernel, BINS, axis=1)
    k = np.argmax(h, axis=1)
    strength = h[np.arange(k.size), k] / np.maximum(h.mean(axis=1), 1e-12)
    centres = 2j * np.pi * (np.arange(BINS) + 0.5) / BINS
    acc = complex(np.sum(strength * np.exp(centres[k])))
    total = float(strength.sum())
    if total <= 0:
        return 1.0, 0.0
    phi = (np.angle(acc) / (2 * np.pi)) % 1.0
    f = float(2 ** phi)
    return (f if f < 2 ** 0.5 else f / 2), float(abs(acc) / total)
