"""The harmony sequence of a recording: its measured HPCP chroma on its notes' beat grid.

A recording's notes come from transcription (``ingest.transcribe``), on a constant-tempo
grid: beat ``k`` of the notes is the time span ``[k, k + 1) * 60 / bpm`` seconds, where
``bpm`` is the mix's tracked tempo (``tempo_changes.tempo_bpm`` of the piece). Its chroma
was measured at ingest per *tracked* beat (``audio_beats``: beat ``i`` covers
``[time_s[i], time_s[i + 1])``, 12-bin HPCP summing to 1). The tracked beats drift
around the constant grid and start at another phase, so :func:`hpcp_on_grid` resamples
them onto the notes' grid: each grid beat sums the tracked beats it spans, each weighted
by the share of it that falls in the grid beat. Melody (from the notes) and harmony (from the audio) then count the same
beats.

:func:`audio_chroma` turns that into the covers' chroma convention (``beat_chroma`` of
``indexers.features``: one frame per beat, each frame's maximum 1, silent frames 0), with
a mild sharpening that makes measured chroma look more like note chroma: each frame is
raised to ``POWER`` (weak bins, mostly harmonics and leakage, shrink) and bins under
``FLOOR`` of the frame's maximum are set to 0.

The same two functions serve a stored piece (``indexers.vectors``, from ``audio_beats``)
and an audio file used as a query (``query.covers``, from ``ingest.audio.audio_query_parts``),
so both get the same harmony sequence.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from numba import njit

__all__ = ["hpcp_on_grid", "audio_chroma", "harmony_sequence", "HARMONY_SOURCE", "POWER", "FLOOR",
           "time_chroma", "notes_time_chroma", "css_distances", "css_bonus", "fuse_css", "stored_time_chroma",
           "CSS_WEIGHT", "CSS_WEIGHT_MIXED", "TIME_FRAME_S", "transposed_to"]

# Where the harmony sequence (cover_features.beat_chroma, the embedding's harmony blocks)
# of a recording comes from: "notes" (the chroma of its transcribed notes, like a MIDI
# file) or "hpcp" (its measured HPCP on the notes' grid, :func:`audio_chroma`). Measured
# on benchmarks/audio.py (docs/audio.md): with the current cover re-rank, "hpcp" loses
# audio -> audio MAP against "notes", so "notes" is the default.
HARMONY_SOURCE = "notes"
# Sharpening of measured chroma for source "hpcp" (the best of those tried, docs/audio.md).
POWER = 1.0
FLOOR = 0.0


def harmony_sequence(beats_s, beat_hpcp, grid_bpm: float, *, source: str | None = None):
    """The harmony sequence of a recording from its tracked beats and their HPCP, as
    ``(chroma, chroma_half_beat)`` on its notes' grid (and that grid moved by half a
    beat); ``(None, None)`` when its notes' chroma is the harmony sequence (source
    "notes", or no measured chroma). One function for a stored recording
    (``indexers.vectors``) and a recording used as a query (``query.covers``)."""
    source = HARMONY_SOURCE if source is None else source
    if source == "notes":
        return None, None
    if source != "hpcp":
        raise ValueError(f"harmony source {source!r}: 'notes' or 'hpcp'")
    chroma = audio_chroma(beats_s, beat_hpcp, grid_bpm)
    if not chroma.any():
        return None, None
    return chroma, audio_chroma(beats_s, beat_hpcp, grid_bpm, start_beats=0.5)


def hpcp_on_grid(beats_s, beat_hpcp, bpm: float, *, n_beats: int | None = None,
                 start_beats: float = 0.0) -> np.ndarray:
    """Per-tracked-beat chroma resampled onto a constant-tempo beat grid.

    Parameters
    ----------
    beats_s : tracked beat times (s), increasing; beat ``i`` covers up to beat ``i + 1``,
        the last one median-beat-period long.
    beat_hpcp : (n_tracked, 12) chroma per tracked beat.
    bpm : tempo of the grid (grid beat ``k`` starts at ``(k + start_beats) * 60 / bpm`` s).
    n_beats : number of grid beats to return (default: up to the end of the last tracked beat).

    Returns
    -------
    np.ndarray [shape=(n_beats, 12), dtype=float64]: the tracked beats' chroma in each
    grid beat, each weighted by the share of the tracked beat that falls in it (0 where no
    tracked beat overlaps).
    """
    b = np.asarray(beats_s, np.float64)
    h = np.asarray(beat_hpcp, np.float64).reshape(-1, 12)
    period = 60.0 / float(bpm)
    if b.size == 0:
        return np.zeros((n_beats or 0, 12))
    tracked_period = float(np.median(np.diff(b))) if b.size >= 2 else period
    ends = np.concatenate([b[1:], [b[-1] + tracked_period]])
    if n_beats is None:
        n_beats = max(int(np.ceil(ends[-1] / period - start_beats)), 0)
    grid = (np.arange(n_beats + 1) + start_beats) * period
    # cumulative chroma mass over time (piecewise constant per tracked beat, density =
    # chroma / beat length, so a tracked beat contributes its chroma once in total)
    dens = h / np.maximum(ends - b, 1e-9)[:, None]
    knots = np.concatenate([b, [ends[-1]]])
    cum = np.concatenate([np.zeros((1, 12)), np.cumsum(dens * (ends - b)[:, None], axis=0)])

    def mass(t):
        # integral of the density from -inf to t (gaps between beats carry none: ends[i]
        # == b[i + 1] by construction)
        i = np.clip(np.searchsorted(knots, t, side="right") - 1, 0, b.size - 1)
        inside = np.clip(t - b[i], 0.0, ends[i] - b[i])
        out = cum[i] + dens[i] * inside[:, None]
        out[t < b[0]] = 0.0
        return out

    m = mass(grid)
    return np.maximum(np.diff(m, axis=0), 0.0)


def audio_chroma(beats_s, beat_hpcp, bpm: float, *, n_beats: int | None = None, start_beats: float = 0.0,
                 power: float = POWER, floor: float = FLOOR) -> np.ndarray:
    """The beat chroma of a recording on its notes' grid, in ``beat_chroma``'s
    convention (frame maximum 1, silent frames 0), sharpened by ``power`` and ``floor``.

    Returns
    -------
    np.ndarray [shape=(n_beats, 12), dtype=float32]
    """
    x = hpcp_on_grid(beats_s, beat_hpcp, bpm, n_beats=n_beats, start_beats=start_beats)
    peak = x.max(axis=1, keepdims=True) if x.size else np.zeros((x.shape[0], 1))
    np.divide(x, peak, out=x, where=peak > 0)
    if power != 1.0:
        x = x ** power
    x[x < floor] = 0.0
    return x.astype(np.float32)


# -- recordings <-> anything: tempo-tolerant chroma alignment, a score to fuse --------------
# The cover re-rank aligns beat frames, so it depends on the beat tracker counting the
# same beats as another recording or a MIDI file's notation (it does not: a render is
# tracked at 1x, 2x, 4/3x or 3/2x its notated tempo). Essentia's ChromaCrossSimilarity
# (OTI) + CoverSongSimilarity (serra09) on chroma per 0.5 s does not depend on it: a
# recording's stored HPCP resampled to 0.5 s frames, a MIDI piece's note chroma per 0.5 s
# (from its notes' seconds). Its distance, turned into a bonus, is added to the covers
# score of every (query, candidate) pair in which at least one side is a recording
# (MIDI <-> MIDI is left alone); measured in benchmarks/audio.py (docs/audio.md).
TIME_FRAME_S = 0.5
TIME_GRID_BPM = 60.0 / TIME_FRAME_S
CSS_WEIGHT = 0.1  # recording <-> recording
CSS_WEIGHT_MIXED = 0.25  # recording <-> MIDI
_CSS_STACK = 9  # frames per window of the chroma cover-song distance
_CSS_PERCENTILE = 0.095  # a cell is kept within this quantile of its row and its column


def time_chroma(beats_s, beat_hpcp) -> np.ndarray:
    """A recording's HPCP per 0.5 s (from its tracked beats), frame maximum 1."""
    return audio_chroma(beats_s, beat_hpcp, TIME_GRID_BPM, power=1.0, floor=0.0)


def notes_time_chroma(onset_s, duration_s, pitch) -> np.ndarray:
    """Notes' chroma per 0.5 s (``indexers.features.beat_chroma`` on seconds), frame
    maximum 1: a MIDI piece's counterpart of :func:`time_chroma`."""
    from indexers.features import beat_chroma

    return beat_chroma(np.asarray(onset_s, np.float64) / TIME_FRAME_S,
                       np.asarray(duration_s, np.float64) / TIME_FRAME_S, pitch)


def css_distances(query: np.ndarray, refs: list[np.ndarray]) -> np.ndarray:
    """Cover-song distance (lower = more alike; inf where a sequence is too short to
    compare or nothing aligns) from ``query`` to each of ``refs`` (time chromas): what
    essentia's ``ChromaCrossSimilarity`` (OTI, 9 frames stacked, binarize percentile
    0.095) and ``CoverSongSimilarity`` (serra09, penalties 0.5, asymmetric) give (Serra,
    Serra & Andrzejak 2009), computed here in numba: 50 pairs about 9x faster than
    essentia on one thread, 17x on two (the halves of ``refs`` in two threads).

    Each reference is transposed by its optimal transposition index (the shift of its
    summed chroma that best matches the query's); the cross-recurrence matrix marks the
    pairs of 9-frame windows whose Euclidean distance is within the 9.5th percentile of
    both its row and its column (linear interpolation); the distance is sqrt(reference
    windows) over the best Qmax local alignment score. Against essentia on
    benchmarks/audio.py's 396-piece collection (docs/audio.md, "The chroma distance in
    numba"): the same float32 distance for 13,823 of 13,824 (piece, recording) pairs
    and for 28,689 of 28,800 (recording, MIDI piece) pairs. Of the 112 others, 96 have a
    side of n windows with (n - 1) x 0.095 a whole number in float32 (201, 401, ...),
    where essentia's percentile returns 0, so that it finds nothing (inf); here they are
    measured. The other 16 differ by 1.9% (the (piece, recording) pair) and by 2.6% at
    the median, 5.2% at most (15 with a MIDI piece): ties at a row's or column's
    threshold, which essentia breaks otherwise (in the pair looked at, 14 windows of
    silence at one distance, which essentia left out). Memory and time grow with
    n x m, as essentia's: by the arrays' sizes, ~17 bytes per pair of frames, ~220 MB
    for two sequences of 3600 frames (30 minutes).
    tests/test_covers_audio.py compares the two."""
    from indexers.align import two_at_once

    q = np.ascontiguousarray(query, np.float32)
    if q.shape[0] <= _CSS_STACK or not q.any():
        return np.full(len(refs), np.inf)
    half = len(refs) // 2  # the two halves in two threads (the kernels release the GIL)
    if half < 2:
        return _css_each(q, refs)
    return np.concatenate(two_at_once(lambda: _css_each(q, refs[:half]), lambda: _css_each(q, refs[half:])))


def _css_each(q: np.ndarray, refs) -> np.ndarray:
    """:func:`css_distances` of a query of at least ``_CSS_STACK`` + 1 frames, not silent."""
    out = np.full(len(refs), np.inf)
    for i, r in enumerate(refs):
        r = np.ascontiguousarray(r, np.float32)
        if r.shape[0] <= _CSS_STACK or not r.any():
            continue
        c = _cross_recurrence(q, transposed_to(q, r), _CSS_STACK, _CSS_PERCENTILE)
        best = _qmax_best(c, np.float32(0.5), np.float32(0.5))
        if best > 0:
            out[i] = float(np.float32(np.sqrt(r.shape[0] - _CSS_STACK) / best))  # (as essentia rounds it)
    return out


def transposed_to(q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """``r`` (a chroma sequence, not silent) rotated by its optimal transposition index
    against ``q``: the shift whose summed chroma, each divided by its maximum, best
    matches the query's (Serra, Gomez & Herrera 2008)."""
    qg, rg = q.sum(axis=0, dtype=np.float64), r.sum(axis=0, dtype=np.float64)
    qg, rg = qg / qg.max(), rg / rg.max()
    oti = int(np.argmax([qg @ np.roll(rg, k) for k in range(12)]))
    return np.ascontiguousarray(np.roll(r, oti, axis=1), np.float32)


@njit(cache=True, nogil=True)
def _row_threshold(x: np.ndarray, kappa) -> np.float32:
    """The ``kappa`` quantile of ``x`` (linear interpolation between order statistics,
    as numpy's default percentile), float32."""
    k = (x.size - 1) * kappa
    lo = int(np.floor(k))
    s = np.partition(x, lo)
    below = s[lo]
    above = below if lo + 1 >= s.size else s[lo + 1:].min()
    return np.float32(below + (above - below) * np.float32(k - lo))


@njit(cache=True, nogil=True)
def _cross_recurrence(q: np.ndarray, r: np.ndarray, stack: int, kappa) -> np.ndarray:
    """Binary cross-recurrence (uint8 [shape=(n - stack, m - stack)]) of two chroma
    sequences: window i of ``q`` (frames i..i+stack-1) and window j of ``r`` are alike
    when their Euclidean distance is within the ``kappa`` quantile of row i and of
    column j."""
    n, m = q.shape[0], r.shape[0]
    per = np.empty((n, m), np.float32)  # squared distance of single frames
    for i in range(n):
        for j in range(m):
            t = np.float32(0.0)
            for c in range(12):
                x = q[i, c] - r[j, c]
                t += x * x
            per[i, j] = t
    nw, mw = n - stack, m - stack
    d = np.empty((nw, mw), np.float32)
    for i in range(nw):
        for j in range(mw):
            t = np.float32(0.0)
            for k in range(stack):
                t += per[i + k, j + k]
            d[i, j] = np.sqrt(t)
    row = np.empty(nw, np.float32)
    for i in range(nw):
        row[i] = _row_threshold(d[i], kappa)
    dt = np.ascontiguousarray(d.T)
    col = np.empty(mw, np.float32)
    for j in range(mw):
        col[j] = _row_threshold(dt[j], kappa)
    out = np.zeros((nw, mw), np.uint8)
    for i in range(nw):
        for j in range(mw):
            if d[i, j] <= row[i] and d[i, j] <= col[j]:
                out[i, j] = 1
    return out


@njit(cache=True, nogil=True)
def _qmax_best(c: np.ndarray, onset, extension) -> float:
    """The best Qmax local alignment score of a binary cross-recurrence matrix (Serra et
    al. 2009): a recurrence extends the best of the three paths into it by 1; a gap
    costs ``onset`` after a recurrence and ``extension`` after a gap, floored at 0. The
    first two rows and columns stay 0 (the paths reach two back)."""
    n, m = c.shape
    h = np.zeros((n, m), np.float32)
    best = np.float32(0.0)
    for i in range(2, n):
        for j in range(2, m):
            a, b, e = h[i - 1, j - 1], h[i - 2, j - 1], h[i - 1, j - 2]
            if c[i, j]:
                v = max(a, b, e) + np.float32(1.0)
            else:
                v = max(np.float32(0.0),
                        a - (onset if c[i - 1, j - 1] else extension),
                        b - (onset if c[i - 2, j - 1] else extension),
                        e - (onset if c[i - 1, j - 2] else extension))
            h[i, j] = v
            if v > best:
                best = v
    return float(best)


def css_bonus(distances, weight: float = CSS_WEIGHT) -> np.ndarray:
    """Score bonus per candidate from its distance: ``weight * max(0, median / d - 1)``
    (0 for a candidate no closer than the median one; the median over the finite
    distances given, i.e. this query's candidates of one kind)."""
    d = np.asarray(distances, np.float64)
    ok = np.isfinite(d)
    out = np.zeros(d.size)
    if ok.sum() < 2:
        return out
    med = float(np.median(d[ok]))
    out[ok] = weight * np.maximum(0.0, med / d[ok] - 1.0)
    return out


def stored_time_chroma(con, piece_ids) -> dict:
    """piece_id -> (time chroma, is_recording) of ``piece_ids`` through an open DuckDB
    connection: a recording's from ``audio_beats`` (:func:`time_chroma`), a MIDI
    piece's from its notes (:func:`notes_time_chroma`, drums left out)."""
    from atlas_db.connection import fetch_arrow
    from indexers.vectors import _read_audio

    ids = list(piece_ids)
    out = {pid: (time_chroma(b, h), True) for pid, (b, h, _) in _read_audio(con, ids).items()}
    rest = [pid for pid in ids if pid not in out]
    if rest:
        con.register("_tc_ids", pa.table({"piece_id": pa.array(rest, pa.string())}))
        try:
            t = fetch_arrow(con.execute(
                """SELECT n.piece_id, n.onset_s, n.duration_s, n.pitch
                   FROM notes n JOIN _tc_ids USING (piece_id) JOIN pieces p USING (piece_id)
                   WHERE p.kind = 'midi' AND n.channel <> 9 ORDER BY n.piece_id"""))
        finally:
            con.unregister("_tc_ids")
        pid = np.asarray(t.column("piece_id").to_pylist(), dtype=object)
        on, du, pi = (t.column(c).to_numpy() for c in ("onset_s", "duration_s", "pitch"))
        if pid.size:
            starts = np.flatnonzero(np.concatenate([[True], pid[1:] != pid[:-1]]))
            for a, b in zip(starts, np.concatenate([starts[1:], [pid.size]])):
                out[pid[a]] = (notes_time_chroma(on[a:b], du[a:b], pi[a:b]), False)
    return out


def fuse_css(scores, query, candidates, *, weight: float | None = None,
             weight_mixed: float | None = None) -> np.ndarray:
    """Covers scores with the chroma alignment bonus added.

    ``query`` and each of ``candidates`` is ``(time chroma, is_recording)`` (as
    :func:`stored_time_chroma` gives) or None (no time chroma: score kept). A pair in
    which neither side is a recording keeps its score; the others get :func:`css_bonus`
    of their :func:`css_distances`, with ``weight`` (default ``CSS_WEIGHT``) for a
    recording <-> recording pair and ``weight_mixed`` (``CSS_WEIGHT_MIXED``) for a
    recording <-> MIDI pair, each kind of candidate against its own median. This is the
    step proposed for ``query.covers.CoverIndex.search`` (after the versions-of-the-best
    step, before the final order); benchmarks/audio.py applies it to the covers ranking.
    """
    out = np.asarray(scores, np.float64).copy()
    if query is None:
        return out.astype(np.float32)
    qc, q_rec = query
    w_same = CSS_WEIGHT if weight is None else weight
    w_mixed = CSS_WEIGHT_MIXED if weight_mixed is None else weight_mixed
    for cand_rec in (True, False):
        if not q_rec and not cand_rec:
            continue
        idx = [i for i, c in enumerate(candidates) if c is not None and c[1] == cand_rec]
        if len(idx) >= 2:
            d = css_distances(qc, [candidates[i][0] for i in idx])
            out[idx] += css_bonus(d, w_same if q_rec and cand_rec else w_mixed)
    return out.astype(np.float32)
