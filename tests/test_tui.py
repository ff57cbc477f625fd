"""Pilot tests of the TUI against a real database (synthetic MIDI with known notes plus
POP909 songs): every screen, the flows between them, and an ingest that runs while the
UI keeps answering."""

from __future__ import annotations

import asyncio
import csv
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from atlas_db.connection import reading
from midi_fixtures import Track, melody, write_midi
from tui.app import AtlasApp
from tui.widgets.piano_roll import PianoRoll, braille_roll

SCALE = [60, 62, 64, 65, 67, 69, 71, 72]


def _write_synthetic(folder):
    folder.mkdir(parents=True, exist_ok=True)
    write_midi(folder / "scale_in_c.mid",
               [Track(melody(SCALE), name="Melody"), Track(melody([48, 43, 48, 43], step_beats=2), name="Bass",
                                                          channel=1, program=32)],
               tempo_bpm=100, key="C")
    write_midi(folder / "motif_in_g.mid",
               [Track(melody([67, 69, 71, 67, 62, 64, 66, 62, 67, 69, 71, 67]), name="Lead")],
               tempo_bpm=140, key="G")
    (folder / "broken.mid").write_bytes(b"MThd this is not a MIDI file")


@pytest.fixture(scope="module")
def tui_db(tmp_path_factory, pop909_dir):
    """Synthetic pieces + POP909 songs 001-002 (with versions) + one broken file."""
    from ingest.pipeline import ingest_paths

    root = tmp_path_factory.mktemp("tui")
    _write_synthetic(root / "synthetic")
    db = root / "db"
    s = ingest_paths([str(root / "synthetic"), str(pop909_dir / "001"), str(pop909_dir / "002")], db, workers=1)
    assert s.failed == 1 and s.added >= 6
    return db


def _sql(db, q):
    with reading(db) as con:
        return con.execute(q).fetchall()


def run(app, scenario, size=(160, 50)):
    """Run ``scenario(pilot, messages)`` inside ``app.run_test``; returns the messages."""
    messages = []

    async def main():
        async with app.run_test(size=size, message_hook=messages.append) as pilot:
            await scenario(pilot, messages)

    asyncio.run(main())
    return messages


async def wait_for(pilot, predicate, what, timeout_s=60.0):
    """Let the app run until ``predicate()`` holds (a guard against hanging, not a
    timing assertion)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"gave up waiting for {what}")
        await pilot.pause(0.05)


def of_type(messages, name):
    """Messages of one class, each once (the hook sees a bubbling message at every hop)."""
    seen, out = set(), []
    for m in messages:
        if type(m).__name__ == name and id(m) not in seen:
            seen.add(id(m))
            out.append(m)
    return out


def table_rows(dt):
    return [[str(c) for c in dt.get_row_at(i)] for i in range(dt.row_count)]


def make_app(db, tmp_path):
    return AtlasApp(db, history_path=tmp_path / "history.json")


# ---- piano roll (pure function) -------------------------------------------------------

def test_cells_show_numbers_and_text_as_atlas_sql_prints_them():
    from tui.screens.base import fmt_cell

    # 4 significant digits before: 1.235e+04, 1.235e+08, 100.1; a newline cut the cell short
    assert [fmt_cell(v) for v in (12345.678, 123456789.0, 100.08, None, "x\ny", "tab\there", [1.5, 2])] == [
        "12345.7", "123456789", "100.08", "", "x\\ny", "tab\\there", "[1.5, 2]"]
    assert (fmt_cell(125.04, "tempo_bpm"), fmt_cell(61.4, "duration_s")) == ("125.0", "1:01")


def test_braille_roll_places_notes_by_time_and_pitch():
    # Two notes: low C for the first half, high C for the second half.
    codes, cell_track = braille_roll([0.0, 2.0], [2.0, 2.0], [60, 72], [0, 1], width=4, height=4)
    assert codes.shape == (4, 4)
    lit = codes > 0
    # first half (columns 0-1) holds only the low note: lit cells in the bottom half
    rows_first = np.nonzero(lit[:, :2].any(axis=1))[0]
    rows_second = np.nonzero(lit[:, 2:].any(axis=1))[0]
    assert rows_first.min() > rows_second.max()
    assert set(cell_track[:, :2][lit[:, :2]].tolist()) == {0}
    assert set(cell_track[:, 2:][lit[:, 2:]].tolist()) == {1}
    # every dot column of the drawing is covered (the notes fill the whole span)
    assert lit.any(axis=0).all()


def test_braille_roll_empty_and_bad_size():
    codes, tracks = braille_roll([], [], [], width=3, height=2)
    assert not codes.any() and (tracks == -1).all()
    with pytest.raises(ValueError, match="width and height"):
        braille_roll([0], [1], [60], width=0, height=2)


# ---- library --------------------------------------------------------------------------

def test_library_lists_every_piece_with_detail(tui_db, tmp_path):
    n_pieces = _sql(tui_db, "SELECT count(*) FROM pieces")[0][0]
    scale_id, scale_tracks = _sql(
        tui_db, "SELECT piece_id, n_tracks FROM pieces WHERE title = 'scale_in_c'")[0]

    async def scenario(pilot, messages):
        app = pilot.app
        await wait_for(pilot, lambda: of_type(messages, "PiecesLoaded") and of_type(messages, "DetailLoaded")
                       and of_type(messages, "StatusLoaded"), "library load")
        screen = app.screen
        pieces = screen.query_one("#pieces")
        assert pieces.row_count == n_pieces
        # sorted by title ascending: POP909 '001' first
        assert table_rows(pieces)[0][0] == "001"
        # status bar: database path and counts
        assert f"{n_pieces:,} pieces" in app.status_text and str(tui_db) in app.status_text
        # the first piece's detail lists its most frequent grammar patterns (4+ notes)
        first = of_type(messages, "DetailLoaded")[0]
        top = _sql(tui_db, f"""SELECT o.rule_id, count(*) AS n FROM occurrences o JOIN rules r USING (rule_id)
                              WHERE o.piece_id = '{first.piece_id}' AND r.length >= 4
                              GROUP BY o.rule_id ORDER BY n DESC, o.rule_id LIMIT 8""")
        assert top and first.detail.patterns.column("rule_id").to_pylist() == [r[0] for r in top]
        assert screen.query_one("#piece-patterns").row_count == len(top)
        labels = [r[0] for r in _sql(tui_db, f"SELECT label FROM chords WHERE piece_id = '{first.piece_id}' "
                                             "ORDER BY chord_index LIMIT 32")]
        assert labels and first.detail.chords.column("label").to_pylist() == labels
        assert labels[0] in str(screen.query_one("#piece-chords").render())
        # open the synthetic scale: the detail shows its tracks, key signature, tempo
        screen.query_one("#filter").value = "scale_in"
        await wait_for(pilot, lambda: pieces.row_count == 1, "filter to one row")
        await wait_for(pilot, lambda: screen.shown_piece == scale_id and
                       of_type(messages, "DetailLoaded")[-1].piece_id == scale_id, "scale detail")
        await pilot.pause(0.1)
        summary = str(screen.query_one("#summary").render())
        assert "scale_in_c" in summary and "100.0 bpm" in summary
        tracks = screen.query_one("#piece-tracks")
        assert tracks.row_count == scale_tracks
        names = [r[1] for r in table_rows(tracks)]
        assert "Melody" in names and "Bass" in names
        roll = screen.query_one(PianoRoll)
        assert len(roll.notes[2]) == len(SCALE) + 4
        assert any(ord(ch) > 0x2800 for ch in str(roll.render()))

    run(make_app(tui_db, tmp_path), scenario)


def test_library_sorts_and_filters(tui_db, tmp_path):
    most = _sql(tui_db, "SELECT title FROM pieces ORDER BY n_notes DESC, piece_id LIMIT 1")[0][0]
    versions_of_002 = _sql(tui_db, "SELECT count(*) FROM pieces WHERE path ILIKE '%/002/%'")[0][0]

    async def scenario(pilot, messages):
        await wait_for(pilot, lambda: of_type(messages, "PiecesLoaded"), "library load")
        screen = pilot.app.screen
        pieces = screen.query_one("#pieces")
        # sort by notes, then reverse: the biggest piece comes first
        screen.order_by = "n_notes"
        n = len(of_type(messages, "PiecesLoaded"))
        await pilot.press("r")
        await wait_for(pilot, lambda: len(of_type(messages, "PiecesLoaded")) > n, "sorted reload")
        await pilot.pause(0.05)
        assert screen.descending and table_rows(pieces)[0][0] == most
        # s moves the sort to the next column (title -> kind), ascending
        n = len(of_type(messages, "PiecesLoaded"))
        screen.order_by = "title"
        await pilot.press("s")
        await wait_for(pilot, lambda: len(of_type(messages, "PiecesLoaded")) > n, "sort by kind")
        await pilot.pause(0.05)
        assert screen.order_by == "kind" and not screen.descending
        kinds = [r[1] for r in table_rows(pieces)]
        assert kinds == sorted(kinds)
        # the filter narrows to one song's versions (typed into the input)
        await pilot.press("slash")
        await pilot.press(*"/002/")
        await wait_for(pilot, lambda: pieces.row_count == versions_of_002, "filtered rows")
        assert all(r[0].startswith("002") for r in table_rows(pieces))
        # the detail follows the filter: a piece of 002, then none (it kept a hidden piece,
        # and `c` searched its covers)
        await wait_for(pilot, lambda: (pilot.app.library_piece or "") in
                       {k.value for k in pieces.rows}, "detail of a shown piece")
        await pilot.press(*"zzzz")
        await wait_for(pilot, lambda: pieces.row_count == 0, "no rows")
        await wait_for(pilot, lambda: pilot.app.library_piece is None, "no piece")
        assert str(screen.query_one("#summary").render()) == "No piece matches the filter."
        assert not screen.query_one("#roll").display
        await pilot.press("escape")
        await wait_for(pilot, lambda: pieces.row_count > versions_of_002, "filter cleared")
        await wait_for(pilot, lambda: screen.query_one("#roll").display, "detail back")

    run(make_app(tui_db, tmp_path), scenario)


# ---- SQL console ----------------------------------------------------------------------

def test_sql_console_results_errors_history_export(tui_db, tmp_path):
    expected = _sql(tui_db, "SELECT title, n_notes FROM pieces ORDER BY n_notes DESC, title")

    async def scenario(pilot, messages):
        app = pilot.app
        await pilot.press("4")
        await wait_for(pilot, lambda: app.current_mode == "sql", "sql mode")
        screen = app.screen
        editor = screen.query_one("#editor")
        editor.text = "SELECT title, n_notes FROM pieces ORDER BY n_notes DESC, title"
        await pilot.press("ctrl+j")
        await wait_for(pilot, lambda: of_type(messages, "QueryFinished"), "query result")
        results = screen.query_one("#results")
        await pilot.pause(0.05)
        assert results.row_count == len(expected)
        assert table_rows(results)[0] == [expected[0][0], str(expected[0][1])]
        assert "rows" in str(screen.query_one("#sql-info").render())

        # a bad query: the error appears in place, the editor keeps the text
        editor.text = "SELECT nonexistent_column FROM pieces"
        await pilot.press("ctrl+j")
        await wait_for(pilot, lambda: of_type(messages, "QueryFailed"), "query error")
        err = screen.query_one("#sql-error")
        assert err.display and "nonexistent_column" in str(err.render())
        assert editor.text == "SELECT nonexistent_column FROM pieces"
        # DuckDB's pointer at the place stays under it (it was flattened onto one line)
        lines = of_type(messages, "QueryFailed")[-1].error.splitlines()
        at = next(i for i, ln in enumerate(lines) if ln.startswith("LINE 1: "))
        assert lines[at + 1].index("^") == lines[at].index("nonexistent_column"), lines

        # read-only by default: a write is refused and says why
        editor.text = "DELETE FROM pieces"
        await pilot.press("ctrl+j")
        await wait_for(pilot, lambda: len(of_type(messages, "QueryFailed")) == 2, "write refused")
        assert "read-only" in of_type(messages, "QueryFailed")[-1].error
        assert "ctrl+t" in of_type(messages, "QueryFailed")[-1].error

        # history: older queries come back with ctrl+up, and persist to the history file
        await pilot.press("ctrl+up", "ctrl+up")
        assert editor.text == "SELECT nonexistent_column FROM pieces"
        assert len(screen.history) == 3
        # ... and from the history list (newest first)
        hist = screen.query_one("#history")
        hist.focus()
        hist.highlighted = 0
        await pilot.press("enter")
        assert editor.text == "DELETE FROM pieces"

        # export the last good result: run it again, then CSV and Parquet
        editor.text = "SELECT title, n_notes FROM pieces ORDER BY n_notes DESC, title"
        await pilot.press("ctrl+j")
        await wait_for(pilot, lambda: len(of_type(messages, "QueryFinished")) == 2, "second result")
        for name, how in (("out.csv", "button"), ("out.parquet", "enter")):
            screen.query_one("#export-path").value = str(tmp_path / name)
            n = len(of_type(messages, "ExportFinished"))
            if how == "button":
                await pilot.click("#export")
            else:
                screen.query_one("#export-path").focus()
                await pilot.press("enter")
            await wait_for(pilot, lambda: len(of_type(messages, "ExportFinished")) > n, "export")
            assert of_type(messages, "ExportFinished")[-1].error is None
        screen.query_one("#export-path").value = str(tmp_path / "out.xlsx")
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(of_type(messages, "ExportFinished")) == 3, "bad export")
        assert ".csv or .parquet" in of_type(messages, "ExportFinished")[-1].error

    run(make_app(tui_db, tmp_path), scenario)
    with open(tmp_path / "out.csv") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["title", "n_notes"] and [(r[0], int(r[1])) for r in rows[1:]] == expected
    t = pq.read_table(tmp_path / "out.parquet")
    assert list(zip(t.column("title").to_pylist(), t.column("n_notes").to_pylist())) == expected
    import json

    assert json.loads((tmp_path / "history.json").read_text())[-1].startswith("SELECT title, n_notes")


def test_brackets_and_repeated_column_names_are_shown_not_fatal(tui_db, tmp_path):
    # a str cell or line is Rich markup: '[/x]' in a value, a query or an error ended the app,
    # and a join's repeated column names were DataTable's DuplicateKey
    async def scenario(pilot, messages):
        app = pilot.app
        await pilot.press("4")
        await wait_for(pilot, lambda: app.current_mode == "sql", "sql mode")
        screen = app.screen
        screen.query_one("#editor").text = ("SELECT '[/x]' AS \"[/y]\", 'a [b] c' AS v, 1 AS n, 2 AS n, "
                                            "INTERVAL 3 DAY AS i")
        await pilot.press("ctrl+j")
        await wait_for(pilot, lambda: of_type(messages, "QueryFinished"), "query result")
        await pilot.pause(0.05)
        assert table_rows(screen.query_one("#results")) == [["[/x]", "a [b] c", "1", "2", "3 days"]]
        screen.query_one("#editor").text = "SELECT '[/x]' FROM no_such_table"
        await pilot.press("ctrl+j")
        await wait_for(pilot, lambda: of_type(messages, "QueryFailed"), "query error")
        assert "no_such_table" in str(screen.query_one("#sql-error").render())
        assert screen.query_one("#results").row_count == 0 and screen.result is None  # not the last query's rows
        screen.query_one("#results").focus()  # digits switch screens outside text fields
        await pilot.press("2")
        await wait_for(pilot, lambda: app.current_mode == "covers", "covers mode")
        app.screen.find("song[/x].mid")
        await wait_for(pilot, lambda: of_type(messages, "CoversFailed"), "bad query")
        assert "song[/x].mid" in str(app.screen.query_one("#covers-error").render())
        app.screen.query_one("#versions").focus()
        await pilot.press("3")
        await wait_for(pilot, lambda: app.current_mode == "patterns", "patterns mode")
        app.screen.search_for(motif="C D [/x]")
        await wait_for(pilot, lambda: of_type(messages, "SearchFailed"), "bad motif")
        assert "[/x]" in str(app.screen.query_one("#pattern-error").render())
        assert app.is_running

    run(make_app(tui_db, tmp_path), scenario)


def test_sql_console_write_mode_changes_the_library(tui_db, tmp_path):
    db = tmp_path / "db"
    shutil.copytree(tui_db, db)
    n = _sql(db, "SELECT count(*) FROM pieces")[0][0]

    async def scenario(pilot, messages):
        app = pilot.app
        await wait_for(pilot, lambda: of_type(messages, "PiecesLoaded"), "library")
        await pilot.press("4")
        await wait_for(pilot, lambda: app.current_mode == "sql", "sql mode")
        screen = app.screen
        await pilot.press("ctrl+t")
        assert screen.write_mode
        screen.query_one("#editor").text = "UPDATE pieces SET title = 'Renamed by the console' WHERE title = 'scale_in_c'"
        await pilot.press("ctrl+j")
        await wait_for(pilot, lambda: of_type(messages, "QueryFinished"), "update")
        await pilot.press("1")  # typed into the editor: digits switch screens only outside text fields
        assert app.current_mode == "sql"
        await pilot.press("f2")
        await wait_for(pilot, lambda: len(of_type(messages, "PiecesLoaded")) >= 2, "library reload")
        await pilot.pause(0.05)
        titles = [r[0] for r in table_rows(app.screen.query_one("#pieces"))]
        assert "Renamed by the console" in titles and len(titles) == n

    run(make_app(db, tmp_path), scenario)


# ---- help -----------------------------------------------------------------------------

def test_help_screen_lists_the_bindings(tui_db, tmp_path):
    async def scenario(pilot, messages):
        app = pilot.app
        await pilot.press("f1")
        await pilot.pause(0.1)
        from tui.screens.help import HelpScreen, help_markdown

        assert isinstance(app.screen, HelpScreen)
        text = help_markdown(app)
        for must in ("ctrl+j", "Library", "Sql", "Ingest", "ctrl+g"):
            assert must in text
        await pilot.press("escape")
        await pilot.pause(0.05)
        assert not isinstance(app.screen, HelpScreen)

    run(make_app(tui_db, tmp_path), scenario)


# ---- ingest ---------------------------------------------------------------------------

def test_ingest_screen_adds_pieces_and_lists_errors(tui_db, tmp_path):
    db = tmp_path / "db"
    shutil.copytree(tui_db, db)
    before = _sql(db, "SELECT count(*) FROM pieces")[0][0]
    new = tmp_path / "new"
    write_midi(new / "fresh_tune.mid", [Track(melody([72, 71, 69, 67]), name="Flute", program=73)])
    (new / "also_broken.mid").write_bytes(b"not midi at all")

    async def scenario(pilot, messages):
        app = pilot.app
        await wait_for(pilot, lambda: of_type(messages, "PiecesLoaded") and of_type(messages, "StatusLoaded"),
                       "library")
        await pilot.press("5")
        await wait_for(pilot, lambda: app.current_mode == "ingest", "ingest mode")
        screen = app.screen
        await wait_for(pilot, lambda: of_type(messages, "ErrorsLoaded"), "errors table")
        assert screen.query_one("#errors").row_count == 1  # the fixture's broken.mid
        screen.add_path(tmp_path / "does_not_exist")
        assert "no such file" in str(screen.query_one("#ingest-status").render())
        screen.query_one("#path").value = str(new)
        screen.query_one("#path").focus()
        await pilot.press("enter")
        assert screen.queue == [str(new.resolve())]
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: of_type(messages, "Finished"), "ingest finished")
        fin = of_type(messages, "Finished")[-1]
        assert fin.outcome == "done" and fin.summary["added"] == 1 and fin.summary["failed"] == 1
        assert [m.path for m in of_type(messages, "FileFailed")] == [str((new / "also_broken.mid").resolve())]
        await wait_for(pilot, lambda: len(of_type(messages, "ErrorsLoaded")) >= 2, "errors reloaded")
        await pilot.pause(0.05)
        errors = screen.query_one("#errors")
        assert errors.row_count == 2
        # its columns as wide as their cells (they stayed at the headers' width, "path",
        # after a run with failures, until the terminal was resized)
        shown = "".join(errors.render_line(y).text for y in range(1, 3))  # the rows as drawn
        assert "also_broken.mid" in shown, shown
        # the library and the status bar know the new piece without a restart
        await wait_for(pilot, lambda: f"{before + 1:,} pieces" in app.status_text, "status count")
        await pilot.press("f2")
        await wait_for(pilot, lambda: any(r[0] == "fresh_tune" for r in table_rows(app.screen.query_one("#pieces"))),
                       "new piece in the library")

    run(make_app(db, tmp_path), scenario)
    assert _sql(db, "SELECT count(*) FROM pieces")[0][0] == before + 1


def test_ingest_in_progress_does_not_block_the_ui(tui_db, tmp_path, pop909_dir):
    db = tmp_path / "db"
    shutil.copytree(tui_db, db)
    # enough songs that the ingest outlasts the key presses below on a loaded machine (with
    # 16 songs, two fresh-clone CI runs saw it end before a key was handled)
    songs = sorted(p for p in pop909_dir.iterdir() if p.is_dir())[2:40]

    async def scenario(pilot, messages):
        app = pilot.app
        await wait_for(pilot, lambda: of_type(messages, "PiecesLoaded"), "library")
        await pilot.press("5")
        await wait_for(pilot, lambda: app.current_mode == "ingest", "ingest mode")
        screen = app.screen
        for s in songs:
            screen.add_path(s)
        # What the UI loop does while the ingest runs: a timer samples whether the ingest
        # is still running, the screen shown and the library's filter text.
        samples = []

        def sample():
            try:
                filt = app.screen.query_one("#filter").value
            except Exception:  # another screen on top (help) or not the library
                filt = None
            samples.append((screen.running, app.current_mode, filt))

        app.set_interval(0.02, sample)
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: of_type(messages, "Progress"), "first progress")
        # While the ingest runs: switch screens, type a filter, open and close the help.
        # Each state is waited for until the sampler has seen it (on a loaded machine the
        # 20 ms timer can miss a state that lasts one key press); the ingest must still be
        # running when it is seen, or the wait gives up.
        def seen_running(mode, filt):
            return any(r and (m, f) == (mode, filt) for r, m, f in samples)

        await pilot.press("1")
        await pilot.press("slash", "0")
        await wait_for(pilot, lambda: seen_running("library", "0") or of_type(messages, "Finished"), "filter typed")
        await pilot.press("f1")
        await wait_for(pilot, lambda: seen_running("library", None) or of_type(messages, "Finished"), "help shown")
        await pilot.press("escape")
        await wait_for(pilot, lambda: of_type(messages, "Finished"), "ingest finished", timeout_s=300)
        assert of_type(messages, "Finished")[-1].outcome == "done"
        assert seen_running("library", "0"), "keys were not handled while the ingest ran"
        assert seen_running("library", None), "the help screen did not open while the ingest ran"

    run(make_app(db, tmp_path), scenario)
    assert _sql(db, "SELECT count(*) FROM pieces WHERE path LIKE '%/018/%'")[0][0] >= 1


def test_ingest_cancel_keeps_the_database_usable(tui_db, tmp_path, pop909_dir):
    db = tmp_path / "db"
    shutil.copytree(tui_db, db)
    songs = sorted(p for p in pop909_dir.iterdir() if p.is_dir())[20:60]

    async def scenario(pilot, messages):
        app = pilot.app
        await pilot.press("5")
        await wait_for(pilot, lambda: app.current_mode == "ingest", "ingest mode")
        screen = app.screen
        for s in songs:
            screen.add_path(s)
        screen.query_one("#path").focus()  # where typing a path leaves it: the field took ctrl+x as "cut"
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: of_type(messages, "Progress"), "first progress")
        await pilot.press("ctrl+x")
        await wait_for(pilot, lambda: of_type(messages, "Finished"), "ingest ended")
        assert of_type(messages, "Finished")[-1].outcome == "cancelled"

    run(make_app(db, tmp_path), scenario)
    # whatever was committed is consistent: every piece has its notes
    assert _sql(db, "SELECT count(*) FROM pieces p WHERE n_notes <> (SELECT count(*) FROM notes n "
                    "WHERE n.piece_id = p.piece_id)")[0][0] == 0


# ---- patterns -------------------------------------------------------------------------

def test_patterns_screen_finds_a_typed_motif_and_opens_the_piece(tui_db, tmp_path):
    from query.pattern_search import parse_motif, search

    expected = search(tui_db, parse_motif("+2 +2 -4"))
    motif_id = _sql(tui_db, "SELECT piece_id FROM pieces WHERE title = 'motif_in_g'")[0][0]
    in_motif = [r for r in expected.to_pylist() if r["piece_id"] == motif_id]
    assert len(in_motif) == 3  # G A B G, D E F# D, G A B G

    async def scenario(pilot, messages):
        app = pilot.app
        await pilot.press("3")
        await wait_for(pilot, lambda: app.current_mode == "patterns", "patterns mode")
        screen = app.screen
        await pilot.press(*"+2 +2 -4")
        await pilot.press("enter")
        await wait_for(pilot, lambda: of_type(messages, "SearchFinished"), "search")
        table = of_type(messages, "SearchFinished")[-1].table
        assert table.num_rows == expected.num_rows
        occ = screen.query_one("#occurrences")
        await pilot.pause(0.05)
        assert occ.row_count == expected.num_rows
        assert f"{expected.num_rows:,} occurrences" in str(screen.query_one("#pattern-info").render())
        # a motif that cannot be read is reported in place
        screen.query_one("#motif").value = "C D banana"
        await pilot.press("enter")
        await wait_for(pilot, lambda: of_type(messages, "SearchFailed"), "bad motif")
        assert "banana" in str(screen.query_one("#pattern-error").render())
        # and the last search's occurrences are gone: they are not this query's
        assert occ.row_count == 0 and screen.result is None
        screen.query_one("#motif").value = "+2 +2 -4"
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(of_type(messages, "SearchFinished")) == 2, "search again")
        await pilot.pause(0.05)
        # jump: the first occurrence in motif_in_g opens in the library
        row = next(i for i, r in enumerate(table.to_pylist()) if r["piece_id"] == motif_id)
        occ.focus()
        occ.move_cursor(row=row)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.current_mode == "library", "library mode")
        await wait_for(pilot, lambda: app.screen.shown_piece == motif_id and any(
            m.piece_id == motif_id for m in of_type(messages, "DetailLoaded")), "piece opened")

    run(make_app(tui_db, tmp_path), scenario)


def test_patterns_screen_searches_a_grammar_rule(tui_db, tmp_path):
    from query.library import top_rules
    from query.pattern_search import search_rule

    rules = top_rules(tui_db)
    assert rules is not None and rules.num_rows > 0, "the grammar stage wrote no rules of 4+ notes"
    rule_id = rules.column("rule_id")[0].as_py()
    _, expected = search_rule(tui_db, rule_id)

    async def scenario(pilot, messages):
        app = pilot.app
        await pilot.press("3")
        await wait_for(pilot, lambda: app.current_mode == "patterns", "patterns mode")
        await wait_for(pilot, lambda: of_type(messages, "RulesLoaded"), "rules")
        screen = app.screen
        dt = screen.query_one("#rules")
        await pilot.pause(0.05)
        assert dt.row_count == rules.num_rows
        dt.focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: of_type(messages, "SearchFinished"), "rule search")
        done = of_type(messages, "SearchFinished")[-1]
        assert done.query.startswith(f"rule {rule_id}") and done.table.num_rows == expected.num_rows
        assert expected.num_rows >= 1

    run(make_app(tui_db, tmp_path), scenario)


# ---- covers ---------------------------------------------------------------------------

def test_covers_screen_ranks_versions_of_a_library_piece(tui_db, tmp_path):
    from query.covers import covers

    song1 = _sql(tui_db, "SELECT piece_id FROM pieces WHERE title = '001'")[0][0]
    expected = covers(tui_db, [song1], top=20)

    async def scenario(pilot, messages):
        app = pilot.app
        await wait_for(pilot, lambda: of_type(messages, "DetailLoaded"), "library")
        assert app.screen.shown_piece == song1  # first by title
        await pilot.press("c")
        await wait_for(pilot, lambda: app.current_mode == "covers", "covers mode")
        await wait_for(pilot, lambda: of_type(messages, "CoversFound") or of_type(messages, "CoversFailed"),
                       "covers", timeout_s=120)
        assert not of_type(messages, "CoversFailed")
        assert of_type(messages, "CoversFound")[-1].note is None  # every piece has its bass line
        found = of_type(messages, "CoversFound")[-1].table
        assert found.column("piece_id").to_pylist() == expected.column("piece_id").to_pylist()
        screen = app.screen
        dt = screen.query_one("#versions")
        await pilot.pause(0.05)
        assert dt.row_count == found.num_rows
        # the versions of song 001 rank above everything else
        paths = found.column("path").to_pylist()
        top = [p for p in paths if "/001/" in p]
        assert paths[: len(top)] == top and len(top) >= 3
        assert "same key" in table_rows(dt)[0][3] or "transposed" in table_rows(dt)[0][3]
        # open the second result in the library
        dt.focus()
        dt.move_cursor(row=1)
        await pilot.press("enter")
        target = found.column("piece_id")[1].as_py()
        await wait_for(pilot, lambda: app.current_mode == "library" and app.screen.shown_piece == target,
                       "result opened in the library")

    run(make_app(tui_db, tmp_path), scenario)


def test_covers_screen_says_when_pieces_predate_the_bass_line(tui_db, tmp_path):
    """A database whose pieces were indexed before the bass line (NULL bass_pc): the
    versions are still found, and the screen says what to run."""
    import shutil

    from atlas_db.connection import writing

    db = tmp_path / "old"
    shutil.copytree(tui_db, db)
    with writing(db) as con:
        con.execute("UPDATE cover_features SET bass_pc = NULL")
        n = con.execute("SELECT count(*) FROM cover_features").fetchone()[0]
    song1 = _sql(db, "SELECT piece_id FROM pieces WHERE title = '001'")[0][0]

    async def scenario(pilot, messages):
        app = pilot.app
        await pilot.press("2")
        await wait_for(pilot, lambda: app.current_mode == "covers", "covers mode")
        app.screen.find(song1)
        await wait_for(pilot, lambda: of_type(messages, "CoversFound") or of_type(messages, "CoversFailed"),
                       "covers", timeout_s=120)
        assert not of_type(messages, "CoversFailed")
        msg = of_type(messages, "CoversFound")[-1]
        assert "/001/" in msg.table.column("path")[0].as_py()
        assert msg.note.startswith(f"note: {n} pieces") and "atlas reindex --vectors" in msg.note
        await pilot.pause(0.05)
        assert "atlas reindex --vectors" in str(app.screen.query_one("#covers-info").render())

    run(make_app(db, tmp_path), scenario)


def test_covers_screen_takes_a_file_and_reports_bad_queries(tui_db, tmp_path, pop909_dir):
    from tui.screens.covers import MidiTree

    query_file = pop909_dir / "001" / "versions" / "001-v1.mid"
    other = tmp_path / "picker"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    write_midi(other / "tune.mid", [Track(melody([60, 62, 64]))])
    (other / "sub").mkdir()

    async def scenario(pilot, messages):
        app = pilot.app
        await pilot.press("2")
        await wait_for(pilot, lambda: app.current_mode == "covers", "covers mode")
        screen = app.screen
        tree = screen.query_one(MidiTree)
        assert sorted(p.name for p in tree.filter_paths(list(other.iterdir()))) == ["sub", "tune.mid"]
        screen.find(str(query_file))
        await wait_for(pilot, lambda: of_type(messages, "CoversFound") or of_type(messages, "CoversFailed"),
                       "covers", timeout_s=120)
        found = of_type(messages, "CoversFound")[-1].table
        assert "001" in found.column("path")[0].as_py()
        # the picker: enter on a MIDI file in the tree searches it
        tree.focus()
        await wait_for(pilot, lambda: len(tree.root.children) == 2, "tree loaded")
        n = len(of_type(messages, "CoversFound")) + len(of_type(messages, "CoversFailed"))
        await pilot.press("down", "down", "enter")  # sub/, tune.mid
        await wait_for(pilot, lambda: len(of_type(messages, "CoversFound")) + len(of_type(messages, "CoversFailed")) > n,
                       "covers of the picked file", timeout_s=120)
        last = (of_type(messages, "CoversFound") + of_type(messages, "CoversFailed"))[-1]
        assert last.query == str(other / "tune.mid")
        screen.query_one("#cover-query").value = "no/such/file.mid"
        screen.query_one("#cover-query").focus()
        failed = len(of_type(messages, "CoversFailed"))
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(of_type(messages, "CoversFailed")) > failed, "bad query")
        assert "no/such/file.mid" in str(screen.query_one("#covers-error").render())

    run(AtlasApp(tui_db, history_path=tmp_path / "h.json", start_dir=other), scenario)


def test_library_pattern_opens_its_occurrences(tui_db, tmp_path):
    async def scenario(pilot, messages):
        app = pilot.app
        await wait_for(pilot, lambda: of_type(messages, "DetailLoaded"), "detail")
        await pilot.pause(0.1)
        detail = of_type(messages, "DetailLoaded")[-1].detail
        rule_id = detail.patterns.column("rule_id")[0].as_py()
        table = app.screen.query_one("#piece-patterns")
        table.focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.current_mode == "patterns", "patterns mode")
        await wait_for(pilot, lambda: of_type(messages, "SearchFinished"), "rule search")
        done = of_type(messages, "SearchFinished")[-1]
        assert done.query.startswith(f"rule {rule_id} ")
        # the piece the rule came from is among its occurrences
        assert detail.piece["piece_id"] in done.table.column("piece_id").to_pylist()
        # an occurrence in another piece opens it in the library at the top of its detail
        # (the detail kept its scroll offset: the patterns section, title off the screen)
        other = next(p for p in done.table.column("piece_id").to_pylist() if p != detail.piece["piece_id"])
        app.open_piece(other)
        await wait_for(pilot, lambda: app.current_mode == "library" and app.library_piece == other, "opened")
        await wait_for(pilot, lambda: of_type(messages, "DetailLoaded")[-1].piece_id == other, "its detail")
        assert app.screen.query_one("#detail").scroll_y == 0

    run(make_app(tui_db, tmp_path), scenario, size=(100, 30))  # the detail taller than the screen


def test_cli_tui_help_has_an_example():
    from click.testing import CliRunner

    from query.cli import cli

    res = CliRunner().invoke(cli, ["tui", "--help"])
    assert res.exit_code == 0 and "Example:" in res.output and "atlas tui --db" in res.output


def test_a_long_query_does_not_block_the_ui(tui_db, tmp_path):
    # ~ 8 x (notes)^2 pairs compared: seconds of DuckDB work in a worker thread
    slow = ("SELECT count(*) AS pairs FROM notes a, notes b, range(8) r "
            "WHERE a.pitch + b.pitch = 118 + r.range AND a.velocity <> b.velocity + 1")

    async def scenario(pilot, messages):
        app = pilot.app
        await pilot.press("4")
        await wait_for(pilot, lambda: app.current_mode == "sql", "sql mode")
        screen = app.screen
        screen.query_one("#editor").text = slow
        # What the UI loop does while the query runs: a timer samples the worker's state
        # and the screen shown; a key press switches screens.
        samples = []

        def sample():
            running = [m.worker for m in of_type(messages, "StateChanged") if m.worker.group == "sql"]
            samples.append((bool(running) and running[0].is_running, app.current_mode))

        app.set_interval(0.02, sample)
        screen.action_run()
        await pilot.press("f2")
        await wait_for(pilot, lambda: of_type(messages, "QueryFinished"), "slow query", timeout_s=300)
        assert of_type(messages, "QueryFinished")[-1].table.column("pairs")[0].as_py() > 0
        during = [mode for running, mode in samples if running]
        assert "library" in during, "the key press was not handled while the query ran"

    run(make_app(tui_db, tmp_path), scenario)


def test_sql_catalog_lists_tables_and_inserts_names(tui_db, tmp_path):
    tables = {r[0] for r in _sql(tui_db, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'")}

    async def scenario(pilot, messages):
        app = pilot.app
        await pilot.press("4")
        await wait_for(pilot, lambda: of_type(messages, "CatalogLoaded"), "catalog")
        screen = app.screen
        tree = screen.query_one("#catalog")
        assert {n.data for n in tree.root.children} == tables
        pieces = next(n for n in tree.root.children if n.data == "pieces")
        assert [c.data for c in pieces.children][:2] == ["piece_id", "path"]
        editor = screen.query_one("#editor")
        editor.text = ""
        pieces.expand()
        await pilot.pause(0.05)
        tree.focus()
        tree.move_cursor(pieces.children[1])
        await pilot.press("enter")
        assert editor.text == "path"

    run(make_app(tui_db, tmp_path), scenario)


def test_a_narrow_terminal_gives_the_sql_editor_the_room(tui_db, tmp_path):
    # at 80 columns the catalog and the side pane left the editor 26 columns
    widths = {}

    async def scenario(pilot, messages):
        await pilot.press("4")
        await wait_for(pilot, lambda: of_type(messages, "CatalogLoaded"), "catalog")
        await pilot.pause(0.1)
        screen = pilot.app.screen
        widths[pilot.app.size.width] = (screen.query_one("#catalog").display, screen.query_one("#editor").size.width)

    for size in ((80, 24), (160, 50)):
        run(make_app(tui_db, tmp_path), scenario, size=size)
    assert widths[80][0] is False and widths[80][1] >= 50
    assert widths[160][0] is True and widths[160][1] >= 70


# ---- query.library (what the Library screen shows) ---------------------------------------

def test_library_key_falls_back_to_the_files_key_signature(tui_db, tmp_path):
    from atlas_db.connection import connect
    from query.library import list_pieces, piece_detail

    db = tmp_path / "db"
    shutil.copytree(tui_db, db)
    pid = _sql(db, "SELECT piece_id FROM pieces WHERE title = 'motif_in_g'")[0][0]
    estimated = _sql(db, f"SELECT key_name FROM piece_keys WHERE piece_id = '{pid}'")[0][0]
    assert piece_detail(db, pid).key_source == "piece_keys"
    assert piece_detail(db, pid).piece["key"] == estimated
    con = connect(db, read_only=False)
    con.execute("DELETE FROM piece_keys WHERE piece_id = ?", [pid])
    con.close()
    d = piece_detail(db, pid)
    assert (d.piece["key"], d.key_source) == ("G major", "key_signatures")
    row = [r for r in list_pieces(db, text="motif_in_g").to_pylist()][0]
    assert row["key"] == "G major" and row["tempo_bpm"] == pytest.approx(140.0, abs=0.01)
    assert row["n_notes"] == 12 and row["duration_s"] == pytest.approx(12 * 60 / 140, abs=0.01)
    # the filter is literal text: % and _ match themselves, not any characters
    assert list_pieces(db, text="%").num_rows == 0 and list_pieces(db, text="motif%in").num_rows == 0
    assert list_pieces(db, text="motif_in_").num_rows >= 1
    from atlas_db.errors import BadInputError

    with pytest.raises(BadInputError, match="cannot sort by"):
        list_pieces(db, order_by="pitch; DROP TABLE pieces")


def test_an_empty_database_shows_empty_screens_and_clear_errors(tmp_path):
    from atlas_db.connection import connect

    db = tmp_path / "empty"
    connect(db, read_only=False, create=True).close()  # what `atlas tui` does for a new folder

    async def scenario(pilot, messages):
        app = pilot.app
        await wait_for(pilot, lambda: of_type(messages, "PiecesLoaded") and of_type(messages, "StatusLoaded"),
                       "library")
        assert app.screen.query_one("#pieces").row_count == 0
        assert "0 pieces" in app.status_text
        assert "Select a piece" in str(app.screen.query_one("#summary").render())
        await pilot.press("2")
        await wait_for(pilot, lambda: app.current_mode == "covers", "covers")
        app.screen.find("0123456789abcdef")
        await wait_for(pilot, lambda: of_type(messages, "CoversFailed"), "covers error")
        assert str(app.screen.query_one("#covers-error").render()).startswith("error:")
        await pilot.press("3")
        await wait_for(pilot, lambda: app.current_mode == "patterns", "patterns")
        app.screen.search_for(motif="C D E")
        await wait_for(pilot, lambda: of_type(messages, "SearchFinished") or of_type(messages, "SearchFailed"),
                       "pattern search")
        assert not of_type(messages, "SearchFailed")
        assert of_type(messages, "SearchFinished")[-1].table.num_rows == 0

    run(make_app(db, tmp_path), scenario)


def test_ingest_picker_adds_removes_and_refuses_an_empty_list(tui_db, tmp_path):
    pick = tmp_path / "pick"
    write_midi(pick / "a.mid", [Track(melody([60, 64, 67]))])
    (pick / "folder").mkdir()
    (pick / "notes.txt").write_text("not music")  # not listed: the ingest would refuse it

    async def scenario(pilot, messages):
        app = pilot.app
        await pilot.press("5")
        await wait_for(pilot, lambda: app.current_mode == "ingest", "ingest mode")
        screen = app.screen
        tree = screen.query_one("#tree")
        tree.focus()
        await wait_for(pilot, lambda: len(tree.root.children) == 2, "tree loaded")
        await pilot.press("down", "a", "down", "a")  # folders first: folder/, then a.mid
        assert screen.queue == [str((pick / "folder").resolve()), str((pick / "a.mid").resolve())]
        queue = screen.query_one("#queue")
        queue.focus()
        queue.highlighted = 0
        await pilot.press("delete")
        assert screen.queue == [str((pick / "a.mid").resolve())] and queue.option_count == 1
        assert "1 item queued" in str(screen.query_one("#ingest-status").render())
        await pilot.click("#clear")
        assert screen.queue == [] and queue.option_count == 0
        assert str(screen.query_one("#ingest-status").render()) == "Nothing queued."  # said "2 item(s) queued"
        await pilot.press("ctrl+g")
        assert not screen.running
        assert "nothing to ingest" in str(screen.query_one("#ingest-status").render())

    run(AtlasApp(tui_db, history_path=tmp_path / "h.json", start_dir=pick), scenario)


def test_a_newer_query_is_not_overwritten_by_an_older_slow_one(tui_db, tmp_path):
    slow = ("SELECT 'slow' AS which, count(*) AS n FROM notes a, notes b, range(4) r "
            "WHERE a.pitch + b.pitch = 120 + r.range")

    async def scenario(pilot, messages):
        app = pilot.app
        await pilot.press("4")
        await wait_for(pilot, lambda: app.current_mode == "sql", "sql mode")
        screen = app.screen
        editor = screen.query_one("#editor")
        from tui.db import DB_LOCK

        # let the start-up reads finish, so the one reader below is the slow query
        await wait_for(pilot, lambda: all(of_type(messages, n) for n in
                                          ("PiecesLoaded", "DetailLoaded", "StatusLoaded", "CatalogLoaded")),
                       "start-up reads")
        await wait_for(pilot, lambda: DB_LOCK._readers == 0, "idle")
        editor.text = slow
        screen.action_run()
        await wait_for(pilot, lambda: DB_LOCK._readers == 1, "slow query running")
        editor.text = "SELECT 'fast' AS which"
        screen.action_run()
        await wait_for(pilot, lambda: of_type(messages, "QueryFinished"), "fast query")
        # wait until the slow worker's thread is done too, then check what is shown
        # (the newer query interrupts the slow one, whose thread holds the read lock
        # until DuckDB has stopped; tests/test_tui_cancel.py checks the interrupt)
        await wait_for(pilot, lambda: DB_LOCK._readers == 0, "slow query thread", timeout_s=300)
        await pilot.pause(0.5)
        finished = of_type(messages, "QueryFinished")
        assert [m.table.column("which")[0].as_py() for m in finished] == ["fast"]
        assert table_rows(screen.query_one("#results")) == [["fast"]]

    run(make_app(tui_db, tmp_path), scenario)
