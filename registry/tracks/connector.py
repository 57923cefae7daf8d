"""Track A: vision-connector checkpoints (registry side).

A checkpoint is one ``checkpoint_<step>.pt`` (resampler + projector weights, step, pointers to the
frozen LLM and vision tower) or one of LLaVA's saves (``mm_projector.bin`` + ``config.json``); both
are read by registry/connector.py, whose docstring says where LLaVA writes them. LLaVA's output
folder is a run of its own: it holds its final save (a checkpoint at the folder itself) beside its
``checkpoint-<step>/`` folders and ``mm_projector/checkpoint-<step>.bin`` files (`run_dir`).

Audit rules: the connector's widths against the LLM's hidden size and the tower's, one LLM and one
tower per run, and the eval set's tower and preprocessing against the checkpoint's tower.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.connector import ConnectorCheckpoint
from registry.files import read_model_config
from registry.findings import Finding, checkpoint_label
from registry.llava_layout import (
    LLAVA_FILES,
    is_llava_config_dir,
    is_llava_folder,
    is_llava_projector_file,
    llava_config,
    llava_files,
    llava_run_dir,
)
from registry.tracks.base import FileEntry, Registration, Track
from registry.vision import VisionSpec, preprocessing_diff, read_tower_preprocessing

if TYPE_CHECKING:
    from registry.audit_context import AuditContext
    from registry.entities import CheckpointEntity, EvalSetEntity, RunEntity
    from registry.token_space import TokenSpace

__all__ = ["ConnectorTrack", "model_hidden_size"]

_CKPT_FILE_RE = re.compile(r"^(?:checkpoint|ckpt)[-_]\d+\.(?:pt|bin)$")


def model_hidden_size(model_dir: str | Path | None) -> int | None:
    """``hidden_size`` from a model folder's config.json (its text or vision config), no weights read."""
    data = read_model_config(model_dir)
    if data is None:
        return None
    for section in (data, data.get("text_config") or {}, data.get("vision_config") or {}):
        v = section.get("hidden_size") if isinstance(section, dict) else None
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


class ConnectorTrack(Track):
    letter = "A"
    title = "vision connector"
    step_priority = 0
    stats_title = "connector parameter norms"
    overridable = frozenset({"evalset-preprocessing-mismatch"})

    def file_names(self) -> tuple[str, ...]:
        return LLAVA_FILES

    def complete(self, path: Path) -> bool:
        if path.is_dir():
            return is_llava_folder(path) and llava_config(path)[0] is not None
        if is_llava_projector_file(path):
            return path.is_file() and llava_config(path)[0] is not None
        return path.is_file()

    def claims_dir(self, path: Path) -> bool:
        return is_llava_folder(path)

    def claims_file(self, path: Path) -> bool:
        return bool(_CKPT_FILE_RE.match(path.name))

    def run_dir(self, path: Path) -> Path:
        """The run folder of the checkpoint at ``path`` (the scanner asks): the folder holding it,
        but for LLaVA the output folder (`registry.connector.llava_run_dir`), which is the
        final save itself: the scanner then also looks inside it."""
        if is_llava_projector_file(path) or (path.is_dir() and is_llava_folder(path)):
            return llava_run_dir(path)
        return path.parent

    def companion_dir(self, path: Path) -> bool:
        """A folder holding only another checkpoint's files (the scanner asks), so not a checkpoint:
        LLaVA's ``checkpoint-<step>/config.json`` of ``mm_projector/checkpoint-<step>.bin``."""
        return is_llava_config_dir(path)

    def entries(self, path: Path) -> dict[str, Any]:
        if is_llava_projector_file(path) or (path.is_dir() and is_llava_folder(path)):
            return {name: FileEntry(p) for name, p in llava_files(path).items()}
        return super().entries(path)

    def inspects_file(self, path: Path) -> bool:
        return path.suffix in (".pt", ".bin", ".pth", ".safetensors")

    def register(self, path: Path, *, run_token_space: TokenSpace | None) -> Registration:
        ck = ConnectorCheckpoint.load(path)
        return Registration(
            step=ck.step,
            content_hash=ck.content_hash,
            files=[f.to_dict() for f in (*ck.files, *ck.step_files)],
            base_model=ck.base_llm,
            meta={
                **dict(ck.meta),
                "vision_tower": ck.vision_tower,
                "n_params": ck.n_params,
                "has_optimizer": ck.has_optimizer,
                "layout": ck.layout,
                "modules": {m: {k: list(s) for k, s in p.items()} for m, p in ck.modules.items()},
                "input_width": ck.input_width,
                "output_width": ck.output_width,
                "connector_builder": ck.builder,
                "vision_feature_layer": ck.feature_layer,
                "vision_drop_cls": ck.drop_cls,
                "image_aspect_ratio": ck.aspect_ratio,
                **({"notes": list(ck.notes)} if ck.notes else {}),
            },
        )

    def inspect(self, path: Path) -> dict[str, Any]:
        return ConnectorCheckpoint.load(path).summary()

    # --- audit ------------------------------------------------------------------------------

    def accepts_evalset(self, es: EvalSetEntity) -> bool:
        return "vision" in (es.manifest or {})

    def evalset_group(self, ctx: AuditContext, ck: CheckpointEntity) -> Hashable:
        return (ck.meta or {}).get("vision_tower")

    def run_findings(self, ctx: AuditContext, run: RunEntity, checkpoints: list[CheckpointEntity]) -> list[Finding]:
        out: list[Finding] = []
        towers: dict[str, list[str]] = defaultdict(list)
        for ck in checkpoints:
            towers[str((ck.meta or {}).get("vision_tower"))].append(str(ck.step))
        if len(towers) > 1:
            out.append(
                Finding(
                    "error",
                    "vision-tower-differs",
                    f"run {run.name!r} mixes vision towers: "
                    + "; ".join(f"{t} at steps {', '.join(s)}" for t, s in sorted(towers.items())),
                    run.name,
                    detail={"vision_towers": sorted(towers)},
                )
            )
        for ck in checkpoints:
            out += self._width_findings(ctx, run.name, ck)
        return out

    def _width_findings(self, ctx: AuditContext, run_name: str | None, ck: CheckpointEntity) -> list[Finding]:
        meta = ck.meta or {}
        label = checkpoint_label(ck.path)
        out = []
        llm_w = model_hidden_size(ctx.models.get(ck.base_model or ""))
        out_w = meta.get("output_width")
        if llm_w is not None and out_w is not None and out_w != llm_w:
            out.append(
                Finding(
                    "error",
                    "connector-output-width",
                    f"{label} produces {out_w}-wide embeddings but the LLM {ck.base_model} has hidden size {llm_w}",
                    run_name,
                    ck.path,
                    detail={"connector": out_w, "llm": llm_w},
                )
            )
        tower = meta.get("vision_tower")
        tower_w = model_hidden_size(ctx.models.get(tower or ""))
        in_w = meta.get("input_width")
        if tower_w is not None and in_w is not None and in_w != tower_w:
            out.append(
                Finding(
                    "error",
                    "connector-input-width",
                    f"{label} takes {in_w}-wide features but the vision tower {tower} has hidden size {tower_w}",
                    run_name,
                    ck.path,
                    detail={"connector": in_w, "tower": tower_w},
                )
            )
        return out

    def pair_findings(
        self, ctx: AuditContext, ck: CheckpointEntity, es: EvalSetEntity, run_name: str | None
    ) -> list[Finding]:
        label = checkpoint_label(ck.path)
        raw = (es.manifest or {}).get("vision")
        if raw is None:
            return [
                Finding(
                    "error",
                    "evalset-kind",
                    f"eval set {es.name!r} has no images (no 'vision' section in "
                    f"its manifest); {label} is a vision connector and needs an image eval set",
                    run_name,
                    ck.path,
                    es.name,
                )
            ]
        spec = VisionSpec.parse(raw, es.path)
        tower = (ck.meta or {}).get("vision_tower")
        out = self._width_findings(ctx, run_name, ck)
        if spec.tower != tower:
            out.append(
                Finding(
                    "error",
                    "evalset-tower-mismatch",
                    f"eval set {es.name!r} was made for vision tower {spec.tower}, {label} plugs into {tower}",
                    run_name,
                    ck.path,
                    es.name,
                    {"evalset": spec.tower, "checkpoint": tower},
                )
            )
            return out
        tower_pre = read_tower_preprocessing(ctx.models.get(tower or "", "")) if ctx.models.get(tower or "") else None
        if tower_pre is not None and spec.preprocessing:
            diff = preprocessing_diff(spec.preprocessing, tower_pre)
            if diff:
                out.append(
                    Finding(
                        "error",
                        "evalset-preprocessing-mismatch",
                        f"eval set {es.name!r} was made for other preprocessing than tower {tower}'s "
                        f"image processor (eval set vs tower): " + "; ".join(diff),
                        run_name,
                        ck.path,
                        es.name,
                        {"differences": diff},
                    )
                )
        return out
