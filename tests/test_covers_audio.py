"""A recording that is not in the database as a `covers` / `similar` query: rendered
from a MIDI fixture with fluidsynth, transcribed, and matched back to its MIDI original."""

from __future__ import annotations

import pytest

pytest.importorskip("essentia", reason="audio extra not installed (pip install '.[audio]')")
pytest.importorskip("basic_pitch", reason="basic-pitch not installed (pip install --no-deps basic-pitch)")

from atlas_db.errors import BadInputError  # noqa: E402
from audio_fixtures import fluidsynth_missing, render_midi  # noqa: E402
from midi_fixtures import write_midi  # noqa: E402
from test_covers import _render, _song  # noqa: E402


@pytest.fixture(scope="module")
def audio_db(tmp_path_factory):
    """Six synthetic songs as MIDI in the database; song 2 rendered to a .wav outside it
    (a transposition of +2 and another tempo, so the bytes and the key differ)."""
    reason = fluidsynth_missing()
    if reason:
        pytest.skip(reason)
    from ingest.pipeline import ingest_paths

    root = tmp_path_factory.mktemp("covers_audio")
    lib = root / "lib"
    songs = [_song(s, n_bars=8) for s in range(6)]
    for i, (mel, ch) in enumerate(songs):
        write_midi(lib / f"song{i}.mid", _render(mel, ch), tempo_bpm=100)
    mel, ch = songs[2]
    mid = write_midi(root / "take.mid", _render(mel, ch, transpose=2), tempo_bpm=120)
    wav = render_midi(mid, root / "take.wav")
    db = root / "db"
    summary = ingest_paths([str(lib)], db, workers=1)
    assert summary.failed == 0 and summary.added == 6
    return {"db": db, "wav": wav, "root": root}


def test_audio_query_finds_its_midi_original(audio_db):
    from query.covers import covers
    from query.similar import similar

    res = covers(audio_db["db"], [str(audio_db["wav"])], top=3)
    assert res.column("path").to_pylist()[0].endswith("song2.mid")
    assert res.column("query").to_pylist()[0] == str(audio_db["wav"])
    # the recording is 2 semitones above the original: the answer is 2 down
    assert res.column("transposition").to_pylist()[0] == -2
    sim = similar(audio_db["db"], [str(audio_db["wav"])], top=6)
    assert sim.num_rows == 6 and "song2.mid" in " ".join(sim.column("path").to_pylist()[:3])


def test_unusable_audio_query_is_a_clear_error(audio_db):
    from query.covers import covers

    bad = audio_db["root"] / "not_audio.wav"
    bad.write_bytes(b"RIFF but not really a wave file")
    with pytest.raises(BadInputError, match=r"not_audio\.wav: not a usable query"):
        covers(audio_db["db"], [str(bad)])
