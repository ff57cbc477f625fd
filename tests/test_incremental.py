"""A small ingest into a live database (issue 13): every transaction of the ingest on one
connection, and the derived stages given the notes just stored instead of reading them
back; both must leave exactly the rows of the long way round."""

from __future__ import annotations

import duckdb
import pytest

from atlas_db.connection import Writer, reading
from conftest import dump_tables, pop909_songs
from ingest import derived
from ingest.derived import run_stages
from ingest.pipeline import ingest_paths


@pytest.fixture
def notes_given(monkeypatch):
    """Records, per stage, whether each batch was given the stored notes."""
    seen: dict[str, list[bool]] = {}
    for stage in derived.stages():
        real = stage.update

        def spy(con, ids, notes="notes", _real=real, _name=stage.STAGE):
            seen.setdefault(_name, []).append(notes != "notes")
            return _real(con, ids, notes=notes)

        monkeypatch.setattr(stage, "update", spy)
    return seen


def test_stages_given_the_stored_notes_write_what_reading_them_writes(tmp_path, notes_given):
    songs = pop909_songs(4)
    given, read_back = tmp_path / "given", tmp_path / "read"
    # three songs with their versions, then one file into the live database
    for files in ([str(p) for p in songs[:3]], [str(songs[3] / f"{songs[3].name}.mid")]):
        ingest_paths(files, given)
        ingest_paths(files, read_back, derive=False)  # then the stages read the notes from the table
        run_stages(read_back)
        assert dump_tables(given) == dump_tables(read_back)
    assert set(notes_given) == {"harmony", "grammar", "vectors", "patterns"}
    # each ingest into `given` handed its notes over; run_stages without them read the table
    assert all(flags.count(True) == 2 and flags.count(False) == 2 for flags in notes_given.values())


def test_writer_keeps_its_connection_between_quick_transactions(tmp_path):
    db = tmp_path / "db"
    with Writer(db, create=True, hold_s=3600) as w:
        with w.transaction() as con:
            con.execute("CREATE TABLE t (x INTEGER PRIMARY KEY)")
        with w.transaction() as con2:
            con2.execute("INSERT INTO t VALUES (1)")
        assert con2 is con
        with pytest.raises(duckdb.ConstraintException), w.transaction() as con3:
            con3.execute("INSERT INTO t VALUES (2)")
            con3.execute("INSERT INTO t VALUES (1)")
        # the failed transaction rolled back and its connection was closed
        assert w.connection() is not con
        assert w.connection().execute("SELECT x FROM t").fetchall() == [(1,)]
    with reading(db) as con:  # closed: the file can be opened again (read-only) in this process
        assert con.execute("SELECT count(*) FROM t").fetchall() == [(1,)]


def test_writer_with_no_hold_closes_after_each_transaction(tmp_path):
    with Writer(tmp_path / "db", create=True, hold_s=0) as w:
        with w.transaction() as con:
            con.execute("CREATE TABLE t (x INTEGER)")
        with reading(tmp_path / "db") as r:
            assert r.execute("SELECT count(*) FROM t").fetchall() == [(0,)]
