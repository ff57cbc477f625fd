"""Small MIDI files whose notes are known, written with mido, for tests.

A note is ``(pitch, onset_beats, duration_beats, velocity)``; a track is a list of notes
plus optional name/program/channel. Beats are quarter notes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mido

__all__ = ["Track", "write_midi", "melody", "NAMES"]

NAMES = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


@dataclass
class Track:
    notes: list[tuple[int, float, float, int]]
    name: str = ""
    program: int = 0
    channel: int = 0


def melody(pitches, *, start_beats: float = 0.0, step_beats: float = 1.0, dur_beats: float | None = None,
           velocity: int = 80) -> list[tuple[int, float, float, int]]:
    """Evenly spaced notes: ``melody([60, 62, 64])`` is C D E on beats 0, 1, 2."""
    dur = step_beats if dur_beats is None else dur_beats
    return [(p, start_beats + i * step_beats, dur, velocity) for i, p in enumerate(pitches)]


def write_midi(path, tracks: list[Track], *, tpq: int = 480, tempo_bpm: float = 120.0,
               time_signature=(4, 4), key: str | None = None) -> Path:
    """Write a format-1 file: track 0 holds tempo/signatures, then one MTrk per Track."""
    path = Path(path)
    mf = mido.MidiFile(type=1, ticks_per_beat=tpq)
    meta = mido.MidiTrack()
    meta.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(tempo_bpm), time=0))
    meta.append(mido.MetaMessage("time_signature", numerator=time_signature[0],
                                 denominator=time_signature[1], time=0))
    if key:
        meta.append(mido.MetaMessage("key_signature", key=key, time=0))
    mf.tracks.append(meta)
    for tr in tracks:
        mt = mido.MidiTrack()
        if tr.name:
            mt.append(mido.MetaMessage("track_name", name=tr.name, time=0))
        mt.append(mido.Message("program_change", program=tr.program, channel=tr.channel, time=0))
        events = []
        for pitch, onset, dur, vel in tr.notes:
            on = round(onset * tpq)
            off = round((onset + dur) * tpq)
            events.append((on, 1, mido.Message("note_on", note=pitch, velocity=vel, channel=tr.channel)))
            events.append((off, 0, mido.Message("note_off", note=pitch, velocity=0, channel=tr.channel)))
        events.sort(key=lambda e: (e[0], e[1]))
        last = 0
        for tick, _, msg in events:
            mt.append(msg.copy(time=tick - last))
            last = tick
        mf.tracks.append(mt)
    path.parent.mkdir(parents=True, exist_ok=True)
    mf.save(path)
    return path
