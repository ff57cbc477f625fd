"""Library: every piece in a sortable, filterable table, and a detail panel for the one
under the cursor (tracks, features, frequent patterns, piano roll)."""

from __future__ import annotations

import pyarrow as pa
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Input, Label, Static

from tui.db import DB_LOCK
from tui.screens.base import AtlasScreen, cell, escape, fmt_cell
from tui.widgets.piano_roll import PianoRoll

__all__ = ["LibraryScreen"]

MAX_ROWS_SHOWN = 20_000  # a DataTable fills slowly beyond this; the filter narrows the rest

_HEADERS = {
    "title": "Title", "path": "Path", "kind": "Kind", "duration_s": "Duration", "n_tracks": "Tracks",
    "n_notes": "Notes", "key": "Key", "tempo_bpm": "Tempo", "piece_id": "Id",
}


class LibraryScreen(AtlasScreen):
    CSS_PATH = "library.tcss"
    HELP = "Every piece; type to filter, click a header (or s / r) to sort, the panel shows the piece under the cursor."
    BINDINGS = [
        ("/", "focus_filter", "Filter"),
        ("s", "next_sort", "Sort column"),
        ("r", "reverse_sort", "Reverse"),
        ("escape", "clear_filter", "Clear filter"),
        ("c", "covers", "Find covers"),
    ]

    class PiecesLoaded(Message):
        def __init__(self, serial: int, table: pa.Table) -> None:
            super().__init__()
            self.serial, self.table = serial, table

    class DetailLoaded(Message):
        def __init__(self, piece_id: str, detail) -> None:
            super().__init__()
            self.piece_id, self.detail = piece_id, detail

    class LoadFailed(Message):
        def __init__(self, what: str, error: str) -> None:
            super().__init__()
            self.what, self.error = what, error

    def __init__(self) -> None:
        super().__init__()
        self.order_by = "title"
        self.descending = False
        self._serial = 0
        self._want_piece: str | None = None
        self.shown_piece: str | None = None

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="library"):
            with Vertical(id="list-pane"):
                yield Input(placeholder="filter: title, path, kind, key or id prefix  (/)", id="filter")
                yield DataTable(id="pieces", cursor_type="row", zebra_stripes=True)
                yield Static("", id="list-info")
            with VerticalScroll(id="detail"):
                yield Static("Select a piece.", id="summary")
                yield PianoRoll(id="roll")
                yield Label("Chords (first 32)", classes="section")
                yield Static("", id="piece-chords")
                yield Label("Tracks", classes="section")
                yield DataTable(id="piece-tracks", cursor_type="row", show_cursor=False)
                yield Label("Most frequent patterns (enter: its contour anywhere)", classes="section")
                yield Static("", id="piece-patterns-info")
                yield DataTable(id="piece-patterns", cursor_type="row")
                yield Label("Features", classes="section")
                yield Static("", id="piece-features-info")
                yield DataTable(id="piece-features", show_cursor=False)

    def on_mount(self) -> None:
        self.query_one("#pieces", DataTable).focus()
        self.watch(self.app, "data_version", lambda _=None: self.reload(), init=True)
        self.watch(self.app, "focus_piece", self._on_focus_piece, init=False)

    # ---- loading (workers) ---------------------------------------------------------
    def reload(self) -> None:
        self._serial += 1
        self.query_one("#list-info", Static).update("loading…")
        self._load_pieces(self._serial, self.query_one("#filter", Input).value, self.order_by, self.descending)

    @work(thread=True, exclusive=True, group="library-list")
    def _load_pieces(self, serial: int, text: str, order_by: str, descending: bool) -> None:
        from query.library import list_pieces

        try:
            with DB_LOCK.read():
                table = list_pieces(self.app.db_dir, text=text, order_by=order_by, descending=descending,
                                    limit=MAX_ROWS_SHOWN + 1)
        except Exception as e:  # noqa: BLE001 - shown in place; the UI goes on
            self.post_message(self.LoadFailed("library", _err(e)))
            return
        self.post_message(self.PiecesLoaded(serial, table))

    @work(thread=True, exclusive=True, group="library-detail")
    def _load_detail(self, piece_id: str) -> None:
        from query.library import piece_detail

        try:
            with DB_LOCK.read():
                detail = piece_detail(self.app.db_dir, piece_id)
        except Exception as e:  # noqa: BLE001
            self.post_message(self.LoadFailed("detail", _err(e)))
            return
        self.post_message(self.DetailLoaded(piece_id, detail))

    # ---- showing results -----------------------------------------------------------
    @on(PiecesLoaded)
    def _show_pieces(self, msg: PiecesLoaded) -> None:
        if msg.serial != self._serial:
            return  # a newer filter/sort is on its way
        t = msg.table
        more = t.num_rows > MAX_ROWS_SHOWN
        t = t.slice(0, MAX_ROWS_SHOWN)
        table = self.query_one("#pieces", DataTable)
        previous = self.shown_piece
        table.clear(columns=True)
        for name in t.column_names:
            label = _HEADERS.get(name, name)
            if name == self.order_by:
                label += " ▼" if self.descending else " ▲"
            table.add_column(label, key=name)
        cols = t.column_names
        ids = t.column("piece_id").to_pylist()
        for row, pid in zip(t.to_pylist(), ids):
            table.add_row(*(cell(row[c], c) for c in cols), key=pid)
        info = f"{t.num_rows:,}{'+' if more else ''} pieces, sorted by {self.order_by} " \
               f"{'descending' if self.descending else 'ascending'}"
        if more:
            info += f" (the first {MAX_ROWS_SHOWN:,} shown; type a filter to narrow)"
        self.query_one("#list-info", Static).update(info)
        target = self._want_piece or previous
        if target and target in ids:
            table.move_cursor(row=ids.index(target))
            self._want_piece = None
        elif t.num_rows:  # the piece shown is filtered out (or none was): the first one
            self._select(ids[0])
        else:  # nothing matches: no detail of a hidden piece, and `c` has no piece to search
            self.shown_piece = self.app.library_piece = None
            for child in self.query_one("#detail").children:
                child.display = child.id == "summary"
            filtered = bool(self.query_one("#filter", Input).value.strip())
            self.query_one("#summary", Static).update("No piece matches the filter." if filtered else "Select a piece.")

    @on(DataTable.RowSelected, "#piece-patterns")
    def _pattern_selected(self, event: DataTable.RowSelected) -> None:
        row = event.data_table.get_row(event.row_key)
        self.app.find_rule(int(str(row[0])))  # cells are Text (tui.screens.base.cell)

    @on(DataTable.RowHighlighted, "#pieces")
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key is not None and event.row_key.value != self.shown_piece:
            self._select(event.row_key.value)

    def _select(self, piece_id: str) -> None:
        self.shown_piece = piece_id
        self.app.library_piece = piece_id
        self.query_one("#detail").scroll_home(animate=False)  # a new piece from its title (it kept the old offset)
        self._load_detail(piece_id)

    @on(DetailLoaded)
    def _show_detail(self, msg: DetailLoaded) -> None:
        if msg.piece_id != self.shown_piece:
            return
        for child in self.query_one("#detail").children:
            child.display = True
        d = msg.detail
        p = d.piece
        lines = [
            f"[b]{escape(p.get('title') or '(untitled)')}[/b]  [dim]{p['piece_id']}[/dim]",
            f"{p.get('kind')} · {fmt_cell(p.get('duration_s'), 'duration_s')} · {p.get('n_tracks')} tracks · "
            f"{p.get('n_notes'):,} notes",
            f"key {p.get('key') or '—'}" + (f" [dim]({d.key_source})[/dim]" if d.key_source else "") + " · tempo "
            f"{fmt_cell(p.get('tempo_bpm'), 'tempo_bpm') or '—'} bpm"
            + (f" ({d.tempo_changes} changes)" if d.tempo_changes > 1 else "")
            + (f" · {d.time_signature}" if d.time_signature else ""),
        ]
        lines += [f"[dim]{escape(path)}[/dim]" for path in d.paths[:4]]
        if len(d.paths) > 4:
            lines.append(f"[dim]… and {len(d.paths) - 4} more paths[/dim]")
        if d.description:
            lines.append(f"[i]{escape(d.description)}[/i]")
        if d.notes_truncated:
            lines.append(f"[dim]piano roll: first {d.notes.num_rows:,} notes[/dim]")
        self.query_one("#summary", Static).update("\n".join(lines))
        n = d.notes
        self.query_one("#roll", PianoRoll).set_notes(
            n.column("onset_beats").to_numpy(), n.column("duration_beats").to_numpy(),
            n.column("pitch").to_numpy(), n.column("track_index").to_numpy())
        self.query_one("#piece-chords", Static).update(_chord_line(d.chords))
        _fill(self.query_one("#piece-tracks", DataTable), d.tracks)
        _fill_optional(self.query_one("#piece-patterns", DataTable), self.query_one("#piece-patterns-info", Static),
                       d.patterns, "no grammar tables in this database yet (the grammar stage has not run)")
        _fill_optional(self.query_one("#piece-features", DataTable), self.query_one("#piece-features-info", Static),
                       d.features, "no features table in this database yet")

    @on(LoadFailed)
    def _show_failure(self, msg: LoadFailed) -> None:
        target = "#list-info" if msg.what == "library" else "#summary"
        self.query_one(target, Static).update(f"[red]could not load the {msg.what}: {escape(msg.error)}[/red]")

    # ---- user actions --------------------------------------------------------------
    @on(Input.Changed, "#filter")
    def _filter_changed(self) -> None:
        self.reload()

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self) -> None:
        self.query_one("#pieces", DataTable).focus()

    @on(DataTable.HeaderSelected, "#pieces")
    def _header(self, event: DataTable.HeaderSelected) -> None:
        key = event.column_key.value
        if key == self.order_by:
            self.descending = not self.descending
        else:
            self.order_by, self.descending = key, False
        self.reload()

    def action_focus_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_clear_filter(self) -> None:
        f = self.query_one("#filter", Input)
        if f.value:
            f.value = ""
        self.query_one("#pieces", DataTable).focus()

    def action_next_sort(self) -> None:
        from query.library import LIBRARY_COLUMNS

        i = LIBRARY_COLUMNS.index(self.order_by)
        self.order_by, self.descending = LIBRARY_COLUMNS[(i + 1) % len(LIBRARY_COLUMNS)], False
        self.reload()

    def action_covers(self) -> None:
        if self.shown_piece:
            self.app.find_covers(self.shown_piece)

    def action_reverse_sort(self) -> None:
        self.descending = not self.descending
        self.reload()

    def show_piece(self, piece_id: str) -> None:
        """Put ``piece_id`` under the cursor (clearing the filter) and show its detail."""
        self._want_piece = piece_id
        self._select(piece_id)
        f = self.query_one("#filter", Input)
        if f.value:
            f.value = ""  # Input.Changed reloads
        else:
            self.reload()

    def _on_focus_piece(self, piece_id) -> None:
        if piece_id:
            self.show_piece(piece_id)


def _err(e: Exception) -> str:
    from atlas_db.errors import AtlasError

    return str(e) if isinstance(e, AtlasError) else f"{type(e).__name__}: {e}"


def _chord_line(chords: pa.Table | None) -> str:
    if chords is None:
        return "[dim]no chords table in this database yet (the harmony stage has not run)[/dim]"
    if chords.num_rows == 0:
        return "[dim](none for this piece)[/dim]"
    romans = chords.column("roman").to_pylist() if "roman" in chords.column_names else [None] * chords.num_rows
    return "   ".join(f"{lab}" + (f" [dim]({rn})[/dim]" if rn else "")
                     for lab, rn in zip(chords.column("label").to_pylist(), romans))


def _fill(dt: DataTable, t: pa.Table, *, max_rows: int = 500) -> None:
    dt.clear(columns=True)
    for name in t.column_names:
        dt.add_column(name, key=name)
    for row in t.slice(0, max_rows).to_pylist():
        dt.add_row(*(cell(row[c], c) for c in t.column_names))


def _fill_optional(dt: DataTable, info: Static, t: pa.Table | None, absent: str) -> None:
    if t is None:
        dt.clear(columns=True)
        dt.display = False
        info.update(f"[dim]{absent}[/dim]")
        info.display = True
        return
    dt.display = t.num_rows > 0
    info.display = t.num_rows == 0
    info.update("[dim](none for this piece)[/dim]")
    _fill(dt, t)
