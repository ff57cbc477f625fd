"""A small ingest into a live database (issue 13): every transaction of the ingest on one
connection, and the derived stages given the notes just stored instead of reading them
back; both must leave exactly the rows of the long way round."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from atlas_db.connection import Writer, reading, readers_waiting_file
from atlas_db.errors import DatabaseBusyError
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


def test_pending_of_every_stage_at_once_equals_each_stage_on_its_own(tmp_path):
    """``pending_by_stage`` (one join for all stages, what ``run_stages`` uses) finds what
    ``pending_pieces`` finds stage by stage: pieces no stage has done, pieces some stages
    have done, pieces done by another version (redone only with ``redo_old_versions``),
    and pieces whose failure is recorded for this version (skipped) or another (not)."""
    songs = pop909_songs(6)
    db = tmp_path / "db"
    ingest_paths([str(s / f"{s.name}.mid") for s in songs[:4]], db)
    ingest_paths([str(s / f"{s.name}.mid") for s in songs[4:]], db, derive=False)
    con = duckdb.connect(str(db / "atlas.duckdb"))
    try:
        ids = [r[0] for r in con.execute("SELECT piece_id FROM pieces ORDER BY piece_id").fetchall()]
        stages = derived.stages()
        a, b = stages[0], stages[2]
        new = set(ids) - {r[0] for r in con.execute("SELECT piece_id FROM derived_runs").fetchall()}
        done = sorted(set(ids) - new)
        assert new and len(done) >= 4
        con.execute("UPDATE derived_runs SET stage_version = 'old' WHERE stage = ? AND piece_id = ?", [a.STAGE, done[0]])
        con.execute("DELETE FROM derived_runs WHERE stage = ? AND piece_id = ?", [b.STAGE, done[1]])
        con.execute("DELETE FROM derived_runs WHERE piece_id = ?", [done[2]])
        failures = [(a.STAGE, done[2], a.VERSION), (b.STAGE, done[2], "old"), (b.STAGE, sorted(new)[0], b.VERSION)]
        con.executemany("INSERT INTO derived_failures VALUES (?, ?, ?, 'test', now())", failures)
        for redo in (False, True):
            each = {st.STAGE: derived.pending_pieces(con, st, redo_old_versions=redo) for st in stages}
            assert derived.pending_by_stage(con, stages, redo_old_versions=redo) == each
            assert derived.pending_by_stage(con, [b], redo_old_versions=redo) == {b.STAGE: each[b.STAGE]}
        assert done[0] in each[a.STAGE] and done[1] in each[b.STAGE] and done[2] not in each[a.STAGE]
        assert done[2] in each[b.STAGE] and sorted(new)[0] not in each[b.STAGE]
    finally:
        con.close()


def test_writer_holding_keeps_the_connection_longer_inside_the_block(tmp_path):
    with Writer(tmp_path / "db", create=True, hold_s=0) as w:
        with w.holding(3600):
            with w.transaction() as con:
                con.execute("CREATE TABLE t (x INTEGER)")
            with w.transaction() as con2:
                con2.execute("INSERT INTO t VALUES (1)")
            assert con2 is con
        assert w.hold_s == 0
        with w.transaction() as con3:
            con3.execute("INSERT INTO t VALUES (2)")
        assert con3 is con  # the connection of the block, closed now that it ended
        assert w._con is None


def test_a_waiting_reader_gets_in_before_a_holding_writer_goes_on(tmp_path):
    """Another process writes transaction after transaction on a Writer that would hold
    the file for an hour; a reader here gets in after at most one of its transactions
    (it waited for the writer's whole job: the bulk writer reopened at once)."""
    db = tmp_path / "db"
    with Writer(db, create=True, hold_s=0) as w, w.transaction() as con:
        con.execute("CREATE TABLE t (x INTEGER)")
    script = (
        "import sys, time\n"
        "from atlas_db.connection import Writer\n"
        "with Writer(sys.argv[1], hold_s=3600) as w:\n"
        "    for i in range(150):\n"  # ~7.5 s of 50 ms transactions
        "        with w.transaction() as con:\n"
        "            con.execute('INSERT INTO t VALUES (?)', [i])\n"
        "            time.sleep(0.05)\n"
    )
    # the writer gives up on a lock after 1 s, but not when it reopens mid-job after
    # letting a reader in (the reader below keeps the file 2 s): that would stop the job
    proc = subprocess.Popen([sys.executable, "-c", script, str(db)], cwd=Path(__file__).parents[1],
                            env={**os.environ, "ATLAS_LOCK_WAIT_S": "1"})
    try:
        deadline = time.monotonic() + 60
        while True:  # until the writer holds the file (a read that does not wait gives up)
            try:
                with reading(db, wait_s=0) as con:
                    con.execute("SELECT count(*) FROM t").fetchone()
            except DatabaseBusyError:
                break
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        t0 = time.monotonic()
        with reading(db, wait_s=10) as con:
            waited_s = time.monotonic() - t0
            n = con.execute("SELECT count(*) FROM t").fetchone()[0]
            time.sleep(2.0)
        assert 0 < n < 150, n  # in while the writer's job goes on
        assert waited_s < 5, waited_s
        assert not readers_waiting_file(db).exists()
        assert proc.wait(timeout=60) == 0  # and the job finished
    finally:
        proc.kill()
        proc.wait()
    with reading(db) as con:
        assert con.execute("SELECT count(*) FROM t").fetchone()[0] == 150
