"""Silence what native libraries write straight to file descriptor 2.

llama.cpp logs there even with ``verbose=False``, and Ray's C++ GCS client logs a
warning there before it raises the error we turn into one line; Python's
``sys.stderr`` redirection does not reach either.
"""

from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def quiet_stderr():
    """Send file descriptor 2 to /dev/null inside the block (restored afterwards). It is
    the process's: only for a block no other thread writes in meanwhile."""
    try:
        saved = os.dup(2)
    except OSError:  # no standard error at all
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
