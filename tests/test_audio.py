"""Audio ingestion: decoding and its errors, features against known answers (tempo, key,
loudness, pitch), transcription into notes, and ingest beside MIDI (idempotent,
errors recorded). Inputs are synthesized tones and MIDI rendered with fluidsynth."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("essentia", reason="audio extra not installed (pip install '.[audio]')")
pytest.importorskip("basic_pitch", reason="basic-pitch not installed (pip install --no-deps basic-pitch)")

from atlas_db.connection import reading  # noqa: E402
from atlas_db.errors import IngestError  # noqa: E402
from audio_fixtures import (SR, click_track, fluidsynth_missing, render_midi, sine,  # noqa: E402
                            write_audio)
from ingest.audio import analyse, decode, fold_hpcp36, to_analysis_rate  # noqa: E402
from ingest.pipeline import ingest_paths  # noqa: E402
from midi_fixtures import Track, write_midi  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ATLAS = [sys.executable, "-c", "from query.cli import main; main()"]


def stereo(x):
    return np.stack([x, x], axis=1)


def needs_fluidsynth():
    reason = fluidsynth_missing()
    if reason:
        pytest.skip(reason)


# D major: I IV V I, one chord per bar, piano chords + bass roots, 96 bpm, 8 bars.
KEY_TEMPO_BPM = 96.0


def d_major_midi(path):
    chords = [(62, 66, 69), (67, 71, 74), (69, 73, 76), (62, 66, 69)] * 2
    bass = [38, 43, 45, 38] * 2
    piano, low = [], []
    for bar, (ch, b) in enumerate(zip(chords, bass)):
        for beat in range(4):
            on = bar * 4 + beat
            piano += [(p, on, 0.9, 80) for p in ch]
            low.append((b, on, 0.9, 90))
    scale = [74, 76, 78, 79, 81, 83, 85, 86, 85, 83, 81, 79, 78, 76, 74, 73]  # D major up and down
    tune = [(scale[i % len(scale)], i, 0.9, 95) for i in range(32)]
    return write_midi(path, [Track(piano, "piano", program=0), Track(low, "bass", program=32, channel=1),
                             Track(tune, "flute", program=73, channel=2)],
                      tempo_bpm=KEY_TEMPO_BPM, key="D")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """Rendered fixtures: D major progression (wav) and a C-E-G-C melody (flac)."""
    needs_fluidsynth()
    d = tmp_path_factory.mktemp("rendered")
    d_major = render_midi(d_major_midi(d / "d_major.mid"), d / "d_major.wav")
    melody = [(p, i, 0.9, 90) for i, p in enumerate([60, 64, 67, 72, 67, 64, 60, 72])]
    arp = render_midi(write_midi(d / "arpeggio.mid", [Track(melody, "piano", program=0)], tempo_bpm=120.0),
                      d / "arpeggio.flac")
    return {"d_major": d_major, "arpeggio": arp, "dir": d}


# ---- decoding and its errors ---------------------------------------------------------


def test_decode_formats_and_resampling(tmp_path):
    x = sine(440.0, 2.0, -6.0, sr=22050)
    for suffix, fmt in ((".wav", "WAV"), (".flac", "FLAC"), (".ogg", "OGG"), (".mp3", "MP3")):
        p = write_audio(tmp_path / f"a{suffix}", x, 22050)
        dec = decode(p.read_bytes(), str(p))
        assert dec.format == fmt and dec.sample_rate == 22050 and dec.n_channels == 1
        assert dec.duration_s == pytest.approx(2.0, abs=0.06)  # MP3 frames pad the end
        st = to_analysis_rate(dec)
        assert st.shape[1] == 2 and st.shape[0] == pytest.approx(2.0 * SR, abs=SR * 0.01)


def test_a_damaged_mp3s_decoder_messages_name_the_file(tmp_path):
    """libmpg123 writes its complaints to standard error itself (four lines with no file
    name for one cut): they come out as one line that names the file."""
    good = write_audio(tmp_path / "a.mp3", sine(440.0, 5.0), 22050).read_bytes()
    cut = tmp_path / "in" / "cut.mp3"
    cut.parent.mkdir()
    cut.write_bytes(good[: len(good) // 2] + bytes(100) + good[len(good) // 2 + 3000 :])
    r = subprocess.run([*ATLAS, "ingest", str(cut.parent), "--db", str(tmp_path / "db")], capture_output=True,
                       text=True, cwd=Path(__file__).parents[1], timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "skipped: no model configured" not in ln]
    assert len(lines) == 2 and lines[-1].startswith("atlas: added 1 file "), lines
    assert lines[0].startswith(f"atlas: note: {cut}: the audio decoder says: ") and "more lines)" in lines[0]


def test_the_notes_on_absent_models_come_only_when_a_recording_is_analysed(tmp_path):
    """"stem separation ... skipped" and "descriptions ... skipped" are said once on an
    ingest that analyses a recording, and not on one that finds it already stored (they
    were said on every ingest with a recording among its files)."""
    (tmp_path / "in").mkdir()
    wav = write_audio(tmp_path / "in" / "a.wav", sine(440.0, 3.0))
    env = {**os.environ, "ATLAS_DEMUCS_MODEL": "", "ATLAS_DESCRIBE_MODEL": "",
           "ATLAS_CONFIG": str(tmp_path / "no-config.toml")}
    runs = [subprocess.run([*ATLAS, "ingest", str(wav.parent), "--db", str(tmp_path / "db")], capture_output=True,
                           text=True, cwd=Path(__file__).parents[1], timeout=300, env=env) for _ in range(2)]
    notes = [[ln for ln in r.stderr.splitlines() if "skipped: no model configured" in ln] for r in runs]
    assert [r.returncode for r in runs] == [0, 0]
    assert [len(n) for n in notes] == [2, 0], [r.stderr for r in runs]
    assert "0 already present" in runs[0].stderr and "1 already present" in runs[1].stderr


def test_decode_rejects_bad_files_with_one_line_reasons(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    good = write_audio(tmp_path / "good.wav", sine(440.0, 3.0)).read_bytes()
    flac = write_audio(tmp_path / "good.flac", sine(440.0, 3.0)).read_bytes()
    cases = [
        (b"", "empty file"),
        (rng.integers(0, 256, 4000, dtype=np.uint8).tobytes(), "not a readable audio file"),
        (good[: len(good) // 2], "truncated: the WAV header announces"),
        (flac[: len(flac) // 2], "truncated"),
        (write_audio(tmp_path / "silent.wav", np.zeros(SR * 2, np.float32)).read_bytes(), "silent"),
        (write_audio(tmp_path / "short.wav", sine(440.0, 0.3)).read_bytes(), "too short"),
    ]
    for data, reason in cases:
        with pytest.raises(IngestError, match=reason) as e:
            decode(data, "x.wav")
        assert "\n" not in str(e.value)
    # Very long audio: refused from the header, before decoding.
    monkeypatch.setenv("ATLAS_AUDIO_MAX_S", "2")
    with pytest.raises(IngestError, match=r"too long: 3 s of audio \(the limit is 2 s"):
        decode(good, "long.wav")


def test_truncated_ogg_is_a_defined_result(tmp_path):
    """OGG has no length in its header: a cut file decodes to what is there."""
    x = click_track(120.0, 6.0) + 0.05 * np.random.default_rng(0).standard_normal(6 * SR).astype(np.float32)
    data = write_audio(tmp_path / "a.ogg", x).read_bytes()
    dec = decode(data[: len(data) // 2], "a.ogg")
    # half the bytes of 6 s of audio: about half the audio (the headers take a few kB)
    assert 2.0 < dec.duration_s < 3.2


# ---- features against known answers ---------------------------------------------------


def test_loudness_of_calibrated_sines():
    # EBU Tech 3341 case 1: stereo 1 kHz sine at -23 dBFS reads -23 LUFS.
    a = analyse(stereo(sine(997.0, 20.0, -23.0)))
    assert a.values["loudness_integrated_lufs"] == pytest.approx(-23.0, abs=0.1)
    assert a.values["sample_peak_dbfs"] == pytest.approx(-23.0, abs=0.05)
    # EBU Tech 3342 case 1: 20 s at -20 dBFS then 20 s at -30 dBFS: LRA 10 +- 1 LU.
    x = np.concatenate([sine(997.0, 20.0, -20.0), sine(997.0, 20.0, -30.0)])
    b = analyse(stereo(x))
    assert b.values["loudness_range_lu"] == pytest.approx(10.0, abs=1.0)


def test_a_mono_file_is_measured_as_one_channel_and_as_the_file_holds_it(tmp_path):
    """BS.1770: a mono -23 dBFS 1 kHz sine reads -26 LUFS (one channel's power; the
    duplicated pair read -23). The sample peak is the file's own samples' (resampled, a
    22.05 kHz file's peak overshot full scale)."""
    f = write_audio(tmp_path / "mono.wav", sine(997.0, 20.0, -23.0))
    dec = decode(f.read_bytes(), str(f))
    assert dec.n_channels == 1
    a = analyse(to_analysis_rate(dec), dec)
    assert a.values["loudness_integrated_lufs"] == pytest.approx(-26.0, abs=0.1)
    noise = np.clip(np.random.default_rng(1).standard_normal(22050 * 5) * 0.35, -1, 1).astype(np.float32)
    f = write_audio(tmp_path / "noise22k.wav", noise, sr=22050)
    dec = decode(f.read_bytes(), str(f))
    a = analyse(to_analysis_rate(dec), dec)
    assert a.values["sample_peak_dbfs"] == pytest.approx(20 * np.log10(np.abs(dec.samples).max()), abs=1e-4)
    assert a.values["sample_peak_dbfs"] <= 0.0


def test_white_noise_is_flat_whatever_the_rate_or_codec(tmp_path):
    """The flatness is measured below the file's Nyquist frequency and 10 kHz: the empty
    band above a 22.05 kHz file's Nyquist frequency or an MP3's cutoff read as tonal
    (0.0003 and 0.02 against 0.56 at 44.1 kHz)."""
    x = (np.random.default_rng(2).standard_normal(SR * 6) * 0.1).astype(np.float32)
    files = [write_audio(tmp_path / "n44.wav", x), write_audio(tmp_path / "n22.wav", x[::2], sr=SR // 2),
             write_audio(tmp_path / "n44.mp3", x)]
    flat = {}
    for f in files:
        dec = decode(f.read_bytes(), str(f))
        flat[f.name] = analyse(to_analysis_rate(dec), dec).values["spectral_flatness"]
    assert all(v > 0.4 for v in flat.values()), flat
    assert max(flat.values()) - min(flat.values()) < 0.1, flat


def test_pitch_of_a_tone_lands_in_its_chroma_bin():
    a = analyse(stereo(sine(440.0, 6.0, -12.0)))  # A4
    chroma = [a.values[f"hpcp_{s}"] for s in ("c", "cs", "d", "ds", "e", "f", "fs", "g", "gs", "a", "as", "b")]
    assert int(np.argmax(chroma)) == 9 and chroma[9] > 0.8
    assert sum(chroma) == pytest.approx(1.0, abs=1e-4)
    # 36-bin HPCP folding: bin 0 is A, pitch class C is index 0 after folding.
    h = np.zeros(36)
    h[9] = 1.0  # three semitones above A = C
    assert int(np.argmax(fold_hpcp36(h))) == 0


@pytest.mark.parametrize("bpm", [90.0, 128.0])
def test_tempo_beats_and_downbeats_of_a_click_track(bpm):
    a = analyse(stereo(click_track(bpm, 16.0)))
    assert a.values["tempo_bpm"] == pytest.approx(bpm, rel=0.02)
    assert np.median(np.diff(a.beats_s)) == pytest.approx(60.0 / bpm, rel=0.02)
    # The kick is on every 4th beat from 0 s: those beats are the downbeats.
    down = a.beats_s[a.downbeat_phase :: 4]
    bar = 4 * 60.0 / bpm
    assert np.all(np.abs(down / bar - np.round(down / bar)) * bar < 0.05)
    # Every onset is on a beat: no syncopation; IOIs are all one beat: entropy ~0.
    assert a.values["syncopation"] < 0.1
    assert a.values["ioi_entropy_bits"] < 0.8


def test_key_tempo_and_loudness_of_rendered_midi(rendered):
    dec = decode(rendered["d_major"].read_bytes(), "d_major.wav")
    a = analyse(to_analysis_rate(dec))
    assert a.key_name == "D major"
    assert a.values["key_tonic_pc"] == 2 and a.values["key_is_minor"] == 0
    assert a.values["tempo_bpm"] == pytest.approx(KEY_TEMPO_BPM, rel=0.03)
    # Loudness as BS.1770 measures the very samples (pyloudnorm's meter on the decoded file).
    import pyloudnorm

    ref = pyloudnorm.Meter(SR).integrated_loudness(to_analysis_rate(dec).astype(np.float64))
    assert a.values["loudness_integrated_lufs"] == pytest.approx(ref, abs=0.01)
    assert -40 < a.values["loudness_integrated_lufs"] < -5
    # The five strongest pitch classes of the mean chroma are in D major's scale.
    mean = a.beat_hpcp[a.beat_hpcp.sum(1) > 0].mean(0)
    assert set(np.argsort(mean)[-5:].tolist()) <= {2, 4, 6, 7, 9, 11, 1}


# ---- ingestion beside MIDI ---------------------------------------------------------------


@pytest.fixture(scope="module")
def audio_db(tmp_path_factory, rendered):
    """A database of: two renders (wav, flac), one click track (ogg), one MIDI file and
    three bad audio files."""
    d = tmp_path_factory.mktemp("audio_in")
    for p in (rendered["d_major"], rendered["arpeggio"]):
        shutil.copy(p, d / p.name)
    write_audio(d / "clicks.ogg", click_track(120.0, 8.0))
    shutil.copy(rendered["dir"] / "d_major.mid", d / "d_major.mid")
    (d / "corrupt.mp3").write_bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    write_audio(d / "silence.flac", np.zeros(SR * 2, np.float32))
    good = (d / "d_major.wav").read_bytes()
    (d / "cut.wav").write_bytes(good[: len(good) // 3])
    db = tmp_path_factory.mktemp("audio_db") / "db"
    summary = ingest_paths([str(d)], db, workers=2)
    return {"db": db, "dir": d, "summary": summary}


def test_ingest_stores_audio_pieces_with_their_tables(audio_db):
    s = audio_db["summary"]
    assert s.added == 4 and s.failed == 3
    with reading(audio_db["db"]) as con:
        rows = con.execute(
            "SELECT title, kind, ticks_per_beat, midi_format, n_tracks FROM pieces ORDER BY title").fetchall()
        assert sorted((r[0], r[1]) for r in rows) == [("arpeggio", "audio"), ("clicks", "audio"),
                                                      ("d_major", "audio"), ("d_major", "midi")]
        for title, kind, tpb, fmt, n_tracks in rows:
            if kind == "audio":
                assert tpb is None and fmt is None and n_tracks == 1
        fmts = dict(con.execute(
            "SELECT p.title, a.format FROM audio_files a JOIN pieces p USING (piece_id)").fetchall())
        assert fmts == {"d_major": "WAV", "arpeggio": "FLAC", "clicks": "OGG"}
        # Every catalogue feature of the mix is there (or undefined), with the catalogue's unit.
        bad_units = con.execute(
            "SELECT count(*) FROM features f JOIN feature_catalogue c USING (name) WHERE f.unit <> c.unit").fetchone()[0]
        assert bad_units == 0
        n = con.execute("SELECT count(DISTINCT name) FROM features WHERE source = 'mix'").fetchone()[0]
        assert n >= 38
        # Values within their documented ranges.
        out = con.execute(
            """SELECT f.name, f.value FROM features f JOIN feature_catalogue c USING (name)
               WHERE f.value < c.range_min - 1e-6 OR f.value > c.range_max + 1e-6""").fetchall()
        assert out == []
        tempo = con.execute(
            "SELECT tempo_bpm FROM features_wide JOIN pieces USING (piece_id) WHERE title = 'clicks'").fetchone()[0]
        assert tempo == pytest.approx(120.0, rel=0.02)
        sums = con.execute(
            "SELECT min(list_sum(hpcp)), max(list_sum(hpcp)) FROM audio_beats WHERE list_sum(hpcp) > 0").fetchone()
        assert sums[0] == pytest.approx(1.0, abs=1e-3) and sums[1] == pytest.approx(1.0, abs=1e-3)
        errors = dict(con.execute("SELECT regexp_extract(path, '[^/]+$'), reason FROM ingest_errors").fetchall())
    assert set(errors) == {"corrupt.mp3", "silence.flac", "cut.wav"}
    assert errors["silence.flac"].startswith("silent")
    assert errors["cut.wav"].startswith("truncated")
    assert errors["corrupt.mp3"].startswith("not a readable audio file")


def test_transcribed_notes_match_the_rendered_melody(audio_db):
    with reading(audio_db["db"]) as con:
        notes = con.execute(
            """SELECT n.pitch, n.onset_s, n.onset_beats, n.onset_ticks, t.tempo_bpm
               FROM notes n JOIN pieces p USING (piece_id) JOIN tempo_changes t USING (piece_id)
               WHERE p.title = 'arpeggio' ORDER BY n.onset_s""").fetchall()
    assert notes
    # The loudest pitch classes are the melody's; every melody pitch starts within 80 ms of its beat.
    melody = [60, 64, 67, 72, 67, 64, 60, 72]
    for i, p in enumerate(melody):
        assert any(n[0] == p and abs(n[1] - i * 0.5) < 0.08 for n in notes), (i, p)
    # Grid: 480 ticks per beat at the grid tempo.
    for pitch, onset_s, onset_beats, onset_ticks, bpm in notes:
        assert onset_ticks == round(onset_s * bpm / 60 * 480)
        assert onset_beats == onset_ticks / 480


def test_reingest_is_a_no_op_and_adding_one_file_adds_one(audio_db, tmp_path):
    db = tmp_path / "db"
    shutil.copytree(audio_db["db"], db)
    with reading(db) as con:
        before = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                  for t in ("pieces", "notes", "features", "audio_beats", "audio_files", "tracks")}
    again = ingest_paths([str(audio_db["dir"])], db, workers=1, derive=False)
    assert again.added == 0 and again.already_present == 4 and again.failed == 3
    with reading(db) as con:
        after = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in before}
    assert after == before
    new = write_audio(tmp_path / "new.wav", click_track(100.0, 6.0))
    one = ingest_paths([str(new)], db, workers=1, derive=False)
    assert one.added == 1
    with reading(db) as con:
        assert con.execute("SELECT count(*) FROM audio_files").fetchone()[0] == before["audio_files"] + 1


def test_recordings_take_part_in_the_derived_stages(audio_db):
    with reading(audio_db["db"]) as con:
        stages = con.execute(
            """SELECT r.stage, count(*) FROM derived_runs r JOIN pieces p USING (piece_id)
               WHERE p.kind = 'audio' GROUP BY 1""").fetchall()
    from ingest.derived import stages as derived_stages

    assert dict(stages) == {s.STAGE: 3 for s in derived_stages()}  # every stage ran on all 3 recordings


def test_a_recordings_chords_are_timed_by_its_tracked_tempo(audio_db):
    """A recording's notes are on a grid at its tracked tempo (96 bpm for d_major.wav),
    so its chords' seconds follow that tempo, as its notes' do (they were read at 120 bpm)."""
    with reading(audio_db["db"]) as con:
        rows = con.execute(
            """SELECT c.onset_beats, c.onset_s, t.tempo_bpm FROM chords c
               JOIN tempo_changes t USING (piece_id) JOIN pieces p USING (piece_id)
               WHERE p.kind = 'audio' AND p.path LIKE '%d_major.wav'""").fetchall()
        n_beats, n_s = con.execute(
            """SELECT n.onset_beats, n.onset_s FROM notes n JOIN pieces p USING (piece_id)
               WHERE p.path LIKE '%d_major.wav' ORDER BY n.onset_s DESC LIMIT 1""").fetchone()
    assert len(rows) >= 4
    bpm = rows[0][2]
    assert abs(bpm - 120.0) > 5  # else this test could not tell the two apart
    for beats, seconds, _ in rows:
        assert seconds == pytest.approx(beats * 60.0 / bpm, abs=1e-6)
    assert n_s == pytest.approx(n_beats * 60.0 / bpm, abs=0.01)


def test_cli_features_and_errors(audio_db):
    db = str(audio_db["db"])
    wav = str(audio_db["dir"] / "d_major.wav")
    out = subprocess.run([*ATLAS, "features", wav, "--db", db, "--format", "csv"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    rows = list(csv.reader(io.StringIO(out.stdout)))
    assert rows[0][:5] == ["name", "value", "unit", "range_min", "range_max"]
    tempo = [r for r in rows if r[0] == "tempo_bpm"]
    assert tempo and tempo[0][2] == "bpm" and float(tempo[0][1]) == pytest.approx(KEY_TEMPO_BPM, rel=0.03)
    midi = str(audio_db["dir"] / "d_major.mid")
    out = subprocess.run([*ATLAS, "features", midi, "--db", db], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "is a midi file" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run([*ATLAS, "features", wav, "--source", "bass", "--db", db],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "has features for mix" in out.stderr
    out = subprocess.run([*ATLAS, "features", "--catalogue", "--db", db, "--format", "csv"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0
    catalogue = {r[0]: r[1] for r in csv.reader(io.StringIO(out.stdout))}
    assert catalogue["loudness_integrated_lufs"] == "LUFS" and catalogue["loudness_range_lu"] == "LU"
    # the same rows without a database (it needed one, though the catalogue is the code's)
    table = subprocess.run([*ATLAS, "sql", "SELECT * FROM feature_catalogue ORDER BY name", "--db", db,
                            "--format", "csv"], capture_output=True, text=True, cwd=ROOT)
    bare = subprocess.run([*ATLAS, "features", "--catalogue", "--db", str(Path(db) / "none"), "--format", "csv"],
                          capture_output=True, text=True, cwd=ROOT)
    assert bare.returncode == 0 and bare.stdout == out.stdout == table.stdout, bare.stderr


def test_docs_list_every_catalogue_feature():
    from atlas_db.schema_audio import CATALOGUE

    text = (ROOT / "docs" / "audio.md").read_text()
    missing = [row[0] for row in CATALOGUE if f"`{row[0]}`" not in text]
    assert missing == []


def test_notes_from_an_audio_file_not_in_the_database(rendered):
    from ingest.audio import notes_from_audio_file

    notes = notes_from_audio_file(rendered["arpeggio"])
    pitches = set(notes.column("pitch").to_pylist())
    assert {60, 64, 67, 72} <= pitches
    with pytest.raises(IngestError, match="no such file|cannot read"):
        notes_from_audio_file(rendered["dir"] / "absent.wav")
