"""Cover (version) lookup: which pieces are versions of this one?

Two stages:

1. **Candidates** from the vector index: the query's global embedding (see
   ``indexers.features``) is searched three times in FAISS -- whole vector, melody blocks
   only, harmony blocks only -- so a query that kept only the harmony (accompaniment) or
   only the melody (re-harmonisation) still finds its song; two n-gram indexes (melody
   intervals, chord motions) add the pieces that contain a short excerpt; the union is
   re-ranked, with the best few by the stored second and third melody lines' n-grams.
2. **Re-rank by local alignment** (Smith-Waterman, numba):
   - melody: the skyline's pitch-class intervals (key-invariant; tempo-invariant because
     it is a sequence of notes, not of time frames), against each candidate's lead,
     second and third line (the skyline of all its notes), the best of them (and, for a
     long multi-track query, from its second line too);
   - harmony: beat-synchronous chroma pooled to 2-beat frames (1-beat frames, with a
     cheaper skipped frame, for a query of at most ``fine_frames_beats`` beats), the query
     transposed by its 2 best chroma shifts (4 for a short query) and read at
     three time scales (the query notated at half, the same or double the reference's
     beat rate).
   Each score is divided by the query's length, so it reads as "how much of the query
   was found"; the alignment score is the better of melody and 0.85 x harmony plus
   0.15 x the other (0.6 x for a short query). When no notated scale aligns
   convincingly, the query's scale is sought on a sixth-octave grid (0.35-2.8).
   The vector neighbours of the best answers are then aligned too (query expansion).
3. **Versions of the best answer**: a confident best answer is searched in turn; the
   pieces that align with it as clear versions are versions of the query too
   (``matched_by`` = ``version_of_best``), even when they share little with the query
   directly.
4. **Fusion**: the final score is a logistic function of the alignment scores, the
   exact-interval 3-gram TF-IDF cosine (the classic baseline, also a candidate list),
   the vector cosine and, for a one-part query, how much of each candidate's tune is
   found among its notes in its rhythm, fitted from data to rank each query's versions first
   (``query.cover_fusion``; coefficients in ``query/cover_fusion.json``, written by
   ``benchmarks/fit_cover_fusion.py``). Its logit is then calibrated per query into the
   probability that the answer is a version (``cover_fusion.calibrate``: the answer's
   logit, the query's best and how far that stands above the median candidate, the
   median capped where it aligns better than the fit's crowds do, as a crowd of versions
   does; the order is kept; short queries have a calibration of their own), so a query
   whose song is not in the collection gets low scores.
   Where a recording is involved, 5 scores the pairs with a recording instead (not
   calibrated again), and a MIDI query's MIDI answers are calibrated among themselves.
5. **Recordings**: where the query or one of the best answers is a recording, the pairs
   with a recording on at least one side get a fusion of their own (fitted on renders,
   ``query/cover_fusion_recordings.json``), which adds the chroma cover-song distance
   (essentia's serra09, ``indexers.audio_chroma.css_distances``; 0.5 s chroma, no beat
   grid) to the alignment scores; ``audio_bonus`` is what that distance changed (MIDI
   <-> MIDI pairs keep the fusion of 4).

Each answer carries its explanation: the transposition (semitones from the query up to
the match), the time scale (query beats per matched beat) and the aligned region in both.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from numba import njit

from atlas_db.errors import BadInputError, IndexTroubleError
from ingest.sources import utf8_text
from indexers.tempo import relative_tempo
from indexers.sparse_sums import all_column_sums, dense_slots, distinct, split_common
from indexers.blas_threads import one_blas_thread
from indexers.align import (by_halves, in_background, sw_chroma, sw_chroma_score, sw_pitch_classes_rhythm_score,
                            sw_pitch_classes_score, sw_symbols, sw_symbols_score)
from indexers.note_match import matched_share
from query.cover_fusion import IntervalTfidf, calibrate, fuse, fusion_features, fusion_logits
from query.cover_notes import stored_notes
from indexers.features import (BLOCKS, HARMONY_BLOCKS, MELODY_BLOCKS, beat_chroma, embedding, note_parts,
                               features_from_notes, melody_intervals, melody_intervals_groups, skyline)

__all__ = ["CoverIndex", "QueryFeatures", "query_from_notes", "query_from_file", "resolve_query", "covers",
           "load_index", "chord_motions", "RESULT_SCHEMA", "ALIGN"]

# Re-rank parameters (see docs/covers.md).
ALIGN = dict(
    mel_match=1.0, mel_mismatch=0.7, mel_gap=0.6, mel_merge=0.3,  # melody interval Smith-Waterman
    chroma_threshold=0.6, chroma_silent=0.3, chroma_gap=0.5,  # chroma Smith-Waterman
    frame_beats=2,  # reference chroma frame, beats
    # queries of at most this many beats are aligned on 1-beat frames instead (with the
    # candidates' frames at 1 beat too): a few bars pooled into 2-beat frames leave too
    # few frames to tell a version from a chance match (docs/covers-history.md, "Finer frames
    # for short queries"); the frame counts below are for frame_beats, in beats the same
    fine_frames_beats=64,
    # ... and skip a frame for less there: a short query re-timed by a tempo curve drifts
    # against its candidate by a beat or two, one gap per beat on 1-beat frames (fit
    # part: 0.3 and 0.2 measured better than 0.5 and 0.7; docs/covers-history.md)
    fine_chroma_gap=0.3,
    scales=(0.5, 1.0, 2.0),  # query beats per reference beat tried per candidate (short queries)
    # the query's own time scale is chosen among these on the best few candidates: any
    # factor from 1/2.8 to 2.8 in steps of a sixth of an octave (a performance or a
    # re-timed file has no notated beat in common with the stored versions)
    probe_scales=tuple(float(2 ** (k / 6)) for k in range(-9, 10)),
    max_query_intervals=96, max_query_frames=48,  # longer queries: their middle part
    min_query_intervals=24, min_query_frames=8,  # shorter queries are scored as if this long
    scale_probe=8, scale_margin=0.05,  # candidates on which the query's time scale is chosen
    n_shifts=2, n_shifts_short=4, short_query_frames=16,  # transpositions tried per candidate
    # queries up to this many frames (64 beats) take their transpositions from their
    # best-matching window of each candidate, not from its whole chroma (an excerpt of a
    # section in another key: a development, a last chorus a step up)
    window_shift_frames=32,
    candidates=30,  # per retrieval list (whole / melody / harmony vector, melody / chord n-grams)
    max_candidates=60,  # of their union, taken round-robin by rank
    expand_from=3, expand_neighbours=8,  # query expansion: neighbours of the best answers
    weak_weight=0.15,  # agreement of the weaker alignment (full-length queries)
    weak_weight_short=0.6,  # queries of at most 2 x min_query_intervals: agreement counts more
    phase_search_beats=64,  # queries up to this long also try other beat phases
    tight_register=4,  # polyphonic one-part queries also try this skyline register filter
    alt_line_below=0.6,  # ... aligned only when no melody or harmony score reached this
    look_further_below=0.6, look_further=4,  # no score reached this: align 4x the candidates
    short_clear=0.15, short_clear_rank=8,  # short queries: the best must also stand this far above rank 8
    long_clear_below=0.75,  # ... and any query whose best is below this (fit part: the same MAP for 0.65-0.9)
    keep_frames_below=20_000,  # collections up to this size keep every piece's 2-beat frames (~10 KB each)
    harmony_weight=0.85,  # a melody match counts more than an equal harmony match
    # versions of the best answer: when one answer is a clear, confident match, the
    # pieces that align with *it* as versions are versions of the query too
    hop_confident=0.6,  # best score needed
    hop_candidates=16,  # candidates aligned against the best answer
    hop_same=0.6, hop_above=0.25,  # a version of it scores at least this, and this above the median
    hop_factor=0.9,  # such a version scores hop_factor x best x that score (at most)
    # pairs with a recording on at least one side: the chroma cover-song distance
    # (indexers.audio_chroma.css_distances) on 0.5 s chroma, measured for the 50 best
    # such pairs (with recording_fusion off: a bonus, indexers.audio_chroma.fuse_css, to
    # the 50 best answers)
    audio_bonus=True, audio_bonus_candidates=50,
    # ... and with the fusion on, such pairs are scored by a fusion of their own
    # (query.cover_fusion.RECORDING_FEATURES: alignment scores and that chroma distance,
    # fitted on renders); False: the alignment score plus the bonus, as before it
    recording_fusion=True,
    # the final score: True, the fitted fusion of query.cover_fusion (each query's right
    # candidates ranked above its wrong ones on the honest benchmark's fit part, mashups
    # and re-harmonised tunes included); False, the alignment score above. Held out,
    # harmony only 0.966 -> 0.987, 10-15 s excerpts 0.936 -> 0.951, mashup
    # 0.942 -> 0.939, same queries (docs/covers.md)
    fusion=True,
    # also align every candidate at the time scale read from the query's onsets
    # (indexers.tempo.relative_tempo, modulo octaves); the whole change's effect is in
    # docs/covers.md (its "before" column: none of these four steps)
    rhythm_scale=True,
    # ... and, when no notated scale aligned convincingly on the probe candidates, at
    # that scale's other octaves within the fine grid (the onsets know the scale modulo
    # octaves; not the notated 0.5 / 2.0). Fit part, fusion refitted: combined level 2
    # 0.894 -> 0.897, combined_short 0.813 -> 0.836; held out (seeds 0, 2, 3) combined
    # level 2 +0.006, -0.006, +0.003, combined_short +0.015, 0, +0.011 (docs/covers-history.md)
    rhythm_octaves=True,
    # on the fine grid, a scale more than an octave from 1 loses this much
    # per octave beyond: a coarse scale (2.8) squeezes the query into a few frames that
    # align somewhere by chance, and won the probe for 6 of the fit part's 8 failed
    # combined level-2 queries. Chosen on the fit part (seeds 0, 2, 3: 0.2-0.8 alike on
    # seed 0, 0.4 better than 0.2 on seed 3); fit combined level 2 0.897 -> 0.929, held
    # out (seeds 0, 2, 3) 0.972 -> 0.979, 0.960 -> 0.971, 0.929 -> 0.935 (docs/covers-history.md)
    scale_prior=0.4,
    # on the fine grid, a scale half an octave away from the onsets' scale (modulo
    # octaves) loses this much (linearly in between): a coarse scale squeezes a query
    # into few frames that align somewhere by chance. Fit part, quick run: combined
    # 0.768 -> 0.814, combined_short 0.684 -> 0.732 (0.2: 0.797, 0.683); others unchanged
    rhythm_penalty=0.1,
    # the query's vector and chord motions again with its onsets divided by the onsets'
    # scale: two more candidate lists (a re-timed query's own vector can miss its song
    # entirely). Fit part, quick run: combined 0.814 -> 0.849, combined_short 0.732 -> 0.749
    rescaled_candidates=True,
    # one more candidate list: the bass line's steps (intervals mod 12) as 3- and 4-grams.
    # The lowest notes survive merged tracks, dropped notes and a lost beat grid better
    # than the skyline's melody n-grams. Fit part (fusion_probe.py, fusion refitted): perf
    # levels 1 and 2 0.990 / 0.995 -> 1.000 (seeds 1-3) and 0.990 / 0.992 -> 1.000 (4-6),
    # mean 0.9871 -> 0.9874 and 0.9864 -> 0.9881 (docs/covers-history.md, "The bass line's steps")
    bass_candidates=True,
    # a one-part query (merged tracks, a piano reduction, a performance): the best
    # pc_candidates (None: every candidate) also score how much of their stored tune
    # is found among the query's skyline notes (indexers.align.sw_pitch_classes_score,
    # at the harmony's transposition; accompaniment notes in between cost
    # pc_gap_query), normalised by pc_melody_share of the query's notes; that is their
    # melody score when higher.
    # Fit part, level 2, 70 songs, without -> with: combined 0.797 -> 0.834,
    # combined_short 0.576 -> 0.700, perf 0.975 -> 1.000, harmony only 0.989 -> 0.988.
    # Added to the score instead (x 0.3) it did as well on the fit part's combined
    # queries (0.830, combined_short 0.726) but a query with no tune
    # (harmony only) gained chance matches: there the right song's tune scores lower
    # than the best wrong one's (fit part: median 0.26 vs 0.42); held out it fell from
    # 0.976 to 0.942 that way. Every candidate instead of the best 20 (held out, seed 0,
    # no vienna, the fusion as fitted for 20): combined level 2 0.892 -> 0.930,
    # combined_short 0.986 -> 0.991 and 0.760 -> 0.781, reharm_merged 0.957 -> 0.962,
    # every other cell the same; the best 60: fit part combined level 2 0.891 against 0.905.
    # Then a tune note missing from the query costs 1.0 instead of 0.6 (chosen on the fit
    # part among 0.4-1.2 and the other pc_ constants; then held out, seed 0, no vienna:
    # combined level 2 0.930 -> 0.959, combined_short 0.991 -> 1.000 and 0.781 -> 0.801,
    # every other cell the same)
    tune_in_notes=True, pc_candidates=None, pc_query_notes=192, pc_melody_share=0.5,
    # ... except for a clear full-length query (its best score reaches clear_score): the
    # best pc_candidates_clear only. Fit part (seed 1, no vienna; merge, perf, combined,
    # harmony only, reharm_merged): the same MAP in every cell at 0.8 and 0.6, 52 -> 45
    # ms per query
    pc_candidates_clear=20, clear_score=0.8,
    pc_match=1.0, pc_mismatch=1.0, pc_gap_query=0.25, pc_gap_ref=1.0,
    # a short (at most 2 x min_query_intervals) one-part query whose skyline holds less
    # than this share of its notes (polyphonic): its melody score is the tune found
    # among its notes alone, not also its skyline's interval alignment. Fit part (seed 1,
    # no vienna): combined_short level 2 0.742 -> 0.769; then held out (seed 0): 0.801 ->
    # 0.829; every other cell the same in both (for every one-part query, short or not:
    # reharm_merged 0.998 -> 0.873 on the fit part, its harmony is not the song's)
    tune_only_below=0.8,
    # a fusion feature (query.cover_fusion, _rhythm): the tune found among a one-part
    # query's notes again, in the query's rhythm (a matched note whose time since the
    # last one disagrees by more than rhythm_tolerance with the path's tempo estimate
    # counts rhythm_miss less; the estimate moves rhythm_adapt of the way to each agreeing
    # step), for the best rhythm_candidates, when the query is short or no score reaches
    # clear_score. Chosen on the fit part (seed 1, no vienna; fusion refitted, two-fold
    # cross-validation over its songs): combined level 2 0.928 -> 0.939, combined_short
    # level 2 0.769 -> 0.798 (8 queries better, 2 worse), every other cell the same but
    # combined_short level 1 (1 query worse, 0.972 either way). Tolerance 1.2 / 1.3 / 1.4,
    # miss 0.5 / 1.0 / 1.5 / 2.0, adapt 0 / 0.15 / 0.3 / 0.5 were tried; the same rhythm
    # check made after a pitch-only alignment instead (its matched notes' successive time
    # ratios against their median) gained on the fit part but not held out (docs/covers-history.md).
    # A longer query: its middle rhythm_query_notes (the same figures with 96 as with 192,
    # at half the cost: combined_short level 1 0.973)
    # A short query (at most 2 x min_query_intervals) aligns most of a ~1k collection and
    # its right version often ranks below 30 by alignment: it gets the rhythm of its best
    # rhythm_candidates_short. Fit part, fusion_probe.py: combined_short level 2 0.834 ->
    # 0.849 (seeds 1-3), 0.806 -> 0.844 (4-6); 200 or every candidate the same (docs)
    rhythm_candidates=30, rhythm_candidates_short=100, rhythm_query_notes=96,
    rhythm_tolerance=1.3, rhythm_miss=1.0, rhythm_adapt=0.3,
    # the bass line (CoverIndex._bass): gap cost of either side (0.25, 0.75 or 1 gave
    # the same within 0.013 on the fit part: benchmarks/fusion_probe.py --gaps), the
    # least query length it is divided by, and a longer query's middle part only
    bass_gap=0.5, bass_min_notes=12, bass_query_notes=96,
    # the n-gram lengths of the bass steps' candidate list: 4-grams alone (shorter columns
    # at 100k pieces) lost on the fit part, combined_short level 2 0.848 -> 0.846 and
    # 0.849 -> 0.842 (docs/covers-history.md, "Probes of the session of 2026-12-04 (afternoon)")
    bass_grams=(3, 4),
    # a fusion feature (CoverIndex._support): the best alignment score among a
    # candidate's likely versions, those of its fellow candidates whose melody 3-gram
    # TF-IDF cosine with it reaches support_cosine, the cosine estimated from
    # support_dims-dimensional sketches (IntervalTfidf.sketch). Fit part
    # (benchmarks/fusion_probe.py --probe benchmarks/probes/support_cheap.py): the exact
    # cosine and the 128-dimensional sketch gave the same MAP, mean 0.9874 -> 0.9875
    # (seeds 1-3) and 0.9881 -> 0.9886 (4-6), combined_short level 2 0.848 -> 0.851 and
    # 0.849 -> 0.862; the best 16, 32 or 64 candidates as the only supporters gained less
    support_cosine=0.5, support_dims=128,
    # a fusion feature (CoverIndex._notes): a short query's notes matched by a candidate's
    # notes under one time map, for the best this many candidates by alignment score,
    # the query's middle this many notes in time (~3.8 ms a candidate on one thread for
    # a 10-15 s query of ~70 notes against a POP909 arrangement; only 100 and 96 were
    # measured: docs/covers-history.md, "The note vote, shipped")
    note_vote_candidates=100, note_vote_query_notes=96,
    # the best this many pieces by the query's melody 3- and 4-grams against the stored
    # *second* lines join the candidates, beyond the budget: the search aligns a
    # candidate's second line, but the n-gram lists read only the lead lines, so a
    # version whose tune is in its second line was never aligned (0: none)
    second_line_candidates=8,
    # a multi-track query longer than phase_search_beats: its own second melody line
    # (the runner-up track by the stored pieces' rule, indexers.features.second_line_mask)
    # is aligned with every candidate's lead line too, and searched in the n-gram lists;
    # the better of its two lines counts. Its lead track is not always its tune: a piano part
    # doubling another song's tune can look more like a melody than the sung line
    query_second_line=True,
    # ... its middle this many intervals, against the candidates' lead lines only: the
    # query's tune in its second line and the version's in its own is left out (the
    # cost: 96 intervals against both lines took 5 ms more per query by a stored piece's
    # id, p50, 48 against the lead lines 2.5 ms; the held-out mashup and reharm cells
    # were the same with either; docs/covers-history.md)
    second_query_intervals=48,
    # a MIDI query whose lead line is one part's, in a collection with recordings: the
    # best this many recordings by the n-grams of the query's skyline of all notes (its
    # third line, indexers.features.third_line) join the candidates. A recording's lead
    # line is the skyline of its transcription, all parts at once, which the query's
    # lead track often is not; the lists by that track and by the vectors ranked a MIDI
    # file's own renders below hundreds of MIDI pieces of other songs (0: none; 10, 20
    # and 40 measured on the fit parts: docs/audio.md, "MIDI queries: their skyline
    # against recordings")
    recording_line_candidates=20,
)

RESULT_SCHEMA = pa.schema([
    ("query", pa.string()),
    ("rank", pa.int32()),
    ("piece_id", pa.string()),
    ("path", pa.string()),
    ("score", pa.float32()),
    ("transposition", pa.int16()),  # semitones from the query up to the match, -5..6
    ("time_scale", pa.float32()),  # query beats per beat of the match (2.0 = query in double time)
    ("query_start_beats", pa.float32()),
    ("query_end_beats", pa.float32()),
    ("match_start_beats", pa.float32()),
    ("match_end_beats", pa.float32()),
    ("melody_score", pa.float32()),  # fraction of the query's melody aligned (0..1)
    ("harmony_score", pa.float32()),  # the same for its harmony
    ("matched_by", pa.string()),  # 'melody' | 'harmony': which alignment gave the score;
    # 'version_of_best': scored as a confident version of the best answer (transitivity)
    ("audio_bonus", pa.float32()),  # what the chroma distance changed the score by (0 for MIDI <-> MIDI)
])


def _pool(chroma: np.ndarray, n: int) -> np.ndarray:
    """Sum groups of n frames; unit-normalise each frame (silent stays 0)."""
    return _pool_kernel(np.ascontiguousarray(chroma, np.float32), n)


@njit(inline="always")
def _term(v, p, squared):
    return v[p] * v[p] if squared else v[p]


@njit(cache=True, nogil=True)
def _numpy_sum12(v, squared):
    """The sum of 12 float32 values (of their squares with ``squared``) in the order of
    NumPy's pairwise sum of a row of 12: the first 8 in pairs, then the other 4 one by one."""
    total = ((_term(v, 0, squared) + _term(v, 1, squared)) + (_term(v, 2, squared) + _term(v, 3, squared))) + \
        ((_term(v, 4, squared) + _term(v, 5, squared)) + (_term(v, 6, squared) + _term(v, 7, squared)))
    for p in range(8, 12):
        total += _term(v, p, squared)
    return total


@njit(cache=True, nogil=True)
def _pool_kernel(chroma, n):
    """:func:`_pool`, the same float32 operations in the order NumPy's form made them
    (``x.reshape(m, n, 12).sum(axis=1)``: each group's frames added first to last; its
    norm's sum of squares as ``_numpy_sum12``); that form took ~55 us a call, seven calls
    a query."""
    m = -(-chroma.shape[0] // n)
    out = np.zeros((m, 12), np.float32)
    for f in range(m):
        a = f * n
        b = min(a + n, chroma.shape[0])
        for p in range(12):
            x = chroma[a, p]
            for i in range(a + 1, b):
                x += chroma[i, p]
            out[f, p] = x
        o = out[f]
        norm = np.sqrt(_numpy_sum12(o, True))
        if norm > 0:
            for p in range(12):
                o[p] = o[p] / norm
    return out


def _short(q) -> bool:
    """A short query: at most 2 x ``min_query_intervals`` melody intervals (a few bars,
    where chance matches score high)."""
    return _short_melody(q.intervals.size)


def _short_melody(n_intervals: int) -> bool:
    """:func:`_short` by the number of the query's melody intervals."""
    return n_intervals <= 2 * ALIGN["min_query_intervals"]


def _middle(n: int, cap: int) -> tuple[int, int]:
    if n <= cap:
        return 0, n
    a = (n - cap) // 2
    return a, a + cap


def _block_mask(names) -> np.ndarray:
    from indexers.features import EMBED_DIM

    m = np.zeros(EMBED_DIM, np.float32)
    for name in names:
        a, b = BLOCKS[name]
        m[a:b] = 1
    return m


@dataclass
class QueryFeatures:
    """What a query needs for both stages (computed from notes, or read from the index)."""

    label: str
    piece_id: str | None  # set when the query is itself a piece in the database
    vector: np.ndarray
    chroma_beats: np.ndarray  # (n_beats, 12) float, frame max = 1
    melody_pitch: np.ndarray
    melody_onset_beats: np.ndarray
    # the chroma again with the beat grid moved by half a beat (short queries cut off
    # the beat); None when the query has no notes at hand (a stored piece)
    chroma_half_beat: np.ndarray | None = None
    # other candidate melody lines of a short multi-track query (each track's skyline,
    # all notes' skyline), as interval arrays: in a short excerpt the lead track is
    # not always the one that looks most like a melody
    alt_intervals: list = field(default_factory=list)
    # the query's second melody line (pitches, onsets): a long multi-track query with a
    # runner-up monophonic track (ALIGN["query_second_line"]); None otherwise
    second_pitch: np.ndarray | None = field(default=None, repr=False)
    second_onset_beats: np.ndarray | None = field(default=None, repr=False)
    # the skyline of all the query's notes where its lead line is one track's and not
    # that skyline (indexers.features.third_line): what a recording's transcription
    # makes its lead line (ALIGN["recording_line_candidates"]); None otherwise
    third_pitch: np.ndarray | None = field(default=None, repr=False)
    # (chroma per 0.5 s, is_recording) for the audio bonus; None: read from the database
    # when the query is a stored piece, or no bonus
    time_chroma: tuple | None = None
    is_recording: bool = False
    # every pitched note of the query (onset beats, pitch) for the note vote of a short
    # query (CoverIndex._notes); None: no vote
    note_onset_beats: np.ndarray | None = field(default=None, repr=False)
    note_pitch: np.ndarray | None = field(default=None, repr=False)
    # (the collection's IntervalTfidf, the cosine of the melody's exact-interval 3-gram
    # TF-IDF with each of its pieces): computed once per query and collection by
    # CoverIndex._tfidf_scores (a query searched in another collection gets its own)
    tfidf_scores: tuple | None = field(default=None, repr=False, compare=False)
    # the query's beat relative to a power-of-two multiple of the notated beat, read from
    # its onsets (indexers.tempo); None: not known (a stored piece: on its own grid)
    tempo_scale: float | None = None
    # the notes came as one part (no tracks to tell the lead from the accompaniment):
    # the melody line is the skyline of everything and is partly accompaniment
    one_part: bool = False
    # the share of the query's notes in its melody line (its skyline for one part): well
    # below 1, a polyphonic part whose skyline is partly accompaniment
    skyline_share: float = 1.0
    # lowest sounding pitch class per onset, repeats merged (indexers.features.bass_line)
    bass_pc: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8), repr=False)
    # the query's beat chroma with its onsets divided by tempo_scale, and its vector
    # (None when that scale is ~1): further candidate lists
    rescaled_chroma: np.ndarray | None = field(default=None, repr=False)
    rescaled_vector: np.ndarray | None = field(default=None, repr=False)
    intervals: np.ndarray = field(init=False)
    interval_index: np.ndarray = field(init=False)
    # the query's chroma frames per (time scale, ...) for one search: each scale is
    # read by several alignment calls (CoverIndex._phase_frames); and under "rolled" its
    # global chroma at every transposition (CoverIndex._shifts)
    frames_memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        self.intervals, self.interval_index = melody_intervals(self.melody_pitch)
        self.second_intervals, self.second_interval_index = (None, None) if self.second_pitch is None \
            else melody_intervals(self.second_pitch)


def _frame_beats(q) -> int:
    """The harmony frame length for this query, beats: 1 for a query of at most
    ``fine_frames_beats`` beats, else ``frame_beats``."""
    return 1 if q.chroma_beats.shape[0] <= ALIGN["fine_frames_beats"] else ALIGN["frame_beats"]


def _frames_per(q) -> int:
    """How many of this query's frames make one ``frame_beats`` frame: the frame counts of
    ``ALIGN`` (``max_query_frames``, ``min_query_frames``, ``short_query_frames``) are
    multiplied by it, so that they mean the same length in beats."""
    return ALIGN["frame_beats"] // _frame_beats(q)


def _chroma_gap(q) -> float:
    """The harmony alignment's cost of skipping a frame for this query: ``fine_chroma_gap``
    on 1-beat frames, else ``chroma_gap``."""
    return ALIGN["fine_chroma_gap"] if _frames_per(q) > 1 else ALIGN["chroma_gap"]


def _reads_second_line(n_beats: int, lead_iv: np.ndarray, second_iv: np.ndarray) -> bool:
    """Whether a query of ``n_beats`` beats reads its second melody line
    (``query_second_line``): one longer than ``phase_search_beats`` (a shorter one tries
    each track's skyline instead), whose second line has 3 intervals or more and differs
    from its lead line."""
    return bool(ALIGN["query_second_line"] and n_beats > ALIGN["phase_search_beats"] and second_iv.size >= 3
                and not np.array_equal(second_iv, lead_iv))


def _near_notated(scale: float) -> bool:
    """Whether ``scale`` is within 0.04 octave of a notated scale (``ALIGN["scales"]``)."""
    return min(abs(np.log2(scale / x)) for x in ALIGN["scales"]) < 0.04


def query_from_notes(label: str, onset_beats, duration_beats, pitch, track_index=None, *,
                     piece_id=None, chroma_beats=None, chroma_half_beat=None) -> QueryFeatures:
    """Query features from note arrays (beats = quarter notes, drums already removed;
    ``track_index`` optional, one per note). ``chroma_beats`` (optional, (n_beats, 12),
    frame max 1) replaces the notes' beat chroma as the harmony sequence, and
    ``chroma_half_beat`` the same on the grid moved by half a beat (a recording's
    measured chroma: ``indexers.audio_chroma``)."""
    pitch = np.asarray(pitch)
    if pitch.size == 0:
        raise BadInputError(f"{label}: the query has no pitched notes (empty, silent or drums only)")
    f = features_from_notes(onset_beats, duration_beats, pitch, track_index, chroma=chroma_beats)
    if not np.any(f["beat_chroma"]):
        raise BadInputError(f"{label}: the query has no sounding notes")
    half = None
    alts = []
    if f["beat_chroma"].shape[0] <= ALIGN["phase_search_beats"]:
        half = beat_chroma(onset_beats, duration_beats, pitch, start_beats=0.5) if chroma_beats is None \
            else chroma_half_beat
        if track_index is not None:
            on, dur, trk = np.asarray(onset_beats), np.asarray(duration_beats), np.asarray(track_index)
            masks = [trk == t for t in np.unique(trk)] + [np.ones(trk.size, bool)]
            for m in masks:
                if m.sum() >= 4:
                    iv = melody_intervals(skyline(on[m], dur[m], pitch[m])[0])[0]
                    if iv.size >= 3 and not np.array_equal(iv, f["intervals"]):
                        alts.append(iv)
    # one polyphonic part (a piano reduction, a transcription): accompaniment reaches
    # the skyline when the tune rests or dips; also try a skyline that keeps closer to
    # the tune's register. Polyphonic: its notes share onsets, or, past a short query's
    # length, its skyline keeps under 80% of its notes (jittered onsets, as in a
    # performance or a transcription, share none; a short query's extra line only adds
    # chance candidates: docs/covers.md, "The tune's register in jittered parts")
    one_part = track_index is None or np.unique(np.asarray(track_index)).size == 1
    skyline_share = f["melody_pitch"].size / pitch.size
    if one_part:
        on = np.round(np.asarray(onset_beats, np.float64) * 32)
        shared = np.unique(on).size < 0.8 * on.size
        if shared or (not _short_melody(f["intervals"].size) and skyline_share < 0.8):
            iv = melody_intervals(skyline(onset_beats, duration_beats, pitch,
                                          register_drop=ALIGN["tight_register"])[0])[0]
            if iv.size >= 3 and not np.array_equal(iv, f["intervals"]):
                alts.append(iv)
    sp = so = None  # (a one-part query has no second line: no runner-up track)
    if _reads_second_line(f["beat_chroma"].shape[0], f["intervals"], melody_intervals(f["second_pitch"])[0]):
        sp, so = f["second_pitch"], f["second_onset_beats"]
    tempo_scale = relative_tempo(onset_beats)[0]
    rescaled = rescaled_vector = None
    if ALIGN["rescaled_candidates"] and abs(np.log2(tempo_scale)) >= 0.04:
        rescaled = beat_chroma(np.asarray(onset_beats, np.float64) / tempo_scale,
                               np.asarray(duration_beats, np.float64) / tempo_scale, pitch)
        if np.any(rescaled):
            rescaled_vector = embedding(rescaled, f["intervals"])
        else:
            rescaled = None
    return QueryFeatures(utf8_text(label), piece_id, f["vector"], f["beat_chroma"], f["melody_pitch"], f["melody_onset_beats"],
                         half, alts, tempo_scale=tempo_scale, one_part=one_part, rescaled_chroma=rescaled,
                         rescaled_vector=rescaled_vector, skyline_share=skyline_share,
                         bass_pc=f["bass_pc"], second_pitch=sp, second_onset_beats=so,
                         third_pitch=f["third_pitch"] if f["third_pitch"].size else None,
                         note_onset_beats=np.asarray(onset_beats, np.float64), note_pitch=pitch)


def query_from_file(path) -> QueryFeatures:
    """Parse a MIDI or audio file (not necessarily in the database) into query features.

    Audio (``ingest.sources.AUDIO_SUFFIXES``) is transcribed to notes the way ingestion
    transcribes a recording (``ingest.audio.notes_from_audio_file``: basic-pitch on the
    mix, on the tracked-tempo beat grid); it needs the audio extra."""
    from ingest.sources import AUDIO_SUFFIXES

    p = Path(path)
    if p.suffix.lower() in AUDIO_SUFFIXES:
        try:
            data = p.read_bytes()
        except OSError as e:
            raise BadInputError(f"{path}: cannot read the query file ({e.strerror or e})") from e
        return _query_from_audio(p, hashlib.sha256(data).hexdigest()[:16])
    from ingest.midi_parse import read_midi_file

    from indexers.audio_chroma import notes_time_chroma

    tables = read_midi_file(p, what="query")
    pid, notes = tables["pieces"]["piece_id"], tables["notes"]
    ch = notes.column("channel").to_numpy()
    keep = ch != 9
    q = query_from_notes(
        str(path),
        notes.column("onset_beats").to_numpy()[keep],
        notes.column("duration_beats").to_numpy()[keep],
        notes.column("pitch").to_numpy()[keep],
        note_parts(notes.column("track_index").to_numpy()[keep], ch[keep]),  # (track, channel) parts
        piece_id=pid,
    )
    q.time_chroma = (notes_time_chroma(notes.column("onset_s").to_numpy()[keep],
                                       notes.column("duration_s").to_numpy()[keep],
                                       notes.column("pitch").to_numpy()[keep]), False)
    return q


def _query_from_audio(p: Path, pid: str) -> QueryFeatures:
    """Query features of a recording: the melody from its transcribed notes (one part, no
    drums) and the harmony sequence that ingestion gives a stored recording
    (``indexers.audio_chroma.harmony_sequence``)."""
    from atlas_db.errors import IngestError
    from ingest.audio_config import audio_available

    missing = audio_available()
    if missing:
        raise BadInputError(f"{p}: cannot use an audio file as a query: {missing}")
    from indexers.audio_chroma import harmony_sequence, time_chroma
    from ingest.audio import audio_query_parts

    try:
        parts = audio_query_parts(p)
    except IngestError as e:
        raise BadInputError(f"{p}: not a usable query ({e.reason})") from e
    notes = parts["notes"]
    chroma, half = harmony_sequence(parts["beats_s"], parts["beat_hpcp"], parts["grid_bpm"])
    q = query_from_notes(
        str(p),
        notes.column("onset_beats").to_numpy(),
        notes.column("duration_beats").to_numpy(),
        notes.column("pitch").to_numpy(),
        None,  # one transcribed part: the skyline and its tighter-register variant
        piece_id=pid,
        chroma_beats=chroma,
        chroma_half_beat=half,
    )
    q.time_chroma = (time_chroma(parts["beats_s"], parts["beat_hpcp"]), True)
    q.is_recording = True
    return q


class CoverIndex:
    """Everything the two stages need, in memory: vectors in FAISS, and the sequences
    (melody intervals, 2-beat chroma) of every piece back to back."""

    def __init__(self, ids, paths, vectors, chroma_q, n_beats, melody_pitch, melody_onset, n_melody,
                 bass_pc, n_bass, faiss_index=None, is_recording=None, db_dir=None,
                 second_pitch=None, second_onset=None, n_second=None, third_pitch=None, third_onset=None,
                 n_third=None, notes=None):
        from indexers.faiss_index import build_index

        # every piece's notes (query.cover_notes.NoteArrays, by row) for the note vote of
        # a short query; None: no vote
        self.notes = notes

        self.ids = np.asarray(ids, dtype=object)
        self.is_recording = np.zeros(len(self.ids), bool) if is_recording is None \
            else np.asarray(is_recording, bool)
        self.db_dir = db_dir  # where the audio bonus reads stored chroma (None: no bonus)
        # pieces whose stored row comes from an older version of the vectors stage
        # (load_index; a row from before the bass line or the second or third melody
        # line has NULL there, read as empty)
        self.stale_pieces = 0
        self.row_stale = np.zeros(len(self.ids), bool)  # (by row; load_index sets both)
        # a hash of each row's stored cover features, path and kind (0: unknown), for
        # query.cover_update to find what changed since the index was saved
        self.row_hash = np.zeros(len(self.ids), np.uint64)
        self.paths = np.asarray(paths, dtype=object)
        self.row_of = {pid: i for i, pid in enumerate(self.ids)}
        self.vectors = np.ascontiguousarray(vectors, np.float32)
        self.index = faiss_index if faiss_index is not None else build_index(self.vectors)
        n_beats = np.asarray(n_beats, np.int64)
        self.beat_off = np.concatenate([[0], np.cumsum(n_beats)]).astype(np.int64)
        self.chroma_q = np.asarray(chroma_q, np.int8).reshape(-1, 12)
        # global chroma and chord motions, a chunk of pieces at a time (the 2-beat frames
        # of all pieces would take ~7 KB per piece; the search pools its candidates' own)
        glob = np.zeros((n_beats.size, 12), np.float32)
        motions, motion_counts = [], []
        self.frames = None  # all pieces' 2-beat frames, kept for a small collection
        keep = n_beats.size <= ALIGN["keep_frames_below"]
        kept, kept_n = [], []
        for c0 in range(0, n_beats.size, 4096):
            rows = np.arange(c0, min(c0 + 4096, n_beats.size))
            frames, f_off = self._pooled_frames(rows)
            if keep:
                kept.append(frames)
                kept_n.append(np.diff(f_off))
            sums = np.add.reduceat(frames, np.minimum(f_off[:-1], max(len(frames) - 1, 0)), axis=0) \
                if len(frames) else np.zeros((rows.size, 12), np.float32)
            sums[np.diff(f_off) == 0] = 0
            glob[rows] = sums
            cm, cm_off = chord_motions(frames, f_off)
            motions.append(cm)
            motion_counts.append(np.diff(cm_off))
        if keep and kept:
            self.frames = (np.ascontiguousarray(np.concatenate(kept), np.float32),
                           np.concatenate([[0], np.cumsum(np.concatenate(kept_n))]).astype(np.int64))
        gn = np.linalg.norm(glob, axis=1, keepdims=True)
        np.divide(glob, gn, out=glob, where=gn > 0)
        self.global_chroma = glob
        cm = np.concatenate(motions) if motions else np.zeros(0, np.int64)
        cm_off = np.concatenate([[0], np.cumsum(np.concatenate(motion_counts))]) if motions else np.zeros(1, np.int64)
        # melody lines of three kinds: each piece's lead line, then the second lines
        # (indexers.features.second_line_mask), then the third (indexers.features.third_line;
        # the extra lines empty where a piece has none)
        n_pieces = len(self.ids)
        kinds = [(melody_pitch, melody_onset, n_melody), (second_pitch, second_onset, n_second),
                 (third_pitch, third_onset, n_third)]
        kinds = [(np.zeros(0), np.zeros(0), np.zeros(n_pieces)) if n is None else (p, o, n) for p, o, n in kinds]
        lines = np.concatenate([np.asarray(n, np.int64) for _, _, n in kinds])
        self._set_lines(np.concatenate([np.asarray(p, np.int16) for p, _, _ in kinds]),
                        np.concatenate([np.asarray(o, np.float32) for _, o, _ in kinds]),
                        np.concatenate([[0], np.cumsum(lines)]).astype(np.int64), n_pieces)
        self.grams = _gram_index(self.iv, self.iv_off)
        # the extra lines' n-grams, for candidates whose tune is in one of them
        self.extra_grams = [_gram_index(self.iv, o) for o in self.line_iv_off[1:]]
        # bass lines (pitch classes) back to back
        n_bass = np.asarray(n_bass, np.int64)
        if n_bass.size != len(self.ids) or int(n_bass.sum()) != np.asarray(bass_pc).size:
            raise ValueError(f"bass lines: {n_bass.size} counts summing to {int(n_bass.sum())} for "
                             f"{len(self.ids)} pieces and {np.asarray(bass_pc).size} pitch classes")
        self.bass_off = np.concatenate([[0], np.cumsum(n_bass)]).astype(np.int64)
        self.bass_pc = np.asarray(bass_pc, np.int8)
        self.bass_grams = _GramIndex(_bass_steps(self.bass_pc, self.bass_off), self.bass_off, 11,
                                     tuple(ALIGN["bass_grams"]))
        self.tfidf = IntervalTfidf(self.mel_pitch[:self.mel_off[-1]], self.mel_off)
        self.melody_sketch = self.tfidf.sketch(ALIGN["support_dims"])  # _support
        self.chord_grams = _GramIndex(cm.astype(np.int8), cm_off.astype(np.int64), CHORD_ALPHABET)
        self.mask_melody = _block_mask(MELODY_BLOCKS)
        self.mask_harmony = _block_mask(HARMONY_BLOCKS)

    def _set_lines(self, pitch: np.ndarray, onset: np.ndarray, line_off: np.ndarray, n_pieces: int) -> None:
        """The melody lines' arrays from every line's pitches and onsets back to back, the
        ``n_pieces`` lead lines, then the second lines, then the third (``line_off``: 3
        ``n_pieces`` + 1 offsets): pitches, onsets, pitch classes and intervals; piece i's
        line of kind j is [line_off[j][i], line_off[j][i + 1]) in notes,
        [line_iv_off[j][i], ...) in intervals."""
        self.line_off = [line_off[j * n_pieces:(j + 1) * n_pieces + 1] for j in range(3)]
        self.mel_off, self.sec_off = self.line_off[0], self.line_off[1]
        self.mel_pitch = pitch
        self.mel_onset = onset
        # pitch classes for the tune-in-notes kernel, made once instead of per query
        self.mel_pc = (self.mel_pitch % 12).astype(np.int8)
        self.iv, iv_index, offs = melody_intervals_groups(self.mel_pitch, line_off, with_index=True)
        self.iv_index = iv_index.astype(np.int32)
        self.line_iv_off = [offs[j * n_pieces:(j + 1) * n_pieces + 1] for j in range(3)]
        self.iv_off, self.sec_iv_off = self.line_iv_off[0], self.line_iv_off[1]
        self.has_line = [np.diff(o) > 0 for o in self.line_off]
        self.has_line[0][:] = True  # (a lead line of no notes is still a span, empty)
        self.has_second = self.has_line[1]

    def __len__(self):
        return len(self.ids)

    def _frames_of(self, rows: np.ndarray, fb: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unit-norm chroma frames of ``fb`` beats (default ``frame_beats``) of these
        pieces: (frames, starts, ends), row k's frames being ``frames[starts[k]:ends[k]]``.
        A collection that keeps every piece's ``frame_beats`` frames gives spans into
        them (the kernels read them in place: no copy per query); else the pieces'
        frames are made, back to back."""
        rows = np.asarray(rows, np.int64)
        fb = ALIGN["frame_beats"] if fb is None else fb
        if self.frames is not None and fb == ALIGN["frame_beats"]:
            return self.frames[0], self.frames[1][rows], self.frames[1][rows + 1]
        frames, f_off = self._pooled_frames(rows, fb)
        return frames, f_off[:-1], f_off[1:]

    def _pooled_frames(self, rows: np.ndarray, fb: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The frames of ``_frames_of`` made from the beats, back to back, and their offsets."""
        fb = ALIGN["frame_beats"] if fb is None else fb
        starts, ends = self.beat_off[rows], self.beat_off[rows + 1]
        nf = -(-(ends - starts) // fb)
        f_off = np.concatenate([[0], np.cumsum(nf)]).astype(np.int64)
        return _pool_frames(self.chroma_q, starts, ends, fb, f_off), f_off

    def nbytes(self) -> int:
        grams = [self.grams, *self.extra_grams, self.chord_grams, self.bass_grams]
        arrays = [*(a for g in grams for a in (g.matrix.data, g.matrix.indices, g.matrix.indptr, g.common_cols,
                                               g.common)),
                  self.tfidf.matrix.data, self.tfidf.matrix.indices, self.tfidf.matrix.indptr,
                  self.vectors, self.chroma_q, self.beat_off, self.global_chroma, self.mel_pitch, self.mel_onset,
                  self.iv, self.iv_index, self.iv_off, self.mel_off, self.mel_pc, self.bass_pc, self.bass_off,
                  *self.line_off[1:], *self.line_iv_off[1:], *self.has_line, self.melody_sketch]
        if self.frames is not None:
            arrays += list(self.frames)
        notes = self.notes.nbytes if self.notes is not None else 0
        return int(sum(a.nbytes for a in arrays)) + notes + self.vectors.nbytes  # + the FAISS copy

    # -- stage 1 -------------------------------------------------------------------
    def candidates(self, q: QueryFeatures, n: int | None = None, budget: int | None = None,
                   vectors_only: bool = False, memo: dict | None = None) -> np.ndarray:
        """Rows of candidate pieces: the union of three dense vector searches (whole
        vector, melody blocks, harmony blocks) and sparse ones (IDF of the melody's
        interval 3- and 4-grams, which finds a short excerpt inside a long piece; of the
        chord motions; of the bass line's steps), best first, the query itself left out.
        ``vectors_only``: the dense searches alone. ``memo`` (a search's own dict): the
        n-gram lists' scores, kept for a second call (a search that looks further down
        its lists sums none of them again)."""
        from indexers.faiss_index import search

        n = n or ALIGN["candidates"] * self._budget(q) // ALIGN["max_candidates"]
        v = q.vector
        qv = np.stack([v, v * self.mask_melody, v * self.mask_harmony])
        if q.rescaled_vector is not None:
            rv = q.rescaled_vector
            qv = np.concatenate([qv, np.stack([rv, rv * self.mask_harmony])])
        scores, rows = search(self.index, qv, n + 1)
        if vectors_only:
            return self._merge_lists(q, rows, budget)
        qm = np.asarray(q.intervals, np.int64) - 1
        lines = [qm] + [np.asarray(a, np.int64) - 1 for a in q.alt_intervals]
        if q.second_intervals is not None:
            lines.append(np.asarray(q.second_intervals, np.int64) - 1)
        mel_lists = [self.grams.search(x, n + 1, memo=memo) for x in lines]
        tf_list = self.tfidf.search(self._tfidf_scores(q), n + 1)
        chord_lists = []
        for chroma in (q.chroma_beats, q.rescaled_chroma):
            if chroma is not None:
                qf = _pool(chroma, ALIGN["frame_beats"])
                chord_lists.append(self.chord_grams.search(chord_motions(qf, np.array([0, qf.shape[0]]))[0], n + 1,
                                                            memo=memo))
        bass_lists = []
        if ALIGN["bass_candidates"] and q.bass_pc.size >= 4:
            qb = np.asarray(q.bass_pc, np.int8)
            bass_lists.append(self.bass_grams.search(_bass_steps(qb, np.array([0, qb.size])), n + 1, memo=memo))
        lists = [g for g in (tf_list, *mel_lists, *chord_lists, *bass_lists) if g.size]
        if lists:  # each list a row, -1 padded (no list is longer than the vectors')
            more = np.full((len(lists), rows.shape[1]), -1, rows.dtype)
            for i, g in enumerate(lists):
                more[i, :g.size] = g
            rows = np.concatenate([rows, more])
        rows = self._merge_lists(q, rows, budget)
        taken = np.zeros(len(self), bool)  # (np.isin: ~120 us a call)
        taken[rows] = True
        k2 = ALIGN["second_line_candidates"]
        for grams, has in zip(self.extra_grams, self.has_line[1:]):
            if not (k2 and qm.size >= 3 and has.any()):
                continue
            extra = grams.search(qm, k2 + 1, memo=memo)
            extra = extra[~taken[extra]]
            if q.piece_id is not None and q.piece_id in self.row_of:
                extra = extra[extra != self.row_of[q.piece_id]]
            rows = np.concatenate([rows, extra[:k2]])
            taken[extra[:k2]] = True
        k3 = ALIGN["recording_line_candidates"]
        # (a MIDI query only: a recording ingested with stems has parts, and a third line)
        if k3 and q.third_pitch is not None and not q.is_recording and self.is_recording.any():
            top = melody_intervals(q.third_pitch)[0].astype(np.int64) - 1
            # (recordings only, so never the query itself)
            extra = self.grams.search(top, k3 + rows.size, within=self.is_recording)
            rows = np.concatenate([rows, extra[~taken[extra]][:k3]])
        return rows

    def _merge_lists(self, q: QueryFeatures, rows: np.ndarray, budget: int | None) -> np.ndarray:
        """Ranked lists (one per row, -1 padded) interleaved by rank so that each
        contributes its best first; the query itself left out."""
        order = rows.T.ravel()
        order = order[order >= 0]
        _, first = np.unique(order, return_index=True)
        rows = order[np.sort(first)]
        if q.piece_id is not None and q.piece_id in self.row_of:
            rows = rows[rows != self.row_of[q.piece_id]]
        return rows[: budget or self._budget(q)].astype(np.int64)

    def _tfidf_scores(self, q: QueryFeatures) -> np.ndarray:
        if q.tfidf_scores is None or q.tfidf_scores[0] is not self.tfidf:
            q.tfidf_scores = (self.tfidf, self.tfidf.scores(q.melody_pitch))
        return q.tfidf_scores[1]

    @staticmethod
    def _budget(q: QueryFeatures) -> int:
        """Candidates to align: a short query (an excerpt) costs little per candidate
        and finds less in the vectors, so it gets more of them (short: few melody
        intervals or few beats, counted as two intervals per beat)."""
        A = ALIGN
        # short in notes, or in time (a dense excerpt of a few beats)
        n = max(min(q.intervals.size, 2 * q.chroma_beats.shape[0], A["max_query_intervals"]), 16)
        return int(np.clip(A["max_candidates"] * A["max_query_intervals"] / n, A["max_candidates"],
                           6 * A["max_candidates"]))

    # -- stage 2 -------------------------------------------------------------------
    def _query_frames(self, q: QueryFeatures, scale: float, chroma: np.ndarray | None = None):
        fb = _frame_beats(q)
        qf = _pool_beats(q.chroma_beats if chroma is None else chroma, fb * scale)
        fa, fz = _middle(qf.shape[0], ALIGN["max_query_frames"] * _frames_per(q))
        qs, nq = _rolled_frames(np.ascontiguousarray(qf[fa:fz], np.float32))
        return qs, int(nq), fa

    def _shifts(self, q: QueryFeatures, rows: np.ndarray, n_frames: int, frames=None) -> np.ndarray:
        """Transpositions to try per candidate: the best few of the chroma correlation
        (optimal transposition index), a few more for short queries. A query of up to
        ``window_shift_frames`` is correlated with every window of its own length in
        the candidate and each transposition keeps its best window: an excerpt may come
        from a part in another key than most of the piece (a last chorus a step up, a
        sonata's development)."""
        rolled = q.frames_memo.get("rolled")  # the query's alone: made once per search
        if rolled is None:
            qglob = q.chroma_beats.sum(axis=0)
            qglob = qglob / max(float(np.linalg.norm(qglob)), 1e-9)
            rolled = q.frames_memo["rolled"] = qglob[_ROLL]  # [t] = np.roll(qglob, t)
        short = n_frames <= ALIGN["short_query_frames"] * _frames_per(q)
        windowed = n_frames <= ALIGN["window_shift_frames"] * _frames_per(q)
        if windowed and frames is not None and (frames[2] - frames[1]).sum() > 0:
            # the windows' sums come from a running sum over the candidates' frames
            # back to back (its rounding depends on that layout): copied out here
            corr = _window_correlation(*_gather_spans(frames[0], frames[1], frames[2]), rolled, n_frames)
        else:
            corr = self.global_chroma[rows] @ rolled.T  # [c, t] = <query up t, candidate>
        n = ALIGN["n_shifts_short"] if short else ALIGN["n_shifts"]
        return np.ascontiguousarray(np.argsort(-corr, axis=1)[:, :n], np.int64)

    def _phases(self, q: QueryFeatures, scale: float) -> list[np.ndarray]:
        """Beat chromas to try: the query's own grid, and for a short query also the grid
        moved by half a beat and by whole beats up to one reference frame."""
        base = [q.chroma_beats]
        if q.chroma_half_beat is not None:
            base.append(q.chroma_half_beat)
        else:
            return base
        step = int(round(_frame_beats(q) * scale))
        return [c[k:] for c in base for k in range(max(step, 1)) if c.shape[0] > k]

    def _phase_frames(self, q: QueryFeatures, scale: float) -> list:
        """``_query_frames`` of each of ``_phases``, made once per search and scale (a
        scale is aligned several times: the probe, every candidate, the expansion)."""
        key = (scale, _frame_beats(q), ALIGN["max_query_frames"])
        hit = q.frames_memo.get(key)
        if hit is None:
            hit = q.frames_memo[key] = [self._query_frames(q, scale, c) for c in self._phases(q, scale)]
        return hit

    def _harmony(self, q, rows, scale, frames=None, shifts=None):
        """Best harmony score and transposition per row at this time scale; ``shifts``
        ((rows, n) semitones) fixes the transpositions tried instead of choosing them."""
        A = ALIGN
        best = np.zeros(rows.size, np.float32)
        best_shift = np.zeros(rows.size, np.int32)
        if rows.size == 0:
            return best, best_shift
        frefs, fstarts, fends = self._frames_of(rows, _frame_beats(q)) if frames is None else frames
        per = _frames_per(q)
        for qs, nq, fa in self._phase_frames(q, scale):
            if nq < 2:
                continue
            if shifts is None:
                sh = self._shifts(q, rows, qs.shape[1])
            elif qs.shape[1] > ALIGN["short_query_frames"] * per:  # as many as _shifts would give
                sh = np.ascontiguousarray(shifts[:, :ALIGN["n_shifts"]])
            else:
                sh = shifts
            hs, hsh = sw_chroma_score(qs, sh, frefs, (fstarts, fends), A["chroma_threshold"], A["chroma_silent"],
                                      _chroma_gap(q))
            hs = hs / ((1.0 - A["chroma_threshold"]) * max(nq, A["min_query_frames"] * per))
            better = hs > best
            best[better] = hs[better]
            best_shift[better] = hsh[better]
        return best, best_shift

    def _probe_scale(self, q: QueryFeatures, probe: np.ndarray, probe_frames, sh_probe, fine: bool = True,
                     known: dict | None = None) -> float:
        """The query's time scale (query beats per reference beat), chosen on the best few
        candidates: the scale whose best harmony alignment is highest (another than 1
        must win by ``scale_margin``), among the notated scales and, when none of them
        aligns convincingly (below ``look_further_below``: a file with no beat grid in
        common with the stored ones), among every scale of the fine grid ``probe_scales``
        (one far from the onsets' scale, or more than an octave from 1, losing
        ``rhythm_penalty`` or ``scale_prior``). (Choosing by the best candidate's lead
        over the median of the others instead was measured: combined 0.614 -> 0.675 but
        harmony only 0.995 -> 0.962 and combined_short 0.600 -> 0.458 on the fit part.)
        ``fine=False``: the notated scales only. ``known`` receives each tried scale's
        ``_harmony`` of the probe rows."""
        A = ALIGN
        best_scale, best = 1.0, -np.inf
        for grid in (A["scales"], A["probe_scales"]) if fine else (A["scales"],):
            if np.isfinite(best) and best >= A["look_further_below"] - A["scale_margin"] * (best_scale != 1.0):
                break
            for sc in grid:
                if grid is A["probe_scales"] and sc in A["scales"]:
                    continue  # tried already
                hs, hsh = self._harmony(q, probe, sc, probe_frames, sh_probe)
                if known is not None:
                    known[sc] = (hs, hsh)
                top = (float(hs.max()) if hs.size else 0.0) - (A["scale_margin"] if sc != 1.0 else 0.0)
                if grid is A["probe_scales"]:
                    if q.tempo_scale is not None:
                        d = (np.log2(sc / q.tempo_scale)) % 1.0
                        top -= A["rhythm_penalty"] * min(d, 1.0 - d) / 0.5
                    top -= A["scale_prior"] * max(0.0, abs(float(np.log2(sc))) - 1.0)
                if top > best + 1e-6:
                    best_scale, best = sc, top
        return best_scale

    def _harmony_known(self, q: QueryFeatures, rows: np.ndarray, scale: float, frames, shifts, known: dict,
                       sel: np.ndarray | None = None):
        """``_harmony`` of ``rows[sel]`` (all rows when None), taking the rows that
        ``_probe_scale`` aligned at this scale already (the first ones, with the same
        transpositions) from ``known`` instead of aligning them again: each row's score
        depends on that row alone, so the result is the same."""
        sel = np.arange(rows.size) if sel is None else np.asarray(sel, np.int64)
        hit = known.get(scale)
        if hit is None:
            return self._harmony(q, rows[sel], scale, (frames[0], frames[1][sel], frames[2][sel]),
                                 None if shifts is None else shifts[sel])
        seen = sel < hit[0].size
        hs = np.zeros(sel.size, np.float32)
        hsh = np.zeros(sel.size, np.int32)
        hs[seen], hsh[seen] = hit[0][sel[seen]], hit[1][sel[seen]]
        new = sel[~seen]
        if new.size:
            hs[~seen], hsh[~seen] = self._harmony(q, rows[new], scale, (frames[0], frames[1][new], frames[2][new]),
                                                  None if shifts is None else shifts[new])
        return hs, hsh

    def _line_spans(self, rows: np.ndarray, offs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(starts, ends) of the rows' lead lines, then of the second lines of the rows
        that have one, then of their third lines (``offs``: the offsets of each kind of
        line in notes, ``line_off``, or in intervals, ``line_iv_off``)."""
        has = [rows[h[rows]] for h in self.has_line]
        return (np.concatenate([o[r] for o, r in zip(offs, has)]), np.concatenate([o[r + 1] for o, r in zip(offs, has)]))

    def _span_kinds(self, rows: np.ndarray) -> np.ndarray:
        """The kind of line (0 lead, 1 second, 2 third) of each span of :meth:`_line_spans`."""
        return np.repeat(np.arange(len(self.has_line), dtype=np.int8), [int(h[rows].sum()) for h in self.has_line])

    def _note_lines(self, rows: np.ndarray, shifts: np.ndarray) -> tuple[tuple, np.ndarray]:
        """The rows' lines in notes (``_line_spans`` over ``line_off``) and each line's
        row's transposition, for the pitch-class kernels."""
        sh = np.asarray(shifts, np.int64) % 12
        return self._line_spans(rows, self.line_off), np.concatenate([sh[h[rows]] for h in self.has_line])

    @staticmethod
    def _line_of(rows: np.ndarray, kind: np.ndarray, offs: list[np.ndarray]):
        """(starts, ends) of each row's line of that ``kind`` (0 lead, 1 second, 2 third)."""
        kind = np.asarray(kind, np.int64)
        return (np.choose(kind, [o[rows] for o in offs]), np.choose(kind, [o[rows + 1] for o in offs]))

    def _best_line(self, rows: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Per row, the index into ``scores`` (one per span of :meth:`_line_spans`) of its
        best line: its lead line's, or another's where that scores higher (the first of
        equal ones)."""
        pick = np.arange(rows.size)
        at = rows.size
        for has in self.has_line[1:]:
            some = np.flatnonzero(has[rows])
            alt = at + np.arange(some.size)
            better = scores[alt] > scores[pick[some]]
            pick[some[better]] = alt[better]
            at += some.size
        return pick

    def rerank(self, q: QueryFeatures, rows: np.ndarray, scale: float | None = None, fine: bool = True
               ) -> dict[str, np.ndarray]:
        """Alignment scores of the candidate rows (see the module docstring); ``scale``
        fixes the query's time scale instead of choosing it on the first candidates
        (``fine=False``: choose it among the notated scales only)."""
        A = ALIGN
        rows = np.asarray(rows, np.int64)
        k = rows.size
        a, b = _middle(q.intervals.size, A["max_query_intervals"])
        qiv = np.ascontiguousarray(q.intervals[a:b])
        spans = self._line_spans(rows, self.line_iv_off)  # the candidates' intervals in self.iv
        # the query's own second line too (a long multi-track query: its lead track is not
        # always its tune), its middle second_query_intervals, against the lead lines
        a2 = b2 = 0
        if q.second_intervals is not None:
            a2, b2 = _middle(q.second_intervals.size, A["second_query_intervals"])
        q2 = np.ascontiguousarray(q.second_intervals[a2:b2]) if b2 - a2 >= 2 and k else None
        spans2 = (self.iv_off[rows], self.iv_off[rows + 1]) if q2 is not None else None  # their lead lines
        # the melody's alignments run in the other thread while this one aligns the harmony
        melody = in_background(self._melody_scores, qiv, q2, spans, spans2) \
            if k and (qiv.size >= 2 or q2 is not None) else None
        # the query's time scale is a property of the query: choose it on a few of the
        # best candidates, then align every candidate at that scale only
        probe = rows[: A["scale_probe"]]
        fb, per = _frame_beats(q), _frames_per(q)
        frames = self._frames_of(rows, fb)
        n_probe = probe.size
        probe_frames = (frames[0], frames[1][:n_probe], frames[2][:n_probe])
        # a query of up to 64 beats: its transpositions from its best-matching window of
        # each candidate (found once, at its own time scale, and used at every scale)
        qn = min(-(-q.chroma_beats.shape[0] // fb), A["max_query_frames"] * per)
        sh = self._shifts(q, rows, qn, frames) if qn <= A["window_shift_frames"] * per and k else None
        sh_probe = None if sh is None else sh[:n_probe]
        known = {}  # scale -> the probe rows' harmony there (reused below)
        best_scale = self._probe_scale(q, probe, probe_frames, sh_probe, fine, known) if scale is None else scale
        fine = fine and not any(abs(best_scale - x) < 1e-6 for x in A["scales"])
        harm, hshift = self._harmony_known(q, rows, best_scale, frames, sh, known)
        hscale = np.full(k, best_scale, np.float32)
        if A["rhythm_scale"] and q.tempo_scale is not None and scale is None and k:
            # the scale chosen on a few candidates may be another's (the right song is
            # often not among them): every candidate is also aligned at the scale its
            # onsets say (indexers.tempo), and keeps the better of the two
            # (the fine grid was searched: no notated scale aligned convincingly)
            off_grid = any(not _near_notated(s) for s in known)
            for ts in self._rhythm_scales(q, best_scale, off_grid):
                hs, hsh = self._harmony(q, rows, ts, frames, sh)
                better = hs > harm
                harm, hshift = np.where(better, hs, harm), np.where(better, hsh, hshift)
                hscale = np.where(better, np.float32(ts), hscale)
        if q.chroma_beats.shape[0] <= A["phase_search_beats"] or q.is_recording:
            # a short query says too little to fix its time scale on a few candidates,
            # and a recording's tracked beats may be at 1x, 2x, 4/3x or 3/2x its notated
            # tempo, differently from one rendering to the next: each candidate gets its
            # own best scale (another than 1 must win clearly)
            for sc in A["scales"]:
                if sc == best_scale:
                    continue
                hs, hsh = self._harmony_known(q, rows, sc, frames, sh, known)
                better = hs - (A["scale_margin"] if sc != 1.0 else 0.0) > \
                    harm - np.where(hscale != 1.0, A["scale_margin"], 0.0)
                harm, hshift, hscale = (np.where(better, hs, harm), np.where(better, hsh, hshift),
                                        np.where(better, np.float32(sc), hscale))
        elif k:
            # a full-length query against a full-length version: their lengths in beats
            # say the time scale of that pair (the one chosen on a few candidates may
            # be another's); each candidate also tries the notated scale nearest to the
            # ratio of lengths, and when the query's own scale came from the fine grid
            # (no beat grid in common) the fine-grid scale nearest to it too (another
            # scale than its current one must win by scale_margin)
            ratio = q.chroma_beats.shape[0] / np.maximum(np.diff(self.beat_off)[rows], 1)
            grid = np.asarray(A["probe_scales"])
            notated = np.asarray(A["scales"])
            # (an excerpt is much shorter than the pieces: outside the grid, no hint)
            hinted = (ratio >= grid.min() / 1.05) & (ratio <= grid.max() * 1.05)
            for options in (notated,) if not fine else (notated, grid):
                want = options[np.argmin(np.abs(np.log(ratio[:, None] / options[None, :])), axis=1)]
                for sc in np.unique(want[hinted]):
                    sel = np.flatnonzero(hinted & (want == sc) & (hscale != sc))
                    if sel.size == 0:
                        continue
                    hs, hsh = self._harmony_known(q, rows, float(sc), frames, None, known, sel)
                    better = hs - A["scale_margin"] > harm[sel]
                    harm[sel] = np.where(better, hs, harm[sel])
                    hshift[sel] = np.where(better, hsh, hshift[sel])
                    hscale[sel] = np.where(better, np.float32(sc), hscale[sel])
        harm = np.maximum(harm, 0).astype(np.float32)
        h = A["harmony_weight"] * harm
        mel = np.zeros(k, np.float32)
        mel_end = np.full(k, -1, np.int64)
        on_line = np.zeros(k, np.int8)  # the kind of the candidate's line that scored
        on_query_second = np.zeros(k, bool)
        if melody is not None:
            kinds = self._span_kinds(rows)
            # per candidate its best line (lead, second, third) for the query's lead line, then
            # the query's second line against its lead line: where that aligns better, it
            # is the melody score, and the explanation's region is that alignment's
            for is_second, (m, end) in zip((False, True), melody.result()):
                if m is None:
                    continue
                pick = np.arange(k) if is_second else self._best_line(rows, m)  # (lead lines only)
                # a few intervals match somewhere by chance: short melodies count as at
                # least min_query_intervals long
                m = m[pick] / (A["mel_match"] * max(b2 - a2 if is_second else qiv.size, A["min_query_intervals"]))
                better = m > mel if is_second else np.ones(k, bool)
                mel, mel_end = np.where(better, m, mel), np.where(better, end[pick], mel_end)
                on_line = np.where(better, kinds[pick], on_line)
                on_query_second |= better & is_second
        short = _short(q)
        # a one-part query: also how much of each candidate's tune is found among its
        # notes (pc_candidates), its melody score where higher; for a short polyphonic
        # one, its melody score alone: the intervals of a few bars of a skyline that is
        # partly accompaniment match some wrong song as well by chance (its skyline's
        # alignment above still gives mel_end, where the explanation's region ends)
        tune_step = q.one_part and not q.is_recording and k and A["tune_in_notes"]
        tune_only = tune_step and short and q.skyline_share < A["tune_only_below"]
        # other melody lines: when neither the main line nor the harmony found anything
        # convincing, or the query is short in notes or in time (cheap); not when the
        # tune step replaces the melody score
        weak = k and max(float(mel.max()), float(h.max())) < A["alt_line_below"]
        if k and q.alt_intervals and not tune_only and (weak or short
                                                         or q.chroma_beats.shape[0] <= A["phase_search_beats"]):
            for alt in q.alt_intervals:
                m2 = sw_symbols_score(np.ascontiguousarray(alt), self.iv, spans, A["mel_match"], A["mel_mismatch"],
                                      A["mel_gap"], A["mel_merge"])
                m2 = m2[self._best_line(rows, m2)]
                mel = np.maximum(mel, m2 / (A["mel_match"] * max(alt.size, A["min_query_intervals"])))
        # a short query's melody (or harmony) alone matches something by chance more
        # often: there, agreement of the two counts more
        ww = A["weak_weight_short"] if short else A["weak_weight"]
        score = np.maximum(mel, h) + ww * np.minimum(mel, h)
        if tune_step:
            tune = self._tune_in_notes(q, rows, score, hshift)
            mel = tune if tune_only else np.maximum(mel, tune)
            score = np.maximum(mel, h) + ww * np.minimum(mel, h)
        return {"rows": rows, "mel": mel.astype(np.float32), "harm": harm, "hshift": hshift,
                "scale": best_scale, "score": score.astype(np.float32), "by_melody": mel >= harm,
                "via_best": np.zeros(k, bool), "hscale": hscale.astype(np.float32), "mel_window": (a, b),
                "mel_end": mel_end, "mel_line": on_line, "mel_query_second": on_query_second,
                "mel_window2": (a2, b2)}

    def _melody_scores(self, qiv: np.ndarray, q2: np.ndarray | None, spans, spans2) -> list:
        """(scores, ends) of the query's lead-line intervals ``qiv`` against the candidates'
        lines ``spans``, and of its second line ``q2`` against ``spans2``
        (``indexers.align.sw_symbols_score``); (None, None) for a line that is absent or
        too short."""
        A = ALIGN
        return [sw_symbols_score(x, self.iv, spans, A["mel_match"], A["mel_mismatch"], A["mel_gap"], A["mel_merge"],
                                 with_end=True) if x is not None and x.size >= 2 else (None, None)
                for x, spans in ((qiv, spans), (q2, spans2))]

    @staticmethod
    def _rhythm_scales(q: QueryFeatures, best_scale: float, off_grid: bool) -> list[float]:
        """The scales the onsets say: ``q.tempo_scale``, and with ``rhythm_octaves``, when
        the query is ``off_grid`` (no notated scale aligned convincingly on the probe
        candidates), its other octaves within the fine grid (the onsets fix the scale
        modulo octaves only)."""
        lo, hi = min(ALIGN["probe_scales"]) / 1.05, max(ALIGN["probe_scales"]) * 1.05
        octaves = range(-4, 5) if ALIGN["rhythm_octaves"] and off_grid else (0,)
        out = [(k, q.tempo_scale * 2.0 ** k) for k in octaves]
        # an octave of the notated grid (the onsets say 1.0, so 0.5 and 2.0) is no new
        # scale: the probe tried it, and every candidate gets another chance match there
        return [x for k, x in out if (k == 0 or (lo <= x <= hi and not _near_notated(x)))
                and abs(np.log2(x / best_scale)) >= 0.04]

    @staticmethod
    def _clear(q: QueryFeatures, score: np.ndarray) -> bool:
        """A full-length query (more than 2 x ``min_query_intervals``) whose best score
        reaches ``clear_score``: its answer stands without the tune's extra work."""
        return bool(not _short(q) and score.size and float(score.max()) >= ALIGN["clear_score"])

    def _tune_in_notes(self, q: QueryFeatures, rows: np.ndarray, score: np.ndarray, hshift: np.ndarray
                       ) -> np.ndarray:
        """Per candidate row, 0..~1: how much of its stored tune is found among the
        query's skyline notes (see ``tune_in_notes`` in ALIGN); 0 outside the best
        ``pc_candidates`` by ``score`` (None: every row), or the best
        ``pc_candidates_clear`` for a full-length query whose best score reaches
        ``clear_score``."""
        A = ALIGN
        out = np.zeros(rows.size, np.float32)
        a, b = _middle(q.melody_pitch.size, A["pc_query_notes"])
        qpc = np.asarray(q.melody_pitch[a:b], np.int64) % 12
        if qpc.size < 4:
            return out
        n = A["pc_candidates_clear"] if self._clear(q, score) else A["pc_candidates"]
        best = np.arange(rows.size) if n is None or n >= rows.size else np.argsort(-score, kind="stable")[:n]
        rb = rows[best]
        spans, shifts = self._note_lines(rb, hshift[best])
        raw = sw_pitch_classes_score(qpc, self.mel_pc, spans, shifts, A["pc_match"], A["pc_mismatch"],
                                     A["pc_gap_query"], A["pc_gap_ref"])
        out[best] = _tune_share(raw[self._best_line(rb, raw)], qpc.size)
        return out

    def search(self, q: QueryFeatures, top: int = 10, explain_top: int | None = None) -> pa.Table:
        """The ``top`` best versions of the query, explained (see ``RESULT_SCHEMA``);
        with ``explain_top`` only that many get the aligned region (the others' region
        columns are null): finding the region costs a second, slower alignment.

        BLAS runs on one thread meanwhile: for the harmony alignment's thousands of
        small products OpenBLAS's own threads doubled the CPU time and competed with
        the search's two threads (docs/covers-history.md, "BLAS on one thread"). Those products
        are now summed in ``indexers.lanes``; the ones left (the candidates' global
        chroma against the query's transpositions, the vectors) are small too."""
        with one_blas_thread():
            r = self._aligned(q)
            # a recording involved: the pairs with a recording get the fusion fitted on
            # renders (the MIDI one ranked worse there, docs/audio.md), wherever they rank;
            # the others the fusion
            if ALIGN["fusion"] and ALIGN["recording_fusion"]:
                involved = q.is_recording or self.is_recording[r["rows"]].any()
                r = self._fuse_recordings(q, r) if involved else self._fuse(q, r)
            elif self._involves_recording(q, r):  # the rule before: the 50 best only
                r = self._audio_bonus(q, r)
            else:
                r = self._fuse(q, r)
            order = np.argsort(-r["score"], kind="stable")[:top]
            return self._explain(q, r, order, top if explain_top is None else explain_top)

    def candidate_features(self, q: QueryFeatures) -> tuple[np.ndarray, np.ndarray]:
        """Rows of every candidate the search scored for this query and their fusion
        features (``query.cover_fusion.FEATURES``): what the fusion is fitted on."""
        with one_blas_thread():
            r = self._aligned(q)
            return r["rows"], self._features(q, r)

    def _features(self, q: QueryFeatures, r) -> np.ndarray:
        rows = r["rows"]
        v = self.vectors[rows]
        vec = v @ q.vector / np.maximum(np.linalg.norm(v, axis=1) * float(np.linalg.norm(q.vector)), 1e-9)
        return fusion_features(r["score"], r["mel"], r["harm"], self._tfidf_scores(q)[rows], vec,
                               q.intervals.size, 2 * ALIGN["min_query_intervals"], self._rhythm(q, r),
                               self._bass(q, r), self._support(r), r["hscale"], self._notes(q, r))

    def _support(self, r) -> np.ndarray:
        """Per candidate, 0..~1.2: the best alignment score among the *other* aligned
        candidates that are likely versions of it (their melodies' exact-interval 3-gram
        TF-IDF cosine, ``IntervalTfidf``, estimated from the pieces' sketches, at least
        ``support_cosine``); 0 where none is. A song whose other versions align too is
        likelier right than a lone chance match (versions of one song: cosine 25%
        quantile 0.91; a right and a wrong candidate of one query: 99% quantile 0.26,
        POP909-dev fit part). It helps less than that suggests: a wrong song's chance
        match comes with its own versions. Every candidate supports every other: the
        best few dozen alone gained less (docs/covers-history.md, "Version support")."""
        rows, score = r["rows"], np.asarray(r["score"], np.float32)
        if rows.size < 2:
            return np.zeros(rows.size, np.float32)
        return np.where(self._likely_versions(rows), score[None, :], 0.0).max(axis=1)

    def _likely_versions(self, rows: np.ndarray) -> np.ndarray:
        """bool [shape=(k, k)]: which of these pieces are likely versions of which (their
        melody sketches' cosine reaches ``support_cosine``); a piece is not its own."""
        p = self.melody_sketch[rows].astype(np.float32)
        cos = p @ p.T
        np.fill_diagonal(cos, -1.0)
        return cos >= ALIGN["support_cosine"]

    def _bass(self, q: QueryFeatures, r) -> np.ndarray:
        """Per candidate, 0..~1: the query's bass line aligned with the candidate's at its
        harmony transposition (``indexers.align.sw_pitch_classes_score``, match +1,
        mismatch -1, each gap ``bass_gap``), over the query's bass length (at least
        ``bass_min_notes``: a few notes matching by chance score little). Versions keep
        their chord roots in time where the arrangements differ. 0 for a query of fewer
        than 4 bass notes, and for a clear full-length query (``_clear``: its answer
        stands, and leaving the bass out there changed no fit-part cell by more than
        0.001: docs/covers-history.md, "No bass step for a clear query")."""
        A = ALIGN
        rows = r["rows"]
        # a long query: its middle part only (as the melody's max_query_intervals): a
        # full-length bass line against ~150 candidates would be ~10M cells per query
        a, b = _middle(q.bass_pc.size, A["bass_query_notes"])
        qb = np.asarray(q.bass_pc[a:b], np.int64)
        if qb.size < 4 or rows.size == 0 or self._clear(q, r["score"]):
            return np.zeros(rows.size, np.float32)
        s = sw_pitch_classes_score(qb, self.bass_pc, (self.bass_off[rows], self.bass_off[rows + 1]),
                                   np.asarray(r["hshift"], np.int64) % 12, 1.0, 1.0, A["bass_gap"], A["bass_gap"])
        return s / max(qb.size, A["bass_min_notes"])

    def _notes(self, q: QueryFeatures, r) -> np.ndarray:
        """Per candidate, 0..1: the largest share of a short query's notes that lie where
        the candidate has a note of the same pitch (at its harmony transposition, or an
        octave below) under one time map, candidate beat = scale x query beat + offset
        (``indexers.note_match``: 73 scales from 0.35 to 2.83, offsets within 0.3
        beat), for the best ``note_vote_candidates`` by alignment score (the query's
        middle ``note_vote_query_notes`` notes in time); 0 for the others, for a query
        that is not short, has fewer than 4 notes or none at hand, and in an index
        without notes. A few seconds of a version keep most of their notes where the
        song's other versions have them even where its tune, chords or beat do not align
        well; a wrong song matches a share by chance. Held out, combined_short level 2
        0.924 -> 0.936 (seed 0) and 0.938 -> 0.949 over eight draws; against the stored
        melody lines only it gained nothing (docs/covers-history.md, "The note vote,
        shipped")."""
        rows = r["rows"]
        out = np.zeros(rows.size, np.float32)
        if self.notes is None or q.note_pitch is None or q.note_pitch.size < 4 or not _short(q) or rows.size == 0:
            return out
        # a denser query: its middle note_vote_query_notes notes in time (the vote's cost
        # grows with the query's notes; a short query of a few bars has fewer)
        by_time = np.argsort(q.note_onset_beats, kind="stable")
        a, b = _middle(by_time.size, ALIGN["note_vote_query_notes"])
        q_on, q_p = q.note_onset_beats[by_time[a:b]], q.note_pitch[by_time[a:b]]
        best = np.argsort(-r["score"], kind="stable")[: ALIGN["note_vote_candidates"]]
        starts, ends = self.notes.spans(rows[best])
        shifts = np.asarray(r["hshift"][best], np.int64)
        out[best] = by_halves(
            lambda sl: matched_share(q_on, q_p, self.notes.onset_beats, self.notes.pitch,
                                     starts[sl, None], ends[sl, None], shifts[sl]), starts, ends, q_p.size)
        return out

    def _rhythm(self, q: QueryFeatures, r) -> np.ndarray:
        """Per candidate, 0..~1: how much of its tune is found among a one-part query's
        notes in the query's rhythm (``indexers.align.sw_pitch_classes_rhythm_score``:
        ``_tune_in_notes``' alignment, where a matched note whose distance in time from
        the last one disagrees with the tempo so far counts ``rhythm_miss`` less). Notes
        of a wrong tune picked out of the accompaniment match pitch classes, but seldom
        at the right times. For the best ``rhythm_candidates`` by alignment score
        (``rhythm_candidates_short`` for a short query), and
        only when the query is short or its best score is below ``clear_score`` (a
        clear answer needs no more); else 0."""
        A = ALIGN
        rows, score = r["rows"], r["score"]
        out = np.zeros(rows.size, np.float32)
        if not (q.one_part and not q.is_recording and A["tune_in_notes"] and rows.size) or self._clear(q, score):
            return out
        a, b = _middle(q.melody_pitch.size, A["rhythm_query_notes"])
        qpc = np.asarray(q.melody_pitch[a:b], np.int64) % 12
        if qpc.size < 4:
            return out
        best = np.argsort(-score, kind="stable")[: A["rhythm_candidates_short" if _short(q) else "rhythm_candidates"]]
        rb = rows[best]
        spans, shifts = self._note_lines(rb, r["hshift"][best])
        raw = sw_pitch_classes_rhythm_score(qpc, np.asarray(q.melody_onset_beats[a:b], np.float64), self.mel_pc,
                                            self.mel_onset, spans, shifts, A["pc_match"],
                                            A["pc_mismatch"], A["pc_gap_query"], A["pc_gap_ref"],
                                            A["rhythm_tolerance"], A["rhythm_miss"], A["rhythm_adapt"])
        out[best] = _tune_share(raw[self._best_line(rb, raw)], qpc.size)  # on the tune's scale
        return out

    def _fuse(self, q: QueryFeatures, r):
        """The final score: the logistic fusion (``query.cover_fusion``) of the
        alignment scores, the n-gram TF-IDF cosine and the vector cosine, calibrated
        into the probability that the answer is a version (``cover_fusion.calibrate``,
        by the calibration of the query's kind, short or not: the same offset for every
        answer of the query, so the fusion's order)."""
        r = dict(r)
        r["bonus"] = np.zeros(r["rows"].size, np.float32)
        if r["rows"].size == 0 or not ALIGN["fusion"]:
            return r
        r["align"] = r["score"]
        r["score"] = calibrate(fusion_logits(self._features(q, r)), short=_short(q))
        return r

    def _aligned(self, q: QueryFeatures):
        """Candidates, their alignment, query expansion, a wider look when nothing
        convinces, and the versions of the best answer (before fusion)."""
        q.frames_memo.clear()  # made for this search's settings (ALIGN) only
        lists = {}  # the n-gram lists' scores, for both calls of candidates
        rows = self.candidates(q, memo=lists)
        r = self.rerank(q, rows)
        extra = self._expand(q, r)
        if extra.size:
            r = _concat(r, self.rerank(q, extra, scale=r["scale"]))
        if not self._convincing(q, r["score"]):
            # nothing convincing among the candidates: look further down the lists
            f = ALIGN["look_further"]
            more = self.candidates(q, n=f * ALIGN["candidates"] * self._budget(q) // ALIGN["max_candidates"],
                                   budget=f * self._budget(q), memo=lists)
            more = np.setdiff1d(more, r["rows"])
            if more.size:
                r = _concat(r, self.rerank(q, more, scale=r["scale"]))
        return self._versions_of_best(q, r)

    @staticmethod
    def _convincing(q: QueryFeatures, score: np.ndarray) -> bool:
        """Whether the best answer is convincing enough to stop looking: it reaches
        ``look_further_below``; for a short query (where chance matches score high and
        crowd together), and for any query whose best is below ``long_clear_below``, it
        must also stand ``short_clear`` above the answer at rank ``short_clear_rank``
        (beyond a song's few versions: a weak match shared by the many versions of one
        wrong piece, 22 performances of a Chopin ballade, crowded out the right one)."""
        A = ALIGN
        if score.size == 0 or float(score.max()) < A["look_further_below"]:
            return False
        clear = _short(q) or float(score.max()) < A["long_clear_below"]
        if clear and score.size > A["short_clear_rank"]:
            s = np.sort(score)[::-1]
            return float(s[0] - s[A["short_clear_rank"] - 1]) >= A["short_clear"]
        return True

    def _versions_of_best(self, q: QueryFeatures, r):
        """Transitivity: when the best answer is a confident match, search again with
        that answer (a stored piece) as the query (its best ``hop_candidates``
        candidates); the pieces that align with it clearly above the rest are versions of the query too, even where the query shares
        little with them directly (a version that lost the tune, or the harmony, that
        the query kept). They score ``hop_factor x best x their score against the best
        answer``, when that is more than their own; ``matched_by`` says
        ``version_of_best``."""
        A = ALIGN
        if r["rows"].size == 0:
            return r
        i1 = int(np.argmax(r["score"]))
        s1 = float(r["score"][i1])
        if s1 < A["hop_confident"]:
            return r
        best = int(r["rows"][i1])
        qb = self.query_for_piece(self.ids[best], second_line=False)  # its versions by its own lead line
        # a stored piece's versions are among its vector neighbours; without the n-gram
        # lists (which find excerpts) clean queries at 100k pieces took 66-80 instead of
        # 105-120 ms CPU p50, the same MAP (docs/covers-history.md)
        rows = self.candidates(qb, vectors_only=True)
        if q.piece_id is not None and q.piece_id in self.row_of:
            rows = rows[rows != self.row_of[q.piece_id]]
        rows = rows[: A["hop_candidates"]]
        if rows.size < 4:
            return r
        # the best answer and its candidates are stored pieces: their notated scales
        rb = self.rerank(qb, rows, fine=False)
        ok = rb["score"] >= max(A["hop_same"], float(np.median(rb["score"])) + A["hop_above"])
        if not ok.any():
            return r
        via_rows = rb["rows"][ok]
        via_score = (A["hop_factor"] * s1 * np.minimum(rb["score"][ok], 1.0)).astype(np.float32)
        new = np.setdiff1d(via_rows, r["rows"])
        if new.size:
            r = _concat(r, self.rerank(q, new, scale=r["scale"]))
        pos = {int(x): i for i, x in enumerate(r["rows"])}
        score = r["score"].copy()
        via = r["via_best"].copy()
        for row, vs in zip(via_rows, via_score):
            i = pos[int(row)]
            if vs > score[i]:
                score[i] = vs
                via[i] = True
        r = dict(r)
        r["score"], r["via_best"] = score, via
        return r

    def _fuse_recordings(self, q: QueryFeatures, r):
        """The final score where a recording is involved: pairs with a recording on at
        least one side get the recording fusion (``query.cover_fusion.recording_features``:
        alignment scores and the chroma cover-song distance for the
        ``audio_bonus_candidates`` best pairs with a recording by alignment score, unless
        ``audio_bonus`` is off; its probabilities are not calibrated again: the recording
        fusion was fitted with queries whose song is absent, and the MIDI calibration
        lowered the right answers of recordings, docs/covers.md, step 6), the other pairs
        (a MIDI query's MIDI answers) the MIDI fusion calibrated among themselves as
        :meth:`_fuse` calibrates a search without recordings. ``bonus``: what the chroma distance changed
        the score by (against the same pair at its kind's median distance in this query:
        0 for a pair not measured; negative where it lowered the score)."""
        from query.cover_fusion import RECORDING_FEATURES, RECORDING_FUSION_FILE, load_fusion

        r = dict(r)
        k = r["rows"].size
        r["bonus"] = np.zeros(k, np.float32)
        if k == 0:
            return r
        x = self._features(q, r)
        x_rec, rec = self._recording_features(q, r, x)
        r["align"] = r["score"]
        score = np.empty(k, np.float32)
        if not rec.all():
            # a MIDI query's MIDI answers: calibrated among themselves as in a collection
            # without recordings (left uncalibrated, a wrong one outranked the right
            # recordings: docs/covers.md, "In a collection with recordings")
            score[~rec] = calibrate(fusion_logits(x[~rec]), short=_short(q))
        if rec.any():
            params = load_fusion(str(RECORDING_FUSION_FILE), RECORDING_FEATURES)
            score[rec] = fuse(x_rec[rec], params)
            # the same pairs at their kind's median distance in this query (where the
            # pairs not measured are): the bonus is 0 for those and for a median one
            typical = x_rec[rec].copy()
            css, rel = RECORDING_FEATURES.index("css"), RECORDING_FEATURES.index("css_rel")
            typical[:, css] -= typical[:, rel]
            typical[:, rel] = 0.0
            r["bonus"][rec] = score[rec] - fuse(typical, params)
        r["score"] = score
        return r

    def _recording_features(self, q: QueryFeatures, r, x: np.ndarray, distances: bool = False, typical=None):
        """(``RECORDING_FEATURES`` of every aligned candidate, which pairs have a
        recording on at least one side) from their ``FEATURES`` rows ``x``; the chroma
        distance is measured (unless ``audio_bonus`` is off) for the
        ``audio_bonus_candidates`` best pairs with a recording by alignment score, the
        others get a typical one (``query.cover_fusion.css_columns``); ``distances``: the
        distances too (NaN: not measured)."""
        from query.cover_fusion import (RECORDING_FEATURES, RECORDING_FUSION_FILE, load_fusion, pitch_class_spread,
                                        recording_features)

        rows = r["rows"]
        rec = self.is_recording[rows] | bool(q.is_recording)
        d = np.full(rows.size, np.nan)
        # the best pairs with a recording, not the best pairs filtered: a MIDI query's 50
        # best in a large collection can be all MIDI, and its recordings went unmeasured
        pairs = np.flatnonzero(rec)
        top = pairs[np.argsort(-r["score"][pairs], kind="stable")[: ALIGN["audio_bonus_candidates"]]]
        if ALIGN["audio_bonus"] and top.size:
            chroma = self._time_chromas(q, rows[top])
            if chroma is not None:
                from indexers.audio_chroma import css_distances

                qtc, tc = chroma
                have = [i for i, c in enumerate(tc) if c is not None]
                if qtc is not None and have:
                    dist = css_distances(qtc[0], [tc[i][0] for i in have])
                    d[top[have]] = np.where(np.isfinite(dist), dist, np.nan)
        both = self.is_recording[rows] & bool(q.is_recording)
        if typical is None:
            typical = load_fusion(str(RECORDING_FUSION_FILE), RECORDING_FEATURES)["css_typical"]
        out = recording_features(x, d, both, typical, pitch_class_spread(q.chroma_beats)), rec
        return (*out, d) if distances else out

    def _time_chromas(self, q: QueryFeatures, rows: np.ndarray):
        """(the query's, each of ``rows``') (time chroma, is_recording) for the chroma
        distance (``indexers.audio_chroma.stored_time_chroma``; None where a piece has
        none); None without a database."""
        if self.db_dir is None:
            return None
        from atlas_db.connection import reading
        from indexers.audio_chroma import stored_time_chroma

        ids = [str(x) for x in self.ids[rows]]
        need = ids + ([q.piece_id] if q.time_chroma is None and q.piece_id in self.row_of else [])
        with reading(self.db_dir) as con:
            tc = stored_time_chroma(con, need)
        qtc = q.time_chroma if q.time_chroma is not None else tc.get(q.piece_id)
        return qtc, [tc.get(pid) for pid in ids]

    def recording_candidate_features(self, q: QueryFeatures, typical=(0.0, 0.0)):
        """Rows of every candidate the search scored for this query, their
        ``RECORDING_FEATURES``, which pairs have a recording and their chroma distances
        (NaN: not measured): what the recording fusion is fitted on
        (``benchmarks/fit_recording_fusion.py``, which sets the ``css`` of the pairs not
        measured from its own ``typical`` distances: no fit need exist)."""
        with one_blas_thread():
            r = self._aligned(q)
            x_rec, rec, d = self._recording_features(q, r, self._features(q, r), distances=True, typical=typical)
            return r["rows"], x_rec, rec, d

    def _best_for_bonus(self, r) -> np.ndarray:
        """Positions of the ``audio_bonus_candidates`` best answers by score."""
        return np.argsort(-r["score"], kind="stable")[: ALIGN["audio_bonus_candidates"]]

    def _involves_recording(self, q: QueryFeatures, r) -> bool:
        """Whether the query or one of the answers the audio bonus looks at is a recording
        (the rule before the recording fusion; with it, any answer that is one counts)."""
        return bool(q.is_recording or self.is_recording[r["rows"][self._best_for_bonus(r)]].any())

    def _audio_bonus(self, q: QueryFeatures, r):
        """Where the query or one of the ``audio_bonus_candidates`` best answers is a
        recording (:meth:`_involves_recording`): add the chroma cover-song
        alignment bonus (``indexers.audio_chroma.fuse_css``, on chroma per 0.5 s, which
        needs no beat grid) to those answers' alignment scores. MIDI <-> MIDI pairs are
        left alone."""
        A = ALIGN
        k = r["rows"].size
        r = dict(r)
        r["bonus"] = np.zeros(k, np.float32)
        if not A["audio_bonus"] or k == 0:
            return r
        top = self._best_for_bonus(r)
        chroma = self._time_chromas(q, r["rows"][top])
        if chroma is None:  # no database: the symbolic scores stand
            return r
        from indexers.audio_chroma import fuse_css

        fused = fuse_css(r["score"][top], *chroma)
        score = r["score"].copy()
        r["bonus"][top] = fused - score[top]
        score[top] = fused
        r["score"] = score
        return r

    def _expand(self, q: QueryFeatures, r) -> np.ndarray:
        """Query expansion: the vector neighbours of the best few answers, not yet
        scored (other versions of a found song are usually each other's neighbours)."""
        from indexers.faiss_index import search

        A = ALIGN
        if r["rows"].size == 0:
            return np.zeros(0, np.int64)
        best = r["rows"][np.argsort(-r["score"], kind="stable")[: A["expand_from"]]]
        _, nb = search(self.index, self.vectors[best], A["expand_neighbours"] + 1)
        new = np.setdiff1d(nb[nb >= 0], r["rows"])
        if q.piece_id is not None and q.piece_id in self.row_of:
            new = new[new != self.row_of[q.piece_id]]
        return new.astype(np.int64)

    def _harmony_regions(self, q: QueryFeatures, rows: np.ndarray, scales: np.ndarray, shifts: np.ndarray,
                         fill: float = 0.0) -> np.ndarray:
        """Where each row's harmony alignment lies, at its own time scale and transposition
        (``rerank``'s ``hscale`` and ``hshift``), on the query's own beat grid: float
        [shape=(k, 4)] query start, query end, match start, match end, in beats; ``fill``
        where the query has fewer than 2 frames at that scale."""
        A = ALIGN
        fb = _frame_beats(q)
        out = np.full((rows.size, 4), fill, np.float64)
        scales = np.asarray(scales)
        for scale in np.unique(scales):
            sel = scales == scale
            qs, nq, fa = self._phase_frames(q, float(scale))[0]
            if nq < 2:
                continue
            frefs, fstarts, fends = self._frames_of(rows[sel], fb)
            sh = np.ascontiguousarray(np.asarray(shifts)[sel].reshape(-1, 1), np.int64)
            _, _, h = sw_chroma(qs, sh, frefs, (fstarts, fends), A["chroma_threshold"], A["chroma_silent"],
                                _chroma_gap(q))
            h = h.astype(np.float64)
            h[:, :2] = (h[:, :2] + fa) * fb * float(scale)
            h[:, 2:] = h[:, 2:] * fb
            out[sel] = h
        return out

    def _explain(self, q: QueryFeatures, r, order, n_explain: int) -> pa.Table:
        A = ALIGN
        all_rows = r["rows"][order]
        rows = all_rows[:n_explain]
        # aligned regions, for the shown answers only (the tracking kernels are slower),
        # each answer with the one alignment that explains it
        by_mel = np.asarray(r["by_melody"][order][:n_explain], bool)
        q_second = np.asarray(r["mel_query_second"][order][:n_explain], bool)
        # each melody-matched answer's region is its alignment with the query line that
        # scored it: the query's lead line, or its second line where that aligned better
        lines = [(by_mel & ~q_second, q.intervals, r["mel_window"]),
                 (by_mel & q_second, q.second_intervals, r["mel_window2"])]
        lines = [(sel, iv, ab) for sel, iv, ab in lines if sel.any() and ab[1] - ab[0] >= 2]
        mreg = np.zeros((rows.size, 4), np.int32)
        starts, stops = self._line_of(rows, r["mel_line"][order][:n_explain], self.line_iv_off)
        # each reference up to where its best melody score was reached (rerank's
        # mel_end): the region ends there, and the cells after it change nothing
        ends = np.minimum(stops, starts + r["mel_end"][order][:n_explain] + 1)

        def melody_regions(part):
            return [(sel, a, sw_symbols(np.ascontiguousarray(iv[a:b]), self.iv, (starts[sel], ends[sel]),
                                        A["mel_match"], A["mel_mismatch"], A["mel_gap"], A["mel_merge"])[1])
                    for sel, iv, (a, b) in part]

        # half of each line's answers (by length) aligned in the other thread while this
        # one finds the harmony regions and writes every column that does not depend on
        # the melody regions, then aligns the other half
        halves = ([], [])
        for sel, iv, ab in lines:
            for half, part in zip(halves, _halves(sel, ends - starts)):
                if part.any():
                    half.append((part, iv, ab))
        melody = in_background(melody_regions, halves[0]) if halves[0] else None
        region = np.zeros((all_rows.size, 4))  # filled for the explained answers only
        region[: n_explain][~by_mel] = self._harmony_regions(q, rows[~by_mel], r["hscale"][order][:n_explain][~by_mel],
                                                            r["hshift"][order][:n_explain][~by_mel])
        # every column of every answer at once, as arrays; the regions of the answers
        # explained by their melody (``later``) are filled in below. A score is a float32
        # value, whose product with 10^4 is exact in float64: np.round gives what Python's
        # round gave one value at a time
        n_all = all_rows.size
        explained = np.arange(n_all) < n_explain
        by_mel_all = np.asarray(r["by_melody"][order], bool)
        later = np.flatnonzero(explained & by_mel_all)
        time_scale = np.round(np.asarray(r["hscale"][order], np.float64), 3)
        trans = (np.asarray(r["hshift"][order], np.int64) + 5) % 12 - 5  # -5..6
        for sel, a, reg in melody_regions(halves[1]) + (melody.result() if melody is not None else []):
            mreg[sel] = reg
            mreg[sel, :2] += a
        for i in later:
            qs_b, qe_b, rs_b, re_b, t, sc = self._melody_region(q, r, int(order[i]), int(all_rows[i]), mreg[i])
            region[i] = qs_b, qe_b, rs_b, re_b
            trans[i] = (t + 5) % 12 - 5
            time_scale[i] = round(sc, 3)

        def rounded(name):
            return pa.array(np.round(np.asarray(r[name][order], np.float64), 4).astype(np.float32))

        # (each array made in its final type: pyarrow's own casts cost ~15 us an array)
        cols = {"query": pa.array([q.label] * n_all, pa.string()),
                "rank": pa.array(np.arange(1, n_all + 1, dtype=np.int32)),
                "piece_id": pa.array(self.ids[all_rows].tolist(), pa.string()),
                "path": pa.array(self.paths[all_rows].tolist(), pa.string()),
                "score": rounded("score"), "transposition": pa.array(trans.astype(np.int16)),
                "time_scale": pa.array(time_scale.astype(np.float32), mask=~explained),
                "melody_score": rounded("mel"), "harmony_score": rounded("harm"),
                "matched_by": pa.array(np.where(r["via_best"][order], "version_of_best",
                                                np.where(by_mel_all, "melody", "harmony")).tolist(), pa.string()),
                "audio_bonus": rounded("bonus")}
        for k, name in enumerate(("query_start_beats", "query_end_beats", "match_start_beats", "match_end_beats")):
            cols[name] = pa.array(region[:, k].astype(np.float32), mask=~explained)
        return pa.table([cols[f.name] for f in RESULT_SCHEMA], schema=RESULT_SCHEMA)

    def _melody_region(self, q: QueryFeatures, r, o: int, row: int, reg) -> tuple:
        """(query start, query end, match start, match end in beats, transposition, time
        scale) of answer ``o`` (piece ``row``) from its melody region ``reg`` (q_start,
        q_end, r_start, r_end in intervals)."""
        q0, q1, r0, r1 = (int(x) for x in reg)
        kind = int(r["mel_line"][o])
        iv_off, note_off = self.line_iv_off[kind], self.line_off[kind]
        ref_iv_idx = self.iv_index[iv_off[row]:iv_off[row + 1]]
        m0 = int(note_off[row])
        qn, q_on, q_pitch = (q.second_interval_index, q.second_onset_beats, q.second_pitch) \
            if r["mel_query_second"][o] else (q.interval_index, q.melody_onset_beats, q.melody_pitch)
        if not (q1 > q0 and r1 > r0):
            return 0.0, 0.0, 0.0, 0.0, int(r["hshift"][o]), 1.0
        qa, qb = int(qn[q0]), int(qn[q1 - 1]) + 1
        ra, rb = int(ref_iv_idx[r0]), int(ref_iv_idx[r1 - 1]) + 1
        qs_b, qe_b = float(q_on[qa]), float(q_on[qb])
        rs_b, re_b = float(self.mel_onset[m0 + ra]), float(self.mel_onset[m0 + rb])
        trans = region_shift(q_pitch[qa:qb + 1], self.mel_pitch[m0 + ra:m0 + rb + 1],
                             int(self.mel_pitch[m0 + ra]) - int(q_pitch[qa]))
        return qs_b, qe_b, rs_b, re_b, trans, (qe_b - qs_b) / (re_b - rs_b) if re_b > rs_b else 1.0

    # -- queries by id ----------------------------------------------------------------
    def query_for_piece(self, piece_id: str, label: str | None = None, second_line: bool = True) -> QueryFeatures:
        """A stored piece as a query, from its stored features; with its stored second line
        as the query's (``second_line``, when ``query_second_line`` would give a file of
        it one: the same search as for the file, ``resolve_query``)."""
        i = self.row_of.get(piece_id)
        if i is None:
            raise IndexTroubleError(f"{piece_id}: piece has no vectors yet; run `atlas reindex --vectors`")
        mp = self.mel_pitch[self.mel_off[i]:self.mel_off[i + 1]]
        mo = self.mel_onset[self.mel_off[i]:self.mel_off[i + 1]]
        beats = self.chroma_q[self.beat_off[i]:self.beat_off[i + 1]].astype(np.float32) / 127.0
        sp = so = None
        if second_line and _reads_second_line(beats.shape[0], self.iv[self.iv_off[i]:self.iv_off[i + 1]],
                                              self.iv[self.sec_iv_off[i]:self.sec_iv_off[i + 1]]):
            sp = self.mel_pitch[self.sec_off[i]:self.sec_off[i + 1]]
            so = self.mel_onset[self.sec_off[i]:self.sec_off[i + 1]]
        tp = self.mel_pitch[self.line_off[2][i]:self.line_off[2][i + 1]]
        q = QueryFeatures(label or piece_id, piece_id, self.vectors[i], beats, mp, mo,
                          bass_pc=self.bass_pc[self.bass_off[i]:self.bass_off[i + 1]], second_pitch=sp,
                          second_onset_beats=so, third_pitch=tp if tp.size else None)
        q.is_recording = bool(self.is_recording[i])
        if self.notes is not None:
            q.note_onset_beats, q.note_pitch = self.notes.of_row(i)
        return q


# _ROLL[t] indexes a 12-vector rotated up by t semitones: x[_ROLL[t]] == np.roll(x, t)
_ROLL = (np.arange(12)[None, :] - np.arange(12)[:, None]) % 12


@njit(cache=True, nogil=True)
def _rolled_frames(frames):
    """(qs, nq): ``qs[t]`` the frames rolled up t semitones (``np.roll(frames, t,
    axis=1)``), float32 [shape=(12, n, 12)], and ``nq`` the frames whose sum
    (``_numpy_sum12``) is above 0: what NumPy's gather and ``sum(axis=1)`` gave, in 38-100
    us a call at 64-300 frames (this: 7-26 us)."""
    n = frames.shape[0]
    qs = np.empty((12, n, 12), np.float32)
    nq = 0
    for i in range(n):
        f = frames[i]
        nq += _numpy_sum12(f, False) > 0
        for p in range(12):
            for t in range(12):
                qs[t, i, (p + t) % 12] = f[p]
    return qs, nq


def _halves(sel: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``sel`` (a mask) cut in two masks of about equal total ``lengths``, in order."""
    at = np.flatnonzero(sel)
    cut = int(np.searchsorted(np.cumsum(lengths[at]), lengths[at].sum() / 2)) + 1 if at.size > 1 else at.size
    first = np.zeros_like(sel)
    first[at[:cut]] = True
    return first, sel & ~first


def region_shift(query_pitch, ref_pitch, first_pair: int) -> int:
    """Semitones from the query's aligned notes up to the answer's: the shift (mod 12)
    under which their pitch-class counts agree most. The first aligned pair alone is
    not enough: the alignment is of intervals, and its first pair can join two voices
    (a transcribed recording's notes against its own MIDI file read -3). ``first_pair``
    (that pair's difference) breaks ties and is what a region too short to count gives."""
    return int(_region_shift(np.asarray(query_pitch, np.int64), np.asarray(ref_pitch, np.int64), first_pair))


@njit(cache=True, nogil=True)
def _region_shift(query_pitch, ref_pitch, first_pair):
    """:func:`region_shift` (a NumPy form, its bincounts and a 12 x 12 product, took
    ~35 us a call on 2 cores, ten calls an answer table)."""
    hq = np.zeros(12, np.int64)
    hr = np.zeros(12, np.int64)
    for p in query_pitch:
        hq[p % 12] += 1
    for p in ref_pitch:
        hr[p % 12] += 1
    agree = np.zeros(12, np.int64)  # [s]: ref pitch class = query's + s
    for s in range(12):
        for c in range(12):
            agree[s] += hr[(c + s) % 12] * hq[c]
    best = np.argmax(agree)
    return first_pair if agree[first_pair % 12] == agree[best] else best


def _tune_share(raw: np.ndarray, n_notes: int) -> np.ndarray:
    """A tune-among-the-notes alignment score as a share of the query: of its notes,
    ``pc_melody_share`` are expected to be the tune (at least ``min_query_intervals``)."""
    A = ALIGN
    return raw / (A["pc_match"] * max(A["pc_melody_share"] * n_notes, A["min_query_intervals"]))


def _window_correlation(frames: np.ndarray, offsets: np.ndarray, rolled: np.ndarray, width: int) -> np.ndarray:
    """(pieces, 12): per piece and transposition, the best cosine between the rolled
    query chroma and the summed chroma of any ``width`` successive frames of the piece
    (windows are cut at the piece's end; they start every quarter window)."""
    n_pieces = offsets.size - 1
    cs = np.zeros((frames.shape[0] + 1, 12), np.float32)
    np.cumsum(frames, axis=0, out=cs[1:])
    stride = max(1, width // 4)
    lens = np.diff(offsets)
    n_win = -(-lens // stride)
    w_off = np.concatenate([[0], np.cumsum(n_win)])
    piece = np.repeat(np.arange(n_pieces), n_win)
    start = offsets[:-1][piece] + (np.arange(w_off[-1]) - w_off[:-1][piece]) * stride
    sums = cs[np.minimum(start + width, offsets[1:][piece])] - cs[start]
    norm = np.linalg.norm(sums, axis=1, keepdims=True)
    np.divide(sums, norm, out=sums, where=norm > 0)
    corr = sums @ rolled.T  # (windows, 12)
    out = np.full((n_pieces, 12), -1.0, np.float32)
    has = n_win > 0
    out[has] = np.maximum.reduceat(corr, w_off[:-1][has], axis=0)
    return out


def _concat(r, r2):
    """Two re-rank results as one (the scale and melody window are the first's)."""
    return {key: (np.concatenate([r[key], r2[key]]) if isinstance(r[key], np.ndarray) else r[key]) for key in r}


def _pool_beats(chroma_beats: np.ndarray, frame_beats: float) -> np.ndarray:
    """Re-frame a 1-frame-per-beat chroma to unit-norm frames of ``frame_beats`` beats
    (any positive length: a query re-timed by a non-integer factor is read at a
    non-integer scale; each beat's content is spread evenly over the beat)."""
    if frame_beats >= 1 and abs(frame_beats - round(frame_beats)) < 1e-6:
        return _pool(chroma_beats, int(round(frame_beats)))
    if chroma_beats.shape[0] == 0:
        return np.zeros((0, 12), np.float32)
    return _spread_frames(np.ascontiguousarray(chroma_beats, np.float64), float(frame_beats))


@njit(cache=True, nogil=True)
def _spread_frames(x, frame_beats):
    """:func:`_pool_beats` at a non-integer length, the float operations of its NumPy
    form (~135 us a call, a dozen calls for a re-timed query): the beats' running sum;
    the frame edges ``i * frame_beats`` (``np.arange``'s) and the number of beats; the
    running sum read at each edge, between whole beats in proportion; each frame the
    difference of two readings, in float32, values under float32 1e-6 set to 0; its norm
    as ``np.linalg.norm`` (``_numpy_sum12``)."""
    n = x.shape[0]
    cs = np.zeros((n + 1, 12))
    for b in range(n):
        for p in range(12):
            cs[b + 1, p] = cs[b, p] + x[b, p]
    m = int(np.ceil(n / frame_beats))
    at = np.empty((m + 1, 12))
    for j in range(m + 1):
        edge = j * frame_beats if j < m else float(n)
        i = min(int(np.floor(edge)), n - 1)
        for p in range(12):
            at[j, p] = cs[i, p] + (edge - i) * x[i, p]
    frames = np.zeros((m, 12), np.float32)
    for j in range(m):
        f = frames[j]
        for p in range(12):
            v = np.float32(at[j + 1, p] - at[j, p])
            f[p] = v if not v < np.float32(1e-6) else np.float32(0.0)
        norm = np.sqrt(_numpy_sum12(f, True))
        if norm > 0:
            for p in range(12):
                f[p] = f[p] / norm
    return frames


@njit(cache=True, nogil=True)
def _pool_frames(chroma_q, starts, ends, fb, f_off):
    """Frames of ``fb`` beats of the beats ``chroma_q[starts[k]:ends[k]]`` of each k, back
    to back (piece k's at ``f_off[k]:f_off[k + 1]``), each divided by its norm. In one
    pass: gathering the beats, adding them by ``np.add.reduceat`` and taking NumPy's norm
    made a collection that keeps no frames (100,000 pieces) spend ~25 ms of a short
    query's CPU here. The same numbers as that form: a frame's values are sums of int8
    beats and its sum of squares an integer below 2^24 (for ``fb`` <= 9), all exact in
    float32 in any order, and the square root and division are correctly rounded."""
    frames = np.zeros((f_off[-1], 12), np.float32)
    for k in range(starts.size):
        f = f_off[k]
        for b in range(starts[k], ends[k]):
            row = f + (b - starts[k]) // fb
            for p in range(12):
                frames[row, p] += np.float32(chroma_q[b, p])
    for f in range(frames.shape[0]):
        ss = np.float32(0.0)
        for p in range(12):
            ss += frames[f, p] * frames[f, p]
        if ss > 0:
            norm = np.sqrt(ss)
            for p in range(12):
                frames[f, p] = frames[f, p] / norm
    return frames


def _gather_spans(values: np.ndarray, starts: np.ndarray, ends: np.ndarray):
    """``values[starts[k]:ends[k]]`` for every k, back to back, and their offsets."""
    lens = ends - starts
    off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    idx = np.repeat(starts - off[:-1], lens) + np.arange(off[-1])
    return np.ascontiguousarray(values[idx]), off



_CACHE: dict = {}


def load_index(db_dir, on_build=None) -> CoverIndex:
    """The cover index of a database: cached per process until the database changes, and
    on disk for the next process (``query.cover_cache``); after a write, the index saved
    before it is brought up to date (``query.cover_update``). ``on_build()`` is called
    before the index is built whole (no saved one, or too much changed)."""
    from atlas_db.connection import db_file

    db_dir = Path(db_dir)
    key = str(db_dir.resolve())
    stamp = db_file(db_dir).stat().st_mtime_ns if db_file(db_dir).exists() else None
    hit = _CACHE.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    from atlas_db.settings import check as check_settings
    from indexers.faiss_index import load_index as load_faiss
    from query.cover_cache import cache_key, load_cached, load_older, made_by, rekey, save_index
    from query.cover_update import update

    check_settings()  # (as before a database is opened: a saved index may spare the opening)
    on_disk, maker = cache_key(db_dir, ALIGN), made_by(ALIGN)
    idx = load_cached(db_dir, on_disk, lambda i: load_faiss(db_dir, i.ids, i.vectors))
    if idx is None:
        # the index saved before the last writes, brought up to date; else built
        older = load_older(db_dir, maker)
        got = update(older[1], db_dir) if older is not None else None
        if got is None and on_build is not None:
            on_build()
        idx, changed = got if got is not None else (_build_index(db_dir), True)
        if cache_key(db_dir, ALIGN) == on_disk:  # (else the database changed while it was read)
            try:
                if changed:
                    save_index(idx, db_dir, on_disk, maker)
                else:
                    rekey(db_dir, older[0], on_disk, maker)
            except OSError:  # a folder this process cannot write, a full disk: kept for this process
                pass
    idx.db_dir = db_dir  # (the folder may have moved since the index was saved)
    _CACHE[key] = (stamp, idx)
    return idx


def row_hash_sql(con) -> str:
    """SQL for ``row_hash``: a 64-bit hash of a row of ``cover_features c`` (every column
    the table has) and its piece's ``p.path`` and ``p.kind``, by which query.cover_update
    finds the pieces that changed since a saved index (any write, whoever made it:
    ~0.5 s at 100,000 pieces)."""
    cols = [r[0] for r in con.execute("SELECT column_name FROM information_schema.columns WHERE "
                                      "table_name = 'cover_features' ORDER BY ordinal_position").fetchall()]
    if not cols:  # (no table: the query that reads it says so)
        return "NULL::UBIGINT AS row_hash"
    return f"hash({', '.join('c.' + c for c in cols)}, p.path, p.kind) AS row_hash"


def _build_index(db_dir: Path, ids=None) -> CoverIndex:
    """The cover index built from the database's cover features and notes; of the pieces
    ``ids`` only (their FAISS index exact, not saved: ``query.cover_update``'s new pieces)."""
    import pyarrow.compute as pc

    t = cover_rows(db_dir, "p.kind, c.n_beats, c.beat_chroma, c.n_melody, c.melody_pitch, c.melody_onset_beats, "
                           "c.stage_version",
                   later=(("bass_pc", "TINYINT[]"), ("second_pitch", "SMALLINT[]"), ("second_onset_beats", "FLOAT[]"),
                          ("third_pitch", "SMALLINT[]"), ("third_onset_beats", "FLOAT[]")), ids=ids, with_hash=True)
    if ids is None:
        ids, vectors, fidx = piece_vectors(db_dir, t)
    else:
        from indexers.faiss_index import build_index

        ids = np.asarray(t.column("piece_id").to_pylist(), dtype=object)
        vectors = _flat(t, "vector", np.float32).reshape(len(ids), -1)
        fidx = build_index(vectors, exact=True, use_gpu=False)
    flat = functools.partial(_flat, t)

    # a row of a stage version before the bass line (or the second or third melody
    # line) has none (NULL): an empty line, until `atlas reindex` recomputes it
    def lengths(name):
        return pc.fill_null(pc.list_value_length(t.column(name)), 0).to_numpy()

    idx = CoverIndex(ids, t.column("path").to_pylist(), vectors, flat("beat_chroma", np.int8),
                     t.column("n_beats").to_numpy(), flat("melody_pitch", np.int16),
                     flat("melody_onset_beats", np.float32), t.column("n_melody").to_numpy(),
                     flat("bass_pc", np.int8), lengths("bass_pc"),
                     faiss_index=fidx, is_recording=np.asarray(t.column("kind").to_pylist()) == "audio",
                     db_dir=db_dir, second_pitch=flat("second_pitch", np.int16),
                     second_onset=flat("second_onset_beats", np.float32), n_second=lengths("second_pitch"),
                     third_pitch=flat("third_pitch", np.int16), third_onset=flat("third_onset_beats", np.float32),
                     n_third=lengths("third_pitch"), notes=stored_notes(db_dir, ids))
    from indexers.vectors import VERSION

    stale = pc.or_(pc.is_null(t.column("bass_pc")), pc.is_null(t.column("second_pitch")))
    stale = pc.or_(stale, pc.is_null(t.column("third_pitch")))
    stale = pc.or_(stale, pc.not_equal(t.column("stage_version"), VERSION))
    idx.row_stale = pc.fill_null(stale, False).to_numpy(zero_copy_only=False).astype(bool)
    idx.stale_pieces = int(idx.row_stale.sum())
    idx.row_hash = t.column("row_hash").to_numpy().astype(np.uint64)
    return idx


def cover_rows(db_dir, columns: str, later=(), ids=None, with_hash: bool = False) -> pa.Table:
    """``piece_id``, ``path`` and ``vector``, then ``columns`` (SQL over ``cover_features c``
    joined with ``pieces p``), the ``later`` columns ((name, type): NULL of that type
    where a database of an older version lacks the column, until a writer migrates it)
    and with ``with_hash`` a ``row_hash`` (:func:`row_hash_sql`), of every piece with
    cover features (or of those of ``ids``), by piece id."""
    from atlas_db.connection import reading

    db_dir = Path(db_dir)
    with reading(db_dir) as con:
        have = {r[0] for r in con.execute("SELECT column_name FROM information_schema.columns "
                                          "WHERE table_name = 'cover_features'").fetchall()} if later else set()
        extra = "".join(f", c.{name}" if name in have else f", NULL::{typ} AS {name}" for name, typ in later)
        if with_hash:
            extra += ", " + row_hash_sql(con)
        try:
            # a relation, not execute(): DuckDB copies an execute() result once more on its
            # way to Arrow (at 100,000 pieces ~260 MB more at the peak for a 224 MB table)
            t = con.sql(f"""SELECT c.piece_id, p.path, c.vector{", " + columns if columns else ""}{extra}
                            FROM cover_features c JOIN pieces p USING (piece_id)
                            {"" if ids is None else "WHERE c.piece_id IN (SELECT unnest($ids))"}
                            ORDER BY c.piece_id""", params=None if ids is None else {"ids": [str(i) for i in ids]}
                        ).to_arrow_table()
        except Exception as e:
            if "cover_features" in str(e):
                raise IndexTroubleError(f"{db_dir}: no cover features yet; run `atlas reindex --vectors --db {db_dir}`") from e
            raise
    if t.num_rows == 0 and ids is None:
        raise IndexTroubleError(f"{db_dir}: no piece has vectors yet; ingest files or run `atlas reindex --vectors`")
    return t


def _flat(t: pa.Table, name: str, dtype) -> np.ndarray:
    """A list column's values back to back."""
    return t.column(name).combine_chunks().values.to_numpy(zero_copy_only=False).astype(dtype)


def piece_vectors(db_dir, t: pa.Table):
    """(ids, vectors, FAISS index) of :func:`cover_rows`' table. The vectors are DuckDB's,
    whose copy Lance holds: reading Lance here cost every `atlas covers` the import of
    lancedb (1.4-2.6 s); the FAISS file is read, or built from these vectors when it is
    missing or out of date (indexers.faiss_index)."""
    from indexers.faiss_index import load_index as load_faiss

    ids = np.asarray(t.column("piece_id").to_pylist(), dtype=object)
    vectors = _flat(t, "vector", np.float32).reshape(len(ids), -1)
    return ids, vectors, load_faiss(db_dir, ids, vectors)


def _require_vectors(db_dir, query: str, pid: str, row_of: dict) -> None:
    """Nothing when the stored piece ``pid`` (named by ``query``) has cover features (is
    in ``row_of``); else an error that says why."""
    if pid in row_of:
        return
    from atlas_db.connection import reading

    with reading(db_dir) as con:  # (reindexing cannot help a piece without a melody or chords)
        pitched = con.execute("SELECT count(*) FROM notes n JOIN tracks t USING (piece_id, track_index) "
                              "WHERE n.piece_id = ? AND NOT coalesce(t.is_drum, false)", [pid]).fetchone()[0]
    if not pitched:
        raise BadInputError(f"{query}: the piece has no pitched notes (drums only, or none): nothing to compare")
    raise IndexTroubleError(f"{pid}: piece has no vectors yet; run `atlas reindex --vectors`")


def resolve_query(get_index, db_dir, query: str, stored=None) -> QueryFeatures:
    """A query argument: a MIDI or audio file path (ingested or not) or a piece id / prefix / path.
    ``get_index()`` gives the ``CoverIndex``; it is called only for a stored piece that was
    found, so a wrong id or a bad file is reported before seconds of loading. ``stored``
    (index, piece id, label) makes a stored piece's query instead of the index's
    ``query_for_piece`` (``query.similar``: its vector alone)."""
    p = Path(query)
    if p.is_file():
        return query_from_file(p)
    from atlas_db.connection import reading
    from query.export import resolve_piece

    with reading(db_dir) as con:
        try:
            pid = resolve_piece(con, query)
        except BadInputError:
            if p.is_dir():
                raise BadInputError(f"{query}: a folder, not a query (give a .mid or audio file, or a piece id, "
                                    "id prefix or ingested path)") from None
            raise
    index = get_index()
    _require_vectors(db_dir, query, pid, index.row_of)
    if stored is not None:
        return stored(index, pid, utf8_text(query))
    return index.query_for_piece(pid, label=utf8_text(query))


def stale_note(db_dir) -> str | None:
    """A one-line note when some pieces' cover features come from an older version of
    the vectors stage (the search still runs; a piece from before the bass line or the
    second or third melody line scores no bass and its tune is looked for in fewer lines;
    one from before ``vectors-8`` may hold its bass as its lead line), else None."""
    n = load_index(db_dir).stale_pieces
    if not n:
        return None
    return (f"note: {n} pieces in {db_dir} were indexed by an older version of the vectors stage (their "
            f"melody or bass lines may differ from a new build's): their cover scores are less sure; run "
            f"`atlas reindex --vectors --db {db_dir}` once")


def covers(db_dir, queries: list[str], *, top: int = 10, on_error=None, on_build=None) -> pa.Table:
    """Ranked versions of each query (one table, ``query`` column first). With
    ``on_error``, a query that cannot be read is passed to it (its one-line reason) and
    the others go on; without, it raises. ``on_build``: as :func:`load_index`'s."""
    if top < 1:
        raise BadInputError(f"--top {top}: must be at least 1")
    if not queries:
        raise BadInputError("no query given: name a .mid or audio file or a piece id")
    index = functools.cache(lambda: load_index(db_dir, on_build))  # once, after the first query is read

    def answer(query):
        q = resolve_query(index, db_dir, query)
        return index().search(q, top=top)

    return each_query(queries, answer, on_error)


def each_query(queries: list[str], answer, on_error) -> pa.Table:
    """``answer(query)`` of each query, concatenated; a ``BadInputError`` goes to
    ``on_error`` (when given) and the batch goes on, unless no query is left."""
    out = []
    for q in queries:
        try:
            out.append(answer(q))
        except BadInputError as e:
            if on_error is None:
                raise
            on_error(str(e))
    if not out:
        raise BadInputError(f"none of the {len(queries)} queries could be read")
    return pa.concat_tables(out)


class _GramIndex:
    """Which n-grams of a symbol sequence each piece contains (melody: pitch-class
    intervals; harmony: chord-to-chord motions; both transposition-invariant, and
    sequences of events rather than of time frames, so tempo-invariant). A query scores
    a piece by the summed IDF of the query's n-grams that the piece contains, divided by
    the square root of the number of distinct n-grams the piece has: without that, in a
    large collection the longest pieces (which contain a bit of everything) crowd out
    the right one; with a square root, a short excerpt still scores well in a long
    piece (docs/covers-history.md, "At 100,000 pieces")."""

    def __init__(self, sym: np.ndarray, off: np.ndarray, alphabet: int, ns=(3, 4)):
        from scipy import sparse

        self.alphabet = alphabet
        self.ns = ns
        self.bases = np.cumsum([0] + [alphabet ** n for n in ns])
        n_pieces = off.size - 1
        n_codes = int(self.bases[-1])
        parts = []
        for c0 in range(0, n_pieces, 8192):  # a chunk at a time: bounded temporaries
            c1 = min(c0 + 8192, n_pieces)
            codes, piece = self.codes(sym[off[c0]:off[c1]], off[c0:c1 + 1] - off[c0])
            m = sparse.csr_matrix((np.ones(codes.size, np.int8), (piece, codes)), shape=(c1 - c0, n_codes))
            m.sum_duplicates()
            m.data[:] = 1  # presence, not counts
            parts.append(m)
        m = sparse.vstack(parts, format="csc") if parts else sparse.csc_matrix((0, n_codes), dtype=np.int8)
        m.sort_indices()  # column_sums finds a range of pieces in a column by bisection
        # only the n-grams some piece holds get a column (``codes_held``, ascending): the
        # chord motions' 48**3 + 48**4 codes made a 5.4M-column matrix and idf (43 MB in
        # every process, over half of the saved index of 1,001 pieces) for ~0.2% held
        held = np.flatnonzero(np.diff(m.indptr)).astype(np.int64)
        self.set_presence(held, np.append(m.indptr[held], m.nnz).astype(m.indptr.dtype), m.indices, n_pieces)

    def set_presence(self, codes_held: np.ndarray, indptr: np.ndarray, indices: np.ndarray, n_pieces: int) -> None:
        """The index of this presence matrix: column j (n-gram ``codes_held[j]``, ascending)
        holds the pieces ``indices[indptr[j]:indptr[j + 1]]``, ascending (also how
        ``query.cover_update`` merges a saved index with new pieces)."""
        from scipy import sparse

        self.codes_held = codes_held
        m = sparse.csc_matrix((np.ones(indices.size, np.int8), indices, indptr), shape=(n_pieces, codes_held.size))
        m.has_sorted_indices = True
        df = np.diff(indptr).astype(np.float32)
        self.idf = np.log((1.0 + n_pieces) / (1.0 + df)).astype(np.float32) + 1.0
        distinct = np.bincount(m.indices, minlength=n_pieces)
        self.length_norm = (1.0 / np.sqrt(np.maximum(distinct, 1))).astype(np.float32)
        # the n-grams a quarter of the pieces or more hold as dense 0/1 rows (summed ~2x
        # faster at 100,000 pieces: indexers.sparse_sums), the rest sparse
        self.matrix, self.common_cols, self.common = split_common(m)

    def codes(self, sym: np.ndarray, off: np.ndarray):
        """(gram code, piece) of every n-gram that does not cross a piece boundary;
        symbols are 0..alphabet-1, negative ones (no symbol) break n-grams."""
        return _gram_codes(np.asarray(sym, np.int64), np.asarray(off, np.int64), np.asarray(self.ns, np.int64),
                           np.asarray(self.bases, np.int64), self.alphabet)

    def search(self, sym: np.ndarray, k: int, within: np.ndarray | None = None, memo: dict | None = None
               ) -> np.ndarray:
        """Rows of the ``k`` best pieces (best first, score > 0); ``within`` (bool per
        piece): among these pieces only. ``memo`` (a search's): every piece's scores
        are kept there, so that a second list of the same symbols (a search that looks
        further down its lists) does not sum them again."""
        if memo is None:
            scores = self.scores(sym)
        else:
            sym = np.asarray(sym)
            key = (self, sym.dtype.str, sym.tobytes())  # the index itself: a rebuilt one is another key
            if key not in memo:
                memo[key] = self.scores(sym)
            scores = memo[key]
        if scores is None:
            return np.zeros(0, np.int64)
        if within is not None:
            scores = np.where(within, scores, np.float32(0))
        k = min(k, scores.size)
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return top[scores[top] > 0].astype(np.int64)

    def scores(self, sym: np.ndarray) -> np.ndarray | None:
        """Every piece's score for these symbols, float32; None where they hold no n-gram."""
        codes, _ = self.codes(np.asarray(sym), np.array([0, len(sym)]))
        if codes.size == 0:
            return None
        at = dense_slots(self.codes_held, distinct(codes))  # their columns (-1: no piece holds it, adds nothing)
        cols = at[at >= 0]
        scores = all_column_sums(self.matrix, None, cols, self.idf[cols], self.common_cols, self.common)
        scores *= self.length_norm
        return scores


@njit(cache=True, nogil=True)
def _gram_codes(x, off, ns, bases, alphabet):
    """:meth:`_GramIndex.codes`: every n of ``ns`` in turn, the n-grams of each piece in
    order (a NumPy form, a pass over the symbols per n-gram position, took ~0.8 ms of a
    query's six lists)."""
    size = 0
    for n in ns:
        size += max(x.size - n + 1, 0)
    codes = np.empty(size, np.int64)
    piece = np.empty(size, np.int64)
    k = 0
    for j in range(ns.size):
        n = ns[j]
        for p in range(off.size - 1):
            for i in range(off[p], off[p + 1] - n + 1):
                code = 0
                for t in range(n):
                    if x[i + t] < 0:
                        code = -1
                        break
                    code = code * alphabet + x[i + t]
                if code >= 0:
                    codes[k] = code + bases[j]
                    piece[k] = p
                    k += 1
    return codes[:k], piece[:k]


def _chord_templates() -> np.ndarray:
    """24 unit-norm triad templates: rows 0-11 major on C..B, 12-23 minor."""
    t = np.zeros((24, 12), np.float32)
    for r in range(12):
        t[r, [r, (r + 4) % 12, (r + 7) % 12]] = 1
        t[12 + r, [r, (r + 3) % 12, (r + 7) % 12]] = 1
    return t / np.sqrt(3)


_TEMPLATES = _chord_templates()
CHORD_ALPHABET = 48  # (root motion 0-11) x (from major/minor) x (to major/minor)


def chord_motions(frames: np.ndarray, off: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Chord-to-chord motion symbols per piece from unit-norm chroma frames.

    Each frame takes its best-matching major/minor triad (frames matching none by a
    cosine of 0.6 are no chord); repeats are merged; each change of chord becomes a
    symbol ``root interval * 4 + from_minor * 2 + to_minor``; -1 marks a break (a
    stretch with no chord). Returns (symbols, offsets).
    """
    if frames.shape[0] == 0:
        return np.zeros(0, np.int64), np.zeros(off.size, np.int64)
    sim = np.ascontiguousarray(frames @ _TEMPLATES.T)  # (BLAS: the same products as before)
    return _chord_motions(sim, np.asarray(off, np.int64))


@njit(cache=True, nogil=True)
def _chord_motions(sim, off):
    """:func:`chord_motions` from the frames' cosines with the 24 triads (a NumPy form,
    ten passes over the frames, took ~0.19 ms for one query's 300 frames)."""
    sym = np.empty(sim.shape[0], np.int64)  # at most one symbol per frame
    counts = np.zeros(off.size - 1, np.int64)
    k = 0
    for p in range(off.size - 1):
        prev = -1
        for f in range(off[p], off[p + 1]):
            best = 0  # the first best triad (or NaN, as np.argmax), none under a cosine of 0.6
            for c in range(24):
                if np.isnan(sim[f, c]) or sim[f, c] > sim[f, best]:
                    best = c
                    if np.isnan(sim[f, c]):
                        break
            chord = best if not sim[f, best] < 0.6 else -1
            if f > off[p] and chord != prev:  # a change of chord within the piece
                if prev < 0 or chord < 0:
                    sym[k] = -1
                else:
                    sym[k] = ((chord % 12 - prev % 12) % 12) * 4 + (prev >= 12) * 2 + (chord >= 12)
                k += 1
                counts[p] += 1
            prev = chord
    out_off = np.zeros(off.size, np.int64)
    out_off[1:] = np.cumsum(counts)
    return sym[:k], out_off


def _bass_steps(bass_pc: np.ndarray, off: np.ndarray) -> np.ndarray:
    """Symbols 0..10 of the bass lines' steps (the interval to the next bass note mod 12,
    minus 1; a repeated pitch class is one note already), -1 at each line's last note."""
    pc = np.asarray(bass_pc, np.int64)
    step = np.full(pc.size, -1, np.int8)
    if pc.size > 1:
        step[:-1] = (np.diff(pc) % 12 - 1).astype(np.int8)
    ends = np.asarray(off, np.int64)[1:] - 1
    step[ends[ends >= 0]] = -1
    return step


def _gram_index(iv, off) -> _GramIndex:
    return _GramIndex((np.asarray(iv, np.int16) - 1).astype(np.int8), off, 11)
