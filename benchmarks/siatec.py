"""Plain SIATEC (Meredith, Lemström & Wiggins 2002), the baseline for pattern discovery.

A piece is the set ``D`` of points ``(onset, pitch)``. For each vector ``v`` between two
points, the maximal translatable pattern is ``MTP(v) = {p in D : p + v in D}`` (SIA);
MTPs that are translations of one another are the same pattern. For every distinct MTP
``P`` the translators ``T(P) = {v : P + v is a subset of D}`` are computed, and the
translational equivalence class ``TEC(P) = {P + v : v in T(P)}`` is one discovered
pattern whose occurrences are ``P + v`` -- the standard definition, no selection, no
compactness, no ranking beyond the order of discovery (by vector).

This is written here on its own (not with ``query/point_sets.py``) so the baseline
cannot drift with the product's code.

    >>> tecs = siatec(points)  # list of (pattern points, translators)  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["siatec", "siatec_patterns"]


@njit(cache=True)
def _mtps(q, p):
    # all pairs i < j sorted by (vector, i): one group per vector = MTP(v)
    n = len(q)
    m = n * (n - 1) // 2
    keys = np.empty(m, np.int64)
    k = 0
    for i in range(n):
        for j in range(i + 1, n):
            keys[k] = ((((q[j] - q[i]) << 9) | (p[j] - p[i] + 256)) << 20) | i
            k += 1
    keys.sort()
    return keys


@njit(cache=True)
def _group_hashes(keys, q, p):
    # vectorized representation of each MTP (its intra-pattern vectors): equal for MTPs
    # that are translations of one another
    n = len(keys)
    starts = np.empty(n + 1, np.int64)
    g = 0
    for k in range(n):
        if k == 0 or (keys[k] >> 20) != (keys[k - 1] >> 20):
            starts[g] = k
            g += 1
    starts[g] = n
    starts = starts[: g + 1]
    h = np.empty(g, np.uint64)
    for x in range(g):
        a, b = starts[x], starts[x + 1]
        acc = np.uint64(b - a) * np.uint64(0x9E3779B97F4A7C15)
        for k in range(a + 1, b):
            i0 = keys[k - 1] & 0xFFFFF
            i1 = keys[k] & 0xFFFFF
            d = np.uint64(((q[i1] - q[i0]) << 9) + (p[i1] - p[i0] + 256))
            acc = (acc ^ d) * np.uint64(0x100000001B3)
        h[x] = acc
    return starts, h


@njit(cache=True)
def _translators(pat_q, pat_p, q, p, codes):
    # T(P): every v = D[k] - P[0] with P + v inside D (codes: sorted q * 256 + p)
    n = len(q)
    out = np.empty(n, np.int64)
    m = 0
    for k in range(n):
        dq = q[k] - pat_q[0]
        dp = p[k] - pat_p[0]
        ok = True
        for x in range(1, len(pat_q)):
            tp = pat_p[x] + dp
            c = (pat_q[x] + dq) * 256 + tp
            at = np.searchsorted(codes, c)
            if tp < 0 or tp > 127 or at >= n or codes[at] != c:
                ok = False
                break
        if ok:
            out[m] = k
            m += 1
    return out[:m]


def siatec(onset_grid: np.ndarray, pitch: np.ndarray, *, min_size: int = 1):
    """TECs of the point set ``(onset_grid, pitch)`` (integer onsets, any order):
    a list of ``(pattern, translators)``; pattern int64 [shape=(m, 2)] rows (onset, pitch),
    translators int64 [shape=(t, 2)] rows (d_onset, d_pitch), the zero vector included.
    Patterns with fewer than ``min_size`` points are not returned (their TECs are still
    distinct patterns of SIATEC)."""
    pts = np.unique(np.stack([onset_grid.astype(np.int64), pitch.astype(np.int64)], axis=1), axis=0)
    q, p = np.ascontiguousarray(pts[:, 0]), np.ascontiguousarray(pts[:, 1])
    if len(q) >= 1 << 20:
        raise ValueError("too many points for this baseline")
    keys = _mtps(q, p)
    starts, h = _group_hashes(keys, q, p)
    sizes = np.diff(starts)
    _, first = np.unique(h, return_index=True)
    codes = q * 256 + p  # sorted: pts is sorted by (onset, pitch)
    out = []
    for g in np.sort(first):
        if sizes[g] < min_size:
            continue
        idx = keys[starts[g] : starts[g + 1]] & 0xFFFFF
        pq, pp = q[idx], p[idx]
        t = _translators(pq, pp, q, p, codes)
        vec = np.stack([q[t] - pq[0], p[t] - pp[0]], axis=1)
        out.append((np.stack([pq, pp], axis=1), vec))
    return out


def siatec_patterns(onset_grid, pitch, *, grid_per_beat: int, min_size: int = 1):
    """SIATEC's TECs in mir_eval's form: patterns -> occurrences -> ``(onset_beats, pitch)``."""
    res = []
    for pat, vecs in siatec(onset_grid, pitch, min_size=min_size):
        occs = []
        for dq, dp in vecs:
            occs.append([(round((a + dq) / grid_per_beat, 6), int(b + dp)) for a, b in pat])
        res.append(occs)
    return res
