"""Track B: ``checkpoint_<step>/`` folders holding only the new rows (registry side).

Files: ``trainable_rows.{pt,safetensors,bin}``, ``trainable_rows.json`` and ``token_space.json``
(registry/trainable_rows.py reads them). Audit rules: the token space shipped with the checkpoint
against the run's and the eval set's (ABI hash, then a structural diff naming ranges and sizes),
modality ranges outside the trained rows, base padding rows overwritten.
"""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.findings import Finding, checkpoint_label
from registry.tracks.base import Registration, Track
from registry.trainable_rows import META_FILENAME, ROWS_FILENAMES, TOKEN_SPACE_FILENAME, TrainableRows

if TYPE_CHECKING:
    from registry.audit_context import AuditContext
    from registry.entities import CheckpointEntity, EvalSetEntity, RunEntity
    from registry.token_space import TokenSpace

__all__ = ["TrainableRowsTrack"]


def _versions(ts: TokenSpace | None) -> dict[str, Any] | None:
    """Codec/tokenizer versions of this very file: token-space rows are shared per ABI hash, so
    versions (which are not part of the ABI) must be kept with whoever shipped them."""
    if ts is None:
        return None
    tok = "@".join(x for x in (ts.tokenizer_name, ts.tokenizer_version) if x) or None
    return {"codecs": ts.codec_versions(), "tokenizer": tok}


def _jsonable(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool)) or v is None


class TrainableRowsTrack(Track):
    letter = "B"
    title = "trainable rows"
    step_priority = 1
    stats_title = "row-norm statistics"
    uses_token_space = True
    overridable = frozenset({"token-space-mismatch"})

    def file_names(self) -> tuple[str, ...]:
        return (*ROWS_FILENAMES, META_FILENAME, TOKEN_SPACE_FILENAME)

    def complete(self, path: Path) -> bool:
        return (path / META_FILENAME).exists() and any((path / n).exists() for n in ROWS_FILENAMES)

    def claims_dir(self, path: Path) -> bool:
        return any((path / f).exists() for f in (*ROWS_FILENAMES, META_FILENAME))

    def register(self, path: Path, *, run_token_space: TokenSpace | None) -> Registration:
        ck = TrainableRows.load(path, run_token_space=run_token_space)
        return Registration(
            step=ck.step,
            content_hash=ck.content_hash,
            files=[f.to_dict() for f in ck.files],
            base_model=ck.base_model,
            token_space=ck.token_space,
            token_space_path=str(path / TOKEN_SPACE_FILENAME) if ck.token_space else None,
            row_start=ck.row_start,
            row_end=ck.row_end,
            meta={
                "hidden_size": ck.hidden_size,
                "dtype": ck.dtype,
                "tied": ck.tied,
                "embed_key": ck.embed_key,
                "lm_head_key": ck.lm_head_key,
                "embed_shape": list(ck.embed.shape),
                "warnings": list(ck.warnings),
                "token_space_versions": _versions(ck.token_space),
                **{k: v for k, v in ck.meta.info.items() if _jsonable(v)},
            },
        )

    def inspect(self, path: Path) -> dict[str, Any]:
        return TrainableRows.load(path).summary()

    # --- audit ------------------------------------------------------------------------------

    def accepts_evalset(self, es: EvalSetEntity) -> bool:
        return es.token_space_hash is not None

    def evalset_group(self, ctx: AuditContext, ck: CheckpointEntity) -> Hashable:
        space, _ = ctx.checkpoint_space(ck)
        return space.abi_hash if space else None

    def run_findings(self, ctx: AuditContext, run: RunEntity, checkpoints: list[CheckpointEntity]) -> list[Finding]:
        out: list[Finding] = []
        run_space = ctx.run_space(run)
        if checkpoints and run_space is None:
            out.append(
                Finding("info", "no-run-token-space", f"run {run.name!r} has no run-level token_space.json", run.name)
            )
        for ck in checkpoints:
            out += self._checkpoint_findings(ctx, run, run_space, ck)
        return out

    def _checkpoint_findings(
        self, ctx: AuditContext, run: RunEntity, run_space: TokenSpace | None, ck: CheckpointEntity
    ) -> list[Finding]:
        from registry.audit_context import base_embedding_rows

        out: list[Finding] = []
        label = checkpoint_label(ck.path)
        own = ctx.own_space(ck)
        if not ck.has_token_space:
            out.append(
                Finding(
                    "warning",
                    "token-space-not-shipped",
                    f"{label} was shipped without token_space.json (compatibility rule 1: always ship it)"
                    + (f"; using run {run.name!r}'s" if run_space else ""),
                    run.name,
                    ck.path,
                )
            )
        if own is not None and run_space is not None:
            for c in own.diff(run_space, label, f"run {run.name!r} token_space.json"):
                out.append(
                    Finding(
                        c.severity,
                        "run-token-space-" + ("mismatch" if c.severity == "error" else "version"),
                        c.message,
                        run.name,
                        ck.path,
                        detail={"field": c.field, "checkpoint": c.this, "run": c.other},
                    )
                )
        space = own or run_space
        if space is None or ck.row_start is None or ck.row_end is None:
            return out
        for r in space.modalities:
            if r.start < ck.row_start or r.end > ck.row_end:
                out.append(
                    Finding(
                        "warning",
                        "range-not-covered",
                        f"{r.name} range {r.describe()} is not inside the trained rows "
                        f"{ck.row_start}–{ck.row_end - 1} of {label}: those rows stay at their initial values",
                        run.name,
                        ck.path,
                        detail={"modality": r.name},
                    )
                )
        if ck.row_start != space.text_vocab_size:
            out.append(
                Finding(
                    "info",
                    "rows-start-offset",
                    f"{label} trains rows from {ck.row_start}, the token space's text vocabulary ends at "
                    f"{space.text_vocab_size}",
                    run.name,
                    ck.path,
                )
            )
        model_dir = ctx.models.get(ck.base_model or "")
        if model_dir:
            rows = base_embedding_rows(model_dir)
            if rows is not None and rows > space.text_vocab_size:
                out.append(
                    Finding(
                        "warning",
                        "base-padding-overwritten",
                        f"base {ck.base_model} has {rows} embedding rows but text_vocab_size is "
                        f"{space.text_vocab_size}: its padding rows {space.text_vocab_size}–{rows - 1} "
                        f"are overwritten by new rows",
                        run.name,
                        ck.path,
                        detail={"base_rows": rows, "text_vocab_size": space.text_vocab_size},
                    )
                )
        return out

    def pair_findings(
        self, ctx: AuditContext, ck: CheckpointEntity, es: EvalSetEntity, run_name: str | None
    ) -> list[Finding]:
        ck_label = checkpoint_label(ck.path)
        if es.token_space_hash is None:
            return [
                Finding(
                    "error",
                    "evalset-kind",
                    f"eval set {es.name!r} has no token space (it is an image "
                    f"eval set for connector checkpoints); {ck_label} holds trainable rows and needs an eval "
                    "set made in its token space",
                    run_name,
                    ck.path,
                    es.name,
                )
            ]
        space, origin = ctx.checkpoint_space(ck)
        if space is None:
            return [
                Finding(
                    "error",
                    "no-token-space",
                    f"{ck_label} has no token_space.json and its run has none: cannot check it against the eval set",
                    run_name,
                    ck.path,
                    es.name,
                )
            ]
        es_space = ctx.evalset_space(es)
        if space.abi_hash == es.token_space_hash:
            if es_space is None:
                return []
            return [
                Finding(
                    "warning",
                    "version-mismatch",
                    c.message,
                    run_name,
                    ck.path,
                    es.name,
                    {"field": c.field, "checkpoint": c.this, "evalset": c.other},
                )
                for c in space.diff(es_space, f"{ck_label}", f"eval set {es.name!r}")
                if c.severity == "warning"
            ]
        if es_space is None:
            return [
                Finding(
                    "error",
                    "token-space-mismatch",
                    f"token space {space.short_hash} of {ck_label} differs from eval set {es.name!r}'s "
                    f"{(es.token_space_hash or '?')[:12]} (that token space is not registered, so the "
                    "exact difference is unknown)",
                    run_name,
                    ck.path,
                    es.name,
                    {"checkpoint_hash": space.abi_hash, "evalset_hash": es.token_space_hash},
                )
            ]
        changes = [
            c
            for c in space.diff(es_space, f"{ck_label} ({origin} token space)", f"eval set {es.name!r}")
            if c.severity == "error"
        ]
        reason = "; ".join(c.message for c in changes) or "token-space hashes differ"
        return [
            Finding(
                "error",
                "token-space-mismatch",
                reason,
                run_name,
                ck.path,
                es.name,
                {
                    "changes": [c.field for c in changes],
                    "checkpoint_hash": space.abi_hash,
                    "evalset_hash": es.token_space_hash,
                },
            )
        ]
