"""``atlas reindex``: recompute derived data from the stored notes.

``--grammar`` rebuilds the Re-Pair grammar from scratch over every piece (ingestion only
extends it incrementally); ``--all`` (the default) does that and redoes every other
derived stage for pieces it has not processed or processed with an older code version.
Other domains add their own flags here.
"""

from __future__ import annotations

import time

import click

from query.cli import db_option, resolve, run_derived, warn

__all__ = ["register", "reindex_grammar"]


def reindex_grammar(db, *, max_rules=None, min_count=None) -> dict:
    from atlas_db.connection import writing
    from ingest import grammar

    with writing(db) as con:
        summary = grammar.rebuild(con, max_rules=max_rules, min_count=min_count)
    return summary


def register(cli):
    @cli.command()
    @db_option
    @click.option("--grammar", "do_grammar", is_flag=True,
                  help="Rebuild the grammar (rules, occurrences, parses) from scratch over all pieces.")
    @click.option("--vectors", "do_vectors", is_flag=True,
                  help="Rebuild the cover features, the LanceDB vector tables and the FAISS index from the notes.")
    @click.option("--harmony", "do_harmony", is_flag=True,
                  help="Redo chords, keys and chord transitions of pieces analysed by an older harmony version.")
    @click.option("--all", "do_all", is_flag=True,
                  help="The grammar from scratch, then every other derived stage redone for pieces it has "
                       "not processed or processed with an older version (the default).")
    @click.option("--max-rules", type=click.IntRange(1), default=None,
                  help="Grammar: most rules to learn (default $ATLAS_GRAMMAR_MAX_RULES or 500000); "
                       "later ingests keep the grammar's settings.")
    @click.option("--min-count", type=click.IntRange(2), default=None,
                  help="Grammar: a pair becomes a rule only if it occurs this often "
                       "(default $ATLAS_GRAMMAR_MIN_COUNT or 2).")
    def reindex(db_dir, do_grammar, do_vectors, do_all, max_rules, min_count, do_harmony=False):
        """Recompute derived data from the stored notes.

        Ingestion keeps the grammar up to date incrementally: new pieces are parsed with
        the existing rules and new rules are learned from them, but older pieces are not
        re-parsed with the newer rules. `--grammar` rebuilds it from scratch, which is
        deterministic (the same corpus gives the same rules).

        \b
        Example:
          atlas reindex --grammar --db ./atlas_data
          atlas reindex --vectors --db ./atlas_data
          atlas reindex --harmony --db ./atlas_data
          atlas reindex --all --db ./atlas_data
        """
        from ingest.derived import STAGE_MODULES

        db = resolve(db_dir)
        if not (do_grammar or do_vectors or do_all or do_harmony):
            do_all = True
        if (max_rules is not None or min_count is not None) and not (do_grammar or do_all):
            from atlas_db.errors import BadInputError

            raise BadInputError("--max-rules and --min-count are the grammar's settings: "
                                "give them with --grammar (or --all)")
        if do_harmony and not do_all:
            done = run_derived(db, only=["harmony"], redo=True)
            warn(f"atlas: harmony: {done.get('harmony', 0):,} pieces brought up to date")
        if do_grammar or do_all:
            t = time.perf_counter()
            s = reindex_grammar(db, max_rules=max_rules, min_count=min_count)
            warn(f"atlas: grammar rebuilt: {s['rules']:,} rules learned (the rules table also holds the 128 "
                 f"terminals, one per rhythm and velocity bucket) over {s['notes']:,} notes of "
                 f"{s['pieces']:,} pieces in {time.perf_counter() - t:.1f} s")
        if do_all:
            import importlib

            others = [importlib.import_module(m).STAGE for m in STAGE_MODULES
                      if m not in ("ingest.grammar", "indexers.vectors")]
            done = run_derived(db, only=others, redo=True)
            for stage, n in done.items():
                warn(f"atlas: {stage}: {n:,} pieces brought up to date")
        if do_vectors or do_all:
            from indexers.vectors import reindex as reindex_vectors
            from query.cli import _stage_progress

            t = time.perf_counter()
            progress, bars = _stage_progress()
            try:
                s = reindex_vectors(db, progress=progress)
            finally:
                for b in bars.values():
                    b.close()
            warn(f"atlas: vectors rebuilt: {s['pieces']:,} pieces, {s['piece_vectors']:,} piece vectors, "
                 f"{s['track_vectors']:,} track vectors (LanceDB) and the FAISS index in "
                 f"{time.perf_counter() - t:.1f} s")
