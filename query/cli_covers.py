"""``atlas covers`` and ``atlas similar``: version lookup and vector similarity."""

from __future__ import annotations

import sys

import click

from query.cli import db_option, echo_table, format_option, resolve

__all__ = ["register"]


def _building_note(db):
    """On a terminal, a line while the cover index is built (~5-6 s at 100,000 pieces; the
    next search maps the saved one in), like the progress bars: none in a pipe or a log."""
    if not sys.stderr.isatty():
        return None
    return lambda: click.echo(f"atlas: building the cover index of {db} (once after each change to it; "
                              "later searches read the saved one)...", err=True)


class _Failures:
    """Several queries: one that cannot be read is one line on stderr, the others are
    answered, and the exit status is 1. One query: its error is the command's (status 2)."""

    def __init__(self, queries):
        self.on_error = self._report if len(queries) > 1 else None
        self.count = 0

    def _report(self, reason: str) -> None:
        self.count += 1
        click.echo(f"atlas: error: {reason}", err=True)

    def exit(self) -> None:
        if self.count:
            raise SystemExit(1)


def register(cli):
    @cli.command()
    @click.argument("queries", nargs=-1, required=True)
    @click.option("--top", type=click.IntRange(1, 1000), default=10, show_default=True,
                  help="Answers per query (at most as many as the candidates the search aligned).")
    @db_option
    @format_option()
    def covers(queries, top, db_dir, fmt):
        """Find the versions (covers) of each QUERY in the database.

        QUERY is a .mid file or a recording (.wav, .flac, .mp3, .ogg; transcribed
        to notes first, needs the audio extra), not necessarily ingested, or a piece
        id, id prefix or ingested path. Several queries may be given; the output has one block of answers
        per query (one that cannot be read is one line on stderr, the others are answered,
        exit status 1). A query that is itself in the database is left out of its answers.

        Answers are found in two steps: candidates from the vector index, then a re-rank
        by local alignment of the melody (pitch-class intervals) and of the harmony (beat
        chroma), which is key- and tempo-invariant. Each answer says how it matched:
        `transposition` (semitones from the query up to the answer), `time_scale`
        (query beats per answer beat), the aligned region in both
        (`query_start_beats`..`query_end_beats`, `match_start_beats`..`match_end_beats`)
        and in `matched_by` whether the melody or the harmony gave the score
        (`version_of_best`: found as a clear version of the rank-1 answer);
        `melody_score` and `harmony_score` are the two alignments' own scores, and
        `audio_bonus` what the audio comparison (chroma over time) changed the score by
        (0 unless the query or the answer is a recording; negative where it lowered it).
        The score is the probability that the answer is a version (calibrated on
        queries with and without a version in the collection): below 0.5 it is more
        likely not one, and a MIDI query whose song is not among MIDI files gets low
        scores. The list is the TOP closest pieces, versions or not. A pair with a
        recording on either side is scored by a fusion fitted on rendered recordings
        (also with and without the song), less sure of "no version here".

        The first search after a change to the database brings the saved index in
        DB/cover_index/ up to date (the first ever builds it: seconds at 100,000
        pieces); later searches read it in a fraction of a second. Deleting that
        folder is always safe.

        \b
        Example:
          atlas covers my_song.mid --top 5
          atlas covers 3f2a9c01 other.mid --format csv --db ./atlas_data
          atlas covers live_take.wav --top 3
        """
        from query.covers import covers as run, stale_note

        db = resolve(db_dir)
        failed = _Failures(queries)
        echo_table(run(db, list(queries), top=top, on_error=failed.on_error, on_build=_building_note(db)), fmt)
        note = stale_note(db)
        if note:
            click.echo(note, err=True)
        failed.exit()

    @cli.command()
    @click.argument("queries", nargs=-1, required=True)
    @click.option("--top", type=click.IntRange(1, 1000), default=10, show_default=True,
                  help="Answers per query.")
    @click.option("--tracks", is_flag=True, help="Rank single tracks (LanceDB track vectors) instead of pieces.")
    @db_option
    @format_option()
    def similar(queries, top, tracks, db_dir, fmt):
        """Pieces (or tracks) most similar to each QUERY, by their vectors.

        QUERY is a .mid file or a recording (.wav, .flac, .mp3, .ogg; transcribed
        first, needs the audio extra), not necessarily ingested, or a piece id, id
        prefix or ingested path. The score is the cosine between transposition- and
        tempo-invariant embeddings (harmonic vocabulary, chord motion, melodic
        intervals): alike in style and material, not necessarily the same song
        (for that, use `atlas covers`). Of several queries, one that cannot be read is
        one line on stderr and the others are answered (exit status 1).

        \b
        Example:
          atlas similar my_song.mid --top 5
          atlas similar 3f2a9c01 --tracks --format json --db ./atlas_data
        """
        from query.similar import similar as run

        failed = _Failures(queries)
        echo_table(run(resolve(db_dir), list(queries), top=top, tracks=tracks, on_error=failed.on_error), fmt)
        failed.exit()
