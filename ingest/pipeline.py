"""``atlas ingest``: files -> parsed Arrow tables -> DuckDB, in batches.

Per file: read, hash (SHA-256; the piece id is its first 16 hex digits), skip if the
content is already stored, else parse. Parsing runs in worker processes; the main
process writes batches in short transactions (see ``atlas_db.store``).
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from atlas_db.connection import Writer
from atlas_db.errors import BadInputError, IngestError, Interrupted
from atlas_db.settings import setting
from atlas_db.store import Failure, ParsedPiece, known_piece_ids, write_batch
from ingest import ctrl_c
from ingest.sources import AUDIO_SUFFIXES, MIDI_SUFFIXES, count_of, discover, read_regular_file, stored_path

__all__ = ["IngestSummary", "IngestInterrupted", "ingest_paths", "process_file", "piece_id_for", "file_piece_id"]

# Flush a batch when it holds this many notes or files, or has waited this long.
BATCH_NOTES = 400_000
BATCH_FILES = setting("ATLAS_BATCH_FILES")  # smaller: more, shorter commits
BATCH_WAIT_S = 2.0
# An ingest of at most this many MIDI files looks up their ids (on the connection it then
# writes with) instead of reading every piece id of the database.
SMALL_INGEST_FILES = 64
# The derived stages are handed the notes just stored (instead of reading them back, a
# scan of every note) while the ingest adds at most this many.
STAGE_NOTES_IN_MEMORY = 400_000
# A file whose decoding (audio: features, stems, transcription) takes longer is stopped.
DEFAULT_FILE_TIMEOUT_S = setting("ATLAS_FILE_TIMEOUT_S")


class IngestInterrupted(Interrupted):
    """Ctrl-C during an ingest; ``summary`` says what was committed (and is kept)."""

    def __init__(self, where: str, summary: "IngestSummary"):
        self.where, self.summary = where, summary
        super().__init__(f"interrupted{' ' + where if where else ''}; {summary.kept()}; re-run the same command to finish")


def piece_id_for(content_sha256: str) -> str:
    return content_sha256[:16]


def file_piece_id(path) -> str:
    """The id a file's bytes would have; OSError or ValueError (a FIFO, a device) when it
    cannot be read."""
    return piece_id_for(hashlib.sha256(read_regular_file(path)).hexdigest())


@dataclass
class IngestSummary:
    added: int = 0
    already_present: int = 0
    failed: int = 0
    notes_added: int = 0
    skipped_other: int = 0
    seconds: float = 0.0
    errors: list[tuple[str, str]] = field(default_factory=list)
    added_ids: list[str] = field(default_factory=list)
    derived: dict = field(default_factory=dict)  # stage name -> pieces processed
    stage_failures: list[tuple[str, str, str]] = field(default_factory=list)  # (stage, piece_id, reason)
    store_seconds: float = 0.0  # reading, parsing and writing the files, without derived stages
    stage_seconds: dict = field(default_factory=dict)  # derived stage name -> wall-clock s (local runs)
    # what the run did without (absent optional models), once; only when a recording was analysed
    notes: list[str] = field(default_factory=list)

    def kept(self) -> str:
        """What an interrupted run kept, for the one line the CLI prints."""
        s = f"kept {count_of(self.added, 'new file')} ({count_of(self.notes_added, 'note')})"
        if self.derived:
            s += "; derived stages: " + ", ".join(f"{k} {v} pieces" for k, v in self.derived.items())
        return s

    def line(self) -> str:
        rate = self.notes_added / self.store_seconds if self.store_seconds > 0 else 0.0
        s = (
            f"added {count_of(self.added, 'file')} ({count_of(self.notes_added, 'note')}), "
            f"{self.already_present} already present, {self.failed} failed, "
            f"in {self.seconds:.1f} s (stored in {self.store_seconds:.1f} s, {rate:,.0f} notes/s"
        )
        s += f"; derived stages {self.seconds - self.store_seconds:.1f} s)" if self.derived else ")"
        if self.stage_failures:
            n = len(self.stage_failures)
            s += (f"; {count_of(n, 'piece')} could not be analysed by a derived stage "
                  f"and {'was' if n == 1 else 'were'} skipped (see the derived_failures table)")
        if self.skipped_other:
            n = self.skipped_other
            s += (f"; {count_of(n, 'other file')} in the folders {'was not a music file and was' if n == 1 else 'were not music files and were'} skipped")
        return s


_KNOWN: set[str] = set()


def _init_worker(known: set[str]) -> None:
    global _KNOWN
    _KNOWN = known


def process_file(path: str, known: set[str] | None = None):
    """Read, hash and parse one file.

    Returns ``ParsedPiece``, ``("present", piece_id, path)`` or ``Failure``;
    never raises for a bad file.
    """
    from ingest.midi_parse import parse_midi

    known = _KNOWN if known is None else known
    name = stored_path(path)  # what the tables hold: valid UTF-8 even for an odd file name
    try:
        data = read_regular_file(path)
    except OSError as e:
        return Failure(name, f"cannot read ({e.strerror or e})")
    except ValueError as e:
        return Failure(name, str(e))
    sha = hashlib.sha256(data).hexdigest()
    pid = piece_id_for(sha)
    if pid in known:
        return ("present", pid, name)
    try:
        if path.lower().endswith(AUDIO_SUFFIXES):
            from ingest.audio import parse_audio  # decode, features, stems, transcription

            tables = parse_audio(data, piece_id=pid, path=name)
        else:
            tables = parse_midi(data, piece_id=pid, path=name)
    except IngestError as e:
        return Failure(name, e.reason, sha)
    except MemoryError:
        return Failure(name, "too large to decode in the memory available", sha)
    except Exception as e:  # a decoder bug must not stop the batch; say what it was
        return Failure(name, f"unexpected parser error: {type(e).__name__}: {e}", sha)
    return ParsedPiece(pid, sha, name, tables)



def _is_heavy(path: str) -> bool:
    """Files whose decoding costs far more than shipping the result between processes.
    MIDI is not: it parses at ~2M notes/s in-process, and pickling its tables to and
    from worker processes costs more than the parse itself (benchmarks/ingest.py)."""
    return not path.lower().endswith(MIDI_SUFFIXES)


def _results(files, known, workers, *, timeout_s: float | None = None):
    """(file, result) pairs; light files are parsed here, heavy ones by worker processes
    that are killed (and the file recorded as failed) past ``timeout_s`` seconds."""
    heavy = [f for f in files if _is_heavy(f)]
    light = [f for f in files if not _is_heavy(f)]
    for f in light:
        yield process_file(f, known)
    if heavy:
        yield from _supervised(heavy, known, workers, timeout_s or DEFAULT_FILE_TIMEOUT_S)


# What a worker sends when it begins a file: the file's time limit counts from here, not
# from the moment the path was sent (the worker may still be starting).
_STARTED = "started"
# How long a worker may take to start (spawn, imports, the models' loading) beyond the
# file's own limit: under load a fresh worker took longer than a short --file-timeout.
START_ALLOWANCE_S = 60.0


def _warm_up() -> None:
    """Import the decoders and load the transcription model before the first file, so
    that their cost is the worker's start rather than the first file's time."""
    try:
        from ingest import audio, transcribe

        audio._essentia()
        transcribe._model()
    except Exception:  # noqa: BLE001 - not installed or broken: each file says so itself
        return


def _worker_loop(conn, known) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops us
    _init_worker(known)
    _warm_up()
    while (path := conn.recv()) is not None:
        conn.send(_STARTED)
        conn.send(process_file(path))


def _exit_reason(code) -> str:
    if code is not None and code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _supervised(files: list[str], known, workers: int, timeout_s: float):
    """Results of ``process_file`` run in worker processes, one file at a time each.

    A decoder can hang inside C code (essentia on absurd samples) where no Python signal
    reaches it, or crash the process: a worker past ``timeout_s`` on a file is killed, a
    dead one is noticed, and either way the file becomes a Failure and a fresh worker takes
    the rest. The limit counts from the moment the worker begins the file; a worker that
    has not begun it ``START_ALLOWANCE_S`` after that limit is stopped the same way.
    """
    from multiprocessing.connection import wait

    # spawn, not fork: the parent may hold DuckDB threads, which fork does not copy safely.
    ctx = mp.get_context("spawn")
    queue = list(reversed(files))

    def start():
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker_loop, args=(child, known), daemon=True)
        proc.start()
        child.close()
        return {"proc": proc, "conn": parent, "path": None, "since": 0.0, "started": False}

    def stop(w, kill=False):
        try:
            if kill:
                w["proc"].kill()
            else:
                w["conn"].send(None)
        except OSError:
            pass
        w["proc"].join(timeout=None if kill else 5)
        if w["proc"].is_alive():
            w["proc"].kill()
            w["proc"].join()
        w["conn"].close()

    pool = [start() for _ in range(max(1, min(workers, len(files))))]
    try:
        while True:
            for w in pool:
                if w["path"] is None and queue:
                    w["path"], w["since"], w["started"] = queue.pop(), time.monotonic(), False
                    w["conn"].send(w["path"])
            busy = [w for w in pool if w["path"] is not None]
            if not busy:
                return

            def deadline(w):
                return w["since"] + timeout_s + (0.0 if w["started"] else START_ALLOWANCE_S)

            next_deadline = min(deadline(w) for w in busy)
            wait([x for w in busy for x in (w["conn"], w["proc"].sentinel)],
                 timeout=max(0.01, next_deadline - time.monotonic()))
            for i, w in enumerate(pool):
                if w["path"] is None:
                    continue
                name = stored_path(w["path"])
                res = None
                while res is None and w["conn"].poll():
                    try:
                        res = w["conn"].recv()
                    except (EOFError, OSError):
                        break
                    if isinstance(res, str) and res == _STARTED:
                        w["since"], w["started"], res = time.monotonic(), True, None
                if res is not None:
                    w["path"] = None
                    yield res
                    continue
                if not w["proc"].is_alive():
                    stop(w, kill=True)
                    pool[i] = start()
                    if w["started"]:
                        yield Failure(name, f"the decoder crashed on this file ({_exit_reason(w['proc'].exitcode)})")
                    else:  # it died starting (importing the decoders, loading the models)
                        yield Failure(name, f"the decoding process stopped before it began this file "
                                            f"({_exit_reason(w['proc'].exitcode)}); re-run to retry the file")
                elif time.monotonic() > deadline(w):
                    stop(w, kill=True)
                    pool[i] = start()
                    if w["started"]:
                        yield Failure(name, f"took longer than the {timeout_s:g} s limit per file and was stopped "
                                            "(atlas ingest --file-timeout)")
                    else:
                        yield Failure(name, f"the decoding process did not start within "
                                            f"{timeout_s + START_ALLOWANCE_S:g} s (is the machine overloaded?); "
                                            "re-run to retry the file")
    finally:
        for w in pool:
            stop(w, kill=w["path"] is not None)


def _known_ids(db: Writer, files: list[str]) -> set[str]:
    """The ids of stored pieces that ``process_file`` is to skip: of a few MIDI files,
    those of their contents the database holds (their bytes are read twice, which costs
    less than reading every id of a large database); else every stored id."""
    if len(files) > SMALL_INGEST_FILES or any(_is_heavy(f) for f in files):
        return known_piece_ids(db.db_dir)
    ids = []
    for f in files:
        try:
            ids.append(file_piece_id(f))
        except (OSError, ValueError):  # process_file reports it
            pass
    return known_piece_ids(db, among=ids)


def _write_batch(db: Writer, parsed, present, failures, last: bool):
    """``write_batch``; the connection is closed after it unless it is the last batch
    (the derived stages follow at once), so readers get in while more files are parsed."""
    try:
        return write_batch(db, parsed, present, failures)
    finally:
        if not last:
            db.close()


def check_db_dir(db_dir) -> None:
    """Fail before reading any file if the database folder cannot be created (or a
    setting in the environment cannot be used, ``atlas_db.settings``)."""
    from atlas_db.settings import check as check_settings

    check_settings()
    db_dir = Path(db_dir)
    if db_dir.exists():
        if not db_dir.is_dir():
            raise BadInputError(f"{db_dir}: is a file, not a database folder")
        return
    if not db_dir.parent.exists():
        raise BadInputError(f"{db_dir}: cannot create the database, parent folder {db_dir.parent} does not exist")


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def ingest_paths(paths, db_dir, *, workers: int | None = None, progress=None, on_error=None,
                 derive: bool = True, stage_progress=None, on_stage_failure=None,
                 file_timeout_s: float | None = None, engine=None) -> IngestSummary:
    """Ingest files and folders into the database at ``db_dir``.

    progress: optional callable ``(n_done, n_total, notes_so_far)``; on_error: optional
    callable ``(path, reason)`` called as each failure is found. With ``derive`` (the
    default) the derived stages (harmony, grammar, vectors, ...) then bring themselves up
    to date; stage_progress: optional callable ``(stage, n_done, n_total)``;
    on_stage_failure: optional callable ``(stage, piece_id, reason)`` for each piece a
    derived stage could not process (it is recorded in ``derived_failures`` and skipped);
    file_timeout_s: how long one audio file may take (default ``DEFAULT_FILE_TIMEOUT_S``);
    engine: where the work runs, default this machine; an object with ``results(files,
    known, workers, timeout_s=)`` (what :func:`process_file` returns, per file) and
    ``run_stages(db_dir, progress=, on_failure=)``, such as ``ingest.ray_ingest.RayEngine``.
    Returns an :class:`IngestSummary`; raises only for problems with the database itself,
    and :class:`IngestInterrupted` on Ctrl-C (what was committed before is kept).
    ``workers`` > 1 starts worker processes, which import the calling script: call this
    under ``if __name__ == "__main__":`` in a script (a worker that finds it called while
    it starts stops with an error that says so, and this process does its share).
    """
    from ingest.stage_pool import refuse_while_a_worker_starts

    refuse_while_a_worker_starts("ingest_paths")
    summary = IngestSummary()
    try:
        with ctrl_c.watched():
            return _ingest(paths, db_dir, summary, workers, progress, on_error, derive, stage_progress,
                           on_stage_failure, file_timeout_s, engine)
    except Interrupted:
        raise
    except BaseException as e:
        from ingest.derived import is_interrupt

        if is_interrupt(e):  # between the phases: still say what was kept
            raise IngestInterrupted("", summary) from None
        raise


def _ingest(paths, db_dir, summary, workers, progress, on_error, derive, stage_progress, on_stage_failure,
            file_timeout_s, engine) -> IngestSummary:
    t0 = time.perf_counter()
    check_db_dir(db_dir)
    workers = default_workers() if workers is None else workers
    found = discover(paths)
    summary.skipped_other = found.skipped_other
    failures: list[Failure] = [Failure(stored_path(p), r) for p, r in found.problems]
    for f in failures:
        if on_error:
            on_error(f.path, f.reason)
    audio_notes: list[str] = []
    if any(f.lower().endswith(AUDIO_SUFFIXES) for f in found.files):
        from ingest.audio_config import check, startup_notes

        check()  # a configuration that cannot be used stops the ingest before anything is stored
        # absent optional models (stems, descriptions): in the summary once a recording is
        # analysed (not on an ingest that finds every recording already stored)
        audio_notes = startup_notes()
    # Every write of this ingest goes through one Writer: a small ingest (one new file)
    # stores and runs every derived stage on one connection (atlas_db.connection.Writer).
    db = Writer(db_dir, create=True)
    try:
        known = _known_ids(db, found.files)
        return _store_and_derive(db, db_dir, summary, found, failures, known, workers, progress, on_error, derive,
                                 stage_progress, on_stage_failure, file_timeout_s, engine, t0, audio_notes)
    finally:
        db.close()


def _store_and_derive(db, db_dir, summary, found, failures, known, workers, progress, on_error, derive,
                      stage_progress, on_stage_failure, file_timeout_s, engine, t0, audio_notes) -> IngestSummary:
    pending: list[ParsedPiece] = []
    present: list[tuple[str, str]] = []
    pending_notes = 0
    last_flush = time.monotonic()

    # Batches are written by one writer thread while the next batch is parsed: DuckDB
    # releases the GIL while it inserts, so parsing and storing overlap.
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="atlas-writer")
    in_flight = None
    stored_notes: dict | None = {}  # piece id -> notes written, for the derived stages

    def keep_notes(res):
        nonlocal stored_notes
        if stored_notes is None:
            return
        stored_notes.update(res.notes)
        if summary.notes_added > STAGE_NOTES_IN_MEMORY:
            stored_notes = None  # a large ingest: the stages read the notes in batches

    def collect():
        nonlocal in_flight
        if in_flight is None:
            return
        fut, batch_failures = in_flight
        res = fut.result()  # a Ctrl-C while waiting here leaves the batch in flight: the handler collects it
        in_flight = None
        summary.added += len(res.added)
        summary.added_ids += res.added
        summary.already_present += len(res.already_present)
        summary.notes_added += res.notes_added
        keep_notes(res)
        summary.failed += len(batch_failures)
        summary.errors += [(f.path, f.reason) for f in batch_failures]

    def flush(last=False):
        nonlocal pending, present, failures, pending_notes, last_flush, in_flight
        if not (pending or present or failures):
            return
        collect()
        in_flight = (writer.submit(_write_batch, db, pending, present, failures, last), failures)
        pending, present, failures, pending_notes = [], [], [], 0
        last_flush = time.monotonic()

    done = 0
    try:
        results = engine.results if engine else _results
        for res in results(found.files, known, workers, timeout_s=file_timeout_s):
            done += 1
            if isinstance(res, ParsedPiece):
                pending.append(res)
                pending_notes += res.tables["notes"].num_rows
                if audio_notes and res.tables["pieces"].get("kind") == "audio":
                    summary.notes += audio_notes
                    audio_notes.clear()
            elif isinstance(res, Failure):
                failures.append(res)
                if on_error:
                    on_error(res.path, res.reason)
            else:
                present.append((res[1], res[2]))
            if (
                pending_notes >= BATCH_NOTES
                or len(pending) + len(present) + len(failures) >= BATCH_FILES
                or time.monotonic() - last_flush >= BATCH_WAIT_S
            ):
                flush()
            if progress:
                progress(done, len(found.files), summary.notes_added + pending_notes)
        flush(last=True)
        collect()
        ctrl_c.check()
    except BaseException as e:
        from ingest.derived import is_interrupt

        if not is_interrupt(e):
            raise
        writer.shutdown(wait=True)  # the batch already handed to the writer commits whole
        try:
            collect()
        except BaseException:  # the interrupt reached the writer too: that batch rolled back
            pass
        raise IngestInterrupted("while storing files", summary) from None
    finally:
        writer.shutdown(wait=True)
    summary.store_seconds = time.perf_counter() - t0
    if derive and (summary.added or found.files):
        from ingest.derived import StageInterrupted, run_stages

        def stage_failed(stage, pid, reason):
            summary.stage_failures.append((stage, pid, reason))
            if on_stage_failure:
                on_stage_failure(stage, pid, reason)

        try:
            if engine:
                db.close()  # the engine opens the database itself
                summary.derived = engine.run_stages(db_dir, progress=stage_progress, on_failure=stage_failed)
            else:
                summary.derived = run_stages(db, progress=stage_progress, on_failure=stage_failed,
                                             seconds=summary.stage_seconds, notes=stored_notes, workers=workers)
        except StageInterrupted as e:
            summary.derived = e.done
            raise IngestInterrupted(f"during the {e.stage} stage", summary) from None
    summary.seconds = time.perf_counter() - t0
    return summary
