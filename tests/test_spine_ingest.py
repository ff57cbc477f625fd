"""Ingestion: known notes land exactly, re-runs are no-ops, order does not matter, bad
files are reported and leave nothing behind, a killed ingest loses nothing committed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from atlas_db.connection import reading
from ingest.pipeline import ingest_paths
from midi_fixtures import Track, melody, write_midi

ATLAS = [sys.executable, "-m", "query.cli"]
SPINE_TABLES = ["pieces", "piece_paths", "tracks", "notes", "program_changes", "tempo_changes",
                "time_signatures", "key_signatures", "ingest_errors"]
VOLATILE = {"ingested_at", "failed_at", "done_at", "code_version"}


def dump(db) -> dict[str, list[tuple]]:
    """Every row of every spine table, without timestamps, in a canonical order."""
    out = {}
    with reading(db) as con:
        for t in SPINE_TABLES:
            cols = [r[0] for r in con.execute(f"DESCRIBE {t}").fetchall() if r[0] not in VOLATILE]
            out[t] = con.execute(f"SELECT {', '.join(cols)} FROM {t} ORDER BY ALL").fetchall()
    return out


def atlas(*args, check=True, **kw):
    r = subprocess.run([*ATLAS, *args], capture_output=True, text=True, cwd=Path(__file__).parents[1], **kw)
    if check and r.returncode not in (0, 1):
        raise AssertionError(f"atlas {args} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def two_tracks(path, transpose=0, tempo=120.0):
    return write_midi(path, [
        Track(melody([60 + transpose, 62 + transpose, 64 + transpose, 65 + transpose], velocity=90), name="melody", program=73, channel=0),
        Track([(36 + transpose, 0.0, 2.0, 70), (43 + transpose, 2.0, 2.0, 71)], name="bass", program=32, channel=1),
    ], tempo_bpm=tempo)


def test_known_notes_land_exactly(tmp_path):
    f = write_midi(tmp_path / "a.mid", [
        Track(melody([60, 62, 64], velocity=90), name="flute", program=73, channel=2),
        Track([(42, 0.0, 0.25, 100), (42, 0.5, 0.25, 100)], name="hats", program=0, channel=9),
    ], tempo_bpm=90.0, key="Eb")
    db = tmp_path / "db"
    s = ingest_paths([str(f)], db)
    assert (s.added, s.failed) == (1, 0)
    with reading(db) as con:
        notes = con.execute(
            "SELECT track_index, note_index, pitch, onset_ticks, duration_ticks, onset_beats, onset_s, duration_s, velocity, channel "
            "FROM notes ORDER BY track_index, note_index").fetchall()
        tracks = con.execute("SELECT track_index, name, program, channel, is_drum, n_notes FROM tracks ORDER BY 1").fetchall()
        piece = con.execute("SELECT kind, ticks_per_beat, n_tracks, n_notes, duration_beats, duration_s FROM pieces").fetchone()
        tempo = con.execute("SELECT tempo_bpm, us_per_beat FROM tempo_changes").fetchall()
        key = con.execute("SELECT key_name, sharps_flats, mode FROM key_signatures").fetchall()
    spb = 60 / 90  # seconds per beat at 90 bpm
    assert notes[:3] == [(1, i, p, 480 * i, 480, float(i), pytest.approx(i * spb), pytest.approx(spb), 90, 2)
                         for i, p in enumerate([60, 62, 64])]
    assert [n[2] for n in notes[3:]] == [42, 42] and notes[4][3] == 240
    assert tracks == [(0, "", 0, None, False, 0), (1, "flute", 73, 2, False, 3), (2, "hats", 0, 9, True, 2)]
    assert piece == ("midi", 480, 3, 5, 3.0, pytest.approx(3 * spb))
    assert tempo == [(pytest.approx(90.0), 666667)]
    assert key == [("Eb major", -3, "major")]


def test_tempo_change_maps_ticks_to_seconds(tmp_path):
    import mido

    mf = mido.MidiFile(ticks_per_beat=100)
    tr = mido.MidiTrack()
    tr += [mido.MetaMessage("set_tempo", tempo=500_000, time=0),  # 120 bpm for 2 beats
           mido.Message("note_on", note=60, velocity=64, time=0),
           mido.MetaMessage("set_tempo", tempo=1_000_000, time=200),  # then 60 bpm
           mido.Message("note_off", note=60, velocity=0, time=0),
           mido.Message("note_on", note=62, velocity=64, time=100),
           mido.Message("note_off", note=62, velocity=0, time=100)]
    mf.tracks.append(tr)
    mf.save(tmp_path / "t.mid")
    db = tmp_path / "db"
    ingest_paths([str(tmp_path / "t.mid")], db)
    with reading(db) as con:
        rows = con.execute("SELECT pitch, onset_s, duration_s, onset_beats FROM notes ORDER BY onset_ticks").fetchall()
    assert rows == [(60, 0.0, pytest.approx(1.0), 0.0), (62, pytest.approx(2.0), pytest.approx(1.0), 3.0)]


def test_reingest_is_a_noop_and_order_does_not_matter(tmp_path, pop909_dir):
    a = [str(p) for p in sorted(pop909_dir.glob("00[1-3]/*.mid"))]
    b = [str(p) for p in sorted(pop909_dir.glob("00[4-5]/**/*.mid"))]
    both, a_then_b, b_then_a = tmp_path / "both", tmp_path / "ab", tmp_path / "ba"
    ingest_paths(a + b, both)
    first = dump(both)
    s = ingest_paths(a + b, both)
    assert (s.added, s.already_present, s.failed) == (0, len(a + b), 0)
    assert dump(both) == first
    ingest_paths(a, a_then_b)
    ingest_paths(b, a_then_b)
    ingest_paths(b, b_then_a)
    ingest_paths(a, b_then_a)
    assert dump(a_then_b) == first
    assert dump(b_then_a) == first


def test_same_bytes_under_two_paths_is_one_piece(tmp_path):
    f = two_tracks(tmp_path / "x.mid")
    shutil.copy(f, tmp_path / "copy.mid")
    db = tmp_path / "db"
    s = ingest_paths([str(tmp_path)], db)
    assert (s.added, s.already_present) == (1, 1)
    with reading(db) as con:
        assert con.execute("SELECT count(*) FROM pieces").fetchone()[0] == 1
        assert sorted(r[0] for r in con.execute("SELECT path FROM piece_paths").fetchall()) == [
            str(tmp_path / "copy.mid"), str(tmp_path / "x.mid")]


def make_bad_files(folder: Path) -> dict[str, str]:
    """Bad inputs -> a fragment of the reason each must be reported with."""
    folder.mkdir(parents=True, exist_ok=True)
    good = two_tracks(folder / "good.mid").read_bytes()
    (folder / "empty.mid").write_bytes(b"")
    (folder / "random.mid").write_bytes(os.urandom(3000))
    (folder / "truncated.mid").write_bytes(good[: len(good) // 2])
    (folder / "header_only.mid").write_bytes(good[:14])
    write_midi(folder / "no_notes.mid", [Track([], name="silence")])
    absurd = bytearray(good)
    i = absurd.index(b"\xff\x51\x03")
    absurd[i + 3 : i + 6] = (10).to_bytes(3, "big")  # 10 us per beat = 6,000,000 bpm
    (folder / "absurd_tempo.mid").write_bytes(bytes(absurd))
    os.symlink(folder / "gone.mid", folder / "dangling.mid")
    return {
        "empty.mid": "empty file",
        "random.mid": "not a MIDI file",
        "truncated.mid": "truncated",
        "header_only.mid": "no MTrk",
        "no_notes.mid": "no notes",
        "absurd_tempo.mid": "absurd tempo",
        "dangling.mid": "cannot read",
    }


def test_bad_files_are_reported_recorded_and_the_batch_goes_on(tmp_path):
    bad = make_bad_files(tmp_path / "in")
    db = tmp_path / "db"
    # each path named twice: one line and one count each (a missing one counted twice)
    r = atlas("ingest", str(tmp_path / "in"), str(tmp_path / "missing.mid"), str(tmp_path / "in"),
              str(tmp_path / "missing.mid"), "--db", str(db))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = [l for l in r.stderr.splitlines() if l.startswith("atlas: failed:")]
    assert len(lines) == len(bad) + 1
    for name, reason in bad.items():
        assert any(name in l and reason in l for l in lines), (name, lines)
    assert any("missing.mid" in l and "no such file" in l for l in lines)
    with reading(db) as con:
        assert con.execute("SELECT title FROM pieces").fetchall() == [("good",)]
        errors = dict(con.execute("SELECT path, reason FROM ingest_errors").fetchall())
        # the failed files' content left no rows anywhere
        hashes = [h for (h,) in con.execute("SELECT content_sha256 FROM ingest_errors WHERE content_sha256 IS NOT NULL").fetchall()]
        for t in ("notes", "tracks", "tempo_changes"):
            assert con.execute(f"SELECT count(DISTINCT piece_id) FROM {t}").fetchone()[0] == 1
        assert not con.execute("SELECT count(*) FROM pieces WHERE content_sha256 IN (SELECT unnest(?))", [hashes]).fetchone()[0]
    assert {Path(p).name for p in errors} == set(bad) | {"missing.mid"}
    assert "summary" not in r.stdout and "1 failed" not in r.stderr
    assert f"{len(bad) + 1} failed" in r.stderr


def test_a_folder_or_file_named_twice_counts_once(tmp_path):
    from ingest.sources import discover

    (tmp_path / "readme.txt").write_text("not music")
    (tmp_path / "a.mid").write_bytes(b"MThd")
    d = str(tmp_path)
    found = discover([d, d, f"{d}/a.mid", f"{d}/nope.mid", f"{d}/nope.mid"])
    assert found.files == [f"{d}/a.mid"] and found.skipped_other == 1  # 2: "2 other files were skipped"
    assert found.problems == [(f"{d}/nope.mid", "no such file or folder")]


def test_fixed_file_leaves_ingest_errors(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "later.mid").write_bytes(b"garbage")
    db = tmp_path / "db"
    ingest_paths([str(folder)], db)
    two_tracks(folder / "later.mid")
    s = ingest_paths([str(folder)], db)
    assert s.added == 1 and s.failed == 0
    with reading(db) as con:
        assert con.execute("SELECT count(*) FROM ingest_errors").fetchone()[0] == 0


def test_user_mistakes_give_one_line(tmp_path):
    r = atlas("sql", "SELECT 1", "--db", str(tmp_path / "nowhere"), check=False)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "no Harmony Atlas database" in r.stderr
    two_tracks(tmp_path / "a.mid")
    ingest_paths([str(tmp_path / "a.mid")], tmp_path / "db")
    r = atlas("ingest", str(tmp_path / "a.mid"), "--db", str(tmp_path / "no" / "such" / "db"), check=False)
    assert r.returncode == 2 and "parent folder" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1  # the database is checked before any file is read
    r = atlas("sql", "SELECT nonsense FROM pieces", "--db", str(tmp_path / "db"), check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr


BAD_SETTINGS = [
    # read when the modules are imported: int()/float() there was a traceback
    ("ATLAS_FILE_TIMEOUT_S", "abc", "$ATLAS_FILE_TIMEOUT_S = 'abc': give a number of seconds >= 1 (unset: 900)"),
    ("ATLAS_LOCK_WAIT_S", "-1", "$ATLAS_LOCK_WAIT_S = '-1': give a number of seconds >= 0 or inf (unset: 60)"),
    # accepted before, though --min-count refuses it
    ("ATLAS_GRAMMAR_MIN_COUNT", "0",
     "$ATLAS_GRAMMAR_MIN_COUNT = '0': give a whole number of occurrences >= 2 (unset: 2)"),
    ("ATLAS_ALIGN_THREADS", "two", "$ATLAS_ALIGN_THREADS = 'two': give a whole number of threads >= 1 (unset: 2)"),
]


@pytest.fixture(scope="module")
def one_tune_db(tmp_path_factory):
    """A database of one small file, its FAISS file built (the first search builds it):
    shared by the tests below, which only read it."""
    folder = tmp_path_factory.mktemp("one_tune")
    two_tracks(folder / "a.mid")
    ingest_paths([str(folder / "a.mid")], folder / "db")
    assert atlas("covers", str(folder / "a.mid"), "--db", str(folder / "db")).returncode == 0
    return folder


@pytest.mark.parametrize("var, value, line", BAD_SETTINGS)
def test_a_bad_setting_in_the_environment_is_one_line(tmp_path, one_tune_db, var, value, line):
    song = one_tune_db / "a.mid"
    r = atlas("ingest", str(song), "--db", str(tmp_path / "db"), check=False, env={**os.environ, var: value})
    assert (r.returncode, r.stderr) == (2, f"atlas: error: {line}\n")
    assert not (tmp_path / "db").exists()  # refused before anything was written
    r = atlas("covers", str(song), "--db", str(one_tune_db / "db"), check=False, env={**os.environ, var: value})
    assert (r.returncode, r.stderr) == (2, f"atlas: error: {line}\n")


def test_an_empty_setting_in_the_environment_is_its_default(one_tune_db):
    env = {**os.environ, **{var: " " for var, _, _ in BAD_SETTINGS}}
    r = atlas("covers", str(one_tune_db / "a.mid"), "--db", str(one_tune_db / "db"), check=False, env=env)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.startswith("query  rank  piece_id")  # the answer table (empty: the query is left out)


def test_killed_ingest_loses_nothing_and_rerun_completes(tmp_path, pop909_dir):
    files = [str(p) for p in sorted(pop909_dir.glob("0[0-4]*/**/*.mid"))]
    ref = tmp_path / "ref"
    ingest_paths(files, ref, derive=False)
    db = tmp_path / "db"
    env = {**os.environ, "ATLAS_BATCH_FILES": "5"}
    proc = subprocess.Popen([*ATLAS, "ingest", *files, "--db", str(db)], cwd=Path(__file__).parents[1],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    n = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with reading(db, wait_s=0.2) as con:
                n = con.execute("SELECT count(*) FROM pieces").fetchone()[0]
        except Exception:
            n = 0
        if n >= 5:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the ingest ended before it could be killed"
    with reading(db) as con:
        kept = con.execute("SELECT count(*) FROM pieces").fetchone()[0]
        orphan = con.execute("SELECT count(*) FROM notes WHERE piece_id NOT IN (SELECT piece_id FROM pieces)").fetchone()[0]
        staged = con.execute("SELECT count(*) FROM derived_runs").fetchone()[0]
    assert kept >= 5 and orphan == 0
    # killed before the derived stages finished: what they did not commit is redone later
    assert staged < kept * len(__import__("ingest.derived").derived.stages())
    ingest_paths(files, db, derive=False)
    assert dump(db) == dump(ref)


def test_reader_can_query_while_another_process_ingests(tmp_path, pop909_dir):
    files = [str(p) for p in sorted(pop909_dir.glob("*/**/*.mid"))[:300]]
    db = tmp_path / "db"
    two_tracks(tmp_path / "seed.mid")
    ingest_paths([str(tmp_path / "seed.mid")], db)
    env = {**os.environ, "ATLAS_BATCH_FILES": "10"}
    proc = subprocess.Popen([*ATLAS, "ingest", *files, "--db", str(db)], cwd=Path(__file__).parents[1],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    counts = []
    try:
        while proc.poll() is None and len(counts) < 200:
            r = atlas("sql", "SELECT count(*) AS n FROM pieces", "--db", str(db), "--format", "csv")
            assert r.returncode == 0, r.stderr
            counts.append(int(r.stdout.splitlines()[1]))
    finally:
        proc.wait(timeout=300)
    assert proc.returncode == 0
    assert counts and counts == sorted(counts)  # readers, during the ingest, saw committed progress only
