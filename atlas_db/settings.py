"""The numeric ``ATLAS_*`` environment variables: each declared once here, with its
default and the values it may take.

Modules read their settings when they are imported, before the command line can turn
an error into one line, so :func:`setting` does not raise on a bad value
(``ATLAS_LOCK_WAIT_S=abc``, a negative time): it gives the default, and :func:`check`
(run before every database is opened, ``atlas_db.connection``, before a saved cover
index is read in its place, ``query.covers.load_index``, and before an ingest reads a
file, ``ingest.pipeline.check_db_dir``) raises one :class:`BadInputError` line
naming the variable. A setting read at call time passes
``strict=True`` and raises at once. (The audio settings, which may also come from a
config file, are checked by ``ingest.audio_config``.)
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

from atlas_db.errors import BadInputError

__all__ = ["SETTINGS", "setting", "check"]


class Setting(NamedTuple):
    default: float
    minimum: float
    unit: str
    integer: bool = False
    forever: bool = False  # "inf" allowed: wait as long as it takes


SETTINGS = {
    "ATLAS_LOCK_WAIT_S": Setting(60.0, 0, "seconds", forever=True),
    "ATLAS_WRITER_REOPEN_WAIT_S": Setting(3600.0, 0, "seconds", forever=True),
    "ATLAS_WRITER_HOLD_S": Setting(1.0, 0, "seconds"),
    "ATLAS_WRITER_BULK_HOLD_S": Setting(10.0, 0, "seconds"),
    "ATLAS_FILE_TIMEOUT_S": Setting(900.0, 1, "seconds"),
    "ATLAS_BATCH_FILES": Setting(1000, 1, "files", integer=True),
    "ATLAS_GRAMMAR_MAX_RULES": Setting(500000, 1, "rules", integer=True),
    "ATLAS_GRAMMAR_MIN_COUNT": Setting(2, 2, "occurrences", integer=True),
    "ATLAS_ALIGN_THREADS": Setting(2, 1, "threads", integer=True),
}


def _read(name: str):
    """(value, None) or (default, the problem's line)."""
    s = SETTINGS[name]
    raw = os.environ.get(name, "")
    if not raw.strip():
        return s.default, None
    try:
        value = int(raw) if s.integer else float(raw)
    except ValueError:
        value = None
    if value is None or math.isnan(value) or (math.isinf(value) and not s.forever) or value < s.minimum:
        kind = "a whole number" if s.integer else "a number"
        forever = " or inf" if s.forever else ""
        return s.default, (f"${name} = {raw!r}: give {kind} of {s.unit} >= {s.minimum:g}{forever} "
                           f"(unset: {s.default:g})")
    return value, None


def setting(name: str, *, strict: bool = False):
    """``$name``'s value, or its default when unset or empty; a value it may not take
    gives the default too (``strict``: raises :class:`BadInputError`)."""
    value, problem = _read(name)
    if problem and strict:
        raise BadInputError(problem)
    return value


def check() -> None:
    """Raise a :class:`BadInputError` (one line) for the first variable set to a value it
    may not take."""
    for name in SETTINGS:
        setting(name, strict=True)
