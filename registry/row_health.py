"""Is a checkpoint's row-statistics document (`evaluator/stats.py`) alarming? One rule, used by
`evalboard stats`, the stats document itself and the dashboard pages, so they always agree.

Checkpoint health is about the checkpoint's own rows: a modality range with all-zero ("dead") or
NaN/Inf rows in its embedding or lm_head. The frozen base's text rows are context: a base often
has an all-zero padding row (Qwen pads its matrices), which says nothing about the checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["RowHealth", "row_health"]


@dataclass(frozen=True)
class RowHealth:
    flagged: list[dict[str, Any]] = field(default_factory=list)
    """One entry per (range, matrix) of the checkpoint with dead or non-finite rows."""
    dead_rows: int = 0
    nonfinite_rows: int = 0
    base_zero_rows: int = 0
    """All-zero rows among the base's text rows (padding, usually): reported, never an alarm."""

    @property
    def ok(self) -> bool:
        return not self.flagged

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}

    def line(self) -> str:
        base = (
            f"; the base's text rows include {self.base_zero_rows} all-zero rows (padding; context, "
            "not a checkpoint problem)"
            if self.base_zero_rows
            else ""
        )
        if self.ok:
            return "health: ok, no dead (all-zero) or non-finite rows or parameters in the checkpoint" + base
        where = ", ".join(f"{f['range']}/{f['matrix']}" for f in self.flagged)
        return (
            f"health: ALARM, {self.dead_rows} dead (all-zero) and {self.nonfinite_rows} non-finite rows "
            f"in the checkpoint's ranges ({where})" + base
        )


def row_health(stats: Mapping[str, Any]) -> RowHealth:
    """The health of one stats document (any version: only `ranges` and `base_text` are read)."""
    flagged, dead, nonfinite = [], 0, 0
    for name, per_matrix in (stats.get("ranges") or {}).items():
        for matrix, s in (per_matrix or {}).items():
            z, n = int((s or {}).get("zero_rows") or 0), int((s or {}).get("nonfinite_rows") or 0)
            if z or n:
                flagged.append({"range": name, "matrix": matrix, "zero_rows": z, "nonfinite_rows": n})
                dead, nonfinite = dead + z, nonfinite + n
    for name, s in (stats.get("modules") or {}).items():  # a connector's parameters, per module
        n = int((s or {}).get("nonfinite") or 0)
        if n:
            flagged.append({"range": name, "matrix": "params", "zero_rows": 0, "nonfinite_rows": n})
            nonfinite += n
    base = stats.get("base_text") or {}
    # with tied or shared text rows, embed and lm_head may be the same matrix: count the worst one
    base_zero = max((int((s or {}).get("zero_rows") or 0) for s in base.values()), default=0)
    return RowHealth(flagged, dead, nonfinite, base_zero)
