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

_MEL = {}


def prepare(index):
    import covers_honest as ch

    if getattr(ch, "_oracle_patched", False):
        return
    src = inspect.getsource(ch.degrade).replace("None if merge else trk[o]", "trk[o]")
    ns = dict(vars(ch))
    exec(src, ns)
    degrade_all = ns["degrade"]

    def degrade(n, factors, level, rng):
        n2 = dict(n)
        n2["track_index"] = n["track_index"].astype(np.int64) * 2 + (n["track"] == "MELODY")
        on, du, p, trk = degrade_all(n2, factors, level, rng)
        merge = "merge" in factors or "perf" in factors
        _MEL[id(on)] = (trk % 2) == 1
        return on, du, p, None if merge else trk // 2

    ch.degrade = degrade
    ch._oracle_patched = True


def columns(index, q, r, arrays):
    from indexers.features import skyline

    line_columns = runpy.run_path(str(Path(__file__).with_name("tune_notes.py")))["line_columns"]
    rows = r["rows"]
    on, du, p = arrays[0], arrays[1], arrays[2]
    m = _MEL.get(id(on))
    if m is None or m.sum() < 5 or not rows.size:
        return np.zeros((rows.size, 4), np.float32)
    return line_columns(index, r, skyline(on[m], du[m], p[m])[0])


ARMS = {"+ oracle intervals": [0, 1], "+ oracle pcs": [2, 3], "+ oracle both": [0, 1, 2, 3]}
