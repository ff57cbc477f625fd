"""Derived stages: what ingestion computes from the stored notes after the files are in.

A stage (harmony, grammar, vectors, ...) is a module with

- ``STAGE`` : str, its name;
- ``VERSION`` : str, changed whenever its code or configuration changes what it writes;
- ``update(con, piece_ids) -> None`` : compute and write its rows for these pieces with
  the open write connection ``con`` (inside a transaction the runner owns);
- optionally ``BATCH_PIECES`` : int, how many pieces one transaction takes (default 200);
- optionally ``forget(con, piece_ids)`` : delete its rows for pieces it will redo.

The runner records each finished piece in ``derived_runs`` in the same transaction as the
stage's rows, so a crash loses at most the batch in flight and a re-run picks up the
pieces that are missing. A piece processed by an older ``VERSION`` is redone only by
``atlas reindex`` (ingestion of new files never rewrites what is stored).
"""

from __future__ import annotations

import importlib
from datetime import datetime, timezone

import pyarrow as pa

from atlas_db.connection import connect, writing

__all__ = ["STAGE_MODULES", "stages", "pending_pieces", "run_stages"]

# Order matters: later stages may read what earlier ones wrote.
STAGE_MODULES: list[str] = ["ingest.harmony", "ingest.grammar", "indexers.vectors", "ingest.pattern_index"]


def stages():
    return [importlib.import_module(m) for m in STAGE_MODULES]


def pending_pieces(con, stage, *, redo_old_versions: bool = False) -> list[str]:
    """Pieces the stage has not processed (or, with ``redo_old_versions``, processed by
    another version of it), in a stable order."""
    cond = "r.piece_id IS NULL"
    if redo_old_versions:
        cond += " OR r.stage_version <> ?"
    params = [stage.STAGE] + ([stage.VERSION] if redo_old_versions else [])
    rows = con.execute(
        f"""SELECT p.piece_id FROM pieces p
            LEFT JOIN derived_runs r ON r.piece_id = p.piece_id AND r.stage = ?
            WHERE {cond} ORDER BY p.piece_id""",
        params,
    ).fetchall()
    return [r[0] for r in rows]


def run_stages(db_dir, *, only: list[str] | None = None, redo_old_versions: bool = False,
               progress=None) -> dict[str, int]:
    """Bring every derived stage up to date; returns pieces processed per stage.

    progress: optional callable ``(stage_name, n_done, n_total)``.
    """
    done: dict[str, int] = {}
    for stage in stages():
        if only and stage.STAGE not in only:
            continue
        con = connect(db_dir, read_only=False, create=True)
        try:
            todo = pending_pieces(con, stage, redo_old_versions=redo_old_versions)
        finally:
            con.close()
        batch = getattr(stage, "BATCH_PIECES", 200)
        n = 0
        if progress:
            progress(stage.STAGE, 0, len(todo))
        for i in range(0, len(todo), batch):
            ids = todo[i : i + batch]
            _run_batch(db_dir, stage, ids)
            n += len(ids)
            if progress:
                progress(stage.STAGE, n, len(todo))
        done[stage.STAGE] = n
    return done


def _run_batch(db_dir, stage, ids: list[str]) -> None:
    with writing(db_dir) as con:
        forget = getattr(stage, "forget", None)
        if forget is not None:
            forget(con, ids)
        stage.update(con, ids)
        now = datetime.now(timezone.utc)
        runs = pa.table(
            {
                "stage": pa.array([stage.STAGE] * len(ids), pa.string()),
                "piece_id": pa.array(ids, pa.string()),
                "stage_version": pa.array([stage.VERSION] * len(ids), pa.string()),
                "done_at": pa.array([now] * len(ids), pa.timestamp("us", tz="UTC")),
            }
        )
        con.register("_runs", runs)
        con.execute("INSERT OR REPLACE INTO derived_runs SELECT * FROM _runs")
        con.unregister("_runs")
