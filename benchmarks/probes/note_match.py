"""Probe for ``benchmarks/fusion_probe.py --probe``: how many of a short query's notes lie
where a candidate has a note of the same pitch, under one time map and transposition
(``indexers.note_match``)? Two arms, each the share and the share minus the query's best
(for short queries, ``query.covers._short``, and their best ``TOP`` candidates by
alignment score; 0 elsewhere):

- ``+ notes vs all notes``: against every note of the stored file (read from the
  benchmark's files by ``prepare``: the cover index does not hold them);
- ``+ notes vs stored lines``: against the candidate's stored lead, second and third
  lines, which the index holds.

The query side is the query's notes in both. Measured in docs/covers-history.md ("Notes
where the candidate has them"):

    nice .venv/bin/python benchmarks/fusion_probe.py --probe benchmarks/probes/note_match.py --seeds 1,2 --heldout 0,3
"""

import numpy as np

from indexers.note_match import matched_share
from query.covers import _short

TOP = 100
_ALL = {}  # "onset", "pitch": every stored file's notes back to back; "off": offsets by row


def prepare(index, notes):
    ns = [notes[str(p)] for p in index.paths]
    _ALL["onset"] = np.concatenate([n["onset_beats"] for n in ns]).astype(np.float64)
    _ALL["pitch"] = np.concatenate([n["pitch"] for n in ns]).astype(np.int64)
    _ALL["off"] = np.cumsum([0] + [n["pitch"].size for n in ns])


def columns(index, q, r, arrays):
    rows = r["rows"]
    out = np.zeros((rows.size, 4))
    if not _short(q) or rows.size == 0 or len(arrays[0]) < 4:
        return out
    sel = np.argsort(-r["score"], kind="stable")[:TOP]
    rs = rows[sel]
    shifts = np.asarray(r["hshift"][sel], np.int64)
    off = _ALL["off"]
    every = matched_share(arrays[0], arrays[2], _ALL["onset"], _ALL["pitch"], off[rs][:, None], off[rs + 1][:, None],
                          shifts)
    lines = matched_share(arrays[0], arrays[2], index.mel_onset, index.mel_pitch,
                          np.stack([o[rs] for o in index.line_off], 1), np.stack([o[rs + 1] for o in index.line_off], 1),
                          shifts)
    for a, share in enumerate((every, lines)):
        out[sel, 2 * a] = share
        out[:, 2 * a + 1] = out[:, 2 * a] - share.max()
    return out


ARMS = {"+ notes vs all notes": [0, 1], "+ notes vs stored lines": [2, 3]}
