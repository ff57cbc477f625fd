"""Harmony tables: chord segments, the transitions between them, keys per piece and per
segment, and the views over them (see docs/harmony.md).

Written by the derived stage ``ingest.harmony`` (STAGE = "harmony"). Units are in the
names: ``_beats`` are quarter notes from the start of the file, ``_s`` seconds through
the file's tempo map, ``_pc`` a pitch class 0-11 (C = 0).
"""

from __future__ import annotations

import pyarrow as pa

from atlas_db.schema import table_ddl

__all__ = ["TABLES", "KEYS", "VIEWS", "MIGRATIONS", "QUALITIES"]

# Chord qualities, in mir_eval's shorthand (https://craffel.github.io/mir_eval/#mir_eval.chord).
QUALITIES = ("maj", "min", "dim", "aug", "sus2", "sus4", "7", "maj7", "min7", "hdim7", "dim7",
             "maj6", "min6", "minmaj7")

_ID = pa.string()

TABLES: dict[str, pa.Schema] = {
    # One row per chord segment (consecutive beats with the same chord); 'N' = no chord.
    "chords": pa.schema(
        [
            ("piece_id", _ID),
            ("chord_index", pa.int32()),  # 0, 1, ... in time order within the piece
            ("onset_beats", pa.float64()),
            ("end_beats", pa.float64()),
            ("onset_s", pa.float64()),
            ("end_s", pa.float64()),
            ("label", pa.string()),  # mir_eval syntax: 'D:min7', 'C:maj/3', 'N'
            ("root_pc", pa.int16()),  # NULL for 'N'
            ("quality", pa.string()),  # one of QUALITIES, or 'N'
            ("bass_pc", pa.int16()),  # lowest sounding pitch class (most frequent per beat)
            ("pc_mask", pa.int32()),  # observed pitch classes, bit p set = pc p sounds
            ("pcs", pa.list_(pa.int16())),  # the same set as a sorted list
            ("score", pa.float32()),  # mean template match (cosine, 0-1) over the segment
            ("key_tonic_pc", pa.int16()),  # local key of the segment
            ("key_mode", pa.string()),  # 'major' | 'minor'
            ("key_name", pa.string()),  # e.g. 'Eb major'
            ("degree", pa.int16()),  # (root_pc - key_tonic_pc) mod 12; NULL for 'N'
            ("roman", pa.string()),  # roman numeral in the local key: 'ii7', 'V', 'bVII'
            ("stage_version", pa.string()),
        ]
    ),
    # One row per pair of successive chords (segments with 'N' between them are not pairs).
    "chord_transitions": pa.schema(
        [
            ("piece_id", _ID),
            ("chord_index", pa.int32()),  # index of the 'from' chord
            ("to_chord_index", pa.int32()),
            ("onset_beats", pa.float64()),  # when the 'to' chord starts
            ("onset_s", pa.float64()),
            ("from_label", pa.string()),
            ("to_label", pa.string()),
            ("from_quality", pa.string()),
            ("to_quality", pa.string()),
            ("root_interval", pa.int16()),  # (to root - from root) mod 12, semitones
            ("quality_change", pa.string()),  # 'min->7'
            ("nro", pa.string()),  # neo-Riemannian P, L or R between the triads; else NULL
            ("from_roman", pa.string()),
            ("to_roman", pa.string()),
            ("stage_version", pa.string()),
        ]
    ),
    # The key of each piece as a whole (Krumhansl-Kessler or Temperley profile match).
    "piece_keys": pa.schema(
        [
            ("piece_id", _ID),
            ("key_tonic_pc", pa.int16()),
            ("key_mode", pa.string()),
            ("key_name", pa.string()),  # 'Gb major' (mir_eval.key syntax)
            ("correlation", pa.float32()),  # Pearson r with the best key profile
            ("runner_up_key", pa.string()),
            ("runner_up_correlation", pa.float32()),
            ("n_key_segments", pa.int32()),
            ("stage_version", pa.string()),
        ]
    ),
    # Local keys: windowed profile match smoothed by Viterbi, one row per stretch.
    "key_segments": pa.schema(
        [
            ("piece_id", _ID),
            ("segment_index", pa.int32()),
            ("onset_beats", pa.float64()),
            ("end_beats", pa.float64()),
            ("onset_s", pa.float64()),
            ("end_s", pa.float64()),
            ("key_tonic_pc", pa.int16()),
            ("key_mode", pa.string()),
            ("key_name", pa.string()),
            ("stage_version", pa.string()),
        ]
    ),
}

KEYS: dict[str, tuple[str, ...]] = {
    "chords": ("piece_id", "chord_index"),
    "chord_transitions": ("piece_id", "chord_index"),
    "piece_keys": ("piece_id",),
    "key_segments": ("piece_id", "segment_index"),
}

# Views (item 8 of issue 3): progressions and transitions across the corpus.
VIEWS: dict[str, str] = {
    # Every run of 4 successive chords (no 'N' inside), written three ways: as chord
    # labels, key-free (first quality, then root interval + quality per step), and as
    # roman numerals in the local key of the first chord.
    "chord_ngrams": """
CREATE OR REPLACE VIEW chord_ngrams AS
WITH c AS (
  SELECT piece_id, chord_index, onset_beats, onset_s, label, quality, root_pc, roman, key_name,
         lead(chord_index, 1) OVER w AS i1, lead(chord_index, 2) OVER w AS i2, lead(chord_index, 3) OVER w AS i3,
         lead(label, 1) OVER w AS l1, lead(label, 2) OVER w AS l2, lead(label, 3) OVER w AS l3,
         lead(quality, 1) OVER w AS q1, lead(quality, 2) OVER w AS q2, lead(quality, 3) OVER w AS q3,
         lead(root_pc, 1) OVER w AS r1, lead(root_pc, 2) OVER w AS r2, lead(root_pc, 3) OVER w AS r3,
         lead(roman, 1) OVER w AS n1, lead(roman, 2) OVER w AS n2, lead(roman, 3) OVER w AS n3
  FROM chords
  WHERE quality <> 'N'
  WINDOW w AS (PARTITION BY piece_id ORDER BY chord_index)
)
SELECT piece_id, chord_index, onset_beats, onset_s, key_name,
       4 AS n_chords,
       concat_ws(' ', label, l1, l2, l3) AS labels,
       concat_ws(' ', quality, '+' || ((r1 - root_pc + 12) % 12)::VARCHAR, q1,
                 '+' || ((r2 - r1 + 12) % 12)::VARCHAR, q2,
                 '+' || ((r3 - r2 + 12) % 12)::VARCHAR, q3) AS shape,
       concat_ws(' ', roman, n1, n2, n3) AS romans
FROM c
WHERE i3 = chord_index + 3
""",
    # The most common 4-chord progressions in roman numerals (relative to the local key).
    "common_progressions": """
CREATE OR REPLACE VIEW common_progressions AS
SELECT romans, count(*) AS occurrences, count(DISTINCT piece_id) AS n_pieces,
       any_value(labels) AS example_labels
FROM chord_ngrams
GROUP BY romans
ORDER BY n_pieces DESC, occurrences DESC, romans
""",
    # The most common key-free 4-chord shapes (same shape = same progression in any key).
    "common_progression_shapes": """
CREATE OR REPLACE VIEW common_progression_shapes AS
SELECT shape, count(*) AS occurrences, count(DISTINCT piece_id) AS n_pieces,
       any_value(labels) AS example_labels, any_value(romans) AS example_romans
FROM chord_ngrams
GROUP BY shape
ORDER BY n_pieces DESC, occurrences DESC, shape
""",
    # How often each kind of chord change happens (root interval + qualities + P/L/R).
    "common_transitions": """
CREATE OR REPLACE VIEW common_transitions AS
SELECT root_interval, from_quality, to_quality, nro,
       count(*) AS occurrences, count(DISTINCT piece_id) AS n_pieces
FROM chord_transitions
GROUP BY ALL
ORDER BY occurrences DESC, root_interval, from_quality, to_quality
""",
    # Per piece: its key, how many chords, how much of it is major/minor/seventh chords.
    "piece_harmony": """
CREATE OR REPLACE VIEW piece_harmony AS
SELECT k.piece_id, k.key_name, k.correlation AS key_correlation, k.n_key_segments,
       count(c.chord_index) FILTER (WHERE c.quality <> 'N') AS n_chords,
       count(DISTINCT c.label) FILTER (WHERE c.quality <> 'N') AS n_distinct_chords,
       avg(CASE WHEN c.quality IN ('7', 'maj7', 'min7', 'hdim7', 'dim7', 'minmaj7') THEN 1.0 ELSE 0.0 END)
           FILTER (WHERE c.quality <> 'N') AS seventh_chord_share,
       sum(c.end_beats - c.onset_beats) FILTER (WHERE c.quality <> 'N') / nullif(count(c.chord_index) FILTER (WHERE c.quality <> 'N'), 0) AS mean_chord_beats
FROM piece_keys k LEFT JOIN chords c USING (piece_id)
GROUP BY ALL
""",
}

MIGRATIONS: list[tuple[str, list[str]]] = [
    ("0100_harmony_tables", [table_ddl(n, s, KEYS.get(n, ())) for n, s in TABLES.items()]),
    ("0101_harmony_views", list(VIEWS.values())),
]
