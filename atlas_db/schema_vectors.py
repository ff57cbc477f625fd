"""Cover/similarity tables: per-piece sequences for alignment and the global vector.

Written by the derived stage ``indexers.vectors`` (STAGE = "vectors"), which also
upserts the same vectors into LanceDB tables under ``<db>/lance/`` (see docs/covers.md).
DuckDB is the source of truth: the Lance tables and the FAISS file are rebuilt from
here by ``atlas reindex --vectors``.
"""

from __future__ import annotations

import pyarrow as pa

from atlas_db.schema import table_ddl

__all__ = ["TABLES", "KEYS", "MIGRATIONS"]

_ID = pa.string()

TABLES: dict[str, pa.Schema] = {
    # One row per piece with notes (drum tracks left out).
    "cover_features": pa.schema(
        [
            ("piece_id", _ID),
            ("n_beats", pa.int32()),  # frames of beat_chroma (one per quarter note)
            # beat-synchronous chroma, n_beats x 12 flattened row by row; each frame
            # scaled so its strongest pitch class is 127, silent frames all 0
            ("beat_chroma", pa.list_(pa.int8())),
            ("n_melody", pa.int32()),  # notes in the skyline melody
            ("melody_pitch", pa.list_(pa.int16())),  # skyline: MIDI pitch of each note
            ("melody_onset_beats", pa.list_(pa.float32())),  # and its onset in beats
            ("vector", pa.list_(pa.float32())),  # global embedding (see docs/covers.md)
            ("stage_version", pa.string()),
        ]
    ),
}

KEYS = {"cover_features": ("piece_id",)}

MIGRATIONS: list[tuple[str, list[str]]] = [
    ("0400_vectors_cover_features", [table_ddl(n, s, KEYS.get(n, ())) for n, s in TABLES.items()]),
]
