"""Stem separation on the GPU and on the CPU: does ``ingest.stems.separate`` run on a GPU
with a full-size model, give the CPU's answer, and how fast is each?

    python benchmarks/stems_device.py                  # 30 s of audio, GPU (if torch sees one) and CPU
    python benchmarks/stems_device.py --seconds 10 --model demucs

No weights can be downloaded here, so the model is the published ``htdemucs``
architecture (``demucs.htdemucs.HTDemucs`` with its default sizes, 4 sources), the
``hdemucs`` one (``demucs.hdemucs.HDemucs``, v3) or the older ``demucs`` one,
**randomly initialised** (seed 0), saved as a
Demucs model package and loaded by ``ingest.stems.load_model`` as a configured model
would be. Its stems mean nothing; what is measured is the path and its cost: the same
call ``separate(model, audio, sr)`` on the GPU (``separate`` picks it when torch sees
one) and then, in a child process with ``CUDA_VISIBLE_DEVICES`` empty, on the CPU; the
two outputs are compared (largest difference, and that relative to the stems' RMS).
The audio is a 44.1 kHz stereo mix of tones and noise bursts (the model's own rate:
no resampling, which needs soxr).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SOURCES = ["drums", "bass", "other", "vocals"]


def make_model(kind: str, path: Path) -> int:
    """Save a randomly initialised model package at ``path``; its parameter count."""
    import torch

    torch.manual_seed(0)
    if kind == "htdemucs":
        from demucs.htdemucs import HTDemucs as klass
    elif kind == "hdemucs":
        from demucs.hdemucs import HDemucs as klass
    else:
        from demucs.demucs import Demucs as klass
    model = klass(sources=SOURCES)
    args, kwargs = model._init_args_kwargs
    torch.save({"klass": klass, "args": args, "kwargs": kwargs, "state": model.state_dict(),
                "training_args": {}}, path)
    return sum(p.numel() for p in model.parameters())


def tone_mix(seconds: float, sr: int = 44100) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    left = 0.3 * np.sin(2 * np.pi * 110 * t) + 0.2 * np.sin(2 * np.pi * 440 * t)
    bursts = (np.sin(2 * np.pi * 2 * t) > 0.95) * rng.normal(0, 0.3, t.size)
    right = 0.3 * np.sin(2 * np.pi * 165 * t) + 0.2 * np.sin(2 * np.pi * 660 * t)
    return np.stack([left + bursts, right + bursts], 1).astype(np.float32)


def run_once(model_path: str, seconds: float, out_npy: str) -> dict:
    """Load and separate (a warm-up call on 2 s first), in this process; the timings."""
    import torch

    from ingest.stems import load_model, separate

    t0 = time.perf_counter()
    model = load_model(model_path)
    t_load = time.perf_counter() - t0
    sr = int(model.samplerate)
    separate(model, tone_mix(2.0, sr), sr)  # warm-up: CUDA context, cuDNN plans
    mix = tone_mix(seconds, sr)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    stems = separate(model, mix, sr)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t_sep = time.perf_counter() - t0
    np.save(out_npy, np.stack([stems[s] for s in SOURCES]))
    return {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)",
            "load_s": t_load, "separate_s": t_sep, "audio_s": seconds,
            "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2 ** 20 if torch.cuda.is_available() else None}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="length of the test mix (default 30)")
    ap.add_argument("--model", choices=["htdemucs", "hdemucs", "demucs"], default="htdemucs")
    ap.add_argument("--cpu", action="store_true", help="the CPU arm only")
    ap.add_argument("--no-tf32", action="store_true",
                    help="GPU arm in full float32 (torch's TF32 convolutions and matmuls off)")
    ap.add_argument("--_child", nargs=2, metavar=("MODEL", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        if args.no_tf32:
            import torch

            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        print(json.dumps(run_once(args._child[0], args.seconds, args._child[1])))
        return
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_path = tmp / f"random_{args.model}.th"
        n_params = make_model(args.model, model_path)
        print(f"model: {args.model} architecture, randomly initialised, {n_params / 1e6:.1f}M parameters; "
              f"torch {torch.__version__}; audio: {args.seconds:g} s stereo 44.1 kHz"
              + ("; GPU without TF32" if args.no_tf32 else ""))
        results, failed = {}, False
        arms = [("cpu", {"CUDA_VISIBLE_DEVICES": ""})]
        if torch.cuda.is_available() and not args.cpu:
            arms.insert(0, ("gpu", {}))
        for name, env in arms:
            out = tmp / f"{name}.npy"
            cmd = [sys.executable, __file__, "--seconds", str(args.seconds), "--_child", str(model_path), str(out)]
            p = subprocess.run(cmd + (["--no-tf32"] if args.no_tf32 else []), env={**os.environ, **env},
                               capture_output=True, text=True)
            if p.returncode:
                print(f"{name}: failed\n{p.stderr[-3000:]}")
                failed = True
                continue
            r = json.loads(p.stdout.strip().splitlines()[-1])
            r["stems"] = np.load(out)
            results[name] = r
            peak = f", peak GPU memory {r['peak_gpu_mib']:.0f} MiB" if r["peak_gpu_mib"] else ""
            print(f"{name}: {r['device']}: load {r['load_s']:.2f} s, separate {r['separate_s']:.2f} s "
                  f"({r['audio_s'] / r['separate_s']:.1f}x real time){peak}; stems {r['stems'].shape}, "
                  f"finite {bool(np.isfinite(r['stems']).all())}")
        if "gpu" in results and "cpu" in results:
            g, c = results["gpu"]["stems"], results["cpu"]["stems"]
            rms = float(np.sqrt(np.mean(c.astype(np.float64) ** 2)))
            diff = float(np.abs(g - c).max())
            print(f"gpu vs cpu: largest difference {diff:.2e} ({diff / rms:.2e} of the stems' RMS {rms:.3f}); "
                  f"speed-up {results['cpu']['separate_s'] / results['gpu']['separate_s']:.1f}x")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
