"""What an evaluation is asked to do (`EvalOptions`) and the deterministic example subset: beneath
the evaluation service and the tracks (`evaluator/tracks/*`), which both use them."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["EvalOptions", "subset_examples"]


@dataclass(frozen=True)
class EvalOptions:
    device: str | None = None
    """'cpu', 'cuda' or 'cuda:N'; None picks cuda when available, else cpu."""
    max_examples: int | None = None
    """Evaluate a deterministic subset of at most this many examples per task."""
    force: bool = False
    """Evaluate again even when this checkpoint content was already evaluated on this eval set."""
    allow_mismatch: bool = False
    """Evaluate despite a token-space mismatch (the MLflow run is tagged as such)."""
    write_eval_json: bool = True
    """Also write eval_step<step>.json into the checkpoint's run folder."""
    max_tokens_per_batch: int | None = None
    """Padded tokens per forward pass; None = automatic."""
    log_to_mlflow: bool = True
    connector_builder: str | None = None
    """Builder (``package.module:function``) the user chose for connector checkpoints
    (`--connector-builder`); it comes first (`evaluator.connectors.choose_builder`)."""


def subset_examples(examples: Sequence[Any], max_per_task: int) -> list[Any]:
    """The same subset every time: per task, the examples whose id hashes lowest."""
    by_task: dict[str, list[Any]] = {}
    for ex in examples:
        by_task.setdefault(ex.task, []).append(ex)
    chosen = []
    for task in sorted(by_task):
        ranked = sorted(by_task[task], key=lambda e: hashlib.sha256(e.example_id.encode()).hexdigest())
        chosen.extend(ranked[:max_per_task])
    keep = {id(e) for e in chosen}
    return [e for e in examples if id(e) in keep]
