"""Table schemas, declared once: Arrow schemas for the data moving between stages, and
the DuckDB DDL derived from them.

Units are in the column names: ``_ticks`` (MIDI ticks), ``_beats`` (quarter notes, i.e.
ticks / ticks_per_beat), ``_s`` (seconds through the file's tempo map).
"""

from __future__ import annotations

import pyarrow as pa

__all__ = ["TABLES", "KEYS", "UNIQUE", "SCHEMA_VERSION", "ddl_for", "table_ddl", "empty_table", "MIGRATIONS"]

SCHEMA_VERSION = 1

_ID = pa.string()

TABLES: dict[str, pa.Schema] = {
    # One row per ingested file (content). piece_id = first 16 hex digits of SHA-256.
    "pieces": pa.schema(
        [
            ("piece_id", _ID),
            ("path", pa.string()),  # first path this content was ingested from
            ("content_sha256", pa.string()),
            ("kind", pa.string()),  # 'midi' (audio later)
            ("title", pa.string()),
            ("size_bytes", pa.int64()),
            ("midi_format", pa.int16()),  # SMF type 0, 1 or 2
            ("ticks_per_beat", pa.int32()),
            ("n_tracks", pa.int32()),
            ("n_notes", pa.int64()),
            ("duration_ticks", pa.int64()),  # last note-off
            ("duration_beats", pa.float64()),
            ("duration_s", pa.float64()),
            ("ingested_at", pa.timestamp("us", tz="UTC")),
            ("code_version", pa.string()),
        ]
    ),
    # Every path a piece's bytes were found at (the same bytes may live in many places).
    "piece_paths": pa.schema([("piece_id", _ID), ("path", pa.string())]),
    # One row per MTrk chunk; track_index is the chunk's position in the file (0-based).
    "tracks": pa.schema(
        [
            ("piece_id", _ID),
            ("track_index", pa.int32()),
            ("name", pa.string()),
            ("program", pa.int16()),  # first GM program change (0-127); 0 if none
            ("channel", pa.int16()),  # channel most of its notes use (0-15); NULL if none
            ("is_drum", pa.bool_()),  # main channel is 9 (GM percussion, "channel 10")
            ("n_notes", pa.int64()),
            ("pitch_min", pa.int16()),
            ("pitch_max", pa.int16()),
        ]
    ),
    # Every note as in the file. note_index = order of the note-on within its track.
    "notes": pa.schema(
        [
            ("piece_id", _ID),
            ("track_index", pa.int32()),
            ("note_index", pa.int32()),
            ("onset_ticks", pa.int64()),
            ("duration_ticks", pa.int64()),
            ("onset_beats", pa.float64()),
            ("duration_beats", pa.float64()),
            ("onset_s", pa.float64()),
            ("duration_s", pa.float64()),
            ("pitch", pa.int16()),  # MIDI note number 0-127
            ("velocity", pa.int16()),  # 1-127
            ("channel", pa.int16()),  # 0-15
        ]
    ),
    "program_changes": pa.schema(
        [
            ("piece_id", _ID),
            ("track_index", pa.int32()),
            ("channel", pa.int16()),
            ("time_ticks", pa.int64()),
            ("time_s", pa.float64()),
            ("program", pa.int16()),
        ]
    ),
    "tempo_changes": pa.schema(
        [
            ("piece_id", _ID),
            ("time_ticks", pa.int64()),
            ("time_s", pa.float64()),
            ("tempo_bpm", pa.float64()),  # quarter notes per minute
            ("us_per_beat", pa.int64()),  # the file's own value, microseconds per quarter
        ]
    ),
    "time_signatures": pa.schema(
        [
            ("piece_id", _ID),
            ("time_ticks", pa.int64()),
            ("time_s", pa.float64()),
            ("numerator", pa.int16()),
            ("denominator", pa.int16()),
        ]
    ),
    "key_signatures": pa.schema(
        [
            ("piece_id", _ID),
            ("time_ticks", pa.int64()),
            ("time_s", pa.float64()),
            ("key_name", pa.string()),  # e.g. 'Eb major', 'F# minor'
            ("sharps_flats", pa.int16()),  # -7 (7 flats) .. +7 (7 sharps)
            ("mode", pa.string()),  # 'major' | 'minor'
        ]
    ),
    # Files that could not be ingested. content_sha256 is NULL when the file was unreadable.
    "ingest_errors": pa.schema(
        [
            ("path", pa.string()),
            ("content_sha256", pa.string()),
            ("reason", pa.string()),
            ("failed_at", pa.timestamp("us", tz="UTC")),
            ("code_version", pa.string()),
        ]
    ),
    # Which derived stage (harmony, grammar, vectors, ...) has processed which piece, and
    # with which version of its code/config: the record that makes stages resumable.
    "derived_runs": pa.schema(
        [
            ("stage", pa.string()),
            ("piece_id", _ID),
            ("stage_version", pa.string()),
            ("done_at", pa.timestamp("us", tz="UTC")),
        ]
    ),
    # Pieces a derived stage could not process (too large, or its code failed on them):
    # recorded and skipped so that one piece never blocks the others or a later ingest.
    # Retried when the stage's version changes (atlas reindex) or the row is deleted.
    "derived_failures": pa.schema(
        [
            ("stage", pa.string()),
            ("piece_id", _ID),
            ("stage_version", pa.string()),
            ("reason", pa.string()),
            ("failed_at", pa.timestamp("us", tz="UTC")),
        ]
    ),
}

# Primary keys: what makes a row unique (and what upserts key on).
KEYS: dict[str, tuple[str, ...]] = {
    "pieces": ("piece_id",),
    "piece_paths": ("piece_id", "path"),
    "tracks": ("piece_id", "track_index"),
    "ingest_errors": ("path",),
    "derived_runs": ("stage", "piece_id"),
    "derived_failures": ("stage", "piece_id"),
    # notes, program_changes, tempo/time/key signatures: written once per piece inside
    # the piece's transaction; no index (it would slow bulk inserts several-fold).
}

_DUCK_TYPES = {
    pa.string(): "VARCHAR",
    pa.int8(): "TINYINT",
    pa.float32(): "FLOAT",
    pa.int16(): "SMALLINT",
    pa.int32(): "INTEGER",
    pa.int64(): "BIGINT",
    pa.float64(): "DOUBLE",
    pa.bool_(): "BOOLEAN",
    pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ",
}


UNIQUE: dict[str, tuple[str, ...]] = {"pieces": ("content_sha256",)}


def _duck_type(t: pa.DataType) -> str:
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _duck_type(t.value_type) + "[]"
    return _DUCK_TYPES[t]


def table_ddl(name: str, schema: pa.Schema, keys=(), unique=()) -> str:
    """CREATE TABLE statement derived from an Arrow schema (the one place types map)."""
    cols = [f"{f.name} {_duck_type(f.type)}" for f in schema]
    if keys:
        cols.append(f"PRIMARY KEY ({', '.join(keys)})")
    if unique:
        cols.append(f"UNIQUE ({', '.join(unique)})")
    return f"CREATE TABLE IF NOT EXISTS {name} (\n  " + ",\n  ".join(cols) + "\n)"


def ddl_for(name: str) -> str:
    """CREATE TABLE statement for spine table ``name``."""
    return table_ddl(name, TABLES[name], KEYS.get(name, ()), UNIQUE.get(name, ()))


def empty_table(name: str) -> pa.Table:
    return TABLES[name].empty_table()


# Named migrations of this module's tables, applied in order (see atlas_db.connection).
MIGRATIONS: list[tuple[str, list[str]]] = [
    ("0001_spine_tables", [ddl_for(name) for name in TABLES if name != "derived_failures"]),
    ("0002_derived_failures", [ddl_for("derived_failures")]),
]
