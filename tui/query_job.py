"""One SQL statement from the console, run in a worker thread and cancellable from the
UI thread with DuckDB's ``Connection.interrupt()``.

DuckDB forgets an interrupt that arrives before the statement starts (the flag is reset
when a query begins), so ``cancel()`` both marks the job cancelled, which the worker
checks before it executes, and interrupts the connection; the console repeats the
interrupt on its clock tick until the worker has returned. A cancelled job raises
``QueryCancelled``: its result, if DuckDB finished anyway, is never shown.

Example
-------
>>> job = QueryJob("atlas_data", "SELECT count(*) FROM range(10000000000)")  # doctest: +SKIP
>>> job.run()  # in a worker thread; job.cancel() from the UI thread          # doctest: +SKIP
"""

from __future__ import annotations

import threading
import time

import pyarrow as pa

__all__ = ["QueryJob", "QueryCancelled"]


class QueryCancelled(Exception):
    """The user cancelled the statement (or a newer one replaced it)."""


class QueryJob:
    """``QueryJob(db_dir, sql, write=False)``: ``run()`` in a worker thread returns the
    result as an Arrow table; ``cancel()`` from any other thread stops it."""

    def __init__(self, db_dir, sql: str, *, write: bool = False) -> None:
        self.db_dir, self.sql, self.write = db_dir, sql, write
        self.started = time.monotonic()
        #: True once cancel() was called
        self.cancelled = False
        #: True once run() has returned or raised
        self.done = False
        #: how it ended: "finished", "failed", "interrupted" (DuckDB stopped it),
        #: "not started" (cancelled before DuckDB began) or "dropped" (a read that
        #: DuckDB finished before the interrupt reached it; the result is not shown)
        self.outcome: str | None = None
        self._con = None
        self._lock = threading.Lock()  # guards _con: never interrupt a closed connection

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def cancel(self) -> None:
        """Ask the statement to stop; safe to call repeatedly, before, during or after
        ``run()``."""
        with self._lock:
            self.cancelled = True
            if self._con is not None:
                self._con.interrupt()

    def run(self) -> pa.Table:
        """Open the database (read-only unless ``write``), run the statement, close.
        Raises ``QueryCancelled`` when cancelled, ``query.sql.QueryError`` with DuckDB's
        message on one line when DuckDB rejects the statement."""
        import duckdb

        from atlas_db.connection import connect_sandboxed, fetch_arrow
        from query.sql import CONSOLE, QueryError, check_statements, explain_error

        self.outcome = "failed"
        try:
            if self.cancelled:
                self.outcome = "not started"
                raise QueryCancelled(self.sql)
            # the same sandbox as `atlas sql`, without --allow-files: the console reads
            # nothing but the database
            con = connect_sandboxed(self.db_dir, read_only=not self.write)
            try:
                with self._lock:
                    self._con = con
                    if self.cancelled:
                        self.outcome = "not started"
                        raise QueryCancelled(self.sql)
                try:
                    check_statements(con, self.sql, CONSOLE)
                    cur = con.execute(self.sql)
                    table = pa.table({}) if cur.description is None else fetch_arrow(cur)
                except duckdb.Error as e:
                    # an interrupt can surface as another error class than InterruptException
                    if isinstance(e, duckdb.InterruptException) or self.cancelled:
                        self.outcome = "interrupted"
                        raise QueryCancelled(self.sql) from e
                    raise QueryError(explain_error(e, write=self.write, front=CONSOLE)) from e
            finally:
                with self._lock:
                    self._con = None
                con.close()
            if self.cancelled and not self.write:
                # DuckDB finished before the interrupt reached it: the user asked to
                # cancel, so the result is dropped. A write that finished has happened
                # and is reported as such.
                self.outcome = "dropped"
                raise QueryCancelled(self.sql)
            self.outcome = "finished"
            return table
        finally:
            self.done = True
