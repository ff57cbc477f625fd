"""Audio commands: ``atlas features`` and ``atlas describe`` (docs/audio.md)."""

from __future__ import annotations

import click

from query.cli import db_option, echo_table, format_option, progress_bar, resolve, warn

__all__ = ["register", "piece_features"]


def piece_features(db_dir, piece: str, source: str = "mix"):
    """(piece_id, Arrow table of name, value, unit, range_min, range_max, description)."""
    from atlas_db.connection import fetch_arrow, reading
    from atlas_db.errors import BadInputError
    from query.export import resolve_piece

    with reading(db_dir) as con:
        pid = resolve_piece(con, piece)
        kind = con.execute("SELECT kind FROM pieces WHERE piece_id = ?", [pid]).fetchone()[0]
        if kind != "audio":
            raise BadInputError(f"{piece}: piece {pid} is a {kind} file; features are measured on audio recordings")
        sources = [r[0] for r in con.execute(
            "SELECT DISTINCT source FROM features WHERE piece_id = ? ORDER BY 1", [pid]).fetchall()]
        if source not in sources:
            raise BadInputError(f"--source {source}: piece {pid} has features for {', '.join(sources) or 'nothing'}")
        table = fetch_arrow(con.execute(
            """SELECT f.name, f.value, f.unit, c.range_min, c.range_max, c.description
               FROM features f JOIN feature_catalogue c USING (name)
               WHERE f.piece_id = ? AND f.source = ? ORDER BY f.name""",
            [pid, source],
        ))
    return pid, table


def register(cli: click.Group) -> None:
    @cli.command()
    @click.argument("piece", required=False)
    @click.option("--source", default="mix", show_default=True,
                  help="'mix' (the whole recording) or a stem name (bass, other, vocals, drums).")
    @click.option("--catalogue", is_flag=True, help="Print the feature catalogue (names, units, ranges) instead.")
    @db_option
    @format_option()
    def features(piece, source, catalogue, db_dir, fmt):
        """Audio features of one recording, with units and documented ranges.

        PIECE is a piece id (or a unique prefix), or a path it was ingested from.

        \b
        Example:
          atlas features recordings/song.flac --db ./atlas_data
          atlas features 3f2a9c01 --source bass --format csv
          atlas features --catalogue
        """
        from atlas_db.errors import BadInputError

        if catalogue:  # fixed by the code, so no database is needed (the table holds the same rows)
            import pyarrow as pa

            from atlas_db.schema_audio import CATALOGUE, TABLES

            schema = TABLES["feature_catalogue"]
            rows = sorted(CATALOGUE)
            echo_table(pa.table({f.name: pa.array([r[i] for r in rows], f.type) for i, f in enumerate(schema)},
                                schema=schema), fmt)
            return
        db = resolve(db_dir)
        if not piece:
            raise BadInputError("give a PIECE (id, id prefix or ingested path), or --catalogue")
        pid, table = piece_features(db, piece, source)
        warn(f"atlas: piece {pid}, source {source}: {table.num_rows} features")
        echo_table(table, fmt)

    @cli.command()
    @click.argument("pieces", nargs=-1)
    @click.option("--model", type=click.Path(dir_okay=False), default=None,
                  help="GGUF model file (default: ATLAS_DESCRIBE_MODEL or [audio] describe_model in the config file).")
    @click.option("--redo", is_flag=True, help="Describe again pieces that already have a description.")
    @db_option
    @format_option()
    def describe(pieces, model, redo, db_dir, fmt):
        """Write a short description of pieces with a local GGUF language model.

        Without PIECES, every piece that has no description yet. The facts (tempo,
        key, loudness, length, stems or tracks) come from the database; the text is
        stored in the descriptions table (plain ASCII) and printed. Needs the audio extra
        (llama-cpp-python; docs/audio.md says how to install it) and a model file.

        \b
        Example:
          atlas describe --model ~/models/gemma-3-270m-q4_k_m.gguf --db ./atlas_data
          ATLAS_DESCRIBE_MODEL=~/models/gemma.gguf atlas describe 3f2a9c01 --redo
        """
        from atlas_db.connection import reading
        from ingest.describe import describe_stored
        from query.export import resolve_piece

        db = resolve(db_dir)
        ids = None
        if pieces:
            with reading(db) as con:
                ids = [resolve_piece(con, p) for p in pieces]
        bar = None

        def progress(done, total):
            nonlocal bar
            if bar is None:
                bar = progress_bar(total, "describe", unit="piece")
            bar.n = done
            bar.refresh()

        try:
            table = describe_stored(db, ids, model=model, redo=redo, progress=progress)
        finally:
            if bar is not None:
                bar.close()
        from ingest.sources import count_of

        n = table.num_rows
        line = f"atlas: described {count_of(n, 'piece')}"
        if not redo:
            with reading(db) as con:  # those it left alone: say how to describe them again
                had = con.execute("SELECT count(DISTINCT piece_id) FROM descriptions WHERE ($1 IS NULL OR "
                                  "list_contains($1, piece_id)) AND NOT list_contains($2, piece_id)",
                                  [ids, table.column("piece_id").to_pylist()]).fetchone()[0]
            if had:
                line += f"; {had} already had one (--redo describes {'it' if had == 1 else 'them'} again)"
        warn(line)
        echo_table(table.select(["piece_id", "description"]), fmt)
