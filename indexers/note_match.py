"""How many of a query's notes lie where a stored piece has notes of the same pitch, under
one time map and transposition: note-level evidence for a short cover query, the fusion
feature ``notes`` of the cover search (``query.covers.CoverIndex._notes``; held out,
combined_short level 2 0.938 -> 0.949 over eight draws: docs/covers-history.md, "The
note vote, shipped").

A few seconds of a version keep most of their notes where the other versions of the song
have them: the same pitch once transposed, the same beat once the time map
``reference beat = scale x query beat + offset`` is applied. A wrong song matches a share
of them by chance. The search here is a vote: for every transposition and scale tried,
each pair (query note, reference note of the transposed pitch) votes for the offset bin
that maps the one onto the other (and the two bins beside it, so a note may be
``BIN_BEATS`` and a half off: jitter, a tempo curve), each query note at most once per
bin; the best bin's votes are the notes matched. Pitches match exactly, at the shift
given (semitones up from the query, 0..11) and at the same an octave lower.
Numba, one pass per reference, no allocation per (scale, transposition): each pass
reads the bins it touched for their largest count and clears them (1.5-1.7x faster than
resetting them lazily by a stamp, with the same counts: docs/covers-history.md).
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["SCALES", "BIN_BEATS", "matched_share"]

# reference beats per query beat: a 1/24-octave grid from 0.35 to 2.83 (a re-timed query,
# notated at half or double the stored beat, with a tempo curve around the factor)
SCALES = 2.0 ** (np.arange(-36, 37) / 24.0)
BIN_BEATS = 0.2


def matched_share(q_onset_beats, q_pitch, ref_onset_beats, ref_pitch, starts, ends, shifts) -> np.ndarray:
    """Per reference, the largest share of the query's notes matched by one time map at
    its transposition (``shifts``: semitones from the query up to the reference, 0..11;
    that shift and the one an octave lower are tried).

    Parameters
    ----------
    q_onset_beats, q_pitch : the query's notes [shape=(n,)]
    ref_onset_beats, ref_pitch : the references' notes, back to back [shape=(M,)]
    starts, ends : int64 [shape=(k, L)]: reference i is the notes of the spans
        ``[starts[i, l], ends[i, l])`` (its stored lines; an empty span is left out)
    shifts : int [shape=(k,)]

    Returns
    -------
    share : float32 [shape=(k,)], 0..1 (0 for a query of no notes)
    """
    if len(shifts) == 0:
        return np.zeros(0, np.float32)
    q_on = np.ascontiguousarray(q_onset_beats, np.float64)
    q_p = np.ascontiguousarray(q_pitch, np.int64)
    starts = np.ascontiguousarray(starts, np.int64).reshape(len(shifts), -1)
    ends = np.ascontiguousarray(ends, np.int64).reshape(len(shifts), -1)
    if q_on.size == 0:
        return np.zeros(len(shifts), np.float32)
    # the references' arrays as they are (the cover index's float32 onsets and int8
    # pitches of every stored note: converting them all per call cost ~0.6 s a query at
    # 100,000 pieces); the kernel reads only the references' spans
    best = _matched(q_on - q_on.min(), q_p, _as_kernel_array(ref_onset_beats, np.floating, np.float64),
                    _as_kernel_array(ref_pitch, np.integer, np.int64), starts, ends,
                    np.ascontiguousarray(shifts, np.int64) % 12, SCALES, BIN_BEATS)
    return (best / q_on.size).astype(np.float32)


def _as_kernel_array(x, kind, dtype) -> np.ndarray:
    """``x`` contiguous, in its own dtype where that is of ``kind``, else as ``dtype``."""
    x = np.asarray(x)
    return np.ascontiguousarray(x if np.issubdtype(x.dtype, kind) else x.astype(dtype))


@njit(cache=True, nogil=True, error_model="numpy")
def _matched(q_on, q_p, ref_on, ref_p, starts, ends, shifts, scales, bin_beats):
    k = starts.shape[0]
    out = np.zeros(k, np.int64)
    q_max = q_on.max()
    nq = q_on.size
    count = np.zeros(129, np.int64)
    lo_g = np.empty(nq, np.int64)
    hi_g = np.empty(nq, np.int64)
    for i in range(k):
        count[:] = 0
        n = 0
        span = 0.0
        # the reference's notes grouped by pitch (onsets, any order within a pitch)
        for line in range(starts.shape[1]):
            for j in range(starts[i, line], ends[i, line]):
                count[np.int64(ref_p[j]) + 1] += 1
                n += 1
                if ref_on[j] > span:
                    span = ref_on[j]
        if n == 0:
            continue
        for p in range(128):
            count[p + 1] += count[p]
        onsets = np.empty(n, np.float64)
        fill = count[:128].copy()
        for line in range(starts.shape[1]):
            for j in range(starts[i, line], ends[i, line]):
                pj = np.int64(ref_p[j])
                onsets[fill[pj]] = ref_on[j]
                fill[pj] += 1
        # each pitch's onsets sorted and kept once: a lead note on top of all notes is in
        # the third line too, and would only repeat its votes
        first = np.empty(129, np.int64)
        kept = 0
        for p in range(128):
            first[p] = kept
            group = np.sort(onsets[count[p]:count[p + 1]])
            for j in range(group.size):
                if j == 0 or group[j] != group[j - 1]:
                    onsets[kept] = group[j]
                    kept += 1
        first[128] = kept
        # votes[c]: query notes that voted for offset bin c in this (transposition, scale)
        n_bins = int((span + scales.max() * q_max + 1.0) / bin_beats) + 3
        votes = np.zeros(n_bins, np.int32)
        best = 0
        for t in (shifts[i], shifts[i] - 12):
            # each query note's transposed pitch's onsets: [lo_g[a], hi_g[a])
            any_pair = False
            for a in range(nq):
                p = q_p[a] + t
                if p < 0 or p > 127:
                    lo_g[a] = 0
                    hi_g[a] = 0
                else:
                    lo_g[a] = first[p]
                    hi_g[a] = first[p + 1]
                    if hi_g[a] > lo_g[a]:
                        any_pair = True
            if not any_pair:
                continue
            for s in scales:
                lo = -s * q_max - 1.0
                b_min = n_bins
                b_max = -1
                for a in range(nq):
                    g0 = lo_g[a]
                    g1 = hi_g[a]
                    if g1 == g0:
                        continue
                    x = s * q_on[a] + lo
                    # the onsets ascend, so do their bins: each bin of the union of
                    # [b - 1, b + 1] gets this query note's vote once
                    done = -2
                    for j in range(g0, g1):
                        b = int((onsets[j] - x) / bin_beats)
                        c0 = b - 1 if b - 1 > done + 1 else done + 1
                        for c in range(c0, b + 2):
                            votes[c] += 1
                        done = b + 1
                    b0 = int((onsets[g0] - x) / bin_beats) - 1  # (the first bin voted for)
                    if b0 < b_min:
                        b_min = b0
                    if done > b_max:
                        b_max = done
                m = 0
                for c in range(b_min, b_max + 1):
                    if votes[c] > m:
                        m = votes[c]
                    votes[c] = 0
                if m > best:
                    best = m
        out[i] = best
    return out
