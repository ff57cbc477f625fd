"""``atlas progression`` and ``atlas chords``: the harmony commands."""

from __future__ import annotations


import click

__all__ = ["register"]


def register(cli) -> None:
    from query.cli import db_option, echo_table, format_option, resolve, warn

    @cli.command()
    @click.argument("query")
    @click.option("--exact", is_flag=True,
                  help="Triads match only triads (by default 'ii' also matches ii7, 'G' also G7).")
    @click.option("--piece", default=None, help="Search only this piece (id, id prefix or ingested path).")
    @click.option("--limit", type=click.IntRange(1), default=None, help="At most this many matches.")
    @db_option
    @format_option()
    def progression(query, exact, piece, limit, db_dir, fmt):
        """Find a chord progression in every piece, in any key.

        QUERY is roman numerals relative to the local key ("ii V I", "I V vi IV",
        "ii7 V7 Imaj7", "i VII VI V"; in a minor key degrees follow the natural minor
        scale) or chord symbols matched in any key ("Dm7 G7 Cmaj7", "C G Am F",
        "D:min7 G:7 C:maj7"). A plain triad matches any chord built on it (use --exact
        to stop that); a seventh matches only that seventh. One row per match: piece,
        path, first chord, onset in beats and seconds, the local key and the chords.

        \b
        Example:
          atlas progression "ii V I" --db ./atlas_data
          atlas progression "Dm7 G7 Cmaj7" --format csv
          atlas progression "vi IV I V" --piece 3f2a9c01 --limit 5
        """
        from query.progression import find_progression

        res = find_progression(resolve(db_dir), query, exact=exact, limit=limit, piece=piece)
        echo_table(res, fmt)
        meta = res.schema.metadata
        n, n_pieces = int(meta[b"matches"]), int(meta[b"pieces"])
        shown = f" (the first {res.num_rows} shown: --limit)" if res.num_rows < n else ""
        warn(f"atlas: {n} match{'es' if n != 1 else ''} in {n_pieces} piece{'s' if n_pieces != 1 else ''}{shown}")
        if unanalysed := int(meta[b"unanalysed"]):
            warn(f"atlas: note: {unanalysed} piece{'s were' if unanalysed != 1 else ' was'} not searched: no "
                 "harmony yet (ingested with --no-derive, or the ingest was interrupted); run `atlas ingest` "
                 "again to analyse them")

    @cli.command()
    @click.argument("piece")
    @db_option
    @format_option()
    def chords(piece, db_dir, fmt):
        """The chord segments of a piece, with its key and roman numerals.

        PIECE is a piece id (or unique prefix), a path that was ingested, or any MIDI
        file (analysed on the fly when it is not in the database).

        \b
        Example:
          atlas chords 3f2a9c01 --db ./atlas_data
          atlas chords song.mid --format csv
        """
        from query.progression import piece_chords

        res, key = piece_chords(resolve(db_dir), piece)
        warn(f"atlas: key {key}")
        echo_table(res, fmt)


