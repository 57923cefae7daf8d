"""One audit finding: a severity, a stable code and one sentence naming both sides."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Finding", "SEVERITIES"]

SEVERITIES = ("error", "warning", "info")


@dataclass(frozen=True)
class Finding:
    severity: str
    code: str
    message: str
    run: str | None = None
    checkpoint: str | None = None
    evalset: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["detail"] = dict(self.detail)
        return d


def checkpoint_label(path: str) -> str:
    """``run/checkpoint_7000``: how findings name a checkpoint."""
    from pathlib import Path

    p = Path(path)
    return f"{p.parent.name}/{p.name}"
