"""`evalboard audit`: token-space compatibility across everything registered.

Each finding has a severity — ``error`` (numbers would be wrong or meaningless: different ranges,
sizes or base models), ``warning`` (suspicious: codec/tokenizer versions differ, token space not
shipped, rows not covering a modality) or ``info`` — and one human sentence naming both sides.

The same checks decide whether an evaluation may run: `pair_findings(checkpoint, evalset)` is what
the evaluator, the queue and the dashboard's Evaluate form refuse with.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from registry import tracks
from registry.audit_context import AuditContext, base_embedding_rows
from registry.entities import CheckpointEntity, EvalSetEntity, RunEntity
from registry.findings import SEVERITIES, Finding, checkpoint_label
from registry.store import Registry

__all__ = ["Finding", "audit", "pair_findings", "refusals", "overridable", "SEVERITIES", "base_embedding_rows"]


_label = checkpoint_label


def pair_findings(
    reg: Registry,
    checkpoint: CheckpointEntity,
    evalset: EvalSetEntity,
    *,
    ctx: AuditContext | None = None,
    models: Mapping[str, str] | None = None,
) -> list[Finding]:
    """Can ``checkpoint`` be evaluated on ``evalset``? Errors mean no. The checkpoint's track
    decides what compatible means (registry/tracks); ``models`` (id -> local folder) lets it
    check widths and preprocessing against the models' configs."""
    ctx = ctx or AuditContext(reg, models)
    run = ctx.runs.get(checkpoint.run_id)
    run_name = run.name if run else None
    if checkpoint.status != "valid":
        return [
            Finding(
                "error",
                "invalid-checkpoint",
                f"{_label(checkpoint.path)} is invalid: {checkpoint.reason}",
                run_name,
                checkpoint.path,
                evalset.name,
            )
        ]
    return tracks.get(checkpoint.track).pair_findings(ctx, checkpoint, evalset, run_name)


def overridable(checkpoint: CheckpointEntity) -> frozenset[str]:
    """Finding codes that ``--allow-mismatch`` lets an evaluation of ``checkpoint`` go past."""
    return tracks.get(checkpoint.track).overridable


def refusals(
    reg: Registry,
    checkpoints: Iterable[CheckpointEntity],
    evalset: EvalSetEntity,
    *,
    models: Mapping[str, str] | None = None,
) -> dict[int, list[Finding]]:
    """Error-level findings, by checkpoint id, for evaluating each of ``checkpoints`` on
    ``evalset``; checkpoints that may be evaluated are absent. The registry is read once."""
    ctx = AuditContext(reg, models)
    out: dict[int, list[Finding]] = {}
    for ck in checkpoints:
        errors = [f for f in pair_findings(reg, ck, evalset, ctx=ctx) if f.severity == "error"]
        if errors:
            out[ck.id] = errors
    return out


def audit(reg: Registry, *, models: Mapping[str, str] | None = None) -> list[Finding]:
    """All findings, errors first."""
    ctx = AuditContext(reg, models)
    findings: list[Finding] = []
    by_run: dict[int, list[CheckpointEntity]] = defaultdict(list)
    for ck in ctx.checkpoints:
        by_run[ck.run_id].append(ck)
    for run_id, cks in by_run.items():
        findings += _run_findings(ctx, ctx.runs[run_id], cks)
    findings += _evalset_findings(ctx, by_run)
    order = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(findings, key=lambda f: (order[f.severity], f.code, f.run or "", f.checkpoint or "", f.evalset or ""))


def _run_findings(ctx: AuditContext, run: RunEntity, cks: list[CheckpointEntity]) -> list[Finding]:
    out: list[Finding] = []
    valid = [c for c in cks if c.status == "valid"]
    for ck in cks:
        if ck.status != "valid":
            out.append(
                Finding("error", "invalid-checkpoint", f"{_label(ck.path)} is invalid: {ck.reason}", run.name, ck.path)
            )
    bases = sorted({c.base_model for c in valid if c.base_model})
    if len(bases) > 1:
        per = defaultdict(list)
        for c in valid:
            per[c.base_model].append(str(c.step))
        out.append(
            Finding(
                "error",
                "base-model-differs",
                f"run {run.name!r} mixes base models: " + "; ".join(f"{b} at steps {', '.join(per[b])}" for b in bases),
                run.name,
                detail={"base_models": bases},
            )
        )
    by_track: dict[str, list[CheckpointEntity]] = defaultdict(list)
    for c in valid:
        by_track[c.track].append(c)
    for letter, mine in by_track.items():
        out += tracks.get(letter).run_findings(ctx, run, mine)
    return out


def _evalset_findings(ctx: AuditContext, by_run: Mapping[int, list[CheckpointEntity]]) -> list[Finding]:
    """One finding per (run, checkpoint token space, eval set) that disagree — not per checkpoint."""
    out: list[Finding] = []
    for es in ctx.evalsets:
        if es.token_space_hash is not None and es.token_space_hash not in ctx.by_hash and ctx.evalset_space(es) is None:
            out.append(
                Finding(
                    "warning",
                    "evalset-token-space-unknown",
                    f"eval set {es.name!r} was made in token space {(es.token_space_hash or '?')[:12]}, "
                    "which no registered run or checkpoint uses",
                    evalset=es.name,
                )
            )
        for cks in by_run.values():
            groups: dict[Any, list[CheckpointEntity]] = defaultdict(list)
            for ck in cks:
                if ck.status == "valid" and tracks.get(ck.track).accepts_evalset(es):
                    track = tracks.get(ck.track)
                    groups[(track.letter, track.evalset_group(ctx, ck))].append(ck)
            for _, group in groups.items():
                first = group[0]
                for f in pair_findings(ctx.reg, first, es, ctx=ctx):
                    if len(group) > 1:
                        steps = sorted(c.step for c in group if c.step is not None)
                        f = Finding(
                            f.severity,
                            f.code,
                            f.message + f" (and {len(group) - 1} more checkpoints of "
                            f"this run, steps {steps[0]}–{steps[-1]})"
                            if steps
                            else f.message,
                            f.run,
                            f.checkpoint,
                            f.evalset,
                            dict(f.detail, checkpoints=len(group)),
                        )
                    out.append(f)
    return out


def summarize(findings: Iterable[Finding]) -> dict[str, int]:
    counts = {s: 0 for s in SEVERITIES}
    for f in findings:
        counts[f.severity] += 1
    return counts
