"""Importing ``eval_step<step>.json`` files: the one path used by the scanner (registry only)
and by `evalboard import-eval` (MLflow first, then the registry).

An imported result is linked to the run's checkpoint at its step (of two tracks sharing a step,
the one with the higher `step_priority`) and to the registered eval set whose content hash the
file names; importing the same file content into a run again adds nothing. A file whose
``checkpoint.content_hash`` names other content than that checkpoint's is refused
(`check_attribution`): its numbers were computed on other weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry import tracks
from registry.entities import CheckpointEntity, EvalResultEntity, EvalSetEntity
from registry.errors import InvalidInput, NotFound
from registry.eval_key import EvalKey
from registry.eval_result import EvalResult
from registry.safeio import sha256_file
from registry.store import Registry

__all__ = [
    "EvalJson",
    "checkpoints_by_step",
    "check_attribution",
    "matching_evalset",
    "written_by_evaluator",
    "previous_import",
    "record_import",
]


@dataclass(frozen=True)
class EvalJson:
    """A validated eval_step*.json with what identifies its content."""

    path: Path
    result: EvalResult
    sha256: str
    size: int
    mtime_ns: int

    @classmethod
    def read(cls, path: str | Path, sha256: str | None = None) -> EvalJson:
        """Validate the file (`InvalidInput` naming it when malformed)."""
        path = Path(path)
        st = path.stat()
        result = EvalResult.load(path)
        return cls(path, result, sha256 or sha256_file(path), st.st_size, st.st_mtime_ns)


def checkpoints_by_step(checkpoints: Iterable[CheckpointEntity]) -> dict[int, CheckpointEntity]:
    """step -> the checkpoint an imported result at that step belongs to."""
    priority = {t.letter: t.step_priority for t in tracks.ALL}
    steps: dict[int, CheckpointEntity] = {}
    for c in checkpoints:
        if c.step is not None and (
            c.step not in steps or priority.get(c.track, -1) > priority.get(steps[c.step].track, -1)
        ):
            steps[c.step] = c
    return steps


def check_attribution(ej: EvalJson, checkpoint: CheckpointEntity | None) -> None:
    """Refuse to store the file's result as `checkpoint`'s when the file says it was computed on
    other content (its ``checkpoint.content_hash`` is not the checkpoint's). A file that records
    no hash, or a result that is linked to no checkpoint, is not judged."""
    claimed = (ej.result.checkpoint or {}).get("content_hash")
    if checkpoint is None or not claimed or not checkpoint.content_hash or claimed == checkpoint.content_hash:
        return
    raise InvalidInput(
        f"checkpoint.content_hash {claimed} says this result was computed on other content than "
        f"{checkpoint.path} holds now (content hash {checkpoint.content_hash}); not imported as its result: "
        "evaluate the checkpoint again (`evalboard eval`) or remove the file",
        path=ej.path,
    )


def matching_evalset(reg: Registry, result: EvalResult) -> EvalSetEntity | None:
    """The registered eval set with the content hash the file names, if any."""
    content_hash = (result.evalset or {}).get("content_hash")
    if not content_hash:
        return None
    try:
        return reg.get_evalset(content_hash=content_hash)
    except NotFound:
        return None


def written_by_evaluator(reg: Registry, result: EvalResult) -> bool:
    """The file is one evalboard's evaluator wrote: its result is registered already."""
    ck_hash = (result.checkpoint or {}).get("content_hash")
    es_hash = (result.evalset or {}).get("content_hash")
    return bool(
        ck_hash and es_hash and reg.latest_result(EvalKey(ck_hash, es_hash), source="evaluator", any_subset=True)
    )


def previous_import(reg: Registry, run_id: int, sha256: str) -> EvalResultEntity | None:
    """The result an earlier import of this file content into the run recorded, if any."""
    return next(
        (
            r
            for r in reg.list_eval_results(run_ids=[run_id])
            if r.source == "import" and (r.extra or {}).get("file_sha256") == sha256
        ),
        None,
    )


def record_import(
    reg: Registry,
    ej: EvalJson,
    *,
    run_id: int,
    checkpoint: CheckpointEntity | None,
    mlflow_run_id: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> tuple[EvalResultEntity, bool]:
    """Register the imported result (or update the earlier import of the same content with the
    MLflow run); returns (result, created)."""
    res = ej.result
    existing = previous_import(reg, run_id, ej.sha256)
    if existing is not None:
        if mlflow_run_id is not None and existing.mlflow_run_id != mlflow_run_id:
            existing = reg.update_eval_result(id=existing.id, mlflow_run_id=mlflow_run_id, extra=dict(extra or {}))
        return existing, False
    evalset = matching_evalset(reg, res)
    row = reg.add_eval_result(
        checkpoint_id=checkpoint.id if checkpoint is not None else None,
        run_id=run_id,
        evalset_id=evalset.id if evalset is not None else None,
        evalset_hash=(res.evalset or {}).get("content_hash"),
        checkpoint_hash=checkpoint.content_hash if checkpoint is not None else None,
        step=res.step,
        source="import",
        loss_all=res.loss_all,
        metrics=res.metrics(),
        path=str(ej.path),
        mlflow_run_id=mlflow_run_id,
        extra={
            "file_sha256": ej.sha256,
            "size": ej.size,
            "mtime_ns": ej.mtime_ns,
            "evalset_name": (res.evalset or {}).get("name"),
            **dict(extra or {}),
        },
    )
    return row, True
