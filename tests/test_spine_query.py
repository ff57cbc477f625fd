"""SQL, export, stats and the demo corpus, on real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from atlas_db.connection import reading
from atlas_db.errors import BadInputError
from ingest.midi_parse import parse_midi
from ingest.pipeline import ingest_paths
from midi_fixtures import Track, melody, write_midi
from query.export import midi_bytes, resolve_piece
from query.sql import QueryError, run_sql

ATLAS = [sys.executable, "-m", "query.cli"]
NOTE_COLS = ["track_index", "note_index", "onset_ticks", "duration_ticks", "pitch", "velocity", "channel"]


def atlas(*args):
    return subprocess.run([*ATLAS, *args], capture_output=True, text=True, cwd=Path(__file__).parents[1])


@pytest.fixture(scope="module")
def full_pop909_db(tmp_path_factory, pop909_dir):
    db = tmp_path_factory.mktemp("full") / "db"
    s = ingest_paths([str(pop909_dir)], db, derive=False)
    assert s.failed == 0 and s.added > 900
    return db


def test_export_is_lossless_over_all_of_pop909(full_pop909_db):
    """Every note's pitch, onset tick, duration tick, velocity, channel and its track's
    program come back identical after export and re-parse, for every POP909 dev file."""
    with reading(full_pop909_db) as con:
        ids = [r[0] for r in con.execute("SELECT piece_id FROM pieces ORDER BY piece_id").fetchall()]
        assert len(ids) > 900
        # what is stored, read once for all pieces (a query per piece took longer than the export)
        notes = con.execute(f"SELECT piece_id, {', '.join(NOTE_COLS)} FROM notes "
                            "ORDER BY piece_id, track_index, note_index").fetchnumpy()
        tracks = {}
        for pid, *row in con.execute("SELECT piece_id, track_index, program, name FROM tracks ORDER BY 1, 2").fetchall():
            tracks.setdefault(pid, []).append(tuple(row))
        bounds = np.searchsorted(notes["piece_id"], ids + [chr(0x10FFFF)])
        for i, pid in enumerate(ids):
            stored = {c: notes[c][bounds[i]:bounds[i + 1]] for c in NOTE_COLS}
            tables = parse_midi(midi_bytes(con, pid), piece_id=pid, path="rebuilt")
            back = tables["notes"]
            for c in NOTE_COLS:
                assert np.array_equal(stored[c], back.column(c).to_numpy()), (pid, c)
            t = tables["tracks"]
            assert list(zip(t.column("track_index").to_pylist(), t.column("program").to_pylist(),
                            t.column("name").to_pylist())) == tracks[pid]


def _plain_track(events) -> bytes:
    """An MTrk chunk written one event at a time, as the standard defines it: each
    event's delta time as a variable-length quantity (7 bits a byte, most significant
    first, the high bit set on all but the last), then its bytes."""
    body, last = bytearray(), 0
    for tick, raw in [*events, (events[-1][0] if events else 0, b"\xff\x2f\x00")]:
        n, groups = tick - last, []
        while True:
            groups.append(n & 0x7F)
            n >>= 7
            if not n:
                break
        body += bytes([g | (0x80 if i else 0) for i, g in reversed(list(enumerate(groups)))]) + raw
        last = tick
    return b"MTrk" + len(body).to_bytes(4, "big") + bytes(body)


def test_export_encodes_events_as_the_one_by_one_writer_does():
    """The vectorised event encoding writes the bytes of the plain one (a delta's
    variable-length quantity, then the event), for deltas of 1 to 7 bytes (up to 2^40
    ticks) and events of any length."""
    from query.export import _chunk, _encode_events, _track_chunk

    rng = np.random.default_rng(5)
    ticks = np.cumsum(rng.choice([0, 1, 127, 128, 16383, 16384, 2**21, 2**28 - 1, 2**28, 2**40], 300))
    other = [bytes(rng.integers(0, 256, int(k)).astype(np.uint8)) for k in rng.integers(1, 9, 40)]
    note_raw = rng.integers(0, 256, (260, 3)).astype(np.uint8)
    which = rng.permutation(300)  # < 40: one of `other`, else a row of note_raw (40 + row)
    raw = [other[w] if w < 40 else note_raw[w - 40].tobytes() for w in which]
    plain = _plain_track(list(zip(ticks.tolist(), raw)))
    assert _chunk(_encode_events(ticks, which, 40, other, note_raw)) == plain
    assert _track_chunk(list(zip(ticks.tolist(), raw))) == plain
    assert _track_chunk([]) == _plain_track([]) == b"MTrk\x00\x00\x00\x04\x00\xff\x2f\x00"


def test_export_cli_by_id_prefix_and_path(tmp_path):
    f = write_midi(tmp_path / "song.mid", [Track(melody([60, 64, 67, 72]), name="lead", program=40)], tempo_bpm=100)
    db = tmp_path / "db"
    ingest_paths([str(f)], db)
    with reading(db) as con:
        pid = con.execute("SELECT piece_id FROM pieces").fetchone()[0]
        assert resolve_piece(con, str(f)) == pid and resolve_piece(con, pid[:8]) == pid
        with pytest.raises(BadInputError, match="an id prefix needs at least 6 of its 16 digits"):
            resolve_piece(con, pid[:4])  # unique here, but too short to name one piece of many
    r = atlas("export", pid[:8], "-o", str(tmp_path / "out.mid"), "--db", str(db))
    assert r.returncode == 0, r.stderr
    piped = subprocess.run([*ATLAS, "export", pid[:8], "-o", "-", "--db", str(db)], capture_output=True)
    assert piped.returncode == 0 and piped.stdout == (tmp_path / "out.mid").read_bytes()  # '-': standard output
    back = parse_midi((tmp_path / "out.mid").read_bytes(), piece_id="x", path="out")
    assert back["notes"].column("pitch").to_pylist() == [60, 64, 67, 72]
    assert back["tempo_changes"].column("us_per_beat").to_pylist() == [600000]
    if Path("/dev/full").exists():  # a full disk: one line, no word of a transaction
        r = atlas("export", pid[:8], "-o", "/dev/full", "--db", str(db))
        assert r.returncode == 2 and r.stderr == "atlas: error: /dev/full: cannot write the MIDI file " \
            "(No space left on device)\n"
        with open("/dev/full", "wb") as full:  # standard output on a full disk
            r = subprocess.run([*ATLAS, "export", pid[:8], "-o", "-", "--db", str(db)], stdout=full,
                               stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
        assert r.returncode == 1 and r.stderr.startswith("atlas: error: the disk is full (") \
            and "transaction" not in r.stderr, r.stderr
    r = atlas("export", "nope", "-o", str(tmp_path / "o.mid"), "--db", str(db))
    assert r.returncode == 2 and "no such piece" in r.stderr and "Traceback" not in r.stderr
    r = atlas("export", str(tmp_path / "missing.mid"), "-o", str(tmp_path / "o.mid"), "--db", str(db))
    assert r.returncode == 2 and "missing.mid: no such file" in r.stderr


def test_track_names_in_utf8_and_in_latin1_are_read_and_written_back(tmp_path):
    # names were read as Latin-1 alone: 'Melodía' in UTF-8 was stored as 'MelodÃ\xada'
    import mido

    names = {"utf-8": "Melodía 旋律", "latin-1": "Café"}
    for charset, name in names.items():
        mf = mido.MidiFile(type=1, ticks_per_beat=480, charset=charset)
        mf.tracks.append(mido.MidiTrack([mido.MetaMessage("track_name", name=name, time=0),
                                         mido.Message("note_on", note=60, velocity=90, time=0),
                                         mido.Message("note_off", note=60, velocity=0, time=480)]))
        mf.save(tmp_path / f"{charset}.mid")
    db = tmp_path / "db"
    ingest_paths([str(tmp_path / f"{c}.mid") for c in names], db, derive=False)
    with reading(db) as con:
        got = dict(con.execute("SELECT p.path, t.name FROM tracks t JOIN pieces p USING (piece_id)").fetchall())
        assert got == {str(tmp_path / f"{c}.mid"): n for c, n in names.items()}
        pid = con.execute("SELECT piece_id FROM pieces WHERE path LIKE '%utf-8.mid'").fetchone()[0]
        back = parse_midi(midi_bytes(con, pid), piece_id="x", path="x")  # written as UTF-8
    assert back["tracks"].column("name").to_pylist() == [names["utf-8"]]


def test_export_keeps_overlapping_and_zero_length_notes(tmp_path):
    # same pitch re-struck before release, and a zero-length note: FIFO pairing must survive
    f = write_midi(tmp_path / "o.mid", [Track([(60, 0, 2, 80), (60, 1, 2, 81), (62, 3, 0, 82), (62, 3, 1, 83)])])
    db = tmp_path / "db"
    ingest_paths([str(f)], db)
    with reading(db) as con:
        pid = con.execute("SELECT piece_id FROM pieces").fetchone()[0]
        stored = con.execute("SELECT onset_ticks, duration_ticks, velocity FROM notes ORDER BY note_index").fetchall()
        back = parse_midi(midi_bytes(con, pid), piece_id=pid, path="x")["notes"]
    assert list(zip(*(back.column(c).to_pylist() for c in ("onset_ticks", "duration_ticks", "velocity")))) == stored


def test_sql_read_only_by_default_and_formats(small_pop909_db):
    t = run_sql(small_pop909_db, "SELECT count(*) AS n FROM pieces")
    assert t.column("n")[0].as_py() > 12
    with pytest.raises(QueryError, match="read-only.*--write"):
        run_sql(small_pop909_db, "DELETE FROM pieces")
    with pytest.raises(QueryError, match="syntax error"):
        run_sql(small_pop909_db, "SELEC 1")
    with pytest.raises(QueryError, match="empty query"):
        run_sql(small_pop909_db, "  ")
    for nothing in (";", " ; ; ", "-- a comment", "/* c */"):  # was an AttributeError traceback
        with pytest.raises(QueryError, match=r"no SQL statement in the query \(only comments or ';'\)"):
            run_sql(small_pop909_db, nothing)
    r = atlas("sql", "SELECT title, n_notes FROM pieces ORDER BY title LIMIT 2", "--db", str(small_pop909_db), "--format", "json")
    rows = json.loads(r.stdout)
    assert [x["title"] for x in rows] == ["001", "001-v1"] and all(x["n_notes"] > 0 for x in rows)
    r = atlas("sql", "SELECT title FROM pieces ORDER BY title LIMIT 2", "--db", str(small_pop909_db), "--format", "csv")
    assert r.stdout.splitlines() == ['"title"', '"001"', '"001-v1"']
    r = atlas("sql", "SELECT * FROM nosuchtable", "--db", str(small_pop909_db))
    assert r.returncode == 2 and r.stderr.startswith("atlas: error: Catalog Error") and r.stderr.count("\n") == 1
    # a query that starts with a '-- comment' line (as the docs' examples do) is the query
    r = atlas("sql", "-- the first title\nSELECT title FROM pieces ORDER BY title LIMIT 1", "--db",
              str(small_pop909_db), "--format", "csv")
    assert r.returncode == 0 and r.stdout.splitlines() == ['"title"', '"001"'], r.stderr
    r = subprocess.run([*ATLAS, "sql", "-", "--db", str(small_pop909_db), "--format", "csv"], capture_output=True,
                       text=True, cwd=Path(__file__).parents[1], input="-- from a file\nSELECT 1 AS one;\nSELECT 2 AS two;\n")
    assert r.returncode == 0 and r.stdout.splitlines() == ['"two"', "2"], r.stderr


def test_sql_write_flag(tmp_path):
    f = write_midi(tmp_path / "a.mid", [Track(melody([60, 62]))])
    db = tmp_path / "db"
    ingest_paths([str(f)], db)
    run_sql(db, "UPDATE pieces SET title = 'renamed'", write=True)
    assert run_sql(db, "SELECT title FROM pieces").column("title").to_pylist() == ["renamed"]


def test_stats(small_pop909_db):
    r = atlas("stats", "--db", str(small_pop909_db), "--format", "json")
    s = json.loads(r.stdout)
    with reading(small_pop909_db) as con:
        n_notes = con.execute("SELECT count(*) FROM notes").fetchone()[0]
    assert s["notes"] == n_notes == s["tables"]["notes"]
    with reading(small_pop909_db) as con:  # a view since schema 0105, still listed
        assert s["tables"]["transforms"] == con.execute("SELECT count(*) FROM transform_rows").fetchone()[0] > 0
    assert s["pieces"] == s["midi_pieces"] > 12 and s["disk_bytes"] > 0
    r = atlas("stats", "--db", str(small_pop909_db))
    assert "pieces" in r.stdout and "notes" in r.stdout and r.returncode == 0
    # a reader that stops early (`atlas stats | head -1`): exit 0 and no message, as atlas sql
    for args in (["stats"], ["sql", "SELECT * FROM notes"]):
        p = subprocess.Popen([*ATLAS, *args, "--db", str(small_pop909_db)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, cwd=Path(__file__).parents[1])
        p.stdout.close()  # nobody reads: the first write gets EPIPE
        assert (p.wait(timeout=60), p.stderr.read()) == (0, b""), args


def test_demo_corpus_renders_real_scores(tmp_path):
    from ingest.demo_corpus import build_demo_corpus, demo_sources

    sources = demo_sources()
    assert len(sources) > 400
    picked = [s for s in sources if "bwv66.6" in s.name or "bwv1.6" in s.name][:2]
    paths, failures = build_demo_corpus(tmp_path / "corpus", sources=picked, workers=1)
    assert failures == [] and len(paths) == 2
    s = ingest_paths(paths, tmp_path / "db")
    assert s.added == 2
    with reading(tmp_path / "db") as con:
        parts = con.execute(
            "SELECT p.title, list(t.name ORDER BY t.track_index) FROM tracks t JOIN pieces p USING (piece_id) "
            "WHERE t.n_notes > 0 GROUP BY p.title ORDER BY p.title").fetchall()
    # BWV 1.6 has an obbligato horn above the four voices; BWV 66.6 is plain SATB
    assert parts == [("bach__bwv1.6", ["Horn 2", "Soprano", "Alto", "Tenor", "Bass"]),
                     ("bach__bwv66.6", ["Soprano", "Alto", "Tenor", "Bass"])]


def test_every_duckdb_type_prints_as_csv_json_and_table():
    # Arrow's CSV writer refuses maps, intervals, unions and bytes: they are written as text
    import csv
    import io

    import duckdb

    from query.formatting import format_table

    t = duckdb.connect().sql(
        "SELECT MAP {'k': 1} AS m, INTERVAL 3 DAY AS i, INTERVAL 14 MONTH + INTERVAL 90 MINUTE AS j, "
        "union_value(num := 2) AS u, 'ab'::BLOB AS b, {'a': 1} AS s, [1, 2] AS l, 1.5::DECIMAL(4, 2) AS d, "
        "DATE '2020-01-02' AS day, 7 AS n, 'x' AS txt").to_arrow_table()
    rows = list(csv.DictReader(io.StringIO(format_table(t, "csv"))))
    assert rows == [{"m": "[[k, 1]]", "i": "3 days", "j": "14 months 1:30:00", "u": "2", "b": "b'ab'",
                     "s": "{'a': 1}", "l": "[1, 2]", "d": "1.50", "day": "2020-01-02", "n": "7", "txt": "x"}]
    assert json.loads(format_table(t, "json"))[0]["i"] == "3 days"
    assert "14 months 1:30:00" in format_table(t, "table")
    odd = pa.table({"path": ["/music/a\nb.mid"]})  # a newline in a file name: one line in a table
    assert format_table(odd, "table").splitlines()[2] == "/music/a\\nb.mid"
    assert json.loads(format_table(odd, "json")) == [{"path": "/music/a\nb.mid"}]  # programs get it as is
    # wide characters take two terminal cells: the next column stays in line
    wide = format_table(pa.table({"title": ["日本語", "abc"], "n": [1, 2]}), "table").splitlines()
    assert wide[2] == "日本語  1" and wide[3] == "abc     2", wide
    # two columns of one name (a join's SELECT *): both shown, none dropped from JSON
    twice = duckdb.connect().sql("SELECT 1 AS a, 2 AS a, 3 AS a_1, 4 AS a").to_arrow_table()
    assert format_table(twice, "table").splitlines()[2].split() == ["1", "2", "3", "4"]
    assert json.loads(format_table(twice, "json")) == [{"a": 1, "a_2": 2, "a_1": 3, "a_3": 4}]


def test_saved_parquet_reads_back_with_repeated_names_and_intervals(tmp_path):
    # the TUI's export: Parquet holds no intervals, and two columns 'a' made a file
    # pyarrow could not read back ("Multiple matches for FieldRef.Name(a)")
    import duckdb
    import pyarrow.parquet as pq

    from query.library import save_table

    t = duckdb.connect().sql("SELECT 1 AS a, 2 AS a, INTERVAL 3 DAY AS i, [1, 2] AS l").to_arrow_table()
    assert pq.read_table(save_table(t, tmp_path / "out.parquet")).to_pylist() == [
        {"a": 1, "a_1": 2, "i": "3 days", "l": [1, 2]}]
