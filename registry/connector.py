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

Settings the evaluator reads from the metadata (``config``/``meta``, or top level):
``connector_builder`` ("package.module:function" that rebuilds the module from the state dict),
``vision_feature_layer`` (which hidden layer of the tower feeds the connector),
``vision_drop_cls`` (whether the tower's CLS token is dropped) and ``image_aspect_ratio`` (LLaVA's:
"pad" pads images to a square first, see below); see evaluator/tracks/connector.py.

Also accepted: LLaVA's layouts (haotian-liu/LLaVA pretraining with ``--tune_mm_mlp_adapter``),
``mm_projector.bin`` (or ``.safetensors``) with the training ``config.json`` (``mm_vision_tower``,
``mm_hidden_size``, ``hidden_size``, ``_name_or_path``; optional ``mm_projector_type``,
``mm_vision_select_layer``, ``mm_vision_select_feature``, ``image_aspect_ratio``). Where LLaVA puts them:

- the output folder ``<out>/`` holds the FINAL save (``mm_projector.bin``, ``config.json``, and the
  ``trainer_state.json`` of ``trainer.save_state()``): a checkpoint of run ``<out>`` (the folder
  itself), its step the ``global_step`` of ``trainer_state.json`` (step-less, with a note, without one);
- ``<out>/checkpoint-<step>/`` (``LLaVATrainer._save_checkpoint``: ``mm_projector.bin`` and
  ``config.json``): a checkpoint of run ``<out>`` at that step. Without its own ``config.json`` it
  uses ``<out>/config.json`` (recorded as ``../config.json``, said in a note); a
  ``trainer_state.json`` there must agree with the step in the name;
- ``<out>/mm_projector/checkpoint-<step>.bin`` (the save of an output folder named
  ``checkpoint-<step>``, and older LLaVA's intermediate saves): a checkpoint of run ``<out>`` at that
  step, with ``<out>/checkpoint-<step>/config.json`` (what LLaVA writes beside it), else
  ``<out>/config.json``.

The content hash covers the weights and the config only: a final save equal to a step folder's
has that folder's hash (``trainer_state.json`` is recorded, so a rescan sees it change, but only
gives the step). LLaVA's defaults are LLaVA's: ``mm_projector_type`` absent means ``linear``
(``build_vision_projector``), said in a note; ``image_aspect_ratio`` ``pad`` pads each image to a
square of the processor's mean colour before the processor (``expand2square``); ``anyres*``,
``highres`` and ``crop_split`` are refused (not implemented); any other value, or none, feeds the
image processor directly, as LLaVA's ``process_images`` does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.errors import InvalidInput
from registry.files import FileRecord, content_hash, file_records
from registry.llava_layout import (
    LLAVA_WEIGHTS,
    is_llava_projector_file,
    is_llava_step_dir,
    llava_config,
    llava_records,
    llava_step,
)
from registry.safeio import check_int, check_text, load_tensors, require_regular_file
from registry.settings import check_builder_name
from registry.trainable_rows import check_step_in_name, parse_step

__all__ = ["ConnectorCheckpoint"]

_LINEAR = {"mm_projector.weight", "mm_projector.bias"}
_UNIMPLEMENTED_ASPECT = re.compile(r"^(?:anyres.*|highres|crop_split)$")
_BUILDER_KEYS = ("connector_builder", "builder")

_STATE_KEYS = ("connector", "connector_state_dict", "state_dict", "model", "model_state_dict")
_MODULES = ("resampler", "projector")
_OPTIMIZER_KEYS = ("optimizer", "optimizer_state_dict", "optim")
_LLM_KEYS = ("base_llm", "base_model", "llm", "llm_name", "base_llm_id")
_VISION_KEYS = ("vision_tower", "vision_model", "vision_encoder", "vision_tower_id")
_META_KEYS = ("config", "meta", "metadata", "args")
_OTHER_KEYS = {
    "step",
    "global_step",
    "epoch",
    "scheduler",
    "lr_scheduler",
    "scaler",
    "rng_state",
    "version",
    "schema_version",
    "tokens_seen",
}


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
    layout: str = "evalboard"
    """"evalboard" (one .pt) or "llava" (mm_projector + config.json folder)."""
    input_width: int | None = None
    """Feature width the connector takes (the tower's hidden size), when the weights say it."""
    output_width: int | None = None
    """Embedding width it produces (the LLM's hidden size), when the weights say it."""
    builder: str | None = None
    """``package.module:function`` named by the checkpoint itself, if any: a hint, which the
    evaluator follows only for a reference builder or one the user trusts."""
    feature_layer: int | None = None
    drop_cls: bool | None = None
    state: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """The connector's tensors, keys without ``module.``/``connector.`` prefixes."""
    aspect_ratio: str = "default"
    """How images reach the tower (`registry.vision.ASPECT_RATIOS`): "pad" for LLaVA's
    ``image_aspect_ratio: pad``."""
    step_files: tuple[FileRecord, ...] = ()
    """Files read for the step only (LLaVA's ``trainer_state.json``): registered with the checkpoint
    so a rescan sees them change, outside the content hash."""
    notes: tuple[str, ...] = ()
    """What was defaulted or looked up elsewhere, in words (``evalboard inspect`` shows them)."""

    @property
    def content_hash(self) -> str:
        return content_hash(self.files)

    @classmethod
    def load(cls, path: str | Path) -> ConnectorCheckpoint:
        path = Path(path)
        if path.is_dir() or is_llava_projector_file(path):
            return _load_llava(path)
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
        known = (
            set(_STATE_KEYS)
            | set(_MODULES)
            | set(_OPTIMIZER_KEYS)
            | set(_LLM_KEYS)
            | set(_VISION_KEYS)
            | set(_META_KEYS)
            | _OTHER_KEYS
            | set(_BUILDER_KEYS)
            | {"vision_feature_layer", "vision_drop_cls"}
        )
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
        settings = {
            **meta,
            **{k: obj[k] for k in (*_BUILDER_KEYS, "vision_feature_layer", "vision_drop_cls") if k in obj},
        }
        in_w, out_w = _widths(shapes)
        return cls(
            str(path),
            step,
            base_llm,
            vision,
            shapes,
            n_params,
            any(k in obj for k in _OPTIMIZER_KEYS),
            tuple(file_records(path, [path])),
            info,
            "evalboard",
            in_w,
            out_w,
            _builder(settings, path),
            _int_setting(settings, ("vision_feature_layer", "mm_vision_select_layer", "feature_layer"), path),
            _drop_cls(settings, path),
            {k: t for params in modules.values() for k, t in params.items()},
            _aspect_ratio(settings, path),
        )

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
            "layout": self.layout,
            "input_width": self.input_width,
            "output_width": self.output_width,
            "connector_builder": self.builder,
            "vision_feature_layer": self.feature_layer,
            "vision_drop_cls": self.drop_cls,
            **({"mm_projector_type": self.meta.get("mm_projector_type")} if self.layout == "llava" else {}),
            "image_aspect_ratio": self.aspect_ratio,
            "content_hash": self.content_hash,
            "files": [f.to_dict() for f in (*self.files, *self.step_files)],
            "notes": list(self.notes),
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
            + ", ".join(_STATE_KEYS[1:])
            + ", or top-level resampler/projector)",
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
    raise InvalidInput(
        f"missing field {label!r} (the frozen model it plugs into; accepted names: {', '.join(keys)})", path=path
    )


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


def _aspect_ratio(settings: Mapping[str, Any], path: Path) -> str:
    """LLaVA's ``image_aspect_ratio``: "pad", or "default" for what LLaVA's ``process_images``
    hands to the image processor as is (absent, None, "square", anything else); the modes evalboard
    does not implement are refused."""
    v = settings.get("image_aspect_ratio")
    if v is None or v == "":
        return "default"
    if not isinstance(v, str) or len(v) > 64:
        raise InvalidInput(f"image_aspect_ratio must be a string such as 'pad' or 'square', got {v!r}", path=path)
    if v == "pad":
        return "pad"
    if _UNIMPLEMENTED_ASPECT.match(v):
        raise InvalidInput(
            f"image_aspect_ratio {v!r} is not implemented: evalboard implements 'pad' and LLaVA's default "
            "(images straight to the image processor: 'square', or no image_aspect_ratio)",
            path=path,
        )
    return "default"


def _load_llava(path: Path) -> ConnectorCheckpoint:
    """LLaVA's pretraining output: ``mm_projector.bin`` + the model's ``config.json`` (see the module
    docstring for the folders LLaVA writes them to)."""
    from registry.safeio import read_json

    notes: list[str] = []
    if is_llava_projector_file(path):
        require_regular_file(path)
        weights = path
    else:
        found = [path / n for n in LLAVA_WEIGHTS if (path / n).exists()]
        if not found:
            raise InvalidInput("has no mm_projector.bin / mm_projector.safetensors", path=path)
        if len(found) > 1:  # either could be the projector: never pick one silently
            raise InvalidInput(
                f"holds both {' and '.join(p.name for p in found)}: which one is the checkpoint is ambiguous; "
                "keep exactly one",
                path=path,
            )
        weights = found[0]
    cfg_path, cfg_note = llava_config(path)
    if cfg_path is None:
        if is_llava_projector_file(path):
            where = f" (looked for ../{path.name.removesuffix('.bin')}/config.json and ../config.json)"
        else:
            where = " (nor the output folder's ../config.json)" if is_llava_step_dir(path) else ""
        raise InvalidInput(
            f"has no config.json{where}: LLaVA's training config (mm_vision_tower, mm_hidden_size, hidden_size, "
            "_name_or_path)",
            path=path,
        )
    if cfg_note:
        notes.append(cfg_note)
    cfg = read_json(cfg_path)
    for key in ("mm_vision_tower", "mm_hidden_size", "hidden_size"):
        if key not in cfg:
            raise InvalidInput(f"missing field {key!r} (LLaVA layout)", path=cfg_path)
    for key in ("mm_hidden_size", "hidden_size"):
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, int) or not 0 < v < 2**20:
            raise InvalidInput(f"{key} must be a positive integer, got {v!r}", path=cfg_path)
    kind = cfg.get("mm_projector_type")
    if kind is None:  # LLaVA's build_vision_projector: getattr(config, 'mm_projector_type', 'linear')
        kind = "linear"
        notes.append("mm_projector_type: linear (default: not in config.json; LLaVA's default)")
    for key, v in (("mm_vision_tower", cfg["mm_vision_tower"]), ("mm_projector_type", kind)):
        if not isinstance(v, str) or not v.strip() or len(v) > 512:
            raise InvalidInput(f"{key} must be a non-empty string", path=cfg_path)
    aspect = _aspect_ratio(cfg, cfg_path)
    if aspect == "default" and cfg.get("image_aspect_ratio"):
        notes.append(
            f"image_aspect_ratio: {cfg['image_aspect_ratio']!r} gives images to the image processor as they are "
            "(LLaVA's process_images pads only for 'pad')"
        )
    step, ts_path = llava_step(path, notes)
    raw = load_tensors(weights)
    state: dict[str, Any] = {}
    import torch

    for k, v in raw.items():
        if not isinstance(v, torch.Tensor):
            raise InvalidInput(f"entry {k!r} is a {type(v).__name__}, expected a tensor", path=weights)
        name = k.removeprefix("module.").removeprefix("base_model.").removeprefix("model.")
        if not name.startswith("mm_projector"):
            raise InvalidInput(f"unexpected tensor {k!r}; expected mm_projector.* weights", path=weights)
        state[name] = v
    if not state:
        raise InvalidInput("holds no mm_projector weights", path=weights)
    _check_finite(state, weights)
    if "mm_projector_type" not in cfg and ("mm_projector.weight" not in state or not set(state) <= _LINEAR):
        raise InvalidInput(
            "has no mm_projector_type, so it is 'linear' as in LLaVA (one mm_projector.weight/bias), but "
            f"{weights.name} holds {', '.join(sorted(state)[:4])}{', ...' if len(state) > 4 else ''}; "
            "record mm_projector_type (e.g. mlp2x_gelu)",
            path=cfg_path,
        )
    shapes = {"mm_projector": {k: tuple(t.shape) for k, t in state.items()}}
    in_w, out_w = _widths(shapes)
    if in_w is not None and in_w != cfg["mm_hidden_size"]:
        raise InvalidInput(
            f"mm_projector takes {in_w}-wide features but config.json says mm_hidden_size {cfg['mm_hidden_size']}",
            path=weights,
        )
    if out_w is not None and out_w != cfg["hidden_size"]:
        raise InvalidInput(
            f"mm_projector produces {out_w}-wide embeddings but config.json says hidden_size {cfg['hidden_size']}",
            path=weights,
        )
    base = cfg.get("base_llm") or cfg.get("_name_or_path")
    if not isinstance(base, str) or not base.strip():
        raise InvalidInput("missing field '_name_or_path' (the base LLM the projector plugs into)", path=cfg_path)
    select = cfg.get("mm_vision_select_feature", "patch")
    if select not in ("patch", "cls_patch"):
        raise InvalidInput(f"mm_vision_select_feature must be 'patch' or 'cls_patch', got {select!r}", path=cfg_path)
    info = {
        k: cfg[k]
        for k in (
            "mm_hidden_size",
            "hidden_size",
            "mm_vision_select_layer",
            "mm_vision_select_feature",
            "mm_use_im_start_end",
        )
        if k in cfg
    }
    info["mm_projector_type"] = kind
    builder = _builder(cfg, cfg_path)
    layer = cfg.get("mm_vision_select_layer", -2)
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise InvalidInput(f"mm_vision_select_layer must be an integer, got {layer!r}", path=cfg_path)
    return ConnectorCheckpoint(
        str(path),
        step,
        base,
        cfg["mm_vision_tower"],
        shapes,
        sum(int(t.numel()) for t in state.values()),
        False,
        llava_records(path, [weights, cfg_path]),
        info,
        "llava",
        in_w,
        out_w,
        builder,
        layer,
        False if select == "cls_patch" else None,
        state,
        aspect,
        llava_records(path, [ts_path]) if ts_path is not None else (),
        tuple(notes),
    )


def _widths(shapes: Mapping[str, Mapping[str, tuple[int, ...]]]) -> tuple[int | None, int | None]:
    """(features in, embeddings out) read off the weights: the resampler's queries (or the first
    projector layer) take the tower's width; the last projector layer gives the LLM's."""

    def index(name: str) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\.(\d+)\.", name + "."))

    proj = sorted(
        (
            (k, s)
            for m, p in shapes.items()
            if "projector" in m
            for k, s in p.items()
            if k.endswith("weight") and len(s) == 2
        ),
        key=lambda kv: index(kv[0]),
    )
    if any(b[1][1] != a[1][0] for a, b in zip(proj, proj[1:])):
        return None, None  # the layers do not chain: widths cannot be read off the weights
    out_w = proj[-1][1][0] if proj else None
    in_w = None
    for m, p in shapes.items():
        for k, s in p.items():
            if "resampler" in m and k.endswith("queries") and len(s) == 2:
                in_w = s[1]
    if in_w is None and proj:
        in_w = proj[0][1][1]
    return in_w, out_w


def _builder(settings: Mapping[str, Any], path: Path) -> str | None:
    for k in _BUILDER_KEYS:
        v = settings.get(k)
        if v is None:
            continue
        name = check_builder_name(v)
        if name is None:
            raise InvalidInput(
                f"{k} must name a function as 'package.module:function', got {str(v)[:200]!r}", path=path
            )
        return name
    return None


def _int_setting(settings: Mapping[str, Any], keys: tuple[str, ...], path: Path) -> int | None:
    for k in keys:
        v = settings.get(k)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or abs(v) > 1000:
            raise InvalidInput(f"{k} must be an integer hidden-layer index, got {v!r}", path=path)
        return v
    return None


def _drop_cls(settings: Mapping[str, Any], path: Path) -> bool | None:
    v = settings.get("vision_drop_cls")
    if v is None:
        # LLaVA's "patch" drops the CLS token where the tower has one: the tower decides (None).
        return False if settings.get("mm_vision_select_feature") == "cls_patch" else None
    if not isinstance(v, bool):
        raise InvalidInput(f"vision_drop_cls must be true or false, got {v!r}", path=path)
    return v
