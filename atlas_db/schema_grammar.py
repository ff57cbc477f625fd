"""Grammar tables: the pitch-agnostic Re-Pair grammar (``rules``), every place a rule
occurs (``occurrences``), the top-level parse of each track (``grammar_sequences``),
relations between rules and between tracks (``transforms``), corpus-level MDL choices
(``grammar_choices``) and repeated sequences of transforms (``meta_patterns``).

Note order used by the grammar (the "grammar order" of a track): notes sorted by
``(onset_ticks, pitch, note_index)``, i.e. onset order with the notes of a chord from low
to high. ``seq_index`` is a note's 0-based position in that order; the view
``grammar_notes`` adds it to ``notes``. ``occurrences.note_index`` is the
``notes.note_index`` of an occurrence's first note, ``occurrences.seq_index`` its position
in grammar order; the occurrence covers grammar positions
``seq_index .. seq_index + rules.length - 1`` of its track.

Terminals are rules too: ``rule_id`` 0..127 is the terminal
``rhythm_bucket * 8 + velocity_bucket`` (``depth`` 0, ``length`` 1, no children); rules
learned by Re-Pair have ``rule_id >= 128`` and ``depth >= 1``. Terminal occurrences are
not stored (every note is one).
"""

from __future__ import annotations

import pyarrow as pa

from atlas_db.schema import table_ddl

__all__ = ["TABLES", "KEYS", "MIGRATIONS", "N_TERMINALS", "FIRST_RULE_ID", "MIN_TRANSFORM_LENGTH", "meta_grams_cte",
           "STORED_META_SOURCE"]

N_TERMINALS = 128  # 16 rhythm buckets x 8 velocity buckets
FIRST_RULE_ID = N_TERMINALS

_TRANSFORMS = pa.schema(
    [
        ("transform_id", pa.int64()),
        ("scope", pa.string()),  # 'rule' | 'track'
        # rule scope: 'I', 'R', 'RI', 'augmentation', 'diminution', 'octave'
        # track scope: 'doubling', 'parallel', 'rhythmic_unison'
        ("kind", pa.string()),
        ("source_rule_id", pa.int64()),  # rule scope; NULL for track scope
        ("target_rule_id", pa.int64()),
        ("piece_id", pa.string()),  # track scope; NULL for rule scope
        ("source_track", pa.int32()),
        ("target_track", pa.int32()),
        ("interval", pa.int16()),  # semitones (doubling/parallel); NULL otherwise
        ("rhythm_ratio", pa.float64()),  # target IOI / source IOI (augmentation 2.0)
        ("n_notes", pa.int64()),  # notes the relation explains
        ("gain_bits", pa.float64()),  # description length saved, bits
        ("stage_version", pa.string()),
    ]
)

TABLES: dict[str, pa.Schema] = {
    "rules": pa.schema(
        [
            ("rule_id", pa.int64()),
            # pitch intervals (semitones) between successive notes: length - 1 entries
            ("intervals", pa.list_(pa.int16())),
            # per note: bucket 0-15 of the inter-onset interval to the next note, in beats
            # (the last note of a rule: to the note after the rule, or its duration at the
            # end of a track)
            ("rhythm_buckets", pa.list_(pa.int8())),
            ("velocity_buckets", pa.list_(pa.int8())),  # per note: velocity // 16 (0-7)
            ("left_child", pa.int64()),  # NULL for terminals
            ("right_child", pa.int64()),
            # interval (semitones) from the last note of left_child to the first of right_child
            ("connector_interval", pa.int16()),
            ("depth", pa.int32()),  # 0 terminal, 1 pair of terminals, ...
            ("length", pa.int32()),  # notes
            ("count", pa.int64()),  # occurrences in the corpus (nested ones included)
            ("n_pieces", pa.int32()),  # distinct pieces it occurs in
            ("n_top", pa.int64()),  # occurrences at the top level of a parse
            ("origin", pa.string()),  # 'build' (from-scratch Re-Pair) or 'incremental'
            ("stage_version", pa.string()),
            ("learn_round", pa.int32()),  # Re-Pair round that created it (replay order)
        ]
    ),
    "occurrences": pa.schema(
        [
            ("rule_id", pa.int64()),
            ("piece_id", pa.string()),
            ("track_index", pa.int32()),
            ("note_index", pa.int32()),  # notes.note_index of the first note
            ("seq_index", pa.int32()),  # grammar-order position of the first note
            ("onset_ticks", pa.int64()),
            ("onset_beats", pa.float64()),
            ("onset_s", pa.float64()),
            ("first_pitch", pa.int16()),  # MIDI number of the first note
            ("top_level", pa.bool_()),  # part of the track's top-level parse (not nested)
        ]
    ),
    # The top-level parse of each track: symbols (rule ids, terminals included) whose
    # expansions, concatenated, give the track's notes in grammar order.
    "grammar_sequences": pa.schema(
        [
            ("piece_id", pa.string()),
            ("track_index", pa.int32()),
            ("n_notes", pa.int32()),
            ("symbols", pa.list_(pa.int64())),
            ("stage_version", pa.string()),
        ]
    ),
    # Relations between rules (scope 'rule') and between tracks of a piece (scope 'track'):
    # the columns of the view ``transforms``.
    "transforms": _TRANSFORMS,
    # What ``transforms`` (a view, see 0105_grammar_transform_gains) is made of: its rows,
    # where a rule-scope row has ``target_bits`` instead of ``gain_bits`` and no
    # ``n_notes`` (NULL: the view's is count x length of the target rule, 0107) ...
    "transform_rows": pa.schema(
        [
            *[f for f in _TRANSFORMS if f.name not in ("gain_bits", "stage_version")],
            # rule scope: bits to spell the target rule out, 8 (length - 1) + 7 length;
            # NULL for track scope
            ("target_bits", pa.int32()),
            ("gain_bits", pa.float64()),  # track scope; NULL for rule scope
            ("stage_version", pa.string()),
        ]
    ),
    # ... and the gain of such a row at the current number of rules, per ``target_bits``:
    # target_bits - (log2(rules) + log2(6)). When the number of rules grows, only these
    # few rows change (not every rule-scope transform).
    "transform_gains": pa.schema(
        [
            ("target_bits", pa.int32()),
            ("gain_bits", pa.float64()),
        ]
    ),
    # Corpus-level MDL choices: e.g. interval alphabet chromatic vs diatonic.
    "grammar_choices": pa.schema(
        [
            ("choice", pa.string()),  # 'interval_alphabet' | 'octave_equivalence'
            ("chosen", pa.string()),
            ("alternative", pa.string()),
            ("bits_chosen", pa.float64()),
            ("bits_alternative", pa.float64()),
            ("gain_bits", pa.float64()),  # bits_alternative - bits_chosen
            ("n_notes", pa.int64()),
            ("stage_version", pa.string()),
        ]
    ),
    # Running histogram of the intervals between successive notes (grammar order) of the
    # tracks the grammar has encoded: what ``grammar_choices`` is computed from, kept up
    # to date piece by piece so that an ingest never rescans every note.
    "grammar_interval_counts": pa.schema(
        [
            ("interval_semitones", pa.int16()),  # pitch of a note minus the previous note's
            ("n_intervals", pa.int64()),
        ]
    ),
    # Running counts behind ``meta_patterns``, kept up to date piece by piece: every
    # sequence of 2 or 3 transposition steps seen (``meta_pattern_counts``) and every step
    # (``meta_step_counts``), over the tracks the grammar has encoded.
    "meta_pattern_counts": pa.schema(
        [
            ("kinds", pa.list_(pa.string())),  # e.g. ['T+5', 'T+2']
            ("count", pa.int64()),
            ("n_pieces", pa.int32()),
        ]
    ),
    "meta_step_counts": pa.schema(
        [
            ("kind", pa.string()),  # e.g. 'T+5'
            ("count", pa.int64()),
        ]
    ),
    # Sequences of rule-transforms that repeat along tracks (meta-patterns).
    "meta_patterns": pa.schema(
        [
            ("meta_id", pa.int64()),
            ("kinds", pa.list_(pa.string())),  # e.g. ['T+5', 'T+2', 'T-7']
            ("length", pa.int32()),
            ("count", pa.int64()),
            ("n_pieces", pa.int32()),
            ("gain_bits", pa.float64()),
            ("stage_version", pa.string()),
        ]
    ),
}

KEYS: dict[str, tuple[str, ...]] = {
    "rules": ("rule_id",),
    "grammar_sequences": ("piece_id", "track_index"),
    "transforms": ("transform_id",),
    "transform_rows": ("transform_id",),
    "transform_gains": ("target_bits",),
    "grammar_choices": ("choice",),
    "meta_patterns": ("meta_id",),
    "grammar_interval_counts": ("interval_semitones",),
    "meta_step_counts": ("kind",),
    # occurrences: bulk table, no index (inserts of millions of rows)
}

# Rules of at least this many notes take part in transforms and meta-patterns.
MIN_TRANSFORM_LENGTH = 4


def meta_grams_cte(source: str) -> str:
    """WITH-clause bodies ``s`` (one row per transposition step ``t``, 'T+n') and
    ``grams`` (``piece_id``, ``kinds``: each run of 2 and of 3 successive steps along a
    track) over ``source``: top-level occurrences of rules of at least
    ``MIN_TRANSFORM_LENGTH`` notes with ``piece_id, track_index, seq_index, rule_id,
    first_pitch``. A step is the transposition between successive occurrences of the
    same rule along a track; whole pieces in ``source`` give exactly their share."""
    return f"""
        o AS (SELECT piece_id, track_index, seq_index,
                     first_pitch - lag(first_pitch) OVER (PARTITION BY piece_id, track_index, rule_id
                                                         ORDER BY seq_index) AS step
              FROM {source}),
        s AS (SELECT piece_id, track_index, seq_index,
                     'T' || CASE WHEN step >= 0 THEN '+' ELSE '' END || step AS t
              FROM o WHERE step IS NOT NULL),
        g AS (SELECT piece_id,
                     [lag(t) OVER w, t] AS k2,
                     [lag(t, 2) OVER w, lag(t) OVER w, t] AS k3
              FROM s WINDOW w AS (PARTITION BY piece_id, track_index ORDER BY seq_index)),
        grams AS (SELECT piece_id, k2 AS kinds FROM g WHERE k2[1] IS NOT NULL
                  UNION ALL
                  SELECT piece_id, k3 FROM g WHERE k3[1] IS NOT NULL AND k3[2] IS NOT NULL)"""


# ``transforms``: the rows with each rule-scope row's gain at the current number of rules
# (the same values an UPDATE of every row wrote before 0105_grammar_transform_gains) and
# its ``n_notes``, ``count`` x ``length`` of its target rule (what an UPDATE of the rows
# whose target occurs in the new pieces wrote before 0107_grammar_transform_notes: 170-2,340
# rows spread over 5-30 of the 42 row groups of a 100k-piece database per one-file add;
# a checkpoint after 100 such changed rows took 0.22-0.25 s CPU and wrote 6.5-6.9 MB, after
# the change an add makes to any other grammar table 0.3-0.7 MB more than after none and
# at most 0.02 s CPU). Both are looked up by position in a list (gains: one entry per
# ``target_bits`` from the smallest to the largest; notes: one per rule id) rather than
# joined, so that the rows come in the order of ``transform_rows`` (a hash join does not
# keep it). At 100k pieces (5M rows, 98k rules), CPU s against n_notes stored:
# sum(n_notes) of every row 0.30-0.35 s against 0.02 s, every column into Arrow
# 1.63-1.81 s against 1.15-1.22 s, the rows of one target rule 0.05 s against 0.01-0.02 s
# (the list of every rule is built per query); a join instead cost 0.06-0.1 s more on the
# sum, but returns the rows in another order.
TRANSFORMS_VIEW = """CREATE OR REPLACE VIEW transforms AS
    SELECT t.transform_id, t.scope, t.kind, t.source_rule_id, t.target_rule_id, t.piece_id, t.source_track,
           t.target_track, t.interval, t.rhythm_ratio,
           coalesce(t.n_notes,
                    (SELECT list(r.count * r.length ORDER BY b.rule_id)
                     FROM (SELECT range AS rule_id
                           FROM range((SELECT min(rule_id) FROM rules), (SELECT max(rule_id) + 1 FROM rules))) b
                     LEFT JOIN rules r USING (rule_id))
                    [t.target_rule_id - (SELECT min(rule_id) - 1 FROM rules)]) AS n_notes,
           coalesce(t.gain_bits,
                    (SELECT list(g.gain_bits ORDER BY b.target_bits)
                     FROM (SELECT range AS target_bits
                           FROM range((SELECT min(target_bits) FROM transform_gains),
                                      (SELECT max(target_bits) + 1 FROM transform_gains))) b
                     LEFT JOIN transform_gains g USING (target_bits))
                    [t.target_bits - (SELECT min(target_bits) - 1 FROM transform_gains)]) AS gain_bits,
           t.stage_version
    FROM transform_rows t"""

STORED_META_SOURCE = f"""(SELECT o.piece_id, o.track_index, o.seq_index, o.rule_id, o.first_pitch
                          FROM occurrences o JOIN rules r USING (rule_id)
                          WHERE r.length >= {MIN_TRANSFORM_LENGTH} AND o.top_level)"""

MIGRATIONS: list[tuple[str, list[str]]] = [
    (
        "0100_grammar_tables",
        [table_ddl(name, schema, KEYS.get(name, ())) for name, schema in TABLES.items()]
        + [
            """CREATE OR REPLACE VIEW grammar_notes AS
               SELECT n.*,
                      CAST(row_number() OVER (PARTITION BY piece_id, track_index
                           ORDER BY onset_ticks, pitch, note_index) - 1 AS INTEGER) AS seq_index
               FROM notes n"""
        ],
    ),
    (
        "0101_grammar_rules_learn_round",
        ["ALTER TABLE rules ADD COLUMN IF NOT EXISTS learn_round INTEGER"],
    ),
    (
        "0102_grammar_views",
        [
            # rules of 3+ notes that occur in at least two pieces, most widely shared first
            """CREATE OR REPLACE VIEW shared_rules AS
               SELECT rule_id, length, depth, intervals, rhythm_buckets, velocity_buckets,
                      n_pieces, count
               FROM rules WHERE length >= 3 AND n_pieces >= 2
               ORDER BY n_pieces DESC, count DESC, rule_id""",
            # every occurrence with its piece, track and the rule's contour
            """CREATE OR REPLACE VIEW rule_places AS
               SELECT o.rule_id, o.piece_id, p.title, p.path, o.track_index, t.name AS track_name,
                      t.program, o.note_index, o.seq_index, o.onset_beats, o.onset_s, o.first_pitch,
                      o.top_level, r.length, r.intervals
               FROM occurrences o JOIN rules r USING (rule_id) JOIN pieces p USING (piece_id)
               LEFT JOIN tracks t ON t.piece_id = o.piece_id AND t.track_index = o.track_index""",
            # rule-scope transforms placed in pieces: a pattern of source_piece_id related
            # to a pattern of target_piece_id
            """CREATE OR REPLACE VIEW piece_transforms AS
               SELECT a.piece_id AS source_piece_id, b.piece_id AS target_piece_id, t.kind,
                      t.source_rule_id, t.target_rule_id, t.rhythm_ratio, t.gain_bits
               FROM transforms t
               JOIN (SELECT DISTINCT rule_id, piece_id FROM occurrences) a ON a.rule_id = t.source_rule_id
               JOIN (SELECT DISTINCT rule_id, piece_id FROM occurrences) b ON b.rule_id = t.target_rule_id
               WHERE t.scope = 'rule'""",
        ],
    ),
    (
        "0103_grammar_interval_counts",
        [
            table_ddl("grammar_interval_counts", TABLES["grammar_interval_counts"],
                      KEYS["grammar_interval_counts"]),
            # a database made before this table: the histogram of the pieces encoded so far
            """INSERT INTO grammar_interval_counts
               SELECT iv, count(*) FROM (
                   SELECT pitch - lag(pitch) OVER (PARTITION BY piece_id, track_index
                                                   ORDER BY onset_ticks, pitch, note_index) AS iv
                   FROM notes WHERE piece_id IN (SELECT piece_id FROM grammar_sequences)
                   QUALIFY iv IS NOT NULL)
               GROUP BY iv""",
        ],
    ),
    (
        "0104_grammar_meta_counts",
        [
            table_ddl("meta_pattern_counts", TABLES["meta_pattern_counts"]),
            table_ddl("meta_step_counts", TABLES["meta_step_counts"], KEYS["meta_step_counts"]),
            # a database made before these tables: the counts of what is stored
            f"""INSERT INTO meta_pattern_counts
                WITH {meta_grams_cte(STORED_META_SOURCE)}
                SELECT kinds, count(*), count(DISTINCT piece_id) FROM grams GROUP BY kinds""",
            f"""INSERT INTO meta_step_counts
                WITH {meta_grams_cte(STORED_META_SOURCE)}
                SELECT t, count(*) FROM s GROUP BY t""",
        ],
    ),
    (
        # ``transforms`` becomes a view over ``transform_rows`` and ``transform_gains``
        # (same columns, same values): the rows of a table made before keep their order;
        # the gains are the ones stored (every rule-scope row of one target_bits had the
        # same gain_bits, computed at the same number of rules)
        "0105_grammar_transform_gains",
        [
            table_ddl("transform_rows", TABLES["transform_rows"], KEYS["transform_rows"]),
            table_ddl("transform_gains", TABLES["transform_gains"], KEYS["transform_gains"]),
            """CREATE TEMP TABLE _tg_bits AS
               SELECT t.rowid AS row_nr, 8 * (r.length - 1) + 7 * r.length AS target_bits
               FROM transforms t JOIN rules r ON r.rule_id = t.target_rule_id WHERE t.scope = 'rule'""",
            """INSERT INTO transform_rows
               SELECT t.transform_id, t.scope, t.kind, t.source_rule_id, t.target_rule_id, t.piece_id,
                      t.source_track, t.target_track, t.interval, t.rhythm_ratio, t.n_notes, b.target_bits,
                      CASE WHEN t.scope = 'rule' THEN NULL ELSE t.gain_bits END, t.stage_version
               FROM transforms t LEFT JOIN _tg_bits b ON b.row_nr = t.rowid ORDER BY t.rowid""",
            """INSERT INTO transform_gains
               SELECT b.target_bits, min(t.gain_bits) FROM transforms t JOIN _tg_bits b ON b.row_nr = t.rowid
               GROUP BY b.target_bits""",
            "DROP TABLE _tg_bits",
            "DROP TABLE transforms",
            TRANSFORMS_VIEW,
        ],
    ),
    (
        # the view of 0105 looked the gains up in a MAP (2.4x slower scans)
        "0106_grammar_transforms_view_list",
        [TRANSFORMS_VIEW],
    ),
    (
        # a rule-scope row's n_notes is the view's (count x length of its target, which
        # every such row stored: the rows whose target's count changed were updated);
        # the column keeps track-scope rows' n_notes
        "0107_grammar_transform_notes",
        ["UPDATE transform_rows SET n_notes = NULL WHERE scope = 'rule'", TRANSFORMS_VIEW],
    ),
]
