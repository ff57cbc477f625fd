"""One-part queries (tracks merged, a piano reduction): the stored tune is looked for
among the query's notes (indexers.align.sw_pitch_classes_score, query.covers)."""

import numpy as np
import pytest

from indexers.align import sw_pitch_classes_score

TUNE = [0, 2, 4, 5, 7, 9, 7, 5]


def _score(q, ref, shift, gap_q=0.25, gap_r=0.6):
    return float(sw_pitch_classes_score(np.asarray(q, np.int64), np.asarray(ref, np.int64),
                                        np.array([0, len(ref)], np.int64), np.array([shift], np.int64),
                                        1.0, 1.0, gap_q, gap_r)[0])


def test_the_tune_among_accompaniment_notes_known_answers():
    down3 = [(p - 3) % 12 for p in TUNE]
    # the tune alone, transposed down 3: every note matches at shift +3
    assert _score(down3, TUNE, 3) == pytest.approx(8.0)
    # an accompaniment note (pitch classes 11, 10: in no relation to the tune) after
    # each tune note but the last: 8 matches, 7 query notes left out at 0.25
    q = [x for p in down3[:-1] for x in (p, 11)] + [down3[-1]]
    assert _score(q, TUNE, 3) == pytest.approx(8.0 - 7 * 0.25)
    # a tune note missing from the query costs 0.6
    assert _score(down3[:4] + down3[5:], TUNE, 3) == pytest.approx(7.0 - 0.6)
    # at another transposition, little matches
    assert _score(q, TUNE, 0) < 2.5
    # several references at once, each at its own shift
    refs = np.asarray(TUNE + [(p + 5) % 12 for p in TUNE], np.int64)
    s = sw_pitch_classes_score(np.asarray(down3, np.int64), refs, np.array([0, 8, 16], np.int64),
                               np.array([3, 8], np.int64), 1.0, 1.0, 0.25, 0.6)
    np.testing.assert_allclose(s, [8.0, 8.0])


def test_references_two_at_a_time_score_as_one_alone():
    """The kernel runs two references together (their common length, then the rest of
    the longer one alone): each scores as it does alone, with an odd count too."""
    rng = np.random.default_rng(5)
    q = rng.integers(0, 12, 70)
    lens = [40, 0, 130, 7, 90]
    refs = [rng.integers(0, 12, m) for m in lens]
    shifts = rng.integers(0, 12, len(lens))
    together = sw_pitch_classes_score(q.astype(np.int64), np.concatenate(refs).astype(np.int64),
                                      np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
                                      shifts.astype(np.int64), 1.0, 1.0, 0.25, 0.6)
    alone = [_score(q, r, int(s)) if len(r) else 0.0 for r, s in zip(refs, shifts)]
    np.testing.assert_array_equal(together, np.asarray(alone, np.float32))


def _notes_of_003(pop909_dir):
    """003.mid's notes as arrays, and the track index of its MELODY track."""
    from ingest.midi_parse import parse_midi

    src = pop909_dir / "003" / "003.mid"
    parsed = parse_midi(src.read_bytes(), piece_id="x", path=str(src))
    t = parsed["notes"]
    n = {c: np.asarray(t.column(c).to_numpy()) for c in ("onset_beats", "duration_beats", "pitch", "channel",
                                                          "track_index")}
    tracks = parsed["tracks"]
    return n, tracks.column("track_index").to_pylist()[tracks.column("name").to_pylist().index("MELODY")]


def _merged_003(pop909_dir, up=3, scale=1.19, jitter_beats=0.125):
    """003.mid with every track merged into one, transposed ``up``, re-timed by
    ``scale`` and its onsets jittered by up to ``jitter_beats``."""
    from query.covers import query_from_notes

    n, _ = _notes_of_003(pop909_dir)
    keep = n["channel"] != 9
    rng = np.random.default_rng(0)
    on = scale * n["onset_beats"][keep] + rng.uniform(-jitter_beats, jitter_beats, keep.sum())
    q = query_from_notes("merged", np.maximum(on, 0), scale * n["duration_beats"][keep],
                         n["pitch"][keep].astype(np.int64) + up)
    assert q.one_part
    return q


def test_a_merged_jittered_retimed_song_finds_its_tune(small_pop909_db, pop909_dir):
    """The merged, re-timed, jittered 003.mid: its skyline is half accompaniment, yet
    the versions of 003 score highest for their tune found among the query's notes,
    and one of them ranks first."""
    from query.covers import ALIGN, load_index

    q = _merged_003(pop909_dir)
    index = load_index(small_pop909_db)
    rows = index.candidates(q)
    r = index.rerank(q, rows)
    tune = index._tune_in_notes(q, rows, r["score"], r["hshift"])
    song = np.array(["/003/" in index.paths[x] for x in rows])
    assert song.any() and (~song).any()
    assert tune[song].max() > tune[~song].max() + 0.1
    assert ALIGN["tune_in_notes"]
    res = index.search(q, top=3)
    assert "/003/" in res.column("path").to_pylist()[0]


def test_a_clear_full_length_query_looks_for_the_tune_in_its_best_candidates_only(small_pop909_db, pop909_dir,
                                                                                    monkeypatch):
    """003.mid with its tracks merged, up 2 semitones, aligns clearly (its best score
    reaches ``clear_score``): its tune is looked for in the best
    ``pc_candidates_clear`` only, the same scores there as when every candidate is
    looked at."""
    from query.covers import ALIGN, load_index

    q = _merged_003(pop909_dir, up=2, scale=1.0, jitter_beats=0.0)
    index = load_index(small_pop909_db)
    rows = index.candidates(q)
    r = index.rerank(q, rows)
    assert q.intervals.size > 2 * ALIGN["min_query_intervals"] and r["score"].max() >= ALIGN["clear_score"]
    assert rows.size > ALIGN["pc_candidates_clear"]
    clear = index._tune_in_notes(q, rows, r["score"], r["hshift"])
    monkeypatch.setitem(ALIGN, "clear_score", float("inf"))
    every = index._tune_in_notes(q, rows, r["score"], r["hshift"])
    best = np.argsort(-r["score"], kind="stable")[: ALIGN["pc_candidates_clear"]]
    assert (every > 0).sum() > ALIGN["pc_candidates_clear"]
    np.testing.assert_array_equal(clear[best], every[best])
    rest = np.setdiff1d(np.arange(rows.size), best)
    assert not clear[rest].any() and every[rest].any()


def test_a_short_polyphonic_part_scores_its_melody_by_the_tune_alone(small_pop909_db, pop909_dir):
    """A few bars of 003.mid with every track merged: its skyline is partly
    accompaniment, so its melody score is the stored tune found among its notes alone
    (``tune_only_below``); the same bars' tune alone (one part, monophonic) still also
    counts its own interval alignment."""
    from query.covers import ALIGN, load_index, query_from_notes

    n, lead = _notes_of_003(pop909_dir)
    window = (n["channel"] != 9) & (n["onset_beats"] >= 40) & (n["onset_beats"] < 56)
    index = load_index(small_pop909_db)

    def melody_and_tune(keep):
        q = query_from_notes("bars", n["onset_beats"][keep] - 40, n["duration_beats"][keep],
                             n["pitch"][keep].astype(np.int64))
        assert q.one_part and q.intervals.size <= 2 * ALIGN["min_query_intervals"]  # short
        rows = index.candidates(q)
        r = index.rerank(q, rows)
        return q, r["mel"], index._tune_in_notes(q, rows, r["score"], r["hshift"])

    q, mel, tune = melody_and_tune(window)
    assert q.skyline_share < ALIGN["tune_only_below"]
    np.testing.assert_array_equal(mel, tune)
    # the tune alone (the MELODY track): its skyline is all of it, and its interval
    # alignment counts too
    q, mel, tune = melody_and_tune(window & (n["track_index"] == lead))
    assert q.skyline_share > ALIGN["tune_only_below"]
    assert (mel >= tune).all() and (mel > tune).any()


def _rhythm(q, q_on, ref, ref_on, shift, miss=1.0):
    from indexers.align import sw_pitch_classes_rhythm_score

    return float(sw_pitch_classes_rhythm_score(np.asarray(q, np.int64), np.asarray(q_on, np.float64),
                                               np.asarray(ref, np.int8), np.asarray(ref_on, np.float32),
                                               np.array([0, len(ref)], np.int64), np.array([shift], np.int64),
                                               1.0, 1.0, 0.25, 1.0, 1.3, miss, 0.3)[0])


def test_the_tune_in_its_rhythm_known_answers():
    """A match counts fully when its time since the last match agrees with the tempo
    so far: a re-timed query keeps every match, accompaniment notes in between cost
    only their gaps, the same pitch classes at other times lose most matches."""
    ref_on = np.array([0, 1, 1.5, 2, 3, 4, 4.5, 5, 6, 8], np.float64)
    tune = TUNE + [0, 2]
    down3 = [(p - 3) % 12 for p in tune]
    # the tune in another key at 1.3x the tempo: its 10 notes match in time
    assert _rhythm(down3, 1.3 * ref_on + 7, tune, ref_on, 3) == pytest.approx(10.0)
    # with an accompaniment note (pitch class 10: 1 once up 3, in no tune note) after
    # each tune note but the last, at other times: 10 matches, 9 query notes left out
    q = [x for p in down3[:-1] for x in (p, 10)] + [down3[-1]]
    q_on = [x for t in 1.3 * ref_on[:-1] for x in (t, t + 0.2)] + [1.3 * ref_on[-1]]
    assert _rhythm(q, q_on, tune, ref_on, 3) == pytest.approx(10.0 - 9 * 0.25)
    # the same pitch classes with each step's length drawn at random: the pitch-only
    # score is still 10, in rhythm much less
    rng = np.random.default_rng(3)
    other_times = np.cumsum(rng.choice([0.25, 0.5, 1.0, 1.5, 3.0], 10))
    assert _rhythm(down3, other_times, tune, ref_on, 3, miss=0.0) == pytest.approx(10.0)
    assert _rhythm(down3, other_times, tune, ref_on, 3) < 7.0


def test_the_tune_in_its_rhythm_without_a_miss_cost_is_the_pitch_only_score():
    """``penalty`` 0: every reference's score equals sw_pitch_classes_score's (random
    references, several at once, some holding the query); with the penalty, a planted
    copy of the query (in another key, slower) keeps its whole score."""
    from indexers.align import sw_pitch_classes_rhythm_score

    rng = np.random.default_rng(11)
    for _ in range(10):
        n = int(rng.integers(4, 60))
        q = rng.integers(0, 12, n)
        q_on = np.cumsum(rng.choice([0.25, 0.5, 1.0], n))
        lens = rng.integers(3, 120, 5)
        refs = [rng.integers(0, 12, m) for m in lens]
        ons = [np.cumsum(rng.choice([0.5, 1.0, 2.0], m)).astype(np.float32) for m in lens]
        refs[1] = (q + 4) % 12
        ons[1] = (q_on / 1.2).astype(np.float32)
        lens[1] = n
        shifts = rng.integers(0, 12, 5)
        shifts[1] = 4
        args = (np.concatenate(refs).astype(np.int8), np.concatenate(ons),
                np.concatenate([[0], np.cumsum(lens)]).astype(np.int64), shifts, 1.0, 1.0, 0.25, 1.0)
        plain = sw_pitch_classes_score(q, args[0], args[2], shifts, 1.0, 1.0, 0.25, 1.0)
        free = sw_pitch_classes_rhythm_score(q, q_on, *args, 1.3, 0.0, 0.3)
        np.testing.assert_allclose(free, plain, atol=1e-5)
        strict = sw_pitch_classes_rhythm_score(q, q_on, *args, 1.3, 1.0, 0.3)
        assert strict[1] == pytest.approx(n) and (strict <= plain + 1e-5).all()


def test_a_short_merged_excerpt_keeps_its_songs_rhythm(small_pop909_db, pop909_dir):
    """Bars of 003.mid, every track merged, re-timed by 1.23 and up 2 semitones: among
    the best candidates, 003's versions have the most of their tune in the query's
    rhythm; being short, it gets that feature for more candidates than a longer query
    would (``rhythm_candidates_short``); a query with tracks gets none (0)."""
    from query.covers import ALIGN, load_index, query_from_notes

    n, lead = _notes_of_003(pop909_dir)
    window = (n["channel"] != 9) & (n["onset_beats"] >= 40) & (n["onset_beats"] < 72)
    index = load_index(small_pop909_db)
    q = query_from_notes("bars", 1.23 * (n["onset_beats"][window] - 40), 1.23 * n["duration_beats"][window],
                         n["pitch"][window].astype(np.int64) + 2)
    r = index._aligned(q)
    rhythm = index._rhythm(q, r)
    song = np.array(["/003/" in index.paths[x] for x in r["rows"]])
    scored = rhythm > 0
    assert q.intervals.size <= 2 * ALIGN["min_query_intervals"]  # short
    assert ALIGN["rhythm_candidates"] < scored.sum() <= ALIGN["rhythm_candidates_short"]
    assert song[scored].any() and (~song[scored]).any()
    assert rhythm[song].max() > rhythm[~song].max()
    tracks = query_from_notes("bars", n["onset_beats"][window], n["duration_beats"][window],
                              n["pitch"][window].astype(np.int64), n["track_index"][window])
    assert not tracks.one_part
    r = index._aligned(tracks)
    assert not index._rhythm(tracks, r).any()
