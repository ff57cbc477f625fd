"""How the TUI's worker threads share the database inside one process.

DuckDB refuses, within one process, a read-only and a read-write connection to the same
file at the same time ("different configuration"). The TUI reads from several worker
threads at once and writes only from the SQL console in write mode, so reads share a
lock that a write takes alone. The console's statements run on a DuckDB instance of
their own (``atlas_db.connection.connect_sandboxed``), which DuckDB refuses the same
way when it attaches the file for writing beside a reader ("Unique file handle
conflict"). Ingestion runs in a child process (tui.ingest_runner), where DuckDB's own
file lock and ``atlas_db.connection.connect``'s retries apply.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

__all__ = ["DB_LOCK", "RWLock"]


class RWLock:
    """Many readers or one writer; a waiting writer stops new readers from starving it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self):
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self):
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


DB_LOCK = RWLock()
