"""The time scale of a query read from its onsets (indexers.tempo) and its use in the
cover search: known answers on synthetic rhythms."""

import numpy as np
import pytest

from indexers.tempo import relative_tempo


def _rhythm(seed: int, beats: float = 96.0) -> np.ndarray:
    """Onsets (beats) of a melody of eighths, quarters and halves, with a chord of three
    notes on every downbeat."""
    rng = np.random.default_rng(seed)
    on, t = [], 0.0
    while t < beats:
        on.append(t)
        if t % 4 == 0:
            on += [t, t]
        t += float(rng.choice([0.5, 0.5, 1.0, 1.0, 2.0]))
    return np.asarray(on)


def _octave_error(est: float, f: float) -> float:
    d = (np.log2(est) - np.log2(f)) % 1.0
    return min(d, 1.0 - d)


@pytest.mark.parametrize("f", [1.0, 2 ** 0.25, 0.8, 1.37, 2.6])
def test_relative_tempo_reads_the_retiming_factor_modulo_octaves(f):
    est, clarity = relative_tempo(_rhythm(0) * f)
    assert 2 ** -0.5 <= est < 2 ** 0.5
    assert _octave_error(est, f) < 0.02
    assert clarity > 0.8


def test_relative_tempo_under_onset_jitter_and_a_tempo_curve():
    """+-0.06 beat of jitter (chords spread, as a performance plays them) and a slow
    +-5 % tempo curve: still within 0.06 octave."""
    rng = np.random.default_rng(1)
    on = _rhythm(1)
    warped = on + 0.05 / (2 * np.pi / 24) * np.sin(2 * np.pi / 24 * on)
    f = 1.15
    est, _ = relative_tempo(f * warped + rng.uniform(-0.06, 0.06, on.size))
    assert _octave_error(est, f) < 0.06


def test_relative_tempo_of_too_few_onsets_says_it_does_not_know():
    assert relative_tempo([0.0, 1.0, 2.0]) == (1.0, 0.0)
    # a long query is read in its middle 128 beats: here a rest
    assert relative_tempo(list(range(8)) + list(range(300, 308))) == (1.0, 0.0)


def test_relative_tempo_of_a_long_query_reads_its_middle():
    """460 beats: the first 100 re-timed by 1.3, the rest by 0.9 (the middle 128 beats
    of the result, 181-309, are all at 0.9)."""
    on = _rhythm(2, beats=460.0)
    on = np.where(on < 100, on * 1.3, 130 + (on - 100) * 0.9)
    est, _ = relative_tempo(on)
    assert _octave_error(est, 0.9) < 0.02


def _song_3_last_with_and_without(index, q, setting: str):
    """``rerank`` of the query against songs 0-8 with song 3 last (the scale probe's 8
    candidates are wrong songs), with the ``ALIGN`` setting on (as shipped) and off."""
    from query.covers import ALIGN

    rows = np.array([0, 1, 2, 4, 5, 6, 7, 8, 3])
    assert ALIGN[setting]
    on = index.rerank(q, rows)
    ALIGN[setting] = False
    try:
        off = index.rerank(q, rows)
    finally:
        ALIGN[setting] = True
    return on, off


def test_a_candidate_outside_the_scale_probe_is_aligned_at_its_onsets_scale():
    """Song 3's chords re-timed by 2 ** 0.25 (between two steps of the fine grid), ranked
    last among 9 candidates: the time scale is chosen on the first 8 (all wrong songs),
    so without the onsets' scale song 3 is aligned at a wrong one; with it, at 1.19,
    and it scores far above the others."""
    from query.covers import query_from_notes
    from test_covers_fusion import _chord_song, _index_of

    songs = [_chord_song(s) for s in range(12)]
    index = _index_of(songs)
    on, dur, p = songs[3]
    f = 2 ** 0.25
    q = query_from_notes("retimed", on * f, dur * f, p + 2)
    assert q.tempo_scale == pytest.approx(f, rel=0.02)
    # for the candidate lists, the query is also read back at the onsets' scale: its
    # beat chroma is then the stored song's (transposed up 2)
    from indexers.features import beat_chroma

    stored = np.roll(beat_chroma(on, dur, p), 2, axis=1)
    back = q.rescaled_chroma
    m = min(len(stored), len(back))
    assert abs(len(stored) - len(back)) <= 1
    cos = np.sum(stored[:m] * back[:m], axis=1) / np.maximum(
        np.linalg.norm(stored[:m], axis=1) * np.linalg.norm(back[:m], axis=1), 1e-9)
    assert np.median(cos) > 0.9
    assert query_from_notes("as stored", on, dur, p).rescaled_chroma is None
    with_onsets, without = _song_3_last_with_and_without(index, q, "rhythm_scale")
    assert with_onsets["hscale"][-1] == pytest.approx(f, rel=0.02)
    assert with_onsets["harm"][-1] > 0.9
    assert with_onsets["harm"][-1] > 5 * with_onsets["harm"][:-1].max()
    assert without["harm"][-1] < with_onsets["harm"][-1] - 0.2


def test_a_candidate_is_also_aligned_at_the_other_octaves_of_the_onsets_scale():
    """The onsets fix the scale modulo octaves: song 3 re-timed by 2 ** -0.75 reads as
    2 ** 0.25. With ``rhythm_octaves``, when no notated scale aligns convincingly (the
    8 probe candidates are wrong songs), every candidate is also aligned at 2 ** -0.75
    and 2 ** 1.25, so song 3 (ranked last) is found at its real scale; without, it is
    aligned at 2 ** 0.25 and at the probe's scale only."""
    from query.covers import CoverIndex, query_from_notes
    from test_covers_fusion import _chord_song, _index_of

    songs = [_chord_song(s) for s in range(12)]
    index = _index_of(songs)
    on, dur, p = songs[3]
    f = 2 ** -0.75
    q = query_from_notes("retimed", on * f, dur * f, p + 2)
    assert q.tempo_scale == pytest.approx(2 * f, rel=0.02)
    scales = CoverIndex._rhythm_scales(q, best_scale=0.5, off_grid=True)
    assert sorted(round(float(np.log2(s / q.tempo_scale))) for s in scales) == [-1, 0, 1]
    assert CoverIndex._rhythm_scales(q, best_scale=0.5, off_grid=False) == [q.tempo_scale]
    # on the notated grid (the onsets say 1.0) the octaves are the notated 0.5 and 2.0: none
    as_stored = query_from_notes("as stored", on, dur, p)
    assert as_stored.tempo_scale == pytest.approx(1.0, abs=0.02)
    assert CoverIndex._rhythm_scales(as_stored, best_scale=2 ** 0.5, off_grid=True) == [as_stored.tempo_scale]
    with_octaves, without = _song_3_last_with_and_without(index, q, "rhythm_octaves")
    assert with_octaves["hscale"][-1] == pytest.approx(f, rel=0.02)
    assert with_octaves["harm"][-1] > 0.8
    assert without["harm"][-1] < with_octaves["harm"][-1] - 0.2


def test_the_scale_probe_prefers_a_scale_within_an_octave_of_the_notated_one():
    """``scale_prior``: on the fine grid, a scale more than an octave from 1 loses
    0.4 x the excess in octaves, so a coarse scale that squeezes the query into a few
    frames (2.83 here, aligning 0.08 higher on the probe candidates by chance) no longer
    beats one near the notated tempo (1.26). The alignments are given per scale."""
    from query.covers import ALIGN, CoverIndex, query_from_notes
    from test_covers_fusion import _chord_song, _index_of

    songs = [_chord_song(s) for s in range(9)]
    q = query_from_notes("q", *songs[0])
    q.tempo_scale = None  # no onsets' estimate: the prior alone decides
    top_at = {2 ** (1 / 3): 0.50, 2 ** 1.5: 0.58}  # every other scale 0.2, notated 0.3

    class GivenAlignments(CoverIndex):
        def _harmony(self, q, rows, scale, frames=None, shifts=None):
            s = 0.3 if scale in ALIGN["scales"] else next(
                (v for k, v in top_at.items() if abs(np.log2(scale / k)) < 1e-6), 0.2)
            return np.full(rows.size, s, np.float32), np.zeros(rows.size, np.int32)

    index = _index_of(songs)
    index.__class__ = GivenAlignments  # the real index, its alignment kernel given
    probe = np.arange(8)
    assert ALIGN["scale_prior"] > 0
    assert index._probe_scale(q, probe, index._frames_of(probe), None) == pytest.approx(2 ** (1 / 3))
    prior, ALIGN["scale_prior"] = ALIGN["scale_prior"], 0.0
    try:
        assert index._probe_scale(q, probe, index._frames_of(probe), None) == pytest.approx(2 ** 1.5)
    finally:
        ALIGN["scale_prior"] = prior
