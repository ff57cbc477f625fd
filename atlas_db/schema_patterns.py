"""Tables of the pattern index (``atlas pattern``): melodic streams and their interval n-grams.

A *stream* is one melodic sequence cut out of a piece's notes (see
``query.pattern_search`` for the exact definitions): ``track`` (every note of one track),
``track_top`` (the highest note at each onset of one track), ``track_bottom`` (the
lowest) and ``skyline`` (the highest note at each onset over all non-drum tracks). ``pattern_streams`` keeps each stream's
notes as parallel lists (position = list index, 0-based), ``pattern_ngrams`` maps every
run of ``NGRAM`` consecutive pitch intervals to the streams and positions it starts at.

``stream_id`` packs the piece and the stream into one BIGINT: the first 12 hex digits of
the piece id, then 2 bits of stream kind, then 10 bits of track index, so all of a piece's
rows are one id range (``stream_id >> 12`` identifies the piece).
"""

from __future__ import annotations

import pyarrow as pa

from atlas_db.schema import table_ddl

__all__ = ["TABLES", "KEYS", "MIGRATIONS", "NGRAM"]

# Intervals per n-gram: 3 intervals = 4 notes. Queries of fewer notes scan the streams.
NGRAM = 3

TABLES: dict[str, pa.Schema] = {
    "pattern_streams": pa.schema(
        [
            ("stream_id", pa.int64()),
            ("piece_id", pa.string()),
            ("stream", pa.string()),  # 'track' | 'track_top' | 'skyline' | 'track_bottom'
            ("stream_track", pa.int32()),  # track index; -1 for the skyline
            ("n_notes", pa.int32()),
            ("pitch", pa.list_(pa.int16())),  # MIDI numbers, stream order
            ("track_index", pa.list_(pa.int32())),  # each note's own track
            ("note_index", pa.list_(pa.int32())),  # each note's note_index in that track
            ("onset_ticks", pa.list_(pa.int64())),
            ("onset_beats", pa.list_(pa.float64())),
            ("onset_s", pa.list_(pa.float64())),
            ("stage_version", pa.string()),
        ]
    ),
    "pattern_ngrams": pa.schema(
        [
            ("gram", pa.int32()),  # 3 intervals, each clipped to -127..127, as 8-bit digits
            ("stream_id", pa.int64()),
            ("position", pa.int32()),  # stream position of the n-gram's first note
        ]
    ),
}

KEYS: dict[str, tuple[str, ...]] = {"pattern_streams": ("stream_id",)}

MIGRATIONS: list[tuple[str, list[str]]] = [
    (
        "0301_patterns_index",
        [table_ddl(name, schema, KEYS.get(name, ())) for name, schema in TABLES.items()],
    ),
]
