"""Grammar figures: lossless round trip and compression (``atlas stats --compression``)."""

from __future__ import annotations

import lzma
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from atlas_db.connection import reading
from atlas_db.errors import BadInputError
from ingest import grammar_codec as codec
from ingest import grammar_core as gc
from ingest.grammar import load_grammar, load_notes
from ingest.sources import file_path

__all__ = ["stored_parse", "roundtrip", "compression_report"]


def stored_parse(con, notes: dict) -> tuple[gc.Grammar, gc.Sequence]:
    """The grammar and the pieces' top-level parses as stored in the database."""
    g = load_grammar(con)
    con.register("_gs_ids", pa.table({"piece_id": pa.array(sorted(set(notes["track_piece"])), pa.string())}))
    rows = con.sql(
        "SELECT piece_id, track_index, symbols FROM grammar_sequences "
        "WHERE piece_id IN (SELECT piece_id FROM _gs_ids) ORDER BY piece_id, track_index"
    ).to_arrow_table()
    con.unregister("_gs_ids")
    want = list(zip(notes["track_piece"], notes["track_track"].tolist()))
    have = list(zip(rows.column("piece_id").to_pylist(), rows.column("track_index").to_pylist()))
    if want != have:
        missing = sorted(set(want) - set(have))[:3]
        raise BadInputError(
            f"the grammar does not cover every track (e.g. {missing}); run `atlas reindex --grammar`"
        )
    sym = rows.column("symbols").combine_chunks().flatten().to_numpy().astype(np.int64)
    lengths = gc.rule_lengths(g)
    start = np.concatenate([[0], np.cumsum(lengths[sym])[:-1]]).astype(np.int64)
    n_sym = np.diff(rows.column("symbols").combine_chunks().offsets.to_numpy())
    brk = np.zeros(len(sym), np.bool_)
    brk[np.cumsum(n_sym)[n_sym > 0] - 1] = True
    first = notes["pitch"].astype(np.int64)[start]
    spans = gc.rule_spans(g)
    seq = gc.Sequence(sym, start, first, first + spans[sym], brk)
    if len(sym) and int(start[-1] + lengths[sym[-1]]) != notes["n"]:
        raise BadInputError("the stored grammar does not match the notes; run `atlas reindex --grammar`")
    return g, seq


def _pieces_meta(con, piece_ids: list[str]) -> dict:
    meta = con.sql("SELECT piece_id, coalesce(ticks_per_beat, 480) AS ticks_per_beat, path, size_bytes "
                   "FROM pieces ORDER BY piece_id").fetchnumpy()
    keep = np.isin(meta["piece_id"], np.array(piece_ids, dtype=object))
    tempo = con.sql(
        "SELECT piece_id, time_ticks, us_per_beat FROM tempo_changes ORDER BY piece_id, time_ticks, time_s"
    ).fetchnumpy()
    ids = list(meta["piece_id"][keep])
    code = {p: i for i, p in enumerate(ids)}
    tk = np.array([p in code for p in tempo["piece_id"]], np.bool_)
    return {
        "piece_ids": ids,
        "ticks_per_beat": meta["ticks_per_beat"][keep].astype(np.int64),
        "paths": list(meta["path"][keep]),
        "size_bytes": meta["size_bytes"][keep].astype(np.int64),
        "tempo_piece": np.array([code[p] for p in tempo["piece_id"][tk]], np.int64),
        "tempo_ticks": tempo["time_ticks"][tk].astype(np.int64),
        "tempo_us": tempo["us_per_beat"][tk].astype(np.int64),
    }


def roundtrip(con) -> dict:
    """Encode every MIDI piece from the stored grammar, decode it, compare with ``notes``
    (audio pieces are left out: their size is not a MIDI file's).

    Returns the streams, their sizes and ``mismatches`` (0 when lossless)."""
    midi = [r[0] for r in con.execute("SELECT piece_id FROM pieces WHERE kind = 'midi' ORDER BY piece_id").fetchall()]
    if not midi:
        raise BadInputError("no MIDI pieces in the database: nothing to compress")
    notes = load_notes(con, midi)
    g, seq = stored_parse(con, notes)
    pieces = _pieces_meta(con, sorted(set(notes["track_piece"])))
    t0 = time.perf_counter()
    streams = codec.encode(notes, seq, g, pieces)
    t1 = time.perf_counter()
    back = codec.decode(streams)
    t2 = time.perf_counter()
    ts = notes["track_starts"]
    track_of = np.repeat(np.arange(len(ts) - 1), np.diff(ts))
    piece_code = codec.pa_codes(notes["track_piece"])[track_of]
    bad = np.zeros(notes["n"], np.bool_)
    for name, want in [("piece", piece_code), ("track_index", notes["track_index"]),
                       ("note_index", notes["note_index"]), ("onset_ticks", notes["onset_ticks"]),
                       ("duration_ticks", notes["duration_ticks"]), ("pitch", notes["pitch"]),
                       ("velocity", notes["velocity"]), ("channel", notes["channel"])]:
        got = back[name]
        if len(got) != len(want):
            bad[:] = True
            break
        bad |= np.asarray(got, np.int64) != np.asarray(want, np.int64)
    tempo_ok = (np.array_equal(back["tempo_ticks"], pieces["tempo_ticks"])
                and np.array_equal(back["tempo_us"], pieces["tempo_us"]))
    return {"streams": streams, "sizes": codec.stream_sizes(streams), "notes": notes["n"],
            "mismatches": int(bad.sum()), "tempo_ok": bool(tempo_ok), "pieces": pieces,
            "encode_s": t1 - t0, "decode_s": t2 - t1}


def compression_report(db_dir, *, xz: bool = True) -> dict:
    """Bytes of grammar + sequences + residuals vs the .mid files and ``xz -9`` of them."""
    with reading(db_dir) as con:
        r = roundtrip(con)
    pieces = r["pieces"]
    sizes = r["sizes"]
    total = sizes["grammar"] + sizes["sequences"] + sizes["residuals"]
    out = {
        "pieces": len(pieces["piece_ids"]),
        "notes": r["notes"],
        "lossless": r["mismatches"] == 0 and r["tempo_ok"],
        "mismatched_notes": r["mismatches"],
        "grammar_bytes": sizes["grammar"],
        "sequences_bytes": sizes["sequences"],
        "residuals_bytes": sizes["residuals"],
        "total_bytes": total,
        "bytes_per_note": total / max(r["notes"], 1),
        "midi_bytes": int(pieces["size_bytes"].sum()),
        "streams": {k: v for k, v in sizes.items() if "." in k},
    }
    out["ratio_vs_midi"] = out["midi_bytes"] / max(total, 1)
    if xz:
        per_file = 0
        blobs = []
        missing = 0
        for p in pieces["paths"]:
            try:
                b = Path(file_path(p)).read_bytes()
            except OSError:
                missing += 1
                continue
            blobs.append(b)
            per_file += len(lzma.compress(b, preset=9))
        out["xz_files_missing"] = missing
        if blobs:
            out["xz9_per_file_bytes"] = per_file
            out["xz9_solid_bytes"] = len(lzma.compress(b"".join(blobs), preset=9))
            # a ratio only over the same pieces: xz of some files against the grammar of all says nothing
            out["ratio_vs_xz9_per_file"] = per_file / max(total, 1) if not missing else None
            out["ratio_vs_xz9_solid"] = out["xz9_solid_bytes"] / max(total, 1) if not missing else None
    return out


def _times_total(ratio: float) -> str:
    """'3.40x the total (larger)': a small collection can be smaller than its encoding."""
    return f"{ratio:.2f}x the total ({'larger' if ratio > 1 else 'smaller' if ratio < 1 else 'the same'})"


def compression_table(report: dict):
    """The report as rows (what, bytes, note) for ``echo_table``."""
    rows = [
        ("grammar (rules)", report["grammar_bytes"], ""),
        ("encoded sequences", report["sequences_bytes"], ""),
        ("residuals (timing, velocity, ...)", report["residuals_bytes"], ""),
        ("total", report["total_bytes"], f"{report['bytes_per_note']:.3f} bytes/note, "
         f"{'lossless' if report['lossless'] else 'NOT lossless: %d notes differ' % report['mismatched_notes']}"),
        (".mid files", report["midi_bytes"], _times_total(report["ratio_vs_midi"])),
    ]
    missing = report.get("xz_files_missing", 0)
    if "xz9_per_file_bytes" in report:
        found = f"the {report['pieces'] - missing} files found only, no ratio"
        rows.append(("xz -9 of each .mid file", report["xz9_per_file_bytes"],
                     found if missing else _times_total(report["ratio_vs_xz9_per_file"])))
        rows.append(("xz -9 of all .mid files concatenated", report["xz9_solid_bytes"],
                     found if missing else _times_total(report["ratio_vs_xz9_solid"])))
    if missing:
        rows.append(("files not found for xz", missing, "not at the path they were ingested from"
                     + ("" if "xz9_per_file_bytes" in report else "; no xz figures")))
    return pa.table({"part": [r[0] for r in rows], "bytes": pa.array([r[1] for r in rows], pa.int64()),
                     "note": [r[2] for r in rows]})
