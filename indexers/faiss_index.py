"""A FAISS inner-product index over the piece vectors (the LanceDB ``piece_vectors`` table).

faiss-gpu is used when the installed faiss has GPU support and a GPU is visible;
otherwise faiss-cpu. The index is exact (``IndexFlatIP``) up to 20k pieces; above, an IVF-Flat index
(4 sqrt(n) k-means cells, 1/16 of them searched) keeps a query at a few milliseconds. The
file ``<db>/faiss/piece_vectors.faiss`` (+ ``.ids.npy``) is a cache of it: built from Lance
by ``atlas reindex --vectors``, and from DuckDB's copy of the vectors by the first query
that finds it missing, damaged or out of date (an ingest adds pieces without touching
it), so that later queries load it instead of building the index again (at 100k pieces:
0.26 s to load the file, 10.5 s to build the index, on 2 shared cores; after an ingest
that adds a few pieces to an IVF index, its k-means cells are kept: ``_cells_to_keep``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from atlas_db.errors import IndexTroubleError

__all__ = ["build_index", "cells", "gpu_available", "search", "index_path", "save_index", "load_index",
           "vectors_from_lance", "build_from_lance"]


# Below this many pieces the index is exact (IndexFlatIP); above, IVF-Flat.
IVF_FROM_ROWS = 20_000


def gpu_available() -> bool:
    import faiss

    get = getattr(faiss, "get_num_gpus", None)
    return bool(get and get() > 0 and hasattr(faiss, "index_cpu_to_all_gpus"))


def cells(n_rows: int) -> int:
    """The number of k-means cells of an IVF index over ``n_rows`` vectors."""
    return int(4 * np.sqrt(n_rows))


def build_index(vectors: np.ndarray, *, use_gpu: bool | None = None, exact: bool = False):
    """An inner-product index over ``vectors`` [shape=(n, d), float32]: exact below
    ``IVF_FROM_ROWS`` rows (or with ``exact``), IVF-Flat above."""
    import faiss

    # one query at a time: OpenMP threads only add wake-up latency (and spin on a busy CPU)
    faiss.omp_set_num_threads(1)
    x = np.ascontiguousarray(vectors, np.float32)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise IndexTroubleError("piece vectors are malformed (not a finite 2-D array); run `atlas reindex --vectors`")
    if exact or x.shape[0] < IVF_FROM_ROWS:
        index = faiss.IndexFlatIP(x.shape[1])
    else:
        # large collections: inverted lists (k-means cells), searching 1/16 of them
        nlist = cells(x.shape[0])
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(x.shape[1]), x.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        train = x[rng.choice(x.shape[0], min(x.shape[0], 64 * nlist), replace=False)]
        index.train(train)
        index.nprobe = max(1, nlist // 16)
    index.add(x)
    if use_gpu is None:
        use_gpu = gpu_available()
    if use_gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    return index


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) of the k best rows per query [shape=(q, k)]; rows -1 where fewer exist."""
    q = np.ascontiguousarray(np.atleast_2d(queries), np.float32)
    k = max(1, min(int(k), index.ntotal))
    return index.search(q, k)


def index_path(db_dir) -> Path:
    return Path(db_dir) / "faiss" / "piece_vectors.faiss"


def vectors_from_lance(db_dir) -> tuple[np.ndarray, np.ndarray]:
    """(piece ids, vectors) from the Lance ``piece_vectors`` table."""
    from indexers.vectors import PIECE_TABLE, open_lance, table_names

    ldb = open_lance(db_dir)
    if PIECE_TABLE not in table_names(ldb):
        raise IndexTroubleError(f"{db_dir}: no vector index yet; run `atlas reindex --vectors --db {db_dir}`")
    t = ldb.open_table(PIECE_TABLE).to_arrow().sort_by("piece_id")
    ids = np.asarray(t.column("piece_id").to_pylist(), dtype=object)
    vec = t.column("vector").combine_chunks()
    x = vec.values.to_numpy(zero_copy_only=False).reshape(len(ids), -1).astype(np.float32)
    return ids, x


def save_index(index, ids: np.ndarray, db_dir) -> Path:
    """Write the index and its ids. Each file is written under a temporary name and
    renamed, the index first: a reader that meets one new and one old file sees that
    their row counts differ (:func:`load_index`)."""
    import faiss

    path = index_path(db_dir)
    path.parent.mkdir(exist_ok=True)
    if gpu_available() and hasattr(faiss, "index_gpu_to_cpu"):
        try:
            index = faiss.index_gpu_to_cpu(index)
        except Exception:  # already a CPU index
            pass
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    faiss.write_index(index, str(tmp))
    os.replace(tmp, path)
    ids_path = path.with_suffix(".ids.npy")
    tmp = ids_path.with_name(f"{ids_path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, np.asarray(ids, dtype=str))
    os.replace(tmp, ids_path)
    return path


def load_index(db_dir, ids: np.ndarray, vectors: np.ndarray):
    """The index of ``vectors`` (one row per piece of ``ids``, in that order): the saved
    file when it holds exactly those pieces in that order, else built from ``vectors``
    and saved for the next query (a folder this process cannot write: kept for this one).

    A file that is missing, damaged or out of date (an ingest adds pieces without
    updating it) is never answered from. The caller's vectors are DuckDB's
    (``cover_features.vector``, which Lance copies): building from them spares the first
    query after an ingest lancedb's import and a read of Lance."""
    import faiss

    path = index_path(db_dir)
    ids_path = path.with_suffix(".ids.npy")
    index = None
    if path.exists() and ids_path.exists():
        try:
            saved = np.load(ids_path).astype(object)
            index = faiss.read_index(str(path))
        except (OSError, ValueError, EOFError, RuntimeError):  # damaged: a cache, built again
            index = None
        if index is not None and np.array_equal(saved, ids) and index.ntotal == len(ids):
            # (a row count that differs: caught between the two renames of save_index)
            if gpu_available():
                index = faiss.index_cpu_to_all_gpus(index)
            return index
        if _cells_to_keep(index, len(ids), vectors) is not None:
            index = _renumbered(index, saved, ids, vectors)
            if gpu_available():
                index = faiss.index_cpu_to_all_gpus(index)
        else:
            index = None
    if index is None or index.ntotal != len(ids):
        index = build_index(vectors)
    try:
        save_index(index, ids, db_dir)
    except OSError:
        pass
    return index


def _cells_to_keep(index, n_rows: int, vectors: np.ndarray):
    """``index`` when it is an IVF index whose cells suit ``n_rows`` vectors (within 10%
    of the number a new build would train, so each cell keeps about the rows it was made
    for) of the same width, else None. An ingest adds pieces to a large collection
    without updating the file; the first query after it keeps the cells
    (:func:`_renumbered`) instead of training new ones (5 s at 100,000 pieces): the
    search is as good (its lists hold every piece), though its cells then depend on the
    order pieces arrived in, until `atlas reindex --vectors` trains them again."""
    import faiss

    if index is None or n_rows < IVF_FROM_ROWS or not isinstance(index, faiss.IndexIVFFlat):
        return None
    if index.d != vectors.shape[1] or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        return None
    return index if abs(index.nlist - cells(n_rows)) <= 0.1 * cells(n_rows) else None


def _renumbered(index, saved: np.ndarray, ids: np.ndarray, vectors: np.ndarray):
    """``index`` (IVF-Flat, CPU; its ids the rows of ``saved``) made the index of
    ``vectors`` (the rows of ``ids``): each stored vector whose piece is still there with
    the same vector keeps its cell and takes its piece's new row; the others are dropped,
    and the pieces without one added. Adding every vector again instead assigned each to
    its cell anew: 0.7 s at 100,000 pieces, against a pass over the lists here. Within a
    cell the order differs from a re-add's; a search scores every vector of a cell it
    visits, so only exact ties could rank differently."""
    import faiss

    row_of = {pid: i for i, pid in enumerate(ids)}
    new_row = np.fromiter((row_of.get(p, -1) for p in saved), np.int64, len(saved))
    inv, width = index.invlists, index.code_size
    held = np.zeros(len(ids), bool)
    total = 0
    for cell in range(index.nlist):
        n = inv.list_size(cell)
        if n == 0:
            continue
        old = faiss.rev_swig_ptr(inv.get_ids(cell), n).copy()
        codes = faiss.rev_swig_ptr(inv.get_codes(cell), n * width).copy().reshape(n, width)
        rows = np.where((old >= 0) & (old < new_row.size), new_row[np.clip(old, 0, new_row.size - 1)], -1)
        ok = rows >= 0
        ok[ok] = (codes[ok].view(np.float32) == vectors[rows[ok]]).all(axis=1)
        ok[ok] = ~held[rows[ok]]  # (one vector per row)
        held[rows[ok]] = True
        keep_ids, keep_codes = np.ascontiguousarray(rows[ok]), np.ascontiguousarray(codes[ok])
        inv.resize(cell, keep_ids.size)
        if keep_ids.size:
            inv.update_entries(cell, 0, keep_ids.size, faiss.swig_ptr(keep_ids), faiss.swig_ptr(keep_codes))
        total += keep_ids.size
    index.ntotal = total
    missing = np.flatnonzero(~held)
    if missing.size:
        index.add_with_ids(np.ascontiguousarray(vectors[missing], np.float32), missing.astype(np.int64))
    return index


def build_from_lance(db_dir) -> tuple[Path, int]:
    """Build the FAISS file from the Lance vectors; returns (path, rows)."""
    ids, x = vectors_from_lance(db_dir)
    index = build_index(x)
    return save_index(index, ids, db_dir), len(ids)
