"""Cover/similarity tables: per-piece sequences for alignment and the global vector.

Written by the derived stage ``indexers.vectors`` (STAGE = "vectors"), which also
keeps the track vectors; both are copied into LanceDB tables under ``<db>/lance/`` when
Lance is next opened (see docs/covers.md). DuckDB is the source of truth: the Lance
tables and the FAISS file are rebuilt from here by ``atlas reindex --vectors``.
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
            # lowest sounding pitch class (0-11) at each onset, a repeated one once
            # (indexers.features.bass_line). Last, where ALTER TABLE puts it in a
            # database of before, so both have the same columns in the same order.
            ("bass_pc", pa.list_(pa.int8())),
            # the runner-up melody line (indexers.features.second_line_mask: the next
            # most monophonic track after the lead), its skyline's pitches and onsets;
            # empty when the piece has none
            ("second_pitch", pa.list_(pa.int16())),
            ("second_onset_beats", pa.list_(pa.float32())),
            # the skyline of all notes when the lead line is one track's and differs
            # from it (indexers.features.third_line); empty otherwise
            ("third_pitch", pa.list_(pa.int16())),
            ("third_onset_beats", pa.list_(pa.float32())),
        ]
    ),
    # One row per track with at least MIN_TRACK_NOTES notes: its embedding. LanceDB's
    # track_vectors table is filled from here (indexers.vectors.sync_lance).
    "track_vectors": pa.schema(
        [
            ("piece_id", _ID),
            ("track_index", pa.int32()),
            ("vector", pa.list_(pa.float32())),
            ("stage_version", pa.string()),
        ]
    ),
}

KEYS = {"cover_features": ("piece_id",), "track_vectors": ("piece_id", "track_index")}

MIGRATIONS: list[tuple[str, list[str]]] = [
    ("0400_vectors_cover_features", [table_ddl("cover_features", TABLES["cover_features"], KEYS["cover_features"])]),
    # the track vectors move from Lance-only into DuckDB (written by the stage; Lance is
    # filled from here). A database of before has them in Lance already: nothing to copy.
    ("0401_vectors_track_vectors", [table_ddl("track_vectors", TABLES["track_vectors"], KEYS["track_vectors"])]),
    # the bass line: NULL in the rows of before, which the stage's VERSION bump
    # (vectors-6) has `atlas reindex` recompute
    ("0402_vectors_bass_pc", ["ALTER TABLE cover_features ADD COLUMN IF NOT EXISTS bass_pc TINYINT[]"]),
    # the second melody line: NULL in the rows of before, recomputed by `atlas reindex`
    # after the VERSION bump (vectors-7)
    ("0403_vectors_second_line", ["ALTER TABLE cover_features ADD COLUMN IF NOT EXISTS second_pitch SMALLINT[]",
                                  "ALTER TABLE cover_features ADD COLUMN IF NOT EXISTS second_onset_beats FLOAT[]"]),
    # the third melody line (the skyline of all notes): NULL in the rows of before,
    # recomputed by `atlas reindex` after the VERSION bump (vectors-9)
    ("0404_vectors_third_line", ["ALTER TABLE cover_features ADD COLUMN IF NOT EXISTS third_pitch SMALLINT[]",
                                 "ALTER TABLE cover_features ADD COLUMN IF NOT EXISTS third_onset_beats FLOAT[]"]),
]
