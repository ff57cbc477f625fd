"""The learned tune-line probe's classifier (benchmarks/tune_notes_model.py, measured as
a cover-search signal and not kept: docs/covers-history.md, "The learned tune line"): features
that do not depend on key or tempo, and its NumPy forward pass, which must compute what
the trained torch convolution computes."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

# loaded by path: benchmarks/ on sys.path would shadow packages (benchmarks/tui.py, ...)
_spec = importlib.util.spec_from_file_location(
    "tune_notes_model", Path(__file__).resolve().parents[1] / "benchmarks" / "tune_notes_model.py")
_m = importlib.util.module_from_spec(_spec)
sys.modules["tune_notes_model"] = _m  # numba's cache looks the module up by name
_spec.loader.exec_module(_m)
N_FEATURES, TuneNoteModel, note_features, save_weights = _m.N_FEATURES, _m.TuneNoteModel, _m.note_features, \
    _m.save_weights


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


def test_the_numpy_forward_pass_is_torchs_convolution(tmp_path):
    """A randomly initialised stack of dilated Conv1d layers, saved as the training
    script saves them: the NumPy forward pass gives torch's probabilities."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    dil = [1, 2, 4, 1]
    convs = [torch.nn.Conv1d(N_FEATURES if i == 0 else 8, 1 if i == len(dil) - 1 else 8, 5, dilation=d,
                             padding=2 * d) for i, d in enumerate(dil)]
    rng = np.random.default_rng(0)
    mean, std = rng.normal(size=N_FEATURES), rng.uniform(0.5, 2, N_FEATURES)
    save_weights(tmp_path / "m.npz", [(c.weight.detach().numpy(), c.bias.detach().numpy()) for c in convs],
                 dil, mean, std)
    m = TuneNoteModel(tmp_path / "m.npz")
    x = rng.normal(size=(300, N_FEATURES)).astype(np.float32)
    h = torch.tensor((x - m.mean) / m.std).T[None]
    with torch.no_grad():
        for i, c in enumerate(convs):
            h = c(h)
            if i < len(convs) - 1:
                h = torch.relu(h)
    np.testing.assert_allclose(m.probabilities(x), torch.sigmoid(h[0, 0]).numpy(), atol=1e-5)


def test_missing_weights_say_how_to_make_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_tune_notes.py"):
        TuneNoteModel(tmp_path / "none.npz")
