"""Harmony from notes: chords per beat smoothed into segments, keys per piece and per
segment, and the transitions between successive chords.

The numeric core is pure (Arrow/NumPy in, Arrow/NumPy out) so it also runs on a file
that is not in the database::

    >>> from ingest.midi_parse import read_midi_file                   # doctest: +SKIP
    >>> t = read_midi_file("001.mid")                                 # doctest: +SKIP
    >>> chords = chords_from_notes(t["notes"], tracks=t["tracks"], tempo=t["tempo_changes"],
    ...                            ticks_per_beat=t["pieces"]["ticks_per_beat"])  # doctest: +SKIP
    >>> key_from_notes(t["notes"])["key_name"]                         # doctest: +SKIP
    'F# major'

Method (per piece):

1. Beat grid. Frames are one quarter note long (``frame_beats``); the grid's phase is the
   most common onset position within the beat, so a file whose notes sit slightly after
   the tick grid is still cut at its real beats.
2. Pitch-class profile per frame: each note adds its overlap with the frame (in beats),
   and the lowest sounding note of the frame (the bass) gets extra weight. Drum tracks
   are left out.
3. Chord templates (14 qualities x 12 roots) scored by cosine similarity with the frame's
   profile, plus a bonus when the bass is the root and a small penalty for the rarer
   qualities; then a Viterbi pass with a cost for every chord change smooths the beats
   into chord segments; a second pass lowers that cost on the beat of the bar where the
   first pass changed chords most (and the half bar) and raises it elsewhere. Silent
   frames are 'N'.
4. Keys: Krumhansl-Kessler (default) or Temperley profiles correlated with the whole
   piece's profile (the piece's key) and with a sliding window of ``key_window_beats``
   (local keys, smoothed by Viterbi with a large cost per modulation).
5. Transitions between successive chords: root interval (0-11), quality change and the
   neo-Riemannian P, L or R between the chords' triads where one applies.

The derived stage (``STAGE``/``VERSION``/``update``) writes the tables declared in
``atlas_db.schema_harmony``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from numba import njit

from atlas_db.errors import BadInputError
from atlas_db.schema_harmony import QUALITIES, TABLES
from indexers.blas_threads import one_blas_thread
from ingest.transcribe import TICKS_PER_BEAT as TRANSCRIBED_TICKS_PER_BEAT

__all__ = [
    "STAGE",
    "VERSION",
    "BATCH_PIECES",
    "update",
    "forget",
    "load_inputs",
    "compute_rows",
    "write_rows",
    "PITCH_NAMES",
    "QUALITY_INTERVALS",
    "TRIAD_FAMILY",
    "KEY_PROFILES",
    "SCALES",
    "beat_chroma",
    "frame_chord_scores",
    "chords_from_notes",
    "key_from_notes",
    "local_keys",
    "analyze_notes",
    "transitions_from_chords",
    "chord_label",
    "key_name",
    "roman_numeral",
    "neo_riemannian",
    "beats_to_seconds",
]

STAGE = "harmony"
VERSION = "harmony-5"  # 5: a recording's seconds at its tracked tempo (were 120 bpm); KEY_PRIOR; grid phase
# A batch is analysed as one set of arrays (its Viterbi scores: frames x 169 float64):
# up to 1000 pieces, fewer when they hold more than BATCH_NOTES notes.
BATCH_PIECES = 1000
BATCH_NOTES = 400_000

PITCH_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")

# Intervals (semitones above the root) of each quality, in mir_eval's shorthand.
QUALITY_INTERVALS: dict[str, tuple[int, ...]] = {
    "maj": (0, 4, 7),
    "min": (0, 3, 7),
    "dim": (0, 3, 6),
    "aug": (0, 4, 8),
    "sus2": (0, 2, 7),
    "sus4": (0, 5, 7),
    "7": (0, 4, 7, 10),
    "maj7": (0, 4, 7, 11),
    "min7": (0, 3, 7, 10),
    "hdim7": (0, 3, 6, 10),
    "dim7": (0, 3, 6, 9),
    "maj6": (0, 4, 7, 9),
    "min6": (0, 3, 7, 9),
    "minmaj7": (0, 3, 7, 11),
}
assert tuple(QUALITY_INTERVALS) == QUALITIES

# Score penalty per quality: the rarer chords need clearer evidence than a triad.
# (Tuned by hand on pop909-dev songs 001-100 and every third song; benchmarks/harmony.py
# --held-out measures the others.)
_QUALITY_PENALTY = {
    "maj": 0.0, "min": 0.0, "dim": 0.10, "aug": 0.12, "sus2": 0.10, "sus4": 0.09,
    # the common sevenths get a small bonus: cosine favours 3-note templates otherwise
    "7": -0.01, "maj7": -0.01, "min7": -0.01, "hdim7": 0.09, "dim7": 0.12,
    "maj6": 0.09, "min6": 0.10, "minmaj7": 0.12,
}

# The triad a quality is built on (for neo-Riemannian operations and loose matching).
TRIAD_FAMILY = {
    "maj": "maj", "7": "maj", "maj7": "maj", "maj6": "maj",
    "min": "min", "min7": "min", "min6": "min", "minmaj7": "min",
    "dim": "dim", "dim7": "dim", "hdim7": "dim",
    "aug": "aug", "sus2": "sus2", "sus4": "sus4",
}

# A local key window's correlation with the piece's own key gets this much more: a
# window is 32 beats, and a held dominant (Mozart K331's E pedal under an A major theme)
# made its first bars E major. Chosen on songs 001-100 of POP909-dev (a probe adding it
# to the whole-piece chroma's key: local-key score 0.873 at 0.03; 0.868, 0.862, 0.856 at
# 0.05, 0.075, 0.1; 0.858 without). As shipped (benchmarks/harmony.py): songs 001-100
# 0.858 -> 0.871, held out 0.898 -> 0.905, all 300 0.891 -> 0.905; chords and piece
# keys unchanged (figures before the grid phase change: docs/harmony.md). K331's opening
# stays E major: it needs 0.075 or more.
KEY_PRIOR = 0.03

# Key profiles (C major / C minor), Krumhansl & Kessler 1982 and Temperley 1999.
KEY_PROFILES = {
    "krumhansl": (
        np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88]),
        np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17]),
    ),
    "temperley": (
        np.array([5.0, 2.0, 3.5, 2.0, 4.5, 4.0, 2.0, 4.5, 2.0, 3.5, 1.5, 4.0]),
        np.array([5.0, 2.0, 3.5, 4.5, 2.0, 4.0, 2.0, 4.5, 3.5, 2.0, 1.5, 4.0]),
    ),
}

_DEGREE_NAMES = ("I", "II", "III", "IV", "V", "VI", "VII")
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
# Chromatic degrees outside the scale: (accidental, scale degree 0-6) per mode.
_CHROMATIC = {
    "major": {1: ("b", 1), 3: ("b", 2), 6: ("#", 3), 8: ("b", 5), 10: ("b", 6)},
    "minor": {1: ("b", 1), 4: ("#", 2), 6: ("#", 3), 9: ("#", 5), 11: ("#", 6)},
}
_ROMAN_SUFFIX = {
    "maj": "", "min": "", "dim": "°", "aug": "+", "sus2": "sus2", "sus4": "sus4",
    "7": "7", "maj7": "maj7", "min7": "7", "hdim7": "ø7", "dim7": "°7",
    "maj6": "6", "min6": "6", "minmaj7": "maj7",
}
_LOWER_CASE = {"min", "dim", "min7", "hdim7", "dim7", "min6", "minmaj7"}
_MIR_DEGREES = ("1", "b2", "2", "b3", "3", "4", "b5", "5", "b6", "6", "b7", "7")


# --------------------------------------------------------------------------- names

def chord_label(root_pc, quality: str, bass_pc=None) -> str:
    """A chord label in mir_eval syntax: ``chord_label(2, "min7")`` -> ``'D:min7'``;
    with a bass other than the root, ``chord_label(0, "maj", 4)`` -> ``'C:maj/3'``."""
    if quality == "N" or root_pc is None:
        return "N"
    lab = f"{PITCH_NAMES[int(root_pc) % 12]}:{quality}"
    if bass_pc is not None and int(bass_pc) % 12 != int(root_pc) % 12:
        lab += "/" + _MIR_DEGREES[(int(bass_pc) - int(root_pc)) % 12]
    return lab


def key_name(tonic_pc: int, mode: str) -> str:
    """``key_name(3, "major")`` -> ``'Eb major'`` (mir_eval.key syntax)."""
    return f"{PITCH_NAMES[int(tonic_pc) % 12]} {mode}"


def roman_numeral(degree: int, quality: str, mode: str) -> str:
    """The roman numeral of a chord whose root lies ``degree`` semitones above the tonic.

    Degrees follow the key's own scale (major, or natural minor); other roots carry a
    flat or sharp: in C major ``roman_numeral(10, "maj", "major")`` -> ``'bVII'``; in A
    minor ``roman_numeral(3, "maj", "minor")`` -> ``'III'`` (C major chord). Upper case
    for major-third chords, lower case for minor and diminished ones.
    """
    if quality == "N":
        return "N"
    degree = int(degree) % 12
    scale = SCALES[mode]
    if degree in scale:
        acc, step = "", scale.index(degree)
    else:
        acc, step = _CHROMATIC[mode][degree]
    name = _DEGREE_NAMES[step]
    if quality in _LOWER_CASE:
        name = name.lower()
    return acc + name + _ROMAN_SUFFIX[quality]


def neo_riemannian(from_root: int, from_quality: str, to_root: int, to_quality: str):
    """'P', 'L' or 'R' when the two chords' triads (see TRIAD_FAMILY) are related by that
    neo-Riemannian operation, else None. ``neo_riemannian(0, "maj", 9, "min")`` -> 'R'."""
    a, b = TRIAD_FAMILY.get(from_quality), TRIAD_FAMILY.get(to_quality)
    if a not in ("maj", "min") or b not in ("maj", "min") or a == b:
        return None
    iv = (int(to_root) - int(from_root)) % 12
    if iv == 0:
        return "P"
    if (a, iv) in (("maj", 9), ("min", 3)):
        return "R"
    if (a, iv) in (("maj", 4), ("min", 8)):
        return "L"
    return None


# --------------------------------------------------------------------------- inputs

def _col(table, name):
    if isinstance(table, dict):
        return np.asarray(table[name])
    return table.column(name).to_numpy(zero_copy_only=False)


def _note_arrays(notes, tracks=None):
    """onset_beats, end_beats, pitch (+ onset_s, end_s when present) of non-drum notes."""
    try:
        on = _col(notes, "onset_beats").astype(np.float64)
        dur = _col(notes, "duration_beats").astype(np.float64)
        pitch = _col(notes, "pitch").astype(np.int64)
    except (KeyError, AttributeError) as e:
        raise BadInputError(
            f"notes: need columns onset_beats, duration_beats and pitch ({e})") from e
    keep = np.isfinite(on) & np.isfinite(dur) & (pitch >= 0) & (pitch <= 127)
    names = notes.keys() if isinstance(notes, dict) else notes.column_names
    if tracks is not None and "track_index" in names:
        tr_idx = _col(tracks, "track_index")
        drum = _col(tracks, "is_drum").astype(bool)
        drums = set(tr_idx[drum].tolist())
        if drums:
            keep &= ~np.isin(_col(notes, "track_index"), list(drums))
    if "is_drum" in names:
        keep &= ~_col(notes, "is_drum").astype(bool)
    on_s = _col(notes, "onset_s").astype(np.float64)[keep] if "onset_s" in names else None
    dur_s = _col(notes, "duration_s").astype(np.float64)[keep] if "duration_s" in names else None
    on, dur, pitch = on[keep], np.maximum(dur[keep], 0.0), pitch[keep]
    return on, on + dur, pitch, on_s, (on_s + dur_s) if on_s is not None and dur_s is not None else None


def beats_to_seconds(beats, *, tempo=None, ticks_per_beat=None, note_beats=None, note_seconds=None):
    """Seconds at the given times in beats (quarter notes).

    Parameters
    ----------
    beats : np.ndarray [shape=(n,)]
    tempo : pa.Table or dict, optional
        The file's tempo map (``tempo_changes``: ``time_ticks``, ``time_s``,
        ``tempo_bpm``), with ``ticks_per_beat``: exact conversion.
    note_beats, note_seconds : np.ndarray, optional
        Without a tempo map: matching (beats, seconds) pairs (e.g. note onsets and ends),
        interpolated piecewise-linearly and extrapolated at the ends.
    Without either, 120 bpm.
    """
    beats = np.asarray(beats, dtype=np.float64)
    if tempo is not None and ticks_per_beat and len(_col(tempo, "time_ticks")):
        tb = _col(tempo, "time_ticks").astype(np.float64) / float(ticks_per_beat)
        ts = _col(tempo, "time_s").astype(np.float64)
        bpm = _col(tempo, "tempo_bpm").astype(np.float64)
        o = np.argsort(tb, kind="stable")
        tb, ts, bpm = tb[o], ts[o], bpm[o]
        if tb[0] > 0:  # the SMF default before the first tempo event
            tb, ts, bpm = np.r_[0.0, tb], np.r_[0.0, ts], np.r_[120.0, bpm]
        k = np.clip(np.searchsorted(tb, beats, side="right") - 1, 0, len(tb) - 1)
        return ts[k] + (beats - tb[k]) * 60.0 / bpm[k]
    if note_beats is not None and note_seconds is not None and len(note_beats) >= 2:
        b, ix = np.unique(np.asarray(note_beats, np.float64), return_index=True)
        s = np.asarray(note_seconds, np.float64)[ix]
        if len(b) >= 2:
            out = np.interp(beats, b, s)
            lo, hi = beats < b[0], beats > b[-1]
            out[lo] = s[0] + (beats[lo] - b[0]) * (s[1] - s[0]) / (b[1] - b[0])
            out[hi] = s[-1] + (beats[hi] - b[-1]) * (s[-1] - s[-2]) / (b[-1] - b[-2])
            return out
    return beats * 0.5


# --------------------------------------------------------------------------- features

PHASE_WEIGHTING = "duration"
MAX_HOLD_BEATS = 64.0  # notes end at most this long after the last onset
MAX_FRAMES = 200_000  # beyond this many frames, frames get longer (see beat_chroma)


def _grid_phase(onsets, frame_beats, weights=None, bins=48):
    """The most common onset position within a frame (in beats), each onset weighted by
    ``weights`` (e.g. its note's duration: long notes and chords start on the beat,
    ornaments and fast runs do not)."""
    if len(onsets) == 0:
        return 0.0
    pos = np.mod(onsets, frame_beats) / frame_beats
    h = np.bincount(np.minimum((pos * bins).astype(np.int64), bins - 1), weights=weights, minlength=bins)
    # circular smoothing so a peak split across two bins still wins; its neighbours count
    # half, so onsets all on one bin give that bin (equal weights made the bin before win
    # the tie: every boundary of a piece on the half beat read 1/48 beat early, 1.479)
    h = h + 0.5 * (np.roll(h, 1) + np.roll(h, -1))
    phase = np.argmax(h) / bins * frame_beats
    return phase - frame_beats if phase > frame_beats / 2 else phase


def beat_chroma(notes, *, tracks=None, frame_beats: float = 1.0, phase_beats: float | None = None,
                bass_weight: float = 0.2):
    """Duration-weighted pitch-class profile per beat, and the bass per beat.

    Parameters
    ----------
    notes : pa.Table or dict
        Columns ``onset_beats``, ``duration_beats``, ``pitch`` (and ``track_index`` with
        ``tracks`` to leave drum tracks out, or an ``is_drum`` column).
    frame_beats : float
        Frame length in quarter notes.
    phase_beats : float, optional
        Where the grid starts (default: estimated from the onsets).
    bass_weight : float
        Extra weight given to the pitch class of each frame's lowest note, as a fraction
        of the frame's total weight.

    Returns
    -------
    dict with ``chroma`` np.ndarray [shape=(n_frames, 12)] (beats of sounding per pitch
    class, bass emphasis included), ``bass`` np.ndarray [shape=(n_frames,)] (lowest MIDI
    pitch sounding for at least a quarter of the frame, -1 if silent),
    ``frame_onset_beats`` [shape=(n_frames + 1,)] (frame boundaries), ``frame_beats``
    (the frame length used: longer than asked only past ``MAX_FRAMES`` frames) and the
    note arrays (ends cut at ``MAX_HOLD_BEATS`` after the last onset).
    """
    on, end, pitch, on_s, end_s = _note_arrays(notes, tracks)
    if frame_beats <= 0 or not np.isfinite(frame_beats):
        raise BadInputError(f"frame_beats={frame_beats}: must be a positive number of beats")
    if phase_beats is None:
        w = {"count": None, "duration": np.minimum(end - on, 4 * frame_beats),
             "sqrt": np.sqrt(np.minimum(end - on, 4 * frame_beats))}[PHASE_WEIGHTING]
        phase = _grid_phase(on, frame_beats, w)
    else:
        phase = float(phase_beats)
    if len(on) == 0:
        edges = np.array([0.0])
        return {"chroma": np.zeros((0, 12)), "bass": np.zeros(0, np.int64), "frame_onset_beats": edges,
                "frame_beats": frame_beats,
                "onset_beats": on, "end_beats": end, "pitch": pitch, "onset_s": on_s, "end_s": end_s}
    # A note held far beyond the last onset (a stuck note in a broken file) would make
    # thousands of frames of one sound; cut it.
    end = np.minimum(end, on.max() + MAX_HOLD_BEATS)
    start = phase + frame_beats * np.floor((on.min() - phase) / frame_beats)
    n_frames = max(1, int(np.ceil((end.max() - start) / frame_beats - 1e-9)))
    if n_frames > MAX_FRAMES:
        # Bound the memory of the Viterbi pass: longer frames for absurdly long pieces.
        frame_beats *= int(np.ceil(n_frames / MAX_FRAMES))
        start = phase + frame_beats * np.floor((on.min() - phase) / frame_beats)
        n_frames = max(1, int(np.ceil((end.max() - start) / frame_beats - 1e-9)))
    edges = start + frame_beats * np.arange(n_frames + 1)
    # clip: float rounding can put the earliest onset a hair before frame 0 (or the
    # latest past the end) and a negative frame index would break the bincount below
    f0 = np.clip(np.floor((on - start) / frame_beats).astype(np.int64), 0, n_frames - 1)
    f1 = np.maximum(np.ceil((end - start) / frame_beats - 1e-9).astype(np.int64) - 1, f0)
    f1 = np.minimum(f1, n_frames - 1)
    span = f1 - f0 + 1
    note_ix = np.repeat(np.arange(len(on)), span)
    frame = np.repeat(f0, span) + (np.arange(span.sum()) - np.repeat(np.cumsum(span) - span, span))
    lo = np.maximum(on[note_ix], edges[frame])
    hi = np.minimum(end[note_ix], edges[frame + 1])
    w = np.maximum(hi - lo, 0.0)
    # a zero-length note (or one shorter than a tick) still says its pitch class sounds
    w = np.where(span[note_ix] == 1, np.maximum(w, 0.05 * frame_beats), w)
    chroma, bass = _frame_profiles(frame, pitch[note_ix], w, n_frames, frame_beats, bass_weight)
    return {"chroma": chroma, "bass": bass, "frame_onset_beats": edges, "frame_beats": frame_beats,
            "onset_beats": on, "end_beats": end, "pitch": pitch, "onset_s": on_s, "end_s": end_s}


def _frame_profiles(frame, pitch, w, n_frames, frame_beats, bass_weight):
    """Pitch-class profile and bass of each frame from (frame, pitch, weight) of every
    piece of a note inside a frame (see :func:`beat_chroma`)."""
    chroma = np.bincount(frame * 12 + pitch % 12, weights=w, minlength=n_frames * 12)
    chroma = chroma.astype(np.float64, copy=False).reshape(n_frames, 12)
    bass = np.full(n_frames, 999, np.int64)
    long_enough = w >= 0.25 * frame_beats
    np.minimum.at(bass, frame[long_enough], pitch[long_enough])
    missing = bass == 999
    if missing.any():
        alt = np.full(n_frames, 999, np.int64)
        np.minimum.at(alt, frame, pitch)
        bass[missing] = alt[missing]
    bass[bass == 999] = -1
    total = chroma.sum(axis=1)
    has = bass >= 0
    chroma[np.flatnonzero(has), bass[has] % 12] += bass_weight * total[has]
    return chroma, bass


def _templates():
    q = len(QUALITIES)
    t = np.zeros((q * 12, 12))
    roots = np.repeat(np.arange(12), q)  # state s = root * q + quality
    for r in range(12):
        for j, name in enumerate(QUALITIES):
            for iv in QUALITY_INTERVALS[name]:
                t[r * q + j, (r + iv) % 12] = 1.0
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    pen = np.tile(np.array([_QUALITY_PENALTY[n] for n in QUALITIES]), 12)
    # stored transposed and contiguous: BLAS is ~100x slower on the strided view
    return np.ascontiguousarray(t.T), roots, pen


_TEMPLATES_T, _T_ROOTS, _T_PENALTY = _templates()
_NQ = len(QUALITIES)


@njit(cache=True, nogil=True)
def _viterbi(emis, switch_cost):
    """Best state path through ``emis`` [T, S] (log scores) where staying in a state is
    free and changing state costs ``switch_cost[t]`` at frame t."""
    n_t, n_s = emis.shape
    delta = emis[0].copy()
    back = np.empty((n_t, n_s), np.int16)  # < 32768 states; 4x less memory than int64
    for s in range(n_s):
        back[0, s] = s
    for t in range(1, n_t):
        best = 0
        for s in range(1, n_s):
            if delta[s] > delta[best]:
                best = s
        jump = delta[best] - switch_cost[t]
        for s in range(n_s):
            if delta[s] >= jump:
                back[t, s] = s
                delta[s] = delta[s] + emis[t, s]
            else:
                back[t, s] = best
                delta[s] = jump + emis[t, s]
    path = np.empty(n_t, np.int64)
    best = 0
    for s in range(1, n_s):
        if delta[s] > delta[best]:
            best = s
    path[n_t - 1] = best
    for t in range(n_t - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


def frame_chord_scores(chroma, bass, *, bass_root_bonus: float = 0.08):
    """Template scores per frame and chord (root x quality, state = root * 14 + quality).

    Returns np.ndarray [shape=(n_frames, 168)]: cosine similarity of the frame's profile
    with each template, plus ``bass_root_bonus`` where the bass is the chord's root,
    minus the quality's penalty.
    """
    norm = np.linalg.norm(chroma, axis=1, keepdims=True)
    c = np.divide(chroma, norm, out=np.zeros_like(chroma), where=norm > 0)
    s = c @ _TEMPLATES_T - _T_PENALTY[None, :]
    has = bass >= 0
    s[has] += bass_root_bonus * (_T_ROOTS[None, :] == (bass[has] % 12)[:, None])
    return s


METRICAL = True
METRICAL_COST = (0.5, 2.0, 1.0, 2.0)  # change cost x this, by beat of the bar from the downbeat


def _chord_path(chroma, bass, *, change_cost, sharpness, bass_root_bonus):
    scores = frame_chord_scores(chroma, bass, bass_root_bonus=bass_root_bonus)
    silent = chroma.sum(axis=1) <= 0
    n_s = scores.shape[1]
    emis = np.empty((len(chroma), n_s + 1))
    emis[:, :n_s] = sharpness * scores
    emis[:, n_s] = np.where(silent, sharpness * 2.0, -1e9)  # state n_s = 'N'
    emis[silent, :n_s] = 0.0
    cost = np.full(len(chroma), sharpness * change_cost)
    path = _viterbi(emis, cost) if len(chroma) else np.zeros(0, np.int64)
    if METRICAL and len(chroma) >= 16:
        # Second pass: chords change mostly at one position of the bar. Find it from the
        # first pass's changes (period 4 beats) and make changes cheaper there and at the
        # half bar, dearer elsewhere.
        changes = np.flatnonzero(path[1:] != path[:-1]) + 1
        if len(changes) >= 4:
            h = np.bincount(changes % 4, minlength=4).astype(float)
            down = int(np.argmax(h + 0.5 * np.roll(h, 2)))
            pos = (np.arange(len(chroma)) - down) % 4
            cost = cost * np.array(METRICAL_COST)[pos]
            path = _viterbi(emis, cost)
    return path, scores


def chords_from_notes(notes, *, tracks=None, tempo=None, ticks_per_beat=None, piece_id: str = "",
                      frame_beats: float = 1.0, change_cost: float = 0.12, sharpness: float = 10.0,
                      bass_weight: float = 0.2, bass_root_bonus: float = 0.08,
                      key_profile: str = "krumhansl", key_window_beats: float = 32.0,
                      key_change_cost: float = 2.0) -> pa.Table:
    """Chord segments of one piece.

    Parameters
    ----------
    notes : pa.Table or dict of arrays
        ``onset_beats``, ``duration_beats``, ``pitch`` (MIDI); optionally ``onset_s``,
        ``duration_s`` (used for seconds when no tempo map is given) and ``track_index``.
    tracks : pa.Table, optional
        ``track_index``, ``is_drum``: notes of drum tracks are left out.
    tempo : pa.Table, optional
        The ``tempo_changes`` of the file, with ``ticks_per_beat``, for exact seconds.
    piece_id : str
        Written into the ``piece_id`` column.
    frame_beats : float
        Analysis frame in quarter notes (1.0 = one chord decision per quarter note).
    change_cost : float
        Viterbi cost of a chord change, in units of template score (higher = longer chords).
    sharpness, bass_weight, bass_root_bonus : float
        Scale of the scores; emphasis of the bass note (see :func:`beat_chroma`).
    key_profile, key_window_beats, key_change_cost :
        Local key estimation (see :func:`local_keys`).

    Returns
    -------
    pa.Table with the schema of the ``chords`` table (``atlas_db.schema_harmony``).

    Example
    -------
    >>> notes = {"onset_beats": [0, 0, 0], "duration_beats": [4, 4, 4], "pitch": [62, 65, 69]}
    >>> chords_from_notes(notes).column("label").to_pylist()
    ['D:min']
    """
    return analyze_notes(notes, tracks=tracks, tempo=tempo, ticks_per_beat=ticks_per_beat,
                         piece_id=piece_id, frame_beats=frame_beats, change_cost=change_cost,
                         sharpness=sharpness, bass_weight=bass_weight, bass_root_bonus=bass_root_bonus,
                         key_profile=key_profile, key_window_beats=key_window_beats,
                         key_change_cost=key_change_cost)["chords"]


# --------------------------------------------------------------------------- keys

_KEY_MATRICES: dict[str, np.ndarray] = {}


def _key_matrix(profile: str):
    """[12, 24] (contiguous): column k = normalised profile of key k."""
    if profile not in _KEY_MATRICES:
        _KEY_MATRICES[profile] = np.ascontiguousarray(_make_key_matrix(profile).T)
    return _KEY_MATRICES[profile]


def _make_key_matrix(profile: str):
    if profile not in KEY_PROFILES:
        raise BadInputError(f"key_profile={profile!r}: expected one of {', '.join(KEY_PROFILES)}")
    maj, mnr = KEY_PROFILES[profile]
    rows = [np.roll(maj, k) for k in range(12)] + [np.roll(mnr, k) for k in range(12)]
    m = np.array(rows)
    m = m - m.mean(axis=1, keepdims=True)
    return m / np.linalg.norm(m, axis=1, keepdims=True)  # key index: tonic + 12 * is_minor


def _key_correlations(profiles, profile: str):
    """Pearson r of each profile [n, 12] with the 24 keys -> [n, 24]."""
    p = np.atleast_2d(np.asarray(profiles, np.float64))
    p = p - p.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(p, axis=1, keepdims=True)
    p = np.divide(p, norm, out=np.zeros_like(p), where=norm > 0)
    return p @ _key_matrix(profile)


def _key_dict(corr):
    order = np.argsort(-corr)
    k, k2 = int(order[0]), int(order[1])
    mode = "minor" if k >= 12 else "major"
    return {"key_tonic_pc": k % 12, "key_mode": mode, "key_name": key_name(k % 12, mode),
            "correlation": float(corr[k]),
            "runner_up_key": key_name(k2 % 12, "minor" if k2 >= 12 else "major"),
            "runner_up_correlation": float(corr[k2])}


def key_from_notes(notes, *, tracks=None, profile: str = "krumhansl") -> dict:
    """The key of a whole piece: duration-weighted pitch-class profile of every non-drum
    note correlated with the 24 rotated key profiles.

    Returns
    -------
    dict with ``key_tonic_pc`` (0-11), ``key_mode`` ('major'|'minor'), ``key_name``
    ('Eb major', mir_eval.key syntax), ``correlation`` (Pearson r) and the runner-up.

    Example
    -------
    >>> scale = {"onset_beats": range(8), "duration_beats": [1] * 8,
    ...          "pitch": [57, 59, 60, 62, 64, 65, 68, 69]}
    >>> key_from_notes(scale)["key_name"]
    'A minor'
    """
    on, end, pitch, _, _ = _note_arrays(notes, tracks)
    if len(on) == 0:
        raise BadInputError("notes: no pitched notes to estimate a key from")
    prof = np.bincount(pitch % 12, weights=np.maximum(end - on, 1e-3), minlength=12)
    return _key_dict(_key_correlations(prof, profile)[0])


def local_keys(chroma, *, profile: str = "krumhansl", window_frames: int = 32,
               change_cost: float = 2.0, sharpness: float = 10.0, piece_key: int | None = None):
    """Local key per frame: the profile summed over a centred window of
    ``window_frames`` frames, correlated with the 24 keys (the piece's own key,
    ``piece_key``, given ``KEY_PRIOR`` more), smoothed by Viterbi where a modulation
    costs ``change_cost`` (in correlation units).

    Returns np.ndarray [shape=(n_frames,)] of key indices (tonic + 12 for minor).
    """
    n = len(chroma)
    if n == 0:
        return np.zeros(0, np.int64)
    cs = np.vstack([np.zeros((1, 12)), np.cumsum(chroma, axis=0)])
    half = max(1, window_frames // 2)
    lo = np.clip(np.arange(n) - half, 0, n)
    hi = np.clip(np.arange(n) + half, 0, n)
    win = cs[hi] - cs[lo]
    corr = _key_correlations(win, profile)
    if piece_key is not None:
        corr[:, piece_key] += KEY_PRIOR
    emis = sharpness * corr
    cost = np.full(n, sharpness * change_cost)
    return _viterbi(emis, cost)


# --------------------------------------------------------------------------- analysis

def _runs(values):
    """Start indices and lengths of runs of equal values."""
    if len(values) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    lengths = np.diff(np.r_[starts, len(values)])
    return starts, lengths


def _segment_stats(chroma, bass, state_score, path, cl):
    """Per chord segment (runs of ``cl`` frames of ``path``): the observed pitch classes
    as a bit mask, the bass pitch class (-1: none) and the mean template score
    (``state_score``: each frame's score of its state in ``path``, any value where that
    is 'N': see :func:`_state_scores`)."""
    n_seg, n_s = len(cl), len(_T_ROOTS)
    seg_of_frame = np.repeat(np.arange(n_seg), cl)
    # Observed pitch classes: at least 10% of the segment's strongest pitch class.
    seg_chroma = np.zeros((n_seg, 12))
    np.add.at(seg_chroma, seg_of_frame, chroma)
    present = seg_chroma >= 0.1 * seg_chroma.max(axis=1, keepdims=True).clip(min=1e-12)
    present &= seg_chroma > 0
    mask = (present * (1 << np.arange(12))).sum(axis=1).astype(np.int32)
    # Bass: the most frequent bass pitch class over the segment's frames.
    bass_pc = np.full(n_seg, -1, np.int64)
    hb = bass >= 0
    if hb.any():
        counts = np.zeros((n_seg, 12))
        np.add.at(counts, (seg_of_frame[hb], bass[hb] % 12), 1.0)
        has_b = counts.sum(axis=1) > 0
        bass_pc[has_b] = counts[has_b].argmax(axis=1)
    frame_score = np.where(path == n_s, np.nan, state_score)
    seg_score = np.bincount(seg_of_frame, weights=np.nan_to_num(frame_score), minlength=n_seg) / cl
    return mask, bass_pc, seg_score


def analyze_notes(notes, *, tracks=None, tempo=None, ticks_per_beat=None, piece_id: str = "",
                  frame_beats: float = 1.0, change_cost: float = 0.12, sharpness: float = 10.0,
                  bass_weight: float = 0.2, bass_root_bonus: float = 0.08,
                  key_profile: str = "krumhansl", key_window_beats: float = 32.0,
                  key_change_cost: float = 2.0, version: str = VERSION) -> dict[str, pa.Table]:
    """Everything the harmony stage stores for one piece, from its notes.

    Parameters are those of :func:`chords_from_notes`.

    Returns
    -------
    dict of pa.Table: ``chords``, ``chord_transitions``, ``piece_keys``, ``key_segments``
    (schemas in ``atlas_db.schema_harmony.TABLES``). A piece without pitched notes gets
    no rows.
    """
    res = _analyze_arrays(notes, tracks=tracks, tempo=tempo, ticks_per_beat=ticks_per_beat,
                          frame_beats=frame_beats, change_cost=change_cost, sharpness=sharpness,
                          bass_weight=bass_weight, bass_root_bonus=bass_root_bonus, key_profile=key_profile,
                          key_window_beats=key_window_beats, key_change_cost=key_change_cost)
    if res is None:
        return _assemble([], None, version)
    return _assemble([piece_id], _merge([res]), version)


def _analyze_arrays(notes, *, tracks, tempo, ticks_per_beat, frame_beats, change_cost, sharpness, bass_weight,
                    bass_root_bonus, key_profile, key_window_beats, key_change_cost) -> dict | None:
    """The numbers behind one piece's rows (no strings, no Arrow): see :func:`_assemble`.
    None for a piece without pitched notes."""
    feats = beat_chroma(notes, tracks=tracks, frame_beats=frame_beats, bass_weight=bass_weight)
    chroma, bass, edges = feats["chroma"], feats["bass"], feats["frame_onset_beats"]
    if len(chroma) == 0:
        return None

    def to_s(b):
        return beats_to_seconds(b, tempo=tempo, ticks_per_beat=ticks_per_beat,
                                note_beats=np.r_[feats["onset_beats"], feats["end_beats"]]
                                if feats["onset_s"] is not None else None,
                                note_seconds=np.r_[feats["onset_s"], feats["end_s"]]
                                if feats["onset_s"] is not None else None)

    # Frames cover whole beats; the chord segments end where the music ends.
    first_on, last_end = feats["onset_beats"].min(), feats["end_beats"].max()
    bounds = edges.copy()
    bounds[0], bounds[-1] = max(bounds[0], min(first_on, bounds[1])), min(bounds[-1], max(last_end, bounds[-2]))
    bounds_s = to_s(bounds)

    # --- keys
    prof = np.bincount(feats["pitch"] % 12, weights=np.maximum(feats["end_beats"] - feats["onset_beats"], 1e-3),
                       minlength=12)
    key_corr = _key_correlations(prof, key_profile)[0]
    key_path = local_keys(chroma, profile=key_profile,
                          window_frames=max(2, int(round(key_window_beats / feats["frame_beats"]))),
                          change_cost=key_change_cost, sharpness=sharpness, piece_key=int(np.argmax(key_corr)))
    ks, kl = _runs(key_path)
    ke = ks + kl

    # --- chords
    path, scores = _chord_path(chroma, bass, change_cost=change_cost, sharpness=sharpness,
                               bass_root_bonus=bass_root_bonus)
    cs, cl = _runs(path)
    return _numbers(key_corr, key_path, ks, ks, ke, path, cs, cs, cs + cl, cl, bounds, bounds_s,
                    chroma, bass, _state_scores(scores, path))


def _state_scores(scores, path):
    """Each frame's score (``frame_chord_scores``) of its state in ``path`` (that of the
    last chord where the state is 'N')."""
    return scores[np.arange(len(path)), np.minimum(path, scores.shape[1] - 1)]


def _numbers(key_corr, key_path, ks, kb, ke, path, cs, cb, ce, cl, bounds, bounds_s, chroma, bass, state_score):
    """What :func:`_assemble` takes, from the key and chord paths: key segments start
    at frames ``ks`` (bounds ``kb``..``ke``), chord segments at ``cs`` (``cb``..``ce``,
    ``cl`` frames long); ``state_score``: see :func:`_segment_stats`."""
    state = path[cs]
    is_n = state == len(_T_ROOTS)
    mask, bass_pc, seg_score = _segment_stats(chroma, bass, state_score, path, cl)
    return {
        "key_corr": key_corr, "key": key_path[ks],
        "key_onset_beats": bounds[kb], "key_end_beats": bounds[ke], "key_onset_s": bounds_s[kb],
        "key_end_s": bounds_s[ke],
        "onset_beats": bounds[cb], "end_beats": bounds[ce], "onset_s": bounds_s[cb], "end_s": bounds_s[ce],
        "root": np.where(is_n, -1, state // _NQ), "quality": np.where(is_n, -1, state % _NQ),
        "bass_pc": bass_pc, "pc_mask": mask, "score": seg_score,
        # local key of a chord: the key at its middle frame
        "chord_key": key_path[cs + (cl - 1) // 2],
    }


def _lookups():
    """Every string the stage writes, precomputed once: label by (root, quality, bass),
    roman numeral by (degree, quality, mode), key name by key index, quality name,
    quality change and neo-Riemannian operation by (from quality, to quality, interval)."""
    labels = ["N"]  # index 1 + (root * 14 + quality) * 13 + bass + 1
    for r in range(12):
        for q in QUALITIES:
            labels += [chord_label(r, q)] + [chord_label(r, q, b) for b in range(12)]
    romans = ["N"]  # index 1 + (degree * 14 + quality) * 2 + is_minor
    for d in range(12):
        for q in QUALITIES:
            romans += [roman_numeral(d, q, "major"), roman_numeral(d, q, "minor")]
    keys = [key_name(k % 12, "minor" if k >= 12 else "major") for k in range(24)]
    changes = [f"{a}->{b}" for a in QUALITIES for b in QUALITIES]  # index from * 14 + to
    nro = [neo_riemannian(0, a, iv, b) for a in QUALITIES for b in QUALITIES for iv in range(12)]
    return {"label": pa.array(labels, pa.string()), "roman": pa.array(romans, pa.string()),
            "key": pa.array(keys, pa.string()), "mode": pa.array(["major", "minor"], pa.string()),
            "quality": pa.array(("N",) + QUALITIES, pa.string()), "change": pa.array(changes, pa.string()),
            "nro": pa.array(nro, pa.string())}


_LOOKUPS = _lookups()


def _take(name: str, idx) -> pa.Array:
    return _LOOKUPS[name].take(pa.array(np.asarray(idx, np.int64)))


def _ids(piece_ids: list[str], counts) -> pa.Array:
    """Each piece id repeated ``counts`` times."""
    return pa.array(piece_ids, pa.string()).take(pa.array(np.repeat(np.arange(len(piece_ids)), counts)))


def _ranks(counts: np.ndarray) -> np.ndarray:
    """0, 1, ... within each of consecutive groups of ``counts`` items."""
    total = int(counts.sum())
    return np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)


def _merge(results: list[dict]) -> dict:
    """Per-piece :func:`_analyze_arrays` results as one set of concatenated arrays (the
    form :func:`_analyze_batch` returns)."""
    keys = [k for k in results[0] if k != "key_corr"]
    out = {k: np.concatenate([r[k] for r in results]) for k in keys}
    out["key_corr"] = np.stack([r["key_corr"] for r in results])
    out["n_seg"] = np.array([len(r["key"]) for r in results], np.int64)
    out["n_ch"] = np.array([len(r["root"]) for r in results], np.int64)
    return out


def _assemble(piece_ids: list[str], m: dict | None, version: str) -> dict[str, pa.Table]:
    """The harmony tables of many pieces at once from their numbers (:func:`_merge`,
    :func:`_analyze_batch`): one Arrow array per column and table lookups for the
    strings, instead of Arrow tables and Python string formatting per piece."""
    out = {name: TABLES[name].empty_table() for name in TABLES}
    if not piece_ids:
        return out

    def cat(name):
        return m[name]

    n_pieces = len(piece_ids)
    ver = pa.array([version], pa.string())

    def const(n):
        return ver.take(pa.array(np.zeros(n, np.int64)))

    # --- keys
    corr = m["key_corr"]
    order = np.argsort(-corr, axis=1)
    k1, k2 = order[:, 0], order[:, 1]
    rows = np.arange(n_pieces)
    n_seg = m["n_seg"]
    out["piece_keys"] = pa.table({
        "piece_id": pa.array(piece_ids, pa.string()),
        "key_tonic_pc": pa.array(k1 % 12, pa.int16()),
        "key_mode": _take("mode", k1 >= 12),
        "key_name": _take("key", k1),
        "correlation": pa.array(corr[rows, k1].astype(np.float32), pa.float32()),
        "runner_up_key": _take("key", k2),
        "runner_up_correlation": pa.array(corr[rows, k2].astype(np.float32), pa.float32()),
        "n_key_segments": pa.array(n_seg, pa.int32()),
        "stage_version": const(n_pieces),
    }, schema=TABLES["piece_keys"])
    kidx = cat("key")
    out["key_segments"] = pa.table({
        "piece_id": _ids(piece_ids, n_seg),
        "segment_index": pa.array(_ranks(n_seg), pa.int32()),
        "onset_beats": cat("key_onset_beats"), "end_beats": cat("key_end_beats"),
        "onset_s": cat("key_onset_s"), "end_s": cat("key_end_s"),
        "key_tonic_pc": pa.array(kidx % 12, pa.int16()),
        "key_mode": _take("mode", kidx >= 12),
        "key_name": _take("key", kidx),
        "stage_version": const(len(kidx)),
    }, schema=TABLES["key_segments"])

    # --- chords
    n_ch = m["n_ch"]
    root, qual, bass_pc, ck = cat("root"), cat("quality"), cat("bass_pc"), cat("chord_key")
    is_n = qual < 0
    tonic = ck % 12
    degree = np.where(is_n, -1, (root - tonic) % 12)
    mask = cat("pc_mask")
    # the set bits of each mask, in order: the sorted list of pitch classes
    row, pcs = np.nonzero((mask[:, None] >> np.arange(12)) & 1)
    pcs_offsets = np.r_[0, np.cumsum(np.bincount(row, minlength=len(mask)))].astype(np.int32)
    chords = pa.table({
        "piece_id": _ids(piece_ids, n_ch),
        "chord_index": pa.array(_ranks(n_ch), pa.int32()),
        "onset_beats": cat("onset_beats"), "end_beats": cat("end_beats"),
        "onset_s": cat("onset_s"), "end_s": cat("end_s"),
        "label": _take("label", np.where(is_n, 0, 1 + (root * _NQ + qual) * 13 + bass_pc + 1)),
        "root_pc": pa.array(root, pa.int16(), mask=is_n),
        "quality": _take("quality", qual + 1),
        "bass_pc": pa.array(bass_pc, pa.int16(), mask=bass_pc < 0),
        "pc_mask": pa.array(mask, pa.int32()),
        "pcs": pa.ListArray.from_arrays(pa.array(pcs_offsets), pa.array(pcs.astype(np.int16), pa.int16())),
        "score": pa.array(np.where(is_n, np.nan, cat("score")).astype(np.float32), pa.float32(), mask=is_n),
        "key_tonic_pc": pa.array(tonic, pa.int16()),
        "key_mode": _take("mode", ck >= 12),
        "key_name": _take("key", ck),
        "degree": pa.array(degree, pa.int16(), mask=is_n),
        "roman": _take("roman", np.where(is_n, 0, 1 + (degree * _NQ + qual) * 2 + (ck >= 12))),
        "stage_version": const(len(root)),
    }, schema=TABLES["chords"])
    out["chords"] = chords
    out["chord_transitions"] = transitions_from_chords(chords, version=version)
    return out


def transitions_from_chords(chords: pa.Table, *, version: str = VERSION) -> pa.Table:
    """Pairs of successive chords of one or more pieces (rows of ``chords``, ordered by
    piece and ``chord_index``); a pair with 'N' on either side is left out.

    Returns pa.Table with the schema of ``chord_transitions``.
    """
    if chords.num_rows < 2:
        return TABLES["chord_transitions"].empty_table()
    import pyarrow.compute as pc

    pid = chords.column("piece_id").combine_chunks()
    # quality index 0-13, -1 for 'N'
    q = pc.index_in(chords.column("quality"), value_set=pa.array(QUALITIES)).fill_null(-1)
    q = q.to_numpy(zero_copy_only=False).astype(np.int64)
    same = pc.equal(pid.slice(0, len(pid) - 1), pid.slice(1)).to_numpy(zero_copy_only=False)
    a = np.flatnonzero(same & (q[:-1] >= 0) & (q[1:] >= 0))
    b = a + 1
    root = chords.column("root_pc").to_numpy(zero_copy_only=False)
    iv = (root[b].astype(np.int64) - root[a].astype(np.int64)) % 12
    ta, tb = pa.array(a), pa.array(b)

    def col(name, at):
        return chords.column(name).take(at)

    return pa.table({
        "piece_id": col("piece_id", ta),
        "chord_index": col("chord_index", ta),
        "to_chord_index": col("chord_index", tb),
        "onset_beats": col("onset_beats", tb), "onset_s": col("onset_s", tb),
        "from_label": col("label", ta),
        "to_label": col("label", tb),
        "from_quality": col("quality", ta),
        "to_quality": col("quality", tb),
        "root_interval": pa.array(iv, pa.int16()),
        "quality_change": _take("change", q[a] * _NQ + q[b]),
        "nro": _take("nro", (q[a] * _NQ + q[b]) * 12 + iv),
        "from_roman": col("roman", ta),
        "to_roman": col("roman", tb),
        "stage_version": pa.array([version] * len(a), pa.string()),
    }, schema=TABLES["chord_transitions"])



# --------------------------------------------------------------------------- batch
# The stage analyses a batch of pieces with whole-array operations: every step of
# :func:`_analyze_arrays` on all the pieces' notes and frames at once, piece by piece
# only where the result would otherwise change in the last bit (the BLAS products, whose
# rounding depends on the shape they are given) and in the numba loops. Each piece's
# numbers are exactly those of :func:`_analyze_arrays` (tests/test_vectors_batch.py).

@njit(cache=True, nogil=True)
def _cumsum_groups(x, offsets):
    # np.cumsum(x[a:b], axis=0) of each group, with a row of zeros before each group
    out = np.zeros((x.shape[0] + offsets.size - 1, x.shape[1]), np.float64)
    for g in range(offsets.size - 1):
        a, b = offsets[g], offsets[g + 1]
        for c in range(x.shape[1]):
            if b > a:
                acc = x[a, c]
                out[a + g + 1, c] = acc
                for i in range(a + 1, b):
                    acc += x[i, c]
                    out[i + g + 1, c] = acc
    return out


@njit(cache=True, nogil=True)
def _searchsorted_groups(tb, t_off, beats, b_off):
    # per group: np.searchsorted(tb[group], beats[group], side="right") - 1, clipped
    k = np.zeros(beats.size, np.int64)
    for g in range(b_off.size - 1):
        ta, tz = t_off[g], t_off[g + 1]
        for i in range(b_off[g], b_off[g + 1]):
            lo, hi = ta, tz
            while lo < hi:
                mid = (lo + hi) // 2
                if tb[mid] <= beats[i]:
                    lo = mid + 1
                else:
                    hi = mid
            k[i] = min(max(lo - 1, ta), tz - 1)
    return k


@njit(cache=True, nogil=True)
def _piece_paths(raw, corr, penalty, roots, bass, bonus, sharpness, silent, change_cost, key_change_cost,
                 metrical_cost, metrical):
    """One piece's key path, chord path and the chord path's scores from its template
    products ``raw`` [frames, 168] (``c @ _TEMPLATES_T``) and key products ``corr``
    [frames, 24]: :func:`_viterbi` on ``sharpness * corr``; :func:`_viterbi` on
    :func:`_chord_emissions`, again with the metrical costs where that path changes chord
    at least 4 times in at least 16 frames (as :func:`_chord_path`); :func:`_path_scores`
    of the chord path. ``change_cost``, ``key_change_cost``: times ``sharpness``."""
    n = raw.shape[0]
    key_path = _viterbi(sharpness * corr, np.full(n, key_change_cost))
    emis = _chord_emissions(raw, penalty, roots, bass, bonus, sharpness, silent)
    cost = np.full(n, change_cost)
    path = _viterbi(emis, cost)
    if metrical and n >= 16:
        # the changes' histogram by frame % 4 (np.bincount, as floats), its downbeat the
        # first maximum of h + 0.5 * np.roll(h, 2)
        hist = np.zeros(4)
        n_chg = 0
        for i in range(1, n):
            if path[i] != path[i - 1]:
                hist[i % 4] += 1.0
                n_chg += 1
        if n_chg >= 4:
            down, top = 0, hist[0] + 0.5 * hist[2]
            for k in range(1, 4):
                v = hist[k] + 0.5 * hist[(k + 2) % 4]
                if v > top:
                    down, top = k, v
            for i in range(n):
                cost[i] = cost[i] * metrical_cost[(i - down) % 4]
            path = _viterbi(emis, cost)
    return key_path, path, _path_scores(raw, penalty, roots, bass, bonus, path)


def _paths_by_piece(p, c, offsets, key_m, bass, bonus, sharpness, silent, change_cost, key_change_cost, piece_keys):
    """:func:`_piece_paths` of each piece: (key path, chord path, chord scores) of every
    frame (piece g's frames ``offsets[g]:offsets[g + 1]``; the batch gives frames only to
    the pieces it analyses). A piece's products are made by one BLAS call on its own rows, as
    :func:`_analyze_arrays` makes them (a call over all pieces rounds some products
    differently), just before its Viterbi uses them: the batch's frames x 168 products
    never exist at once (they cost more in page faults and memory traffic than the
    products themselves)."""
    n_all = c.shape[0]
    key_path = np.zeros(n_all, np.int64)
    path = np.zeros(n_all, np.int64)
    scores = np.zeros(n_all)
    metrical_cost = np.array(METRICAL_COST, np.float64)
    with one_blas_thread():  # a piece's product is just big enough for OpenBLAS's threads, which cost more
        for g, (a, b) in enumerate(zip(offsets[:-1].tolist(), offsets[1:].tolist())):
            if b > a:
                raw = np.ascontiguousarray(c[a:b]) @ _TEMPLATES_T
                corr = np.ascontiguousarray(p[a:b]) @ key_m
                corr[:, piece_keys[g]] += KEY_PRIOR  # as local_keys
                key_path[a:b], path[a:b], scores[a:b] = _piece_paths(
                    raw, corr, _T_PENALTY, _T_ROOTS, bass[a:b], bonus, sharpness, silent[a:b], change_cost,
                    key_change_cost, metrical_cost, METRICAL)
    return key_path, path, scores


@njit(cache=True, nogil=True)
def _chord_emissions(raw, penalty, roots, bass, bonus, sharpness, silent):
    """The Viterbi emissions of :func:`_chord_path` [frames, 169] from the template
    products ``raw`` [frames, 168] (``c @ _TEMPLATES_T``), as ``frame_chord_scores`` and
    ``_chord_path`` compute them with NumPy, to the bit: NumPy adds ``bonus * 0.0`` to the
    scores whose root is not the bass, which changes no score (``raw`` >= +0, so no
    score is -0.0), and multiplies as here."""
    n_f, n_s = raw.shape
    emis = np.empty((n_f, n_s + 1))
    for f in range(n_f):
        b = bass[f] % 12 if bass[f] >= 0 else -1
        for s in range(n_s):
            v = raw[f, s] - penalty[s]
            if roots[s] == b:
                v = v + bonus
            emis[f, s] = 0.0 if silent[f] else sharpness * v
        emis[f, n_s] = sharpness * 2.0 if silent[f] else -1e9
    return emis


@njit(cache=True, nogil=True)
def _path_scores(raw, penalty, roots, bass, bonus, path):
    """:func:`_state_scores` from the template products, as :func:`_chord_emissions`
    makes the scores."""
    n_f, n_s = raw.shape
    out = np.empty(n_f)
    for f in range(n_f):
        s = min(path[f], n_s - 1)
        v = raw[f, s] - penalty[s]
        if bass[f] >= 0 and roots[s] == bass[f] % 12:
            v = v + bonus
        out[f] = v
    return out


def _seg_ranks(lengths):
    return np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def _analyze_batch(on, dur, pitch, note_off, tempo, tpb, *, frame_beats, change_cost, sharpness,
                   bass_weight, bass_root_bonus, key_profile, key_window_beats, key_change_cost):
    """:func:`_analyze_arrays` of many pieces at once.

    on, dur, pitch: the pieces' notes, piece g at ``note_off[g]:note_off[g + 1]``;
    tempo: (time_ticks, time_s, tempo_bpm, offsets) of their tempo maps (sorted by tick
    within a piece); tpb: ticks per beat per piece (0 when unknown).
    Returns (indices of the pieces analysed, merged numbers as :func:`_merge`, indices of
    the pieces left to :func:`_analyze_arrays`: those past ``MAX_FRAMES`` frames).
    """
    fb = float(frame_beats)
    n_pieces = len(note_off) - 1
    g_all = np.repeat(np.arange(n_pieces), np.diff(note_off))
    on = np.asarray(on, np.float64)
    dur = np.asarray(dur, np.float64)
    pitch = np.asarray(pitch).astype(np.int64)
    keep = np.isfinite(on) & np.isfinite(dur) & (pitch >= 0) & (pitch <= 127)
    on, dur, pitch, g = on[keep], np.maximum(dur[keep], 0.0), pitch[keep], g_all[keep]
    end = on + dur
    counts = np.bincount(g, minlength=n_pieces)
    # grid phase per piece (PHASE_WEIGHTING "duration"), as _grid_phase
    bins = 48
    w = np.minimum(end - on, 4 * fb)
    pos = np.mod(on, fb) / fb
    h = np.bincount(g * bins + np.minimum((pos * bins).astype(np.int64), bins - 1), weights=w,
                    minlength=n_pieces * bins).reshape(n_pieces, bins)
    h = h + 0.5 * (np.roll(h, 1, axis=1) + np.roll(h, -1, axis=1))
    phase = np.argmax(h, axis=1) / bins * fb
    phase = np.where(phase > fb / 2, phase - fb, phase)
    has = counts > 0
    starts = np.concatenate([[0], np.cumsum(counts)])[:-1]
    on_min = np.full(n_pieces, np.inf)
    on_max = np.full(n_pieces, -np.inf)
    if has.any():
        on_min[has] = np.minimum.reduceat(on, starts[has])
        on_max[has] = np.maximum.reduceat(on, starts[has])
    end = np.minimum(end, on_max[g] + MAX_HOLD_BEATS)
    end_max = np.full(n_pieces, -np.inf)
    if has.any():
        end_max[has] = np.maximum.reduceat(end, starts[has])
    start = phase + fb * np.floor((on_min - phase) / fb)
    with np.errstate(invalid="ignore"):
        n_frames = np.where(has, np.maximum(1, np.ceil((end_max - start) / fb - 1e-9)), 0).astype(np.int64)
    alone = np.flatnonzero(n_frames > MAX_FRAMES)  # longer frames: the one-piece path
    ok = has & (n_frames <= MAX_FRAMES)
    n_frames = np.where(ok, n_frames, 0)
    sel = ok[g]
    on, end, pitch, g = on[sel], end[sel], pitch[sel], g[sel]
    f_off = np.concatenate([[0], np.cumsum(n_frames)]).astype(np.int64)
    # frame edges: start + fb * arange(n + 1) per piece (n + 1 edges)
    e_off = np.concatenate([[0], np.cumsum(n_frames + ok)]).astype(np.int64)
    edges = np.repeat(start, n_frames + ok) + fb * _seg_ranks(n_frames + ok)
    nf = n_frames[g]
    st = start[g]
    f0 = np.clip(np.floor((on - st) / fb).astype(np.int64), 0, nf - 1)
    f1 = np.maximum(np.ceil((end - st) / fb - 1e-9).astype(np.int64) - 1, f0)
    f1 = np.minimum(f1, nf - 1)
    span = f1 - f0 + 1
    note_ix = np.repeat(np.arange(len(on)), span)
    frame = np.repeat(f0, span) + _seg_ranks(span)
    gn = g[note_ix]
    lo = np.maximum(on[note_ix], edges[e_off[gn] + frame])
    hi = np.minimum(end[note_ix], edges[e_off[gn] + frame + 1])
    w = np.maximum(hi - lo, 0.0)
    w = np.where(span[note_ix] == 1, np.maximum(w, 0.05 * fb), w)
    n_all = int(f_off[-1])
    chroma, bass = _frame_profiles(f_off[gn] + frame, pitch[note_ix], w, n_all, fb, bass_weight)
    fg = np.repeat(np.arange(n_pieces), n_frames)  # piece of each frame
    fr = _seg_ranks(n_frames)  # frame index within its piece

    # chord segment bounds: the edges, the first and last moved to where the music is
    first_on, last_end = on_min, end_max
    bounds = edges.copy()
    b0, bl = e_off[:-1][ok], e_off[1:][ok] - 1
    bounds[b0], bounds[bl] = (np.maximum(edges[b0], np.minimum(first_on[ok], edges[b0 + 1])),
                              np.minimum(edges[bl], np.maximum(last_end[ok], edges[bl - 1])))
    bounds_s = _bounds_seconds(bounds, e_off, tempo, tpb)

    # keys
    prof = np.bincount(g * 12 + pitch % 12, weights=np.maximum(end - on, 1e-3),
                       minlength=n_pieces * 12).reshape(n_pieces, 12)
    key_corr = np.zeros((n_pieces, 24))
    for i in np.flatnonzero(ok).tolist():
        key_corr[i] = _key_correlations(prof[i], key_profile)[0]
    window = max(2, int(round(key_window_beats / fb)))
    half = max(1, window // 2)
    cs = _cumsum_groups(chroma, f_off)
    lo_k = np.clip(fr - half, 0, n_frames[fg])
    hi_k = np.clip(fr + half, 0, n_frames[fg])
    base = f_off[fg] + fg
    win = cs[base + hi_k] - cs[base + lo_k]
    p = win - win.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(p, axis=1, keepdims=True)
    p = np.divide(p, norm, out=np.zeros_like(p), where=norm > 0)

    # chords (_chord_path)
    norm = np.linalg.norm(chroma, axis=1, keepdims=True)
    c = np.divide(chroma, norm, out=np.zeros_like(chroma), where=norm > 0)
    silent = chroma.sum(axis=1) <= 0
    # bass_root_bonus * True: the bonus as NumPy adds it
    key_path, path, path_scores = _paths_by_piece(
        p, c, f_off, _key_matrix(key_profile), bass, bass_root_bonus * 1.0, float(sharpness), silent,
        sharpness * change_cost, sharpness * key_change_cost, np.argmax(key_corr, axis=1))

    # segments (runs of one chord / one key within a piece)
    def runs(values):
        new = np.ones(len(values), bool)
        new[1:] = (values[1:] != values[:-1]) | (fg[1:] != fg[:-1])
        s0 = np.flatnonzero(new)
        return s0, np.diff(np.concatenate([s0, [len(values)]]))

    ks, kl = runs(key_path)
    n_seg = np.bincount(fg[ks], minlength=n_pieces)
    cs0, cl = runs(path)
    n_ch = np.bincount(fg[cs0], minlength=n_pieces)
    # a frame's bound index: frame f of piece p is bound e_off[p] + f; its end the next
    kb, ke = e_off[fg[ks]] + fr[ks], e_off[fg[ks]] + fr[ks] + kl
    cb, ce = e_off[fg[cs0]] + fr[cs0], e_off[fg[cs0]] + fr[cs0] + cl
    done = np.flatnonzero(ok)
    merged = _numbers(key_corr[done], key_path, ks, kb, ke, path, cs0, cb, ce, cl, bounds, bounds_s,
                      chroma, bass, path_scores)
    merged.update(n_seg=n_seg[done], n_ch=n_ch[done])
    return done, merged, alone


def _bounds_seconds(bounds, e_off, tempo, tpb):
    """beats_to_seconds of each piece's bounds through its tempo map (120 bpm, i.e.
    beats * 0.5, for a piece without a tempo map or ticks per beat)."""
    t_ticks, t_s, t_bpm, t_off = tempo
    n_pieces = len(e_off) - 1
    tpb = np.asarray(tpb, np.float64)
    n_t = np.diff(t_off)
    mapped = (n_t > 0) & (tpb > 0)
    tg = np.repeat(np.arange(n_pieces), n_t)
    tb = t_ticks.astype(np.float64) / np.where(tpb[tg] > 0, tpb[tg], 1.0)
    ts = t_s.astype(np.float64)
    bpm = t_bpm.astype(np.float64)
    keep = mapped[tg]
    tb, ts, bpm, tg = tb[keep], ts[keep], bpm[keep], tg[keep]
    o = np.lexsort((tb, tg))  # stable: ties keep the file's order, as argsort(kind="stable")
    tb, ts, bpm, tg = tb[o], ts[o], bpm[o], tg[o]
    # the SMF default (120 bpm from 0) before a first tempo event after 0
    first = np.flatnonzero(np.r_[True, tg[1:] != tg[:-1]]) if tg.size else np.zeros(0, np.int64)
    late = first[tb[first] > 0]
    if late.size:
        tb = np.insert(tb, late, 0.0)
        ts = np.insert(ts, late, 0.0)
        bpm = np.insert(bpm, late, 120.0)
        tg = np.insert(tg, late, tg[late])
    t_off2 = np.concatenate([[0], np.cumsum(np.bincount(tg, minlength=n_pieces))]).astype(np.int64)
    k = _searchsorted_groups(tb, t_off2, bounds, e_off)
    bg = np.repeat(np.arange(n_pieces), np.diff(e_off))
    out = bounds * 0.5
    m = mapped[bg]
    out[m] = ts[k[m]] + (bounds[m] - tb[k[m]]) * 60.0 / bpm[k[m]]
    return out


# --------------------------------------------------------------------------- stage

# The analysis parameters of the stage (those of :func:`chords_from_notes`'s defaults).
_DEFAULTS = dict(tracks=None, frame_beats=1.0, change_cost=0.12, sharpness=10.0, bass_weight=0.2,
                 bass_root_bonus=0.08, key_profile="krumhansl", key_window_beats=32.0, key_change_cost=2.0)


def forget(con, piece_ids: list[str]) -> None:
    """Delete this stage's rows for pieces it is about to redo. Pieces never analysed
    (no ``piece_keys`` row, which every analysed piece has) cost a look at that table of
    one row per piece, not a scan of every chord: the runner calls this before every
    batch, new pieces included."""
    ids = [r[0] for r in con.execute(
        "SELECT piece_id FROM piece_keys WHERE piece_id IN (SELECT unnest(?))", [list(piece_ids)]).fetchall()]
    if not ids:
        return
    for name in TABLES:
        con.execute(f"DELETE FROM {name} WHERE piece_id IN (SELECT unnest(?))", [ids])


def _group_slices(ids: np.ndarray):
    """piece id -> slice into arrays sorted by piece id."""
    if len(ids) == 0:
        return {}
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], len(ids)]
    return {ids[s]: slice(s, e) for s, e in zip(starts.tolist(), ends.tolist())}


def _arrow(con, sql, params):
    return con.sql(sql, params=params).to_arrow_table()


def load_inputs(con, piece_ids: list[str], notes: str = "notes") -> dict[str, pa.Table]:
    """What :func:`compute_rows` needs for these pieces, read in one pass: their non-drum
    notes and tempo changes (sorted by piece) and their ticks per beat. ``notes``: the
    relation that holds the pieces' notes (see ingest/derived.py)."""
    ids = list(piece_ids)
    return {
        "notes": _arrow(con,
            f"""SELECT n.piece_id, n.onset_beats, n.duration_beats, n.pitch
               FROM {notes} n JOIN tracks t ON t.piece_id = n.piece_id AND t.track_index = n.track_index
               WHERE n.piece_id IN (SELECT unnest(?)) AND NOT coalesce(t.is_drum, false)
               ORDER BY n.piece_id""", [ids]),
        # rowid: tempo changes at the same tick in the file's order (the last one holds,
        # as when the notes were timed); without it the order of such ties, and so the
        # seconds of the chords, changed from one run to the next
        "tempo": _arrow(con,
            """SELECT piece_id, time_ticks, time_s, tempo_bpm FROM tempo_changes
               WHERE piece_id IN (SELECT unnest(?)) ORDER BY piece_id, time_ticks, rowid""", [ids]),
        # a recording's notes are on a grid of TICKS_PER_BEAT at its tracked tempo
        # (ingest/transcribe.py) though it stores no ticks per beat of a file
        "pieces": _arrow(con, "SELECT piece_id, coalesce(ticks_per_beat, ?) AS ticks_per_beat FROM pieces "
                              "WHERE piece_id IN (SELECT unnest(?))", [TRANSCRIBED_TICKS_PER_BEAT, ids]),
    }


def compute_rows(inputs: dict[str, pa.Table], piece_ids: list[str]) -> dict[str, pa.Table]:
    """The harmony rows (table name -> Arrow table) of each piece, each on its own
    (computed for the whole batch at once: :func:`_analyze_batch`)."""
    notes, tempo = inputs["notes"], inputs["tempo"]
    pieces = inputs["pieces"]
    tpb = dict(zip(pieces.column("piece_id").to_pylist(), pieces.column("ticks_per_beat").to_pylist()))
    n_pid = notes.column("piece_id").to_numpy(zero_copy_only=False)
    t_pid = tempo.column("piece_id").to_numpy(zero_copy_only=False)
    n_sl, t_sl = _group_slices(n_pid), _group_slices(t_pid)
    ids = [pid for pid in piece_ids if pid in n_sl]
    if not ids:
        return {}
    n_cols = {c: notes.column(c).to_numpy() for c in ("onset_beats", "duration_beats", "pitch")}
    t_cols = {c: tempo.column(c).to_numpy() for c in ("time_ticks", "time_s", "tempo_bpm")}

    def gather(cols, slices):
        """The pieces' rows in the order of ``ids`` and their offsets."""
        sl = [slices.get(pid, slice(0, 0)) for pid in ids]
        idx = np.concatenate([np.arange(s.start, s.stop) for s in sl]) if sl else np.zeros(0, np.int64)
        off = np.concatenate([[0], np.cumsum([s.stop - s.start for s in sl])]).astype(np.int64)
        return {c: v[idx] for c, v in cols.items()}, off

    nc, n_off = gather(n_cols, n_sl)
    tc, t_off = gather(t_cols, t_sl)
    params = {k: v for k, v in _DEFAULTS.items() if k != "tracks"}
    done, merged, alone = _analyze_batch(
        nc["onset_beats"], nc["duration_beats"], nc["pitch"], n_off,
        (tc["time_ticks"], tc["time_s"], tc["tempo_bpm"], t_off),
        [tpb.get(pid) or 0 for pid in ids], **params)
    out_ids = [ids[i] for i in done.tolist()]
    if alone.size:  # pieces past MAX_FRAMES frames: one by one, merged in piece order
        rest = []
        for i in alone.tolist():
            a, b = n_off[i], n_off[i + 1]
            res = _analyze_arrays({c: v[a:b] for c, v in nc.items()},
                                  tempo={c: v[t_off[i]:t_off[i + 1]] for c, v in tc.items()},
                                  ticks_per_beat=tpb.get(ids[i]), **_DEFAULTS)
            if res is not None:
                rest.append((ids[i], res))
        out = _assemble(out_ids, merged, VERSION) if out_ids else _assemble([], None, VERSION)
        if rest:
            extra = _assemble([r[0] for r in rest], _merge([r[1] for r in rest]), VERSION)
            out = {name: _sorted(pa.concat_tables([out[name], extra[name]])) for name in out}
    else:
        out = _assemble(out_ids, merged, VERSION)
    return {name: tbl for name, tbl in out.items() if tbl.num_rows}


def _sorted(tbl: pa.Table) -> pa.Table:
    """Rows by piece id (stable: a piece's rows keep their order)."""
    order = np.argsort(tbl.column("piece_id").to_numpy(zero_copy_only=False), kind="stable")
    return tbl.take(pa.array(order))


def write_rows(con, rows: dict[str, pa.Table]) -> None:
    """Insert what :func:`compute_rows` returned."""
    for name, tbl in rows.items():
        view = f"_harmony_{name}"
        con.register(view, tbl)
        con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM {view}")
        con.unregister(view)


def update(con, piece_ids: list[str], notes: str = "notes") -> None:
    """Compute and insert the harmony rows of ``piece_ids`` (one read of their notes from
    the relation ``notes``)."""
    ids = list(piece_ids)
    if ids:
        write_rows(con, compute_rows(load_inputs(con, ids, notes), ids))
