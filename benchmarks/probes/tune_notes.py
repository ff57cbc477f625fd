"""Probe for ``benchmarks/fusion_probe.py --probe``: the learned tune line of a one-part
query (``tune_notes_model``: the notes a small convolutional classifier calls tune),
as the columns ``oracle_tune.py`` measures for the true MELODY notes. Weights:
``$TUNE_WEIGHTS`` or ``tune_notes_model.WEIGHTS`` (made by
``benchmarks/train_tune_notes.py``). Measured, not kept: docs/covers-history.md, "The learned
tune line". ``$TUNE_THRESHOLDS`` (default "0.3,0.5"): the probabilities a note needs.

Columns per threshold (0.3, 0.5): the line's interval alignment against each candidate's
lines and that minus the best; its pitch classes against the candidate's tune at its
harmony transposition and that minus the best. Only for one-part queries (no track
index): a query with tracks has its lead line.
"""

import os

import numpy as np

THRESHOLDS = tuple(float(t) for t in os.environ.get("TUNE_THRESHOLDS", "0.3,0.5").split(","))
_M = {}


def prepare(index):
    from tune_notes_model import WEIGHTS, TuneNoteModel

    _M["model"] = TuneNoteModel(os.environ.get("TUNE_WEIGHTS", WEIGHTS))


def line_columns(index, r, line):
    from indexers.align import sw_pitch_classes_score, sw_symbols_score
    from indexers.features import melody_intervals
    from query.covers import ALIGN as A
    from query.covers import _middle

    rows = r["rows"]
    out = np.zeros((rows.size, 4), np.float32)
    iv = melody_intervals(line)[0]
    if iv.size >= 3:
        spans = index._line_spans(rows, index.line_iv_off)
        s = sw_symbols_score(np.ascontiguousarray(iv), index.iv, spans, A["mel_match"], A["mel_mismatch"],
                             A["mel_gap"], A["mel_merge"])
        s = s[index._best_line(rows, s)] / (A["mel_match"] * max(iv.size, A["min_query_intervals"]))
        out[:, 0], out[:, 1] = s, s - s.max()
    if line.size >= 4:
        a, b = _middle(line.size, A["pc_query_notes"])
        qpc = np.asarray(line[a:b], np.int64) % 12
        spans, shifts = index._note_lines(rows, r["hshift"])
        raw = sw_pitch_classes_score(qpc, index.mel_pc, spans, shifts, A["pc_match"], A["pc_mismatch"],
                                     A["pc_gap_query"], A["pc_gap_ref"])
        t = raw[index._best_line(rows, raw)] / (A["pc_match"] * max(qpc.size, A["min_query_intervals"]))
        out[:, 2], out[:, 3] = t, t - t.max()
    return out


def columns(index, q, r, arrays):
    from indexers.features import skyline
    from tune_notes_model import note_features

    rows = r["rows"]
    on, du, p, trk = arrays
    cols = np.zeros((rows.size, 4 * len(THRESHOLDS)), np.float32)
    if trk is not None or not rows.size:
        return cols
    order, f = note_features(on, du, p)
    prob = np.zeros(on.size)
    prob[order] = _M["model"].probabilities(f)
    for i, t in enumerate(THRESHOLDS):
        m = prob >= t
        if m.sum() >= 5:
            cols[:, 4 * i:4 * i + 4] = line_columns(index, r, skyline(on[m], du[m], p[m])[0])
    return cols


ARMS = {}
for _i, _t in enumerate(THRESHOLDS):
    ARMS[f"+ intervals {_t}"] = [4 * _i, 4 * _i + 1]
    ARMS[f"+ pcs {_t}"] = [4 * _i + 2, 4 * _i + 3]
    ARMS[f"+ both {_t}"] = list(range(4 * _i, 4 * _i + 4))
