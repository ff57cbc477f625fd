"""Similarity: pieces (or tracks) whose global vectors are closest to the query's.

Unlike :mod:`query.covers` there is no alignment: the score is the cosine between the
query's embedding and each piece's (see ``docs/covers.md`` for what the vector encodes),
so "similar" means alike in harmonic vocabulary, chord motion and melodic intervals,
in any key and at any tempo, not necessarily the same song.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from atlas_db.errors import BadInputError, IndexTroubleError
from query.covers import cover_rows, each_query, piece_vectors, resolve_query

__all__ = ["similar", "SIMILAR_SCHEMA", "TRACK_SCHEMA"]

SIMILAR_SCHEMA = pa.schema([
    ("query", pa.string()),
    ("rank", pa.int32()),
    ("piece_id", pa.string()),
    ("path", pa.string()),
    ("score", pa.float32()),  # cosine similarity of the embeddings, -1..1
])
TRACK_SCHEMA = pa.schema([
    ("query", pa.string()),
    ("rank", pa.int32()),
    ("piece_id", pa.string()),
    ("track_index", pa.int32()),
    ("path", pa.string()),
    ("score", pa.float32()),
])


@dataclass
class VectorIndex:
    """The piece vectors of a database (DuckDB's) and their FAISS index: all that a
    similarity search reads. The cover index (``query.covers.load_index``) also builds
    the n-gram indexes and every piece's lines and frames, which ``atlas similar`` never
    used: loading it made `atlas similar ID` over 1,001 pieces take 2.45-2.65 s from a new
    process, 1.14-1.22 s without (docs/covers.md)."""
    ids: np.ndarray
    paths: np.ndarray
    vectors: np.ndarray
    index: object

    def __post_init__(self):
        self.row_of = {pid: i for i, pid in enumerate(self.ids)}


def load_vectors(db_dir) -> VectorIndex:
    t = cover_rows(db_dir, "")
    ids, vectors, fidx = piece_vectors(db_dir, t)
    return VectorIndex(ids, np.asarray(t.column("path").to_pylist(), dtype=object), vectors, fidx)


@dataclass
class _Query:
    """A stored piece as a similarity query: its stored vector."""
    label: str
    piece_id: str
    vector: np.ndarray


def _stored(index: VectorIndex, pid: str, label: str) -> _Query:
    return _Query(label, pid, index.vectors[index.row_of[pid]])


def _pieces(index, q, top) -> pa.Table:
    from indexers.faiss_index import search

    v = q.vector / max(float(np.linalg.norm(q.vector)), 1e-12)
    scores, rows = search(index.index, v[None], top + 1)
    norms = np.linalg.norm(index.vectors, axis=1)
    out = []
    for s, r in zip(scores[0], rows[0]):
        if r < 0 or index.ids[r] == q.piece_id:
            continue
        out.append((index.ids[r], index.paths[r], float(s) / max(float(norms[r]), 1e-12)))
    out.sort(key=lambda t: -t[2])
    out = out[:top]
    return pa.table({
        "query": pa.array([q.label] * len(out), pa.string()),
        "rank": pa.array(range(1, len(out) + 1), pa.int32()),
        "piece_id": pa.array([o[0] for o in out], pa.string()),
        "path": pa.array([o[1] for o in out], pa.string()),
        "score": pa.array([o[2] for o in out], pa.float32()),
    }, schema=SIMILAR_SCHEMA)


def _tracks(db_dir, index, q, top) -> pa.Table:
    from indexers.vectors import TRACK_TABLE, open_lance, table_names

    ldb = open_lance(db_dir)
    if TRACK_TABLE not in table_names(ldb):
        raise IndexTroubleError(f"{db_dir}: no track vectors yet; run `atlas reindex --vectors --db {db_dir}`")
    t = ldb.open_table(TRACK_TABLE)
    query = t.search(q.vector.astype(np.float32)).distance_type("cosine").limit(top + 64)
    res = query.to_arrow()
    rows = []
    for pid, trk, d in zip(res.column("piece_id").to_pylist(), res.column("track_index").to_pylist(),
                           res.column("_distance").to_pylist()):
        if pid == q.piece_id:
            continue
        i = index.row_of.get(pid)
        rows.append((pid, trk, index.paths[i] if i is not None else None, 1.0 - float(d)))
    rows = rows[:top]
    return pa.table({
        "query": pa.array([q.label] * len(rows), pa.string()),
        "rank": pa.array(range(1, len(rows) + 1), pa.int32()),
        "piece_id": pa.array([r[0] for r in rows], pa.string()),
        "track_index": pa.array([r[1] for r in rows], pa.int32()),
        "path": pa.array([r[2] for r in rows], pa.string()),
        "score": pa.array([r[3] for r in rows], pa.float32()),
    }, schema=TRACK_SCHEMA)


def similar(db_dir, queries: list[str], *, top: int = 10, tracks: bool = False, on_error=None) -> pa.Table:
    """The ``top`` most similar pieces (or tracks) for each query: a MIDI or audio file (ingested
    or not) or a piece id / prefix / ingested path. The query itself is left out. A query
    that cannot be read goes to ``on_error`` as in :func:`query.covers.covers`."""
    if top < 1:
        raise BadInputError(f"--top {top}: must be at least 1")
    if not queries:
        raise BadInputError("no query given: name a .mid or audio file or a piece id")
    index = functools.cache(lambda: load_vectors(db_dir))  # once, after the first query is read

    def answer(qs):
        q = resolve_query(index, db_dir, qs, stored=_stored)
        return _tracks(db_dir, index(), q, top) if tracks else _pieces(index(), q, top)

    return each_query(queries, answer, on_error)
