"""Cover-detection benchmark on POP909-dev: MAP / P@1 / mean first-correct rank per query
tier, next to a baseline measured in the same run, plus latency and memory.

    .venv/bin/python benchmarks/covers.py                  # everything (~ a few minutes)
    .venv/bin/python benchmarks/covers.py --no-100k        # skip the 100k-piece scale test
    .venv/bin/python benchmarks/covers.py --songs 60       # a quicker subset

Ground truth: every file in a song's folder (NNN.mid and versions/*.mid) is the same
song. Many versions are near-copies of NNN.mid, so the benchmark keeps only songs with at
least one version whose notes overlap the main file's by less than 90% ("really differ").

Query tiers (the relevant answers are all *other* files of the song in the database):

- arrangement    : each version that really differs, queried by its piece id
- transposed_tempo: NNN.mid transposed by -5..+6 semitones and notated at 0.5x, 1x or 2x
                   the beat rate (the same music written at another tempo)
- piano_merge    : all tracks merged into one piano track, velocities flattened
- excerpt        : 10-15 s of NNN.mid from a random point, starting off the beat
- transcription  : rough transcription: 15% of notes dropped, 10% extra notes, 10% octave
                   errors, onsets jittered (sigma 40 ms), durations +-20%
- accompaniment  : only the PIANO track (the harmony, no melody)
- reharmonised   : the MELODY track with passing notes and pickups added, over new chords
                   (per bar a random diatonic triad holding the bar's main melody note,
                   block chord + arpeggiated bass under the tune), all in another key;
                   the melody keeps its own track (merging is the piano_merge invariance)
- reharmonised_merged: the same, melody and chords merged into one track (both at once)
- mashup         : the same embellished melody over the PIANO track of another song moved
                   to the melody's key (harder: that other song's harmony is all there)

Baseline: TF-IDF cosine over exact-interval 3-grams of the skyline (highest voice),
transposition-invariant, over every piece in the database.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atlas_db.connection import fetch_arrow, reading  # noqa: E402
from indexers.features import skyline  # noqa: E402
from query.cover_notes import notes_from_arrays  # noqa: E402
from query.covers import CoverIndex, load_index, query_from_notes  # noqa: E402

DATA = Path(os.environ.get("ATLAS_POP909", ROOT.parent / "shared" / "data" / "pop909-dev"))
TIERS = ["arrangement", "transposed_tempo", "piano_merge", "excerpt", "transcription", "accompaniment",
         "reharmonised", "reharmonised_merged", "mashup"]
TOP = 50


def build_db(db: Path, data: Path) -> None:
    from ingest.derived import run_stages
    from ingest.pipeline import ingest_paths

    if not (db / "atlas.duckdb").exists():
        print(f"building {db} from {data} ...", file=sys.stderr)
        ingest_paths([str(data)], db, derive=False)
    run_stages(db, only=["vectors"], redo_old_versions=True)


def song_of(path: str) -> str:
    p = Path(path)
    return p.parent.parent.name if p.parent.name == "versions" else p.parent.name


def load_corpus(db: Path):
    with reading(db) as con:
        paths = fetch_arrow(con.execute("SELECT piece_id, path FROM piece_paths ORDER BY path"))
        notes = fetch_arrow(con.execute(
            """SELECT n.piece_id, n.track_index, upper(t.name) AS track, n.onset_ticks, n.onset_beats,
                      n.duration_beats, n.onset_s, n.pitch
               FROM notes n JOIN tracks t USING (piece_id, track_index)
               WHERE n.channel <> 9 ORDER BY n.piece_id, n.onset_beats, n.pitch"""))
    songs = defaultdict(set)
    main = {}
    for pid, path in zip(paths.column("piece_id").to_pylist(), paths.column("path").to_pylist()):
        s = song_of(path)
        songs[s].add(pid)
        if Path(path).stem == s:
            main[s] = pid
    cols = {c: notes.column(c).to_numpy(zero_copy_only=False) for c in notes.column_names}
    pid = cols["piece_id"]
    starts = np.flatnonzero(np.concatenate([[True], pid[1:] != pid[:-1]]))
    ends = np.concatenate([starts[1:], [pid.size]])
    by_piece = {pid[a]: {c: v[a:b] for c, v in cols.items() if c != "piece_id"} for a, b in zip(starts, ends)}
    return songs, main, by_piece


def overlap(a, b) -> float:
    sa = set(zip(a["onset_ticks"].tolist(), a["pitch"].tolist()))
    sb = set(zip(b["onset_ticks"].tolist(), b["pitch"].tolist()))
    return len(sa & sb) / max(len(sa), len(sb), 1)


def merge_duplicate_songs(songs, main, notes, index, threshold=0.9):
    """POP909 holds a few songs twice under two numbers (e.g. 017 and 018): merge those
    whose main files overlap by more than ``threshold`` so their versions count as right."""
    ms = sorted(s for s in songs if s in main and main[s] in index.row_of)
    v = index.vectors[[index.row_of[main[s]] for s in ms]]
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    sim = v @ v.T
    merged = 0
    for i, j in zip(*np.nonzero(np.triu(sim, 1) > 0.97)):
        a, b = ms[i], ms[j]
        if songs[a] == songs[b] or overlap(notes[main[a]], notes[main[b]]) < threshold:
            continue
        songs[a] = songs[b] = songs[a] | songs[b]
        merged += 1
    return merged


def differing_songs(songs, main, notes, threshold=0.9):
    out = {}
    for s, pids in songs.items():
        if s not in main or main[s] not in notes:
            continue
        diff = [p for p in pids if p != main[s] and p in notes and overlap(notes[p], notes[main[s]]) < threshold]
        if diff:
            out[s] = diff
    return out


# -- query tiers -----------------------------------------------------------------------
def _sel(n, m):
    return {k: v[m] for k, v in n.items()}


def transposed_tempo(n, rng, i):
    k = int(rng.choice([-5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 6]))
    s = [0.5, 1.0, 2.0][i % 3]
    return n["onset_beats"] * s, n["duration_beats"] * s, n["pitch"] + k, n["track_index"]


def piano_merge(n, rng, i):
    # one track: only onsets, durations and pitches survive (velocities flattened)
    return n["onset_beats"], n["duration_beats"], n["pitch"]


def excerpt(n, rng, i):
    t_end = float(n["onset_s"].max())
    length = rng.uniform(10, 15)
    t0 = rng.uniform(0, max(t_end - length, 0))
    m = (n["onset_s"] >= t0) & (n["onset_s"] < t0 + length)
    if not m.any():  # a window in a long rest: take the song's first seconds
        m = n["onset_s"] < n["onset_s"].min() + length
    on = n["onset_beats"][m]
    return on - on.min(), n["duration_beats"][m], n["pitch"][m], n["track_index"][m]


def transcription(n, rng, i):
    on, dur, p, s = n["onset_beats"].copy(), n["duration_beats"].copy(), n["pitch"].astype(np.int64), n["onset_s"]
    keep = rng.random(on.size) > 0.15
    bps = np.gradient(on) / np.maximum(np.gradient(s), 1e-6)  # local beats per second
    bps = np.clip(np.nan_to_num(bps, nan=2.0), 0.5, 5.0)
    oct_err = rng.random(on.size) < 0.10
    p = p + oct_err * rng.choice([-12, 12], on.size)
    on = on + rng.normal(0, 0.040, on.size) * bps
    dur = dur * rng.uniform(0.8, 1.2, on.size)
    on, dur, p = on[keep], dur[keep], p[keep]
    n_extra = int(0.10 * on.size)
    src = rng.integers(0, on.size, n_extra)
    eon = rng.uniform(on.min(), on.max(), n_extra)
    ep = p[src] + rng.integers(-7, 8, n_extra)
    edur = rng.uniform(0.1, 1.0, n_extra)
    on, dur, p = np.concatenate([on, eon]), np.concatenate([dur, edur]), np.concatenate([p, ep])
    o = np.argsort(on, kind="stable")
    return np.maximum(on[o], 0), dur[o], np.clip(p[o], 0, 127)


def accompaniment(n, rng, i):
    m = n["track"] == "PIANO"
    if not m.any():
        m = n["track_index"] != n["track_index"][np.argmax(n["pitch"])]
    return n["onset_beats"][m], n["duration_beats"][m], n["pitch"][m]


def _embellish(on, dur, p, rng):
    """Passing notes in 15% of the leaps of 3+ semitones, pickups before 30% of phrases."""
    dur = dur.copy()
    ex_on, ex_dur, ex_p = [], [], []
    for j in range(on.size - 1):
        leap = p[j + 1] - p[j]
        gap = on[j + 1] - on[j]
        if abs(leap) >= 3 and gap >= 0.5 and rng.random() < 0.15:
            dur[j] = gap / 2
            ex_on.append(on[j] + gap / 2)
            ex_dur.append(gap / 2)
            ex_p.append(p[j] + int(np.sign(leap)) * (abs(int(leap)) // 2))
        if j > 0 and on[j] - (on[j - 1] + dur[j - 1]) >= 1.0 and rng.random() < 0.3:
            ex_on.append(on[j] - 0.5)
            ex_dur.append(0.5)
            ex_p.append(p[j] + int(rng.choice([-2, -1, 2])))
    return (np.concatenate([on, ex_on]), np.concatenate([dur, ex_dur]),
            np.concatenate([p, ex_p]).astype(np.int64))


_MAJOR = np.array([0, 2, 4, 5, 7, 9, 11])


def reharmonised(n, rng, i):
    """The MELODY track (embellished; track 0) over new chords (track 1): per bar, a diatonic triad of the
    melody's key that contains the bar's longest melody note, chosen at random among
    those (so usually not the original chord), voiced below the tune as a block chord
    plus an arpeggio; everything transposed to another key."""
    mel = _sel(n, n["track"] == "MELODY")
    on, dur, p = mel["onset_beats"], mel["duration_beats"], mel["pitch"].astype(np.int64)
    # key of the melody: the major scale that covers most of its duration
    h = np.bincount(p % 12, weights=dur, minlength=12)
    tonic = int(np.argmax([h[(_MAJOR + t) % 12].sum() for t in range(12)]))
    scale = (_MAJOR + tonic) % 12
    triads = [scale[[d, (d + 2) % 7, (d + 4) % 7]] for d in range(7)]
    low = int(np.percentile(p, 20)) - 2
    c_on, c_dur, c_p = [], [], []
    for bar in range(int(np.ceil((on.max() + dur.max()) / 4))):
        m = (on >= bar * 4) & (on < bar * 4 + 4)
        if m.any():
            pc = int(p[m][np.argmax(dur[m])] % 12)
            choices = [t for t in triads if pc in t] or triads
        else:
            choices = triads
        tri = choices[int(rng.integers(0, len(choices)))]
        root = int(tri[0])
        # close position under the tune, bass an octave and more below
        chord = []
        for c in tri:
            x = low - ((low - int(c)) % 12)
            chord.append(x)
        bass = low - 12 - ((low - root) % 12)
        for x in chord:
            c_on.append(bar * 4.0)
            c_dur.append(2.0)
            c_p.append(x)
        for k, x in enumerate([bass, bass + 7 if (bass + 7) % 12 in tri else bass + 12, bass + 12, chord[-1]]):
            c_on.append(bar * 4.0 + k)
            c_dur.append(1.0)
            c_p.append(x)
    on2, dur2, p2 = _embellish(on, dur, p, rng)
    k = int(rng.choice([-5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 6]))
    all_on = np.concatenate([on2, c_on])
    trk = np.concatenate([np.zeros(on2.size, np.int64), np.ones(len(c_on), np.int64)])
    o = np.argsort(all_on, kind="stable")
    return all_on[o], np.concatenate([dur2, c_dur])[o], (np.concatenate([p2, c_p]) + k)[o], trk[o]


def mashup(n, rng, i, other):
    """The MELODY track (embellished) over the PIANO track of another song moved to the
    melody's key and under the tune, all transposed (the other song is *not* a right
    answer, though its harmony is all there)."""
    mel = _sel(n, n["track"] == "MELODY")
    acc = _sel(other, other["track"] == "PIANO")
    on, dur, p = mel["onset_beats"].copy(), mel["duration_beats"].copy(), mel["pitch"].astype(np.int64)
    hm = np.bincount(p % 12, weights=dur, minlength=12)
    ha = np.bincount(acc["pitch"].astype(np.int64) % 12, weights=acc["duration_beats"], minlength=12)
    shift = int(np.argmax([np.dot(np.roll(ha, t), hm) for t in range(12)]))
    a_on, a_dur, a_p = acc["onset_beats"], acc["duration_beats"], acc["pitch"].astype(np.int64) + shift
    ceiling = int(np.percentile(p, 20)) - 1
    while (a_p > ceiling).any():
        a_p = np.where(a_p > ceiling, a_p - 12, a_p)
    span = np.ceil(a_on.max() + 1)
    reps = int(np.ceil((on.max() + 1) / span))
    a_on = np.concatenate([a_on + r * span for r in range(reps)])
    a_dur, a_p = np.tile(a_dur, reps), np.tile(a_p, reps)
    m = a_on <= on.max()
    a_on, a_dur, a_p = a_on[m], a_dur[m], a_p[m]
    on, dur, p = _embellish(on, dur, p, rng)
    k = int(rng.choice([-5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 6]))
    all_on = np.concatenate([on, a_on])
    trk = np.concatenate([np.zeros(on.size, np.int64), np.ones(a_on.size, np.int64)])
    o = np.argsort(all_on, kind="stable")
    return all_on[o], np.concatenate([dur, a_dur])[o], (np.concatenate([p, a_p]) + k)[o], trk[o]


def reharmonised_merged(n, rng, i):
    """``reharmonised`` with melody and chords merged into one track (both invariances)."""
    return reharmonised(n, rng, i)[:3]


# -- metrics -----------------------------------------------------------------------------
def average_precision(ranked: list[str], relevant: set[str]) -> float:
    hits, total = 0, 0.0
    for i, pid in enumerate(ranked, 1):
        if pid in relevant:
            hits += 1
            total += hits / i
    return total / len(relevant) if relevant else 0.0


def first_rank(ranked, relevant):
    for i, pid in enumerate(ranked, 1):
        if pid in relevant:
            return i
    return None


class Baseline:
    """TF-IDF over exact-interval 3-grams of the skyline, cosine similarity."""

    def __init__(self, ids, melodies):
        from scipy import sparse

        self.ids = np.asarray(ids, dtype=object)
        self.vocab = {}
        rows, cols = [], []
        for r, m in enumerate(melodies):
            for g in self._grams(m):
                rows.append(r)
                cols.append(self.vocab.setdefault(g, len(self.vocab)))
        tf = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(ids), len(self.vocab)))
        tf.sum_duplicates()
        df = np.bincount(tf.indices, minlength=len(self.vocab))
        self.idf = np.log((1 + len(ids)) / (1 + df)) + 1
        x = tf.multiply(self.idf).tocsr()
        norm = np.sqrt(x.multiply(x).sum(axis=1)).A.ravel()
        self.x = sparse.diags(1 / np.maximum(norm, 1e-12)) @ x
        self.xt = self.x.T.tocsr()

    @staticmethod
    def _grams(pitches):
        iv = np.diff(np.asarray(pitches, np.int64))
        iv = np.clip(iv, -24, 24)
        return set(zip(iv[:-2].tolist(), iv[1:-1].tolist(), iv[2:].tolist())) if iv.size >= 3 else set()

    def rank(self, pitches, exclude=None, top=TOP):
        counts = defaultdict(float)
        for g in self._grams(pitches):
            j = self.vocab.get(g)
            if j is not None:
                counts[j] += 1
        if not counts:
            return []
        js = np.fromiter(counts.keys(), np.int64)
        q = np.fromiter(counts.values(), np.float64) * self.idf[js]
        q /= np.linalg.norm(q)
        scores = np.asarray(self.xt[js].T @ q).ravel()
        order = np.argsort(-scores, kind="stable")
        out = [self.ids[o] for o in order if self.ids[o] != exclude and scores[o] > 0]
        return out[:top]


def summarize(name, aps, p1, ranks, n_missing):
    return {
        "tier": name, "n": len(aps), "MAP": float(np.mean(aps)) if aps else float("nan"),
        "P@1": float(np.mean(p1)) if p1 else float("nan"),
        "mean_rank": float(np.mean(ranks)) if ranks else float("nan"), "missing": n_missing,
    }


def run_tiers(index: CoverIndex, songs, main, notes, diff, seed, tiers, baseline=None, max_songs=None):
    """Every tier draws its queries from its own generator (seeded by ``seed`` and the
    tier), so a tier's queries do not depend on which other tiers run."""
    bench = sorted(diff)
    if max_songs:
        bench = bench[:max_songs]
    results, base_results, lat, cpu = {}, {}, defaultdict(list), defaultdict(list)
    gen = {"transposed_tempo": transposed_tempo, "piano_merge": piano_merge, "excerpt": excerpt,
           "transcription": transcription, "accompaniment": accompaniment, "reharmonised": reharmonised,
           "reharmonised_merged": reharmonised_merged}
    failures = defaultdict(list)
    for tier in tiers:
        rng = np.random.default_rng([seed, TIERS.index(tier)])
        aps, p1, ranks, miss = [], [], [], 0
        baps, bp1, branks, bmiss = [], [], [], 0
        queries = []
        if tier == "arrangement":
            for s in bench:
                for pid in diff[s]:
                    queries.append((s, pid, None))
        else:
            for i, s in enumerate(bench):
                n = notes[main[s]]
                if tier == "mashup":
                    other = bench[(i + 1 + int(rng.integers(0, len(bench) - 1))) % len(bench)]
                    arrays = mashup(n, rng, i, notes[main[other]])
                else:
                    arrays = gen[tier](n, rng, i)
                queries.append((s, None, arrays))
        for s, pid, arrays in queries:
            relevant = set(songs[s]) - ({pid} if pid else set())
            t0 = time.perf_counter()
            c0 = time.process_time()
            if pid is not None:
                q = index.query_for_piece(pid)
            else:
                q = query_from_notes(f"{tier}:{s}", *arrays)
            res = index.search(q, top=TOP, explain_top=10)
            lat[tier].append(time.perf_counter() - t0)
            cpu[tier].append(time.process_time() - c0)
            ranked = res.column("piece_id").to_pylist()
            aps.append(average_precision(ranked, relevant))
            fr = first_rank(ranked, relevant)
            p1.append(fr == 1)
            if fr is None:
                miss += 1
            else:
                ranks.append(fr)
            if aps[-1] < 0.9:
                failures[tier].append((s, round(aps[-1], 3), fr))
            if baseline is not None:
                src = notes[pid] if pid is not None else dict(zip(["onset_beats", "duration_beats", "pitch"], arrays))
                mel = skyline(src["onset_beats"], src["duration_beats"], src["pitch"])[0]
                branked = baseline.rank(mel, exclude=pid)
                baps.append(average_precision(branked, relevant))
                bfr = first_rank(branked, relevant)
                bp1.append(bfr == 1)
                if bfr is None:
                    bmiss += 1
                else:
                    branks.append(bfr)
        results[tier] = summarize(tier, aps, p1, ranks, miss)
        if baseline is not None:
            base_results[tier] = summarize(tier, baps, bp1, branks, bmiss)
    return results, base_results, (lat, cpu), failures


def print_table(results, base_results, lat_cpu):
    lat, cpu = lat_cpu
    print(f"\n{'tier':18s} {'n':>4s}  {'MAP':>6s} {'P@1':>6s} {'rank1st':>7s} {'miss':>4s} | "
          f"{'base MAP':>8s} {'P@1':>6s} {'rank1st':>7s} {'miss':>4s} | {'p50 ms':>7s} {'p95 ms':>7s}"
          f" {'cpu p50':>7s} {'cpu p95':>7s}")
    for tier, r in results.items():
        b = base_results.get(tier, {})
        ls = np.asarray(lat[tier]) * 1000
        print(f"{tier:18s} {r['n']:4d}  {r['MAP']:6.3f} {r['P@1']:6.3f} {r['mean_rank']:7.2f} {r['missing']:4d} | "
              f"{b.get('MAP', float('nan')):8.3f} {b.get('P@1', float('nan')):6.3f} "
              f"{b.get('mean_rank', float('nan')):7.2f} {b.get('missing', 0):4d} | "
              f"{np.percentile(ls, 50):7.1f} {np.percentile(ls, 95):7.1f} "
              f"{np.percentile(np.asarray(cpu[tier]) * 1000, 50):7.1f} {np.percentile(np.asarray(cpu[tier]) * 1000, 95):7.1f}")
    allv = np.concatenate([np.asarray(v) for v in lat.values()]) * 1000
    allc = np.concatenate([np.asarray(v) for v in cpu.values()]) * 1000
    print(f"{'all queries':18s} {len(allv):4d}  latency (wall) p50 {np.percentile(allv, 50):.1f} ms, "
          f"p95 {np.percentile(allv, 95):.1f} ms; CPU time p50 {np.percentile(allc, 50):.1f} ms, "
          f"p95 {np.percentile(allc, 95):.1f} ms (load average {os.getloadavg()[0]:.1f})")


def synthetic_index(index: CoverIndex, n_total: int, rng) -> CoverIndex:
    """``index``'s real pieces plus synthetic ones up to ``n_total`` that are no version of
    any real song but look like real pieces to the search:

    - melody: a second-order Markov chain over the real melodies' pitch-class intervals
      (steps of at most a tritone), as many notes as a random real piece, on its onsets;
      a second melody line the same way where that piece has one;
    - harmony: the real beat chroma spliced from 4-beat chunks of random real pieces,
      each chunk at a random transposition;
    - bass line: the strongest pitch class of each 2-beat frame of that chroma (silent
      frames left out), repeats merged (a stand-in for the lowest notes, which a
      synthetic piece does not have);
    - vector: computed from these sequences by the same function as for real pieces;
    - notes (where ``index`` has notes, for the note vote): that real piece's notes at
      their onsets and octaves, each note's pitch class drawn from this chroma at its
      beat (in proportion), and the synthetic lead line's notes (a stand-in for an
      arrangement of this harmony: as dense and in the same registers as a real one).
    """
    from indexers.features import EMBED_DIM, embedding, melody_intervals

    n_real = len(index)
    n_syn = n_total - n_real
    # interval statistics of the real melodies
    iv = index.iv[:index.iv_off[-1]].astype(np.int64) - 1  # the lead lines'
    same = np.repeat(np.arange(n_real), np.diff(index.iv_off))
    ok = (same[:-2] == same[2:])
    tri = np.zeros((11, 11, 11))
    np.add.at(tri, (iv[:-2][ok], iv[1:-1][ok], iv[2:][ok]), 1)
    tri += 0.1
    cum = np.cumsum(tri / tri.sum(axis=2, keepdims=True), axis=2)
    src = rng.integers(0, n_real, n_syn)
    beats = np.diff(index.beat_off)
    mel_n = np.diff(index.mel_off)
    sec_n, thr_n = np.diff(index.sec_off), np.diff(index.line_off[2])
    lead_end, sec_end = index.mel_off[-1], index.sec_off[-1]
    chroma_parts, pitch_parts, onset_parts = [index.chroma_q.ravel()], [index.mel_pitch[:lead_end]], \
        [index.mel_onset[:lead_end]]
    sec_pitch_parts, sec_onset_parts = [index.mel_pitch[lead_end:sec_end]], [index.mel_onset[lead_end:sec_end]]
    thr_pitch_parts, thr_onset_parts = [index.mel_pitch[sec_end:]], [index.mel_onset[sec_end:]]
    bass_parts, bass_n = [index.bass_pc], list(np.diff(index.bass_off))
    vecs = np.zeros((n_syn, EMBED_DIM), np.float32)
    note_onsets, note_pitches = [], []
    real_nb = beats
    def markov(lens):
        """Synthetic melodies of these lengths, all at once, one Markov step per column."""
        width = int(lens.max()) if lens.size else 0
        a, b = rng.integers(0, 11, lens.size), rng.integers(0, 11, lens.size)
        steps = np.zeros((lens.size, max(width - 1, 0)), np.int64)
        for t in range(steps.shape[1]):
            u = rng.random(lens.size)
            c = np.minimum((cum[a, b] < u[:, None]).sum(axis=1), 10)
            steps[:, t] = c + 1
            a, b = b, c
        signed = np.where(steps <= 6, steps, steps - 12)
        start = 60 + rng.integers(0, 12, lens.size)
        out = np.concatenate([start[:, None], start[:, None] + np.cumsum(signed, axis=1)], axis=1)
        return (out - 48) % 36 + 48  # keep it in range by octave folds

    lens = mel_n[src]
    mel = markov(lens)
    sec = markov(sec_n[src])
    thr = markov(thr_n[src])
    for k, s in enumerate(src):
        p = mel[k, : int(lens[k])]
        pitch_parts.append(p.astype(np.int16))
        onset_parts.append(index.mel_onset[index.mel_off[s]:index.mel_off[s + 1]])
        sec_pitch_parts.append(sec[k, : int(sec_n[s])].astype(np.int16))
        sec_onset_parts.append(index.mel_onset[index.sec_off[s]:index.sec_off[s + 1]])
        thr_pitch_parts.append(thr[k, : int(thr_n[s])].astype(np.int16))
        thr_onset_parts.append(index.mel_onset[index.line_off[2][s]:index.line_off[2][s + 1]])
        nb = int(beats[s])
        n_chunks = -(-nb // 4)
        donors = rng.integers(0, n_real, n_chunks)
        starts = (rng.random(n_chunks) * np.maximum(real_nb[donors] - 4, 1)).astype(np.int64)
        shifts = rng.integers(0, 12, n_chunks)
        local = np.arange(nb)
        chunk = local // 4
        rows = index.beat_off[donors[chunk]] + np.minimum(starts[chunk] + local % 4, real_nb[donors[chunk]] - 1)
        cols = (np.arange(12)[None, :] - shifts[chunk][:, None]) % 12
        ch = index.chroma_q[rows[:, None], cols]
        chroma_parts.append(ch.ravel())
        frames = np.add.reduceat(ch.astype(np.int64), np.arange(0, nb, 2), axis=0) if nb else np.zeros((0, 12))
        top = np.argmax(frames, axis=1)[frames.max(axis=1) > 0]
        bass = top[np.r_[True, top[1:] != top[:-1]]] if top.size else top
        bass_parts.append(bass.astype(np.int8))
        bass_n.append(bass.size)
        vecs[k] = embedding(ch.astype(np.float32) / 127.0, melody_intervals(p)[0])
        if index.notes is not None:
            on, pitch = index.notes.of_row(s)
            w = np.cumsum(ch[np.clip(on.astype(np.int64), 0, max(nb - 1, 0))].astype(np.float64), axis=1) \
                if nb else np.zeros((on.size, 12))
            u = rng.random(on.size) * w[:, -1]
            pc = np.where(w[:, -1] > 0, np.argmax(w > u[:, None], axis=1), rng.integers(0, 12, on.size))
            note_onsets.append(np.concatenate([on, onset_parts[-1]]))
            note_pitches.append(np.concatenate([pitch // 12 * 12 + pc, p]))
    syn_notes = None
    if index.notes is not None:  # the real pieces' rows, then the synthetic ones'
        real = [index.notes.of_row(i) for i in range(n_real)]
        syn_notes = notes_from_arrays([o for o, _ in real] + note_onsets, [p for _, p in real] + note_pitches)
    return CoverIndex(list(index.ids) + [f"synthetic{i:07d}" for i in range(n_syn)],
                      list(index.paths) + [f"synthetic/{i:07d}.mid" for i in range(n_syn)],
                      np.concatenate([index.vectors, vecs]), np.concatenate(chroma_parts),
                      np.concatenate([beats, beats[src]]), np.concatenate(pitch_parts), np.concatenate(onset_parts),
                      np.concatenate([mel_n, mel_n[src]]), np.concatenate(bass_parts), bass_n,
                      second_pitch=np.concatenate(sec_pitch_parts), second_onset=np.concatenate(sec_onset_parts),
                      n_second=np.concatenate([sec_n, sec_n[src]]),
                      third_pitch=np.concatenate(thr_pitch_parts), third_onset=np.concatenate(thr_onset_parts),
                      n_third=np.concatenate([thr_n, thr_n[src]]), notes=syn_notes)


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", default="/tmp/atlas_covers_bench", help="benchmark database folder (built if absent)")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--songs", type=int, default=None, help="use only the first N benchmark songs")
    ap.add_argument("--tiers", default=",".join(TIERS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-100k", action="store_true")
    ap.add_argument("--large", type=int, default=100_000, help="pieces in the scale test")
    ap.add_argument("--show-failures", action="store_true")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    db = Path(args.db)
    build_db(db, Path(args.data))
    t0 = time.perf_counter()
    index = load_index(db)
    print(f"index: {len(index)} pieces loaded in {time.perf_counter() - t0:.2f} s, "
          f"{index.nbytes() / 1e6:.1f} MB of arrays", file=sys.stderr)
    songs, main_, notes = load_corpus(db)
    n_merged = merge_duplicate_songs(songs, main_, notes, index)
    print(f"songs stored twice under two numbers, merged in the ground truth: {n_merged}", file=sys.stderr)
    diff = differing_songs(songs, main_, notes)
    print(f"benchmark songs (a version overlaps the main file < 90%): {len(diff)} of {len(songs)}; "
          f"{sum(len(v) for v in diff.values())} differing versions", file=sys.stderr)
    mel = [skyline(notes[p]["onset_beats"], notes[p]["duration_beats"], notes[p]["pitch"])[0] for p in index.ids]
    baseline = Baseline(index.ids, mel)
    tiers = args.tiers.split(",")
    unknown = sorted(set(tiers) - set(TIERS))
    if unknown:
        ap.error(f"unknown tier(s) {unknown}; choose from {TIERS}")
    # warm the numba kernels so the first query does not carry compile time
    index.search(index.query_for_piece(index.ids[0]), top=5)
    results, base, lat, failures = run_tiers(index, songs, main_, notes, diff, args.seed, tiers, baseline, args.songs)
    print(f"\n== POP909-dev: {len(index)} pieces; ours vs baseline (interval 3-gram TF-IDF, skyline) ==")
    print_table(results, base, lat)
    if args.show_failures:
        for tier, f in failures.items():
            print(tier, f[:20])
    if not args.no_100k:
        rss0 = rss_mb()
        t0 = time.perf_counter()
        big = synthetic_index(index, args.large, rng)
        print(f"\nsynthetic index of {len(big):,} pieces built in {time.perf_counter() - t0:.1f} s; "
              f"arrays {big.nbytes() / 1e6:.0f} MB; process RSS {rss_mb():.0f} MB (+{rss_mb() - rss0:.0f} MB)")
        r2, _, lat2, _ = run_tiers(big, songs, main_, notes, diff, args.seed, tiers, None, args.songs or 40)
        print(f"== {len(big):,} pieces (real POP909 + synthetic); ours only ==")
        print_table(r2, {}, lat2)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS {peak:.0f} MB")


if __name__ == "__main__":
    main()
