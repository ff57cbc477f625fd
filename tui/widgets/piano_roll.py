"""A small piano roll drawn with Braille characters (2 x 4 dots per terminal cell).

The drawing is a pure function of the notes (NumPy in, NumPy out), so it is tested
without a terminal; the widget only colours the cells by track.
"""

from __future__ import annotations

import numpy as np
from rich.text import Text
from textual.widget import Widget

__all__ = ["braille_roll", "PianoRoll"]

# Dot bit of Braille pattern U+2800 + bits at (row 0-3, column 0-1) inside one cell.
_BITS = np.array([[0x01, 0x08], [0x02, 0x10], [0x04, 0x20], [0x40, 0x80]], dtype=np.uint8)
_PALETTE = ["#5fafff", "#ffaf5f", "#87d787", "#ff87af", "#d7afff", "#ffd75f", "#5fd7d7", "#d7d7d7"]


def braille_roll(onset_beats, duration_beats, pitch, track=None, *, width: int, height: int):
    """Rasterise notes into ``height`` x ``width`` Braille cells.

    Parameters
    ----------
    onset_beats, duration_beats : np.ndarray [shape=(n,)], quarter notes
    pitch : np.ndarray [shape=(n,)], MIDI note numbers
    track : np.ndarray [shape=(n,)] or None, a label per note (for colouring)
    width, height : int, cells

    Returns
    -------
    codes : np.ndarray [shape=(height, width), dtype=uint8], the Braille dot bits per cell
        (character = chr(0x2800 + code)); time runs left to right over the notes' span,
        pitch bottom (lowest note) to top (highest), one dot row per semitone when it fits.
    cell_track : np.ndarray [shape=(height, width), dtype=int64], the track with most dots
        in each cell, -1 where empty.

    Example
    -------
    >>> codes, _ = braille_roll([0, 1], [1, 1], [60, 64], width=4, height=2)
    >>> codes.shape
    (2, 4)
    """
    if width < 1 or height < 1:
        raise ValueError(f"width and height must be >= 1 cells, got {width} x {height}")
    on = np.asarray(onset_beats, dtype=np.float64)
    dur = np.maximum(np.asarray(duration_beats, dtype=np.float64), 0.0)
    p = np.asarray(pitch, dtype=np.int64)
    tr = np.zeros(len(p), np.int64) if track is None else np.asarray(track, dtype=np.int64)
    codes = np.zeros((height, width), np.uint8)
    cell_track = np.full((height, width), -1, np.int64)
    if len(p) == 0:
        return codes, cell_track
    dots_x, dots_y = width * 2, height * 4
    t0 = on.min()
    span = max((on + dur).max() - t0, 1e-9)
    x0 = np.clip(((on - t0) / span * dots_x).astype(np.int64), 0, dots_x - 1)
    x1 = np.clip(np.ceil((on + dur - t0) / span * dots_x).astype(np.int64) - 1, x0, dots_x - 1)
    pmin, pmax = p.min(), p.max()
    prange = max(int(pmax - pmin), 1)
    if prange < dots_y:  # one dot row per semitone, centred
        pad = (dots_y - 1 - prange) // 2
        y = (dots_y - 1 - pad) - (p - pmin)
    else:
        y = np.round((pmax - p) * (dots_y - 1) / prange).astype(np.int64)
    y = np.clip(y, 0, dots_y - 1)
    lengths = x1 - x0 + 1
    starts = np.repeat(x0, lengths)
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    xs = starts + offsets
    ys = np.repeat(y, lengths)
    trs = np.repeat(tr, lengths)
    cy, cx = ys // 4, xs // 2
    bits = _BITS[ys % 4, xs % 2]
    np.bitwise_or.at(codes, (cy, cx), bits)
    # Colour: the track with most dots in the cell (ties -> lowest track label).
    labels, tr_idx = np.unique(trs, return_inverse=True)
    counts = np.zeros((height, width, len(labels)), np.int64)
    np.add.at(counts, (cy, cx, tr_idx), 1)
    filled = counts.sum(axis=2) > 0
    cell_track[filled] = labels[counts.argmax(axis=2)[filled]]
    return codes, cell_track


class PianoRoll(Widget):
    """Draws the notes given to :meth:`set_notes`, sized to the widget, one colour per
    track."""

    DEFAULT_CSS = """
    PianoRoll { height: 10; }
    """
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        #: (onset_beats, duration_beats, pitch, track) arrays, or None
        self.notes = None

    def set_notes(self, onset_beats, duration_beats, pitch, track) -> None:
        self.notes = (np.asarray(onset_beats), np.asarray(duration_beats), np.asarray(pitch), np.asarray(track))
        self.refresh()

    def clear(self) -> None:
        self.notes = None
        self.refresh()

    def render(self) -> Text:
        if self.notes is None or len(self.notes[2]) == 0:
            return Text("(no notes)", style="dim")
        w, h = max(self.size.width, 1), max(self.size.height, 1)
        codes, cell_track = braille_roll(*self.notes, width=w, height=h)
        text = Text(no_wrap=True, overflow="crop")
        tracks = sorted(set(np.unique(self.notes[3]).tolist()))
        colour = {t: _PALETTE[i % len(_PALETTE)] for i, t in enumerate(tracks)}
        for r in range(h):
            for c in range(w):
                code = int(codes[r, c])
                t = int(cell_track[r, c])
                text.append(chr(0x2800 + code), style=colour.get(t) if t >= 0 else None)
            if r < h - 1:
                text.append("\n")
        return text
