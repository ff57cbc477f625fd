"""atlas pattern: motif parsing, planted motifs with known answers, and the n-gram index
against a brute-force scan of the notes table (real POP909 files)."""

from __future__ import annotations

import random

import pytest
from click.testing import CliRunner

from midi_fixtures import Track, melody, write_midi

from atlas_db.connection import reading
from atlas_db.errors import BadInputError
from query.cli import cli, main
from query.pattern_search import (
    Motif,
    brute_force_search,
    build_streams,
    parse_motif,
    search,
)

MOTIF = [60, 62, 64, 65, 67, 64]  # C D E F G E


# --------------------------------------------------------------------------- parsing


def test_parse_intervals_and_names():
    assert parse_motif("+2 +2 +1 -3").pitches == (0, 2, 4, 5, 2)
    assert parse_motif("2, 2, 1").intervals == (2, 2, 1)
    m = parse_motif("C D E F")
    assert m.intervals == (2, 2, 1) and not m.absolute
    assert parse_motif("G4 C5 B4 C5").pitches == (67, 72, 71, 72)
    assert parse_motif("G4 C5 B4 C5").absolute
    assert parse_motif("B C# D Bb").intervals == (2, 1, -4)
    assert parse_motif("C F# C").intervals == (6, 6)  # a tritone always goes up
    assert parse_motif("+2 +2 +1", rhythm="1 0.5 0.5").ioi_beats == (1.0, 0.5, 0.5)


@pytest.mark.parametrize(
    "text, kwargs, message",
    [
        ("", {}, "empty motif"),
        ("+2", {}, "at least 3"),
        ("C D x", {}, "cannot read 'x'"),
        ("+2 C D", {}, "not a mixture"),
        ("+2 +2", {"rhythm": "1"}, "1 values for 3 notes"),
        ("+2 +2", {"rhythm": "1 z"}, "inter-onset intervals"),
        ("+200 +2", {}, "larger than 127"),
        ("/no/such/motif.mid", {}, "cannot read the motif file"),
    ],
)
def test_parse_errors(text, kwargs, message):
    with pytest.raises(BadInputError, match=message):
        parse_motif(text, **kwargs)


# --------------------------------------------------------------------------- streams


def test_streams_definition():
    import numpy as np

    # track 1: melody E..., track 2: chords with a top line; channel 9 = drums
    rows = [  # track, note_index, onset_ticks, pitch, channel
        (1, 0, 0, 64, 0), (1, 1, 480, 65, 0),
        (2, 0, 0, 48, 1), (2, 1, 0, 55, 1), (2, 2, 0, 67, 1), (2, 3, 480, 60, 1), (2, 4, 480, 52, 1),
        (3, 0, 0, 36, 9),
    ]
    arr = {k: np.array([r[i] for r in rows]) for i, k in
           enumerate(["track_index", "note_index", "onset_ticks", "pitch", "channel"])}
    arr["onset_beats"] = arr["onset_ticks"] / 480
    arr["duration_beats"] = np.full(len(rows), 0.9)
    arr["onset_s"] = arr["onset_beats"] / 2
    t = build_streams("ab" * 8, arr, stage_version="t").to_pylist()
    got = {(r["stream"], r["stream_track"]): r["pitch"] for r in t}
    assert got == {
        ("track", 1): [64, 65],
        ("track", 2): [48, 55, 67, 52, 60],  # onset order, chord notes low to high
        ("track_top", 2): [67, 60],
        ("track_bottom", 2): [48, 52],
        ("skyline", -1): [67, 65],
    }


# --------------------------------------------------------------------------- planted motifs


@pytest.fixture(scope="module")
def planted_db(tmp_path_factory):
    """One piece with the motif planted in known places and forms."""
    from ingest.pipeline import ingest_paths

    tmp = tmp_path_factory.mktemp("planted")
    m = MOTIF
    mel = (
        melody(m, start_beats=0)  # P at 60
        + melody([x + 5 for x in m], start_beats=8)  # P transposed +5
        + melody([2 * 60 - x for x in m], start_beats=16)  # I
        + melody(m[::-1], start_beats=24)  # R
        + melody([2 * 62 - x for x in m][::-1], start_beats=32)  # RI
        + melody([x - 3 for x in m], start_beats=40, step_beats=2)  # P, augmented x2
        + melody([60, 62, 64, 66, 67, 64], start_beats=56)  # one note changed (F -> F#)
    )
    # the motif in the top voice of a chordal track, and split between two tracks
    chords = []
    for i, p in enumerate(m):
        chords += [(p - 12, 80 + i, 1, 70), (p - 7, 80 + i, 1, 70), (p + 7, 80 + i, 1, 70)]
    lower = melody([50, 52, 54], start_beats=100)  # first half low in track 1 ...
    upper = melody([55, 57, 59], start_beats=103)  # ... second half in track 2
    path = write_midi(tmp / "planted.mid", [Track(mel + lower, name="melody"),
                                             Track(chords + upper, name="piano", channel=1)])
    db = tmp / "db"
    s = ingest_paths([str(path)], db, workers=1)
    assert s.added == 1
    return db


def _rows(table):
    return [(r["onset_beats"], r["first_pitch"], r["transform"], r["stream"]) for r in table.to_pylist()]


def test_planted_exact_all_transforms(planted_db):
    t = search(planted_db, parse_motif("C D E F G E"), transforms=("P", "I", "R", "RI"))
    got = {(r[0], r[1], r[2]) for r in _rows(t)}
    assert got == {
        (0.0, 60, "P"), (8.0, 65, "P"), (16.0, 60, "I"), (24.0, 64, "R"), (32.0, 60, "RI"),
        (40.0, 57, "P"), (80.0, 67, "P"), (80.0, 48, "P"),
    }
    # in the chordal track: the top voice (p + 7) and the bass (p - 12); the inner voice
    # (p - 7) is no stream
    chord_hits = {(r[1], r[3]) for r in _rows(t) if r[0] == 80.0}
    assert chord_hits in ({(67, "track_top"), (48, "track_bottom")}, {(67, "skyline"), (48, "track_bottom")})


def test_planted_prime_only_and_transposition(planted_db):
    t = search(planted_db, parse_motif("C4 D4 E4 F4 G4 E4"))
    got = sorted((r["onset_beats"], r["transposition"]) for r in t.to_pylist())
    assert got == [(0.0, 0), (8.0, 5), (40.0, -3), (80.0, -12), (80.0, 7)]


def test_planted_approximate_finds_changed_note(planted_db):
    t = search(planted_db, parse_motif("C D E F G E"), approximate=True)
    by_onset = {r["onset_beats"]: r for r in t.to_pylist()}
    assert by_onset[56.0]["mismatch"] == 3 and by_onset[56.0]["first_pitch"] == 60
    assert by_onset[0.0]["mismatch"] is None
    exact = search(planted_db, parse_motif("C D E F G E"))
    assert 56.0 not in {r["onset_beats"] for r in exact.to_pylist()}


def test_planted_rhythm_and_augmentation(planted_db):
    m = parse_motif("C D E F G E", rhythm="1 1 1 1 1")
    same = search(planted_db, m, rhythm="exact")
    assert sorted(r["onset_beats"] for r in same.to_pylist()) == [0.0, 8.0, 80.0, 80.0]
    aug = search(planted_db, m, rhythm="augmentation")
    got = {r["onset_beats"]: r["rhythm_factor"] for r in aug.to_pylist()}
    assert got == {0.0: 1.0, 8.0: 1.0, 40.0: 2.0, 80.0: 1.0}
    assert len(aug) == 5  # the chordal track's top and bottom lines both at 80
    with pytest.raises(BadInputError, match="needs the motif's rhythm"):
        search(planted_db, parse_motif("C D E F G E"), rhythm="exact")


def test_planted_cross_voice_skyline(planted_db):
    t = search(planted_db, parse_motif("+2 +2 +1 +2 +2"))
    hits = [r for r in t.to_pylist() if r["onset_beats"] == 100.0]
    assert len(hits) == 1 and hits[0]["stream"] == "skyline" and hits[0]["first_pitch"] == 50


def test_midi_snippet_query(planted_db, tmp_path):
    snip = write_midi(tmp_path / "q.mid", [Track(melody([70, 72, 74, 75, 77, 74], step_beats=0.5))])
    m = parse_motif(str(snip))
    assert m.absolute and m.ioi_beats == (0.5,) * 5
    aug = search(planted_db, m, rhythm="augmentation")
    assert {r["onset_beats"]: r["rhythm_factor"] for r in aug.to_pylist()} == {
        0.0: 2.0, 8.0: 2.0, 40.0: 4.0, 80.0: 2.0}


# --------------------------------------------------------------------------- index == brute force


def _as_set(table):
    return {(r["piece_id"], r["track_index"], r["note_index"], r["transform"]) for r in table.to_pylist()}


def _real_windows(db, n, length, seed, pieces=None):
    """Motifs cut from real streams, so that there is something to find."""
    rng = random.Random(seed)
    with reading(db) as con:
        rows = con.execute("SELECT pitch, piece_id FROM pattern_streams WHERE n_notes > 40 ORDER BY stream_id").fetchall()
    rows = [r for r in rows if pieces is None or r[1] in pieces]
    out = []
    for _ in range(n):
        p = rng.choice(rows)[0]
        i = rng.randrange(0, len(p) - length)
        out.append(Motif(tuple(p[i : i + length]), False, None, "real"))
    return out


def test_index_equals_brute_force_on_pop909(small_pop909_db):
    """Exact search through the n-gram index finds exactly what a scan of `notes` finds."""
    motifs = _real_windows(small_pop909_db, 3, 5, seed=1) + _real_windows(small_pop909_db, 1, 9, seed=2)
    motifs.append(parse_motif("+2 +2 +1"))  # short: scanned
    for m in motifs:
        tr = ("P", "I", "R", "RI")
        stats = {}
        got = _as_set(search(small_pop909_db, m, transforms=tr, stats=stats))
        want = brute_force_search(small_pop909_db, m, transforms=tr)
        assert want, f"motif {m.intervals} should occur (it was cut from the corpus)"
        assert got == want, (m.intervals, stats)


def test_index_equals_brute_force_approximate_and_rhythm(small_pop909_db):
    with reading(small_pop909_db) as con:
        pieces = [r[0] for r in con.execute("SELECT piece_id FROM pieces ORDER BY piece_id LIMIT 6").fetchall()]
    m = _real_windows(small_pop909_db, 1, 8, seed=3, pieces=pieces)[0]
    stats = {}
    got = _as_set(search(small_pop909_db, m, approximate=True, transforms=("P", "I"), piece_ids=pieces, stats=stats))
    assert stats["method"] == "index"
    want = brute_force_search(small_pop909_db, m, approximate=True, transforms=("P", "I"), piece_ids=pieces)
    assert got == want and want
    # short motifs are scanned, not looked up: the same answers
    for m, approx in ((parse_motif("+2 -2"), False), (_real_windows(small_pop909_db, 1, 5, seed=4, pieces=pieces)[0], True)):
        stats = {}
        got = _as_set(search(small_pop909_db, m, approximate=approx, transforms=("P", "RI"), piece_ids=pieces,
                             stats=stats))
        assert stats["method"] == "scan"
        want = brute_force_search(small_pop909_db, m, approximate=approx, transforms=("P", "RI"), piece_ids=pieces)
        assert got == want and want
    m5 = Motif((0, 0, 0, 0, 0), False, (0.5, 0.5, 0.5, 0.5), "repeated notes")
    for mode in ("exact", "augmentation"):
        got = _as_set(search(small_pop909_db, m5, rhythm=mode, piece_ids=pieces))
        want = brute_force_search(small_pop909_db, m5, rhythm=mode, piece_ids=pieces)
        assert got == want and want


# --------------------------------------------------------------------------- CLI


def test_cli_pattern_json_and_errors(planted_db, capsys):
    r = CliRunner().invoke(cli, ["pattern", "C D E F G E", "-I", "--db", str(planted_db), "--format", "json"])
    assert r.exit_code == 0, r.output
    assert '"transform": "I"' in r.stdout
    with pytest.raises(SystemExit) as e:
        main(["pattern", "C D ?", "--db", str(planted_db)])
    assert e.value.code == 2
    assert "cannot read '?'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["pattern", "+1 +1 +1", "--augmentation", "--db", str(planted_db)])
    assert e.value.code == 2 and "needs the motif's rhythm" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["pattern", "--rule", "999999", "--db", str(planted_db)])
    assert e.value.code == 2 and "no such rule" in capsys.readouterr().err
    # a rhythm that nothing would use was ignored; two rhythm modes at once were accepted
    for extra, why in ((["--rhythm", "1 1"], "add --match-rhythm to require it as given, or --augmentation"),
                       (["--rhythm", "1 1", "--match-rhythm", "--augmentation"], "exclude each other")):
        with pytest.raises(SystemExit) as e:
            main(["pattern", "E D C", *extra, "--db", str(planted_db)])
        assert e.value.code == 2 and why in capsys.readouterr().err
    with reading(planted_db) as con:  # a pair: the error names the rule, not a "motif 'rule N'"
        pair = con.execute("SELECT min(rule_id) FROM rules WHERE length = 2").fetchone()[0]
    for extra, why in (([], f"--rule {pair}: the rule is 2 notes long; --rule searches rules of 3-"),
                       (["--rhythm", "bogus"], "--rhythm, --match-rhythm and --augmentation do not apply")):
        with pytest.raises(SystemExit) as e:
            main(["pattern", "--rule", str(pair), *extra, "--db", str(planted_db)])
        assert e.value.code == 2 and why in capsys.readouterr().err


def test_rule_lookup_finds_every_grammar_occurrence(small_pop909_db):
    """`atlas pattern --rule ID` finds every place the grammar parsed the rule, and more
    (transposed places the parse did not line up with)."""
    from query.pattern_search import search_rule

    with reading(small_pop909_db) as con:
        rows = con.execute(
            "SELECT rule_id FROM rules WHERE length >= 5 AND count >= 3 ORDER BY count DESC, rule_id LIMIT 2"
        ).fetchall()
        assert rows, "the grammar learned no rule of 5+ notes on the POP909 fixture"
        for (rule_id,) in rows:
            occ = set(con.execute(
                "SELECT piece_id, track_index, note_index FROM occurrences WHERE rule_id = ?", [rule_id]
            ).fetchall())
            m, table = search_rule(small_pop909_db, rule_id)
            got = {(r["piece_id"], r["track_index"], r["note_index"]) for r in table.to_pylist()}
            assert occ and occ <= got, f"rule {rule_id}: {len(occ - got)} grammar occurrences not found"


def test_incremental_new_piece_is_searchable(tmp_path):
    """A piece added to a live database is indexed on its own and found at once."""
    from ingest.pipeline import ingest_paths

    a = write_midi(tmp_path / "a.mid", [Track(melody(MOTIF, start_beats=0))])
    b = write_midi(tmp_path / "b.mid", [Track(melody([x + 3 for x in MOTIF], start_beats=4))])
    db = tmp_path / "db"
    ingest_paths([str(a)], db, workers=1)
    m = parse_motif("C D E F G E")
    assert search(db, m).num_rows == 1
    ingest_paths([str(b)], db, workers=1)
    got = sorted((r["path"].endswith("b.mid"), r["first_pitch"]) for r in search(db, m).to_pylist())
    assert got == [(False, 60), (True, 63)]


def test_forget_then_update_restores_exactly_the_piece_rows(small_pop909_db, tmp_path):
    """Re-indexing one piece (forget, update) removes its rows from both tables and
    writes the same rows again; other pieces' rows are untouched; forgetting a piece
    that has no rows is a no-op."""
    import shutil

    from atlas_db.connection import connect
    from ingest import pattern_index

    db = tmp_path / "db"
    shutil.copytree(small_pop909_db, db)
    dump = {"pattern_streams": "SELECT * FROM pattern_streams ORDER BY stream_id",
            "pattern_ngrams": "SELECT * FROM pattern_ngrams ORDER BY ALL"}
    con = connect(db, read_only=False)
    try:
        before = {t: con.execute(q).fetchall() for t, q in dump.items()}
        pid = con.execute("SELECT min(piece_id) FROM pieces").fetchall()[0][0]
        prefix = int(pid[:12], 16)
        con.execute("BEGIN")
        pattern_index.forget(con, [pid, "0000000000000000"])
        assert con.execute("SELECT count(*) FROM pattern_streams WHERE piece_id = ?", [pid]).fetchall()[0][0] == 0
        assert con.execute("SELECT count(*) FROM pattern_ngrams WHERE stream_id >> 12 = ?",
                           [prefix]).fetchall()[0][0] == 0
        others = con.execute(dump["pattern_ngrams"]).fetchall()
        assert others == [r for r in before["pattern_ngrams"] if r[1] >> 12 != prefix] and len(others) < len(
            before["pattern_ngrams"])
        pattern_index.update(con, [pid])
        assert {t: con.execute(q).fetchall() for t, q in dump.items()} == before
        con.execute("ROLLBACK")
    finally:
        con.close()


def test_ngram_order_by_radix_equals_the_lexsort():
    # n-grams as index_tables makes them (stream by stream in stream-id order, positions
    # rising), two streams sharing an id: the same (gram, stream, position) rows
    import numpy as np

    from ingest.pattern_index import _order_by_gram_stream_position

    rng = np.random.default_rng(8)
    stream_ids = rng.permutation(np.arange(40, dtype=np.int64) * 4096)
    stream_ids[5] = stream_ids[9]
    lengths = rng.integers(0, 300, 40)
    r = np.repeat(np.arange(40), lengths)
    p = (np.arange(r.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)).astype(np.int32)
    g = rng.integers(0, 1 << 24, r.size).astype(np.int32)
    g[::3] = g[1::3][: len(g[::3])] if len(g[1::3]) >= len(g[::3]) else g[::3]  # repeated grams
    s = stream_ids[r]
    want = np.lexsort((p, s, g))
    by_id = np.argsort(s, kind="stable")
    got = by_id[_order_by_gram_stream_position(g[by_id], s[by_id], p[by_id], in_id_order=True)]
    for a in (g, s, p):
        np.testing.assert_array_equal(a[got], a[want])
    np.testing.assert_array_equal(_order_by_gram_stream_position(g, s, p), want)


# --------------------------------------------------------------------------- streams of a batch


def _synthetic_pieces():
    """Notes (NumPy columns) of made-up pieces: random tracks with chords, held notes and
    drums (channel 9, also inside a pitched track and as a track of its own), a piece of
    drums only, a one-note piece, and a piece whose notes repeat (same track, onset, pitch
    and note_index) and whose onset_beats do not rise with onset_ticks."""
    import numpy as np

    def piece(tr, ni, ot, pitch, ch, dur, beats=None):
        ot = np.asarray(ot, np.int64)
        ob = ot / 480 if beats is None else np.asarray(beats, np.float64)
        return {"track_index": np.asarray(tr, np.int32), "note_index": np.asarray(ni, np.int32), "onset_ticks": ot,
                "onset_beats": ob, "duration_beats": np.asarray(dur, np.float64), "onset_s": ob / 2 + 0.25,
                "pitch": np.asarray(pitch, np.int16), "channel": np.asarray(ch, np.int16)}

    rng = np.random.default_rng(13)
    out = {}
    for k in range(3):
        n = 400
        tr = rng.integers(0, 4, n)
        ch = np.where(tr == 3, 9, np.where(rng.random(n) < 0.05, 9, tr))
        ot = rng.integers(0, 60, n) * 240
        out[f"{k + 1:02x}" * 8] = piece(tr, np.arange(n), ot, rng.integers(30, 90, n), ch,
                                        rng.choice([0.1, 0.5, 1.0, 4.0], n))
    out["ad" * 8] = piece([0, 0, 1], [0, 1, 0], [0, 480, 0], [36, 38, 42], [9, 9, 9], [1, 1, 1])
    out["0e" * 8] = piece([2], [0], [960], [60], [0], [1.0])
    out["f0" * 8] = piece([0, 0, 0, 0, 1, 1], [0, 1, 2, 0, 0, 1], [0, 0, 960, 0, 0, 480], [50, 70, 60, 50, 50, 52],
                          [0, 0, 0, 0, 1, 1], [1.0, 4.0, 1.0, 2.0, 3.0, 1.0], beats=[3.0, 0, 2.0, 2.5, 0, 1.0])
    return out


def _batch_notes():
    """Four POP909 songs and the synthetic pieces, as one notes table with ``piece_id``
    whose rows are shuffled (pieces interleaved)."""
    import numpy as np
    import pyarrow as pa

    from conftest import pop909_songs
    from ingest.midi_parse import read_midi_file
    from query.pattern_search import NOTE_COLUMNS

    pieces = {}
    for song in pop909_songs(4):
        notes = read_midi_file(song / f"{song.name}.mid")["notes"]
        pieces[notes.column("piece_id")[0].as_py()] = {c: notes.column(c).to_numpy() for c in NOTE_COLUMNS}
    pieces.update(_synthetic_pieces())
    ids = np.repeat(np.array(list(pieces), dtype=object), [len(p["pitch"]) for p in pieces.values()])
    cols = {c: np.concatenate([p[c] for p in pieces.values()]) for c in NOTE_COLUMNS}
    shuffle = np.random.default_rng(5).permutation(len(ids))
    return pieces, pa.table({"piece_id": pa.array(ids[shuffle], pa.string()),
                             **{c: v[shuffle] for c, v in cols.items()}})


def _tables_digest(streams, ngrams) -> str:
    import hashlib

    h = hashlib.sha256(repr(streams.to_pylist()).encode())
    for c in ngrams.column_names:
        h.update(ngrams.column(c).to_numpy().tobytes())
    return h.hexdigest()


# _tables_digest(*index_tables(_batch_notes()[1])) as the per-piece build_streams gave it
# (deb8f59, before build_streams_batch)
BATCH_DIGEST = "751b5f5083d083b906e65eaae2dab13763de188ec772f8ac479e1d5489d5384f"


def test_streams_of_a_batch_equal_piece_by_piece(pop909_dir):
    """build_streams_batch over pieces whose notes are interleaved gives, in the order the
    pieces first occur, each piece's build_streams rows; each piece's streams are those of
    the slow reference (_brute_streams); index_tables gives the rows the per-piece code
    gave (digest)."""
    import pyarrow as pa

    from ingest.pattern_index import VERSION, index_tables
    from query.pattern_search import NOTE_COLUMNS, _brute_streams, build_streams_batch

    pieces, notes = _batch_notes()
    enc = notes.column("piece_id").combine_chunks().dictionary_encode()
    order = enc.dictionary.to_pylist()
    assert order != list(pieces)  # shuffled: the first-occurrence order is another
    cols = {c: notes.column(c).to_numpy() for c in NOTE_COLUMNS}
    codes = enc.indices.to_numpy()
    # each piece's notes in the batch's order (it decides between notes equal in track,
    # onset, pitch and note_index, as in piece "f0...")
    want = pa.concat_tables([build_streams(pid, {c: v[codes == k] for c, v in cols.items()}, stage_version=VERSION)
                             for k, pid in enumerate(order)])
    got = build_streams_batch(order, codes, cols, stage_version=VERSION)
    assert got.equals(want) and got.num_rows > 30
    kinds = set(got.column("stream").to_pylist())
    assert kinds == {"track", "track_top", "track_bottom", "skyline"}
    assert "ad" * 8 not in set(got.column("piece_id").to_pylist())  # drums only: no stream
    assert [r["stream"] for r in got.to_pylist() if r["piece_id"] == "0e" * 8] == ["track"]

    for pid, p in pieces.items():
        if pid == "f0" * 8:  # onset_beats out of tick order: the reference assumes they rise together
            continue
        rows = list(zip(*(p[c].tolist() for c in ("track_index", "note_index", "onset_ticks", "onset_beats",
                                                  "onset_s", "pitch", "channel", "duration_beats"))))
        brute = _brute_streams(rows)
        tracks = {seq[0][0]: seq for kind, seq in brute if kind == "track"}
        expect = [(kind, [(r[0], r[1]) for r in seq]) for kind, seq in brute
                  if kind == "track" or (kind == "skyline" and len(tracks) >= 2)
                  or (kind in ("track_top", "track_bottom") and seq != tracks[seq[0][0]])]
        mine = [(r["stream"], list(zip(r["track_index"], r["note_index"]))) for r in got.to_pylist()
                if r["piece_id"] == pid]
        assert sorted(mine) == sorted(expect), pid

    assert _tables_digest(*index_tables(notes)) == BATCH_DIGEST


def test_streams_of_a_batch_raise_as_one_piece_does():
    import numpy as np

    from query.pattern_search import build_streams_batch

    p = _synthetic_pieces()["0e" * 8]
    far = {**p, "track_index": np.array([1023], np.int32)}
    with pytest.raises(BadInputError) as one:
        build_streams("ab" * 8, far, stage_version="t")
    both = {c: np.concatenate([p[c], far[c]]) for c in p}
    with pytest.raises(BadInputError) as batch:
        build_streams_batch(["cd" * 8, "ab" * 8], np.array([0, 1]), both, stage_version="t")
    assert str(batch.value) == str(one.value) and "ab" * 8 in str(one.value)


def test_ngrams_in_id_order_match_ngram_codes():
    # the n-gram kernel against the query side's NumPy codes, pitches beyond MIDI's range
    # included (int32 arithmetic), streams taken in a given order
    import numpy as np

    from atlas_db.schema_patterns import NGRAM
    from ingest.pattern_index import _ngrams_in_id_order
    from query.pattern_search import ngram_codes

    rng = np.random.default_rng(3)
    lengths = rng.integers(0, 9, 50)
    pitch = rng.integers(-400, 400, lengths.sum()).astype(np.int16)
    starts = np.cumsum(lengths) - lengths
    by_id = rng.permutation(50)
    g, r, p = _ngrams_in_id_order(pitch, starts, lengths, by_id, NGRAM)
    want = [(s, i, c) for s in by_id for i, c in enumerate(ngram_codes(pitch[starts[s]:starts[s] + lengths[s]]))]
    assert list(zip(r.tolist(), p.tolist(), g.tolist())) == [(int(s), i, int(c)) for s, i, c in want]
    assert g.dtype == np.int32 and p.dtype == np.int32


def test_index_of_notes_without_streams_is_empty():
    # a batch of drums only (a one-file add of a drum track): no rows, no failure (the
    # per-piece code before build_streams_batch failed here with a NumPy broadcast error)
    import pyarrow as pa

    from atlas_db.schema_patterns import TABLES
    from ingest.pattern_index import index_tables
    from query.pattern_search import NOTE_COLUMNS

    p = _synthetic_pieces()["ad" * 8]
    streams, ngrams = index_tables(pa.table({"piece_id": pa.array(["ad" * 8] * 3), **{c: p[c] for c in NOTE_COLUMNS}}))
    assert streams.num_rows == ngrams.num_rows == 0
    assert streams.schema == TABLES["pattern_streams"] and ngrams.schema == TABLES["pattern_ngrams"]
    one = _synthetic_pieces()["0e" * 8]  # one note: a stream, no n-gram
    streams, ngrams = index_tables(pa.table({"piece_id": pa.array(["0e" * 8]), **{c: one[c] for c in NOTE_COLUMNS}}))
    assert streams.column("n_notes").to_pylist() == [1] and ngrams.num_rows == 0
