"""Probe for ``benchmarks/fusion_probe.py --probe``: the candidate's length, and whether
its harmony alignment's time scale agrees with the query's onsets.

- "+ length": log of the candidate's beats and of its melody notes, each also times the
  short-query indicator (a Smith-Waterman maximum over a longer piece finds more chance
  matches);
- "+ scale agreement": the distance, in octaves modulo octaves, between the scale at
  which the candidate's harmony aligned best (``r["hscale"]``) and the onsets' scale
  (``q.tempo_scale``, ``indexers.tempo``), whether it is under 0.085 octave, and that
  times the short-query indicator (a chance match picks its scale at random on the grid).

Measured in docs/covers-history.md ("Probes of the session of 2026-12-04 (afternoon)").
"""

import numpy as np

from query.covers import _short


def columns(index, q, r, arrays):
    rows = r["rows"]
    short = float(_short(q))
    beats = np.log(np.maximum(np.diff(index.beat_off)[rows], 1).astype(np.float64))
    notes = np.log(np.maximum(np.diff(index.mel_off)[rows], 1).astype(np.float64))
    if q.tempo_scale is not None:
        d = np.log2(r["hscale"].astype(np.float64) / q.tempo_scale)
        d = np.abs(d - np.round(d))
    else:
        d = np.full(rows.size, 0.5)
    agree = (d < 0.085).astype(np.float64)
    return np.stack([beats, beats * short, notes, notes * short, d, agree, agree * short], axis=1)


ARMS = {"+ length": [0, 1, 2, 3], "+ scale agreement": [4, 5, 6], "+ both": [0, 1, 2, 3, 4, 5, 6]}
