"""Where the database lives and how to open it.

DuckDB lets one process write *or* many processes read a database file. Harmony Atlas
therefore opens the file only for as long as one job needs it: writers take short
transactions (a batch of files at a time) and close, readers open read-only and close.
Either side retries for a while if the other holds the lock, so ``atlas sql`` works
while ``atlas ingest`` runs in another terminal: a waiting reader says so in a file
(``DB/.readers-waiting``), and a writer then lets go after its current transaction.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from atlas_db.errors import BadInputError, DatabaseBusyError
from atlas_db.settings import check as check_settings, setting
import importlib

from atlas_db.schema import SCHEMA_VERSION

__all__ = [
    "DB_FILE_NAME",
    "resolve_db_dir",
    "db_file",
    "connect",
    "ensure_schema",
    "MIGRATIONS",
]

DB_FILE_NAME = "atlas.duckdb"
DEFAULT_DB_DIR = "atlas_data"
_LOCK_WAIT_S = setting("ATLAS_LOCK_WAIT_S")


def resolve_db_dir(db: str | os.PathLike | None) -> Path:
    """The database directory: ``db`` if given, else ``$ATLAS_DB``, else ``./atlas_data``."""
    return Path(db or os.environ.get("ATLAS_DB") or DEFAULT_DB_DIR)


def db_file(db_dir: Path) -> Path:
    return Path(db_dir) / DB_FILE_NAME


def _is_lock_error(exc: Exception) -> bool:
    msg = str(exc).lower()
    return "lock" in msg and ("conflicting" in msg or "could not set" in msg)


# Whether this process has opened a database for writing: a Ctrl-C of a command that only
# read says it was interrupted and no more (nothing was being kept or left to finish).
opened_for_writing = False


def _opening(read_only: bool) -> None:
    """What every opening does first: the settings checked (``atlas_db.settings``), a
    writable opening noted."""
    global opened_for_writing
    check_settings()
    opened_for_writing |= not read_only


def connect(
    db_dir: str | os.PathLike,
    *,
    read_only: bool,
    create: bool = False,
    wait_s: float | None = None,
) -> duckdb.DuckDBPyConnection:
    """Open the database, waiting up to ``wait_s`` seconds for another process's lock.

    ``create=True`` makes the directory (its parent must exist) and applies the schema.
    """
    _opening(read_only)
    db_dir = Path(db_dir)
    path = db_file(db_dir)
    if create:
        if not db_dir.parent.exists() and str(db_dir.parent) not in ("", "."):
            raise BadInputError(
                f"{db_dir}: cannot create the database, parent folder {db_dir.parent} does not exist"
            )
        try:
            db_dir.mkdir(exist_ok=True)
        except OSError as e:
            raise BadInputError(f"{db_dir}: cannot create the database folder ({e.strerror})") from e
    else:
        _require_db(db_dir)
    con = _wait_for_lock(lambda: duckdb.connect(str(path), read_only=read_only), path, wait_s, reader=read_only)
    if not read_only:
        ensure_schema(con)  # upgrades an older database in place
    return con


def _require_db(db_dir: Path) -> None:
    if not db_file(db_dir).exists():
        raise BadInputError(
            f"{db_dir}: no Harmony Atlas database here (missing {DB_FILE_NAME}); "
            "run `atlas ingest PATH --db DIR` or `atlas demo` first"
        )


def _wait_for_lock(open_db, path: Path, wait_s: float | None, *, reader: bool = False):
    """``open_db()``, retried while another process holds the file lock. A ``reader``
    that has to wait says so in :func:`readers_waiting_file` (touched at each try,
    removed once in), so that a writer lets it in before reopening (:class:`Writer`)."""
    deadline = time.monotonic() + (_LOCK_WAIT_S if wait_s is None else wait_s)
    delay = 0.005
    marker = readers_waiting_file(path.parent) if reader else None
    waited = False
    try:
        while True:
            try:
                return open_db()
            except duckdb.IOException as e:
                if not _is_lock_error(e):
                    raise BadInputError(f"{path}: cannot open the database ({e})") from e
                if time.monotonic() > deadline:
                    raise DatabaseBusyError(
                        f"{path}: another process has held the database for too long; try again later"
                    ) from e
                if marker is not None:
                    with contextlib.suppress(OSError):  # a read-only folder: wait as before
                        marker.touch()
                        waited = True
                time.sleep(delay)
                delay = min(delay * 2, 0.2)
    finally:
        if waited:
            with contextlib.suppress(OSError):
                marker.unlink()


def readers_waiting_file(db_dir) -> Path:
    """A file whose fresh modification time says a reader waits for the database."""
    return Path(db_dir) / ".readers-waiting"


# A writer about to reopen the database waits up to this long while a reader waits: a
# reader retries every 0.2 s at most, so it gets in; the writer then waits for its query,
# up to REOPEN_WAIT_S (not ATLAS_LOCK_WAIT_S: a reader's long query must not stop an ingest).
READER_TURN_S = 2.0
REOPEN_WAIT_S = setting("ATLAS_WRITER_REOPEN_WAIT_S")


def _a_reader_waits(db_dir) -> bool:
    """Whether a reader has said within the last 0.5 s that it waits for the file."""
    try:
        return time.time() - readers_waiting_file(db_dir).stat().st_mtime < 0.5
    except OSError:  # no reader waits
        return False


def _let_waiting_readers_in(db_dir) -> None:
    """Before a writer reopens: while a reader waits, give it the file (a bulk writer
    otherwise reopened at once, and readers of another process waited for the whole
    derived phase of an ingest: 22.9 s of a 37 s one)."""
    deadline = time.monotonic() + READER_TURN_S
    while time.monotonic() < deadline and _a_reader_waits(db_dir):
        time.sleep(0.02)


def connect_sandboxed(
    db_dir: str | os.PathLike,
    *,
    read_only: bool,
    allow_files: bool = False,
    wait_s: float | None = None,
) -> duckdb.DuckDBPyConnection:
    """A connection for SQL that a user typed: it sees this database and nothing else of
    the machine. No other database can be attached, no extension installed or loaded,
    no setting changed (``lock_configuration``), and no file outside the database read
    or written (``enable_external_access=false``) unless ``allow_files``; then files can
    be read, and ``query.sql.check_statements`` refuses the statements that write them.

    The database is ATTACHed to a private in-memory instance because DuckDB settings
    belong to an instance, and one process shares one instance per file: locking the
    configuration of a plain ``connect`` would lock it for every reader in the process
    (the TUI's screens) too.
    """
    _opening(read_only)
    db_dir = Path(db_dir)
    _require_db(db_dir)
    path = db_file(db_dir)
    con = duckdb.connect(":memory:", config={
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "allow_community_extensions": False,
        "allow_persistent_secrets": False,
        "python_enable_replacements": False,  # no scans of the Python process's variables
        "temp_directory": f"{path}.tmp",  # where DuckDB spills for a file database (not ./.tmp)
    })
    try:
        con.execute("SET enable_progress_bar = false")  # drawn on stdout: into CSV output, over the TUI
        quoted = str(path).replace("'", "''")
        mode = " (READ_ONLY)" if read_only else ""
        _wait_for_lock(lambda: con.execute(f"ATTACH '{quoted}' AS atlas{mode}"), path, wait_s, reader=read_only)
        con.execute("USE atlas")
        con.execute("DETACH memory")  # no scratch catalog beside the database (TEMP stays)
        if not read_only:
            ensure_schema(con)
        if not allow_files:
            con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


# Each domain declares its tables in its own schema module with a ``MIGRATIONS`` list of
# (unique name, [SQL statements]); they are applied in this order and recorded in
# schema_migrations (sqlite-utils style), so an old database upgrades in place.
SCHEMA_MODULES = [
    "atlas_db.schema",
    "atlas_db.schema_grammar",
    "atlas_db.schema_vectors",
    "atlas_db.schema_harmony",
    "atlas_db.schema_audio",
    "atlas_db.schema_patterns",
]


def all_migrations() -> list[tuple[str, list[str]]]:
    out = []
    for mod in SCHEMA_MODULES:
        out += importlib.import_module(mod).MIGRATIONS
    return out


MIGRATIONS = all_migrations()


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMPTZ)"
    )
    done = {r[0] for r in con.execute("SELECT name FROM schema_migrations").fetchall()}
    for name, statements in all_migrations():
        if name in done:
            continue
        con.execute("BEGIN")
        for sql in statements:
            con.execute(sql)
        con.execute(
            "INSERT INTO schema_migrations VALUES (?, ?)", [name, datetime.now(timezone.utc)]
        )
        con.execute("COMMIT")


def fetch_arrow(cur):
    """The result of an executed statement as an Arrow table (DuckDB 2 renamed the call)."""
    fn = getattr(cur, "to_arrow_table", None) or getattr(cur, "fetch_arrow_table")
    with warnings.catch_warnings():
        # DuckDB 2 warns that a parameterised execute() result is copied once more than a
        # relation's; our results are small and parameters keep user input out of the SQL.
        warnings.filterwarnings("ignore", message="Arrow output on a DB-API result")
        return fn()


@contextlib.contextmanager
def reading(db_dir, *, wait_s: float | None = None):
    """``with reading(db) as con:`` a read-only connection, closed afterwards."""
    con = connect(db_dir, read_only=True, wait_s=wait_s)
    try:
        yield con
    finally:
        con.close()


@contextlib.contextmanager
def writing(db_dir, *, create: bool = False, wait_s: float | None = None):
    """``with writing(db) as con:`` one write transaction on a connection of its own:
    committed when the block ends, rolled back (nothing half-written) if it raises,
    and the file lock released either way so readers get in between batches."""
    with Writer(db_dir, create=create, wait_s=wait_s, hold_s=0.0) as w, w.transaction() as con:
        yield con


# How long a Writer keeps its connection open for the next transaction. Opening a large
# database file (~35 ms at 1.8 GB) and the checkpoint DuckDB runs when the last
# connection closes (~80 ms) cost more than a small transaction itself; readers of
# another process wait at most this long plus one transaction.
HOLD_S = setting("ATLAS_WRITER_HOLD_S")
# The same during a bulk job's run of long transactions (an ingest's derived stages): each
# close and reopen of the connection costs DuckDB a checkpoint and a reopen (~0.3-0.7 s at
# pop909-dev's size, more as the database grows); with 1 s an ingest of pop909-dev closed
# it 15 times in 4.7-8.3 s, with 10 s 7-8 times in 2.4-4.7 s (docs/ingest-throughput.md).
BULK_HOLD_S = setting("ATLAS_WRITER_BULK_HOLD_S")


class Writer:
    """Successive write transactions of one job (the batches of an ingest and of its
    derived stages), each committed or rolled back on its own as with :func:`writing`,
    on one connection while they are quick: the connection is closed (and the file lock
    released, so that readers get in) after the first transaction that ends more than
    ``hold_s`` seconds after it was opened or while a reader of another process waits
    (:func:`readers_waiting_file`; the next open then waits for that reader to get in,
    up to ``READER_TURN_S``), after a failed transaction, and by :meth:`close`.
    ``hold_s=0`` is one connection per transaction.

    Not for concurrent use; a process that holds a Writer cannot open the same database
    read-only meanwhile (DuckDB refuses two configurations of one file in a process)::

        with Writer(db) as w:
            with w.transaction() as con:
                con.execute("INSERT ...")
            with w.transaction() as con:   # same connection if the first was quick
                ...
    """

    def __init__(self, db_dir, *, create: bool = False, wait_s: float | None = None, hold_s: float | None = None):
        self.db_dir, self.create, self.wait_s = Path(db_dir), create, wait_s
        self.hold_s = HOLD_S if hold_s is None else hold_s
        self._con: duckdb.DuckDBPyConnection | None = None
        self._opened = 0.0

    def connection(self) -> duckdb.DuckDBPyConnection:
        """The open connection (opened, and the schema brought up to date, if need be);
        outside :meth:`transaction` each statement commits on its own."""
        if self._con is None:
            _let_waiting_readers_in(self.db_dir)
            # a reopen in the middle of a job waits longer: it let a reader in, whose query
            # may take a while, and giving up would stop the job half done
            wait_s = self.wait_s if self._opened == 0.0 or self.wait_s is not None else REOPEN_WAIT_S
            self._con = connect(self.db_dir, read_only=False, create=self.create, wait_s=wait_s)
            self._opened = time.monotonic()
        return self._con

    @contextlib.contextmanager
    def transaction(self):
        con = self.connection()
        try:
            con.execute("BEGIN TRANSACTION")
            yield con
            con.execute("COMMIT")
        except BaseException:
            try:
                con.execute("ROLLBACK")
            except Exception:  # the connection may already be unusable; the rollback is implied
                pass
            self.close()
            raise
        self.release_if_held()

    @contextlib.contextmanager
    def holding(self, hold_s: float):
        """Inside the block, keep the connection at least ``hold_s`` seconds."""
        before, self.hold_s = self.hold_s, max(self.hold_s, hold_s)
        try:
            yield self
        finally:
            self.hold_s = before

    def release_if_held(self) -> None:
        """Close the connection if it has been open longer than ``hold_s``, or if a
        reader of another process waits for the file."""
        if self._con is not None and (time.monotonic() - self._opened >= self.hold_s or _a_reader_waits(self.db_dir)):
            self.close()

    def close(self) -> None:
        if self._con is not None:
            con, self._con = self._con, None
            con.close()

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ += ["reading", "writing", "Writer", "readers_waiting_file", "HOLD_S", "BULK_HOLD_S", "fetch_arrow", "connect_sandboxed", "SCHEMA_VERSION"]
