"""Probe for ``benchmarks/fusion_probe.py --probe``: the ceiling of a learned melody
extractor. For each query, the notes that came from the held-out file's MELODY track
(known to the benchmark, not to the search) form an *oracle* tune line; its columns say
how much a perfect melody/accompaniment split of a one-part query could add to the
fusion. A learned extractor can only reach less.

Columns: the oracle line's interval alignment against each candidate's lead/second line
and its pitch classes against the candidate's tune, each with that minus the query's best
(``tune_notes.py``'s ``line_columns``, as for the learned line).
"""

import inspect
import runpy
from pathlib import Path

import numpy as np

# id of a degraded query's onset array -> (that array, its notes' "from the MELODY track"
# mask); the array is held until its query's columns are made, so that its id cannot be
# reused meanwhile by a query that degrade did not make (the tune cells)
_MEL = {}
_P = {}


def prepare(index):
    import covers_honest as ch

    _P["line_columns"] = runpy.run_path(str(Path(__file__).with_name("tune_notes.py")))["line_columns"]
    if getattr(ch, "_oracle_patched", False):
        return
    # covers_honest.degrade, returning the track of every note even for a merged query
    src = inspect.getsource(ch.degrade)
    if "None if merge else trk[o]" not in src:
        raise SystemExit("oracle_tune.py: covers_honest.degrade no longer ends as this probe expects")
    src = src.replace("None if merge else trk[o]", "trk[o]")
    ns = dict(vars(ch))
    exec(src, ns)
    degrade_all = ns["degrade"]

    def degrade(n, factors, level, rng):
        n2 = dict(n)
        n2["track_index"] = n["track_index"].astype(np.int64) * 2 + (n["track"] == "MELODY")
        on, du, p, trk = degrade_all(n2, factors, level, rng)
        merge = "merge" in factors or "perf" in factors
        _MEL[id(on)] = (on, (trk % 2) == 1)
        return on, du, p, None if merge else trk // 2

    ch.degrade = degrade
    ch._oracle_patched = True


def columns(index, q, r, arrays):
    from indexers.features import skyline

    rows = r["rows"]
    on, du, p = arrays[0], arrays[1], arrays[2]
    held, m = _MEL.pop(id(on), (None, None))
    if held is not on or m.sum() < 5 or not rows.size:
        return np.zeros((rows.size, 4), np.float32)
    return _P["line_columns"](index, r, skyline(on[m], du[m], p[m])[0])


ARMS = {"+ oracle intervals": [0, 1], "+ oracle pcs": [2, 3], "+ oracle both": [0, 1, 2, 3]}
