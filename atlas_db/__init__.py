"""Schema, migrations and connections: the DuckDB source of truth (and, later, LanceDB)."""

__version__ = "0.1.0"
