"""The harmony sequence of a recording: its measured HPCP chroma on its notes' beat grid.

A recording's notes come from transcription (``ingest.transcribe``), on a constant-tempo
grid: beat ``k`` of the notes is the time span ``[k, k + 1) * 60 / bpm`` seconds, where
``bpm`` is the mix's tracked tempo (``tempo_changes.tempo_bpm`` of the piece). Its chroma
was measured at ingest per *tracked* beat (``audio_beats``: beat ``i`` covers
``[time_s[i], time_s[i + 1])``, 12-bin HPCP summing to 1). The tracked beats drift
around the constant grid and start at another phase, so :func:`hpcp_on_grid` resamples
them onto the notes' grid: each grid beat sums the tracked beats it spans, each weighted
by the share of it that falls in the grid beat. Melody (from the notes) and harmony (from the audio) then count the same
beats.

:func:`audio_chroma` turns that into the covers' chroma convention (``beat_chroma`` of
``indexers.features``: one frame per beat, each frame's maximum 1, silent frames 0), with
a mild sharpening that makes measured chroma look more like note chroma: each frame is
raised to ``POWER`` (weak bins, mostly harmonics and leakage, shrink) and bins under
``FLOOR`` of the frame's maximum are set to 0.

The same two functions serve a stored piece (``indexers.vectors``, from ``audio_beats``)
and an audio file used as a query (``query.covers``, from ``ingest.audio.audio_query_parts``),
so both get the same harmony sequence.
"""

from __future__ import annotations

import numpy as np

__all__ = ["hpcp_on_grid", "audio_chroma", "POWER", "FLOOR", "VERSION"]

# Sharpening of measured chroma (provisional; to be measured on benchmarks/audio.py).
POWER = 2.0
FLOOR = 0.1
VERSION = f"hpcp-grid p{POWER:g} f{FLOOR:g}"


def hpcp_on_grid(beats_s, beat_hpcp, bpm: float, *, n_beats: int | None = None,
                 start_beats: float = 0.0) -> np.ndarray:
    """Per-tracked-beat chroma resampled onto a constant-tempo beat grid.

    Parameters
    ----------
    beats_s : tracked beat times (s), increasing; beat ``i`` covers up to beat ``i + 1``,
        the last one median-beat-period long.
    beat_hpcp : (n_tracked, 12) chroma per tracked beat.
    bpm : tempo of the grid (grid beat ``k`` starts at ``(k + start_beats) * 60 / bpm`` s).
    n_beats : number of grid beats to return (default: up to the end of the last tracked beat).

    Returns
    -------
    np.ndarray [shape=(n_beats, 12), dtype=float64]: the tracked beats' chroma in each
    grid beat, each weighted by the share of the tracked beat that falls in it (0 where no
    tracked beat overlaps).
    """
    b = np.asarray(beats_s, np.float64)
    h = np.asarray(beat_hpcp, np.float64).reshape(-1, 12)
    period = 60.0 / float(bpm)
    if b.size == 0:
        return np.zeros((n_beats or 0, 12))
    tracked_period = float(np.median(np.diff(b))) if b.size >= 2 else period
    ends = np.concatenate([b[1:], [b[-1] + tracked_period]])
    if n_beats is None:
        n_beats = max(int(np.ceil(ends[-1] / period - start_beats)), 0)
    grid = (np.arange(n_beats + 1) + start_beats) * period
    # cumulative chroma mass over time (piecewise constant per tracked beat, density =
    # chroma / beat length, so a tracked beat contributes its chroma once in total)
    dens = h / np.maximum(ends - b, 1e-9)[:, None]
    knots = np.concatenate([b, [ends[-1]]])
    cum = np.concatenate([np.zeros((1, 12)), np.cumsum(dens * (ends - b)[:, None], axis=0)])

    def mass(t):
        # integral of the density from -inf to t (gaps between beats carry none: ends[i]
        # == b[i + 1] by construction)
        i = np.clip(np.searchsorted(knots, t, side="right") - 1, 0, b.size - 1)
        inside = np.clip(t - b[i], 0.0, ends[i] - b[i])
        out = cum[i] + dens[i] * inside[:, None]
        out[t < b[0]] = 0.0
        return out

    m = mass(grid)
    return np.maximum(np.diff(m, axis=0), 0.0)


def audio_chroma(beats_s, beat_hpcp, bpm: float, *, n_beats: int | None = None, start_beats: float = 0.0,
                 power: float = POWER, floor: float = FLOOR) -> np.ndarray:
    """The beat chroma of a recording on its notes' grid, in ``beat_chroma``'s
    convention (frame maximum 1, silent frames 0), sharpened by ``power`` and ``floor``.

    Returns
    -------
    np.ndarray [shape=(n_beats, 12), dtype=float32]
    """
    x = hpcp_on_grid(beats_s, beat_hpcp, bpm, n_beats=n_beats, start_beats=start_beats)
    peak = x.max(axis=1, keepdims=True) if x.size else np.zeros((x.shape[0], 1))
    np.divide(x, peak, out=x, where=peak > 0)
    if power != 1.0:
        x = x ** power
    x[x < floor] = 0.0
    return x.astype(np.float32)
