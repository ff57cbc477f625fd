"""Point-set pattern discovery kernels (numba): SIA's vector table, compact translatable
segments, and translation-equivalence classes with inexact occurrences.

A piece is a set ``D`` of points ``(onset, pitch)`` with the onset on an integer grid
(``GRID_PER_BEAT`` steps per beat), sorted lexicographically and without duplicates.
For a vector ``v = (dt, dp)`` the *maximal translatable pattern* ``MTP(v)`` is every point
``p`` of ``D`` with ``p + v`` also in ``D`` (Meredith, Lemström & Wiggins 2002, SIA). All
MTPs come from one sort of the point pairs ``(i < j)`` by their vector: a group of equal
vectors lists ``MTP(v)`` (the ``i`` side) and its image ``MTP(v) + v`` (the ``j`` side).

A repeated section is the MTP of its translation, but an MTP also holds every point that
happens to match elsewhere in the piece; :func:`compact_segments` cuts each MTP where it
has a gap in time and keeps the pieces that are *compact* (most notes sounding in their
time span belong to them, both in the pattern and in its image) -- the idea of Collins et
al.'s compactness trawler. :func:`translators` then finds every vector under which a
pattern occurs, also inexactly (a share of its points), from the same pair table -- the
pattern's translational equivalence class (SIATEC's TEC) with near-misses.

>>> table = pair_table(onset_grid, pitch)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

__all__ = ["GRID_PER_BEAT", "MAX_POINTS", "PairTable", "pair_table", "compact_segments", "translators",
           "occurrence_points"]

GRID_PER_BEAT = 48  # onsets on a 1/48-beat grid (triplets and 32nd notes are exact)
MAX_POINTS = 1 << 16  # point indices are packed in 16 bits
MAX_PAIRS = 12_000_000  # pairs kept (memory ~100 MB): beyond it, only pairs within a window


@dataclass
class PairTable:
    """The vector table of a point set, sorted by vector.

    keys: int64 [shape=(n_pairs,)], ``vector << 32 | i << 16 | (j - i)`` with
    ``vector = dt << 8 | (dp + 128)``; ``starts``: int64 [shape=(n_vectors + 1,)], where
    each vector's pairs begin in ``keys``; ``window``: pairs ``(i, j)`` with
    ``j - i <= window`` only (the whole piece when it has few enough points).
    """

    keys: np.ndarray
    starts: np.ndarray
    window: int


@njit(cache=True)
def _pair_keys(q, pitch, window, max_dp):
    n = len(q)
    total = 0
    for i in range(n):
        for j in range(i + 1, min(n, i + 1 + window)):
            if q[j] > q[i] and abs(pitch[j] - pitch[i]) <= max_dp:
                total += 1
    keys = np.empty(total, np.int64)
    k = 0
    for i in range(n):
        for j in range(i + 1, min(n, i + 1 + window)):
            if q[j] > q[i] and abs(pitch[j] - pitch[i]) <= max_dp:
                vec = ((q[j] - q[i]) << 8) | (pitch[j] - pitch[i] + 128)
                keys[k] = (vec << 32) | (i << 16) | (j - i)
                k += 1
    keys.sort()
    return keys


@njit(cache=True)
def _group_starts(keys):
    n = len(keys)
    out = np.empty(n + 1, np.int64)
    g = 0
    for k in range(n):
        if k == 0 or (keys[k] >> 32) != (keys[k - 1] >> 32):
            out[g] = k
            g += 1
    out[g] = n
    return out[: g + 1]


def pair_table(onset_grid: np.ndarray, pitch: np.ndarray, *, max_transposition: int = 127) -> PairTable:
    """Sorted vector table of the points ``(onset_grid[i], pitch[i])`` (sorted by onset,
    then pitch, no duplicates; onset_grid int64 >= 0 in ``GRID_PER_BEAT`` steps): the
    pairs ``(i, j)`` with ``j`` later than ``i`` and at most ``max_transposition``
    semitones from it (vectors within a chord are left out)."""
    n = len(onset_grid)
    if n > MAX_POINTS:
        raise ValueError(f"{n} points: at most {MAX_POINTS} are supported")
    window = n if n * (n - 1) // 2 <= MAX_PAIRS else max(1, MAX_PAIRS // max(n, 1))
    window = min(window, MAX_POINTS - 1)
    keys = _pair_keys(onset_grid.astype(np.int64), pitch.astype(np.int64), window, int(max_transposition))
    return PairTable(keys, _group_starts(keys), window)


@njit(cache=True)
def _put_row(out, m, row):
    """``out[m] = row``, doubling ``out`` when full; returns the (possibly new) array."""
    if m == len(out):
        grown = np.empty((2 * len(out), out.shape[1]), out.dtype)
        grown[:m] = out[:m]
        out = grown
    out[m] = row
    return out


@njit(cache=True)
def _compact_segments(keys, starts, q, lo, hi, min_size, max_gap, max_skip, min_compact):
    # per vector: walk MTP(v) in onset order, cut where the onset gap exceeds max_gap or
    # more than max_skip points of the piece lie between two of its points (pattern or
    # image side) or where the pattern reaches its image; keep segments of >= min_size
    # points whose pattern and image are compact
    out = np.empty((1024, 5), np.float64)  # key start, key end, size, compactness, vector group
    m = 0
    for g in range(len(starts) - 1):
        a, b = starts[g], starts[g + 1]
        if b - a < min_size:
            continue
        s = a
        dt = keys[a] >> 40  # the vector's onset difference
        for k in range(a + 1, b + 1):
            cut = k == b
            if not cut:
                # a pattern ends where its image begins (a pattern and its image share no note)
                cut = q[(keys[k] >> 16) & 0xFFFF] - q[(keys[s] >> 16) & 0xFFFF] >= dt
            if not cut:
                i_prev = (keys[k - 1] >> 16) & 0xFFFF
                i_cur = (keys[k] >> 16) & 0xFFFF
                j_prev = i_prev + (keys[k - 1] & 0xFFFF)
                j_cur = i_cur + (keys[k] & 0xFFFF)
                cut = (q[i_cur] - q[i_prev] > max_gap or i_cur - i_prev - 1 > max_skip
                       or j_cur - j_prev - 1 > max_skip)
            if cut:
                size = k - s
                if size >= min_size:
                    i0 = (keys[s] >> 16) & 0xFFFF
                    i1 = (keys[k - 1] >> 16) & 0xFFFF
                    j0 = i0 + (keys[s] & 0xFFFF)
                    j1 = i1 + (keys[k - 1] & 0xFFFF)
                    c1 = size / (hi[i1] - lo[i0] + 1)
                    c2 = size / (hi[j1] - lo[j0] + 1)
                    c = min(c1, c2)
                    if c >= min_compact:
                        out = _put_row(out, m, np.array([s, k, size, c, g], np.float64))
                        m += 1
                s = k
    return out[:m]


def compact_segments(table: PairTable, onset_grid: np.ndarray, *, min_size: int, max_gap: int,
                     max_skip: int, min_compact: float) -> np.ndarray:
    """Compact pieces of every MTP (cut at gaps of ``max_gap`` grid steps or where more
    than ``max_skip`` other points lie between two of its points): float64 [shape=(n_segments, 5)] rows ``(first key,
    end key, size, compactness, vector group)``; the pattern is the ``i`` side of
    ``table.keys[first:end]``, its image the ``j`` side.

    Compactness of a point set = its size over the number of points of the piece whose
    onset lies in its time span (1.0: every note sounding then is part of it); a segment
    keeps the lower of its pattern's and its image's.
    """
    q = onset_grid.astype(np.int64)
    n = len(q)
    lo = np.searchsorted(q, q, side="left").astype(np.int64)
    hi = (np.searchsorted(q, q, side="right") - 1).astype(np.int64)
    if n == 0 or len(table.keys) == 0:
        return np.zeros((0, 5))
    return _compact_segments(table.keys, table.starts, q, lo, hi, min_size, max_gap, max_skip, min_compact)


@njit(cache=True)
def _translators(keys, starts, in_p, min_count):
    out = np.empty((256, 3), np.int64)  # vector group, side (+1: P + v, -1: P - v), matched
    m = 0
    for g in range(len(starts) - 1):
        a, b = starts[g], starts[g + 1]
        if b - a < min_count:
            continue
        cp = 0
        cn = 0
        for k in range(a, b):
            i = (keys[k] >> 16) & 0xFFFF
            j = i + (keys[k] & 0xFFFF)
            cp += in_p[i]
            cn += in_p[j]
        for side in (1, -1):
            c = cp if side == 1 else cn
            if c >= min_count:
                out = _put_row(out, m, np.array([g, side, c], np.int64))
                m += 1
    return out[:m]


def translators(table: PairTable, pattern: np.ndarray, n_points: int, *, min_count: int) -> np.ndarray:
    """Every translation under which at least ``min_count`` points of ``pattern`` (point
    indices) land on points of the piece: int64 [shape=(k, 3)] rows ``(vector group,
    side, matched points)``; side +1 is the translation by the group's vector, -1 by its
    negative. The identity is not included."""
    in_p = np.zeros(n_points, np.int64)
    in_p[pattern] = 1
    return _translators(table.keys, table.starts, in_p, max(int(min_count), 1))


@njit(cache=True)
def _occurrence_points(keys, a, b, in_p, side):
    out = np.empty(b - a, np.int64)
    m = 0
    for k in range(a, b):
        i = (keys[k] >> 16) & 0xFFFF
        j = i + (keys[k] & 0xFFFF)
        if side == 1 and in_p[i]:
            out[m] = j
            m += 1
        elif side == -1 and in_p[j]:
            out[m] = i
            m += 1
    return out[:m]


def occurrence_points(table: PairTable, group: int, side: int, pattern: np.ndarray, n_points: int) -> np.ndarray:
    """Point indices of the (possibly partial) occurrence of ``pattern`` under the
    translation ``(group, side)`` of :func:`translators`, sorted."""
    in_p = np.zeros(n_points, np.bool_)
    in_p[pattern] = True
    pts = _occurrence_points(table.keys, table.starts[group], table.starts[group + 1], in_p, side)
    return np.sort(pts)


def segment_points(table: PairTable, first: int, end: int) -> tuple[np.ndarray, np.ndarray]:
    """The pattern (``i`` side) and image (``j`` side) point indices of a segment."""
    k = table.keys[first:end]
    i = (k >> 16) & 0xFFFF
    return i, i + (k & 0xFFFF)
