"""Short natural-language descriptions of pieces from a local GGUF model (llama-cpp-python).

The model is a *base* (not instruction-tuned) language model, so the prompt is plain
completion: a catalogue entry whose measured facts (tempo, key, loudness, ...) are filled
in, ending with "Description:"; the model writes the rest of that line. Decoding is
greedy (temperature 0) with a fixed seed, so the same model and facts give the same text.
The output is normalised to plain ASCII (no curly quotes, dashes, odd spaces).

Model path: ``ATLAS_DESCRIBE_MODEL`` or ``[audio] describe_model`` in the config file (see
``ingest.audio_config``). No model configured: nothing is described, a note says so once
per run, and everything else goes on. ``atlas describe`` (re)describes stored pieces.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from atlas_db.errors import MissingModelError
from ingest.quiet_stderr import quiet_stderr

__all__ = ["PROMPT_VERSION", "normalise_text", "facts_prompt", "fact_words", "keep_completion", "load_llm", "generate",
           "describe_if_configured", "description_table", "describe_stored", "configured_model"]

PROMPT_VERSION = "describe-2"  # 2: the sentence starts with the measured words
MAX_TOKENS = 48
N_CTX = 1024

_TRANSLATE = {
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"', "\u00ab": '"', "\u00bb": '"',
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": " - ", "\u2015": " - ", "\u2212": "-",
    "\u2026": "...", "\u2022": "*", "\u00b7": "*",
}
_SPACES = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000\t\r\n\f\v]")
_ZERO_WIDTH = re.compile(r"[\u200b-\u200d\u2060\ufeff]")


def normalise_text(text: str) -> str:
    """Plain ASCII-safe text: curly quotes -> straight, dashes -> '-', odd spaces -> ' ',
    other characters transliterated (NFKD) or dropped; whitespace collapsed."""
    text = _ZERO_WIDTH.sub("", text)
    text = _SPACES.sub(" ", text)
    text = "".join(_TRANSLATE.get(ch, ch) for ch in text)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = "".join(ch for ch in text if ch.isprintable())
    return re.sub(r" {2,}", " ", text).strip()


def _tidy(text: str) -> str:
    """Whole sentences of the completion's first line, each at most once, at most two
    (a small base model tends to repeat itself)."""
    text = normalise_text(text.split("\n")[0])
    parts = [p.strip() for p in re.split(r"(?<=[.!?])\s+", text) if p.strip()]
    whole = [p for p in parts if p[-1] in ".!?"] or parts[:1]
    out: list[str] = []
    for p in whole:
        if p not in out:
            out.append(p)
    return " ".join(out[:2])


# Two invented entries show the base model the form of the answer (few-shot completion).
_PREAMBLE = """Music library catalogue. Each entry lists measured facts about a recording, then one plain sentence describing how it sounds.

Title: Night Drive
Tempo: 124 BPM
Key: A minor
Loudness: -9 LUFS
Length: 215 seconds
Description: A driving, loud electronic track in A minor with a steady dance beat.

Title: Morning Song
Tempo: 72 BPM
Key: F major
Loudness: -20 LUFS
Length: 180 seconds
Description: A slow, quiet piano piece in F major with a gentle, calm mood.

"""


# Words for measured facts. The sentence starts with them and the model completes it: a
# 270M base model left to itself copied the examples ("slow, quiet piano piece in F major"
# for an F# major track at 133 BPM, or A major called C major).
SLOW_BPM, FAST_BPM = 80.0, 115.0
QUIET_LUFS, LOUD_LUFS = -20.0, -11.0
_OPPOSITE = {"slow": ("fast", "driving", "upbeat", "up-tempo"), "fast": ("slow",), "mid-tempo": ("slow", "fast"),
             "quiet": ("loud",), "loud": ("quiet", "soft")}
_KEY_WORDS = re.compile(r"\b[A-G][#b]? (?:major|minor)\b")


def fact_words(values: dict, key_name: str | None, kind: str = "track") -> str:
    """The measured start of the description: 'A fast, loud track in F# major'."""
    bpm, lufs = values.get("tempo_bpm"), values.get("loudness_integrated_lufs")
    words = []
    if bpm is not None and bpm == bpm:
        words.append("slow" if bpm < SLOW_BPM else "fast" if bpm > FAST_BPM else "mid-tempo")
    if lufs is not None and lufs == lufs:
        words += ["quiet"] if lufs < QUIET_LUFS else ["loud"] if lufs > LOUD_LUFS else []
    head = f"A {', '.join(words)} {kind}" if words else f"A {kind}"
    return f"{head} in {key_name}" if key_name else head


def keep_completion(start: str, completion: str) -> str:
    """``start`` plus the model's completion, unless the completion contradicts the
    measured words (another key, 'slow' after 'fast', 'quiet' after 'loud'): then the
    measured start alone, as one sentence."""
    text = _tidy(start + completion)
    said = set(re.findall(r"[a-z-]+", start.lower()))
    rest = text[len(start):].lower()
    wrong = any(re.search(rf"\b{w}\b", rest) for s_ in said for w in _OPPOSITE.get(s_, ()))
    wrong = wrong or any(k not in start for k in _KEY_WORDS.findall(text[len(start):]))
    return start + "." if wrong or not text.startswith(start) else text


def facts_prompt(title: str, values: dict, key_name: str | None, sources: list[str], n_notes: int,
                 parts_label: str = "Stems") -> str:
    """The completion prompt: a catalogue entry of measured facts, then 'Description:'
    (the caller appends :func:`fact_words`, which the model completes)."""
    def fmt(name, spec, suffix=""):
        x = values.get(name)
        return None if x is None or x != x else f"{x:{spec}}{suffix}"

    lines = [f"Title: {normalise_text(title)}"]
    facts = [
        ("Tempo", fmt("tempo_bpm", ".0f", " BPM")),
        ("Key", key_name),
        ("Loudness", fmt("loudness_integrated_lufs", ".0f", " LUFS")),
        ("Length", fmt("duration_s", ".0f", " seconds")),
        ("Danceability", fmt("danceability", ".1f", " (0 to 3)")),
        ("Brightness", fmt("spectral_centroid_hz", ".0f", " Hz spectral centroid")),
    ]
    lines += [f"{k}: {v}" for k, v in facts if v]
    if sources and sources != ["mix"]:
        lines.append(f"{parts_label}: " + ", ".join(normalise_text(x) for x in sources))
    if n_notes:
        lines.append(f"Notes: {n_notes}")
    return _PREAMBLE + "\n".join(lines) + "\nDescription:"


_LLMS: dict[str, object] = {}


def load_llm(path):
    """Load (once per process) the GGUF model at ``path``; MissingModelError if unusable."""
    path = Path(path)
    key = str(path)
    if key in _LLMS:
        return _LLMS[key]
    if not path.is_file():
        raise MissingModelError(f"{path}: GGUF model file not found")
    try:
        from llama_cpp import Llama
    except ImportError:
        raise MissingModelError(
            f"{path}: llama-cpp-python is not installed (pip install 'harmony-atlas[audio]')"
        ) from None
    try:
        with quiet_stderr():
            llm = Llama(model_path=str(path), n_ctx=N_CTX, n_threads=1, seed=0, verbose=False)
    except Exception as e:
        raise MissingModelError(f"{path}: cannot load the GGUF model ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    _LLMS[key] = llm
    return llm


def generate(llm, prompt: str, start: str = "") -> str:
    """The description: ``start`` (the measured words, :func:`fact_words`) completed by
    the model, checked by :func:`keep_completion`; without ``start``, the model's line."""
    with quiet_stderr():
        out = llm.create_completion(prompt + (" " + start if start else ""), max_tokens=MAX_TOKENS,
                                    temperature=0.0, top_k=1, repeat_penalty=1.3, stop=["\n", "Title:"], seed=0)
    text = out["choices"][0]["text"]
    return keep_completion(start, text) if start else _tidy(text)


def description_table(rows: list[dict]) -> pa.Table:
    from atlas_db.schema_audio import TABLES

    return pa.Table.from_pylist(rows, schema=TABLES["descriptions"])


def describe_if_configured(piece_id: str, title: str, values: dict, key_name, sources, n_notes) -> pa.Table:
    """The piece's ``descriptions`` row when a usable model is configured, else empty."""
    from ingest.audio_config import model_path

    p = model_path("describe_model")
    if p is None or not p.is_file():
        return description_table([])
    try:
        llm = load_llm(p)
    except MissingModelError:
        return description_table([])  # reported once per run by ingest.audio_config.startup_notes
    text = generate(llm, facts_prompt(title, values, key_name, sources, n_notes), fact_words(values, key_name))
    if not text:
        return description_table([])
    return description_table([{"piece_id": piece_id, "model": p.name, "prompt_version": PROMPT_VERSION,
                               "description": text, "created_at": datetime.now(timezone.utc)}])


def configured_model(explicit=None) -> Path:
    """The GGUF model to use: ``explicit`` if given, else the configured one.

    Raises MissingModelError with a one-line message when there is none."""
    from ingest.audio_config import config_file, model_path

    p = Path(explicit) if explicit else model_path("describe_model")
    if p is None:
        raise MissingModelError(
            f"no description model configured: pass --model FILE.gguf, set ATLAS_DESCRIBE_MODEL, "
            f"or set [audio] describe_model in {config_file()}"
        )
    load_llm(p)  # raises MissingModelError (missing file, not a GGUF model, no llama-cpp-python)
    return p


def _stored_facts(con, piece_id: str) -> tuple[str, dict, str | None, list[str], int, str]:
    """(title, values, key_name, parts, n_notes, parts_label) of a stored piece."""
    title, kind, n_notes, duration_s = con.execute(
        "SELECT title, kind, n_notes, duration_s FROM pieces WHERE piece_id = ?", [piece_id]).fetchone()
    values = {"duration_s": duration_s}
    if kind == "audio":
        for name, value in con.execute(
            "SELECT name, value FROM features WHERE piece_id = ? AND source = 'mix'", [piece_id]).fetchall():
            values[name] = value
        row = con.execute("SELECT key_name FROM audio_files WHERE piece_id = ?", [piece_id]).fetchone()
        key_name = row[0] if row else None
        parts = [r[0] for r in con.execute(
            "SELECT name FROM tracks WHERE piece_id = ? ORDER BY track_index", [piece_id]).fetchall()]
        return title, values, key_name, parts, n_notes, "Stems"
    row = con.execute("SELECT tempo_bpm FROM tempo_changes WHERE piece_id = ? ORDER BY time_ticks LIMIT 1",
                      [piece_id]).fetchone()
    if row:
        values["tempo_bpm"] = row[0]
    row = con.execute("SELECT key_name FROM key_signatures WHERE piece_id = ? ORDER BY time_ticks LIMIT 1",
                      [piece_id]).fetchone()
    parts = [r[0] for r in con.execute(
        "SELECT name FROM tracks WHERE piece_id = ? AND n_notes > 0 AND name <> '' ORDER BY track_index LIMIT 8",
        [piece_id]).fetchall()]
    return title, values, row[0] if row else None, parts, n_notes, "Tracks"


def describe_stored(db_dir, piece_ids: list[str] | None = None, *, model=None, redo: bool = False,
                    progress=None) -> pa.Table:
    """Describe stored pieces (all, or ``piece_ids``) that have no description (or all
    of them with ``redo``); writes ``descriptions`` and returns the rows written.

    progress: optional callable ``(n_done, n_total)``.
    """
    from atlas_db.connection import reading, writing

    path = configured_model(model)
    llm = load_llm(path)
    with reading(db_dir) as con:
        if piece_ids is None:
            piece_ids = [r[0] for r in con.execute("SELECT piece_id FROM pieces ORDER BY piece_id").fetchall()]
        if not redo:
            have = {r[0] for r in con.execute("SELECT piece_id FROM descriptions").fetchall()}
            piece_ids = [p for p in piece_ids if p not in have]
        facts = [(pid, _stored_facts(con, pid)) for pid in piece_ids]
    rows = []
    for i, (pid, (title, values, key_name, parts, n_notes, label)) in enumerate(facts):
        kind = "track" if label == "Stems" else "piece"
        text = generate(llm, facts_prompt(title, values, key_name, parts, n_notes, label),
                        fact_words(values, key_name, kind))
        if text:
            rows.append({"piece_id": pid, "model": path.name, "prompt_version": PROMPT_VERSION,
                         "description": text, "created_at": datetime.now(timezone.utc)})
        if progress:
            progress(i + 1, len(facts))
    table = description_table(rows)
    if rows:
        with writing(db_dir) as con:
            con.register("_desc", table)
            con.execute("INSERT OR REPLACE INTO descriptions SELECT * FROM _desc")
            con.unregister("_desc")
    return table
