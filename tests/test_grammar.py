"""Grammar: Re-Pair core, incremental encoding, determinism, losslessness, compression."""

from __future__ import annotations

import lzma
import math
import shutil

import numpy as np
import pytest
from midi_fixtures import Track, write_midi

from atlas_db.connection import connect, reading
from ingest import grammar, grammar_codec, grammar_core as gc
from ingest.midi_parse import parse_midi
from ingest.pipeline import ingest_paths

MOTIF = [0, 2, 4, 5, 2]  # intervals +2 +2 +1 -3


def test_grammar_show_lists_two_files_of_one_name_apart(tmp_path):
    # song.mid in two folders: two pieces, two rows (they were one row, by title)
    import json

    from click.testing import CliRunner

    from query.cli import cli

    files = [_piece(tmp_path / d / "song.mid", [60 + k, 50 + k], 10 + k) for k, d in enumerate("ab")]
    db = tmp_path / "db"
    ingest_paths([str(p) for p in files], db, workers=1)
    with reading(db) as con:
        rid = _rule_with(con, [2, 2, 1, -3])[0]
    r = CliRunner().invoke(cli, ["grammar", "show", str(rid), "--format", "json", "--db", str(db)])
    assert r.exit_code == 0, r.output
    places = json.loads(r.stdout)["places"]
    assert sorted(p["path"] for p in places) == sorted(str(p) for p in files)
    assert [p["occurrences"] for p in places] == [2, 2] and len({p["piece_id"] for p in places}) == 2


def test_reindex_settings_stay_with_the_grammar(tmp_path):
    # later ingests learned with the defaults (past --max-rules), and derived_runs
    # recorded the defaults while the rules recorded the settings
    from click.testing import CliRunner

    from query.cli import cli

    db = tmp_path / "db"
    ingest_paths([str(_piece(tmp_path / f"a{i}.mid", [60 + i, 55], 10 + i)) for i in range(3)], db, workers=1)
    runner = CliRunner()
    r = runner.invoke(cli, ["reindex", "--grammar", "--max-rules", "12", "--min-count", "3", "--db", str(db)])
    assert r.exit_code == 0, r.output
    ingest_paths([str(_piece(tmp_path / f"b{i}.mid", [50 + i, 65, 62], 40 + i)) for i in range(3)], db, workers=1)
    with reading(db) as con:
        assert con.execute("SELECT count(*) FROM rules WHERE rule_id >= ?", [gc.N_TERMINALS]).fetchone()[0] <= 12
        versions = {v for (v,) in con.execute(
            "SELECT DISTINCT stage_version FROM derived_runs WHERE stage = 'grammar' UNION "
            "SELECT DISTINCT stage_version FROM rules WHERE rule_id >= ?", [gc.N_TERMINALS]).fetchall()}
        assert versions == {grammar.version_string(12, 3)}
        assert grammar.stored_settings(con) == (12, 3)
    r = runner.invoke(cli, ["reindex", "--harmony", "--max-rules", "5", "--db", str(db)])
    assert r.exit_code != 0 and "give them with --grammar" in str(r.exception or r.output)


def _piece(path, transpositions, filler_seed):
    """Eighth-note motif at each transposition, separated by distinct filler notes whose
    rhythm (dotted quarter, loud) differs from the motif's (eighths, soft)."""
    rng = np.random.default_rng(filler_seed)
    notes, t = [], 0.0
    for base in transpositions:
        for _ in range(3):
            notes.append((int(rng.integers(40, 90)), t, 1.5, 120))
            t += 1.5
        for p in MOTIF:
            notes.append((base + p, t, 0.5, 70))
            t += 0.5
    notes.append((int(rng.integers(40, 90)), t, 1.5, 120))
    return write_midi(path, [Track(notes, name="melody")])


def _rule_with(con, intervals):
    rows = con.execute(
        "SELECT rule_id FROM rules WHERE intervals = ?::SMALLINT[] AND velocity_buckets = [4,4,4,4,4]::TINYINT[] "
        "ORDER BY rule_id", [intervals]).fetchall()
    return [r[0] for r in rows]


def test_rhythm_and_velocity_buckets():
    assert gc.rhythm_bucket(np.array([0, 0.01, 0.5, 1.0, 0.98, 2, 9])).tolist() == [0, 0, 5, 8, 8, 11, 15]
    assert gc.velocity_bucket(np.array([1, 15, 16, 127])).tolist() == [0, 0, 1, 7]


def test_transposed_repeats_are_one_rule():
    # C D E F D three times, at three transpositions, in one track
    pitch = np.array([b + p for b in (60, 65, 53) for p in MOTIF] + [80])
    term = np.full(len(pitch), 5)
    term[-1] = 17
    seq = gc.initial_sequence(term, pitch, np.array([0, len(pitch)]))
    g, final = gc.build(seq, min_count=2)
    rule, start, first, top = gc.expand(final, g)
    ivs, iv_off, _, _ = gc.rule_contours(g, rule[top])
    contours = [ivs[iv_off[j]:iv_off[j + 1]].tolist() for j in range(len(rule[top]))]
    assert contours[:3] == [[2, 2, 1, -3]] * 3
    assert first[top][:3].tolist() == [60, 65, 53]
    assert len(set(rule[top][:3].tolist())) == 1


def _replay_every_rule(seq, g):
    """Replay trying every rule of every round (reference for the pruned replay)."""
    keys = gc._pair_key(g.left, g.right, g.conn)
    for r in np.unique(g.round):
        ids = np.flatnonzero(g.round == r)
        if len(seq) < 2:
            break
        sk = gc._seq_keys(seq)
        rank = np.full(len(sk), -1, np.int64)
        for j, k in enumerate(ids):  # rank = position in the round
            rank[(sk == keys[k]) & (rank < 0)] = j
        take = gc._greedy(rank)
        seq = gc._apply(seq, take, gc.N_TERMINALS + ids[rank[take]])
    return seq


def test_replay_tries_only_rules_that_can_occur_and_parses_the_same():
    """A grammar learned in several increments on material with 12 terminals, replayed
    on pieces that use only some of them: the same parse as trying every rule."""
    rng = np.random.default_rng(3)
    g = None
    for part in range(4):  # four increments: rounds of several updates
        n = 6000
        term = rng.integers(0, 12, n)
        term[: n // 2] = rng.integers(0, 4, n // 2)
        pitch = np.cumsum(rng.integers(-2, 3, n)) + 60
        seq = gc.replay(gc.initial_sequence(term, pitch, np.array([0, n // 3, n])), g or gc.Grammar())
        g, _ = gc.build(seq, g, max_rules=100_000, min_count=2)
    assert len(np.unique(g.round)) >= 8
    for lo, hi in ((0, 4), (2, 7), (0, 12)):
        n = 3000
        term = rng.integers(lo, hi, n)
        pitch = np.cumsum(rng.integers(-2, 3, n)) + 60
        starts = np.array([0, 1000, n])
        got = gc.replay(gc.initial_sequence(term, pitch, starts), g)
        ref = _replay_every_rule(gc.initial_sequence(term, pitch, starts), g)
        assert len(got) < n and np.array_equal(got.sym, ref.sym) and np.array_equal(got.start, ref.start)


def test_replay_reproduces_build_parse():
    rng = np.random.default_rng(0)
    n = 20000
    term = rng.integers(0, 6, n)
    pitch = np.cumsum(rng.integers(-2, 3, n)) + 60
    starts = np.array([0, 5000, 5001, 12000, n])
    seq = gc.initial_sequence(term, pitch, starts)
    g, final = gc.build(seq, max_rules=3000, min_count=2)
    again = gc.replay(gc.initial_sequence(term, pitch, starts), g)
    assert np.array_equal(again.sym, final.sym) and np.array_equal(again.start, final.start)
    # no symbol spans two tracks
    ln = gc.rule_lengths(g)
    ends = final.start + ln[final.sym]
    assert not np.any((final.start < 5000) & (ends > 5000))
    t2, p2 = gc.decode(final.sym, final.first, g)
    assert np.array_equal(t2, term) and np.array_equal(p2, pitch)


def test_build_respects_limits_and_is_deterministic():
    rng = np.random.default_rng(1)
    term = rng.integers(0, 4, 5000)
    pitch = rng.integers(55, 60, 5000)
    s = np.array([0, 5000])
    g1, f1 = gc.build(gc.initial_sequence(term, pitch, s), max_rules=50, min_count=3)
    g2, f2 = gc.build(gc.initial_sequence(term, pitch, s), max_rules=50, min_count=3)
    assert g1.n_rules == 50
    assert np.array_equal(g1.left, g2.left) and np.array_equal(g1.conn, g2.conn)
    assert np.array_equal(f1.sym, f2.sym)
    rule, *_ = gc.expand(f1, g1)
    # every rule is used at least min_count times in the parse (nested uses included)
    used = np.bincount(rule - gc.N_TERMINALS, minlength=g1.n_rules)
    assert used.min() >= 3


def test_incremental_finds_rule_of_corpus_a_in_transposed_piece_b(tmp_path):
    a = [_piece(tmp_path / "a" / f"a{i}.mid", [60 + i, 55 + 2 * i], 10 + i) for i in range(3)]
    db = tmp_path / "db"
    ingest_paths([str(p) for p in a], db, workers=1)
    with reading(db) as con:
        ids = _rule_with(con, [2, 2, 1, -3])
        assert ids, "the motif was not learned as a rule from corpus A"
        rule_id = ids[0]
        n_rules_a = con.execute("SELECT count(*) FROM rules").fetchall()[0][0]
        a_rules = con.execute("SELECT rule_id, intervals FROM rules ORDER BY rule_id").fetchall()
    b = _piece(tmp_path / "b" / "b.mid", [49], 99)  # once, at a new transposition
    ingest_paths([str(b)], db, workers=1)
    with reading(db) as con:
        pid = con.execute("SELECT piece_id FROM pieces WHERE path LIKE '%b.mid'").fetchall()[0][0]
        occ = con.execute(
            "SELECT first_pitch, onset_beats FROM occurrences WHERE rule_id = ? AND piece_id = ?",
            [rule_id, pid]).fetchall()
        assert occ == [(49, 4.5)]
        # the rules of A are untouched (same ids, same contours); counts include B
        assert con.execute("SELECT rule_id, intervals FROM rules WHERE rule_id < ? ORDER BY rule_id",
                           [a_rules[-1][0] + 1]).fetchall() == a_rules
        assert con.execute("SELECT count FROM rules WHERE rule_id = ?", [rule_id]).fetchall()[0][0] == 7
        assert con.execute("SELECT count(*) FROM rules").fetchall()[0][0] >= n_rules_a
        # counts equal occurrence rows for every learned rule
        bad = con.execute("""SELECT count(*) FROM rules r LEFT JOIN
            (SELECT rule_id, count(*) n FROM occurrences GROUP BY 1) o USING (rule_id)
            WHERE r.rule_id >= 128 AND r.count <> coalesce(o.n, 0)""").fetchall()[0][0]
        assert bad == 0
    # rule transforms searched incrementally equal a full recomputation
    from ingest import grammar_transforms as gt

    q = ("SELECT kind, source_rule_id, target_rule_id, n_notes, round(gain_bits, 6) FROM transforms "
         "WHERE scope = 'rule' ORDER BY ALL")
    con = connect(db, read_only=False)
    incremental = con.execute(q).fetchall()
    con.execute("BEGIN")
    gt.rule_transforms(con, "test")
    assert con.execute(q).fetchall() == incremental
    con.execute("ROLLBACK")
    con.close()


def test_rebuild_is_deterministic_and_matches_one_batch_ingest(tmp_path, pop909_dir):
    songs = sorted(p for p in pop909_dir.iterdir() if p.is_dir())[:4]
    db = tmp_path / "db"
    ingest_paths([str(s / f"{s.name}.mid") for s in songs], db, workers=1)

    def snapshot():
        with reading(db) as con:
            return (con.execute("SELECT rule_id, intervals, rhythm_buckets, velocity_buckets, left_child, "
                                "right_child, count, n_pieces FROM rules ORDER BY rule_id").fetchall(),
                    con.execute("SELECT * FROM occurrences ORDER BY piece_id, track_index, seq_index, rule_id").fetchall())

    first = snapshot()
    assert len(first[0]) > 128 and len(first[1]) > 0
    for _ in range(2):
        con = connect(db, read_only=False)
        con.execute("BEGIN")
        grammar.rebuild(con)
        con.execute("COMMIT")
        con.close()
        assert snapshot() == first


def test_occurrences_point_at_their_notes(small_pop909_db):
    with reading(small_pop909_db) as con:
        rows = con.execute("""
            WITH o AS (SELECT * FROM occurrences ORDER BY piece_id, track_index, seq_index, rule_id
                       LIMIT 3000 OFFSET 1000)
            SELECT o.first_pitch, o.note_index, o.onset_beats, r.intervals, r.length,
                   list(n.pitch ORDER BY n.seq_index), list(n.note_index ORDER BY n.seq_index),
                   list(n.onset_beats ORDER BY n.seq_index)
            FROM o JOIN rules r USING (rule_id)
            JOIN grammar_notes n ON n.piece_id = o.piece_id AND n.track_index = o.track_index
                 AND n.seq_index BETWEEN o.seq_index AND o.seq_index + r.length - 1
            GROUP BY ALL""").fetchall()
    assert len(rows) == 3000
    for first, note_index, onset, intervals, length, pitches, idx, onsets in rows:
        assert len(pitches) == length
        assert pitches[0] == first and idx[0] == note_index and onsets[0] == onset
        assert np.diff(pitches).tolist() == intervals


def test_lossless_on_all_pop909_dev_files(pop909_dir):
    parsed = []
    for i, path in enumerate(sorted(pop909_dir.glob("*/**/*.mid"))):
        parsed.append(parse_midi(path.read_bytes(), piece_id=f"{i:05d}", path=str(path)))
    notes = grammar.notes_from_tables(parsed)
    assert notes["n"] > 1_000_000
    g, seq, term = grammar.track_parse(notes, None, learn=True)
    tempo = [(i, t) for i, p in enumerate(parsed) for t in zip(p["tempo_changes"].column("time_ticks").to_pylist(),
                                                                  p["tempo_changes"].column("us_per_beat").to_pylist())]
    pieces = {"piece_ids": [f"{i:05d}" for i in range(len(parsed))],
              "ticks_per_beat": np.array([int(p["pieces"]["ticks_per_beat"]) for p in parsed]),
              "tempo_piece": np.array([t[0] for t in tempo]), "tempo_ticks": np.array([t[1][0] for t in tempo]),
              "tempo_us": np.array([t[1][1] for t in tempo])}
    streams = grammar_codec.encode(notes, seq, g, pieces)
    back = grammar_codec.decode(streams)
    for name in ("track_index", "note_index", "onset_ticks", "duration_ticks", "pitch", "velocity", "channel"):
        assert np.array_equal(back[name], notes[name].astype(np.int64)), name
    assert np.array_equal(back["tempo_us"], pieces["tempo_us"])


def test_compression_report_is_lossless_and_beats_xz(small_pop909_db):
    from query.grammar_stats import compression_report

    r = compression_report(small_pop909_db)
    assert r["lossless"] and r["mismatched_notes"] == 0
    assert r["total_bytes"] == r["grammar_bytes"] + r["sequences_bytes"] + r["residuals_bytes"]
    with reading(small_pop909_db) as con:
        paths = [p for (p,) in con.execute("SELECT path FROM pieces").fetchall()]
    xz = sum(len(lzma.compress(open(p, "rb").read(), preset=9)) for p in paths)
    assert r["xz9_per_file_bytes"] == xz
    assert r["total_bytes"] < xz


def test_varints_roundtrip():
    x = np.array([0, -1, 1, 63, -64, 64, 2**40, -(2**40), 127, -128])
    assert np.array_equal(grammar_codec.varint_decode(grammar_codec.varint_encode(x), len(x)), x)


def test_compression_without_grammar_says_what_to_do(small_pop909_db, tmp_path):
    from atlas_db.errors import BadInputError
    from query.grammar_stats import compression_report

    db = tmp_path / "db"
    shutil.copytree(small_pop909_db, db)
    con = connect(db, read_only=False)
    con.execute("DELETE FROM grammar_sequences WHERE track_index = 1")
    con.close()
    with pytest.raises(BadInputError, match="reindex --grammar"):
        compression_report(db, xz=False)


def test_transforms_inversion_doubling_and_choices(tmp_path):
    rng = np.random.default_rng(5)
    notes, t = [], 0.0
    for base, sign in [(60, 1), (64, 1), (57, 1), (72, -1), (69, -1), (75, -1)]:
        for _ in range(3):
            notes.append((int(rng.integers(40, 90)), t, 1.5, 120))
            t += 1.5
        for p in MOTIF:
            notes.append((base + sign * p, t, 0.5, 70))
            t += 0.5
    path = write_midi(tmp_path / "inv.mid", [Track(notes, name="melody")])
    line = [(int(p), i * 0.5, 0.5, 80) for i, p in enumerate(rng.integers(50, 70, 40))]
    doubled = [(p + 12, on, d, v) for p, on, d, v in line]
    path2 = write_midi(tmp_path / "dbl.mid", [Track(line, name="bass"), Track(doubled, name="double", channel=1)])
    db = tmp_path / "db"
    ingest_paths([str(path), str(path2)], db, workers=1)
    with reading(db) as con:
        up = _rule_with(con, [2, 2, 1, -3])
        down = _rule_with(con, [-2, -2, -1, 3])
        assert up and down
        kinds = con.execute(
            "SELECT kind FROM transforms WHERE scope = 'rule' AND source_rule_id IN (SELECT unnest(?::BIGINT[])) "
            "AND target_rule_id IN (SELECT unnest(?::BIGINT[])) AND gain_bits > 0", [up, down]).fetchall()
        assert ("I",) in kinds
        dbl = con.execute("SELECT source_track, target_track, interval, n_notes FROM transforms "
                          "WHERE scope = 'track' AND kind = 'doubling'").fetchall()
        assert dbl == [(1, 2, 12, len(line))]
        choices = dict(con.execute("SELECT choice, chosen FROM grammar_choices").fetchall())
        assert set(choices) == {"interval_alphabet", "octave_equivalence"}


def test_cli_reindex_stats_compression_and_export(small_pop909_db, tmp_path, capsys):
    import json

    from click.testing import CliRunner

    from query.cli import cli

    db = tmp_path / "db"
    shutil.copytree(small_pop909_db, db)
    with reading(db) as con:
        before = con.execute("SELECT rule_id, intervals, count FROM rules ORDER BY rule_id").fetchall()
    runner = CliRunner()
    r = runner.invoke(cli, ["reindex", "--grammar", "--db", str(db)])
    assert r.exit_code == 0, r.output
    with reading(db) as con:
        assert con.execute("SELECT rule_id, intervals, count FROM rules ORDER BY rule_id").fetchall() == before
    r = runner.invoke(cli, ["stats", "--compression", "--format", "json", "--db", str(db)])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["lossless"] and report["total_bytes"] < report["xz9_per_file_bytes"]
    r = runner.invoke(cli, ["grammar", "export", str(tmp_path / "out"), "--db", str(db)])
    assert r.exit_code == 0, r.output
    import pyarrow.parquet as pq

    rules = pq.read_table(tmp_path / "out" / "rules.parquet")
    assert rules.num_rows == len(before) and "intervals" in rules.column_names
    assert pq.read_table(tmp_path / "out" / "occurrences.parquet").num_rows > 0
    r = runner.invoke(cli, ["grammar", "export", str(tmp_path / "js"), "--format", "json", "--table", "transforms",
                            "--db", str(db)])
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "js" / "transforms.json").read_text())
    assert rows and {"kind", "gain_bits", "source_rule_id"} <= set(rows[0])
    rid = before[-1][0]
    r = runner.invoke(cli, ["grammar", "show", str(rid), "--format", "json", "--db", str(db)])
    assert r.exit_code == 0, r.output
    shown = json.loads(r.stdout)
    assert shown["rule"]["rule_id"] == rid and shown["places"]
    from query.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["grammar", "show", "999999999", "--db", str(db)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("atlas: error:") and "no such rule" in err and err.count("\n") == 1


def test_export_to_missing_parent_is_a_clear_error(small_pop909_db, tmp_path):
    from atlas_db.errors import BadInputError
    from query.grammar_export import export_grammar

    with pytest.raises(BadInputError, match="parent folder .* does not exist"):
        export_grammar(small_pop909_db, tmp_path / "no" / "such" / "dir")


def test_update_with_pieces_without_notes_is_a_no_op(small_pop909_db, tmp_path):
    db = tmp_path / "db"
    shutil.copytree(small_pop909_db, db)
    con = connect(db, read_only=False)
    n = con.execute("SELECT count(*) FROM occurrences").fetchall()[0][0]
    con.execute("BEGIN")
    grammar.update(con, ["0000000000000000"])
    con.execute("COMMIT")
    assert con.execute("SELECT count(*) FROM occurrences").fetchall()[0][0] == n
    con.close()


def _rule_transforms_by_sql(con, version):
    """The rule-scope transforms as plain SQL self-joins of ``rules`` (the first
    implementation, kept as an independent reference for the hashed search and for the
    gains the view ``transforms`` computes): every row is recomputed, with ids in the same
    order as a full recomputation, into the temporary table ``_ref_t`` (the columns of
    ``transforms``)."""
    from ingest.grammar_transforms import MIN_TRANSFORM_LENGTH, _double_list_sql

    con.execute("CREATE OR REPLACE TEMP TABLE _ref_t AS SELECT * FROM transforms WHERE false")
    pointer = math.log2(max(con.execute("SELECT count(*) FROM rules").fetchall()[0][0], 2)) + math.log2(6)
    con.execute(f"""CREATE OR REPLACE TEMP TABLE _ref_r AS SELECT rule_id, intervals, length, count,
                    rhythm_buckets[1:length - 1] AS inner_rhythm FROM rules WHERE length >= {MIN_TRANSFORM_LENGTH}""")
    dbl = _double_list_sql()
    matches = {
        "I": "b.intervals = list_transform(a.intervals, lambda x: -x) AND b.inner_rhythm = a.inner_rhythm",
        "R": "b.intervals = list_reverse(list_transform(a.intervals, lambda x: -x)) "
             "AND b.inner_rhythm = list_reverse(a.inner_rhythm)",
        "RI": "b.intervals = list_reverse(a.intervals) AND b.inner_rhythm = list_reverse(a.inner_rhythm)",
        "augmentation": f"b.intervals = a.intervals AND b.inner_rhythm = "
                        f"list_transform(a.inner_rhythm, lambda x: {dbl}[x + 1]) AND list_max(a.inner_rhythm) > 0",
        "octave": "b.intervals <> a.intervals AND b.inner_rhythm = a.inner_rhythm AND "
                  "list_transform(b.intervals, lambda x: ((x % 12) + 12) % 12) = "
                  "list_transform(a.intervals, lambda x: ((x % 12) + 12) % 12)",
    }
    gain = f"8 * (b.length - 1) + 7 * b.length - {pointer}"
    top = "SELECT coalesce(max(transform_id), 0) FROM (SELECT transform_id FROM transforms WHERE scope = 'track' " \
          "UNION ALL SELECT transform_id FROM _ref_t)"
    for kind, cond in matches.items():
        order = "" if kind == "augmentation" else "AND a.rule_id < b.rule_id"
        ratio = "2.0" if kind == "augmentation" else "NULL"
        base = con.execute(top).fetchall()[0][0]
        con.execute(f"""
            INSERT INTO _ref_t
            SELECT {base} + row_number() OVER (ORDER BY a.rule_id, b.rule_id), 'rule', '{kind}', a.rule_id,
                   b.rule_id, NULL, NULL, NULL, NULL, {ratio}, b.count * b.length, {gain}, '{version}'
            FROM _ref_r a JOIN _ref_r b ON a.length = b.length AND {cond} {order} WHERE {gain} > 0""")
        if kind == "augmentation":
            nxt = con.execute(top).fetchall()[0][0]
            con.execute(f"""
                INSERT INTO _ref_t
                SELECT {nxt} + row_number() OVER (ORDER BY t.target_rule_id, t.source_rule_id), 'rule', 'diminution',
                       t.target_rule_id, t.source_rule_id, NULL, NULL, NULL, NULL, 0.5, r.count * r.length,
                       t.gain_bits, t.stage_version
                FROM _ref_t t JOIN rules r ON r.rule_id = t.source_rule_id
                WHERE t.kind = 'augmentation' AND t.transform_id > {base}""")


def test_hashed_rule_transforms_equal_the_sql_joins(tmp_path, pop909_dir, monkeypatch):
    """Rule transforms found by contour hashes, built in two ingests (the second one
    incremental), equal plain SQL joins over every rule; so do counts and choices."""
    from ingest import grammar_transforms as gt

    songs = sorted(p for p in pop909_dir.iterdir() if p.is_dir())[:6]
    db = tmp_path / "db"
    ingest_paths([str(s / f"{s.name}.mid") for s in songs[:5]], db, workers=1)
    ingest_paths([str(songs[5] / f"{songs[5].name}.mid")], db, workers=1)
    rows = ("SELECT kind, source_rule_id, target_rule_id, rhythm_ratio, n_notes, gain_bits FROM transforms "
            "WHERE scope = 'rule' ORDER BY ALL")
    con = connect(db, read_only=False)
    try:
        incremental = con.execute(rows).fetchall()
        kinds = {r[0] for r in incremental}
        assert {"I", "R", "RI", "augmentation", "diminution", "octave"} <= kinds, kinds
        con.execute("BEGIN")
        _rule_transforms_by_sql(con, "ref")
        reference = con.execute(rows.replace("FROM transforms", "FROM _ref_t")).fetchall()
        assert incremental == reference
        full = ("SELECT transform_id, kind, source_rule_id, target_rule_id, rhythm_ratio, n_notes, gain_bits "
                "FROM transforms WHERE scope = 'rule' ORDER BY transform_id")
        reference_full = con.execute(full.replace("FROM transforms", "FROM _ref_t")).fetchall()
        for join_max in (10**9, 0):  # counts joined per row / read once for all rules
            monkeypatch.setattr(gt, "JOIN_MAX_ROWS", join_max)
            gt.rule_transforms(con, "ref")  # a full recomputation gives the SQL's rows and ids
            assert con.execute(full).fetchall() == reference_full
        _assert_running_counts_exact(con)
        # re-encoding a piece (forget, then update) keeps them exact
        pid = con.execute("SELECT min(piece_id) FROM pieces").fetchall()[0][0]
        grammar.forget(con, [pid])
        grammar.update(con, [pid])
        _assert_running_counts_exact(con)
        con.execute("ROLLBACK")
    finally:
        con.close()


TRANSFORMS_BY_ID = "SELECT * FROM transforms ORDER BY transform_id"


def _db_and_fresh(tmp_path, files) -> tuple:
    """Two databases of the same files: one to take back to an older layout, and one as
    made now to compare it with after the upgrade."""
    db, fresh = tmp_path / "db", tmp_path / "fresh"
    for d in (db, fresh):
        ingest_paths(files, d, workers=1)
    return db, fresh


def test_transforms_table_of_an_older_database_becomes_the_view(tmp_path, pop909_dir):
    """A database made when ``transforms`` was a table (every rule-scope row storing its
    gain) upgrades in place to the view over ``transform_rows`` and ``transform_gains``
    with the same rows, columns and values; a later add gives what it gives in a database
    made with the view."""
    songs = sorted(p for p in pop909_dir.iterdir() if p.is_dir())[:4]
    files = [str(s / f"{s.name}.mid") for s in songs]
    line = [(int(p), i * 0.5, 0.5, 80) for i, p in enumerate(np.random.default_rng(3).integers(50, 70, 40))]
    doubled = [(p + 12, on, d, v) for p, on, d, v in line]  # a track-scope transform
    files.insert(0, str(write_midi(tmp_path / "dbl.mid", [Track(line, name="bass"),
                                                         Track(doubled, name="double", channel=1)])))
    db, fresh = _db_and_fresh(tmp_path, files[:4])
    everything = TRANSFORMS_BY_ID
    con = connect(db, read_only=False)
    try:
        before = con.execute(everything).fetchall()
        columns = con.execute("DESCRIBE transforms").fetchall()
        assert any(r[1] == "rule" for r in before) and any(r[1] == "track" for r in before)
        # the layout before 0105_grammar_transform_gains, its rows in an order of their own
        con.execute("CREATE TABLE old_rows AS SELECT * FROM transforms ORDER BY kind DESC, transform_id")
        con.execute("DROP VIEW transforms")
        con.execute("DROP TABLE transform_rows")
        con.execute("DROP TABLE transform_gains")
        con.execute("ALTER TABLE old_rows RENAME TO transforms")
        con.execute("DELETE FROM schema_migrations WHERE name = '0105_grammar_transform_gains'")
        stored = con.execute("SELECT transform_id FROM transforms").fetchall()
    finally:
        con.close()
    con = connect(db, read_only=False)  # applies the migration
    try:
        assert con.execute("SELECT table_type FROM information_schema.tables WHERE table_name = 'transforms'"
                           ).fetchall() == [("VIEW",)]
        assert con.execute("DESCRIBE transforms").fetchall() == columns
        assert con.execute(everything).fetchall() == before
        assert con.execute("SELECT transform_id FROM transform_rows").fetchall() == stored
        assert con.execute("SELECT count(*) FROM transform_rows WHERE (scope = 'rule') = (gain_bits IS NOT NULL) "
                           "OR (scope = 'rule') <> (target_bits IS NOT NULL)").fetchall() == [(0,)]
    finally:
        con.close()
    for d in (db, fresh):
        ingest_paths(files[4:], d, workers=1)
    with reading(db) as a, reading(fresh) as b:
        assert a.execute(everything).fetchall() == b.execute(everything).fetchall()
        # the add learned rules, so every rule-scope gain changed (the pointer term)
        after = dict(a.execute("SELECT transform_id, gain_bits FROM transforms WHERE scope = 'rule'").fetchall())
        assert after and all(after[r[0]] < r[-2] for r in before if r[1] == "rule")


def _view_0106() -> str:
    """``transforms`` as 0106_grammar_transforms_view_list made it: n_notes as stored."""
    from atlas_db.schema_grammar import TRANSFORMS_VIEW

    head, tail = TRANSFORMS_VIEW.split("coalesce(t.n_notes,", 1)
    return head + "t.n_notes,\n           coalesce(t.gain_bits," + tail.split("coalesce(t.gain_bits,", 1)[1]


def test_transform_notes_of_an_older_database_move_to_the_view(tmp_path, pop909_dir):
    """A database whose rule-scope ``transform_rows`` store ``n_notes`` (before
    0107_grammar_transform_notes) upgrades in place: the stored values are dropped and
    ``transforms`` shows the same rows, in the same order; a later add (whose rules'
    counts change) gives what it gives in a database made with the view."""
    songs = sorted(p for p in pop909_dir.iterdir() if p.is_dir())[:8]
    files = [str(s / f"{s.name}.mid") for s in songs]
    db, fresh = _db_and_fresh(tmp_path, files[:4])
    everything = TRANSFORMS_BY_ID
    con = connect(db, read_only=False)
    try:
        before = con.execute(everything).fetchall()
        in_order = con.execute("SELECT * FROM transforms").fetchall()
        columns = con.execute("DESCRIBE transforms").fetchall()
        assert any(r[1] == "rule" for r in before)
        # the layout before 0107: every rule-scope row stores count x length of its target
        con.execute("""UPDATE transform_rows SET n_notes = r.count * r.length FROM rules r
                       WHERE transform_rows.scope = 'rule' AND r.rule_id = transform_rows.target_rule_id""")
        con.execute(_view_0106())
        con.execute("DELETE FROM schema_migrations WHERE name = '0107_grammar_transform_notes'")
        assert con.execute(everything).fetchall() == before
        assert con.execute("SELECT count(*) FROM transform_rows WHERE n_notes IS NULL").fetchall() == [(0,)]
    finally:
        con.close()
    con = connect(db, read_only=False)  # applies the migration
    try:
        assert con.execute("DESCRIBE transforms").fetchall() == columns
        assert con.execute("SELECT * FROM transforms").fetchall() == in_order
        assert con.execute("SELECT count(*) FROM transform_rows WHERE (scope = 'rule') <> (n_notes IS NULL)"
                           ).fetchall() == [(0,)]
    finally:
        con.close()
    for d in (db, fresh):
        ingest_paths(files[4:], d, workers=1)
    with reading(db) as a, reading(fresh) as b:
        after = a.execute(everything).fetchall()
        assert after == b.execute(everything).fetchall()
        assert a.execute("SELECT * FROM transform_rows ORDER BY transform_id").fetchall() == b.execute(
            "SELECT * FROM transform_rows ORDER BY transform_id").fetchall()
        # the add changed counts of rules that are targets: their rows' n_notes followed
        old = {r[0]: r[10] for r in before if r[1] == "rule"}
        assert any(old[r[0]] != r[10] for r in after if r[0] in old)
        assert a.execute("""SELECT count(*) FROM transforms t JOIN rules r ON r.rule_id = t.target_rule_id
                            WHERE t.scope = 'rule' AND t.n_notes <> r.count * r.length""").fetchall() == [(0,)]


def _assert_running_counts_exact(con):
    """Counts kept by adding (and subtracting) each update's share equal a recount."""
    from atlas_db.schema_grammar import STORED_META_SOURCE, meta_grams_cte

    bad = con.execute("""SELECT count(*) FROM rules r LEFT JOIN
        (SELECT rule_id, count(*) n, count(DISTINCT piece_id) np, count(*) FILTER (top_level) nt
         FROM occurrences GROUP BY 1) o USING (rule_id)
        WHERE r.rule_id >= 128 AND (r.count, r.n_pieces, r.n_top) <> (coalesce(o.n, 0), coalesce(o.np, 0),
                                                                        coalesce(o.nt, 0))""").fetchall()[0][0]
    assert bad == 0
    hist = con.execute("SELECT interval_semitones, n_intervals FROM grammar_interval_counts ORDER BY 1").fetchall()
    assert hist and hist == con.execute("""
        SELECT iv, count(*) FROM (SELECT pitch - lag(pitch) OVER (PARTITION BY piece_id, track_index
                                  ORDER BY onset_ticks, pitch, note_index) AS iv FROM notes QUALIFY iv IS NOT NULL)
        GROUP BY iv ORDER BY 1""").fetchall()
    cte = meta_grams_cte(STORED_META_SOURCE)
    grams = con.execute("SELECT kinds, count, n_pieces FROM meta_pattern_counts ORDER BY ALL").fetchall()
    assert grams and grams == con.execute(
        f"WITH {cte} SELECT kinds, count(*), count(DISTINCT piece_id) FROM grams GROUP BY kinds ORDER BY ALL").fetchall()
    assert con.execute("SELECT kind, count FROM meta_step_counts ORDER BY ALL").fetchall() == con.execute(
        f"WITH {cte} SELECT t, count(*) FROM s GROUP BY t ORDER BY ALL").fetchall()


def test_compression_report_with_files_moved_gives_no_false_ratio(tmp_path, monkeypatch):
    from query.grammar_stats import compression_report, compression_table

    songs = tmp_path / "songs"
    songs.mkdir()
    for i in range(3):
        _piece(songs / f"{i}.mid", [60 + i, 65], filler_seed=i)
    monkeypatch.chdir(tmp_path)
    ingest_paths(["songs"], tmp_path / "db")  # a relative path: stored absolute
    monkeypatch.chdir(songs)  # elsewhere: the files are still found, and the pieces by any spelling of their path
    from query.export import resolve_piece

    with reading(tmp_path / "db") as con:
        pid = con.execute("SELECT piece_id FROM pieces WHERE path = ?", [str(songs / "1.mid")]).fetchone()[0]
        assert resolve_piece(con, str(songs / "1.mid")) == pid and resolve_piece(con, "1.mid") == pid
    r = compression_report(tmp_path / "db")
    assert r["xz_files_missing"] == 0 and r["ratio_vs_xz9_per_file"] > 0
    (songs / "0.mid").rename(tmp_path / "moved.mid")  # one gone: its xz bytes are not there to compare
    r = compression_report(tmp_path / "db")
    assert r["xz_files_missing"] == 1 and r["ratio_vs_xz9_per_file"] is None and r["ratio_vs_xz9_solid"] is None
    notes = dict(zip(*compression_table(r).select(["part", "note"]).to_pydict().values()))
    assert notes["xz -9 of each .mid file"] == "the 2 files found only, no ratio"
    shutil.rmtree(songs)  # all gone: no xz figures at all, not zeros
    r = compression_report(tmp_path / "db")
    assert r["xz_files_missing"] == 3 and "xz9_per_file_bytes" not in r
    notes = dict(zip(*compression_table(r).select(["part", "note"]).to_pydict().values()))
    assert "xz -9 of each .mid file" not in notes and notes["files not found for xz"].endswith("; no xz figures")
