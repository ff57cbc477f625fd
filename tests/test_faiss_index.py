"""The saved FAISS file (<db>/faiss/piece_vectors.faiss + .ids.npy) after pieces are added:
an ingest does not update it, so the first query must notice and never answer from it."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import pop909_songs
from ingest.pipeline import ingest_paths


@pytest.fixture
def db_with_stale_index(tmp_path):
    """A database whose FAISS file was built before one more song was ingested."""
    from indexers.faiss_index import build_from_lance

    songs = pop909_songs(4)
    db = tmp_path / "db"
    ingest_paths([str(s / f"{s.name}.mid") for s in songs[:3]], db, workers=1)
    _, rows = build_from_lance(db)
    ingest_paths([str(songs[3] / f"{songs[3].name}.mid")], db, workers=1)
    return db, rows


def test_a_query_rebuilds_and_saves_an_out_of_date_file(db_with_stale_index):
    from indexers.faiss_index import build_index, index_path, load_index, search, vectors_from_lance
    from query.covers import load_index as cover_index

    db, rows = db_with_stale_index
    ids_file = index_path(db).with_suffix(".ids.npy")
    assert len(np.load(ids_file)) == rows
    idx = cover_index(db)  # what `atlas covers` / `atlas similar` load
    assert len(idx.ids) == rows + 1
    saved = np.load(ids_file).astype(object)
    assert np.array_equal(saved, idx.ids)  # the file now holds every piece, in the index's order
    assert idx.index.ntotal == rows + 1
    stamp = index_path(db).stat().st_mtime_ns
    index = load_index(db, idx.ids, idx.vectors)  # up to date now: loaded, not built again
    assert index_path(db).stat().st_mtime_ns == stamp
    _, x = vectors_from_lance(db)
    got, want = search(index, x[:4], 3), search(build_index(x), x[:4], 3)
    assert np.array_equal(got[1], want[1]) and np.allclose(got[0], want[0])


def test_files_of_two_writes_are_not_used_together(db_with_stale_index):
    """A reader between the two renames of save_index sees one new and one old file."""
    import faiss

    from indexers.faiss_index import index_path, load_index, search, vectors_from_lance

    db, rows = db_with_stale_index
    path = index_path(db)
    old_ids = np.load(path.with_suffix(".ids.npy"))
    ids, x = vectors_from_lance(db)
    new = faiss.IndexFlatIP(x.shape[1])
    new.add(x[:rows])  # as many rows as the old ids file, other vectors
    faiss.write_index(new, str(path))
    np.save(path.with_suffix(".ids.npy"), np.append(old_ids, "f" * 16))  # one row more than the index
    index = load_index(db, ids, x)
    assert index.ntotal == rows + 1
    assert np.array_equal(np.load(path.with_suffix(".ids.npy")).astype(object), ids)
    # and a file of the same pieces in another order is built again too
    index = load_index(db, ids[::-1], x[::-1])
    assert np.array_equal(np.load(path.with_suffix(".ids.npy")).astype(object), ids[::-1])
    assert np.array_equal(search(index, x[:1], 1)[1], [[rows]])  # the first piece is the last row now


def test_a_missing_file_is_built_from_duckdbs_vectors_without_lance(db_with_stale_index):
    """The first `atlas covers` after an ingest (the FAISS file out of date) builds it from
    the vectors DuckDB holds: lancedb (2.7-3.0 s to import here) is not imported, the file is saved."""
    import subprocess
    import sys
    from pathlib import Path

    from indexers.faiss_index import index_path

    db, rows = db_with_stale_index
    song = pop909_songs(1)[0]
    code = ("import sys; from query.covers import covers; "
            f"t = covers({str(db)!r}, [{str(song / (song.name + '.mid'))!r}], top=3); "
            "print('lancedb' in sys.modules, t.num_rows)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert out.returncode == 0 and out.stdout.split() == ["False", "3"], out.stderr[-2000:]
    assert len(np.load(index_path(db).with_suffix(".ids.npy"))) == rows + 1


def test_a_damaged_file_is_built_again(db_with_stale_index):
    """The FAISS file and its ids are a cache: garbage in either (a disk error, a copy cut
    short) is built again from the vectors, not a traceback."""
    from indexers.faiss_index import index_path, load_index, search, vectors_from_lance

    db, rows = db_with_stale_index
    ids, x = vectors_from_lance(db)
    path = index_path(db)
    for damaged in (path, path.with_suffix(".ids.npy")):
        load_index(db, ids, x)  # both files good
        good = damaged.read_bytes()
        damaged.write_bytes(b"garbage" + good[: len(good) // 3])
        index = load_index(db, ids, x)
        assert index.ntotal == rows + 1 and np.array_equal(search(index, x[:1], 1)[1], [[0]])
        assert damaged.read_bytes() != b"garbage" + good[: len(good) // 3]  # saved again


def test_a_large_collection_keeps_its_cells_after_an_ingest(tmp_path):
    """An IVF index (20,000 pieces and more) out of date by a few pieces keeps its k-means
    cells (training is most of a build) and holds every piece, in the new order; one
    whose size moved too far for its cells trains new ones."""
    import faiss

    from indexers.faiss_index import IVF_FROM_ROWS, cells, load_index, search

    rng = np.random.default_rng(0)
    n = IVF_FROM_ROWS + 500
    x = rng.standard_normal((n + 40, 24)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.array([f"{i:016x}" for i in rng.permutation(n + 40)], dtype=object)
    first = load_index(tmp_path, ids[:n], x[:n])  # built and saved
    assert isinstance(first, faiss.IndexIVFFlat) and first.nlist == cells(n)
    centroids = first.quantizer.reconstruct_n(0, first.nlist)

    order = np.argsort(ids)  # 40 more pieces, each at its id's row
    grown = load_index(tmp_path, ids[order], x[order])
    assert grown.ntotal == n + 40 and grown.nprobe == first.nprobe
    assert np.array_equal(grown.quantizer.reconstruct_n(0, grown.nlist), centroids)
    new_rows = np.flatnonzero(order >= n)
    _, rows = search(grown, x[order][new_rows], 1)
    assert np.array_equal(rows[:, 0], new_rows)  # each new piece found at its own row
    assert load_index(tmp_path, ids[order], x[order]).ntotal == n + 40  # saved: read back

    # a piece gone and one whose vector changed: each kept vector renumbered in its cell,
    # the changed one added again: what adding every vector to the same cells gives
    y = x[order].copy()
    y[5] = -y[5]
    keep = np.arange(n + 40) != 7
    third = load_index(tmp_path, ids[order][keep], y[keep])
    assert third.ntotal == n + 39
    readded = faiss.clone_index(third)
    readded.reset()
    readded.add(y[keep])
    for a, b in zip(search(third, y[keep][::50], 10), search(readded, y[keep][::50], 10)):
        assert np.array_equal(a, b)
    _, rows = search(third, y[keep][[4, 5, 6, 7]], 1)  # (5: the changed vector; 7: the piece after the one gone)
    assert np.array_equal(rows[:, 0], [4, 5, 6, 7])

    far = 2 * n  # a collection grown past what its cells were made for: trained again
    y = np.concatenate([x, rng.standard_normal((far - n - 40, 24)).astype(np.float32)])
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    more = np.array([f"{i:016x}" for i in range(far)], dtype=object)
    again = load_index(tmp_path, more, y)
    assert again.nlist == cells(far) and again.ntotal == far
