"""Probe for ``benchmarks/fusion_probe.py --probe``: the note vote of a short query
(``CoverIndex._notes``, ``indexers.note_match``: the share of its notes that lie where a
candidate has a note of the same pitch under one time map and transposition), left out
of the shipped features and put back, each arm's fusion refitted. What it measured
before it shipped, as a probe column against every stored note and against the stored
melody lines only: docs/covers-history.md ("Notes where the candidate has them").

    nice .venv/bin/python benchmarks/fusion_probe.py --probe benchmarks/probes/note_match.py --seeds 1,2 --heldout 0,3
"""

import numpy as np

DROP = ("notes", "notes_rel")
BASE = "without notes"


def columns(index, q, r, arrays):
    share = index._notes(q, r)
    return np.stack([share, share - (share.max() if share.size else 0.0)], axis=1)


ARMS = {"+ notes": [0, 1]}
