"""Grammar stage: each fast path gives exactly what the plain formulation it replaced gave
(the SQL ORDER BY, the SQL self-join, a sort of every occurrence)."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
from midi_fixtures import Track, write_midi

from atlas_db.connection import connect, reading
from ingest import grammar, grammar_core as gc, grammar_transforms as gt
from ingest.pipeline import ingest_paths

# grammar order as a query: what ``load_notes`` returned before it sorted in NumPy
_ORDERED_NOTES = """
    SELECT n.piece_id, n.track_index, n.note_index, n.onset_ticks, n.duration_ticks, n.onset_beats,
           n.onset_s, n.pitch, n.velocity, n.channel, coalesce(p.ticks_per_beat, 480) AS ticks_per_beat
    FROM {notes} n JOIN pieces p USING (piece_id) {where}
    ORDER BY n.piece_id, n.track_index, n.onset_ticks, n.pitch, n.note_index"""

# the track-scope transforms as one query: what ``track_transforms`` ran before, but for
# ``mode(pb - pa)``, whose ties went to whichever difference reached DuckDB's aggregate
# first (it varies with the threads); here, as in ``_track_pairs``, to the earliest onset
_TRACK_PAIRS_SQL = """
    WITH v AS (SELECT piece_id, track_index, onset_ticks, max(pitch) AS pitch FROM notes GROUP BY ALL),
    sizes AS (SELECT piece_id, track_index, count(*) AS n FROM v GROUP BY ALL),
    m AS (SELECT a.piece_id, a.track_index AS ta, b.track_index AS tb, a.onset_ticks,
                 a.pitch AS pa, b.pitch AS pb
          FROM v a JOIN v b ON a.piece_id = b.piece_id AND a.onset_ticks = b.onset_ticks
                            AND a.track_index < b.track_index),
    steps AS (SELECT *, pa - lag(pa) OVER w AS da, pb - lag(pb) OVER w AS db
              FROM m WINDOW w AS (PARTITION BY piece_id, ta, tb ORDER BY onset_ticks)),
    diffs AS (SELECT piece_id, ta, tb, pb - pa AS d, count(*) AS c, min(onset_ticks) AS first_onset FROM m GROUP BY ALL),
    modes AS (SELECT piece_id, ta, tb, first(d ORDER BY c DESC, first_onset) AS diff FROM diffs GROUP BY ALL),
    agg AS (SELECT piece_id, ta, tb, count(*) AS shared, any_value(modes.diff) AS diff,
                   count(*) FILTER (da IS NOT NULL) AS n_steps,
                   count(*) FILTER (da IS NOT NULL AND sign(da) = sign(db) AND da <> 0
                                    AND abs(da - db) <= 1) AS parallel_steps
            FROM steps JOIN modes USING (piece_id, ta, tb) GROUP BY ALL)
    SELECT agg.piece_id, ta, tb, shared, diff, n_steps, parallel_steps,
           (SELECT count(*) FROM steps s WHERE s.piece_id = agg.piece_id AND s.ta = agg.ta
              AND s.tb = agg.tb AND s.pb - s.pa = agg.diff) AS n_diff,
           least(sa.n, sb.n) AS smaller
    FROM agg JOIN sizes sa ON sa.piece_id = agg.piece_id AND sa.track_index = ta
             JOIN sizes sb ON sb.piece_id = agg.piece_id AND sb.track_index = tb
    ORDER BY agg.piece_id, ta, tb"""


def _assert_same_notes(got: dict, want: dict):
    assert got.keys() == want.keys()
    for k, v in want.items():
        if isinstance(v, np.ndarray):
            assert got[k].dtype == v.dtype and np.array_equal(got[k], v), k
        else:
            assert got[k] == v, k


def test_load_notes_equals_the_order_by_query(small_pop909_db):
    with reading(small_pop909_db) as con:
        ids = [r[0] for r in con.execute("SELECT piece_id FROM pieces ORDER BY piece_id").fetchall()]
        some = ids[::3]
        want_all = grammar.notes_dict(con.sql(_ORDERED_NOTES.format(notes="notes", where="")).to_arrow_table())
        con.register("_ids", pa.table({"piece_id": some}))
        want_some = grammar.notes_dict(con.sql(_ORDERED_NOTES.format(
            notes="notes", where="WHERE n.piece_id IN (SELECT piece_id FROM _ids)")).to_arrow_table())
        assert want_all["n"] > 50_000 and 0 < want_some["n"] < want_all["n"]
        _assert_same_notes(grammar.load_notes(con, None), want_all)
        _assert_same_notes(grammar.load_notes(con, some), want_some)
        # from a relation holding the notes (as an ingest hands them over), shuffled
        rel = con.sql("SELECT * FROM notes WHERE piece_id IN (SELECT piece_id FROM _ids)").to_arrow_table()
        con.register("_shuffled", rel.take(np.random.default_rng(1).permutation(rel.num_rows)))
        _assert_same_notes(grammar.load_notes(con, some, notes="_shuffled"), want_some)


def test_grammar_order_packs_keys_or_lexsorts():
    rng = np.random.default_rng(0)
    n = 5000
    keys = [rng.integers(0, 7, n), rng.integers(0, 3, n), rng.integers(0, 10**6, n), rng.integers(0, 128, n),
            rng.permutation(n)]
    want = np.lexsort(keys[::-1])
    assert np.array_equal(grammar._grammar_order(*keys), want)  # packed into one int64
    wide = [keys[0], keys[1], keys[2] * 10**9, keys[3], keys[4]]  # 70 bits: lexsort
    assert np.array_equal(grammar._grammar_order(*wide), np.lexsort(wide[::-1]))
    assert grammar._grammar_order(*[k[want] for k in keys]) is None  # already in order


def test_packed_order_is_the_lexsort():
    """ingest.packed_keys (grammar, patterns and vectors sort their notes with it): the
    permutation of np.lexsort, stable, with negative keys, constant keys, too wide keys
    (lexsort itself) and no rows."""
    from ingest.packed_keys import packed_keys, packed_order

    rng = np.random.default_rng(1)
    n = 3000
    keys = [rng.integers(-3, 4, n), np.full(n, 7), -rng.integers(0, 128, n), rng.integers(0, 5, n)]
    assert np.array_equal(packed_order(*keys), np.lexsort(keys[::-1]))
    wide = [keys[0] * 10**12, keys[2] * 10**9, keys[3]]
    assert packed_keys(*wide) is None
    assert np.array_equal(packed_order(*wide), np.lexsort(wide[::-1]))
    assert packed_order(np.zeros(0, np.int64), np.zeros(0, np.int64)).size == 0


def test_track_transforms_equal_the_sql_self_join(small_pop909_db, tmp_path):
    db = tmp_path / "db"
    shutil.copytree(small_pop909_db, db)
    con = connect(db, read_only=False)
    try:
        ids = [r[0] for r in con.execute("SELECT piece_id FROM pieces ORDER BY piece_id").fetchall()]
        notes = grammar.load_notes(con, ids)
        ta, tb, shared, diff, n_steps, par, n_diff, smaller = gt._track_pairs(notes)
        got = [(notes["track_piece"][a], int(notes["track_track"][a]), int(notes["track_track"][b]), *rest)
               for a, b, *rest in zip(ta.tolist(), tb.tolist(), shared.tolist(), diff.tolist(), n_steps.tolist(),
                                      par.tolist(), n_diff.tolist(), smaller.tolist())]
        want = con.execute(_TRACK_PAIRS_SQL).fetchall()
        assert len(want) > 20
        assert got == [tuple(r) for r in want]
        # the rows stored at ingest, and recomputed from the notes table
        rows = "SELECT * EXCLUDE (transform_id) FROM transform_rows WHERE scope = 'track' ORDER BY transform_id"
        stored = con.execute(rows).fetchall()
        assert stored
        con.execute("BEGIN")
        gt.track_transforms(con, None, grammar.VERSION)
        assert con.execute(rows).fetchall() == stored
        con.execute("ROLLBACK")
    finally:
        con.close()


def test_track_pairs_counts_and_tie_rule(tmp_path):
    """Two tracks sharing 8 onsets: a melody and a line a fifth or an octave above it,
    four of each, the octave first: the tie goes to the difference met first."""
    melody = [(60 + (i % 4), i * 0.5, 0.5, 80) for i in range(10)]
    upper = [(p + (12 if i % 2 == 0 else 7), on, d, v) for i, (p, on, d, v) in enumerate(melody[:8])]
    path = write_midi(tmp_path / "tie.mid", [Track(melody, name="melody"), Track(upper, name="upper", channel=1)])
    db = tmp_path / "db"
    ingest_paths([str(path)], db, workers=1)
    with reading(db) as con:
        notes = grammar.load_notes(con, None)
    ta, tb, shared, diff, n_steps, par, n_diff, smaller = gt._track_pairs(notes)
    assert ta.tolist() == [0] and tb.tolist() == [1]
    assert (shared[0], diff[0], n_steps[0], n_diff[0], smaller[0]) == (8, 12, 7, 4, 8)
    # steps of the melody: +1 +1 +1 -3 ...; of the upper line: -4 +6 -4 ... (never within a semitone)
    assert par[0] == 0


def test_expand_by_rule_is_expand_in_rule_order(small_pop909_db):
    with reading(small_pop909_db) as con:
        notes = grammar.load_notes(con, None)
    g, seq, _ = grammar.track_parse(notes, None, learn=True)
    rule, start, first, top = gc.expand(seq, g)
    o = np.lexsort((start, rule))
    got = gc.expand_by_rule(seq, g)
    assert len(rule) > 50_000 and top.any() and not top.all()
    for a, b in zip((rule[o], start[o], first[o], top[o]), got):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_rule_contours_of_a_range_equal_the_gathered_ones(small_pop909_db):
    """A build's rules (consecutive ids) take their contours as one slice; the same rules
    asked for in reverse order are gathered one by one."""
    with reading(small_pop909_db) as con:
        g = grammar.load_grammar(con)
    ids = np.arange(gc.N_TERMINALS, gc.N_TERMINALS + g.n_rules)
    ivs, iv_off, terms, t_off = gc.rule_contours(g, ids)
    r_ivs, r_iv_off, r_terms, r_t_off = gc.rule_contours(g, ids[::-1])
    assert g.n_rules > 1000 and len(terms) == len(r_terms)
    for j in range(len(ids)):
        k = len(ids) - 1 - j
        assert np.array_equal(ivs[iv_off[j]:iv_off[j + 1]], r_ivs[r_iv_off[k]:r_iv_off[k + 1]])
        assert np.array_equal(terms[t_off[j]:t_off[j + 1]], r_terms[r_t_off[k]:r_t_off[k + 1]])
