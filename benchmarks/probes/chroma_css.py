"""Probe: essentia's chroma cover-song distance (ChromaCrossSimilarity OTI + serra09
CoverSongSimilarity, on chroma per 0.5 s) for a short query's best TOP candidates, the
query's beats and every piece's beats read at 120 bpm (serra09's path allows tempo
ratios 1/2..2). Columns: -log distance and that minus the median over those candidates;
0 elsewhere. Measured in docs/covers-history.md ("The chroma cover-song distance for
short MIDI queries"): not kept."""

import numpy as np

from indexers.audio_chroma import css_distances, notes_time_chroma
from query.covers import _short

TOP = 20
TC = {}


def prepare(index, notes):
    for pid, n in notes.items():
        TC[pid] = notes_time_chroma(0.5 * n["onset_beats"], 0.5 * n["duration_beats"], n["pitch"])


def columns(index, q, r, arrays):
    rows = r["rows"]
    out = np.zeros((rows.size, 2))
    if not _short(q) or rows.size == 0:
        return out
    on_b, du_b, pitch = arrays[0], arrays[1], arrays[2]
    qtc = notes_time_chroma(0.5 * np.asarray(on_b), 0.5 * np.asarray(du_b), np.asarray(pitch))
    sel = np.argsort(-r["score"], kind="stable")[:TOP]
    refs = [TC.get(str(index.ids[row])) for row in rows[sel]]
    have = [i for i, x in enumerate(refs) if x is not None]
    if not have:
        return out
    d = css_distances(qtc, [refs[i] for i in have])
    ok = np.isfinite(d) & (d > 0)
    if ok.sum() < 2:
        return out
    css = -np.log(d[ok])
    idx = sel[np.asarray(have)[ok]]
    out[idx, 0] = css
    out[idx, 1] = css - np.median(css)
    return out


ARMS = {"+ chroma css (short)": [0, 1]}
