"""indexers.blas_threads: every BLAS the search uses runs on one thread inside the
context (numba's np.dot calls SciPy's OpenBLAS, NumPy's @ its own), and each gets its
own thread count back afterwards."""

import numpy as np
from threadpoolctl import threadpool_info

from indexers.align import sw_chroma_score
from indexers.blas_threads import one_blas_thread


def _blas_threads():
    return {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


def test_one_blas_thread_limits_numpy_and_scipy_openblas_and_restores():
    with one_blas_thread():
        inside = _blas_threads()
    after = _blas_threads()
    # SciPy's copy (numba's np.dot) is loaded by the context itself, before it limits
    assert any("/scipy.libs/" in p for p in inside), inside
    assert inside and all(n == 1 for n in inside.values()), inside
    assert set(after) == set(inside)
    qs = np.ones((12, 3, 12), np.float32)
    with one_blas_thread():
        sw_chroma_score(qs, np.array([[0, 1]]), np.ones((50, 12), np.float32), np.array([0, 50]), 0.6, 0.3, 0.3)
        assert all(n == 1 for n in _blas_threads().values())
    assert _blas_threads() == after  # the counts come back as they were, after a kernel ran inside


def test_chroma_scores_same_on_one_blas_thread():
    rng = np.random.default_rng(3)
    qs = rng.random((12, 6, 12), dtype=np.float32)
    refs = rng.random((2000, 12), dtype=np.float32)
    offsets = np.array([0, 700, 1400, 2000])
    shifts = np.array([[0, 3, 5, 7]] * 3)
    free = sw_chroma_score(qs, shifts, refs, offsets, 0.6, 0.3, 0.3)
    with one_blas_thread():
        one = sw_chroma_score(qs, shifts, refs, offsets, 0.6, 0.3, 0.3)
    np.testing.assert_array_equal(free[0], one[0])
    np.testing.assert_array_equal(free[1], one[1])
