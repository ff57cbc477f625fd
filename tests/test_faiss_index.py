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
    index, ids = load_index(db, rows + 1)  # up to date now: loaded, not built again
    assert index_path(db).stat().st_mtime_ns == stamp and np.array_equal(ids, saved)
    _, x = vectors_from_lance(db)
    got, want = search(index, x[:4], 3), search(build_index(x), x[:4], 3)
    assert np.array_equal(got[1], want[1]) and np.allclose(got[0], want[0])


def test_files_of_two_writes_are_not_used_together(db_with_stale_index):
    """A reader between the two renames of save_index sees one new and one old file."""
    import faiss

    from indexers.faiss_index import index_path, load_index, vectors_from_lance

    db, rows = db_with_stale_index
    path = index_path(db)
    old_ids = np.load(path.with_suffix(".ids.npy"))
    ids, x = vectors_from_lance(db)
    new = faiss.IndexFlatIP(x.shape[1])
    new.add(x[:rows])  # as many rows as the old ids file, other vectors
    faiss.write_index(new, str(path))
    np.save(path.with_suffix(".ids.npy"), np.append(old_ids, "f" * 16))  # one row more than the index
    index, got = load_index(db, rows + 1)
    assert index.ntotal == rows + 1 and np.array_equal(got, ids)
    assert np.array_equal(np.load(path.with_suffix(".ids.npy")).astype(object), ids)
