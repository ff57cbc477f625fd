"""Audio files: decoding and features (bytes in, NumPy/Arrow out).

``decode`` turns file bytes into float samples (libsndfile through soundfile: WAV, FLAC,
MP3, OGG/Vorbis/Opus) and rejects what is not usable audio with a one-line reason.
``analyse`` measures the mix (or a stem): tempo and beats, onsets, loudness (EBU R128),
spectral shape, 4-band RMS, per-beat HPCP chroma, key, rhythmic complexity,
syncopation, danceability, dynamic complexity. The DSP is essentia's, pyloudnorm's and
scipy's; what this module adds is only the glue and the few statistics that no library
provides (IOI entropy, anticipation-syncopation, harmonic movement, downbeat phase).
``parse_audio`` runs the whole per-file job (decode, features, stems, transcription,
description) and returns the Arrow tables of one piece.

All analysis runs at 44.1 kHz (what essentia's rhythm and loudness algorithms expect);
frames are 4096 samples with a 2048-sample hop (46 ms).
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from atlas_db.errors import IngestError, MissingModelError

__all__ = [
    "ANALYSIS_VERSION", "SR", "Decoded", "Analysis", "decode", "to_analysis_rate", "analyse", "analyse_stem",
    "feature_rows", "parse_audio", "SILENCE_DBFS", "notes_from_audio_file", "audio_query_parts",
]

ANALYSIS_VERSION = "audio-2"  # audio-2: mono loudness, the file's own peak, flatness below 10 kHz
SR = 44100
FRAME = 4096
HOP = 2048
# A file whose peak is below this is silent (no analysable signal).
SILENCE_DBFS = -90.0
# Shorter than this cannot carry a beat or a key.
MIN_SECONDS = 1.0
# The spectral flatness is measured up to here, or to 0.9 x the file's own Nyquist
# frequency if lower (the resampler's filter rolls off below it): above a lossy codec's
# cutoff (~16 kHz for MP3, OGG) or a 22.05 kHz file's Nyquist frequency the resampled
# spectrum is empty, and its near-zero bins took the geometric mean, so white noise read
# 0.56 from a 44.1 kHz WAV, 0.0003 at 22.05 kHz and 0.02 as an MP3.
FLATNESS_MAX_HZ = 10000.0
BANDS = {"bass": (20.0, 150.0), "body": (150.0, 800.0), "mid": (800.0, 4000.0), "air": (4000.0, 20000.0)}
_PC_NAMES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]


@dataclass
class Decoded:
    samples: np.ndarray  # float32, shape (n_frames, n_channels), in [-1, 1]
    sample_rate: int
    format: str  # libsndfile's name for it: 'WAV', 'FLAC', 'MP3', 'OGG', ...

    @property
    def duration_s(self) -> float:
        return self.samples.shape[0] / self.sample_rate

    @property
    def n_channels(self) -> int:
        return self.samples.shape[1]


MAX_PEAK = 16.0  # +24 dBFS: float overshoot seen in real mixes stays far below


def decode(data: bytes, path: str, *, max_seconds: float | None = None) -> Decoded:
    """Decode audio file bytes; raises IngestError (one-line reason) for unusable files.

    Empty, undecodable, truncated (fewer frames than the header announces), too short
    (< 1 s), too long (> ``max_seconds``, checked from the header before decoding),
    silent (peak below -90 dBFS) and absurdly loud (peak above ``MAX_PEAK``) files are
    rejected; a float file peaking above full scale is scaled down to it.
    """
    import soundfile as sf

    from ingest.audio_config import max_seconds as configured_max

    limit = configured_max() if max_seconds is None else max_seconds
    if len(data) == 0:
        raise IngestError(path, "empty file (0 bytes)")
    with _decoder_messages_named(path):
        return _decode(sf, data, path, limit)


@contextlib.contextmanager
def _decoder_messages_named(path: str):
    """libmpg123 (inside libsndfile) writes its complaints about a damaged MP3 straight
    to standard error ("Note: Illegal Audio-MPEG-Header ...", four lines for one cut),
    which named no file: they are caught here and printed as one line that does."""
    import os
    import sys
    import tempfile
    import threading

    from ingest.sources import shown_path

    if threading.active_count() > 1:  # fd 2 is the process's: another thread's writes (the TUI draws
        yield                         # its screen there) would be caught too; the ingest decodes alone
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no standard error to catch
        yield
        return
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            lines = [ln.strip() for ln in caught.read(64_000).decode("utf-8", "replace").splitlines() if ln.strip()]
    if lines:
        more = f" (and {len(lines) - 1} more lines)" if len(lines) > 1 else ""
        print(f"atlas: note: {shown_path(path)}: the audio decoder says: {lines[0][:200]}{more}",
              file=sys.stderr, flush=True)


def _decode(sf, data: bytes, path: str, limit: float) -> Decoded:
    from ingest.audio_config import max_seconds_source

    try:
        info = sf.info(io.BytesIO(data))
    except Exception as e:
        raise IngestError(path, f"not a readable audio file ({_sf_reason(e)})") from None
    if info.samplerate <= 0 or info.channels <= 0:
        raise IngestError(path, "corrupt audio header (no sample rate or channels)")
    announced = info.frames / info.samplerate if info.frames > 0 else 0.0
    if announced > limit:
        raise IngestError(path, f"too long: {announced:.0f} s of audio (the limit is {limit:.0f} s: {max_seconds_source()})")
    cut = _wav_truncation(data)
    if cut is not None:
        declared, present = cut
        raise IngestError(path, f"truncated: the WAV header announces {declared:,} bytes of samples but the file holds {present:,}")
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as e:
        reason = _sf_reason(e)
        if info.format == "FLAC" and "lost sync" in reason:
            raise IngestError(path, f"truncated or corrupt FLAC stream ({reason})") from None
        raise IngestError(path, f"cannot decode audio ({reason})") from None
    n = samples.shape[0]
    if info.format == "FLAC" and info.frames > 0 and n < info.frames:
        raise IngestError(
            path, f"truncated: the FLAC header announces {info.frames / rate:.2f} s but the file holds {n / rate:.2f} s"
        )
    if n / rate > limit:
        raise IngestError(path, f"too long: {n / rate:.0f} s of audio (the limit is {limit:.0f} s: {max_seconds_source()})")
    if n / rate < MIN_SECONDS:
        raise IngestError(path, f"too short: {n / rate:.2f} s of audio (at least {MIN_SECONDS:g} s needed)")
    if not np.isfinite(samples).all():
        raise IngestError(path, "corrupt audio: samples are NaN or infinite")
    peak = float(np.abs(samples).max())
    if peak <= 10 ** (SILENCE_DBFS / 20):
        raise IngestError(path, f"silent: peak level {_db(peak):.1f} dBFS (at or below {SILENCE_DBFS:g} dBFS)")
    if peak > MAX_PEAK:
        # float files with samples near 1e38 made essentia's peak detection run for minutes
        raise IngestError(path, f"corrupt audio: samples reach {peak:.3g} (full scale is 1.0; "
                                f"above {MAX_PEAK:g} is not a recording)")
    if peak > 1.0:  # a float file that overshoots full scale: analysed at full scale
        samples /= peak
    return Decoded(np.ascontiguousarray(samples), int(rate), str(info.format))


def _wav_truncation(data: bytes) -> tuple[int, int] | None:
    """(declared, present) sample-data bytes of a RIFF/WAVE file whose 'data' chunk runs
    past the end of the file; None for a complete file, a streaming header (size 0 or
    0xFFFFFFFF) or anything that is not WAV. (libsndfile silently reads what is there.)"""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        if cid == b"data":
            present = len(data) - (pos + 8)
            if size in (0, 0xFFFFFFFF) or size <= present:
                return None
            return size, present
        pos += 8 + size + (size & 1)
    return None


def _sf_reason(e: Exception) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    # libsndfile messages start with "Error opening <_io.BytesIO ...>: "; keep the reason.
    if ">: " in msg:
        msg = msg.split(">: ", 1)[1]
    if msg.startswith("Error : "):
        msg = msg[len("Error : "):]
    return msg.rstrip(".")


def _db(x: float) -> float:
    return 20.0 * math.log10(max(float(x), 1e-12))


def to_analysis_rate(dec: Decoded) -> np.ndarray:
    """Stereo float32 at 44.1 kHz, shape (n, 2) (mono is duplicated)."""
    x = dec.samples
    if x.shape[1] == 1:
        x = np.repeat(x, 2, axis=1)
    elif x.shape[1] > 2:
        x = x[:, :2]
    if dec.sample_rate != SR:
        import soxr

        x = soxr.resample(x, dec.sample_rate, SR, quality="HQ")
    return np.ascontiguousarray(x, dtype=np.float32)


@dataclass
class Analysis:
    values: dict  # feature name -> float (NaN where undefined)
    beats_s: np.ndarray  # tracked beat times
    downbeat_phase: int
    beat_hpcp: np.ndarray  # (n_beats, 12), C..B, each row sums to 1 (or 0 for a silent beat)
    key_name: str | None
    onsets_s: np.ndarray


def _essentia():
    import essentia

    essentia.log.infoActive = False  # "MusicExtractorSVM: no classifier models..." on import
    essentia.log.warningActive = False
    import essentia.standard as es

    return es


def _frame_features(mono: np.ndarray, flatness_max_hz: float = FLATNESS_MAX_HZ):
    """Per-frame HPCP (36 bins from A) and spectral shape, with essentia (the flatness of
    the bins up to ``flatness_max_hz``)."""
    es = _essentia()

    win = es.Windowing(type="blackmanharris62", size=FRAME)
    spec = es.Spectrum(size=FRAME)
    peaks = es.SpectralPeaks(orderBy="magnitude", magnitudeThreshold=1e-5, minFrequency=40,
                             maxFrequency=5000, maxPeaks=60, sampleRate=SR)
    hpcp = es.HPCP(size=36, referenceFrequency=440, harmonics=4, bandPreset=False, minFrequency=40,
                   maxFrequency=5000, normalized="unitSum", weightType="cosine", nonLinear=False,
                   windowSize=1.0, sampleRate=SR)
    centroid = es.Centroid(range=SR / 2)
    flatness = es.Flatness()
    flux = es.Flux()
    moments = es.CentralMoments(range=SR / 2)
    shape = es.DistributionShape()
    flat_bins = int(min(flatness_max_hz, FLATNESS_MAX_HZ) * FRAME / SR) + 1
    n_frames = max(1, 1 + (len(mono) - FRAME) // HOP) if len(mono) >= FRAME else 1
    H = np.zeros((n_frames, 36), np.float32)
    times = np.zeros(n_frames)
    cen, flat, flx, skew, kurt = (np.full(n_frames, np.nan) for _ in range(5))
    padded = mono if len(mono) >= FRAME else np.pad(mono, (0, FRAME - len(mono)))
    for i in range(n_frames):
        fr = padded[i * HOP : i * HOP + FRAME]
        times[i] = (i * HOP + FRAME / 2) / SR
        s = spec(win(fr))
        total = float(s.sum())
        if total < 1e-9:  # silent frame: no spectral shape, zero chroma
            continue
        f, m = peaks(s)
        if len(f):
            H[i] = hpcp(f, m)
        cen[i] = centroid(s)
        flat[i] = flatness(s[:flat_bins] ** 2)
        flx[i] = flux((s / total).astype(np.float32))
        _, sk, ku = shape(moments(s))
        skew[i], kurt[i] = sk, ku
    return times, H, dict(spectral_centroid_hz=cen, spectral_flatness=flat, spectral_flux=flx,
                          spectral_skewness=skew, spectral_kurtosis=kurt)


def fold_hpcp36(H36: np.ndarray) -> np.ndarray:
    """36-bin HPCP (bin 0 = A, 3 bins per semitone) -> 12 bins C..B (sum kept)."""
    rolled = np.roll(H36, 1, axis=-1)  # bins 3k-1, 3k, 3k+1 -> 3k, 3k+1, 3k+2
    per_semitone_from_a = rolled.reshape(*H36.shape[:-1], 12, 3).sum(-1)
    return np.roll(per_semitone_from_a, 9, axis=-1)  # A (index 0) -> index 9


def beat_sync(times: np.ndarray, frames: np.ndarray, beats: np.ndarray, duration_s: float) -> np.ndarray:
    """Mean of frame rows between successive beats (first: 0..beat 1; last: to the end),
    one row per beat, renormalised to sum 1 (rows of silence stay 0)."""
    if len(beats) == 0:
        return np.zeros((0, frames.shape[1]), np.float32)
    edges = np.concatenate([beats, [duration_s]])
    idx = np.searchsorted(edges, times, side="right") - 1
    ok = (idx >= 0) & (idx < len(beats))
    out = np.zeros((len(beats), frames.shape[1]), np.float64)
    np.add.at(out, idx[ok], frames[ok])
    sums = out.sum(1, keepdims=True)
    return np.divide(out, sums, out=np.zeros_like(out), where=sums > 0).astype(np.float32)


def harmonic_movement(beat_chroma: np.ndarray) -> tuple[float, float]:
    """(mean cosine distance between successive non-silent beat chromas, mean per-bin std)."""
    rows = beat_chroma[beat_chroma.sum(1) > 0]
    if len(rows) < 2:
        return float("nan"), float("nan")
    norms = np.linalg.norm(rows, axis=1)
    cos = (rows[1:] * rows[:-1]).sum(1) / (norms[1:] * norms[:-1])
    return float(np.mean(1.0 - cos)), float(rows.std(0).mean())


def ioi_entropy(onsets_s: np.ndarray, bpm: float) -> float:
    """Shannon entropy (bits) of inter-onset intervals in beats, quantised to 1/12 beat,
    capped at 4 beats (49 bins: 0 .. 48/12)."""
    if len(onsets_s) < 3 or not np.isfinite(bpm) or bpm <= 0:
        return float("nan")
    ioi = np.diff(np.sort(onsets_s)) * bpm / 60.0
    bins = np.clip(np.rint(ioi * 12), 0, 48).astype(np.int64)
    p = np.bincount(bins, minlength=49) / len(bins)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def beat_positions(times_s: np.ndarray, beats_s: np.ndarray) -> np.ndarray:
    """Position of each time in beats (beat i at i), linear between tracked beats and
    extrapolated at the median beat period before the first / after the last beat."""
    if len(beats_s) < 2:
        return np.full(len(times_s), np.nan)
    period = float(np.median(np.diff(beats_s)))
    xp = np.concatenate([[beats_s[0] - 1000 * period], beats_s, [beats_s[-1] + 1000 * period]])
    fp = np.concatenate([[-1000.0], np.arange(len(beats_s), dtype=float), [len(beats_s) - 1 + 1000.0]])
    return np.interp(times_s, xp, fp)


def syncopation(onsets_s: np.ndarray, beats_s: np.ndarray, tol: float = 0.125) -> float:
    """Share of onsets that fall between beats (more than ``tol`` beat from one) with no
    onset within ``tol`` of the next beat: anticipations carried over the beat."""
    if len(onsets_s) == 0 or len(beats_s) < 2:
        return float("nan")
    pos = beat_positions(np.sort(onsets_s), beats_s)
    frac = pos - np.floor(pos)
    off = (frac > tol) & (frac < 1 - tol)
    on_beat = np.unique(np.rint(pos[~off]).astype(np.int64))
    nxt = np.floor(pos[off]).astype(np.int64) + 1
    return float((~np.isin(nxt, on_beat)).sum() / len(pos))


def band_rms_dbfs(mono: np.ndarray) -> dict[str, float]:
    from scipy.signal import butter, sosfilt

    out = {}
    for name, (lo, hi) in BANDS.items():
        sos = butter(4, [lo, min(hi, SR / 2 * 0.999)], btype="bandpass", fs=SR, output="sos")
        y = sosfilt(sos, mono)
        out[f"rms_{name}_dbfs"] = _db(np.sqrt(np.mean(y * y)))
    return out


def _downbeat_phase(mono: np.ndarray, beats: np.ndarray) -> int:
    """4/4 assumption: the phase (0-3) whose beats carry the most 20-150 Hz energy."""
    if len(beats) < 8:
        return 0
    from scipy.signal import butter, sosfilt

    sos = butter(4, [20, 150], btype="bandpass", fs=SR, output="sos")
    low = sosfilt(sos, mono) ** 2
    win = int(0.1 * SR)
    idx = (beats * SR).astype(np.int64)
    energy = np.array([low[i : i + win].mean() if i < len(low) else 0.0 for i in idx])
    return int(np.argmax([energy[p::4].mean() for p in range(4)]))


def analyse_stem(stereo: np.ndarray, beats_s: np.ndarray) -> dict:
    """Per-stem features (see the catalogue's ``per_stem``): RMS, spectral centroid and
    harmonic movement/variance of the stem's HPCP synchronised on the mix's beats."""
    mono = np.ascontiguousarray(stereo.mean(axis=1), dtype=np.float32)
    times, H36, spectral = _frame_features(mono)
    v = {"rms_dbfs": _db(np.sqrt(np.mean(mono.astype(np.float64) ** 2)))}
    cen = spectral["spectral_centroid_hz"]
    v["spectral_centroid_hz"] = float(np.nanmean(cen)) if np.isfinite(cen).any() else float("nan")
    bc = beat_sync(times, fold_hpcp36(H36), beats_s, len(mono) / SR)
    v["harmonic_movement"], v["harmonic_variance"] = harmonic_movement(bc)
    return v


def analyse(stereo: np.ndarray, source: Decoded | None = None) -> Analysis:
    """Features of 44.1 kHz stereo float32 audio (the catalogue's whole set). ``source``:
    the decoded file it was made from (:func:`to_analysis_rate`), so that a mono file's
    loudness is measured on its one channel (BS.1770; the duplicated pair read 3 dB
    louder), the sample peak is the file's own (resampling overshoots), and the spectral
    flatness stays below the file's Nyquist frequency (``FLATNESS_MAX_HZ``)."""
    es = _essentia()
    import pyloudnorm

    mono = np.ascontiguousarray(stereo.mean(axis=1), dtype=np.float32)
    duration = len(mono) / SR
    v: dict[str, float] = {}
    times, H36, spectral = _frame_features(mono, 0.45 * source.sample_rate if source else FLATNESS_MAX_HZ)
    v["rms_dbfs"] = _db(np.sqrt(np.mean(mono.astype(np.float64) ** 2)))
    v["duration_s"] = duration
    bpm, beats, _, _, _ = es.RhythmExtractor2013(method="degara")(mono)
    beats = np.asarray(beats, np.float64)
    v["tempo_bpm"] = float(bpm) if len(beats) >= 2 else float("nan")
    v["beat_count"] = float(len(beats))
    phase = _downbeat_phase(mono, beats)
    v["downbeat_phase"] = float(phase)
    onsets, rate = es.OnsetRate()(mono)
    onsets = np.asarray(onsets, np.float64)
    v["onset_rate_hz"] = float(rate)
    try:
        channels = stereo[:, 0] if source is not None and source.n_channels == 1 else stereo
        lufs = float(pyloudnorm.Meter(SR).integrated_loudness(channels.astype(np.float64)))
    except ValueError:
        lufs = float("nan")
    v["loudness_integrated_lufs"] = lufs if np.isfinite(lufs) else float("nan")
    _, _, _, lra = es.LoudnessEBUR128(sampleRate=SR)(stereo)
    v["loudness_range_lu"] = float(lra)
    v["sample_peak_dbfs"] = _db(np.abs(source.samples if source is not None else stereo).max())
    for name, arr in spectral.items():
        v[name] = float(np.nanmean(arr)) if np.isfinite(arr).any() else float("nan")
    v.update(band_rms_dbfs(mono))
    chroma_frames = fold_hpcp36(H36)
    mean36 = H36.sum(0)
    key_name = None
    if mean36.sum() > 0:
        mean36 = (mean36 / mean36.sum()).astype(np.float32)
        key, scale, strength, _ = es.Key(profileType="bgate", pcpSize=36, numHarmonics=4, slope=0.6,
                                         usePolyphony=True, useThreeChords=True)(mean36)
        tonic = {"Gb": "F#", "Db": "C#", "Ab": "G#", "Eb": "D#", "Bb": "A#"}.get(key, key)
        v["key_tonic_pc"] = float(_PC_NAMES.index(tonic))
        v["key_is_minor"] = 1.0 if scale == "minor" else 0.0
        v["key_strength"] = float(strength)
        key_name = f"{key} {scale}"
    beat_chroma = beat_sync(times, chroma_frames, beats, duration) if len(beats) else np.zeros((0, 12), np.float32)
    source = beat_chroma[beat_chroma.sum(1) > 0] if len(beat_chroma) else chroma_frames[chroma_frames.sum(1) > 0]
    mean12 = source.mean(0) if len(source) else np.zeros(12)
    mean12 = mean12 / mean12.sum() if mean12.sum() > 0 else mean12
    from atlas_db.schema_audio import PC_SLUGS

    for slug, val in zip(PC_SLUGS, mean12):
        v[f"hpcp_{slug}"] = float(val)
    v["ioi_entropy_bits"] = ioi_entropy(onsets, v["tempo_bpm"])
    v["syncopation"] = syncopation(onsets, beats)
    v["danceability"] = float(es.Danceability(sampleRate=SR)(mono)[0])
    v["dynamic_complexity_db"] = float(es.DynamicComplexity(sampleRate=SR)(mono)[0])
    hm, hv = harmonic_movement(beat_chroma)
    v["harmonic_movement"], v["harmonic_variance"] = hm, hv
    return Analysis(v, beats, phase, beat_chroma, key_name, onsets)


def feature_rows(piece_id: str, source: str, values: dict) -> list[dict]:
    """Rows of the ``features`` table (NaN values, i.e. undefined, are left out)."""
    from atlas_db.schema_audio import CATALOGUE

    units = {row[0]: row[1] for row in CATALOGUE}
    return [
        {"piece_id": piece_id, "source": source, "name": k, "value": float(x), "unit": units[k],
         "analysis_version": ANALYSIS_VERSION}
        for k, x in values.items()
        if x is not None and np.isfinite(x)
    ]


def parse_audio(data: bytes, *, piece_id: str, path: str) -> dict:
    """The whole per-file job for an audio file: returns ``pieces`` (dict row) and one
    Arrow table per child table (spine tables and the audio tables).

    Raises IngestError with a one-line reason for unusable files.
    """
    from atlas_db.schema import TABLES as SPINE
    from atlas_db.schema_audio import TABLES as AUDIO

    from ingest.audio_config import audio_available

    missing = audio_available()
    if missing:
        raise IngestError(path, missing)
    from ingest import describe, stems, transcribe

    dec = decode(data, path)
    stereo = to_analysis_rate(dec)
    mix = analyse(stereo, dec)
    bpm = mix.values.get("tempo_bpm", float("nan"))
    feats = feature_rows(piece_id, "mix", mix.values)

    separated, stems_model = stems.separate_if_configured(stereo, SR)
    sources: list[tuple[str, np.ndarray | None]] = []
    if separated:
        for name, wav in separated.items():
            feats += feature_rows(piece_id, name, analyse_stem(wav, mix.beats_s))
            sources.append((name, wav))
    else:
        sources.append(("mix", stereo))

    notes_parts, track_rows = [], []
    transcriber = transcribe.TRANSCRIBER
    for ti, (name, wav) in enumerate(sources):
        is_drum = name == "drums"
        events = np.zeros((0, 4))
        if not is_drum:
            try:
                events = transcribe.transcribe(wav.mean(axis=1), SR)
            except MissingModelError as e:
                raise IngestError(path, str(e)) from None
        tbl = transcribe.notes_table(piece_id, ti, events, bpm)
        notes_parts.append(tbl)
        n = tbl.num_rows
        pitches = tbl.column("pitch").to_numpy() if n else np.zeros(0)
        track_rows.append({
            "piece_id": piece_id, "track_index": ti, "name": name, "program": 0,
            "channel": 9 if is_drum else 0, "is_drum": is_drum, "n_notes": n,
            "pitch_min": int(pitches.min()) if n else None, "pitch_max": int(pitches.max()) if n else None,
        })
    notes = pa.concat_tables(notes_parts) if notes_parts else SPINE["notes"].empty_table()
    tracks = pa.Table.from_pylist(track_rows, schema=SPINE["tracks"])
    grid_bpm = transcribe.grid_tempo(bpm)
    tempos = pa.Table.from_pylist(
        [{"piece_id": piece_id, "time_ticks": 0, "time_s": 0.0, "tempo_bpm": grid_bpm,
          "us_per_beat": int(round(60e6 / grid_bpm))}],
        schema=SPINE["tempo_changes"],
    )
    beats = mix.beats_s
    audio_beats = pa.table(
        {
            "piece_id": pa.array([piece_id] * len(beats), pa.string()),
            "beat_index": pa.array(np.arange(len(beats), dtype=np.int32)),
            "time_s": pa.array(beats, pa.float64()),
            "is_downbeat": pa.array((np.arange(len(beats)) % 4) == mix.downbeat_phase),
            "hpcp": pa.array([row.tolist() for row in mix.beat_hpcp], pa.list_(pa.float32())),
        },
        schema=AUDIO["audio_beats"],
    )
    audio_files = pa.Table.from_pylist(
        [{"piece_id": piece_id, "format": dec.format, "sample_rate_hz": dec.sample_rate,
          "n_channels": dec.n_channels, "duration_s": dec.duration_s, "key_name": mix.key_name,
          "stems_model": stems_model, "transcriber": transcriber, "analysis_version": ANALYSIS_VERSION}],
        schema=AUDIO["audio_files"],
    )
    features = pa.Table.from_pylist(feats, schema=AUDIO["features"])
    descriptions = describe.describe_if_configured(piece_id, Path(path).stem, mix.values, mix.key_name,
                                                  [name for name, _ in sources], notes.num_rows)

    n_notes = notes.num_rows
    if n_notes:
        dur_ticks = int((notes.column("onset_ticks").to_numpy() + notes.column("duration_ticks").to_numpy()).max())
    else:
        dur_ticks = 0
    piece = {
        "piece_id": piece_id, "path": path, "kind": "audio", "title": Path(path).stem,
        "size_bytes": len(data), "midi_format": None, "ticks_per_beat": None,
        "n_tracks": len(track_rows), "n_notes": n_notes, "duration_ticks": dur_ticks,
        "duration_beats": dur_ticks / transcribe.TICKS_PER_BEAT, "duration_s": dec.duration_s,
    }
    return {
        "pieces": piece,
        "tracks": tracks,
        "notes": notes,
        "program_changes": SPINE["program_changes"].empty_table(),
        "tempo_changes": tempos,
        "time_signatures": SPINE["time_signatures"].empty_table(),
        "key_signatures": SPINE["key_signatures"].empty_table(),
        "audio_files": audio_files,
        "features": features,
        "audio_beats": audio_beats,
        "descriptions": descriptions,
    }


def notes_from_audio_file(path) -> pa.Table:
    """The ``notes`` rows an audio file would get at ingest (mix transcription on the
    tracked-tempo grid), without storing anything: for using a recording that is not in
    the database as a query (e.g. for covers). Raises IngestError for unusable files."""
    return audio_query_parts(path)["notes"]


def audio_query_parts(path) -> dict:
    """What ingestion would store of an audio file for covers, without storing anything:
    ``notes`` (the mix transcribed on the tracked-tempo grid, as in ``notes``),
    ``beats_s`` and ``beat_hpcp`` (the tracked beats and their 12-bin HPCP, as in
    ``audio_beats``) and ``grid_bpm`` (the notes' grid tempo, as in ``tempo_changes``).
    Computed exactly as :func:`parse_audio` computes them, so a recording used as a query
    gets the features the same file gets once ingested. Raises IngestError for unusable
    files."""
    from ingest.audio_config import audio_available
    from ingest import transcribe

    path = str(path)
    missing = audio_available()
    if missing:
        raise IngestError(path, missing)
    from ingest.sources import read_regular_file

    try:
        data = read_regular_file(path)
    except OSError as e:
        raise IngestError(path, f"cannot read ({e.strerror or e})") from None
    except ValueError as e:  # a FIFO would block the read forever
        raise IngestError(path, str(e)) from None
    stereo = to_analysis_rate(decode(data, path))
    mono = np.ascontiguousarray(stereo.mean(axis=1), dtype=np.float32)
    es = _essentia()
    bpm, beats, _, _, _ = es.RhythmExtractor2013(method="degara")(mono)
    beats = np.asarray(beats, np.float64)
    bpm = float(bpm) if len(beats) >= 2 else None
    times, H36, _ = _frame_features(mono)
    hpcp = beat_sync(times, fold_hpcp36(H36), beats, len(mono) / SR) if len(beats) else np.zeros((0, 12), np.float32)
    try:
        events = transcribe.transcribe(stereo.mean(axis=1), SR)
    except MissingModelError as e:
        raise IngestError(path, str(e)) from None
    return {"notes": transcribe.notes_table("query", 0, events, bpm), "beats_s": beats, "beat_hpcp": hpcp,
            "grid_bpm": transcribe.grid_tempo(bpm)}
