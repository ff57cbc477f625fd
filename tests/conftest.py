"""Shared fixtures: known-answer MIDI files, the real POP909 dev set, small real databases."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/midi_fixtures.py

os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "harmony-atlas" / "numba"))

POP909 = Path(os.environ.get("ATLAS_POP909", ROOT.parent / "shared" / "data" / "pop909-dev"))


def pop909_songs(n: int | None = None) -> list[Path]:
    """Song folders 001, 002, ... (each: NNN.mid, versions/, label files)."""
    if not POP909.is_dir():
        pytest.skip(f"POP909 dev data not found at {POP909} (set ATLAS_POP909)")
    songs = sorted(p for p in POP909.iterdir() if p.is_dir())
    return songs[:n] if n else songs


@pytest.fixture(scope="session")
def pop909_dir() -> Path:
    pop909_songs(1)
    return POP909


@pytest.fixture(scope="session")
def small_pop909_db(tmp_path_factory):
    """A database (all derived stages run) of POP909 songs 001-012 with their versions.

    Session-scoped and shared: tests must only read it (copy it to modify)."""
    from ingest.pipeline import ingest_paths

    db = tmp_path_factory.mktemp("pop909db") / "db"
    summary = ingest_paths([str(p) for p in pop909_songs(12)], db, workers=1)
    assert summary.failed == 0 and summary.added > 12
    return db


# columns that differ between two ingests of the same files (when, by which code)
VOLATILE = {"ingested_at", "failed_at", "done_at", "code_version", "applied_at"}


def dump_tables(db) -> dict[str, list]:
    """Every row of every DuckDB table of the database (``VOLATILE`` columns left out), in
    a canonical order: for comparing two databases."""
    from atlas_db.connection import reading

    out = {}
    with reading(db) as con:
        tables = [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'").fetchall()]
        for t in tables:
            cols = [r[0] for r in con.execute(f"DESCRIBE {t}").fetchall() if r[0] not in VOLATILE]
            out[t] = con.execute(f"SELECT {', '.join(cols)} FROM {t} ORDER BY ALL").fetchall()
    return out
