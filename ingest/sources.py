"""Finding the files to ingest under the paths a user gives."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["MIDI_SUFFIXES", "AUDIO_SUFFIXES", "SUFFIXES", "Discovery", "discover", "stored_path", "utf8_text", "file_path", "shown_path",
           "one_line", "not_regular_reason", "read_regular_file"]

MIDI_SUFFIXES = (".mid", ".midi")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")  # decoded by ingest/audio.py
SUFFIXES = MIDI_SUFFIXES + AUDIO_SUFFIXES


def stored_path(path: str) -> str:
    """The path as the database stores and prints it: absolute and valid UTF-8.

    Absolute, so that a piece can be named by its path from any folder later, and
    ``atlas stats --compression`` finds the files (a path as typed is relative to the
    folder the ingest ran in). Not resolved: a path through a symbolic link stays as given.
    A file name that is not UTF-8 reaches Python with surrogate escapes (PEP 383); its
    undecodable bytes become ``\\xNN`` here, so the row can be written and the name
    still shows which file it was.
    """
    return utf8_text(os.path.abspath(path))


def utf8_text(text: str) -> str:
    """``text`` as valid UTF-8: a name that came from the file system with surrogate
    escapes (bytes that are not UTF-8) gets ``\\xNN`` for them, as :func:`stored_path`
    stores it (DuckDB and Arrow refuse the escapes)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")


def file_path(stored: str) -> str:
    """The file a stored path names, for opening it again: ``stored`` itself if it
    exists, else, for a name :func:`stored_path` escaped, its original bytes (as Python
    names them: surrogate escapes). Only bytes 0x80-0xff were escaped (ASCII always
    decodes), so a name's own ``\\x41`` stays as it is."""
    if "\\x" not in stored or os.path.lexists(stored):
        return stored
    raw = re.sub(rb"\\x([89a-f][0-9a-f])", lambda m: bytes([int(m.group(1), 16)]), stored.encode("utf-8"))
    return os.fsdecode(raw)


def shown_path(path: str) -> str:
    """The path for a one-line message: as is when printable, else quoted with escapes
    (a newline in a name must not split the message over two lines)."""
    path = stored_path(path)
    return path if path.isprintable() else "'" + one_line(path) + "'"


def count_of(n: int, noun: str) -> str:
    """``1 piece``, ``2,000 pieces`` (a regular plural), for the lines the commands print."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def one_line(text: str) -> str:
    """``text`` with each control character (a newline, a tab) escaped, as ``\\n``."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"))


def not_regular_reason(mode: int) -> str | None:
    """Why a file of this ``st_mode`` is not read (reading a FIFO would wait forever), or None."""
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _KINDS if test(mode)), "an unknown kind")
    return f"not a regular file ({kind})"


def read_regular_file(path) -> bytes:
    """The file's bytes; ValueError (with the one-line reason) for a FIFO, device or
    socket. O_NONBLOCK keeps the open itself from waiting for a writer on a FIFO; the
    type is checked on the open descriptor, so a file swapped after discovery is caught."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        why = not_regular_reason(os.fstat(fd).st_mode)
        if why:
            raise ValueError(why)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read()
    finally:
        os.close(fd)


@dataclass
class Discovery:
    files: list[str] = field(default_factory=list)  # in a stable (sorted) order
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    skipped_other: int = 0  # files inside folders that are not of a supported type


def discover(paths, suffixes=SUFFIXES) -> Discovery:
    """Expand files and folders (recursively) into the list of files to ingest.

    A path named explicitly that does not exist, cannot be read, or has an unsupported
    type is a problem (reported and recorded); other files met inside folders are
    counted in ``skipped_other`` and reported in the summary. Anything with a music
    suffix that is not a regular file (a FIFO, a device) is listed and refused when read.
    """
    out = Discovery()
    seen, named = set(), set()

    def add(p: str):
        if p not in seen:  # FIFOs and dangling links are refused when read (read_regular_file)
            seen.add(p)
            out.files.append(p)

    for raw in paths:
        # absolute from here on: workers (a process pool, Ray) may run in another folder
        p = Path(os.path.abspath(raw))
        if str(p) in named:  # named twice: one file, one folder, one problem
            continue
        named.add(str(p))
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
