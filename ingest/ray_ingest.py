"""``atlas ingest --ray``: the per-file parse and the per-piece derived stages as Ray tasks.

What runs where (docs/scale-out.md):

- **Ray tasks** read, hash and parse the files: a task takes a group of MIDI files (or
  one audio file, decoded in a supervised subprocess under ``--file-timeout`` exactly as
  a local ingest does) through :func:`ingest.pipeline.process_file` and writes its pieces'
  tables as Parquet under the staging folder. Ray tasks also run ``compute_rows`` of the
  derived stages that compute each piece on its own (harmony, vectors, patterns; see
  ``ingest.derived``) on inputs the driver reads from DuckDB, and stage the rows as Parquet
  (the pool of ``ingest.stage_pool``, which a large local ingest runs in worker processes).
- **The driver** (this process) finds the files, reads the staged Parquet back and writes
  it into DuckDB with the same transactions as a local ingest (``atlas_db.store.write_batch``
  for the files, ``ingest.derived.run_batch`` per stage batch, so ``ingest_errors``,
  ``derived_runs`` and ``derived_failures`` come out the same), upserts the vectors into
  Lance, and runs the grammar stage: Re-Pair over the corpus, where every increment
  depends on all the rules learned before, so it has no per-piece part to hand out. It
  runs first, while the Ray tasks compute.

The database holds the same rows as after a local ingest of the same files (tests/
test_ray_ingest.py compares every table). The staging folder must be on storage that the
workers and the driver share (default ``DB/.staging``); each run uses its own subfolder
and removes it at the end. Without an address a private single-node Ray instance is
started on 127.0.0.1 and stopped afterwards; with one (``HOST:PORT`` or ``auto``) the
driver joins that cluster, whose nodes need this package installed and the files and the
staging folder at the same paths.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from atlas_db.errors import BadInputError
from atlas_db.schema import TABLES
from atlas_db.store import Failure, ParsedPiece
from ingest import ctrl_c
from ingest.quiet_stderr import quiet_stderr
from ingest.sources import MIDI_SUFFIXES, stored_path

__all__ = ["RayEngine", "ray_engine", "ingest_paths_ray", "INSTALL_HINT"]

INSTALL_HINT = "pip install 'harmony-atlas[ray]'"
# MIDI files parsed by one task: a MIDI file parses in about a millisecond, so one task
# per file would cost more in scheduling than in work.
FILES_PER_TASK = 32
# Pieces per derived-stage task (a stage's batch of BATCH_PIECES is written in one
# transaction once all its tasks are in; ingest.stage_pool.MAX_ROWS_IN_FLIGHT bounds the
# input rows out at once).
PIECES_PER_TASK = 25


# --------------------------------------------------------------------------- Ray tasks

def _write_tables(tables: dict[str, pa.Table], out_dir: str) -> dict[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for name, tbl in tables.items():
        paths[name] = os.path.join(out_dir, f"{name}.parquet")
        pq.write_table(tbl, paths[name])
    return paths


def _parse_files(files: list[str], known: set[str], timeout_s: float | None, out_dir: str) -> list:
    """Ray task: parse ``files`` (``pipeline._results``: MIDI here, audio in a supervised
    subprocess) and stage the parsed pieces' tables as one Parquet file per table.

    Returns per file a ``Failure``, ``("present", piece_id, path)`` or ``("parsed",
    piece_id, sha256, path, {table: rows})``; the rows of each table are in that order."""
    from ingest.pipeline import _results

    out, parsed = [], []
    for res in _results(files, known, 1, timeout_s=timeout_s):
        if isinstance(res, ParsedPiece):
            parsed.append(res)
            counts = {k: t.num_rows for k, t in res.tables.items() if k != "pieces"}
            out.append(("parsed", res.piece_id, res.content_sha256, res.path, counts))
        else:
            out.append(res)
    if parsed:
        tables = {"pieces": pa.Table.from_pylist([p.tables["pieces"] for p in parsed], schema=TABLES["pieces"])}
        for name in dict.fromkeys(k for p in parsed for k in p.tables if k != "pieces"):
            tables[name] = pa.concat_tables([p.tables[name] for p in parsed if name in p.tables])
        _write_tables(tables, out_dir)
    return out


def _compute_rows(module: str, inputs: dict[str, pa.Table], piece_ids: list[str], out_dir: str):
    """Ray task: ``ingest.stage_pool.compute_chunk``, its rows staged as Parquet."""
    from ingest.stage_pool import compute_chunk

    rows, failed = compute_chunk(module, inputs, piece_ids)
    return _write_tables(rows, out_dir), failed


# --------------------------------------------------------------------------- the driver

def _one_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc  # RayTaskError wraps the task's own exception
    text = " ".join(str(cause).split())
    return f"{type(cause).__name__}: {text[:300]}" if text else type(cause).__name__


class RayEngine:
    """Runs an ingest's parse and per-piece derived work on a connected Ray instance
    (see :func:`ray_engine`); pass it to ``ingest.pipeline.ingest_paths(engine=...)``."""

    def __init__(self, ray, staging: Path):
        self.ray, self.staging = ray, Path(staging)
        self.cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))

    # ---- files

    def results(self, files, known, workers=None, *, timeout_s=None):
        """What ``process_file`` returns for each file, parsed by Ray tasks, in the order
        a local ingest gives (MIDI files in the order found, then audio), so that of two
        files with the same content the same one is stored as the piece's path. A task
        that dies (a worker lost, out of memory) is retried file by file, and a file whose
        own task dies is recorded as failed with the reason."""
        ray = self.ray
        task = ray.remote(num_cpus=1, max_retries=0)(_parse_files)
        known_ref = ray.put(set(known))
        light = [f for f in files if f.lower().endswith(MIDI_SUFFIXES)]
        groups = [light[i : i + FILES_PER_TASK] for i in range(0, len(light), FILES_PER_TASK)]
        groups += [[f] for f in files if not f.lower().endswith(MIDI_SUFFIXES)]
        queue = [((k,), g) for k, g in reversed(list(enumerate(groups)))]  # popped from the end
        waiting = [key for key, _ in reversed(queue)]  # keys not yielded yet, in order
        finished: dict[tuple, tuple] = {}  # key -> (task output, its staging folder)
        running: dict = {}
        # (tasks still out when the run stops are left to Ray: _RayPool.cancel)
        while waiting:
            while queue and len(running) < 2 * self.cpus:
                key, group = queue.pop()
                out_dir = self.staging / "parse" / "-".join(f"{k:06d}" for k in key)
                running[task.remote(group, known_ref, timeout_s, str(out_dir))] = (key, group, out_dir)
            ready, _ = ray.wait(list(running), num_returns=1)
            key, group, out_dir = running.pop(ready[0])
            try:
                finished[key] = (ray.get(ready[0]), out_dir)
            except ray.exceptions.RayError as e:
                shutil.rmtree(out_dir, ignore_errors=True)
                if len(group) > 1:  # again, one file per task, in the same place of the order
                    at = waiting.index(key)
                    retries = [(key + (j,), [f]) for j, f in enumerate(group)]
                    waiting[at : at + 1] = [k for k, _ in retries]
                    queue += reversed(retries)
                else:
                    reason = f"the Ray task parsing it failed ({_one_line(e)})"
                    finished[key] = ([Failure(stored_path(group[0]), reason)], None)
            while waiting and waiting[0] in finished:
                out, out_dir = finished.pop(waiting.pop(0))
                yield from _read_parsed(out, out_dir)
                if out_dir is not None:
                    shutil.rmtree(out_dir, ignore_errors=True)

    # ---- derived stages

    def run_stages(self, db_dir, *, progress=None, on_failure=None) -> dict[str, int]:
        """``ingest.derived.run_stages`` with the stages that have ``compute_rows``
        computed by Ray tasks (``ingest.stage_pool``); the others (the grammar) run here
        while the tasks compute."""
        from ingest.stage_pool import run_stages_pooled

        return run_stages_pooled(db_dir, _RayPool(self), progress=progress, on_failure=on_failure)


def _read_parsed(out: list, out_dir: Path):
    """The results of one parse task, with each parsed piece's rows sliced from the
    staged tables."""
    parsed = [r for r in out if isinstance(r, tuple) and r[0] == "parsed"]
    tables = {p.stem: pq.read_table(p) for p in out_dir.glob("*.parquet")} if parsed else {}
    pieces = tables.pop("pieces").to_pylist() if parsed else []
    offsets = dict.fromkeys(tables, 0)
    i = 0
    for r in out:
        if not (isinstance(r, tuple) and r[0] == "parsed"):
            yield r
            continue
        _, pid, sha, path, counts = r
        piece_tables = {"pieces": pieces[i]}
        i += 1
        for name, rows in counts.items():
            piece_tables[name] = tables[name].slice(offsets[name], rows)
            offsets[name] += rows
        yield ParsedPiece(pid, sha, path, piece_tables)


class _RayPool:
    """``ingest.stage_pool``'s pool as Ray tasks, which stage their rows as Parquet."""

    pieces_per_task = PIECES_PER_TASK

    def __init__(self, engine: RayEngine):
        self.engine, self.ray = engine, engine.ray
        self.task = self.ray.remote(num_cpus=1, max_retries=0)(_compute_rows)
        self.lost = (self.ray.exceptions.RayError,)
        self.n = 0

    def submit(self, module: str, inputs: dict[str, pa.Table], piece_ids: list[str]):
        self.n += 1
        out_dir = self.engine.staging / module.rpartition(".")[2] / f"{self.n:06d}"
        return self.task.remote(module, inputs, piece_ids, str(out_dir)), out_dir

    def result(self, handle):
        ref, out_dir = handle
        try:
            paths, failed = self.ray.get(ref)
            return {name: pq.read_table(p) for name, p in paths.items()}, failed
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)

    def steal(self, handle) -> bool:
        return False  # the cluster computes every task; the driver only writes

    def cancel(self, handles) -> None:
        """Nothing. Tasks still out when a run stops (Ctrl-C, an error) are left to Ray:
        stopping the private instance, or this driver leaving a cluster, ends its job's
        tasks. ``ray.cancel(force=True)`` aborted the driver about 1 time in 12 when a
        task's reply came in meanwhile (Ray 2.60: "task_manager.cc:1329: An unexpected
        system state has occurred", exit status 1, its processes left running)."""


# --------------------------------------------------------------------------- connecting

def _import_ray(local: bool):
    if local:
        # A private instance: single node, every socket on 127.0.0.1 (not the address
        # the machine shows to the network), and no usage report sent anywhere.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise BadInputError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def _check_reachable(address: str) -> None:
    """A quick TCP check of HOST:PORT (for ``auto``: of the cluster Ray would pick, from
    $RAY_ADDRESS or the last one started here), so an unreachable cluster is one clear
    line at once rather than Ray's minutes of retries."""
    shown = address
    if address == "auto":
        try:
            from ray._private.services import get_ray_address_from_environment
        except ImportError:  # another Ray version: let ray.init look
            return
        try:
            address = get_ray_address_from_environment("auto", None)
        except ConnectionError:
            raise BadInputError("--ray auto: no running Ray cluster found on this machine") from None
        shown = f"auto ({address})"
    if address == "auto" or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise BadInputError(f"--ray {shown}: not a Ray cluster address (HOST:PORT, e.g. 127.0.0.1:6379, or auto)")
    if not 0 < int(port) < 65536:
        raise BadInputError(f"--ray {shown}: {port} is not a port number (1-65535)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5) as sock:
            speaks_grpc = os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true") or _answers_http2(sock)
    except OSError as e:
        raise BadInputError(f"--ray {shown}: cannot reach a Ray cluster there ({e.strerror or e})") from None
    if not speaks_grpc:
        raise BadInputError(f"--ray {shown}: something listens there but it is not a Ray cluster (it does not "
                            "answer gRPC); give the head's GCS port that `ray start --head` printed "
                            "(6379 by default; 8265 is the dashboard)")
    _check_token(address, shown)


def _check_token(address: str, shown: str) -> None:
    """Ask the GCS for its cluster id once with Ray's own client: a head that wants a
    token this process lacks says so in milliseconds, where ``ray.init`` retries for
    ~20 s. Anything else this check cannot judge is left to ``ray.init``."""
    import threading

    try:
        from ray._raylet import GcsClient
        from ray.exceptions import AuthenticationError
    except ImportError:  # another Ray version
        return
    # the C++ client logs the refusal on fd 2 before it raises; no other thread runs yet
    # in an ingest, and if one does its writes must not be lost
    quiet = quiet_stderr() if threading.active_count() == 1 else contextlib.nullcontext()
    try:
        with quiet:
            GcsClient(address=address)
    except AuthenticationError:
        raise BadInputError(f"--ray {shown}: the cluster wants an authentication token and this process has "
                            "none or another one: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or "
                            "RAY_AUTH_TOKEN_PATH) to the head's token (`ray get-auth-token` on the head prints it)"
                            ) from None
    except Exception:  # noqa: BLE001 - not ours to judge: ray.init reports it in full
        return


def _answers_http2(sock: socket.socket) -> bool:
    """Whether the server on ``sock`` answers an HTTP/2 client preface with a SETTINGS
    frame, as Ray's GCS (a gRPC server) does; an HTTP/1 server, ssh or Ray's dashboard
    does not, and ``ray.init`` would retry against them for minutes."""
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # + empty SETTINGS
    try:
        sock.sendall(preface)
        header = b""
        while len(header) < 9:
            chunk = sock.recv(9 - len(header))
            if not chunk:
                return False
            header += chunk
    except (TimeoutError, OSError):
        return False
    return header[3] == 4  # the frame type byte: SETTINGS


@contextlib.contextmanager
def ray_engine(db_dir, address: str | None = None, *, staging_dir=None, num_cpus: int | None = None):
    """A :class:`RayEngine` on a private local Ray instance (``address`` None; ``num_cpus``
    its CPUs, default all) or on the cluster at ``address``; staged Parquet goes to a
    fresh subfolder of ``staging_dir`` (default ``DB/.staging``), removed at the end.
    If the process is already connected to Ray, that connection is used and kept."""
    ray = _import_ray(address is None)
    ours = not ray.is_initialized()
    if ours:
        if address is not None:
            _check_reachable(address)
        kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        try:
            with ctrl_c.deferred() as came:
                if address is None:
                    ray.init(address="local", num_cpus=num_cpus, **kwargs)
                else:
                    ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            hint = ("; if its head runs with RAY_AUTH_MODE=token, set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN "
                    "(or RAY_AUTH_TOKEN_PATH) to its token here too" if address else "")
            raise BadInputError(f"--ray: cannot connect to {where} ({_one_line(e)}){hint}") from None
        except BaseException:  # SIGTERM during ray.init (Ray's own handler: SystemExit): stop what started
            _shutdown(ray)
            raise
        if came:
            _shutdown(ray)
            raise KeyboardInterrupt
    root = Path(staging_dir) if staging_dir else Path(db_dir) / ".staging"
    run_dir = root / uuid.uuid4().hex[:12]
    created = [p for p in (root, *root.parents) if not p.exists()]  # removed at the end if still empty
    try:
        run_dir.mkdir(parents=True)
    except OSError as e:
        if ours:
            _shutdown(ray)
        raise BadInputError(f"{root}: cannot create the staging folder ({e.strerror or e})") from None
    try:
        with ctrl_c.terminate_as_ctrl_c():  # over Ray's own handler (installed by ray.init)
            yield RayEngine(ray, run_dir)
    finally:
        if ours:  # first: the tasks still out end with it, and write no more into the staging folder
            _shutdown(ray)
        shutil.rmtree(run_dir, ignore_errors=True)
        for folder in created:  # a folder the user made stays; ours only if no other run uses it
            with contextlib.suppress(OSError):
                folder.rmdir()


def _shutdown(ray) -> None:
    """``ray.shutdown()`` with Ctrl-C held until it is done (see :func:`ingest.ctrl_c.deferred`).
    A Ctrl-C meanwhile is dropped: Ray is being stopped anyway, and the run's own outcome
    (its summary, or the interrupt or error that stopped it) is what the user is told."""
    with ctrl_c.deferred():
        ray.shutdown()


def ingest_paths_ray(paths, db_dir, *, address: str | None = None, staging_dir=None, num_cpus=None, **kwargs):
    """``ingest.pipeline.ingest_paths`` with the work on Ray (see the module doc); takes
    the same keyword arguments (``workers`` is unused: Ray schedules the tasks)."""
    from ingest.pipeline import check_db_dir, ingest_paths

    check_db_dir(db_dir)  # before the seconds Ray takes to start
    created = not Path(db_dir).exists()
    t0 = time.perf_counter()
    try:
        with ray_engine(db_dir, address, staging_dir=staging_dir, num_cpus=num_cpus) as engine:
            startup_s = time.perf_counter() - t0
            summary = ingest_paths(paths, db_dir, engine=engine, **kwargs)
            summary.seconds += startup_s  # the summary line counts Ray's start as part of storing
            summary.store_seconds += startup_s
            return summary
    finally:
        if created:
            with contextlib.suppress(OSError):
                Path(db_dir).rmdir()  # nothing was written: leave no empty folder, as a local ingest
