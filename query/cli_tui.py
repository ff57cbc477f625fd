"""``atlas tui``: the Textual interface over the database."""

from __future__ import annotations

from query.cli import db_option, resolve, warn

__all__ = ["register"]


def register(cli) -> None:
    @cli.command()
    @db_option
    def tui(db_dir):
        """Browse the library, look up covers and patterns, run SQL and ingest, in a
        terminal UI (F1 or ? inside it lists every key).

        An empty database is created in DIR if none is there, so you can ingest from
        the Ingest screen.

        \b
        Example:
          atlas tui --db ./atlas_data
        """
        from atlas_db.connection import connect, db_file

        db = resolve(db_dir)
        if not db_file(db).exists():
            connect(db, read_only=False, create=True).close()
            warn(f"atlas: created an empty database in {db}; add music on the Ingest screen (5)")
        from tui.app import AtlasApp

        AtlasApp(db).run()
