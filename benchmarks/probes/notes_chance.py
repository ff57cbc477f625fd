"""Probe for ``benchmarks/fusion_probe.py --probe``: the note vote's chance level per
candidate. A wrong song with many notes holds a large share of a short query's notes by
chance (0.45-0.69 for the best wrong candidate of the held-out combined_short level-2
queries the search ranks wrong, seeds 0 and 7). The same vote at a wrong transposition
(the candidate's harmony shift + 6 semitones: a tritone away, where a version's notes do
not match) says how much a candidate matches any tune; its columns are that share and
the vote's share minus it.

    nice .venv/bin/python benchmarks/fusion_probe.py --probe benchmarks/probes/notes_chance.py --seeds 1,2 --heldout 0,3
"""

import numpy as np


def columns(index, q, r, arrays):
    share = index._notes(q, r)
    chance = index._notes(q, dict(r, hshift=(np.asarray(r["hshift"], np.int64) + 6) % 12))
    return np.stack([chance, share - chance], axis=1)


ARMS = {"+ chance": [0], "+ chance, excess": [0, 1]}
