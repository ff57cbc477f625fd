"""Audio analysis speed and audio-cover MAP on fluidsynth renders of POP909 songs.

    .venv/bin/python benchmarks/audio.py [N_SONGS [N_COVER_SONGS [WORK_DIR [FIRST]]]]   (default 3 and 16)

WORK_DIR (optional) keeps the renders and the database of part 2 there, and a later run
with the same WORK_DIR reuses them (only the queries and the baseline run again; after a
change of the vectors stage run ``atlas reindex --vectors --db WORK_DIR/db`` first).

Part 1, speed.

Per song (rendered from its MIDI with TimGM6mb), measured in CPU seconds of this process
and all its threads (time.process_time), so "x real time per core" = audio seconds /
CPU seconds:

- decode (soundfile + resampling to 44.1 kHz stereo): the baseline;
- features (ingest.audio.analyse: every catalogue feature + beat chroma);
- transcription with our wrapper (ingest.transcribe: in-memory audio, ONNX in batches
  of 8 windows) next to basic-pitch's own ``predict()`` on the same file, in the same
  run: seconds per minute of audio, and the ratio;
- the whole per-file ingest job (ingest.audio.parse_audio).

Part 2, audio covers (MAP). Per song (N_COVER_SONGS songs that have a version whose
notes overlap NNN.mid's by < 90%, from the FIRST-th such song, default 0: songs 0-31 are
the part the recording fusion was fitted on, 32-47 the held-out part), two recordings
are rendered, each clipped to its first 60 s:
  A = NNN.mid, transposed by (i mod 5) - 2 semitones, tempo x 0.9 / 1.0 / 1.1,
      programs piano/organ/vibraphone;
  B = the song's most different version, transposed 3 semitones from A, tempo x 0.85 or
      1.15, programs strings/guitar/flute.
The renders and every NNN.mid are ingested into one database (transcription -> notes ->
vectors; a recording's harmony sequence is its transcribed notes' chroma by default, see
indexers/audio_chroma.py), and queried with ``atlas covers`` (query.covers.covers) by
piece id, twice: as shipped (with the audio bonus, ALIGN["audio_bonus"]) and with the
symbolic scores alone:
  audio -> audio (the other render is relevant), audio -> MIDI (the song's NNN.mid),
  MIDI -> audio (both renders).
Baseline, same renders, same run: essentia ChromaCrossSimilarity (OTI, 9-frame stacks,
binarize 0.095) + CoverSongSimilarity (serra09, asymmetric distance) on essentia HPCP
(12 bins) averaged over 0.46 s blocks, audio -> audio only (it needs audio on both sides).
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
    if n_songs == 0:  # part 2 only
        return
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


def _overlap(a: Path, b: Path) -> float:
    from ingest.midi_parse import parse_midi

    def key(p):
        n = parse_midi(p.read_bytes(), piece_id="x", path=str(p))["notes"]
        return set(zip(n.column("onset_ticks").to_pylist(), n.column("pitch").to_pylist()))

    ka, kb = key(a), key(b)
    return len(ka & kb) / max(1, min(len(ka), len(kb)))


def _variant(src: Path, dst: Path, semitones: int, tempo_factor: float, programs: list[int]) -> Path:
    """A MIDI file transposed, at another tempo, with other GM programs (drums untouched)."""
    import mido

    mf = mido.MidiFile(str(src))
    for ti, track in enumerate(mf.tracks):
        chans = [m.channel for m in track if m.type == "note_on" and m.channel != 9]
        new = mido.MidiTrack()
        if chans:
            new.append(mido.Message("program_change", channel=chans[0], program=programs[ti % len(programs)], time=0))
        carry = 0
        for m in track:
            if m.type == "program_change":
                carry += m.time
                continue
            m = m.copy(time=m.time + carry)
            carry = 0
            if m.type in ("note_on", "note_off") and m.channel != 9:
                m = m.copy(note=min(127, max(0, m.note + semitones)))
            elif m.type == "set_tempo":
                m = m.copy(tempo=int(round(m.tempo / tempo_factor)))
            new.append(m)
        mf.tracks[ti] = new
    if not any(m.type == "set_tempo" for t in mf.tracks for m in t):
        mf.tracks[0].insert(0, mido.MetaMessage("set_tempo", tempo=int(round(500000 / tempo_factor)), time=0))
    _trim(mf, CLIP_S + 2.0)
    mf.save(str(dst))
    return dst


CLIP_S = 60  # each render is clipped to its first CLIP_S seconds


def _trim(mf, seconds: float) -> None:
    """Drop the events after ``seconds`` (in place): what would be rendered after the
    clip is never heard, and rendering it is most of the benchmark's time."""
    import mido

    t, tick, tempo, cutoff = 0.0, 0, 500000, None
    for m in mido.merge_tracks(mf.tracks):
        if m.time:
            t += mido.tick2second(m.time, mf.ticks_per_beat, tempo)
            tick += m.time
        if t > seconds:
            cutoff = tick
            break
        if m.type == "set_tempo":
            tempo = m.tempo
    if cutoff is None:
        return
    for ti, track in enumerate(mf.tracks):
        new, now, last = mido.MidiTrack(), 0, 0
        for m in track:
            now += m.time
            if now >= cutoff or m.type == "end_of_track":
                continue
            new.append(m.copy(time=now - last))
            last = now
        # release what is still sounding (a held string note would sound for ever)
        chans = sorted({m.channel for m in track if not m.is_meta and hasattr(m, "channel")})
        for k, ch in enumerate(chans):
            new.append(mido.Message("control_change", channel=ch, control=64, value=0,
                                    time=cutoff - last if k == 0 else 0))
            new.append(mido.Message("control_change", channel=ch, control=123, value=0, time=0))
        new.append(mido.MetaMessage("end_of_track", time=0 if chans else cutoff - last))
        mf.tracks[ti] = new


def _average_precision(ranked: list[str], relevant: set[str]) -> float:
    hits, total = 0, 0.0
    for i, pid in enumerate(ranked, 1):
        if pid in relevant:
            hits += 1
            total += hits / i
    return total / len(relevant) if relevant else float("nan")


def covers_benchmark(n_songs: int, work_dir: str | None = None, first: int = 0) -> None:
    import soundfile as sf

    from atlas_db.connection import reading
    from ingest.audio import _essentia, _frame_features, decode, fold_hpcp36, to_analysis_rate
    from ingest.pipeline import ingest_paths
    from query.covers import covers

    pop = ROOT.parent / "shared" / "data" / "pop909-dev"
    chosen = []
    for song in sorted(p for p in pop.iterdir() if p.is_dir()):
        main_mid = song / f"{song.name}.mid"
        versions = sorted((song / "versions").glob("*.mid"))
        scored = sorted((_overlap(main_mid, v), v) for v in versions)
        if scored and scored[0][0] < 0.9:
            chosen.append((song, main_mid, scored[0][1]))
        if len(chosen) == first + n_songs:
            break
    chosen = chosen[first:]
    print(f"\naudio covers: {len(chosen)} POP909 songs (2 renders of 60 s each + NNN.mid per song)")
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(work_dir) if work_dir else Path(scratch)
        inp = tmp / "in"
        db = tmp / "db"
        reuse = (db / "atlas.duckdb").exists()
        inp.mkdir(parents=True, exist_ok=True)
        song_of: dict[str, str] = {}
        for i, (song, main_mid, version) in enumerate([] if reuse else chosen):
            ta = (i % 5) - 2
            fa = (0.9, 1.0, 1.1)[i % 3]
            tb = ta + 3 if ta + 3 <= 6 else ta - 9
            fb = 0.85 if i % 2 else 1.15
            for tag, src, t, f, progs in (("A", main_mid, ta, fa, [0, 16, 11]), ("B", version, tb, fb, [48, 24, 73])):
                mid = _variant(src, tmp / f"{song.name}{tag}.mid", t, f, progs)
                wav = render_midi(mid, tmp / f"{song.name}{tag}_full.wav")
                x, sr = sf.read(str(wav), dtype="float32")
                sf.write(str(inp / f"{song.name}{tag}.wav"), x[: CLIP_S * sr], sr)
            os.symlink(main_mid, inp / f"{song.name}.mid")
        if reuse:
            print(f"  reusing the database in {db}")
        else:
            t0 = time.perf_counter()
            s = ingest_paths([str(inp)], db)
            print(f"  ingested {s.added} pieces ({s.failed} failed) in {time.perf_counter() - t0:.0f} s "
                  "(transcription and derived stages included)")
        with reading(db) as con:
            rows = con.execute("SELECT piece_id, title, kind FROM pieces").fetchall()
        kind = {pid: k for pid, _, k in rows}
        title = {pid: t for pid, t, _ in rows}
        for pid, t, _ in rows:
            song_of[pid] = t[:3]
        audio = sorted(p for p in kind if kind[p] == "audio")
        midi = sorted(p for p in kind if kind[p] == "midi")

        # Ours: atlas covers, by piece id; the ranking is filtered to the other side's kind.
        # Three times: as shipped (pairs with a recording scored by the recording fusion,
        # with the chroma distance), the rule before it (the alignment score plus the chroma
        # bonus: ALIGN["recording_fusion"] off) and the symbolic scores alone (both off).
        from query.covers import ALIGN

        def run_covers(bonus: bool, recording_fusion: bool):
            ALIGN["audio_bonus"], ALIGN["recording_fusion"] = bonus, recording_fusion
            t0 = time.perf_counter()
            res = covers(db, audio + midi, top=len(kind))
            took = time.perf_counter() - t0
            ranked: dict[str, list[str]] = {}
            for q, p in zip(res.column("query").to_pylist(), res.column("piece_id").to_pylist()):
                ranked.setdefault(q, []).append(p)
            aps = {"audio->audio": [], "audio->MIDI": [], "MIDI->audio": []}
            for q in audio:
                r = ranked.get(q, [])
                aps["audio->audio"].append(_average_precision(
                    [p for p in r if kind[p] == "audio" and p != q],
                    {p for p in audio if song_of[p] == song_of[q] and p != q}))
                aps["audio->MIDI"].append(_average_precision(
                    [p for p in r if kind[p] == "midi"], {p for p in midi if song_of[p] == song_of[q]}))
            for q in midi:
                r = ranked.get(q, [])
                aps["MIDI->audio"].append(_average_precision(
                    [p for p in r if kind[p] == "audio"], {p for p in audio if song_of[p] == song_of[q]}))
            return aps, took

        symbolic, t_symbolic = run_covers(False, False)
        before, _ = run_covers(True, False)
        aps, t_ours = run_covers(True, True)

        # Baseline: essentia ChromaCrossSimilarity + CoverSongSimilarity on the same renders.
        es = _essentia()
        t0 = time.perf_counter()
        chroma = {}
        for pid in audio:
            data = (inp / f"{title[pid]}.wav").read_bytes()
            st = to_analysis_rate(decode(data, title[pid]))
            _, h36, _ = _frame_features(st.mean(1))
            h = fold_hpcp36(h36)
            m = len(h) // 10 * 10
            h = h[:m].reshape(-1, 10, 12).mean(1)
            chroma[pid] = (h / np.maximum(h.max(1, keepdims=True), 1e-9)).astype(np.float32)
        csm = es.ChromaCrossSimilarity(frameStackSize=9, frameStackStride=1, binarizePercentile=0.095, oti=True)
        css = es.CoverSongSimilarity(disOnset=0.5, disExtension=0.5, alignmentType="serra09",
                                     distanceType="asymmetric")
        base = []
        for q in audio:
            dist = {}
            for r in audio:
                if r != q:
                    _, dist[r] = css(csm(chroma[q], chroma[r]))
            order = sorted(dist, key=lambda r: dist[r])
            base.append(_average_precision(order, {p for p in audio if song_of[p] == song_of[q] and p != q}))
        t_base = time.perf_counter() - t0
    for name, v in aps.items():
        print(f"  MAP {name:13s} atlas covers {np.mean(v):.3f}  ({len(v)} queries); alignment score + chroma "
              f"bonus (ALIGN['recording_fusion'] off) {np.mean(before[name]):.3f}; symbolic scores alone "
              f"(both off) {np.mean(symbolic[name]):.3f}")
    print(f"  MAP audio->audio  essentia ChromaCrossSimilarity+CoverSongSimilarity {np.mean(base):.3f}"
          f"  ({len(base)} queries)")
    print(f"  wall time: atlas covers {t_ours:.1f} s for {len(audio) + len(midi)} queries (database already built; "
          f"{t_symbolic:.1f} s without the audio bonus); "
          f"essentia baseline {t_base:.1f} s for {len(audio)} queries (HPCP + all pairs)")


if __name__ == "__main__":
    main()
    covers_benchmark(int(sys.argv[2]) if len(sys.argv) > 2 else 16, sys.argv[3] if len(sys.argv) > 3 else None,
                     int(sys.argv[4]) if len(sys.argv) > 4 else 0)
