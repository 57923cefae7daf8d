"""What a checkpoint track tells the registry: its files, how it is read, and its audit rules.

A track is one way of saving what was trained on top of a frozen base (trainable rows, a vision
connector, ...). The scanner, the audit and the store never branch on a track's letter: they ask
the `Track` registered under that letter (``registry.tracks.get``). Adding a track means adding one
module here that subclasses `Track`, and listing it in ``registry/tracks/__init__.py``.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from registry.findings import Finding

if TYPE_CHECKING:  # the audit passes its context in; no import at run time
    from registry.audit_context import AuditContext
    from registry.entities import CheckpointEntity, EvalSetEntity, RunEntity
    from registry.token_space import TokenSpace

__all__ = ["Track", "Registration", "FileEntry"]


@dataclass(frozen=True)
class Registration:
    """What the registry stores for a valid checkpoint (keyword arguments of `upsert_checkpoint`)."""

    step: int | None
    content_hash: str
    files: list[dict[str, Any]]
    base_model: str | None
    token_space: TokenSpace | None = None
    token_space_path: str | None = None
    row_start: int | None = None
    row_end: int | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)


class FileEntry:
    """The bits of os.DirEntry the scanner uses, for a checkpoint that is one file."""

    def __init__(self, path: Path):
        self.name, self.path = path.name, str(path)

    def is_symlink(self) -> bool:
        return os.path.islink(self.path)

    def stat(self) -> os.stat_result:
        return os.stat(self.path)


class Track(ABC):
    letter: ClassVar[str]
    """Stored in the registry's ``track`` column ("A", "B")."""
    title: ClassVar[str]
    """What users call it: "trainable rows", "vision connector"."""
    step_priority: ClassVar[int] = 0
    """When two tracks of one run share a step, an imported eval_step file links to the higher."""
    stats_title: ClassVar[str] = "statistics"
    """What `evalboard stats` reports for this track (page and command titles)."""
    uses_token_space: ClassVar[bool] = False
    """Whether the run-level token_space.json applies to its checkpoints."""

    # --- discovery ------------------------------------------------------------------------

    def claims_dir(self, path: Path) -> bool:
        """A folder that is one checkpoint of this track (by the files it holds)."""
        return False

    def claims_file(self, path: Path) -> bool:
        """A single file that is one checkpoint of this track."""
        return False

    def run_dir(self, path: Path) -> Path:
        """The run folder of the checkpoint at ``path``: the folder holding it. A track whose tool
        keeps its final save in the run folder itself says so (the scanner then also looks inside)."""
        return path.parent

    def companion_dir(self, path: Path) -> bool:
        """Whether folder ``path`` only holds files of another checkpoint of this track (so it is
        not a checkpoint itself, even when it is named like one)."""
        return False

    def inspects_file(self, path: Path) -> bool:
        """A file `evalboard inspect` should read as a checkpoint of this track (looser than
        `claims_file`: any name, when the user points at it)."""
        return self.claims_file(path)

    def complete(self, path: Path) -> bool:
        """Every file a checkpoint of this track needs exists (a watcher waits until then)."""
        return path.is_file() if not path.is_dir() else all((path / n).exists() for n in self.required_files())

    def required_files(self) -> tuple[str, ...]:
        """Files a folder checkpoint cannot be without (alternatives are handled by `complete`)."""
        return ()

    def entries(self, path: Path) -> dict[str, Any]:
        """The checkpoint's files, from one directory listing (a rescan reads nothing else)."""
        if not path.is_dir():
            return {path.name: FileEntry(path)} if os.path.lexists(path) else {}
        with os.scandir(path) as it:
            return {e.name: e for e in it if e.name in self.file_names()}

    def file_names(self) -> tuple[str, ...]:
        """The names of the files that make a folder checkpoint of this track."""
        return ()

    # --- reading ----------------------------------------------------------------------------

    @abstractmethod
    def register(self, path: Path, *, run_token_space: TokenSpace | None) -> Registration:
        """Read and validate ``path``; raises EvalboardError naming the file."""

    @abstractmethod
    def inspect(self, path: Path) -> dict[str, Any]:
        """`evalboard inspect`'s summary of a checkpoint of this track."""

    # --- audit ------------------------------------------------------------------------------

    def run_findings(self, ctx: AuditContext, run: RunEntity, checkpoints: list[CheckpointEntity]) -> list[Finding]:
        """Findings about this track's valid checkpoints of one run."""
        return []

    @abstractmethod
    def pair_findings(
        self, ctx: AuditContext, ck: CheckpointEntity, es: EvalSetEntity, run_name: str | None
    ) -> list[Finding]:
        """Can valid checkpoint ``ck`` be evaluated on ``es``? Error-level findings mean no."""

    @abstractmethod
    def accepts_evalset(self, es: EvalSetEntity) -> bool:
        """Whether ``es`` is the kind of eval set this track evaluates (the audit only pairs those)."""

    def evalset_group(self, ctx: AuditContext, ck: CheckpointEntity) -> Hashable:
        """Checkpoints of one run in the same group get one finding per eval set, not one each."""
        return None

    overridable: ClassVar[frozenset[str]] = frozenset()
    """Finding codes that `--allow-mismatch` lets an evaluation go past."""
