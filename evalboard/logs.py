"""What the command line prints besides its results: our own log lines and progress bars only.

Libraries we call (transformers, huggingface_hub, MLflow, Alembic, SQLAlchemy, urllib3, ...)
log at INFO, draw their own progress bars and log errors (with tracebacks) that they then raise:
a user wants evalboard's progress and, when something fails, evalboard's one line that names the
file or store and the problem. So their loggers are silent on stderr (only CRITICAL passes) and
their bars off, unless `--verbose`, which shows everything from INFO up.
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["configure", "OURS", "THIRD_PARTY"]

OURS = ("evalboard", "evaluator", "registry", "dashboard")
THIRD_PARTY = (
    "transformers",
    "huggingface_hub",
    "mlflow",
    "alembic",
    "urllib3",
    "httpx",
    "filelock",
    "fsspec",
    "streamlit",
)
# Their INFO is statement echo and compiler metrics: debugging tools, never news.
ALWAYS_QUIET = ("sqlalchemy", "torch")
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Handler(logging.StreamHandler):
    """Ours, so configuring twice never adds a second handler (and a second copy of each line)."""


def configure(verbose: bool = False, *, ours: int = logging.WARNING) -> None:
    """Logs to stderr: evalboard's loggers at `ours`, every other library's only at CRITICAL, and
    no third-party progress bars; with `verbose`, everything at INFO and their bars back on."""
    root = logging.getLogger()
    if not any(isinstance(h, _Handler) for h in root.handlers):
        handler = _Handler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        root.addHandler(handler)
    third = logging.INFO if verbose else logging.CRITICAL
    root.setLevel(logging.INFO if verbose else logging.CRITICAL)
    for name in ALWAYS_QUIET:
        logging.getLogger(name).setLevel(logging.WARNING if verbose else logging.CRITICAL)
    for name in OURS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else ours)
    for name in THIRD_PARTY:
        logger = logging.getLogger(name)
        logger.setLevel(third)
        # MLflow (and Alembic under it) attach their own stderr handlers; ours prints for them.
        for h in [h for h in logger.handlers if isinstance(h, logging.StreamHandler)]:
            logger.removeHandler(h)
        logger.propagate = True
    # MLflow would attach its own stderr handler when it is imported (after this runs): leave its
    # loggers to ours, at the levels above.
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    if not verbose:
        # Should MLflow still set up its own loggers (MLFLOW_CONFIGURE_LOGGING=true), at this level.
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "CRITICAL")
        # Read when MLflow moves artifacts and when huggingface_hub / transformers are imported
        # (transformers takes its progress-bar switch from huggingface_hub at import).
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
