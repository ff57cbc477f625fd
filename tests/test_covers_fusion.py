"""The cover search's fitted score fusion and the exact-interval n-gram TF-IDF fused in:
known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest


def _tfidf(melodies):
    from query.cover_fusion import IntervalTfidf

    off = np.concatenate([[0], np.cumsum([len(m) for m in melodies])]).astype(np.int64)
    return IntervalTfidf(np.concatenate([np.asarray(m, np.int64) for m in melodies]), off)


def test_interval_tfidf_known_answers():
    a = [60, 62, 64, 65, 67, 69, 71, 72]
    b = [60, 60, 60, 60, 60]  # only repeated notes: 3-gram (0, 0, 0)
    c = [72, 71, 69, 67, 65]  # a descending scale: no 3-gram in common with a
    idx = _tfidf([a, b, c])
    s = idx.scores([p + 5 for p in a])  # a, a fourth up
    assert s.shape == (3,) and s.dtype == np.float32
    assert s[0] == pytest.approx(1.0, abs=1e-5)
    assert s[1] == 0.0 and s[2] == 0.0
    # a's intervals 2 2 1 2 2 2 1 hold 4 distinct 3-grams (2 2 1 twice), all of one IDF;
    # its first 6 notes hold 3 of them: cosine 3 / sqrt(3 * 4)
    s = idx.scores(a[:6])
    assert s[0] == pytest.approx(3 / np.sqrt(12), abs=1e-5)
    assert list(idx.search(s, 3)) == [0]  # pieces scoring 0 are not listed
    # a melody of fewer than 4 notes has no 3-gram
    assert not idx.scores([60, 62, 64]).any()


def test_interval_tfidf_grams_do_not_cross_pieces():
    # the end of piece 0 followed by the start of piece 1 would make the query's grams
    idx = _tfidf([[60, 62, 64], [65, 67, 69], [50, 52, 54, 55, 57, 59]])
    s = idx.scores([60, 62, 64, 65, 67, 69])
    assert s[0] == 0.0 and s[1] == 0.0
    assert s[2] == pytest.approx(1.0, abs=1e-5)  # the same intervals, a tenth lower


def test_interval_tfidf_scores_are_scipys_products_to_the_bit(monkeypatch):
    """The TF-IDF scores are exactly scipy's ``matrix[:, u] @ w`` in float32 (the same
    products added in the same order), on melodies with common and rare 3-grams, for
    queries from the collection and random ones; summed in two threads of half the
    pieces each too, as in a large collection."""
    from indexers import sparse_sums
    from indexers.sparse_sums import column_sums

    rng = np.random.default_rng(7)
    # small steps, mostly: some 3-grams in most pieces (long columns), others in few
    melodies = [60 + np.cumsum(rng.choice([-2, -1, 0, 1, 2, 5, -7], size=int(n), p=[.2, .2, .2, .2, .1, .05, .05]))
                for n in rng.integers(4, 300, 500)]
    idx = _tfidf(melodies)
    for trial in range(30):
        m = melodies[int(rng.integers(0, 500))]
        a = int(rng.integers(0, max(len(m) - 4, 1)))
        query = m[a:a + int(rng.integers(4, 120))] if trial % 3 else 60 + np.cumsum(rng.integers(-5, 6, 80))
        codes, _ = idx._codes(np.asarray(query, np.int64), np.array([0, len(query)]))
        u = np.unique(codes)
        w = idx.idf[u] / float(np.linalg.norm(idx.idf[u]))
        want = np.asarray(idx.matrix[:, u] @ w, np.float32).ravel()
        np.testing.assert_array_equal(idx.scores(query), want)
        with monkeypatch.context() as mp:
            mp.setattr(sparse_sums, "SPLIT_ROWS", 100)
            np.testing.assert_array_equal(idx.scores(query), want)
        # a range of rows, as two threads would sum them (the matrix's columns are sorted)
        lo = int(rng.integers(1, idx.n_pieces - 1))
        m = idx.matrix
        np.testing.assert_array_equal(column_sums(m.indptr, m.indices, m.data, u, w, lo, idx.n_pieces, None, None),
                                      want[lo:])
    assert (np.diff(idx.matrix.indptr).max()) > 100  # some column long enough to matter


def test_fit_logistic_recovers_known_coefficients():
    from query.cover_fusion import fit_logistic

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40_000, 2))
    p = 1 / (1 + np.exp(-(x @ np.array([2.0, -1.0]) + 0.5)))
    y = rng.random(p.size) < p
    coef, intercept = fit_logistic(x, y, l2=0.0)
    np.testing.assert_allclose(coef, [2.0, -1.0], atol=0.08)
    assert intercept == pytest.approx(0.5, abs=0.06)
    with pytest.raises(ValueError, match="both classes"):
        fit_logistic(x, np.zeros(x.shape[0]))


def test_fit_ranking_ranks_within_queries_where_levels_differ():
    """Each query's candidates share a query-level offset on feature 0 (some queries
    score high everywhere); within a query the right one is the highest on feature 0,
    by 1 or more, and feature 1 is noise. The ranking fit puts the right candidate
    first in new queries, weighs the noise little, and its probabilities (a monotone
    map of the score) say right above 0.5, wrong below."""
    from query.cover_fusion import fit_ranking, fuse

    rng = np.random.default_rng(1)

    def queries(n):
        xs, ys, qs = [], [], []
        for k in range(n):
            m = 20
            x = np.stack([rng.normal(size=m) + rng.normal(scale=3.0), rng.normal(size=m)], axis=1)
            y = np.zeros(m, bool)
            y[np.argmax(x[:, 0])] = True
            x[y, 0] += 1.0  # clear of the next one
            xs.append(x), ys.append(y), qs.append(np.full(m, k))
        return np.concatenate(xs), np.concatenate(ys), np.concatenate(qs)

    x, y, q = queries(300)
    coef, intercept = fit_ranking(x, y, q)
    assert coef[0] > 10 * abs(coef[1])
    xt, yt, qt = queries(50)
    s = xt @ coef
    for k in range(50):
        m = qt == k
        assert yt[m][np.argmax(s[m])]
    p = fuse(xt, {"coef": coef, "intercept": intercept})  # monotone in s: a probability
    assert p[yt].mean() > 0.5 > p[~yt].mean()
    with pytest.raises(ValueError, match="both right and wrong"):
        fit_ranking(x, np.zeros(y.size, bool), q)


def test_fit_ranking_does_not_depend_on_a_features_units():
    """The penalty weighs each feature on its own scale: the same feature in other units
    (x 0.001, as an indicator or a small cosine is to a score) gets its coefficient
    scaled back (x 1000), and every ranking score and probability is the same. With a
    penalty on the raw coefficients, the small-unit feature would be shrunk harder."""
    from query.cover_fusion import fit_ranking

    rng = np.random.default_rng(3)
    m, n = 15, 200
    x = rng.normal(size=(m * n, 3))
    q = np.repeat(np.arange(n), m)
    z = x @ np.array([1.5, 1.0, 0.0]) + rng.normal(scale=0.7, size=m * n)
    y = np.zeros(m * n, bool)
    for k in range(n):
        y[k * m + np.argmax(z[q == k])] = True
    coef, intercept = fit_ranking(x, y, q, l2=0.05)
    x2 = x * np.array([1.0, 0.001, 1.0])
    coef2, intercept2 = fit_ranking(x2, y, q, l2=0.05)
    np.testing.assert_allclose(coef2 * np.array([1.0, 0.001, 1.0]), coef, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(x2 @ coef2 + intercept2, x @ coef + intercept, rtol=1e-4, atol=1e-5)


def test_fusion_features_known_answer():
    from query.cover_fusion import FEATURES, fusion_features

    x = fusion_features([1.0, 0.5], [0.9, 0.2], [0.3, 0.6], [0.8, 0.1], [0.95, 0.5], n_intervals=30)
    f = dict(zip(FEATURES, x.T))
    assert x.shape == (2, len(FEATURES))
    np.testing.assert_allclose(f["align_rel"], [0.0, -0.5])
    np.testing.assert_allclose(f["harm_rel"], [-0.3, 0.0])
    np.testing.assert_allclose(f["tfidf_rel"], [0.0, -0.7])
    np.testing.assert_allclose(f["short"], [1.0, 1.0])  # 30 intervals <= 48: short
    np.testing.assert_allclose(f["tfidf_short"], [0.8, 0.1])
    np.testing.assert_allclose(f["rhythm"], [0.0, 0.0])  # no rhythm given: 0
    assert fusion_features([1.0], [1.0], [1.0], [1.0], [1.0], n_intervals=200)[0, FEATURES.index("short")] == 0
    assert fusion_features([], [], [], [], [], n_intervals=5).shape == (0, len(FEATURES))
    x = fusion_features([1.0, 0.5], [0.9, 0.2], [0.3, 0.6], [0.8, 0.1], [0.95, 0.5], n_intervals=30,
                        rhythm=[0.2, 0.7])
    f = dict(zip(FEATURES, x.T))
    np.testing.assert_allclose(f["rhythm_rel"], [-0.5, 0.0])
    np.testing.assert_allclose(f["rhythm_short"], [0.2, 0.7])
    np.testing.assert_allclose(f["support"], [0.0, 0.0])  # no support given: 0
    x = fusion_features([1.0, 0.5], [0.9, 0.2], [0.3, 0.6], [0.8, 0.1], [0.95, 0.5], n_intervals=30,
                        support=[0.4, 0.9])
    f = dict(zip(FEATURES, x.T))
    np.testing.assert_allclose(f["support_rel"], [-0.5, 0.0])
    np.testing.assert_allclose(f["stretch"], [0.0, 0.0])  # no time scale given: 0
    x = fusion_features([1.0, 0.5, 0.5], [0.9, 0.2, 0.2], [0.3, 0.6, 0.6], [0.8, 0.1, 0.1], [0.95, 0.5, 0.5],
                        n_intervals=30, hscale=[1.0, 2.0, 2 ** -0.5])
    np.testing.assert_allclose(dict(zip(FEATURES, x.T))["stretch"], [0.0, 1.0, 0.5])  # octaves either way


def test_shipped_fusion_loads_offline_and_ranks_agreement_first():
    """The coefficients shipped with the package load, match the code's features, say
    what they were fitted on (the fit part only), and score a candidate that every
    feature prefers above one that none does."""
    from query.cover_fusion import FEATURES, FUSION_FILE, fuse, fusion_features, load_fusion

    d = load_fusion()
    assert tuple(d["features"]) == FEATURES and len(d["coef"]) == len(FEATURES)
    assert "fit part" in d["fitted_on"]["what"] and d["fitted_on"]["queries"] > 0
    assert json.loads(FUSION_FILE.read_text())["intercept"] == d["intercept"]
    x = fusion_features([1.1, 0.35], [1.0, 0.3], [0.9, 0.2], [0.9, 0.05], [0.95, 0.6], n_intervals=120,
                        rhythm=[0.8, 0.1])
    s = fuse(x)
    assert 0 <= s[1] < s[0] <= 1
    # the same scores reached by squeezing the query 2x count less than at its own scale
    x = fusion_features([0.8, 0.8], [0.7, 0.7], [0.6, 0.6], [0.3, 0.3], [0.9, 0.9], n_intervals=120,
                        rhythm=[0.3, 0.3], hscale=[1.0, 2.0])
    s = fuse(x)
    assert s[1] < s[0]


def _pop_song(seed: int, key: int, bars: int = 32):
    """Block chords I-V-vi-IV, one a bar (track 1), under a random tune of four quarter
    notes a bar (track 0): every such song shares its harmony with the others."""
    rng = np.random.default_rng(seed)
    scale = np.array([0, 2, 4, 5, 7, 9, 11])
    on, dur, pitch, track = [], [], [], []
    for bar in range(bars):
        root, third = ((0, 4), (7, 4), (9, 3), (5, 4))[bar % 4]
        for iv in (0, third, 7):
            on.append(4.0 * bar), dur.append(4.0), pitch.append(48 + key + (root + iv) % 12), track.append(1)
        for beat in range(4):
            on.append(4.0 * bar + beat), dur.append(1.0), track.append(0)
            pitch.append(72 + key + int(rng.choice(scale)) - 12 * int(rng.random() < 0.3))
    return np.array(on), np.array(dur), np.array(pitch), np.array(track)


def test_reported_score_is_low_when_no_version_is_there_and_keeps_the_order():
    """30 songs share one progression, each under its own tune. A new song of that
    progression finds its stored version (transposed) with a high score, and against the
    collection without it its best (wrong) answer scores low: the harmony matches
    everywhere, nothing stands out (before the calibration the fusion gave it 0.98, as
    high as a version's). In both, the answers come in the fusion's order. A piece
    with many versions keeps a high score for each, and so does a version in a
    collection of one or two pieces. A short query (8 bars) is calibrated as one."""
    from query.cover_fusion import calibrate, fusion_logits
    from query.covers import _short, query_from_notes

    songs = [_pop_song(s, key=5 * s % 12) for s in range(30)]
    on, dur, p, trk = _pop_song(99, key=2)
    with_it, without = _index_of(songs + [(on, dur, p + 3, trk)]), _index_of(songs)
    for bars in (8, 32):
        m = on < 4 * bars
        for index, there in ((with_it, True), (without, False)):
            q = query_from_notes("q", on[m], dur[m], p[m], trk[m])
            res = index.search(q, top=8, explain_top=0)
            got = res.column("score").to_numpy()
            r = index._aligned(q)
            z = fusion_logits(index._features(q, r))
            order = np.argsort(-z, kind="stable")[:8]
            assert res.column("piece_id").to_pylist() == [index.ids[i] for i in r["rows"][order]]
            assert _short(q) == (bars == 8)
            np.testing.assert_allclose(got, calibrate(z, short=_short(q))[order], atol=1e-4)  # printed to 4 decimals
            if there:
                assert res.column("piece_id")[0].as_py() == "s30" and got[0] > 0.9, (bars, got)
            else:
                assert got[0] < 0.1, (bars, got)
    # a collection of one or two pieces, the version among them: the crowd is made up
    # to CALIBRATION_MIN_CROWD at the fit's typical wrong answer, so it still scores high
    # (without that, 0.000 and 0.015: the median was the version itself)
    for n in (0, 1):
        tiny = _index_of(songs[:n] + [(on, dur, p + 3, trk)])
        res = tiny.search(query_from_notes("q", on, dur, p, trk), top=3, explain_top=0)
        assert res.column("piece_id")[0].as_py() == f"s{n}" and res.column("score")[0].as_py() > 0.9
    # a piece with many versions (its tune in 12 keys): they fill the first ranks, and
    # still every one of them scores high (the query's crowd is the median candidate)
    many = _index_of(songs + [(on, dur, p + k, trk) for k in range(-5, 7) if k != 0] + [(on, dur, p, trk)])
    res = many.search(query_from_notes("q", on, dur, p, trk), top=12, explain_top=0)
    assert all(int(i[1:]) >= 30 for i in res.column("piece_id").to_pylist())
    assert min(res.column("score").to_pylist()) > 0.9, res.column("score").to_pylist()


def test_a_collection_of_mostly_one_pieces_versions_scores_them_high():
    """A tune stored in 23 transpositions among 3 or 6 other songs of its progression:
    the median aligned candidate is a version, and the best answer stood little above
    it, so every version scored 0.000 (as 22 performances of one piece with a few
    others did: docs/covers.md, "A collection of mostly one piece's versions"). The
    crowd's median is capped at what the fit's crowds reach: every version scores high,
    the other songs low, and another tune of that progression, whose song is not there,
    still gets a low best answer."""
    from query.covers import query_from_notes

    songs = [_pop_song(s, key=5 * s % 12) for s in range(30)]
    on, dur, p, trk = _pop_song(99, key=2)
    versions = [(on, dur, p + k, trk) for k in range(-12, 12) if k != 0]
    for n_other in (3, 6):
        index = _index_of(songs[:n_other] + versions)
        res = index.search(query_from_notes("q", on, dur, p, trk), top=30, explain_top=0)
        score = dict(zip(res.column("piece_id").to_pylist(), res.column("score").to_pylist()))
        assert len(score) == n_other + 23
        assert min(s for pid, s in score.items() if int(pid[1:]) >= n_other) > 0.9, score
        assert max(s for pid, s in score.items() if int(pid[1:]) < n_other) < 0.1, score
        res = index.search(query_from_notes("absent", *_pop_song(98, key=7)), top=3, explain_top=0)
        assert res.column("score")[0].as_py() < 0.1


def test_one_query_searched_in_two_collections_gets_each_collections_answers():
    """A query object searched in one collection and then in another (a smaller one,
    then a larger one) answers as a fresh query does in each: its TF-IDF cosines are
    the collection's own (they were cached on the query for the first collection: the
    smaller one then failed with a numpy error, the larger one got rows of the first)."""
    from query.covers import query_from_notes

    songs = [_pop_song(s, key=5 * s % 12) for s in range(30)]
    on, dur, p, trk = _pop_song(99, key=2)
    big = _index_of(songs + [(on, dur, p + 3, trk)])
    small = _index_of(songs[:20] + [(on, dur, p + 3, trk)])
    fresh = {}
    for name, index in (("big", big), ("small", small)):
        res = index.search(query_from_notes("q", on, dur, p, trk), top=10, explain_top=0)
        fresh[name] = (res.column("piece_id").to_pylist(), res.column("score").to_pylist())
    q = query_from_notes("q", on, dur, p, trk)
    for name, index in (("big", big), ("small", small), ("big", big)):
        res = index.search(q, top=10, explain_top=0)
        assert res.column("piece_id").to_pylist() == fresh[name][0], name
        np.testing.assert_allclose(res.column("score").to_pylist(), fresh[name][1], atol=1e-6)


def test_a_midi_querys_midi_answers_are_calibrated_in_a_collection_with_recordings():
    """The shared-progression collection again, with one of its songs stored as a
    recording. A MIDI query's MIDI answers are calibrated among themselves, as in a
    collection of MIDI only: with its song absent the best answer still scores low
    (0.98 before, when the MIDI answers of a search with a recording kept the fusion's
    own probability), with it present its version scores high. The recording's answer
    keeps the recording fusion's probability (here 0.96 for a wrong song: that fusion
    is not calibrated for a progression shared by every piece, docs/covers.md). (With
    the recording left among the logits calibrated, the MIDI scores here would move by
    < 1e-5: this checks that they are calibrated, not which candidates the median is of.)"""
    from query.cover_fusion import RECORDING_FEATURES, RECORDING_FUSION_FILE, calibrate, fuse, fusion_logits, load_fusion
    from query.covers import _short, query_from_notes

    songs = [_pop_song(s, key=5 * s % 12) for s in range(30)]
    on, dur, p, trk = _pop_song(99, key=2)
    for there, bars in ((True, 32), (False, 32), (True, 8)):  # 8 bars: a short query
        m = on < 4 * bars
        q = query_from_notes("q", on[m], dur[m], p[m], trk[m])
        index = _index_of(songs + ([(on, dur, p + 3, trk)] if there else []))
        index.is_recording[5] = True
        r = index._aligned(q)
        assert 5 in r["rows"]  # the recording is among the aligned candidates: a mixed search
        res = index.search(q, top=40, explain_top=0)
        got = dict(zip(res.column("piece_id").to_pylist(), res.column("score").to_pylist()))
        midi = r["rows"] != 5
        want = calibrate(fusion_logits(index._features(q, r)[midi]), short=_short(q))
        for row, s in zip(r["rows"][midi], want):
            assert got[index.ids[row]] == pytest.approx(float(s), abs=1e-4)
        x_rec, _ = index._recording_features(q, r, index._features(q, r))
        rec_score = fuse(x_rec[~midi], load_fusion(str(RECORDING_FUSION_FILE), RECORDING_FEATURES))
        assert got["s5"] == pytest.approx(float(rec_score[0]), abs=1e-4)
        if there:
            assert res.column("piece_id")[0].as_py() == "s30" and got["s30"] > 0.9, got
        else:
            assert max(s for pid, s in got.items() if pid != "s5") < 0.1, got


def test_calibration_fit_recovers_the_rule_and_refuses_a_reversed_order():
    """fit_calibration on queries whose right answer stands far above the rest (versions
    there) and queries whose best does not (none there): a clear best gets a high
    probability, a best among equals a low one; labels that reward a low logit are an error."""
    from query.cover_fusion import calibrate, fit_calibration

    rng = np.random.default_rng(0)
    logits, labels = [], []
    for i in range(200):
        z = rng.normal(0.0, 1.0, 40) + rng.uniform(-2.0, 2.0)  # some crowds align better than others
        y = np.zeros(40, bool)
        if i % 2 == 0:
            z[0] += 6.0
            y[0] = True
        logits.append(z)
        labels.append(y)
    coef, intercept, crowd, cap = fit_calibration(logits, labels)
    assert crowd == pytest.approx(0.0, abs=0.1)  # the wrong candidates' median logit
    # the cap: the 99% quantile of the queries' medians (each about its crowd's offset)
    medians = [np.median(z) for z in logits]
    assert cap == pytest.approx(np.quantile(medians, 0.99)) and 1.5 < cap < 2.5
    fitted = {"coef": coef.tolist(), "intercept": intercept, "crowd_logit": crowd, "crowd_cap": cap}
    params = {"calibration": {"long": fitted}}
    clear = np.r_[7.0, rng.normal(0.0, 1.0, 39)]
    among_equals = rng.normal(0.0, 1.0, 40)
    assert calibrate(clear, params=params)[0] > 0.9 and calibrate(among_equals, params=params).max() < 0.1
    # a short query gets the short queries' calibration (here one that says "no" to all)
    both = {"calibration": {"long": fitted, "short": dict(fitted, intercept=intercept - 50.0)}}
    assert calibrate(clear, params=both)[0] > 0.9 and calibrate(clear, params=both, short=True)[0] < 0.01
    # a clear best among a crowd of its versions (all far above the fit's crowds): the
    # median is taken at the cap, so the best still scores high; without the cap it did not
    versions = np.r_[8.0, rng.normal(6.0, 0.5, 39)]
    assert calibrate(versions, params=params)[0] > 0.9
    uncapped = {"calibration": {"long": dict(fitted, crowd_cap=np.inf)}}
    assert calibrate(versions, params=uncapped)[0] < 0.1
    with pytest.raises(ValueError, match="must be positive"):
        fit_calibration(logits, [np.argsort(np.argsort(-z)) == 9 for z in logits])  # the 10th best right


def test_fusion_with_wrong_features_is_a_clear_error(tmp_path):
    from query.cover_fusion import FUSION_FILE, load_fusion

    p = tmp_path / "f.json"
    p.write_text(json.dumps({"features": ["align"], "coef": [1.0], "intercept": 0.0}))
    with pytest.raises(ValueError, match="refit with benchmarks/fit_cover_fusion.py"):
        load_fusion(str(p))
    shipped = json.loads(FUSION_FILE.read_text())
    # a calibration fitted before the crowd's cap; one for all queries (before the short
    # queries had their own); none
    for drop in ("crowd_cap", "one for all", None):
        d = json.loads(json.dumps(shipped))
        if drop == "crowd_cap":
            del d["calibration"]["short"][drop]
        elif drop:
            d["calibration"] = dict(d["calibration"].pop("long"), features=d["calibration"]["features"])
        else:
            del d["calibration"]
        p.write_text(json.dumps(d))
        load_fusion.cache_clear()
        with pytest.raises(ValueError, match="--calibration-only"):
            load_fusion(str(p))


def test_pool_beats_at_a_non_integer_scale_known_answer():
    """Frames of 1.5 beats over C, C, E, E (one beat each): the first frame holds C for
    1.5 beats, the second C for 0.5 and E for 1, the third E for 1 (the last, partial);
    integer and half-beat frames are as before."""
    from query.covers import _pool_beats

    c = np.zeros((4, 12), np.float32)
    c[:2, 0] = 1
    c[2:, 4] = 1
    f = _pool_beats(c, 1.5)
    assert f.shape == (3, 12)
    np.testing.assert_allclose(f[0], np.eye(12)[0], atol=1e-6)
    np.testing.assert_allclose(f[1, [0, 4]], np.array([0.5, 1.0]) / np.sqrt(1.25), atol=1e-6)
    np.testing.assert_allclose(f[2], np.eye(12)[4], atol=1e-6)
    np.testing.assert_allclose(_pool_beats(c, 2.0), np.eye(12)[[0, 4]], atol=1e-6)
    np.testing.assert_allclose(_pool_beats(c, 0.5), np.eye(12)[[0, 0, 0, 0, 4, 4, 4, 4]], atol=1e-6)


def _chord_song(seed: int, n_chords: int = 64):
    """Block triads, one every 2 beats, roots drawn at random: notes as arrays."""
    rng = np.random.default_rng(seed)
    roots, thirds = [], []
    for _ in range(n_chords):
        roots.append(int(rng.integers(0, 12)))
        thirds.append(3 if rng.random() < 0.5 else 4)
    return _triads(roots, thirds, beats_each=2.0)


def _triads(roots, thirds, beats_each: float = 1.0):
    """Block triads on these roots (third 3: minor, 4: major), one every ``beats_each``
    beats: notes as arrays."""
    on, dur, pitch = [], [], []
    for c, (root, third) in enumerate(zip(roots, thirds)):
        for iv in (0, int(third), 7):
            on.append(c * beats_each)
            dur.append(beats_each)
            pitch.append(48 + int(root) + iv)
    return np.array(on), np.array(dur), np.array(pitch)


def _index_of(songs):
    """A collection of these pieces' notes (arrays, with track indices or not), with
    every line the vectors stage stores (a multi-track piece's second melody line too)."""
    from indexers.features import features_from_notes
    from query.cover_notes import notes_from_arrays

    return _index_from_features([features_from_notes(*s) for s in songs],
                                notes_from_arrays([s[0] for s in songs], [s[2] for s in songs]))


def _index_from_features(fs, notes=None):
    """A collection of pieces of these features (``indexers.features.features_from_notes``)
    and ``notes`` (``query.cover_notes.NoteArrays``, for the note vote; None: none)."""
    from indexers.features import quantize_chroma
    from query.covers import CoverIndex

    return CoverIndex([f"s{i}" for i in range(len(fs))], [f"s{i}.mid" for i in range(len(fs))],
                      np.asarray([f["vector"] for f in fs], np.float32),
                      np.concatenate([quantize_chroma(f["beat_chroma"]).ravel() for f in fs]),
                      [f["beat_chroma"].shape[0] for f in fs], np.concatenate([f["melody_pitch"] for f in fs]),
                      np.concatenate([f["melody_onset_beats"] for f in fs]), [f["melody_pitch"].size for f in fs],
                      np.concatenate([f["bass_pc"] for f in fs]), [f["bass_pc"].size for f in fs],
                      second_pitch=np.concatenate([f["second_pitch"] for f in fs]),
                      second_onset=np.concatenate([f["second_onset_beats"] for f in fs]),
                      n_second=[f["second_pitch"].size for f in fs],
                      third_pitch=np.concatenate([f["third_pitch"] for f in fs]),
                      third_onset=np.concatenate([f["third_onset_beats"] for f in fs]),
                      n_third=[f["third_pitch"].size for f in fs], notes=notes)


def test_support_is_the_best_score_among_a_candidates_likely_versions():
    """Piece 8 is a copy of piece 3 (a version: the same melody); the other songs are
    random. Each of the two gets the other's alignment score as its support, a piece
    with no version among the candidates 0, and the query's own score is never its own
    support."""
    songs = [_chord_song(s) for s in range(8)] + [_chord_song(3)]
    index = _index_of(songs)
    s = index._support({"rows": np.array([3, 8, 5, 6]), "score": np.array([0.9, 0.4, 0.7, 0.2], np.float32)})
    np.testing.assert_allclose(s, [0.4, 0.9, 0.0, 0.0], rtol=1e-6)
    assert index._support({"rows": np.array([3]), "score": np.array([0.9], np.float32)}).tolist() == [0.0]


def test_a_query_retimed_by_a_non_integer_factor_gets_its_scale_from_the_fine_grid():
    """Song 3's chords with every time multiplied by 2 ** (2/6) = 1.26 (a tick grid that
    shares no beat with the stored file): no notated scale (0.5, 1, 2) aligns it well,
    so the fine grid is tried, and 1.26 wins; the song ranks first."""
    from query.covers import ALIGN, query_from_notes

    songs = [_chord_song(s) for s in range(12)]
    index = _index_of(songs)
    on, dur, p = songs[3]
    f = 2 ** (2 / 6)
    q = query_from_notes("retimed", on * f, dur * f, p + 2)
    rows = index.candidates(q)
    assert 3 in rows[: ALIGN["scale_probe"]]
    probe = rows[: ALIGN["scale_probe"]]
    scale = index._probe_scale(q, probe, index._frames_of(probe), None)
    assert scale == pytest.approx(f, rel=1e-6)
    res = index.search(q, top=3)
    assert res.column("piece_id").to_pylist()[0] == "s3"
    assert res.column("time_scale").to_pylist()[0] == pytest.approx(f, rel=0.15)


def test_fusion_ranks_midi_and_recordings_each_with_its_own_fit():
    """A MIDI query among MIDI pieces gets the fused score (a probability: the search's
    scores differ from its alignment scores); where one of the answers is a recording,
    the MIDI answers get the MIDI fusion's, calibrated, and the recording the recording fusion's
    (query.cover_fusion.RECORDING_FEATURES; no database here, so no chroma distance);
    with ``recording_fusion`` off every answer keeps its alignment score, as before."""
    from query.cover_fusion import RECORDING_FEATURES, RECORDING_FUSION_FILE, calibrate, fuse, fusion_logits, load_fusion
    from query.covers import ALIGN
    from query.covers import query_from_notes

    songs = [_chord_song(s) for s in range(10)]
    on, dur, p = songs[4]
    q = query_from_notes("q", on, dur, p + 3)
    index = _index_of(songs)
    aligned = index._aligned(q)
    fused = index.search(q, top=5, explain_top=0)
    assert fused.column("piece_id")[0].as_py() == "s4"
    assert 0 < fused.column("score")[0].as_py() <= 1
    assert fused.column("score")[0].as_py() != pytest.approx(float(aligned["score"].max()), abs=1e-4)
    index.is_recording[7] = True
    mixed = index.search(q, top=10, explain_top=0)
    assert mixed.column("piece_id")[0].as_py() == "s4"
    r = index._aligned(q)
    x_rec, rec = index._recording_features(q, r, index._features(q, r))
    assert rec.tolist() == (r["rows"] == 7).tolist()
    s7 = float(fuse(x_rec[rec], load_fusion(str(RECORDING_FUSION_FILE), RECORDING_FEATURES))[0])
    got = {p: s for p, s in zip(mixed.column("piece_id").to_pylist(), mixed.column("score").to_pylist())}
    assert 0 < s7 < 1 and got["s7"] == pytest.approx(s7, abs=1e-4)
    # the MIDI answers there are calibrated among themselves (step 6, as without recordings)
    x = index._features(q, r)[~rec]
    midi = {str(index.ids[i]): float(s) for i, s in zip(r["rows"][~rec], calibrate(fusion_logits(x)))}
    assert all(got[p] == pytest.approx(midi[p], abs=1e-4) for p in got if p != "s7")
    ALIGN["recording_fusion"] = False
    try:
        plain = index.search(q, top=5, explain_top=0)
    finally:
        ALIGN["recording_fusion"] = True
    assert plain.column("piece_id")[0].as_py() == "s4"
    assert plain.column("score")[0].as_py() == pytest.approx(float(aligned["score"].max()), abs=1e-5)


def test_bass_line_feature_finds_the_song_at_its_transposition():
    """24 chords from the middle of song 4, 3 semitones up: its bass line (the chord
    roots) aligns with the stored song's at the harmony transposition, every root
    matched; another song's roots match by chance only. The fusion gets the score and
    its distance to the best. The whole song is a clear query: no bass step, and its
    answer still stands."""
    from query.cover_fusion import FEATURES
    from query.covers import query_from_notes

    songs = [_chord_song(s) for s in range(10)]
    index = _index_of(songs)
    on, dur, p = songs[4]
    m = (on >= 40) & (on < 88)
    q = query_from_notes("q", on[m] - 40, dur[m], p[m] + 3)
    assert q.bass_pc.size >= 12
    r = index._aligned(q)
    assert not index._clear(q, r["score"])
    bass = index._bass(q, r)
    right = int(np.flatnonzero(r["rows"] == 4)[0])
    assert bass[right] == pytest.approx(1.0, abs=1e-6)
    assert np.delete(bass, right).max() < 0.6
    x = index._features(q, r)
    b = FEATURES.index("bass")
    np.testing.assert_allclose(x[:, b], bass, rtol=1e-6)
    np.testing.assert_allclose(x[:, b + 1], bass - bass.max(), rtol=1e-6, atol=1e-7)

    whole = query_from_notes("whole", on, dur, p + 3)
    r = index._aligned(whole)
    assert index._clear(whole, r["score"]) and not index._bass(whole, r).any()
    assert index.search(whole, top=1).column("piece_id")[0].as_py() == "s4"


def test_synthetic_pieces_of_the_100k_benchmark_have_bass_lines():
    """benchmarks/covers.py synthetic_index (the 100k-piece latency figures): the real
    pieces keep their bass lines; each synthetic one gets the strongest pitch class of
    each 2-beat frame of its spliced chroma, repeats merged; the search runs its bass
    step over them and still finds the song."""
    import importlib.util
    import sys
    from pathlib import Path

    from query.covers import query_from_notes

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "covers.py"
    spec = importlib.util.spec_from_file_location("covers_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    songs = [_chord_song(s) for s in range(10)]
    index = _index_of(songs)
    big = bench.synthetic_index(index, 40, np.random.default_rng(0))
    assert len(big) == 40
    np.testing.assert_array_equal(big.bass_pc[:big.bass_off[10]], index.bass_pc)
    for i in range(10, 40):
        line = big.bass_pc[big.bass_off[i]:big.bass_off[i + 1]]
        ch = big.chroma_q[big.beat_off[i]:big.beat_off[i + 1]].astype(np.int64)
        frames = np.add.reduceat(ch, np.arange(0, ch.shape[0], 2), axis=0)
        top = np.argmax(frames, axis=1)[frames.max(axis=1) > 0]
        want = top[np.r_[True, top[1:] != top[:-1]]]
        assert line.size > 10
        np.testing.assert_array_equal(line, want)
    on, dur, p = songs[4]
    q = query_from_notes("q", on, dur, p + 3)
    r = big._aligned(q)
    assert big.ids[r["rows"][np.argmax(big._bass(q, r))]] == "s4"
    # notes: the real pieces keep theirs; a synthetic piece has a real piece's notes at
    # their onsets and octaves, each of a pitch class its chroma holds at that beat, then
    # its own lead line
    np.testing.assert_array_equal(big.notes.pitch[:big.notes.off[10]], index.notes.pitch)
    real_counts = np.diff(index.notes.off)
    for i in range(10, 40):
        on_i, p_i = big.notes.of_row(i)
        lead = big.mel_pitch[big.mel_off[i]:big.mel_off[i + 1]]
        n_acc = on_i.size - lead.size
        assert n_acc in real_counts
        np.testing.assert_array_equal(p_i[n_acc:], lead)
        ch = big.chroma_q[big.beat_off[i]:big.beat_off[i + 1]]
        beat = np.clip(on_i[:n_acc].astype(np.int64), 0, ch.shape[0] - 1)
        assert np.all(ch[beat, p_i[:n_acc] % 12] > 0)


def test_bass_steps_known_answer():
    """Steps are the intervals to the next bass note mod 12, minus 1; each line's last
    note (and a repeat) has none, so no n-gram crosses two pieces."""
    from query.covers import _bass_steps

    pc = np.array([0, 7, 0, 5, 3, 3, 8], np.int8)
    np.testing.assert_array_equal(_bass_steps(pc, np.array([0, 4, 7])), [6, 4, 4, -1, -1, 4, -1])
    assert _bass_steps(np.zeros(0, np.int8), np.array([0, 0])).size == 0


def test_bass_step_list_finds_the_song_from_its_roots():
    """16 chord roots from the middle of song 7, 5 semitones up and one root dropped: the
    bass step list (transposition-free 3- and 4-grams) ranks song 7 first."""
    from query.covers import _bass_steps

    songs = [_chord_song(s) for s in range(30)]
    index = _index_of(songs)
    pc = index.bass_pc[index.bass_off[7]:index.bass_off[8]]
    q = np.delete((pc[20:36].astype(np.int64) + 5) % 12, 8).astype(np.int8)
    rows = index.bass_grams.search(_bass_steps(q, np.array([0, q.size])), 5)
    assert rows[0] == 7


def test_melody_sketch_estimates_the_tfidf_cosine():
    """IntervalTfidf.sketch: a copy (and a transposed copy: the same intervals) of a melody
    has the same sketch; for unrelated random melodies the sketches' dot product stays
    near their exact TF-IDF cosine (error ~ 1/sqrt(dims)) and below the support threshold."""
    rng = np.random.default_rng(3)
    mels = [60 + np.cumsum(rng.integers(-4, 5, 200)) % 24 for _ in range(40)]
    mels += [mels[5].copy(), mels[7] + 5]
    t = _tfidf(mels)
    sk = t.sketch(128).astype(np.float32)
    assert sk.shape == (42, 128) and t.sketch(128).dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(sk, axis=1), 1.0, atol=2e-3)
    est = sk @ sk.T
    m = t.matrix.tocsr()
    exact = (m @ m.T).toarray()
    assert est[5, 40] > 0.99 and est[7, 41] > 0.99
    unrelated = ~np.eye(42, dtype=bool)
    unrelated[5, 40] = unrelated[40, 5] = unrelated[7, 41] = unrelated[41, 7] = False
    err = np.abs(est - exact)[unrelated]
    assert err.mean() < 0.1 and err.max() < 0.45
    assert est[unrelated].max() < 0.5


def test_a_short_query_is_aligned_on_one_beat_frames(monkeypatch):
    """Piece 1 is piece 0 with each pair of beats' chords swapped: their 2-beat frames
    are the same, so on 2-beat frames a 16-beat excerpt of piece 0 aligns with both
    alike; on 1-beat frames (``fine_frames_beats``: a query of at most that many beats)
    only with piece 0. A long query keeps 2-beat frames."""
    from query.covers import ALIGN, query_from_notes

    assert ALIGN["fine_frames_beats"] >= 16  # shipped: the excerpt below gets 1-beat frames
    rng = np.random.default_rng(5)
    roots, quals = rng.integers(0, 12, 96), rng.choice([3, 4], 96)
    swap = np.arange(96).reshape(-1, 2)[:, ::-1].ravel()
    songs = [_triads(roots, quals), _triads(roots[swap], quals[swap])] + \
        [_chord_song(s) for s in range(6)]
    index = _index_of(songs)
    on, dur, pitch = songs[0]
    keep = (on >= 40) & (on < 56)
    rows = np.arange(len(songs))

    def harmony(notes, fine_beats):
        monkeypatch.setitem(ALIGN, "fine_frames_beats", fine_beats)
        return index.rerank(query_from_notes("q", *notes), rows, scale=1.0)["harm"]

    excerpt = (on[keep] - 40, dur[keep], pitch[keep])
    coarse, fine = harmony(excerpt, 0), harmony(excerpt, 64)
    assert coarse[0] == pytest.approx(coarse[1], abs=0.02)
    assert fine[0] > 0.9 and fine[0] > fine[1] + 0.3
    whole = harmony(songs[0], 64)  # 96 beats: 2-beat frames, both alike
    assert whole[0] == pytest.approx(whole[1], abs=0.02)


def test_a_short_query_skips_a_frame_for_fine_chroma_gap(monkeypatch):
    """A beat inserted into an excerpt (a tempo curve's drift) costs the alignment one
    skipped frame: at ``fine_chroma_gap`` for a short query on 1-beat frames, at
    ``chroma_gap`` for a long one (which does not see ``fine_chroma_gap``)."""
    from query.covers import ALIGN, query_from_notes

    rng = np.random.default_rng(7)
    roots, quals = rng.integers(0, 12, 96), rng.choice([3, 4], 96)
    songs = [_triads(roots, quals)] + [_chord_song(s) for s in range(5)]
    index = _index_of(songs)
    rows = np.arange(len(songs))
    at = np.r_[np.arange(40, 48), 47, np.arange(48, 56)]  # beat 47's chord twice: 17 beats
    excerpt = _triads(roots[at], quals[at])
    at_whole = np.r_[np.arange(48), 47, np.arange(48, 96)]
    whole = _triads(roots[at_whole], quals[at_whole])

    def own_score(notes, fine_gap):
        monkeypatch.setitem(ALIGN, "fine_chroma_gap", fine_gap)
        return float(index.rerank(query_from_notes("q", *notes), rows, scale=1.0)["harm"][0])

    assert ALIGN["fine_chroma_gap"] < ALIGN["chroma_gap"]
    cheap, dear = own_score(excerpt, ALIGN["fine_chroma_gap"]), own_score(excerpt, 5.0)
    assert cheap > 0.85 and cheap > dear + 0.05
    assert own_score(whole, 0.3) == pytest.approx(own_score(whole, 5.0))


def _tune(seed: int, n_notes: int, low: int = 60):
    """A random-walk tune (one note at a time, 0.5 or 1 beat each): (onsets, durations,
    pitches)."""
    rng = np.random.default_rng(seed)
    steps = rng.choice([-4, -3, -2, -1, 1, 2, 3, 4, 5], n_notes)
    pitch = low + 12 + np.cumsum(steps)
    pitch = low + (pitch - low) % 24  # within two octaves
    dur = rng.choice([0.5, 1.0], n_notes)
    return np.concatenate([[0.0], np.cumsum(dur)[:-1]]), dur, pitch


def _parts(*parts):
    """Tracks (onsets, durations, pitches) as one piece's arrays, track k the k-th part."""
    return tuple(np.concatenate(x) for x in zip(*[(on, dur, p, np.full(p.size, k)) for k, (on, dur, p)
                                                  in enumerate(parts)]))


def _chords_under(on, seed: int):
    """A block triad every 2 beats under a part that lasts until the last of ``on``."""
    return _chord_song(seed, n_chords=int(on.max() // 2) + 1)


def test_a_version_whose_tune_is_its_second_line_is_a_candidate(monkeypatch):
    """240 pieces share one lead line (a countermelody: strictly one note at a time,
    quicker than a tune) and one chord part; each has a tune of its own as its second
    line (doubling a note in every 8: less of a melody than the countermelody). The
    last piece's tune alone, a fifth up, differs from the others only in what the
    stored second lines hold: it reaches that piece through their n-gram list
    (``second_line_candidates``) and ranks it first, by its melody; without that list
    the piece is not among the candidates."""
    import query.covers as qc
    from query.covers import query_from_notes

    c_on, c_dur, c_p = _tune(1001, 240, low=72)
    c_on, c_dur = c_on / 1.5, c_dur / 1.5  # quicker: more notes in the same time
    on, dur, p = _chords_under(c_on, 5000)
    chords = (on, dur, p - 12)  # every root below every tune note: the bass line is the chords' alone
    pieces, tunes = [], []
    for s in range(240):
        t_on, t_dur, t_p = tune = _tune(s, 100)
        dbl = np.arange(0, t_p.size, 8)
        tune_part = (np.concatenate([t_on, t_on[dbl]]), np.concatenate([t_dur, t_dur[dbl]]),
                     np.concatenate([t_p, t_p[dbl] - 4]))
        pieces.append(_parts((c_on, c_dur, c_p), tune_part, chords))
        tunes.append(tune)
    index = _index_of(pieces)
    assert index.has_second.all()
    t_on, t_dur, t_p = tunes[-1]
    q = query_from_notes("tune", t_on, t_dur, t_p + 7)
    assert q.intervals.size > 2 * qc.ALIGN["min_query_intervals"]  # a long query: a few dozen candidates
    assert qc.ALIGN["second_line_candidates"] > 0
    assert 239 in index.candidates(q)
    res = index.search(q, top=3)
    assert res.column("piece_id")[0].as_py() == "s239" and res.column("matched_by")[0].as_py() == "melody"
    assert res.column("melody_score")[0].as_py() > 0.9 and res.column("transposition")[0].as_py() == 5  # -7
    # a stored piece as the query (`atlas covers ID`) has the second line its file has
    by_id, by_file = index.query_for_piece("s3"), query_from_notes("s3.mid", *pieces[3])
    assert by_file.second_pitch is not None and np.array_equal(by_id.second_pitch, by_file.second_pitch)
    np.testing.assert_allclose(by_id.second_onset_beats, by_file.second_onset_beats, atol=1e-5)
    assert index.query_for_piece("s3", second_line=False).second_pitch is None
    monkeypatch.setitem(qc.ALIGN, "second_line_candidates", 0)
    assert 239 not in index.candidates(q)


def test_a_querys_second_line_is_aligned_when_its_lead_is_not_the_tune(monkeypatch):
    """A long two-part query: a countermelody that looks more like a melody (strictly one
    note at a time, more notes) over the tune, which enters at beat 16. The stored piece
    0 has the tune as its lead; no stored piece has the countermelody. The query's lead
    line is the countermelody, so piece 0's melody score comes from the query's second
    line (``query_second_line``), and the explained region is the tune's, from beat 16;
    without the second line, piece 0's melody score is a chance match's."""
    import query.covers as qc
    from query.covers import query_from_notes

    t_on, t_dur, t_p = _tune(2000, 160)
    pieces = [_parts((t_on, t_dur, t_p), _chords_under(t_on, 6000))]
    for s in range(1, 41):
        on, dur, p = _tune(3000 + s, 120)
        pieces.append(_parts((on, dur, p), _chords_under(on, 7000 + s)))
    index = _index_of(pieces)
    c_on, c_dur, c_p = _tune(2001, 300, low=74)
    c_on, c_dur = c_on / 1.5, c_dur / 1.5
    dbl = np.arange(0, t_p.size, 8)
    tune_on = np.concatenate([t_on, t_on[dbl]]) + 16
    q_on, q_dur, q_p, q_trk = _parts((c_on, c_dur, c_p), (tune_on, np.concatenate([t_dur, t_dur[dbl]]),
                                                          np.concatenate([t_p, t_p[dbl] - 3]) - 2))
    q = query_from_notes("two parts", q_on, q_dur, q_p, q_trk)
    assert q.chroma_beats.shape[0] > qc.ALIGN["phase_search_beats"]
    # the lead line is the countermelody's; the second the tune's (the skyline's
    # register filter drops a few of its leaps)
    assert q.melody_onset_beats.min() < 1 and q.second_onset_beats.min() >= 16
    assert q.second_intervals is not None and q.second_pitch.size >= 0.95 * t_p.size
    rows = index.candidates(q)
    assert 0 in rows
    r = index.rerank(q, rows)
    i0 = int(np.flatnonzero(r["rows"] == 0)[0])
    assert r["mel_query_second"][i0] and r["mel"][i0] > 0.9
    res = index.search(q, top=3).to_pylist()
    top = next(x for x in res if x["piece_id"] == "s0")
    assert top["matched_by"] == "melody" and top["transposition"] == 2
    assert top["query_start_beats"] >= 16 and top["query_end_beats"] - top["query_start_beats"] > 20

    monkeypatch.setitem(qc.ALIGN, "query_second_line", False)
    q1 = query_from_notes("two parts", q_on, q_dur, q_p, q_trk)
    assert q1.second_intervals is None
    r1 = index.rerank(q1, np.array([0]))
    assert r1["mel"][0] < 0.5 and not r1["mel_query_second"].any()


def _diatonic(rng, key: int, n_chords: int):
    """Roots and thirds of ``n_chords`` random diatonic triads of a major key."""
    degrees = [(0, 4), (2, 3), (4, 3), (5, 4), (7, 4), (9, 3)]
    picks = rng.integers(0, len(degrees), n_chords)
    return [(key + degrees[i][0]) % 12 for i in picks], [degrees[i][1] for i in picks]


def test_an_excerpt_from_a_section_in_another_key_is_aligned_there(monkeypatch):
    """A piece of 112 beats in C major and then 48 beats in F# major (a development, a
    last chorus moved up): a query of that section in A major (48 beats: longer than a
    short query) must be aligned with it. Its transpositions come from its best window
    of each candidate; from the whole piece's chroma, which is mostly C major, the right
    one (the section a minor third down) would not be among the two tried."""
    from query.covers import ALIGN, query_from_notes

    rng = np.random.default_rng(5)
    r1, t1 = _diatonic(rng, 0, 56)
    r2, t2 = _diatonic(rng, 6, 24)
    piece = _triads(r1 + r2, t1 + t2, beats_each=2.0)
    others = [_triads(*_diatonic(np.random.default_rng(100 + s), s % 12, 80), beats_each=2.0) for s in range(8)]
    index = _index_of([piece] + others)
    sec = piece[0] >= 112
    q = query_from_notes("section", piece[0][sec] - 112, piece[1][sec], piece[2][sec] + 3)

    def harmony_of_piece():
        res = index.search(q, top=9, explain_top=9).to_pylist()
        row = next(r for r in res if r["piece_id"] == "s0")
        return row["harmony_score"], row["transposition"]

    harmony, up = harmony_of_piece()
    assert harmony > 0.9 and up == -3
    monkeypatch.setitem(ALIGN, "window_shift_frames", ALIGN["short_query_frames"])  # as before
    assert harmony_of_piece()[0] < 0.7


def test_a_query_of_all_parts_matches_a_stored_third_line():
    """Each stored piece: a tune (its lead track) under block chords an octave or more
    above it. A query of all of piece 0's notes in one part, a fourth up, has the
    chords' top line as its lead line: the stored lead line (the tune) does not hold it,
    the stored third line (the skyline of all notes, ``indexers.features.third_line``)
    does. Piece 0's melody score comes from that line, and the explained match is on it
    (its onsets, its transposition); without third lines the melody score is a chance
    match's."""
    from indexers.features import features_from_notes, lead_mask
    from query.covers import query_from_notes

    pieces = []
    for s in range(30):
        t_on, t_dur, t_p = _tune(4000 + s, 120, low=48)
        on, dur, p = _chords_under(t_on, 8000 + s)
        pieces.append(_parts((t_on, t_dur, t_p), (on, dur, p + 36)))
    index = _index_of(pieces)
    f0 = features_from_notes(*pieces[0])
    assert f0["third_pitch"].size > 40 and not np.array_equal(f0["third_pitch"], f0["melody_pitch"])
    on, dur, p, trk = pieces[0]
    np.testing.assert_array_equal(lead_mask(trk, on, p), trk == 0)  # the tune leads
    q = query_from_notes("all parts", on, dur, p + 5)
    rows = index.candidates(q)
    assert 0 in rows
    r = index.rerank(q, rows)
    i0 = int(np.flatnonzero(r["rows"] == 0)[0])
    assert r["mel_line"][i0] == 2 and r["mel"][i0] > 0.9
    top = next(x for x in index.search(q, top=3).to_pylist() if x["piece_id"] == "s0")
    assert top["rank"] == 1 and top["matched_by"] == "melody" and top["transposition"] == -5
    assert top["match_start_beats"] == pytest.approx(top["query_start_beats"], abs=0.01)
    assert top["match_end_beats"] - top["match_start_beats"] > 60
    # the same collection without third lines: piece 0's melody is found nowhere
    fs = [features_from_notes(*x) for x in pieces]
    for f in fs:
        f["third_pitch"], f["third_onset_beats"] = f["third_pitch"][:0], f["third_onset_beats"][:0]
    no_third = _index_from_features(fs)
    assert not any(h.any() for h in no_third.has_line[2:])
    r2 = no_third.rerank(q, rows)
    assert r2["mel"][int(np.flatnonzero(r2["rows"] == 0)[0])] < 0.6


def test_a_chroma_distance_not_measured_counts_as_typical():
    """Pairs below the 50 measured (or every pair without essentia) get their kind's
    median -log distance and no distance to it; a kind with none measured gets the fit's
    (they got 0, as if the distance were 1, worse than any measured pair)."""
    from query.cover_fusion import css_columns

    d = np.array([1.0, np.exp(-1.0), np.nan, np.nan, np.exp(-3.0)])
    both = np.array([0, 0, 0, 1, 0])
    css, rel = css_columns(d, both, typical=(9.0, 2.5))
    np.testing.assert_allclose(css, [0.0, 1.0, 1.0, 2.5, 3.0])
    np.testing.assert_allclose(rel, [-1.0, 0.0, 0.0, 0.0, 2.0])


def test_pitch_class_spread_of_known_chroma():
    """0 for one pitch class, log 3 / log 12 for a triad held throughout, 1 for all twelve
    equally; an empty or silent query has none."""
    from query.cover_fusion import pitch_class_spread

    one = np.zeros((8, 12))
    one[:, 9] = 1.0
    triad = np.zeros((8, 12))
    triad[:, [0, 4, 7]] = 1.0
    assert pitch_class_spread(one) == pytest.approx(0.0)
    assert pitch_class_spread(triad) == pytest.approx(np.log(3) / np.log(12))
    assert pitch_class_spread(np.ones((4, 12))) == pytest.approx(1.0)
    assert pitch_class_spread(np.zeros((0, 12))) == 0.0
    assert pitch_class_spread(np.zeros((4, 12))) == 0.0


def test_a_midi_querys_skyline_of_all_parts_finds_recordings(monkeypatch):
    """A MIDI query: a tune (its lead track) under a high, partly doubled line (no
    second melody line: a third of its onsets hold two notes), over chords. Its skyline
    of all notes is that high line, and so is the lead line of a recording of the same
    tune and line (one part, as a transcription stores it) over other chords. 300 MIDI
    copies of the query rank above the recording in every list of the lead track, the
    vectors, the chords and the bass. The skyline's n-gram list over the recordings'
    lead lines (``recording_line_candidates``) brings it in, and only recordings (the
    MIDI copies, which hold some of its n-grams by chance, are left out). A recording as
    the query (one ingested with stems has parts, so a third line) does not get the
    list."""
    import query.covers as qc
    from query.covers import query_from_notes

    t_on, t_dur, t_p = tune = _tune(7001, 120, low=55)
    h_on, h_dur, h_p = _tune(7002, 160, low=84)
    dbl = np.arange(0, h_p.size, 3)
    high = (np.concatenate([h_on, h_on[dbl]]), np.concatenate([h_dur, h_dur[dbl]]),
            np.concatenate([h_p, h_p[dbl] - 5]))
    c_on, c_dur, c_p = _chords_under(t_on, 7003)
    o_on, o_dur, o_p = _chords_under(t_on, 7004)
    query = _parts(tune, high, (c_on, c_dur, c_p - 12))
    pieces = [query] * 300

    def one_part(*parts):
        return tuple(np.concatenate(x) for x in zip(*parts))

    pieces.append(one_part(tune, high, (o_on, o_dur, o_p - 12)))  # row 300: its lead line is its skyline
    for s in range(5):  # 301-305: other recordings
        x_on, x_dur, x_p = _tune(7200 + s, 160, low=84)
        pieces.append(one_part((t_on, t_dur, t_p + 2), (x_on, x_dur, x_p), (o_on, o_dur, o_p - 12)))
    index = _index_of(pieces)
    recordings = list(range(300, 306))
    index.is_recording[recordings] = True
    q = query_from_notes("query", *query)
    assert q.third_pitch is not None and q.second_pitch is None
    assert q.intervals.size > 2 * qc.ALIGN["min_query_intervals"]  # a long query: a few dozen candidates
    assert np.array_equal(q.third_pitch, index.mel_pitch[index.mel_off[300]:index.mel_off[301]])
    with_list = index.candidates(q)
    assert 300 in with_list
    shipped = qc.ALIGN["recording_line_candidates"]
    monkeypatch.setitem(qc.ALIGN, "recording_line_candidates", 0)
    without = index.candidates(q)
    assert 300 not in without
    assert set(with_list.tolist()) - set(without.tolist()) <= set(recordings)
    monkeypatch.setitem(qc.ALIGN, "recording_line_candidates", shipped)
    q.is_recording = True
    assert np.array_equal(index.candidates(q), without)
    # a stored piece as the query (`atlas covers ID`) has the third line its file has
    by_id = index.query_for_piece("s0")
    assert by_id.third_pitch is not None and np.array_equal(by_id.third_pitch, q.third_pitch)
    assert index.query_for_piece("s300").third_pitch is None  # one part: no third line


def test_a_short_querys_notes_match_its_own_song_at_its_transposition_and_tempo(monkeypatch):
    """CoverIndex._notes: a 16-beat excerpt of song 5, transposed +3 and re-timed 1.2x
    (query beats per stored beat; the vote's scale is the inverse, 1/1.2 on its 1/24-octave
    grid's nearest), matches nearly all its notes in song 5 and far fewer in the other
    songs, which share its chords (I-V-vi-IV) but not its tune; only the best
    ``note_vote_candidates`` are voted on; a long query and an index without notes
    get 0; a stored piece as the query brings its notes."""
    from query.covers import ALIGN, query_from_notes

    songs = [_pop_song(s, key=s % 12) for s in range(8)]
    index = _index_of(songs)
    on, dur, p, trk = songs[5]
    keep = (on >= 32) & (on < 48)
    q = query_from_notes("q", (on[keep] - 32) * 1.2, dur[keep] * 1.2, p[keep] + 3, trk[keep])
    r = index._aligned(q)
    share = index._notes(q, r)
    best = int(np.flatnonzero(r["rows"] == 5)[0])
    assert share[best] > 0.9
    assert np.delete(share, best).max() < 0.75 * share[best]
    x = index._features(q, r)
    from query.cover_fusion import FEATURES

    np.testing.assert_allclose(x[:, FEATURES.index("notes")], share, rtol=1e-6)
    np.testing.assert_allclose(x[:, FEATURES.index("notes_rel")], share - share.max(), rtol=1e-6)
    # only the best candidates by alignment score are voted on
    monkeypatch.setitem(ALIGN, "note_vote_candidates", 2)
    few = index._notes(q, r)
    top2 = np.argsort(-r["score"], kind="stable")[:2]
    np.testing.assert_allclose(few[top2], share[top2])
    assert np.count_nonzero(np.delete(few, top2)) == 0
    monkeypatch.setitem(ALIGN, "note_vote_candidates", 0)  # no vote
    assert not index._notes(q, r).any()
    monkeypatch.undo()
    long_q = query_from_notes("long", on, dur, p + 3, trk)
    assert not index._notes(long_q, index._aligned(long_q)).any()
    index.notes, notes = None, index.notes
    assert not index._notes(q, r).any()
    index.notes = notes
    stored = index.query_for_piece("s2")
    np.testing.assert_array_equal(np.sort(stored.note_pitch), np.sort(songs[2][2]))
