"""Which notes of one polyphonic part are the tune: a small learned note classifier,
measured as a cover-search signal and not kept (docs/covers-history.md, "The learned tune line").

A query that comes as one part (tracks merged, a piano reduction, a performance) has no
lead track, and its skyline is about half accompaniment (docs/covers.md, "A one-part
query"). This module scores each note's probability of belonging to the tune from its
context alone, with features that do not depend on the key or the tempo:

- time is measured in the part's own unit ``u`` (its span divided by its number of
  notes), so a re-timed file, a tempo curve or a performance read in seconds give the
  same features;
- pitch enters as the note's height against the highest, lowest and mean notes
  sounding near it (windows of 0.5, 2 and 8 ``u``) and as its register, so a
  transposition of a few semitones changes one column only.

A dilated 1-D convolution over the notes in onset order (``TuneNoteModel``) turns the
features into a probability; ``benchmarks/train_tune_notes.py`` trains it (into
``WEIGHTS`` by default) on POP909-dev songs that are never queries of the honest cover
benchmark. The forward pass is NumPy, as the search would run it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numba
import numpy as np

__all__ = ["note_features", "TuneNoteModel", "save_weights", "N_FEATURES", "WEIGHTS"]

WINDOWS_U = (0.5, 2.0, 8.0)
N_FEATURES = 3 + 4 * len(WINDOWS_U)
# where benchmarks/train_tune_notes.py saves the weights by default (not in the repository)
WEIGHTS = Path(os.environ.get("ATLAS_BENCH_CACHE", "/tmp/atlas_covers_honest")) / "tune_notes.npz"


@numba.njit(cache=True)
def _window_stats(on, p, half):
    """Per note: the max, min and mean pitch and the count of the notes whose onset is
    within ``half`` of its own (``on`` sorted)."""
    n = on.size
    out = np.zeros((n, 4))
    lo = 0
    hi = 0
    for i in range(n):
        while on[lo] < on[i] - half:
            lo += 1
        while hi < n and on[hi] <= on[i] + half:
            hi += 1
        mx = -1.0
        mn = 999.0
        s = 0.0
        for j in range(lo, hi):
            v = p[j]
            if v > mx:
                mx = v
            if v < mn:
                mn = v
            s += v
        out[i, 0] = mx
        out[i, 1] = mn
        out[i, 2] = s / (hi - lo)
        out[i, 3] = hi - lo
    return out


def note_features(onset_beats, duration_beats, pitch) -> tuple[np.ndarray, np.ndarray]:
    """(order, features): the notes' order by onset (then pitch, highest first) and
    their features in that order, float32 [shape=(n, N_FEATURES)]."""
    on = np.asarray(onset_beats, np.float64)
    du = np.asarray(duration_beats, np.float64)
    p = np.asarray(pitch, np.float64)
    order = np.lexsort((-p, on))
    on, du, p = on[order], du[order], p[order]
    n = on.size
    f = np.zeros((n, N_FEATURES), np.float32)
    if n == 0:
        return order, f
    u = max((on[-1] - on[0]) / n, 1e-3)
    f[:, 0] = (p - 64.0) / 24.0
    f[:, 1] = np.clip(np.log2(np.maximum(du, 1e-3) / u), -6, 6) / 3.0
    # gap to the previous distinct onset, in u
    gap = np.diff(on, prepend=on[0] - u)
    f[:, 2] = np.clip(np.log2(np.maximum(gap / u, 1e-2)), -7, 4) / 3.0
    c = 3
    for w in WINDOWS_U:
        st = _window_stats(on, p, w * u)
        f[:, c] = (p - st[:, 0]) / 12.0
        f[:, c + 1] = (p - st[:, 1]) / 12.0
        f[:, c + 2] = (p - st[:, 2]) / 12.0
        f[:, c + 3] = np.log2(st[:, 3] / (2 * w + 1))
        c += 4
    return order, f


class TuneNoteModel:
    """Conv1d layers (kernel ``k``, dilation ``d``, same padding, ReLU) then a per-note
    logistic output; weights as saved by ``benchmarks/train_tune_notes.py`` (an .npz of
    ``w0, b0, w1, b1, ...``: w of shape (out, in, k); ``dilations``; ``mean``, ``std``
    of the features)."""

    def __init__(self, path: Path | str = WEIGHTS):
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: the tune-note model's weights are missing "
                                    "(train them with benchmarks/train_tune_notes.py, ~10 min)")
        with np.load(path) as z:
            n = len([k for k in z.files if k.startswith("w")])
            self.layers = [(z[f"w{i}"].astype(np.float32), z[f"b{i}"].astype(np.float32)) for i in range(n)]
            self.dilations = [int(d) for d in z["dilations"]]
            self.mean = z["mean"].astype(np.float32)
            self.std = z["std"].astype(np.float32)

    def probabilities(self, feats: np.ndarray) -> np.ndarray:
        """P(tune) per note, for features in onset order (``note_features``)."""
        x = (np.asarray(feats, np.float32) - self.mean) / self.std
        for i, ((w, b), d) in enumerate(zip(self.layers, self.dilations)):
            k = w.shape[2]
            pad = d * (k // 2)
            xp = np.pad(x, ((pad, pad), (0, 0)))
            # (n, in * k) windows, each note's neighbours in order (every d-th)
            cols = np.stack([xp[j * d:j * d + x.shape[0]] for j in range(k)], axis=2).reshape(x.shape[0], -1)
            x = cols @ w.reshape(w.shape[0], -1).T + b
            if i < len(self.layers) - 1:
                np.maximum(x, 0, out=x)
        return 1.0 / (1.0 + np.exp(-x[:, 0]))


def save_weights(path: Path | str, layers, dilations, mean, std) -> None:
    """Save conv layers ((w (out, in, k), b) NumPy pairs) as ``TuneNoteModel`` reads them."""
    weights = {}
    for i, (w, b) in enumerate(layers):
        weights[f"w{i}"], weights[f"b{i}"] = np.asarray(w, np.float32), np.asarray(b, np.float32)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, mean=np.asarray(mean, np.float32), std=np.asarray(std, np.float32),
                        dilations=np.asarray(dilations, np.int64), **weights)
