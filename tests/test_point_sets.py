"""Point-set kernels (query/point_sets.py) and the SIATEC baseline (benchmarks/siatec.py)
on translated copies of a point set, where the translators are known."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import numpy as np

from query.point_sets import compact_segments, occurrence_points, pair_table, segment_points, translators

V1 = (100, 0)
V2 = (300, 5)


def _pattern(seed=0, m=12):
    """m points with distinct onsets in [0, 90) (grid steps), random pitches."""
    rng = random.Random(seed)
    onsets = sorted(rng.sample(range(0, 90), m))
    return [(t, rng.randint(50, 80)) for t in onsets]


def _sorted_points(points):
    pts = sorted(set(points))
    return np.array([p[0] for p in pts], np.int64), np.array([p[1] for p in pts], np.int64)


def _translated_copies(pattern, drop_from_last=0):
    """pattern, pattern + V1, pattern + V2 (that last copy without its first
    ``drop_from_last`` points): no translation maps a copy onto another copy's time span
    except V1, V2 and V2 - V1, so the TEC of the pattern is known."""
    last = [(t + V2[0], p + V2[1]) for t, p in pattern][drop_from_last:]
    return pattern + [(t + V1[0], p + V1[1]) for t, p in pattern] + last


def _siatec_module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "siatec.py"
    if "siatec" in sys.modules:
        return sys.modules["siatec"]
    # the name the benchmark imports it under: numba's cache refers to it by that name
    spec = importlib.util.spec_from_file_location("siatec", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["siatec"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_siatec_baseline_gives_the_tec_of_a_translated_pattern():
    pat = _pattern()
    q, p = _sorted_points(_translated_copies(pat))
    tecs = _siatec_module().siatec(q, p)
    full = [(P, T) for P, T in tecs if len(P) == len(pat)]
    assert len(full) == 1, "one TEC for the pattern and its two copies"
    P, T = full[0]
    assert sorted(map(tuple, P.tolist())) == pat
    assert sorted(map(tuple, T.tolist())) == [(0, 0), V1, V2]
    # every TEC's occurrences lie in the point set
    points = set(zip(q.tolist(), p.tolist()))
    for P, T in tecs:
        for v in T:
            assert {(a + v[0], b + v[1]) for a, b in P.tolist()} <= points


def test_translators_find_exact_and_inexact_copies():
    pat = _pattern(seed=1)
    q, p = _sorted_points(_translated_copies(pat, drop_from_last=2))
    table = pair_table(q, p)
    code = {(a, b): i for i, (a, b) in enumerate(zip(q.tolist(), p.tolist()))}
    idx = np.array([code[x] for x in pat])
    n = len(q)

    def vec(g, side):
        k = table.keys[table.starts[g]] >> 32
        return side * (k >> 8), side * ((k & 255) - 128)

    exact = {vec(g, s): c for g, s, c in translators(table, idx, n, min_count=len(pat))}
    assert exact == {V1: len(pat)}  # the third copy lacks two points
    near = {vec(g, s): c for g, s, c in translators(table, idx, n, min_count=9)}
    assert near == {V1: 12, V2: 10}
    g, s, _ = next(r for r in translators(table, idx, n, min_count=9) if vec(r[0], r[1]) == V2)
    occ = occurrence_points(table, int(g), int(s), idx, n)
    assert sorted((int(q[i]), int(p[i])) for i in occ) == sorted((t + V2[0], x + V2[1]) for t, x in pat[2:])


def test_compact_segment_is_the_copied_block():
    rng = random.Random(3)
    # a dense block of 30 points (3 per onset), copied 200 steps later; sparse random
    # points around them
    block = sorted({(t * 6, rng.randint(40, 90)) for t in range(15) for _ in range(3)})
    filler = [(t, rng.randint(40, 90)) for t in range(100, 200, 7)] + [(t, rng.randint(40, 90)) for t in range(300, 400, 7)]
    q, p = _sorted_points(block + [(t + 200, x) for t, x in block] + filler)
    table = pair_table(q, p)
    segs = compact_segments(table, q, min_size=20, max_gap=48, max_skip=2, min_compact=0.8)
    assert len(segs) == 1
    pat, img = segment_points(table, int(segs[0, 0]), int(segs[0, 1]))
    assert sorted(zip(q[pat].tolist(), p[pat].tolist())) == block
    assert sorted(zip(q[img].tolist(), p[img].tolist())) == [(t + 200, x) for t, x in block]
    assert segs[0, 3] == 1.0
