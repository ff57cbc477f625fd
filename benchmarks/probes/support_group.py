"""Probe for ``benchmarks/fusion_probe.py --probe``: the best alignment score of a
candidate's version group, ``max(own score, support)`` (``CoverIndex._support``), and it
minus the query's best. The fusion is linear in its features, so the maximum is a new
signal: a stored version that aligns poorly itself (another arrangement, a bridge that
leads) is lifted when a fellow version aligned well, as step 3 ("Versions of the best
answer") does for the best answer alone, with its confidence thresholds. A second arm
also gives the number of likely versions among the candidates (capped at 5).
"""

import numpy as np


def columns(index, q, r, arrays):
    rows = r["rows"]
    if rows.size < 2:
        return np.zeros((rows.size, 3))
    score = r["score"].astype(np.float64)
    sup = index._support(r).astype(np.float64)
    g = np.maximum(score, sup)
    n = np.minimum(index._likely_versions(rows).sum(axis=1), 5).astype(np.float64)
    return np.stack([g, g - g.max(), n], axis=1)


ARMS = {"+ group best": [0, 1], "+ group best, count": [0, 1, 2]}
