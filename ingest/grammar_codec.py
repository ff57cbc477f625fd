"""Lossless serialisation of notes as grammar + encoded sequences + residuals.

The grammar gives, per note, its pitch (rule contours + one pitch per top-level symbol)
and its terminal (rhythm bucket of the inter-onset interval, velocity bucket). What it
does not give is stored as residuals, so every note is rebuilt exactly:

- ``ioi``: inter-onset interval in ticks minus the bucket's nominal value
  (``round(RHYTHM_NOMINAL_BEATS[b] * ticks_per_beat)``); for the last note of a track, its
  duration minus the nominal value;
- ``dur``: duration in ticks of every other note, coded as the difference from its own
  inter-onset interval (legato notes give 0);
- ``vel``: ``velocity % 16``;
- ``chan``: channel minus the track's first channel (mod 16);
- ``order``: ``note_index`` minus grammar position (the file's order inside chords);
- per track: ``track_index``, number of notes and of top-level symbols, first onset,
  first channel; per piece: ticks per beat, tempo map (for ``onset_s``).

Each stream is an integer array written as zigzag LEB128 varints and compressed with
LZMA (``preset=9``, the setting of ``xz -9``). :func:`encode` returns the compressed
streams, :func:`decode` turns them back into note arrays; the byte counts are what
``atlas stats --compression`` reports.
"""

from __future__ import annotations

import lzma

import numpy as np
from numba import njit

from ingest import grammar_core as gc

__all__ = ["encode", "decode", "stream_sizes", "varint_encode", "varint_decode"]


@njit(cache=True)
def _varint_encode(z):
    out = np.empty(len(z) * 10, np.uint8)
    o = 0
    for i in range(len(z)):
        v = z[i]
        while v >= 0x80:
            out[o] = (v & 0x7F) | 0x80
            v >>= 7
            o += 1
        out[o] = v
        o += 1
    return out[:o]


@njit(cache=True)
def _varint_decode(b, n):
    out = np.empty(n, np.uint64)
    o = 0
    i = 0
    while o < n:
        v = np.uint64(0)
        shift = np.uint64(0)
        while True:
            c = np.uint64(b[i])
            i += 1
            v |= (c & np.uint64(0x7F)) << shift
            if c < 0x80:
                break
            shift += np.uint64(7)
        out[o] = v
        o += 1
    return out


def varint_encode(x: np.ndarray) -> bytes:
    """Zigzag LEB128 varints of a signed integer array."""
    x = np.asarray(x, np.int64)
    z = ((x << 1) ^ (x >> 63)).astype(np.uint64)
    return _varint_encode(z).tobytes()


def varint_decode(b: bytes, n: int) -> np.ndarray:
    z = _varint_decode(np.frombuffer(b, np.uint8), n)
    return (z >> np.uint64(1)).astype(np.int64) ^ -(z & np.uint64(1)).astype(np.int64)


def _pack(arrays: dict[str, np.ndarray]) -> dict[str, bytes]:
    """Each array -> varints -> LZMA; a header of lengths makes the blob self-describing."""
    out = {}
    for name, a in arrays.items():
        a = np.asarray(a, np.int64)
        out[name] = lzma.compress(varint_encode(np.concatenate([[len(a)], a])), preset=9)
    return out


def _unpack(blob: bytes) -> np.ndarray:
    raw = lzma.decompress(blob)
    n = int(varint_decode(raw[:10], 1)[0])
    return varint_decode(raw, n + 1)[1:]


def _nominal_ticks(tpb: np.ndarray) -> np.ndarray:
    """[n, 16] nominal IOI ticks per bucket for each note's ticks_per_beat."""
    return np.rint(np.asarray(tpb, np.float64)[:, None] * gc.RHYTHM_NOMINAL_BEATS[None, :]).astype(np.int64)


def encode(notes: dict, seq: gc.Sequence, g: gc.Grammar, pieces: dict) -> dict[str, dict[str, bytes]]:
    """Compressed streams for ``notes`` (grammar order, see ingest.grammar.load_notes),
    parsed as ``seq`` with grammar ``g``.

    pieces: ``{"piece_ids": [...] (sorted, the order of notes), "ticks_per_beat": [...],
    "tempo_piece": codes, "tempo_ticks": [...], "tempo_us": [...]}``.
    Returns ``{"grammar": {...}, "sequences": {...}, "residuals": {...}}`` of name -> bytes.
    """
    ts = notes["track_starts"]
    n = notes["n"]
    n_tracks = len(ts) - 1

    spans = gc.rule_spans(g)
    track_of = np.repeat(np.arange(n_tracks), np.diff(ts))
    # grammar: children as distance below the rule's own id, connector intervals
    ids = np.arange(gc.N_TERMINALS, gc.N_TERMINALS + g.n_rules)
    grammar = _pack({"left": ids - g.left, "right": ids - g.right, "conn": g.conn,
                     "round": np.diff(np.concatenate([[0], g.round]))})
    # sequences: symbols, and each symbol's first pitch relative to the previous symbol's last
    seq_track = track_of[seq.start]
    new_track = np.ones(len(seq), np.bool_)
    new_track[1:] = seq_track[1:] != seq_track[:-1]
    last_pitch = seq.first + spans[seq.sym]
    prev_last = np.concatenate([[0], last_pitch[:-1]])
    pitch_step = np.where(new_track, seq.first, seq.first - prev_last)
    n_sym = np.bincount(seq_track, minlength=n_tracks)
    sequences = _pack({"symbols": seq.sym, "pitch": pitch_step})
    # residuals
    term, rb, vb, nxt = gc.terminals(notes["onset_ticks"], notes["duration_ticks"], notes["velocity"],
                                     notes["ticks_per_beat"], ts)
    nom = _nominal_ticks(notes["ticks_per_beat"])[np.arange(n), rb]
    is_last = np.zeros(n, np.bool_)
    is_last[ts[1:] - 1] = True
    dur = notes["duration_ticks"].astype(np.int64)
    chan = notes["channel"].astype(np.int64)
    chan0 = chan[ts[:-1]]
    seq_pos = np.arange(n) - ts[track_of]
    piece_codes = pa_codes(notes["track_piece"])
    tracks_per_piece = np.bincount(piece_codes, minlength=len(pieces["piece_ids"]))
    residuals = _pack({
        "ioi": nxt - nom,
        "dur": (dur - nxt)[~is_last],
        "vel": notes["velocity"].astype(np.int64) & 15,
        "chan": (chan - chan0[track_of]) % 16,
        "order": notes["note_index"].astype(np.int64) - seq_pos,
        "track_index": np.diff(np.concatenate([[0], notes["track_track"]])),
        "track_notes": np.diff(ts),
        "track_symbols": n_sym,
        "track_onset": notes["onset_ticks"][ts[:-1]],
        "track_channel": chan0,
        "piece_tracks": tracks_per_piece,
        "piece_tpb": pieces["ticks_per_beat"],
        "tempo_count": np.bincount(pieces["tempo_piece"], minlength=len(pieces["piece_ids"])),
        "tempo_ticks": np.diff(np.concatenate([[0], pieces["tempo_ticks"]])),
        "tempo_us": np.diff(np.concatenate([[0], pieces["tempo_us"]])),
    })
    return {"grammar": grammar, "sequences": sequences, "residuals": residuals}


def pa_codes(values) -> np.ndarray:
    """Dense codes 0.. of a sorted list of strings, in order of appearance."""
    values = list(values)
    if not values:
        return np.empty(0, np.int64)
    change = np.ones(len(values), np.bool_)
    change[1:] = np.array(values[1:], dtype=object) != np.array(values[:-1], dtype=object)
    return np.cumsum(change) - 1


def decode(streams: dict[str, dict[str, bytes]]) -> dict[str, np.ndarray]:
    """Notes back from :func:`encode`'s streams: per note (grammar order) ``piece``
    (code 0.. in piece order), ``track_index``, ``note_index``, ``onset_ticks``,
    ``duration_ticks``, ``pitch``, ``velocity``, ``channel``."""
    G = {k: _unpack(v) for k, v in streams["grammar"].items()}
    S = {k: _unpack(v) for k, v in streams["sequences"].items()}
    R = {k: _unpack(v) for k, v in streams["residuals"].items()}
    ids = np.arange(gc.N_TERMINALS, gc.N_TERMINALS + len(G["left"]))
    g = gc.Grammar()
    g.extend(ids - G["left"], ids - G["right"], G["conn"], np.cumsum(G["round"]))

    spans = gc.rule_spans(g)
    sym = S["symbols"]
    n_sym = R["track_symbols"]
    n_tracks = len(n_sym)
    sym_track = np.repeat(np.arange(n_tracks), n_sym)
    new_track = np.ones(len(sym), np.bool_)
    new_track[1:] = sym_track[1:] != sym_track[:-1]
    # first pitch of each symbol: cumulative within the track
    step = S["pitch"] + np.where(new_track, 0, np.concatenate([[0], spans[sym[:-1]]]))
    seg = np.cumsum(new_track) - 1
    csum = np.cumsum(step)
    base = np.concatenate([[0], csum])[np.flatnonzero(new_track)]
    first = csum - base[seg]
    term, pitch = gc.decode(sym, first, g)
    n = len(term)
    ts = np.concatenate([[0], np.cumsum(R["track_notes"])])
    track_of = np.repeat(np.arange(n_tracks), R["track_notes"])
    piece_of_track = np.repeat(np.arange(len(R["piece_tracks"])), R["piece_tracks"])
    tpb = R["piece_tpb"][piece_of_track][track_of]
    rb = term // 8
    nom = _nominal_ticks(tpb)[np.arange(n), rb]
    nxt = nom + R["ioi"]
    is_last = np.zeros(n, np.bool_)
    is_last[ts[1:] - 1] = True
    # onsets: first onset of the track + cumulative IOIs of the earlier notes
    inc = np.where(is_last, 0, nxt)
    c = np.concatenate([[0], np.cumsum(inc)])
    onset = R["track_onset"][track_of] + c[:-1] - c[ts[:-1]][track_of]
    dur = np.empty(n, np.int64)
    dur[is_last] = nxt[is_last]
    dur[~is_last] = nxt[~is_last] + R["dur"]
    velocity = (term % 8) * 16 + R["vel"]
    channel = (R["track_channel"][track_of] + R["chan"]) % 16
    note_index = R["order"] + np.arange(n) - ts[:-1][track_of]
    return {
        "piece": piece_of_track[track_of],
        "track_index": np.cumsum(R["track_index"])[track_of],
        "note_index": note_index,
        "onset_ticks": onset,
        "duration_ticks": dur,
        "pitch": pitch,
        "velocity": velocity,
        "channel": channel,
        "tempo_count": R["tempo_count"],
        "tempo_ticks": np.cumsum(R["tempo_ticks"]),
        "tempo_us": np.cumsum(R["tempo_us"]),
    }


def stream_sizes(streams: dict[str, dict[str, bytes]]) -> dict[str, int]:
    """Bytes per part (grammar, sequences, residuals) and per stream."""
    out = {}
    for part, d in streams.items():
        out[part] = sum(len(b) for b in d.values())
        for k, b in d.items():
            out[f"{part}.{k}"] = len(b)
    return out
