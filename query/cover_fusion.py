"""The cover search's final score: a logistic regression over alignment and n-gram
features, fitted from data instead of hand-set weights.

Each aligned candidate of a query gets the features in ``FEATURES`` (the melody and
harmony alignment scores, the combined alignment score, the cosine of an exact-interval
3-gram TF-IDF of the melodies -- the classic baseline, fused in as a feature and as a
candidate list -- and the vector cosine, some of them relative to the query's best
candidate), and its logit is ``features @ coef + intercept``, fitted to rank each query's
versions above its other candidates. The reported score is that logit calibrated
(:func:`calibrate`) into the probability that the candidate is a version, fitted on
queries with and without versions in the collection, once for short queries and once
for the others. The coefficients of both are in
``cover_fusion.json`` beside this module, written by ``benchmarks/fit_cover_fusion.py``
from the *fit* part of the honest benchmark (``benchmarks/covers_honest.py``:
odd-numbered POP909-dev songs only); the file records what they were fitted on.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from indexers.sparse_sums import all_column_sums, distinct

__all__ = ["FEATURES", "FUSION_FILE", "RECORDING_FEATURES", "RECORDING_FUSION_FILE", "IntervalTfidf",
           "fusion_features", "css_columns", "recording_features", "fuse", "fusion_logits", "fit_logistic",
           "fit_ranking", "load_fusion", "CALIBRATION_FEATURES", "CALIBRATION_KINDS", "calibration_columns", "calibrate",
           "fit_calibration"]

FUSION_FILE = Path(__file__).with_name("cover_fusion.json")
# Pairs with a recording on at least one side have a fusion of their own, fitted on
# fluidsynth renders of POP909 songs (benchmarks/fit_recording_fusion.py): a recording's
# notes are a transcription and its beats a beat tracker's, so the symbolic scores mean
# less, and the chroma cover-song distance on 0.5 s chroma (no beats) more.
RECORDING_FUSION_FILE = Path(__file__).with_name("cover_fusion_recordings.json")
FEATURES = ("align", "align_rel", "mel", "mel_rel", "harm", "harm_rel", "tfidf", "tfidf_rel", "vec",
            "short", "tfidf_short", "mel_short", "rhythm", "rhythm_rel", "rhythm_short", "bass", "bass_rel",
            "support", "support_rel", "stretch", "notes", "notes_rel")
RECORDING_FEATURES = ("align", "align_rel", "mel", "mel_rel", "harm", "harm_rel", "tfidf", "vec", "stretch",
                      "css", "css_rel", "both_recordings", "short", "align_short", "spread", "harm_spread")
# The reported score (:func:`calibrate`): a candidate's fusion logit, the query's best,
# and how far the best stands above the median of the query's aligned candidates,
# fitted on the best ``CALIBRATION_TOP`` candidates of each query.
CALIBRATION_FEATURES = ("logit", "best_logit", "best_above_median")
# one calibration per kind of query: a short query's logits spread more (the note vote
# is a feature of short queries only), and one calibration for both put the long
# queries' right answers lower and the short queries' chance matches higher
# (docs/covers.md, "What the score means")
CALIBRATION_KINDS = ("long", "short")
CALIBRATION_TOP = 10
# the median is over at least this many logits: a query with fewer aligned candidates
# (a collection of a few pieces) counts the others at the fit's median wrong candidate
CALIBRATION_MIN_CROWD = 10
# and at most this quantile of the fit's queries' medians: a crowd that aligns better
# than 99% of the fit's is usually made of versions (a collection of mostly one piece's
# versions), and the best answer would otherwise be judged against its own versions
CALIBRATION_CROWD_CAP_QUANTILE = 0.99
# exact pitch intervals are clipped to this many semitones either way (as in the baseline)
_CLIP = 24
_ALPHA = 2 * _CLIP + 1


class IntervalTfidf:
    """TF-IDF cosine over exact-interval 3-grams (pitch differences of successive notes,
    repeated notes included, clipped to +-24 semitones) of each piece's melody: the
    classic symbolic cover baseline. Key-invariant (intervals) and tempo-invariant (notes,
    not times); presence, not counts, as the baseline does.

    Parameters
    ----------
    pitch : int [shape=(M,)], every piece's melody pitches back to back
    offsets : int64 [shape=(k+1,)], piece i is ``pitch[offsets[i]:offsets[i+1]]``
    """

    def __init__(self, pitch, offsets):
        from scipy import sparse

        offsets = np.asarray(offsets, np.int64)
        n_pieces = offsets.size - 1
        codes, piece = self._codes(pitch, offsets)
        m = sparse.csr_matrix((np.ones(codes.size, np.float32), (piece, codes)), shape=(n_pieces, _ALPHA ** 3))
        m.sum_duplicates()
        m.data[:] = 1.0
        self.weigh(m)

    def weigh(self, m) -> None:
        """The index of a presence matrix (CSR, float32 ones, rows sorted: what the
        constructor makes, and ``query.cover_update`` when it merges a saved index with
        new pieces): idf-weighted rows of unit norm."""
        from scipy import sparse

        n_pieces = m.shape[0]
        df = np.diff(m.tocsc().indptr).astype(np.float64)
        self.idf = (np.log((1.0 + n_pieces) / (1.0 + df)) + 1.0).astype(np.float32)
        m = m.multiply(self.idf[None, :]).tocsr()
        norm = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
        m = sparse.diags((1.0 / np.maximum(norm, 1e-12)).astype(np.float32)) @ m
        self.matrix = m.tocsc().astype(np.float32)
        self.n_pieces = n_pieces

    @staticmethod
    def _codes(p: np.ndarray, offsets: np.ndarray):
        """(3-gram code, piece) of every 3-gram of intervals inside one piece, int32 each
        (codes < 49**3): with int64 the index's TF-IDF over 100,000 pieces' 7.0M lead-line
        notes peaked ~75 MB higher (docs/covers.md, "Loading the index at 100,000 pieces")."""
        p = np.asarray(p, np.int32)
        if p.size < 4:
            return np.zeros(0, np.int32), np.zeros(0, np.int32)
        piece_of = np.repeat(np.arange(offsets.size - 1, dtype=np.int32), np.diff(offsets))
        iv = np.clip(np.diff(p), -_CLIP, _CLIP) + _CLIP
        m = iv.size - 2
        ok = piece_of[:m] == piece_of[3:]  # notes i..i+3 in one piece
        code = (iv[:m] * _ALPHA + iv[1:m + 1]) * _ALPHA + iv[2:]
        return code[ok], piece_of[:m][ok]

    def scores(self, pitch) -> np.ndarray:
        """Cosine of the query melody's TF-IDF with every piece's: float32 [shape=(k,)]."""
        codes, _ = self._codes(pitch, np.array([0, len(pitch)]))
        if codes.size == 0:
            return np.zeros(self.n_pieces, np.float32)
        u = distinct(codes)
        w = self.idf[u]
        w = w / float(np.linalg.norm(w))
        return all_column_sums(self.matrix, self.matrix.data, u, w.astype(np.float32))

    def sketch(self, dims: int = 128) -> np.ndarray:
        """Every piece's TF-IDF row hashed into ``dims`` dense dimensions (each 3-gram to
        one dimension, with a sign, by a fixed multiplicative hash), unit norm: float16
        [shape=(k, dims)]. The dot product of two sketches estimates the two pieces'
        cosine (error ~ 1/sqrt(dims)): cheap enough to compare every pair of a query's
        candidates, where the sparse rows were not (docs/covers-history.md, "Version support")."""
        from scipy import sparse

        m = self.matrix.tocsr()
        h = (np.arange(m.shape[1], dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)
        bucket = (h % np.uint64(dims)).astype(np.int64)
        sign = np.where((h >> np.uint64(31)) & np.uint64(1), -1.0, 1.0).astype(np.float32)
        fold = sparse.csr_matrix((sign, (np.arange(m.shape[1]), bucket)), shape=(m.shape[1], dims))
        p = np.asarray((m @ fold).todense(), np.float32)
        p /= np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
        return p.astype(np.float16)

    def search(self, scores: np.ndarray, k: int) -> np.ndarray:
        """Rows of the ``k`` best pieces by these scores (best first, score > 0)."""
        k = min(k, scores.size)
        if k <= 0:
            return np.zeros(0, np.int64)
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return top[scores[top] > 0].astype(np.int64)


def fusion_features(align, mel, harm, tfidf, vec, n_intervals: int, short_intervals: int = 48,
                    rhythm=None, bass=None, support=None, hscale=None, notes=None) -> np.ndarray:
    """The ``FEATURES`` of one query's candidates: float64 [shape=(k, len(FEATURES))].

    ``align``, ``mel``, ``harm``: alignment scores (0..~1.2); ``tfidf``, ``vec``: cosines;
    ``n_intervals``: the query's melody intervals (a query of at most
    ``short_intervals`` is short: its scores say less); ``rhythm``: how much of the tune
    found among a one-part query's notes keeps its rhythm (0..~1; None: 0 for all);
    ``bass``: the query's bass line aligned with the candidate's (0..~1; None: 0 for all);
    ``support``: the best alignment score among the candidate's likely versions (0..~1.2;
    None: 0 for all); ``hscale``: the time scale (query beats per candidate beat) of the
    candidate's harmony alignment, as ``stretch`` = |log2 hscale| octaves (None: 0 for
    all). Every scale tried is one more chance for a wrong piece to align somewhere; a
    query squeezed far (at 2x each frame pools twice the query's beats, smoothing its
    chords) aligns by chance more often, so the fit can weigh its scores less
    (docs/covers-history.md, "Stretch"); ``notes``: the share of a short query's notes
    the candidate's notes match under one time map (0..1; None: 0 for all)."""
    cols = [np.asarray(x, np.float64) for x in (align, mel, harm, tfidf, vec)]
    if cols[0].size == 0:
        return np.zeros((0, len(FEATURES)))
    a, m, h, t, v = cols
    r = np.zeros(a.size) if rhythm is None else np.asarray(rhythm, np.float64)
    b = np.zeros(a.size) if bass is None else np.asarray(bass, np.float64)
    u = np.zeros(a.size) if support is None else np.asarray(support, np.float64)
    n = np.zeros(a.size) if notes is None else np.asarray(notes, np.float64)
    s = np.zeros(a.size) if hscale is None else np.abs(np.log2(np.maximum(np.asarray(hscale, np.float64), 1e-6)))
    short = float(n_intervals <= short_intervals)
    return np.stack([a, a - a.max(), m, m - m.max(), h, h - h.max(), t, t - t.max(), v,
                     np.full(a.size, short), t * short, m * short, r, r - r.max(), r * short,
                     b, b - b.max(), u, u - u.max(), s, n, n - n.max()], axis=1)


def css_columns(css_distance, both_recordings, typical) -> tuple[np.ndarray, np.ndarray]:
    """``css`` = -log distance (the serra09 chroma cover-song distance,
    ``indexers.audio_chroma.css_distances``, lower = closer; NaN where not measured) and
    ``css_rel``, that minus the median over the measured candidates of its kind (a
    recording <-> recording pair or one with a MIDI side: their distances differ). A
    candidate not measured (below the best 50, no database, or no distance found) gets
    its kind's median (``typical[kind]``, the fit's, where none of its kind is measured)
    and ``css_rel`` 0: a typical distance, not the worst."""
    d = np.asarray(css_distance, np.float64)
    kind = np.asarray(both_recordings, np.int64)
    known = np.isfinite(d) & (d > 0)
    css = np.zeros(d.size)
    css[known] = -np.log(d[known])
    rel = np.zeros(d.size)
    for k in (0, 1):
        m = known & (kind == k)
        median = float(np.median(css[m])) if m.any() else float(typical[k])
        rel[m] = css[m] - median
        css[~known & (kind == k)] = median
    return css, rel


def pitch_class_spread(chroma_beats: np.ndarray) -> float:
    """How many pitch classes a query's harmony uses, 0..1: the entropy of its mean beat
    chroma over log 12 (sine tones 0-0.18; 48 POP909-dev pieces, MIDI or rendered,
    0.58-0.87; 0 for a query without chroma). A query of one held pitch class aligns with any
    harmony holding it: its harmony score says little."""
    c = np.asarray(chroma_beats, np.float64)
    if c.size == 0 or c.sum() <= 0:
        return 0.0
    p = c.mean(0) / c.mean(0).sum()
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum() / np.log(12))


def recording_features(x: np.ndarray, css_distance: np.ndarray, both_recordings: np.ndarray,
                       typical, spread: float) -> np.ndarray:
    """The ``RECORDING_FEATURES`` of one query's candidates from their ``FEATURES`` rows
    ``x`` and their chroma distances (:func:`css_columns`, ``typical``: the fit's median
    ``css`` per kind); ``both_recordings``: 1 for a recording <-> recording pair;
    ``spread``: the query's :func:`pitch_class_spread`.
    float64 [shape=(k, len(RECORDING_FEATURES))]."""
    x = np.asarray(x, np.float64)
    css, rel = css_columns(css_distance, both_recordings, typical)
    cols = [x[:, FEATURES.index(f)] for f in RECORDING_FEATURES[:9]]
    short = x[:, FEATURES.index("short")]
    harm = x[:, FEATURES.index("harm")]
    return np.stack([*cols, css, rel, np.asarray(both_recordings, np.float64), short,
                     x[:, FEATURES.index("align")] * short, np.full(harm.size, spread), harm * spread], axis=1)


@lru_cache(maxsize=4)
def load_fusion(path: str | None = None, features: tuple = FEATURES) -> dict:
    """The fitted coefficients (``cover_fusion.json``; ``RECORDING_FUSION_FILE`` with
    ``RECORDING_FEATURES``)."""
    with open(path or FUSION_FILE) as fh:
        d = json.load(fh)
    if tuple(d["features"]) != features:
        script = "fit_cover_fusion.py" if features == FEATURES else "fit_recording_fusion.py"
        raise ValueError(f"{path or FUSION_FILE}: fitted on features {d['features']}, the code has {features}; "
                         f"refit with benchmarks/{script}")
    c = d.get("calibration", {})
    keys = ("coef", "intercept", "crowd_logit", "crowd_cap")
    if features == FEATURES and (tuple(c.get("features", ())) != CALIBRATION_FEATURES
                                 or not all(k in c.get(kind, {}) for kind in CALIBRATION_KINDS for k in keys)):
        raise ValueError(f"{path or FUSION_FILE}: no calibration on features {CALIBRATION_FEATURES} for "
                         f"{' and '.join(CALIBRATION_KINDS)} queries; fit it with "
                         "benchmarks/fit_cover_fusion.py --calibration-only")
    return d


def fusion_logits(x: np.ndarray, params: dict | None = None) -> np.ndarray:
    """The fusion's logits (float64, not saturated) of a feature matrix from
    :func:`fusion_features`."""
    p = params or load_fusion()
    return np.asarray(x, np.float64) @ np.asarray(p["coef"], np.float64) + float(p["intercept"])


def _sigmoid32(z: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def fuse(x: np.ndarray, params: dict | None = None) -> np.ndarray:
    """Fused scores (0..1) of a feature matrix from :func:`fusion_features`."""
    return _sigmoid32(fusion_logits(x, params))


def crowd_median(query_logits: np.ndarray, crowd_logit: float) -> float:
    """The median of a query's aligned candidates' logits, with fewer than
    ``CALIBRATION_MIN_CROWD`` made up to that many at ``crowd_logit`` (the fit's median
    wrong candidate): in a collection of two pieces the median would be the version itself."""
    q = np.asarray(query_logits, np.float64)
    if q.size < CALIBRATION_MIN_CROWD:
        q = np.concatenate([q, np.full(CALIBRATION_MIN_CROWD - q.size, float(crowd_logit))])
    return float(np.median(q))


def calibration_columns(query_logits: np.ndarray, logits: np.ndarray | None, crowd_logit: float,
                        crowd_cap: float = np.inf) -> np.ndarray:
    """The ``CALIBRATION_FEATURES`` of candidates: each one's own fusion logit
    (``logits``; None: ``query_logits``), and two numbers of the whole query, from
    the logits of all its aligned candidates (``query_logits``): the best one, and how
    far it stands above their median (:func:`crowd_median`), the median taken at most
    ``crowd_cap``. Where many candidates align about as well as the best (a progression
    half the collection shares), the best is less likely a version. The median, not a
    fixed rank: the versions of a piece with many (22 performances in vienna4x22) fill
    any of the first ranks, but not half of the 60 or more candidates the search aligns
    in a larger collection. The cap (the fit's ``CALIBRATION_CROWD_CAP_QUANTILE``): in a
    collection of mostly one piece's versions the median is a version, and the best
    would be judged against its own versions (docs/covers.md, "A collection of mostly
    one piece's versions"). float64 [shape=(k, 3)]."""
    z = np.asarray(query_logits if logits is None else logits, np.float64)
    q = np.asarray(query_logits, np.float64)
    if q.size == 0:
        return np.zeros((z.size, len(CALIBRATION_FEATURES)))
    best = float(q.max())
    median = min(crowd_median(q, crowd_logit), float(crowd_cap))
    return np.stack([z, np.full(z.size, best), np.full(z.size, best - median)], axis=1)


def calibrate(query_logits: np.ndarray, params: dict | None = None, short: bool = False) -> np.ndarray:
    """The probability that each of a query's aligned candidates is a version of it
    (float32), from their fusion logits (:func:`calibration_columns`), by the
    calibration of the query's kind (``short``: the fusion's ``short`` feature). Every
    candidate of one query gets the same offset, and the weight on its own logit is
    positive, so the query's order is the fusion's."""
    c = (params or load_fusion())["calibration"][CALIBRATION_KINDS[int(bool(short))]]
    x = calibration_columns(query_logits, None, c["crowd_logit"], c["crowd_cap"])
    return _sigmoid32(x @ np.asarray(c["coef"], np.float64) + float(c["intercept"]))


def fit_calibration(query_logits: list[np.ndarray], labels: list[np.ndarray], *, top: int = CALIBRATION_TOP,
                    l2: float = 1e-4, cap_quantile: float = CALIBRATION_CROWD_CAP_QUANTILE
                    ) -> tuple[np.ndarray, float, float, float]:
    """Coefficients of :func:`calibrate` from queries' candidates (each query's fusion
    logits and whether each candidate is a version of it): a logistic regression over
    the ``top`` best candidates of every query, each query weighing the same. Fit it on
    queries with versions in the collection *and* queries without (the same queries
    against a collection from which their songs were removed): a fusion fitted to rank
    answers gives the best wrong answer of a query without versions a score as high as a
    right one (docs/covers.md, "What the score means"). Returns the coefficients, the
    intercept, ``crowd_logit`` (the median logit of all wrong candidates) and
    ``crowd_cap`` (the ``cap_quantile`` of the queries' crowd medians)."""
    wrong = [np.asarray(z, np.float64)[~np.asarray(y, bool)] for z, y in zip(query_logits, labels)]
    crowd = float(np.median(np.concatenate(wrong))) if wrong else 0.0
    medians = [crowd_median(z, crowd) for z in query_logits if len(z)]
    cap = float(np.quantile(medians, cap_quantile)) if medians else np.inf
    xs, ys, ws = [], [], []
    for z, y in zip(query_logits, labels):
        z, y = np.asarray(z, np.float64), np.asarray(y, bool)
        if z.size == 0:
            continue
        best = np.argsort(-z, kind="stable")[:top]
        xs.append(calibration_columns(z, z[best], crowd, cap))
        ys.append(y[best])
        ws.append(np.full(best.size, 1.0 / best.size))
    if not xs:
        raise ValueError("fit_calibration needs queries with candidates")
    coef, intercept = fit_logistic(np.concatenate(xs), np.concatenate(ys), np.concatenate(ws), l2=l2)
    if coef[0] <= 0:
        raise ValueError(f"fit_calibration: the weight on a candidate's own logit came out {coef[0]:.3f}; it must "
                         "be positive, or the calibration would reverse each query's order")
    return coef, intercept, crowd, cap


def fit_logistic(x: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None, *, l2: float = 1e-3,
                 iters: int = 100) -> tuple[np.ndarray, float]:
    """Weighted, L2-regularised logistic regression by Newton's method (IRLS).

    Parameters
    ----------
    x : float [shape=(n, d)]; y : {0, 1} [shape=(n,)]; weight : float [shape=(n,)] or None
    l2 : penalty on the coefficients (not the intercept), per unit of total weight

    Returns
    -------
    coef : float64 [shape=(d,)]; intercept : float
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    n, d = x.shape
    w = np.ones(n) if weight is None else np.asarray(weight, np.float64)
    if n == 0 or y.min() == y.max():
        raise ValueError("fit_logistic needs both classes among its examples")
    xa = np.hstack([x, np.ones((n, 1))])
    beta = np.zeros(d + 1)
    reg = np.full(d + 1, l2 * w.sum())
    reg[-1] = 0.0
    for _ in range(iters):
        z = xa @ beta
        p = 1.0 / (1.0 + np.exp(-z))
        g = xa.T @ (w * (p - y)) + reg * beta
        hess = (xa * (w * p * (1 - p))[:, None]).T @ xa + np.diag(reg) + 1e-9 * np.eye(d + 1)
        step = np.linalg.solve(hess, g)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return beta[:-1], float(beta[-1])


def fit_ranking(x: np.ndarray, y: np.ndarray, query: np.ndarray, *, l2: float = 1e-3) -> tuple[np.ndarray, float]:
    """Coefficients that rank each query's right candidates above its wrong ones, then
    scaled into a probability.

    A conditional logit: for every right candidate of a query, the log-probability that
    a softmax over it and the query's wrong candidates picks it; each query weighs the
    same, its right candidates share that weight; L2 penalty ``l2`` (L-BFGS). A plain
    logistic regression (:func:`fit_logistic`) fits how likely each candidate is to be
    right over all queries at once, and so favours the many easy queries' score scale:
    on the honest benchmark's fit part it gave up a mashup's tune (one song's melody over
    another's accompaniment) for harmony-only queries (MAP 0.936 vs 0.951 for this fit).
    Queries with no right or no wrong candidate say nothing about the ranking and are
    skipped. The penalty applies to each feature on its own scale (the features are
    standardised for the fit, the coefficients mapped back): a raw-scale penalty weighs
    most on the features that vary least, such as the short-query indicators; on the
    honest benchmark's fit part (three draws, cross-validated over halves of its songs)
    it gave up a mashup's tune for its accompaniment's song (MAP 0.975 vs 0.986). The
    ranking score ``x @ beta`` is then mapped to a probability by a
    weighted logistic regression on that one feature (Platt scaling; the weights as in
    :func:`fit_logistic`'s use: a query's right and wrong candidates half each), which
    keeps the order.

    Parameters
    ----------
    x : float [shape=(n, d)]; y : {0, 1} [shape=(n,)]; query : int [shape=(n,)], the
        query each candidate belongs to

    Returns
    -------
    coef : float64 [shape=(d,)]; intercept : float
    """
    from scipy.optimize import minimize

    x = np.asarray(x, np.float64)
    y = np.asarray(y, bool)
    query = np.asarray(query)
    order = np.argsort(query, kind="stable")
    x, y, query = x[order], y[order], query[order]
    bounds = np.flatnonzero(np.diff(query)) + 1
    groups = [(a, b) for a, b in zip(np.r_[0, bounds], np.r_[bounds, query.size]) if 0 < y[a:b].sum() < b - a]
    if not groups:
        raise ValueError("fit_ranking needs a query with both right and wrong candidates")
    d = x.shape[1]
    # a constant feature (sd 0) keeps its raw scale; a shift of any feature changes no
    # ranking (every candidate of a query moves alike), so only the scale matters
    sd = x.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    z = x / sd

    def loss(beta):
        total, grad = 0.0, np.zeros(d)
        for a, b in groups:
            xs, ys = z[a:b], y[a:b]
            s = xs @ beta
            top = s.max()
            e = np.exp(s - top)
            e_wrong = e[~ys].sum()
            den = e[ys] + e_wrong  # one softmax per right candidate: it and every wrong one
            total -= float(np.mean(s[ys] - top - np.log(den)))
            p_right = e[ys] / den
            g_wrong = (e[~ys] / e_wrong) @ xs[~ys] * float(np.mean(1 - p_right))
            grad += g_wrong - np.mean(xs[ys] * (1 - p_right)[:, None], axis=0)
        n = len(groups)
        return total / n + l2 * float(beta @ beta), grad / n + 2 * l2 * beta

    beta = minimize(loss, np.zeros(d), jac=True, method="L-BFGS-B").x / sd
    # Platt scaling of the ranking score
    score = x @ beta
    w = np.zeros(y.size)
    for a, b in zip(np.r_[0, bounds], np.r_[bounds, query.size]):
        n_pos = int(y[a:b].sum())
        w[a:b] = np.where(y[a:b], 0.5 / max(n_pos, 1), 0.5 / max(b - a - n_pos, 1))
    (scale,), intercept = fit_logistic(score[:, None], y, w, l2=0.0)
    return beta * scale, intercept
