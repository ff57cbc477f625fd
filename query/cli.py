"""The ``atlas`` command line: a thin click layer over the library.

Data goes to stdout, progress and messages to stderr. Every user mistake ends in one
line, ``atlas: error: ...``, and a non-zero exit status; a traceback means a bug.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import click

from atlas_db.errors import AtlasError, Interrupted

__all__ = ["cli", "main", "db_option", "format_option", "echo_table", "progress_bar"]

# Modules that add their commands to the group (each exposes ``register(cli)``).
COMMAND_MODULES: list[str] = ["query.cli_patterns", "query.cli_harmony", "query.cli_audio", "query.cli_reindex", "query.cli_grammar", "query.cli_tui", "query.cli_covers"]


def db_option(f):
    return click.option(
        "--db",
        "db_dir",
        type=click.Path(file_okay=False),
        default=None,
        help="Database folder (default: $ATLAS_DB, else ./atlas_data).",
    )(f)


def format_option(default="table"):
    def deco(f):
        return click.option(
            "--format",
            "fmt",
            type=click.Choice(["table", "csv", "json"]),
            default=default,
            show_default=True,
            help="Output format on stdout.",
        )(f)

    return deco


def resolve(db_dir):
    from atlas_db.connection import resolve_db_dir

    return resolve_db_dir(db_dir)


def echo_table(table, fmt: str) -> None:
    from query.formatting import format_table

    click.echo(format_table(table, fmt))


def progress_bar(total: int, desc: str, unit: str = "file"):
    """A tqdm bar on stderr, shown only when stderr is a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None, dynamic_ncols=True)


def warn(msg: str) -> None:
    click.echo(msg, err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="harmony-atlas", prog_name="atlas")
def cli():
    """Harmony Atlas: a harmonic search engine over your MIDI and audio collection.

    \b
    Start with:
      atlas demo                      build a database from a public-domain corpus
      atlas ingest ~/midi --db lib    add your own files (again: only new ones are added)
      atlas sql "SELECT title, n_notes FROM pieces LIMIT 5" --db lib
    """


def _stage_progress():
    bars = {}

    def progress(stage, done, total):
        if stage not in bars:
            bars[stage] = progress_bar(total, stage, unit="piece")
        bars[stage].n = done
        bars[stage].refresh()
        if done >= total:
            bars[stage].close()

    return progress, bars


def _ingest_with_progress(paths, db_dir, workers, *, quiet=False, derive=True, file_timeout_s=None, ray=None):
    from ingest.pipeline import ingest_paths
    from ingest.sources import shown_path

    if ray is not None:  # (address or None, staging folder or None): the work runs on Ray
        from functools import partial

        from ingest.ray_ingest import ingest_paths_ray

        ingest_paths = partial(ingest_paths_ray, address=ray[0], staging_dir=ray[1], num_cpus=workers)

    bar = None
    stage_progress, stage_bars = _stage_progress()

    def progress(done, total, notes):
        nonlocal bar
        if bar is None:
            bar = progress_bar(total, "ingest")
        bar.n = done
        bar.set_postfix_str(f"{notes:,} notes", refresh=False)
        bar.refresh()

    def say(line):
        open_bar = next((b for b in [bar, *stage_bars.values()] if b is not None and not b.disable), None)
        if open_bar is not None:
            open_bar.write(line, file=sys.stderr)
        else:
            warn(line)

    def on_error(path, reason):
        if not quiet:
            say(f"atlas: failed: {shown_path(path)}: {reason}")

    def on_stage_failure(stage, piece_id, reason):
        if not quiet:
            say(f"atlas: skipped: piece {piece_id} in the {stage} stage: {reason}")

    def progress_files(done, total, notes):
        progress(done, total, notes)
        if done >= total and bar is not None:
            bar.close()

    try:
        summary = ingest_paths(paths, db_dir, workers=workers, progress=progress_files, on_error=on_error,
                               stage_progress=stage_progress, derive=derive, on_stage_failure=on_stage_failure,
                               file_timeout_s=file_timeout_s)
    finally:
        if bar is not None:
            bar.close()
        for b in stage_bars.values():
            b.close()
    for note in summary.notes:
        warn(note)
    return summary


def run_derived(db_dir, only=None, redo=False):
    """Bring the derived stages up to date with progress bars (used by reindex commands)."""
    from ingest.derived import run_stages
    from ingest.pipeline import default_workers

    progress, bars = _stage_progress()
    try:
        return run_stages(db_dir, only=only, redo_old_versions=redo, progress=progress, workers=default_workers())
    finally:
        for b in bars.values():
            b.close()


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path())  # required: checked below, after --ray
@db_option
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Processes (default: number of cores, at most 8): for audio analysis, and for harmony, vectors "
                   "and pattern index while this one builds the grammar when an ingest adds 400,000 notes or more. "
                   "MIDI parses in-process; --workers 1 does everything in one process.")
@click.option("--no-derive", is_flag=True,
              help="Only store the files; harmony, grammar and vectors are brought up to date by the next ingest.")
@click.option("--file-timeout", "file_timeout_s", type=click.FloatRange(min=1), default=None,
              help="Seconds one audio file may take before it is stopped and recorded as failed "
                   "(default: $ATLAS_FILE_TIMEOUT_S, else 900).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="Parse the files and compute harmony, vectors and pattern index as Ray tasks (docs/scale-out.md): "
                   "on a private local Ray instance (--workers CPUs), or on the cluster at ADDRESS (HOST:PORT or "
                   "auto). Needs pip install 'harmony-atlas[ray]'.")
@click.option("--staging", type=click.Path(file_okay=False), default=None,
              help="With --ray: folder on storage the Ray workers share, for the staged Parquet "
                   "(default: DB/.staging).")
def ingest(paths, db_dir, workers, no_derive, file_timeout_s, ray_address, staging):
    """Add MIDI and audio files and folders (searched recursively) to the database.

    Files whose bytes are already stored are skipped, so re-running is cheap; a file
    that cannot be read is reported, recorded in the ingest_errors table, and the rest
    goes on. A piece that a derived stage cannot analyse is recorded in derived_failures
    and skipped. Ctrl-C keeps everything committed; re-run to finish. Exit status 1 if
    any file or piece failed.

    \b
    Example:
      atlas ingest ~/midi/bach song.mid --db ./atlas_data
      atlas ingest ~/midi --db ./atlas_data --ray              # on a private local Ray
      atlas ingest /shared/midi --db /shared/atlas --ray 10.0.0.5:6379
    """
    if ray_address and os.path.exists(ray_address):  # `--ray FOLDER ...`: a path, not an address
        paths, ray_address = (ray_address, *paths), ""
    if not paths:
        raise click.UsageError("Missing argument 'PATHS...'.")
    if staging is not None and ray_address is None:
        raise click.UsageError("--staging is the Ray workers' shared folder: it needs --ray.")
    db = resolve(db_dir)
    ray = None if ray_address is None else (ray_address or None, staging)
    summary = _ingest_with_progress(paths, db, workers, derive=not no_derive, file_timeout_s=file_timeout_s, ray=ray)
    if summary.added + summary.already_present + summary.failed == 0:
        warn(f"atlas: no MIDI or audio files found in {', '.join(paths)}")
    warn(f"atlas: {summary.line()}")
    sys.exit(1 if summary.failed or summary.stage_failures else 0)


# ignore_unknown_options: a query that starts with a '-- comment' line is the query, not
# an option (the docs' SQL examples start so)
@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("query")
@db_option
@format_option()
@click.option("--write", is_flag=True, help="Open the database writable (default: read-only).")
@click.option("--allow-files", is_flag=True,
              help="Let the query read files outside the database (read_csv, glob, ...); never write them.")
def sql(query, db_dir, fmt, write, allow_files):
    """Run a SQL query (DuckDB dialect) over the tables and views.

    docs/tables.md and the other docs/*.md document every table; `atlas sql "SHOW TABLES"`
    lists them. The query sees this database only: no other files (unless --allow-files,
    which reads them), databases, extensions or settings; docs/tables.md says exactly
    what is refused.
    Statements separated by ';' run in order and the last one's result is shown.
    QUERY '-' reads the query from standard input (a .sql file).

    \b
    Example:
      atlas sql "SELECT title, n_notes, duration_s FROM pieces ORDER BY n_notes DESC LIMIT 5"
      atlas sql "SELECT program, count(*) FROM tracks GROUP BY 1" --format csv
      atlas sql "SELECT * FROM read_csv('labels.csv')" --allow-files
      atlas sql - < report.sql
    """
    from query.sql import run_sql

    if query == "-":
        query = sys.stdin.read()
    echo_table(run_sql(resolve(db_dir), query, write=write, allow_files=allow_files), fmt)


@cli.command()
@click.argument("piece")
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False),
              help="Where to write the .mid file ('-': standard output).")
@db_option
def export(piece, out, db_dir):
    """Rebuild a piece's MIDI file from the notes table.

    PIECE is a piece id (or a unique prefix of one) or a path it was ingested from.

    \b
    Example:
      atlas export 3f2a9c01 -o rebuilt.mid
      atlas export 3f2a9c01 -o - | timidity -
    """
    from query.export import export_piece

    pid, n = export_piece(resolve(db_dir), piece, out)
    warn(f"atlas: wrote {'standard output' if out == '-' else out} ({n:,} bytes) from piece {pid}")


@cli.command()
@db_option
@format_option()
@click.option("--compression", is_flag=True,
              help="Rebuild every note from the grammar and report its bytes against the .mid files and xz -9.")
def stats(db_dir, fmt, compression):
    """Counts per table, disk size and a summary of the corpus.

    --format csv gives the table counts only (one table); --format json gives
    everything, the counts under "tables".

    \b
    Example:
      atlas stats --db ./atlas_data
      atlas stats --compression --db ./atlas_data
    """
    from query.stats import corpus_summary, table_counts

    db = resolve(db_dir)
    if compression:
        from query.grammar_stats import compression_report, compression_table

        report = compression_report(db)
        if fmt == "json":
            click.echo(json.dumps(report, indent=1))
        else:
            echo_table(compression_table(report), fmt)
        return
    summary = corpus_summary(db)
    counts = table_counts(db)
    if fmt == "json":
        summary["tables"] = dict(zip(counts.column("table").to_pylist(), counts.column("rows").to_pylist()))
        click.echo(json.dumps(summary, indent=1))
        return
    if fmt == "csv":
        echo_table(counts, "csv")
        return
    from ingest.sources import count_of

    mb = summary["disk_bytes"] / 1e6
    click.echo(f"database   {summary['database']} (its folder, vector indexes included: {mb:,.1f} MB on disk)")
    click.echo(
        f"corpus     {count_of(summary['pieces'], 'piece')} "
        f"({summary['midi_pieces']:,} MIDI, {summary['audio_pieces']:,} audio), "
        f"{count_of(summary['tracks_with_notes'], 'track')} with notes, {count_of(summary['notes'], 'note')}, "
        f"{summary['hours']:.2f} h of music"
    )
    if summary["top_gm_programs"]:
        progs = ", ".join(f"{p['program']} ({p['tracks']})" for p in summary["top_gm_programs"])
        click.echo(f"programs   most used GM programs (tracks): {progs}")
    n_err = summary["ingest_errors"]
    click.echo(f"errors     {count_of(n_err, 'file')} in ingest_errors")
    click.echo("")
    echo_table(counts, "table")


DEMO_QUERIES = [
    ("the longest pieces", "SELECT title, n_tracks, n_notes, round(duration_s, 1) AS duration_s FROM pieces ORDER BY n_notes DESC LIMIT 5"),
    ("pitch range per voice name", "SELECT name, count(*) AS tracks, min(pitch_min) AS lowest, max(pitch_max) AS highest FROM tracks WHERE n_notes > 0 GROUP BY name ORDER BY tracks DESC LIMIT 6"),
    ("most common key signatures", "SELECT key_name, count(DISTINCT piece_id) AS pieces FROM key_signatures GROUP BY key_name ORDER BY pieces DESC LIMIT 5"),
]


@cli.command()
@db_option
@click.option("--workers", type=click.IntRange(1, 64), default=None, help="Processes for conversion and parsing.")
def demo(db_dir, workers):
    """Build a database from a public-domain corpus shipped with music21 and show it.

    Renders ~480 scores (Bach chorales, Palestrina mass movements) to MIDI under
    DB/demo_corpus/, ingests them and prints a few example queries. Running it again
    only re-checks what is there.

    \b
    Example:
      atlas demo --db ./atlas_data
    """
    from ingest.demo_corpus import build_demo_corpus
    from ingest.pipeline import default_workers
    from query.sql import run_sql

    db = resolve(db_dir)
    workers = workers or default_workers()
    if not db.exists():
        if not db.parent.exists():
            raise AtlasError(f"{db}: cannot create the database, parent folder {db.parent} does not exist")
        db.mkdir()
    corpus = db / "demo_corpus"
    warn(f"atlas: {'the demo corpus' if corpus.exists() else 'rendering the demo corpus'} (music21's public-domain "
         f"scores) as MIDI in {corpus} (rendered once; a file already there is kept)")
    bar = None

    def progress(done, total):
        nonlocal bar
        if bar is None:
            bar = progress_bar(total, "render")
        bar.n = done
        bar.refresh()

    try:
        paths, failures = build_demo_corpus(corpus, workers=workers, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    for src, reason in failures:
        warn(f"atlas: could not render {src}: {reason}")
    summary = _ingest_with_progress(paths, db, workers)
    warn(f"atlas: {summary.line()}")
    click.echo("")
    from query.stats import corpus_summary

    s = corpus_summary(db)
    click.echo(
        f"Built {db}: {s['pieces']:,} pieces, {s['notes']:,} notes, {s['hours']:.1f} h of music "
        f"({s['disk_bytes'] / 1e6:.1f} MB on disk)."
    )
    for title, q in DEMO_QUERIES:
        click.echo(f"\n-- {title}\n$ atlas sql \"{q}\" --db {db}")
        echo_table(run_sql(db, q), "table")
    _demo_covers(db)
    for title, example in DEMO_NEXT_STEPS:
        click.echo(f"\n-- {title}\n$ {example.format(db=db)}")


# The demo's cover search: a chorale whose tune Bach set several times in the corpus
DEMO_COVER_QUERY = "bach/bach__bwv1.6.mid"


def _demo_covers(db: Path) -> None:
    """Run and show one cover search of the demo corpus (it also compiles the search's
    kernels, so that the next ``atlas covers`` answers in seconds)."""
    query = db / "demo_corpus" / DEMO_COVER_QUERY
    if not query.exists():  # its score did not render: no cover example then
        return
    from query.covers import covers

    click.echo(f"\n-- other settings of the same chorale tune (covers: any key, tempo, harmonisation)\n"
               f"$ atlas covers {query} --top 5 --db {db}")
    warn("atlas: searching (the first cover search on a machine also compiles its kernels: 10-15 s, once)")
    table = covers(db, [str(query)], top=5)
    echo_table(table.select(["rank", "path", "score", "transposition", "time_scale", "matched_by"]), "table")


# Further commands worth trying after the demo; command modules add theirs.
DEMO_NEXT_STEPS: list[tuple[str, str]] = [
    ("add recordings (wav/flac/mp3/ogg): features, notes, harmony", "atlas ingest ~/recordings --db {db}"),
    ("where ii-V-I happens, in any key", "atlas progression \"ii V I\" --limit 10 --db {db}"),
    ("everything the database holds", "atlas stats --db {db}"),
    ("where a motif occurs, at any pitch, inverted or backwards too",
     "atlas pattern \"C D E F G\" --all-transforms --limit 10 --db {db}"),
    ("grammar rules (transposition-free contours) shared by the most pieces",
     "atlas grammar rules --top 10 --min-length 4 --db {db}"),
    ("how small the grammar makes the corpus, losslessly, against xz -9",
     "atlas stats --compression --db {db}"),
    ("all of it in a terminal UI: library, covers, patterns, SQL, ingest (F1 for keys)",
     "atlas tui --db {db}"),
]


def _register_command_modules():
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).register(cli)


_register_command_modules()


def main(argv=None):
    """Console entry point: AtlasError -> one line on stderr, exit status 2."""
    os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "harmony-atlas" / "numba"))
    try:
        cli.main(args=argv, prog_name="atlas", standalone_mode=False)
    except Interrupted as e:
        for note in getattr(getattr(e, "summary", None), "notes", []):  # recordings stored without a model
            click.echo(note, err=True)
        click.echo(f"atlas: {e}", err=True)
        sys.exit(130)
    except AtlasError as e:
        click.echo(f"atlas: error: {e}", err=True)
        sys.exit(2)
    except (click.exceptions.Abort, KeyboardInterrupt):
        # click turns Ctrl-C into Abort; the line is the same wherever it landed
        click.echo(f"atlas: {interrupted_line()}", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except BrokenPipeError:
        sys.exit(0)
    except SystemExit as e:
        # click answers a closed stdout (`atlas stats | head -1`) with exit status 1 after
        # wrapping stdout so that nothing more is written: the same 0 as a BrokenPipeError
        if e.code == 1 and isinstance(sys.stdout, getattr(click.utils, "_PacifyFlushWrapper", ())):
            sys.exit(0)
        raise
    except Exception as e:
        line = environment_error_line(e)
        if line is None:
            raise  # a bug: keep the traceback
        click.echo(f"atlas: error: {line}", err=True)
        sys.exit(1)


def interrupted_line() -> str:
    """What a Ctrl-C outside an ingest's own accounting says: a command that wrote keeps
    what it committed; one that only read was just stopped."""
    connection = sys.modules.get("atlas_db.connection")
    if connection is not None and connection.opened_for_writing:
        return "interrupted; everything committed before is kept, re-run to finish"
    return "interrupted"


def environment_error_line(exc: BaseException) -> str | None:
    """One line for failures of the machine rather than the program: a full disk, an
    unreadable or corrupt database file, an interrupted query. None for anything else."""
    import errno

    import duckdb

    from ingest.derived import is_interrupt

    text = " ".join(str(exc).split())
    if is_interrupt(exc):
        return interrupted_line()
    if (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or "no space left" in text.lower():
        if isinstance(exc, duckdb.Error):  # a write to the database: its transaction rolled back
            return ("the disk is full; the transaction in flight was rolled back and everything committed "
                    f"before is kept: free some space and re-run ({text[:200]})")
        return (f"the disk is full ({text[:200]}); everything committed to the database before is kept: "
                "free some space and re-run")
    if isinstance(exc, duckdb.Error) and any(w in text.lower() for w in ("corrupt", "checksum", "not a valid duckdb")):
        return (f"the database file is corrupt ({text[:300]}); restore it from a backup, "
                "or ingest the files again into a new --db folder")
    if isinstance(exc, (duckdb.IOException, duckdb.SerializationException, duckdb.InternalException,
                        duckdb.FatalException)):
        return f"the database file could not be read or written ({type(exc).__name__}: {text[:300]})"
    if isinstance(exc, OSError):
        return f"{exc.filename or 'a file'}: {exc.strerror or text}"
    return None


if __name__ == "__main__":
    main()
