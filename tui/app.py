"""The Harmony Atlas TUI: one app, one screen per mode (Library, Covers, Patterns, SQL,
Ingest), a help screen, and a status bar with the database path and counts.

All database work runs in Textual thread workers and comes back as messages, so the UI
never waits on DuckDB; heavy modules (query/*, ingest/*) are imported inside the workers
so the app starts fast.

Example
-------
>>> AtlasApp("atlas_data").run()  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from pathlib import Path

from rich.markup import escape
from textual import on, work
from textual.app import App
from textual.binding import Binding
from textual.message import Message
from textual.reactive import reactive

from tui.db import DB_LOCK

__all__ = ["AtlasApp", "available_modes"]

# (mode, screen class path, the query module it needs or None, key)
_MODES = [
    ("library", "tui.screens.library:LibraryScreen", None, "1"),
    ("covers", "tui.screens.covers:CoversScreen", "query.covers", "2"),
    ("patterns", "tui.screens.patterns:PatternsScreen", "query.pattern_search", "3"),
    ("sql", "tui.screens.sql:SqlScreen", None, "4"),
    ("ingest", "tui.screens.ingest:IngestScreen", None, "5"),
]


def _load(path: str):
    mod, name = path.split(":")
    return getattr(importlib.import_module(mod), name)


def available_modes() -> list[tuple[str, str, str]]:
    """The modes this installation can show: (name, screen path, key). A screen whose
    query module or screen module is absent is left out rather than shown empty."""
    import importlib.util

    out = []
    for name, screen, needs, key in _MODES:
        # find_spec, not import: the query modules pull in numba and friends, which the
        # workers import later; the app should start fast.
        if needs and importlib.util.find_spec(needs) is None:
            continue
        try:
            _load(screen)
        except ImportError:
            continue
        out.append((name, screen, key))
    return out


class AtlasApp(App):
    """``AtlasApp(db_dir)``: browse, search and grow the database in ``db_dir``."""

    TITLE = "Harmony Atlas"
    # a screen under 110 columns is "-narrow": the SQL console gives its editor the room;
    # under 30 rows "-short": the SQL editor and the ingest queue shrink so that results
    # and errors keep rows (at 60x20 the results table showed only its header)
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (30, "-tall")]

    #: the status line every screen shows (see tui.widgets.status_bar)
    status_text = reactive("")
    #: bumped whenever the database content changes (ingest, a write in the SQL console)
    data_version = reactive(0)
    #: a piece another screen asked the library to show
    focus_piece = reactive(None)
    #: a query (file or piece id) the covers screen should rank versions of
    cover_query = reactive(None)
    #: a grammar rule the patterns screen should search
    pattern_rule = reactive(None)

    class StatusLoaded(Message):
        def __init__(self, counts: dict | None, error: str | None = None) -> None:
            super().__init__()
            self.counts, self.error = counts, error

    def __init__(self, db_dir, *, history_path=None, start_dir=None) -> None:
        self.db_dir = Path(db_dir)
        #: where the file pickers (Covers, Ingest) open
        self.start_dir = Path(start_dir) if start_dir else Path.cwd()
        #: the piece under the library's cursor (the covers screen can use it)
        self.library_piece: str | None = None
        #: the latest query.stats.corpus_summary (None until loaded)
        self.counts: dict | None = None
        self.history_path = Path(history_path) if history_path else self.db_dir / "tui_sql_history.json"
        self.mode_table = available_modes()
        self.MODES = {name: _load(screen) for name, screen, _ in self.mode_table}
        super().__init__()
        # the help key in the title line: a footer cut at 80 columns never showed "? Help"
        self.sub_title = f"{self.db_dir} · F1 help"

    # Digits switch screens outside text fields; F-keys everywhere (priority: they win over
    # an editor's own F-key bindings, e.g. TextArea's F6 "select line").
    BINDINGS = [
        *(Binding(key, f"switch_mode('{name}')", name.capitalize()) for name, _, _, key in _MODES),
        *(Binding(f"f{int(key) + 1}", f"switch_mode('{name}')", name.capitalize(), show=False, priority=True)
          for name, _, _, key in _MODES),
        Binding("question_mark", "help", "Help"),
        Binding("f1", "help", "Help", show=False, priority=True),
        Binding("ctrl+r", "refresh_status", "Refresh", show=False),
    ]

    def check_action(self, action: str, parameters) -> bool | None:
        if action == "switch_mode" and parameters and parameters[0] not in self.MODES:
            return False  # that screen is not available here (its query module is missing)
        return True

    def on_mount(self) -> None:
        self.status_text = f"{self.db_dir} · loading counts…"
        self.refresh_status()
        self.switch_mode("library")

    # ---- status bar ------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="status")
    def refresh_status(self) -> None:
        from query.stats import corpus_summary

        try:
            with DB_LOCK.read():
                s = corpus_summary(self.db_dir)
        except Exception as e:  # noqa: BLE001
            self.post_message(self.StatusLoaded(None, f"{type(e).__name__}: {e}" if not _is_atlas(e) else str(e)))
            return
        self.post_message(self.StatusLoaded(s))

    @on(StatusLoaded)
    def _status_loaded(self, msg: StatusLoaded) -> None:
        if msg.counts is None:
            self.status_text = f"{escape(str(self.db_dir))} · [red]{escape(msg.error)}[/red]"
            return
        s = msg.counts
        self.counts = s
        n_err = s["ingest_errors"]
        self.status_text = escape(
            f"{s['database']} · {s['pieces']:,} pieces · {s['tracks_with_notes']:,} tracks · "
            f"{s['notes']:,} notes · {s['hours']:.1f} h · {n_err:,} ingest error{'' if n_err == 1 else 's'}"
        )

    def action_refresh_status(self) -> None:
        self.refresh_status()

    # ---- cross-screen ----------------------------------------------------------------
    def data_changed(self) -> None:
        """The database content changed: refresh counts and every screen that lists it."""
        self.data_version += 1
        self.refresh_status()

    def open_piece(self, piece_id: str) -> None:
        """Show ``piece_id`` in the library (from covers, patterns, ...)."""
        self.switch_mode("library")
        self.focus_piece = None
        self.focus_piece = piece_id

    def find_covers(self, query: str) -> None:
        """Rank the versions of ``query`` (a piece id or a file) on the covers screen."""
        if "covers" not in self.MODES:
            self.notify("cover lookup is not available in this installation", severity="warning")
            return
        self.switch_mode("covers")
        self.cover_query = None
        self.cover_query = query

    def find_rule(self, rule_id: int) -> None:
        """Search every occurrence of grammar rule ``rule_id`` on the patterns screen."""
        if "patterns" not in self.MODES:
            self.notify("pattern lookup is not available in this installation", severity="warning")
            return
        self.switch_mode("patterns")
        self.pattern_rule = None
        self.pattern_rule = int(rule_id)

    def action_help(self) -> None:
        from tui.screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())


def _is_atlas(e: Exception) -> bool:
    from atlas_db.errors import AtlasError

    return isinstance(e, AtlasError)
