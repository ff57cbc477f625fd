"""What every screen of the app shares: a title line, the status bar and the footer."""

from __future__ import annotations

from rich.markup import escape
from rich.text import Text
from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer, Header

from ingest.sources import one_line
from query.formatting import cell_text
from tui.widgets.status_bar import StatusBar

__all__ = ["AtlasScreen", "cell", "escape", "fmt_cell", "superseded"]


def superseded() -> bool:
    """In a worker thread: True when a newer request of the same exclusive group has
    replaced this one, whose result must then not overwrite the newer one's."""
    from textual.worker import get_current_worker

    return get_current_worker().is_cancelled


class AtlasScreen(Screen):
    """A top-level screen (one per app mode). Subclasses implement ``compose_body``."""

    #: one line for the help screen
    HELP = ""

    def compose(self) -> ComposeResult:
        yield Header(icon="♫")
        yield from self.compose_body()
        yield StatusBar(id="status")
        yield Footer()

    def compose_body(self) -> ComposeResult:  # pragma: no cover - overridden
        return iter(())


def fmt_cell(v, name: str = "") -> str:
    """A value as the tables show it: as ``atlas sql`` prints it (floats to 6 significant
    digits, a newline or tab as ``\\n``, ``\\t``), durations as m:ss, tempos to 0.1."""
    if name == "duration_s" and isinstance(v, (int, float)):
        m, s = divmod(int(round(v)), 60)
        return f"{m}:{s:02d}"
    if name.endswith("_bpm") and isinstance(v, float) and v == v:
        return f"{v:.1f}"
    return one_line(cell_text(v))


def cell(v, name: str = "") -> Text:
    """``fmt_cell`` as a DataTable cell: plain text, so that brackets in a title, a path
    or a value are shown as they are (a str cell is read as Rich markup, and '[/x]' in
    one ended the app)."""
    return Text(fmt_cell(v, name))
