"""Transactional writes of parsed pieces, and the few reads ingestion needs.

A batch of files is written in one short transaction: either every row of every piece
in the batch lands, or none does. Failures are recorded in ``ingest_errors`` in the same
transaction. Pieces that are already present (same content hash) are skipped inside
the transaction, so two ingest processes racing on the same files cannot duplicate rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from atlas_db import __version__
from atlas_db.connection import Writer, db_file, reading, writing
from atlas_db.schema import TABLES

__all__ = ["ParsedPiece", "Failure", "BatchResult", "known_piece_ids", "write_batch", "CHILD_TABLES"]

# Tables filled per piece besides `pieces` itself, in the order they are written.
CHILD_TABLES = ("tracks", "notes", "program_changes", "tempo_changes", "time_signatures", "key_signatures",
                "audio_files", "features", "audio_beats", "descriptions")  # audio tables: atlas_db/schema_audio.py


@dataclass
class ParsedPiece:
    piece_id: str
    content_sha256: str
    path: str
    tables: dict  # "pieces" -> dict row; child table name -> pa.Table


@dataclass
class Failure:
    path: str
    reason: str
    content_sha256: str | None = None


@dataclass
class BatchResult:
    added: list[str] = field(default_factory=list)  # piece ids written
    already_present: list[str] = field(default_factory=list)
    notes_added: int = 0
    notes: dict = field(default_factory=dict)  # piece id -> its rows of `notes` as written (pa.Table)


def known_piece_ids(db, among: list[str] | None = None) -> set[str]:
    """Ids of every piece in the database (empty if there is no database yet); with
    ``among``, those of these ids that it holds. ``db``: the database folder, or a
    :class:`atlas_db.connection.Writer` whose connection is used."""
    db_dir = db.db_dir if isinstance(db, Writer) else db
    if not db_file(Path(db_dir)).exists():
        return set()
    sql, params = "SELECT piece_id FROM pieces", []
    if among is not None:
        sql, params = sql + " WHERE piece_id IN (SELECT unnest(?))", [list(among)]
    if isinstance(db, Writer):
        return {r[0] for r in db.connection().execute(sql, params).fetchall()}
    with reading(db_dir) as con:
        return {r[0] for r in con.execute(sql, params).fetchall()}


def write_batch(
    db,
    parsed: list[ParsedPiece],
    present: list[tuple[str, str]],
    failures: list[Failure],
) -> BatchResult:
    """Write one batch in one transaction.

    parsed: new pieces; present: (piece_id, path) of files whose content is already
    stored (only the path is recorded); failures: files that could not be ingested.
    db: the database folder, or a :class:`atlas_db.connection.Writer` (created with
    ``create=True``) whose connection the batch may share with other transactions.
    """
    result = BatchResult()
    now = datetime.now(timezone.utc)
    with (db.transaction() if isinstance(db, Writer) else writing(db, create=True)) as con:
        ids = list({p.piece_id for p in parsed})
        stored = set()
        if ids:
            stored = {
                r[0]
                for r in con.execute(
                    "SELECT piece_id FROM pieces WHERE piece_id IN (SELECT unnest(?))", [ids]
                ).fetchall()
            }
        new, seen = [], set(stored)
        for p in parsed:
            if p.piece_id in seen:
                present.append((p.piece_id, p.path))
                continue
            seen.add(p.piece_id)
            new.append(p)
        if new:
            rows = [
                {**p.tables["pieces"], "content_sha256": p.content_sha256,
                 "ingested_at": now, "code_version": __version__}
                for p in new
            ]
            _insert(con, "pieces", pa.Table.from_pylist(rows, schema=TABLES["pieces"]))
            for name in CHILD_TABLES:  # a piece may lack a table (MIDI has no features)
                parts = [p.tables[name] for p in new if name in p.tables]
                if parts:
                    _insert(con, name, pa.concat_tables(parts))
        paths = [(p.piece_id, p.path) for p in new] + list(present)
        if paths:
            tbl = pa.table({"piece_id": [a for a, _ in paths], "path": [b for _, b in paths]})
            con.register("_paths", tbl)
            con.execute("INSERT INTO piece_paths SELECT DISTINCT * FROM _paths ON CONFLICT DO NOTHING")
            # A path that now ingests cleanly no longer has an error.
            con.execute("DELETE FROM ingest_errors WHERE path IN (SELECT path FROM _paths)")
            con.unregister("_paths")
        if failures:
            err = pa.Table.from_pylist(
                [{"path": f.path, "content_sha256": f.content_sha256, "reason": f.reason,
                  "failed_at": now, "code_version": __version__} for f in failures],
                schema=TABLES["ingest_errors"],
            )
            con.register("_err", err)
            con.execute("INSERT OR REPLACE INTO ingest_errors SELECT * FROM _err")
            con.unregister("_err")
    result.added = [p.piece_id for p in new]
    result.already_present = [pid for pid, _ in present]
    result.notes_added = sum(p.tables["notes"].num_rows for p in new)
    result.notes = {p.piece_id: p.tables["notes"] for p in new}
    return result


def _insert(con, name: str, table: pa.Table) -> None:
    if table.num_rows == 0:
        return
    view = f"_batch_{name}"
    # one chunk per column: DuckDB scans a table of a thousand small chunks (one per
    # file) about 2.5x slower than the same rows in one (benchmarks/ingest_scale.py)
    con.register(view, table.combine_chunks())
    con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM {view}")
    con.unregister(view)
