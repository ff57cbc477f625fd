"""The derived stages with their per-piece work in a pool: worker processes of this
machine for a large ``atlas ingest``, Ray tasks for ``atlas ingest --ray``.

A stage that computes each piece on its own splits ``update`` into ``load_inputs``,
``compute_rows`` and ``write_rows`` (ingest/derived.py); its ``compute_rows`` runs in the
pool. This process (the driver) reads each batch's inputs and hands them out in chunks,
runs the other stages (the grammar: Re-Pair over the corpus, where every increment
depends on all the rules learned before) while the pool computes, then writes the pooled
stages' batches in the stages' order, each with ``ingest.derived.run_batch``: the same
transactions, ``derived_runs`` and ``derived_failures`` as the runner in one process, so
the database ends up the same (tests/test_stage_pool.py, tests/test_ray_ingest.py).

The stages run in the pool read only what the files stored (notes, tempo, tracks,
recordings), never another derived stage's rows; so the grammar may run first.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import signal
import threading
import time
from datetime import datetime, timezone
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ingest import ctrl_c

__all__ = ["compute_chunk", "ProcessPool", "run_stages_pooled", "pooled_stages", "MAX_ROWS_IN_FLIGHT",
           "refuse_while_a_worker_starts"]

# Input rows (notes) handed to the pool and not yet written back: bounds the driver's and
# the workers' memory; larger collections go in windows.
MAX_ROWS_IN_FLIGHT = 8_000_000


def refuse_while_a_worker_starts(what: str) -> None:
    """Raise if this process is a worker still starting. A spawned worker imports the
    script that started the ingest, and a script that calls ``what`` at its top level,
    not under ``if __name__ == "__main__":``, made every worker run the ingest again,
    into the same database: it waited for the database while the driver held it (~60 s
    for 3 POP909-dev songs, the driver waiting for the worker meanwhile) or, where it got
    in (300 files), read every file again and failed to start workers of its own. Now
    the worker stops at once, saying why, and the driver computes its share."""
    if getattr(mp.current_process(), "_inheriting", False):  # multiprocessing.spawn's own check
        raise RuntimeError(f"{what} was called while a worker process was starting: worker processes import "
                           "the script that started them, so call it under `if __name__ == \"__main__\":`")


def pooled_stages(mods) -> list:
    """The stages whose per-piece work can run in a pool."""
    return [st for st in mods if hasattr(st, "compute_rows")]


def compute_chunk(module: str, inputs: dict[str, pa.Table], piece_ids: list[str]):
    """A pool task: the stage's ``compute_rows`` for these pieces -> (rows, failed). If it
    fails, each piece is computed alone (as the runner's halving ends up doing) and the
    failing ones are returned as ``{piece_id: reason}``."""
    from ingest.derived import _reason, is_interrupt

    stage = importlib.import_module(module)
    failed = {}
    try:
        rows = stage.compute_rows(inputs, piece_ids)
    except Exception as e:
        if is_interrupt(e):
            raise
        parts = []
        for pid in piece_ids:
            try:
                parts.append(stage.compute_rows(select_pieces(inputs, [pid]), [pid]))
            except Exception as e1:
                if is_interrupt(e1):
                    raise
                failed[pid] = _reason(e1)
        rows = concat_rows(parts)
    return rows, failed


def select_pieces(inputs: dict[str, pa.Table], piece_ids: list[str]) -> dict[str, pa.Table]:
    """The rows of these pieces, in their order in ``inputs``."""
    return split_pieces(inputs, [piece_ids])[0]


def split_pieces(inputs: dict[str, pa.Table], chunks: list[list[str]]) -> list[dict[str, pa.Table]]:
    """``inputs`` split by these lists of piece ids, each table's rows in their order: one
    look-up of every row's piece (a filter per chunk cost 25 ms per 400k rows)."""
    ids = [pid for chunk in chunks for pid in chunk]
    bounds = np.cumsum([0] + [len(c) for c in chunks])
    out: list[dict[str, pa.Table]] = [{} for _ in chunks]
    for name, t in inputs.items():
        at = pc.index_in(t.column("piece_id"), value_set=pa.array(ids, pa.string()))
        at = at.fill_null(-1).to_numpy()  # each row's place in ids; -1: in no chunk
        which = np.searchsorted(bounds, at, side="right") - 1  # each row's chunk (-1: none)
        for j in range(len(chunks)):
            out[j][name] = t.take(np.flatnonzero(which == j))
    return out


def concat_rows(parts: list[dict[str, pa.Table]]) -> dict[str, pa.Table]:
    names = dict.fromkeys(k for p in parts for k in p)
    return {k: pa.concat_tables([p[k] for p in parts if k in p]) for k in names}


def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle; it stops us
    # a driver killed (SIGTERM from the TUI's cancel, SIGKILL) never shuts the pool down,
    # and a worker waiting for its next chunk would wait for ever: it ends with its parent
    threading.Thread(target=_exit_with_parent, daemon=True).start()


def _exit_with_parent() -> None:
    mp.parent_process().join()  # returns once the parent is gone
    os._exit(1)


class ProcessPool:
    """Worker processes of this machine (spawned, not forked: the driver holds DuckDB's
    threads). A worker that dies (out of memory) breaks the pool: its chunks and every
    later one are then computed by the driver, piece by piece if need be."""

    # The stages compute a chunk of pieces at once (faster per piece than one by one);
    # chunks of this size also leave the driver chunks to take over (see ``steal``).
    pieces_per_task = 250
    # a chunk that fails as a whole (a dead worker, its rows not picklable) is computed
    # again by the driver, which records the pieces that really fail
    lost = (Exception,)

    def __init__(self, workers: int, *, steal: bool = True):
        self._steal = steal
        self._ex = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                       initializer=_init_worker)

    def submit(self, module: str, inputs: dict[str, pa.Table], piece_ids: list[str]):
        try:
            return self._ex.submit(compute_chunk, module, inputs, piece_ids)
        except BrokenProcessPool as e:  # a worker already died: result() says so again
            return e

    def result(self, handle):
        if isinstance(handle, BaseException):
            raise handle
        return handle.result()

    def steal(self, handle) -> bool:
        """Take back a chunk no worker has started: True if the driver is to compute it.
        The driver, done with its own stages, waits for the pool's rows batch by batch;
        on two cores the pool ended the run alone (pop909-dev: the driver waited 6.7 s
        for the patterns' rows)."""
        return self._steal and not isinstance(handle, BaseException) and handle.cancel()

    def cancel(self, handles) -> None:
        for h in handles:
            if not isinstance(h, BaseException):
                h.cancel()

    def close(self) -> None:
        self._ex.shutdown(wait=True, cancel_futures=True)


def run_stages_pooled(db, pool, *, mods=None, progress=None, on_failure=None, notes: dict | None = None,
                      seconds: dict | None = None, pending: dict | None = None) -> dict[str, int]:
    """``ingest.derived.run_stages`` with the pooled stages' ``compute_rows`` in ``pool``
    (:class:`ProcessPool`, or ``ingest.ray_ingest``'s Ray pool); the other stages run here
    first, while the pool computes. ``db``: a database folder or a ``Writer``; ``mods``:
    the stages (default all); ``pending``: their ``pending_by_stage`` if found already;
    the rest as ``run_stages``. Returns pieces processed per stage, in the stages' order."""
    from atlas_db.connection import BULK_HOLD_S
    from ingest.derived import (_run_stage, _writer, batches, interrupted, is_interrupt, pending_by_stage,
                                stage_todo, stages)

    mods = stages() if mods is None else mods
    done: dict[str, int] = {}
    totals: dict[str, int] = {}
    current = "derived"
    started = datetime.now(timezone.utc)
    tasks = None
    with ctrl_c.watched(), _writer(db) as w:
        try:
            with w.holding(BULK_HOLD_S):
                if pending is None:
                    pending = pending_by_stage(w.connection(), mods)
                plan = []  # (stage, batch ids) in the order they are written
                for st in pooled_stages(mods):
                    counts: dict[str, int] = {}
                    todo = stage_todo(w, st, done, totals, False, progress, on_failure, notes=counts,
                                      pending=pending[st.STAGE])
                    plan += [(st, ids) for ids in batches(todo, getattr(st, "BATCH_PIECES", 200),
                                                          getattr(st, "BATCH_NOTES", None), counts)]
                tasks = _Batches(pool, w, plan, notes, seconds)
                if plan:
                    current = plan[0][0].STAGE  # its inputs are read first
                tasks.top_up()
                for st in mods:
                    if hasattr(st, "compute_rows"):
                        continue
                    current = st.STAGE
                    _timed(seconds, st.STAGE, _run_stage, w, st, done, totals, False, progress, on_failure, notes,
                           pending[st.STAGE])
                for st in pooled_stages(mods):
                    current = st.STAGE
                    for k in [k for k, (s, _) in enumerate(plan) if s is st]:
                        _timed(seconds, st.STAGE, tasks.write, k, on_failure)
                        done[st.STAGE] += len(plan[k][1])
                        if progress:
                            progress(st.STAGE, done[st.STAGE], totals[st.STAGE])
                ctrl_c.check()
        except BaseException as e:
            if is_interrupt(e):
                raise interrupted(w, current, done, totals, pending or {}, started) from None
            raise
        finally:
            if tasks is not None:
                tasks.cancel()
    return {st.STAGE: done[st.STAGE] for st in mods if st.STAGE in done}


def _timed(seconds, name, fn, *args):
    """``fn(*args)``; its wall seconds added to ``seconds[name]`` (this process's time on
    the stage: reading, waiting for the pool and writing)."""
    t0 = time.perf_counter()
    try:
        return fn(*args)
    finally:
        if seconds is not None:
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0


class _Batches:
    """The pooled stages' batches of a run, handed to the pool in order while at most
    ``MAX_ROWS_IN_FLIGHT`` input rows are out, and written back batch by batch."""

    def __init__(self, pool, writer, plan, notes: dict | None = None, seconds: dict | None = None):
        self.pool, self.writer, self.plan, self.notes, self.seconds = pool, writer, plan, notes, seconds
        self.submitted: dict[int, tuple[list, int]] = {}  # batch -> ([(handle, ids, inputs)], input rows)
        self.next = 0

    def _inputs(self, stage, ids: list[str]) -> dict[str, pa.Table]:
        """The batch's inputs, from the notes the ingest has just stored when it holds
        them all (as ``run_batch`` does), else from the database."""
        con = self.writer.connection()
        try:
            if self.notes is not None and all(p in self.notes for p in ids):
                con.register("_stage_notes", pa.concat_tables([self.notes[p] for p in ids]))
                try:
                    return stage.load_inputs(con, ids, notes="_stage_notes")
                finally:
                    con.unregister("_stage_notes")
            return stage.load_inputs(con, ids)
        finally:
            self.writer.release_if_held()

    def _submit(self, k: int) -> None:
        stage, ids = self.plan[k]
        inputs = _timed(self.seconds, stage.STAGE, self._inputs, stage, ids)
        size = self.pool.pieces_per_task
        chunks = [ids[j : j + size] for j in range(0, len(ids), size)]
        parts = [inputs] if len(chunks) == 1 else split_pieces(inputs, chunks)  # inputs: the batch's rows only
        handles = [(self.pool.submit(stage.__name__, part, chunk), chunk, part) for part, chunk in zip(parts, chunks)]
        self.submitted[k] = (handles, max((t.num_rows for t in inputs.values()), default=0))
        self.next = k + 1

    def top_up(self) -> None:
        while self.next < len(self.plan) and (
            not self.submitted or sum(r for _, r in self.submitted.values()) < MAX_ROWS_IN_FLIGHT
        ):
            self._submit(self.next)

    def write(self, k: int, on_failure) -> None:
        """Wait for batch ``k``'s chunks and write its rows in one transaction (pieces
        whose chunk was lost are computed here, with the runner's isolation)."""
        from ingest.derived import _is_database_trouble, _record_failures, _run_isolated, is_interrupt, run_batch

        while self.next <= k:
            self._submit(self.next)
        stage, ids = self.plan[k]
        parts, failed, lost = [], {}, []
        handles, _ = self.submitted.pop(k)
        self.top_up()
        for handle, chunk, part in handles:
            try:
                if self.pool.steal(handle):
                    rows, bad = compute_chunk(stage.__name__, part, chunk)
                else:
                    rows, bad = self.pool.result(handle)
            except self.pool.lost:
                lost += chunk
                continue
            parts.append(rows)
            failed.update(bad)
        if failed:
            _record_failures(self.writer, stage, failed, on_failure)
        ok = [p for p in ids if p not in failed and p not in lost]
        if ok:
            try:
                run_batch(self.writer, stage, ok, concat_rows(parts))
            except Exception as e:
                if is_interrupt(e) or _is_database_trouble(e):
                    raise
                lost += ok  # rows that do not go in: recompute here, piece by piece if need be
        if lost:
            _run_isolated(self.writer, stage, lost, on_failure)

    def cancel(self) -> None:
        self.pool.cancel(h for handles, _ in self.submitted.values() for h, _, _ in handles)
