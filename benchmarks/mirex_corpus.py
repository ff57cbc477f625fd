"""Annotated pieces for pattern discovery, derived by rule from music21 corpus scores.

No public MIREX ground truth (JKU PDD) ships with the project, so this script writes
its own, from scores whose repeats are marked, with two deterministic rules on one time
grid:

0. **One time grid.** Each part is expanded with music21's ``expandRepeats``; all parts
   are put on one measure grid (a measure lasts as long as it does in most parts: in
   music21's reading of some scores one part has a measure a beat too long, which would
   shift that part against the others for the rest of the piece). A note keeps its
   offset within its measure; in the first measure (a pickup), its offset from the
   measure's end.
1. **Sections (repeat signs).**
   In the expanded order of (original) measure numbers, a measure number seen again starts
   a repeat; it runs as long as the measure numbers go on matching the first statement
   (so a first-ending bar, which is not played again, ends it). The pattern is every
   note of every part that starts in those measures; its occurrences are every
   statement of that run of measures in the expanded score (the first statement, its
   repeat, and a third where a da capo plays it again). Sections shorter than
   ``MIN_SECTION_NOTES`` notes are left out.
2. **Opening motif.** The top part's notes in the first two measures (chords: the
   highest note) are the motif; its occurrences are every place where a part's line
   (ties merged, chords: highest note) has the same pitch intervals and the same
   inter-onset intervals -- at any transposition, in any part. Kept when it occurs at
   least three times (twice is already said by a section repeat).

The corpus has no fugue with its subject marked (``bach/bwv846`` is the C major
prelude only), so fugue entries are not among the rules. The pieces are polyphonic
(four-part chorales, string quartet movements, piano pieces) with repeat signs; the
list is fixed (``PIECES``) and split alternately (sorted by name) into a *fit* part,
on which discover's constants were chosen, and a *held-out* part.

Each piece is written as a MIDI file (one track per part, 480 ticks per beat, a beat is
a quarter note, 100 bpm) and a JSON file ``{"piece": path, "n_notes": n, "patterns":
[{"name": ..., "rule": ..., "occurrences": [[[onset_beats, pitch], ...], ...]}]}``.
Onsets are the MIDI ticks / 480, rounded to 6 decimals (what ``atlas discover`` reports).

    .venv/bin/python benchmarks/mirex_corpus.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TPQ = 480
RULES_VERSION = 2  # stored with each piece; a piece written by other rules is derived again
MIN_SECTION_NOTES = 8
MOTIF_MEASURES = 2
MIN_MOTIF_NOTES = 4
MIN_MOTIF_OCCURRENCES = 3

# Polyphonic corpus pieces with repeat signs (chorales in bar form, quartet minuets and
# movements, piano pieces); see split() for the fit / held-out parts.
PIECES = (
    "bach/bwv256.mxl", "bach/bwv257.mxl", "bach/bwv258.mxl", "bach/bwv260.mxl",
    "bach/bwv261.mxl", "bach/bwv262.mxl", "bach/bwv267.mxl", "bach/bwv269.mxl",
    "bach/bwv270.mxl", "bach/bwv271.mxl", "bach/bwv272.mxl", "bach/bwv278.mxl",
    "haydn/opus1no1/movement1.mxl", "haydn/opus1no1/movement2.mxl", "haydn/opus1no1/movement4.mxl",
    "haydn/opus1no1/movement5.mxl", "mozart/k155/movement2.mxl",
    "mozart/k156/movement3.mxl", "mozart/k156/movement4.mxl", "mozart/k458/movement2.mxl",
    "mozart/k80/movement3.mxl", "mozart/k80/movement4.mxl", "beethoven/opus18no1/movement3.mxl",
    "schumann_clara/polonaise_op1n1.mxl", "schumann_clara/polonaise_op1n2.mxl",
    "schumann_clara/polonaise_op1n3.mxl", "schumann_clara/polonaise_op1n4.mxl",
    "joplin/maple_leaf_rag.mxl",
)


def split(names):
    """(fit, held_out): alternate pieces in sorted order."""
    s = sorted(names)
    return s[0::2], s[1::2]


def _ticks(offset) -> int:
    return int(round(float(offset) * TPQ))


def _beats(ticks: int) -> float:
    return round(ticks / TPQ, 6)


def derive(corpus_path: str):
    """(notes, patterns) of one corpus piece: notes ``(part, pitch, onset_ticks,
    duration_ticks)``; patterns as in the module docstring."""
    from music21 import corpus

    score = corpus.parse(corpus_path)
    parts = [p.expandRepeats().stripTies() for p in score.parts]
    measures = [list(p.getElementsByClass("Measure")) for p in parts]
    if len({len(ms) for ms in measures}) != 1 or not measures[0]:
        raise ValueError("parts have different numbers of measures after expansion")
    # one measure grid for all parts: a measure lasts as long as it does in most parts
    # (music21's reading of some scores has a part with a measure a beat too long)
    durations = []
    for k in range(len(measures[0])):
        ds = [_ticks(ms[k].duration.quarterLength) for ms in measures]
        durations.append(max(set(ds), key=lambda d: (ds.count(d), -d)))
    starts = [0]
    for d in durations:
        starts.append(starts[-1] + d)
    measure_spans = [(m.number, starts[k], starts[k + 1]) for k, m in enumerate(measures[0])]
    notes = []  # (part, pitch, onset_ticks, duration_ticks)
    lines = []  # per part: [(onset_ticks, top pitch)]
    for pi, ms in enumerate(measures):
        line = {}
        for k, m in enumerate(ms):
            own = _ticks(m.duration.quarterLength)
            for n in m.recurse().notes:
                within = _ticks(n.getOffsetInHierarchy(m))
                # a note keeps its offset in its measure; in the first measure (a pickup)
                # its offset from the measure's end
                t = starts[k] + within if k else starts[1] - (own - within)
                if t < 0:
                    continue
                d = max(1, _ticks(n.duration.quarterLength))
                ps = [p.midi for p in n.pitches] if n.isChord else [n.pitch.midi]
                for p in ps:
                    notes.append((pi, p, t, d))
                line[t] = max(ps + [line.get(t, -1)])
        lines.append(sorted(line.items()))
    notes = sorted(set(notes), key=lambda x: (x[2], x[1], x[0]))
    points = sorted({(t, p) for _, p, t, _ in notes})
    patterns = []
    # rule 1: sections from the expanded order of measure numbers
    numbers = [s[0] for s in measure_spans]
    first_at = {}
    seen_runs = []
    k = 0
    while k < len(numbers):
        i = first_at.get(numbers[k])
        if i is None:
            first_at[numbers[k]] = k
            k += 1
            continue
        L = 0
        while k + L < len(numbers) and i + L < k and numbers[i + L] == numbers[k + L]:
            L += 1
        run = numbers[i : i + L]
        # every statement of this run of measures (a da capo plays it a third time)
        at = [x for x in range(len(numbers) - L + 1) if numbers[x : x + L] == run]
        occs = []
        for x in at:
            a0, a1 = measure_spans[x][1], measure_spans[x + L - 1][2]
            occs.append([[_beats(t), p] for t, p in points if a0 <= t < a1])
        if min(len(o) for o in occs) >= MIN_SECTION_NOTES and run not in seen_runs:
            seen_runs.append(run)
            patterns.append({"name": f"section m{numbers[i]}-{numbers[i + L - 1]}", "rule": "repeat signs",
                             "occurrences": occs})
        k += L
    # rule 2: the opening motif of the top part, everywhere at any transposition
    end = measure_spans[min(MOTIF_MEASURES, len(measure_spans)) - 1][2]
    motif = [(t, p) for t, p in lines[0] if t < end]
    if len(motif) >= MIN_MOTIF_NOTES:
        shape = [(motif[x + 1][0] - motif[x][0], motif[x + 1][1] - motif[x][1]) for x in range(len(motif) - 1)]
        occs = []
        for line in lines:
            last_end = -1
            for s in range(len(line) - len(motif) + 1):
                if line[s][0] < last_end:
                    continue
                if all((line[s + x + 1][0] - line[s + x][0], line[s + x + 1][1] - line[s + x][1]) == shape[x]
                       for x in range(len(shape))):
                    occs.append([[_beats(t), p] for t, p in line[s : s + len(motif)]])
                    last_end = line[s + len(motif) - 1][0] + 1
        occs.sort()
        if len(occs) >= MIN_MOTIF_OCCURRENCES:
            patterns.append({"name": "opening motif", "rule": "exact intervals and rhythm, any part",
                             "occurrences": occs})
    return notes, patterns


def write_midi(path: Path, notes) -> None:
    """One track per part (channels 0, 1, ...), TPQ ticks per beat, 100 bpm."""
    from discover import _write  # benchmarks/discover.py (this folder is on sys.path)

    parts = sorted({n[0] for n in notes})
    _write(path, [[(p, t / TPQ, d / TPQ) for pi, p, t, d in notes if pi == part] for part in parts], tpq=TPQ)


def build(out_dir: Path, pieces=PIECES, log=print) -> list[Path]:
    """Write ``<name>.mid`` and ``<name>.json`` per piece into out_dir (kept when present
    and written by these rules);
    returns the JSON paths of pieces with at least one pattern."""
    out_dir.mkdir(parents=True, exist_ok=True)
    done = []
    for cp in pieces:
        name = cp.replace("/", "_").rsplit(".", 1)[0]
        js, mid = out_dir / f"{name}.json", out_dir / f"{name}.mid"
        if not js.exists() or json.loads(js.read_text()).get("rules_version") != RULES_VERSION:
            try:
                notes, patterns = derive(cp)
            except Exception as e:  # music21 cannot expand some repeat structures
                log(f"{cp}: left out ({type(e).__name__}: {e})")
                continue
            write_midi(mid, notes)
            n_notes = len({(n[1], n[2]) for n in notes})
            js.write_text(json.dumps({"piece": cp, "rules_version": RULES_VERSION, "midi": mid.name,
                                      "n_notes": n_notes, "patterns": patterns}))
        meta = json.loads(js.read_text())
        log(f"{cp}: {meta['n_notes']} notes, " + "; ".join(
            f"{p['name']} ({len(p['occurrences'])} x {len(p['occurrences'][0])})" for p in meta["patterns"]))
        if meta["patterns"]:
            done.append(js)
    return done


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/mirex_corpus"))
