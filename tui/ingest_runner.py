"""Ingestion from the TUI, in a child process.

``python -m tui.ingest_runner DB PATH...`` runs :func:`ingest.pipeline.ingest_paths` and
writes its progress callbacks to stdout as JSON lines; :func:`run_ingest` (called from a
TUI worker thread) starts it and turns the lines into events. A child process keeps the
parser's CPU work and DuckDB's write lock out of the UI process (DuckDB refuses a writer
and readers on one file inside one process), and cancelling is terminating it:
everything committed before stays, since ingestion commits batch by batch.

A plain subprocess rather than multiprocessing: the TUI replaces ``sys.stderr``, which
multiprocessing's spawn start-up tries to hand down.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import tempfile

__all__ = ["run_ingest"]


def _child(db_dir: str, paths: list[str]) -> int:
    # The protocol owns the real stdout; anything else printed goes to stderr.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def send(*ev) -> None:
        out.write(json.dumps(ev) + "\n")

    from atlas_db.errors import AtlasError
    from ingest.pipeline import ingest_paths

    try:
        s = ingest_paths(
            paths,
            db_dir,
            progress=lambda done, total, notes: send("files", done, total, notes),
            on_error=lambda path, reason: send("error", path, reason),
            stage_progress=lambda stage, done, total: send("stage", stage, done, total),
            on_stage_failure=lambda stage, pid, reason: send("error", f"piece {pid} ({stage} stage)", reason),
        )
        send("done", {"added": s.added, "already_present": s.already_present, "failed": s.failed,
                      "notes_added": s.notes_added, "seconds": s.seconds,
                      "line": "\n".join([s.line(), *(n.removeprefix("atlas: ") for n in s.notes)]),
                      "added_ids": list(s.added_ids)})
    except AtlasError as e:
        send("failed", str(e))
    except Exception as e:  # noqa: BLE001 - the parent shows it; the UI must not die
        send("failed", f"{type(e).__name__}: {e}")
    return 0


def run_ingest(paths, db_dir, on_event, should_stop, *, poll_s: float = 0.1):
    """Ingest ``paths`` into ``db_dir`` in a child process; blocks until it ends.

    on_event(event): called in this thread for each ``("files", done, total, notes)``,
    ``("stage", name, done, total)`` and ``("error", path, reason)``.
    should_stop(): polled every ``poll_s`` seconds; True terminates the child.
    Returns ``("done", summary_dict)``, ``("failed", message)`` or ``("cancelled",)``.
    """
    cmd = [sys.executable, "-m", "tui.ingest_runner", str(db_dir), *[str(p) for p in paths]]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                text=True, bufsize=1)
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        try:
            while True:
                if should_stop():
                    proc.terminate()
                    proc.wait()
                    return ("cancelled",)
                if not sel.select(timeout=poll_s):
                    continue
                line = proc.stdout.readline()
                if not line:  # the child ended without saying done
                    code = proc.wait()
                    err.seek(0)
                    tail = err.read().decode(errors="replace").strip().splitlines()[-1:]
                    return ("failed", f"the ingest process ended with exit code {code}"
                            + (f": {tail[0]}" if tail else ""))
                ev = json.loads(line)
                if ev[0] in ("done", "failed"):
                    return tuple(ev)
                on_event(tuple(ev))
        finally:
            sel.close()
            if proc.poll() is None:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            proc.stdout.close()


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], sys.argv[2:]))
