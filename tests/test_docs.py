"""The documentation is executable: every ```sql block in README.md and docs/*.md runs
against a real database, and every table, view and column the database has is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from atlas_db.connection import reading

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SQL_BLOCK = re.compile(r"```sql\n(.*?)```", re.S)


def sql_examples():
    out = []
    for doc in DOCS:
        for i, block in enumerate(SQL_BLOCK.findall(doc.read_text())):
            for j, stmt in enumerate(s.strip() for s in block.split(";")):
                if stmt and not all(line.strip().startswith("--") for line in stmt.splitlines()):
                    out.append(pytest.param(stmt, id=f"{doc.name}-{i}-{j}"))
    return out


@pytest.mark.parametrize("statement", sql_examples())
def test_documented_sql_runs(small_pop909_db, statement):
    from query.sql import run_sql

    run_sql(small_pop909_db, statement)  # as `atlas sql` runs it: read-only, no files


def test_every_table_and_column_is_documented(small_pop909_db):
    text = "\n".join(d.read_text() for d in DOCS)
    with reading(small_pop909_db) as con:
        cols = con.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'main'"
        ).fetchall()
    missing_tables = sorted({t for t, _ in cols if not re.search(rf"`{t}`", text)})
    assert not missing_tables, f"tables/views not documented (as `name`) in README.md or docs/: {missing_tables}"
    missing_cols = sorted({f"{t}.{c}" for t, c in cols if not re.search(rf"`{c}`", text)})
    assert not missing_cols, f"columns not documented (as `name`) in README.md or docs/: {missing_cols}"


def _modules_with_examples():
    return sorted(".".join(p.relative_to(ROOT).with_suffix("").parts)
                  for pkg in ("atlas_db", "ingest", "indexers", "query", "tui")
                  for p in (ROOT / pkg).rglob("*.py") if ">>>" in p.read_text())


@pytest.mark.parametrize("module", _modules_with_examples())
def test_docstring_examples_run(module):
    # a docstring's example that does not run, or prints something else, misleads
    # ('Gb major' where the code spells F#; an option directive that stopped doctest)
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.failed == 0


def test_every_environment_setting_is_in_the_readme_with_its_default():
    from atlas_db.settings import SETTINGS

    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`ATLAS_"):
            names = re.findall(r"`(ATLAS_\w+)`", cells[0])
            rows.update(zip(names, (d.strip() for d in cells[1].split(","))))
    documented = {n: d for n, d in rows.items() if n in SETTINGS}
    assert set(documented) == set(SETTINGS), "README's settings table lists other variables than atlas_db.settings"
    assert {n: float(d) for n, d in documented.items()} == {n: float(s.default) for n, s in SETTINGS.items()}
