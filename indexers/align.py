"""Local alignment (Smith-Waterman) kernels for the cover re-rank, compiled with numba.

Both kernels align one query against many references stored back to back
(``refs[offsets[k]:offsets[k+1]]`` is reference k) and return, per reference, the best
local score and the aligned region ``(q_start, q_end, r_start, r_end)`` (end exclusive,
in the sequences' own units: melody intervals or chroma frames).
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["sw_symbols", "sw_chroma", "sw_symbols_score", "sw_chroma_score"]


@njit(cache=True, nogil=True)
def _sym(a, b, match, mismatch):
    return match if a == b else -mismatch


@njit(cache=True, nogil=True)
def _sw_intervals(q, refs, offsets, match, mismatch, gap, merge, track):
    n = q.size
    k = offsets.size - 1
    scores = np.zeros(k, np.float32)
    region = np.zeros((k, 4), np.int32)
    h1 = np.zeros(n + 1, np.float32)  # column j-1
    h2 = np.zeros(n + 1, np.float32)  # column j-2
    h0 = np.zeros(n + 1, np.float32)  # column j
    s1q = np.zeros(n + 1, np.int32)
    s1r = np.zeros(n + 1, np.int32)
    s2q = np.zeros(n + 1, np.int32)
    s2r = np.zeros(n + 1, np.int32)
    s0q = np.zeros(n + 1, np.int32)
    s0r = np.zeros(n + 1, np.int32)
    for c in range(k):
        a = offsets[c]
        b = offsets[c + 1]
        for i in range(n + 1):
            h1[i] = 0.0
            h2[i] = 0.0
            s1q[i] = i
            s1r[i] = 0
            s2q[i] = i
            s2r[i] = 0
        best = np.float32(0.0)
        bq0 = bq1 = br0 = br1 = 0
        for j in range(a, b):
            jl = j - a
            rj = refs[j]
            rsum = (refs[j - 1] + rj) % 12 if j > a else -1
            h0[0] = 0.0
            s0q[0] = 0
            s0r[0] = jl + 1
            for i in range(1, n + 1):
                qi = q[i - 1]
                v = h1[i - 1] + _sym(qi, rj, match, mismatch)
                src = 0
                x = h1[i] - gap
                if x > v:
                    v = x
                    src = 1
                x = h0[i - 1] - gap
                if x > v:
                    v = x
                    src = 2
                if i >= 2:
                    x = h1[i - 2] + _sym((q[i - 2] + qi) % 12, rj, match, mismatch) - merge
                    if x > v:
                        v = x
                        src = 3
                if rsum >= 0:
                    x = h2[i - 1] + _sym(qi, rsum, match, mismatch) - merge
                    if x > v:
                        v = x
                        src = 4
                if v <= 0.0:
                    v = np.float32(0.0)
                    src = -1
                h0[i] = v
                if track:
                    if src == 0:
                        s0q[i] = s1q[i - 1]
                        s0r[i] = s1r[i - 1]
                    elif src == 1:
                        s0q[i] = s1q[i]
                        s0r[i] = s1r[i]
                    elif src == 2:
                        s0q[i] = s0q[i - 1]
                        s0r[i] = s0r[i - 1]
                    elif src == 3:
                        s0q[i] = s1q[i - 2]
                        s0r[i] = s1r[i - 2]
                    elif src == 4:
                        s0q[i] = s2q[i - 1]
                        s0r[i] = s2r[i - 1]
                    else:
                        s0q[i] = i
                        s0r[i] = jl + 1
                if v > best:
                    best = v
                    if track:
                        bq0 = s0q[i]
                        br0 = s0r[i]
                        bq1 = i
                        br1 = jl + 1
            h2, h1, h0 = h1, h0, h2
            s2q, s1q, s0q = s1q, s0q, s2q
            s2r, s1r, s0r = s1r, s0r, s2r
        scores[c] = best
        region[c, 0] = bq0
        region[c, 1] = bq1
        region[c, 2] = br0
        region[c, 3] = br1
    return scores, region


def sw_symbols(q, refs, offsets, match, mismatch, gap, merge=0.3):
    """Smith-Waterman over melody pitch-class intervals (values 1..11), tolerant of one
    inserted note on either side: besides match/mismatch and gaps, a query interval may
    match the sum (mod 12) of two successive reference intervals and vice versa, at a
    cost of ``merge`` (an extra passing note, pickup or transcription error does not
    break the match).

    Parameters
    ----------
    q : int8 [shape=(n,)]
    refs : int8 [shape=(M,)], references back to back
    offsets : int64 [shape=(k+1,)]
    match, mismatch, gap, merge : float; mismatch, gap and merge are penalties (>= 0)

    Returns
    -------
    scores : float32 [shape=(k,)]
    region : int32 [shape=(k, 4)] q_start, q_end, r_start, r_end (intervals, end exclusive)
    """
    return _sw_intervals(q, refs, offsets, np.float32(match), np.float32(mismatch), np.float32(gap),
                         np.float32(merge), True)


@njit(cache=True, nogil=True)
def _sw_intervals_score(q, refs, offsets, match, mismatch, gap, merge):
    n = q.size
    k = offsets.size - 1
    scores = np.zeros(k, np.float32)
    # query profiles: prof[v, i] = score of reference symbol v against q[i]; prof2 the
    # same against the merged interval q[i-1] + q[i] (an extra note in the query)
    prof = np.full((12, n + 1), -mismatch, np.float32)
    prof2 = np.full((12, n + 1), np.float32(-1e9), np.float32)
    for i in range(1, n + 1):
        prof[q[i - 1], i] = match
        if i >= 2:
            for v in range(12):
                prof2[v, i] = -mismatch - merge
            prof2[(q[i - 2] + q[i - 1]) % 12, i] = match - merge
    for v in range(12):
        prof[v, 0] = 0.0
    prof[0, :] = -mismatch  # symbol 0 (a merged interval back to the same note) never matches
    h1 = np.zeros(n + 1, np.float32)
    h2 = np.zeros(n + 1, np.float32)
    h0 = np.zeros(n + 1, np.float32)
    for c in range(k):
        a = offsets[c]
        b = offsets[c + 1]
        h1[:] = 0.0
        h2[:] = 0.0
        best = np.float32(0.0)
        prev_r = -1
        for j in range(a, b):
            rj = refs[j]
            p1 = prof[rj]
            p2 = prof2[rj]
            have_sum = prev_r >= 0
            ps = prof[(prev_r + rj) % 12] if have_sum else prof[0]
            h0[0] = 0.0
            left = np.float32(0.0)
            for i in range(1, n + 1):
                v = h1[i - 1] + p1[i]
                x = h1[i] - gap
                if x > v:
                    v = x
                x = left - gap
                if x > v:
                    v = x
                if i >= 2:
                    x = h1[i - 2] + p2[i]
                    if x > v:
                        v = x
                if have_sum:
                    x = h2[i - 1] + ps[i] - merge
                    if x > v:
                        v = x
                if v < 0.0:
                    v = np.float32(0.0)
                h0[i] = v
                left = v
                if v > best:
                    best = v
            prev_r = rj
            h2, h1, h0 = h1, h0, h2
        scores[c] = best
    return scores


def sw_symbols_score(q, refs, offsets, match, mismatch, gap, merge=0.3):
    """:func:`sw_symbols` without the region (faster): best score per reference."""
    return _sw_intervals_score(np.asarray(q, np.int8), refs, offsets, np.float32(match), np.float32(mismatch),
                               np.float32(gap), np.float32(merge))


@njit(cache=True, nogil=True)
def sw_chroma(qs, shifts, refs, offsets, threshold, silent, gap):
    """Smith-Waterman over unit-norm chroma frames, trying several transpositions.

    Parameters
    ----------
    qs : float32 [shape=(12, n, 12)]: the query rolled by 0..11 semitones
        (``qs[t]`` = query transposed up by t); rows of zeros are silent frames
    shifts : int64 [shape=(k, s)]: transpositions to try for each reference
    refs : float32 [shape=(M, 12)], references back to back, unit-norm frames
    offsets : int64 [shape=(k+1,)]
    threshold : float: cosine above which two frames count as a match (score cos - threshold)
    silent : float: penalty when either frame is silent
    gap : float: penalty for skipping a frame on either side

    Returns
    -------
    scores : float32 [shape=(k,)]; best_shift : int32 [shape=(k,)];
    region : int32 [shape=(k, 4)] q_start, q_end, r_start, r_end (frames)
    """
    n = qs.shape[1]
    k = offsets.size - 1
    scores = np.zeros(k, np.float32)
    best_shift = np.zeros(k, np.int32)
    region = np.zeros((k, 4), np.int32)
    prev = np.zeros(n + 1, np.float32)
    cur = np.zeros(n + 1, np.float32)
    prev_qs = np.zeros(n + 1, np.int32)
    prev_rs = np.zeros(n + 1, np.int32)
    cur_qs = np.zeros(n + 1, np.int32)
    cur_rs = np.zeros(n + 1, np.int32)
    qsil = np.zeros(n, np.bool_)
    for i in range(n):
        tot = 0.0
        for p in range(12):
            tot += qs[0, i, p]
        qsil[i] = tot <= 0.0
    for c in range(k):
        a = offsets[c]
        b = offsets[c + 1]
        for si in range(shifts.shape[1]):
            t = shifts[c, si]
            if t < 0:
                continue
            prev[:] = 0.0
            for i in range(n + 1):
                prev_qs[i] = i
                prev_rs[i] = 0
            best = 0.0
            bq0 = bq1 = br0 = br1 = 0
            for j in range(a, b):
                rsum = 0.0
                for p in range(12):
                    rsum += refs[j, p]
                rsil = rsum <= 0.0
                cur[0] = 0.0
                cur_qs[0] = 0
                cur_rs[0] = j - a + 1
                for i in range(1, n + 1):
                    if rsil or qsil[i - 1]:
                        s = -silent
                    else:
                        dot = 0.0
                        for p in range(12):
                            dot += qs[t, i - 1, p] * refs[j, p]
                        s = dot - threshold
                    d = prev[i - 1] + s
                    u = prev[i] - gap
                    l = cur[i - 1] - gap
                    v = 0.0
                    q0 = i - 1
                    r0 = j - a
                    if d > v:
                        v = d
                        q0 = prev_qs[i - 1]
                        r0 = prev_rs[i - 1]
                    if u > v:
                        v = u
                        q0 = prev_qs[i]
                        r0 = prev_rs[i]
                    if l > v:
                        v = l
                        q0 = cur_qs[i - 1]
                        r0 = cur_rs[i - 1]
                    if v <= 0.0:
                        v = 0.0
                        q0 = i
                        r0 = j - a + 1
                    cur[i] = v
                    cur_qs[i] = q0
                    cur_rs[i] = r0
                    if v > best:
                        best = v
                        bq0 = q0
                        br0 = r0
                        bq1 = i
                        br1 = j - a + 1
                for i in range(n + 1):
                    prev[i] = cur[i]
                    prev_qs[i] = cur_qs[i]
                    prev_rs[i] = cur_rs[i]
            if best > scores[c]:
                scores[c] = best
                best_shift[c] = t
                region[c, 0] = bq0
                region[c, 1] = bq1
                region[c, 2] = br0
                region[c, 3] = br1
    return scores, best_shift, region


@njit(cache=True, nogil=True)
def sw_chroma_score(qs, shifts, refs, offsets, threshold, silent, gap):
    """:func:`sw_chroma` without the region: best score and transposition per reference.

    The frame similarities of one (reference, transposition) pair come from one matrix
    product (BLAS), so the dynamic programme does one addition per cell.
    """
    n = qs.shape[1]
    k = offsets.size - 1
    scores = np.zeros(k, np.float32)
    best_shift = np.zeros(k, np.int32)
    h = np.zeros(n + 1, np.float32)
    qsil = np.zeros(n, np.bool_)
    for i in range(n):
        tot = 0.0
        for p in range(12):
            tot += qs[0, i, p]
        qsil[i] = tot <= 0.0
    for c in range(k):
        a = offsets[c]
        b = offsets[c + 1]
        if b <= a:
            continue
        r = np.ascontiguousarray(refs[a:b].T)  # (12, m)
        rsil = np.zeros(b - a, np.bool_)
        for j in range(b - a):
            tot = 0.0
            for p in range(12):
                tot += r[p, j]
            rsil[j] = tot <= 0.0
        for si in range(shifts.shape[1]):
            t = shifts[c, si]
            if t < 0:
                continue
            sim = np.dot(qs[t], r)  # (n, m) cosines
            for i in range(n + 1):
                h[i] = 0.0
            best = np.float32(0.0)
            for j in range(b - a):
                diag = np.float32(0.0)
                left = np.float32(0.0)
                rs = rsil[j]
                for i in range(1, n + 1):
                    up = h[i]
                    if rs or qsil[i - 1]:
                        v = diag - silent
                    else:
                        v = diag + sim[i - 1, j] - threshold
                    x = up - gap
                    if x > v:
                        v = x
                    x = left - gap
                    if x > v:
                        v = x
                    if v < 0.0:
                        v = np.float32(0.0)
                    diag = up
                    h[i] = v
                    left = v
                    if v > best:
                        best = v
            if best > scores[c]:
                scores[c] = best
                best_shift[c] = t
    return scores, best_shift
