"""Probe for ``benchmarks/fusion_probe.py --probe``: the stored tune found among *all*
of a one-part query's notes, not only its skyline.

The tune step of the search (``CoverIndex._tune_in_notes``) aligns each candidate's
stored tune with the query's skyline (its highest note at each onset). In a merged
file the skyline keeps a median 90% of the melody's notes (POP909-dev fit songs; 10%
quantile 70%). Here the query is a sequence of onsets instead (notes within 1/8 beat
are one onset), each the *set* of pitch classes sounding from it: every note ("all"),
the notes within an octave of the onset's highest ("top12"), or its two highest
("top2"). A tune note matches an onset whose set holds its pitch class (at the
candidate's harmony transposition); the costs, the query's middle part and the
normalisation are the tune step's (``ALIGN["pc_*"]``). 0 for a query with tracks.
Measured in docs/covers.md ("Probes of the session of 2026-12-04 (afternoon)").
"""

import numpy as np
from numba import njit

from query.covers import ALIGN, _middle

MODES = ("all", "top12", "top2")


@njit(cache=True)
def _sw_sets(qm, refs, starts, ends, shifts, match, mismatch, gq, gr):
    """Smith-Waterman of each reference's pitch classes against the query's onset sets
    (12-bit masks): indexers.align.sw_pitch_classes_score with a set for each query note."""
    n = qm.size
    out = np.zeros(starts.size, np.float32)
    col = np.zeros(n + 1, np.float32)
    new = np.zeros(n + 1, np.float32)
    prof = np.empty((12, n + 1), np.float32)
    for c in range(starts.size):
        for v in range(12):
            prof[v, 0] = 0.0
            bit = (v - shifts[c]) % 12
            for i in range(1, n + 1):
                prof[v, i] = match if (qm[i - 1] >> bit) & 1 else -mismatch
        col[:] = 0.0
        best = 0.0
        for j in range(starts[c], ends[c]):
            p = prof[refs[j]]
            for i in range(1, n + 1):
                new[i] = max(max(col[i - 1] + p[i], col[i] - gr), 0.0)
            run = 0.0
            for i in range(1, n + 1):
                run = max(new[i], run - gq)
                col[i] = run
                best = max(best, run)
        out[c] = best
    return out


def onset_sets(onset_beats, pitch, mode: str, tol_beats: float = 0.125) -> np.ndarray:
    """The pitch-class set (12-bit mask) of each onset, in time order."""
    o = np.argsort(onset_beats, kind="stable")
    on, p = np.asarray(onset_beats, np.float64)[o], np.asarray(pitch, np.int64)[o]
    cuts = np.flatnonzero(np.diff(on) > tol_beats) + 1
    masks = np.zeros(cuts.size + 1, np.int64)
    for e, ps in enumerate(np.split(p, cuts)):
        if mode == "top12":
            ps = ps[ps > ps.max() - 12]
        elif mode == "top2":
            ps = np.sort(ps)[-2:]
        masks[e] = np.bitwise_or.reduce(np.left_shift(1, ps % 12))
    return masks


def columns(index, q, r, arrays):
    A = ALIGN
    rows = r["rows"]
    out = np.zeros((rows.size, 2 * len(MODES)))
    if not q.one_part or rows.size == 0:
        return out
    spans, shifts = index._note_lines(rows, r["hshift"])
    for m, mode in enumerate(MODES):
        qm = onset_sets(arrays[0], arrays[2], mode)
        a, b = _middle(qm.size, A["pc_query_notes"])
        qm = qm[a:b]
        raw = _sw_sets(qm, index.mel_pc, spans[0], spans[1], shifts, A["pc_match"], A["pc_mismatch"],
                       A["pc_gap_query"], A["pc_gap_ref"])
        s = raw[index._best_line(rows, raw)] / (A["pc_match"] * max(A["pc_melody_share"] * qm.size,
                                                                     A["min_query_intervals"]))
        out[:, 2 * m], out[:, 2 * m + 1] = s, s - s.max()
    return out


ARMS = {f"+ {mode}": [2 * m, 2 * m + 1] for m, mode in enumerate(MODES)}
