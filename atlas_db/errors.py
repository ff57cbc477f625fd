"""The one error hierarchy of Harmony Atlas.

The CLI catches :class:`AtlasError` and prints its message as one line; anything
else is a bug and keeps its traceback.
"""

__all__ = [
    "AtlasError",
    "BadInputError",
    "IngestError",
    "MissingModelError",
    "IndexTroubleError",
    "DatabaseBusyError",
    "Interrupted",
]


class AtlasError(Exception):
    """Root of every error a user can cause or fix."""


class BadInputError(AtlasError):
    """A malformed argument or file: the message names it and says why."""


class IngestError(AtlasError):
    """One file could not be ingested; the batch goes on."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class MissingModelError(AtlasError):
    """A model file named in the configuration is not on disk."""


class IndexTroubleError(AtlasError):
    """A derived index (vectors, patterns) is missing or out of date."""


class DatabaseBusyError(AtlasError):
    """Another process held the database lock for longer than we were willing to wait."""


class Interrupted(AtlasError):
    """Ctrl-C stopped a long job; the message says what was kept (all that was committed)."""
