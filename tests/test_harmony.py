"""Harmony: chords, keys and transitions from synthetic pieces whose harmony is known,
progression search (ii-V-I planted in several keys), and real POP909 files."""

from __future__ import annotations

import numpy as np
import pytest

from atlas_db.connection import reading, writing
from atlas_db.errors import BadInputError
from ingest.derived import run_stages
from ingest.harmony import (
    analyze_notes, beat_chroma, chord_label, chords_from_notes, key_from_notes, neo_riemannian,
    roman_numeral,
)
from ingest.pipeline import ingest_paths
from midi_fixtures import Track, write_midi
from query.progression import find_progression, parse_progression

INTERVALS = {"maj": (0, 4, 7), "min": (0, 3, 7), "7": (0, 4, 7, 10), "maj7": (0, 4, 7, 11),
             "min7": (0, 3, 7, 10), "dim": (0, 3, 6)}
PC = {"C": 0, "C#": 1, "Db": 1, "D": 2, "Eb": 3, "E": 4, "F": 5, "F#": 6, "G": 7, "Ab": 8, "A": 9,
      "Bb": 10, "B": 11}


def block_chords(chords, *, beats=4.0, start=0.0, bass_octave=36, inversion_bass=None):
    """Notes for a list of (root name, quality): root in the bass, the chord above middle C,
    plus a melody note per beat drawn from the chord (so the texture is not static)."""
    notes = []
    t = start
    for i, (root, quality) in enumerate(chords):
        r = PC[root]
        bass = bass_octave + r if inversion_bass is None or inversion_bass[i] is None else bass_octave + inversion_bass[i]
        notes.append((bass, t, beats, 70))
        for iv in INTERVALS[quality]:
            notes.append((60 + (r + iv) % 12, t, beats, 60))
        tones = [72 + (r + iv) % 12 for iv in INTERVALS[quality]]
        for b in range(int(beats)):
            notes.append((tones[b % len(tones)], t + b, 0.9, 80))
        t += beats
    return notes


def labels(tbl):
    return [lab.split("/")[0] for lab in tbl.column("label").to_pylist()]


# --------------------------------------------------------------------------- pure functions


def test_known_chords_from_notes():
    prog = [("C", "maj"), ("A", "min"), ("F", "maj"), ("G", "7"), ("D", "min7"), ("B", "dim"), ("E", "maj7")]
    notes = block_chords(prog)
    table = {"onset_beats": [n[1] for n in notes], "duration_beats": [n[2] for n in notes],
             "pitch": [n[0] for n in notes]}
    ch = chords_from_notes(table)
    assert labels(ch) == ["C:maj", "A:min", "F:maj", "G:7", "D:min7", "B:dim", "E:maj7"]
    assert ch.column("onset_beats").to_pylist() == pytest.approx([0, 4, 8, 12, 16, 20, 24])
    assert ch.column("end_beats").to_pylist()[-1] == pytest.approx(28)
    assert ch.column("bass_pc").to_pylist() == [0, 9, 5, 7, 2, 11, 4]
    # observed pitch classes of G7: G B D F
    assert ch.column("pcs").to_pylist()[3] == [2, 5, 7, 11]
    assert ch.column("pc_mask").to_pylist()[3] == (1 << 2) | (1 << 5) | (1 << 7) | (1 << 11)


def test_inversion_gives_bass_in_label():
    notes = block_chords([("C", "maj"), ("G", "maj")], inversion_bass=[4, None])  # C/E then G
    table = {"onset_beats": [n[1] for n in notes], "duration_beats": [n[2] for n in notes],
             "pitch": [n[0] for n in notes]}
    ch = chords_from_notes(table)
    assert ch.column("label").to_pylist() == ["C:maj/3", "G:maj"]


def test_keys_major_and_minor():
    c_major = block_chords([("C", "maj"), ("F", "maj"), ("G", "7"), ("C", "maj"), ("A", "min"), ("D", "min"),
                            ("G", "maj"), ("C", "maj")])
    a_minor = block_chords([("A", "min"), ("D", "min"), ("E", "maj"), ("A", "min"), ("F", "maj"), ("D", "min"),
                            ("E", "7"), ("A", "min")])
    for notes, want in ((c_major, "C major"), (a_minor, "A minor")):
        table = {"onset_beats": [n[1] for n in notes], "duration_beats": [n[2] for n in notes],
                 "pitch": [n[0] for n in notes]}
        assert key_from_notes(table)["key_name"] == want
        res = analyze_notes(table)
        assert res["piece_keys"].column("key_name").to_pylist() == [want]
        assert set(res["chords"].column("key_name").to_pylist()) == {want}
    res = analyze_notes({"onset_beats": [n[1] for n in a_minor], "duration_beats": [n[2] for n in a_minor],
                         "pitch": [n[0] for n in a_minor]})
    assert res["chords"].column("roman").to_pylist() == ["i", "iv", "V", "i", "VI", "iv", "V7", "i"]


def test_local_key_follows_a_modulation():
    # 32 beats firmly in C major, then 32 beats firmly in Eb major.
    part = [("C", "maj"), ("F", "maj"), ("G", "7"), ("C", "maj")] * 2
    part2 = [(r, q) for r, q in [("Eb", "maj"), ("Ab", "maj"), ("Bb", "7"), ("Eb", "maj")] * 2]
    notes = block_chords(part + part2)
    res = analyze_notes({"onset_beats": [n[1] for n in notes], "duration_beats": [n[2] for n in notes],
                         "pitch": [n[0] for n in notes]}, key_window_beats=16)
    ks = res["key_segments"]
    assert ks.column("key_name").to_pylist() == ["C major", "Eb major"]
    assert ks.column("onset_beats").to_pylist()[1] == pytest.approx(32, abs=4)
    romans = res["chords"].column("roman").to_pylist()
    assert romans[:4] == ["I", "IV", "V7", "I"] and romans[-4:] == ["I", "IV", "V7", "I"]


def test_transitions_intervals_and_neo_riemannian():
    prog = [("C", "maj"), ("C", "min"), ("Ab", "maj"), ("F", "min"), ("Db", "maj"), ("G", "7")]
    notes = block_chords(prog)
    res = analyze_notes({"onset_beats": [n[1] for n in notes], "duration_beats": [n[2] for n in notes],
                         "pitch": [n[0] for n in notes]})
    tr = res["chord_transitions"]
    assert tr.column("root_interval").to_pylist() == [0, 8, 9, 8, 6]
    assert tr.column("nro").to_pylist() == ["P", "L", "R", "L", None]
    assert tr.column("quality_change").to_pylist() == ["maj->min", "min->maj", "maj->min", "min->maj", "maj->7"]
    assert tr.column("onset_beats").to_pylist() == pytest.approx([4, 8, 12, 16, 20])


def test_naming_helpers():
    assert chord_label(2, "min7") == "D:min7"
    assert chord_label(0, "maj", 7) == "C:maj/5"
    assert chord_label(None, "N") == "N"
    assert roman_numeral(10, "maj", "major") == "bVII"
    assert roman_numeral(3, "maj", "minor") == "III"
    assert roman_numeral(11, "dim", "major") == "vii°"
    assert roman_numeral(2, "min7", "major") == "ii7"
    assert neo_riemannian(0, "maj", 9, "min") == "R"
    assert neo_riemannian(9, "min", 0, "maj") == "R"
    assert neo_riemannian(0, "maj", 4, "min7") == "L"  # on the triads
    assert neo_riemannian(0, "maj", 7, "maj") is None


def test_silence_is_no_chord_and_drums_are_ignored():
    notes = block_chords([("D", "min")]) + block_chords([("G", "maj")], start=8.0)
    table = {"onset_beats": [n[1] for n in notes], "duration_beats": [n[2] for n in notes],
             "pitch": [n[0] for n in notes], "track_index": [1] * len(notes)}
    # a drum track hammering C#/D# on every 8th would spoil both chords if it counted
    drums = [(p, b / 2, 0.5, 100) for b in range(24) for p in (37, 39)]
    for k, v in zip(("onset_beats", "duration_beats", "pitch"), ([d[1] for d in drums], [d[2] for d in drums],
                                                               [d[0] for d in drums])):
        table[k] = table[k] + v
    table["track_index"] += [9] * len(drums)
    tracks = {"track_index": np.array([1, 9]), "is_drum": np.array([False, True])}
    ch = chords_from_notes(table, tracks=tracks)
    assert ch.column("label").to_pylist() == ["D:min", "N", "G:maj"]
    assert ch.column("onset_beats").to_pylist() == pytest.approx([0, 4, 8])


def test_stuck_note_and_huge_span_stay_bounded():
    notes = block_chords([("C", "maj"), ("G", "maj")])
    table = {"onset_beats": [n[1] for n in notes] + [0.0], "duration_beats": [n[2] for n in notes] + [1e7],
             "pitch": [n[0] for n in notes] + [84]}
    ch = chords_from_notes(table)
    assert ch.column("end_beats").to_pylist()[-1] == pytest.approx(7 + 64)  # last onset (beat 7) + MAX_HOLD_BEATS
    assert labels(ch)[:2] == ["C:maj", "G:maj"]
    # two notes 10 million beats apart: frames get longer instead of memory exploding
    far = {"onset_beats": [0.0, 1e7], "duration_beats": [1.0, 1.0], "pitch": [60, 67]}
    f = beat_chroma(far)
    assert len(f["chroma"]) <= 200_000 and f["frame_beats"] > 1
    assert analyze_notes(far)["chords"].num_rows >= 2


def test_grid_start_rounding_does_not_drop_the_first_note():
    # POP909 has a file whose first onset (1.7708 beats, 850/480) sits a float rounding
    # error before the frame grid that starts from it; it used to crash the stage
    table = {"onset_beats": [850 / 480, 850 / 480 + 0.5, 850 / 480 + 1.0], "duration_beats": [0.5, 0.5, 1.0],
             "pitch": [60, 64, 67]}
    f = beat_chroma(table, phase_beats=-0.22916666666666663)
    assert f["chroma"].sum() > 0 and f["chroma"][0].argmax() == 0  # C (the bass) leads frame 0


def test_bad_input_is_reported():
    with pytest.raises(BadInputError, match="no pitched notes"):
        key_from_notes({"onset_beats": [], "duration_beats": [], "pitch": []})
    with pytest.raises(BadInputError, match="need columns onset_beats"):
        chords_from_notes({"onset": [0.0], "pitch": [60]})
    with pytest.raises(BadInputError, match="frame_beats=0"):
        beat_chroma({"onset_beats": [0.0], "duration_beats": [1.0], "pitch": [60]}, frame_beats=0)
    empty = analyze_notes({"onset_beats": [], "duration_beats": [], "pitch": []})
    assert all(t.num_rows == 0 for t in empty.values())


# --------------------------------------------------------------------------- progression queries


def test_parse_progression():
    kind, q = parse_progression("ii V I")
    assert kind == "roman" and [c.degree["major"] for c in q] == [2, 7, 0]
    assert "min7" in q[0].qualities and "7" in q[1].qualities
    kind, q = parse_progression("Dm7 G7 Cmaj7")
    assert kind == "symbols" and [c.root_pc for c in q] == [2, 7, 0]
    assert [sorted(c.qualities) for c in q] == [["min7"], ["7"], ["maj7"]]
    kind, q = parse_progression("D:min7 | G:7 | C:maj7")
    assert [c.root_pc for c in q] == [2, 7, 0]
    _, q = parse_progression("i bVII bVI V")
    assert [c.degree["minor"] for c in q] == [0, 9, 7, 7]  # bVII in minor: a semitone below VII
    _, q = parse_progression("i VII VI V")  # the Andalusian cadence, on the natural minor scale
    assert [c.degree["minor"] for c in q] == [0, 10, 8, 7]
    _, q = parse_progression("ii - V - I")  # ' - ' separates; '-' in a symbol is minor
    assert [c.degree["major"] for c in q] == [2, 7, 0]
    _, q = parse_progression("C-7 F7")
    assert sorted(q[0].qualities) == ["min7"]
    _, q = parse_progression("ii-V-I")  # a '-' between chords: every part starts one
    assert [c.degree["major"] for c in q] == [2, 7, 0]
    _, q = parse_progression("Dm7-G7-Cmaj7")
    assert [sorted(c.qualities) for c in q] == [["min7"], ["7"], ["maj7"]]
    _, q = parse_progression("ii V I", exact=True)
    assert q[0].qualities == {"min"}
    for bad, msg in (("", "empty query"), ("ii", "at least two"), ("ii G", "mixes roman"),
                     ("ii V9 Z", "cannot read 'Z': neither a roman numeral nor a chord symbol"),
                     ("Hm7 G", "cannot read chord"), ("V/V I", "secondary dominants"),
                     ("Cfoo G", "unknown chord quality")):
        with pytest.raises(BadInputError, match=msg):
            parse_progression(bad)


KEYS_PLANTED = {
    # key: (I, IV, ii, V, vi)
    "C": ("C", "F", "D", "G", "A"),
    "D": ("D", "G", "E", "A", "B"),
    "Ab": ("Ab", "Db", "Bb", "Eb", "F"),
    "F#": ("F#", "B", "Ab", "C#", "Eb"),
}


@pytest.fixture(scope="module")
def planted_db(tmp_path_factory):
    """One piece per key: I IV ii V I vi IV V I (one ii-V-I at chord 2, beat 8), plus a
    piece with ii7 V7 Imaj7 in Bb and a piece without any ii-V-I."""
    root = tmp_path_factory.mktemp("harmony")
    for k, (i, iv, ii, v, vi) in KEYS_PLANTED.items():
        prog = [(i, "maj"), (iv, "maj"), (ii, "min"), (v, "maj"), (i, "maj"), (vi, "min"), (iv, "maj"),
                (v, "maj"), (i, "maj")]
        write_midi(root / f"key_{k}.mid", [Track(block_chords(prog), name="piano")], tempo_bpm=100)
    sevenths = [("Bb", "maj"), ("Eb", "maj"), ("C", "min7"), ("F", "7"), ("Bb", "maj7"), ("G", "min"),
                ("Eb", "maj"), ("F", "maj"), ("Bb", "maj")]
    write_midi(root / "sevenths_Bb.mid", [Track(block_chords(sevenths), name="piano")], tempo_bpm=120)
    none = [("C", "maj"), ("A", "min"), ("F", "maj"), ("G", "maj"), ("C", "maj"), ("F", "maj"), ("G", "maj"),
            ("C", "maj")]
    write_midi(root / "no_251.mid", [Track(block_chords(none), name="piano")], tempo_bpm=120)
    db = root / "db"
    summary = ingest_paths([str(root)], db, workers=1, derive=False)
    assert summary.failed == 0
    run_stages(db, only=["harmony"])
    return db


def test_ii_v_i_found_in_every_key(planted_db):
    res = find_progression(planted_db, "ii V I")
    rows = res.to_pylist()
    found = {r["path"].rsplit("/", 1)[1]: r for r in rows}
    assert set(found) == {"key_C.mid", "key_D.mid", "key_Ab.mid", "key_F#.mid", "sevenths_Bb.mid"}
    assert len(rows) == 5  # one each: no false matches elsewhere
    for k in KEYS_PLANTED:
        r = found[f"key_{k}.mid"]
        assert r["key"].split()[0] in (k, {"F#": "Gb", "Ab": "G#"}.get(k)) and r["key"].endswith("major")
        assert r["chord_index"] == 2 and r["onset_beats"] == pytest.approx(8)
        assert r["onset_s"] == pytest.approx(8 * 60 / 100)  # 100 bpm
        assert r["romans"] == "ii V I"
    assert found["sevenths_Bb.mid"]["romans"] == "ii7 V7 Imaj7"
    # --exact: plain triads only, so the sevenths piece drops out
    exact = find_progression(planted_db, "ii V I", exact=True)
    assert "sevenths_Bb.mid" not in {p.rsplit("/", 1)[1] for p in exact.column("path").to_pylist()}
    assert exact.num_rows == 4


def test_chord_symbols_match_in_any_key(planted_db):
    res = find_progression(planted_db, "Dm7 G7 Cmaj7")
    assert res.num_rows == 1
    r = res.to_pylist()[0]
    assert r["path"].endswith("sevenths_Bb.mid") and r["chords"] == "C:min7 F:7 Bb:maj7"
    assert r["transposition"] == 10  # D -> C is 10 semitones up (mod 12)
    # triads match every key's ii-V-I, as written, in any transposition
    tri = find_progression(planted_db, "Em A D")
    assert tri.num_rows == 5
    assert sorted(tri.column("transposition").to_pylist()) == sorted([(PC[ii] - 4) % 12 for _, _, ii, _, _ in
                                                                       KEYS_PLANTED.values()] + [8])
    every, first = find_progression(planted_db, "Em A D"), find_progression(planted_db, "Em A D", limit=1)
    assert first.num_rows == 1 and first.schema.metadata == every.schema.metadata  # the totals, before the limit
    assert int(every.schema.metadata[b"matches"]) == every.num_rows == 5
    assert int(every.schema.metadata[b"pieces"]) == len(set(every.column("piece_id").to_pylist()))
    one = find_progression(planted_db, "vi IV V I", piece=str(r["path"]).replace("sevenths_Bb", "key_D"))
    assert one.num_rows == 1 and one.column("chords").to_pylist() == ["B:min G:maj A:maj D:maj"]


def test_sql_views_count_progressions(planted_db):
    with reading(planted_db) as con:
        top = con.execute("SELECT romans, n_pieces FROM common_progressions LIMIT 1").fetchone()
        # vi IV V I: in the four planted keys, the sevenths piece and no_251
        assert top == ("vi IV V I", 6)
        shapes = dict(con.execute("SELECT shape, n_pieces FROM common_progression_shapes").fetchall())
        assert shapes["maj +5 maj +9 min +5 maj"] == 4
        n_r = con.execute("SELECT sum(occurrences) FROM common_transitions WHERE nro = 'R'").fetchone()[0]
        # R = major -> relative minor: IV->ii and I->vi in each planted key (8), Eb->Cm7 and
        # Bbmaj7->Gm in the sevenths piece (2, on their triads), C->Am in no_251 (1)
        assert n_r == 11
        versions = con.execute("SELECT DISTINCT stage_version FROM chords").fetchall()
        runs = con.execute("SELECT DISTINCT stage_version FROM derived_runs WHERE stage = 'harmony'").fetchall()
        assert versions == runs


def test_cli_progression_and_chords(planted_db, tmp_path, capsys):
    from query.cli import main

    main(["progression", "ii V I", "--db", str(planted_db), "--format", "csv"])
    out = capsys.readouterr()
    assert out.out.count("\n") == 6  # header + 5 rows
    assert "ii V I" in out.out and "5 matches in 5 pieces" in out.err
    with pytest.raises(SystemExit) as e:
        main(["progression", "ii G", "--db", str(planted_db)])
    assert e.value.code == 2
    assert "atlas: error: progression: 'ii G' mixes roman numerals" in capsys.readouterr().err
    # a file that is not in the database is analysed on the fly
    path = write_midi(tmp_path / "q.mid", [Track(block_chords([("E", "min"), ("A", "7"), ("D", "maj"), ("G", "maj"),
                                                                  ("D", "maj")]))])
    main(["chords", str(path), "--db", str(planted_db), "--format", "json"])
    out = capsys.readouterr()
    assert [r["label"] for r in __import__("json").loads(out.out)] == ["E:min", "A:7", "D:maj", "G:maj", "D:maj"]
    assert "key D major" in out.err
    # a stored piece, named by id prefix and by path, reads its stored chords
    with reading(planted_db) as con:
        pid, stored_path = con.execute("SELECT piece_id, path FROM pieces ORDER BY piece_id LIMIT 1").fetchone()
        stored = [r[0] for r in con.execute(
            "SELECT label FROM chords WHERE piece_id = ? ORDER BY onset_beats", [pid]).fetchall()]
    for name in (pid[:10], stored_path):
        main(["chords", name, "--db", str(planted_db), "--format", "json"])
        assert [r["label"] for r in __import__("json").loads(capsys.readouterr().out)] == stored
    # a name that is neither: what is missing is said (a piece, or the database to look in)
    (tmp_path / "take.wav").write_bytes(b"RIFF")
    for name, db, why in ((pid[:4], planted_db, "an id prefix needs at least 6 of its 16 digits"),
                          ("nothing.mid", planted_db, f"no such piece in {planted_db} and no such file"),
                          (pid[:10], tmp_path / "nodb", f"no such file, and no database at {tmp_path / 'nodb'}"),
                          # a recording not in the database: it is not read as MIDI ("no 'MThd' header")
                          (str(tmp_path / "take.wav"), planted_db, "a recording is analysed when it is ingested")):
        with pytest.raises(SystemExit) as e:
            main(["chords", name, "--db", str(db)])
        assert e.value.code == 2 and why in capsys.readouterr().err


def test_a_matchs_romans_are_in_the_key_it_was_matched_in(small_pop909_db):
    """A roman query is matched in the first chord's local key; its romans are shown in
    that key too (each chord's own key showed POP909 003's Bb F Gm in G minor as
    'III VII vi': G minor began at its last chord)."""
    import re

    from query.progression import find_progression

    for q in ("III VII i", "I V vi IV", "ii V I"):
        rows = find_progression(small_pop909_db, q).to_pylist()
        assert rows, q
        for r in rows:  # a triad in the query matches its extensions: 'i' matches 'i7'
            assert all(re.match(re.escape(w) + "(?![iIvV])", x) for w, x in zip(q.split(), r["romans"].split())), r


def test_a_grid_of_onsets_on_the_half_beat_has_its_phase_exactly_there():
    # equal smoothing weights gave the bin before the peak: 0.479 for 0.5, 0.0625 for 1/12
    from ingest.harmony import _grid_phase

    assert _grid_phase(np.arange(50) + 0.5, 1.0, np.ones(50)) == 0.5
    assert _grid_phase(np.arange(50) + 0.25, 1.0, np.ones(50)) == 0.25
    assert _grid_phase(np.arange(50) + 1 / 12, 1.0, np.ones(50)) == pytest.approx(4 / 48)
    tune = {"onset_beats": np.arange(16) + 0.5, "duration_beats": np.ones(16),
            "pitch": np.array([60, 64, 67, 72] * 2 + [65, 69, 72, 77] * 2)}
    starts = analyze_notes(tune)["chords"].column("onset_beats").to_pylist()
    assert starts[0] == 0.5 and all(b % 1 == 0.5 for b in starts)


def test_a_close_call_between_two_local_keys_goes_to_the_pieces_key():
    # the C and G major scales together, F a little softer: C major by 0.007 correlation
    from ingest.harmony import KEY_PRIOR, _key_correlations, local_keys

    ch = np.zeros((40, 12))
    ch[:, [0, 2, 4, 5, 6, 7, 9, 11]] = 1.0
    ch[:, 5] = 0.9
    corr = _key_correlations(ch.sum(axis=0), "krumhansl")[0]
    assert 0 < corr[0] - corr[7] < KEY_PRIOR
    assert set(local_keys(ch).tolist()) == set(local_keys(ch, piece_key=0).tolist()) == {0}
    assert set(local_keys(ch, piece_key=7).tolist()) == {7}


def test_stage_is_repeatable(planted_db, tmp_path):
    import shutil

    db = tmp_path / "db"
    shutil.copytree(planted_db, db)
    with reading(db) as con:
        before = con.execute("SELECT * FROM chords ORDER BY piece_id, chord_index").fetchall()
    from atlas_db.connection import connect
    import ingest.harmony as harmony
    from query.cli import main

    # a piece analysed by an older version is redone by `atlas reindex --harmony`
    con = connect(db, read_only=False)
    con.execute("UPDATE derived_runs SET stage_version = 'harmony-0' WHERE stage = 'harmony'")
    con.execute("DELETE FROM chords WHERE chord_index > 2")
    con.close()
    main(["reindex", "--harmony", "--db", str(db)])
    with reading(db) as con:
        assert con.execute("SELECT DISTINCT stage_version FROM derived_runs WHERE stage = 'harmony'").fetchall() == [
            (harmony.VERSION,)]
        assert con.execute("SELECT * FROM chords ORDER BY piece_id, chord_index").fetchall() == before

    con = connect(db, read_only=False)
    try:
        ids = [r[0] for r in con.execute("SELECT piece_id FROM pieces").fetchall()]
        con.execute("BEGIN")
        harmony.forget(con, ids)
        harmony.update(con, ids)
        con.execute("COMMIT")
        after = con.execute("SELECT * FROM chords ORDER BY piece_id, chord_index").fetchall()
    finally:
        con.close()
    assert after == before


# --------------------------------------------------------------------------- real POP909 files


def test_pop909_chords_and_key_against_labels(pop909_dir):
    import mir_eval

    from ingest.midi_parse import parse_midi

    song = pop909_dir / "001"
    t = parse_midi((song / "001.mid").read_bytes(), piece_id="x", path="001.mid")
    res = analyze_notes(t["notes"], tracks=t["tracks"], tempo=t["tempo_changes"],
                        ticks_per_beat=t["pieces"]["ticks_per_beat"])
    c = res["chords"]
    ref_iv, ref_lab = mir_eval.io.load_labeled_intervals(str(song / "chord_midi.txt"))
    est_iv = np.c_[c.column("onset_s").to_numpy(), c.column("end_s").to_numpy()]
    scores = mir_eval.chord.evaluate(ref_iv, ref_lab, est_iv, c.column("label").to_pylist())
    assert scores["majmin"] > 0.85
    # key_audio.txt says Gb:maj; we spell it F# major
    assert mir_eval.key.weighted_score("Gb major", res["piece_keys"].column("key_name")[0].as_py()) == 1.0


def test_pop909_database_has_harmony_for_every_piece(small_pop909_db):
    with reading(small_pop909_db) as con:
        n = con.execute("SELECT count(*) FROM pieces").fetchone()[0]
        assert con.execute("SELECT count(*) FROM piece_keys").fetchone()[0] == n
        assert con.execute("SELECT count(DISTINCT piece_id) FROM chords").fetchone()[0] == n
        # chords tile each piece: every segment starts where the previous one ended
        gaps = con.execute("""SELECT count(*) FROM (SELECT onset_beats - lag(end_beats) OVER
                              (PARTITION BY piece_id ORDER BY chord_index) AS gap FROM chords)
                              WHERE abs(gap) > 1e-9""").fetchone()[0]
        assert gaps == 0
        bad = con.execute("""SELECT count(*) FROM chord_transitions t JOIN chords a
                             ON a.piece_id = t.piece_id AND a.chord_index = t.chord_index
                             JOIN chords b ON b.piece_id = t.piece_id AND b.chord_index = t.to_chord_index
                             WHERE (b.root_pc - a.root_pc + 12) % 12 <> t.root_interval""").fetchone()[0]
        assert bad == 0
        # the versions of song 001 are the same song: the same key
        keys = con.execute("""SELECT DISTINCT k.key_name FROM piece_keys k JOIN piece_paths p USING (piece_id)
                              WHERE p.path LIKE '%/001/%'""").fetchall()
        assert keys == [("F# major",)]
    res = find_progression(small_pop909_db, "I V vi IV")
    assert res.num_rows > 0
    import re

    for romans in res.column("romans").to_pylist():
        assert [re.match(r"[b#]*[IViv]+", r).group(0) for r in romans.split()] == ["I", "V", "vi", "IV"]


def test_chord_emissions_equal_the_numpy_expressions():
    # the batch's kernels against the expressions of frame_chord_scores and _chord_path:
    # silent frames, frames without a bass, bass on and off the roots
    from ingest import harmony as H

    rng = np.random.default_rng(7)
    chroma = np.where(rng.random((300, 12)) < 0.6, 0.0, rng.random((300, 12)))
    chroma[::17] = 0.0
    bass = np.where(rng.random(300) < 0.2, -1, rng.integers(30, 70, 300))
    norm = np.linalg.norm(chroma, axis=1, keepdims=True)
    c = np.divide(chroma, norm, out=np.zeros_like(chroma), where=norm > 0)
    raw = c @ H._TEMPLATES_T
    silent = chroma.sum(axis=1) <= 0
    emis = H._chord_emissions(raw, H._T_PENALTY, H._T_ROOTS, bass, 0.08 * 1.0, 10.0, silent)
    want = H.frame_chord_scores(chroma, bass, bass_root_bonus=0.08)
    n_s = want.shape[1]
    np.testing.assert_array_equal(emis[:, :n_s], np.where(silent[:, None], 0.0, 10.0 * want))
    np.testing.assert_array_equal(emis[:, n_s], np.where(silent, 20.0, -1e9))
    path = rng.integers(0, n_s + 1, 300)  # 'N' (n_s) included
    np.testing.assert_array_equal(H._path_scores(raw, H._T_PENALTY, H._T_ROOTS, bass, 0.08 * 1.0, path),
                                  H._state_scores(want, path))


def _paths_as_before(p, c, offsets, key_m, bass, bonus, sharpness, silent, change_cost, key_change_cost,
                     piece_keys):
    """The form :func:`ingest.harmony._paths_by_piece` replaced (b7304c1): each piece's
    products by its own BLAS call into one batch-wide matrix, each Viterbi over the
    pieces' slices of it, and the metrical second pass found by whole-array NumPy over
    every frame of the batch. Returns those and how many pieces took the second pass."""
    from ingest import harmony as H

    n_pieces, n_all = len(offsets) - 1, c.shape[0]
    n_frames = np.diff(offsets)
    active = n_frames > 0  # the batch's ok: a piece it does not analyse has no frames
    fg = np.repeat(np.arange(n_pieces), n_frames)
    fr = np.arange(n_all) - np.repeat(offsets[:-1], n_frames)

    def products(x, m):
        out = np.empty((n_all, m.shape[1]))
        for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
            if b > a:
                out[a:b] = np.ascontiguousarray(x[a:b]) @ m
        return out

    def viterbi_groups(emis, cost, act):
        path = np.zeros(n_all, np.int64)
        for g in range(n_pieces):
            a, b = offsets[g], offsets[g + 1]
            if b > a and act[g]:
                path[a:b] = H._viterbi(emis(a, b), cost[a:b])
        return path

    corr = products(p, key_m)
    for g in range(n_pieces):  # the piece's own key: KEY_PRIOR more (local_keys)
        corr[offsets[g]:offsets[g + 1], piece_keys[g]] += H.KEY_PRIOR
    corr = sharpness * corr
    key_path = viterbi_groups(lambda a, b: corr[a:b], np.full(n_all, key_change_cost), active)
    raw = products(c, H._TEMPLATES_T)

    def emis(a, b):
        return H._chord_emissions(raw[a:b], H._T_PENALTY, H._T_ROOTS, bass[a:b], bonus, sharpness, silent[a:b])

    cost = np.full(n_all, change_cost)
    path = viterbi_groups(emis, cost, active)
    chg = np.flatnonzero((path[1:] != path[:-1]) & (fg[1:] == fg[:-1])) + 1
    n_chg = np.bincount(fg[chg], minlength=n_pieces)
    again = active & (n_frames >= 16) & (n_chg >= 4)
    if again.any():
        hist = np.bincount(fg[chg] * 4 + fr[chg] % 4, minlength=n_pieces * 4).reshape(n_pieces, 4).astype(float)
        down = np.argmax(hist + 0.5 * np.roll(hist, 2, axis=1), axis=1)
        cost2 = np.where(again[fg], cost * np.array(H.METRICAL_COST)[(fr - down[fg]) % 4], cost)
        path = np.where(again[fg], viterbi_groups(emis, cost2, again), path)
    return (key_path, path, H._path_scores(raw, H._T_PENALTY, H._T_ROOTS, bass, bonus, path)), int(again.sum())


def _assert_paths_as_before(args):
    from ingest import harmony as H
    from indexers.blas_threads import one_blas_thread

    # both forms' products on one BLAS thread, as the ingest makes them: on some CPUs
    # (an AMD EPYC without AVX-512, 2026-12-06) OpenBLAS's threads split a product so
    # that its last bits differ from one thread's
    with one_blas_thread():
        want, n_metrical = _paths_as_before(*args)
    got = H._paths_by_piece(*args)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        np.testing.assert_array_equal(g.view(np.int64), w.view(np.int64))  # floats by their bits
    return n_metrical


def test_paths_by_piece_equal_the_batch_form_they_replaced(small_pop909_db):
    """The key and chord paths and the chord scores made piece by piece (products just
    before their Viterbi) equal the batch-wide form: on every batch call of the POP909
    pieces (most take the metrical second pass) and on made-up pieces (without frames,
    shorter than 16 frames, silent frames, frames without a bass)."""
    from atlas_db.connection import reading
    from ingest import harmony as H

    calls = []
    real = H._paths_by_piece

    def spy(*args):
        calls.append(args)
        return real(*args)

    with reading(small_pop909_db) as con:
        ids = [r[0] for r in con.execute("SELECT piece_id FROM pieces ORDER BY piece_id").fetchall()]
        inputs = H.load_inputs(con, ids)
    H._paths_by_piece = spy
    try:
        H.compute_rows(inputs, ids)
    finally:
        H._paths_by_piece = real
    assert len(calls) == 1
    assert np.count_nonzero(np.diff(calls[0][2])) == len(ids) >= 12
    assert _assert_paths_as_before(calls[0]) > len(ids) // 2  # most take the metrical pass

    rng = np.random.default_rng(11)
    lengths = np.array([0, 40, 5, 16, 15, 300, 1, 0, 64, 16, 200, 17, 16, 16, 15])
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = int(offsets[-1])
    chroma = np.where(rng.random((n, 12)) < 0.6, 0.0, rng.random((n, 12)))
    chroma[::13] = 0.0
    bass = np.where(rng.random(n) < 0.2, -1, rng.integers(30, 70, n))
    norm = np.linalg.norm(chroma, axis=1, keepdims=True)
    c = np.divide(chroma, norm, out=np.zeros_like(chroma), where=norm > 0)
    p = rng.standard_normal((n, 12))
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    metrical = [_assert_paths_as_before((p, c, offsets, H._key_matrix("krumhansl"), bass, 0.08 * 1.0,
                                         10.0, chroma.sum(axis=1) <= 0, change_cost, 20.0,
                                         rng.integers(0, 24, len(lengths))))
                for change_cost in (12.0, 1.2, 0.3)]
    assert metrical[0] < metrical[-1]


def test_a_database_without_its_derived_stages_says_so(tmp_path):
    """Ingested with --no-derive: progression and grammar rules say the pieces have no
    harmony or grammar yet (they answered 0 rows silently); chords analyses a stored
    MIDI file on the fly, as its help says, instead of refusing."""
    import subprocess
    import sys
    from pathlib import Path

    from conftest import pop909_songs

    song = pop909_songs(1)[0] / f"{pop909_songs(1)[0].name}.mid"
    db = tmp_path / "db"
    ingest_paths([str(song)], db, derive=False)

    def atlas(*args):
        return subprocess.run([sys.executable, "-m", "query.cli", *args, "--db", str(db)], capture_output=True,
                              text=True, cwd=Path(__file__).parents[1], timeout=300)

    r = atlas("progression", "I V")
    assert r.returncode == 0 and r.stderr.splitlines()[-1] == (
        "atlas: note: 1 piece was not searched: no harmony yet (ingested with --no-derive, or the ingest was "
        "interrupted); run `atlas ingest` again to analyse them"), r.stderr
    r = atlas("grammar", "rules")
    assert r.returncode == 0 and "1 piece has no grammar yet" in r.stderr, r.stderr
    r = atlas("chords", str(song))
    assert r.returncode == 0 and r.stderr.startswith("atlas: key ") and "(0 rows)" not in r.stdout, r.stderr
    assert find_progression(db, "I V").schema.metadata[b"unanalysed"] == b"1"
    run_stages(db)
    assert find_progression(db, "I V").schema.metadata[b"unanalysed"] == b"0"
    # a piece this version of the stage failed on is not "to be analysed by the next
    # ingest": no note; one an older version failed on is retried, so it counts
    from ingest.harmony import VERSION

    with writing(db) as con:
        pid = con.execute("SELECT piece_id FROM pieces").fetchone()[0]
        con.execute("DELETE FROM derived_runs WHERE stage = 'harmony'")
        con.execute("INSERT INTO derived_failures VALUES ('harmony', ?, ?, 'ValueError: test', now())", [pid, VERSION])
    assert find_progression(db, "I V").schema.metadata[b"unanalysed"] == b"0"
    with writing(db) as con:
        con.execute("UPDATE derived_failures SET stage_version = 'harmony-0'")
    assert find_progression(db, "I V").schema.metadata[b"unanalysed"] == b"1"
