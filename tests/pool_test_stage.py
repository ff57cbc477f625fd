"""A derived stage for tests/test_stage_pool.py, importable by the pool's worker processes
(they are spawned with the test process's ``sys.path``): per piece, its number of notes.
In a worker it kills its process on a piece whose smallest pitch is $POOL_TEST_CRASH_PITCH
(a worker lost to the kernel's out-of-memory killer looks the same to the pool), and
anywhere it fails on a piece whose smallest pitch is $POOL_TEST_BAD_PITCH; in a worker it
takes $POOL_TEST_SLEEP_S seconds a chunk."""

from __future__ import annotations

import multiprocessing
import os
import time

import pyarrow as pa

STAGE = "pool_test"
VERSION = "1"
BATCH_PIECES = 3


def load_inputs(con, piece_ids, notes: str = "notes"):
    return {"notes": con.sql(f"SELECT piece_id, pitch FROM {notes} WHERE piece_id IN (SELECT unnest(?))",
                             params=[list(piece_ids)]).to_arrow_table()}


def compute_rows(inputs, piece_ids):
    crash, bad = (int(os.environ.get(f"POOL_TEST_{k}_PITCH", -1)) for k in ("CRASH", "BAD"))
    if multiprocessing.parent_process() is not None:
        time.sleep(float(os.environ.get("POOL_TEST_SLEEP_S", 0)))
    t = inputs["notes"]
    ids, pitches = t.column("piece_id").to_pylist(), t.column("pitch").to_pylist()
    out = []
    for pid in piece_ids:
        low = min(p for i, p in zip(ids, pitches) if i == pid)
        if low == crash and multiprocessing.parent_process() is not None:
            os._exit(3)
        if low == bad:
            raise ValueError(f"lowest pitch {low}\nis refused")
        out.append({"piece_id": pid, "n_notes": ids.count(pid), "worker": multiprocessing.parent_process() is not None})
    return {"pool_test_rows": pa.Table.from_pylist(out, schema=pa.schema(
        [("piece_id", pa.string()), ("n_notes", pa.int64()), ("worker", pa.bool_())]))}


def write_rows(con, rows):
    con.execute("CREATE TABLE IF NOT EXISTS pool_test_rows (piece_id VARCHAR, n_notes BIGINT, worker BOOLEAN)")
    con.register("_pool_test", rows["pool_test_rows"])
    con.execute("INSERT INTO pool_test_rows SELECT * FROM _pool_test")
    con.unregister("_pool_test")


def update(con, piece_ids, notes: str = "notes"):
    write_rows(con, compute_rows(load_inputs(con, piece_ids, notes), piece_ids))
