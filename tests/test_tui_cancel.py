"""Cancelling a running query in the TUI's SQL console: `escape` (or the Run button, which
reads Cancel meanwhile) interrupts DuckDB through ``Connection.interrupt()`` from the UI
thread; a newer query cancels the one in flight. Real POP909 database, no mocks."""

from __future__ import annotations

import shutil
import threading

import pytest

from test_tui import make_app, of_type, run, table_rows, wait_for
from tui.query_job import QueryCancelled, QueryJob
from query.sql import QueryError
from atlas_db.connection import reading

# every pair of notes of the 12 songs, 8 times over: about 3e10 comparisons, more than
# a minute of DuckDB work on the development machine, so it can only end early by the
# interrupt (and job.outcome tells an interrupt from a result that came anyway)
SLOW = ("SELECT count(*) AS pairs FROM notes a, notes b, range(8) r "
        "WHERE a.pitch + b.pitch = 118 + r.range")


def _count(db, sql):
    with reading(db) as con:
        return con.execute(sql).fetchall()[0][0]


def _running(screen):
    """The screen's query is inside DuckDB (its worker holds a connection)."""
    job = screen.job
    return job is not None and job._con is not None


async def _open_sql(pilot):
    app = pilot.app
    await pilot.press("4")
    await wait_for(pilot, lambda: app.current_mode == "sql", "sql mode")
    return app.screen


def test_escape_cancels_a_running_query_and_the_next_query_works(small_pop909_db, tmp_path):
    n_pieces = _count(small_pop909_db, "SELECT count(*) FROM pieces")

    async def scenario(pilot, messages):
        screen = await _open_sql(pilot)
        editor = screen.query_one("#editor")
        info = screen.query_one("#sql-info")
        # nothing runs: escape is not bound to cancelling, and the footer does not offer it
        assert "escape" not in screen.active_bindings

        editor.text = SLOW
        await pilot.press("ctrl+j")
        await wait_for(pilot, lambda: _running(screen), "slow query running")
        job = screen.job
        # while it runs: the info line says so with the time so far, the Run button has
        # become Cancel, the footer offers escape, and the UI answers keys
        await wait_for(pilot, lambda: "running…" in str(info.render()), "running line")
        assert " s · escape cancels" in str(info.render())
        assert "Cancel" in str(screen.query_one("#run").label)
        assert screen.active_bindings["escape"].binding.action == "cancel_query"
        await pilot.press("ctrl+t", "ctrl+t")  # the write switch flips and flips back
        assert not screen.write_mode and not job.done

        await pilot.press("escape")
        await wait_for(pilot, lambda: of_type(messages, "QueryCancelled"), "query cancelled", timeout_s=120)
        assert job.done and job.outcome == "interrupted", job.outcome
        assert "query cancelled" in str(info.render())
        assert not screen.query_one("#sql-error").display  # no error, no traceback
        assert screen.query_one("#results").row_count == 0
        assert editor.text == SLOW  # the editor keeps it
        assert not of_type(messages, "QueryFinished") and not of_type(messages, "QueryFailed")
        assert screen.job is None and "Run" in str(screen.query_one("#run").label)
        assert "escape" not in screen.active_bindings

        # the next query runs normally and gives the right answer
        editor.text = "SELECT count(*) AS n FROM pieces"
        await pilot.press("ctrl+j")
        await wait_for(pilot, lambda: of_type(messages, "QueryFinished"), "next query", timeout_s=120)
        await pilot.pause(0.05)
        assert table_rows(screen.query_one("#results")) == [[str(n_pieces)]]
        assert "1 rows × 1 columns" in str(info.render())
        assert len(of_type(messages, "QueryCancelled")) == 1

    run(make_app(small_pop909_db, tmp_path), scenario)


def test_the_run_button_cancels_while_a_query_runs(small_pop909_db, tmp_path):
    async def scenario(pilot, messages):
        screen = await _open_sql(pilot)
        screen.query_one("#editor").text = SLOW
        await pilot.click("#run")
        await wait_for(pilot, lambda: _running(screen), "slow query running")
        job = screen.job
        assert str(screen.query_one("#run").label) == "Cancel (esc)"
        await pilot.click("#run")
        await wait_for(pilot, lambda: of_type(messages, "QueryCancelled"), "query cancelled", timeout_s=120)
        assert job.outcome == "interrupted"
        assert "query cancelled" in str(screen.query_one("#sql-info").render())

    run(make_app(small_pop909_db, tmp_path), scenario)


def test_a_new_query_cancels_the_one_in_flight(small_pop909_db, tmp_path):
    async def scenario(pilot, messages):
        screen = await _open_sql(pilot)
        editor = screen.query_one("#editor")
        editor.text = SLOW
        await pilot.press("ctrl+j")
        await wait_for(pilot, lambda: _running(screen), "slow query running")
        slow = screen.job
        editor.text = "SELECT 'fast' AS which"
        await pilot.press("ctrl+j")
        assert slow.cancelled and screen.job is not slow
        await wait_for(pilot, lambda: of_type(messages, "QueryFinished") and slow.done, "both queries", timeout_s=120)
        await pilot.pause(0.3)
        assert slow.outcome == "interrupted"
        # the slow query's end is not shown over the fast one's result
        assert table_rows(screen.query_one("#results")) == [["fast"]]
        assert "rows" in str(screen.query_one("#sql-info").render())
        assert [m.table.column("which")[0].as_py() for m in of_type(messages, "QueryFinished")] == ["fast"]
        assert screen.job is None

    run(make_app(small_pop909_db, tmp_path), scenario)


# ---- QueryJob without the UI ---------------------------------------------------------

def test_a_job_cancelled_before_it_starts_never_runs(small_pop909_db):
    job = QueryJob(small_pop909_db, SLOW)
    job.cancel()
    with pytest.raises(QueryCancelled):
        job.run()
    assert job.outcome == "not started" and job.done


def test_an_interrupted_write_leaves_nothing_behind(small_pop909_db, tmp_path):
    db = tmp_path / "db"
    shutil.copytree(small_pop909_db, db)
    job = QueryJob(db, f"CREATE TABLE pair_count AS {SLOW}", write=True)
    outcome = {}

    def worker():
        try:
            job.run()
        except QueryCancelled:
            outcome["cancelled"] = True

    t = threading.Thread(target=worker)
    t.start()
    # what the console's clock does: interrupt again until the worker has returned
    # (DuckDB drops an interrupt that arrives before the statement starts)
    while not job.done:
        job.cancel()
        t.join(0.2)
    t.join()
    assert outcome == {"cancelled": True} and job.outcome in ("interrupted", "not started")
    assert _count(db, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'pair_count'") == 0
    # the database is fine afterwards, for reading and for writing
    assert QueryJob(db, "SELECT count(*) AS n FROM pieces").run().column("n")[0].as_py() > 0
    QueryJob(db, "CREATE TABLE small AS SELECT 1 AS x", write=True).run()
    assert _count(db, "SELECT x FROM small") == 1


def test_a_read_only_job_refuses_writes(small_pop909_db):
    with pytest.raises(QueryError, match=r"read-only.*ctrl\+t"):
        QueryJob(small_pop909_db, "CREATE TABLE nope AS SELECT 1").run()
    assert _count(small_pop909_db, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'nope'") == 0


def test_help_lists_the_cancel_key(small_pop909_db, tmp_path):
    from tui.app import AtlasApp
    from tui.screens.help import help_markdown

    text = help_markdown(AtlasApp(small_pop909_db, history_path=tmp_path / "h.json"))
    assert "| `escape` | Cancel query |" in text and "cancels a running query" in text


def test_quitting_while_a_query_runs_interrupts_it(small_pop909_db, tmp_path):
    jobs = []

    async def scenario(pilot, messages):
        screen = await _open_sql(pilot)
        screen.query_one("#editor").text = SLOW
        await pilot.press("ctrl+j")
        await wait_for(pilot, lambda: _running(screen), "slow query running")
        jobs.append(screen.job)
        await pilot.press("ctrl+q")

    run(make_app(small_pop909_db, tmp_path), scenario)
    # run() returns once the app and its worker threads have ended
    assert jobs[0].done and jobs[0].outcome == "interrupted"
