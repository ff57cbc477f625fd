"""The vectors and harmony stages compute a whole batch at once; each piece must come out
exactly as when it is computed on its own, and adding one file to a database must give
the vectors (DuckDB and Lance) that a build of all the files at once gives."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from conftest import pop909_songs
from indexers import features as F
from indexers import vectors
from ingest import harmony
from ingest.pipeline import ingest_paths


def _random_groups(rng, n_groups):
    """Groups of random notes: some empty, some of one note, some long, with negative
    onsets, zero durations, held notes, and several tracks."""
    on, dur, pitch, trk, offsets = [], [], [], [], [0]
    for g in range(n_groups):
        n = [0, 1, 2, 9, 17, 40, 200][g % 7] + int(rng.integers(0, 5)) * (g % 7 > 2)
        o = np.sort(np.round(rng.uniform(-1.0, 60.0, n) * 8) / 8)
        on.append(o)
        dur.append(np.where(rng.random(n) < 0.1, 0.0, rng.choice([0.25, 0.5, 1.0, 3.0, 12.0], n)))
        pitch.append(rng.integers(30, 100, n))
        trk.append(rng.integers(0, 4, n))
        offsets.append(offsets[-1] + n)
    cat = np.concatenate
    return cat(on), cat(dur), cat(pitch), cat(trk), np.array(offsets)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_functions_equal_the_one_group_functions(seed):
    rng = np.random.default_rng(seed)
    on, dur, pitch, trk, off = _random_groups(rng, 40)
    chroma, c_off = F.beat_chroma_groups(on, dur, pitch, off)
    lead = F.lead_mask_groups(trk, on, pitch, off)
    sky_p, sky_on, s_off = F.skyline_groups(on, dur, pitch, off)
    iv, iv_off = F.melody_intervals_groups(sky_p, s_off)
    iv_i, at, iv_off_i = F.melody_intervals_groups(sky_p, s_off, with_index=True)
    np.testing.assert_array_equal(iv_i, iv)
    np.testing.assert_array_equal(iv_off_i, iv_off)
    vec = F.embedding_groups(chroma, c_off, iv, iv_off)
    assert vec.shape == (40, F.EMBED_DIM) and vec.dtype == np.float32
    for g in range(40):
        a, b = off[g], off[g + 1]
        one = F.beat_chroma(on[a:b], dur[a:b], pitch[a:b])
        np.testing.assert_array_equal(chroma[c_off[g]:c_off[g + 1]], one)
        if b > a:
            np.testing.assert_array_equal(lead[a:b], F.lead_mask(trk[a:b], on[a:b], pitch[a:b]))
        p1, o1 = F.skyline(on[a:b], dur[a:b], pitch[a:b])
        np.testing.assert_array_equal(sky_p[s_off[g]:s_off[g + 1]], p1)
        np.testing.assert_array_equal(sky_on[s_off[g]:s_off[g + 1]], o1)
        iv1, at1 = F.melody_intervals(p1)
        np.testing.assert_array_equal(iv[iv_off[g]:iv_off[g + 1]], iv1)
        np.testing.assert_array_equal(at[iv_off[g]:iv_off[g + 1]], at1)
        np.testing.assert_array_equal(vec[g], F.embedding(one, iv1))


def test_even_and_odd_medians_match_numpy():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 5, (3, 23)).astype(np.float64)  # many ties
    offsets = np.array([0, 1, 2, 6, 13, 13, 23])
    got = F._median_cols_groups(x, offsets)
    for g in range(len(offsets) - 1):
        a, b = offsets[g], offsets[g + 1]
        want = np.median(x[:, a:b], axis=1) if b > a else np.zeros(3)
        np.testing.assert_array_equal(got[g], want)


def test_vectors_of_a_batch_equal_each_piece_alone(small_pop909_db):
    from atlas_db.connection import reading

    with reading(small_pop909_db) as con:
        ids = [r[0] for r in con.execute("SELECT piece_id FROM pieces ORDER BY piece_id").fetchall()]
        notes = vectors.in_note_order(vectors.load_inputs(con, ids)["notes"])
    feats, tracks = vectors.compute(notes)
    pid = notes.column("piece_id").to_numpy(zero_copy_only=False)
    alone_f, alone_t = [], []
    for p in ids:
        m = pid == p
        cols = {c: notes.column(c).to_numpy()[m] for c in ("track_index", "onset_beats", "duration_beats", "pitch")}
        cols["part"] = F.note_parts(cols["track_index"], notes.column("channel").to_numpy()[m])
        f, t = vectors.compute_one(p, cols)
        alone_f.append(f)
        alone_t.append(t)
    assert feats.equals(pa.concat_tables(alone_f))
    assert tracks.equals(pa.concat_tables(alone_t))
    assert tracks.num_rows > len(ids)
    assert all(len(b) > 10 for b in feats.column("bass_pc").to_pylist())
    # POP909's MELODY leads and its BRIDGE is the second line
    assert sum(len(x) > 10 for x in feats.column("second_pitch").to_pylist()) >= len(ids) // 2
    # and the piano's top notes rise above the MELODY track's somewhere: a third line
    assert sum(len(x) > 10 for x in feats.column("third_pitch").to_pylist()) >= len(ids) // 2


def test_harmony_of_a_batch_equals_each_piece_alone(small_pop909_db):
    from atlas_db.connection import reading

    with reading(small_pop909_db) as con:
        ids = [r[0] for r in con.execute("SELECT piece_id FROM pieces ORDER BY piece_id").fetchall()][:12]
        inputs = harmony.load_inputs(con, ids)
    batch = harmony.compute_rows(inputs, ids)
    alone = [harmony.compute_rows(inputs, [p]) for p in ids]
    for name, tbl in batch.items():
        assert tbl.equals(pa.concat_tables([a[name] for a in alone if name in a])), name
    assert batch["chord_transitions"].num_rows > 100


def test_harmony_batch_with_odd_pieces_equals_each_piece_alone():
    """A piece too long for the batch grid (past MAX_FRAMES), one without a tempo map,
    one with a late first tempo event, between ordinary ones."""
    rng = np.random.default_rng(5)
    rows, tempo, pieces = [], [], []
    for k, kind in enumerate(["plain", "long", "no_tempo", "late_tempo", "plain"]):
        pid = f"p{k}"
        n = 60
        on = np.sort(rng.uniform(0, 40, n).round(2))
        if kind == "long":
            on[-1] = harmony.MAX_FRAMES + 500.0
        rows += [(pid, float(o), float(rng.choice([0.5, 1.0, 2.0])), int(rng.integers(40, 80))) for o in on]
        if kind != "no_tempo":
            tempo += [(pid, 480 * (4 if kind == "late_tempo" else 0), 0.0, 100.0), (pid, 480 * 16, 9.0, 140.0)]
        pieces.append((pid, 480))
    inputs = {
        "notes": pa.table({k: [r[i] for r in rows] for i, k in
                           enumerate(["piece_id", "onset_beats", "duration_beats", "pitch"])}),
        "tempo": pa.table({"piece_id": [t[0] for t in tempo], "time_ticks": [t[1] for t in tempo],
                           "time_s": [t[2] for t in tempo], "tempo_bpm": [t[3] for t in tempo]}),
        "pieces": pa.table({"piece_id": [p[0] for p in pieces], "ticks_per_beat": [p[1] for p in pieces]}),
    }
    ids = [p[0] for p in pieces]
    batch = harmony.compute_rows(inputs, ids)
    alone = [harmony.compute_rows(inputs, [p]) for p in ids]
    for name, tbl in batch.items():
        assert tbl.equals(pa.concat_tables([a[name] for a in alone if name in a])), name
    assert batch["piece_keys"].num_rows == 5


def test_batches_end_at_the_piece_or_the_note_limit():
    from ingest.derived import batches

    notes = {"a": 10, "b": 10, "c": 500, "d": 1, "e": 1, "f": 1}
    todo = list(notes)
    assert list(batches(todo, 2)) == [["a", "b"], ["c", "d"], ["e", "f"]]
    assert list(batches(todo, 3, 100, notes)) == [["a", "b"], ["c"], ["d", "e", "f"]]
    assert list(batches(todo, 10, 21, notes)) == [["a", "b"], ["c"], ["d", "e", "f"]]
    assert list(batches([], 3, 100, notes)) == []


def _vector_dump(db):
    from atlas_db.connection import reading

    with reading(db) as con:
        feats = con.execute("SELECT * EXCLUDE (stage_version) FROM cover_features ORDER BY piece_id").fetchall()
    ldb = vectors.open_lance(db)
    lance = {}
    for name in (vectors.PIECE_TABLE, vectors.TRACK_TABLE):
        rows = ldb.open_table(name).to_arrow().to_pylist()
        lance[name] = sorted(rows, key=lambda r: (r["piece_id"], r.get("track_index", -1)))
    return feats, lance


def test_adding_one_file_gives_the_vectors_of_a_full_build(tmp_path):
    songs = pop909_songs(3)
    src = tmp_path / "files"
    for s in songs[:2]:
        shutil.copytree(s, src / s.name)
    ingest_paths([str(src)], tmp_path / "grown", workers=1)
    shutil.copy(songs[2] / f"{songs[2].name}.mid", src / "new.mid")
    added = ingest_paths([str(src)], tmp_path / "grown", workers=1)
    assert added.added == 1 and added.derived["vectors"] == 1
    ingest_paths([str(src)], tmp_path / "whole", workers=1)
    grown, whole = _vector_dump(tmp_path / "grown"), _vector_dump(tmp_path / "whole")
    assert grown == whole
    assert len(grown[0]) == len(list(src.rglob("*.mid")))


def test_ingest_leaves_lance_to_its_readers(tmp_path):
    """`atlas ingest` does not import lancedb (its import costs more than a one-file add);
    the first open of Lance copies the vectors in, the next one has nothing to do, and a
    re-analysis under a new stage version replaces the rows of the old one."""
    import subprocess
    import sys

    from atlas_db.connection import reading, writing

    song = pop909_songs(1)[0]
    db = tmp_path / "db"
    code = ("import sys; from ingest.pipeline import ingest_paths; "
            f"s = ingest_paths([{str(song)!r}], {str(db)!r}, workers=1); "
            "print(s.derived['vectors'], 'lancedb' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    with reading(db) as con:
        n_pieces, n_tracks = con.execute(
            "SELECT (SELECT count(*) FROM cover_features), (SELECT count(*) FROM track_vectors)").fetchone()
    assert out == [str(n_pieces), "False"] and n_tracks > n_pieces > 1
    assert vectors.sync_lance(db) == {vectors.PIECE_TABLE: n_pieces, vectors.TRACK_TABLE: n_tracks}
    assert vectors.sync_lance(db) == {}
    ldb = vectors.open_lance(db)
    with reading(db) as con:
        want = con.execute("SELECT piece_id, track_index, vector FROM track_vectors ORDER BY ALL").fetchall()
    got = sorted((r["piece_id"], r["track_index"], r["vector"])
                 for r in ldb.open_table(vectors.TRACK_TABLE).to_arrow().to_pylist())
    assert [(p, t, np.float32(v).tolist()) for p, t, v in want] == [(p, t, list(v)) for p, t, v in got]
    # the same rows under another stage version: Lance follows
    with writing(db) as con:
        con.execute("UPDATE cover_features SET stage_version = 'vectors-test'")
    assert vectors.sync_lance(db) == {vectors.PIECE_TABLE: n_pieces}
    versions = ldb.open_table(vectors.PIECE_TABLE).to_arrow().column("stage_version").to_pylist()
    assert versions == ["vectors-test"] * n_pieces
    # a damaged Lance table (its data file overwritten) is a copy: made again from DuckDB
    for data in (vectors.lance_dir(db) / f"{vectors.TRACK_TABLE}.lance" / "data").glob("*.lance"):
        data.write_bytes(b"garbage")
    assert vectors.sync_lance(db) == {vectors.TRACK_TABLE: n_tracks}
    got = sorted((r["piece_id"], r["track_index"], r["vector"])
                 for r in vectors.open_lance(db).open_table(vectors.TRACK_TABLE).to_arrow().to_pylist())
    assert [(p, t, np.float32(v).tolist()) for p, t, v in want] == [(p, t, list(v)) for p, t, v in got]


def test_select_is_the_kth_smallest_with_the_smaller_ones_before_it():
    rng = np.random.default_rng(4)
    for trial in range(200):
        m = int(rng.integers(1, 300))
        x = [rng.random(m), rng.integers(0, 3, m).astype(float), np.zeros(m), np.sort(rng.random(m))[::-1]][trial % 4]
        for k in {0, m // 2, m - 1, int(rng.integers(0, m))}:
            a = x.copy()
            v = F._select(a, k)
            assert v == np.sort(x)[k]
            assert (a[:k] <= v).all()
            np.testing.assert_array_equal(np.sort(a), np.sort(x))


def test_skyline_order_is_the_lexsort():
    # by group, onset, pitch down; ties (one pitch at one onset twice) in input order;
    # pitches outside 0..127 and a non-finite onset take the lexsort itself
    rng = np.random.default_rng(5)
    g = np.sort(rng.integers(0, 30, 2000))
    q = np.round(rng.uniform(-3.0, 40.0, 2000) * 4) / 4
    p = rng.integers(40, 50, 2000)
    for pp, qq in ((p, q), (p - 45, q), (p, np.where(np.arange(2000) == 7, np.nan, q))):
        np.testing.assert_array_equal(F._order_group_onset_pitch_down(g, qq, pp), np.lexsort((-pp, qq, g)))


def test_patch_magnitudes_equal_numpys_fft2():
    # scipy.fft's transforms are NumPy's to the bit (the stored vectors rely on it),
    # on chroma with silent pitch classes and repeated frames, in more than one call
    rng = np.random.default_rng(6)
    x = np.where(rng.random((12, F._WINDOWS_PER_FFT + 300)) < 0.5, 0.0, rng.random((12, F._WINDOWS_PER_FFT + 300)))
    x[:, 100:140] = x[:, 60:100]
    x[3] = 0.0  # pitch rows that are all zero
    x[7, 200:400] = 0.0
    starts = np.arange(x.shape[1] - F.PATCH_BEATS + 1)
    got = F._patch_magnitudes(np.ascontiguousarray(x), starts)
    n_t = F.PATCH_BEATS // 2 + 1
    for s in starts:
        want = np.abs(np.fft.fft2(x[:, s:s + F.PATCH_BEATS]))[:7, :n_t].ravel()
        np.testing.assert_array_equal(got[:, s], want)


def test_lead_masks_in_and_out_of_onset_order_equal_the_one_group_function():
    # the stage's notes rise in onset within a piece (one pass counts each track's
    # distinct onsets); shuffled, the (track, onset) codes are sorted instead; a wide
    # track span takes np.unique for the (piece, track) pairs
    rng = np.random.default_rng(7)
    on, dur, pitch, trk, off = _random_groups(rng, 60)
    trk = np.where(rng.random(trk.size) < 0.7, 0, trk)  # leads to find
    shuffled = np.concatenate([a + rng.permutation(b - a) for a, b in zip(off[:-1], off[1:])]).astype(np.int64)
    n_second = n_ensemble = 0
    for t, o in ((trk, on), (trk[shuffled], on[shuffled]), (trk * 5000, on)):
        got, second = F.lead_masks_groups(t, o, pitch, off)
        np.testing.assert_array_equal(got, F.lead_mask_groups(t, o, pitch, off))
        for g in range(60):
            a, b = off[g], off[g + 1]
            if b > a:
                np.testing.assert_array_equal(got[a:b], F.lead_mask(t[a:b], o[a:b], pitch[a:b]))
                np.testing.assert_array_equal(second[a:b], F.second_line_mask(t[a:b], o[a:b], pitch[a:b]))
                n_second += bool(second[a:b].any())
                # the lead and second lines are other tracks, but for an ensemble of
                # single lines led by its bass, whose lead line is the skyline of every note
                n_ensemble += bool(got[a:b].all() and second[a:b].any())
                assert got[a:b].all() or not (got[a:b] & second[a:b]).any()
    assert not F.lead_mask_groups(trk, on, pitch, off).all()
    assert n_second > 10 and n_ensemble > 3  # pieces of both kinds were checked
    # two tracks with the same line tie: the lower one leads, as np.argmax picks
    line = np.arange(20) * 0.5
    o = np.concatenate([line, line, [0.0] * 10])
    t = np.repeat([3, 1, 0], [20, 20, 10])
    got, second = F.lead_masks_groups(t, o, np.zeros(50), np.array([0, 50]))
    np.testing.assert_array_equal(got, t == 1)
    np.testing.assert_array_equal(got, F.lead_mask(t, o, np.zeros(50)))
    np.testing.assert_array_equal(second, t == 3)  # ... and the other is second
    np.testing.assert_array_equal(second, F.second_line_mask(t, o, np.zeros(50)))


def _quartet():
    """Four single-line parts over 32 beats: the first violin (the tune, on top) plays a
    double stop every fourth beat, the inner parts every eighth, so the cello (one note
    a beat, never two) is the most monophonic part."""
    beats = np.arange(32.0)
    on, pitch, trk = [], [], []
    for part, base in ((0, 76), (1, 69), (2, 62), (3, 48)):
        on.append(beats)
        pitch.append(base + (beats % 5) * (2 if part == 0 else 1))
        trk.append(np.full(beats.size, part))
    for part, every, low in ((0, 4, 70), (1, 8, 64), (2, 8, 57)):  # the double stops
        on.append(beats[::every])
        pitch.append(np.full(beats[::every].size, float(low)))
        trk.append(np.full(beats[::every].size, part))
    on, pitch, trk = (np.concatenate(x) for x in (on, pitch, trk))
    o = np.lexsort((-pitch, on))
    return on[o], np.full(on.size, 1.0), pitch[o].astype(np.int64), trk[o]


def test_an_ensemble_of_single_lines_leads_with_its_top_line_not_its_bass():
    on, dur, pitch, trk = _quartet()
    lead, second = F.lead_masks(trk, on, pitch)
    assert lead.all()  # the skyline of every part instead of the cello ...
    np.testing.assert_array_equal(second, trk == 1)  # ... and the runner-up to the cello as before
    f = F.features_from_notes(on, dur, pitch, trk)
    violin = np.unique(np.stack([on[trk == 0], pitch[trk == 0]]), axis=1)
    top = violin[:, np.r_[np.diff(violin[0]) > 0, True]]  # its upper note where it has two
    np.testing.assert_array_equal(f["melody_pitch"], top[1])
    v2 = np.unique(np.stack([on[trk == 1], pitch[trk == 1]]), axis=1)
    np.testing.assert_array_equal(f["second_pitch"], v2[1, np.r_[np.diff(v2[0]) > 0, True]])
    got, got2 = F.lead_masks_groups(trk, on, pitch, np.array([0, on.size]))
    np.testing.assert_array_equal(got, lead)
    np.testing.assert_array_equal(got2, second)
    # the most monophonic part is not the lowest (the cello written an octave above the
    # viola): it leads, as in any piece
    up = np.where(trk == 3, pitch + 24, pitch)
    lead, second = F.lead_masks(trk, on, up)
    np.testing.assert_array_equal(lead, trk == 3)
    np.testing.assert_array_equal(second, trk == 1)
    got, got2 = F.lead_masks_groups(trk, on, up, np.array([0, on.size]))
    np.testing.assert_array_equal(got, lead)
    np.testing.assert_array_equal(got2, second)
    # two single lines beside a part of chords (first violin and viola in one track):
    # no ensemble, the most monophonic line leads (the cello) and the other is second
    t2 = np.where(trk == 2, 0, trk)
    lead, second = F.lead_masks(t2, on, pitch)
    np.testing.assert_array_equal(lead, t2 == 3)
    np.testing.assert_array_equal(second, t2 == 1)


def _melody_and_chords(melody_on_top: bool):
    """16 bars: a monophonic tune (track 0, one note a beat) and block chords on every
    other beat (track 1), the chords above the tune or below it."""
    on = np.arange(64, dtype=np.float64)
    tune = 60 + np.array([0, 2, 4, 5, 7, 5, 4, 2])[np.arange(64) % 8]
    c_on = np.repeat(on[::2], 3)
    chords = np.tile([48, 52, 55], 32) + (24 if not melody_on_top else 0)
    return (np.concatenate([on, c_on]), np.ones(64 + c_on.size), np.concatenate([tune, chords]),
            np.concatenate([np.zeros(64, np.int64), np.ones(c_on.size, np.int64)]))


def test_the_third_line_is_the_top_of_all_notes_where_the_lead_track_is_not():
    """The third line is the skyline of all notes when the lead line is one track's and
    is not that skyline already; a batch gives what each piece gives alone, the lines
    that equal their lead line left empty there too."""
    under_on, under_dur, under_p, under_trk = _melody_and_chords(melody_on_top=False)
    f = F.features_from_notes(under_on, under_dur, under_p, under_trk)
    np.testing.assert_array_equal(f["melody_pitch"], under_p[:64])  # the tune leads ...
    want_p, want_on = F.skyline(under_on, under_dur, under_p)
    np.testing.assert_array_equal(f["third_pitch"], want_p)  # ... and the chords' top is the third line
    np.testing.assert_array_equal(f["third_onset_beats"], want_on)
    assert (f["third_pitch"] == 79).sum() >= 16 and f["third_pitch"].max() == 79  # the chords' top notes
    top = F.features_from_notes(*_melody_and_chords(melody_on_top=True))
    assert top["melody_pitch"].size == 64 and top["third_pitch"].size == 0  # the tune is the top already
    one = F.features_from_notes(under_on, under_dur, under_p, np.zeros(under_p.size, np.int64))
    assert one["third_pitch"].size == 0  # one track: the lead line is the skyline of all notes
    # a batch of the three, in note order, against each piece alone
    pieces = [("a", _melody_and_chords(False)), ("b", _melody_and_chords(True)),
              ("c", (under_on, under_dur, under_p, np.zeros(under_p.size, np.int64)))]
    cols = {k: [] for k in ("piece_id", "track_index", "onset_beats", "duration_beats", "pitch")}
    alone = []
    for pid, (on, dur, pitch, trk) in pieces:
        o = np.lexsort((trk, pitch, on))
        part = {"track_index": trk[o], "onset_beats": on[o], "duration_beats": dur[o], "pitch": pitch[o]}
        alone.append(vectors.compute_one(pid, {**part, "part": F.note_parts(trk[o], 0)})[0])
        cols["piece_id"] += [pid] * on.size
        for k, v in part.items():
            cols[k].append(v)
    notes = pa.table({"piece_id": cols["piece_id"], "track_index": np.concatenate(cols["track_index"]).astype(np.int32),
                      "onset_beats": np.concatenate(cols["onset_beats"]),
                      "duration_beats": np.concatenate(cols["duration_beats"]),
                      "pitch": np.concatenate(cols["pitch"]).astype(np.int16),
                      "channel": np.zeros(len(cols["piece_id"]), np.int16)})
    feats, _ = vectors.compute(notes)
    assert feats.equals(pa.concat_tables(alone))
    assert [len(x) for x in feats.column("third_pitch").to_pylist()] == [want_p.size, 0, 0]


def test_pairs_and_distinct_onsets_equal_the_sorting_forms():
    rng = np.random.default_rng(8)
    g = np.sort(rng.integers(0, 50, 3000))
    key = g * 6 + rng.integers(0, 6, 3000)
    q = np.concatenate([np.sort(rng.integers(0, 40, (g == k).sum())) for k in range(50)])
    for n_keys in (300, 10 ** 6):  # a count of each key; np.unique
        pairs, inv, n = F._pairs_of(key, n_keys)
        want = np.unique(key, return_inverse=True, return_counts=True)
        for x, y in zip((pairs, inv, n), want):
            np.testing.assert_array_equal(x, y)
    pq = np.unique(inv * 40 + q)
    want = np.bincount(pq // 40, minlength=pairs.size)
    np.testing.assert_array_equal(F._distinct_onsets(inv, q, g, pairs.size), want)
    np.testing.assert_array_equal(F._distinct_onsets_sorted(inv, q, pairs.size), want)


def test_note_order_is_the_arrow_sort_on_the_five_keys():
    # shuffled notes with ties (one pitch at one onset in two tracks, repeated rows), ids
    # whose byte order is not their first-seen order, several chunks; note indexes too
    # wide to pack, and a null pitch, take the Arrow sort itself
    rng = np.random.default_rng(9)
    n = 3000
    cols = {
        "piece_id": rng.choice(["b", "a", "ab", "é", "Z", "a0"], n),
        "track_index": rng.integers(0, 4, n).astype(np.int32),
        "note_index": rng.integers(0, 50, n).astype(np.int32),
        "onset_beats": rng.integers(0, 20, n) / 4.0,
        "duration_beats": np.ones(n),
        "pitch": rng.integers(60, 64, n).astype(np.int16),
    }
    t = pa.table(cols)
    t = pa.concat_tables([t.slice(0, 1000), t.slice(1000)])
    big = pa.array(rng.integers(0, 2 ** 31 - 1, n).astype(np.int32))
    wide = t.set_column(1, "track_index", big).set_column(2, "note_index", big)
    null = t.set_column(5, "pitch", pa.array([None] + list(cols["pitch"][1:]), pa.int16()))
    for tbl in (t, wide, null):
        assert vectors._note_order(tbl).equals(pc.sort_indices(tbl, sort_keys=vectors.NOTE_ORDER))
    ids, offsets = vectors._piece_runs(vectors.in_note_order(t).column("piece_id"))
    assert list(ids) == sorted(set(cols["piece_id"]), key=lambda s: s.encode())
    np.testing.assert_array_equal(np.diff(offsets), [np.sum(cols["piece_id"] == p) for p in ids])


def test_row_peak_division_is_numpys():
    # the beat chroma's frames divided by their maximum where it is > 0: silent frames,
    # one NaN, values that do not divide exactly
    rng = np.random.default_rng(10)
    x = rng.random((500, 12)) * rng.choice([0.0, 1e-300, 1.0, 3.0, 1e300], (500, 1))
    x[7, 4] = np.nan
    x[8, :6] = 0.0
    peak = x.max(axis=1, keepdims=True)
    want = x.copy()
    np.divide(want, peak, out=want, where=peak > 0)
    got = F._by_row_peak_f32(x)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.int32), want.astype(np.float32).view(np.int32))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shuffled", [False, True])
def test_bass_line_groups_equal_bass_line(seed, shuffled):
    """Random pieces (ties at one onset, held notes, empty pieces), notes grouped by piece
    in onset order as the vectors stage gives them (no sort needed), or shuffled within
    each piece (sorted first): the batch form is the one-piece form."""
    rng = np.random.default_rng(seed)
    on, dur, pitch, _trk, off = _random_groups(rng, 40)
    if shuffled:
        o = np.concatenate([a + rng.permutation(b - a) for a, b in zip(off[:-1], off[1:])])
        on, dur, pitch = on[o], dur[o], pitch[o]
        assert (np.diff(on) < 0).any()
    bass, b_off = F.bass_line_groups(on, dur, pitch, off)
    assert bass.dtype == np.int8 and b_off.shape == (41,)
    assert (np.diff(b_off)[np.diff(off) == 0] == 0).all()
    for g in range(40):
        a, b = off[g], off[g + 1]
        np.testing.assert_array_equal(bass[b_off[g]:b_off[g + 1]], F.bass_line(on[a:b], dur[a:b], pitch[a:b]))


def test_a_database_of_a_previous_version_gets_the_bass_and_second_lines(tmp_path):
    """A database from before the bass line and the second and third melody lines (no
    bass_pc, second_*, third_* columns, rows of vectors-5): the migrations add the
    columns (NULL), and `atlas reindex` redoes the stage's pieces, which then hold what
    a new build holds."""
    from atlas_db.connection import reading, writing
    from ingest.derived import run_stages

    song = pop909_songs(1)[0]
    db = tmp_path / "db"
    ingest_paths([str(song)], db, workers=1)
    with reading(db) as con:
        want = con.execute("SELECT * FROM cover_features ORDER BY piece_id").fetchall()
    with writing(db) as con:
        for col in ("third_onset_beats", "third_pitch", "second_onset_beats", "second_pitch", "bass_pc"):
            con.execute(f"ALTER TABLE cover_features DROP COLUMN {col}")
        con.execute("DELETE FROM schema_migrations WHERE name IN ('0402_vectors_bass_pc', '0403_vectors_second_line', "
                    "'0404_vectors_third_line')")
        con.execute("UPDATE cover_features SET stage_version = 'vectors-5'")
        con.execute("UPDATE derived_runs SET stage_version = 'vectors-5' WHERE stage = 'vectors'")
    # the search runs on it before and after a writer migrates it, and `atlas covers`
    # says once, on stderr, what to run
    cli = [sys.executable, "-c", "from query.cli import main; main()", "covers", want[0][0], "--top", "1",
           "--db", str(db)]
    for migrated in (False, True):
        if migrated:
            with writing(db) as con:  # a writer brings the schema up to date
                assert con.execute("SELECT count(*) FROM cover_features WHERE bass_pc IS NULL AND second_pitch IS "
                                   "NULL AND second_onset_beats IS NULL AND third_pitch IS NULL AND "
                                   "third_onset_beats IS NULL").fetchone()[0] == len(want)
        out = subprocess.run(cli, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert f"note: {len(want)} pieces in {db} were indexed by an older version" in out.stderr
        assert "atlas reindex --vectors" in out.stderr and "note:" not in out.stdout
    assert run_stages(db, only=["vectors"]) == {"vectors": 0}  # ingestion leaves old versions alone
    assert run_stages(db, only=["vectors"], redo_old_versions=True) == {"vectors": len(want)}
    with reading(db) as con:
        assert con.execute("SELECT * FROM cover_features ORDER BY piece_id").fetchall() == want
    out = subprocess.run(cli, capture_output=True, text=True)
    assert out.returncode == 0 and "note:" not in out.stderr, out.stderr
    assert {r[-6] for r in want} == {vectors.VERSION}
    # rows of a version before the ensemble rule (vectors-7) with every column: still
    # told, since an ensemble's lead line may have been its bass
    with writing(db) as con:
        con.execute("UPDATE cover_features SET stage_version = 'vectors-7'")
    out = subprocess.run(cli, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"note: {len(want)} pieces in {db} were indexed by an older version" in out.stderr


def test_a_type0_file_keeps_its_lead_part_by_channel(tmp_path):
    """A tune (channel 0) under held chords above it (channel 1), written as a file of one
    track per part and as a type-0 file of the same notes (one track, the parts told
    apart by channel, as ``mido.merge_tracks`` makes it): both store the tune as the lead
    line and the chords' top line as the third line, and both give a query that tune as
    its melody. The lead rule reads (track, channel) parts (``indexers.features.note_parts``);
    by tracks alone the type-0 file would have no lead track, and its lead line would be
    the chords' top."""
    import mido

    from atlas_db.connection import reading
    from midi_fixtures import Track, melody, write_midi
    from query.covers import query_from_file

    rng = np.random.default_rng(7)
    tune = [int(x) for x in 60 + np.cumsum(rng.choice([-2, -1, 1, 2], 48)) % 12]
    chords = [(p, 2.0 * c, 2.0, 70) for c in range(24) for p in (76 + c % 5, 79 + c % 5, 83 + c % 5)]
    type1 = write_midi(tmp_path / "in" / "parts.mid", [Track(melody(tune), name="tune", channel=0),
                                                       Track(chords, name="chords", channel=1)])
    mf = mido.MidiFile(type1)
    merged = mido.MidiFile(type=0, ticks_per_beat=mf.ticks_per_beat)
    merged.tracks.append(mido.merge_tracks(mf.tracks))
    type0 = tmp_path / "in" / "type0.mid"
    merged.save(type0)
    assert len(mido.MidiFile(type0).tracks) == 1
    db = tmp_path / "db"
    ingest_paths([str(type1), str(type0)], db, workers=1)
    with reading(db) as con:
        rows = con.execute("SELECT p.path, c.melody_pitch, c.third_pitch FROM cover_features c "
                           "JOIN pieces p USING (piece_id) ORDER BY p.path").fetchall()
    assert [r[0].rsplit("/", 1)[-1] for r in rows] == ["parts.mid", "type0.mid"]
    (_, lead1, third1), (_, lead0, third0) = rows
    want = F.skyline(np.arange(48.0), np.ones(48), np.asarray(tune))[0]
    np.testing.assert_array_equal(lead1, want)  # the tune leads, in both files
    np.testing.assert_array_equal(lead0, want)
    assert third0 == third1 and len(third0) > 20 and min(third0) >= 79  # the chords' top
    for path in (type1, type0):
        np.testing.assert_array_equal(query_from_file(path).melody_pitch, want)
    # by tracks alone the type-0 file's only part is every note: its skyline, mostly chords
    n = len(tune) + len(chords)
    on = np.concatenate([np.arange(48.0), [c[1] for c in chords]])
    pitch = np.concatenate([tune, [c[0] for c in chords]])
    by_track = F.features_from_notes(on, np.ones(n), pitch, np.zeros(n, np.int64))["melody_pitch"]
    assert (by_track >= 79).sum() > by_track.size / 2 and by_track.size != want.size
