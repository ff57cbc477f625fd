"""Probe for ``benchmarks/fusion_probe.py --probe``: cheaper forms of the version support
(``version_support.py``'s melody >= 0.5 arm, measured to gain and not kept for its
latency: a sparse k x k product over up to every aligned candidate of a short query).

Arms: the exact form (every aligned candidate supports every other); the exact cosine
with only the best ``K`` candidates by alignment score as supporters (a k x K product);
the cosine estimated from each piece's TF-IDF row hashed (signed, by a seeded random
draw) into ``D`` dense dimensions at index time, with every candidate or the best ``K``
as supporters. Measured before the support was shipped (docs/covers-history.md, "Version
support"): every candidate as supporters with 128 dimensions gave the exact form's MAP,
and the search now has it (``IntervalTfidf.sketch``, a fixed multiplicative hash); run
now, the "shipped" arm holds it already.
"""

import numpy as np

TAU = 0.5
KS = (16, 32, 64)
DS = (64, 128)
_P = {}


def prepare(index):
    from scipy import sparse

    m = index.tfidf.matrix.tocsr()
    _P["csr"] = m
    rng = np.random.default_rng(12345)
    n_feat = m.shape[1]
    for d in DS:
        bucket = rng.integers(0, d, n_feat)
        sign = rng.choice(np.array([-1.0, 1.0], np.float32), n_feat)
        h = sparse.csr_matrix((sign, (np.arange(n_feat), bucket)), shape=(n_feat, d))
        p = np.asarray((m @ h).todense(), np.float32)
        p /= np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-9)
        _P[d] = p


def _support(sim, score):
    """sim: (k, K) cosine of each candidate with each supporter (supporters = the first K
    candidates by score order given); the diagonal (self) must be excluded by caller."""
    m = np.where(sim >= TAU, score[None, :sim.shape[1]], 0.0).max(axis=1) if sim.size else np.zeros(sim.shape[0])
    return [m, m - m.max()]


def columns(index, q, r, arrays):
    rows = r["rows"]
    ncol = 2 * (1 + len(KS) + len(DS) * 2)
    if rows.size < 2:
        return np.zeros((rows.size, ncol))
    score = r["score"].astype(np.float64)
    order = np.argsort(-score, kind="stable")
    rows_o, score_o = rows[order], score[order]
    inv = np.empty_like(order)
    inv[order] = np.arange(order.size)
    cols = []
    m = _P["csr"][rows_o]
    full = (m @ m.T).toarray().astype(np.float64)
    np.fill_diagonal(full, -1.0)
    cols += _support(full, score_o)
    for k in KS:
        cols += _support(full[:, :k], score_o)
    for d in DS:
        p = _P[d][rows_o]
        s = (p @ p.T).astype(np.float64)
        np.fill_diagonal(s, -1.0)
        cols += _support(s, score_o)
        cols += _support(s[:, :32], score_o)
    out = np.stack(cols, axis=1)
    return out[inv]


ARMS = {"+ exact": [0, 1]}
ARMS.update({f"+ exact top{k}": [2 + 2 * i, 3 + 2 * i] for i, k in enumerate(KS)})
_B = 2 + 2 * len(KS)
for _i, _d in enumerate(DS):
    ARMS[f"+ hash{_d}"] = [_B + 4 * _i, _B + 4 * _i + 1]
    ARMS[f"+ hash{_d} top32"] = [_B + 4 * _i + 2, _B + 4 * _i + 3]
