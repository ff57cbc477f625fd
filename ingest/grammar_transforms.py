"""Transforms on top of the grammar, each with the description length it saves.

Rule scope (corpus-wide, rules of at least ``MIN_TRANSFORM_LENGTH`` notes; contours are
compared on intervals and on the *inner* rhythm buckets, i.e. all but the last note's,
which depends on what follows the rule):

- ``I`` inversion: intervals negated;
- ``R`` retrograde: the pitches in reverse order (intervals reversed and negated, inner
  rhythm reversed);
- ``RI`` retrograde inversion: intervals reversed, inner rhythm reversed;
- ``augmentation`` / ``diminution``: same intervals, every inner inter-onset interval
  doubled / halved (``rhythm_ratio`` 2.0 / 0.5);
- ``octave``: intervals equal modulo 12 but not equal (a note displaced by octaves).

The gain of describing the target rule as a transform of the source: spelling the target
out costs ``8 (length - 1) + 7 length`` bits (8 per interval, 7 per terminal); naming the
source and the transform costs ``log2(number of rules) + log2(6)`` bits. Only positive
gains are kept.

Track scope (per piece, pairs of tracks, one voice per track: the highest note at each
onset; ``n_notes`` = onsets shared by both tracks):

- ``doubling``: the most common pitch difference at shared onsets covers at least half of
  the smaller track's onsets (``interval`` = that difference: 12 = an octave up);
- ``parallel``: not a doubling, and at least half of the steps between successive shared
  onsets move both voices in the same direction by sizes within one semitone;
- ``rhythmic_unison``: neither, and at least 80 % of the smaller track's onsets are shared.

Gain: a doubled note's pitch (7 bits) and rhythm (4 bits) come from the other track, a
parallel step's rhythm (4 bits) and direction (1 bit), a unison onset's rhythm (4 bits);
minus 32 bits to state the relation.

Corpus choices (``grammar_choices``), from the histogram of intervals between successive
notes of every track (chords included): ``interval_alphabet`` compares coding each interval
directly (chromatic) with coding it as a diatonic step count plus an alteration, each
factor with its own entropy code; ``octave_equivalence`` compares direct coding with
pitch-class interval plus octave count. Cost = empirical entropy x intervals + half
log2(intervals) bits per free parameter (MDL).

Meta-patterns: per track, successive occurrences of the same rule (at least
``MIN_TRANSFORM_LENGTH`` notes) are related by a transposition ``T+n``; sequences of two or
three consecutive such steps that recur (at least 3 times, in at least 2 pieces) are
stored in ``meta_patterns``.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

__all__ = ["MIN_TRANSFORM_LENGTH", "rule_transforms", "track_transforms", "interval_choices",
           "meta_patterns", "refresh_corpus_level"]

MIN_TRANSFORM_LENGTH = 4
# bucket index of twice each nominal IOI (None where the doubled value is no bucket)
_DOUBLE = [0, 3, 4, 5, 6, 8, 9, 10, 11, None, 12, 13, 14, 15, None, None]


def _double_list_sql() -> str:
    return "[" + ", ".join("NULL" if v is None else str(v) for v in _DOUBLE) + "]"


def rule_transforms(con, version: str, *, new_from: int | None = None) -> int:
    """Rule-scope transforms; returns the rule-scope rows now stored.

    ``new_from``: rules with ``rule_id >= new_from`` are new since the last call; only
    pairs involving one of them are searched (contours of older rules never change), then
    ``n_notes`` and ``gain_bits`` of every rule-scope row are refreshed from the current
    counts. ``None``: recompute everything."""
    have = con.execute("SELECT count(*) FROM transforms WHERE scope = 'rule'").fetchall()[0][0]
    if new_from is None or not have:
        con.execute("DELETE FROM transforms WHERE scope = 'rule'")
        new_from = 0
    n_rules = max(con.execute("SELECT count(*) FROM rules").fetchall()[0][0], 2)
    pointer = math.log2(n_rules) + math.log2(6)
    dbl = _double_list_sql()
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _gt_r AS
        SELECT rule_id, intervals, length, count,
               rhythm_buckets[1:length - 1] AS inner_rhythm
        FROM rules WHERE length >= {MIN_TRANSFORM_LENGTH}""")
    con.execute(f"CREATE OR REPLACE TEMP TABLE _gt_n AS SELECT * FROM _gt_r WHERE rule_id >= {int(new_from)}")
    matches = {
        "I": ("b.intervals = list_transform(a.intervals, lambda x: -x) AND b.inner_rhythm = a.inner_rhythm", "NULL"),
        "R": ("b.intervals = list_reverse(list_transform(a.intervals, lambda x: -x)) "
              "AND b.inner_rhythm = list_reverse(a.inner_rhythm)", "NULL"),
        "RI": ("b.intervals = list_reverse(a.intervals) AND b.inner_rhythm = list_reverse(a.inner_rhythm)", "NULL"),
        "augmentation": (f"b.intervals = a.intervals AND b.inner_rhythm = "
                         f"list_transform(a.inner_rhythm, lambda x: {dbl}[x + 1])", "2.0"),
        "octave": ("b.intervals <> a.intervals AND b.inner_rhythm = a.inner_rhythm AND "
                   "list_transform(b.intervals, lambda x: ((x % 12) + 12) % 12) = "
                   "list_transform(a.intervals, lambda x: ((x % 12) + 12) % 12)", "NULL"),
    }

    def next_id():
        return con.execute("SELECT coalesce(max(transform_id), 0) FROM transforms").fetchall()[0][0]

    gain = f"8 * (b.length - 1) + 7 * b.length - {pointer}"
    for kind, (cond, ratio) in matches.items():
        # symmetric relations once per pair (source < target); this also drops palindromes
        order = "AND a.rule_id < b.rule_id" if kind in ("I", "R", "RI", "octave") else ""
        extra = "list_max(a.inner_rhythm) > 0 AND " if kind == "augmentation" else ""
        before = next_id()
        # pairs with a new source, then pairs of an older source and a new target
        for a_tab, b_tab, only_old_a in (("_gt_n", "_gt_r", False), ("_gt_r", "_gt_n", True)):
            if new_from == 0 and only_old_a:
                continue
            old_a = f"a.rule_id < {int(new_from)} AND " if only_old_a else ""
            con.execute(f"""
                INSERT INTO transforms
                SELECT {next_id()} + row_number() OVER (ORDER BY a.rule_id, b.rule_id), 'rule', '{kind}',
                       a.rule_id, b.rule_id, NULL, NULL, NULL, NULL, {ratio},
                       b.count * b.length, {gain}, '{version}'
                FROM {a_tab} a JOIN {b_tab} b ON a.length = b.length AND {cond} {order}
                WHERE {old_a}{extra}{gain} > 0""")
        if kind == "augmentation":
            con.execute(f"""
                INSERT INTO transforms
                SELECT {next_id()} + row_number() OVER (ORDER BY target_rule_id, source_rule_id), 'rule',
                       'diminution', target_rule_id, source_rule_id, NULL, NULL, NULL, NULL, 0.5,
                       0, gain_bits, stage_version
                FROM transforms t
                WHERE t.kind = 'augmentation' AND t.transform_id > {before}""")
    # counts and the number of rules changed: refresh what depends on them
    con.execute(f"""
        UPDATE transforms SET n_notes = r.count * r.length,
               gain_bits = 8 * (r.length - 1) + 7 * r.length - {pointer}
        FROM rules r WHERE transforms.scope = 'rule' AND r.rule_id = transforms.target_rule_id""")
    con.execute("DELETE FROM transforms WHERE scope = 'rule' AND gain_bits <= 0")
    con.execute("DROP TABLE _gt_r")
    con.execute("DROP TABLE _gt_n")
    return con.execute("SELECT count(*) FROM transforms WHERE scope = 'rule'").fetchall()[0][0]


def track_transforms(con, piece_ids: list[str] | None, version: str) -> int:
    """Doubling / parallel motion / rhythmic unison between the tracks of these pieces."""
    if piece_ids is None:
        scope = "TRUE"
        con.execute("DELETE FROM transforms WHERE scope = 'track'")
    else:
        con.register("_gt_ids", pa.table({"piece_id": pa.array(list(piece_ids), pa.string())}))
        scope = "piece_id IN (SELECT piece_id FROM _gt_ids)"
        con.execute(f"DELETE FROM transforms WHERE scope = 'track' AND {scope}")
    rows = con.execute(f"""
        WITH v AS (SELECT piece_id, track_index, onset_ticks, max(pitch) AS pitch
                   FROM notes WHERE {scope} GROUP BY ALL),
        sizes AS (SELECT piece_id, track_index, count(*) AS n FROM v GROUP BY ALL),
        m AS (SELECT a.piece_id, a.track_index AS ta, b.track_index AS tb, a.onset_ticks,
                     a.pitch AS pa, b.pitch AS pb
              FROM v a JOIN v b ON a.piece_id = b.piece_id AND a.onset_ticks = b.onset_ticks
                                AND a.track_index < b.track_index),
        steps AS (SELECT *, pa - lag(pa) OVER w AS da, pb - lag(pb) OVER w AS db
                  FROM m WINDOW w AS (PARTITION BY piece_id, ta, tb ORDER BY onset_ticks)),
        agg AS (SELECT piece_id, ta, tb, count(*) AS shared, mode(pb - pa) AS diff,
                       count(*) FILTER (da IS NOT NULL) AS n_steps,
                       count(*) FILTER (da IS NOT NULL AND sign(da) = sign(db) AND da <> 0
                                        AND abs(da - db) <= 1) AS parallel_steps
                FROM steps GROUP BY ALL)
        SELECT agg.piece_id, ta, tb, shared, diff, n_steps, parallel_steps,
               (SELECT count(*) FROM steps s WHERE s.piece_id = agg.piece_id AND s.ta = agg.ta
                  AND s.tb = agg.tb AND s.pb - s.pa = agg.diff) AS n_diff,
               least(sa.n, sb.n) AS smaller
        FROM agg JOIN sizes sa ON sa.piece_id = agg.piece_id AND sa.track_index = ta
                 JOIN sizes sb ON sb.piece_id = agg.piece_id AND sb.track_index = tb
        ORDER BY agg.piece_id, ta, tb""").fetchall()
    if piece_ids is not None:
        con.unregister("_gt_ids")
    out = []
    for pid, ta, tb, shared, diff, n_steps, par, n_diff, smaller in rows:
        if n_diff >= 0.5 * smaller and n_diff >= 8:
            out.append((pid, ta, tb, "doubling", int(diff), n_diff, n_diff * 11 - 32))
        elif n_steps >= 8 and par >= 0.5 * n_steps:
            out.append((pid, ta, tb, "parallel", None, par, par * 5 - 32))
        elif shared >= 0.8 * smaller and shared >= 8:
            out.append((pid, ta, tb, "rhythmic_unison", None, shared, shared * 4 - 32))
    out = [r for r in out if r[6] > 0]
    if not out:
        return 0
    base = con.execute("SELECT coalesce(max(transform_id), 0) FROM transforms").fetchall()[0][0]
    t = pa.table({
        "transform_id": pa.array(np.arange(base + 1, base + 1 + len(out)), pa.int64()),
        "scope": ["track"] * len(out), "kind": [r[3] for r in out],
        "source_rule_id": pa.nulls(len(out), pa.int64()), "target_rule_id": pa.nulls(len(out), pa.int64()),
        "piece_id": [r[0] for r in out],
        "source_track": pa.array([r[1] for r in out], pa.int32()),
        "target_track": pa.array([r[2] for r in out], pa.int32()),
        "interval": pa.array([r[4] for r in out], pa.int16()),
        "rhythm_ratio": pa.nulls(len(out), pa.float64()),
        "n_notes": pa.array([r[5] for r in out], pa.int64()),
        "gain_bits": pa.array([float(r[6]) for r in out], pa.float64()),
        "stage_version": [version] * len(out),
    })
    con.register("_gt_rows", t)
    con.execute("INSERT INTO transforms SELECT * FROM _gt_rows")
    con.unregister("_gt_rows")
    return len(out)


def _entropy_bits(counts: np.ndarray) -> float:
    c = counts[counts > 0].astype(np.float64)
    n = c.sum()
    return float(-(c * np.log2(c / n)).sum())


def _model_bits(counts: np.ndarray, n: float) -> float:
    return 0.5 * max(int((counts > 0).sum()) - 1, 0) * math.log2(max(n, 2))


def _code_bits(*factors) -> float:
    """Bits to code values as independent factors, each with its own entropy code."""
    total = 0.0
    for f in factors:
        _, c = np.unique(f, return_counts=True)
        total += _entropy_bits(c) + _model_bits(c, len(f))
    return total


# diatonic step count of each chromatic interval within an octave (major-scale spelling)
_STEP_OF = np.array([0, 1, 1, 2, 2, 3, 3, 4, 5, 5, 6, 6])
_NOMINAL_OF_STEP = np.array([0, 2, 4, 5, 7, 9, 11])


def interval_choices(con, version: str) -> None:
    """Corpus MDL choices: chromatic vs diatonic intervals, octave equivalence."""
    iv = con.execute("""
        SELECT pitch - lag(pitch) OVER (PARTITION BY piece_id, track_index
                                        ORDER BY onset_ticks, pitch, note_index) AS iv
        FROM notes QUALIFY iv IS NOT NULL""").fetchnumpy()["iv"].astype(np.int64)
    con.execute("DELETE FROM grammar_choices")
    if len(iv) < 2:
        return
    direct = _code_bits(iv)
    octv, pc = np.divmod(iv, 12)
    octave = _code_bits(pc, octv)
    steps = octv * 7 + _STEP_OF[pc]
    alter = pc - _NOMINAL_OF_STEP[_STEP_OF[pc]]
    diatonic = _code_bits(steps, alter)
    rows = []
    for choice, a_name, a_bits, b_name, b_bits in [
        ("interval_alphabet", "chromatic", direct, "diatonic", diatonic),
        ("octave_equivalence", "no", direct, "yes", octave),
    ]:
        chosen, alt, cb, ab = (a_name, b_name, a_bits, b_bits) if a_bits <= b_bits else (b_name, a_name, b_bits, a_bits)
        rows.append((choice, chosen, alt, cb, ab, ab - cb, len(iv) + 0, version))
    con.executemany("INSERT INTO grammar_choices VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)


def meta_patterns(con, version: str) -> int:
    """Recurring sequences of transposition steps between successive occurrences of the
    same rule along a track."""
    con.execute("DELETE FROM meta_patterns")
    con.execute(f"""
        INSERT INTO meta_patterns
        WITH o AS (
            SELECT o.piece_id, o.track_index, o.seq_index,
                   o.first_pitch - lag(o.first_pitch) OVER (PARTITION BY o.piece_id, o.track_index, o.rule_id
                                                           ORDER BY o.seq_index) AS step
            FROM occurrences o JOIN rules r USING (rule_id)
            WHERE r.length >= {MIN_TRANSFORM_LENGTH} AND o.top_level),
        s AS (SELECT piece_id, track_index, seq_index,
                     'T' || CASE WHEN step >= 0 THEN '+' ELSE '' END || step AS t
              FROM o WHERE step IS NOT NULL),
        g AS (SELECT piece_id,
                     [lag(t) OVER w, t] AS k2,
                     [lag(t, 2) OVER w, lag(t) OVER w, t] AS k3
              FROM s WINDOW w AS (PARTITION BY piece_id, track_index ORDER BY seq_index)),
        grams AS (SELECT piece_id, k2 AS kinds FROM g WHERE k2[1] IS NOT NULL
                  UNION ALL
                  SELECT piece_id, k3 FROM g WHERE k3[1] IS NOT NULL AND k3[2] IS NOT NULL),
        c AS (SELECT kinds, count(*) AS n, count(DISTINCT piece_id) AS np FROM grams GROUP BY kinds
              HAVING count(*) >= 3 AND count(DISTINCT piece_id) >= 2),
        alphabet AS (SELECT greatest(count(DISTINCT t), 2) AS a FROM s)
        SELECT row_number() OVER (ORDER BY (n - 1) * len(kinds) * log2(a) DESC, kinds),
               kinds, len(kinds), n, np, (n - 1) * len(kinds) * log2(a) - len(kinds) * log2(a),
               '{version}'
        FROM c, alphabet""")
    return con.execute("SELECT count(*) FROM meta_patterns").fetchall()[0][0]


def refresh_corpus_level(con, version: str, *, new_from: int | None = None) -> None:
    """Rule transforms (searched for the rules from ``new_from`` on; all if None), corpus
    choices and meta-patterns (recomputed over the corpus)."""
    rule_transforms(con, version, new_from=new_from)
    interval_choices(con, version)
    meta_patterns(con, version)
