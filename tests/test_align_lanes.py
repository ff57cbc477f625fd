"""The lane kernels (indexers.lanes) against the one-reference-at-a-time kernels of
indexers.align: the same scores to the bit, on inputs built to reach every branch."""

import numpy as np
import pytest

from indexers.align import sw_chroma, sw_symbols
from indexers.lanes import CHROMA_LANES, SYMBOL_LANES, chroma_scores, pitch_class_scores, sym_scores


def _symbol_case(seed: int, n_refs: int, n_query: int, with_zeros: bool):
    rng = np.random.default_rng(seed)
    low = 0 if with_zeros else 1
    q = rng.integers(low, 12, n_query).astype(np.int8)
    # lengths from empty to longer than the query, more references than lanes
    lens = rng.integers(0, 3 * n_query + 5, n_refs)
    lens[: min(3, n_refs)] = [0, 1, 2][: min(3, n_refs)]
    off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    refs = rng.integers(low, 12, max(int(off[-1]), 1)).astype(np.int8)
    for c in range(3, n_refs, 4):  # noisy copies of a part of the query: high scores, ties
        a, m = off[c], min(lens[c], n_query)
        take = rng.random(m) < 0.8
        refs[a:a + m] = np.where(take, q[:m], refs[a:a + m])
    return q, refs, off


@pytest.mark.parametrize("seed,n_refs,n_query,with_zeros", [
    (0, 1, 1, False), (1, 5, 2, False), (2, SYMBOL_LANES, 30, False), (3, 3 * SYMBOL_LANES + 5, 60, False),
    (4, 40, 25, True), (5, 70, 9, True)])
def test_sym_scores_equal_the_region_kernel(seed, n_refs, n_query, with_zeros):
    """Scores equal sw_symbols' bit for bit and the end is where its region ends, for
    references fewer than, as many as and more than the lanes, empty and one symbol
    long, and symbol 0 (which sw_symbols never matches alone) in query and references."""
    q, refs, off = _symbol_case(seed, n_refs, n_query, with_zeros)
    f = np.float32
    scores, end = sym_scores(q, refs, off[:-1], off[1:], f(1.0), f(0.7), f(0.6), f(0.3))
    full, region = sw_symbols(q, refs, off, 1.0, 0.7, 0.6, 0.3)
    np.testing.assert_array_equal(scores, full)
    hit = full > 0
    np.testing.assert_array_equal(region[hit, 3], end[hit] + 1)
    assert (end[~hit] == -1).all()
    if n_refs > 3 and n_query >= 9:
        assert full.max() > 5  # the copies were found: the comparison is not all zeros


def test_sym_scores_other_penalties_and_an_empty_query():
    q, refs, off = _symbol_case(9, 2 * SYMBOL_LANES + 1, 40, False)
    f = np.float32
    for match, mismatch, gap, merge in ((2.0, 0.0, 1.5, 0.1), (1.0, 3.0, 0.2, 2.5)):
        scores, _ = sym_scores(q, refs, off[:-1], off[1:], f(match), f(mismatch), f(gap), f(merge))
        np.testing.assert_array_equal(scores, sw_symbols(q, refs, off, match, mismatch, gap, merge)[0])
    scores, end = sym_scores(q[:0], refs, off[:-1], off[1:], f(1), f(1), f(1), f(1))
    assert scores.shape == (off.size - 1,) and not scores.any() and (end == -1).all()


def _chroma_case(rng, n_refs: int, n_query: int, exact: bool):
    """Query rolled by 0..11 semitones, references back to back, shifts per reference
    (some -1: not tried), silent frames on both sides. ``exact``: values in {0, 1/2, 1}
    and penalties in eighths, so every sum is exact in float32 and float64 alike."""
    def frames(m):
        if exact:
            f = rng.integers(0, 3, (m, 12)).astype(np.float32) / 2
        else:
            f = rng.random((m, 12)).astype(np.float32) ** 4
            f /= np.linalg.norm(f, axis=1, keepdims=True)
        f[rng.random(m) < 0.1] = 0  # silent frames
        return f
    qf = frames(n_query)
    qs = np.ascontiguousarray(np.stack([np.roll(qf, t, axis=1) for t in range(12)]), np.float32)
    lens = rng.integers(0, 4 * n_query, n_refs)
    lens[:2] = [0, 1]
    off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    refs = frames(max(int(off[-1]), 1))
    for c in range(2, n_refs, 3):  # a transposed copy of the query inside: clear winners
        a, m = off[c], min(lens[c], n_query)
        refs[a:a + m] = np.roll(qf[:m], int(rng.integers(12)), axis=1)
    shifts = rng.integers(0, 12, (n_refs, 4)).astype(np.int64)
    shifts[rng.random(shifts.shape) < 0.25] = -1
    shifts[-1] = -1  # a reference with no transposition to try scores 0
    return qs, shifts, refs, off


@pytest.mark.parametrize("seed,n_refs,n_query", [(0, 3, 1), (1, 5, 7), (2, 3 * CHROMA_LANES + 3, 20), (3, 40, 45)])
def test_chroma_scores_equal_the_region_kernel_where_sums_are_exact(seed, n_refs, n_query):
    """With every sum exact, scores and best transpositions equal sw_chroma's bit for
    bit: fewer and more (reference, transposition) pairs than lanes, empty and one-frame
    references, transpositions not tried, silent frames in query and references."""
    qs, shifts, refs, off = _chroma_case(np.random.default_rng(seed), n_refs, n_query, exact=True)
    scores, best = chroma_scores(qs, shifts, refs, off[:-1], off[1:], 0.625, 0.25, 0.5)
    full, full_shift, _ = sw_chroma(qs, shifts, refs, off, 0.625, 0.25, 0.5)
    np.testing.assert_array_equal(scores, full)
    np.testing.assert_array_equal(best, full_shift)
    assert scores[-1] == 0 and best[-1] == 0
    if n_query >= 7:
        assert scores.max() > 2  # the copies were found: the comparison is not all zeros


def test_chroma_scores_close_to_the_region_kernel_on_unit_frames():
    """On unit-norm frames the float32 frame scores differ from sw_chroma's float64 ones
    in the last bits only: the same transposition wherever the best is clear."""
    qs, shifts, refs, off = _chroma_case(np.random.default_rng(7), 2 * CHROMA_LANES + 5, 30, exact=False)
    scores, best = chroma_scores(qs, shifts, refs, off[:-1], off[1:], 0.6, 0.3, 0.5)
    full, full_shift, _ = sw_chroma(qs, shifts, refs, off, 0.6, 0.3, 0.5)
    np.testing.assert_allclose(scores, full, rtol=1e-5, atol=1e-5)
    assert full.max() > 5
    assert (best == full_shift).mean() > 0.9


def _pitch_class_reference(q, ref, shift, match, mismatch, gap_q, gap_r):
    """sw_pitch_classes_score's recurrence for one reference, in float32 as the kernel
    computes it: match or leave the reference note out, then query notes left out as a
    running max down the column."""
    f = np.float32
    n = q.size
    col = np.zeros(n + 1, f)
    best = f(0)
    for x in ref:
        new = np.zeros(n + 1, f)
        for i in range(1, n + 1):
            p = f(match) if (q[i - 1] + shift) % 12 == x else -f(mismatch)
            new[i] = max(max(col[i - 1] + p, col[i] - f(gap_r)), f(0))
        run = f(0)
        for i in range(1, n + 1):
            run = max(new[i], run - f(gap_q))
            col[i] = run
            best = max(best, run)
    return best


@pytest.mark.parametrize("seed,n_refs,n_query", [(0, 2, 1), (1, SYMBOL_LANES + 3, 12), (2, 3 * SYMBOL_LANES, 30)])
def test_pitch_class_scores_equal_the_recurrence(seed, n_refs, n_query):
    """Bit for bit the recurrence written out one reference at a time, each reference
    with its own shift, empty and one-note references among more than the lanes."""
    rng = np.random.default_rng(seed)
    q = rng.integers(0, 12, n_query).astype(np.int64)
    lens = rng.integers(0, 2 * n_query + 3, n_refs)
    lens[:2] = [0, 1]
    off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    refs = rng.integers(0, 12, max(int(off[-1]), 1)).astype(np.int64)
    shifts = rng.integers(0, 12, n_refs).astype(np.int64)
    for c in range(2, n_refs, 3):  # the query, transposed by the shift, among other notes
        a, m = off[c], min(lens[c], n_query)
        refs[a:a + m] = np.where(rng.random(m) < 0.7, (q[:m] + shifts[c]) % 12, refs[a:a + m])
    got = pitch_class_scores(q, refs, off[:-1], off[1:], shifts, 1.0, 0.7, 0.25, 0.6)
    want = [_pitch_class_reference(q, refs[off[c]:off[c + 1]], shifts[c], 1.0, 0.7, 0.25, 0.6) for c in range(n_refs)]
    np.testing.assert_array_equal(got, np.array(want, np.float32))
    if n_query >= 12:
        assert got.max() > 4


def test_slp_vectorizer_only_for_the_lane_kernels():
    """numba turns its SLP vectorizer off by default (LLVM miscompilations): compiling the
    lane kernels turns it on for themselves only and gives the setting back."""
    import numba

    from indexers import lanes

    before = numba.config.SLP_VECTORIZE
    with lanes._slp():
        assert numba.config.SLP_VECTORIZE == 1
    assert numba.config.SLP_VECTORIZE == before
    lanes._ready()  # the kernels compiled or loaded: the setting is as it was
    assert numba.config.SLP_VECTORIZE == before
    assert all(name in vars(lanes) for name in lanes._KERNELS)


def test_the_other_cpus_lane_count_scores_the_same_too():
    """SYMBOL_LANES follows the CPU (16 with AVX-512, else 8), so this file's melody and
    pitch-class tests run with one count on a given machine: here they run again with
    the other, lanes.py loaded with that count in a process of its own. numba's cache
    entries do not name the lane count, so that process has a cache folder of its own
    (kept, as the main one is: compiling it all takes ~20 s)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from indexers import lanes

    other = 8 if lanes.SYMBOL_LANES == 16 else 16
    code = f"""
import sys, types
from pathlib import Path
path = Path({str(Path(lanes.__file__))!r})
src = path.read_text()
line = "SYMBOL_LANES = 16 if _has_avx512() else 8"
assert src.count(line) == 1 and "cache=True" in src
src = src.replace(line, "SYMBOL_LANES = {other}")
mod = types.ModuleType("indexers.lanes")
mod.__file__ = str(path)
sys.modules["indexers.lanes"] = mod
exec(compile(src, str(path), "exec"), mod.__dict__)
import pytest
assert mod.SYMBOL_LANES == {other}
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", {__file__!r}, "-k", "sym_scores or pitch_class"]))
"""
    cache = Path(os.environ["NUMBA_CACHE_DIR"]) / f"symbol-lanes-{other}"  # (conftest.py sets the variable)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1],
                         env={**os.environ, "NUMBA_CACHE_DIR": str(cache)})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert " passed" in out.stdout and "failed" not in out.stdout
