"""Stem separation with Demucs, when its weights are on disk.

The model is a Demucs package file (``.th``: the dict ``{klass, args, kwargs, state}``
that ``demucs.states.serialize_model`` writes and that the published single models,
e.g. ``htdemucs``/``hdemucs_mmi``, are distributed as), named by ``ATLAS_DEMUCS_MODEL``
or ``[audio] demucs_model`` in the config file (see ``ingest.audio_config``). It is
loaded with ``demucs.states.load_model`` and applied with ``demucs.apply.apply_model``
on the CPU (or the GPU when torch sees one). Nothing is ever downloaded: without a
configured model, ingestion goes on without stems (one note per ingest run says so).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np

from atlas_db.errors import MissingModelError

__all__ = ["load_model", "separate", "separate_if_configured", "check_configured_model"]

_CACHE: dict[str, object] = {}


def load_model(path) -> object:
    """Load (once per process) the Demucs model package at ``path``.

    Raises MissingModelError (one line) if the file is absent or is not a Demucs model.
    """
    path = Path(path)
    key = str(path.resolve()) if path.exists() else str(path)
    if key in _CACHE:
        return _CACHE[key]
    if not path.is_file():
        raise MissingModelError(f"{path}: Demucs model file not found")
    try:
        import torch  # noqa: F401
        from demucs.states import load_model as demucs_load
    except ImportError as e:
        raise MissingModelError(f"{path}: demucs/torch are not installed ({e.name}); pip install 'harmony-atlas[audio]'") from None
    try:
        model = demucs_load(str(path))
    except Exception as e:
        raise MissingModelError(f"{path}: not a Demucs model package ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not hasattr(model, "sources") or not hasattr(model, "samplerate"):
        raise MissingModelError(f"{path}: not a Demucs model (no sources/samplerate)")
    model.eval()
    _CACHE[key] = model
    return model


def separate(model, stereo: np.ndarray, sr: int) -> dict[str, np.ndarray]:
    """Separate float32 stereo audio (n, 2) at ``sr`` into the model's sources.

    Returns {source name: float32 (n, 2) at ``sr``}. Normalisation as in
    ``demucs.separate``: the mix is standardised, the stems scaled back.
    """
    import torch
    from demucs.apply import apply_model

    x = stereo.T.astype(np.float32)  # (2, n)
    msr = int(model.samplerate)
    if msr != sr:
        import soxr

        x = soxr.resample(x.T, sr, msr, quality="HQ").T.astype(np.float32)
    channels = int(getattr(model, "audio_channels", 2))
    if channels == 1:
        x = x.mean(0, keepdims=True)
    wav = torch.from_numpy(np.ascontiguousarray(x))
    ref = wav.mean(0)
    mean, std = ref.mean(), ref.std()
    std = std if float(std) > 1e-8 else torch.tensor(1.0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.no_grad(), _real_edge_bins():
        out = apply_model(model, ((wav - mean) / std)[None], shifts=0, split=True, overlap=0.25,
                          progress=False, device=device)[0]
    out = (out * std + mean).cpu().numpy()
    stems = {}
    for name, y in zip(model.sources, out):
        y = y if y.shape[0] == 2 else np.repeat(y[:1], 2, axis=0)
        y = y.T
        if msr != sr:
            import soxr

            y = soxr.resample(y, msr, sr, quality="HQ")
        stems[name] = np.ascontiguousarray(y[: stereo.shape[0]], dtype=np.float32)
    return stems


def check_configured_model() -> str | None:
    """None if no model is configured or it loads; else a one-line reason."""
    from ingest.audio_config import model_path

    p = model_path("demucs_model")
    if p is None:
        return None
    try:
        load_model(p)
    except MissingModelError as e:
        return str(e)
    return None


def separate_if_configured(stereo: np.ndarray, sr: int) -> tuple[dict | None, str | None]:
    """(stems, model file name) when a usable model is configured, else (None, None)."""
    from ingest.audio_config import model_path

    p = model_path("demucs_model")
    if p is None or not p.is_file():
        return None, None
    try:
        model = load_model(p)
    except MissingModelError:
        return None, None  # reported once per run by ingest.audio_config.startup_notes
    return separate(model, stereo, sr), p.name


def real_edge_bins(z):
    """A one-sided spectrum (complex [..., freqs, frames]) with the imaginary parts of its
    DC and Nyquist bins set to 0, as a real signal's are: what a real inverse FFT of it
    means anyway (the real part of the full inverse transform does not depend on them)."""
    import torch

    edge = torch.zeros(z.shape[-2], 1, dtype=torch.bool, device=z.device)
    edge[0] = edge[-1] = True
    return torch.where(edge, z.real.to(z.dtype), z)


@contextmanager
def _real_edge_bins():
    """While a hybrid Demucs model (``htdemucs``, ``hdemucs``) runs: its inverse STFT gets
    spectra whose DC and Nyquist bins are real (``real_edge_bins``). Its network leaves an
    imaginary part in the DC bin; the CPU's inverse FFT ignores it, and so does CUDA's in
    float64, but CUDA's float32 ``torch.istft`` uses it (pytorch/pytorch#154496): an
    ``htdemucs``'s stems on an H200 differed from the CPU's by 1.5e-2 of their RMS, from
    that step alone (docs/audio.md, "Stems on a GPU"). The patch is of demucs' module
    globals, so process-wide while it lasts; it only ever wraps the true ``ispectro``."""
    import demucs.hdemucs
    import demucs.htdemucs
    import demucs.spec

    original = demucs.spec.ispectro

    def ispectro(z, *args, **kwargs):
        return original(real_edge_bins(z), *args, **kwargs)

    demucs.hdemucs.ispectro = demucs.htdemucs.ispectro = ispectro
    try:
        yield
    finally:
        demucs.hdemucs.ispectro = demucs.htdemucs.ispectro = original
