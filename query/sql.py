"""Running a user's SQL against the database: read-only unless asked otherwise, and
never reaching past the database.

A statement runs on ``atlas_db.connection.connect_sandboxed``: DuckDB itself refuses
file access (unless ``allow_files``), other databases, extensions and settings.
``check_statements`` refuses, before anything runs, the statements that write files,
which ``allow_files`` alone would let through (COPY ... TO, EXPORT DATABASE), and turns
each refusal into one line that says what to do instead.
"""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from atlas_db.connection import connect_sandboxed, fetch_arrow
from atlas_db.errors import AtlasError

__all__ = ["QueryError", "SqlFront", "CLI", "CONSOLE", "run_sql", "check_statements", "explain_error"]


class QueryError(AtlasError):
    """A SQL statement DuckDB rejected or that the sandbox refuses; one line."""


@dataclass(frozen=True)
class SqlFront:
    """Where the SQL was typed, for the hints in error messages."""

    name: str
    write_hint: str
    files_hint: str


CLI = SqlFront("atlas sql", "pass --write to modify it", "pass --allow-files")
CONSOLE = SqlFront("the SQL console", "switch write mode on (ctrl+t) to modify it", "use `atlas sql --allow-files`")

_ST = duckdb.StatementType
_REFUSED = {
    _ST.COPY: "COPY is off in {name}, which never writes files outside the database (to read a "
              "file: SELECT * FROM read_csv('file.csv'); {files_hint})",
    _ST.EXPORT: "EXPORT DATABASE is off in {name}, which never writes files outside the database",
    _ST.ATTACH: "ATTACH is off in {name}, which sees this database and no other",
    _ST.DETACH: "DETACH is off in {name}, which sees this database and no other",
    _ST.LOAD: "INSTALL and LOAD are off in {name}, which runs no DuckDB extensions",
    _ST.EXTENSION: "extension statements are off in {name}, which runs no DuckDB extensions",
    _ST.PREPARE: "PREPARE is off in {name}: write the statement out (a prepared one cannot be checked)",
}
# Everything else DuckDB's own checks (read-only attach, locked configuration, no
# external access) stop where they must; anything unknown is refused.
_ALLOWED = {
    _ST.SELECT, _ST.INSERT, _ST.UPDATE, _ST.DELETE, _ST.MERGE_INTO, _ST.CREATE, _ST.CREATE_FUNC,
    _ST.ALTER, _ST.DROP, _ST.TRANSACTION, _ST.EXECUTE, _ST.ANALYZE, _ST.VACUUM, _ST.PRAGMA,
    _ST.CALL, _ST.SET, _ST.VARIABLE_SET,
}
# EXPLAIN [ANALYZE] [(options)] before the statement it explains (ANALYZE runs it)
_EXPLAIN_RE = re.compile(r"^(?:\s+|--[^\n]*\n|/\*.*?\*/)*EXPLAIN\b(?:\s+ANALY[SZ]E\b)?\s*(?:\([^)]*\))?",
                         re.IGNORECASE | re.DOTALL)


def _refusal(kind, front: SqlFront) -> str:
    return _REFUSED[kind].format(name=front.name, files_hint=front.files_hint)


def check_statements(con: duckdb.DuckDBPyConnection, sql: str, front: SqlFront = CLI) -> None:
    """Raise ``QueryError`` if any statement of ``sql`` could write files or leave the
    database, or if it holds no statement at all (only comments or ';'); nothing has run
    when it raises. Statement kinds are DuckDB's own parse."""
    statements = con.extract_statements(sql)
    if not statements:
        raise QueryError("no SQL statement in the query (only comments or ';'): give one, "
                         "e.g. \"SELECT count(*) FROM pieces\"")
    for st in statements:
        try:
            kind = st.type
        except ValueError:  # a kind this DuckDB build has no Python name for (UPDATE EXTENSIONS)
            kind = None
        if kind == _ST.EXPLAIN:
            # EXPLAIN ANALYZE runs what it explains, so that is checked in turn
            m = _EXPLAIN_RE.match(st.query)
            try:
                inner = con.extract_statements(st.query[m.end():]) if m else []
            except duckdb.Error:
                inner = []
            if len(inner) != 1:
                raise QueryError(f"this EXPLAIN could not be checked in {front.name}; EXPLAIN a plain query")
            check_statements(con, inner[0].query, front)
            continue
        if kind in _REFUSED:
            raise QueryError(_refusal(kind, front))
        if kind is None or kind not in _ALLOWED:
            raise QueryError(f"this kind of statement is off in {front.name}: {st.query.strip()[:40]!r}")


_FILE_RE = re.compile(r'Cannot access (?:file|directory) "([^"]*)"')
_SETTING_RE = re.compile(r'Cannot change configuration option "([^"]*)"')


def explain_error(e: duckdb.Error, *, write: bool, front: SqlFront = CLI) -> str:
    """DuckDB's message on one line, saying what to do where the sandbox refused."""
    msg = " ".join(str(e).split())
    if m := _FILE_RE.search(msg):
        return (f"{m.group(1)}: reading files outside the database is off in {front.name}; "
                f"{front.files_hint} to read it")
    if m := _SETTING_RE.search(msg):
        return (f"changing DuckDB settings ({m.group(1)}) is off in {front.name}: a setting "
                "could reopen files, databases and extensions")
    if "external extensions is disabled" in msg:
        return _refusal(_ST.LOAD, front)
    if not write and "read-only" in msg.lower():
        return msg + f" (the database is opened read-only; {front.write_hint})"
    if front is not CLI:  # the console shows lines: DuckDB's "LINE 1: ..." and its ^ under the place
        return str(e).strip()
    return msg


def run_sql(db_dir, sql: str, *, write: bool = False, allow_files: bool = False, params=None) -> pa.Table:
    """Run ``sql`` and return its result as an Arrow table (empty for statements that
    return nothing).

    Read-only unless ``write``; files outside the database can be read only with
    ``allow_files`` and never written.

    Example
    -------
    >>> run_sql("atlas_data", "SELECT count(*) AS n FROM pieces")  # doctest: +SKIP
    """
    if not sql or not sql.strip():
        raise QueryError("empty query: give a SQL statement, e.g. \"SELECT count(*) FROM pieces\"")
    con = connect_sandboxed(db_dir, read_only=not write, allow_files=allow_files)

    def run() -> pa.Table:
        cur = con.execute(sql, params) if params is not None else con.execute(sql)
        return pa.table({}) if cur.description is None else fetch_arrow(cur)

    try:
        try:
            check_statements(con, sql)
            return interruptible(con, run)
        except duckdb.Error as e:
            raise QueryError(explain_error(e, write=write)) from e
    finally:
        con.close()


def interruptible(con: duckdb.DuckDBPyConnection, run):
    """``run()`` (statements on ``con``), stopped by Ctrl-C at once. DuckDB looks for
    Ctrl-C only between the tasks it runs in the calling thread, and one task can last
    the whole query: `atlas sql` went on for a minute after Ctrl-C in 3 of 6 runs. So the
    statements run in a thread of their own, and a Ctrl-C here interrupts ``con``."""
    if threading.current_thread() is not threading.main_thread():
        return run()  # Ctrl-C reaches the main thread only: its caller's to handle
    with ThreadPoolExecutor(1, thread_name_prefix="atlas-sql") as pool:
        future = pool.submit(run)
        try:
            while not future.done():
                wait_for([future], timeout=0.25)
            return future.result()
        except KeyboardInterrupt:
            # again until the thread is done: an interrupt before the statement has
            # started is forgotten (DuckDB 2.0.1)
            while not future.done():
                try:
                    con.interrupt()
                    wait_for([future], timeout=0.1)
                except KeyboardInterrupt:  # a second Ctrl-C: the same, go on interrupting
                    continue
            raise
