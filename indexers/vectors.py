"""Derived stage "vectors": cover features and embeddings for every piece and track.

For each piece (drum notes left out) it writes one ``cover_features`` row in DuckDB
(beat chroma, skyline melody, global vector) and upserts the vectors into two LanceDB
tables under ``<db>/lance/``. The beat chroma of a recording (``pieces.kind = 'audio'``
with ``audio_beats``) is what ``indexers.audio_chroma.harmony_sequence`` says (by default
the chroma of its transcribed notes; optionally its measured HPCP on the notes' grid):

- ``piece_vectors`` : ``piece_id``, ``vector`` (fixed-size float32 list)
- ``track_vectors`` : ``piece_id``, ``track_index``, ``vector``

Lance writes happen outside the DuckDB transaction, so they are upserts keyed by id
(re-running is harmless) and everything in Lance can be rebuilt from DuckDB with
:func:`reindex` (``atlas reindex --vectors``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from atlas_db.connection import fetch_arrow
from indexers.features import EMBED_DIM, features_from_notes, quantize_chroma, embedding, beat_chroma, \
    skyline, melody_intervals

__all__ = [
    "STAGE", "VERSION", "BATCH_PIECES", "update", "forget", "load_inputs", "compute_rows", "write_rows",
    "lance_dir", "open_lance",
    "reindex", "table_names", "PIECE_TABLE", "TRACK_TABLE", "piece_vector_schema", "track_vector_schema",
]

STAGE = "vectors"
VERSION = "vectors-5"
BATCH_PIECES = 200
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


def db_dir_of(con) -> Path:
    """The database folder of an open DuckDB connection."""
    rows = con.execute(
        "SELECT path FROM duckdb_databases() WHERE database_name = current_database()"
    ).fetchall()  # fetchall: DuckDB 2 keeps a half-read result open and blocks the connection
    return Path(rows[0][0]).parent


def table_names(ldb) -> list[str]:
    """Names of the tables in a LanceDB connection."""
    return list(ldb.list_tables().tables)


def lance_dir(db_dir) -> Path:
    return Path(db_dir) / "lance"


def open_lance(db_dir):
    import lancedb

    return lancedb.connect(str(lance_dir(db_dir)))


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


def _read_notes(con, piece_ids: list[str]) -> pa.Table:
    con.register("_vec_ids", pa.table({"piece_id": pa.array(piece_ids, pa.string())}))
    try:
        # a total order: with ties (one pitch at one onset in two tracks) the skyline
        # melody, and so the vectors, changed from one run to the next
        return fetch_arrow(con.execute(
            """SELECT n.piece_id, n.track_index, n.onset_beats, n.duration_beats, n.pitch
               FROM notes n JOIN _vec_ids USING (piece_id)
               WHERE n.channel <> 9
               ORDER BY n.piece_id, n.onset_beats, n.pitch, n.track_index, n.note_index"""
        ))
    finally:
        con.unregister("_vec_ids")


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
    duration_beats, pitch; sorted by piece_id). Returns (cover_features rows, track rows).

    ``audio`` (optional): piece_id -> (beat times s, beat HPCP, grid bpm) of recordings,
    whose harmony sequence is then :func:`indexers.audio_chroma.harmony_sequence`'s
    (``audio_harmony``: its source, default ``HARMONY_SOURCE``)."""
    from atlas_db.schema_vectors import TABLES

    pid = notes.column("piece_id").to_numpy(zero_copy_only=False)
    trk = notes.column("track_index").to_numpy()
    on = notes.column("onset_beats").to_numpy()
    dur = notes.column("duration_beats").to_numpy()
    pitch = notes.column("pitch").to_numpy()
    rows = {f.name: [] for f in TABLES["cover_features"]}
    t_pid, t_idx, t_vec = [], [], []
    if pid.size:
        starts = np.flatnonzero(np.concatenate([[True], pid[1:] != pid[:-1]]))
        ends = np.concatenate([starts[1:], [pid.size]])
    else:
        starts = ends = np.zeros(0, np.int64)
    audio = audio or {}
    for a, b in zip(starts, ends):
        chroma = None
        if pid[a] in audio:
            from indexers.audio_chroma import harmony_sequence

            chroma, _ = harmony_sequence(*audio[pid[a]], source=audio_harmony)
        f = features_from_notes(on[a:b], dur[a:b], pitch[a:b], trk[a:b], chroma=chroma)
        rows["piece_id"].append(pid[a])
        rows["n_beats"].append(f["beat_chroma"].shape[0])
        rows["beat_chroma"].append(quantize_chroma(f["beat_chroma"]).ravel())
        rows["n_melody"].append(f["melody_pitch"].size)
        rows["melody_pitch"].append(f["melody_pitch"])
        rows["melody_onset_beats"].append(f["melody_onset_beats"])
        rows["vector"].append(f["vector"])
        rows["stage_version"].append(VERSION)
        tk = trk[a:b]
        tracks_here = np.unique(tk)
        for t in tracks_here:
            m = tk == t
            if m.sum() < MIN_TRACK_NOTES:
                continue
            # a recording's one transcribed part (the mix) has the mix's measured chroma
            ch = f["beat_chroma"] if chroma is not None and tracks_here.size == 1 else \
                beat_chroma(on[a:b][m], dur[a:b][m], pitch[a:b][m])
            mp, _ = skyline(on[a:b][m], dur[a:b][m], pitch[a:b][m])
            t_pid.append(pid[a])
            t_idx.append(int(t))
            t_vec.append(embedding(ch, melody_intervals(mp)[0]))
    schema = TABLES["cover_features"]
    feats = pa.table({f.name: pa.array(rows[f.name], f.type) for f in schema}, schema=schema)
    tv = np.asarray(t_vec, np.float32).reshape(-1, EMBED_DIM)
    tracks = pa.table({
        "piece_id": pa.array(t_pid, pa.string()),
        "track_index": pa.array(t_idx, pa.int32()),
        "vector": _fixed(tv),
        "stage_version": pa.array([VERSION] * len(t_pid), pa.string()),
    }, schema=track_vector_schema())
    return feats, tracks


def forget(con, piece_ids: list[str]) -> None:
    con.register("_vec_ids", pa.table({"piece_id": pa.array(piece_ids, pa.string())}))
    try:
        con.execute("DELETE FROM cover_features WHERE piece_id IN (SELECT piece_id FROM _vec_ids)")
    finally:
        con.unregister("_vec_ids")


def load_inputs(con, piece_ids: list[str]) -> dict[str, pa.Table]:
    """What :func:`compute_rows` needs: the pieces' notes (drums left out, sorted by
    piece) and, when it is their harmony source, the recordings' beat HPCP."""
    from indexers.audio_chroma import HARMONY_SOURCE

    out = {"notes": _read_notes(con, piece_ids)}
    # the recordings' measured chroma only matters when it is their harmony sequence
    audio = _read_audio_rows(con, piece_ids) if HARMONY_SOURCE != "notes" else None
    if audio is not None:
        out["audio"] = audio
    return out


def compute_rows(inputs: dict[str, pa.Table], piece_ids: list[str]) -> dict[str, pa.Table]:
    """``cover_features`` rows and track vectors of each piece, each on its own."""
    audio = audio_beats_by_piece(inputs["audio"]) if "audio" in inputs else {}
    feats, tracks = compute(inputs["notes"], audio)
    return {"cover_features": feats, TRACK_TABLE: tracks}


def write_rows(con, rows: dict[str, pa.Table]) -> None:
    """Write ``cover_features`` (inside the runner's transaction), then upsert the
    vectors into Lance."""
    feats = rows["cover_features"]
    con.register("_vec_rows", feats)
    try:
        con.execute("INSERT OR REPLACE INTO cover_features SELECT * FROM _vec_rows")
    finally:
        con.unregister("_vec_rows")
    ldb = open_lance(db_dir_of(con))
    _upsert(ldb, PIECE_TABLE, _piece_rows(feats), ["piece_id"])
    _upsert(ldb, TRACK_TABLE, rows[TRACK_TABLE], ["piece_id", "track_index"])


def update(con, piece_ids: list[str]) -> None:
    """Compute and write features for these pieces (inside the runner's transaction),
    then upsert their vectors into Lance."""
    write_rows(con, compute_rows(load_inputs(con, piece_ids), piece_ids))


def _piece_rows(feats: pa.Table) -> pa.Table:
    vec = np.asarray(feats.column("vector").to_pylist(), np.float32).reshape(-1, EMBED_DIM)
    return pa.table({
        "piece_id": feats.column("piece_id"),
        "vector": _fixed(vec),
        "stage_version": feats.column("stage_version"),
    }, schema=piece_vector_schema())


def reindex(db_dir, *, progress=None) -> dict[str, int]:
    """Rebuild everything this stage owns from the notes in DuckDB: drop the Lance
    tables, recompute ``cover_features`` and the vectors of every piece, then write the
    FAISS file. Returns counts (pieces, piece_vectors, track_vectors).

    progress: optional callable ``(stage, n_done, n_total)``.
    """
    from atlas_db.connection import connect
    from indexers.faiss_index import build_from_lance, index_path
    from ingest.derived import run_stages

    ldb = open_lance(db_dir)
    for name in (PIECE_TABLE, TRACK_TABLE):
        if name in table_names(ldb):
            ldb.drop_table(name)
    if index_path(db_dir).exists():
        index_path(db_dir).unlink()
    con = connect(db_dir, read_only=False)
    try:
        con.execute("DELETE FROM derived_runs WHERE stage = ?", [STAGE])
        con.execute("DELETE FROM cover_features")
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
