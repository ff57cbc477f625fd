"""``atlas pattern`` (motif search) and ``atlas discover`` (repeated themes of a piece)."""

from __future__ import annotations

import json

import click

from atlas_db.errors import BadInputError

__all__ = ["register"]


def register(cli) -> None:
    from query.cli import db_option, echo_table, format_option, resolve, warn

    @cli.command()
    @click.argument("motif", required=False)
    @click.option("-I", "--inversion", is_flag=True, help="Also match the inversion (intervals negated).")
    @click.option("-R", "--retrograde", is_flag=True, help="Also match the retrograde (notes reversed).")
    @click.option("--retrograde-inversion", "ri", is_flag=True, help="Also match the retrograde inversion.")
    @click.option("--all-transforms", is_flag=True, help="Match P, I, R and RI.")
    @click.option("--approximate", is_flag=True,
                  help="Allow one note to differ in pitch (motifs of 4 notes or more).")
    @click.option("--rhythm", "rhythm_text", default=None, metavar="IOIS",
                  help="Inter-onset intervals of the motif in beats, e.g. \"1 1 0.5 0.5\" "
                       "(interval and note-name motifs; a MIDI snippet has its own).")
    @click.option("--match-rhythm", is_flag=True,
                  help="Require the motif's rhythm too (each inter-onset interval within 1/16 beat).")
    @click.option("--augmentation", is_flag=True,
                  help="Require the motif's rhythm scaled by any constant factor (augmentation/"
                       "diminution); the factor is reported as rhythm_factor.")
    @click.option("--rule", "rule_id", type=int, default=None,
                  help="Search the contour of grammar rule ID (rules.intervals) instead of MOTIF.")
    @click.option("--piece", "pieces", multiple=True,
                  help="Only in this piece (id, id prefix or ingested path); repeatable.")
    @click.option("--limit", type=click.IntRange(1, None), default=None, help="Print at most N occurrences.")
    @db_option
    @format_option()
    def pattern(motif, inversion, retrograde, ri, all_transforms, approximate, rhythm_text, match_rhythm,
                augmentation, rule_id, pieces, limit, db_dir, fmt):
        """Find every occurrence of a motif, at any transposition.

        MOTIF is pitch intervals in semitones ("+2 +2 +1 -3"), note names ("C D E F",
        "C4 E4 G4"), or a MIDI file whose top line is the motif. Each occurrence gives the
        piece, path, track, onset (seconds and beats), first pitch and the transform that
        matched (P itself, I inversion, R retrograde, RI). Melodies are read per track, per
        track's top line and along the piece's skyline (highest notes), so a motif in a voice
        of its own track, or passing between voices, is found too; an inner voice of a track
        that plays chords is not (docs/patterns.md).

        \b
        Example:
          atlas pattern "+2 +2 +1 -3"
          atlas pattern "C D E F G" --all-transforms --approximate --format csv
          atlas pattern motif.mid --augmentation
          atlas pattern "E D C" --rhythm "1 1" --match-rhythm --piece 001.mid
        """
        from query.pattern_search import parse_motif, search, search_rule

        transforms = ["P"]
        if inversion or all_transforms:
            transforms.append("I")
        if retrograde or all_transforms:
            transforms.append("R")
        if ri or all_transforms:
            transforms.append("RI")
        if rule_id is None and augmentation and match_rhythm:
            raise BadInputError("--match-rhythm (the rhythm as given) and --augmentation (the rhythm at any "
                                "speed) exclude each other: give one")
        if rule_id is None and rhythm_text and not (augmentation or match_rhythm):  # it was ignored
            raise BadInputError("--rhythm gives the motif's rhythm; add --match-rhythm to require it as given, "
                                "or --augmentation to require it at any speed")
        rhythm = "augmentation" if augmentation else ("exact" if match_rhythm else None)
        db = resolve(db_dir)
        piece_ids = _resolve_pieces(db, pieces) if pieces else None
        stats: dict = {}
        if rule_id is not None:
            if motif:
                raise BadInputError("give either MOTIF or --rule ID, not both")
            if rhythm or rhythm_text:
                raise BadInputError("--rule searches a rule's pitch contour; --rhythm, --match-rhythm and "
                                    "--augmentation do not apply")
            m, table = search_rule(db, rule_id, transforms=tuple(transforms), approximate=approximate, stats=stats,
                                   piece_ids=piece_ids)
            warn(f"atlas: rule {rule_id} = intervals {' '.join(f'{i:+d}' for i in m.intervals)}")
        else:
            if not motif:
                raise BadInputError("give a MOTIF (\"+2 +2 -1\", \"C D E\" or a .mid file) or --rule ID")
            m = parse_motif(motif, rhythm=rhythm_text)
            table = search(db, m, transforms=tuple(transforms), approximate=approximate, rhythm=rhythm,
                           piece_ids=piece_ids, stats=stats)
        n = table.num_rows
        if stats.get("pieces_indexed", 0) < stats.get("pieces", 0):
            warn(f"atlas: the pattern index covers {stats['pieces_indexed']} of {stats['pieces']} pieces; "
                 "re-run `atlas ingest` (on any path already ingested) to index the rest")
        pieces_hit = len(set(table.column("piece_id").to_pylist())) if n else 0
        warn(f"atlas: {n} occurrence(s) in {pieces_hit} piece(s) ({stats.get('method')}, "
             f"{stats.get('candidates', 0):,} candidates verified)")
        if limit is not None and n > limit:
            table = table.slice(0, limit)
        echo_table(table, fmt)

    @cli.command()
    @click.argument("piece")
    @click.option("--top", type=click.IntRange(1, None), default=10, show_default=True,
                  help="At most how many patterns to return (patterns that save little are left out).")
    @click.option("--min-notes", type=click.IntRange(3, 64), default=5, show_default=True,
                  help="Shortest pattern, in notes.")
    @click.option("--no-variations", is_flag=True,
                  help="Exact (transposed) repeats only; by default occurrences with one note "
                       "changed, and sections that match in 3/4 of their notes, are added.")
    @click.option("--format", "fmt", type=click.Choice(["json", "csv", "table"]), default="json",
                  show_default=True, help="json: MIREX-style list of patterns; csv/table: one row per note.")
    @db_option
    def discover(piece, top, min_notes, no_variations, fmt, db_dir):
        """The repeated themes of a piece, ranked by the description length they save.

        PIECE is a piece id (or unique prefix), a path that was ingested, or any MIDI file
        (analysed without storing it). Repeated sections of all voices are found as point
        sets (onset, pitch), themes in every track, each track's top line and the
        skyline, so a theme that moves between voices is one pattern.
        JSON output is the MIREX "discovery of repeated themes" shape, ready for
        mir_eval.pattern: [{"pattern": id, "occurrences": [[[onset_beats, pitch], ...], ...]}].

        \b
        Example:
          atlas discover 001.mid --top 5
          atlas discover 3f2a9c01 --format csv > patterns.csv
        """
        from query.discover import discover_file, discover_piece, patterns_to_rows

        from pathlib import Path

        db = resolve(db_dir)
        p = Path(piece)
        kw = dict(top=top, min_notes=min_notes, variations=not no_variations)
        stored = _stored_id_of_file(db, p) if p.is_file() else None
        if p.is_file() and p.suffix.lower() in (".mid", ".midi", ".smf", ".kar") and stored is None:
            patterns = discover_file(p, **kw)
        else:
            patterns = discover_piece(db, stored or piece, **kw)
        warn(f"atlas: {len(patterns)} pattern(s)")
        if fmt == "json":
            click.echo(json.dumps([{"pattern": pt.pattern_id, "occurrences": pt.occurrences} for pt in patterns]))
        else:
            echo_table(patterns_to_rows(patterns), fmt)


def _stored_id_of_file(db, path: Path) -> str | None:
    from atlas_db.connection import db_file, reading
    from query.export import stored_id_of_file

    if not db_file(db).exists():
        return None
    with reading(db) as con:
        return stored_id_of_file(con, path)


def _resolve_pieces(db, pieces) -> list[str]:
    from atlas_db.connection import reading
    from query.export import resolve_piece

    with reading(db) as con:
        return [resolve_piece(con, p) for p in pieces]
