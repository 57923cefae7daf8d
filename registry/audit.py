"""`evalboard audit`: token-space compatibility across everything registered.

Each finding has a severity — ``error`` (numbers would be wrong or meaningless: different ranges,
sizes or base models), ``warning`` (suspicious: codec/tokenizer versions differ, token space not
shipped, rows not covering a modality) or ``info`` — and one human sentence naming both sides.

The same checks decide whether an evaluation may run: `pair_findings(checkpoint, evalset)` is what
the evaluator, the queue and the dashboard's Evaluate form refuse with.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from registry import tracks
from registry.entities import CheckpointEntity, EvalSetEntity, RunEntity, TokenSpaceEntity
from registry.files import read_model_config
from registry.findings import SEVERITIES, Finding, checkpoint_label
from registry.store import Registry
from registry.token_space import TokenSpace

__all__ = ["Finding", "audit", "pair_findings", "refusals", "overridable", "SEVERITIES", "base_embedding_rows"]


def _space(ts: TokenSpaceEntity | None) -> TokenSpace | None:
    return TokenSpace.from_dict(ts.spec, source=ts.first_path) if ts is not None else None


def with_versions(space: TokenSpace, codecs: Mapping[str, Any] | None, tokenizer: str | None) -> TokenSpace:
    """``space`` with the codec/tokenizer versions a particular file recorded (token-space rows
    are shared per ABI hash, so the registered spec carries only the first file's versions)."""
    if codecs:
        mods = tuple(
            dataclasses.replace(r, codec=None, codec_version=codecs.get(r.name)) if r.name in codecs else r
            for r in space.modalities
        )
        space = dataclasses.replace(space, modalities=mods)
    if tokenizer is not None:
        space = dataclasses.replace(space, tokenizer_name=None, tokenizer_version=tokenizer)
    return space


_label = checkpoint_label


class _Context:
    """Everything registered, loaded once."""

    def __init__(self, reg: Registry, models: Mapping[str, str] | None):
        self.reg = reg
        self.models = dict(models or {})
        self.spaces = {t.id: t for t in reg.list_token_spaces()}
        self.by_hash = {t.abi_hash: t for t in self.spaces.values()}
        self.runs = {r.id: r for r in reg.list_runs()}
        self.checkpoints = reg.list_checkpoints()
        self.evalsets = reg.list_evalsets()
        self._parsed: dict[int, TokenSpace | None] = {}
        self._files: dict[str, TokenSpace | None] = {}

    def space(self, ts_id: int | None) -> TokenSpace | None:
        if ts_id is None:
            return None
        if ts_id not in self._parsed:
            self._parsed[ts_id] = _space(self.spaces.get(ts_id))
        return self._parsed[ts_id]

    def evalset_space(self, es: EvalSetEntity) -> TokenSpace | None:
        manifest = es.manifest or {}
        inline = manifest.get("token_space")
        if isinstance(inline, dict):
            return TokenSpace.from_dict(inline, source=es.path)
        ts = self.by_hash.get(es.token_space_hash or "")
        space = self.space(ts.id) if ts else None
        if space is not None and (manifest.get("codec_versions") or manifest.get("tokenizer_version")):
            codecs = manifest.get("codec_versions") if isinstance(manifest.get("codec_versions"), dict) else None
            space = with_versions(space, codecs, manifest.get("tokenizer_version"))
        return space

    def own_space(self, ck: CheckpointEntity) -> TokenSpace | None:
        """The checkpoint's shipped token space, with the versions its own file recorded."""
        space = self.space(ck.token_space_id)
        versions = (ck.meta or {}).get("token_space_versions")
        if space is not None and isinstance(versions, dict):
            space = with_versions(space, versions.get("codecs"), versions.get("tokenizer"))
        return space

    def run_space(self, run: RunEntity | None) -> TokenSpace | None:
        """The run-level token_space.json as it is on disk (for its versions), else as registered."""
        if run is None or run.token_space_id is None:
            return None
        if run.token_space_path and run.token_space_path not in self._files:
            try:
                self._files[run.token_space_path] = TokenSpace.load(run.token_space_path)
            except Exception:  # noqa: BLE001 - moved or broken since the scan: use the registered spec
                self._files[run.token_space_path] = None
        on_disk = self._files.get(run.token_space_path or "")
        if on_disk is not None and on_disk.abi_hash == self.spaces[run.token_space_id].abi_hash:
            return on_disk
        return self.space(run.token_space_id)

    def checkpoint_space(self, ck: CheckpointEntity) -> tuple[TokenSpace | None, str]:
        """The checkpoint's own token space, else its run's (the seed allows either)."""
        if ck.token_space_id is not None:
            return self.own_space(ck), "checkpoint"
        run = self.runs.get(ck.run_id)
        if run is not None and run.token_space_id is not None:
            return self.run_space(run), "run"
        return None, "none"


def pair_findings(
    reg: Registry,
    checkpoint: CheckpointEntity,
    evalset: EvalSetEntity,
    *,
    ctx: _Context | None = None,
    models: Mapping[str, str] | None = None,
) -> list[Finding]:
    """Can ``checkpoint`` be evaluated on ``evalset``? Errors mean no. The checkpoint's track
    decides what compatible means (registry/tracks); ``models`` (id -> local folder) lets it
    check widths and preprocessing against the models' configs."""
    ctx = ctx or _Context(reg, models)
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
    ctx = _Context(reg, models)
    out: dict[int, list[Finding]] = {}
    for ck in checkpoints:
        errors = [f for f in pair_findings(reg, ck, evalset, ctx=ctx) if f.severity == "error"]
        if errors:
            out[ck.id] = errors
    return out


def base_embedding_rows(model_dir: str | Path) -> int | None:
    """The base model's embedding rows from its config.json (no weights read)."""
    data = read_model_config(model_dir)
    if data is None:
        return None
    data = data.get("text_config", data)
    v = data.get("vocab_size")
    return v if isinstance(v, int) else None


def audit(reg: Registry, *, models: Mapping[str, str] | None = None) -> list[Finding]:
    """All findings, errors first."""
    ctx = _Context(reg, models)
    findings: list[Finding] = []
    by_run: dict[int, list[CheckpointEntity]] = defaultdict(list)
    for ck in ctx.checkpoints:
        by_run[ck.run_id].append(ck)
    for run_id, cks in by_run.items():
        findings += _run_findings(ctx, ctx.runs[run_id], cks)
    findings += _evalset_findings(ctx, by_run)
    order = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(findings, key=lambda f: (order[f.severity], f.code, f.run or "", f.checkpoint or "", f.evalset or ""))


def _run_findings(ctx: _Context, run: RunEntity, cks: list[CheckpointEntity]) -> list[Finding]:
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


def _evalset_findings(ctx: _Context, by_run: Mapping[int, list[CheckpointEntity]]) -> list[Finding]:
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
