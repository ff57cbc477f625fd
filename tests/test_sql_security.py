"""`atlas sql` and the TUI's SQL console can change nothing and read nothing outside the
database unless asked: every attack from issue #12 point 6 is refused with one line,
exit status 2, and has no effect. Real databases on disk, no mocks."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from atlas_db.connection import db_file, reading
from ingest.pipeline import ingest_paths
from midi_fixtures import Track, melody, write_midi
from query.cli import main
from query.sql import QueryError, run_sql
from tui.query_job import QueryJob

ROOT = Path(__file__).resolve().parents[1]
N_NOTES = 9


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """One synthetic piece of N_NOTES notes. Module-scoped: tests that write copy it."""
    root = tmp_path_factory.mktemp("sqlsec")
    f = write_midi(root / "song.mid", [Track(melody([60, 62, 64, 65, 67, 65, 64, 62, 60]), name="lead")])
    ingest_paths([str(f)], root / "db", workers=1)
    return root / "db"


@pytest.fixture
def outside(tmp_path):
    """A folder outside the database with a CSV file and another DuckDB database (3 rows)."""
    (tmp_path / "labels.csv").write_text("piece,label\nsong,chorale\n")
    con = duckdb.connect(str(tmp_path / "other.duckdb"))
    con.execute("CREATE TABLE t AS SELECT range AS x FROM range(3)")
    con.close()
    return tmp_path


def atlas(capsys, *args):
    """``atlas ARGS`` through the real entry point: (exit status, stdout, stderr)."""
    try:
        main(list(args))
        rc = 0
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def refused(capsys, db, query, *flags, match):
    rc, out, err = atlas(capsys, "sql", query, "--db", str(db), *flags)
    assert rc == 2, (rc, out, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("atlas: error: "), err
    assert match in lines[0], lines[0]
    return lines[0]


def n_notes(db):
    with reading(db) as con:
        return con.execute("SELECT count(*) FROM notes").fetchone()[0]


@pytest.mark.parametrize("flags", [(), ("--allow-files",), ("--write",), ("--write", "--allow-files")])
def test_copy_to_writes_no_file_in_any_mode(capsys, db, tmp_path, flags):
    target = tmp_path / "out.csv"
    refused(capsys, db, f"COPY notes TO '{target}'", *flags, match="COPY is off in atlas sql")
    # EXPLAIN ANALYZE runs what it explains; PREPARE would hide the COPY from the check
    refused(capsys, db, f"EXPLAIN ANALYZE COPY notes TO '{target}'", *flags, match="COPY is off")
    refused(capsys, db, f"PREPARE p AS COPY notes TO '{target}'; EXECUTE p", *flags, match="PREPARE is off")
    assert not target.exists()


@pytest.mark.parametrize("flags", [(), ("--allow-files",), ("--write",)])
def test_export_database_writes_no_folder(capsys, db, tmp_path, flags):
    refused(capsys, db, f"EXPORT DATABASE '{tmp_path / 'dump'}'", *flags, match="EXPORT DATABASE is off")
    assert not (tmp_path / "dump").exists()


@pytest.mark.parametrize("flags", [(), ("--allow-files",), ("--write", "--allow-files")])
def test_attach_cannot_touch_another_database(capsys, db, outside, flags):
    other = outside / "other.duckdb"
    refused(capsys, db, f"ATTACH '{other}' AS o (READ_WRITE); DELETE FROM o.t", *flags, match="ATTACH is off")
    refused(capsys, db, "DETACH atlas", *flags, match="DETACH is off")
    con = duckdb.connect(str(other), read_only=True)
    assert con.execute("SELECT count(*) FROM t").fetchone()[0] == 3
    con.close()


@pytest.mark.parametrize("query", ["SELECT * FROM read_csv('{f}')", "SELECT * FROM '{f}'",
                                   "SELECT * FROM read_text('{f}')", "SELECT * FROM glob('{d}/*')"])
def test_reading_files_needs_allow_files(capsys, db, outside, query):
    q = query.format(f=outside / "labels.csv", d=outside)
    line = refused(capsys, db, q, match="reading files outside the database is off in atlas sql; pass --allow-files")
    assert str(outside) in line  # names what it would have read
    rc, out, err = atlas(capsys, "sql", q, "--db", str(db), "--allow-files", "--format", "csv")
    assert rc == 0, err
    assert "labels.csv" in out or "chorale" in out


def test_write_mode_cannot_read_files_either(capsys, db, outside, tmp_path):
    import shutil

    copy = tmp_path / "db"
    shutil.copytree(db, copy)
    f = outside / "labels.csv"
    refused(capsys, copy, f"CREATE TABLE labels AS SELECT * FROM read_csv('{f}')", "--write",
            match="reading files outside the database is off")
    # with --allow-files a file can be loaded into the database (reading, not writing a file)
    rc, _, err = atlas(capsys, "sql", f"CREATE TABLE labels AS SELECT * FROM read_csv('{f}')", "--db", str(copy),
                       "--write", "--allow-files")
    assert rc == 0, err
    assert run_sql(copy, "SELECT label FROM labels").column("label").to_pylist() == ["chorale"]


def test_nothing_runs_when_one_statement_is_refused(capsys, db, tmp_path):
    import shutil

    copy = tmp_path / "db"
    shutil.copytree(db, copy)
    refused(capsys, copy, f"DELETE FROM notes; COPY pieces TO '{tmp_path / 'x.csv'}'", "--write", match="COPY is off")
    assert n_notes(copy) == N_NOTES


@pytest.mark.parametrize("flags", [(), ("--allow-files",)])
@pytest.mark.parametrize("query", ["SET enable_external_access = true", "RESET enable_external_access",
                                   "SET lock_configuration = false", "SET allowed_directories = ['/']",
                                   "PRAGMA enable_profiling", "CALL enable_logging(storage = 'file', storage_path = '/tmp')"])
def test_settings_cannot_be_changed(capsys, db, outside, flags, query):
    refused(capsys, db, f"{query}; SELECT * FROM read_csv('{outside / 'labels.csv'}')", *flags,
            match="changing DuckDB settings")


@pytest.mark.parametrize("flags", [(), ("--allow-files",)])
@pytest.mark.parametrize("query", ["INSTALL httpfs", "LOAD httpfs", "FORCE INSTALL parquet", "UPDATE EXTENSIONS"])
def test_no_extensions(capsys, db, flags, query):
    line = refused(capsys, db, query, *flags, match="off in atlas sql")
    assert "INSTALL and LOAD are off" in line or "UPDATE EXTENSIONS" in line


def test_a_refusal_is_one_line_from_the_installed_command(db, tmp_path):
    """The real process: no traceback on stderr, exit status 2."""
    p = subprocess.run([sys.executable, "-m", "query.cli", "sql", f"COPY notes TO '{tmp_path / 'o.csv'}'",
                        "--db", str(db)], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert not (tmp_path / "o.csv").exists()


def test_every_ordinary_query_still_works(capsys, db):
    rc, out, err = atlas(capsys, "sql", "SELECT count(*) AS n FROM notes", "--db", str(db), "--format", "csv")
    assert (rc, out.split()) == (0, ['"n"', str(N_NOTES)]), err
    for q in ["SHOW TABLES", "DESCRIBE notes", "SUMMARIZE pieces", "EXPLAIN SELECT * FROM notes",
              "EXPLAIN ANALYZE SELECT count(*) FROM notes", "PRAGMA table_info('notes')",
              "SELECT * FROM duckdb_tables()", "CREATE TEMP TABLE scratch AS SELECT 1 AS x; SELECT * FROM scratch",
              "SET VARIABLE lo = 60; SELECT count(*) FROM notes WHERE pitch >= getvariable('lo')"]:
        assert run_sql(db, q).num_rows > 0, q
    with pytest.raises(QueryError, match="read-only.*--write"):
        run_sql(db, "DELETE FROM notes")
    assert n_notes(db) == N_NOTES


def test_the_sandbox_leaves_other_connections_in_the_process_alone(db, outside):
    """The TUI reads through plain connections while the console runs a locked-down one:
    locking the settings must not lock them for the rest of the process."""
    with reading(db) as plain:
        assert run_sql(db, "SELECT count(*) AS n FROM notes").column("n")[0].as_py() == N_NOTES
        plain.execute("SET threads = 1")
        assert plain.execute(f"SELECT count(*) FROM read_csv('{outside / 'labels.csv'}')").fetchone()[0] == 1


def test_run_sql_waits_for_a_writer_in_another_process(db, tmp_path):
    import shutil

    copy = tmp_path / "db"
    shutil.copytree(db, copy)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('held', flush=True); "
                               "time.sleep(2)", str(db_file(copy))], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t = time.monotonic()
        assert run_sql(copy, "SELECT count(*) AS n FROM notes").column("n")[0].as_py() == N_NOTES
        assert time.monotonic() - t > 0.5  # it waited for the lock rather than failing
    finally:
        holder.wait()


# ---- the TUI's SQL console ------------------------------------------------------------

def test_console_job_is_sandboxed_even_in_write_mode(db, outside, tmp_path):
    import shutil

    copy = tmp_path / "db"
    shutil.copytree(db, copy)
    f = outside / "labels.csv"
    for write in (False, True):
        with pytest.raises(QueryError, match="reading files outside the database is off in the SQL console; "
                                             "use `atlas sql --allow-files`"):
            QueryJob(copy, f"SELECT * FROM read_csv('{f}')", write=write).run()
        with pytest.raises(QueryError, match="COPY is off in the SQL console"):
            QueryJob(copy, f"COPY notes TO '{tmp_path / 'o.csv'}'", write=write).run()
        with pytest.raises(QueryError, match="ATTACH is off in the SQL console"):
            QueryJob(copy, f"ATTACH '{outside / 'other.duckdb'}' AS o; DELETE FROM o.t", write=write).run()
        with pytest.raises(QueryError, match="changing DuckDB settings"):
            QueryJob(copy, "SET enable_external_access = true", write=write).run()
    assert not (tmp_path / "o.csv").exists()


def test_console_shows_the_refusal_in_place(db, outside, tmp_path):
    from test_tui import run, wait_for
    from tui.app import AtlasApp
    from textual.widgets import TextArea

    async def scenario(pilot, messages):
        app = pilot.app
        await pilot.press("4")
        await wait_for(pilot, lambda: app.current_mode == "sql", "sql mode")
        screen = app.screen
        screen.query_one("#editor", TextArea).text = f"SELECT * FROM read_csv('{outside / 'labels.csv'}')"
        await pilot.press("ctrl+j")
        await wait_for(pilot, lambda: screen.job is None and screen.query_one("#sql-error").display, "the error")
        text = str(screen.query_one("#sql-error").render())
        assert "reading files outside the database is off in the SQL console" in text
        assert "Traceback" not in text
        # the next, ordinary query works
        screen.query_one("#editor", TextArea).text = "SELECT count(*) AS n FROM notes"
        await pilot.press("ctrl+j")
        await wait_for(pilot, lambda: screen.job is None and "rows" in str(screen.query_one("#sql-info").render()),
                       "the result")
        assert not screen.query_one("#sql-error").display
        assert screen.result.column("n").to_pylist() == [N_NOTES]

    run(AtlasApp(db, history_path=tmp_path / "h.json"), scenario)


# ---- atlas pattern with an absurd motif -----------------------------------------------

@pytest.mark.parametrize("sep", [" ", ","])
def test_a_5000_interval_motif_is_a_one_line_error(capsys, db, sep):
    motif = sep.join(["+1", "-1"] * 2500)
    rc, out, err = atlas(capsys, "pattern", motif, "--db", str(db))
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and len(err) < 200, err
    assert "has 5001 notes; at most 64 are searched" in err


def test_ctrl_c_stops_a_long_query_at_once(db):
    """DuckDB looks for Ctrl-C only between the tasks it runs in the calling thread: in 3
    of 6 runs a query went on for a minute after it. `atlas sql` is a read: the line says
    it was interrupted, no more (it spoke of keeping commits and re-running)."""
    import signal

    for _ in range(3):
        p = subprocess.Popen([sys.executable, "-m", "query.cli", "sql", "--db", str(db),
                              "SELECT sum(hash(x) % 7) FROM range(1000000000000) t(x)"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=Path(__file__).parents[1],
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(2.0)  # started, and in the query
        p.send_signal(signal.SIGINT)
        try:
            out, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            pytest.fail("the query went on after Ctrl-C")
        assert (p.returncode, err.strip()) == (130, "atlas: interrupted")
