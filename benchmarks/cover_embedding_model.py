"""A learned, transposition-invariant embedding of a passage of music, measured as a cover
search signal (issue #11: "a learned transposition-invariant embedding ... welcome if it
measures better"). Weights are made by ``benchmarks/train_cover_embedding.py``; the probe
``benchmarks/probes/cover_embedding.py`` measures what it adds to the search's fusion.

Input: a chroma roll of the notes in frames of ``STEP_BEATS`` beats (the part's own
beats: a re-timed query's beats are not the stored version's, which the training's
augmentations cover), four channels per pitch class: onsets (log count), sounding notes
(capped), the highest and the lowest note at each onset. The first convolution sees all
12 pitch classes (circularly, so each of its 12 outputs is the chroma read from one
root), the next ones are circular in pitch too, and the features are pooled over pitch
classes at the end: a transposition of the input rotates every feature map and leaves
the pooled ones unchanged, so the embedding is key-invariant by construction, not by
training. Per frame the pooled features are projected to ``DIM`` numbers; a passage's
embedding is the mean of its frames' projections, L2-normalised, so every window of a
stored piece is one difference of cumulative sums.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["roll", "window_embeddings", "STEP_BEATS", "DIM", "WEIGHTS"]

STEP_BEATS = 0.5
N_CHANNELS = 4
DIM = 64
WEIGHTS = Path(os.environ.get("ATLAS_BENCH_CACHE", "/tmp/atlas_covers_honest")) / "cover_embedding.pt"


def roll(on_beats, du_beats, pitch) -> np.ndarray:
    """float32 [N_CHANNELS, 12, frames] of one passage (onsets from its first onset)."""
    on = np.asarray(on_beats, np.float64)
    on = on - on.min()
    du = np.maximum(np.asarray(du_beats, np.float64), 1e-3)
    pc = np.asarray(pitch, np.int64) % 12
    n_frames = int(on.max() // STEP_BEATS) + 1
    x = np.zeros((N_CHANNELS, 12, n_frames), np.float32)
    f0 = (on // STEP_BEATS).astype(np.int64)
    np.add.at(x[0], (pc, f0), 1.0)
    x[0] = np.log1p(x[0])
    f1 = np.minimum(((on + du) // STEP_BEATS).astype(np.int64), n_frames - 1)
    span = np.maximum(f1 - f0 + 1, 1)
    idx = np.repeat(np.arange(on.size), span)
    fr = f0[idx] + (np.arange(idx.size) - np.repeat(np.cumsum(span) - span, span))
    np.add.at(x[1], (pc[idx], fr), 1.0)
    np.minimum(x[1], 1.0, out=x[1])
    # highest and lowest note of each onset frame
    p = np.asarray(pitch, np.int64)
    o = np.lexsort((p, f0))
    last = np.r_[f0[o][1:] != f0[o][:-1], True]
    first = np.r_[True, f0[o][1:] != f0[o][:-1]]
    x[2, pc[o][last], f0[o][last]] = 1.0
    x[3, pc[o][first], f0[o][first]] = 1.0
    return x


def build_net(width: int = 48, kernel_t: int = 3, dilations=(1, 2, 4, 8)):
    """The torch network: [B, N_CHANNELS, 12, T] -> per-frame projections [B, DIM, T]."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.first = nn.Conv2d(N_CHANNELS, width, (12, kernel_t), padding=(0, kernel_t // 2))
            self.convs = nn.ModuleList(
                nn.Conv2d(width, width, (3, kernel_t), dilation=(1, d), padding=(0, d * (kernel_t // 2)))
                for d in dilations)
            self.proj = nn.Conv1d(width, DIM, 1)

        def forward(self, x):
            # circular in pitch: each of the 12 outputs of the first layer reads the chroma from one root
            h = torch.relu(self.first(torch.cat([x, x[:, :, :11]], dim=2)))
            for c in self.convs:
                h = h + torch.relu(c(torch.cat([h[:, :, -1:], h, h[:, :, :1]], dim=2)))
            return self.proj(h.amax(dim=2))

    return Net()


def pooled(frames, mask):
    """L2-normalised mean of per-frame projections [B, DIM, T] over the masked frames."""
    import torch

    e = (frames * mask[:, None, :]).sum(-1) / mask.sum(-1, keepdim=True).clamp(min=1)
    return torch.nn.functional.normalize(e, dim=1)


class CoverEmbedding:
    """The trained network (torch, CPU, one thread) and its window embeddings."""

    def __init__(self, path: Path | str = WEIGHTS):
        import torch

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no cover embedding weights; run benchmarks/train_cover_embedding.py")
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.net = build_net(**state["config"])
        self.net.load_state_dict(state["weights"])
        self.net.eval()

    def frames(self, on_beats, du_beats, pitch) -> np.ndarray:
        """float32 [frames, DIM]: each frame's projection (mean over frames = embedding)."""
        import torch

        x = torch.from_numpy(roll(on_beats, du_beats, pitch))[None]
        with torch.no_grad():
            return self.net(x)[0].T.numpy().copy()

    def embed(self, on_beats, du_beats, pitch) -> np.ndarray:
        e = self.frames(on_beats, du_beats, pitch).mean(0)
        return e / max(float(np.linalg.norm(e)), 1e-9)


def cumulative(frames: np.ndarray) -> np.ndarray:
    """float64 [T + 1, DIM]: the running sums of ``frames`` from 0, so the sum over frames
    a..b-1 is ``c[b] - c[a]`` (a piece's windows of any length from one array)."""
    return np.vstack([np.zeros((1, frames.shape[1])), np.cumsum(frames, 0, dtype=np.float64)])


def windows_from_cumulative(c: np.ndarray, length: int, stride: int) -> np.ndarray:
    """float64: the L2-normalised mean of every ``length``-frame window, at ``stride``, from
    ``cumulative(frames)``; one window (the whole piece) when the piece is shorter."""
    t = c.shape[0] - 1
    length = max(1, min(length, t))
    starts = np.arange(0, t - length + 1, stride)
    w = c[starts + length] - c[starts]
    return w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-9)


def window_embeddings(frames: np.ndarray, length: int, stride: int) -> np.ndarray:
    """``windows_from_cumulative`` of ``frames`` [T, DIM]."""
    return windows_from_cumulative(cumulative(frames), length, stride)
