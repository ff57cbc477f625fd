"""Audio whose answer is known, for the audio tests and benchmarks/audio.py.

``render_midi`` renders a MIDI file with fluidsynth and the TimGM6mb General MIDI
soundfont (Debian packages ``fluidsynth`` and ``timgm6mb-soundfont``; .ci/run installs
them). The synthesizers below write tones with known pitch, tempo and level.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

SR = 44100
SOUNDFONT = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")


def fluidsynth_missing() -> str | None:
    if shutil.which("fluidsynth") is None:
        return "fluidsynth is not installed (apt-get install fluidsynth timgm6mb-soundfont)"
    if not SOUNDFONT.is_file():
        return f"{SOUNDFONT} is missing (apt-get install timgm6mb-soundfont)"
    return None


def render_midi(midi_path, out_path, *, gain: float = 0.8, sample_rate: int = SR) -> Path:
    """Render ``midi_path`` to ``out_path`` (format from its suffix: .wav, .flac, .ogg)."""
    out_path = Path(out_path)
    subprocess.run(
        ["fluidsynth", "-ni", "-q", "-g", str(gain), "-r", str(sample_rate), "-F", str(out_path),
         str(SOUNDFONT), str(midi_path)],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300,
    )
    return out_path


def sine(freq_hz: float, seconds: float, level_dbfs: float = -12.0, sr: int = SR) -> np.ndarray:
    """A sine whose peak is ``level_dbfs``."""
    t = np.arange(int(seconds * sr)) / sr
    return (10 ** (level_dbfs / 20) * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def click_track(bpm: float, seconds: float, *, sr: int = SR, accent_every: int = 4) -> np.ndarray:
    """Decaying 1 kHz clicks on every beat plus a 60 Hz kick on every ``accent_every``-th
    beat (the downbeats), the first at 0 s."""
    y = np.zeros(int(seconds * sr), np.float32)
    period = 60.0 / bpm
    n = int(seconds / period)
    env = np.exp(-np.arange(int(0.08 * sr)) / (0.012 * sr))
    kick_env = np.exp(-np.arange(int(0.15 * sr)) / (0.05 * sr))
    tt = np.arange(len(env)) / sr
    tk = np.arange(len(kick_env)) / sr
    for i in range(n):
        s = int(round(i * period * sr))
        seg = 0.4 * env * np.sin(2 * np.pi * 1000 * tt)
        if i % accent_every == 0:
            kick = 0.6 * kick_env * np.sin(2 * np.pi * 60 * tk)
            m = min(len(kick), len(y) - s)
            y[s : s + m] += kick[:m]
        m = min(len(seg), len(y) - s)
        y[s : s + m] += seg[:m]
    return y


def write_audio(path, samples: np.ndarray, sr: int = SR) -> Path:
    import soundfile as sf

    path = Path(path)
    sf.write(str(path), samples, sr)
    return path
