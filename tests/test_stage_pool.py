"""A large local ingest computes the per-piece derived stages in worker processes
(ingest/stage_pool.py) while the driver runs the grammar and writes: the database is the
same as after an ingest in one process, a worker that dies costs nothing but time, and a
piece that fails is recorded as it is without the pool."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pool_test_stage as pts
from atlas_db.connection import Writer, reading
from conftest import dump_tables, pop909_songs
from ingest import derived, harmony, pattern_index
from ingest.pipeline import ingest_paths
from ingest.stage_pool import ProcessPool, run_stages_pooled, select_pieces, split_pieces
from indexers import vectors
from midi_fixtures import Track, melody, write_midi

import pyarrow as pa


def test_pooled_stages_write_what_one_process_writes(tmp_path, monkeypatch):
    src = tmp_path / "files"
    for song in pop909_songs(4):
        shutil.copytree(song, src / song.name)
    alone = ingest_paths([str(src)], tmp_path / "alone", workers=1)
    # every piece through the pool, several batches per stage, three chunks per batch
    # (the driver takes back those no worker has started when it comes to them)
    monkeypatch.setattr(derived, "POOL_MIN_NOTES", 1)
    monkeypatch.setattr(ProcessPool, "pieces_per_task", 2)
    for stage in (harmony, vectors, pattern_index):
        monkeypatch.setattr(stage, "BATCH_PIECES", 5)
    pooled = ingest_paths([str(src)], tmp_path / "pooled", workers=3)
    assert alone.added == pooled.added > 10
    assert alone.derived == pooled.derived == {s: alone.added for s in ("harmony", "grammar", "vectors", "patterns")}
    with reading(tmp_path / "pooled") as con:  # the grammar ran first, while the workers computed
        assert con.execute("""SELECT max(done_at) FILTER (stage = 'grammar') < min(done_at) FILTER (stage <> 'grammar')
                              FROM derived_runs""").fetchone()[0]
    a, b = dump_tables(tmp_path / "alone"), dump_tables(tmp_path / "pooled")
    assert a.keys() == b.keys()
    for name in a:
        assert a[name] == b[name], f"table {name} differs between the pooled and the one-process ingest"
    for name in ("chords", "cover_features", "track_vectors", "pattern_ngrams", "occurrences"):
        assert a[name], name  # the comparison covered real rows

    # one new file afterwards: below POOL_MIN_NOTES it stays in this process, same rows
    monkeypatch.setattr(derived, "POOL_MIN_NOTES", 400_000)
    fifth = pop909_songs(5)[-1]
    shutil.copy(fifth / f"{fifth.name}.mid", src / "new.mid")
    for db, w in (("alone", 1), ("pooled", 3)):
        assert ingest_paths([str(src)], tmp_path / db, workers=w).derived == {
            s: 1 for s in ("harmony", "grammar", "vectors", "patterns")}
    assert dump_tables(tmp_path / "alone") == dump_tables(tmp_path / "pooled")


def _tunes(folder: Path, lows: list[int]) -> list[str]:
    folder.mkdir()
    return [str(write_midi(folder / f"{i}.mid", [Track(melody([low, low + 4, low + 7, low + 12][: 2 + i % 3]))]))
            for i, low in enumerate(lows)]


def test_a_dead_worker_and_a_failing_piece(tmp_path, monkeypatch):
    """A worker killed while computing a chunk: that chunk and the later ones are
    computed by the driver. A piece that fails everywhere is recorded with its reason,
    and the others of its batch keep their rows."""
    files = _tunes(tmp_path / "in", list(range(60, 69)))
    db = tmp_path / "db"
    ingest_paths(files, db, derive=False)
    with reading(db) as con:
        low = dict(con.execute("SELECT piece_id, min(pitch) FROM notes GROUP BY ALL").fetchall())
    # batches of BATCH_PIECES in piece id order: the worker dies on the second batch's
    # first piece, the first batch's second piece fails
    order = sorted(low)
    batch = {p: order.index(p) // pts.BATCH_PIECES for p in order}
    crash, bad = order[pts.BATCH_PIECES], order[1]
    monkeypatch.setenv("POOL_TEST_CRASH_PITCH", str(low[crash]))  # before the worker starts
    monkeypatch.setenv("POOL_TEST_BAD_PITCH", str(low[bad]))
    failures = []
    pool = ProcessPool(1, steal=False)  # every chunk to the worker, so that who computed which is known
    try:
        with Writer(db) as w:
            done = run_stages_pooled(w, pool, mods=[pts], on_failure=lambda *a: failures.append(a))
    finally:
        pool.close()
    reason = f"ValueError: lowest pitch {low[bad]} is refused"
    assert done == {"pool_test": len(order)}
    assert failures == [("pool_test", bad, reason)]
    with reading(db) as con:
        rows = dict(con.execute("SELECT piece_id, worker FROM pool_test_rows").fetchall())
        runs = {r[0] for r in con.execute("SELECT piece_id FROM derived_runs WHERE stage = 'pool_test'").fetchall()}
        recorded = con.execute("SELECT piece_id, reason FROM derived_failures").fetchall()
    assert set(rows) == runs == set(order) - {bad}
    assert recorded == [(bad, reason)]
    # the first batch by the worker (its failing piece alone left out), the rest by the driver
    assert rows == {p: batch[p] == 0 for p in order if p != bad}


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds processes through /proc (Linux)")
def test_a_killed_driver_leaves_no_worker_behind(tmp_path):
    """The TUI cancels an ingest with SIGTERM, a user may SIGKILL it: neither runs the
    pool's shutdown, and the workers must not wait for chunks for ever."""
    files = [str(p) for song in pop909_songs(4) for p in sorted(song.glob("*.mid"))]
    code = ("import sys; from ingest import derived; derived.POOL_MIN_NOTES = 1; "
            "from ingest.pipeline import ingest_paths; ingest_paths(sys.argv[2:], sys.argv[1], workers=2)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "db"), *files],
                            cwd=Path(__file__).parents[1], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        workers = []
        while not workers and proc.poll() is None and time.monotonic() < deadline:
            # the pool's worker (the spawn's resource tracker is a child too, and ends by itself)
            workers = [c for c in _children(proc.pid)
                       if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
            time.sleep(0.02)
        assert workers, "the ingest ended before its worker process was seen"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 30
        while any(_alive(w) for w in workers):  # (a zombie is dead: its new parent may not reap it)
            assert time.monotonic() < deadline, "a worker outlived its killed driver by 30 s"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_the_driver_takes_back_a_chunk_no_worker_has_started(monkeypatch):
    monkeypatch.setenv("POOL_TEST_SLEEP_S", "0.3")
    notes = pa.table({"piece_id": list("abcdef"), "pitch": [60, 61, 62, 63, 64, 65]})
    pool = ProcessPool(1)
    try:
        handles = [pool.submit("pool_test_stage", select_pieces({"notes": notes}, [p]), [p]) for p in "abcdef"]
        # the worker is still starting: at most two chunks are handed to it (one running,
        # one queued), the last is not
        assert pool.steal(handles[-1])
        got = [pool.result(h)[0]["pool_test_rows"].to_pylist() for h in handles[:-1]]
    finally:
        pool.close()
    assert got == [[{"piece_id": p, "n_notes": 1, "worker": True}] for p in "abcde"]


def test_split_pieces_keeps_each_tables_row_order():
    t = pa.table({"piece_id": ["a", "b", "a", "c", "d"], "x": [1, 2, 3, 4, 5]})
    parts = split_pieces({"notes": t, "empty": t.slice(0, 0)}, [["a", "c"], ["b"]])
    assert [p["notes"].to_pydict() for p in parts] == [{"piece_id": ["a", "a", "c"], "x": [1, 3, 4]},
                                                       {"piece_id": ["b"], "x": [2]}]
    assert [p["empty"].num_rows for p in parts] == [0, 0]
    assert "pool_test_stage" in sys.modules  # the stage the worker imports is this one


def test_a_script_without_a_main_guard_is_not_run_again_by_the_workers(tmp_path):
    # a spawned worker imports the script that started it: the ingest at the script's top
    # level must stop there, in the worker, not run again (parsing, storing, reporting)
    src = tmp_path / "files"
    for song in pop909_songs(3):
        shutil.copytree(song, src / song.name)
    script = tmp_path / "no_guard.py"
    script.write_text(
        "import os, sys\n"
        f"sys.path[:0] = {[str(Path(__file__).resolve().parents[1])]!r}\n"
        "from ingest import derived\n"
        "from ingest.pipeline import ingest_paths\n"
        "derived.POOL_MIN_NOTES = 1\n"
        f"s = ingest_paths([{str(src)!r}], {str(tmp_path / 'db')!r}, workers=2,\n"
        "                 progress=lambda *a: print('progress', os.getpid(), flush=True))\n"
        "print('added', s.added, flush=True)\n")
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    pids = {line.split()[1] for line in run.stdout.splitlines() if line.startswith("progress")}
    assert len(pids) == 1, run.stdout  # the driver alone parsed and reported
    assert "ingest_paths was called while a worker process was starting" in run.stderr
    added = [line for line in run.stdout.splitlines() if line.startswith("added")]
    assert len(added) == 1 and int(added[0].split()[1]) > 3  # the driver computed the workers' share
    with reading(tmp_path / "db") as con:
        assert con.execute("SELECT count(DISTINCT piece_id) FROM cover_features").fetchone()[0] == int(added[0].split()[1])
