"""Audio analysis speed on fluidsynth renders of POP909 songs.

    .venv/bin/python benchmarks/audio.py [N_SONGS]   (default 3)

Per song (rendered from its MIDI with TimGM6mb), measured in CPU seconds of this process
and all its threads (time.process_time), so "x real time per core" = audio seconds /
CPU seconds:

- decode (soundfile + resampling to 44.1 kHz stereo): the baseline;
- features (ingest.audio.analyse: every catalogue feature + beat chroma);
- transcription with our wrapper (ingest.transcribe: in-memory audio, ONNX in batches
  of 8 windows) next to basic-pitch's own ``predict()`` on the same file, in the same
  run: seconds per minute of audio, and the ratio;
- the whole per-file ingest job (ingest.audio.parse_audio).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "harmony-atlas" / "numba"))

import numpy as np  # noqa: E402

from audio_fixtures import fluidsynth_missing, render_midi  # noqa: E402


def cpu(fn, *args, **kw):
    t0 = time.process_time()
    out = fn(*args, **kw)
    return out, time.process_time() - t0


def main():
    n_songs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    missing = fluidsynth_missing()
    if missing:
        print(f"skipped: {missing}")
        return
    from ingest.audio import analyse, decode, parse_audio, to_analysis_rate
    from ingest.transcribe import _basic_pitch, transcribe

    os.environ["ATLAS_DEMUCS_MODEL"] = ""
    os.environ["ATLAS_DESCRIBE_MODEL"] = ""
    pop = ROOT.parent / "shared" / "data" / "pop909-dev"
    songs = sorted(p for p in pop.iterdir() if p.is_dir())[:n_songs]
    bp, _, _ = _basic_pitch()
    from basic_pitch import inference

    print(f"{len(songs)} POP909 songs rendered with fluidsynth/TimGM6mb, {os.cpu_count()} cores; CPU seconds")
    tot = {k: 0.0 for k in ("audio", "decode", "features", "ours", "theirs", "parse")}
    with tempfile.TemporaryDirectory() as tmp:
        # Warm-up: imports, numba/essentia/onnx initialisation are not what is measured.
        warm = render_midi(songs[0] / f"{songs[0].name}.mid", Path(tmp) / "warm.wav")
        st = to_analysis_rate(decode(warm.read_bytes(), "warm.wav"))[: 44100 * 5]
        analyse(st)
        transcribe(st.mean(1), 44100)
        root = logging.getLogger()
        for song in songs:
            wav = render_midi(song / f"{song.name}.mid", Path(tmp) / f"{song.name}.wav")
            data = wav.read_bytes()
            (dec, t_dec) = cpu(decode, data, str(wav))
            stereo, t_res = cpu(to_analysis_rate, dec)
            t_dec += t_res
            a, t_feat = cpu(analyse, stereo)
            notes, t_ours = cpu(transcribe, stereo.mean(1), 44100)
            level = root.level
            root.setLevel(logging.ERROR)
            with warnings.catch_warnings(), open(os.devnull, "w") as devnull:
                warnings.simplefilter("ignore")
                saved, sys.stdout = sys.stdout, devnull  # predict() prints "Predicting MIDI for ..."
                try:
                    (_, _, theirs), t_theirs = cpu(inference.predict, str(wav), bp.ICASSP_2022_MODEL_PATH)
                finally:
                    sys.stdout = saved
            root.setLevel(level)
            _, t_parse = cpu(parse_audio, data, piece_id="bench", path=str(wav))
            secs = dec.duration_s
            for k, v in zip(tot, (secs, t_dec, t_feat, t_ours, t_theirs, t_parse)):
                tot[k] += v
            print(
                f"  {song.name}: {secs:6.1f} s audio | decode {secs / t_dec:7.1f}x RT | features {secs / t_feat:6.1f}x RT"
                f" | transcription {t_ours / secs * 60:5.2f} s/min ({len(notes)} notes) vs basic-pitch predict()"
                f" {t_theirs / secs * 60:5.2f} s/min ({len(theirs)} notes) | whole file job {secs / t_parse:5.1f}x RT"
            )
    a = tot["audio"]
    print(f"features:      {a / tot['features']:.1f}x real time per core "
          f"(baseline decode+resample {a / tot['decode']:.1f}x; features cost {tot['features'] / tot['decode']:.1f}x decoding)")
    print(f"transcription: {tot['ours'] / a * 60:.2f} CPU s per minute of audio "
          f"(basic-pitch predict() on the same files: {tot['theirs'] / a * 60:.2f} s/min; ratio {tot['theirs'] / tot['ours']:.2f}x)")
    print(f"whole per-file ingest job (decode, features, transcription; no stems/descriptions): "
          f"{a / tot['parse']:.1f}x real time per core")


if __name__ == "__main__":
    main()
