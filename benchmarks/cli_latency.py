"""Wall time of `atlas covers` and `atlas similar` from a new process, as a user types them.

    .venv/bin/python benchmarks/cli_latency.py                        # 3 POP909 songs, this checkout
    .venv/bin/python benchmarks/cli_latency.py --db ./atlas_data      # an existing database (its FAISS file
                                                                     # and saved cover index are rebuilt)
    .venv/bin/python benchmarks/cli_latency.py --code /tmp/old        # + another checkout, alternated

Each case runs the command in a new Python process (``python -m query.cli``, the code
of each checkout given: this one, then every ``--code``), ``--rounds`` times with the
checkouts alternated within a round, and prints the median and the range of the wall
seconds per checkout, and whether every checkout printed the same output (stdout and
stderr compared byte for byte). The cases:

- ``covers, first after an ingest``: the FAISS file and the saved cover index
  (``query.cover_cache``) removed first, as an ingest leaves both out of date (the
  query builds and saves them again);
- ``covers, after adding a file``: the query once (the checkout's saved index up to
  date), then a new file (a copy of another song's file with a text event: a new
  piece) ingested, untimed, then the query timed: the saved index brought up to date
  (``query.cover_update``) where the checkout does that; the outputs may differ, as
  each adds its own file. Checkouts alternated on one database remove each other's
  saved index (a save removes the folders of other keys), so with ``--code`` the cases
  after this one find none: time those with one checkout per run;
- ``covers``: the same query again (both up to date: the cover index is mapped in);
- ``similar ID``, ``similar FILE``, ``similar --tracks``: a stored piece, a MIDI file;
- ``atlas --version``: Python, click and the command line alone, the floor under all.

Without ``--db``, the database is built in a temporary folder from the first
``--songs`` POP909 dev songs (their NNN.mid files), with this checkout. A checkout whose
kernels numba has not compiled yet compiles them in its first process: that round
is run once before the timed ones (``--rounds`` counts the timed rounds).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POP909 = Path(os.environ.get("ATLAS_POP909", ROOT.parent / "shared" / "data" / "pop909-dev"))


def atlas(code: Path, args: list[str]) -> tuple[float, bytes, float]:
    """Wall seconds, output (stdout + stderr) and the seconds until the first byte of
    stdout (the answer, where it comes before the process ends) of ``atlas ARGS`` with
    the code of ``code``."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "query.cli", *args], cwd=code, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = p.stdout.read(1)
    answered = time.perf_counter() - t
    out = p.stdout.read()  # (not communicate(): it would miss what the first read buffered)
    err = p.stderr.read()  # (a few lines at most: it cannot fill its pipe meanwhile)
    p.wait()
    wall = time.perf_counter() - t
    if p.returncode not in (0, 1):
        sys.exit(f"cli_latency: {code}: atlas {' '.join(args)} -> {p.returncode}: {err.decode()[-500:]}")
    return wall, first + out + err, answered


def new_file(src: Path, folder: Path, tag: str) -> Path:
    """A copy of the MIDI file ``src`` with a text event ``tag`` added: the same notes, a
    file the database does not hold yet (pieces are keyed by their content: a tag used
    before would be a file already held, and change nothing)."""
    import mido

    mid = mido.MidiFile(src)
    mid.tracks[0].insert(0, mido.MetaMessage("text", text=tag, time=0))
    out = folder / f"{src.stem}-{tag}.mid"
    mid.save(out)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", type=Path, help="an existing database (default: build one from --songs POP909 songs)")
    ap.add_argument("--songs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--code", type=Path, action="append", default=[], help="another checkout to compare (repeatable)")
    args = ap.parse_args(argv)
    codes = [ROOT, *[c.resolve() for c in args.code]]
    songs = sorted(p for p in POP909.iterdir() if p.is_dir())[: max(args.songs, 1)] if POP909.is_dir() else []
    if not songs:
        sys.exit(f"cli_latency: POP909 dev data not found at {POP909} (set ATLAS_POP909)")
    query = songs[0] / f"{songs[0].name}.mid"
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db
        if db is None:
            db = Path(tmp) / "db"
            atlas(ROOT, ["ingest", *(str(s / f"{s.name}.mid") for s in songs), "--db", str(db)])
        stale = [db / "faiss", db / "cover_index"]  # what an ingest leaves out of date
        pid = atlas(ROOT, ["sql", "SELECT piece_id FROM pieces ORDER BY piece_id LIMIT 1", "--db", str(db),
                           "--format", "csv"])[1].decode().splitlines()[1].strip('"')
        # (copies of another song than the query's: copies of the query's own tie with
        # each other at the top of its answers, where FAISS may order ties differently)
        other = songs[-1] / f"{songs[-1].name}.mid"
        added = Path(tmp) / "added"
        added.mkdir()
        cases = [
            ("covers, first after an ingest", ["covers", str(query), "--db", str(db)], True),
            ("covers, after adding a file", ["covers", str(query), "--db", str(db)], "add"),
            ("covers", ["covers", str(query), "--db", str(db)], False),
            ("similar ID", ["similar", pid, "--db", str(db)], False),
            ("similar FILE", ["similar", str(query), "--db", str(db)], False),
            ("similar --tracks", ["similar", pid, "--tracks", "--db", str(db)], False),
            ("atlas --version", ["--version"], False),
        ]
        n = atlas(ROOT, ["sql", "SELECT count(*) FROM pieces", "--db", str(db), "--format", "csv"])[1]
        print(f"database {db}: {n.decode().splitlines()[1]} pieces; query {query.name} and piece {pid}")
        print(f"checkouts: {', '.join(str(c) for c in codes)}; {args.rounds} rounds alternated (+1 untimed)")
        times = {(name, c): [] for name, _, _ in cases for c in codes}
        answered = {(name, c): [] for name, _, _ in cases for c in codes}
        outputs = {(name, c): set() for name, _, _ in cases for c in codes}
        for r in range(args.rounds + 1):
            for name, cmd, fresh in cases:
                # (a fresh case removes what the checkouts before it saved: this one's last,
                # so the cases after it find its saved files)
                for i, c in enumerate(codes[::-1] if fresh is True else codes):
                    if fresh is True:
                        for d in stale:
                            shutil.rmtree(d, ignore_errors=True)
                    elif fresh == "add":  # this checkout's saved index up to date, then one file more
                        atlas(c, cmd)
                        atlas(ROOT, ["ingest", str(new_file(other, added, f"{os.getpid()}-r{r}c{i}")), "--db", str(db)])
                    wall, out, first = atlas(c, cmd)
                    if r:  # round 0 compiles what a checkout's numba cache lacks
                        times[(name, c)].append(wall)
                        answered[(name, c)].append(first)
                        outputs[(name, c)].add(out)
        print("seconds: the median (range) until the process ends; 'answer at': the median until its "
              "first line of output")
        print(f"{'case':32s} " + " ".join(f"{'checkout ' + str(i):>40s}" for i in range(len(codes))) + "  same output")
        for name, _, fresh in cases:
            cells = []
            for c in codes:
                t = times[(name, c)]
                cells.append(f"{statistics.median(t):6.2f} s ({min(t):.2f}-{max(t):.2f}), "
                             f"answer at {statistics.median(answered[(name, c)]):.2f}")
            same = len(set().union(*(outputs[(name, c)] for c in codes))) == 1
            verdict = "(files differ)" if fresh == "add" else "yes" if same else "NO"
            print(f"{name:32s} " + " ".join(f"{x:>40s}" for x in cells) + f"  {verdict}")
        print("checkout 0 is this one" + "".join(f"; {i} is {c}" for i, c in enumerate(codes) if i))


if __name__ == "__main__":
    main()
