"""Save an SVG screenshot of every screen of the TUI, driven headless by Textual's Pilot.

    python -m tui.screenshots OUTDIR [--db DIR] [--size 160x48] [--start-dir DIR]

Each screen is shown doing its job on the database given (default: ``$ATLAS_DB``, else
``./atlas_data``): the library with the first piece's detail, the covers of that piece,
the occurrences of the most widespread grammar rule (or of a short motif), a SQL query,
the ingest screen with its errors list, and the help. Files: ``library.svg``,
``covers.svg``, ``patterns.svg``, ``sql.svg``, ``ingest.svg``, ``help.svg``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

__all__ = ["save_screenshots"]

EXAMPLE_SQL = """SELECT p.title, k.key_name, round(p.duration_s) AS seconds, count(*) AS chords
FROM pieces p JOIN piece_keys k USING (piece_id) JOIN chords c USING (piece_id)
GROUP BY ALL ORDER BY chords DESC LIMIT 20"""
FALLBACK_SQL = "SELECT title, n_tracks, n_notes, round(duration_s, 1) AS duration_s FROM pieces ORDER BY n_notes DESC LIMIT 20"


async def _until(pilot, messages, names, timeout_s=120.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not any(type(m).__name__ in names for m in messages):
        if loop.time() > end:
            raise TimeoutError(f"no {' or '.join(names)} within {timeout_s:.0f} s")
        await pilot.pause(0.1)
    await pilot.pause(0.3)  # let the widgets paint


def save_screenshots(db_dir, out_dir, *, size=(160, 48), start_dir=None) -> list[Path]:
    """Drive the app over ``db_dir`` and write one SVG per screen into ``out_dir``."""
    from tui.app import AtlasApp

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        app = AtlasApp(db_dir, history_path=Path(tmp) / "history.json", start_dir=start_dir)
        messages: list = []

        def shot(name: str) -> None:
            written.append(Path(app.save_screenshot(f"{name}.svg", str(out_dir))))

        async def main() -> None:
            async with app.run_test(size=size, message_hook=messages.append) as pilot:
                await _until(pilot, messages, {"DetailLoaded"})
                await _until(pilot, messages, {"StatusLoaded"})
                shot("library")
                if "covers" in app.MODES:
                    messages.clear()
                    await pilot.press("c")
                    await _until(pilot, messages, {"CoversFound", "CoversFailed"})
                    shot("covers")
                if "patterns" in app.MODES:
                    messages.clear()
                    await pilot.press("f4")
                    await _until(pilot, messages, {"RulesLoaded"})
                    screen = app.screen
                    rules = screen.query_one("#rules")
                    if rules.row_count:
                        screen.search_for(rule_id=int(rules.coordinate_to_cell_key((0, 0)).row_key.value))
                    else:
                        screen.query_one("#motif").value = "+2 +2 +1"
                        screen.search_for(motif="+2 +2 +1")
                    await _until(pilot, messages, {"SearchFinished", "SearchFailed"})
                    shot("patterns")
                messages.clear()
                await pilot.press("f5")
                await pilot.pause(0.3)
                screen = app.screen
                screen.query_one("#editor").text = EXAMPLE_SQL
                screen.action_run()
                await _until(pilot, messages, {"QueryFinished", "QueryFailed"})
                if any(type(m).__name__ == "QueryFailed" for m in messages):  # no harmony tables
                    messages.clear()
                    screen.query_one("#editor").text = FALLBACK_SQL
                    screen.action_run()
                    await _until(pilot, messages, {"QueryFinished", "QueryFailed"})
                shot("sql")
                messages.clear()
                await pilot.press("f6")
                await _until(pilot, messages, {"ErrorsLoaded"})
                shot("ingest")
                await pilot.press("f1")
                await pilot.pause(0.5)
                shot("help")

        asyncio.run(main())
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tui.screenshots", description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", help="folder for the SVG files (created if missing)")
    ap.add_argument("--db", default=None, help="database folder (default: $ATLAS_DB, else ./atlas_data)")
    ap.add_argument("--size", default="160x48", help="terminal size, COLUMNSxROWS (default 160x48)")
    ap.add_argument("--start-dir", default=None, help="where the file pickers open (default: current folder)")
    args = ap.parse_args(argv)
    from atlas_db.connection import db_file, resolve_db_dir

    db = resolve_db_dir(args.db)
    if not db_file(db).exists():
        print(f"tui.screenshots: error: {db}: no Harmony Atlas database here", file=sys.stderr)
        return 2
    try:
        w, h = (int(x) for x in args.size.lower().split("x"))
    except ValueError:
        print(f"tui.screenshots: error: --size {args.size!r}: give COLUMNSxROWS, e.g. 160x48", file=sys.stderr)
        return 2
    for p in save_screenshots(db, args.out_dir, size=(w, h), start_dir=args.start_dir):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
