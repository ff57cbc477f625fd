"""Covers: choose a MIDI file (file picker) or a piece from the library; see its ranked
versions with score and explanation; open any result in the library."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, DataTable, DirectoryTree, Input, Label, Static

from tui.db import DB_LOCK
from tui.screens.base import AtlasScreen, cell, escape, fmt_cell, superseded

__all__ = ["CoversScreen", "explain"]

MIDI_SUFFIXES = {".mid", ".midi", ".smf", ".kar"}


def explain(row: dict) -> str:
    """One line saying why a result matched: transposition, tempo ratio, aligned region."""
    parts = []
    t = row.get("transposition")
    if t is not None:
        parts.append("same key" if t == 0 else f"transposed {t:+d} st")
    s = row.get("time_scale")
    if s is not None:
        parts.append("same tempo" if abs(s - 1) < 1e-6 else f"tempo ×{s:.2f}")
    qs, qe, ms, me = (row.get(k) for k in ("query_start_beats", "query_end_beats", "match_start_beats",
                                          "match_end_beats"))
    if None not in (qs, qe, ms, me):
        parts.append(f"query beats {qs:.0f}–{qe:.0f} ↔ match beats {ms:.0f}–{me:.0f}")
    if row.get("matched_by"):
        parts.append(f"by {row['matched_by']}")
    return ", ".join(parts)


class MidiTree(DirectoryTree):
    """A directory tree that shows folders and MIDI files only."""

    def filter_paths(self, paths):
        return [p for p in paths if not p.name.startswith(".") and (p.is_dir() or p.suffix.lower() in MIDI_SUFFIXES)]


class CoversScreen(AtlasScreen):
    CSS_PATH = "covers.tcss"
    HELP = ("Pick a .mid file in the tree (or type a path or piece id), or press c in the Library: "
            "the ranked versions appear with their explanation. Enter on a result opens it in the library.")
    BINDINGS = [
        ("ctrl+f", "focus_query", "Query"),
        ("ctrl+l", "use_library_piece", "Library piece"),
        ("ctrl+o", "open_piece", "Open piece"),
    ]

    class CoversFound(Message):
        def __init__(self, query: str, table: pa.Table, seconds: float, note: str | None = None) -> None:
            super().__init__()
            self.query, self.table, self.seconds, self.note = query, table, seconds, note

    class CoversFailed(Message):
        def __init__(self, query: str, error: str) -> None:
            super().__init__()
            self.query, self.error = query, error

    def __init__(self, start_dir=None) -> None:
        super().__init__()
        self.start_dir = Path(start_dir) if start_dir else None
        self.result: pa.Table | None = None

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="covers-screen"):
            with Vertical(id="picker"):
                yield Label("MIDI files (Enter picks one)", classes="section")
                yield MidiTree(str(self.start_dir or self.app.start_dir), id="midi-tree")
            with Vertical(id="results-pane"):
                with Horizontal(id="query-row"):
                    yield Input(placeholder="a .mid file, or a piece id / ingested path  (Enter searches)",
                                id="cover-query")
                    yield Button("Find versions", id="find", variant="primary")
                    yield Button("Library piece", id="from-library")
                yield Static("", id="covers-error")
                yield Static("Pick a file or a piece.", id="covers-info")
                yield DataTable(id="versions", cursor_type="row", zebra_stripes=True)
                yield Static("", id="explanation")

    def on_mount(self) -> None:
        self.query_one("#covers-error", Static).display = False
        self.watch(self.app, "cover_query", self._on_cover_query, init=True)

    def _on_cover_query(self, query) -> None:
        if query:
            self.find(query)

    # ---- choosing the query ----------------------------------------------------------
    @on(DirectoryTree.FileSelected, "#midi-tree")
    def _file_picked(self, event: DirectoryTree.FileSelected) -> None:
        self.find(str(event.path))

    @on(Input.Submitted, "#cover-query")
    @on(Button.Pressed, "#find")
    def _typed(self) -> None:
        self.find(self.query_one("#cover-query", Input).value.strip())

    @on(Button.Pressed, "#from-library")
    def action_use_library_piece(self) -> None:
        pid = getattr(self.app, "library_piece", None)
        if not pid:
            self._error("no piece chosen in the library yet (go to the Library, pick one, come back)")
            return
        self.find(pid)

    def find(self, query: str) -> None:
        """Rank the versions of ``query`` (a file path or a piece id/path) in a worker."""
        if not query:
            self._error("give a .mid file or a piece id")
            return
        self.query_one("#cover-query", Input).value = query
        self.query_one("#covers-info", Static).update(f"searching versions of {escape(query)}…")
        self.query_one("#versions").loading = True
        self.run_covers(query)

    @work(thread=True, exclusive=True, group="covers")
    def run_covers(self, query: str) -> None:
        from atlas_db.errors import AtlasError
        from query.covers import covers, stale_note

        t0 = time.perf_counter()
        try:
            with DB_LOCK.read():
                table = covers(self.app.db_dir, [query], top=20)
                note = stale_note(self.app.db_dir)  # pieces indexed before the bass line
        except Exception as e:  # noqa: BLE001 - shown in place
            if superseded():
                return
            self.post_message(self.CoversFailed(query, str(e) if isinstance(e, AtlasError)
                                                else f"{type(e).__name__}: {e}"))
            return
        if not superseded():
            self.post_message(self.CoversFound(query, table, time.perf_counter() - t0, note))

    # ---- results ---------------------------------------------------------------------
    def _error(self, text: str) -> None:
        """The error in place of the results: the last search's answers are not this query's."""
        err = self.query_one("#covers-error", Static)
        err.update(f"[b]error:[/b] {escape(text)}")
        err.display = True
        self.result = None
        self.query_one("#versions", DataTable).clear(columns=True)
        self.query_one("#explanation", Static).update("")
        self.query_one("#covers-info", Static).update("")

    @on(CoversFailed)
    def _failed(self, msg: CoversFailed) -> None:
        self.query_one("#versions").loading = False
        self._error(msg.error)
        self.query_one("#covers-info", Static).update("")

    @on(CoversFound)
    def _found(self, msg: CoversFound) -> None:
        self.query_one("#covers-error", Static).display = False
        dt = self.query_one("#versions", DataTable)
        dt.loading = False
        t = msg.table
        self.result = t
        dt.clear(columns=True)
        # the file's name (a narrow terminal cut a path to its folders); the whole path is
        # in the line under the table
        for c in ("rank", "score", "file", "explanation", "melody_score", "harmony_score", "piece_id"):
            dt.add_column(c, key=c)
        for row in t.to_pylist():
            dt.add_row(row["rank"], f"{row['score']:.3f}", cell(Path(row["path"] or "").name), cell(explain(row)),
                       cell(row["melody_score"]), cell(row["harmony_score"]), row["piece_id"],
                       key=f"{row['rank']}:{row['piece_id']}")
        self.query_one("#covers-info", Static).update(
            f"the {t.num_rows} pieces closest to {escape(msg.query)}, best first, in {msg.seconds:.2f} s (a version "
            "scores near 1, an unrelated piece near 0); Enter opens one in the library"
            + (f"\n{msg.note}" if msg.note else ""))
        if t.num_rows:
            self.query_one("#explanation", Static).update(escape(explain(t.slice(0, 1).to_pylist()[0])))

    @on(DataTable.RowHighlighted, "#versions")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        if self.result is None or event.row_key is None:
            return
        rank = int(event.row_key.value.split(":", 1)[0])
        rows = [r for r in self.result.to_pylist() if r["rank"] == rank]
        if rows:
            r = rows[0]
            self.query_one("#explanation", Static).update(
                f"#{rank} {escape(r['path'])}\nscore {r['score']:.3f} (melody {fmt_cell(r['melody_score'])}, "
                f"harmony {fmt_cell(r['harmony_score'])}): {explain(r)}")

    @on(DataTable.RowSelected, "#versions")
    def _selected(self, event: DataTable.RowSelected) -> None:
        self.app.open_piece(event.row_key.value.split(":", 1)[1])

    def action_open_piece(self) -> None:
        dt = self.query_one("#versions", DataTable)
        if dt.row_count:
            key = dt.coordinate_to_cell_key(dt.cursor_coordinate).row_key.value
            self.app.open_piece(key.split(":", 1)[1])

    def action_focus_query(self) -> None:
        self.query_one("#cover-query", Input).focus()
