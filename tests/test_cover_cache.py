"""The cover index saved on disk (query.cover_cache): a new process maps it in and answers
exactly as a fresh build does; a write to the database, a damaged file or other settings
make it build again; a folder it cannot write leaves the search working."""

import shutil

import numpy as np
import pytest
from scipy import sparse

from conftest import pop909_songs


def _same(a, b, where="index"):
    """Every attribute of two cover indexes equal, array by array (the FAISS index by its
    size, the folder left out: it is the caller's)."""
    if sparse.issparse(a):
        assert sparse.issparse(b) and a.format == b.format and a.shape == b.shape, where
        for part in ("data", "indices", "indptr"):
            _same(getattr(a, part), getattr(b, part), f"{where}.{part}")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, where
        assert np.array_equal(a, b), where
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, dict):
        assert a == b, where
    elif type(a).__module__.startswith("faiss"):
        assert a.ntotal == b.ntotal, where
    elif hasattr(a, "__dict__"):
        assert type(a) is type(b) and vars(a).keys() == vars(b).keys(), where
        for k in vars(a):
            if k != "db_dir":
                _same(vars(a)[k], vars(b)[k], f"{where}.{k}")
    else:
        assert a == b, where


def _fresh(db):
    """The index of ``db`` as a new process gets it (nothing kept in this one)."""
    import query.covers as qc

    qc._CACHE.clear()
    return qc.load_index(db)


def _answers(index, n=6):
    return [index.search(index.query_for_piece(pid), top=5).select(["piece_id", "score"]).to_pylist()
            for pid in index.ids[:n]]


@pytest.fixture
def db(small_pop909_db, tmp_path):
    d = tmp_path / "db"
    shutil.copytree(small_pop909_db, d, ignore=shutil.ignore_patterns("cover_index"))
    return d


def test_a_new_process_maps_the_saved_index_and_answers_the_same(db, monkeypatch):
    import query.covers as qc
    from query.cover_cache import cache_dir

    built = _fresh(db)
    saved = list(cache_dir(db).iterdir())
    assert len(saved) == 1 and (saved[0] / "manifest.json").exists()
    expected = _answers(built)

    def no_build(_):
        raise AssertionError("built again, though the saved index is up to date")

    monkeypatch.setattr(qc, "_build_index", no_build)
    mapped = _fresh(db)
    assert mapped is not built
    _same(built, mapped)
    assert mapped.db_dir == db
    assert _answers(mapped) == expected


def test_a_moved_database_reads_its_audio_from_where_it_is_now(db, tmp_path):
    _fresh(db)
    moved = tmp_path / "moved"
    db.rename(moved)  # (a rename keeps every file's time: the same key)
    assert _fresh(moved).db_dir == moved


def test_a_write_to_the_database_builds_it_again_and_removes_the_old_one(db):
    from ingest.pipeline import ingest_paths
    from query.cover_cache import cache_dir

    before = _fresh(db)
    old = {p.name for p in cache_dir(db).iterdir()}
    new_song = pop909_songs(13)[-1]
    summary = ingest_paths([str(new_song)], db, workers=1)
    assert summary.added >= 1 and summary.failed == 0
    after = _fresh(db)
    assert len(after) == len(before) + summary.added
    now = {p.name for p in cache_dir(db).iterdir()}
    assert len(now) == 1 and not now & old
    _same(after, _fresh(db))


def _building(monkeypatch):
    """The ids each ``_build_index`` call of this test builds (None: every piece)."""
    import query.covers as qc

    calls, real = [], qc._build_index

    def spy(db_dir, ids=None):
        calls.append(None if ids is None else sorted(ids))
        return real(db_dir, ids)

    monkeypatch.setattr(qc, "_build_index", spy)
    return calls


def test_after_a_write_the_saved_index_is_brought_up_to_date_as_a_build_makes_it(db, monkeypatch):
    """New pieces, and one whose cover features were written again, are built alone and
    merged into the saved index: the result is a build's, array by array."""
    import query.covers as qc
    from atlas_db.connection import writing
    from ingest.pipeline import ingest_paths

    before = _fresh(db)
    summary = ingest_paths([str(s) for s in pop909_songs(14)[-2:]], db, workers=1)
    assert summary.added >= 2 and summary.failed == 0
    rewritten = str(before.ids[3])
    with writing(db) as con:  # (a row written again, as `atlas reindex` or a hand would)
        con.execute("UPDATE cover_features SET bass_pc = list_reverse(bass_pc) WHERE piece_id = ?", [rewritten])
    calls = _building(monkeypatch)
    after = _fresh(db)
    new = sorted(set(after.ids) - set(before.ids))
    assert len(new) == summary.added and calls == [sorted(new + [rewritten])]
    built = qc._build_index(db)
    _same(after, built)
    assert _answers(after, 8) == _answers(built, 8)
    _same(after, _fresh(db))  # (saved as it was merged)


def test_a_write_that_changes_no_piece_keeps_the_saved_files(db, monkeypatch, tmp_path):
    from ingest.pipeline import ingest_paths
    from query.cover_cache import cache_dir

    before = _fresh(db)
    files = {p.name: p.stat().st_ino for p in next(cache_dir(db).iterdir()).glob("*.npy")}
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"MThd not really")
    assert ingest_paths([str(bad)], db, workers=1).failed == 1  # (recorded in ingest_errors: a write)
    calls = _building(monkeypatch)
    after = _fresh(db)
    assert calls == []
    _same(before, after)
    (folder,) = cache_dir(db).iterdir()
    assert {p.name: p.stat().st_ino for p in folder.glob("*.npy")} == files
    assert _fresh(db) is not after and calls == []  # (the renamed folder is read)


def test_a_save_removes_what_a_killed_writer_left_and_keeps_a_running_ones(db):
    import os

    from query.cover_cache import cache_dir

    cache_dir(db).mkdir()
    dead, alive = cache_dir(db) / "tmp-999999999-abc", cache_dir(db) / f"tmp-{os.getpid()}-def"
    for d in (dead, alive):
        d.mkdir()
        (d / "000.npy").write_bytes(b"half")
    _fresh(db)
    assert not dead.exists() and alive.exists()


def test_a_damaged_file_or_other_settings_build_it_again(db):
    from query.cover_cache import cache_dir
    from query.covers import ALIGN

    built = _fresh(db)
    folder = next(cache_dir(db).iterdir())
    biggest = max(folder.glob("*.npy"), key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[:100])  # cut short, as a full disk would leave it
    _same(built, _fresh(db))
    assert (folder / biggest.name).stat().st_size > 100  # written again, whole

    shipped = ALIGN["support_dims"]
    ALIGN["support_dims"] = 64  # a setting the build reads
    try:
        other = _fresh(db)
        assert other.melody_sketch.shape[1] == 64
    finally:
        ALIGN["support_dims"] = shipped
    assert _fresh(db).melody_sketch.shape[1] == shipped


def test_a_folder_it_cannot_write_leaves_the_search_working(db):
    from query.cover_cache import cache_dir

    cache_dir(db).write_text("not a folder")  # (tests run as root: a mode would not stop it)
    index = _fresh(db)
    assert len(index) > 12 and _answers(index, 2)
    assert cache_dir(db).read_text() == "not a folder"


def test_an_attribute_with_no_form_on_disk_is_refused(db, tmp_path):
    from query.cover_cache import save_index

    index = _fresh(db)
    index.extra = object()
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(TypeError, match=r"index\.extra: builtins\.object"):
        save_index(index, tmp_path / "elsewhere", "k")


def test_texts_of_any_length_and_code_points_come_back_as_written(tmp_path):
    from query.cover_cache import _Reader, _Writer

    texts = np.array(["", "a", "é/ü/歌.mid", "bad\udcffbyte.mid", "x" * 5000], dtype=object)
    w = _Writer(tmp_path)
    back = _Reader(tmp_path, None).decode(w.encode([texts, {t: i for i, t in enumerate(texts)}], "t"))
    assert back[0].dtype == object and back[0].tolist() == texts.tolist()
    assert back[1] == {t: i for i, t in enumerate(texts)}
    assert sum(p.stat().st_size for p in tmp_path.glob("*.npy")) < 20_000  # not 5 x 5000 x 4 bytes


def test_atlas_covers_says_on_a_terminal_that_it_builds_the_index(db):
    """A line on stderr while the index is built, when stderr is a terminal (as the
    progress bars); none when the saved index is read, none in a pipe."""
    import os
    import pty
    import subprocess
    import sys
    from pathlib import Path

    song = pop909_songs(1)[0] / f"{pop909_songs(1)[0].name}.mid"
    cmd = [sys.executable, "-m", "query.cli", "covers", str(song), "--db", str(db), "--top", "2"]
    root = Path(__file__).parents[1]

    def stderr_on_a_terminal():
        main, sub = pty.openpty()
        try:
            r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=sub, cwd=root, timeout=300)
            os.close(sub)
            out = b""
            while True:
                try:
                    chunk = os.read(main, 4096)
                except OSError:  # (Linux: EIO once the other side is closed and drained)
                    break
                if not chunk:
                    break
                out += chunk
        finally:
            os.close(main)
        assert r.returncode == 0
        return out.decode()

    assert "building the cover index" in stderr_on_a_terminal()
    assert "building the cover index" not in stderr_on_a_terminal()  # saved: read, not built
    shutil.rmtree(db / "cover_index")
    piped = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=300)
    assert piped.returncode == 0 and "building" not in piped.stderr
