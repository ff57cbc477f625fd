"""Configuration of the audio side: where model files are, and analysis limits.

Model weights are never downloaded: each model's path is configuration, read from an
environment variable first, then from a TOML file (``$ATLAS_CONFIG``, default
``~/.config/harmony-atlas/config.toml``)::

    [audio]
    demucs_model = "/models/htdemucs.th"       # or env ATLAS_DEMUCS_MODEL
    describe_model = "/models/gemma3.gguf"     # or env ATLAS_DESCRIBE_MODEL
    max_seconds = 1800                         # or env ATLAS_AUDIO_MAX_S

An empty value means "not configured".
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

__all__ = ["AUDIO_SUFFIXES", "config_file", "setting", "model_path", "max_seconds", "check", "audio_available",
           "startup_notes"]

from atlas_db.errors import BadInputError  # noqa: E402
from ingest.sources import AUDIO_SUFFIXES  # noqa: E402  (re-exported)

_ENV = {
    "demucs_model": "ATLAS_DEMUCS_MODEL",
    "describe_model": "ATLAS_DESCRIBE_MODEL",
    "max_seconds": "ATLAS_AUDIO_MAX_S",
}
DEFAULT_MAX_SECONDS = 1800.0


def config_file() -> Path:
    return Path(os.environ.get("ATLAS_CONFIG") or Path.home() / ".config" / "harmony-atlas" / "config.toml")


def _file_settings() -> dict:
    """The ``[audio]`` table of the config file ({} when there is no such file). A file
    that cannot be used is an error, not "nothing configured": a typo in it would
    otherwise show up as a model "not configured" or a limit silently ignored."""
    p = config_file()
    if not p.exists():
        return {}
    try:
        with open(p, "rb") as fh:
            audio = tomllib.load(fh).get("audio", {})
    except OSError as e:
        raise BadInputError(f"config file {p}: cannot read it ({e.strerror or e})") from e
    except tomllib.TOMLDecodeError as e:
        raise BadInputError(f"config file {p}: not valid TOML ({e})") from e
    if not isinstance(audio, dict):
        raise BadInputError(f"config file {p}: 'audio' must be a table ([audio] with key = value lines), "
                            f"not {type(audio).__name__}")
    return audio


def setting(key: str):
    """The configured value of ``key`` (environment first, then the config file), or None."""
    env = os.environ.get(_ENV[key])
    if env is not None:
        return env or None
    val = _file_settings().get(key)
    return val if val not in ("", None) else None


def model_path(key: str) -> Path | None:
    """Configured model file for ``key`` ('demucs_model' or 'describe_model'), or None."""
    val = setting(key)
    return Path(os.path.expanduser(str(val))) if val else None


def max_seconds() -> float:
    """The longest recording ingested, in seconds (a bad value is an error, not 1800)."""
    val = setting("max_seconds")
    if val is None:
        return DEFAULT_MAX_SECONDS
    try:
        sec = float("nan") if isinstance(val, bool) else float(val)  # TOML's true is not 1 s
    except (TypeError, ValueError):
        sec = float("nan")
    if not sec > 0 or sec == float("inf"):
        raise BadInputError(f"{max_seconds_source()} = {val!r}: give the longest recording to ingest as seconds "
                            "> 0, e.g. 1800")
    return sec


def max_seconds_source() -> str:
    """Where the limit of :func:`max_seconds` is set (or can be)."""
    if os.environ.get(_ENV["max_seconds"]):
        return _ENV["max_seconds"]
    if setting("max_seconds") is not None:
        return f"[audio] max_seconds in {config_file()}"
    return f"{_ENV['max_seconds']} or [audio] max_seconds in {config_file()}"


def check() -> None:
    """Raise BadInputError (one line) when the configuration cannot be used: said once,
    at the start of an ingest with recordings, instead of once per file."""
    _file_settings()  # read even where the environment sets every value
    max_seconds()


def audio_available() -> str | None:
    """None when the audio extra is installed, else a one-line reason."""
    import importlib.util

    for mod in ("essentia", "soundfile", "pyloudnorm", "soxr", "onnxruntime", "basic_pitch", "scipy"):
        if importlib.util.find_spec(mod) is None:
            return f"audio support is not installed ({mod} missing): pip install 'harmony-atlas[audio]'"
    return None


def startup_notes() -> list[str]:
    """One line per optional audio model that is absent (said once per ingest run)."""
    notes = []
    for key, what, env in (
        ("demucs_model", "stem separation (Demucs)", "ATLAS_DEMUCS_MODEL"),
        ("describe_model", "descriptions (GGUF model)", "ATLAS_DESCRIBE_MODEL"),
    ):
        p = model_path(key)
        if p is None:
            absent = "" if config_file().exists() else ", a file that does not exist yet"
            notes.append(f"atlas: note: {what} skipped: no model configured "
                         f"(set {env} or [audio] {key} in {config_file()}{absent})")
        elif p.is_dir():
            notes.append(f"atlas: note: {what} skipped: {p} is a folder; give the model file in it")
        elif not p.is_file():
            notes.append(f"atlas: note: {what} skipped: model file {p} not found")
        else:
            reason = _check_loads(key, p)
            if reason:
                notes.append(f"atlas: note: {what} skipped: {reason}")
    return notes


def _check_loads(key: str, path: Path) -> str | None:
    from atlas_db.errors import MissingModelError

    try:
        if key == "demucs_model":
            from ingest.stems import load_model

            load_model(path)
        else:
            from ingest.describe import load_llm

            load_llm(path)
    except MissingModelError as e:
        return str(e)
    return None
