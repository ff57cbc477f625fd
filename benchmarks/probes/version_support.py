"""Probe for ``benchmarks/fusion_probe.py --probe``: is a candidate supported by its
likely versions among the other aligned candidates?

Per candidate, the best alignment score (``r["score"]``) among the other aligned
candidates that look like versions of it, by the cosine of the two pieces' melody
interval 3-gram TF-IDF vectors (``CoverIndex.tfidf``; at least 0.15 / 0.3 / 0.5 / 0.7,
or every other candidate weighted by the cosine) or of their piece vectors (at least
0.7 / 0.8 / 0.9 / 0.95, or weighted by the cosine to the 8th power). Each arm adds that and it minus the query's best. The idea comes
from cover-song networks: a song whose several versions all align is more likely right
than one lone chance match. Measured in docs/covers-history.md ("Probes of the session of
2026-12-04 (afternoon)" and the section after it): little, because a wrong song that
matches by chance comes with its own near-copy versions, which match as well; the
melody cosine at 0.5 gained on both seed sets; its exact form (a sparse k x k product)
was not kept for its latency, and the search now has it with the cosine estimated from
sketches (``support_cheap.py``; ``CoverIndex._support``). Its "shipped" arm therefore
holds the support already.
"""

import numpy as np

TFIDF = (0.15, 0.3, 0.5, 0.7)
VECTOR = (0.7, 0.8, 0.9, 0.95)
_CSR = {}


def prepare(index):
    _CSR["tfidf"] = index.tfidf.matrix.tocsr()
    v = index.vectors
    _CSR["vectors"] = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)


def _support(sim, score, taus):
    cols = []
    np.fill_diagonal(sim, -1.0)
    for t in taus:
        m = np.where(sim >= t, score[None, :], 0.0).max(axis=1)
        cols += [m, m - m.max()]
    return cols


def columns(index, q, r, arrays):
    rows = r["rows"]
    if rows.size < 2:
        return np.zeros((rows.size, 2 * (len(TFIDF) + len(VECTOR) + 2)))
    score = r["score"].astype(np.float64)
    m = _CSR["tfidf"][rows]
    sim = (m @ m.T).toarray().astype(np.float64)
    soft = (np.clip(sim, 0, 1) * score[None, :])
    np.fill_diagonal(soft, 0.0)
    soft = soft.max(axis=1)
    cols = _support(sim, score, TFIDF) + [soft, soft - soft.max()]
    v = _CSR["vectors"][rows]
    sim = (v @ v.T).astype(np.float64)
    soft = np.clip(sim, 0, 1) ** 8 * score[None, :]
    np.fill_diagonal(soft, 0.0)
    soft = soft.max(axis=1)
    cols += _support(sim, score, VECTOR) + [soft, soft - soft.max()]
    return np.stack(cols, axis=1)


ARMS = {f"+ melody >= {t:g}": [2 * i, 2 * i + 1] for i, t in enumerate(TFIDF)}
ARMS["+ melody weighted"] = [2 * len(TFIDF), 2 * len(TFIDF) + 1]
_V = 2 * (len(TFIDF) + 1)
ARMS.update({f"+ vector >= {t:g}": [_V + 2 * i, _V + 2 * i + 1] for i, t in enumerate(VECTOR)})
ARMS["+ vector weighted"] = [_V + 2 * len(VECTOR), _V + 2 * len(VECTOR) + 1]
