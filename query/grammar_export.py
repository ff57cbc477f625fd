"""Export of the grammar tables (rules, occurrences, transforms, ...) to Parquet or JSON."""

from __future__ import annotations

from pathlib import Path

from atlas_db.connection import reading
from atlas_db.errors import BadInputError

__all__ = ["EXPORTABLE", "export_grammar"]

# table -> ORDER BY that makes the files reproducible
EXPORTABLE = {
    "rules": "rule_id",
    "occurrences": "piece_id, track_index, seq_index, rule_id",
    "transforms": "transform_id",
    "grammar_sequences": "piece_id, track_index",
    "grammar_choices": "choice",
    "meta_patterns": "meta_id",
}


def export_grammar(db_dir, out_dir, *, tables=("rules", "occurrences", "transforms"), fmt="parquet") -> list[tuple[str, int, Path]]:
    """Write each table to ``out_dir/<table>.parquet`` (or ``.json``: one JSON array of
    objects). Returns (table, rows, path) per file."""
    if fmt not in ("parquet", "json"):
        raise BadInputError(f"--format {fmt}: expected parquet or json")
    unknown = [t for t in tables if t not in EXPORTABLE]
    if unknown:
        raise BadInputError(f"cannot export {', '.join(unknown)}: choose from {', '.join(EXPORTABLE)}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BadInputError(f"{out}: exists and is not a folder")
    if not out.parent.exists():
        raise BadInputError(f"{out}: parent folder {out.parent} does not exist")
    out.mkdir(exist_ok=True)
    written = []
    with reading(db_dir) as con:
        for t in tables:
            path = out / f"{t}.{fmt}"
            opts = "FORMAT parquet, COMPRESSION zstd" if fmt == "parquet" else "FORMAT json, ARRAY true"
            sql_path = str(path).replace("'", "''")
            con.execute(f"COPY (SELECT * FROM {t} ORDER BY {EXPORTABLE[t]}) TO '{sql_path}' ({opts})")
            n = con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0]
            written.append((t, n, path))
    return written
