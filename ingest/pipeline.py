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
from dataclasses import dataclass, field
from pathlib import Path

from atlas_db.errors import AtlasError, IngestError
from atlas_db.store import Failure, ParsedPiece, known_piece_ids, write_batch
from ingest.sources import discover

__all__ = ["IngestSummary", "ingest_paths", "process_file", "piece_id_for"]

# Flush a batch when it holds this many notes or files, or has waited this long.
BATCH_NOTES = 400_000
BATCH_FILES = 1_000
BATCH_WAIT_S = 2.0
# Below this many files, start no worker processes (their start-up costs more).
MIN_FILES_FOR_WORKERS = 48


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

    def line(self) -> str:
        rate = self.notes_added / self.seconds if self.seconds > 0 else 0.0
        s = (
            f"added {self.added} files ({self.notes_added:,} notes), "
            f"{self.already_present} already present, {self.failed} failed, "
            f"in {self.seconds:.1f} s ({rate / 1e6:.2f}M notes/s)"
        )
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
        tables = parse_midi(data, piece_id=pid, path=path)
    except IngestError as e:
        return Failure(path, e.reason, sha)
    except Exception as e:  # a decoder bug must not stop the batch; say what it was
        return Failure(path, f"unexpected parser error: {type(e).__name__}: {e}", sha)
    return ParsedPiece(pid, sha, path, tables)


def _results(files, known, workers):
    if workers <= 1 or len(files) < MIN_FILES_FOR_WORKERS:
        for f in files:
            yield process_file(f, known)
        return
    # spawn, not fork: the parent may hold DuckDB threads, which fork does not copy safely.
    ctx = mp.get_context("spawn")
    chunk = max(1, min(32, len(files) // (workers * 8)))
    with ctx.Pool(workers, initializer=_init_worker, initargs=(known,)) as pool:
        yield from pool.imap(process_file, files, chunksize=chunk)


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
    workers = default_workers() if workers is None else workers
    found = discover(paths)
    summary = IngestSummary(skipped_other=found.skipped_other)
    failures: list[Failure] = [Failure(p, r) for p, r in found.problems]
    for f in failures:
        if on_error:
            on_error(f.path, f.reason)
    known = known_piece_ids(db_dir)
    pending: list[ParsedPiece] = []
    present: list[tuple[str, str]] = []
    pending_notes = 0
    last_flush = time.monotonic()

    def flush():
        nonlocal pending, present, failures, pending_notes, last_flush
        if not (pending or present or failures):
            return
        res = write_batch(db_dir, pending, present, failures)
        summary.added += len(res.added)
        summary.added_ids += res.added
        summary.already_present += len(res.already_present)
        summary.notes_added += res.notes_added
        summary.failed += len(failures)
        summary.errors += [(f.path, f.reason) for f in failures]
        pending, present, failures, pending_notes = [], [], [], 0
        last_flush = time.monotonic()

    done = 0
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
    if derive and (summary.added or found.files):
        from ingest.derived import run_stages

        summary.derived = run_stages(db_dir, progress=stage_progress)
    summary.seconds = time.perf_counter() - t0
    return summary
