"""Audio -> notes with basic-pitch (Spotify's polyphonic note transcriber; its ONNX model
ships inside the ``basic-pitch`` wheel, so nothing is downloaded).

The notes land in the ``notes`` table like a MIDI file's, so recordings take part in the
symbolic pipeline (harmony, grammar, vectors, pattern lookup, covers).

Tick grid of transcribed notes: a constant tempo equal to the tracked tempo of the mix
(``features.tempo_bpm``; 120 bpm when no tempo could be tracked), 480 ticks per beat,
beat 0 at 0 s. So ``onset_ticks = round(onset_s * tempo_bpm / 60 * 480)`` and
``onset_beats = onset_ticks / 480``; the one ``tempo_changes`` row of an audio
piece records that tempo. ``velocity`` is basic-pitch's note amplitude scaled to 1-127.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pyarrow as pa

__all__ = ["TICKS_PER_BEAT", "TRANSCRIBER", "grid_tempo", "transcribe", "notes_table", "note_events"]

TICKS_PER_BEAT = 480
DEFAULT_BPM = 120.0
# basic-pitch's own defaults (predict()): onset 0.5, frame 0.3, min note 127.7 ms.
ONSET_THRESHOLD = 0.5
FRAME_THRESHOLD = 0.3
MIN_NOTE_MS = 127.70

_MODEL = None


def _basic_pitch():
    # basic-pitch logs a warning for every backend (TF, CoreML, TFLite) that is absent.
    import warnings

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # resampy: "pkg_resources is deprecated"
            import basic_pitch
            from basic_pitch import inference, note_creation
    finally:
        root.setLevel(level)
    return basic_pitch, inference, note_creation


def _version() -> str:
    try:
        from importlib.metadata import version

        return f"basic-pitch {version('basic-pitch')} (onnx)"
    except Exception:
        return "basic-pitch (onnx)"


TRANSCRIBER = _version()


def _model():
    global _MODEL
    if _MODEL is None:
        basic_pitch, inference, _ = _basic_pitch()
        path = basic_pitch.build_icassp_2022_model_path(basic_pitch.FilenameSuffix.onnx)
        if not os.path.exists(path):
            from atlas_db.errors import MissingModelError

            raise MissingModelError(f"{path}: basic-pitch's ONNX model is not in the installed wheel")
        _MODEL = inference.Model(path)
    return _MODEL


def note_events(mono: np.ndarray, sr: int) -> dict:
    """basic-pitch's model output (note, onset, contour posteriors) for a mono signal."""
    import soxr

    _, inference, _ = _basic_pitch()
    from basic_pitch import constants as C

    x = mono.astype(np.float32)
    if sr != C.AUDIO_SAMPLE_RATE:
        x = soxr.resample(x, sr, C.AUDIO_SAMPLE_RATE, quality="HQ").astype(np.float32)
    n_overlap = 30
    overlap_len = n_overlap * C.FFT_HOP
    hop = C.AUDIO_N_SAMPLES - overlap_len
    original_length = x.shape[0]
    x = np.concatenate([np.zeros(overlap_len // 2, np.float32), x])
    model = _model()
    out: dict[str, list] = {"note": [], "onset": [], "contour": []}
    windows = [w for w, _ in inference.window_audio_file(x, hop)]
    # Batches of windows: one ONNX call per 8 windows (~16 s of audio).
    for i in range(0, len(windows), 8):
        batch = np.stack(windows[i : i + 8]).astype(np.float32)
        for k, v in model.predict(batch).items():
            out[k].append(v)
    return {k: inference.unwrap_output(np.concatenate(v), original_length, n_overlap) for k, v in out.items()}


def transcribe(mono: np.ndarray, sr: int) -> np.ndarray:
    """Notes of a mono signal: array (n, 4) of onset_s, offset_s, pitch, amplitude (0-1),
    sorted by onset then pitch."""
    _, _, nc = _basic_pitch()
    from basic_pitch import constants as C

    out = note_events(mono, sr)
    min_len = int(np.round(MIN_NOTE_MS / 1000 * (C.AUDIO_SAMPLE_RATE / C.FFT_HOP)))
    est = nc.output_to_notes_polyphonic(
        out["note"], out["onset"], onset_thresh=ONSET_THRESHOLD, frame_thresh=FRAME_THRESHOLD,
        min_note_len=min_len, infer_onsets=True, max_freq=None, min_freq=None, melodia_trick=True,
    )
    if not est:
        return np.zeros((0, 4))
    times = nc.model_frames_to_time(out["contour"].shape[0])
    arr = np.array([(times[s], times[e], p, a) for s, e, p, a in est], dtype=np.float64)
    arr[:, 0] = np.maximum(arr[:, 0], 0.0)
    arr = arr[arr[:, 1] > arr[:, 0]]
    return arr[np.lexsort((arr[:, 2], arr[:, 0]))]


def grid_tempo(bpm: float | None) -> float:
    return float(bpm) if bpm is not None and np.isfinite(bpm) and bpm > 0 else DEFAULT_BPM


def notes_table(piece_id: str, track_index: int, events: np.ndarray, bpm: float | None) -> pa.Table:
    """Rows of ``notes`` for transcribed events on the fixed grid (see module docstring)."""
    from atlas_db.schema import TABLES

    tempo = grid_tempo(bpm)
    n = len(events)
    if n == 0:
        return TABLES["notes"].empty_table()
    onset_s = events[:, 0]
    dur_s = events[:, 1] - events[:, 0]
    beats_per_s = tempo / 60.0
    onset_ticks = np.rint(onset_s * beats_per_s * TICKS_PER_BEAT).astype(np.int64)
    end_ticks = np.rint(events[:, 1] * beats_per_s * TICKS_PER_BEAT).astype(np.int64)
    dur_ticks = np.maximum(end_ticks - onset_ticks, 1)
    vel = np.clip(np.rint(events[:, 3] * 127), 1, 127).astype(np.int16)
    return pa.Table.from_arrays(
        [
            pa.array([piece_id] * n, pa.string()),
            pa.array(np.full(n, track_index, np.int32)),
            pa.array(np.arange(n, dtype=np.int32)),
            pa.array(onset_ticks),
            pa.array(dur_ticks),
            pa.array(onset_ticks / TICKS_PER_BEAT),
            pa.array(dur_ticks / TICKS_PER_BEAT),
            pa.array(onset_s),
            pa.array(dur_s),
            pa.array(events[:, 2].astype(np.int16)),
            pa.array(vel),
            pa.array(np.zeros(n, np.int16)),  # channel: transcribed notes carry none; 0
        ],
        schema=TABLES["notes"],
    )
