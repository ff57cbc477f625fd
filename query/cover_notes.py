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
from numba import njit

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


def stored_notes(db_dir, ids) -> NoteArrays:
    """The pitched notes (drums, channel 10, left out, as the cover features leave them) of
    the pieces ``ids`` (the cover index's rows, in order) from the database's ``notes``
    table; a piece without notes gets none. Each note gets its piece's row in SQL (a join
    on the rows' ids; faster than mapping ids to rows in Python, and than an ORDER BY in
    SQL) and the notes are grouped by row here by a counting sort (:func:`_by_row`): at
    100,000 pieces (13.1M notes) a stable argsort in its place raised the peak memory by
    ~240 MB more (docs/covers.md, "Loading the index at 100,000 pieces")."""
    from atlas_db.connection import reading

    ids = [str(pid) for pid in ids]
    if not ids:
        return notes_from_arrays([], [])
    with reading(Path(db_dir)) as con:
        t = con.sql("SELECT r.row::INTEGER, n.onset_beats::FLOAT, n.pitch::TINYINT FROM notes n "
                    "JOIN (SELECT unnest($ids) AS piece_id, unnest(range(len($ids))) AS row) r USING (piece_id) "
                    "WHERE n.channel IS DISTINCT FROM 9", params={"ids": ids}).to_arrow_table()
    return NoteArrays(*_by_row(t.column(0).to_numpy(), t.column(1).to_numpy(), t.column(2).to_numpy(), len(ids)))


@njit(cache=True)
def _by_row(row, onset, pitch, n_rows):
    """(onset, pitch, off): the notes grouped by ``row`` (0..n_rows-1), each row's in their
    order here (a stable counting sort: what ``np.argsort(row, kind="stable")`` gives,
    in two passes and without an order array)."""
    off = np.zeros(n_rows + 1, np.int64)
    for r in row:
        off[r + 1] += 1
    for i in range(n_rows):
        off[i + 1] += off[i]
    at = off[:-1].copy()
    out_onset = np.empty(row.size, np.float32)
    out_pitch = np.empty(row.size, np.int8)
    for i in range(row.size):
        j = at[row[i]]
        out_onset[j] = onset[i]
        out_pitch[j] = pitch[i]
        at[row[i]] = j + 1
    return out_onset, out_pitch, off
