"""Tables of the audio side: per-file analysis facts, features (long table + catalogue +
wide view), per-beat HPCP chroma, and natural-language descriptions.

Audio pieces also fill the spine tables: ``pieces`` (kind 'audio'), ``tracks`` (one per
stem, or one 'mix' track), ``notes`` (transcribed by basic-pitch), ``tempo_changes`` (one
row: the tracked tempo, which defines the tick grid of the transcribed notes).
Documented in docs/audio.md.
"""

from __future__ import annotations

import pyarrow as pa

from atlas_db.schema import table_ddl

__all__ = ["TABLES", "KEYS", "CATALOGUE", "MIGRATIONS", "AUDIO_CHILD_TABLES", "PC_SLUGS"]

_ID = pa.string()

TABLES: dict[str, pa.Schema] = {
    # One row per audio piece: how it was decoded and analysed.
    "audio_files": pa.schema(
        [
            ("piece_id", _ID),
            ("format", pa.string()),  # container/codec as libsndfile names it, e.g. 'WAV', 'FLAC', 'MP3', 'OGG'
            ("sample_rate_hz", pa.int32()),  # of the file
            ("n_channels", pa.int16()),
            ("duration_s", pa.float64()),
            ("key_name", pa.string()),  # estimated key, e.g. 'A minor'
            ("stems_model", pa.string()),  # file name of the Demucs model used; NULL: no stems
            ("transcriber", pa.string()),  # e.g. 'basic-pitch 0.4.0 (onnx)'; NULL: not transcribed
            ("analysis_version", pa.string()),  # ingest.audio.ANALYSIS_VERSION
        ]
    ),
    # Long table of scalar descriptors. source: 'mix' (the whole file) or a stem name.
    "features": pa.schema(
        [
            ("piece_id", _ID),
            ("source", pa.string()),
            ("name", pa.string()),
            ("value", pa.float64()),
            ("unit", pa.string()),
            ("analysis_version", pa.string()),
        ]
    ),
    # Per tracked beat of the mix: time, downbeat flag and the beat's HPCP (12 bins, C..B,
    # sum-normalised; all zeros for a silent beat).
    "audio_beats": pa.schema(
        [
            ("piece_id", _ID),
            ("beat_index", pa.int32()),
            ("time_s", pa.float64()),
            ("is_downbeat", pa.bool_()),
            ("hpcp", pa.list_(pa.float32())),
        ]
    ),
    # One text per piece from a local GGUF model (base model, plain completion).
    "descriptions": pa.schema(
        [
            ("piece_id", _ID),
            ("model", pa.string()),  # GGUF file name
            ("prompt_version", pa.string()),  # ingest.describe.PROMPT_VERSION
            ("description", pa.string()),  # ASCII-only text
            ("created_at", pa.timestamp("us", tz="UTC")),
        ]
    ),
    # The feature catalogue: what each feature name means, its unit and documented range.
    "feature_catalogue": pa.schema(
        [
            ("name", pa.string()),
            ("unit", pa.string()),
            ("range_min", pa.float64()),
            ("range_max", pa.float64()),
            ("per_stem", pa.bool_()),  # also computed for each stem
            ("computed_by", pa.string()),
            ("description", pa.string()),
        ]
    ),
}

KEYS: dict[str, tuple[str, ...]] = {
    "audio_files": ("piece_id",),
    "features": ("piece_id", "source", "name"),
    "audio_beats": ("piece_id", "beat_index"),
    "descriptions": ("piece_id",),
    "feature_catalogue": ("name",),
}

# Tables an audio ParsedPiece carries besides the spine's (written by atlas_db.store).
AUDIO_CHILD_TABLES = ("audio_files", "features", "audio_beats", "descriptions")

_PC = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]
# Feature-name spelling of the pitch classes (no '#': names are also column names of features_wide).
PC_SLUGS = ["c", "cs", "d", "ds", "e", "f", "fs", "g", "gs", "a", "as", "b"]

# (name, unit, min, max, per_stem, computed_by, description)
CATALOGUE: list[tuple] = [
    ("duration_s", "s", 0.0, None, False, "soundfile", "length of the decoded audio"),
    ("tempo_bpm", "bpm", 40.0, 208.0, False, "essentia RhythmExtractor2013 (degara)", "global tempo, beats per minute"),
    ("beat_count", "count", 0.0, None, False, "essentia RhythmExtractor2013 (degara)", "number of tracked beats (times in audio_beats)"),
    ("downbeat_phase", "beats", 0.0, 3.0, False, "harmony-atlas (4/4 assumption)", "index (0-3) of the first downbeat among the tracked beats: the phase whose beats carry most bass energy"),
    ("onset_rate_hz", "1/s", 0.0, None, False, "essentia OnsetRate", "detected onsets per second"),
    ("loudness_integrated_lufs", "LUFS", -70.0, 0.0, False, "pyloudnorm (ITU-R BS.1770-4 / EBU R128)", "integrated (gated) programme loudness (a mono file as one channel)"),
    ("loudness_range_lu", "LU", 0.0, 40.0, False, "essentia LoudnessEBUR128", "EBU R128 loudness range (LRA, 10th to 95th percentile of short-term loudness)"),
    ("sample_peak_dbfs", "dBFS", None, 0.0, False, "numpy", "largest absolute sample value of the file as decoded"),
    ("spectral_centroid_hz", "Hz", 0.0, 22050.0, True, "essentia Centroid", "mean over frames of the magnitude-spectrum centroid"),
    ("spectral_flatness", "ratio", 0.0, 1.0, False, "essentia Flatness", "mean over frames of geometric / arithmetic mean of the power spectrum below 10 kHz (or 0.9 x the file's Nyquist frequency) (0 tonal, 1 noise)"),
    ("spectral_flux", "ratio", 0.0, 1.4142, False, "essentia Flux", "mean over frames of the L2 distance between successive unit-sum magnitude spectra"),
    ("spectral_skewness", "ratio", None, None, False, "essentia CentralMoments + DistributionShape", "mean over frames of the skewness of the magnitude spectrum (>0: energy below the centroid)"),
    ("spectral_kurtosis", "ratio", None, None, False, "essentia CentralMoments + DistributionShape", "mean over frames of the excess kurtosis of the magnitude spectrum"),
    ("rms_bass_dbfs", "dBFS", None, 0.0, False, "scipy Butterworth band-pass", "RMS level of the 20-150 Hz band"),
    ("rms_body_dbfs", "dBFS", None, 0.0, False, "scipy Butterworth band-pass", "RMS level of the 150-800 Hz band"),
    ("rms_mid_dbfs", "dBFS", None, 0.0, False, "scipy Butterworth band-pass", "RMS level of the 800-4000 Hz band"),
    ("rms_air_dbfs", "dBFS", None, 0.0, False, "scipy Butterworth band-pass", "RMS level of the 4000-20000 Hz band"),
    ("rms_dbfs", "dBFS", None, 0.0, True, "numpy", "RMS level of the whole signal"),
    *[(f"hpcp_{slug}", "fraction", 0.0, 1.0, False, "essentia HPCP (unitSum)", f"share of pitch class {pc} in the mean beat HPCP (the 12 values sum to 1)") for pc, slug in zip(_PC, PC_SLUGS)],
    ("key_tonic_pc", "pitch class", 0.0, 11.0, False, "essentia Key (bgate profile)", "tonic of the estimated key, 0 = C .. 11 = B (name in audio_files.key_name)"),
    ("key_is_minor", "bool", 0.0, 1.0, False, "essentia Key (bgate profile)", "1 if the estimated scale is minor, 0 if major"),
    ("key_strength", "ratio", 0.0, 1.0, False, "essentia Key (bgate profile)", "correlation of the mean HPCP with the key profile"),
    ("ioi_entropy_bits", "bits", 0.0, 5.615, False, "harmony-atlas (numpy)", "rhythmic complexity: Shannon entropy of inter-onset intervals quantised to 1/12 beat, capped at 4 beats (49 bins)"),
    ("syncopation", "fraction", 0.0, 1.0, False, "harmony-atlas (numpy)", "share of onsets that fall between beats with no onset on the next beat (anticipations)"),
    ("danceability", "ratio", 0.0, None, False, "essentia Danceability (DFA)", "detrended-fluctuation danceability, usually 0 to 3 (higher = more danceable)"),
    ("dynamic_complexity_db", "dB", 0.0, None, False, "essentia DynamicComplexity", "mean absolute deviation of the loudness from its global estimate"),
    ("harmonic_movement", "ratio", 0.0, 1.0, True, "harmony-atlas (numpy)", "mean cosine distance between successive beat HPCPs (0: static harmony)"),
    ("harmonic_variance", "fraction", 0.0, 0.5, True, "harmony-atlas (numpy)", "mean over the 12 bins of the standard deviation of the beat HPCP"),
]


def _sql_value(v) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if isinstance(v, (int, float)):
        return repr(float(v))
    return "'" + str(v).replace("'", "''") + "'"


def _catalogue_sql() -> list[str]:
    rows = ",\n  ".join("(" + ", ".join(_sql_value(v) for v in row) + ")" for row in CATALOGUE)
    return [f"INSERT OR REPLACE INTO feature_catalogue VALUES\n  {rows}"]


def _wide_view_sql() -> str:
    cols = ",\n  ".join(
        f'max(value) FILTER (WHERE name = \'{row[0]}\') AS "{row[0]}"' for row in CATALOGUE
    )
    return (
        "CREATE OR REPLACE VIEW features_wide AS SELECT piece_id,\n  "
        + cols
        + "\nFROM features WHERE source = 'mix' GROUP BY piece_id"
    )


MIGRATIONS: list[tuple[str, list[str]]] = [
    (
        "0500_audio_tables",
        [table_ddl(name, schema, KEYS.get(name, ())) for name, schema in TABLES.items()]
        + _catalogue_sql()
        + [_wide_view_sql()],
    ),
]
