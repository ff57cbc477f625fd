"""Ingest: choose files and folders, run the ingest in the background, watch progress and
the errors list; the library and the status bar refresh when pieces arrive."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
from rich.cells import cell_len
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, DataTable, DirectoryTree, Input, Label, OptionList, ProgressBar, Static
from textual.worker import get_current_worker

from ingest.sources import SUFFIXES
from tui.db import DB_LOCK
from tui.screens.base import AtlasScreen, cell, escape, fmt_cell

__all__ = ["IngestScreen"]

REFRESH_EVERY_S = 5.0


class IngestableTree(DirectoryTree):
    """The file picker: folders, and the files an ingest reads (MIDI and audio); other
    files would only be reported as unsupported when the ingest ran."""

    def filter_paths(self, paths):
        return [p for p in paths if p.name.lower().endswith(SUFFIXES) or p.is_dir()]


class IngestScreen(AtlasScreen):
    CSS_PATH = "ingest.tcss"
    HELP = ("Pick files or folders (a in the tree, or type a path and Enter), then start. "
            "The ingest runs in a separate process; the other screens stay usable.")
    BINDINGS = [
        ("a", "add_highlighted", "Add from tree"),
        ("delete", "remove_selected", "Remove"),
        # before the focused widget: the path field took ctrl+x as "cut" and the ingest ran on
        Binding("ctrl+g", "start", "Start ingest", priority=True),
        Binding("ctrl+x", "cancel", "Cancel ingest", priority=True),
    ]

    class Progress(Message):
        def __init__(self, kind: str, done: int, total: int, detail: str = "") -> None:
            super().__init__()
            self.kind, self.done, self.total, self.detail = kind, done, total, detail

    class FileFailed(Message):
        def __init__(self, path: str, reason: str) -> None:
            super().__init__()
            self.path, self.reason = path, reason

    class Finished(Message):
        def __init__(self, outcome: str, summary: dict | None, message: str) -> None:
            super().__init__()
            self.outcome, self.summary, self.message = outcome, summary, message

    class ErrorsLoaded(Message):
        def __init__(self, table: pa.Table | None, error: str | None = None) -> None:
            super().__init__()
            self.table, self.error = table, error

    def __init__(self, start_dir=None) -> None:
        super().__init__()
        self.start_dir = Path(start_dir) if start_dir else None
        self.queue: list[str] = []
        self.running = False
        self._last_refresh = 0.0

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="ingest"):
            with Vertical(id="pick"):
                yield Label("Files and folders  (a: add the highlighted one)", classes="section")
                yield IngestableTree(str(self.start_dir or self.app.start_dir), id="tree")
                yield Input(placeholder="or type a path to a file or folder, Enter adds it", id="path")
            with Vertical(id="run-pane"):
                yield Label("To ingest  (delete: remove)", classes="section")
                yield OptionList(id="queue")
                with Horizontal(id="buttons"):
                    yield Button("Start (ctrl+g)", id="start", variant="primary")
                    yield Button("Cancel (ctrl+x)", id="cancel", variant="error", disabled=True)
                    yield Button("Clear list", id="clear")
                yield ProgressBar(total=1, id="progress", show_eta=False)
                yield Static("Nothing running.", id="ingest-status")
                yield Label("Files that could not be ingested (ingest_errors)", classes="section")
                yield DataTable(id="errors", zebra_stripes=True)

    def on_mount(self) -> None:
        self.load_errors()

    # ---- choosing --------------------------------------------------------------------
    def add_path(self, path) -> None:
        """Queue a file or folder for ingestion (a missing path is refused in place)."""
        p = Path(path).expanduser()
        if not p.exists():
            self.query_one("#ingest-status", Static).update(f"[red]{escape(str(p))}: no such file or folder[/red]")
            return
        s = str(p.resolve())
        if s not in self.queue:
            self.queue.append(s)
            self.query_one("#queue", OptionList).add_option(s + ("/" if p.is_dir() else ""))
        self._show_queue()

    def _show_queue(self) -> None:
        n = len(self.queue)
        self.query_one("#ingest-status", Static).update(
            f"{n} item{'s' if n != 1 else ''} queued; ctrl+g starts" if n else "Nothing queued.")

    def action_add_highlighted(self) -> None:
        node = self.query_one("#tree", DirectoryTree).cursor_node
        if node is not None and node.data is not None:
            self.add_path(node.data.path)

    @on(DirectoryTree.FileSelected, "#tree")
    def _file_selected(self, event: DirectoryTree.FileSelected) -> None:
        self.add_path(event.path)

    @on(Input.Submitted, "#path")
    def _typed(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.add_path(event.value.strip())
            event.input.value = ""

    def action_remove_selected(self) -> None:
        ol = self.query_one("#queue", OptionList)
        i = ol.highlighted
        if i is None or self.running:
            return
        del self.queue[i]
        ol.remove_option_at_index(i)
        self._show_queue()

    @on(Button.Pressed, "#clear")
    def _clear(self) -> None:
        if self.running:
            return
        self.queue.clear()
        self.query_one("#queue", OptionList).clear_options()
        self._show_queue()

    # ---- running ---------------------------------------------------------------------
    @on(Button.Pressed, "#start")
    def action_start(self) -> None:
        if self.running:
            return
        if not self.queue:
            self.query_one("#ingest-status", Static).update("[red]nothing to ingest: add files or folders first[/red]")
            return
        self.running = True
        import time

        self._last_refresh = time.monotonic()
        self.query_one("#start", Button).disabled = True
        self.query_one("#cancel", Button).disabled = False
        self.query_one("#progress", ProgressBar).update(total=None, progress=0)
        self.query_one("#ingest-status", Static).update("starting the ingest process…")
        self.ingest(list(self.queue))

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        for w in self.workers:
            if w.group == "ingest":
                w.cancel()

    @work(thread=True, exclusive=True, group="ingest", exit_on_error=False)
    def ingest(self, paths: list[str]) -> None:
        from tui.ingest_runner import run_ingest

        worker = get_current_worker()

        def on_event(ev) -> None:
            if ev[0] == "files":
                self.post_message(self.Progress("files", ev[1], ev[2], f"{ev[3]:,} notes"))
            elif ev[0] == "stage":
                self.post_message(self.Progress(ev[1], ev[2], ev[3]))
            elif ev[0] == "error":
                self.post_message(self.FileFailed(ev[1], ev[2]))

        result = run_ingest(paths, self.app.db_dir, on_event, lambda: worker.is_cancelled)
        if result[0] == "done":
            self.post_message(self.Finished("done", result[1], result[1]["line"]))
        elif result[0] == "cancelled":
            self.post_message(self.Finished("cancelled", None,
                                            "cancelled; every batch committed before is kept"))
        else:
            self.post_message(self.Finished("failed", None, result[1]))

    @on(Progress)
    def _progress(self, msg: Progress) -> None:
        # New pieces are committed batch by batch: let the library and status bar show
        # them while the run goes on (at most every few seconds), and once all files are in.
        import time

        now = time.monotonic()
        if msg.kind == "files" and (msg.done >= msg.total or now - self._last_refresh > REFRESH_EVERY_S):
            self._last_refresh = now
            self.app.data_changed()
        bar = self.query_one("#progress", ProgressBar)
        bar.update(total=max(msg.total, 1), progress=msg.done)
        what = "files" if msg.kind == "files" else f"stage {msg.kind}: pieces"
        self.query_one("#ingest-status", Static).update(f"{what} {msg.done:,}/{msg.total:,} {escape(msg.detail)}")

    @on(FileFailed)
    def _file_failed(self, msg: FileFailed) -> None:
        dt = self.query_one("#errors", DataTable)
        if not dt.columns:
            for c in ("path", "reason", "failed_at"):
                dt.add_column(c, key=c)
        dt.add_row(cell(msg.path), cell(msg.reason), "now")

    @on(Finished)
    def _finished(self, msg: Finished) -> None:
        self.running = False
        self.query_one("#start", Button).disabled = False
        self.query_one("#cancel", Button).disabled = True
        colour = {"done": "green", "cancelled": "yellow"}.get(msg.outcome, "red")
        self.query_one("#ingest-status", Static).update(f"[{colour}]{escape(msg.message)}[/{colour}]")
        if msg.outcome == "done":
            self.queue.clear()
            self.query_one("#queue", OptionList).clear_options()
            bar = self.query_one("#progress", ProgressBar)
            bar.update(total=max(bar.total or 1, 1), progress=bar.total or 1)
        self.app.data_changed()
        self.load_errors()

    # ---- the errors table ------------------------------------------------------------
    @work(thread=True, exclusive=True, group="ingest-errors")
    def load_errors(self) -> None:
        from query.sql import run_sql

        try:
            with DB_LOCK.read():
                t = run_sql(self.app.db_dir, "SELECT path, reason, failed_at FROM ingest_errors "
                                             "ORDER BY failed_at DESC, path LIMIT 1000")
        except Exception as e:  # noqa: BLE001
            self.post_message(self.ErrorsLoaded(None, str(e)))
            return
        self.post_message(self.ErrorsLoaded(t))

    @on(ErrorsLoaded)
    def _errors_loaded(self, msg: ErrorsLoaded) -> None:
        if msg.table is None:
            self.query_one("#ingest-status", Static).update(f"[red]could not read ingest_errors: {escape(msg.error)}[/red]")
            return
        dt = self.query_one("#errors", DataTable)
        dt.clear(columns=True)
        # widths given, not measured: a table rebuilt right after the live rows of a run
        # kept its header widths ("/tmp", "not a") until the terminal was resized
        for c in msg.table.column_names:
            cells = [fmt_cell(v) for v in msg.table.column(c).to_pylist()]
            dt.add_column(c, key=c, width=min(max(map(cell_len, [c, *cells])), 120))
        for row in msg.table.to_pylist():
            dt.add_row(*(cell(v) for v in row.values()))
