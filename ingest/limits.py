"""Limits on what one piece may be, so no derived stage is asked for absurd memory.

The derived stages size their arrays by a piece's length (beat frames, 0.5 s chroma
frames, harmony segments) and note count. A 51-byte file with 1 tick per beat and delta
times of 2**27 ticks parses to two notes 134 million beats apart; without a bound the
vectors stage would allocate a 24 GiB chroma for it. These limits sit far above real
music (POP909 songs: ~1,000 beats; a 3-hour opera act at 120 bpm: ~21,600 beats) and far
below what a 24 GiB machine cannot hold.
"""

from __future__ import annotations

__all__ = ["MAX_DURATION_BEATS", "MAX_DURATION_S", "MAX_NOTES", "size_problem"]

MAX_DURATION_BEATS = 250_000.0  # ~35 h at 120 bpm; a 12-d float chroma per beat is 24 MB
MAX_DURATION_S = 48 * 3600.0
MAX_NOTES = 5_000_000  # the largest real files seen here hold ~100,000


def size_problem(n_notes: int, duration_beats: float | None, duration_s: float | None) -> str | None:
    """Why a piece of this size is not analysed (a one-line reason), or None if it is fine."""
    if n_notes > MAX_NOTES:
        return f"too many notes to analyse: {n_notes:,} (limit {MAX_NOTES:,})"
    if duration_beats is not None and not duration_beats <= MAX_DURATION_BEATS:
        return f"implausibly long: {duration_beats:,.0f} beats (limit {MAX_DURATION_BEATS:,.0f})"
    if duration_s is not None and not duration_s <= MAX_DURATION_S:
        return f"implausibly long: {duration_s / 3600:,.1f} hours (limit {MAX_DURATION_S / 3600:,.0f})"
    return None
