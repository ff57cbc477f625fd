"""Audio covers: recordings rendered from MIDI fixtures with fluidsynth, ingested or used
as queries, matched to their MIDI original and to other recordings of the same song; the
harmony sequence of a recording is its measured HPCP on its notes' beat grid."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from indexers.audio_chroma import audio_chroma, hpcp_on_grid


# -- the resampling onto the notes' grid (no audio needed) ----------------------------------

def test_hpcp_on_grid_moves_tracked_beats_onto_the_constant_grid():
    # tracked beats every 0.5 s starting at 0.25 s; the grid is 120 bpm from 0 s, so each
    # grid beat holds half of two successive tracked beats
    beats = 0.25 + 0.5 * np.arange(6)
    hpcp = np.eye(12)[[0, 4, 7, 0, 4, 7]]
    g = hpcp_on_grid(beats, hpcp, 120.0)
    assert g.shape == (7, 12)
    np.testing.assert_allclose(g[0, 0], 0.5)  # 0-0.5 s: the first half of beat 0 (from 0.25 s)
    np.testing.assert_allclose(g[1, [0, 4]], [0.5, 0.5])
    np.testing.assert_allclose(g[3, [7, 0]], [0.5, 0.5])
    np.testing.assert_allclose(g.sum(), 6.0)  # every tracked beat counted once
    # half a beat later the grid coincides with the tracked beats
    h = hpcp_on_grid(beats, hpcp, 120.0, start_beats=0.5)
    np.testing.assert_allclose(h[:6], hpcp)
    # a slower grid (60 bpm, 1 s a beat) pools two tracked beats per grid beat
    s = hpcp_on_grid(beats, hpcp, 60.0, start_beats=0.25)
    np.testing.assert_allclose(s[:3], [hpcp[0] + hpcp[1], hpcp[2] + hpcp[3], hpcp[4] + hpcp[5]])


def test_audio_chroma_follows_the_beat_chroma_convention():
    beats = 0.5 * np.arange(4)
    hpcp = np.array([[0.6, 0, 0, 0, 0.3, 0, 0, 0.1, 0, 0, 0, 0]] * 3 + [[0.0] * 12])
    c = audio_chroma(beats, hpcp, 120.0, power=2.0, floor=0.1)
    assert c.dtype == np.float32 and c.shape == (4, 12)
    np.testing.assert_allclose(c[:3].max(axis=1), 1.0)  # frame maximum 1
    np.testing.assert_allclose(c[0, 4], 0.25, rtol=1e-6)  # (0.3 / 0.6) ** 2
    assert c[0, 7] == 0  # (0.1 / 0.6) ** 2 < floor
    assert not c[3].any()  # a silent beat stays silent


# -- rendered recordings ---------------------------------------------------------------------

pytest.importorskip("essentia", reason="audio extra not installed (pip install '.[audio]')")
pytest.importorskip("basic_pitch", reason="basic-pitch not installed (pip install --no-deps basic-pitch)")

from atlas_db.errors import BadInputError  # noqa: E402
from audio_fixtures import fluidsynth_missing, render_midi, write_audio  # noqa: E402
from midi_fixtures import write_midi  # noqa: E402
from test_covers import _render, _song  # noqa: E402


def _programs(tracks, melody: int, accompaniment: int):
    return [replace(tracks[0], program=melody), replace(tracks[1], program=accompaniment)]


@pytest.fixture(scope="module")
def audio_db(tmp_path_factory):
    """Six synthetic songs as MIDI in the database, and four recordings: song 2 twice
    (as written at 100 bpm on piano; 3 semitones down at 140 bpm on strings/guitar) and
    songs 4 and 5 once. Outside the database: song 2 rendered 2 semitones up at 120 bpm
    (another tempo and key, so the bytes and the key differ)."""
    reason = fluidsynth_missing()
    if reason:
        pytest.skip(reason)
    from ingest.pipeline import ingest_paths

    root = tmp_path_factory.mktemp("covers_audio")
    lib = root / "lib"
    songs = [_song(s, n_bars=8) for s in range(6)]
    for i, (mel, ch) in enumerate(songs):
        write_midi(lib / f"song{i}.mid", _render(mel, ch), tempo_bpm=100)
    recordings = {
        "rec2a": (2, 0, 100, (0, 0)),
        "rec2b": (2, -3, 140, (48, 24)),
        "rec4": (4, 1, 110, (11, 0)),
        "rec5": (5, -1, 120, (73, 48)),
    }
    for name, (song, transpose, bpm, (p_mel, p_acc)) in recordings.items():
        mel, ch = songs[song]
        mid = write_midi(root / f"{name}.mid", _programs(_render(mel, ch, transpose=transpose), p_mel, p_acc),
                         tempo_bpm=bpm)
        render_midi(mid, lib / f"{name}.wav")
    mel, ch = songs[2]
    mid = write_midi(root / "take.mid", _render(mel, ch, transpose=2), tempo_bpm=120)
    wav = render_midi(mid, root / "take.wav")
    db = root / "db"
    summary = ingest_paths([str(lib)], db, workers=1)
    assert summary.failed == 0 and summary.added == 10
    return {"db": db, "wav": wav, "root": root, "lib": lib}


def _kinds(db):
    from atlas_db.connection import reading

    with reading(db) as con:
        return {pid: (kind, path) for pid, kind, path in con.execute("SELECT piece_id, kind, path FROM pieces").fetchall()}


def test_audio_query_finds_its_midi_original(audio_db):
    from query.covers import covers
    from query.similar import similar

    kinds = _kinds(audio_db["db"])
    res = covers(audio_db["db"], [str(audio_db["wav"])], top=10)
    midi = [p for p, pid in zip(res.column("path").to_pylist(), res.column("piece_id").to_pylist())
            if kinds[pid][0] == "midi"]
    assert midi[0].endswith("song2.mid")
    assert res.column("query").to_pylist()[0] == str(audio_db["wav"])
    # the recording is 2 semitones above the original: the answer is 2 down
    row = res.column("path").to_pylist().index(midi[0])
    assert res.column("transposition").to_pylist()[row] == -2
    sim = similar(audio_db["db"], [str(audio_db["wav"])], top=6)
    assert sim.num_rows == 6 and "song2" in " ".join(sim.column("path").to_pylist()[:3])


def test_audio_query_finds_the_other_recordings_of_its_song(audio_db):
    """A recording in another key and tempo finds both recordings of its song before the
    recordings of other songs (audio -> audio), by file and by piece id."""
    from query.covers import covers

    kinds = _kinds(audio_db["db"])
    res = covers(audio_db["db"], [str(audio_db["wav"])], top=10)
    audio = [p for p, pid in zip(res.column("path").to_pylist(), res.column("piece_id").to_pylist())
             if kinds[pid][0] == "audio"]
    assert [p.rsplit("/", 1)[-1] for p in audio[:2]] in (["rec2a.wav", "rec2b.wav"], ["rec2b.wav", "rec2a.wav"])
    rec2b = next(pid for pid, (_, path) in kinds.items() if path.endswith("rec2b.wav"))
    res = covers(audio_db["db"], [rec2b], top=10)
    audio = [p for p, pid in zip(res.column("path").to_pylist(), res.column("piece_id").to_pylist())
             if kinds[pid][0] == "audio"]
    assert audio[0].endswith("rec2a.wav")
    midi = [p for p, pid in zip(res.column("path").to_pylist(), res.column("piece_id").to_pylist())
            if kinds[pid][0] == "midi"]
    assert midi[0].endswith("song2.mid")


def _piece(db, name):
    return next(pid for pid, (_, path) in _kinds(db).items() if path.endswith(name))


def test_harmony_sequence_of_a_stored_recording(audio_db):
    """By default a recording's harmony sequence is its notes' chroma (like a MIDI
    file); with source "hpcp" it is its audio_beats HPCP on the notes' grid."""
    from atlas_db.connection import reading
    from indexers import vectors
    from indexers.features import beat_chroma, quantize_chroma

    rec = _piece(audio_db["db"], "rec2b.wav")
    with reading(audio_db["db"]) as con:
        stored = np.asarray(con.execute("SELECT beat_chroma FROM cover_features WHERE piece_id = ?",
                                        [rec]).fetchall()[0][0], np.int8).reshape(-1, 12)
        notes = vectors.in_note_order(vectors._read_notes(con, [rec]))
        audio = vectors._read_audio(con, [rec])
        bpm = con.execute("SELECT tempo_bpm FROM tempo_changes WHERE piece_id = ?", [rec]).fetchall()[0][0]
    on, dur, pitch = (notes.column(c).to_numpy() for c in ("onset_beats", "duration_beats", "pitch"))
    np.testing.assert_array_equal(stored, quantize_chroma(beat_chroma(on, dur, pitch)))
    times, hpcp, grid_bpm = audio[rec]
    assert grid_bpm == pytest.approx(bpm) and hpcp.shape == (times.size, 12)
    feats, _ = vectors.compute(notes, audio, audio_harmony="hpcp")
    from_hpcp = np.asarray(feats.column("beat_chroma")[0].as_py(), np.int8).reshape(-1, 12)
    np.testing.assert_array_equal(from_hpcp, quantize_chroma(audio_chroma(times, hpcp, grid_bpm)))
    assert from_hpcp.shape != stored.shape or not np.array_equal(from_hpcp, stored)
    with pytest.raises(ValueError, match="harmony source 'chords'"):
        vectors.compute(notes, audio, audio_harmony="chords")


def test_chroma_alignment_bonus_prefers_the_versions_of_the_song(audio_db):
    """Essentia's cover-song alignment on chroma per 0.5 s (a recording's stored HPCP,
    a MIDI piece's notes): from a recording of song 2 (3 semitones and 40 bpm away from
    the other, other instruments) the other recording and song2.mid are the closest of
    their kind and get the largest bonus; MIDI <-> MIDI pairs are left alone."""
    from atlas_db.connection import reading
    from indexers.audio_chroma import css_distances, fuse_css, stored_time_chroma

    db = audio_db["db"]
    recs = [_piece(db, n) for n in ["rec2a.wav", "rec4.wav", "rec5.wav"]]
    mids = [_piece(db, f"song{i}.mid") for i in range(6)]
    query = _piece(db, "rec2b.wav")
    with reading(db) as con:
        tc = stored_time_chroma(con, [query] + recs + mids)
    assert all(tc[p][1] for p in [query] + recs) and not any(tc[p][1] for p in mids)
    d = css_distances(tc[query][0], [tc[p][0] for p in recs])
    assert np.isfinite(d).all() and int(np.argmin(d)) == 0
    assert int(np.argmin(css_distances(tc[query][0], [tc[p][0] for p in mids]))) == 2
    fused = fuse_css(np.zeros(9), tc[query], [tc[p] for p in recs + mids])
    assert fused[0] > 0 and (fused[1:3] == 0).all()  # rec2a; rec4, rec5 no closer than the median
    midi_bonus = np.sort(fused[3:])[::-1]
    assert fused[5] == midi_bonus[0] > 2 * midi_bonus[1]  # song2.mid, well ahead of the other songs
    # a MIDI query: only its recording candidates can gain; MIDI -> MIDI is unchanged
    cands = [tc[p] for p in [query] + recs[1:] + mids[:4]] + [None]
    fused = fuse_css(np.full(len(cands), 0.5), tc[mids[2]], cands)
    assert fused[0] > 0.5 and (fused[3:] == 0.5).all()
    assert np.isinf(css_distances(tc[query][0][:5], [tc[recs[0]][0]])).all()  # too short to compare


def test_chroma_distance_equals_essentias(audio_db, monkeypatch):
    """``css_distances`` computes what essentia's ChromaCrossSimilarity (OTI, 9 frames,
    percentile 0.095) + CoverSongSimilarity (serra09, asymmetric) give, to the float32
    bit, for every pair of the fixture's recordings and MIDI pieces (rendered audio with
    its stored HPCP, notes in seconds; transpositions, silences, other lengths), on two
    threads and on one; a reference too short or silent is inf. The cross-recurrence
    matrix of a recording and a MIDI piece, and of a longer random pair, is essentia's,
    cell for cell. Where essentia's percentile degenerates (201 windows) it finds
    nothing and returns inf; this distance is measured there."""
    from atlas_db.connection import reading
    from indexers.audio_chroma import (_CSS_PERCENTILE, _CSS_STACK, _cross_recurrence, css_distances,
                                       stored_time_chroma, transposed_to)
    from ingest.audio import _essentia

    es = _essentia()
    csm = es.ChromaCrossSimilarity(frameStackSize=9, frameStackStride=1, binarizePercentile=0.095, oti=True)
    css = es.CoverSongSimilarity(disOnset=0.5, disExtension=0.5, alignmentType="serra09", distanceType="asymmetric")
    db = audio_db["db"]
    ids = [_piece(db, n) for n in ["rec2a.wav", "rec2b.wav", "rec4.wav", "rec5.wav"]] + \
        [_piece(db, f"song{i}.mid") for i in range(6)]
    with reading(db) as con:
        tc = stored_time_chroma(con, ids)
    chromas = [np.ascontiguousarray(tc[p][0], np.float32) for p in ids]
    chromas.append(np.zeros((40, 12), np.float32))  # silence
    chromas.append(chromas[0][:_CSS_STACK])  # too short
    want = [[float(css(csm(q, r))[1]) if r.shape[0] > _CSS_STACK and r.any() else np.inf for r in chromas]
            for q in chromas[:len(ids)]]
    assert np.isfinite(want).sum() == len(ids) ** 2
    got = [css_distances(q, chromas) for q in chromas[:len(ids)]]
    np.testing.assert_array_equal(got, want)
    monkeypatch.setenv("ATLAS_ALIGN_THREADS", "1")
    np.testing.assert_array_equal([css_distances(q, chromas) for q in chromas[:len(ids)]], want)
    # longer rows (the fixture's are short, so the percentile's index barely moves): a
    # random chroma and a transposed, noisy stretch of it, 300 x 250 frames
    rng = np.random.default_rng(0)
    long_q = rng.random((300, 12)).astype(np.float32)
    long_r = (np.roll(long_q[40:290], 3, axis=1) + 0.05 * rng.random((250, 12))).astype(np.float32)
    assert css_distances(long_q, [long_r])[0] == float(css(csm(long_q, long_r))[1])
    for q, r in ((chromas[1], chromas[6]), (long_q, long_r)):  # rec2b.wav against song2.mid; the long pair
        mine = _cross_recurrence(q, transposed_to(q, r), _CSS_STACK, _CSS_PERCENTILE)
        np.testing.assert_array_equal(mine, np.asarray(csm(q, r)) > 0)
    # where essentia's own percentile gives 0 ((windows - 1) x 0.095 a whole number in
    # float32: 201 windows, 210 frames), it finds nothing; the distance here is measured
    assert np.isinf(float(css(csm(long_q, long_r[:210]))[1]))
    assert 0 < css_distances(long_q, [long_r[:210]])[0] < 0.2


def test_file_query_of_an_ingested_recording_equals_its_stored_query(audio_db):
    """The same recording as a file query and as a stored piece: the same harmony
    sequence, melody and vector, and the same best answers."""
    from query.covers import covers, load_index, query_from_file

    rec = _piece(audio_db["db"], "rec2b.wav")
    path = _kinds(audio_db["db"])[rec][1]
    qf = query_from_file(path)
    assert qf.piece_id == rec
    qs = load_index(audio_db["db"]).query_for_piece(rec)
    # what the harmony sequence is made from: the same beats, HPCP and grid tempo as stored
    from atlas_db.connection import reading
    from indexers.vectors import _read_audio
    from ingest.audio import audio_query_parts

    parts = audio_query_parts(path)
    with reading(audio_db["db"]) as con:
        times, hpcp, bpm = _read_audio(con, [rec])[rec]
    np.testing.assert_allclose(parts["beats_s"], times, atol=1e-6)
    np.testing.assert_allclose(parts["beat_hpcp"], hpcp, atol=1e-6)
    assert parts["grid_bpm"] == pytest.approx(bpm, rel=1e-6)
    np.testing.assert_allclose(qf.chroma_beats, qs.chroma_beats, atol=0.5 / 127 + 1e-6)
    np.testing.assert_array_equal(qf.melody_pitch, qs.melody_pitch)
    np.testing.assert_allclose(qf.vector, qs.vector, atol=1e-5)
    by_file = covers(audio_db["db"], [path], top=3).column("piece_id").to_pylist()
    by_id = covers(audio_db["db"], [rec], top=3).column("piece_id").to_pylist()
    assert rec not in by_file
    # the same two versions of song 2 first (their order can differ: a file query also
    # tries the beat grid moved by half a beat, a stored piece's query does not)
    assert set(by_file[:2]) == set(by_id[:2]) == {_piece(audio_db["db"], "song2.mid"),
                                                   _piece(audio_db["db"], "rec2a.wav")}


def test_unusable_audio_query_is_a_clear_error(audio_db):
    from query.covers import covers

    bad = audio_db["root"] / "not_audio.wav"
    bad.write_bytes(b"RIFF but not really a wave file")
    with pytest.raises(BadInputError, match=r"not_audio\.wav: not a usable query"):
        covers(audio_db["db"], [str(bad)])


def test_atlas_covers_adds_the_audio_bonus_only_where_a_recording_is_involved(audio_db):
    """`atlas covers` itself: a recording's query gives its other recording a positive
    `audio_bonus` (the chroma distance raised its score above what the same pair scores
    at a median distance) and ranks it first among recordings; a MIDI query of MIDI
    pieces gets no bonus at all; with the distance off (`audio_bonus`) no answer does."""
    from query.covers import ALIGN, covers

    db = audio_db["db"]
    kinds = _kinds(db)
    rec_a, rec_b = _piece(db, "rec2a.wav"), _piece(db, "rec2b.wav")
    res = covers(db, [rec_b], top=20).to_pylist()
    recs = [r for r in res if kinds[r["piece_id"]][0] == "audio"]
    assert recs[0]["piece_id"] == rec_a and recs[0]["audio_bonus"] > 0
    ALIGN["audio_bonus"] = False
    try:
        plain = {r["piece_id"]: r for r in covers(db, [rec_b], top=20).to_pylist()}
    finally:
        ALIGN["audio_bonus"] = True
    assert all(r["audio_bonus"] == 0 for r in plain.values())
    # MIDI -> MIDI: scores untouched by the bonus
    midi_q = _piece(db, "song3.mid")
    out = covers(db, [midi_q], top=20).to_pylist()
    assert all(r["audio_bonus"] == 0 for r in out if kinds[r["piece_id"]][0] == "midi")


def test_a_recording_of_nothing_in_the_collection_scores_low(audio_db):
    """The score of a pair with a recording is the recording fusion's probability: 12 s
    of noise finds nothing above 0.2 (0.03 here; 0.13 before the fit had recordings of
    nothing stored among its queries), while the take of song 2 scores its
    versions near 1 (the alignment score plus a bonus, before: noise 0.27, the take's
    best 1.62; neither a probability)."""
    from query.covers import covers

    noise = (np.random.default_rng(3).standard_normal(12 * 22050) * 0.1).astype(np.float32)
    wav = write_audio(audio_db["root"] / "noise.wav", noise, sr=22050)
    res = covers(audio_db["db"], [str(wav), str(audio_db["wav"])], top=5).to_pylist()
    top = {q: max(r["score"] for r in res if r["query"] == q) for q in {r["query"] for r in res}}
    assert top[str(wav)] < 0.2, res
    assert 0.9 < top[str(audio_db["wav"])] <= 1.0


def test_a_recording_of_one_held_tone_scores_low(audio_db):
    """A sine tone has one pitch class: it aligns with any harmony that holds it (harmony
    score ~0.7 against POP909 renders), so the recording fusion weighs the harmony score
    by the query's pitch-class spread, fitted with recordings of nothing stored (tones,
    noise, random tunes) among its queries. Here the best is 0.05 (before: 0.26; 0.88
    against the renders of benchmarks/audio.py)."""
    from audio_fixtures import sine
    from query.covers import covers

    res = []
    for hz, seconds in ((440.0, 12), (196.0, 30)):
        wav = write_audio(audio_db["root"] / f"tone{hz:.0f}.wav", sine(hz, seconds))
        res += covers(audio_db["db"], [str(wav)], top=3).to_pylist()
    assert res and max(r["score"] for r in res) < 0.1, res


def test_a_midi_query_measures_its_best_recordings_not_its_best_answers(audio_db, monkeypatch):
    """The chroma distance is measured for the `audio_bonus_candidates` best pairs with a
    recording: a MIDI query whose best answers are MIDI files still has its recordings
    measured (in a 396-piece collection, a MIDI query's 50 best were often all MIDI and
    none of its recordings was measured)."""
    from query.covers import ALIGN

    index, queries = _midi_queries(audio_db["db"])
    monkeypatch.setitem(ALIGN, "audio_bonus_candidates", 3)
    for q in queries:
        _, _, rec, d = index.recording_candidate_features(q)
        assert int(np.isfinite(d).sum()) == min(3, int(rec.sum())), q.piece_id


def _midi_queries(db):
    """The index and the query features of every stored MIDI piece."""
    from query.covers import load_index

    index = load_index(db)
    return index, [index.query_for_piece(pid) for pid, (kind, _) in _kinds(db).items() if kind == "midi"]


def test_a_midi_querys_recordings_get_the_recording_fusion_wherever_they_rank(audio_db, monkeypatch):
    """Step 5 runs for a MIDI query whenever a recording is among its answers, not only
    when one is among its `audio_bonus_candidates` best: with 2, every recording answer
    of every MIDI query scores the recording fusion's probability. Before, a MIDI query
    whose 2 best answers were MIDI files had its recordings scored by the MIDI fusion."""
    from query.cover_fusion import RECORDING_FEATURES, RECORDING_FUSION_FILE, fuse, load_fusion
    from query.covers import ALIGN

    index, queries = _midi_queries(audio_db["db"])
    params = load_fusion(str(RECORDING_FUSION_FILE), RECORDING_FEATURES)
    monkeypatch.setitem(ALIGN, "audio_bonus_candidates", 2)
    for q in queries:
        rows, x, rec, _ = index.recording_candidate_features(q, typical=params["css_typical"])
        want = {str(index.ids[i]): float(p) for i, p, r in zip(rows, fuse(x, params), rec) if r}
        res = index.search(q, top=20)
        got = {p: s for p, s in zip(res.column("piece_id").to_pylist(), res.column("score").to_pylist())
               if p in want}
        assert got and all(abs(got[p] - want[p]) < 1e-3 for p in got), (q.piece_id, got, want)


def test_a_pair_whose_distance_is_not_measured_gets_no_bonus(audio_db):
    """Only the best `audio_bonus_candidates` by alignment score are measured; the others
    count as at their kind's median distance in this query, and their `audio_bonus` is 0
    (it was ~0.005: their score was compared with the fit's median instead)."""
    from query.covers import ALIGN, covers

    db = audio_db["db"]
    rec_b = _piece(db, "rec2b.wav")
    ALIGN["audio_bonus_candidates"] = 2
    try:
        res = covers(db, [rec_b], top=20).to_pylist()
    finally:
        ALIGN["audio_bonus_candidates"] = 50
    assert len(res) > 3
    assert sum(r["audio_bonus"] != 0 for r in res) <= 2
