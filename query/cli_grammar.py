"""``atlas grammar ...``: look at and export the Re-Pair grammar."""

from __future__ import annotations

import click

from query.cli import db_option, echo_table, format_option, resolve, warn

__all__ = ["register"]


def register(cli):
    @cli.group()
    def grammar():
        """The pitch-agnostic Re-Pair grammar: rules, occurrences, transforms.

        \b
        Example:
          atlas grammar rules --top 10 --db ./atlas_data
          atlas grammar show 4711 --db ./atlas_data
          atlas grammar export ./grammar_out --format parquet --db ./atlas_data
        """

    @grammar.command("rules")
    @db_option
    @format_option()
    # bounded: the values go into SQL, where one beyond 64 bits is DuckDB's conversion error
    @click.option("--top", type=click.IntRange(1, 10**9), default=20, show_default=True, help="How many rules.")
    @click.option("--min-length", type=click.IntRange(2, 10**9), default=3, show_default=True,
                  help="Shortest rule shown, in notes.")
    def rules_cmd(db_dir, fmt, top, min_length):
        """The rules shared by the most pieces (then most occurrences).

        \b
        Example:
          atlas grammar rules --top 10 --min-length 4 --db ./atlas_data
        """
        from query.sql import run_sql

        # velocity_buckets shown: two rules of one contour and rhythm differ in it
        q = (f"SELECT rule_id, length, depth, n_pieces, count, intervals, rhythm_buckets, velocity_buckets "
             f"FROM rules WHERE length >= {int(min_length)} "
             f"ORDER BY n_pieces DESC, count DESC, rule_id LIMIT {int(top)}")
        db = resolve(db_dir)
        res = run_sql(db, q)
        echo_table(res, fmt)
        if res.num_rows == 0:
            from atlas_db.connection import reading
            from ingest import grammar
            from ingest.derived import pending_pieces

            with reading(db) as con:  # what the next ingest will learn from
                n = len(pending_pieces(con, grammar))
            if n:
                warn(f"atlas: note: {n} piece{'s have' if n != 1 else ' has'} no grammar yet (ingested with "
                     "--no-derive, or the ingest was interrupted): run `atlas ingest` again to learn it")

    @grammar.command("show")
    @click.argument("rule_id", type=int)
    @db_option
    @format_option()
    @click.option("--limit", type=click.IntRange(1), default=10, show_default=True,
                  help="Rows of places and transforms shown.")
    def show_cmd(rule_id, db_dir, fmt, limit):
        """One rule: its contour, the pieces it occurs in most, its transforms.

        \b
        Example:
          atlas grammar show 4711 --db ./atlas_data
        """
        import json

        from atlas_db.errors import BadInputError
        from query.sql import run_sql

        db = resolve(db_dir)
        rule = run_sql(db, "SELECT rule_id, length, depth, intervals, rhythm_buckets, velocity_buckets, "
                           "left_child, right_child, connector_interval, count, n_pieces, origin "
                           "FROM rules WHERE rule_id = ?", params=[rule_id])
        if rule.num_rows == 0:
            raise BadInputError(f"rule {rule_id}: no such rule in the rules table")
        # by piece and track, not by title: two files can share a name (song.mid in two folders)
        places = run_sql(db, "SELECT piece_id, any_value(path) AS path, track_index, any_value(track_name) "
                             "AS track_name, count(*) AS occurrences, min(onset_s) AS first_onset_s, "
                             "list(DISTINCT first_pitch ORDER BY first_pitch) AS first_pitches "
                             "FROM rule_places WHERE rule_id = ? GROUP BY piece_id, track_index "
                             "ORDER BY occurrences DESC, path, track_index LIMIT ?", params=[rule_id, limit])
        transforms = run_sql(db, "SELECT kind, source_rule_id, target_rule_id, rhythm_ratio, n_notes, "
                                 "round(gain_bits, 1) AS gain_bits FROM transforms "
                                 "WHERE ? IN (source_rule_id, target_rule_id) "
                                 "ORDER BY gain_bits DESC, kind LIMIT ?", params=[rule_id, limit])
        if fmt == "json":
            click.echo(json.dumps({"rule": rule.to_pylist()[0], "places": places.to_pylist(),
                                   "transforms": transforms.to_pylist()}, indent=1, default=str))
            return
        for title, table in (("rule", rule), ("where it occurs", places), ("transforms", transforms)):
            if fmt == "table":
                click.echo(f"-- {title}")
            echo_table(table, fmt)
            if fmt == "table":
                click.echo("")

    @grammar.command("export")
    @click.argument("out_dir", type=click.Path(file_okay=False))
    @db_option
    @click.option("--format", "fmt", type=click.Choice(["parquet", "json"]), default="parquet", show_default=True,
                  help="File format.")
    @click.option("--table", "tables", multiple=True,
                  type=click.Choice(["rules", "occurrences", "transforms", "grammar_sequences",
                                     "grammar_choices", "meta_patterns"]),
                  help="Table to export (repeatable; default: rules, occurrences, transforms).")
    def export_cmd(out_dir, db_dir, fmt, tables):
        """Write the grammar tables to OUT_DIR as Parquet (or JSON arrays of objects).

        \b
        Example:
          atlas grammar export ./grammar_out --db ./atlas_data
          atlas grammar export ./grammar_json --format json --table rules --table transforms
        """
        from query.grammar_export import export_grammar

        written = export_grammar(resolve(db_dir), out_dir, tables=tables or ("rules", "occurrences", "transforms"),
                                 fmt=fmt)
        for t, n, path in written:
            warn(f"atlas: wrote {path} ({n:,} rows of {t})")
