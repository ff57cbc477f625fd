"""Reliability (issue #12): poisoned files, odd names, FIFOs, absurd audio, Ctrl-C at every
stage, a full disk and a corrupt database each end in one clear line, and nothing stored
is lost or half-written."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mido
import pytest

from atlas_db.connection import reading
from ingest import derived
from ingest.derived import pending_pieces, run_stages
from ingest.pipeline import ingest_paths
from midi_fixtures import Track, melody, write_midi

ROOT = Path(__file__).resolve().parents[1]
ATLAS = [sys.executable, "-m", "query.cli"]
STAGES = [m.STAGE for m in derived.stages()]


def atlas(*args, timeout=300, **kw):
    return subprocess.run([*ATLAS, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout, **kw)


def one_line(stderr: str) -> bool:
    return "Traceback" not in stderr and len([ln for ln in stderr.splitlines() if ln.strip()]) >= 1


def tune(path, transpose=0):
    return write_midi(path, [Track(melody([60 + transpose + d for d in (0, 2, 4, 5, 7, 5, 4, 2, 0)]), name="t")])


def poisoned(path) -> Path:
    """The audit's file: 1 tick per beat, two notes 2**27 ticks apart (48 bytes)."""
    mf = mido.MidiFile(ticks_per_beat=1)
    tr = mido.MidiTrack()
    mf.tracks.append(tr)
    tr += [mido.Message("note_on", note=60, velocity=64, time=0),
           mido.Message("note_off", note=60, velocity=0, time=2**27 - 1),
           mido.Message("note_on", note=62, velocity=64, time=2**27 - 1),
           mido.Message("note_off", note=62, velocity=0, time=1)]
    mf.save(path)
    return Path(path)


def counts(db) -> dict[str, int]:
    with reading(db) as con:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("pieces", "notes", "ingest_errors", "derived_runs", "derived_failures")}


def test_poisoned_file_is_refused_and_the_batch_goes_on(tmp_path):
    folder = tmp_path / "in"
    tune(folder / "a.mid")
    tune(folder / "b.mid", 3)
    poisoned(folder / "poison.mid")
    db = tmp_path / "db"
    r = atlas("ingest", str(folder), "--db", str(db))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"atlas: failed: {folder / 'poison.mid'}: implausibly long: 268,435,455 beats (limit 250,000)" in r.stderr
    c = counts(db)
    assert (c["pieces"], c["ingest_errors"], c["derived_failures"]) == (2, 1, 0)
    assert c["derived_runs"] == 2 * len(STAGES)  # the good files got every stage


def test_database_poisoned_before_the_limits_recovers(tmp_path, monkeypatch):
    """A piece stored by an older version (no size check at parse time) is recorded as a
    failure of each stage instead of crashing every later ingest."""
    import ingest.midi_parse as mp

    db = tmp_path / "db"
    tune(tmp_path / "a.mid")
    poisoned(tmp_path / "poison.mid")
    with monkeypatch.context() as m:
        m.setattr(mp, "size_problem", lambda *a: None)
        s = ingest_paths([str(tmp_path / "a.mid"), str(tmp_path / "poison.mid")], db, derive=False)
    assert s.added == 2
    failures = []
    run_stages(db, on_failure=lambda *f: failures.append(f))
    assert {f[0] for f in failures} == set(STAGES) and all("implausibly long" in f[2] for f in failures)
    with reading(db) as con:
        bad = con.execute("SELECT piece_id FROM pieces WHERE n_notes = 2").fetchone()[0]
        assert {(r[0]) for r in con.execute("SELECT DISTINCT piece_id FROM derived_failures").fetchall()} == {bad}
        assert con.execute("SELECT count(*) FROM derived_runs").fetchone()[0] == len(STAGES)
        assert all(pending_pieces(con, st) == [] for st in derived.stages())  # not retried
    # a later ingest is not blocked by it
    tune(tmp_path / "c.mid", 5)
    s = ingest_paths([str(tmp_path / "c.mid")], db)
    assert s.added == 1 and s.stage_failures == [] and counts(db)["derived_runs"] == 2 * len(STAGES)


class _FailsOnOnePiece:
    """A derived stage whose code raises on one piece (by title), as a buggy stage would."""

    STAGE, VERSION, BATCH_PIECES = "fails_on_one", "1", 50
    bad_title = "b"

    @classmethod
    def update(cls, con, ids):
        titles = dict(con.execute("SELECT piece_id, title FROM pieces WHERE piece_id IN (SELECT unnest(?))",
                                  [ids]).fetchall())
        if cls.bad_title in titles.values():
            raise ValueError("cannot analyse this\npiece")
        con.execute("CREATE TABLE IF NOT EXISTS fails_on_one_rows (piece_id VARCHAR)")
        con.execute("INSERT INTO fails_on_one_rows SELECT unnest(?)", [ids])


def test_a_stage_that_fails_on_one_piece_costs_only_that_piece(tmp_path, monkeypatch):
    db = tmp_path / "db"
    files = [tune(tmp_path / f"{n}.mid", i) for i, n in enumerate("abcdefg")]
    ingest_paths([str(f) for f in files], db)
    monkeypatch.setattr(derived, "stages", lambda: [_FailsOnOnePiece])
    failures = []
    run_stages(db, on_failure=lambda *f: failures.append(f))
    assert len(failures) == 1 and failures[0][0] == "fails_on_one"
    assert failures[0][2] == "ValueError: cannot analyse this piece"  # one line
    with reading(db) as con:
        done = con.execute("SELECT count(*) FROM derived_runs WHERE stage = 'fails_on_one'").fetchone()[0]
        rows = con.execute("SELECT count(DISTINCT piece_id) FROM fails_on_one_rows").fetchone()[0]
        failed = con.execute("SELECT p.title FROM derived_failures f JOIN pieces p USING (piece_id)").fetchall()
    assert (done, rows, failed) == (6, 6, [("b",)])
    assert run_stages(db) == {"fails_on_one": 0}  # recorded, not retried on every ingest
    # a new version of the stage retries it, and success clears the failure
    monkeypatch.setattr(_FailsOnOnePiece, "VERSION", "2")
    monkeypatch.setattr(_FailsOnOnePiece, "bad_title", "none")
    assert run_stages(db, redo_old_versions=True) == {"fails_on_one": 7}
    assert counts(db)["derived_failures"] == 0


def test_odd_file_names_and_fifos(tmp_path):
    folder = tmp_path / "in"
    tune(folder / "good.mid")
    odd = os.fsdecode(bytes(folder) + b"/caf\xe9 latin-1.mid")  # not UTF-8
    shutil.copy(tune(tmp_path / "x.mid", 4), odd)
    (folder / "two\nlines.mid").write_bytes(b"MThd garbage")
    os.mkfifo(folder / "pipe.mid")
    os.mkfifo(tmp_path / "named.mid")
    db = tmp_path / "db"
    r = atlas("ingest", str(folder), str(tmp_path / "named.mid"), "--db", str(db), timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    assert f"atlas: failed: {folder / 'pipe.mid'}: not a regular file (a FIFO (named pipe))" in lines
    assert f"atlas: failed: {tmp_path / 'named.mid'}: not a regular file (a FIFO (named pipe))" in lines
    assert any(ln.startswith(f"atlas: failed: '{folder}/two\\nlines.mid': ") for ln in lines), lines
    with reading(db) as con:
        paths = sorted(r[0] for r in con.execute("SELECT path FROM piece_paths").fetchall())
        errors = con.execute("SELECT count(*) FROM ingest_errors").fetchone()[0]
    assert paths == [f"{folder}/caf\\xe9 latin-1.mid", f"{folder}/good.mid"]  # both stored, the odd one escaped
    assert errors == 3
    # and the escaped path finds the file again (stats --compression reads every file)
    from ingest.sources import file_path, stored_path

    assert file_path(paths[0]) == odd and file_path(paths[1]) == paths[1]
    odder = os.fsdecode(bytes(folder) + b"/\\x41 \xff.mid")  # a name's own '\x41' stays
    assert file_path(stored_path(odder)) == odder
    r = atlas("stats", "--compression", "--db", str(db), timeout=120)
    assert "files not found" not in r.stdout and "xz -9 of each .mid file" in r.stdout, r.stdout
    # the odd name as typed names the piece (DuckDB and Arrow refused its surrogate escapes)
    for args in (["export", odd, "-o", str(tmp_path / "back.mid")], ["covers", odd], ["similar", odd],
                 ["pattern", "+2 +2", "--piece", odd], ["progression", "I V", "--piece", odd]):
        r = atlas(*args, "--db", str(db), timeout=300)
        assert r.returncode == 0 and "Traceback" not in r.stderr, (args, r.stderr[-2000:])
    assert (tmp_path / "back.mid").stat().st_size > 0
    # a FIFO given as a query or motif file is one line too, instead of blocking on the read
    r = atlas("pattern", str(tmp_path / "named.mid"), "--db", str(db), timeout=60)
    assert r.returncode == 2 and r.stderr.strip().endswith("(not a regular file (a FIFO (named pipe)))"), r.stderr
    r = atlas("covers", str(tmp_path / "named.mid"), "--db", str(db), timeout=60)  # not a file: a piece name
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_time_signature_with_absurd_denominator_has_a_clear_reason(tmp_path):
    f = tune(tmp_path / "a.mid")
    data = bytearray(f.read_bytes())
    i = data.index(b"\xff\x58\x04")
    for exponent in (31, 255):
        data[i + 4] = exponent
        (tmp_path / "b.mid").write_bytes(bytes(data))
        s = ingest_paths([str(tmp_path / "b.mid")], tmp_path / "db", derive=False)
        assert s.errors == [(str(tmp_path / "b.mid"),
                             f"corrupt time signature in track 0 at tick 0: denominator 2^{exponent} "
                             "(expected 2^0-2^7, i.e. 1-128)")]


def _ingest_then_interrupt(files, db, when) -> subprocess.CompletedProcess:
    """Start `atlas ingest`, send Ctrl-C (SIGINT) once ``when(db)`` holds, collect it."""
    # the ingest's writer lets readers in between batches (the derived stages hold their
    # connection up to 10 s: then ``when`` could only look once they are done)
    env = {**os.environ, "ATLAS_BATCH_FILES": "5", "ATLAS_WRITER_BULK_HOLD_S": "1"}
    proc = subprocess.Popen([*ATLAS, "ingest", *files, "--db", str(db)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # the database is not there yet, or the writer holds it
            if when(db):
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", err)


def _n(db, sql):
    with reading(db, wait_s=0.2) as con:
        return con.execute(sql).fetchone()[0]


@pytest.mark.parametrize("phase", ["storing", "derived"])
def test_ctrl_c_says_one_line_at_every_stage_and_rerun_completes(tmp_path, pop909_dir, phase):
    # the derived stages of ~200 files took ~4 s and then ~2.5 s once they were made
    # faster, and under load the interrupt sometimes came after the ingest was done:
    # ~370 files, so that it lands while they run; the same for storing (~100 files were
    # stored and their stages run in 3.1 s once, and the interrupt came after the end)
    files = [str(p) for p in sorted(pop909_dir.glob("0[0-9]*/**/*.mid"))]
    if phase == "storing":
        when = lambda d: _n(d, "SELECT count(*) FROM pieces") >= 5  # noqa: E731
    else:
        when = lambda d: _n(d, "SELECT count(*) FROM derived_runs") > 0  # noqa: E731
    # even so, a poll that first gets in late can send the interrupt after the ingest's
    # own summary (CI, 2026-12-05: "added 368 files ... derived stages 4.1 s", then
    # killed by the signal): such a run tested nothing, so it is run again on a fresh
    # database, at most three times in all
    for attempt in range(3):
        db = tmp_path / f"db{attempt}"
        r = _ingest_then_interrupt(files, db, when)
        if "atlas: added" not in r.stderr:  # the interrupt landed while it ran
            break
    assert r.returncode == 130, r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("atlas: interrupted") and lines[0].endswith("re-run the same command to finish"), lines
    assert "; kept " in lines[0]  # and says what was kept
    if phase == "derived":
        assert " stage; kept " in lines[0]
        # each stage's count is what the database holds (one that came after a batch's
        # COMMIT once left that batch out: "grammar 0 pieces" with every grammar row in)
        said = dict((k, int(v)) for k, v in re.findall(r"(\w+) (\d+) pieces", lines[0]))
        with reading(db) as con:
            held = dict(con.execute("SELECT stage, count(*) FROM derived_runs GROUP BY stage").fetchall())
        assert said == {k: held.get(k, 0) for k in said}, (lines[0], held)
    else:  # what it says it kept is what the database holds (a Ctrl-C that came while a
        # batch was being committed once left that batch out of the count: "kept 0")
        kept = int(re.search(r"; kept ([\d,]+) new files?", lines[0]).group(1).replace(",", ""))
        assert kept == _n(db, "SELECT count(*) FROM pieces"), lines[0]
    assert _n(db, "SELECT count(*) FROM notes WHERE piece_id NOT IN (SELECT piece_id FROM pieces)") == 0
    s = ingest_paths(files, db)
    with reading(db) as con:
        n = con.execute("SELECT count(*) FROM pieces").fetchone()[0]
        runs = con.execute("SELECT count(*) FROM derived_runs").fetchone()[0]
    assert n == len({hashlib.sha256(Path(f).read_bytes()).digest() for f in files})  # every distinct file
    assert runs == n * len(STAGES) and s.stage_failures == []


def test_corrupt_database_file_is_one_line(tmp_path):
    db = tmp_path / "db"
    ingest_paths([str(tune(tmp_path / f"{i}.mid", i)) for i in range(12)], db)
    f = db / "atlas.duckdb"
    data = f.read_bytes()
    header = 3 * 4096  # DuckDB's file header and two database headers stay valid; every block is garbage
    f.write_bytes(data[:header] + os.urandom(len(data) - header))
    for args in (["stats"], ["ingest", str(tmp_path / "0.mid")]):
        r = atlas(*args, "--db", str(db))
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("atlas: error: ")
    (db / "atlas.duckdb").write_bytes(os.urandom(50_000))
    r = atlas("stats", "--db", str(db))
    assert r.returncode == 2 and "not a valid DuckDB database file" in r.stderr and "Traceback" not in r.stderr


@pytest.fixture
def tiny_disk(tmp_path):
    """A 4 MB tmpfs (root only: mount needs it)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                                            capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root; the full-disk test cannot run here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_is_one_line_and_keeps_what_was_committed(tiny_disk, pop909_dir):
    files = [str(p) for p in sorted(pop909_dir.glob("0[0-4]*/**/*.mid"))]
    db = tiny_disk / "db"
    r = atlas("ingest", *files, "--db", str(db), env={**os.environ, "ATLAS_BATCH_FILES": "3"})
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1].startswith("atlas: error: the disk is full;")
    shutil.copytree(db, tiny_disk.parent / "copy")  # read it where there is room for DuckDB's WAL replay
    with reading(tiny_disk.parent / "copy") as con:
        orphans = con.execute("SELECT count(*) FROM notes WHERE piece_id NOT IN (SELECT piece_id FROM pieces)").fetchone()[0]
        partial = con.execute("SELECT count(*) FROM pieces p WHERE n_notes <> (SELECT count(*) FROM notes n "
                              "WHERE n.piece_id = p.piece_id)").fetchone()[0]
    assert (orphans, partial) == (0, 0)


def _float_wav(path, peak: float, seconds: float = 2.0, sr: int = 22050) -> Path:
    import numpy as np
    import soundfile as sf

    t = np.arange(int(seconds * sr)) / sr
    y = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    y[sr // 2] = peak
    sf.write(path, y, sr, format="WAV", subtype="FLOAT")
    return Path(path)


def test_absurd_float_audio_is_refused_quickly_and_overshoot_is_scaled(tmp_path):
    pytest.importorskip("essentia", reason="audio extra not installed (pip install '.[audio]')")
    pytest.importorskip("basic_pitch", reason="basic-pitch not installed")
    from ingest.audio import decode

    bad = _float_wav(tmp_path / "huge.wav", 1e38)
    t0 = time.monotonic()
    s = ingest_paths([str(bad)], tmp_path / "db", derive=False, workers=1)
    assert s.errors == [(str(bad), "corrupt audio: samples reach 1e+38 (full scale is 1.0; above 16 is not a recording)")]
    assert time.monotonic() - t0 < 120  # it used to hang for minutes in essentia's peak detection
    loud = _float_wav(tmp_path / "loud.wav", 1.5)
    dec = decode(loud.read_bytes(), str(loud))
    assert abs(float(abs(dec.samples).max()) - 1.0) < 1e-6  # analysed at full scale


def test_audio_file_past_the_time_limit_is_stopped_and_recorded(tmp_path):
    pytest.importorskip("essentia", reason="audio extra not installed (pip install '.[audio]')")
    pytest.importorskip("basic_pitch", reason="basic-pitch not installed")
    folder = tmp_path / "in"
    folder.mkdir()
    _float_wav(folder / "slow.wav", 0.5, seconds=240.0)  # 4x the 60 s that took 1.67 s to analyse here
    # ~0.2 s of analysis; the worker's start (imports and models alone: 1.44 s here) used to
    # count as this file's time, and a short limit failed it
    _float_wav(folder / "quick.wav", 0.5, seconds=4.0)
    tune(folder / "a.mid")
    db = tmp_path / "db"
    t0 = time.monotonic()
    r = atlas("ingest", str(folder), "--db", str(db), "--file-timeout", "1", "--workers", "1")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert [line for line in r.stderr.splitlines() if line.startswith("atlas: failed:")] == [
        f"atlas: failed: {folder / 'slow.wav'}: took longer than the 1 s limit per file and was stopped "
        "(atlas ingest --file-timeout)"]
    assert time.monotonic() - t0 < 120
    with reading(db) as con:
        kinds = con.execute("SELECT kind, count(*) FROM pieces GROUP BY ALL ORDER BY ALL").fetchall()
        audio_rows = con.execute("SELECT count(*) FROM audio_files").fetchone()[0]
    assert kinds == [("audio", 1), ("midi", 1)] and audio_rows == 1


_GRAMMAR_TABLES = {"rules", "occurrences", "grammar_sequences", "transform_rows", "transform_gains",
                   "meta_patterns", "meta_pattern_counts", "meta_step_counts"}


def _table_digests(db) -> dict[str, tuple]:
    """Per table: (row count, digest of its rows), leaving out when and how long things ran."""
    out = {}
    with reading(db) as con:
        tables = [t for (t,) in con.execute("SELECT table_name FROM information_schema.tables "
                                            "WHERE table_type = 'BASE TABLE'").fetchall()]
        for t in tables:
            cols = [c for (c, ty) in con.execute("SELECT column_name, data_type FROM information_schema.columns "
                                                 "WHERE table_name = ?", [t]).fetchall()
                    if not ty.startswith("TIMESTAMP") and c not in ("seconds", "run_id")]
            out[t] = con.execute(f"SELECT count(*), md5(coalesce(string_agg(x, '|' ORDER BY x), '')) FROM "
                                 f"(SELECT CAST(({', '.join(cols)}) AS VARCHAR) AS x FROM {t})").fetchone()
    return out


def test_ingesting_in_parts_gives_the_database_of_one_ingest(tmp_path, pop909_dir):
    # README: the same database, table for table, but the grammar, whose rules depend on
    # the order pieces arrived in until `atlas reindex --grammar` rebuilds it
    files = [str(p) for p in sorted(pop909_dir.glob("00[1-4]/**/*.mid"))][:10]
    ingest_paths(files, tmp_path / "once", workers=1)
    for part in (files[:4], files[4:7], files[7:8], files[8:], files[:2]):  # the last one again
        ingest_paths(part, tmp_path / "parts", workers=1)
    once, parts = _table_digests(tmp_path / "once"), _table_digests(tmp_path / "parts")
    assert once["pieces"][0] == len(set(files)) and once.keys() == parts.keys()
    differ = {t for t in once if once[t] != parts[t]}
    assert differ <= _GRAMMAR_TABLES and "rules" in differ  # (these files do learn other rules in parts)
    for db in ("once", "parts"):
        r = atlas("reindex", "--grammar", "--db", str(tmp_path / db))
        assert r.returncode == 0, r.stderr
    assert _table_digests(tmp_path / "once") == _table_digests(tmp_path / "parts")
