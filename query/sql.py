"""Running a user's SQL against the database: read-only unless asked otherwise."""

from __future__ import annotations

import duckdb
import pyarrow as pa

from atlas_db.connection import connect, fetch_arrow
from atlas_db.errors import AtlasError

__all__ = ["QueryError", "run_sql"]


class QueryError(AtlasError):
    """A SQL statement DuckDB rejected; the message is DuckDB's, on one line."""


def run_sql(db_dir, sql: str, *, write: bool = False, params=None) -> pa.Table:
    """Run ``sql`` and return its result as an Arrow table (empty for statements that
    return nothing).

    Example
    -------
    >>> run_sql("atlas_data", "SELECT count(*) AS n FROM pieces")  # doctest: +SKIP
    """
    if not sql or not sql.strip():
        raise QueryError("empty query: give a SQL statement, e.g. \"SELECT count(*) FROM pieces\"")
    con = connect(db_dir, read_only=not write)
    try:
        try:
            cur = con.execute(sql, params) if params is not None else con.execute(sql)
            if cur.description is None:
                return pa.table({})
            return fetch_arrow(cur)
        except duckdb.Error as e:
            msg = " ".join(str(e).split())
            if not write and "read-only" in msg.lower():
                msg += " (the database is opened read-only; pass --write to modify it)"
            raise QueryError(msg) from e
    finally:
        con.close()
