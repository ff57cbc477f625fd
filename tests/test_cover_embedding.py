"""The learned cover embedding measured as a cover-search signal
(benchmarks/cover_embedding_model.py; docs/covers-history.md, "The learned embedding"): its
chroma roll, its key invariance by construction, its window embeddings and the message
for missing weights."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

# loaded by path: benchmarks/ on sys.path would shadow packages (benchmarks/tui.py, ...)
_spec = importlib.util.spec_from_file_location(
    "cover_embedding_model", Path(__file__).resolve().parents[1] / "benchmarks" / "cover_embedding_model.py")
_m = importlib.util.module_from_spec(_spec)
sys.modules["cover_embedding_model"] = _m
_spec.loader.exec_module(_m)


def _passage(seed=0, n=120):
    rng = np.random.default_rng(seed)
    on = np.sort(rng.uniform(0, 40, n))
    return on, rng.uniform(0.25, 2.0, n), rng.integers(40, 90, n)


def test_roll_places_onsets_sounding_notes_and_outer_voices():
    # C4 for 1.2 beats at beat 0 with E4 (0.4 beats) above it; G3 alone at beat 2
    x = _m.roll([0.0, 0.0, 2.0], [1.2, 0.4, 0.5], [60, 64, 55])
    assert x.shape == (4, 12, int(2.0 // _m.STEP_BEATS) + 1)
    assert x[0, 0, 0] == pytest.approx(np.log(2)) and x[0, 4, 0] == pytest.approx(np.log(2))
    assert x[0, 7, 4] == pytest.approx(np.log(2)) and x[0].sum() == pytest.approx(3 * np.log(2))
    # C sounds through frames 0-2 (0..1.2 beats), E in frame 0 only
    assert x[1, 0, :3].tolist() == [1, 1, 1] and x[1, 0, 3] == 0 and x[1, 4, :].tolist()[:2] == [1, 0]
    # highest note of the first onset is E, lowest C; at beat 2 G is both
    assert x[2, 4, 0] == 1 and x[2, 0, 0] == 0 and x[3, 0, 0] == 1 and x[3, 4, 0] == 0
    assert x[2, 7, 4] == 1 and x[3, 7, 4] == 1


def test_embedding_is_key_invariant_by_construction(tmp_path):
    # an untrained network: the invariance comes from the architecture, not from training
    torch.manual_seed(0)
    net = _m.build_net(width=8)
    path = tmp_path / "e.pt"
    torch.save({"config": {"width": 8}, "weights": net.state_dict()}, path)
    model = _m.CoverEmbedding(path)
    on, du, p = _passage()
    e0 = model.embed(on, du, p)
    assert abs(float(np.linalg.norm(e0)) - 1) < 1e-5
    for k in range(1, 12):
        assert np.allclose(model.embed(on, du, p + k), e0, atol=1e-5)
    # another passage is another embedding
    assert not np.allclose(model.embed(*_passage(seed=1)), e0, atol=1e-3)


def test_window_embeddings_are_normalised_window_means():
    rng = np.random.default_rng(3)
    frames = rng.normal(size=(50, _m.DIM)).astype(np.float32)
    w = _m.window_embeddings(frames, 10, 4)
    assert w.shape == (11, _m.DIM)
    for i, s in enumerate(range(0, 41, 4)):
        m = frames[s:s + 10].mean(0)
        assert np.allclose(w[i], m / np.linalg.norm(m), atol=1e-5)
    # a window longer than the piece is the whole piece
    whole = _m.window_embeddings(frames, 80, 4)
    assert whole.shape == (1, _m.DIM) and np.allclose(whole[0], frames.mean(0) / np.linalg.norm(frames.mean(0)),
                                                      atol=1e-5)


def test_missing_weights_say_how_to_make_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_cover_embedding.py"):
        _m.CoverEmbedding(tmp_path / "none.pt")
