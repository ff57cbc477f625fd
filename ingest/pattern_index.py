"""Derived stage ``patterns``: the transposition-invariant index behind ``atlas pattern``.

For each piece: its melodic streams (``query.pattern_search.build_streams``: per track,
per track's top and bottom lines, and the skyline; made for all of a batch's pieces at once
by ``build_streams_batch``) go to ``pattern_streams``; the code of every run of
3 consecutive intervals, with its stream and position, goes to ``pattern_ngrams``.
Each piece is indexed on its own, so adding pieces never touches what is stored and the
index is always exact (no corpus-level state). The n-grams of a batch are written sorted
by code, which keeps DuckDB's per-row-group min/max on ``gram`` selective for lookups.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from numba import njit

import pyarrow.compute as pc

from atlas_db.schema_patterns import NGRAM, TABLES
from ingest.packed_keys import packed_order

__all__ = ["STAGE", "VERSION", "BATCH_PIECES", "update", "forget", "load_inputs", "compute_rows", "write_rows",
           "index_tables"]

def _arrow(con, sql: str, params=None) -> pa.Table:
    """Run a query and return Arrow (the relation API, which DuckDB 2 does not warn about)."""
    rel = con.sql(sql, params=params) if params is not None else con.sql(sql)
    return rel.to_arrow_table()


STAGE = "patterns"
VERSION = "patterns-3"  # streams: track/track_top/track_bottom/skyline (held-note rule); 3-interval n-grams
# Pieces per transaction: each piece is indexed on its own, so a batch only sets how much
# one commit (and a crash) covers; commits of many small pieces cost more than their rows.
BATCH_PIECES = 1000


def index_tables(notes: pa.Table) -> tuple[pa.Table, pa.Table]:
    """``(pattern_streams, pattern_ngrams)`` rows for the pieces in a notes table."""
    from query.pattern_search import NOTE_COLUMNS, build_streams_batch

    if notes.num_rows == 0:
        return TABLES["pattern_streams"].empty_table(), TABLES["pattern_ngrams"].empty_table()
    enc = notes.column("piece_id").combine_chunks().dictionary_encode()
    cols = {c: notes.column(c).to_numpy(zero_copy_only=False) for c in NOTE_COLUMNS}
    # the pieces in the order they first occur in ``notes``
    streams = build_streams_batch(enc.dictionary.to_pylist(), enc.indices.to_numpy(zero_copy_only=False), cols,
                                  stage_version=VERSION)
    # every window of NGRAM intervals inside one stream, the streams taken in stream-id order
    n = streams.column("n_notes").to_numpy(zero_copy_only=False).astype(np.int64)
    pitch = pc.list_flatten(streams.column("pitch")).to_numpy(zero_copy_only=False)
    sid = streams.column("stream_id").to_numpy(zero_copy_only=False)
    g, r, p = _ngrams_in_id_order(pitch, np.cumsum(n) - n, n, np.argsort(sid, kind="stable"), NGRAM)
    s = sid[r]
    o = _order_by_gram_stream_position(g, s, p, in_id_order=True)
    ngrams = pa.table({"gram": pa.array(g[o], pa.int32()), "stream_id": pa.array(s[o], pa.int64()),
                       "position": pa.array(p[o], pa.int32())}, schema=TABLES["pattern_ngrams"])
    return streams, ngrams


@njit(cache=True, nogil=True)
def _ngrams_in_id_order(pitch, starts, lengths, by_id, ngram):
    # (code, stream, position) of each window of ``ngram`` intervals inside one stream
    # (stream s: pitch[starts[s]:starts[s] + lengths[s]]), the streams in ``by_id`` order,
    # positions rising; a code is the intervals + 128 as 8-bit digits, first highest, taken
    # to int32 (as NumPy's int32 arithmetic would)
    total = 0
    for s in by_id:
        total += max(lengths[s] - ngram, 0)
    g = np.empty(total, np.int32)
    r = np.empty(total, np.int64)
    p = np.empty(total, np.int32)
    k = 0
    for s in by_id:
        a = starts[s]
        for i in range(lengths[s] - ngram):
            code = np.int64(0)
            for j in range(ngram):
                code = (code << 8) | (np.int64(pitch[a + i + j + 1]) - np.int64(pitch[a + i + j]) + 128)
            g[k] = code  # truncated to its low 32 bits
            r[k] = s
            p[k] = i
            k += 1
    return g, r, p


def _order_by_gram_stream_position(g: np.ndarray, s: np.ndarray, p: np.ndarray, in_id_order: bool = False) -> np.ndarray:
    """The permutation of a lexsort by (gram, stream_id, position).

    With ``in_id_order`` (the n-grams taken stream by stream in stream-id order, positions
    rising within a stream, as :func:`index_tables` makes them) and 24-bit grams: a stable
    two-pass radix sort by gram, ~10x faster than sorting the n-grams by a combined key.
    Else ``ingest.packed_keys.packed_order`` of (gram, rank of the stream id, position),
    which is stable too."""
    if not len(g):
        return np.zeros(0, np.int64)
    if in_id_order and int(g.min()) >= 0 and int(g.max()) < 1 << 24:
        return _radix_order_24(g, np.arange(len(g), dtype=np.int64))
    return packed_order(g, np.unique(s, return_inverse=True)[1].ravel(), p)


@njit(cache=True, nogil=True)
def _counting_pass(keys, src, dst, shift):
    # dst = src stably sorted by the 12-bit digit (keys[src] >> shift) & 4095
    count = np.zeros(4097, np.int64)
    for i in range(src.size):
        count[((keys[src[i]] >> shift) & 4095) + 1] += 1
    for d in range(4096):
        count[d + 1] += count[d]
    for i in range(src.size):
        d = (keys[src[i]] >> shift) & 4095
        dst[count[d]] = src[i]
        count[d] += 1


@njit(cache=True, nogil=True)
def _radix_order_24(keys, order):
    # ``order`` stably sorted by keys[order] (0 <= key < 2**24): two counting passes of
    # 12 bits, low digit first
    tmp = np.empty(order.size, np.int64)
    out = np.empty(order.size, np.int64)
    _counting_pass(keys, order, tmp, 0)
    _counting_pass(keys, tmp, out, 12)
    return out


def _ids_table(piece_ids) -> pa.Table:
    return pa.table({"piece_id": pa.array(list(piece_ids), pa.string())})


def forget(con, piece_ids) -> None:
    """Delete the rows of these pieces. Only pieces with stored streams are looked for in
    ``pattern_ngrams`` (a scan of every n-gram), so that new pieces cost nothing here."""
    con.register("_pat_ids", _ids_table(piece_ids))
    try:
        stored = [r[0] for r in con.execute(
            "SELECT DISTINCT piece_id FROM pattern_streams WHERE piece_id IN (SELECT piece_id FROM _pat_ids)"
        ).fetchall()]
        if not stored:
            return
        con.execute("DELETE FROM pattern_streams WHERE piece_id IN (SELECT piece_id FROM _pat_ids)")
        prefixes = [int(p[:12], 16) for p in stored]
        con.execute("DELETE FROM pattern_ngrams WHERE (stream_id >> 12) IN (SELECT unnest(?))", [prefixes])
    finally:
        con.unregister("_pat_ids")


def load_inputs(con, piece_ids, notes: str = "notes") -> dict[str, pa.Table]:
    """The notes :func:`compute_rows` indexes (read from the relation ``notes``)."""
    con.register("_pat_ids", _ids_table(piece_ids))
    try:
        return {"notes": _arrow(con,
            "SELECT piece_id, track_index, note_index, onset_ticks, onset_beats, duration_beats, onset_s, pitch, "
            f"channel FROM {notes} WHERE piece_id IN (SELECT piece_id FROM _pat_ids)")}
    finally:
        con.unregister("_pat_ids")


def compute_rows(inputs: dict[str, pa.Table], piece_ids=None) -> dict[str, pa.Table]:
    """``pattern_streams`` and ``pattern_ngrams`` rows; each piece is indexed on its own."""
    streams, ngrams = index_tables(inputs["notes"])
    return {"pattern_streams": streams, "pattern_ngrams": ngrams}


def write_rows(con, rows: dict[str, pa.Table]) -> None:
    ngrams = rows["pattern_ngrams"]
    g = ngrams.column("gram").to_numpy()
    if g.size > 1 and (g[1:] < g[:-1]).any():  # rows of several computations (atlas ingest --ray)
        rows = {**rows, "pattern_ngrams": ngrams.sort_by([("gram", "ascending"), ("stream_id", "ascending"),
                                                          ("position", "ascending")])}
    for name, tbl in rows.items():
        if tbl.num_rows:
            con.register("_pat_rows", tbl)
            con.execute(f"INSERT INTO {name} SELECT * FROM _pat_rows")
            con.unregister("_pat_rows")


def update(con, piece_ids, notes: str = "notes") -> None:
    write_rows(con, compute_rows(load_inputs(con, piece_ids, notes)))
