"""``atlas stats``: what the database holds."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from atlas_db.connection import db_file, reading

__all__ = ["table_counts", "corpus_summary", "disk_bytes"]


def disk_bytes(db_dir) -> int:
    """Bytes on disk of everything in the database folder (DuckDB file, Lance tables)."""
    total = 0
    for root, _, files in os.walk(db_dir):
        if "demo_corpus" in Path(root).parts:
            continue
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


# views that took the place of a table of the same name (``transforms``: a view over
# ``transform_rows`` since schema 0105): listed with the tables, as users know them
TABLE_VIEWS = ("transforms",)


def table_counts(db_dir) -> pa.Table:
    """Rows per table (and per view of ``TABLE_VIEWS``), in name order."""
    with reading(db_dir) as con:
        names = con.execute(
            "SELECT table_name, table_type FROM information_schema.tables "
            "WHERE table_schema = 'main' ORDER BY table_name"
        ).fetchall()
        rows = []
        for name, ttype in names:
            if ttype != "BASE TABLE" and name not in TABLE_VIEWS:
                continue
            n = con.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
            rows.append((name, n))
    return pa.table({"table": [r[0] for r in rows], "rows": pa.array([r[1] for r in rows], pa.int64())})


def corpus_summary(db_dir) -> dict:
    """Headline figures: pieces by kind, notes, hours of music, tracks, errors, most used
    GM programs."""
    with reading(db_dir) as con:
        n_pieces, n_notes, hours, n_midi, n_audio = con.execute(
            "SELECT count(*), coalesce(sum(n_notes), 0), coalesce(sum(duration_s), 0) / 3600, "
            "count(*) FILTER (kind = 'midi'), count(*) FILTER (kind = 'audio') FROM pieces"
        ).fetchone()
        n_tracks = con.execute("SELECT count(*) FROM tracks WHERE n_notes > 0").fetchone()[0]
        n_err = con.execute("SELECT count(*) FROM ingest_errors").fetchone()[0]
        programs = con.execute(
            "SELECT program, count(*) AS n FROM tracks WHERE n_notes > 0 AND NOT is_drum "
            "AND piece_id IN (SELECT piece_id FROM pieces WHERE kind = 'midi') "  # a recording's tracks have none
            "GROUP BY program ORDER BY n DESC, program LIMIT 5"
        ).fetchall()
    return {
        "database": str(db_file(Path(db_dir))),
        "disk_bytes": disk_bytes(db_dir),
        "pieces": n_pieces,
        "midi_pieces": n_midi,
        "audio_pieces": n_audio,
        "tracks_with_notes": n_tracks,
        "notes": int(n_notes),
        "hours": float(hours),
        "ingest_errors": n_err,
        "top_gm_programs": [{"program": p, "tracks": n} for p, n in programs],
    }
