"""Comparing two evaluation results: the one path used by `evalboard compare`, the Compare and
Checkpoint pages and the reports.

A result's per-example losses come from its MLflow run (the source of truth: it travels with the
result to any machine that reads the same tracking server), through a local cache keyed by run id;
a result that was never logged to MLflow falls back to the local file it names. Results imported
from ``eval_step*.json`` have none: they keep their point values and get no interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from registry import bootstrap, per_example
from registry.entities import CheckpointEntity, EvalResultEntity, EvalSetEntity
from registry.errors import InvalidInput, NotFound, TrackingError
from registry.eval_key import subset_of
from registry.per_example import ExampleCache, ExampleLosses
from registry.store import Registry

__all__ = [
    "ResultExamples",
    "Comparison",
    "example_cache",
    "load_examples",
    "compare_results",
    "loss_intervals_of",
    "results_for",
    "pick_result",
]

NO_INTERVAL_IMPORTED = "no interval (imported)"
NO_INTERVAL_MISSING = "no interval (per-example losses not found)"
NO_INTERVAL_OLD = "no interval (per-example file predates NLL sums; re-evaluate)"


def example_cache(home: str | Path, tracking_uri: str) -> ExampleCache:
    """The per-example cache of an evalboard home: ``<home>/cache/per_example/<run id>.parquet``."""
    return ExampleCache(tracking_uri, Path(home) / "cache" / "per_example")


@dataclass(frozen=True)
class ResultExamples:
    """A result with its per-example losses, or why it has none."""

    result: EvalResultEntity
    examples: ExampleLosses | None
    missing: str | None = None
    """Why there is no interval ("no interval (imported)", ...); None when `examples` can give one."""

    @property
    def losses(self) -> dict[str, float]:
        """The result's point values, task -> loss ("all" included)."""
        return {
            t: float(m["loss"])
            for t, m in (self.result.metrics or {}).items()
            if isinstance(m, Mapping) and m.get("loss") is not None
        }


def load_examples(result: EvalResultEntity, cache: ExampleCache | None) -> ResultExamples:
    """The result's per-example losses: its MLflow run's artifact (via ``cache``), else the local
    file its evaluation wrote; an imported result has none."""
    if result.source == "import":
        return ResultExamples(result, None, NO_INTERVAL_IMPORTED)
    found: ExampleLosses | None = None
    failure: TrackingError | None = None
    if cache is not None and result.mlflow_run_id:
        try:
            found = cache.get(result.mlflow_run_id)
        except TrackingError as e:  # MLflow unreachable: the local file, when it is still there
            failure = e
    local = (result.extra or {}).get("per_example_path")
    if found is None and isinstance(local, str) and local and Path(local).is_file():
        found = per_example.read(local)
    if found is None:
        if failure is not None:
            raise failure
        return ResultExamples(result, None, NO_INTERVAL_MISSING)
    if not found.comparable:
        return ResultExamples(result, found, NO_INTERVAL_OLD)
    return ResultExamples(result, found)


@dataclass(frozen=True)
class Comparison:
    """B against A on one eval set: point values always, the paired interval when both results
    carry per-example losses."""

    a: ResultExamples
    b: ResultExamples
    paired: bootstrap.PairedComparison | None
    missing: str | None
    """Why `paired` is None."""

    def delta(self, task: str = "all") -> float:
        la, lb = self.a.losses.get(task), self.b.losses.get(task)
        return lb - la if la is not None and lb is not None else math.nan


def compare_results(
    a: ResultExamples,
    b: ResultExamples,
    *,
    iters: int = bootstrap.DEFAULT_ITERS,
    seed: int = bootstrap.DEFAULT_SEED,
    confidence: float = bootstrap.DEFAULT_CONFIDENCE,
) -> Comparison:
    """Paired bootstrap of ``loss(b) - loss(a)``; `Incompatible` (naming both eval-set hashes)
    when the two were computed on different eval sets or subsets."""
    for side in (a, b):
        if side.missing is not None:
            return Comparison(a, b, None, side.missing)
    assert a.examples is not None and b.examples is not None
    paired = bootstrap.paired_bootstrap(a.examples, b.examples, iters=iters, seed=seed, confidence=confidence)
    return Comparison(a, b, paired, None)


def loss_intervals_of(
    side: ResultExamples, *, iters: int = bootstrap.DEFAULT_ITERS, seed: int = bootstrap.DEFAULT_SEED
) -> dict[str, bootstrap.LossInterval] | None:
    """The result's loss intervals per task, or None when it has no per-example losses."""
    if side.missing is not None or side.examples is None:
        return None
    return bootstrap.loss_intervals(side.examples, iters=iters, seed=seed)


def results_for(reg: Registry, checkpoint: CheckpointEntity, evalset: EvalSetEntity) -> list[EvalResultEntity]:
    """The checkpoint's results on the eval set, newest first; when it has none on this content,
    those on earlier contents of the same name (``name@hash``), so that comparing across a
    replaced eval set is refused with both hashes rather than reported as missing."""
    mine = [  # its own, and those computed for the same content elsewhere (a result belongs to content)
        r
        for r in reg.list_eval_results(run_ids=[checkpoint.run_id], same_content=True)
        if r.checkpoint_id == checkpoint.id
        or (checkpoint.content_hash and r.checkpoint_hash == checkpoint.content_hash)
    ]
    exact = [r for r in mine if r.evalset_id == evalset.id or r.evalset_hash == evalset.content_hash]
    if exact:
        return sorted(exact, key=lambda r: r.id, reverse=True)
    family = evalset.name.split("@", 1)[0]
    names = {e.id for e in reg.list_evalsets() if e.name == family or e.name.startswith(family + "@")}
    return sorted((r for r in mine if r.evalset_id in names), key=lambda r: r.id, reverse=True)


def pick_result(
    reg: Registry, checkpoint: CheckpointEntity, evalset: EvalSetEntity, *, max_examples: int | None = None
) -> EvalResultEntity:
    """The newest result of the checkpoint on the eval set with the given subset (default: the
    whole eval set, else the newest of any subset)."""
    if max_examples is not None and (isinstance(max_examples, bool) or max_examples < 1):
        raise InvalidInput(f"max_examples must be a whole number ≥ 1, not {max_examples!r}")
    found = results_for(reg, checkpoint, evalset)
    if max_examples is not None:
        found = [r for r in found if subset_of(r) == max_examples]
    else:
        whole = [r for r in found if subset_of(r) is None]
        found = whole or found
    if not found:
        subset = f" with --max-examples {max_examples}" if max_examples else ""
        raise NotFound(
            f"checkpoint {checkpoint.path} (step {checkpoint.step}) has no result on eval set {evalset.name!r}"
            f"{subset}; evaluate it first: evalboard eval {checkpoint.path} --evalset {evalset.name}"
        )
    return found[0]
