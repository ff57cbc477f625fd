"""Probe for ``benchmarks/fusion_probe.py --probe``: version support from the *fused*
scores instead of the alignment scores (one round of propagation).

The shipped ``support`` feature (``CoverIndex._support``) is the best alignment score
among a candidate's likely versions (``CoverIndex._likely_versions``). The
fused score (``query.cover_fusion.fuse`` with the shipped coefficients) ranks better
than the alignment score alone, so a candidate whose versions are *fused* high may be
likelier right. Arms: the best fused score among the likely versions (and it minus the
query's best); their sum (capped at 3). The shipped coefficients were fitted on the fit
part's seed-1 queries, which the cross-validation of fusion_probe.py also splits: a
mild leak, in the probe's favour.
"""

import numpy as np

from query.cover_fusion import fuse


def columns(index, q, r, arrays):
    rows = r["rows"]
    if rows.size < 2:
        return np.zeros((rows.size, 4))
    p = fuse(index._features(q, r)).astype(np.float64)
    v = index._likely_versions(rows)
    best = np.where(v, p[None, :], 0.0).max(axis=1)
    total = np.minimum(np.where(v, p[None, :], 0.0).sum(axis=1), 3.0)
    return np.stack([best, best - best.max(), total, total - total.max()], axis=1)


ARMS = {"+ fused support max": [0, 1], "+ fused support sum": [2, 3], "+ both": [0, 1, 2, 3]}
