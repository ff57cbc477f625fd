"""The library view of the database: one row per piece with its headline figures, and
everything known about one piece (tracks, features, frequent patterns, notes to draw).

Used by the TUI's Library screen and callable from Python. Columns whose source table
is written by a derived stage (keys, features, patterns) are read only when that table
exists, so the functions work on any database version; they never invent values.

Example
-------
>>> t = list_pieces("atlas_data", text="yesterday", order_by="duration_s")  # doctest: +SKIP
>>> d = piece_detail("atlas_data", t["piece_id"][0].as_py())               # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from atlas_db.connection import fetch_arrow, reading
from atlas_db.errors import BadInputError

__all__ = [
    "LIBRARY_COLUMNS",
    "PieceDetail",
    "table_columns",
    "list_pieces",
    "piece_detail",
    "save_table",
    "top_rules",
]

# What the library table shows, in order. ``key`` and ``tempo_bpm`` come from derived or
# meta tables (see ``_key_source``); the rest are ``pieces`` columns.
LIBRARY_COLUMNS = (
    "title", "kind", "duration_s", "n_tracks", "n_notes", "key", "tempo_bpm", "path", "piece_id",
)
_SORTABLE = set(LIBRARY_COLUMNS)


def table_columns(con) -> dict[str, set[str]]:
    """Every table and view of the main schema with its column names."""
    out: dict[str, set[str]] = {}
    for t, c in con.execute(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'main'"
    ).fetchall():
        out.setdefault(t, set()).add(c)
    return out


def _key_source(cols: dict[str, set[str]]) -> str:
    """SQL for a relation ``k(piece_id, key, key_source)``.

    The harmony stage's estimate (``piece_keys``) where it has one, else the file's first
    key signature meta event (what the composer or encoder wrote, not an estimate);
    ``key_source`` names the table the key came from."""
    ks = "SELECT piece_id, arg_min(key_name, time_ticks) AS key FROM key_signatures GROUP BY piece_id"
    pk = cols.get("piece_keys", set())
    est = None
    if "piece_id" in pk:
        for name in ("key_name", "key", "key_label"):
            if name in pk:
                est = f"SELECT piece_id, any_value({name}) AS key FROM piece_keys GROUP BY piece_id"
                break
    if est is None:
        return f"SELECT piece_id, key, 'key_signatures' AS key_source FROM ({ks})"
    return f"""SELECT piece_id, coalesce(e.key, s.key) AS key,
                      CASE WHEN e.key IS NOT NULL THEN 'piece_keys'
                           WHEN s.key IS NOT NULL THEN 'key_signatures' END AS key_source
               FROM ({est}) e FULL JOIN ({ks}) s USING (piece_id)"""


def list_pieces(db_dir, *, text: str = "", order_by: str = "title", descending: bool = False,
                limit: int | None = None) -> pa.Table:
    """The library: one row per piece with ``LIBRARY_COLUMNS``.

    text: keep pieces whose title, path, kind or key contains it (case-insensitive);
    ``order_by``: one of ``LIBRARY_COLUMNS``. ``tempo_bpm`` is the file's first tempo
    (the earliest ``tempo_changes`` row, quarter notes per minute); ``duration_s`` seconds;
    ``key`` as in :func:`_key_source`.
    """
    if order_by not in _SORTABLE:
        raise BadInputError(f"{order_by}: cannot sort by this; choose one of {', '.join(LIBRARY_COLUMNS)}")
    with reading(db_dir) as con:
        key_sql = _key_source(table_columns(con))
        where, params = "", []
        if text.strip():
            # the text is matched literally: its % and _ are not wildcards
            where = ("WHERE p.title ILIKE ? ESCAPE '\\' OR p.path ILIKE ? ESCAPE '\\' OR p.kind ILIKE ? ESCAPE '\\' "
                     "OR k.key ILIKE ? ESCAPE '\\' OR p.piece_id LIKE ? ESCAPE '\\'")
            lit = text.strip().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            pat = f"%{lit}%"
            params = [pat, pat, pat, pat, lit.lower() + "%"]
        direction = "DESC" if descending else "ASC"
        lim = f"LIMIT {int(limit)}" if limit else ""
        cur = con.execute(
            f"""WITH k AS ({key_sql}),
                     t AS (SELECT piece_id, arg_min(tempo_bpm, time_ticks) AS tempo_bpm
                           FROM tempo_changes GROUP BY piece_id)
                SELECT p.title, p.kind, p.duration_s, p.n_tracks, p.n_notes, k.key,
                       t.tempo_bpm, p.path, p.piece_id
                FROM pieces p LEFT JOIN k USING (piece_id) LEFT JOIN t USING (piece_id)
                {where}
                ORDER BY {order_by} {direction} NULLS LAST, p.piece_id {lim}""",
            params,
        )
        return fetch_arrow(cur)


@dataclass
class PieceDetail:
    """Everything the library shows about one piece. Tables are Arrow; absent sources
    (no features stage, no grammar yet) give ``None`` rather than an empty guess."""

    piece: dict
    paths: list[str]
    tracks: pa.Table
    notes: pa.Table  # track_index, pitch, onset_beats, duration_beats (for drawing)
    tempo_changes: int = 0
    time_signature: str | None = None
    key_source: str | None = None  # 'piece_keys', 'key_signatures' or None (no key known)
    features: pa.Table | None = None
    patterns: pa.Table | None = None
    notes_truncated: bool = False
    description: str | None = None
    chords: pa.Table | None = None  # chord_index, label, roman, onset_beats (first n_chords)


def _top_patterns(con, cols, piece_id: str, limit: int, min_length: int = 4) -> pa.Table | None:
    """The rules that occur most often in this piece, if the grammar stage has run."""
    occ = cols.get("occurrences", set())
    rules = cols.get("rules", set())
    if not ({"rule_id", "piece_id"} <= occ):
        return None
    select = ["o.rule_id", "count(*) AS occurrences_here"]
    join = ""
    if "rule_id" in rules:
        join = "LEFT JOIN rules r USING (rule_id)"
        for c in ("length", "n_notes", "intervals", "count", "n_pieces"):
            if c in rules:
                select.append(f"any_value(r.{c}) AS {c if c != 'count' else 'count_total'}")
    track = ", count(DISTINCT o.track_index) AS tracks" if "track_index" in occ else ""
    # Two- and three-note rules recur everywhere; a pattern worth showing is longer.
    long_only = " AND r.length >= ?" if join and "length" in rules else ""
    cur = con.execute(
        f"""SELECT {', '.join(select)}{track}
            FROM occurrences o {join}
            WHERE o.piece_id = ?{long_only}
            GROUP BY o.rule_id ORDER BY occurrences_here DESC, o.rule_id LIMIT {int(limit)}""",
        [piece_id] + ([min_length] if long_only else []),
    )
    return fetch_arrow(cur)


def _features(con, cols, piece_id: str) -> pa.Table | None:
    """The piece's scalar descriptors (``features``: audio analysis), whole mix first."""
    f = cols.get("features", set())
    if not ({"piece_id", "name", "value"} <= f):
        return None
    select = ", ".join(c for c in ("source", "name", "value", "unit") if c in f)
    order = "source <> 'mix', source, name" if "source" in f else "name"
    cur = con.execute(f"SELECT {select} FROM features WHERE piece_id = ? ORDER BY {order}", [piece_id])
    return fetch_arrow(cur)


def _chords(con, cols, piece_id: str, limit: int) -> pa.Table | None:
    """The first chords of the piece (harmony stage), with their Roman numerals."""
    c = cols.get("chords", set())
    if not ({"piece_id", "chord_index", "label"} <= c):
        return None
    extra = "".join(f", {x}" for x in ("roman", "onset_beats") if x in c)
    return fetch_arrow(con.execute(
        f"SELECT chord_index, label{extra} FROM chords WHERE piece_id = ? ORDER BY chord_index LIMIT {int(limit)}",
        [piece_id]))


def _description(con, cols, piece_id: str) -> str | None:
    d = cols.get("descriptions", set())
    if not ({"piece_id", "description"} <= d):
        return None
    order = " ORDER BY created_at DESC" if "created_at" in d else ""
    row = con.execute(f"SELECT description FROM descriptions WHERE piece_id = ?{order} LIMIT 1", [piece_id]).fetchone()
    return row[0] if row else None


def piece_detail(db_dir, piece_id: str, *, max_notes: int = 20_000, n_patterns: int = 8,
                 n_chords: int = 32) -> PieceDetail:
    """Tracks, paths, key/tempo facts, features, first ``n_chords`` chords and most
    frequent patterns of one piece, plus up to ``max_notes`` of its notes (the earliest)
    for a piano-roll drawing."""
    with reading(db_dir) as con:
        cols = table_columns(con)
        cur = con.execute("SELECT * FROM pieces WHERE piece_id = ?", [piece_id])
        names = [d[0] for d in cur.description]
        row = cur.fetchone()
        if row is None:
            raise BadInputError(f"{piece_id}: no such piece")
        piece = dict(zip(names, row))
        k = con.execute(f"SELECT key, key_source FROM ({_key_source(cols)}) WHERE piece_id = ?",
                        [piece_id]).fetchone()
        piece["key"], key_source = (k[0], k[1]) if k else (None, None)
        t = con.execute(
            "SELECT arg_min(tempo_bpm, time_ticks), count(*) FROM tempo_changes WHERE piece_id = ?", [piece_id]
        ).fetchone()
        piece["tempo_bpm"] = t[0]
        ts = con.execute(
            "SELECT numerator, denominator FROM time_signatures WHERE piece_id = ? ORDER BY time_ticks LIMIT 1",
            [piece_id],
        ).fetchone()
        paths = [r[0] for r in con.execute(
            "SELECT path FROM piece_paths WHERE piece_id = ? ORDER BY path", [piece_id]).fetchall()]
        tracks = fetch_arrow(con.execute(
            """SELECT track_index, name, program, channel, is_drum, n_notes, pitch_min, pitch_max
               FROM tracks WHERE piece_id = ? ORDER BY track_index""", [piece_id]))
        notes = fetch_arrow(con.execute(
            f"""SELECT track_index, pitch, onset_beats, duration_beats FROM notes
                WHERE piece_id = ? ORDER BY onset_ticks, track_index LIMIT {int(max_notes) + 1}""",
            [piece_id]))
        truncated = notes.num_rows > max_notes
        if truncated:
            notes = notes.slice(0, max_notes)
        return PieceDetail(
            piece=piece,
            paths=paths,
            tracks=tracks,
            notes=notes,
            tempo_changes=int(t[1] or 0),
            time_signature=f"{ts[0]}/{ts[1]}" if ts else None,
            key_source=key_source,
            features=_features(con, cols, piece_id),
            patterns=_top_patterns(con, cols, piece_id, n_patterns),
            notes_truncated=truncated,
            description=_description(con, cols, piece_id),
            chords=_chords(con, cols, piece_id, n_chords),
        )


def save_table(table: pa.Table, path, fmt: str | None = None) -> Path:
    """Write an Arrow table as CSV or Parquet (``fmt`` from the suffix if not given).

    Lists and structs are kept in Parquet and written as text in CSV. In Parquet,
    intervals (which it cannot hold) are written as text, and a repeated column name
    gets a suffix (a file with two columns ``a`` cannot be read back)."""
    path = Path(path).expanduser()
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt not in ("csv", "parquet"):
        raise BadInputError(f"{path}: give a .csv or .parquet file name")
    if not path.parent.exists():
        raise BadInputError(f"{path}: folder {path.parent} does not exist")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        from query.formatting import interval_text, unique_names

        cols = [pa.array([None if v is None else interval_text(v) for v in c.to_pylist()], pa.string())
                if pa.types.is_interval(c.type) else c for c in table.columns]
        pq.write_table(pa.table(cols, names=unique_names(table.column_names)), path)
    else:
        from query.formatting import format_table

        text = format_table(table, "csv")
        path.write_text(text + ("\n" if text else ""))
    return path


def top_rules(db_dir, *, limit: int = 300, min_length: int = 4) -> pa.Table | None:
    """Grammar rules worth searching: at least ``min_length`` notes, most pieces first
    (``rule_id, length, n_pieces, count, intervals``); None when the database has no
    grammar tables yet."""
    with reading(db_dir) as con:
        cols = table_columns(con).get("rules", set())
        need = {"rule_id", "length", "n_pieces", "count", "intervals"}
        if not need <= cols:
            return None
        return fetch_arrow(con.execute(
            f"""SELECT rule_id, length, n_pieces, count, intervals FROM rules
                WHERE length >= ? ORDER BY n_pieces DESC, count DESC, rule_id LIMIT {int(limit)}""",
            [min_length]))
