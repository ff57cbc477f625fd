"""The bass line (indexers.features.bass_line) on notes written by hand."""

from __future__ import annotations

import numpy as np

from indexers.features import bass_line, features_from_notes


def _notes(*rows):
    on, dur, pitch = (np.array(c, float) for c in zip(*rows))
    return on, dur, pitch.astype(np.int64)


def test_bass_under_a_melody():
    # bass C2 F2 G2 C2, one a bar, under a melody of quarter notes E5 D5 ...
    bass = [(0, 4, 36), (4, 4, 41), (8, 4, 43), (12, 4, 36)]
    melody = [(b, 1, p) for b, p in zip(range(16), [76, 74, 72, 74] * 4)]
    on, dur, pitch = _notes(*(bass + melody))
    np.testing.assert_array_equal(bass_line(on, dur, pitch), [0, 5, 7, 0])
    # the notes' order does not matter
    o = np.random.default_rng(0).permutation(on.size)
    np.testing.assert_array_equal(bass_line(on[o], dur[o], pitch[o]), [0, 5, 7, 0])
    assert features_from_notes(on, dur, pitch)["bass_pc"].tolist() == [0, 5, 7, 0]


def test_sustained_bass_and_uneven_onsets():
    # a held A2 under moving upper notes stays the bass (repeats merged); a chord whose
    # lowest note comes 1/16 beat late is one onset; then the bass rests and the lowest
    # upper note (E4) is the bass
    rows = [(0, 8, 45), (0, 1, 60), (1, 1, 64), (2, 1, 67), (3, 1, 69),
            (4, 1, 62), (4.0625, 1, 38), (5, 1, 64), (6, 1, 67), (8, 1, 64)]
    np.testing.assert_array_equal(bass_line(*_notes(*rows)), [9, 2, 9, 4])


def test_empty():
    assert bass_line([], [], []).tolist() == []
