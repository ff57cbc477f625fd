"""The embedded default corpus for ``atlas demo``: public-domain scores that ship inside
music21's pip package (Bach chorales, Palestrina mass movements), written out as MIDI.

The scores are MusicXML / Humdrum; music21 renders each to a Standard MIDI File once
(into ``<db>/demo_corpus/``) and later runs reuse the files, so a second demo is fast.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

__all__ = ["DEMO_SELECTION", "demo_sources", "build_demo_corpus"]

# (corpus folder, glob, at most how many files): ~480 pieces, about a minute on 2 cores.
# Chorales (0.2 s each to render) and Palestrina mass movements (0.5 s); the string
# quartets and madrigals are left out because music21 takes 2-12 s to render each one.
DEMO_SELECTION = [
    ("bach", "*.mxl", 410),
    ("palestrina", "Agnus_*.krn", 40),
    ("palestrina", "Kyrie_*.krn", 30),
]
MAX_SCORE_BYTES = 200_000


def _corpus_root() -> Path:
    import music21

    return Path(music21.__file__).parent / "corpus"


def demo_sources() -> list[Path]:
    """The score files the demo converts, in a stable order."""
    root = _corpus_root()
    out = []
    for folder, pattern, limit in DEMO_SELECTION:
        found = sorted(p for p in (root / folder).glob(pattern) if p.stat().st_size < MAX_SCORE_BYTES)
        out += found[:limit]
    return out


def _convert(job: tuple[str, str]) -> tuple[str, str | None]:
    src, dst = job
    try:
        import music21

        score = music21.converter.parse(src)
        mf = music21.midi.translate.streamToMidiFile(score)
        tmp = dst + ".part"
        with open(tmp, "wb") as fh:
            fh.write(mf.writestr())
        os.replace(tmp, dst)  # never leave a half-written .mid behind
        return src, None
    except Exception as e:  # a score music21 cannot render is reported, the rest goes on
        return src, f"{type(e).__name__}: {e}".splitlines()[0][:200]


def build_demo_corpus(out_dir, *, workers: int = 2, progress=None, sources=None) -> tuple[list[str], list[tuple[str, str]]]:
    """Render the demo scores to MIDI under ``out_dir``; returns (midi paths, failures).

    progress: optional callable ``(n_done, n_total)``; sources: score files to render
    instead of :func:`demo_sources` (they must lie inside music21's corpus).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    root = _corpus_root()
    jobs, paths = [], []
    for src in (demo_sources() if sources is None else [Path(x) for x in sources]):
        rel = src.relative_to(root)
        name = "__".join(rel.with_suffix("").parts) + ".mid"
        dst = out_dir / rel.parts[0] / name
        dst.parent.mkdir(exist_ok=True)
        paths.append(str(dst))
        if not dst.exists():
            jobs.append((str(src), str(dst)))
    failures = []
    done = len(paths) - len(jobs)
    if progress:
        progress(done, len(paths))
    if len(jobs) == 1 or (jobs and workers <= 1):
        for job in jobs:
            src, err = _convert(job)
            done += 1
            if err:
                failures.append((src, err))
            if progress:
                progress(done, len(paths))
    elif jobs:
        ctx = mp.get_context("spawn")
        with ctx.Pool(max(1, workers)) as pool:
            for src, err in pool.imap_unordered(_convert, jobs):
                done += 1
                if err:
                    failures.append((src, err))
                if progress:
                    progress(done, len(paths))
    return [p for p in paths if os.path.exists(p)], failures
