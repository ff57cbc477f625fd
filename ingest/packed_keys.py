"""Integer sort keys packed into one int64: one stable argsort instead of a lexsort of
several keys (~5x faster), with the same permutation. Used where a stage sorts its
notes by several integer columns (grammar, patterns, vectors)."""

from __future__ import annotations

import numpy as np

__all__ = ["packed_keys", "packed_order"]


def packed_keys(*keys: np.ndarray) -> np.ndarray | None:
    """The integer keys (most significant first, equal lengths) as one int64 that sorts
    as they do together: each key less its minimum, in as many bits as its range needs.
    None when their ranges need more than 63 bits."""
    n = len(keys[0])
    packed = np.zeros(n, np.int64)
    if n == 0:
        return packed
    bits = 0
    for k in keys:
        lo, hi = int(k.min()), int(k.max())
        b = max(hi - lo, 1).bit_length()
        bits += b
        if bits > 63:
            return None
        packed <<= b
        packed |= np.asarray(k).astype(np.int64) - lo
    return packed


def packed_order(*keys: np.ndarray) -> np.ndarray:
    """Stable permutation sorting rows by these integer keys (most significant first):
    ``np.lexsort(keys[::-1])``, by one argsort of :func:`packed_keys` when they fit."""
    packed = packed_keys(*keys)
    return np.lexsort(keys[::-1]) if packed is None else np.argsort(packed, kind="stable")
