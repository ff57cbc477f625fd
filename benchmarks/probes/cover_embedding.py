"""Probe for ``benchmarks/fusion_probe.py --probe``: the learned cover embedding
(``cover_embedding_model``) of the query against every window of each aligned candidate.
Weights: ``$EMBED_WEIGHTS`` or ``cover_embedding_model.WEIGHTS`` (made by
``benchmarks/train_cover_embedding.py``). Measured: docs/covers.md, "The learned embedding".

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
    from cover_embedding_model import WEIGHTS, CoverEmbedding

    model = CoverEmbedding(os.environ.get("EMBED_WEIGHTS", WEIGHTS))
    _M["model"] = model
    cums = []
    for path in index.ids:
        n = notes[path]
        f = model.frames(n["onset_beats"], n["duration_beats"], n["pitch"]).astype(np.float64)
        cums.append(np.vstack([np.zeros((1, f.shape[1])), np.cumsum(f, 0)]))
    _M["cums"] = cums


def _best_window(c, q, length, stride=2):
    t = c.shape[0] - 1
    length = max(1, min(length, t))
    s = np.arange(0, t - length + 1, stride)
    w = c[s + length] - c[s]
    return float((w @ q / np.maximum(np.linalg.norm(w, axis=1), 1e-9)).max())


def columns(index, q, r, arrays):
    rows = r["rows"]
    on, du, p, _trk = arrays
    out = np.zeros((rows.size, 4), np.float32)
    if not rows.size or on.size < 4:
        return out
    f = _M["model"].frames(on, du, p)
    e = f.mean(0)
    e /= max(float(np.linalg.norm(e)), 1e-9)
    s = np.array([_best_window(_M["cums"][k], e, f.shape[0]) for k in rows], np.float32)
    out[:, 0], out[:, 1] = s, s - s.max()
    if f.shape[0] <= SHORT_FRAMES:
        out[:, 2], out[:, 3] = out[:, 0], out[:, 1]
    return out


ARMS = {"+ embedding": [0, 1], "+ embedding, short products": [0, 1, 2, 3]}
