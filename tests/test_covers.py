"""Vectors, similarity and cover lookup: known-answer synthetic songs and real POP909 files."""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import pyarrow as pa
import pytest

from atlas_db.errors import BadInputError
from midi_fixtures import Track, write_midi

# -- synthetic songs whose versions are known --------------------------------------------
_MAJOR = [0, 2, 4, 5, 7, 9, 11]
_TRIADS = {1: [0, 4, 7], 4: [5, 9, 0], 5: [7, 11, 2], 6: [9, 0, 4], 2: [2, 5, 9]}


def _song(seed: int, n_bars: int = 16):
    """A melody (8th and quarter notes on a major scale) and a chord per bar."""
    rng = np.random.default_rng(seed)
    mel, t, deg = [], 0.0, 7
    while t < n_bars * 4:
        deg = int(np.clip(deg + rng.choice([-2, -1, 1, 2, 3, -3]), 0, 13))
        dur = float(rng.choice([0.5, 1.0, 1.0]))
        mel.append((72 + 12 * (deg // 7) + _MAJOR[deg % 7] - 12, t, dur))
        t += dur
    chords = [int(rng.choice(list(_TRIADS))) for _ in range(n_bars)]
    return mel, chords


def _render(mel, chords, *, transpose=0, beat_scale=1.0, style="block"):
    melody = [(p + transpose, on * beat_scale, d * beat_scale, 90) for p, on, d in mel]
    acc = []
    for bar, c in enumerate(chords):
        pcs = _TRIADS[c]
        t0 = bar * 4 * beat_scale
        if style == "block":
            acc += [(48 + pc + transpose, t0, 4 * beat_scale, 60) for pc in pcs]
        else:  # arpeggio, another voicing
            for k in range(4):
                acc.append((43 + (pcs[k % 3] + 5) % 12 + transpose, t0 + k * beat_scale, beat_scale, 60))
    return [Track(melody, name="melody", program=0, channel=0), Track(acc, name="piano", program=0, channel=1)]


@pytest.fixture(scope="module")
def synth_db(tmp_path_factory):
    """Eight songs; song 0 also has a planted version (+5 semitones, notated at half the
    beat rate, arpeggiated accompaniment, 140 bpm)."""
    from ingest.pipeline import ingest_paths

    root = tmp_path_factory.mktemp("covers_synth")
    lib = root / "lib"
    songs = [_song(s) for s in range(8)]
    for i, (mel, ch) in enumerate(songs):
        write_midi(lib / f"song{i}.mid", _render(mel, ch), tempo_bpm=100)
    mel, ch = songs[0]
    write_midi(lib / "song0_version.mid", _render(mel, ch, transpose=5, beat_scale=0.5, style="arp"), tempo_bpm=140)
    db = root / "db"
    summary = ingest_paths([str(lib)], db, workers=1)
    assert summary.failed == 0 and summary.added == 9
    return {"db": db, "lib": lib, "songs": songs, "root": root}


def test_planted_version_found_at_rank_1(synth_db):
    from query.covers import covers

    res = covers(synth_db["db"], [str(synth_db["lib"] / "song0.mid")], top=3)
    assert res.column("path").to_pylist()[0].endswith("song0_version.mid")
    row = res.slice(0, 1).to_pylist()[0]
    # the explanation: the version is 5 semitones up and notated at half the beat rate
    assert row["transposition"] == 5
    assert row["time_scale"] == pytest.approx(2.0, rel=0.1)
    assert row["match_end_beats"] > row["match_start_beats"]
    # the whole tune is found, and the version stands far above any other song
    assert row["melody_score"] >= 0.9
    assert row["score"] >= 2 * res.column("score").to_pylist()[1]
    # the query is in the database: it is left out of its own answers
    assert not any(p.endswith("song0.mid") for p in res.column("path").to_pylist())


def test_query_file_not_in_database(synth_db):
    """A new arrangement (transposed -3, double beat rate, arpeggios, only 8 bars) of song 3."""
    from query.covers import covers

    mel, ch = synth_db["songs"][3]
    short = [n for n in mel if n[1] < 32]
    q = write_midi(synth_db["root"] / "new_query.mid", _render(short, ch[:8], transpose=-3, beat_scale=2.0,
                                                                 style="arp"))
    res = covers(synth_db["db"], [str(q)], top=2)
    assert res.column("path").to_pylist()[0].endswith("song3.mid")
    assert res.column("transposition").to_pylist()[0] == 3
    assert res.column("query").to_pylist() == [str(q)] * 2


def test_several_queries_one_call_and_formats(synth_db):
    db = str(synth_db["db"])
    q1, q2 = str(synth_db["lib"] / "song0_version.mid"), str(synth_db["lib"] / "song5.mid")
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "from query.cli import main; main()", "covers", q1, q2,
                          "--top", "2", "--format", "json", "--db", db], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["query"] for r in rows] == [q1, q1, q2, q2]
    assert rows[0]["path"].endswith("song0.mid") and rows[0]["rank"] == 1
    assert {"query", "rank", "piece_id", "path", "score", "transposition", "time_scale"} <= set(rows[0])


@pytest.mark.parametrize("kind", ["no_notes", "drums_only", "empty_file"])
def test_empty_or_silent_query_is_a_clear_error(synth_db, kind, capsys):
    from query.cli import main
    from query.covers import covers

    path = synth_db["root"] / f"{kind}.mid"
    if kind == "no_notes":
        write_midi(path, [Track([], name="nothing")])
    elif kind == "drums_only":
        write_midi(path, [Track([(36, i * 1.0, 0.5, 100) for i in range(16)], channel=9)])
    else:
        path.write_bytes(b"")
    with pytest.raises(BadInputError, match=rf"{kind}\.mid: (not a usable query|the query has no pitched notes)"):
        covers(synth_db["db"], [str(path)])
    with pytest.raises(SystemExit) as e:
        main(["covers", str(path), "--db", str(synth_db["db"])])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("atlas: error: ") and "Traceback" not in err


def test_a_stored_drums_only_piece_as_the_query_says_why_not_to_reindex(synth_db, tmp_path):
    # it said "piece has no vectors yet; run `atlas reindex --vectors`", which cannot help
    from atlas_db.connection import reading
    from ingest.pipeline import ingest_paths
    from query.covers import covers

    db = tmp_path / "db"
    shutil.copytree(synth_db["db"], db)
    drums = write_midi(tmp_path / "drums.mid", [Track([(36, i * 1.0, 0.5, 100) for i in range(16)], channel=9)])
    ingest_paths([str(drums)], db, workers=1)
    with reading(db) as con:
        pid = con.execute("SELECT piece_id FROM pieces WHERE path LIKE '%drums.mid'").fetchone()[0]
    with pytest.raises(BadInputError, match="the piece has no pitched notes"):
        covers(db, [pid])


def test_unknown_piece_query_is_a_clear_error(synth_db):
    from query.covers import covers

    with pytest.raises(BadInputError, match="no such piece"):
        covers(synth_db["db"], ["ffffffffffff"])
    # a folder given as the query says so (it read "no such piece")
    with pytest.raises(BadInputError, match=r": a folder, not a query \(give a \.mid or audio file"):
        covers(synth_db["db"], [str(synth_db["lib"])])


@pytest.mark.parametrize("command", ["covers", "similar"])
def test_a_bad_query_among_several_is_one_line_and_the_others_are_answered(synth_db, command, capsys):
    from query.cli import main

    good = str(synth_db["lib"] / "song0.mid")
    with pytest.raises(SystemExit) as e:
        main([command, "ffffffffffff", good, "--top", "2", "--format", "json", "--db", str(synth_db["db"])])
    assert e.value.code == 1
    out, err = capsys.readouterr()
    assert {r["query"] for r in json.loads(out)} == {good}
    assert err.splitlines() == ["atlas: error: ffffffffffff: no such piece (give a piece id or a path that was ingested)"]


def test_similar_ranks_versions_first(synth_db):
    from query.similar import similar

    res = similar(synth_db["db"], [str(synth_db["lib"] / "song0.mid")], top=3)
    assert res.column("path").to_pylist()[0].endswith("song0_version.mid")
    scores = res.column("score").to_pylist()
    assert scores == sorted(scores, reverse=True) and scores[0] <= 1.0001
    tr = similar(synth_db["db"], [str(synth_db["lib"] / "song0.mid")], top=4, tracks=True)
    assert "track_index" in tr.column_names and tr.num_rows == 4
    assert tr.column("path").to_pylist()[0].endswith("song0_version.mid")


def test_similar_of_a_stored_piece_is_the_cosine_ranking_of_the_stored_vectors(synth_db):
    """`atlas similar ID` ranks every other piece by the cosine of DuckDB's stored vectors,
    without building the cover index (its n-gram indexes and lines, which similarity
    does not use)."""
    from atlas_db.connection import reading
    from query import covers
    from query.similar import similar

    with reading(synth_db["db"]) as con:
        stored = con.execute("SELECT piece_id, vector FROM cover_features ORDER BY piece_id").fetchall()
    ids = [pid for pid, _ in stored]
    x = np.asarray([v for _, v in stored], np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    covers._CACHE.clear()
    for i, pid in enumerate(ids[:3]):
        res = similar(synth_db["db"], [pid[:10]], top=len(ids))
        cos = x @ x[i]
        want = [ids[j] for j in np.argsort(-cos, kind="stable") if j != i]
        assert res.column("piece_id").to_pylist() == want
        assert np.allclose(res.column("score").to_numpy(), np.sort(cos)[::-1][1:], atol=1e-5)
    assert not covers._CACHE  # the cover index was not built
    with pytest.raises(BadInputError, match="no such piece"):
        similar(synth_db["db"], ["ffffffffffff"])


# -- features -----------------------------------------------------------------------------
def test_embedding_is_transposition_and_tempo_invariant():
    from indexers.features import features_from_notes

    mel, ch = _song(11)
    base = _render(mel, ch)
    moved = _render(mel, ch, transpose=7)

    def arrays(tracks):
        notes = [(on, d, p, t) for t, tr in enumerate(tracks) for p, on, d, _ in tr.notes]
        on, d, p, t = (np.array(x) for x in zip(*notes))
        return on, d, p, t

    a = features_from_notes(*arrays(base))
    b = features_from_notes(*arrays(moved))
    np.testing.assert_allclose(a["vector"], b["vector"], atol=1e-5)
    np.testing.assert_array_equal(np.roll(a["beat_chroma"], 7, axis=1), b["beat_chroma"])
    np.testing.assert_array_equal(a["intervals"], b["intervals"])
    # the melody is the lead track, not the accompaniment
    assert a["melody_pitch"].size == len(mel)


def test_beat_chroma_known_answer():
    from indexers.features import beat_chroma

    # C for two beats, then E for one beat overlapping G held 1.5 beats
    c = beat_chroma([0.0, 2.0, 2.0], [2.0, 1.0, 1.5], [60, 64, 67])
    assert c.shape == (4, 12)
    assert c[0, 0] == 1 and c[1, 0] == 1 and c[0].sum() == 1
    assert c[2, 4] == 1 and c[2, 7] == 1
    assert c[3, 7] == 1 and c[3, 4] == 0  # G's last half beat


def test_local_alignment_finds_the_region():
    from indexers.align import sw_symbols

    rng = np.random.default_rng(0)
    ref = rng.integers(1, 12, 200).astype(np.int8)
    q = ref[50:90].copy()
    q[10] = (q[10] % 11) + 1  # one wrong interval
    scores, region = sw_symbols(q, ref, np.array([0, ref.size], np.int64), 1.0, 0.7, 0.6)
    assert tuple(region[0]) == (0, 40, 50, 90)
    assert scores[0] == pytest.approx(39 - 0.7, abs=1e-4)


def test_melody_scores_end_where_the_region_ends():
    """sw_symbols_score (two references at a time, with_end) gives sw_symbols' scores, the
    end of its region, and the region again in each reference cut just after that end
    (what CoverIndex.search aligns to explain an answer)."""
    from indexers.align import sw_symbols, sw_symbols_score

    rng = np.random.default_rng(3)
    q = rng.integers(1, 12, 60).astype(np.int8)
    lens = np.array([0, 5, 120, 300, 90, 61, 200])  # odd count, unequal: the rest of a pair alone
    off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    refs = rng.integers(1, 12, off[-1]).astype(np.int8)
    for c in (2, 3, 6):  # a noisy copy of the query inside
        s = off[c] + 17
        refs[s:s + 60] = np.where(rng.random(60) < 0.8, q, refs[s:s + 60])
    scores, end = sw_symbols_score(q, refs, off, 1.0, 0.7, 0.6, 0.3, with_end=True)
    full, region = sw_symbols(q, refs, off, 1.0, 0.7, 0.6, 0.3)
    np.testing.assert_array_equal(scores, full)
    assert end[0] == -1 and scores[[2, 3, 6]].min() > 30
    np.testing.assert_array_equal(region[scores > 0, 3], end[scores > 0] + 1)
    cut = np.minimum(lens, end + 1)
    cut_off = np.concatenate([[0], np.cumsum(cut)]).astype(np.int64)
    cut_refs = np.concatenate([refs[off[c]:off[c] + cut[c]] for c in range(lens.size)])
    cut_scores, cut_region = sw_symbols(q, cut_refs, cut_off, 1.0, 0.7, 0.6, 0.3)
    np.testing.assert_array_equal(cut_scores, full)
    np.testing.assert_array_equal(cut_region, region)


def test_kernels_read_spans_as_copies():
    """Every kernel given (starts, ends) spans into one array, in any order and
    overlapping, answers as it does given those references copied out back to back."""
    from indexers.align import sw_chroma, sw_chroma_score, sw_pitch_classes_score, sw_symbols, sw_symbols_score

    rng = np.random.default_rng(5)
    pool = rng.integers(1, 12, 900).astype(np.int8)
    starts = np.array([700, 0, 40, 40, 650, 300, 899], np.int64)
    ends = np.array([900, 0, 300, 120, 700, 301, 899], np.int64)
    copies = np.concatenate([pool[a:b] for a, b in zip(starts, ends)])
    off = np.concatenate([[0], np.cumsum(ends - starts)]).astype(np.int64)
    q = pool[60:110].copy()
    for x, y in zip(sw_symbols_score(q, pool, (starts, ends), 1.0, 0.7, 0.6, 0.3, with_end=True)
                    + sw_symbols(q, pool, (starts, ends), 1.0, 0.7, 0.6, 0.3),
                    sw_symbols_score(q, copies, off, 1.0, 0.7, 0.6, 0.3, with_end=True)
                    + sw_symbols(q, copies, off, 1.0, 0.7, 0.6, 0.3)):
        np.testing.assert_array_equal(x, y)
    assert sw_symbols_score(q, pool, (starts, ends), 1.0, 0.7, 0.6, 0.3)[2] > 45  # q lies in reference 2
    shifts = rng.integers(0, 12, starts.size)
    np.testing.assert_array_equal(
        sw_pitch_classes_score(q.astype(np.int64) % 12, pool % 12, (starts, ends), shifts, 1.0, 1.0, 0.25, 0.6),
        sw_pitch_classes_score(q.astype(np.int64) % 12, copies % 12, off, shifts, 1.0, 1.0, 0.25, 0.6))
    frames = rng.random((900, 12)).astype(np.float32) ** 4
    frames /= np.linalg.norm(frames, axis=1, keepdims=True)
    frames[::7] = 0  # silent frames
    fcopies = np.concatenate([frames[a:b] for a, b in zip(starts, ends)])
    qf = frames[100:130]
    qs = np.ascontiguousarray(np.stack([np.roll(qf, t, axis=1) for t in range(12)]), np.float32)
    sh = np.ascontiguousarray(rng.integers(0, 12, (starts.size, 2)), np.int64)
    for f in (sw_chroma_score, sw_chroma):
        for x, y in zip(f(qs, sh, frames, (starts, ends), 0.6, 0.3, 0.5), f(qs, sh, fcopies, off, 0.6, 0.3, 0.5)):
            np.testing.assert_array_equal(x, y)


def _sw_region_reference(q, ref, match, mismatch, gap, merge):
    """sw_symbols' recurrence for one reference, written plainly: each cell takes the
    first best of diagonal, up, left, merged query interval, merged reference interval
    (ties: the earlier), restarts at 0, and the first best cell (by reference, then
    query position) ends the region."""
    n, m = len(q), len(ref)
    h = np.zeros((n + 1, m + 1))
    start = {}
    best, region = 0.0, (0, 0, 0, 0)
    f32 = np.float32

    def sym(a, b):
        return f32(match) if a == b and a > 0 else f32(-mismatch)

    for j in range(1, m + 1):
        start[0, j] = (0, j)
        for i in range(1, n + 1):
            ways = [(f32(h[i - 1, j - 1]) + sym(ref[j - 1], q[i - 1]), start.get((i - 1, j - 1), (i - 1, j - 1))),
                    (f32(h[i, j - 1]) - f32(gap), start.get((i, j - 1), (i, 0))),
                    (f32(h[i - 1, j]) - f32(gap), start.get((i - 1, j), (0, j)))]
            if i >= 2:
                qm = (q[i - 2] + q[i - 1]) % 12
                ways.append((f32(h[i - 2, j - 1]) + (sym(ref[j - 1], qm) - f32(merge)),  # one profile value
                             start.get((i - 2, j - 1), (i - 2, 0))))
            if j >= 2:
                rm = (ref[j - 2] + ref[j - 1]) % 12
                ways.append((f32(h[i - 1, j - 2]) + sym(rm, q[i - 1]) - f32(merge),
                             start.get((i - 1, j - 2), (i - 1, 0))))
            v, s = ways[0]
            for x, sx in ways[1:]:
                if x > v:
                    v, s = x, sx
            if v <= 0:
                v, s = f32(0.0), (i, j)
            h[i, j] = v
            start[i, j] = s
            if v > best:
                best, region = v, (s[0], i, s[1], j)
    return best, region


def test_melody_region_ties_as_written():
    """The region kernel (selects, the left cell compared last) ends and starts the
    region where the plain recurrence does, on small alphabets full of ties."""
    from indexers.align import sw_symbols

    rng = np.random.default_rng(11)
    for trial in range(40):
        alpha = (3, 4, 12)[trial % 3]
        q = rng.integers(1, alpha, int(rng.integers(2, 14))).astype(np.int8)
        ref = rng.integers(1, alpha, int(rng.integers(1, 20))).astype(np.int8)
        for params in ((1.0, 0.7, 0.6, 0.3), (1.0, 1.0, 1.0, 0.0)):
            scores, region = sw_symbols(q, ref, np.array([0, ref.size], np.int64), *params)
            best, want = _sw_region_reference(q.tolist(), ref.tolist(), *params)
            assert scores[0] == pytest.approx(best, abs=1e-5)
            assert tuple(region[0]) == want


def test_faiss_cpu_index():
    from indexers.faiss_index import build_index, search

    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 16)).astype(np.float32)
    idx = build_index(x, use_gpu=False)
    _, rows = search(idx, x[[7, 21]], 1)
    assert rows[:, 0].tolist() == [7, 21]


# -- storage: DuckDB + Lance + FAISS, incremental == rebuild ------------------------------
def test_tables_and_lance_agree(synth_db):
    from atlas_db.connection import reading
    from indexers.vectors import PIECE_TABLE, TRACK_TABLE, open_lance

    with reading(synth_db["db"]) as con:
        n = con.execute("SELECT count(*) FROM cover_features").fetchall()[0][0]
        n_tracks = con.execute("SELECT count(*) FROM tracks WHERE n_notes >= 8").fetchall()[0][0]
        bad = con.execute("SELECT count(*) FROM cover_features WHERE len(beat_chroma) <> 12 * n_beats "
                          "OR len(melody_pitch) <> n_melody").fetchall()[0][0]
    ldb = open_lance(synth_db["db"])
    assert n == 9 and bad == 0
    assert ldb.open_table(PIECE_TABLE).count_rows() == 9
    assert ldb.open_table(TRACK_TABLE).count_rows() == n_tracks
    assert ldb.open_table(PIECE_TABLE).schema.field("vector").type.list_size > 0


def test_the_loaded_index_holds_each_pieces_vector_and_reads_no_lance(synth_db, tmp_path):
    """The cover index of a database holds, at each piece's row, the vector DuckDB stores
    for it (Lance's copy is the same); with the FAISS file up to date, `atlas covers`
    reads neither Lance nor lancedb's module (its import alone cost 1.4-2.6 s a query)."""
    import subprocess
    import sys
    from pathlib import Path

    from atlas_db.connection import reading
    from indexers.faiss_index import index_path, vectors_from_lance
    from query.covers import load_index

    db = tmp_path / "db"
    shutil.copytree(synth_db["db"], db)
    index = load_index(db)  # (builds the FAISS file when it is missing)
    assert index_path(db).exists()
    with reading(db) as con:
        stored = con.execute("SELECT piece_id, vector FROM cover_features").fetchall()
    lance = dict(zip(*vectors_from_lance(db)))
    assert len(stored) == len(index) == len(lance) == 9
    for pid, vector in stored:
        assert np.array_equal(index.vectors[index.row_of[pid]], np.float32(vector))
        assert np.array_equal(lance[pid], np.float32(vector))
    code = ("import sys; from query.covers import covers; "
            f"covers({str(db)!r}, [{str(synth_db['lib'] / 'song0.mid')!r}], top=3); "
            "print('lancedb' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert out.returncode == 0 and out.stdout.split() == ["False"], out.stderr[-2000:]


def test_the_loaded_index_holds_each_pieces_pitched_notes(tmp_path):
    """load_index reads every piece's notes into its row (query.cover_notes.stored_notes,
    for the note vote): the pitched notes of each file as written, its drums (channel
    10) left out, whatever order DuckDB returns them in."""
    from pathlib import Path

    from ingest.pipeline import ingest_paths
    from query.cover_notes import stored_notes
    from query.covers import load_index

    lib = tmp_path / "lib"
    written = {}
    for i in range(3):
        mel, ch = _song(10 + i, n_bars=4)
        tracks = _render(mel, ch, transpose=i)
        if i == 1:
            tracks.append(Track([(36, b, 0.5, 100) for b in range(16)], name="drums", channel=9))
        write_midi(lib / f"s{i}.mid", tracks)
        written[f"s{i}.mid"] = sorted((on, p) for t in tracks if t.channel != 9 for p, on, _, _ in t.notes)
    summary = ingest_paths([str(lib)], tmp_path / "db", workers=1)
    assert summary.failed == 0 and summary.added == 3
    index = load_index(tmp_path / "db")
    assert index.notes.off.size == len(index) + 1
    for row, path in enumerate(index.paths):
        on, p = index.notes.of_row(row)
        assert sorted(zip(on.tolist(), p.tolist())) == written[Path(path).name]
    # the rows in another order, an id not stored (no notes) and none at all
    ids = [str(pid) for pid in index.ids]
    other = stored_notes(tmp_path / "db", ids[::-1] + ["0" * 16])
    assert other.off.size == len(ids) + 2 and other.off[-1] == other.off[-2]
    for row, path in enumerate(index.paths):
        on, p = other.of_row(len(ids) - 1 - row)
        assert sorted(zip(on.tolist(), p.tolist())) == written[Path(path).name]
    assert stored_notes(tmp_path / "db", []).off.tolist() == [0]
    none = stored_notes(tmp_path / "db", ["0" * 16])  # no note comes back from SQL
    assert none.off.tolist() == [0, 0] and none.onset_beats.dtype == np.float32 and none.pitch.dtype == np.int8


def test_halves_split_the_answers_to_explain_by_length():
    """The answers whose melody region is found are cut in two halves (one aligned in
    each thread): every selected answer in exactly one, in order, the first half the
    shortest run of them that reaches half of their total length."""
    from query.covers import _halves

    rng = np.random.default_rng(8)
    for trial in range(200):
        n = int(rng.integers(0, 12))
        sel = rng.random(n) < 0.7
        lengths = rng.integers(0, 400, n)
        a, b = _halves(sel, lengths)
        assert not (a & b).any() and np.array_equal(a | b, sel)
        if a.any() and b.any():
            assert np.flatnonzero(a).max() < np.flatnonzero(b).min()
        at = np.flatnonzero(sel)
        if at.size:
            assert a.any()  # the other thread always has work when there is any
            first = lengths[a]
            assert 2 * first.sum() >= lengths[at].sum() or not b.any()
            assert 2 * (first.sum() - first[-1]) < lengths[at].sum() or first.size == 1


def test_incremental_ingest_equals_full_rebuild(pop909_dir, tmp_path):
    from indexers.vectors import reindex
    from ingest.pipeline import ingest_paths
    from query.covers import covers

    songs = sorted(p for p in pop909_dir.iterdir() if p.is_dir())[:6]
    db = tmp_path / "db"
    ingest_paths([str(p) for p in songs[:3]], db, workers=1, derive=False)
    from ingest.derived import run_stages

    run_stages(db, only=["vectors"])
    ingest_paths([str(p) for p in songs[3:]], db, workers=1, derive=False)
    run_stages(db, only=["vectors"])
    queries = [str(songs[0] / f"{songs[0].name}.mid"), str(songs[4] / f"{songs[4].name}.mid")]
    incremental = covers(db, queries, top=8)
    # every answer at rank 1 is a version of the query's song
    firsts = incremental.filter(pa.compute.equal(incremental.column("rank"), 1)).column("path").to_pylist()
    assert [f"/{s.name}/" in p for s, p in zip([songs[0], songs[4]], firsts)] == [True, True]
    rebuilt_db = tmp_path / "rebuilt"
    shutil.copytree(db, rebuilt_db)
    counts = reindex(rebuilt_db)
    assert counts["pieces"] == counts["piece_vectors"] > 6
    rebuilt = covers(rebuilt_db, queries, top=8)
    assert rebuilt.equals(incremental)


def test_pop909_excerpt_not_in_db_finds_its_song(small_pop909_db, pop909_dir, tmp_path):
    """A 12-second excerpt of 005.mid, transposed down 2 and merged into one piano track."""
    import mido

    from ingest.midi_parse import parse_midi
    from query.covers import covers

    src = pop909_dir / "005" / "005.mid"
    notes = parse_midi(src.read_bytes(), piece_id="x", path=str(src))["notes"].to_pylist()
    t0 = 40.0
    part = [n for n in notes if t0 <= n["onset_s"] < t0 + 12 and n["channel"] != 9]
    b0 = min(n["onset_beats"] for n in part)
    q = write_midi(tmp_path / "excerpt.mid",
                   [Track([(n["pitch"] - 2, n["onset_beats"] - b0, n["duration_beats"], 80) for n in part],
                          name="piano")])
    assert mido.MidiFile(q).length > 5
    res = covers(small_pop909_db, [str(q)], top=3)
    assert "/005/" in res.column("path").to_pylist()[0]
    assert res.column("transposition").to_pylist()[0] == 2


def test_reindex_vectors_cli_rebuilds_lance_and_faiss(synth_db, tmp_path):
    from indexers.faiss_index import index_path
    from indexers.vectors import PIECE_TABLE, open_lance
    from query.cli import main
    from query.covers import covers

    db = tmp_path / "db"
    shutil.copytree(synth_db["db"], db)
    before = covers(db, [str(synth_db["lib"] / "song2.mid")], top=5)
    main(["reindex", "--vectors", "--db", str(db)])  # returns normally on success
    assert index_path(db).exists()
    assert open_lance(db).open_table(PIECE_TABLE).count_rows() == 9
    assert covers(db, [str(synth_db["lib"] / "song2.mid")], top=5).equals(before)


def test_stray_lance_rows_are_ignored(synth_db, tmp_path):
    """Lance is written outside the DuckDB transaction: a row left by a rolled-back batch
    must not disturb the search."""
    from indexers.features import EMBED_DIM
    from indexers.vectors import PIECE_TABLE, _fixed, open_lance, piece_vector_schema
    from query.covers import covers

    db = tmp_path / "db"
    shutil.copytree(synth_db["db"], db)
    before = covers(db, [str(synth_db["lib"] / "song4.mid")], top=4)
    stray = pa.table({"piece_id": pa.array(["0000000000000000"]),
                      "vector": _fixed(np.ones((1, EMBED_DIM), np.float32)),
                      "stage_version": pa.array(["x"])}, schema=piece_vector_schema())
    open_lance(db).open_table(PIECE_TABLE).add(stray)
    from query import covers as mod

    mod._CACHE.clear()
    assert covers(db, [str(synth_db["lib"] / "song4.mid")], top=4).equals(before)


def test_version_of_the_best_answer_is_found_through_it(tmp_path):
    """Song 1's tune over new chords (the query) matches song1.mid by its melody; an
    instrumental version (song 1's chords only, another key and tempo) shares no tune
    with the query but aligns with song1.mid: it comes second, scored through it."""
    from ingest.pipeline import ingest_paths
    from query.covers import covers

    lib = tmp_path / "lib"
    songs = [_song(s) for s in range(6)]
    for i, (mel, ch) in enumerate(songs):
        write_midi(lib / f"song{i}.mid", _render(mel, ch), tempo_bpm=100)
    mel, ch = songs[1]
    write_midi(lib / "song1_instrumental.mid", _render([], ch, transpose=2)[1:], tempo_bpm=90)
    assert ingest_paths([str(lib)], tmp_path / "db", workers=1).failed == 0
    new_chords = [{1: 6, 6: 4, 4: 2, 2: 4, 5: 1}[c] for c in ch]
    q = write_midi(tmp_path / "reharmonised.mid", _render(mel, new_chords, transpose=-3), tempo_bpm=120)
    res = covers(tmp_path / "db", [str(q)], top=3).to_pylist()
    assert res[0]["path"].endswith("song1.mid") and res[0]["matched_by"] == "melody"
    assert res[1]["path"].endswith("song1_instrumental.mid")
    assert res[1]["matched_by"] == "version_of_best"


def test_short_query_transposition_comes_from_its_best_window():
    """An excerpt from a last chorus a step up: the piece is mostly C major and ends in
    F# major; an F# major query must find transposition 0 in the piece's last window
    (the whole-piece chroma would say the piece is a tritone away), and windows never
    reach across pieces."""
    from query.covers import _ROLL, _window_correlation

    def triad(root):
        v = np.zeros(12, np.float32)
        v[[root % 12, (root + 4) % 12, (root + 7) % 12]] = 1
        return v / np.linalg.norm(v)

    piece1 = np.stack([triad(0)] * 10 + [triad(6)] * 2)
    piece2 = np.stack([triad(0)] * 6)
    frames = np.concatenate([piece1, piece2])
    offsets = np.array([0, 12, 12, 18])  # piece 2 of 3 has no frames
    rolled = triad(6)[_ROLL]
    corr = _window_correlation(frames, offsets, rolled, 2)
    assert corr.shape == (3, 12)
    assert corr[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert int(np.argmax(corr[0])) == 0
    whole = piece1.sum(axis=0) / np.linalg.norm(piece1.sum(axis=0))
    assert float(whole @ rolled[0]) < 0.6  # what the whole-piece correlation would have said
    assert np.all(corr[1] == -1.0)  # no frames: no window
    assert corr[2, 0] < 0.7 and int(np.argmax(corr[2])) == 6  # C major: F# major moved up 6


def test_an_answers_transposition_is_read_from_its_whole_aligned_region():
    """The region's pitch classes, not its first note pair, give the transposition: the
    first pair can join the tune to another voice (a transcribed recording against its
    own MIDI file read -3 for 0)."""
    from query.covers import region_shift

    tune = np.array([69, 71, 73, 74, 76, 73, 69, 71, 73, 64, 66, 68, 69])  # A major
    assert region_shift(tune, tune + 5, 5 - 12) == -7  # the pair agrees: kept as it is
    assert region_shift(tune, tune + 5, -3) == 5  # a pair across voices: outvoted
    assert region_shift(tune, tune, 0) == 0
    assert region_shift([60, 64], [62, 69], 2) == 2  # a tie (shifts 2 and 5): the pair decides


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU: every kernel runs in the calling thread")
def test_kernels_answer_the_same_in_two_threads(monkeypatch):
    """A call large enough to be split between two threads (and a call run in the other
    thread) answers exactly as the same call in one thread; an error in the other thread
    reaches the caller."""
    import threading

    import indexers.align as al

    rng = np.random.default_rng(11)
    pool = rng.integers(1, 12, 40 * 150).astype(np.int8)
    lengths = rng.integers(20, 280, 40)
    starts = rng.integers(0, pool.size - 300, 40).astype(np.int64)
    ends = starts + lengths
    q = pool[1000:1090].copy()
    frames = rng.random((pool.size, 12)).astype(np.float32) ** 4
    frames /= np.linalg.norm(frames, axis=1, keepdims=True)
    frames[::9] = 0
    qs = np.ascontiguousarray(np.stack([np.roll(frames[500:540], t, axis=1) for t in range(12)]), np.float32)
    sh = np.ascontiguousarray(rng.integers(0, 12, (starts.size, 2)), np.int64)
    shifts = rng.integers(0, 12, starts.size)
    assert int(lengths.sum()) * q.size >= al.SPLIT_MIN_CELLS

    def answers():
        out = []
        for x in (al.sw_symbols_score(q, pool, (starts, ends), 1.0, 0.7, 0.6, 0.3, with_end=True),
                  al.sw_symbols(q, pool, (starts, ends), 1.0, 0.7, 0.6, 0.3),
                  al.sw_pitch_classes_score(q.astype(np.int64) % 12, pool % 12, (starts, ends), shifts,
                                            1.0, 1.0, 0.25, 0.6),
                  al.sw_chroma_score(qs, sh, frames, (starts, ends), 0.6, 0.3, 0.5),
                  al.sw_chroma(qs, sh, frames, (starts, ends), 0.6, 0.3, 0.5)):
            out.extend(x if isinstance(x, tuple) else (x,))
        return out

    monkeypatch.setenv("ATLAS_ALIGN_THREADS", "1")
    monkeypatch.setattr(al, "_pool", None)
    one = answers()
    assert al._pool is None  # nothing was handed over
    monkeypatch.setenv("ATLAS_ALIGN_THREADS", "2")
    two = answers()
    assert al._pool is not None  # the calls were split
    for x, y in zip(one, two):
        np.testing.assert_array_equal(x, y)
    gate = threading.Event()
    taken = al.in_background(gate.wait, 30)  # the other thread is busy: each call takes its half back
    busy = answers()
    assert not taken.done()
    gate.set()
    assert taken.result()
    for x, y in zip(one, busy):
        np.testing.assert_array_equal(x, y)
    later = al.in_background(al.sw_symbols_score, q, pool, (starts, ends), 1.0, 0.7, 0.6, 0.3, with_end=True)
    for x, y in zip(later.result(), one[:2]):
        np.testing.assert_array_equal(x, y)

    def where():
        return threading.current_thread().name

    assert al.in_background(where).result().startswith("atlas-align")
    with pytest.raises(ZeroDivisionError):
        al.in_background(lambda: 1 / 0).result()
    pid = os.fork()  # a child forked after the other thread started has a thread of its own
    if pid == 0:  # the child never returns into pytest
        code = 1
        try:
            same = all(np.array_equal(x, y) for x, y in zip(one, answers()))
            code = 0 if same and al.in_background(where).result(timeout=30).startswith("atlas-align") else 1
        finally:
            os._exit(code)
    for _ in range(600):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("a forked child's split call never finished")
    assert os.waitstatus_to_exitcode(status) == 0
    monkeypatch.setenv("ATLAS_ALIGN_THREADS", "1")
    assert al.in_background(where).result() == threading.current_thread().name


def test_a_search_sums_each_ngram_list_once(monkeypatch):
    """With a search's memo, a second list of the same symbols from the same index (a
    search that looks further down its lists) is read from the memo, not summed again,
    and ranks as the list without it; another index or other symbols are summed."""
    import query.covers as qc
    from indexers import sparse_sums

    rng = np.random.default_rng(5)
    lengths = rng.integers(5, 120, 300)
    iv = np.minimum(rng.geometric(0.35, int(lengths.sum())), 11)
    off = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    grams, other = qc._gram_index(iv, off), qc._gram_index(iv[::-1].copy(), off)
    sums = []
    real = sparse_sums.column_sums
    monkeypatch.setattr(sparse_sums, "column_sums", lambda *a: sums.append(1) or real(*a))
    query = iv[off[3]:off[3] + 40] - 1
    memo = {}
    first = grams.search(query, 10, memo=memo)
    again = grams.search(query, 60, memo=memo)
    assert len(sums) == 1
    np.testing.assert_array_equal(first, grams.search(query, 10))
    np.testing.assert_array_equal(again, grams.search(query, 60))
    within = rng.random(300) < 0.5
    np.testing.assert_array_equal(grams.search(query, 20, within=within, memo=memo),
                                  grams.search(query, 20, within=within))
    np.testing.assert_array_equal(grams.search(query, 60, memo=memo), again)  # the memo's scores unmasked
    n = len(sums)
    other.search(query, 10, memo=memo)  # another index
    grams.search(query[:20], 10, memo=memo)  # other symbols
    assert len(sums) == n + 2


def test_ngram_list_scores_are_scipys_sums(monkeypatch):
    """The n-gram index's scores (summed IDF of the query's n-grams a piece holds) are
    exactly the float32 sums of scipy's column slice of the whole presence matrix times
    the IDF, with the common n-grams read from dense rows, and the list ranks a piece
    holding the query's rare n-grams first."""
    from scipy import sparse

    import query.covers as qc
    from indexers import sparse_sums
    from indexers.sparse_sums import column_sums, dense_slots, split_common

    rng = np.random.default_rng(4)
    # skewed intervals (1..11): some n-grams common to most pieces, others rare
    lengths = rng.integers(5, 120, 400)
    iv = np.minimum(rng.geometric(0.35, int(lengths.sum())), 11)
    off = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    grams = qc._gram_index(iv, off)
    codes, piece = grams.codes(iv - 1, off)
    np.testing.assert_array_equal(grams.codes_held, np.unique(codes))  # a column per n-gram held, no more
    assert grams.idf.size == grams.codes_held.size < int(grams.bases[-1])
    whole = sparse.csc_matrix((np.ones(codes.size, np.float32), (piece, np.searchsorted(grams.codes_held, codes))),
                              shape=(400, grams.idf.size))
    whole.sum_duplicates()
    whole.data[:] = 1.0
    whole.sort_indices()
    assert 10 < grams.common.shape[0] < grams.matrix.shape[1] - 100  # both kinds of column
    np.testing.assert_array_equal(np.diff(whole.indptr)[grams.common_cols], grams.common.sum(axis=1))
    assert (np.diff(grams.matrix.indptr)[grams.common_cols] == 0).all()
    rare_cols = np.setdiff1d(np.arange(whole.shape[1]), grams.common_cols)
    np.testing.assert_array_equal(np.diff(grams.matrix.indptr)[rare_cols], np.diff(whole.indptr)[rare_cols])
    mixed = 0  # queries holding both kinds of column
    for trial in range(20):
        p = int(rng.integers(0, 400))
        query = iv[off[p]:off[p + 1]][: int(rng.integers(3, 60))] - 1  # the index's symbols
        codes, _ = grams.codes(query, np.array([0, query.size]))
        u = np.searchsorted(grams.codes_held, np.unique(codes))  # their columns
        slots = dense_slots(grams.common_cols, u)
        np.testing.assert_array_equal(slots >= 0, np.isin(u, grams.common_cols))
        np.testing.assert_array_equal(grams.common_cols[slots[slots >= 0]], u[slots >= 0])
        mixed += bool((slots >= 0).any() and (slots < 0).any())
        want = np.asarray(whole[:, u] @ grams.idf[u], np.float32).ravel()
        m, d = grams.matrix, (slots, grams.common)
        np.testing.assert_array_equal(column_sums(m.indptr, m.indices, None, u, grams.idf[u], 0, 400, *d), want)
        cut = int(rng.integers(1, 400))  # two ranges of pieces, as two threads sum them
        halves = np.concatenate([column_sums(m.indptr, m.indices, None, u, grams.idf[u], 0, cut, *d),
                                 column_sums(m.indptr, m.indices, None, u, grams.idf[u], cut, 400, *d)])
        np.testing.assert_array_equal(halves, want)
        np.testing.assert_array_equal(  # all sparse
            column_sums(whole.indptr, whole.indices, None, u, grams.idf[u], 0, 400, None, None), want)
        rest, common, dense = split_common(whole, 0.0)  # all dense
        np.testing.assert_array_equal(column_sums(rest.indptr, rest.indices, None, u, grams.idf[u], 0, 400,
                                                  dense_slots(common, u), dense), want)
    assert mixed >= 10
    # an n-gram no piece holds adds nothing (it has no column)
    unheld = next(c for c in range(int(grams.bases[1])) if c not in set(grams.codes_held.tolist()))
    triple = np.array([unheld // 121, unheld // 11 % 11, unheld % 11], np.int8)
    q = (iv[:50] - 1).astype(np.int8)
    np.testing.assert_array_equal(grams.scores(np.concatenate([q, [-1], triple]).astype(np.int8)), grams.scores(q))
    assert not grams.scores(triple).any()
    unsplit = grams.search(iv[:50] - 1, 30)
    rare = np.full(40, 11)  # a run of the rarest interval, planted in piece 7 only
    planted = np.concatenate([iv[:off[7]], rare, iv[off[7]:]])
    off2 = off.copy()
    off2[8:] += rare.size
    assert qc._gram_index(planted, off2).search(rare - 1, 5)[0] == 7
    monkeypatch.setattr(sparse_sums, "SPLIT_ROWS", 100)  # the list in two threads, one half of the pieces each
    assert qc._gram_index(planted, off2).search(rare - 1, 5)[0] == 7
    np.testing.assert_array_equal(grams.search(iv[:50] - 1, 30), unsplit)


def test_pooled_frames_are_numpys_to_the_bit():
    """A collection that keeps no frames pools each candidate's beats into frames per
    query (``_pool_frames``, numba): the same float32 numbers as gathering the beats,
    adding them with ``np.add.reduceat`` and dividing by NumPy's norm, for frames of
    1-9 beats, pieces whose length is no multiple of the frame, empty pieces and silent
    frames; and the frames are unit vectors."""
    import query.covers as qc

    rng = np.random.default_rng(11)
    chroma_q = rng.integers(-128, 128, (5000, 12)).astype(np.int8)
    chroma_q[rng.random(5000) < 0.2] = 0  # silent beats, so some frames are silent
    for fb in (1, 2, 3, 9):
        for trial in range(40):
            k = int(rng.integers(0, 12))
            starts = rng.integers(0, 4500, k)
            ends = starts + rng.integers(0, 400, k)
            nb = ends - starts
            nf = -(-nb // fb)
            f_off = np.concatenate([[0], np.cumsum(nf)]).astype(np.int64)
            b_off = np.concatenate([[0], np.cumsum(nb)])
            idx = np.repeat(starts - b_off[:-1], nb) + np.arange(b_off[-1])
            got = qc._pool_frames(chroma_q, starts, ends, fb, f_off)
            if f_off[-1] == 0:
                assert got.shape == (0, 12)
                continue
            first = np.repeat(b_off[:-1], nf) + (np.arange(f_off[-1]) - np.repeat(f_off[:-1], nf)) * fb
            want = np.add.reduceat(chroma_q[idx].astype(np.float32), first, axis=0)
            norm = np.linalg.norm(want, axis=1, keepdims=True)
            np.divide(want, norm, out=want, where=norm > 0)
            np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))
            lengths = np.linalg.norm(got, axis=1)
            assert np.allclose(lengths[lengths > 0], 1.0, atol=1e-5)


def test_the_search_steps_in_numba_are_their_numpy_forms_to_the_bit():
    """The query's frames (``_pool``, ``_pool_beats`` at a non-integer length,
    ``_rolled_frames``), a sequence's n-gram codes (``_GramIndex.codes``) and chord
    motions (``chord_motions``) are numba loops now, a list's distinct codes
    (``distinct``) a sort; they give exactly what their NumPy forms gave (kept here): the
    same float32 bits for float and int8-valued chroma, any group length, a last group
    cut short, silent frames and no frames; the same codes, in the same order, for
    pieces of any length (empty ones too) with symbols that break n-grams; ``np.unique``'s
    array; the same
    motions and offsets for pieces of any length, with silent frames and cosines at the
    no-chord threshold."""
    import query.covers as qc
    from indexers.sparse_sums import distinct

    def numpy_pool(chroma, n):
        if chroma.shape[0] == 0:
            return np.zeros((0, 12), np.float32)
        m = -(-chroma.shape[0] // n)
        x = np.zeros((m * n, 12), np.float32)
        x[: chroma.shape[0]] = chroma
        x = x.reshape(m, n, 12).sum(axis=1)
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        np.divide(x, norm, out=x, where=norm > 0)
        return x

    def numpy_spread(chroma_beats, frame_beats):
        n = chroma_beats.shape[0]
        x = np.asarray(chroma_beats, np.float64)
        cs = np.concatenate([np.zeros((1, 12)), np.cumsum(x, axis=0)])
        edges = np.append(np.arange(0.0, n, frame_beats), float(n))
        i = np.minimum(np.floor(edges).astype(np.int64), n - 1)
        frames = np.diff(cs[i] + (edges - i)[:, None] * x[i], axis=0).astype(np.float32)
        frames[frames < 1e-6] = 0.0
        norm = np.linalg.norm(frames, axis=1, keepdims=True)
        np.divide(frames, norm, out=frames, where=norm > 0)
        return frames

    def numpy_codes(grams, sym, off):
        x = np.asarray(sym, np.int64)
        piece_of = np.repeat(np.arange(off.size - 1), np.diff(off))
        out_c, out_p = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for n, base in zip(grams.ns, grams.bases):
            if x.size < n:
                continue
            m = x.size - n + 1
            code = np.zeros(m, np.int64)
            ok = piece_of[:m] == piece_of[n - 1:]
            for t in range(n):
                code = code * grams.alphabet + x[t:m + t]
                ok &= x[t:m + t] >= 0
            out_c.append(code[ok] + base)
            out_p.append(piece_of[:m][ok])
        return np.concatenate(out_c), np.concatenate(out_p)

    def numpy_motions(frames, off):
        sim = frames @ qc._TEMPLATES.T
        chord = np.argmax(sim, axis=1).astype(np.int64)
        chord[sim.max(axis=1) < 0.6] = -1
        piece_of = np.repeat(np.arange(off.size - 1), np.diff(off))
        new_piece = np.concatenate([[True], piece_of[1:] != piece_of[:-1]])
        change = new_piece | np.concatenate([[True], chord[1:] != chord[:-1]])
        ch, pc = chord[change], piece_of[change]
        prev, cur = ch[:-1], ch[1:]
        same = pc[:-1] == pc[1:]
        sym = ((cur % 12 - prev % 12) % 12) * 4 + (prev >= 12) * 2 + (cur >= 12)
        sym[(prev < 0) | (cur < 0)] = -1
        sym, spc = sym[same], pc[1:][same]
        return sym, np.concatenate([[0], np.cumsum(np.bincount(spc, minlength=off.size - 1))]).astype(np.int64)

    rng = np.random.default_rng(12)
    for trial in range(300):
        k = int(rng.integers(0, 300))
        chroma = rng.random((k, 12), dtype=np.float32) * (8 if trial % 3 == 0 else 1)
        chroma[rng.random((k, 12)) < 0.5] = 0
        chroma[rng.random(k) < 0.2] = 0  # silent beats
        if trial % 2:  # a stored piece's beats as a query: int8 / 127
            chroma = np.round(chroma * 127).astype(np.int8).astype(np.float32) / np.float32(127)
        for n in (1, 2, 3, 4, 8):
            want = numpy_pool(chroma, n)
            got = qc._pool(chroma, n)
            assert got.dtype == np.float32 and got.shape == want.shape
            np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))
            qs, nq = qc._rolled_frames(got)  # a query's frames at every transposition
            np.testing.assert_array_equal(qs, got[:, qc._ROLL].transpose(1, 0, 2))
            assert nq == int((got.sum(axis=1) > 0).sum())
        if k and trial % 3 == 0:  # at a scale off the notated grid (values at the 1e-6 cut too)
            chroma[rng.random((k, 12)) < 0.1] = np.float32(1e-6)
            fb = float(rng.uniform(0.3, 4.5))
            spread = qc._pool_beats(chroma, fb)
            np.testing.assert_array_equal(spread.view(np.int32), numpy_spread(chroma, fb).view(np.int32))
    grams = qc._gram_index(np.array([1, 2, 3, 4, 5]), np.array([0, 5]))
    for trial in range(300):
        lengths = rng.integers(0, 15, int(rng.integers(1, 6)))
        off = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        sym = rng.integers(-1, 11, off[-1]).astype(np.int8)  # -1: no symbol
        for got, want in zip(grams.codes(sym, off), numpy_codes(grams, sym, off)):
            assert got.dtype == np.int64
            np.testing.assert_array_equal(got, want)
        codes = grams.codes(sym, off)[0]  # the distinct codes a list sums, by a sort
        np.testing.assert_array_equal(distinct(codes), np.unique(codes))
    for trial in range(300):
        lengths = rng.integers(0, 40, int(rng.integers(1, 6)))
        off = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        chords = qc._TEMPLATES[rng.integers(0, 24, off[-1])]  # a triad per frame, some held
        frames = chords + rng.random((off[-1], 12), dtype=np.float32) * np.float32(rng.random() * 2)
        frames[rng.random(off[-1]) < 0.2] = 0  # silent
        frames /= np.maximum(np.linalg.norm(frames, axis=1, keepdims=True), 1e-9)
        frames = frames.astype(np.float32)
        if off[-1] == 0:
            continue
        for got, want in zip(qc.chord_motions(frames, off), numpy_motions(frames, off)):
            assert got.dtype == np.int64
            np.testing.assert_array_equal(got, want)
    # cosines just under, at and just over the no-chord threshold, and a tie (the first wins)
    for c in (np.nextafter(0.6, 0.0), 0.6, np.nextafter(0.6, 1.0)):
        sim = np.zeros((3, 24))
        sim[0, 4], sim[1, 7], sim[1, 19], sim[2, 2] = c, 0.9, 0.9, 0.95
        sym, off = qc._chord_motions(sim, np.array([0, 3]))
        assert off.tolist() == [0, 2]
        assert sym.tolist() == [-1 if c < 0.6 else (7 - 4) * 4, (2 - 7) % 12 * 4]


def test_tune_in_the_second_melody_line_is_found(tmp_path):
    """Song 2's tune is in a track that is not its lead: a countermelody track, strictly
    one note at a time, looks more like a melody than the tune's track (a third under
    every eighth note). The tune over new chords, in another key and tempo, still finds
    song 2 first by its melody: the search aligns each piece's second line too."""
    from atlas_db.connection import reading
    from indexers.features import skyline
    from ingest.pipeline import ingest_paths
    from query.covers import covers

    lib = tmp_path / "lib"
    songs = [_song(s) for s in range(6)]
    for i, (mel, ch) in enumerate(songs):
        tracks = _render(mel, ch)
        if i == 2:
            tune = [(p, on, d, 90) for p, on, d in mel] + [(p - 4, on, d, 70) for p, on, d in mel[::8]]
            counter = [(p + 7, on, d, 80) for p, on, d in _song(100)[0][::2]]
            tracks = [Track(tune, name="tune", channel=0), Track(counter, name="counter", channel=2), tracks[1]]
        write_midi(lib / f"song{i}.mid", tracks, tempo_bpm=100)
    assert ingest_paths([str(lib)], tmp_path / "db", workers=1).failed == 0
    with reading(tmp_path / "db") as con:
        lead, second = con.execute("SELECT c.melody_pitch, c.second_pitch FROM cover_features c JOIN pieces p "
                                   "USING (piece_id) WHERE p.path LIKE '%song2.mid'").fetchone()
    def line(notes):
        return skyline([n[1] for n in notes], [n[2] for n in notes], [n[0] for n in notes])[0].tolist()

    assert lead == line(counter) and second == line(tune)  # the countermelody leads, the tune is second
    assert second == [p for p, _, _ in songs[2][0]]
    mel, ch = songs[2]
    new_chords = [{1: 6, 6: 4, 4: 2, 2: 4, 5: 1}[c] for c in ch]
    q = write_midi(tmp_path / "reharmonised.mid", _render(mel, new_chords, transpose=-3), tempo_bpm=120)
    res = covers(tmp_path / "db", [str(q)], top=3).to_pylist()
    assert res[0]["path"].endswith("song2.mid") and res[0]["matched_by"] == "melody"
    assert res[0]["melody_score"] > 0.9 and res[0]["transposition"] == 3
    # the explained region is in the second line: the tune's own onsets
    assert res[0]["match_end_beats"] - res[0]["match_start_beats"] > 32


def test_a_weak_best_shared_by_many_versions_does_not_stop_the_search():
    """``CoverIndex._convincing``: a long query's best answer must clear rank 8 by
    ``short_clear`` while it is below ``long_clear_below`` (a weak match shared by the
    many versions of one wrong piece crowded the right song out of the candidates);
    above it, a long query's best convinces whatever ranks 8th."""
    from types import SimpleNamespace

    from query.covers import ALIGN, CoverIndex

    long_q = SimpleNamespace(intervals=np.zeros(4 * ALIGN["min_query_intervals"]))
    short_q = SimpleNamespace(intervals=np.zeros(ALIGN["min_query_intervals"]))
    weak = ALIGN["look_further_below"] + 0.5 * (ALIGN["long_clear_below"] - ALIGN["look_further_below"])
    strong = ALIGN["long_clear_below"] + 0.2
    lo = 0.3

    def scores(best, eighth):  # 9 scores: the best, six between, the 8th, one low
        return np.array([best] + [eighth + 0.01] * 6 + [eighth, lo])

    # a cluster of weak matches: look further
    assert not CoverIndex._convincing(long_q, scores(weak, weak - 0.02))
    # the same weak best standing clear of rank 8: convincing
    assert CoverIndex._convincing(long_q, scores(weak, weak - ALIGN["short_clear"] - 0.01))
    # a strong best convinces a long query even with its many versions at rank 8 ...
    assert CoverIndex._convincing(long_q, scores(strong, strong - 0.02))
    # ... but not a short one, for which chance matches crowd together at any score
    assert not CoverIndex._convincing(short_q, scores(strong, strong - 0.02))
    # nothing reached look_further_below: never convincing
    assert not CoverIndex._convincing(long_q, scores(ALIGN["look_further_below"] - 0.05, lo))


def _tune_over_chords(n_bars: int, jitter_beats: float, seed: int = 0):
    """One part: a tune on beats 0-2 of each bar (74-80), an accompaniment note at 69 on
    beat 3 where the tune rests (within the skyline's register filter of the tune, not
    within ``tight_register``), low block chords on beats 0 and 2; every onset moved by
    up to ``jitter_beats``. Returns (onsets, durations, pitches, the tune's pitches)."""
    cycle = [74, 76, 77, 79, 77, 76, 74, 77, 79]
    on, du, p, tune = [], [], [], []
    for b in range(n_bars):
        for k in range(3):
            x = cycle[(3 * b + k) % len(cycle)] + b % 2
            on.append(4 * b + k), du.append(1.0), p.append(x), tune.append(x)
        if b < n_bars - 1:
            on.append(4 * b + 3), du.append(1.0), p.append(69)
        for beat in (0, 2):
            for c in (48, 52, 55):
                on.append(4 * b + beat), du.append(2.0), p.append(c)
    on = np.asarray(on, np.float64)
    on += np.random.default_rng(seed).uniform(-jitter_beats, jitter_beats, on.size)
    o = np.argsort(on, kind="stable")
    return on[o] - on.min(), np.asarray(du)[o], np.asarray(p)[o], np.asarray(tune)


def test_a_jittered_polyphonic_part_also_tries_the_tunes_register():
    """A one-part query whose accompaniment reaches its skyline where the tune rests also
    tries the skyline kept to the tune's register (``tight_register``), which leaves the
    accompaniment out. Its notes need not share onsets: with every onset jittered (a
    performance, a transcription: no chord's notes share an onset), a query longer than
    a short one is still read as polyphonic, by its skyline's share of the notes; a short
    jittered one is not (there the extra line only added chance candidates), a short one
    on a grid is."""
    import query.covers as qc
    from indexers.features import melody_intervals, skyline

    for bars, jitter, expect_alt in [(24, 0.15, True), (24, 0.0, True), (8, 0.15, False), (8, 0.0, True)]:
        on, du, p, tune = _tune_over_chords(bars, jitter)
        q = qc.query_from_notes("tune over chords", on, du, p)
        assert q.one_part and q.skyline_share < 0.8
        assert qc._short(q) == (bars == 8)
        shared = np.unique(np.round(on * 32)).size < 0.8 * on.size
        assert shared == (jitter == 0.0)  # the jittered notes share (almost) no onset
        if not expect_alt:
            assert q.alt_intervals == [], (bars, jitter)
            continue
        tight = skyline(on, du, p, register_drop=qc.ALIGN["tight_register"])[0]
        plain = skyline(on, du, p)[0]
        assert len(q.alt_intervals) == 1 and np.array_equal(q.alt_intervals[0], melody_intervals(tight)[0])
        # the plain skyline holds the accompaniment note of (almost) every rest, the tune's line under half
        assert (plain == 69).sum() >= 0.8 * (bars - 1) and (tight == 69).sum() <= 0.5 * (bars - 1), (bars, jitter)
        if jitter == 0.0:
            assert np.array_equal(q.alt_intervals[0], melody_intervals(tune)[0])
