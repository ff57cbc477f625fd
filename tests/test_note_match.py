"""indexers.note_match: the share of a query's notes found where a reference has notes of
the same pitch under one time map, against a plain Python count of the same votes."""

from collections import Counter

import numpy as np

from indexers.note_match import BIN_BEATS, SCALES, matched_share


def _python_count(q_on, q_p, ref_on, ref_p, shift):
    """The most query notes one (transposition, scale, offset bin) matches: each pair of a
    query note and a reference note of its transposed pitch votes for the bin of their
    offset and the bins beside it, each query note once per bin."""
    q_on = np.asarray(q_on, np.float64) - float(np.min(q_on))
    best = 0
    for t in (shift % 12, shift % 12 - 12):
        for s in SCALES:
            lo = -s * float(q_on.max()) - 1.0
            votes = Counter()
            for a in range(q_on.size):
                x = s * q_on[a] + lo
                bins = set()
                for on, p in zip(ref_on, ref_p):
                    if p == q_p[a] + t:
                        b = int((on - x) / BIN_BEATS)
                        bins |= {b - 1, b, b + 1}
                votes.update(bins)
            best = max(best, max(votes.values(), default=0))
    return best


def _tune(rng, n=40):
    on = np.cumsum(rng.choice([0.5, 1.0, 1.0, 2.0], n))
    return on - on[0], 60 + rng.integers(-7, 8, n)


def test_a_transposed_retimed_excerpt_with_notes_missing_is_found_whole():
    rng = np.random.default_rng(0)
    on, p = _tune(rng, 60)
    keep = np.flatnonzero(rng.random(on.size) > 0.2)[10:40]  # an excerpt, a fifth of its notes gone
    q_on, q_p = (on[keep] - on[keep][0]) / 1.25, p[keep] + 3  # 1.25 beats of the piece per query beat
    share = matched_share(q_on, q_p, on, p, np.array([[0]]), np.array([[on.size]]), np.array([-3 % 12]))
    assert share.dtype == np.float32 and share[0] == 1.0
    # at another transposition only chance notes match
    wrong = matched_share(q_on, q_p, on, p, np.array([[0]]), np.array([[on.size]]), np.array([5]))
    assert wrong[0] < 0.6


def test_the_votes_are_the_plain_count():
    rng = np.random.default_rng(1)
    for trial in range(6):
        pieces = [_tune(rng, int(rng.integers(8, 30))) for _ in range(3)]
        ref_on = np.concatenate([x[0] for x in pieces])
        ref_p = np.concatenate([x[1] for x in pieces])
        off = np.cumsum([0] + [x[0].size for x in pieces])
        q_on = np.sort(rng.uniform(3, 20, 12))
        q_p = 60 + rng.integers(-7, 8, 12)
        shifts = rng.integers(0, 12, 3)
        # reference i: its own notes in two spans (as a piece's stored lines), and one empty
        mid = (off[:-1] + off[1:]) // 2
        starts = np.stack([off[:-1], mid, off[:-1]], 1)
        ends = np.stack([mid, off[1:], off[:-1]], 1)
        got = matched_share(q_on, q_p, ref_on, ref_p, starts, ends, shifts)
        # the cover index's dtypes (float32 onsets, int8 pitches) are read as they are
        small = matched_share(q_on, q_p, ref_on.astype(np.float32), ref_p.astype(np.int8), starts, ends, shifts)
        np.testing.assert_array_equal(small, got)
        for i in range(3):
            a, b = off[i], off[i + 1]
            want = _python_count(q_on, q_p, ref_on[a:b], ref_p[a:b], int(shifts[i]))
            assert got[i] == np.float32(want / q_on.size), (trial, i)


def test_no_notes_on_either_side_is_zero():
    on, p = np.arange(8.0), np.full(8, 60)
    assert matched_share(on, p, on, p, np.array([[0], [3]]), np.array([[0], [3]]), np.array([0, 0])).tolist() == [0, 0]
    assert matched_share([], [], on, p, np.array([[0]]), np.array([[8]]), np.array([0])).tolist() == [0]
