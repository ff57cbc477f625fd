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

from atlas_db.errors import BadInputError, IngestError
from atlas_db.store import Failure, ParsedPiece, known_piece_ids, write_batch
from ingest.sources import AUDIO_SUFFIXES, MIDI_SUFFIXES, discover

__all__ = ["IngestSummary", "ingest_paths", "process_file", "piece_id_for"]

# Flush a batch when it holds this many notes or files, or has waited this long.
BATCH_NOTES = 400_000
BATCH_FILES = int(os.environ.get("ATLAS_BATCH_FILES", "1000"))  # smaller: more, shorter commits
BATCH_WAIT_S = 2.0


def piece_id_for(content_sha256: str) -> str:
    return content_sha256[:16]


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
    store_seconds: float = 0.0  # reading, parsing and writing the files, without derived stages

    def line(self) -> str:
        rate = self.notes_added / self.store_seconds if self.store_seconds > 0 else 0.0
        s = (
            f"added {self.added} files ({self.notes_added:,} notes), "
            f"{self.already_present} already present, {self.failed} failed, "
            f"in {self.seconds:.1f} s (stored in {self.store_seconds:.1f} s, {rate / 1e6:.2f}M notes/s"
        )
        s += f"; derived stages {self.seconds - self.store_seconds:.1f} s)" if self.derived else ")"
        if self.skipped_other:
            s += f"; {self.skipped_other} other files in the folders were not music files and were skipped"
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
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as e:
        return Failure(path, f"cannot read ({e.strerror or e})")
    sha = hashlib.sha256(data).hexdigest()
    pid = piece_id_for(sha)
    if pid in known:
        return ("present", pid, path)
    try:
        if path.lower().endswith(AUDIO_SUFFIXES):
            from ingest.audio import parse_audio  # decode, features, stems, transcription

            tables = parse_audio(data, piece_id=pid, path=path)
        else:
            tables = parse_midi(data, piece_id=pid, path=path)
    except IngestError as e:
        return Failure(path, e.reason, sha)
    except Exception as e:  # a decoder bug must not stop the batch; say what it was
        return Failure(path, f"unexpected parser error: {type(e).__name__}: {e}", sha)
    return ParsedPiece(pid, sha, path, tables)


def _is_heavy(path: str) -> bool:
    """Files whose decoding costs far more than shipping the result between processes.
    MIDI is not: it parses at ~2M notes/s in-process, and pickling its tables to and
    from worker processes costs more than the parse itself (benchmarks/ingest.py)."""
    return not path.lower().endswith(MIDI_SUFFIXES)


def _results(files, known, workers):
    """(file, result) pairs; light files are parsed here, heavy ones by a process pool."""
    heavy = [f for f in files if _is_heavy(f)]
    light = [f for f in files if not _is_heavy(f)]
    for f in light:
        yield process_file(f, known)
    if not heavy:
        return
    if workers <= 1 or len(heavy) < 2:
        for f in heavy:
            yield process_file(f, known)
        return
    # spawn, not fork: the parent may hold DuckDB threads, which fork does not copy safely.
    ctx = mp.get_context("spawn")
    with ctx.Pool(min(workers, len(heavy)), initializer=_init_worker, initargs=(known,)) as pool:
        yield from pool.imap_unordered(process_file, heavy, chunksize=1)


def check_db_dir(db_dir) -> None:
    """Fail before reading any file if the database folder cannot be created."""
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
                 derive: bool = True, stage_progress=None) -> IngestSummary:
    """Ingest files and folders into the database at ``db_dir``.

    progress: optional callable ``(n_done, n_total, notes_so_far)``; on_error: optional
    callable ``(path, reason)`` called as each failure is found. With ``derive`` (the
    default) the derived stages (harmony, grammar, vectors, ...) then bring themselves up
    to date; stage_progress: optional callable ``(stage, n_done, n_total)``.
    Returns an :class:`IngestSummary`; raises only for problems with the database itself.
    """
    t0 = time.perf_counter()
    check_db_dir(db_dir)
    workers = default_workers() if workers is None else workers
    found = discover(paths)
    summary = IngestSummary(skipped_other=found.skipped_other)
    failures: list[Failure] = [Failure(p, r) for p, r in found.problems]
    for f in failures:
        if on_error:
            on_error(f.path, f.reason)
    if any(f.lower().endswith(AUDIO_SUFFIXES) for f in found.files):
        from ingest.audio_config import startup_notes

        for note in startup_notes():  # absent optional models (stems, descriptions): said once
            print(note, file=sys.stderr)
    known = known_piece_ids(db_dir)
    pending: list[ParsedPiece] = []
    present: list[tuple[str, str]] = []
    pending_notes = 0
    last_flush = time.monotonic()

    # Batches are written by one writer thread while the next batch is parsed: DuckDB
    # releases the GIL while it inserts, so parsing and storing overlap.
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="atlas-writer")
    in_flight = None

    def collect():
        nonlocal in_flight
        if in_flight is None:
            return
        fut, batch_failures = in_flight
        in_flight = None
        res = fut.result()
        summary.added += len(res.added)
        summary.added_ids += res.added
        summary.already_present += len(res.already_present)
        summary.notes_added += res.notes_added
        summary.failed += len(batch_failures)
        summary.errors += [(f.path, f.reason) for f in batch_failures]

    def flush():
        nonlocal pending, present, failures, pending_notes, last_flush, in_flight
        if not (pending or present or failures):
            return
        collect()
        in_flight = (writer.submit(write_batch, db_dir, pending, present, failures), failures)
        pending, present, failures, pending_notes = [], [], [], 0
        last_flush = time.monotonic()

    done = 0
    try:
        for res in _results(found.files, known, workers):
            done += 1
            if isinstance(res, ParsedPiece):
                pending.append(res)
                pending_notes += res.tables["notes"].num_rows
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
        flush()
        collect()
    finally:
        writer.shutdown(wait=True)
    summary.store_seconds = time.perf_counter() - t0
    if derive and (summary.added or found.files):
        from ingest.derived import run_stages

        summary.derived = run_stages(db_dir, progress=stage_progress)
    summary.seconds = time.perf_counter() - t0
    return summary
