"""Probe for ``benchmarks/fusion_probe.py --probe``: do a short query's melody and
harmony alignments land at the same place in the candidate?

For a version, the region where the query's skyline intervals align best (``r["mel_end"]``,
the last aligned interval of the candidate's better line) and the region where its
harmony aligns best (``CoverIndex._harmony_regions``: at the candidate's scale and
transposition, as ``CoverIndex._explain`` finds it) are the same passage; for a chance
match they are independent. Columns: the distance in beats between the two regions'
ends, in the candidate's beats, as exp(-d / 8) and d < 8 beats; for short queries
(``query.covers._short``) and their best ``TOP`` candidates by alignment score only,
0 elsewhere. Measured in docs/covers-history.md ("Probes of the session of 2026-12-04
(afternoon)").
"""

import numpy as np

from query.covers import _short

TOP = 100


def columns(index, q, r, arrays):
    rows = r["rows"]
    out = np.zeros((rows.size, 2))
    if not _short(q) or rows.size == 0 or q.intervals.size < 2:
        return out
    sel = np.argsort(-r["score"], kind="stable")[:TOP]
    rs = rows[sel]
    # the melody's end, in the candidate's beats
    kind = r["mel_line"][sel]
    iv_off, iv_stop = index._line_of(rs, kind, index.line_iv_off)
    note_off = index._line_of(rs, kind, index.line_off)[0]
    end_iv = np.minimum(r["mel_end"][sel], iv_stop - iv_off - 1)
    ok = end_iv >= 0
    mel_end = np.full(rs.size, np.nan)
    note = index.iv_index[iv_off[ok] + end_iv[ok]] + 1  # the interval's second note
    mel_end[ok] = index.mel_onset[note_off[ok] + note]
    # the harmony's end, in the candidate's beats
    harm_end = index._harmony_regions(q, rs, r["hscale"][sel], r["hshift"][sel], fill=np.nan)[:, 3]
    d = np.abs(mel_end - harm_end)
    good = np.isfinite(d)
    out[sel[good], 0] = np.exp(-d[good] / 8.0)
    out[sel[good], 1] = d[good] < 8.0
    return out


ARMS = {"+ co-location": [0, 1]}
