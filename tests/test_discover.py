"""atlas discover: a planted theme in polyphonic texture is found with all its occurrences
(transposed, in other voices, passing between voices, varied), scored with mir_eval."""

from __future__ import annotations

import csv
import io
import json
import random
import shutil

import mir_eval.pattern
import pytest
from click.testing import CliRunner

from midi_fixtures import Track, write_midi

from atlas_db.errors import BadInputError
from query.cli import cli
from query.discover import MIN_SAVING_SHARE, OCC_SHARE, discover_file, discover_piece, patterns_to_rows

THEME = [(0, 1.0), (4, 0.5), (7, 0.5), (12, 1.0), (11, 0.5), (9, 0.5), (7, 1.0), (5, 0.5), (4, 0.5), (2, 2.0)]


def _theme_notes(base, start, ioi_scale=1.0, change=None):
    out, t = [], start
    for k, (iv, d) in enumerate(THEME):
        p = base + iv + (1 if change == k else 0)
        out.append((p, t, d * ioi_scale * 0.9, 90))
        t += d * ioi_scale
    return out


def _filler(rng, lo, hi, start, end, avoid=()):
    out, t, p = [], start, rng.randint(lo, hi)
    while t < end:
        d = rng.choice([0.5, 1.0, 1.5])
        if not any(a <= t < b for a, b in avoid):
            out.append((p, t, d * 0.9, 60))
        p = min(hi, max(lo, p + rng.choice([-4, -3, -2, -1, 1, 2, 3, 5])))
        t += d
    return out


def planted_piece(path, seed=0):
    """Three voices of random filler with the theme planted 5 times; returns the ground
    truth in mir_eval's form (one pattern, a list of occurrences of (onset, pitch))."""
    rng = random.Random(seed)
    occ = {
        "a0": _theme_notes(72, 0.0),  # soprano
        "b1": _theme_notes(60, 16.0),  # alto, a fifth... an octave lower
        "c2": _theme_notes(45, 32.0),  # bass, transposed
        "x3": _theme_notes(74, 48.0),  # passes from soprano (first 5) to alto (last 5)
        "a4": _theme_notes(70, 64.0, change=6),  # varied: one note changed
    }
    span = {k: (v[0][1], v[-1][1] + 2) for k, v in occ.items()}
    cross = occ["x3"]
    sop = occ["a0"] + occ["a4"] + cross[:5] + _filler(rng, 64, 80, 0, 80, avoid=[span["a0"], span["a4"], span["x3"]])
    alto = occ["b1"] + cross[5:] + _filler(rng, 52, 64, 0, 80, avoid=[span["b1"], span["x3"]])
    bass = occ["c2"] + _filler(rng, 36, 50, 0, 80, avoid=[span["c2"]])
    write_midi(path, [Track(sop, name="soprano"), Track(alto, name="alto", channel=1),
                      Track(bass, name="bass", channel=2)])
    return [[[(float(t), int(p)) for p, t, _, _ in v] for v in occ.values()]]


def _as_mir(patterns):
    return [[[tuple(n) for n in occ] for occ in p.occurrences] for p in patterns]


def test_planted_theme_found_in_every_voice(tmp_path):
    ref = planted_piece(tmp_path / "planted.mid")
    est = discover_file(tmp_path / "planted.mid", top=5)
    assert est, "no pattern found"
    best = est[0]
    assert best.n_notes == len(THEME)
    starts = sorted(tuple(occ[0]) for occ in best.occurrences)
    assert starts == sorted(min(o) for o in ref[0])  # all five, the varied one included
    assert best.n_varied == 1
    scores = mir_eval.pattern.evaluate(ref, _as_mir(est))
    assert scores["F_3"] > 0.6 and scores["F_est"] == 1.0
    assert scores["FFTP_est"] == 1.0  # the first pattern returned is the theme


def test_without_variations_the_varied_one_is_left_out(tmp_path):
    planted_piece(tmp_path / "p.mid", seed=1)
    est = discover_file(tmp_path / "p.mid", top=3, variations=False)
    assert len(est[0].occurrences) == 4 and est[0].n_varied == 0


def test_cli_json_is_mirex_shaped(tmp_path):
    planted_piece(tmp_path / "p.mid", seed=2)
    r = CliRunner().invoke(cli, ["discover", str(tmp_path / "p.mid"), "--top", "3", "--db", str(tmp_path / "none")])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert [d["pattern"] for d in data] == [f"p{i}" for i in range(1, len(data) + 1)]
    pats = [[[tuple(n) for n in occ] for occ in d["occurrences"]] for d in data]
    mir_eval.pattern.validate(pats, pats)
    assert all(isinstance(n[0], float) and isinstance(n[1], int) for d in data for o in d["occurrences"] for n in o)


def test_a_file_changed_since_it_was_ingested_is_analysed_as_it_is_now(tmp_path):
    # by path, the stored (old) notes were analysed; by content, the file as it is
    from ingest.pipeline import ingest_paths

    f = tmp_path / "p.mid"
    planted_piece(f, seed=2)
    ingest_paths([str(f)], tmp_path / "db", workers=1, derive=False)
    shutil.copy(f, tmp_path / "old.mid")
    planted_piece(f, seed=3)

    def found(patterns):  # the theme is the same: the savings tell the fillers apart
        return [(p.saving, [[list(n) for n in occ] for occ in p.occurrences]) for p in patterns]

    r = CliRunner().invoke(cli, ["discover", str(f), "--top", "3", "--format", "csv", "--db", str(tmp_path / "db")])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    got = sorted({(float(x["saving"]), x["pattern"]) for x in rows})
    assert got == sorted({(p.saving, p.pattern_id) for p in discover_file(f, top=3)})
    assert found(discover_file(f, top=3)) != found(discover_file(tmp_path / "old.mid", top=3))


def test_discover_stored_pop909_piece(small_pop909_db):
    from atlas_db.connection import reading

    with reading(small_pop909_db) as con:
        path = con.execute("SELECT path FROM pieces ORDER BY path LIMIT 1").fetchall()[0][0]
    est = discover_piece(small_pop909_db, path, top=5)
    # patterns saving under MIN_SAVING_SHARE of the best are not reported (fewer, better
    # patterns: see docs/patterns.md), so --top is a maximum
    assert 2 <= len(est) <= 5
    assert len(discover_piece(small_pop909_db, path, top=1)) == 1
    savings = [p.saving for p in est]
    assert savings == sorted(savings, reverse=True) and savings[-1] >= MIN_SAVING_SHARE * savings[0] > 0
    for p in est:
        # inexact occurrences of a section hold OCC_SHARE of its notes or more
        assert len(p.occurrences) >= 2 and all(OCC_SHARE * p.n_notes <= len(o) <= p.n_notes for o in p.occurrences)
        notes = [tuple(n) for o in p.occurrences for n in o]
        assert len(notes) == len(set(notes)), "occurrences of one pattern must not share notes"
    rows = patterns_to_rows(est)
    assert rows.num_rows == sum(len(o) for p in est for o in p.occurrences)
    r = CliRunner().invoke(cli, ["discover", path, "--top", "2", "--format", "csv", "--db", str(small_pop909_db)])
    assert r.exit_code == 0 and r.stdout.startswith('"pattern","rank"')


def test_discover_errors(small_pop909_db):
    with pytest.raises(BadInputError, match="nonexistent.mid: no such file"):
        discover_piece(small_pop909_db, "nonexistent.mid")
    with pytest.raises(BadInputError, match="not a MIDI file"):
        discover_file(__file__)
    with pytest.raises(BadInputError, match="--top 0"):
        discover_piece(small_pop909_db, _first_path(small_pop909_db), top=0)


def _first_path(db):
    from atlas_db.connection import reading

    with reading(db) as con:
        return con.execute("SELECT path FROM pieces ORDER BY path LIMIT 1").fetchall()[0][0]


def section_piece(path, seed=0):
    """Four voices of random filler (52 beats); the block of all voices in beats [4, 16)
    is stated again exactly at beat 20 and, with three notes of the alto changed, at beat
    36. Returns the three occurrences as sets of (onset_beats, pitch)."""
    rng = random.Random(seed)
    ranges = [(67, 81), (57, 69), (50, 62), (36, 50)]
    voices = [[] for _ in ranges]
    for v, (lo, hi) in enumerate(ranges):
        t, p = 0.0, rng.randint(lo, hi)
        while t < 52:
            d = rng.choice([0.5, 1.0, 1.0, 1.5, 2.0])
            voices[v].append((p, t, d * 0.9, 80))
            p = min(hi, max(lo, p + rng.choice([-4, -3, -2, -1, 1, 2, 3, 5])))
            t += d
    block = [[n for n in notes if 4 <= n[1] < 16] for notes in voices]
    changed = {n[1] for n in block[1][2:8:2]}  # three alto notes a semitone up
    for shift in (16.0, 32.0):
        for v, notes in enumerate(voices):
            lo, hi = 4 + shift, 16 + shift
            kept = [n for n in notes if not (lo <= n[1] < hi)]
            copy = [(p + (1 if shift == 32 and v == 1 and t in changed else 0), t + shift, d, vel)
                    for p, t, d, vel in block[v]]
            voices[v] = sorted(kept + copy, key=lambda n: n[1])
    write_midi(path, [Track(notes, name=f"v{v}", channel=v) for v, notes in enumerate(voices)])
    occ = [{(t, p) for b in block for p, t, _, _ in b}]
    occ.append({(t + 16, p) for t, p in occ[0]})
    occ.append({(t + 32, p + (1 if t in changed and (p, t) in {(n[0], n[1]) for n in block[1]} else 0))
                for t, p in occ[0]})
    return occ


def test_repeated_section_of_all_voices_with_an_inexact_restatement(tmp_path):
    occ = section_piece(tmp_path / "s.mid")
    est = discover_file(tmp_path / "s.mid", top=5)
    sec = est[0]  # the section (all four voices) saves most
    got = [{tuple(n) for n in o} for o in sec.occurrences]
    assert [min(o)[0] for o in got] == [4.0, 20.0, 36.0]
    for g, o in zip(got, occ):
        # the statement's notes but the three changed ones (in all three: the pattern is
        # what the three share), and at most two notes next to it that match by chance
        assert len(o - g) <= 3 and len(g - o) <= 2
    assert sec.tracks == (1, 2, 3, 4)
    ref = [[sorted(o) for o in occ]]
    assert mir_eval.pattern.establishment_FPR(ref, _as_mir(est[:1]))[0] > 0.9
    assert mir_eval.pattern.occurrence_FPR(ref, _as_mir(est[:1]), thres=0.75)[0] > 0.9


def test_without_variations_section_occurrences_are_exact(tmp_path):
    section_piece(tmp_path / "s.mid")
    est = discover_file(tmp_path / "s.mid", top=3, variations=False)
    assert est[0].n_varied == 0 and all(len(o) == est[0].n_notes for o in est[0].occurrences)
    assert [o[0][0] for o in est[0].occurrences][:2] == [4.0, 20.0]
