"""SQL console: an editor with history, results in a table, read-only unless switched,
errors shown in place, results saved as CSV or Parquet. A running query shows its
elapsed time and stops on ``escape`` (or the Run button, which reads Cancel meanwhile);
running another query cancels the one in flight."""

from __future__ import annotations

import json

import pyarrow as pa
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.binding import Binding
from textual.message import Message
from textual.widgets import Button, DataTable, Input, Label, OptionList, Static, Switch, TextArea, Tree

from tui.db import DB_LOCK
from tui.query_job import QueryCancelled as _Cancelled, QueryJob
from tui.screens.base import AtlasScreen, cell, escape

__all__ = ["SqlScreen", "MAX_ROWS_SHOWN"]

MAX_ROWS_SHOWN = 2_000  # the table shows this many; export writes every row
MAX_HISTORY = 200


class SqlScreen(AtlasScreen):
    CSS_PATH = "sql.tcss"
    HELP = ("DuckDB SQL over every table and view (listed on the left: enter on a column inserts its "
            "name). Read-only unless the write switch is on; history is kept per database. "
            "`escape` cancels a running query; running another query cancels the one in flight.")
    BINDINGS = [
        ("ctrl+j,ctrl+enter,f8", "run", "Run"),
        # priority: the editor takes escape for itself (focus the next widget); the binding
        # is live only while a query runs (check_action), so escape is the editor's otherwise
        Binding("escape", "cancel_query", "Cancel query", priority=True),
        ("ctrl+up", "history(-1)", "Older"),
        ("ctrl+down", "history(1)", "Newer"),
        ("ctrl+t", "toggle_write", "Write on/off"),
        ("ctrl+o", "focus_export", "Export"),
    ]

    class QueryFinished(Message):
        def __init__(self, sql: str, table: pa.Table, seconds: float, write: bool, job=None) -> None:
            super().__init__()
            self.sql, self.table, self.seconds, self.write, self.job = sql, table, seconds, write, job

    class QueryFailed(Message):
        def __init__(self, sql: str, error: str, job=None) -> None:
            super().__init__()
            self.sql, self.error, self.job = sql, error, job

    class QueryCancelled(Message):
        def __init__(self, sql: str, seconds: float, write: bool, job=None) -> None:
            super().__init__()
            self.sql, self.seconds, self.write, self.job = sql, seconds, write, job

    class ExportFinished(Message):
        def __init__(self, path: str, rows: int, error: str | None = None) -> None:
            super().__init__()
            self.path, self.rows, self.error = path, rows, error

    def __init__(self) -> None:
        super().__init__()
        self.result: pa.Table | None = None
        self.history: list[str] = []
        self._history_pos: int | None = None
        #: the query in flight (None when idle)
        self.job: QueryJob | None = None
        #: what the info line adds while the current query runs
        self._run_note = ""

    def compose_body(self) -> ComposeResult:
        with Vertical(id="sql"):
            with Horizontal(id="sql-top"):
                yield Tree("tables", id="catalog")
                yield TextArea("SELECT title, n_notes, duration_s FROM pieces ORDER BY n_notes DESC LIMIT 20",
                               id="editor", show_line_numbers=True, tab_behavior="indent")
                with Vertical(id="side"):
                    with Horizontal(id="mode-row"):
                        yield Switch(value=False, id="write")
                        yield Label("read-only", id="mode-label")
                    yield Button("Run (ctrl+j)", id="run", variant="primary")
                    yield Label("History", classes="section")
                    yield OptionList(id="history")
            yield Static("", id="sql-error")
            yield Static("ctrl+j or F8 runs the query", id="sql-info")
            yield DataTable(id="results", zebra_stripes=True)
            with Horizontal(id="export-row"):
                yield Input(placeholder="save results as: results.csv or results.parquet", id="export-path")
                yield Button("Export", id="export")

    class CatalogLoaded(Message):
        def __init__(self, table: pa.Table | None, error: str | None = None) -> None:
            super().__init__()
            self.table, self.error = table, error

    def on_mount(self) -> None:
        self.query_one("#sql-error", Static).display = False
        self._load_history()
        self.query_one("#editor", TextArea).focus()
        self.watch(self.app, "data_version", lambda _=None: self.load_catalog(), init=True)
        self.set_interval(0.25, self._tick)

    def on_unmount(self) -> None:
        if self.job is not None:  # the app is closing: do not leave DuckDB running
            self.job.cancel()

    # ---- catalog: tables and views with their columns (Enter inserts a name) ---------
    @work(thread=True, exclusive=True, group="sql-catalog")
    def load_catalog(self) -> None:
        from query.sql import run_sql

        try:
            with DB_LOCK.read():
                t = run_sql(self.app.db_dir, """
                    SELECT c.table_name, t.table_type, c.column_name, c.data_type
                    FROM information_schema.columns c JOIN information_schema.tables t
                      ON t.table_schema = c.table_schema AND t.table_name = c.table_name
                    WHERE c.table_schema = 'main' ORDER BY c.table_name, c.ordinal_position""")
        except Exception as e:  # noqa: BLE001
            self.post_message(self.CatalogLoaded(None, str(e)))
            return
        self.post_message(self.CatalogLoaded(t))

    @on(CatalogLoaded)
    def _catalog_loaded(self, msg: CatalogLoaded) -> None:
        tree = self.query_one("#catalog", Tree)
        tree.clear()
        tree.root.expand()
        if msg.table is None:
            tree.root.add_leaf(f"(could not read the catalog: {msg.error})")
            return
        nodes = {}
        for name, ttype, col, dtype in zip(*(msg.table.column(i).to_pylist() for i in range(4))):
            if name not in nodes:
                label = name + (" (view)" if ttype == "VIEW" else "")
                nodes[name] = tree.root.add(label, data=name)
            nodes[name].add_leaf(f"{col} [dim]{dtype.lower()}[/dim]", data=col)

    @on(Tree.NodeSelected, "#catalog")
    def _catalog_selected(self, event: Tree.NodeSelected) -> None:
        if event.node.data and not event.node.children:
            self.query_one("#editor", TextArea).insert(event.node.data)

    # ---- history (a JSON list beside the database; best effort) ----------------------
    def _load_history(self) -> None:
        try:
            self.history = [q for q in json.loads(self.app.history_path.read_text()) if isinstance(q, str)]
        except (OSError, ValueError):
            self.history = []
        self._show_history()

    def _remember(self, sql: str) -> None:
        if self.history and self.history[-1] == sql:
            return
        self.history = (self.history + [sql])[-MAX_HISTORY:]
        self._show_history()
        try:
            self.app.history_path.write_text(json.dumps(self.history, indent=0))
        except OSError:
            pass  # a read-only folder: history lasts for this session only

    def _show_history(self) -> None:
        ol = self.query_one("#history", OptionList)
        ol.clear_options()
        ol.add_options([Text(" ".join(q.split())[:80]) for q in reversed(self.history)])

    @on(OptionList.OptionSelected, "#history")
    def _history_selected(self, event: OptionList.OptionSelected) -> None:
        sql = self.history[len(self.history) - 1 - event.option_index]
        editor = self.query_one("#editor", TextArea)
        editor.text = sql
        editor.focus()

    def action_history(self, step: int) -> None:
        if not self.history:
            return
        pos = len(self.history) if self._history_pos is None else self._history_pos
        pos = max(0, min(len(self.history) - 1, pos + step))
        self._history_pos = pos
        self.query_one("#editor", TextArea).text = self.history[pos]

    # ---- running ---------------------------------------------------------------------
    @property
    def write_mode(self) -> bool:
        return self.query_one("#write", Switch).value

    def action_toggle_write(self) -> None:
        sw = self.query_one("#write", Switch)
        sw.value = not sw.value

    @on(Switch.Changed, "#write")
    def _write_changed(self, event: Switch.Changed) -> None:
        label = self.query_one("#mode-label", Label)
        label.update("[b red]WRITE[/b red]" if event.value else "read-only")

    @on(Button.Pressed, "#run")
    def _run_pressed(self) -> None:
        if self.job is not None:  # the button reads "Cancel" while a query runs
            self.action_cancel_query()
        else:
            self.action_run()

    def action_run(self) -> None:
        sql = self.query_one("#editor", TextArea).text
        if not sql.strip():
            self._show_error("empty query: type a SQL statement, e.g. SELECT count(*) FROM pieces")
            self.query_one("#sql-info", Static).update("")
            return
        self._history_pos = None
        self._remember(sql)
        previous = self.job
        if previous is not None:  # one query at a time: the newer one replaces it
            previous.cancel()
        self._run_note = " (the previous query was cancelled)" if previous is not None else ""
        self.job = QueryJob(self.app.db_dir, sql, write=self.write_mode)
        self.query_one("#sql-error", Static).display = False  # an earlier error is not this query's
        self._show_running()
        self.query_one("#results").loading = True
        run = self.query_one("#run", Button)
        run.label, run.variant = "Cancel (esc)", "error"
        self.refresh_bindings()
        self.run_query(self.job)

    def check_action(self, action: str, parameters) -> bool | None:
        if action == "cancel_query":
            return self.job is not None and not self.job.cancelled
        return True

    def action_cancel_query(self) -> None:
        if self.job is None:
            return
        self.job.cancel()
        self._run_note = ""
        self.query_one("#run", Button).label = "Cancelling…"
        self._show_running()
        self.refresh_bindings()

    def _show_running(self) -> None:
        job = self.job
        if job is None:
            return
        what = "cancelling" if job.cancelled else "running"
        hint = "" if job.cancelled else " · escape cancels"
        self.query_one("#sql-info", Static).update(f"{what}… {job.elapsed_s:.1f} s{hint}{self._run_note}")

    def _tick(self) -> None:
        """Four times a second: the elapsed time, and the interrupt again for a cancelled
        query (DuckDB drops an interrupt that came before the statement started)."""
        if self.job is None:
            return
        if self.job.cancelled:
            self.job.cancel()
        self._show_running()

    @work(thread=True, exclusive=True, group="sql")
    def run_query(self, job: QueryJob) -> None:
        try:
            with (DB_LOCK.write() if job.write else DB_LOCK.read()):
                table = job.run()
        except _Cancelled:
            self.post_message(self.QueryCancelled(job.sql, job.elapsed_s, job.write, job))
            return
        except Exception as e:  # noqa: BLE001 - every failure is shown in place
            from atlas_db.errors import AtlasError

            text = str(e) if isinstance(e, AtlasError) else f"{type(e).__name__}: {e}"
            self.post_message(self.QueryFailed(job.sql, text, job))
            return
        self.post_message(self.QueryFinished(job.sql, table, job.elapsed_s, job.write, job))

    def _settle(self, job) -> bool:
        """A query's outcome arrived: True when it is the one shown (not replaced)."""
        if job is not self.job:
            return False
        self.job = None
        run = self.query_one("#run", Button)
        run.label, run.variant = "Run (ctrl+j)", "primary"
        self.refresh_bindings()
        self.query_one("#results").loading = False
        return True

    def _show_error(self, text: str) -> None:
        err = self.query_one("#sql-error", Static)
        err.update(f"[b]error:[/b] {escape(text)}")
        err.display = True

    @on(QueryFailed)
    def _failed(self, msg: QueryFailed) -> None:
        if not self._settle(msg.job):
            return
        self._show_error(msg.error)
        self.result = None  # the last query's rows are not this one's (nor what Export would save)
        self.query_one("#results", DataTable).clear(columns=True)
        self.query_one("#sql-info", Static).update("the query failed; the editor keeps it for fixing")

    @on(QueryCancelled)
    def _cancelled(self, msg: QueryCancelled) -> None:
        if msg.write:  # a script's earlier statements may have been committed
            self.app.data_changed()
        if not self._settle(msg.job):
            return
        self.query_one("#sql-error", Static).display = False
        self.result = None
        self.query_one("#results", DataTable).clear(columns=True)
        self.query_one("#sql-info", Static).update(
            f"query cancelled after {msg.seconds:.1f} s; the editor keeps it")

    @on(QueryFinished)
    def _finished(self, msg: QueryFinished) -> None:
        if not self._settle(msg.job):
            if msg.write:  # replaced by a newer query, but the write happened
                self.app.data_changed()
            return
        self.query_one("#sql-error", Static).display = False
        dt = self.query_one("#results", DataTable)
        self.result = msg.table
        t = msg.table
        dt.clear(columns=True)
        for name in t.column_names:  # keyed by position: a join's SELECT * repeats names
            dt.add_column(Text(name))
        shown = t.slice(0, MAX_ROWS_SHOWN)
        columns = [c.to_pylist() for c in shown.columns]
        for i in range(shown.num_rows):
            dt.add_row(*(cell(col[i]) for col in columns))
        note = f" (showing the first {MAX_ROWS_SHOWN:,}; export saves all)" if t.num_rows > MAX_ROWS_SHOWN else ""
        self.query_one("#sql-info", Static).update(
            f"{t.num_rows:,} rows × {t.num_columns} columns in {msg.seconds:.3f} s{note}")
        if msg.write:
            self.app.data_changed()

    # ---- export ----------------------------------------------------------------------
    def action_focus_export(self) -> None:
        self.query_one("#export-path", Input).focus()

    @on(Button.Pressed, "#export")
    @on(Input.Submitted, "#export-path")
    def _export(self) -> None:
        path = self.query_one("#export-path", Input).value.strip()
        if self.result is None:
            self._show_error("nothing to export yet: run a query first")
            return
        if not path:
            self._show_error("type a file name ending in .csv or .parquet to export to")
            return
        self.export_result(self.result, path)

    @work(thread=True, exclusive=True, group="sql-export")
    def export_result(self, table: pa.Table, path: str) -> None:
        from query.library import save_table

        try:
            out = save_table(table, path)
        except Exception as e:  # noqa: BLE001
            self.post_message(self.ExportFinished(path, 0, str(e)))
            return
        self.post_message(self.ExportFinished(str(out.resolve()), table.num_rows))  # where it went, in full

    @on(ExportFinished)
    def _exported(self, msg: ExportFinished) -> None:
        if msg.error:
            self._show_error(msg.error)
            self.query_one("#sql-info", Static).update("the export failed: nothing was saved")
            return
        self.query_one("#sql-error", Static).display = False
        self.query_one("#sql-info", Static).update(f"saved {msg.rows:,} rows to {escape(msg.path)}")
        self.notify(f"saved {msg.rows:,} rows to {escape(msg.path)}")
