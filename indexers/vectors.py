"""Derived stage "vectors": cover features and embeddings for every piece and track.

For each piece (drum notes left out) it writes one ``cover_features`` row in DuckDB
(beat chroma, skyline melody, global vector) and one ``track_vectors`` row per track of
at least ``MIN_TRACK_NOTES`` notes; the vectors are upserted into two LanceDB tables
under ``<db>/lance/`` when Lance is next opened (:func:`open_lance` runs
:func:`sync_lance`). The beat chroma of a recording (``pieces.kind = 'audio'``
with ``audio_beats``) is what ``indexers.audio_chroma.harmony_sequence`` says (by default
the chroma of its transcribed notes; optionally its measured HPCP on the notes' grid):

- ``piece_vectors`` : ``piece_id``, ``vector`` (fixed-size float32 list)
- ``track_vectors`` : ``piece_id``, ``track_index``, ``vector``

Why Lance is filled by its readers and not by the ingest: importing lancedb alone takes
1.4-2.6 s on 2 cores, more than everything else a one-file ``atlas ingest`` does after
its imports (benchmarks/ingest_scale.py), and a query opens Lance (and pays that import)
anyway. The upserts are keyed by id, so a sync that runs twice (two readers at once) is
harmless, and everything in Lance can be rebuilt from DuckDB with :func:`reindex`
(``atlas reindex --vectors``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from atlas_db.connection import fetch_arrow
from ingest.packed_keys import packed_keys
from indexers.features import EMBED_DIM, features_from_notes, quantize_chroma, embedding, beat_chroma, \
    skyline, melody_intervals, beat_chroma_groups, lead_masks_groups, skyline_groups, melody_intervals_groups, \
    embedding_groups, bass_line_groups, note_parts

__all__ = [
    "STAGE", "VERSION", "BATCH_PIECES", "update", "forget", "load_inputs", "compute_rows", "write_rows",
    "lance_dir", "open_lance", "sync_lance",
    "reindex", "table_names", "PIECE_TABLE", "TRACK_TABLE", "piece_vector_schema", "track_vector_schema",
]

STAGE = "vectors"
VERSION = "vectors-10"
# One batch is one computation over all its notes: up to 1000 pieces, fewer when they
# hold more than BATCH_NOTES notes (each batch also reads the new pieces' notes, a scan
# of the whole notes table).
BATCH_PIECES = 1000
BATCH_NOTES = 400_000
# Tracks with fewer notes get no track vector (a vector of three notes says nothing).
MIN_TRACK_NOTES = 8

PIECE_TABLE = "piece_vectors"
TRACK_TABLE = "track_vectors"


def piece_vector_schema() -> pa.Schema:
    return pa.schema([("piece_id", pa.string()), ("vector", pa.list_(pa.float32(), EMBED_DIM)),
                      ("stage_version", pa.string())])


def track_vector_schema() -> pa.Schema:
    return pa.schema([("piece_id", pa.string()), ("track_index", pa.int32()),
                      ("vector", pa.list_(pa.float32(), EMBED_DIM)), ("stage_version", pa.string())])


def table_names(ldb) -> list[str]:
    """Names of the tables in a LanceDB connection."""
    return list(ldb.list_tables().tables)


def lance_dir(db_dir) -> Path:
    return Path(db_dir) / "lance"


def open_lance(db_dir, *, sync: bool = True):
    """The LanceDB connection of a database, with every vector DuckDB holds in it
    (``sync``: :func:`sync_lance` first)."""
    import lancedb

    ldb = lancedb.connect(str(lance_dir(db_dir)))
    if sync:
        sync_lance(db_dir, ldb)
    return ldb


def _lance_keys(ldb, name: str, keys: list[str]) -> pa.Table | None:
    """The key columns and stage_version of every row of a Lance table (None: no table)."""
    if name not in table_names(ldb):
        return None
    return ldb.open_table(name).search().select(keys + ["stage_version"]).limit(None).to_arrow()


def sync_lance(db_dir, ldb=None) -> dict[str, int]:
    """Upsert into Lance the piece and track vectors that DuckDB holds and Lance lacks
    (or holds from another stage version). Returns rows written per Lance table.

    Cheap when nothing is missing: one count per stage version on each side. Rows in
    Lance that DuckDB lacks (left by a batch that was rolled back) stay, and are ignored
    by the readers, as before.
    """
    from atlas_db.connection import db_file, reading

    if not db_file(Path(db_dir)).exists():
        return {}
    if ldb is None:
        ldb = open_lance(db_dir, sync=False)
    sources = {PIECE_TABLE: ("cover_features", ["piece_id"]),
               TRACK_TABLE: ("track_vectors", ["piece_id", "track_index"])}
    written = {}
    with reading(db_dir) as con:
        present = {r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_name IN ('cover_features', 'track_vectors')"
        ).fetchall()}
        for name, (source, keys) in sources.items():
            if source not in present:  # a database from before the table existed
                continue
            counts = dict(con.execute(f"SELECT stage_version, count(*) FROM {source} GROUP BY ALL").fetchall())
            if not counts:
                continue
            try:
                n = _sync_table(con, ldb, name, source, keys, counts)
            except (RuntimeError, OSError, ValueError):
                # a damaged Lance table (a file cut short or overwritten: lance raises
                # RuntimeError "LanceError(IO)"): a copy of DuckDB's rows, so made again
                if name in table_names(ldb):
                    ldb.drop_table(name)
                n = _sync_table(con, ldb, name, source, keys, counts)
            if n is not None:
                written[name] = n
    return written


def _sync_table(con, ldb, name: str, source: str, keys: list[str], counts: dict) -> int | None:
    """Upsert into the Lance table ``name`` the rows of DuckDB's ``source`` that it lacks
    (``counts``: ``source``'s rows per stage version); returns the rows written (None:
    the counts agree, nothing was looked for)."""
    if name in table_names(ldb):
        tbl = ldb.open_table(name)
        lance_counts = {v: tbl.count_rows(f"stage_version = '{v.replace(chr(39), chr(39) * 2)}'") for v in counts}
        if lance_counts == counts and tbl.count_rows() == sum(counts.values()):
            return None
    have = _lance_keys(ldb, name, keys)
    cond = " AND ".join(f"h.{k} = s.{k}" for k in keys + ["stage_version"])
    if have is None:
        missing = fetch_arrow(con.execute(f"SELECT {', '.join(keys)}, vector, stage_version FROM {source}"))
    else:
        con.register("_lance_have", have)
        try:
            missing = fetch_arrow(con.execute(
                f"SELECT {', '.join('s.' + k for k in keys)}, s.vector, s.stage_version FROM {source} s "
                f"WHERE NOT EXISTS (SELECT 1 FROM _lance_have h WHERE {cond})"))
        finally:
            con.unregister("_lance_have")
    if missing.num_rows:
        _upsert(ldb, name, _lance_rows(missing, name), keys)
    return missing.num_rows


def _lance_rows(rows: pa.Table, name: str) -> pa.Table:
    """DuckDB rows (vector a variable-size list) in the Lance table's schema."""
    vec = rows.column("vector").combine_chunks()
    flat = vec.values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, EMBED_DIM)
    cols = {"piece_id": rows.column("piece_id")}
    if name == TRACK_TABLE:
        cols["track_index"] = rows.column("track_index")
    cols["vector"] = _fixed(flat)
    cols["stage_version"] = rows.column("stage_version")
    return pa.table(cols, schema=track_vector_schema() if name == TRACK_TABLE else piece_vector_schema())


def _upsert(ldb, name: str, table: pa.Table, keys: list[str]) -> None:
    if table.num_rows == 0:
        return
    if name not in table_names(ldb):
        ldb.create_table(name, schema=table.schema, exist_ok=True)
    t = ldb.open_table(name)
    t.merge_insert(keys).when_matched_update_all().when_not_matched_insert_all().execute(table)


def _fixed(vectors: np.ndarray) -> pa.Array:
    flat = pa.array(np.ascontiguousarray(vectors, np.float32).ravel(), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, EMBED_DIM)


def _read_notes(con, piece_ids: list[str], notes: str = "notes") -> pa.Table:
    """The pieces' notes without drums, in no order (:func:`in_note_order` sorts them where
    they are computed: in a worker process when the stage runs in a pool)."""
    con.register("_vec_ids", pa.table({"piece_id": pa.array(piece_ids, pa.string())}))
    try:
        return fetch_arrow(con.execute(
            f"""SELECT n.piece_id, n.track_index, n.note_index, n.onset_beats, n.duration_beats, n.pitch, n.channel
               FROM {notes} n JOIN _vec_ids USING (piece_id)
               WHERE n.channel <> 9"""
        ))
    finally:
        con.unregister("_vec_ids")


# A total order: with ties (one pitch at one onset in two tracks) the skyline melody, and
# so the vectors, changed from one run to the next. Arrow compares strings by their bytes,
# as DuckDB's ORDER BY did here before (the same order for every pop909-dev note).
NOTE_ORDER = [("piece_id", "ascending"), ("onset_beats", "ascending"), ("pitch", "ascending"),
              ("track_index", "ascending"), ("note_index", "ascending")]


def in_note_order(notes: pa.Table) -> pa.Table:
    return notes.take(_note_order(notes))


def _note_order(notes: pa.Table) -> pa.Array:
    """``pc.sort_indices(notes, sort_keys=NOTE_ORDER)``, on three keys instead of five:
    each piece id's rank among the batch's ids (ranked by the same Arrow sort), the onset,
    and (pitch, track, note index) packed into one int64 when they fit. Equal keys are
    equal rows of NOTE_ORDER and the sort is stable, so the order is the same."""
    cols = [notes.column(c) for c in ("piece_id", "pitch", "track_index", "note_index")]
    if notes.num_rows == 0 or any(c.null_count for c in cols):
        return pc.sort_indices(notes, sort_keys=NOTE_ORDER)
    packed = packed_keys(*(c.to_numpy() for c in cols[1:]))
    if packed is None:
        return pc.sort_indices(notes, sort_keys=NOTE_ORDER)
    ids = pc.dictionary_encode(cols[0]).combine_chunks()
    rank = np.empty(len(ids.dictionary), np.int64)
    rank[pc.sort_indices(ids.dictionary).to_numpy()] = np.arange(len(ids.dictionary))
    keys = pa.table({"piece": rank[ids.indices.to_numpy()], "onset": notes.column("onset_beats"), "rest": packed})
    return pc.sort_indices(keys, sort_keys=[("piece", "ascending"), ("onset", "ascending"), ("rest", "ascending")])


def _read_audio(con, piece_ids: list[str]) -> dict:
    """piece_id -> (beat times s, beat HPCP (n, 12), notes' grid tempo bpm) of the audio
    pieces among these that have tracked beats."""
    t = _read_audio_rows(con, piece_ids)
    return {} if t is None else audio_beats_by_piece(t)


def _read_audio_rows(con, piece_ids: list[str]) -> pa.Table | None:
    """Rows (piece_id, time_s, hpcp, grid_bpm: the notes' grid tempo) of the tracked beats
    of the audio pieces among these, sorted by piece and beat; None without audio tables."""
    con.register("_vec_ids", pa.table({"piece_id": pa.array(piece_ids, pa.string())}))
    try:
        has = {r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_name IN ('audio_beats', 'tempo_changes')"
        ).fetchall()}
        if has != {"audio_beats", "tempo_changes"}:
            return None
        return fetch_arrow(con.execute(
            """SELECT b.piece_id, b.time_s, b.hpcp,
                      (SELECT min_by(tc.tempo_bpm, tc.time_ticks) FROM tempo_changes tc
                       WHERE tc.piece_id = b.piece_id) AS grid_bpm
               FROM audio_beats b JOIN _vec_ids USING (piece_id)
               JOIN pieces p USING (piece_id)
               WHERE p.kind = 'audio'
               ORDER BY b.piece_id, b.beat_index"""
        ))
    finally:
        con.unregister("_vec_ids")


def audio_beats_by_piece(t: pa.Table) -> dict:
    """Group rows (piece_id, time_s, hpcp, grid_bpm; sorted by piece, beat) by piece."""
    if t.num_rows == 0:
        return {}
    pid = np.asarray(t.column("piece_id").to_pylist(), dtype=object)
    times = t.column("time_s").to_numpy()
    hp = t.column("hpcp").combine_chunks()
    lens = np.diff(hp.offsets.to_numpy())
    flat = hp.values.to_numpy(zero_copy_only=False)
    bpm = t.column("grid_bpm").to_numpy(zero_copy_only=False)
    out = {}
    starts = np.flatnonzero(np.concatenate([[True], pid[1:] != pid[:-1]]))
    ends = np.concatenate([starts[1:], [pid.size]])
    for a, b in zip(starts, ends):
        if not np.all(lens[a:b] == 12) or not np.isfinite(bpm[a]) or bpm[a] <= 0:
            continue
        out[pid[a]] = (times[a:b], flat[12 * a:12 * b].reshape(-1, 12), float(bpm[a]))
    return out


def compute(notes: pa.Table, audio: dict | None = None, *, audio_harmony: str | None = None
            ) -> tuple[pa.Table, pa.Table]:
    """Features of every piece in ``notes`` (columns piece_id, track_index, onset_beats,
    duration_beats, pitch, channel: the lead rule reads (track, channel) parts,
    ``indexers.features.note_parts``; sorted by piece_id). Returns (cover_features rows,
    track rows).

    ``audio`` (optional): piece_id -> (beat times s, beat HPCP, grid bpm) of recordings,
    whose harmony sequence is then :func:`indexers.audio_chroma.harmony_sequence`'s
    (``audio_harmony``: its source, default ``HARMONY_SOURCE``).

    The pieces (and their tracks) are computed together, as groups of one set of arrays
    (``indexers.features.*_groups``); a recording with measured chroma goes through
    :func:`compute_one`."""
    ids, offsets = _piece_runs(notes.column("piece_id"))
    cols = {c: notes.column(c).to_numpy() for c in ("track_index", "onset_beats", "duration_beats", "pitch")}
    cols["part"] = note_parts(cols["track_index"], notes.column("channel").to_numpy())
    audio = audio or {}
    special = np.array([p in audio for p in ids], bool)
    if not special.any():
        return _compute_groups(ids, cols, offsets)
    # recordings one by one; everything else together; then back in piece order
    parts = []
    plain = np.flatnonzero(~special)
    if plain.size:
        sel = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in plain])
        sub_off = np.concatenate([[0], np.cumsum(np.diff(offsets)[plain])]).astype(np.int64)
        parts.append(_compute_groups(ids[plain], {c: v[sel] for c, v in cols.items()}, sub_off))
    for i in np.flatnonzero(special):
        a, b = offsets[i], offsets[i + 1]
        parts.append(compute_one(ids[i], {c: v[a:b] for c, v in cols.items()}, audio[ids[i]], audio_harmony))
    feats = pa.concat_tables([f for f, _ in parts])
    tracks = pa.concat_tables([t for _, t in parts])
    feats = feats.take(pa.array(np.argsort(feats.column("piece_id").to_numpy(zero_copy_only=False), kind="stable")))
    order = np.lexsort((tracks.column("track_index").to_numpy(),
                        tracks.column("piece_id").to_numpy(zero_copy_only=False)))
    return feats, tracks.take(pa.array(order))


def _piece_runs(piece_id: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """The runs of equal ids in a column sorted by id: (each run's id, object array;
    run offsets [shape=(runs + 1,)]). Compared by Arrow, so the notes' ids are never
    made into Python strings (that took ~0.03 s CPU a 340k-note batch)."""
    n = len(piece_id)
    if n == 0:
        return np.zeros(0, object), np.zeros(1, np.int64)
    change = pc.not_equal(piece_id.slice(1), piece_id.slice(0, n - 1))
    starts = np.concatenate([[0], np.flatnonzero(change.to_numpy(zero_copy_only=False)) + 1]).astype(np.int64)
    ids = piece_id.take(pa.array(starts)).to_numpy(zero_copy_only=False)
    return ids, np.concatenate([starts, [n]]).astype(np.int64)


def _lists(values: np.ndarray, offsets: np.ndarray, typ: pa.DataType) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(np.asarray(offsets, np.int32)), pa.array(values, typ))


def _compute_groups(ids: np.ndarray, cols: dict, offsets: np.ndarray) -> tuple[pa.Table, pa.Table]:
    """Every piece of the batch (``ids[i]``, its notes ``offsets[i]:offsets[i + 1]``) and each
    of its tracks with at least ``MIN_TRACK_NOTES`` notes, as groups of one computation."""
    from atlas_db.schema_vectors import TABLES

    trk, on, dur, pitch = (cols[c] for c in ("track_index", "onset_beats", "duration_beats", "pitch"))
    n_pieces = len(offsets) - 1
    piece_of = np.repeat(np.arange(n_pieces), np.diff(offsets))
    # tracks: the piece's notes of one track, in the piece's order
    t_order = np.lexsort((trk, piece_of)) if trk.size else np.zeros(0, np.int64)
    t_key = piece_of[t_order].astype(np.int64) * (int(trk.max()) + 1 if trk.size else 1) + trk[t_order]
    t_start = np.flatnonzero(np.concatenate([[True], t_key[1:] != t_key[:-1]])) if t_key.size else t_key
    t_len = np.diff(np.concatenate([t_start, [t_key.size]]))
    big = t_len >= MIN_TRACK_NOTES
    t_sel = np.concatenate([t_order[s:s + n] for s, n in zip(t_start[big], t_len[big])]) if big.any() \
        else np.zeros(0, np.int64)
    t_off = np.concatenate([[0], np.cumsum(t_len[big])]).astype(np.int64)
    n_tracks = int(big.sum())

    # chroma: the pieces' (all notes), then the tracks'
    all_on = np.concatenate([on, on[t_sel]])
    all_dur = np.concatenate([dur, dur[t_sel]])
    all_pitch = np.concatenate([pitch, pitch[t_sel]])
    g_off = np.concatenate([offsets, offsets[-1] + t_off[1:]])
    chroma, c_off = beat_chroma_groups(all_on, all_dur, all_pitch, g_off)
    # melody: the skyline of each piece's lead notes, then of each track, then of each
    # piece's second line, then of all notes of each piece whose lead is one track's
    # (its third line, indexers.features.third_line)
    lead, second = lead_masks_groups(cols["part"], on, pitch, offsets)
    counts = (np.bincount(piece_of[lead], minlength=n_pieces), np.bincount(piece_of[second], minlength=n_pieces))
    third = (counts[0] < np.diff(offsets))[piece_of]
    lead_off, sec_off, thr_off = (np.concatenate([[0], np.cumsum(c)]).astype(np.int64)
                                  for c in (*counts, np.bincount(piece_of[third], minlength=n_pieces)))
    m_on = np.concatenate([on[lead], on[t_sel], on[second], on[third]])
    m_dur = np.concatenate([dur[lead], dur[t_sel], dur[second], dur[third]])
    m_pitch = np.concatenate([pitch[lead], pitch[t_sel], pitch[second], pitch[third]])
    base = lead_off[-1] + t_off[-1]
    mel_p, mel_on, mel_off = skyline_groups(m_on, m_dur, m_pitch, np.concatenate(
        [lead_off, lead_off[-1] + t_off[1:], base + sec_off[1:], base + sec_off[-1] + thr_off[1:]]))
    n_lines = n_pieces + n_tracks
    iv, iv_off = melody_intervals_groups(mel_p[:mel_off[n_lines]], mel_off[:n_lines + 1])
    vec = embedding_groups(chroma, c_off, iv, iv_off)
    # bass line: each piece's notes (all tracks), already by onset within the piece
    bass, b_off = bass_line_groups(on, dur, pitch, offsets)

    p_frames = c_off[:n_pieces + 1]
    p_mel = mel_off[:n_pieces + 1]
    s_mel = mel_off[n_lines:n_lines + n_pieces + 1]
    t_p, t_on, t_mel = _unless_lead(mel_p, mel_on, p_mel, mel_off[n_lines + n_pieces:])
    ids_arr = pa.array(ids, pa.string())
    schema = TABLES["cover_features"]
    ver = pa.array([VERSION], pa.string())
    feats = pa.table({
        "piece_id": ids_arr,
        "n_beats": pa.array(np.diff(p_frames), pa.int32()),
        "beat_chroma": _lists(quantize_chroma(chroma[:p_frames[-1]]).ravel(), p_frames * 12, pa.int8()),
        "n_melody": pa.array(np.diff(p_mel), pa.int32()),
        "melody_pitch": _lists(mel_p[:p_mel[-1]], p_mel, pa.int16()),
        "melody_onset_beats": _lists(mel_on[:p_mel[-1]], p_mel, pa.float32()),
        "vector": _lists(vec[:n_pieces].ravel(), np.arange(n_pieces + 1) * EMBED_DIM, pa.float32()),
        "stage_version": ver.take(pa.array(np.zeros(n_pieces, np.int64))),
        "bass_pc": _lists(bass, b_off, pa.int8()),
        "second_pitch": _lists(mel_p[s_mel[0]:s_mel[-1]], s_mel - s_mel[0], pa.int16()),
        "second_onset_beats": _lists(mel_on[s_mel[0]:s_mel[-1]], s_mel - s_mel[0], pa.float32()),
        "third_pitch": _lists(t_p, t_mel, pa.int16()),
        "third_onset_beats": _lists(t_on, t_mel, pa.float32()),
    }, schema=schema)
    first = t_order[t_start[big]] if n_tracks else np.zeros(0, np.int64)
    tracks = pa.table({
        "piece_id": pa.array(ids[piece_of[first]], pa.string()),
        "track_index": pa.array(trk[first], pa.int32()),
        "vector": _fixed(vec[n_pieces:]),
        "stage_version": ver.take(pa.array(np.zeros(n_tracks, np.int64))),
    }, schema=track_vector_schema())
    return feats, tracks


def _unless_lead(mel_p: np.ndarray, mel_on: np.ndarray, lead_off: np.ndarray, off: np.ndarray):
    """The lines ``off`` (one per piece, into ``mel_p``/``mel_on``) as (pitches, onsets,
    offsets from 0), each left empty where it equals its piece's lead line ``lead_off``
    (as indexers.features.third_line leaves it)."""
    n_lead, n = np.diff(lead_off), np.diff(off)
    same = (n == n_lead) & (n > 0)
    if same.any():
        rows = np.flatnonzero(same)
        piece = np.repeat(rows, n[rows])
        at = np.arange(piece.size) - np.repeat(np.cumsum(n[rows]) - n[rows], n[rows])
        differ = np.bincount(piece, weights=mel_p[off[piece] + at] != mel_p[lead_off[piece] + at],
                             minlength=n.size)
        same &= differ == 0
    keep = np.repeat(~same, n)
    sl = slice(off[0], off[-1])
    n = np.where(same, 0, n)
    return mel_p[sl][keep], mel_on[sl][keep], np.concatenate([[0], np.cumsum(n)]).astype(np.int64)


def compute_one(piece_id: str, cols: dict, audio_beats=None, audio_harmony: str | None = None
                ) -> tuple[pa.Table, pa.Table]:
    """One piece's rows (as :func:`compute`), its harmony sequence from ``audio_beats``
    ((beat times s, beat HPCP, grid bpm) of a recording) when given. ``cols`` holds the
    piece's track_index, onset_beats, duration_beats, pitch and part (the lead rule's
    parts, :func:`indexers.features.note_parts`), as :func:`compute` makes them."""
    from atlas_db.schema_vectors import TABLES

    trk, on, dur, pitch = (np.asarray(cols[c]) for c in ("track_index", "onset_beats", "duration_beats", "pitch"))
    chroma = None
    if audio_beats is not None:
        from indexers.audio_chroma import harmony_sequence

        chroma, _ = harmony_sequence(*audio_beats, source=audio_harmony)
    f = features_from_notes(on, dur, pitch, np.asarray(cols["part"]), chroma=chroma)
    schema = TABLES["cover_features"]
    feats = pa.table({
        "piece_id": [piece_id], "n_beats": [f["beat_chroma"].shape[0]],
        "beat_chroma": [quantize_chroma(f["beat_chroma"]).ravel()], "n_melody": [f["melody_pitch"].size],
        "melody_pitch": [f["melody_pitch"]], "melody_onset_beats": [f["melody_onset_beats"]],
        "vector": [f["vector"]], "stage_version": [VERSION], "bass_pc": [f["bass_pc"]],
        "second_pitch": [f["second_pitch"]], "second_onset_beats": [f["second_onset_beats"]],
        "third_pitch": [f["third_pitch"]], "third_onset_beats": [f["third_onset_beats"]],
    }, schema=schema)
    t_idx, t_vec = [], []
    tracks_here = np.unique(trk)
    for t in tracks_here:
        m = trk == t
        if m.sum() < MIN_TRACK_NOTES:
            continue
        # a recording's one transcribed part (the mix) has the mix's measured chroma
        ch = f["beat_chroma"] if chroma is not None and tracks_here.size == 1 else \
            beat_chroma(on[m], dur[m], pitch[m])
        mp, _ = skyline(on[m], dur[m], pitch[m])
        t_idx.append(int(t))
        t_vec.append(embedding(ch, melody_intervals(mp)[0]))
    tracks = pa.table({
        "piece_id": pa.array([piece_id] * len(t_idx), pa.string()),
        "track_index": pa.array(t_idx, pa.int32()),
        "vector": _fixed(np.asarray(t_vec, np.float32).reshape(-1, EMBED_DIM)),
        "stage_version": pa.array([VERSION] * len(t_idx), pa.string()),
    }, schema=track_vector_schema())
    return feats, tracks


def forget(con, piece_ids: list[str]) -> None:
    """Delete the rows of pieces about to be redone. ``track_vectors`` (several rows a
    piece) is looked at only when ``cover_features`` had rows of them: new pieces cost
    one delete that finds nothing."""
    con.register("_vec_ids", pa.table({"piece_id": pa.array(piece_ids, pa.string())}))
    try:
        # fetchall: DuckDB 2 keeps a half-read result open and blocks the connection
        gone = con.execute("DELETE FROM cover_features WHERE piece_id IN (SELECT piece_id FROM _vec_ids)"
                           ).fetchall()[0][0]
        if gone:
            con.execute("DELETE FROM track_vectors WHERE piece_id IN (SELECT piece_id FROM _vec_ids)")
    finally:
        con.unregister("_vec_ids")


def load_inputs(con, piece_ids: list[str], notes: str = "notes") -> dict[str, pa.Table]:
    """What :func:`compute_rows` needs: the pieces' notes (drums left out, sorted by
    piece; read from the relation ``notes``) and, when it is their harmony source, the
    recordings' beat HPCP."""
    from indexers.audio_chroma import HARMONY_SOURCE

    out = {"notes": _read_notes(con, piece_ids, notes)}
    # the recordings' measured chroma only matters when it is their harmony sequence
    audio = _read_audio_rows(con, piece_ids) if HARMONY_SOURCE != "notes" else None
    if audio is not None:
        out["audio"] = audio
    return out


def compute_rows(inputs: dict[str, pa.Table], piece_ids: list[str]) -> dict[str, pa.Table]:
    """``cover_features`` rows and track vectors of each piece, each on its own."""
    audio = audio_beats_by_piece(inputs["audio"]) if "audio" in inputs else {}
    feats, tracks = compute(in_note_order(inputs["notes"]), audio)
    return {"cover_features": feats, TRACK_TABLE: tracks}


def write_rows(con, rows: dict[str, pa.Table]) -> None:
    """Write ``cover_features`` and ``track_vectors`` (inside the runner's transaction);
    Lance gets them when it is next opened (:func:`sync_lance`)."""
    tracks = rows[TRACK_TABLE]
    duck_tracks = pa.table({
        "piece_id": tracks.column("piece_id"), "track_index": tracks.column("track_index"),
        "vector": tracks.column("vector").cast(pa.list_(pa.float32())),
        "stage_version": tracks.column("stage_version"),
    })
    for table, view in ((rows["cover_features"], "_vec_rows"), (duck_tracks, "_vec_tracks")):
        con.register(view, table)
    try:
        con.execute("INSERT OR REPLACE INTO cover_features BY NAME SELECT * FROM _vec_rows")
        con.execute("INSERT OR REPLACE INTO track_vectors BY NAME SELECT * FROM _vec_tracks")
    finally:
        con.unregister("_vec_rows")
        con.unregister("_vec_tracks")


def update(con, piece_ids: list[str], notes: str = "notes") -> None:
    """Compute and write features and track vectors for these pieces (inside the
    runner's transaction; their notes read from the relation ``notes``)."""
    write_rows(con, compute_rows(load_inputs(con, piece_ids, notes), piece_ids))


def reindex(db_dir, *, progress=None) -> dict[str, int]:
    """Rebuild everything this stage owns from the notes in DuckDB: drop the Lance
    tables, recompute ``cover_features`` and the vectors of every piece, then write the
    FAISS file. Returns counts (pieces, piece_vectors, track_vectors).

    progress: optional callable ``(stage, n_done, n_total)``.
    """
    from atlas_db.connection import connect
    from indexers.faiss_index import build_from_lance, index_path
    from ingest.derived import run_stages

    ldb = open_lance(db_dir, sync=False)
    for name in (PIECE_TABLE, TRACK_TABLE):
        if name in table_names(ldb):
            ldb.drop_table(name)
    if index_path(db_dir).exists():
        index_path(db_dir).unlink()
    con = connect(db_dir, read_only=False)
    try:
        con.execute("DELETE FROM derived_runs WHERE stage = ?", [STAGE])
        con.execute("DELETE FROM cover_features")
        con.execute("DELETE FROM track_vectors")
    finally:
        con.close()
    n = run_stages(db_dir, only=[STAGE], progress=progress).get(STAGE, 0)
    out = {"pieces": n, PIECE_TABLE: 0, TRACK_TABLE: 0}
    ldb = open_lance(db_dir)
    for name in (PIECE_TABLE, TRACK_TABLE):
        if name in table_names(ldb):
            out[name] = ldb.open_table(name).count_rows()
    if out[PIECE_TABLE]:
        build_from_lance(db_dir)
    return out
