"""atlas ingest --ray: the database is the same as after a local ingest (every DuckDB and
Lance table compared), on a Ray cluster the test starts on 127.0.0.1; a bad file gets its
one line and its ingest_errors row; Ray missing or unreachable is one clear line."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pytest

from atlas_db.connection import reading
from conftest import dump_tables, pop909_songs
from ingest.pipeline import ingest_paths

ATLAS = [sys.executable, "-m", "query.cli"]
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="ray is not installed (pip install 'harmony-atlas[ray]')")
# Everything on loopback, nothing reported anywhere, a token of our own: for the cluster
# the test starts, for this process (the driver) and for the `atlas` it runs.
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


def dump(db) -> dict[str, list]:
    """Every row of every DuckDB table (timestamps left out) and of every Lance table,
    in a canonical order."""
    from indexers.vectors import open_lance, table_names

    out = dump_tables(db)
    ldb = open_lance(db)
    for name in table_names(ldb):
        rows = ldb.open_table(name).to_arrow().to_pylist()
        out[f"lance.{name}"] = sorted(rows, key=lambda r: (r["piece_id"], r.get("track_index", -1)))
    return out


def corpus(tmp_path) -> Path:
    """Four POP909 songs with their versions, one file twice under another name, one bad file."""
    src = tmp_path / "files"
    for song in pop909_songs(4):
        shutil.copytree(song, src / song.name)
    first = next(iter(sorted(src.rglob("*.mid"))))
    shutil.copy(first, src / "copy of first.mid")
    (src / "broken.mid").write_bytes(b"MThd\x00\x00")
    return src


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A two-CPU Ray head on 127.0.0.1 in its own process (stopped with it); yields its address."""
    for k, v in RAY_ENV.items():
        os.environ.setdefault(k, v)
    env = {**os.environ, **RAY_ENV}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path_factory.mktemp("ray") / "head.log", "w")
    # Ray's session files in a folder of ours (short: Ray's socket paths must stay short),
    # so nothing of this cluster is left in /tmp/ray for `ray.init()` to find later
    temp_dir = tempfile.mkdtemp(prefix="atlas-ray-", dir="/tmp")
    ray_bin = Path(sys.executable).with_name("ray")
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if head.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the Ray head did not start (see {log.name})")
                time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        head.terminate()  # `ray start --block` stops every process it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


@needs_ray
def test_ray_ingest_writes_what_a_local_ingest_writes(tmp_path, ray_cluster, monkeypatch):
    import ingest.ray_ingest as ri
    from ingest import harmony, pattern_index, stage_pool
    from indexers import vectors

    src = corpus(tmp_path)
    local = ingest_paths([str(src)], tmp_path / "local", workers=1)
    # small groups, tasks, batches and window, so each path through the driver is taken
    monkeypatch.setattr(ri, "FILES_PER_TASK", 4)
    monkeypatch.setattr(ri, "PIECES_PER_TASK", 3)
    monkeypatch.setattr(stage_pool, "MAX_ROWS_IN_FLIGHT", 1)
    for stage in (harmony, vectors, pattern_index):
        monkeypatch.setattr(stage, "BATCH_PIECES", 7)
    errors = []
    on_ray = ri.ingest_paths_ray([str(src)], tmp_path / "ray", address=ray_cluster,
                                 on_error=lambda path, reason: errors.append((path, reason)))
    assert (on_ray.added, on_ray.already_present, on_ray.failed) == (local.added, local.already_present, 1)
    assert local.added > 12 and set(on_ray.derived) == {"harmony", "grammar", "vectors", "patterns"}
    assert errors == [(str(src / "broken.mid"), "truncated: header chunk is shorter than 14 bytes")]
    a, b = dump(tmp_path / "local"), dump(tmp_path / "ray")
    assert a.keys() == b.keys()
    for name in a:
        assert a[name] == b[name], f"table {name} differs between the local and the Ray ingest"
    for name in ("notes", "chords", "cover_features", "pattern_ngrams", "occurrences", "lance.track_vectors"):
        assert a[name], name  # the comparison covered real rows
    assert [(r[0], r[2]) for r in b["ingest_errors"]] == [
        (str(src / "broken.mid"), "truncated: header chunk is shorter than 14 bytes")]
    assert not (tmp_path / "ray" / ".staging").exists()  # the staged Parquet is removed

    # one new file, incrementally: only it is parsed and analysed, and both agree again
    fifth = pop909_songs(5)[-1]
    shutil.copy(fifth / f"{fifth.name}.mid", src / "new.mid")
    ingest_paths([str(src)], tmp_path / "local", workers=1)
    shared = tmp_path / "shared"
    shared.mkdir()  # the user's own staging folder stays; the folders made under it go
    again = ri.ingest_paths_ray([str(src)], tmp_path / "ray", address=ray_cluster, staging_dir=shared / "a" / "b")
    assert (again.added, again.already_present) == (1, local.added + local.already_present)
    assert again.derived == {"harmony": 1, "grammar": 1, "vectors": 1, "patterns": 1}
    assert dump(tmp_path / "local") == dump(tmp_path / "ray")
    assert shared.is_dir() and list(shared.iterdir()) == []


@needs_ray
def test_a_recording_under_ray_is_stored_as_locally(tmp_path, ray_cluster):
    """Audio is decoded in a supervised subprocess inside the Ray task: same tables."""
    for module in ("essentia", "basic_pitch", "soundfile"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} not installed (pip install '.[audio]'; basic-pitch with --no-deps)")
    from audio_fixtures import fluidsynth_missing, render_midi
    import soundfile as sf

    from ingest.ray_ingest import ingest_paths_ray

    if fluidsynth_missing():
        pytest.skip(fluidsynth_missing())
    src = tmp_path / "in"
    src.mkdir()
    song = pop909_songs(1)[0]
    render_midi(song / f"{song.name}.mid", tmp_path / "full.wav")
    y, sr = sf.read(tmp_path / "full.wav")
    sf.write(src / "song.wav", y[: 20 * sr], sr)
    (src / "broken.wav").write_bytes(b"RIFF0000WAVEjunk")
    local = ingest_paths([str(src)], tmp_path / "local", workers=1)
    on_ray = ingest_paths_ray([str(src)], tmp_path / "ray", address=ray_cluster)
    assert (local.added, local.failed) == (on_ray.added, on_ray.failed) == (1, 1)
    a, b = dump(tmp_path / "local"), dump(tmp_path / "ray")
    assert a["audio_beats"] and a["features"] and a["notes"] and a["ingest_errors"]
    assert a == b


@needs_ray
def test_cli_ray_on_a_private_local_instance_reports_a_bad_file(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    song = pop909_songs(1)[0]
    shutil.copy(song / f"{song.name}.mid", src / "good.mid")
    (src / "broken.mid").write_bytes(b"not a midi file at all")
    db = tmp_path / "db"
    env = {**os.environ, **RAY_ENV}
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run([*ATLAS, "ingest", str(src), "--db", str(db), "--ray", "--workers", "2"],
                       capture_output=True, text=True, env=env, cwd=Path(__file__).parents[1], timeout=600)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert f"atlas: failed: {src / 'broken.mid'}: not a MIDI file (no 'MThd' header)" in lines, r.stderr
    assert lines[-1].startswith("atlas: added 1 file ") and "1 failed" in lines[-1]
    assert "Traceback" not in r.stderr and r.stdout == ""
    with reading(db) as con:
        assert con.execute("SELECT path, reason FROM ingest_errors").fetchall() == [
            (str(src / "broken.mid"), "not a MIDI file (no 'MThd' header)")]
        assert con.execute("SELECT count(*) FROM derived_runs").fetchone()[0] == 4
    # no staging left behind (Lance is filled when it is first opened: indexers.vectors)
    assert sorted(p.name for p in db.iterdir()) == ["atlas.duckdb"]


def test_ray_missing_or_unreachable_is_one_line(tmp_path, monkeypatch):
    song = pop909_songs(1)[0] / f"{pop909_songs(1)[0].name}.mid"
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = subprocess.run([*ATLAS, "ingest", str(song), "--db", str(tmp_path / "db"), "--ray", f"127.0.0.1:{port}"],
                       capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=120)
    if importlib.util.find_spec("ray") is None:
        expected = "atlas: error: --ray needs Ray, which is not installed: pip install 'harmony-atlas[ray]'"
    else:
        expected = f"atlas: error: --ray 127.0.0.1:{port}: cannot reach a Ray cluster there (Connection refused)"
    assert (r.returncode, r.stderr.strip()) == (2, expected)
    assert not (tmp_path / "db").exists()
    r = subprocess.run([*ATLAS, "ingest", str(song), "--db", str(tmp_path / "db"), "--staging", str(tmp_path)],
                       capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=120)
    assert r.returncode == 2 and "--staging is the Ray workers' shared folder: it needs --ray." in r.stderr
    assert not (tmp_path / "db").exists()

    from atlas_db.errors import BadInputError
    from ingest.ray_ingest import ingest_paths_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    with pytest.raises(BadInputError, match=r"not installed: pip install 'harmony-atlas\[ray\]'"):
        ingest_paths_ray([str(song)], tmp_path / "db")
    assert not (tmp_path / "db").exists()


def test_a_failing_piece_is_isolated_inside_a_task(tmp_path, monkeypatch):
    """The task body (run here, without Ray): a piece whose computation fails is returned
    with its reason, the others' rows are staged as if the failing piece were absent."""
    import types

    from ingest.ray_ingest import _compute_rows

    stage = types.ModuleType("fake_stage")

    def compute_rows(inputs, piece_ids):
        t = inputs["notes"]
        if "bad" in t.column("piece_id").to_pylist():
            raise ValueError("no notes\nat all")
        return {"out": t}

    stage.compute_rows = compute_rows
    monkeypatch.setitem(sys.modules, "fake_stage", stage)
    notes = pa.table({"piece_id": ["a", "a", "bad", "c"], "pitch": [60, 62, 64, 65]})
    paths, failed = _compute_rows("fake_stage", {"notes": notes}, ["a", "bad", "c"], str(tmp_path / "out"))
    assert failed == {"bad": "ValueError: no notes at all"}
    import pyarrow.parquet as pq

    assert pq.read_table(paths["out"]).to_pydict() == {"piece_id": ["a", "a", "c"], "pitch": [60, 62, 65]}



@needs_ray
def test_a_port_that_is_not_a_ray_cluster_is_one_line(tmp_path):
    """An HTTP server where the head's port should be (the dashboard's 8265 by mistake):
    one line within seconds, not ray.init's minutes of retries."""
    import http.server
    import threading

    song = pop909_songs(1)[0] / f"{pop909_songs(1)[0].name}.mid"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        r = subprocess.run([*ATLAS, "ingest", str(song), "--db", str(tmp_path / "db"), "--ray", f"127.0.0.1:{port}"],
                           capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=60)
    finally:
        server.shutdown()
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == (f"atlas: error: --ray 127.0.0.1:{port}: something listens there but it is not a "
                                "Ray cluster (it does not answer gRPC); give the head's GCS port that `ray start "
                                "--head` printed (6379 by default; 8265 is the dashboard)")
    r = subprocess.run([*ATLAS, "ingest", str(song), "--db", str(tmp_path / "db"), "--ray", "127.0.0.1:99999"],
                       capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=60)
    assert r.stderr.strip() == "atlas: error: --ray 127.0.0.1:99999: 99999 is not a port number (1-65535)"
    assert not (tmp_path / "db").exists()


@needs_ray
@pytest.mark.parametrize("token", [None, "0" * 64])
def test_a_cluster_that_wants_another_token_is_one_line(tmp_path, ray_cluster, token):
    """The test's head runs with RAY_AUTH_MODE=token: without its token (or with another)
    one line at once, not ray.init's ~20 s of retries and warnings from Ray's C++ client."""
    song = pop909_songs(1)[0] / f"{pop909_songs(1)[0].name}.mid"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    env["NUMBA_CACHE_DIR"] = os.environ.get("NUMBA_CACHE_DIR", str(Path.home() / ".cache/harmony-atlas/numba"))
    if token:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    r = subprocess.run([*ATLAS, "ingest", str(song), "--db", str(tmp_path / "db"), "--ray", ray_cluster],
                       capture_output=True, text=True, cwd=Path(__file__).parents[1], env=env, timeout=120)
    assert (r.returncode, r.stderr.strip()) == (2, (
        f"atlas: error: --ray {ray_cluster}: the cluster wants an authentication token and this process has none "
        "or another one: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the head's token "
        "(`ray get-auth-token` on the head prints it)"))
    assert not (tmp_path / "db").exists()


def _session_processes(sid: int) -> list[str]:
    out = subprocess.run(["ps", "-ww", "-eo", "sid=,stat=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.split()[0] == str(sid) and not line.split()[1].startswith("Z")]


@needs_ray
@pytest.mark.parametrize("signum, started", [
    # Ctrl-C while the private Ray instance is starting (its raylet has started its
    # agents, ray.init has not returned): the agents kept running, and Ray's exit hook
    # sometimes crashed with SIGSEGV
    (signal.SIGINT, ("DashboardAgent", "dashboard/agent.py")),
    # SIGTERM once Ray runs (the database is there): Ray's own handler printed a crash
    # dump ("*** SIGTERM received ...", exit status 134 once)
    (signal.SIGTERM, None),
])
def test_ctrl_c_or_sigterm_under_ray_stops_ray(tmp_path, signum, started):
    """The interrupt line, exit 130, and no Ray process left behind."""
    env = {**os.environ, **RAY_ENV}
    env.pop("RAY_ADDRESS", None)
    p = subprocess.Popen([*ATLAS, "ingest", *map(str, pop909_songs(40)), "--db", str(tmp_path / "db"), "--ray"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         cwd=Path(__file__).parents[1], start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (any(w in line for line in _session_processes(p.pid) for w in started) if started
                   else (tmp_path / "db" / "atlas.duckdb").exists()):
            assert p.poll() is None and time.monotonic() < deadline, f"{started or 'the database'} did not come"
            time.sleep(0.02)
        p.send_signal(signum)
        _, err = p.communicate(timeout=120)
        assert p.returncode == 130, err
        assert err.strip().splitlines()[-1].startswith("atlas: interrupted"), err
        assert "Traceback" not in err and "SIGTERM received" not in err, err
        deadline = time.monotonic() + 30  # Ray's processes exit on their own once told to
        while _session_processes(p.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _session_processes(p.pid) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
