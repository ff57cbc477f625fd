"""Derived stages: what ingestion computes from the stored notes after the files are in.

A stage (harmony, grammar, vectors, ...) is a module with

- ``STAGE`` : str, its name;
- ``VERSION`` : str, changed whenever its code or configuration changes what it writes;
- ``update(con, piece_ids) -> None`` : compute and write its rows for these pieces with
  the open write connection ``con`` (inside a transaction the runner owns);
- optionally ``BATCH_PIECES`` : int, how many pieces one transaction takes (default 200);
- optionally ``BATCH_NOTES`` : int, a batch also ends before its pieces hold more notes
  than this (large pieces bound the memory, small ones share a transaction);
- optionally ``forget(con, piece_ids)`` : delete its rows for pieces it will redo;
- optionally ``update(con, piece_ids, notes=NAME)`` : read the pieces' notes from the
  relation ``NAME`` (every row of ``notes`` of those pieces, same columns) instead of the
  ``notes`` table: the runner passes the notes an ingest has just stored, so that a small
  ingest does not scan every note of the database once per stage;
- optionally, a stage that computes each piece on its own (no corpus-wide state) splits
  ``update`` into ``load_inputs(con, piece_ids) -> {name: pa.Table}`` (every table with a
  ``piece_id`` column), ``compute_rows(inputs, piece_ids) -> {table: pa.Table}`` (no
  database) and ``write_rows(con, rows)``; ``atlas ingest --ray`` runs ``compute_rows``
  as Ray tasks (ingest/ray_ingest.py) and the rest here.

All of a run's transactions go through one :class:`atlas_db.connection.Writer`: a small
ingest (one new file) runs every stage on one connection, a large one reopens it after a
transaction that ends ``BULK_HOLD_S`` (10 s) after it was opened, so that readers get in.

The runner records each finished piece in ``derived_runs`` in the same transaction as the
stage's rows, so a crash loses at most the batch in flight and a re-run picks up the
pieces that are missing. A piece processed by an older ``VERSION`` is redone only by
``atlas reindex`` (ingestion of new files never rewrites what is stored).

Failures are isolated per piece: a piece beyond ``ingest.limits`` is not given to any
stage, and a batch whose ``update`` raises is split in halves until the failing pieces
stand alone. Each is recorded in ``derived_failures`` (stage, reason) and skipped from
then on, so one bad piece never costs the others their rows nor blocks a later ingest.
Errors of the database itself (disk full, I/O) and interrupts are not blamed on a piece:
they stop the run, with everything committed so far kept.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import inspect
import time
from datetime import datetime, timezone

import duckdb
import pyarrow as pa

from atlas_db.connection import BULK_HOLD_S, Writer
from atlas_db.errors import AtlasError, Interrupted
from atlas_db.schema import TABLES
from ingest import ctrl_c
from ingest.limits import size_problem

__all__ = ["STAGE_MODULES", "stages", "pending_pieces", "pending_by_stage", "batches", "run_stages", "StageInterrupted",
           "is_interrupt"]


class StageInterrupted(Interrupted):
    """Ctrl-C (or a DuckDB interrupt) during a derived stage; what was committed is kept."""

    def __init__(self, stage: str, done: dict[str, int], todo: int):
        self.stage, self.done, self.todo = stage, done, todo
        super().__init__(f"interrupted during the {stage} stage ({done.get(stage, 0)} of {todo} pieces done); "
                         "everything committed before is kept, re-run to finish")


def is_interrupt(exc: BaseException) -> bool:
    """Ctrl-C as it reaches us: KeyboardInterrupt, or DuckDB's own error for an
    interrupted query (a RuntimeError 'Query interrupted' in some versions)."""
    if isinstance(exc, (KeyboardInterrupt, duckdb.InterruptException)):
        return True
    return isinstance(exc, RuntimeError) and "interrupted" in str(exc).lower()


def _is_database_trouble(exc: BaseException) -> bool:
    """Errors that say nothing about the piece: the disk, the file, the connection."""
    if isinstance(exc, (duckdb.IOException, duckdb.FatalException, duckdb.InternalException, AtlasError)):
        return True
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EROFS)

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
    params = [stage.STAGE, stage.STAGE, stage.VERSION] + ([stage.VERSION] if redo_old_versions else [])
    rows = con.execute(
        f"""SELECT p.piece_id FROM pieces p
            LEFT JOIN derived_runs r ON r.piece_id = p.piece_id AND r.stage = ?
            LEFT JOIN derived_failures f ON f.piece_id = p.piece_id AND f.stage = ? AND f.stage_version = ?
            WHERE f.piece_id IS NULL AND ({cond}) ORDER BY p.piece_id""",
        params,
    ).fetchall()
    return [r[0] for r in rows]


def pending_by_stage(con, stage_mods, *, redo_old_versions: bool = False) -> dict[str, list[str]]:
    """:func:`pending_pieces` of each of these stages (name -> pieces): one join of
    ``pieces`` with ``derived_runs`` finds the pieces some stage has not done, then only
    their rows are looked at. Each join reads every piece id: at 100k pieces 0.12 s
    (median 0.14 s) for all four stages against 0.13 s (median 0.27 s) for one join per
    stage, 10 alternated runs on 2 shared cores at load 2.7."""
    names = [st.STAGE for st in stage_mods]
    if not names:
        return {}
    con.register("_pend_stages", pa.table({"stage": pa.array(names, pa.string()),
                                           "stage_version": pa.array([st.VERSION for st in stage_mods], pa.string())}))
    runs = ("derived_runs r JOIN _pend_stages s ON r.stage = s.stage"
            + (" AND r.stage_version = s.stage_version" if redo_old_versions else ""))
    try:
        # (stage, piece_id) is the key of derived_runs: a piece every stage has done has
        # one row per stage
        con.execute(f"""CREATE OR REPLACE TEMP TABLE _pend_ids AS
                        SELECT p.piece_id FROM pieces p ANTI JOIN
                            (SELECT r.piece_id FROM {runs} GROUP BY r.piece_id HAVING count(*) = {len(names)}) d
                            USING (piece_id)""")
        skip = con.execute(f"""
            SELECT r.piece_id, r.stage FROM {runs} WHERE r.piece_id IN (SELECT piece_id FROM _pend_ids)
            UNION ALL
            SELECT f.piece_id, f.stage FROM derived_failures f
            JOIN _pend_stages s ON f.stage = s.stage AND f.stage_version = s.stage_version""").fetchall()
        ids = [r[0] for r in con.execute("SELECT piece_id FROM _pend_ids ORDER BY piece_id").fetchall()]
        con.execute("DROP TABLE _pend_ids")
    finally:
        con.unregister("_pend_stages")
    skip = set(skip)
    return {name: [pid for pid in ids if (pid, name) not in skip] for name in names}


def _oversized(con, piece_ids: list[str], notes: dict | None = None) -> dict[str, str]:
    """Pieces beyond ``ingest.limits`` (stored before the parser checked them) -> reason;
    ``notes`` (optional) receives piece id -> number of notes."""
    rows = con.execute("SELECT piece_id, n_notes, duration_beats, duration_s FROM pieces "
                       "WHERE piece_id IN (SELECT unnest(?))", [piece_ids]).fetchall()
    if notes is not None:
        notes.update((pid, n or 0) for pid, n, _, _ in rows)
    return {pid: why for pid, n, beats, secs in rows if (why := size_problem(n, beats, secs))}


def run_stages(db_dir, *, only: list[str] | None = None, redo_old_versions: bool = False,
               progress=None, on_failure=None, seconds: dict | None = None,
               notes: dict | None = None, workers: int = 1) -> dict[str, int]:
    """Bring every derived stage up to date; returns pieces processed per stage (failed
    pieces included: they are recorded in ``derived_failures``).

    progress: optional callable ``(stage_name, n_done, n_total)``; on_failure: optional
    callable ``(stage_name, piece_id, reason)`` for each piece a stage could not process;
    seconds: optional dict that receives each stage's wall-clock time (stage name -> s);
    notes: optional dict piece id -> that piece's rows of ``notes`` (an Arrow table, as
    stored): a batch whose pieces are all in it is given them instead of reading them.
    ``db_dir``: a database folder or a :class:`Writer`; workers: the processes to use: with
    more than one, and pieces of at least ``POOL_MIN_NOTES`` notes for the stages that
    compute each piece on its own, their computation runs in ``workers - 1`` worker
    processes while this one runs the grammar and writes (``ingest.stage_pool``; the
    same rows either way).
    Raises :class:`StageInterrupted` on Ctrl-C (everything committed before is kept).
    """
    from ingest.stage_pool import refuse_while_a_worker_starts

    refuse_while_a_worker_starts("run_stages")
    done: dict[str, int] = {}
    totals: dict[str, int] = {}
    current = "derived"
    started = datetime.now(timezone.utc)
    pending: dict[str, list[str]] = {}
    with ctrl_c.watched(), _writer(db_dir) as db:
        try:
            with db.holding(BULK_HOLD_S):
                todo = [stage for stage in stages() if not only or stage.STAGE in only]
                # what each stage is to do, found at once: a stage writes only its own
                # derived_runs and derived_failures rows, so the others' stay as found here
                pending = pending_by_stage(db.connection(), todo, redo_old_versions=redo_old_versions)
                if workers > 1 and _worth_a_pool(db.connection(), todo, pending):
                    from ingest.stage_pool import ProcessPool, run_stages_pooled

                    pool = ProcessPool(workers - 1)
                    try:
                        return run_stages_pooled(db, pool, mods=todo, progress=progress, on_failure=on_failure,
                                                 notes=notes, seconds=seconds, pending=pending)
                    finally:
                        pool.close()
                for stage in todo:
                    current = stage.STAGE
                    t0 = time.perf_counter()
                    try:
                        _run_stage(db, stage, done, totals, redo_old_versions, progress, on_failure, notes,
                                   pending[stage.STAGE])
                    finally:
                        if seconds is not None:
                            seconds[stage.STAGE] = seconds.get(stage.STAGE, 0.0) + time.perf_counter() - t0
                ctrl_c.check()
        except BaseException as e:
            if is_interrupt(e):
                raise interrupted(db, current, done, totals, pending, started) from None
            raise
    return done


def interrupted(db, current: str, done: dict[str, int], totals: dict[str, int], pending: dict[str, list[str]],
                started: datetime) -> StageInterrupted:
    """The :class:`StageInterrupted` of a run that began at ``started``, each stage's count
    of pieces done read from the database (its ``derived_runs`` and ``derived_failures``
    rows of its ``pending`` pieces written since): a Ctrl-C can land after a batch's
    COMMIT and before the run counts it. The run's own counts if that read fails."""
    with contextlib.suppress(Exception):
        with _writer(db) as w:
            con = w.connection()
            for stage in done:
                done[stage] = con.execute(
                    """SELECT count(*) FROM (
                           SELECT piece_id FROM derived_runs WHERE stage = $1 AND done_at >= $2
                           UNION SELECT piece_id FROM derived_failures WHERE stage = $1 AND failed_at >= $2)
                       WHERE piece_id IN (SELECT unnest($3))""",
                    [stage, started, pending.get(stage, [])]).fetchone()[0]
    return StageInterrupted(current, done, totals.get(current, 0))


# Notes of the pieces for the per-piece stages from which worker processes pay: a worker
# costs ~2 s of CPU to start (importing the stages 0.6-0.7 s, numba's cache loads ~1.4 s);
# those stages took 16 s in one process for pop909-dev's 1.69M notes (~105k notes/s, idle
# machine). A one-file add stays in this process.
POOL_MIN_NOTES = 400_000


def _worth_a_pool(con, todo, pending: dict[str, list[str]]) -> bool:
    ids = list({pid for st in todo if hasattr(st, "compute_rows") for pid in pending[st.STAGE]})
    if not ids:
        return False
    n = con.execute("SELECT coalesce(sum(n_notes), 0) FROM pieces WHERE piece_id IN (SELECT unnest(?))",
                    [ids]).fetchone()[0]
    return n >= POOL_MIN_NOTES


@contextlib.contextmanager
def _writer(db):
    """``db`` as a :class:`Writer`: the caller's, or one of our own for a database folder
    (closed at the end; ``create``, as the stages may run before any file is stored)."""
    if isinstance(db, Writer):
        yield db
        return
    with Writer(db, create=True) as w:
        yield w


def _run_stage(db, stage, done, totals, redo_old_versions, progress, on_failure, stored_notes=None,
               pending: list[str] | None = None) -> None:
    notes: dict[str, int] = {}
    todo = stage_todo(db, stage, done, totals, redo_old_versions, progress, on_failure, notes=notes, pending=pending)
    for ids in batches(todo, getattr(stage, "BATCH_PIECES", 200), getattr(stage, "BATCH_NOTES", None), notes):
        _run_isolated(db, stage, ids, on_failure, stored_notes)
        done[stage.STAGE] += len(ids)
        if progress:
            progress(stage.STAGE, done[stage.STAGE], totals[stage.STAGE])


def batches(todo: list[str], max_pieces: int, max_notes: int | None = None, notes: dict | None = None):
    """``todo`` in consecutive batches of at most ``max_pieces`` pieces and, with
    ``max_notes``, at most that many notes (``notes``: piece id -> notes; a piece larger
    than that is a batch of its own)."""
    batch, n = [], 0
    for pid in todo:
        k = (notes or {}).get(pid, 0) if max_notes else 0
        if batch and (len(batch) >= max_pieces or (max_notes and n + k > max_notes)):
            yield batch
            batch, n = [], 0
        batch.append(pid)
        n += k
    if batch:
        yield batch


def stage_todo(db, stage, done, totals, redo_old_versions, progress, on_failure,
               notes: dict | None = None, pending: list[str] | None = None) -> list[str]:
    """The pieces the stage is to process now; pieces beyond ``ingest.limits`` are
    recorded as failed (and counted in ``done``) instead. ``notes``: optional dict that
    receives piece id -> number of notes of the pieces to process. ``pending``: the
    stage's :func:`pending_pieces` if the caller has found them. ``db``: a database
    folder or a :class:`Writer`."""
    with _writer(db) as w:
        con = w.connection()
        todo = pending_pieces(con, stage, redo_old_versions=redo_old_versions) if pending is None else pending
        oversized = _oversized(con, todo, notes) if todo else {}
        w.release_if_held()
    totals[stage.STAGE] = len(todo)
    done[stage.STAGE] = 0
    if progress:
        progress(stage.STAGE, 0, len(todo))
    if oversized:
        _record_failures(db, stage, oversized, on_failure)
        todo = [p for p in todo if p not in oversized]
        done[stage.STAGE] = len(oversized)
    return todo


def _run_isolated(db, stage, ids: list[str], on_failure, notes: dict | None = None) -> None:
    """Run a batch; if the stage fails on it, halve it until the failing pieces are
    alone, and record those. Costs nothing extra while no piece fails."""
    try:
        run_batch(db, stage, ids, notes=notes)
        return
    except Exception as e:
        if is_interrupt(e) or _is_database_trouble(e):
            raise
        if len(ids) == 1:
            _record_failures(db, stage, {ids[0]: _reason(e)}, on_failure)
            return
    mid = len(ids) // 2
    _run_isolated(db, stage, ids[:mid], on_failure, notes)
    _run_isolated(db, stage, ids[mid:], on_failure, notes)


def _reads_notes(stage) -> bool:
    """Whether the stage's ``update`` takes ``notes=`` (see the module doc)."""
    return "notes" in inspect.signature(stage.update).parameters


def _reason(exc: Exception) -> str:
    if isinstance(exc, MemoryError):
        return "needs more memory than is available for one piece"
    text = " ".join(str(exc).split())  # one line, whatever the message held
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _record_failures(db, stage, reasons: dict[str, str], on_failure) -> None:
    now = datetime.now(timezone.utc)
    rows = pa.Table.from_pylist(
        [{"stage": stage.STAGE, "piece_id": pid, "stage_version": stage.VERSION, "reason": why, "failed_at": now}
         for pid, why in reasons.items()],
        schema=TABLES["derived_failures"],
    )
    with _writer(db) as w, w.transaction() as con:
        con.register("_fail", rows)
        con.execute("INSERT OR REPLACE INTO derived_failures SELECT * FROM _fail")
        con.unregister("_fail")
    if on_failure:
        for pid, why in reasons.items():
            on_failure(stage.STAGE, pid, why)


def run_batch(db, stage, ids: list[str], rows: dict | None = None, notes: dict | None = None) -> None:
    """One transaction: the stage's rows for ``ids`` (``rows``: computed elsewhere by its
    ``compute_rows``; else its ``update`` computes them) and their ``derived_runs``.
    ``db``: a database folder or a :class:`Writer`; ``notes``: see :func:`run_stages`."""
    ctrl_c.check()  # a Ctrl-C that the last statement swallowed stops the run here
    with _writer(db) as w, w.transaction() as con:
        forget = getattr(stage, "forget", None)
        if forget is not None:
            forget(con, ids)
        used = None  # the version a stage's update says it ran as (the grammar's own settings)
        if rows is None and notes is not None and _reads_notes(stage) and all(p in notes for p in ids):
            con.register("_stage_notes", pa.concat_tables([notes[p] for p in ids]))
            try:
                used = stage.update(con, ids, notes="_stage_notes")
            finally:
                con.unregister("_stage_notes")
        elif rows is None:
            used = stage.update(con, ids)
        else:
            stage.write_rows(con, rows)
        con.execute("DELETE FROM derived_failures WHERE stage = ? AND piece_id IN (SELECT unnest(?))",
                    [stage.STAGE, ids])
        now = datetime.now(timezone.utc)
        runs = pa.table(
            {
                "stage": pa.array([stage.STAGE] * len(ids), pa.string()),
                "piece_id": pa.array(ids, pa.string()),
                "stage_version": pa.array([used if isinstance(used, str) else stage.VERSION] * len(ids),
                                          pa.string()),
                "done_at": pa.array([now] * len(ids), pa.timestamp("us", tz="UTC")),
            }
        )
        con.register("_runs", runs)
        con.execute("INSERT OR REPLACE INTO derived_runs SELECT * FROM _runs")
        con.unregister("_runs")
