"""Every stored piece's notes (onset, pitch), held by the cover index for the note vote of
a short query (``CoverIndex._notes``, ``indexers.note_match``): a few seconds of a
version keep most of their notes where the other versions of the song have them, which
the index's melody lines and chroma do not show (docs/covers-history.md, "Notes where
the candidate has them"). 5 bytes a note: ~8.5 MB for POP909-dev's 1.69M notes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["NoteArrays", "notes_from_arrays", "stored_notes"]


@dataclass
class NoteArrays:
    """Pieces' pitched notes back to back, by row: row i's are ``[off[i], off[i + 1])``,
    in any order (the vote sorts each pitch's onsets)."""

    onset_beats: np.ndarray  # float32 [shape=(M,)]
    pitch: np.ndarray  # int8 [shape=(M,)], MIDI 0-127
    off: np.ndarray  # int64 [shape=(k+1,)]

    def spans(self, rows) -> tuple[np.ndarray, np.ndarray]:
        """(starts, ends) of these rows' notes, int64 [shape=(len(rows),)] each."""
        rows = np.asarray(rows, np.int64)
        return self.off[rows], self.off[rows + 1]

    def of_row(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(onset_beats, pitch) of one row's notes."""
        a, b = self.off[row], self.off[row + 1]
        return self.onset_beats[a:b], self.pitch[a:b]

    @property
    def nbytes(self) -> int:
        return self.onset_beats.nbytes + self.pitch.nbytes + self.off.nbytes


def notes_from_arrays(onsets: list, pitches: list) -> NoteArrays:
    """:class:`NoteArrays` of one (onset_beats, pitch) pair of arrays per row."""
    n = [np.asarray(p).size for p in pitches]
    return NoteArrays(np.concatenate([np.asarray(o, np.float32) for o in onsets]) if n else np.zeros(0, np.float32),
                      np.concatenate([np.asarray(p, np.int8) for p in pitches]) if n else np.zeros(0, np.int8),
                      np.concatenate([[0], np.cumsum(n, dtype=np.int64)]).astype(np.int64))


def stored_notes(db_dir, ids, batch_rows: int = 1 << 20) -> NoteArrays:
    """The pitched notes (drums, channel 10, left out, as the cover features leave them) of
    the pieces ``ids`` (the cover index's rows, in order) from the database's ``notes``
    table; a piece without notes gets none. Read in batches (no sort in SQL: ~25 ms
    for 1.69M notes unsorted against ~125 ms sorted), grouped by row here."""
    from atlas_db.connection import reading

    row_of = {str(pid): i for i, pid in enumerate(ids)}
    rows, onsets, pitches = [], [], []
    with reading(Path(db_dir)) as con:
        reader = con.sql("SELECT piece_id, onset_beats::FLOAT, pitch::TINYINT FROM notes "
                             "WHERE channel IS DISTINCT FROM 9").to_arrow_reader(batch_rows)
        for batch in reader:
            pid = batch.column(0).dictionary_encode()
            of = np.fromiter((row_of.get(str(x), -1) for x in pid.dictionary.to_pylist()), np.int64,
                             len(pid.dictionary))
            r = of[pid.indices.to_numpy(zero_copy_only=False)] if len(of) else np.zeros(0, np.int64)
            keep = r >= 0
            rows.append(r[keep])
            onsets.append(batch.column(1).to_numpy(zero_copy_only=False)[keep])
            pitches.append(batch.column(2).to_numpy(zero_copy_only=False)[keep])
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    order = np.argsort(r, kind="stable")
    counts = np.bincount(r, minlength=len(row_of))
    return NoteArrays(np.concatenate(onsets)[order].astype(np.float32) if rows else np.zeros(0, np.float32),
                      np.concatenate(pitches)[order].astype(np.int8) if rows else np.zeros(0, np.int8),
                      np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
