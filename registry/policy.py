"""The enqueue policy: whether a checkpoint is queued for evaluation on an eval set, decided in one
place for every way in (the `enqueue` CLI, the dashboard's Evaluate form, `evalboard watch`, the
demo and the training callbacks).

A checkpoint is

    refused            when the audit finds an error for the pair (invalid checkpoint, token
                       spaces or widths that do not fit: `registry.audit.refusals`);
    already-queued     when a job for the same checkpoint content, eval-set content and subset is
                       queued, running or done (enqueuing again returns that job);
    already-evaluated  with `skip_evaluated`, when the registry holds an evaluator result for that
                       content and subset that reached MLflow and no job exists (without it such
                       a checkpoint is queued, and the worker completes the job by reusing the
                       result instead of computing it again);
    enqueued           otherwise: a new job.

`force=True` skips the middle two (a new job that evaluates again); refusals always hold.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from registry.audit import refusals
from registry.entities import CheckpointEntity, EvalJobEntity, EvalResultEntity, EvalSetEntity
from registry.errors import EvalboardError
from registry.eval_key import EvalKey
from registry.findings import Finding
from registry.store import Registry

__all__ = ["Decision", "ACTIONS", "enqueue_checkpoints", "prior_evaluation"]

ACTIONS = ("enqueued", "already-queued", "already-evaluated", "refused")


@dataclass(frozen=True)
class Decision:
    """What the policy did with one checkpoint."""

    checkpoint: CheckpointEntity
    action: str
    """One of `ACTIONS`."""
    detail: str = ""
    """Why a checkpoint was refused (the findings' messages, or the store's refusal)."""
    job: EvalJobEntity | None = None
    """The new or existing job ('enqueued', 'already-queued')."""
    result: EvalResultEntity | None = None
    """The result that is reused ('already-evaluated')."""
    findings: tuple[Finding, ...] = field(default=())
    """The audit's error findings ('refused' by the audit)."""
    error: str = ""
    """The exception type when the store refused the job ('refused', no findings)."""

    @property
    def kinds(self) -> tuple[str, ...]:
        """What kind of refusal: the findings' codes, or the store's exception type."""
        return tuple(sorted({f.code for f in self.findings})) or ((self.error,) if self.error else ())

    @property
    def queued(self) -> bool:
        """A job exists for it now (new or earlier)."""
        return self.action in ("enqueued", "already-queued")


def prior_evaluation(
    reg: Registry, checkpoint: CheckpointEntity, evalset: EvalSetEntity, max_examples: int | None = None
) -> EvalResultEntity | None:
    """The newest evaluator result for this checkpoint content on this eval-set content and subset
    that reached MLflow (computed for this checkpoint or another with the same content), or None."""
    if not checkpoint.content_hash:
        return None
    return reg.latest_result(EvalKey.of(checkpoint, evalset, max_examples), source="evaluator", logged_only=True)


def enqueue_checkpoints(
    reg: Registry,
    checkpoints: Iterable[CheckpointEntity],
    evalset: EvalSetEntity,
    *,
    models: Mapping[str, str] | None = None,
    force: bool = False,
    max_attempts: int = 3,
    options: Mapping[str, Any] | None = None,
    priority: int = 0,
    all_or_nothing: bool = False,
    skip_evaluated: bool = False,
) -> list[Decision]:
    """Decide for each checkpoint (see the module docstring) and queue those that should be, in
    the order given. `models` (id -> local folder) lets the audit check widths against the base
    models. With `all_or_nothing`, nothing is queued when any checkpoint is refused by the audit
    (every decision is then 'refused' or carries no job: check `any(d.action == 'refused')`)."""
    checkpoints = list(checkpoints)
    opts = dict(options or {})
    refused = refusals(reg, checkpoints, evalset, models=models)
    if all_or_nothing and refused:
        return [
            Decision(ck, "refused", _message(refused[ck.id]), findings=tuple(refused[ck.id]))
            for ck in checkpoints
            if ck.id in refused
        ]
    out = []
    for ck in checkpoints:
        if ck.id in refused:
            out.append(Decision(ck, "refused", _message(refused[ck.id]), findings=tuple(refused[ck.id])))
            continue
        out.append(
            _enqueue_one(
                reg,
                ck,
                evalset,
                force=force,
                max_attempts=max_attempts,
                options=opts,
                priority=priority,
                skip_evaluated=skip_evaluated,
            )
        )
    return out


def _enqueue_one(
    reg: Registry,
    ck: CheckpointEntity,
    evalset: EvalSetEntity,
    *,
    force: bool,
    max_attempts: int,
    options: dict[str, Any],
    priority: int,
    skip_evaluated: bool,
) -> Decision:
    try:
        if (
            skip_evaluated
            and not force
            and reg.find_active_job(checkpoint_id=ck.id, evalset_id=evalset.id, options=options) is None
        ):
            prior = prior_evaluation(reg, ck, evalset, options.get("max_examples") or None)
            if prior is not None:
                return Decision(ck, "already-evaluated", result=prior)
        job, created = reg.enqueue_job(
            checkpoint_id=ck.id,
            evalset_id=evalset.id,
            force=force,
            max_attempts=max_attempts,
            options=options,
            priority=priority,
        )
    except EvalboardError as e:
        return Decision(ck, "refused", str(e), error=type(e).__name__)
    return Decision(ck, "enqueued" if created else "already-queued", job=job)


def _message(findings: list[Finding]) -> str:
    return "; ".join(f.message for f in findings)
