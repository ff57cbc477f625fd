"""A saved cover index brought up to date after a write, instead of built again.

An ingest adds a few pieces to a collection of many; the saved index (``query.cover_cache``)
then no longer matches the database, and a build reads every piece's features and notes
and makes every n-gram index anew (~4-5 s at 100,000 pieces). Here the saved index of the
same code and settings is mapped in, the pieces whose stored row changed since it was
saved (its hash, ``CoverIndex.row_hash``, differs: any write, by the vectors stage or
by hand) or that are new are built alone, and the two are merged row by row in the
database's order:

- per-piece arrays and back-to-back sequences are copied, row by row;
- the n-gram and TF-IDF presence matrices are merged column by column, and their idf,
  norms and weights computed again from the merged matrices by the code a build uses
  (``_GramIndex.set_presence``, ``IntervalTfidf.weigh``), since every idf depends on
  how many pieces there are;
- the FAISS index is the one ``indexers.faiss_index.load_index`` gives for the new rows.

The result equals a build array by array (tests/test_cover_cache.py). More than
``MAX_SHARE`` of the pieces changed (an `atlas reindex`), or anything the saved index
lacks: ``update`` gives None, and the caller builds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numba import njit

__all__ = ["update", "stamps", "MAX_SHARE"]

# more of the pieces changed than this: built whole (a bound chosen, not a measured
# crossover: the merge's own cost does not depend on how many changed, a build of them does)
MAX_SHARE = 0.25


def stamps(db_dir) -> tuple[np.ndarray, np.ndarray]:
    """(piece ids, ``row_hash``) of every piece with cover features, by piece id (the
    order of ``query.covers.cover_rows``)."""
    from atlas_db.connection import reading
    from query.covers import row_hash_sql

    with reading(Path(db_dir)) as con:
        t = con.sql(f"SELECT c.piece_id, {row_hash_sql(con)} FROM cover_features c JOIN pieces p USING (piece_id) "
                    "ORDER BY c.piece_id").to_arrow_table()
    return np.asarray(t.column(0).to_pylist(), dtype=object), t.column(1).to_numpy().astype(np.uint64)


def update(base, db_dir):
    """(index, changed) for the database ``db_dir`` from ``base`` (a saved ``CoverIndex`` of
    this code and settings, without its FAISS index): ``base`` itself, with its FAISS
    index, where no piece changed (``changed`` False); else the merged index; or None
    where a build is needed."""
    from indexers.faiss_index import load_index as load_faiss
    from query.covers import ALIGN, _build_index

    if base.notes is None:
        return None
    ids, row_hash = stamps(db_dir)
    n = ids.size
    at = np.fromiter((base.row_of.get(p, -1) for p in ids), np.int64, n)
    same = at >= 0
    same[same] = base.row_hash[at[same]] == row_hash[same]
    new = np.flatnonzero(~same)
    if new.size > MAX_SHARE * n or (n <= ALIGN["keep_frames_below"] and base.frames is None):
        return None
    if new.size == 0 and n == len(base) and np.array_equal(at, np.arange(n)):
        base.index = load_faiss(db_dir, base.ids, base.vectors)
        return base, False
    delta = _build_index(db_dir, ids[new]) if new.size else None
    if delta is not None and not np.array_equal(delta.ids, ids[new]):
        return None  # (written to since the stamps were read)
    plan = _Plan(same, at, len(base), new.size)
    index = _merged(base, delta, plan, ids, n)
    if vars(index).keys() != vars(base).keys():  # (an attribute this module does not know: built)
        return None
    index.index = load_faiss(db_dir, index.ids, index.vectors)
    return index, True


class _Plan:
    """Where each row of the merged index comes from: ``src`` 0 (the saved index, its row
    ``row``) or 1 (the new pieces' index, its row ``row``)."""

    def __init__(self, same: np.ndarray, at: np.ndarray, n_base: int, n_new: int):
        self.src = (~same).astype(np.int8)
        self.row = np.where(same, at, np.cumsum(~same) - 1).astype(np.int64)
        self.n_base, self.n_new = n_base, n_new
        # old and new row -> merged row (-1: gone); each ascending, as both are by piece id
        self.map_base = np.full(n_base, -1, np.int64)
        self.map_base[at[same]] = np.flatnonzero(same)
        self.map_new = np.flatnonzero(~same).astype(np.int64)

    def lines(self, kinds: int = 3) -> "_Plan":
        """The plan of ``kinds`` blocks of rows back to back (the melody lines: every
        piece's lead line, then every second line, then every third)."""
        p = _Plan.__new__(_Plan)
        p.src = np.tile(self.src, kinds)
        width = np.where(self.src == 0, self.n_base, self.n_new)
        p.row = np.concatenate([self.row + j * width for j in range(kinds)])
        return p

    def rows(self, a: np.ndarray, b: np.ndarray | None) -> np.ndarray:
        """A per-row array (first axis: rows) of the merged index."""
        out = np.empty((self.src.size,) + a.shape[1:], a.dtype)
        out[self.src == 0] = a[self.row[self.src == 0]]
        if b is not None:
            out[self.src == 1] = b[self.row[self.src == 1]]
        return out

    def spans(self, a: np.ndarray, a_off: np.ndarray, b: np.ndarray | None, b_off: np.ndarray | None):
        """(values, offsets) of back-to-back sequences (row i's are ``a[a_off[i]:a_off[i + 1]]``)."""
        if b is None:
            b, b_off = a[:0], np.zeros(1, np.int64)
        a_off, b_off = np.asarray(a_off, np.int64), np.asarray(b_off, np.int64)
        n_a = np.diff(a_off)[np.where(self.src == 0, self.row, 0)] if a_off.size > 1 else 0
        n_b = np.diff(b_off)[np.where(self.src == 1, self.row, 0)] if b_off.size > 1 else 0
        off = np.concatenate([[0], np.cumsum(np.where(self.src == 0, n_a, n_b))]).astype(np.int64)
        out = np.empty((int(off[-1]),) + a.shape[1:], a.dtype)
        _copy_spans(_bytes(a), a_off, _bytes(b), b_off, self.src, self.row, off, _bytes(out))
        return out, off


def _bytes(a: np.ndarray) -> np.ndarray:
    """``a`` as uint8 [shape=(len(a), bytes per item)], no copy (``a`` C-contiguous)."""
    a = np.ascontiguousarray(a)
    return a.reshape(a.shape[0], -1).view(np.uint8) if a.size else np.zeros((a.shape[0], 1), np.uint8)


@njit(cache=True)
def _copy_spans(a, a_off, b, b_off, src, row, off, out):
    for r in range(src.size):
        if src[r] == 0:
            s, e = a_off[row[r]], a_off[row[r] + 1]
            out[off[r]:off[r] + e - s] = a[s:e]
        else:
            s, e = b_off[row[r]], b_off[row[r] + 1]
            out[off[r]:off[r] + e - s] = b[s:e]


def _merged(base, delta, plan: _Plan, ids: np.ndarray, n: int):
    from query.cover_notes import NoteArrays
    from query.covers import ALIGN, HARMONY_BLOCKS, MELODY_BLOCKS, CoverIndex, _block_mask

    d = delta
    idx = CoverIndex.__new__(CoverIndex)
    got = lambda name: None if d is None else getattr(d, name)  # noqa: E731
    onset, off = plan.spans(base.notes.onset_beats, base.notes.off, d and d.notes.onset_beats, d and d.notes.off)
    pitch, _ = plan.spans(base.notes.pitch, base.notes.off, d and d.notes.pitch, d and d.notes.off)
    idx.notes = NoteArrays(onset, pitch, off)
    idx.ids = ids
    for name in ("is_recording", "row_stale", "row_hash", "paths", "vectors", "global_chroma"):
        setattr(idx, name, plan.rows(getattr(base, name), got(name)))
    idx.db_dir = base.db_dir
    idx.stale_pieces = int(idx.row_stale.sum())
    idx.row_of = {pid: i for i, pid in enumerate(ids)}
    idx.index = None
    idx.chroma_q, idx.beat_off = plan.spans(base.chroma_q, base.beat_off, got("chroma_q"), got("beat_off"))
    idx.frames = None
    if n <= ALIGN["keep_frames_below"]:
        idx.frames = plan.spans(*base.frames, *(d.frames if d is not None else (None, None)))
    lines = plan.lines()
    full = [_line_offsets(x.line_off) if x is not None else None for x in (base, d)]
    pitch, line_off = lines.spans(base.mel_pitch, full[0], got("mel_pitch"), full[1])
    onset, _ = lines.spans(base.mel_onset, full[0], got("mel_onset"), full[1])
    idx._set_lines(pitch, onset, line_off, n)
    idx.grams = _merged_grams(base.grams, got("grams"), plan, n)
    idx.extra_grams = [_merged_grams(g, None if d is None else d.extra_grams[j], plan, n)
                       for j, g in enumerate(base.extra_grams)]
    idx.bass_pc, idx.bass_off = plan.spans(base.bass_pc, base.bass_off, got("bass_pc"), got("bass_off"))
    idx.bass_grams = _merged_grams(base.bass_grams, got("bass_grams"), plan, n)
    idx.tfidf = _merged_tfidf(base.tfidf, got("tfidf"), plan, n)
    idx.melody_sketch = idx.tfidf.sketch(ALIGN["support_dims"])
    idx.chord_grams = _merged_grams(base.chord_grams, got("chord_grams"), plan, n)
    idx.mask_melody = _block_mask(MELODY_BLOCKS)
    idx.mask_harmony = _block_mask(HARMONY_BLOCKS)
    return idx


def _line_offsets(line_off: list) -> np.ndarray:
    """The 3 n + 1 offsets of every line back to back from the three kinds' n + 1 each."""
    return np.concatenate([line_off[0], *(o[1:] for o in line_off[1:])]).astype(np.int64)


def _presence(g):
    """(codes, indptr, indices) of a ``_GramIndex``'s whole presence matrix: its sparse
    columns with its common (dense) ones put back."""
    slot = np.full(g.codes_held.size, -1, np.int64)
    slot[g.common_cols] = np.arange(g.common_cols.size)
    ptr, ind = _with_common(np.asarray(g.matrix.indptr, np.int64), g.matrix.indices, slot, g.common)
    return g.codes_held, ptr, ind


@njit(cache=True)
def _with_common(indptr, indices, slot, dense):
    n_cols = indptr.size - 1
    ptr = np.zeros(n_cols + 1, np.int64)
    for c in range(n_cols):
        k = indptr[c + 1] - indptr[c]
        if slot[c] >= 0:
            for r in range(dense.shape[1]):
                k += dense[slot[c], r]
        ptr[c + 1] = ptr[c] + k
    out = np.empty(ptr[n_cols], indices.dtype)
    for c in range(n_cols):
        at = ptr[c]
        if slot[c] >= 0:  # (split_common moved all of a common column's rows to dense)
            for r in range(dense.shape[1]):
                if dense[slot[c], r]:
                    out[at] = r
                    at += 1
        else:
            for k in range(indptr[c], indptr[c + 1]):
                out[at] = indices[k]
                at += 1
    return ptr, out


def _merge_presence(a, b, plan: _Plan):
    """(codes, indptr, indices) of the merged rows' presence: ``a`` (the saved index's,
    (codes, indptr, indices)) through ``plan.map_base``, ``b`` (the new pieces', or None)
    through ``plan.map_new``; only the codes some merged row holds."""
    codes_a, ptr_a, ind_a = a
    codes_b, ptr_b, ind_b = b if b is not None else (codes_a[:0], np.zeros(1, np.int64), ind_a[:0])
    codes = np.union1d(codes_a, codes_b).astype(np.int64)
    ptr, ind = _merge_columns(np.asarray(ptr_a, np.int64), ind_a, np.searchsorted(codes, codes_a), plan.map_base,
                              np.asarray(ptr_b, np.int64), ind_b, np.searchsorted(codes, codes_b), plan.map_new,
                              codes.size)
    held = np.flatnonzero(np.diff(ptr))
    return codes[held], np.append(ptr[held], ptr[-1]), ind


@njit(cache=True)
def _merge_columns(ptr_a, ind_a, pos_a, map_a, ptr_b, ind_b, pos_b, map_b, n_cols):
    col_a = np.full(n_cols, -1, np.int64)
    col_b = np.full(n_cols, -1, np.int64)
    for j in range(pos_a.size):
        col_a[pos_a[j]] = j
    for j in range(pos_b.size):
        col_b[pos_b[j]] = j
    ptr = np.zeros(n_cols + 1, np.int64)
    for c in range(n_cols):
        k = 0
        if col_a[c] >= 0:
            for t in range(ptr_a[col_a[c]], ptr_a[col_a[c] + 1]):
                k += map_a[ind_a[t]] >= 0
        if col_b[c] >= 0:
            k += ptr_b[col_b[c] + 1] - ptr_b[col_b[c]]
        ptr[c + 1] = ptr[c] + k
    out = np.empty(ptr[n_cols], np.int32)
    for c in range(n_cols):
        i = i_end = j = j_end = 0
        if col_a[c] >= 0:
            i, i_end = ptr_a[col_a[c]], ptr_a[col_a[c] + 1]
        if col_b[c] >= 0:
            j, j_end = ptr_b[col_b[c]], ptr_b[col_b[c] + 1]
        at = ptr[c]
        while i < i_end or j < j_end:  # both ascending: merged in order, the gone rows left out
            ra = map_a[ind_a[i]] if i < i_end else -1
            if i < i_end and ra < 0:
                i += 1
                continue
            rb = map_b[ind_b[j]] if j < j_end else -1
            if j >= j_end or (i < i_end and ra < rb):
                out[at] = ra
                i += 1
            else:
                out[at] = rb
                j += 1
            at += 1
    return ptr, out


def _merged_grams(a, b, plan: _Plan, n: int):
    from query.covers import _GramIndex

    g = _GramIndex.__new__(_GramIndex)
    g.alphabet, g.ns, g.bases = a.alphabet, a.ns, a.bases
    codes, ptr, ind = _merge_presence(_presence(a), None if b is None else _presence(b), plan)
    g.set_presence(codes, ptr.astype(a.matrix.indptr.dtype), ind.astype(a.matrix.indices.dtype), n)
    return g


def _merged_tfidf(a, b, plan: _Plan, n: int):
    from scipy import sparse

    from query.cover_fusion import IntervalTfidf

    def presence(t):
        return np.arange(t.matrix.shape[1], dtype=np.int64), t.matrix.indptr, t.matrix.indices

    codes, ptr, ind = _merge_presence(presence(a), None if b is None else presence(b), plan)
    width = a.matrix.shape[1]
    full = np.zeros(width + 1, np.int64)  # (every column, held or not, as a build makes it)
    full[codes + 1] = np.diff(ptr)
    m = sparse.csc_matrix((np.ones(ind.size, np.float32), ind, np.cumsum(full)), shape=(n, width))
    t = IntervalTfidf.__new__(IntervalTfidf)
    t.weigh(m.tocsr())
    return t
