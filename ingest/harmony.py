"""Harmony from notes: chords per beat smoothed into segments, keys per piece and per
segment, and the transitions between successive chords.

The numeric core is pure (Arrow/NumPy in, Arrow/NumPy out) so it also runs on a file
that is not in the database::

    >>> from ingest.midi_parse import parse_midi                       # doctest: +SKIP
    >>> t = parse_midi(open("song.mid", "rb").read(), piece_id="q", path="song.mid")
    >>> chords = chords_from_notes(t["notes"], tracks=t["tracks"], tempo=t["tempo_changes"],
    ...                            ticks_per_beat=t["pieces"]["ticks_per_beat"])
    >>> key_from_notes(t["notes"])["key_name"]
    'Gb major'

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
VERSION = "harmony-4"
BATCH_PIECES = 200

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
    # circular smoothing so a peak split across two bins still wins
    h = h + np.roll(h, 1) + np.roll(h, -1)
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
    pc = pitch[note_ix] % 12
    chroma = np.bincount(frame * 12 + pc, weights=w, minlength=n_frames * 12).reshape(n_frames, 12)
    bass = np.full(n_frames, 999, np.int64)
    long_enough = w >= 0.25 * frame_beats
    np.minimum.at(bass, frame[long_enough], pitch[note_ix][long_enough])
    missing = bass == 999
    if missing.any():
        alt = np.full(n_frames, 999, np.int64)
        np.minimum.at(alt, frame, pitch[note_ix])
        bass[missing] = alt[missing]
    bass[bass == 999] = -1
    total = chroma.sum(axis=1)
    has = bass >= 0
    chroma[np.flatnonzero(has), bass[has] % 12] += bass_weight * total[has]
    return {"chroma": chroma, "bass": bass, "frame_onset_beats": edges, "frame_beats": frame_beats,
            "onset_beats": on, "end_beats": end, "pitch": pitch, "onset_s": on_s, "end_s": end_s}


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
               change_cost: float = 2.0, sharpness: float = 10.0):
    """Local key per frame: the profile summed over a centred window of
    ``window_frames`` frames, correlated with the 24 keys, smoothed by Viterbi where a
    modulation costs ``change_cost`` (in correlation units).

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
    feats = beat_chroma(notes, tracks=tracks, frame_beats=frame_beats, bass_weight=bass_weight)
    chroma, bass, edges = feats["chroma"], feats["bass"], feats["frame_onset_beats"]
    out = {name: TABLES[name].empty_table() for name in TABLES}
    if len(chroma) == 0:
        return out

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
    gk = _key_dict(_key_correlations(prof, key_profile)[0])
    key_path = local_keys(chroma, profile=key_profile,
                          window_frames=max(2, int(round(key_window_beats / feats["frame_beats"]))),
                          change_cost=key_change_cost, sharpness=sharpness)
    ks, kl = _runs(key_path)
    kidx = key_path[ks]
    n_seg = len(ks)
    ke = ks + kl
    out["key_segments"] = pa.table({
        "piece_id": pa.array([piece_id] * n_seg, pa.string()),
        "segment_index": pa.array(np.arange(n_seg), pa.int32()),
        "onset_beats": bounds[ks], "end_beats": bounds[ke],
        "onset_s": bounds_s[ks], "end_s": bounds_s[ke],
        "key_tonic_pc": pa.array(kidx % 12, pa.int16()),
        "key_mode": pa.array(np.where(kidx >= 12, "minor", "major"), pa.string()),
        "key_name": pa.array([key_name(k % 12, "minor" if k >= 12 else "major") for k in kidx.tolist()], pa.string()),
        "stage_version": pa.array([version] * n_seg, pa.string()),
    }, schema=TABLES["key_segments"])
    out["piece_keys"] = pa.Table.from_pylist(
        [{"piece_id": piece_id, **gk, "n_key_segments": n_seg, "stage_version": version}],
        schema=TABLES["piece_keys"])

    # --- chords
    path, scores = _chord_path(chroma, bass, change_cost=change_cost, sharpness=sharpness,
                               bass_root_bonus=bass_root_bonus)
    cs, cl = _runs(path)
    ce = cs + cl
    n_ch = len(cs)
    state = path[cs]
    is_n = state == scores.shape[1]
    root = np.where(is_n, -1, state // _NQ)
    qual_ix = np.where(is_n, -1, state % _NQ)
    seg_of_frame = np.repeat(np.arange(n_ch), cl)
    # Observed pitch classes: at least 10% of the segment's strongest pitch class.
    seg_chroma = np.zeros((n_ch, 12))
    np.add.at(seg_chroma, seg_of_frame, chroma)
    present = seg_chroma >= 0.1 * seg_chroma.max(axis=1, keepdims=True).clip(min=1e-12)
    present &= seg_chroma > 0
    mask = (present * (1 << np.arange(12))).sum(axis=1).astype(np.int32)
    # Bass: the most frequent bass pitch class over the segment's frames.
    bass_pc = np.full(n_ch, -1, np.int64)
    hb = bass >= 0
    if hb.any():
        counts = np.zeros((n_ch, 12))
        np.add.at(counts, (seg_of_frame[hb], bass[hb] % 12), 1.0)
        has_b = counts.sum(axis=1) > 0
        bass_pc[has_b] = counts[has_b].argmax(axis=1)
    frame_score = scores[np.arange(len(path)), np.minimum(path, scores.shape[1] - 1)]
    frame_score = np.where(path == scores.shape[1], np.nan, frame_score)
    seg_score = np.bincount(seg_of_frame, weights=np.nan_to_num(frame_score), minlength=n_ch) / cl
    # Local key of a chord: the key at its middle frame.
    mid = cs + (cl - 1) // 2
    ck = key_path[mid]
    tonic = ck % 12
    modes = np.where(ck >= 12, "minor", "major")
    degree = np.where(is_n, -1, (root - tonic) % 12)
    quality = [("N" if q < 0 else QUALITIES[q]) for q in qual_ix.tolist()]
    labels = [chord_label(r, q, b if b >= 0 else None) if q != "N" else "N"
              for r, q, b in zip(root.tolist(), quality, bass_pc.tolist())]
    romans = [roman_numeral(d, q, m) if q != "N" else "N"
              for d, q, m in zip(degree.tolist(), quality, modes.tolist())]
    pcs = [[p for p in range(12) if m >> p & 1] for m in mask.tolist()]
    out["chords"] = pa.table({
        "piece_id": pa.array([piece_id] * n_ch, pa.string()),
        "chord_index": pa.array(np.arange(n_ch), pa.int32()),
        "onset_beats": bounds[cs], "end_beats": bounds[ce],
        "onset_s": bounds_s[cs], "end_s": bounds_s[ce],
        "label": pa.array(labels, pa.string()),
        "root_pc": pa.array(root, pa.int16(), mask=is_n),
        "quality": pa.array(quality, pa.string()),
        "bass_pc": pa.array(bass_pc, pa.int16(), mask=bass_pc < 0),
        "pc_mask": pa.array(mask, pa.int32()),
        "pcs": pa.array(pcs, pa.list_(pa.int16())),
        "score": pa.array(np.where(is_n, np.nan, seg_score).astype(np.float32), pa.float32(), mask=is_n),
        "key_tonic_pc": pa.array(tonic, pa.int16()),
        "key_mode": pa.array(modes, pa.string()),
        "key_name": pa.array([key_name(t, m) for t, m in zip(tonic.tolist(), modes.tolist())], pa.string()),
        "degree": pa.array(degree, pa.int16(), mask=is_n),
        "roman": pa.array(romans, pa.string()),
        "stage_version": pa.array([version] * n_ch, pa.string()),
    }, schema=TABLES["chords"])
    out["chord_transitions"] = transitions_from_chords(out["chords"], version=version)
    return out


def transitions_from_chords(chords: pa.Table, *, version: str = VERSION) -> pa.Table:
    """Pairs of successive chords of one or more pieces (rows of ``chords``, ordered by
    piece and ``chord_index``); a pair with 'N' on either side is left out.

    Returns pa.Table with the schema of ``chord_transitions``.
    """
    if chords.num_rows < 2:
        return TABLES["chord_transitions"].empty_table()
    pid = chords.column("piece_id").to_pylist()
    q = chords.column("quality").to_pylist()
    root = chords.column("root_pc").to_numpy(zero_copy_only=False)
    idx = chords.column("chord_index").to_numpy()
    i = np.arange(len(q) - 1)
    ok = np.array([pid[a] == pid[a + 1] and q[a] != "N" and q[a + 1] != "N" for a in i.tolist()], bool)
    a = i[ok]
    b = a + 1
    r_a = root[a].astype(np.int64)
    r_b = root[b].astype(np.int64)
    iv = (r_b - r_a) % 12
    lab = chords.column("label").to_pylist()
    rom = chords.column("roman").to_pylist()
    on_b = chords.column("onset_beats").to_numpy()
    on_s = chords.column("onset_s").to_numpy()
    return pa.table({
        "piece_id": pa.array([pid[x] for x in a.tolist()], pa.string()),
        "chord_index": pa.array(idx[a], pa.int32()),
        "to_chord_index": pa.array(idx[b], pa.int32()),
        "onset_beats": on_b[b], "onset_s": on_s[b],
        "from_label": pa.array([lab[x] for x in a.tolist()], pa.string()),
        "to_label": pa.array([lab[x] for x in b.tolist()], pa.string()),
        "from_quality": pa.array([q[x] for x in a.tolist()], pa.string()),
        "to_quality": pa.array([q[x] for x in b.tolist()], pa.string()),
        "root_interval": pa.array(iv, pa.int16()),
        "quality_change": pa.array([f"{q[x]}->{q[y]}" for x, y in zip(a.tolist(), b.tolist())], pa.string()),
        "nro": pa.array([neo_riemannian(ra, q[x], rb, q[y]) for ra, rb, x, y
                         in zip(r_a.tolist(), r_b.tolist(), a.tolist(), b.tolist())], pa.string()),
        "from_roman": pa.array([rom[x] for x in a.tolist()], pa.string()),
        "to_roman": pa.array([rom[x] for x in b.tolist()], pa.string()),
        "stage_version": pa.array([version] * len(a), pa.string()),
    }, schema=TABLES["chord_transitions"])


# --------------------------------------------------------------------------- stage

def forget(con, piece_ids: list[str]) -> None:
    """Delete this stage's rows for pieces it is about to redo."""
    for name in TABLES:
        con.execute(f"DELETE FROM {name} WHERE piece_id IN (SELECT unnest(?))", [list(piece_ids)])


def _group_slices(ids: np.ndarray):
    """piece id -> slice into arrays sorted by piece id."""
    if len(ids) == 0:
        return {}
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], len(ids)]
    return {ids[s]: slice(s, e) for s, e in zip(starts.tolist(), ends.tolist())}


def _arrow(con, sql, params):
    return con.sql(sql, params=params).to_arrow_table()


def load_inputs(con, piece_ids: list[str]) -> dict[str, pa.Table]:
    """What :func:`compute_rows` needs for these pieces, read in one pass: their non-drum
    notes and tempo changes (sorted by piece) and their ticks per beat."""
    ids = list(piece_ids)
    return {
        "notes": _arrow(con,
            """SELECT n.piece_id, n.onset_beats, n.duration_beats, n.pitch
               FROM notes n JOIN tracks t ON t.piece_id = n.piece_id AND t.track_index = n.track_index
               WHERE n.piece_id IN (SELECT unnest(?)) AND NOT coalesce(t.is_drum, false)
               ORDER BY n.piece_id""", [ids]),
        # rowid: tempo changes at the same tick in the file's order (the last one holds,
        # as when the notes were timed); without it the order of such ties, and so the
        # seconds of the chords, changed from one run to the next
        "tempo": _arrow(con,
            """SELECT piece_id, time_ticks, time_s, tempo_bpm FROM tempo_changes
               WHERE piece_id IN (SELECT unnest(?)) ORDER BY piece_id, time_ticks, rowid""", [ids]),
        "pieces": _arrow(con, "SELECT piece_id, ticks_per_beat FROM pieces WHERE piece_id IN (SELECT unnest(?))",
                         [ids]),
    }


def compute_rows(inputs: dict[str, pa.Table], piece_ids: list[str]) -> dict[str, pa.Table]:
    """The harmony rows (table name -> Arrow table) of each piece, each on its own."""
    notes, tempo = inputs["notes"], inputs["tempo"]
    pieces = inputs["pieces"]
    tpb = dict(zip(pieces.column("piece_id").to_pylist(), pieces.column("ticks_per_beat").to_pylist()))
    n_pid = notes.column("piece_id").to_numpy(zero_copy_only=False)
    t_pid = tempo.column("piece_id").to_numpy(zero_copy_only=False)
    n_sl, t_sl = _group_slices(n_pid), _group_slices(t_pid)
    n_cols = {c: notes.column(c).to_numpy() for c in ("onset_beats", "duration_beats", "pitch")}
    t_cols = {c: tempo.column(c).to_numpy() for c in ("time_ticks", "time_s", "tempo_bpm")}
    parts: dict[str, list[pa.Table]] = {name: [] for name in TABLES}
    for pid in piece_ids:
        sl = n_sl.get(pid)
        if sl is None:
            continue
        ts = t_sl.get(pid, slice(0, 0))
        res = analyze_notes({c: v[sl] for c, v in n_cols.items()},
                            tempo={c: v[ts] for c, v in t_cols.items()},
                            ticks_per_beat=tpb.get(pid), piece_id=pid)
        for name, tbl in res.items():
            parts[name].append(tbl)
    parts = {name: [t for t in tbls if t.num_rows] for name, tbls in parts.items()}
    return {name: pa.concat_tables(tbls) for name, tbls in parts.items() if tbls}


def write_rows(con, rows: dict[str, pa.Table]) -> None:
    """Insert what :func:`compute_rows` returned."""
    for name, tbl in rows.items():
        view = f"_harmony_{name}"
        con.register(view, tbl)
        con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM {view}")
        con.unregister(view)


def update(con, piece_ids: list[str]) -> None:
    """Compute and insert the harmony rows of ``piece_ids`` (one read of their notes)."""
    ids = list(piece_ids)
    if ids:
        write_rows(con, compute_rows(load_inputs(con, ids), ids))
