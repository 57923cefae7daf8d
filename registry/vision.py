"""What an image eval set and a connector checkpoint say about the vision side (no torch here).

The eval set's manifest names the frozen vision tower and the preprocessing its images are meant
for (``manifest["vision"]``); the tower's own ``preprocessor_config.json`` says what its image
processor does. Both are reduced to the same canonical settings so the audit can compare them and
the feature cache can key on them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from registry.errors import InvalidInput

__all__ = [
    "ASPECT_RATIOS",
    "IMAGE_TOKEN_ID",
    "PREPROCESSING_KEYS",
    "preprocessing_settings",
    "read_tower_preprocessing",
    "VisionSpec",
    "preprocessing_diff",
]

IMAGE_TOKEN_ID = -200
"""Default placeholder id in ``input_ids`` where an example's image goes (LLaVA's IMAGE_TOKEN_INDEX).
It is expanded to the connector's output tokens at evaluation; being negative, it can never
collide with a vocabulary id."""

ASPECT_RATIOS = ("default", "pad")
"""How an image reaches the tower's image processor (LLaVA's ``image_aspect_ratio``): "default" as
it is, "pad" first pasted centred on a square of the processor's mean colour (``expand2square``)."""

PREPROCESSING_KEYS = (
    "do_resize",
    "size",
    "resample",
    "do_center_crop",
    "crop_size",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
    "do_convert_rgb",
)
"""The image-processor settings that change the pixels a tower sees."""


def preprocessing_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The canonical subset of an image processor's settings (JSON-able, stable order)."""
    out: dict[str, Any] = {}
    for k in PREPROCESSING_KEYS:
        if k in config and config[k] is not None:
            v = config[k]
            if isinstance(v, tuple):
                v = list(v)
            if isinstance(v, dict):
                v = {kk: v[kk] for kk in sorted(v)}
            if isinstance(v, float) and v.is_integer():
                v = int(v) if k not in ("rescale_factor",) else v
            out[k] = v
    return out


def read_tower_preprocessing(tower_dir: str | Path) -> dict[str, Any] | None:
    """The settings in a tower folder's ``preprocessor_config.json``, or None without one."""
    p = Path(tower_dir) / "preprocessor_config.json"
    try:
        return preprocessing_settings(json.loads(p.read_text()))
    except (OSError, ValueError):
        return None


def preprocessing_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """``["size: {...} vs {...}", ...]`` for the settings both name and that differ."""
    return [f"{k}: {a[k]!r} vs {b[k]!r}" for k in PREPROCESSING_KEYS if k in a and k in b and a[k] != b[k]]


class VisionSpec:
    """The ``vision`` section of an image eval set's manifest, validated."""

    FIELDS = {"tower", "preprocessing", "image_token_id", "feature_layer", "drop_cls"}

    def __init__(
        self,
        tower: str,
        preprocessing: Mapping[str, Any],
        image_token_id: int,
        feature_layer: int | None,
        drop_cls: bool | None,
    ):
        self.tower = tower
        self.preprocessing = dict(preprocessing)
        self.image_token_id = image_token_id
        self.feature_layer = feature_layer
        self.drop_cls = drop_cls

    @classmethod
    def parse(cls, raw: Any, where: str) -> VisionSpec:
        if not isinstance(raw, dict):
            raise InvalidInput("vision must be an object {tower, preprocessing, image_token_id}", path=where)
        unexpected = sorted(set(raw) - cls.FIELDS)
        if unexpected:
            raise InvalidInput(
                f"unexpected field vision.{unexpected[0]}; known: {', '.join(sorted(cls.FIELDS))}", path=where
            )
        tower = raw.get("tower")
        if not isinstance(tower, str) or not tower.strip() or len(tower) > 512:
            raise InvalidInput("vision.tower must name the vision tower the images were prepared for", path=where)
        pre = raw.get("preprocessing", {})
        if not isinstance(pre, dict):
            raise InvalidInput("vision.preprocessing must be an object of image-processor settings", path=where)
        token = raw.get("image_token_id", IMAGE_TOKEN_ID)
        if isinstance(token, bool) or not isinstance(token, int) or abs(token) > 2**31:
            raise InvalidInput(f"vision.image_token_id must be an integer, got {token!r}", path=where)
        layer = raw.get("feature_layer")
        if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or abs(layer) > 1000):
            raise InvalidInput(f"vision.feature_layer must be an integer hidden-layer index, got {layer!r}", path=where)
        drop = raw.get("drop_cls")
        if drop is not None and not isinstance(drop, bool):
            raise InvalidInput(f"vision.drop_cls must be true or false, got {drop!r}", path=where)
        return cls(tower, preprocessing_settings(pre), token, layer, drop)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "tower": self.tower,
            "preprocessing": self.preprocessing,
            "image_token_id": self.image_token_id,
        }
        if self.feature_layer is not None:
            d["feature_layer"] = self.feature_layer
        if self.drop_cls is not None:
            d["drop_cls"] = self.drop_cls
        return d
