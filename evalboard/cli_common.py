"""What every `evalboard` command module shares: the consoles, settings and registry, progress
bars, JSON output and the checkpoint / eval-set resolvers. Command modules import from here
(never from each other), and `evalboard.cli` imports the command modules: imports go downward.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from registry.errors import InvalidInput, NotFound

__all__ = [
    "out",
    "err",
    "verbose",
    "settings",
    "open_registry",
    "say_registry",
    "print_json",
    "progress",
    "resolve_checkpoint",
    "resolve_evalset",
]

out = Console(soft_wrap=True, markup=False)  # user strings (paths, run names) are never markup
err = Console(stderr=True, soft_wrap=True, markup=False)


def verbose(flag: bool) -> None:
    """A command's own `--verbose` (the same as `evalboard --verbose COMMAND`)."""
    if flag:
        from evalboard import logs

        logs.configure(True)


def settings():
    """The settings every command uses (workspace config under environment), announced in one
    log line, shown with --verbose (and always by services, which log at INFO)."""
    import logging

    from registry.settings import Settings

    s = Settings.from_env()
    logging.getLogger("evalboard").info("%s", s.summary_line())
    return s


def open_registry():
    from registry.store import Registry

    s = settings()
    return Registry(settings=s), s


def say_registry(s, what: str, count: int) -> None:
    """For listing commands: which registry was read, so an empty answer is never a mystery."""
    where = (
        f"workspace {s.workspace.root}"
        if s.workspace
        else "no workspace found here or above (defaults; see `evalboard info`)"
    )
    err.print(f"{count} {what} in registry {s.db_url} ({where})", markup=False, highlight=False)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def progress(description: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
        disable=not err.is_terminal and not _force_progress(),
    )


def _force_progress() -> bool:
    from registry.settings import Settings

    return Settings.from_env().progress


def resolve_checkpoint(reg, ref: str):
    """A checkpoint by path (registered on the fly if needed) or by numeric id."""
    from registry.scanner import scan

    if ref.isdigit() and not Path(ref).exists():
        return reg.get_checkpoint(id=int(ref))
    path = Path(os.path.realpath(ref))
    if not path.exists():
        raise InvalidInput("does not exist", path=ref)
    try:
        return reg.get_checkpoint(path=str(path))
    except NotFound:
        scan(reg, [path])
        return reg.get_checkpoint(path=str(path))


def resolve_evalset(reg, ref: str):
    """An eval set by registered name, or by path (registered on the fly)."""
    from registry.scanner import register_evalset

    try:
        return reg.get_evalset(name=ref)
    except NotFound:
        if not Path(ref).exists():
            names = ", ".join(e.name for e in reg.list_evalsets()) or "none registered"
            raise NotFound(f"eval set {ref!r} is neither a registered name ({names}) nor a path") from None
    return register_evalset(reg, ref)[0]
