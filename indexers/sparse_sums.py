"""``matrix[:, cols] @ weights`` for a float32 CSC matrix, read in place (numba).

The cover search scores every piece of a collection by a few such products per query:
its n-gram lists (a presence matrix: pieces x n-grams, every stored value 1) and the
exact-interval TF-IDF (``query.cover_fusion.IntervalTfidf``). scipy first builds the
column slice, a new sparse matrix holding every piece of each of the query's columns (at
100,000 pieces a common n-gram's column holds tens of thousands); :func:`column_sums`
adds the same float32 values in the same order (column by column, as scipy's
``csc_matvec``), straight from the matrix's arrays.

A presence matrix may keep its common columns (n-grams that a quarter of the pieces or
more hold) as dense rows of 0/1 bytes instead (:func:`split_common`): a dense column is
added to every piece's sum in one vectorised pass (a piece without the n-gram adds
``w * 0``, which leaves its sum as it was), where the sparse one costs a dependent
scattered update per entry (~1 ns an entry against ~0.2 ns a piece on an AVX2 EPYC:
a column held by more than ~1/5 of the pieces is cheaper dense).
"""

from __future__ import annotations

import numpy as np
from numba import njit
from scipy import sparse

__all__ = ["column_sums", "all_column_sums", "split_common", "dense_slots", "distinct", "COMMON_SHARE", "SPLIT_ROWS"]

# A presence column held by at least this share of the pieces is kept dense (one byte a
# piece: no more memory than its int32 row indices took)
COMMON_SHARE = 0.25
# Matrices of at least this many rows are summed in two threads, one half of the rows
# each (all_column_sums): an n-gram list took 1.5 -> 1.0 ms at 20,000 pieces, 6.2 -> 3.8
# ms at 100,000 (docs/covers-history.md); with fewer rows a list costs about what waking
# the other thread can
SPLIT_ROWS = 20_000


def all_column_sums(m: sparse.csc_matrix, data, cols, weights, common=None, dense=None) -> np.ndarray:
    """:func:`column_sums` over every row of ``m`` (its ``indptr`` and ``indices``; ``data``
    None for a presence matrix; ``common`` and ``dense`` from :func:`split_common`), in
    two threads of half the rows each where ``m`` has ``SPLIT_ROWS`` rows or more (the
    same sums: each row is summed by one thread)."""
    from indexers.align import two_at_once

    slots = None if common is None else dense_slots(common, cols)
    n = m.shape[0]
    if n < SPLIT_ROWS:
        return column_sums(m.indptr, m.indices, data, cols, weights, 0, n, slots, dense)
    half = n // 2
    return np.concatenate(two_at_once(
        lambda: column_sums(m.indptr, m.indices, data, cols, weights, 0, half, slots, dense),
        lambda: column_sums(m.indptr, m.indices, data, cols, weights, half, n, slots, dense)))


def split_common(m: sparse.csc_matrix, share: float = COMMON_SHARE):
    """A presence matrix (CSC, row indices sorted) as (the matrix without its common
    columns, ``common``: the columns held by >= ``share`` of the rows, int64 ascending,
    ``dense``: uint8 [shape=(common.size, rows)], 1 where a row holds the column)."""
    counts = np.diff(m.indptr)
    common = np.flatnonzero(counts >= max(share * m.shape[0], 1)).astype(np.int64)
    dense = np.zeros((common.size, m.shape[0]), np.uint8)
    for s, c in enumerate(common):
        dense[s, m.indices[m.indptr[c]:m.indptr[c + 1]]] = 1
    sparse_col = np.ones(m.shape[1], bool)
    sparse_col[common] = False
    keep = np.repeat(sparse_col, counts)
    indptr = np.concatenate([[0], np.cumsum(np.where(sparse_col, counts, 0))]).astype(m.indptr.dtype)
    rest = sparse.csc_matrix((m.data[keep], m.indices[keep], indptr), shape=m.shape)
    rest.has_sorted_indices = True
    return rest, common, dense


def dense_slots(common: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """For each of ``cols``, its row in :func:`split_common`'s ``dense`` (``common`` is
    ascending), or -1 where it is a sparse column: int64 [shape=cols.shape]."""
    at = np.searchsorted(common, cols)
    hit = at < common.size
    hit[hit] = common[at[hit]] == cols[hit]
    return np.where(hit, at, -1).astype(np.int64)


def distinct(codes: np.ndarray) -> np.ndarray:
    """``np.unique(codes)`` of int64 codes (sorted, each once) by a sort: for a query's
    ~110 n-gram codes 11 us against NumPy 2's hash-based ``unique``'s 20 us. (NumPy, not
    numba: a new process loads each cached numba kernel in ~7-15 ms, more than this
    saves in one query.)"""
    x = np.sort(np.asarray(codes, np.int64))
    keep = np.ones(x.size, bool)
    np.not_equal(x[1:], x[:-1], out=keep[1:])
    return x[keep]


@njit(cache=True, nogil=True)
def column_sums(indptr, indices, data, cols, weights, lo, hi, slots, dense):
    """Rows ``lo:hi`` of ``matrix[:, cols] @ weights``, float32 [shape=(hi - lo,)], for
    the CSC arrays of a matrix whose row indices are sorted in each column (each range
    of rows is found by bisection, so two threads can sum one half each); ``data`` None
    for a presence matrix (every stored value 1: ``weights`` added, the ones not read).
    ``slots`` (:func:`dense_slots` of ``cols``) and ``dense`` (:func:`split_common`; None:
    no dense columns): a column whose slot is >= 0 is read from its dense row instead, in
    its turn, so every row's sum adds the same values in the same order as without them.

    A column's entries are read 8 at a time before their 8 sums are updated, by unsigned
    index (no wraparound of a negative one): one at a time, each read waited for the sum
    stored before it, which might have been its row (4.3x slower over 1.6M entries)."""
    out = np.zeros(hi - lo, np.float32)
    for k in range(cols.size):
        w = weights[k]
        if slots is not None:
            s = slots[k]
            if s >= 0:
                row = dense[s]
                for p in range(lo, hi):
                    out[np.uint64(p - lo)] += w * np.float32(row[np.uint64(p)])
                continue
        a = indptr[cols[k]]
        col = indices[a:indptr[cols[k] + 1]]
        i = np.searchsorted(col, lo)
        end = np.searchsorted(col, hi)
        while i + 8 <= end:
            r0 = np.uint64(col[np.uint64(i)] - lo)
            r1 = np.uint64(col[np.uint64(i + 1)] - lo)
            r2 = np.uint64(col[np.uint64(i + 2)] - lo)
            r3 = np.uint64(col[np.uint64(i + 3)] - lo)
            r4 = np.uint64(col[np.uint64(i + 4)] - lo)
            r5 = np.uint64(col[np.uint64(i + 5)] - lo)
            r6 = np.uint64(col[np.uint64(i + 6)] - lo)
            r7 = np.uint64(col[np.uint64(i + 7)] - lo)
            if data is None:
                v0 = v1 = v2 = v3 = v4 = v5 = v6 = v7 = w
            else:
                j = np.uint64(a + i)
                v0 = data[j] * w
                v1 = data[j + np.uint64(1)] * w
                v2 = data[j + np.uint64(2)] * w
                v3 = data[j + np.uint64(3)] * w
                v4 = data[j + np.uint64(4)] * w
                v5 = data[j + np.uint64(5)] * w
                v6 = data[j + np.uint64(6)] * w
                v7 = data[j + np.uint64(7)] * w
            out[r0] += v0
            out[r1] += v1
            out[r2] += v2
            out[r3] += v3
            out[r4] += v4
            out[r5] += v5
            out[r6] += v6
            out[r7] += v7
            i += 8
        while i < end:
            r = np.uint64(col[np.uint64(i)] - lo)
            if data is None:
                out[r] += w
            else:
                out[r] += data[np.uint64(a + i)] * w
            i += 1
    return out
