"""Local alignment (Smith-Waterman) kernels for the cover re-rank, compiled with numba.

The kernels align one query against many references stored back to back
(``refs[offsets[k]:offsets[k+1]]`` is reference k) and return, per reference, the best
local score and the aligned region ``(q_start, q_end, r_start, r_end)`` (end exclusive,
in the sequences' own units: melody intervals or chroma frames). ``offsets`` may also be
a pair ``(starts, ends)`` (reference k is ``refs[starts[k]:ends[k]]``): the references
are then read where they lie in a larger array (the cover index's, all pieces back to
back), in any order, without copying them out first.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from numba import njit

from atlas_db.settings import setting
from indexers.lanes import chroma_scores, pitch_class_scores, sym_scores

__all__ = ["in_background", "two_at_once", "by_halves", "sw_symbols", "sw_chroma", "sw_symbols_score",
           "sw_chroma_score", "sw_pitch_classes_score", "sw_pitch_classes_rhythm_score"]


# Two threads (the kernels release the GIL). A call whose references hold at least
# SPLIT_MIN_CELLS cells (query length x reference length, summed) is split in two halves
# of about equal work run at once, the second in another thread (``two_at_once``; when
# the other thread is still busy, the caller takes that half back); a caller may also run
# a whole call in the other thread (``in_background``) while it does other work. Each
# reference's result does not depend on the others, so the answers are the same either
# way. Waking the other thread costs 0.02-0.8 ms (the longer it was idle, the more), so
# small calls stay in one thread: replaying the cover benchmark's calls, splitting
# gained nothing below ~100k cells (docs/covers-history.md, "Latency on two threads").
# ATLAS_ALIGN_THREADS=1 keeps everything in the calling thread.
SPLIT_MIN_CELLS = 100_000
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_busy = threading.Event()  # set while a background call runs


def _forget_thread() -> None:
    global _pool, _pool_lock
    _pool = None  # a forked child has no copy of the other thread: it starts its own
    _pool_lock = threading.Lock()
    _busy.clear()


os.register_at_fork(after_in_child=_forget_thread)


_CPUS = len(os.sched_getaffinity(0))


def _threads() -> int:
    want = setting("ATLAS_ALIGN_THREADS", strict=True)
    return max(1, min(want, 2, _CPUS))


def _second_thread() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(1, thread_name_prefix="atlas-align")
        return _pool


def in_background(fn, *args, **kwargs) -> Future:
    """``fn(*args, **kwargs)`` in the second thread, at once; its Future. Run here (a
    Future already done) when there is one thread only or the other one is taken."""
    if _threads() < 2 or _busy.is_set() or threading.current_thread().name.startswith("atlas-align"):
        done = Future()
        try:
            done.set_result(fn(*args, **kwargs))
        except BaseException as e:  # raised by .result(), as from the other thread
            done.set_exception(e)
        return done
    _busy.set()
    later = _second_thread().submit(fn, *args, **kwargs)
    later.add_done_callback(lambda _: _busy.clear())
    return later


def two_at_once(first, second):
    """``(first(), second())``, the second run in the other thread meanwhile; when there
    is one thread, or the other is still on a background call, both run here in turn."""
    if _threads() < 2 or threading.current_thread().name.startswith("atlas-align"):
        return first(), second()
    later = _second_thread().submit(second)
    a = first()
    return a, (second() if later.cancel() else later.result())


def by_halves(call, starts, ends, n_query: int):
    """``call(sl)`` on the references ``sl`` (a slice) -- once for all of them, or on two
    halves of about equal work at once (the second in another thread) with the results
    (an array or a tuple of arrays, one row per reference) put back together in order."""
    k = starts.size
    lengths = ends - starts
    total = int(lengths.sum())
    if k < 2 or total * n_query < SPLIT_MIN_CELLS:
        return call(slice(None))
    cut = int(np.searchsorted(np.cumsum(lengths), total / 2)) + 1
    cut = min(max(cut, 1), k - 1)
    first, second = two_at_once(lambda: call(slice(0, cut)), lambda: call(slice(cut, None)))
    if isinstance(first, tuple):
        return tuple(np.concatenate([a, b]) for a, b in zip(first, second))
    return np.concatenate([first, second])


def _spans(offsets):
    """(starts, ends), int64 [shape=(k,)] each, of ``offsets`` (k+1 offsets, or the pair)."""
    if isinstance(offsets, tuple):
        starts, ends = offsets
        return np.ascontiguousarray(starts, np.int64), np.ascontiguousarray(ends, np.int64)
    offsets = np.asarray(offsets, np.int64)
    return offsets[:-1], offsets[1:]


@njit(cache=True, nogil=True)
def _sw_intervals(q, refs, starts, ends, match, mismatch, gap, merge, track):
    n = q.size
    k = starts.size
    scores = np.zeros(k, np.float32)
    region = np.zeros((k, 4), np.int32)
    # query profiles: prof[v, i] = score of symbol v against q[i-1]; prof2[v, i] the
    # same against the merged interval q[i-2] + q[i-1]
    prof = np.full((12, n + 1), -mismatch, np.float32)
    prof2 = np.full((12, n + 1), -mismatch - merge, np.float32)
    for i in range(1, n + 1):
        if q[i - 1] > 0:
            prof[q[i - 1], i] = match
        if i >= 2:
            sm = (q[i - 2] + q[i - 1]) % 12
            if sm > 0:
                prof2[sm, i] = match - merge
    # row 1 has no merged query interval: a score no cell can take
    prof2[:, :2] = np.float32(-1e9)
    h1 = np.zeros(n + 1, np.float32)  # column j-1
    h2 = np.zeros(n + 1, np.float32)  # column j-2
    h0 = np.zeros(n + 1, np.float32)  # column j
    # where each cell's alignment starts (query, reference), per column as h
    s1q = np.zeros(n + 1, np.int32)
    s1r = np.zeros(n + 1, np.int32)
    s2q = np.zeros(n + 1, np.int32)
    s2r = np.zeros(n + 1, np.int32)
    s0q = np.zeros(n + 1, np.int32)
    s0r = np.zeros(n + 1, np.int32)
    neg = np.float32(-1e9)
    zero = np.float32(0.0)
    for c in range(k):
        a = starts[c]
        b = ends[c]
        for i in range(n + 1):
            h1[i] = 0.0
            h2[i] = 0.0
            s1q[i] = i
            s1r[i] = 0
            s2q[i] = i
            s2r[i] = 0
        best = zero
        bq0 = bq1 = br0 = br1 = 0
        for j in range(a, b):
            jl = j - a
            rj = refs[j]
            p1 = prof[rj]
            p2 = prof2[rj]
            # the first column has no previous symbol to merge with: its merged term
            # can win nowhere (as if left out)
            ps = prof[(refs[j - 1] + rj) % 12] if j > a else prof[0]
            mg = merge if j > a else -neg
            h0[0] = 0.0
            s0q[0] = 0
            s0r[0] = jl + 1
            # the previous cells of the path (left: this column, row i-1; up1, up2:
            # column j-1, rows i-1 and i-2; mr: column j-2, row i-1) with their starts,
            # carried from row to row
            left, lq, lr = zero, 0, jl + 1
            up1, uq1, ur1 = h1[0], s1q[0], s1r[0]
            up2, uq2, ur2 = zero, 0, 0
            mr, mq, mrr = h2[0], s2q[0], s2r[0]
            for i in range(1, n + 1):
                up, uq, ur = h1[i], s1q[i], s1r[i]
                # the five ways into the cell, first best wins ties in this order:
                # diagonal, up (gap), left (gap), merged query interval, merged
                # reference interval; then below 0 it starts afresh. Chosen with
                # selects, not branches (which mispredict), and the left cell, which
                # the row before has just made, compared last
                d = up1 + p1[i]
                u = up - gap
                cu = u > d
                X, xq, xr = (u, uq, ur) if cu else (d, uq1, ur1)
                x3 = up2 + p2[i]
                x4 = mr + ps[i] - mg
                c4 = x4 > x3
                Y, yq, yr = (x4, mq, mrr) if c4 else (x3, uq2, ur2)
                cz = Y > X
                Z, zq, zr = (Y, yq, yr) if cz else (X, xq, xr)
                if not Z > zero:
                    Z, zq, zr = zero, i, jl + 1
                lg = left - gap
                if lg > X and lg >= Y and lg > zero:
                    v, sq, sr = lg, lq, lr
                else:
                    v, sq, sr = Z, zq, zr
                h0[i] = v
                s0q[i] = sq
                s0r[i] = sr
                left, lq, lr = v, sq, sr
                up2, uq2, ur2 = up1, uq1, ur1
                up1, uq1, ur1 = up, uq, ur
                mr, mq, mrr = h2[i], s2q[i], s2r[i]
                if v > best:
                    best = v
                    bq0 = sq
                    br0 = sr
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
    offsets : int64 [shape=(k+1,)], or (starts, ends) int64 [shape=(k,)] each
    match, mismatch, gap, merge : float; mismatch, gap and merge are penalties (>= 0)

    Returns
    -------
    scores : float32 [shape=(k,)]
    region : int32 [shape=(k, 4)] q_start, q_end, r_start, r_end (intervals, end exclusive)
    """
    starts, ends = _spans(offsets)
    q = np.asarray(q, np.int8)
    match, mismatch, gap, merge = np.float32(match), np.float32(mismatch), np.float32(gap), np.float32(merge)
    return by_halves(lambda sl: _sw_intervals(q, refs, starts[sl], ends[sl], match, mismatch, gap, merge, True),
                     starts, ends, q.size)


def sw_symbols_score(q, refs, offsets, match, mismatch, gap, merge=0.3, with_end=False):
    """:func:`sw_symbols` without the region (faster: many references at once, one per
    SIMD lane, ``indexers.lanes``): best score per reference, the same to the bit.

    ``with_end``: also return, per reference, the first reference position where the
    best score is reached (int64 [shape=(k,)], -1 when no score is above 0). The
    region :func:`sw_symbols` finds then ends there, and it finds the same region in
    the reference cut just after that position (a cell depends only on the cells
    before it), which is all :meth:`query.covers.CoverIndex.search` aligns again."""
    starts, ends = _spans(offsets)
    q = np.asarray(q, np.int8)
    match, mismatch, gap, merge = np.float32(match), np.float32(mismatch), np.float32(gap), np.float32(merge)
    scores, end = by_halves(lambda sl: sym_scores(q, refs, starts[sl], ends[sl], match, mismatch, gap, merge),
                            starts, ends, q.size)
    return (scores, end) if with_end else scores


def sw_chroma(qs, shifts, refs, offsets, threshold, silent, gap):
    """Smith-Waterman over unit-norm chroma frames, trying several transpositions.

    Parameters
    ----------
    qs : float32 [shape=(12, n, 12)]: the query rolled by 0..11 semitones
        (``qs[t]`` = query transposed up by t); rows of zeros are silent frames
    shifts : int64 [shape=(k, s)]: transpositions to try for each reference
    refs : float32 [shape=(M, 12)], references back to back, unit-norm frames
    offsets : int64 [shape=(k+1,)], or (starts, ends) int64 [shape=(k,)] each
    threshold : float: cosine above which two frames count as a match (score cos - threshold)
    silent : float: penalty when either frame is silent
    gap : float: penalty for skipping a frame on either side

    Returns
    -------
    scores : float32 [shape=(k,)]; best_shift : int32 [shape=(k,)];
    region : int32 [shape=(k, 4)] q_start, q_end, r_start, r_end (frames)
    """
    starts, ends = _spans(offsets)
    return by_halves(lambda sl: _sw_chroma(qs, shifts[sl], refs, starts[sl], ends[sl], threshold, silent, gap),
                     starts, ends, qs.shape[1] * shifts.shape[1])


@njit(cache=True, nogil=True)
def _sw_chroma(qs, shifts, refs, starts, ends, threshold, silent, gap):
    n = qs.shape[1]
    k = starts.size
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
        a = starts[c]
        b = ends[c]
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


def sw_chroma_score(qs, shifts, refs, offsets, threshold, silent, gap):
    """:func:`sw_chroma` without the region: best score and transposition per reference
    (faster: many (reference, transposition) pairs at once, one per SIMD lane,
    ``indexers.lanes``). The frame scores are float32 sums where :func:`sw_chroma`'s are
    float64, so a score may differ from its in the last bits."""
    starts, ends = _spans(offsets)
    return by_halves(lambda sl: chroma_scores(qs, shifts[sl], refs, starts[sl], ends[sl], threshold, silent, gap),
                     starts, ends, qs.shape[1] * shifts.shape[1])


def sw_pitch_classes_score(q, refs, offsets, shifts, match, mismatch, gap_q, gap_r):
    """Smith-Waterman of each reference's melody (pitch classes) against the query's
    notes (pitch classes), with the query transposed by the reference's own shift: how
    much of a stored tune can be found among the notes of a query whose melody line is
    uncertain (one polyphonic part: accompaniment in its skyline).

    A query note left out costs ``gap_q`` (small: the accompaniment notes between the
    tune's notes are expected), a reference note left out costs ``gap_r`` (a tune note
    missing from the query); a pair of notes scores ``match`` when
    ``(q + shift) % 12 == ref`` and ``-mismatch`` otherwise.

    Parameters
    ----------
    q : int64 [shape=(n,)], pitch classes 0..11
    refs : int [shape=(M,)], pitch classes back to back; offsets : int64 [shape=(k+1,)] or
        (starts, ends)
    shifts : int64 [shape=(k,)]: semitones from the query up to each reference

    Returns
    -------
    scores : float32 [shape=(k,)]; many references at once, one per SIMD lane
    (``indexers.lanes``)
    """
    starts, ends = _spans(offsets)
    shifts = np.ascontiguousarray(shifts, np.int64)
    return by_halves(lambda sl: pitch_class_scores(q, refs, starts[sl], ends[sl], shifts[sl], match, mismatch,
                                                   gap_q, gap_r), starts, ends, q.size)


def sw_pitch_classes_rhythm_score(q, q_onsets, refs, ref_onsets, offsets, shifts, match, mismatch, gap_q, gap_r,
                                  tolerance, penalty, adapt):
    """:func:`sw_pitch_classes_score` that also asks the matched notes to keep the
    query's rhythm: best local score per reference.

    Each cell carries, from the best path into it, the onsets of its last matched pair
    of notes and an estimate of the tempo ratio (log of query time over reference time).
    A new match ``dt_q / dt_r`` after the last one (both > 1e-3) agrees when its log lies
    within ``log(tolerance)`` of the estimate: it scores ``match`` and moves the estimate
    ``adapt`` of the way towards it (a tempo that drifts); when it disagrees it scores
    ``match - penalty`` and the estimate stays. The first ratio of a path sets the
    estimate. A version of the tune keeps its rhythm through a change of tempo; notes of
    another tune that have the right pitch classes, picked out of a query's
    accompaniment with free gaps (``gap_q``), mostly do not. ``penalty`` 0 gives
    :func:`sw_pitch_classes_score`'s scores.

    Parameters
    ----------
    q, q_onsets : int64 pitch classes, float64 onsets [shape=(n,)] (any time unit)
    refs, ref_onsets : pitch classes, onsets [shape=(M,)], references back to back;
        offsets : int64 [shape=(k+1,)] or (starts, ends)
    shifts, match, mismatch, gap_q, gap_r : as in :func:`sw_pitch_classes_score`
    tolerance : float > 1; penalty : float >= 0; adapt : float in [0, 1]

    Returns
    -------
    scores : float32 [shape=(k,)]
    """
    starts, ends = _spans(offsets)
    q = np.asarray(q, np.int64)
    q_onsets = np.asarray(q_onsets, np.float64)
    shifts = np.asarray(shifts, np.int64)
    return by_halves(lambda sl: _sw_pc_rhythm(q, q_onsets, refs, ref_onsets, starts[sl], ends[sl], shifts[sl],
                                              float(match), float(mismatch), float(gap_q), float(gap_r),
                                              float(np.log(tolerance)), float(penalty), float(adapt)),
                     starts, ends, q.size)


@njit(cache=True, nogil=True)
def _sw_pc_rhythm(q, q_on, refs, ref_on, starts, ends, shifts, match, mismatch, gap_q, gap_r, tol_log, penalty,
                  adapt):
    n = q.size
    k = starts.size
    out = np.zeros(k, np.float32)
    # two columns (the previous reference note's, this one's) of score, last matched
    # query and reference onsets (query -1: no match yet) and the log tempo estimate
    # (NaN: not yet known)
    h0, h1 = np.zeros(n + 1), np.zeros(n + 1)
    lq0, lq1 = np.full(n + 1, -1.0), np.full(n + 1, -1.0)
    lr0, lr1 = np.zeros(n + 1), np.zeros(n + 1)
    e0, e1 = np.full(n + 1, np.nan), np.full(n + 1, np.nan)
    qt = np.empty(n, np.int64)
    for c in range(k):
        h0[:] = 0.0
        lq0[:] = -1.0
        e0[:] = np.nan
        best = 0.0
        for i in range(n):
            qt[i] = (q[i] + shifts[c]) % 12  # the query in the reference's key
        for j in range(starts[c], ends[c]):
            rv = refs[j]
            tr = ref_on[j]
            h1[0] = 0.0
            lq1[0] = -1.0
            e1[0] = np.nan
            for i in range(1, n + 1):
                lq, lr, e = lq0[i - 1], lr0[i - 1], e0[i - 1]
                if qt[i - 1] == rv:
                    s = match
                    if lq >= 0.0:
                        dq = q_on[i - 1] - lq
                        dr = tr - lr
                        if dq > 1e-3 and dr > 1e-3:
                            rho = np.log(dq / dr)
                            if e != e:  # the path's first ratio
                                e = rho
                            elif abs(rho - e) < tol_log:
                                e = e + adapt * (rho - e)
                            else:
                                s = match - penalty
                    vd = h0[i - 1] + s
                    lq, lr = q_on[i - 1], tr
                else:
                    vd = h0[i - 1] - mismatch
                vr = h0[i] - gap_r  # this reference note left out
                vq = h1[i - 1] - gap_q  # this query note left out
                if vd >= vr and vd >= vq and vd > 0.0:
                    h1[i], lq1[i], lr1[i], e1[i] = vd, lq, lr, e
                elif vr >= vq and vr > 0.0:
                    h1[i], lq1[i], lr1[i], e1[i] = vr, lq0[i], lr0[i], e0[i]
                elif vq > 0.0:
                    h1[i], lq1[i], lr1[i], e1[i] = vq, lq1[i - 1], lr1[i - 1], e1[i - 1]
                else:
                    h1[i], lq1[i], lr1[i], e1[i] = 0.0, -1.0, 0.0, np.nan
                if h1[i] > best:
                    best = h1[i]
            h0, h1 = h1, h0
            lq0, lq1 = lq1, lq0
            lr0, lr1 = lr1, lr0
            e0, e1 = e1, e0
        out[c] = best
    return out
