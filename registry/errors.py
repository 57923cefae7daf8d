"""The exceptions evalboard raises on purpose.

    EvalboardError                 any failure we anticipated; the CLI prints it on one line, exit 2
    ├── InvalidInput               a file or value is malformed (names the file and the problem)
    │   └── UnsafePickle           a .pt file that would need to run code to load
    ├── NotFound                   a name, id or path that is not registered / does not exist
    ├── Incompatible               token spaces, base models or shapes that do not fit together
    ├── IntegrityError             a registered file changed on disk since registration
    ├── StoreError                 the SQL store failed (wraps SQLAlchemyError)
    ├── LeaseLost                  a worker's job is no longer its own (fencing token is stale)
    └── TrackingError              MLflow could not take a result (unreachable server, broken store)

A traceback from the CLI means a bug, never bad input.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "EvalboardError",
    "InvalidInput",
    "UnsafePickle",
    "NotFound",
    "Incompatible",
    "IntegrityError",
    "StoreError",
    "LeaseLost",
    "TrackingError",
]


MAX_MESSAGE_CHARS = 2000
"""Messages quote offending values; a 10 MB string in a file must not become a 10 MB error line."""


class EvalboardError(Exception):
    """Base class: the message is a single line that says what is wrong and, if known, where."""

    retryable: bool = False

    def __init__(self, message: str, *, path: str | Path | None = None):
        self.path = str(path) if path is not None else None
        message = " ".join(str(message).split())  # always one line
        if self.path and self.path not in message:
            message = f"{self.path}: {message}"
        if len(message) > MAX_MESSAGE_CHARS:  # a hostile value quoted in a message stays readable
            message = message[: MAX_MESSAGE_CHARS - 1] + "…"
        super().__init__(message)


class InvalidInput(EvalboardError):
    """A file or value is malformed; re-running will not help."""


class UnsafePickle(InvalidInput):
    """A pickle that needs more than weights_only=True allows (it could run code)."""


class NotFound(EvalboardError):
    """Something named is not registered or does not exist."""


class Incompatible(EvalboardError):
    """Inputs that are each valid but do not fit together (token space, base model, shapes)."""


class IntegrityError(EvalboardError):
    """A file's bytes no longer match the sha256 recorded when it was registered."""


class StoreError(EvalboardError):
    """The SQL store failed; usually transient (locked database, lost connection)."""

    retryable = True


class LeaseLost(EvalboardError):
    """The job is no longer this worker's: its lease expired and another worker claimed it, or it
    was cancelled. The worker must drop it without writing anything."""


class TrackingError(EvalboardError):
    """MLflow could not take a result; nothing of it was recorded. Usually transient."""

    retryable = True
