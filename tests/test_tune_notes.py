"""The learned tune line of a one-part query (indexers.tune_notes): features that do not
depend on key or tempo, the shipped weights' NumPy forward pass, and the line it picks
out of merged real and synthetic parts."""

import numpy as np
import pytest

from indexers.tune_notes import N_FEATURES, WEIGHTS, TuneNoteModel, note_features, tune_line


def _melody_over_chords(n_bars=16, seed=0):
    """A stepwise tune (eighths to half notes, MIDI 67-81) over a bass note per bar and
    a block chord on every beat (MIDI 60-76: now and then above the tune):
    (onset_beats, duration_beats, pitch, is_tune)."""
    rng = np.random.default_rng(seed)
    on, du, p, y = [], [], [], []
    t, pitch = 0.0, 72
    while t < 4 * n_bars:
        d = float(rng.choice([1.0, 1.0, 2.0, 0.5]))
        on.append(t)
        du.append(d)
        p.append(pitch)
        y.append(True)
        pitch = int(np.clip(pitch + rng.choice([-2, -1, 1, 2, 3, -3]), 67, 81))
        t += d
    for bar in range(n_bars):
        root = 48 + int(rng.choice([0, 5, 7, 9]))
        on.append(4.0 * bar)
        du.append(4.0)
        p.append(root - 12)
        y.append(False)
        for beat in range(4):
            for iv in (0, 4, 7):
                on.append(4.0 * bar + beat)
                du.append(0.9)
                p.append(root + 12 + iv)
                y.append(False)
    return np.asarray(on), np.asarray(du), np.asarray(p, np.int64), np.asarray(y)


def test_the_features_do_not_depend_on_tempo_and_barely_on_key():
    on, du, p, _ = _melody_over_chords()
    order, f = note_features(on, du, p)
    assert f.shape == (on.size, N_FEATURES) and np.isfinite(f).all()
    # the same notes at 0.73 of the tempo (every time x 1/0.73): identical features
    o2, f2 = note_features(on / 0.73, du / 0.73, p)
    np.testing.assert_array_equal(order, o2)
    np.testing.assert_allclose(f, f2, atol=1e-5)
    # two semitones up: only the register column moves, by 2/24
    o3, f3 = note_features(on, du, p + 2)
    np.testing.assert_array_equal(order, o3)
    np.testing.assert_allclose(f3[:, 0] - f[:, 0], 2 / 24, atol=1e-6)
    np.testing.assert_allclose(f3[:, 1:], f[:, 1:], atol=1e-6)


def test_the_numpy_forward_pass_is_the_trained_convolution():
    """The shipped weights run in NumPy as torch's Conv1d stack did (dilations, padding)."""
    torch = pytest.importorskip("torch")
    m = TuneNoteModel()
    x = np.random.default_rng(0).normal(size=(300, N_FEATURES)).astype(np.float32)
    h = torch.tensor((x - m.mean) / m.std).T[None]
    for i, ((w, b), d) in enumerate(zip(m.layers, m.dilations)):
        h = torch.nn.functional.conv1d(h, torch.tensor(w), torch.tensor(b), dilation=d,
                                       padding=d * (w.shape[2] // 2))
        if i < len(m.layers) - 1:
            h = torch.relu(h)
    np.testing.assert_allclose(m.probabilities(x), torch.sigmoid(h[0, 0]).numpy(), atol=1e-5)


def _skyline_hits(on, du, p, y):
    """(tune notes in the skyline, skyline notes)."""
    from indexers.features import skyline

    sp, so = skyline(on, du, p)
    key = {(float(np.float32(a)), int(b)): bool(c) for a, b, c in zip(on, p, y)}
    hits = [key.get((float(a), int(b)), False) for a, b in zip(so, sp)]
    return sum(hits), len(hits)


def test_the_tune_is_picked_out_of_a_synthetic_merged_part():
    """Four such parts: the notes kept are mostly tune (the skyline's much less so: the
    chords reach above the tune now and then) and most of the tune is kept."""
    tp = kept = n_tune = sky_tp = sky_n = 0
    for seed in range(4):
        on, du, p, y = _melody_over_chords(seed=seed)
        keep = tune_line(on, du, p, 0.3)
        tp, kept, n_tune = tp + (keep & y).sum(), kept + keep.sum(), n_tune + y.sum()
        a, b = _skyline_hits(on, du, p, y)
        sky_tp, sky_n = sky_tp + a, sky_n + b
    assert tp / kept >= 0.8 and tp / kept > sky_tp / sky_n + 0.1, (tp / kept, sky_tp / sky_n)
    assert tp / n_tune >= 0.6, tp / n_tune


def test_the_tune_line_of_merged_real_songs_is_cleaner_than_their_skyline(pop909_dir):
    """POP909 songs with every track merged, re-timed, jittered (benchmark query songs, which
    the model never saw in training): the notes the model keeps are
    more often MELODY notes than the skyline's, and keep most of them."""
    from ingest.midi_parse import read_midi_file

    rng = np.random.default_rng(1)
    tp = kept = sky_tp = sky_n = n_tune = 0
    for song in ("002", "003", "040"):  # songs the model was not trained on
        t = read_midi_file(pop909_dir / song / f"{song}.mid")
        names = dict(zip(t["tracks"].column("track_index").to_pylist(), t["tracks"].column("name").to_pylist()))
        n = t["notes"]
        on = n.column("onset_beats").to_numpy() * 1.13
        on = on + rng.uniform(-0.1, 0.1, on.size)
        du = n.column("duration_beats").to_numpy() * 1.13
        p = n.column("pitch").to_numpy().astype(np.int64) - 3
        y = np.asarray([names[i] == "MELODY" for i in n.column("track_index").to_pylist()])
        keep = tune_line(on, du, p, 0.3)
        tp += int((keep & y).sum())
        kept += int(keep.sum())
        n_tune += int(y.sum())
        a, b = _skyline_hits(on, du, p, y)
        sky_tp, sky_n = sky_tp + a, sky_n + b
    assert tp / kept > sky_tp / sky_n + 0.15, (tp / kept, sky_tp / sky_n)
    assert tp / n_tune >= 0.6, tp / n_tune


def test_missing_weights_say_how_to_make_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_tune_notes.py"):
        TuneNoteModel(tmp_path / "none.npz")
    assert WEIGHTS.exists()
