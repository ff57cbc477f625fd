"""Probe for ``benchmarks/fusion_probe.py --probe``: version support where "likely
version" is judged by the harmony as well as the melody.

The shipped ``support`` (``CoverIndex._support``) takes a candidate's likely versions to
be the other aligned candidates whose *melody* 3-gram TF-IDF cosine with it reaches 0.5.
Versions whose stored lead lines differ (a piece whose bridge leads, docs/covers-history.md
"Where the tune cells fail") still share their chords. Arms: the best alignment score
among the candidates whose chord-motion n-gram TF-IDF cosine (``CoverIndex.chord_grams``,
presence x IDF, exact) reaches 0.5 / 0.7 (and it minus the query's best); and among
those whose melody sketch cosine reaches 0.5 *or* harmony cosine 0.7.
"""

import numpy as np

_H = {}


def prepare(index):
    from scipy import sparse

    g = index.chord_grams
    m = g.matrix.tocsr().astype(np.float32)
    m = m.multiply(g.idf[None, :]).tocsr()
    norm = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    _H["m"] = sparse.diags((1.0 / np.maximum(norm, 1e-12)).astype(np.float32)) @ m


def _best(mask, score):
    b = np.where(mask, score[None, :], 0.0).max(axis=1)
    return [b, b - b.max()]


def columns(index, q, r, arrays):
    rows = r["rows"]
    if rows.size < 2:
        return np.zeros((rows.size, 6))
    score = r["score"].astype(np.float64)
    h = _H["m"][rows]
    hc = (h @ h.T).toarray()
    np.fill_diagonal(hc, -1.0)
    cols = _best(hc >= 0.5, score) + _best(hc >= 0.7, score) + \
        _best(index._likely_versions(rows) | (hc >= 0.7), score)
    return np.stack(cols, axis=1)


ARMS = {"+ harmony >= 0.5": [0, 1], "+ harmony >= 0.7": [2, 3], "+ melody or harmony": [4, 5]}
