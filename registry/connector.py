"""Track A checkpoints: one ``checkpoint_<step>.pt`` with the vision connector's weights.

Schema (README "Track A checkpoint"): a dict with
- ``connector``: state dict of the resampler and projector (keys ``resampler.*`` and ``projector.*``);
  accepted variants: ``connector_state_dict``, ``state_dict``, ``model``, ``model_state_dict``, or
  top-level ``resampler`` / ``projector`` state dicts;
- ``step`` (or ``global_step``; else taken from the file name);
- ``base_llm`` and ``vision_tower``: the frozen models it plugs into (a string id, or
  ``{"name", "revision"}``); variants ``base_model``/``llm`` and ``vision_model``/``vision_encoder``,
  also accepted inside ``config``/``meta``/``metadata``;
- optional ``optimizer`` (or ``optimizer_state_dict``), ``scheduler``, ``config``, ``meta``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from registry.errors import InvalidInput
from registry.files import FileRecord, content_hash, file_records
from registry.safeio import check_int, check_text, load_tensors, require_regular_file
from registry.trainable_rows import check_step_in_name, parse_step

__all__ = ["ConnectorCheckpoint"]

_STATE_KEYS = ("connector", "connector_state_dict", "state_dict", "model", "model_state_dict")
_MODULES = ("resampler", "projector")
_OPTIMIZER_KEYS = ("optimizer", "optimizer_state_dict", "optim")
_LLM_KEYS = ("base_llm", "base_model", "llm", "llm_name", "base_llm_id")
_VISION_KEYS = ("vision_tower", "vision_model", "vision_encoder", "vision_tower_id")
_META_KEYS = ("config", "meta", "metadata", "args")
_OTHER_KEYS = {"step", "global_step", "epoch", "scheduler", "lr_scheduler", "scaler", "rng_state", "version",
               "schema_version", "tokens_seen"}


@dataclass(frozen=True)
class ConnectorCheckpoint:
    path: str
    step: int | None
    base_llm: str
    vision_tower: str
    modules: Mapping[str, dict[str, tuple[int, ...]]]  # module -> param name -> shape
    n_params: int
    has_optimizer: bool
    files: tuple[FileRecord, ...]
    meta: Mapping[str, Any]

    @property
    def content_hash(self) -> str:
        return content_hash(self.files)

    @classmethod
    def load(cls, path: str | Path) -> "ConnectorCheckpoint":
        path = Path(path)
        require_regular_file(path)
        check_step_in_name(path)
        obj = load_tensors(path)
        state = _connector_state(obj, path)
        modules = _split_modules(state, path)
        meta = _merged_meta(obj)
        base_llm = _pointer(obj, meta, _LLM_KEYS, "base_llm", path)
        vision = _pointer(obj, meta, _VISION_KEYS, "vision_tower", path)
        step = _step(obj, path)
        _check_finite(state, path)
        known = set(_STATE_KEYS) | set(_MODULES) | set(_OPTIMIZER_KEYS) | set(_LLM_KEYS) | set(_VISION_KEYS) \
            | set(_META_KEYS) | _OTHER_KEYS
        unexpected = sorted(k for k in obj if k not in known)
        if unexpected:
            raise InvalidInput(
                f"unexpected top-level entry {unexpected[0]!r}; expected connector, step, base_llm, vision_tower, "
                "optimizer, config",
                path=path,
            )
        n_params = sum(int(t.numel()) for t in state.values())
        shapes = {m: {k: tuple(t.shape) for k, t in params.items()} for m, params in modules.items()}
        info = {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool)) or v is None}
        if "tokens_seen" in obj and isinstance(obj["tokens_seen"], int):
            info["tokens_seen"] = obj["tokens_seen"]
        return cls(str(path), step, base_llm, vision, shapes, n_params,
                   any(k in obj for k in _OPTIMIZER_KEYS), tuple(file_records(path, [path])), info)

    def summary(self) -> dict[str, Any]:
        return {
            "kind": "checkpoint",
            "track": "A",
            "path": self.path,
            "step": self.step,
            "base_model": self.base_llm,
            "vision_tower": self.vision_tower,
            "modules": {m: {k: list(s) for k, s in p.items()} for m, p in self.modules.items()},
            "n_params": self.n_params,
            "has_optimizer": self.has_optimizer,
            "content_hash": self.content_hash,
            "files": [f.to_dict() for f in self.files],
        }


def _connector_state(obj: Mapping[str, Any], path: Path) -> dict[str, Any]:
    import torch

    present = [k for k in _STATE_KEYS if isinstance(obj.get(k), dict)]
    if len(present) > 1:
        raise InvalidInput(f"has several connector state dicts {present}; keep one", path=path)
    if present:
        state = dict(obj[present[0]])
    elif any(isinstance(obj.get(m), dict) for m in _MODULES):
        state = {f"{m}.{k}": v for m in _MODULES if isinstance(obj.get(m), dict) for k, v in obj[m].items()}
    else:
        raise InvalidInput(
            "missing field 'connector' (the resampler + projector state dict; also accepted: "
            + ", ".join(_STATE_KEYS[1:]) + ", or top-level resampler/projector)",
            path=path,
        )
    if not state:
        raise InvalidInput("connector state dict is empty", path=path)
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise InvalidInput(f"connector entry {k!r} is a {type(v).__name__}, expected a tensor", path=path)
    return state


def _split_modules(state: Mapping[str, Any], path: Path) -> dict[str, dict[str, Any]]:
    modules: dict[str, dict[str, Any]] = {}
    for key, t in state.items():
        k = key.removeprefix("module.").removeprefix("connector.")
        head = k.split(".", 1)[0]
        modules.setdefault(head, {})[k] = t
    missing = [m for m in _MODULES if m not in modules]
    if missing:
        raise InvalidInput(
            f"connector has no {missing[0]} weights (found modules: {', '.join(sorted(modules)) or 'none'}; "
            "expected keys starting with resampler. and projector.)",
            path=path,
        )
    return modules


def _merged_meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for k in _META_KEYS:
        if isinstance(obj.get(k), dict):
            meta.update(obj[k])
    return meta


def _pointer(obj: Mapping[str, Any], meta: Mapping[str, Any], keys: tuple[str, ...], label: str, path: Path) -> str:
    for source in (obj, meta):
        for k in keys:
            if k in source and source[k] is not None:
                v = source[k]
                if isinstance(v, str) and v.strip():
                    return check_text(v, label, path)
                if isinstance(v, dict) and isinstance(v.get("name") or v.get("id"), str):
                    name = check_text(v.get("name") or v.get("id"), f"{label}.name", path)
                    rev = v.get("revision") or v.get("version")
                    return f"{name}@{rev}" if rev else name
                raise InvalidInput(f"{label} must be a model id string or {{name, revision}}, got {v!r}", path=path)
    raise InvalidInput(f"missing field {label!r} (the frozen model it plugs into; accepted names: {', '.join(keys)})",
                       path=path)


def _step(obj: Mapping[str, Any], path: Path) -> int | None:
    raw = obj.get("step", obj.get("global_step"))
    from_name = parse_step(path.name)
    if raw is None:
        return from_name
    check_int(raw, "step", path)
    if from_name is not None and raw != from_name:
        raise InvalidInput(f"step {raw} inside the file disagrees with its name {path.name}", path=path)
    return raw


def _check_finite(state: Mapping[str, Any], path: Path) -> None:
    import torch

    for k, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise InvalidInput(f"connector weight {k!r} contains NaN/Inf", path=path)
