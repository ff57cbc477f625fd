"""Finding the files to ingest under the paths a user gives."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["MIDI_SUFFIXES", "AUDIO_SUFFIXES", "SUFFIXES", "Discovery", "discover"]

MIDI_SUFFIXES = (".mid", ".midi")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")  # decoded by ingest/audio.py
SUFFIXES = MIDI_SUFFIXES + AUDIO_SUFFIXES


@dataclass
class Discovery:
    files: list[str] = field(default_factory=list)  # in a stable (sorted) order
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    skipped_other: int = 0  # files inside folders that are not of a supported type


def discover(paths, suffixes=SUFFIXES) -> Discovery:
    """Expand files and folders (recursively) into the list of files to ingest.

    A path named explicitly that does not exist, cannot be read, or has an unsupported
    type is a problem (reported and recorded); other files met inside folders are
    counted in ``skipped_other`` and reported in the summary.
    """
    out = Discovery()
    seen = set()

    def add(p: str):
        if p not in seen:
            seen.add(p)
            out.files.append(p)

    for raw in paths:
        p = Path(raw)
        if not p.exists():
            out.problems.append((str(raw), "no such file or folder"))
        elif p.is_dir():
            found = []
            for root, dirs, names in os.walk(p, onerror=lambda e: out.problems.append((e.filename, f"cannot list folder ({e.strerror})"))):
                dirs.sort()
                for n in names:
                    if n.lower().endswith(suffixes):
                        found.append(os.path.join(root, n))
                    else:
                        out.skipped_other += 1
            for f in sorted(found):
                add(f)
        elif str(p).lower().endswith(suffixes):
            add(str(p))
        else:
            out.problems.append(
                (str(raw), f"unsupported file type '{p.suffix or '(none)'}' (expected {', '.join(suffixes)})")
            )
    return out
