"""Probe for ``benchmarks/fusion_probe.py --probe``: the learned cover embedding
(``cover_embedding_model``) of the query against every window of each aligned candidate.
Weights: ``$EMBED_WEIGHTS`` or ``cover_embedding_model.WEIGHTS`` (made by
``benchmarks/train_cover_embedding.py``). Measured: docs/covers-history.md, "The learned embedding".

The query (all its notes, one part) is embedded once; each stored piece's per-frame
projections are computed once (``prepare``). A candidate's score is the best cosine
between the query and the candidate's windows as long as the query (in frames of the
query's own beats), every 2 frames. Columns: that score, and that minus the query's best;
the same two again for a query of at most ``SHORT_FRAMES`` frames (else 0).
"""

import os

import numpy as np

_M = {}
SHORT_FRAMES = 64  # a query of at most 32 of its own beats: the two columns again, else 0


def prepare(index, notes):
    from cover_embedding_model import WEIGHTS, CoverEmbedding, cumulative

    model = CoverEmbedding(os.environ.get("EMBED_WEIGHTS", WEIGHTS))
    _M["model"] = model
    _M["cums"] = [cumulative(model.frames(notes[p]["onset_beats"], notes[p]["duration_beats"], notes[p]["pitch"]))
                  for p in index.ids]


def columns(index, q, r, arrays):
    from cover_embedding_model import windows_from_cumulative

    rows = r["rows"]
    on, du, p, _trk = arrays
    out = np.zeros((rows.size, 4), np.float32)
    if not rows.size or on.size < 4:
        return out
    f = _M["model"].frames(on, du, p)
    e = f.mean(0)
    e /= max(float(np.linalg.norm(e)), 1e-9)
    s = np.array([float((windows_from_cumulative(_M["cums"][k], f.shape[0], 2) @ e).max()) for k in rows],
                 np.float32)
    out[:, 0], out[:, 1] = s, s - s.max()
    if f.shape[0] <= SHORT_FRAMES:
        out[:, 2], out[:, 3] = out[:, 0], out[:, 1]
    return out


ARMS = {"+ embedding": [0, 1], "+ embedding, short products": [0, 1, 2, 3]}
