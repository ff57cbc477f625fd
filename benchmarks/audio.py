"""Audio analysis speed and audio-cover MAP on fluidsynth renders of POP909 songs.

    .venv/bin/python benchmarks/audio.py [N_SONGS [N_COVER_SONGS [WORK_DIR [FIRST [OTHER_WORK_DIR ...]]]]]
    (default 3 and 16)

WORK_DIR (optional) keeps the renders and the database of part 2 there, and a later run
with the same WORK_DIR reuses them (only the queries and the baseline run again; after a
change of the vectors stage run ``atlas reindex --vectors --db WORK_DIR/db`` first).
OTHER_WORK_DIRs (folders other runs built, for other FIRSTs): a larger collection in
WORK_DIR/db_large, this part's files plus the other parts' renders and NNN.mid and every
other POP909-dev song's NNN.mid as distractors; the queries are this part's, as before.

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
Queries by file, not in the collection (made in WORK_DIR/queries and WORK_DIR/none the
first time):
  short, long = an excerpt of NNN.mid degraded as benchmarks/covers_honest.py degrades
      its held-out queries (re-timed with a tempo curve, jittered, notes dropped and
      added, transposed; "short" its level 2, 10-15 s; "long" level 1, 30-40 s), from
      NNN.mid's first 50 s (what the stored renders hold), rendered with a third set of
      programs: short -> audio, short -> MIDI, long -> audio, long -> MIDI;
  none = a recording of nothing stored (a sine tone, white noise or a random tune, 10-40 s;
      one per song): the best score it gets (low is right).
  none MIDI = the NNN.mid of a POP909-dev song none of whose files is stored, outside the
      three parts and even-numbered (one per song of the part, its own; none with
      OTHER_WORK_DIRs, where every song is stored): the best score, and whether the best
      answer is a recording.
  MIDI->all: a stored NNN.mid's whole answer list, MIDI and recordings together.
Baseline, same renders, same run: essentia ChromaCrossSimilarity (OTI, 9-frame stacks,
binarize 0.095) + CoverSongSimilarity (serra09, asymmetric distance) on essentia HPCP
(12 bins) averaged over 0.46 s blocks, for the queries with audio on both sides.
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
sys.path.append(str(ROOT / "benchmarks"))  # after the packages: benchmarks/ingest.py is not ingest/
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


# Excerpt queries: recordings not in the collection, two per song, made from NNN.mid the
# way benchmarks/covers_honest.py makes its held-out queries (re-timed tick grid with a
# tempo curve, onset jitter, notes dropped and added, transposed, an excerpt from
# anywhere), in the tracks' own parts, rendered with a third set of GM programs.
# "short": covers_honest level 2 (10-15 s of the source, f 0.7-1.4, 20% dropped); "long":
# level 1 (30-40 s, f 0.85-1.18, 8% dropped). The re-timing is a tempo change: the 48
# rendered files of each kind in parts A-C last 11-25 s and 19-46 s (release tails
# included). They are cut from NNN.mid's first SOURCE_S seconds,
# which the stored 60 s renders hold (A plays NNN.mid at x0.9-1.1).
EXCERPTS = {"short": 2, "long": 1}
SOURCE_S = 50.0
# the tracks in their order (POP909: MELODY, BRIDGE, PIANO): the tune on an alto sax over an
# electric piano and a steel-string guitar (programs 4, 61, 68, with the accompaniment
# on the oboe, were measured too: docs/audio.md)
EXCERPT_PROGRAMS = [65, 4, 25]


def excerpt_queries(chosen, work: Path, first: int) -> list[tuple[Path, str, str]]:
    """(recording, song, "short"/"long") of each song in ``chosen``; rendered into
    ``work``/queries unless already there (seeded by the song's position, so the same
    FIRST gives the same queries)."""
    from covers_honest import LEVELS, degrade, read_notes
    from midi_fixtures import Track, write_midi

    qdir = work / "queries"
    qdir.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (song, main_mid, _) in enumerate(chosen):
        for tag, level in EXCERPTS.items():
            wav = qdir / f"{song.name}{tag}.wav"
            if not wav.exists():
                n = read_notes(main_mid)
                early = n["onset_s"] < SOURCE_S
                n = {k: v[early] for k, v in n.items()}
                rng = np.random.default_rng([first + i, level])
                on, du, pitch, trk = degrade(n, {"retime", "jitter", "edit", "excerpt"}, LEVELS[level], rng)
                # the file's own tempo, so that the re-timing factor is a tempo change
                bpm = 60.0 * float(np.ptp(n["onset_beats"]) / max(np.ptp(n["onset_s"]), 1e-6))
                tracks = []
                for k, t in enumerate(np.unique(trk)):
                    m = trk == t
                    ch = k if k < 9 else k + 1
                    tracks.append(Track([(int(p), float(o), float(d), 80) for p, o, d in
                                         zip(pitch[m], on[m], du[m])],
                                        program=EXCERPT_PROGRAMS[k % len(EXCERPT_PROGRAMS)], channel=ch % 16))
                mid = write_midi(qdir / f"{song.name}{tag}.mid", tracks, tempo_bpm=bpm)
                render_midi(mid, wav)
            out.append((wav, song.name, tag))
    return out


# Recordings of nothing in the collection, one per song of the part ("none" cell): a sine
# tone at a random pitch, white noise, or a random tune (a random walk in a random major
# key over random diatonic triads, piano and strings), 10-40 s each, seeded by the part.
# The best score each gets says whether the search can answer "nothing here".
NONE_KINDS = ("tone", "noise", "tune")


def none_queries(n: int, work: Path, first: int) -> list[Path]:
    from audio_fixtures import SR, sine, write_audio
    from midi_fixtures import Track, write_midi

    qdir = work / "none"
    qdir.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        kind = NONE_KINDS[i % len(NONE_KINDS)]
        wav = qdir / f"none{first + i:03d}{kind}.wav"
        if not wav.exists():
            rng = np.random.default_rng([first + i, 7])
            seconds = float(rng.uniform(10, 40))
            if kind == "tone":
                write_audio(wav, sine(float(110 * 2 ** rng.uniform(0, 3)), seconds, level_dbfs=-float(rng.uniform(6, 20))))
            elif kind == "noise":
                write_audio(wav, (rng.standard_normal(int(seconds * SR)) * rng.uniform(0.02, 0.2)).astype(np.float32))
            else:
                bpm = float(rng.uniform(70, 140))
                n_beats = int(seconds * bpm / 60)
                key = int(rng.integers(48, 60))
                scale = np.array([0, 2, 4, 5, 7, 9, 11])
                deg = np.cumsum(rng.choice([-2, -1, -1, 0, 1, 1, 2], n_beats * 2)) % 14
                tune = [(int(key + 12 + 12 * (d // 7) + scale[d % 7]), k * 0.5, 0.5, 90) for k, d in enumerate(deg)]
                chords = []
                for bar in range(0, n_beats, 4):
                    root = int(rng.integers(0, 7))
                    chords += [(int(key + 12 * ((root + j) // 7) + scale[(root + j) % 7]), float(bar), 4.0, 70)
                               for j in (0, 2, 4)]
                mid = write_midi(qdir / f"none{first + i:03d}.mid",
                                 [Track(tune, program=0, channel=0), Track(chords, program=48, channel=1)],
                                 tempo_bpm=bpm)
                render_midi(mid, wav)
        out.append(wav)
    return out


def _average_precision(ranked: list[str], relevant: set[str]) -> float:
    hits, total = 0, 0.0
    for i, pid in enumerate(ranked, 1):
        if pid in relevant:
            hits += 1
            total += hits / i
    return total / len(relevant) if relevant else float("nan")


CELLS = ("audio->audio", "audio->MIDI", "MIDI->audio", "MIDI->all", "short->audio", "short->MIDI", "long->audio",
         "long->MIDI")
# "MIDI->all": a stored NNN.mid's whole answer list, MIDI and recordings together (the
# other cells keep the other side's kind only), so the scores of its MIDI pairs (the MIDI
# fusion) and of its recording pairs (the recording fusion) are compared with each other.


PARTS_SONGS = 48  # parts A-C: the first 48 chosen songs (0-15, 16-31, 32-47)


def chosen_songs(pop: Path, count: int) -> list[tuple[Path, Path, Path]]:
    """(song folder, NNN.mid, its most different version) of the first ``count``
    POP909-dev songs that have a version whose notes overlap NNN.mid's by < 90%."""
    chosen = []
    for song in sorted(p for p in pop.iterdir() if p.is_dir()):
        main_mid = song / f"{song.name}.mid"
        versions = sorted((song / "versions").glob("*.mid"))
        scored = sorted((_overlap(main_mid, v), v) for v in versions)
        if scored and scored[0][0] < 0.9:
            chosen.append((song, main_mid, scored[0][1]))
        if len(chosen) == count:
            break
    return chosen


def absent_midi(pop: Path, parts: list, stored_songs: set[str], n: int, first: int) -> list[Path]:
    """NNN.mid of ``n`` POP909-dev songs for the "none MIDI" cell (a MIDI query with no
    version in the collection: its best score should be low): none of whose files is
    stored, in none of the three parts (``parts``: where the recording fusion was
    fitted, or is reported), and even-numbered (the MIDI calibration's held-out part of
    benchmarks/covers_honest.py); each part its own, from the ``first``-th such song."""
    taken = {song.name for song, _, _ in parts} | set(stored_songs)
    songs = [s for s in sorted(p for p in pop.iterdir() if p.is_dir())
             if s.name not in taken and int(s.name) % 2 == 0]
    return [s / f"{s.name}.mid" for s in songs[first:first + n]]


def covers_benchmark(n_songs: int, work_dir: str | None = None, first: int = 0, others: list[str] = ()) -> None:
    """Part 2. ``others``: folders other runs built; with them the collection is larger
    (WORK_DIR/db_large): this part's files, the other parts' renders and NNN.mid, and
    every other POP909-dev song's NNN.mid, while the queries stay this part's."""
    import soundfile as sf

    from atlas_db.connection import reading
    from ingest.audio import _essentia, _frame_features, decode, fold_hpcp36, to_analysis_rate
    from ingest.pipeline import ingest_paths
    from query.covers import covers, load_index, query_from_file

    pop = ROOT.parent / "shared" / "data" / "pop909-dev"
    parts = chosen_songs(pop, max(first + n_songs, PARTS_SONGS))
    chosen = parts[first:first + n_songs]
    print(f"\naudio covers: {len(chosen)} POP909 songs (2 renders of 60 s each + NNN.mid per song)")
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(work_dir) if work_dir else Path(scratch)
        inp = tmp / "in"
        db = tmp / ("db_large" if others else "db")
        reuse = (db / "atlas.duckdb").exists()
        inp.mkdir(parents=True, exist_ok=True)
        song_of: dict[str, str] = {}
        rendered = all((inp / f"{song.name}.mid").exists() for song, _, _ in chosen)  # (by a run without others)
        for i, (song, main_mid, version) in enumerate([] if reuse or rendered else chosen):
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
            folders = [inp]
            if others:
                folders += [Path(w) / "in" for w in others]
                taken = {f.name[:3] for d in folders for f in d.iterdir()}
                rest = tmp / "other_songs"
                rest.mkdir(exist_ok=True)
                for song in sorted(p for p in pop.iterdir() if p.is_dir() and p.name not in taken):
                    if not (rest / f"{song.name}.mid").exists():
                        os.symlink(song / f"{song.name}.mid", rest / f"{song.name}.mid")
                folders.append(rest)
            t0 = time.perf_counter()
            s = ingest_paths([str(f) for f in folders], db)
            print(f"  ingested {s.added} pieces ({s.failed} failed) in {time.perf_counter() - t0:.0f} s "
                  "(transcription and derived stages included)")
        with reading(db) as con:
            rows = con.execute("SELECT piece_id, title, kind, path FROM pieces").fetchall()
        kind = {pid: k for pid, _, k, _ in rows}
        path_of = {pid: Path(p) for pid, _, _, p in rows}
        for pid, t, _, _ in rows:
            song_of[pid] = t[:3]
        part = {song.name for song, _, _ in chosen}
        stored_audio = sorted(p for p in kind if kind[p] == "audio")
        # the queries: this part's pieces (with others, the collection holds more)
        audio = [p for p in stored_audio if song_of[p] in part]
        midi = sorted(p for p in kind if kind[p] == "midi" and song_of[p] in part)
        if others:
            print(f"  the collection: {len(kind)} pieces ({len(stored_audio)} recordings); this part's "
                  f"{len(audio) + len(midi)} pieces are the stored queries")

        exq = excerpt_queries(chosen, tmp, first)
        index = load_index(db)
        t0 = time.perf_counter()
        ex_features = [query_from_file(wav) for wav, _, _ in exq]
        t_parse = time.perf_counter() - t0
        none_features = [query_from_file(wav) for wav in none_queries(len(chosen), tmp, first)]
        none_midi = absent_midi(pop, parts, set(song_of.values()), len(chosen), first)
        none_midi_features = [query_from_file(p) for p in none_midi]

        # Ours: atlas covers, by piece id, and the excerpt recordings by file; the ranking is
        # filtered to the other side's kind. Three times: as shipped (pairs with a recording
        # scored by the recording fusion, with the chroma distance), the rule before it (the
        # alignment score plus the chroma bonus: ALIGN["recording_fusion"] off) and the
        # symbolic scores alone (both off).
        from query.covers import ALIGN

        def run_covers(bonus: bool, recording_fusion: bool):
            ALIGN["audio_bonus"], ALIGN["recording_fusion"] = bonus, recording_fusion
            t0 = time.perf_counter()
            res = covers(db, audio + midi, top=len(kind))
            took = time.perf_counter() - t0
            ranked: dict[str, list[str]] = {}
            best_score: dict[str, float] = {}
            for q, p, s in zip(res.column("query").to_pylist(), res.column("piece_id").to_pylist(),
                               res.column("score").to_pylist()):
                ranked.setdefault(q, []).append(p)
                best_score.setdefault(q, s)
            # the best answer right and scored 0.5 or more ("a version, here")
            right_sure = {k: [bool(ranked.get(q)) and song_of[ranked[q][0]] == song_of[q]
                              and best_score[q] >= 0.5 for q in qs] for k, qs in (("audio", audio), ("MIDI", midi))}
            aps = {name: [] for name in CELLS}
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
                aps["MIDI->all"].append(_average_precision(
                    [p for p in r if p != q], {p for p in kind if song_of[p] == song_of[q] and p != q}))
            t0 = time.perf_counter()
            for (_, song, tag), qf in zip(exq, ex_features):
                r = index.search(qf, top=len(kind)).column("piece_id").to_pylist()
                for k, name in (("audio", "audio"), ("midi", "MIDI")):
                    aps[f"{tag}->{name}"].append(_average_precision(
                        [p for p in r if kind[p] == k], {p for p in kind if kind[p] == k and song_of[p] == song}))
            took_ex = time.perf_counter() - t0
            def best(qf):  # (the best answer's score, whether it is a recording)
                res = index.search(qf, top=1)
                if not res.num_rows:
                    return 0.0, False
                return res.column("score")[0].as_py(), kind[res.column("piece_id")[0].as_py()] == "audio"

            none_best = [best(qf)[0] for qf in none_features]
            none_midi_best = [best(qf) for qf in none_midi_features]
            return aps, took, took_ex, none_best, none_midi_best, right_sure

        symbolic, t_symbolic, _, none_symbolic, none_midi_symbolic, sure_symbolic = run_covers(False, False)
        before, _, _, none_before, none_midi_before, sure_before = run_covers(True, False)
        aps, t_ours, t_ex, none_ours, none_midi_ours, sure_ours = run_covers(True, True)

        # Baseline: essentia ChromaCrossSimilarity + CoverSongSimilarity on the same renders.
        es = _essentia()
        t0 = time.perf_counter()

        def essentia_chroma(path: Path):
            st = to_analysis_rate(decode(path.read_bytes(), path.name))
            _, h36, _ = _frame_features(st.mean(1))
            h = fold_hpcp36(h36)
            m = len(h) // 10 * 10
            h = h[:m].reshape(-1, 10, 12).mean(1)
            return (h / np.maximum(h.max(1, keepdims=True), 1e-9)).astype(np.float32)

        chroma = {pid: essentia_chroma(path_of[pid]) for pid in stored_audio}
        csm = es.ChromaCrossSimilarity(frameStackSize=9, frameStackStride=1, binarizePercentile=0.095, oti=True)
        css = es.CoverSongSimilarity(disOnset=0.5, disExtension=0.5, alignmentType="serra09",
                                     distanceType="asymmetric")

        def essentia_ap(qchroma, relevant, leave_out=None):
            dist = {}
            for r in stored_audio:
                if r != leave_out:
                    _, dist[r] = css(csm(qchroma, chroma[r]))
            return _average_precision(sorted(dist, key=lambda r: dist[r]), relevant)

        base = {name: [] for name in CELLS if name.endswith("->audio") and not name.startswith("MIDI")}
        for q in audio:
            base["audio->audio"].append(essentia_ap(
                chroma[q], {p for p in audio if song_of[p] == song_of[q] and p != q}, leave_out=q))
        t_base = time.perf_counter() - t0
        for wav, song, tag in exq:
            base[f"{tag}->audio"].append(essentia_ap(
                essentia_chroma(wav), {p for p in audio if song_of[p] == song}))
    for name, v in aps.items():
        print(f"  MAP {name:13s} atlas covers {np.mean(v):.3f}  ({len(v)} queries); alignment score + chroma "
              f"bonus (ALIGN['recording_fusion'] off) {np.mean(before[name]):.3f}; symbolic scores alone "
              f"(both off) {np.mean(symbolic[name]):.3f}"
              + (f"; essentia ChromaCrossSimilarity+CoverSongSimilarity {np.mean(base[name]):.3f}"
                 if name in base else ""))
    for name, best in (("atlas covers", none_ours), ("alignment score + chroma bonus", none_before),
                       ("symbolic scores alone", none_symbolic)):
        print(f"  none (recordings of nothing stored, {len(best)}: {', '.join(NONE_KINDS)}): {name}: best score "
              f"median {np.median(best):.2f}, max {np.max(best):.2f}, above 0.5 {np.mean(np.array(best) > 0.5):.0%}"
              f" (by kind: {', '.join(f'{k} {max(best[i::len(NONE_KINDS)]):.2f}' for i, k in enumerate(NONE_KINDS) if best[i::len(NONE_KINDS)])} max)")
    for name, best in (("atlas covers", none_midi_ours), ("alignment score + chroma bonus", none_midi_before),
                       ("symbolic scores alone", none_midi_symbolic)):
        if best:
            score = np.array([b for b, _ in best])
            sure = [rec for b, rec in best if b >= 0.5]
            print(f"  none MIDI (NNN.mid of {len(best)} POP909-dev songs not stored): {name}: best score median "
                  f"{np.median(score):.2f}, max {np.max(score):.2f}, 0.5 or more {len(sure)} of {len(best)} "
                  f"({sum(sure)} of them recordings)")
    if not none_midi_ours:
        print("  none MIDI: every POP909-dev song is stored; no MIDI query without a version to make")
    for name, sure in (("atlas covers", sure_ours), ("alignment score + chroma bonus", sure_before),
                       ("symbolic scores alone", sure_symbolic)):
        print(f"  stored queries whose best answer is right and scores 0.5 or more: {name}: "
              + ", ".join(f"{k} {sum(v)}/{len(v)}" for k, v in sure.items()))
    print(f"  wall time: atlas covers {t_ours:.1f} s for {len(audio) + len(midi)} stored queries (database already "
          f"built; {t_symbolic:.1f} s without the audio bonus), {len(exq)} excerpt recordings read in "
          f"{t_parse:.1f} s and searched in {t_ex:.1f} s; essentia baseline {t_base:.1f} s for {len(audio)} "
          f"stored queries (HPCP + all pairs)")

if __name__ == "__main__":
    main()
    covers_benchmark(int(sys.argv[2]) if len(sys.argv) > 2 else 16, sys.argv[3] if len(sys.argv) > 3 else None,
                     int(sys.argv[4]) if len(sys.argv) > 4 else 0, sys.argv[5:])
