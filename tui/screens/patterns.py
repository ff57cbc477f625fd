"""Patterns: type a motif (intervals or note names) or pick a grammar rule; see every
occurrence (piece, track, onset, transform) and open its piece in the library."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, Checkbox, DataTable, Input, Label, Static

from tui.db import DB_LOCK
from tui.screens.base import AtlasScreen, cell, escape, superseded

__all__ = ["PatternsScreen"]

_SHOWN = ("file", "track_index", "onset_s", "onset_beats", "transform", "transposition", "stream", "mismatch",
          "n_notes", "path", "piece_id")
MAX_ROWS_SHOWN = 2_000


class PatternsScreen(AtlasScreen):
    CSS_PATH = "patterns.tcss"
    HELP = ("Type a motif as intervals (+2 +2 -4) or note names (C D E C), choose the transforms (P as is, "
            "I inverted, R retrograde, RI both; ±1 note: one note may differ), Enter searches; or pick a "
            "grammar rule on the right. Enter on an occurrence opens its piece.")
    BINDINGS = [
        ("ctrl+f", "focus_motif", "Motif"),
        ("ctrl+l", "focus_rules", "Rules"),
        ("ctrl+o", "open_piece", "Open piece"),
    ]

    class SearchFinished(Message):
        def __init__(self, query: str, table: pa.Table, seconds: float, stats: dict) -> None:
            super().__init__()
            self.query, self.table, self.seconds, self.stats = query, table, seconds, stats

    class SearchFailed(Message):
        def __init__(self, query: str, error: str) -> None:
            super().__init__()
            self.query, self.error = query, error

    class RulesLoaded(Message):
        def __init__(self, table: pa.Table | None, error: str | None = None) -> None:
            super().__init__()
            self.table, self.error = table, error

    def __init__(self) -> None:
        super().__init__()
        self.result: pa.Table | None = None

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="patterns-screen"):
            with Vertical(id="search-pane"):
                with Horizontal(id="query-row"):
                    yield Input(placeholder="motif: +2 +2 +1 -3   or   C D E F   (Enter searches)", id="motif")
                    yield Button("Search", id="search", variant="primary")
                with Horizontal(id="options"):
                    # short labels, their meaning in tooltips and the help: at 80 columns
                    # the long ones pushed "RI" and "1 note may differ" off the screen
                    for label, value, wid, tip in (("P", True, "t-P", "as is"), ("I", False, "t-I", "inverted"),
                                                   ("R", False, "t-R", "retrograde"),
                                                   ("RI", False, "t-RI", "retrograde inversion"),
                                                   ("±1 note", False, "approximate", "one note may differ")):
                        box = Checkbox(label, value, id=wid)
                        box.tooltip = tip
                        yield box
                yield Static("", id="pattern-error")
                yield Static("Type a motif or pick a rule.", id="pattern-info")
                yield DataTable(id="occurrences", cursor_type="row", zebra_stripes=True)
            with Vertical(id="rules-pane"):
                yield Label("Grammar rules (most pieces first)", classes="section")
                yield Static("", id="rules-info")
                yield DataTable(id="rules", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        self.query_one("#pattern-error", Static).display = False
        self.query_one("#motif", Input).focus()
        self.watch(self.app, "data_version", lambda _=None: self.load_rules(), init=True)
        self.watch(self.app, "pattern_rule", self._on_pattern_rule, init=True)

    def _on_pattern_rule(self, rule_id) -> None:
        if rule_id is not None:
            self.search_for(rule_id=rule_id)

    # ---- rules list ------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="pattern-rules")
    def load_rules(self) -> None:
        from query.library import top_rules

        try:
            with DB_LOCK.read():
                t = top_rules(self.app.db_dir)
        except Exception as e:  # noqa: BLE001
            self.post_message(self.RulesLoaded(None, str(e)))
            return
        self.post_message(self.RulesLoaded(t))

    @on(RulesLoaded)
    def _rules_loaded(self, msg: RulesLoaded) -> None:
        info = self.query_one("#rules-info", Static)
        dt = self.query_one("#rules", DataTable)
        dt.clear(columns=True)
        if msg.table is None:
            info.update(f"[dim]{msg.error or 'no grammar tables in this database yet'}[/dim]")
            return
        info.update(f"[dim]{msg.table.num_rows:,} rules shown; Enter searches one[/dim]")
        for c in msg.table.column_names:
            dt.add_column(c, key=c)
        for row in msg.table.to_pylist():
            dt.add_row(*(cell(v) for v in row.values()), key=str(row["rule_id"]))

    @on(DataTable.RowSelected, "#rules")
    def _rule_selected(self, event: DataTable.RowSelected) -> None:
        self.search_for(rule_id=int(event.row_key.value))

    # ---- searching -------------------------------------------------------------------
    def transforms(self) -> tuple[str, ...]:
        return tuple(t for t in ("P", "I", "R", "RI") if self.query_one(f"#t-{t}", Checkbox).value)

    @on(Input.Submitted, "#motif")
    @on(Button.Pressed, "#search")
    def _search_pressed(self) -> None:
        self.search_for(motif=self.query_one("#motif", Input).value)

    def search_for(self, motif: str | None = None, rule_id: int | None = None) -> None:
        """Search a typed motif or a rule's contour with the chosen transforms."""
        transforms = self.transforms()
        if not transforms:
            self._error("choose at least one transform (P, I, R or RI)")
            return
        if rule_id is not None:
            self.query_one("#motif", Input).value = ""
        label = f"rule {rule_id}" if rule_id is not None else (motif or "")
        self.query_one("#pattern-info", Static).update(f"searching {escape(label)}…")
        self.query_one("#occurrences").loading = True
        self.run_search(motif, rule_id, transforms, self.query_one("#approximate", Checkbox).value)

    @work(thread=True, exclusive=True, group="pattern-search")
    def run_search(self, motif: str | None, rule_id: int | None, transforms, approximate: bool) -> None:
        from atlas_db.errors import AtlasError
        from query.pattern_search import parse_motif, search, search_rule

        stats: dict = {}
        t0 = time.perf_counter()
        label = f"rule {rule_id}" if rule_id is not None else (motif or "")
        try:
            with DB_LOCK.read():
                if rule_id is not None:
                    m, table = search_rule(self.app.db_dir, rule_id, transforms=transforms,
                                           approximate=approximate, stats=stats)
                    label = f"rule {rule_id} (intervals {' '.join(f'{i:+d}' for i in m.intervals)})"
                else:
                    table = search(self.app.db_dir, parse_motif(motif or ""), transforms=transforms,
                                   approximate=approximate, stats=stats)
        except Exception as e:  # noqa: BLE001 - shown in place
            if superseded():
                return
            self.post_message(self.SearchFailed(label, str(e) if isinstance(e, AtlasError)
                                                else f"{type(e).__name__}: {e}"))
            return
        if not superseded():
            self.post_message(self.SearchFinished(label, table, time.perf_counter() - t0, stats))

    def _error(self, text: str) -> None:
        """The error in place of the results: the last search's occurrences are not this query's."""
        err = self.query_one("#pattern-error", Static)
        err.update(f"[b]error:[/b] {escape(text)}")
        err.display = True
        self.result = None
        self.query_one("#occurrences", DataTable).clear(columns=True)
        self.query_one("#pattern-info", Static).update("")

    @on(SearchFailed)
    def _failed(self, msg: SearchFailed) -> None:
        self.query_one("#occurrences").loading = False
        self._error(msg.error)
        self.query_one("#pattern-info", Static).update("")

    @on(SearchFinished)
    def _finished(self, msg: SearchFinished) -> None:
        self.query_one("#pattern-error", Static).display = False
        dt = self.query_one("#occurrences", DataTable)
        dt.loading = False
        t = msg.table
        self.result = t
        dt.clear(columns=True)
        cols = [c for c in _SHOWN if c in t.column_names or c == "file"]
        for c in cols:
            dt.add_column(c, key=c)
        for i, row in enumerate(t.slice(0, MAX_ROWS_SHOWN).to_pylist()):
            row["file"] = Path(row["path"]).name if row.get("path") else ""
            dt.add_row(*(cell(row[c], c) for c in cols), key=f"{i}:{row['piece_id']}")
        n_pieces = len(set(t.column("piece_id").to_pylist())) if t.num_rows else 0
        more = f" (showing {MAX_ROWS_SHOWN:,})" if t.num_rows > MAX_ROWS_SHOWN else ""
        how = f", {msg.stats.get('method')}" if msg.stats.get("method") else ""
        self.query_one("#pattern-info", Static).update(
            f"{msg.query}: {t.num_rows:,} occurrences in {n_pieces:,} pieces{more} in {msg.seconds:.2f} s{how}"
            + ("; Enter opens the piece" if t.num_rows else ""))

    # ---- jumping to the library ------------------------------------------------------
    @on(DataTable.RowSelected, "#occurrences")
    def _occurrence_selected(self, event: DataTable.RowSelected) -> None:
        self.app.open_piece(event.row_key.value.split(":", 1)[1])

    def action_open_piece(self) -> None:
        dt = self.query_one("#occurrences", DataTable)
        if dt.row_count:
            key = dt.coordinate_to_cell_key(dt.cursor_coordinate).row_key.value
            self.app.open_piece(key.split(":", 1)[1])

    def action_focus_motif(self) -> None:
        self.query_one("#motif", Input).focus()

    def action_focus_rules(self) -> None:
        self.query_one("#rules", DataTable).focus()
