"""Arrow tables to text: an aligned table for people, CSV and JSON for programs."""

from __future__ import annotations

import datetime as dt
import io
import json
import math

import pyarrow as pa
import pyarrow.csv as pacsv
from rich.cells import cell_len

from ingest.sources import one_line

__all__ = ["FORMATS", "format_table", "interval_text", "cell_text"]

FORMATS = ("table", "csv", "json")


def cell_text(v) -> str:
    """A value as the tables show it (floats to 6 significant digits, NULL empty)."""
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.6g}" if abs(v) < 1e6 else f"{v:.0f}"
    if isinstance(v, pa.MonthDayNano):
        return interval_text(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(cell_text(x) for x in v) + "]"
    return str(v)


def interval_text(v: pa.MonthDayNano) -> str:
    """An INTERVAL as DuckDB prints it: '3 days', '14 months 1:30:00'."""
    hms = "" if not v.nanoseconds else str(dt.timedelta(microseconds=v.nanoseconds // 1000))
    parts = [f"{n} {unit}{'s' if n != 1 else ''}" for n, unit in ((v.months, "month"), (v.days, "day")) if n]
    return " ".join(parts + [hms]).strip() or "00:00:00"


def _jsonable(v):
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if isinstance(v, pa.MonthDayNano):
        return interval_text(v)
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    return str(v)


def _csv_scalar(t: pa.DataType) -> bool:
    """Whether Arrow's CSV writer takes this type as it is."""
    return (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_string(t)
            or pa.types.is_large_string(t) or pa.types.is_decimal(t) or pa.types.is_null(t)
            or (pa.types.is_temporal(t) and not pa.types.is_interval(t)))


def unique_names(names: list[str]) -> list[str]:
    """Column names made unique for JSON keys: a repeated ``a`` becomes ``a_1``, ``a_2``
    (as pandas and DuckDB's data frames name them), so no column is lost."""
    taken, shown, out = set(names), set(), []
    for n in names:
        if n in shown:
            k = 1
            while f"{n}_{k}" in taken:
                k += 1
            n = f"{n}_{k}"
            taken.add(n)
        shown.add(n)
        out.append(n)
    return out


def format_table(table: pa.Table, fmt: str = "table", *, max_width: int = 60) -> str:
    """Render ``table`` as ``table`` (aligned columns), ``csv`` or ``json`` (a list of
    objects, one per row)."""
    if fmt == "json":
        keys = unique_names(table.column_names)
        rows = zip(*(c.to_pylist() for c in table.columns)) if keys else ()
        return json.dumps([{k: _jsonable(v) for k, v in zip(keys, r)} for r in rows], indent=1)
    if fmt == "csv":
        if table.num_columns == 0:
            return ""
        # CSV holds scalars: every other type (lists, structs, maps, intervals, unions,
        # bytes) is written as its text form
        cols = []
        for name, col in zip(table.column_names, table.columns):
            if not _csv_scalar(col.type):
                col = pa.array([cell_text(v) for v in col.to_pylist()], pa.string())
            cols.append(col)
        buf = io.BytesIO()
        pacsv.write_csv(pa.table(cols, names=table.column_names), buf)
        return buf.getvalue().decode().rstrip("\n")
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if table.num_columns == 0:
        return "(no result)"
    names = table.column_names
    # a cell on one line: a newline in it (a file name can hold one) is shown escaped
    # by position: two columns of one name (a join's SELECT *) are two columns
    rows = [[one_line(cell_text(v)) for v in r] for r in zip(*(c.to_pylist() for c in table.columns))]
    # a long path (or query, often a path) keeps its end, the file's name; other text its start
    tail = [n in ("path", "query") or n.endswith("_path") for n in names]
    rows = [[c if len(c) <= max_width else ("…" + c[1 - max_width:] if t else c[: max_width - 1] + "…")
             for c, t in zip(r, tail)] for r in rows]
    # widths in terminal cells: a CJK character or an emoji takes two (len() counted one,
    # and the columns after such a title went out of line)
    widths = [max([cell_len(n)] + [cell_len(r[i]) for r in rows]) for i, n in enumerate(names)]
    numeric = [pa.types.is_integer(t) or pa.types.is_floating(t) for t in table.schema.types]

    def pad(c: str, w: int, right: bool) -> str:
        fill = " " * max(w - cell_len(c), 0)
        return fill + c if right else c + fill

    def line(cells):
        return "  ".join(pad(c, w, num) for c, w, num in zip(cells, widths, numeric)).rstrip()

    out = [line(names), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    out.append(f"({table.num_rows} row{'s' if table.num_rows != 1 else ''})")
    return "\n".join(out)
