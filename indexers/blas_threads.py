"""BLAS on one thread, for code that makes many small matrix products.

OpenBLAS starts its threads for products just big enough (a few hundred rows x 12 x a
few columns) and the threads then cost more than they save; in a search that already
runs its kernels on two threads of its own they also compete with those for the 2
cores. Two OpenBLAS copies are in play: NumPy's (``@``) and SciPy's, which numba's
``np.dot`` calls; both are limited. OpenBLAS splits a product's output between its
threads, never a sum, so the products are the same to the bit on one thread.
"""

from __future__ import annotations

_CONTROLLER = []  # the threadpoolctl controller, made on first use


def one_blas_thread():
    """A context in which every loaded BLAS runs on one thread (restored on exit)."""
    if not _CONTROLLER:
        # numba's np.dot calls SciPy's OpenBLAS: load it before the controller lists
        # the loaded libraries, or it would stay on its default threads
        import scipy.linalg.cython_blas  # noqa: F401
        from threadpoolctl import ThreadpoolController

        _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0].limit(limits=1, user_api="blas")
