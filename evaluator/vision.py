"""The frozen vision tower, resident like the base LLM, and an on-disk cache of its features.

A sweep over a run's connector checkpoints feeds the same images through the same frozen tower
again and again; only the connector changes. So the tower's output for an image is computed once
and kept, keyed by everything that changes it:

    tower content hash  x  image sha256 + decoded (width, height)  x  preprocessing settings
    x  selected hidden layer  x  whether the CLS token is dropped  x  aspect-ratio mode  x  dtype

(keys that leave out the image size or the preprocessing serve stale features when either
changes). The aspect-ratio mode is LLaVA's ``image_aspect_ratio``: "default" hands each image to
the tower's image processor as it is; "pad" first pastes it, centred, on a square canvas of the
processor's mean colour (LLaVA's ``expand2square``: side max(w, h), offset (w - h) // 2 on the short
axis, fill ``tuple(int(x * 255) for x in image_mean)``), as LLaVA-1.5 trained and evaluated.
The disk cache (`FeatureCache`) is bounded: least recently used files go first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from evaluator.base_model import quiet_loading
from registry.atomic import write_file
from registry.errors import Incompatible, InvalidInput, NotFound
from registry.files import content_hash, file_records
from registry.images import decode_image
from registry.vision import ASPECT_RATIOS, preprocessing_settings, read_tower_preprocessing

__all__ = ["VisionSettings", "ResidentTower", "FeatureCache", "load_tower", "expand_to_square"]

log = logging.getLogger(__name__)

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json")


@dataclass(frozen=True)
class VisionSettings:
    """Which tower output feeds the connector (recorded with every result and in the cache key)."""

    feature_layer: int
    """Index into the tower's hidden states (-1: last layer; LLaVA uses -2)."""
    drop_cls: bool
    """Drop the first token (CLIP's CLS); towers without one (SigLIP) keep every patch."""
    aspect_ratio: str = "default"
    """"default" (images to the processor as they are) or "pad" (LLaVA's expand2square first)."""

    def key(self) -> str:
        return f"layer={self.feature_layer};drop_cls={int(self.drop_cls)};aspect={self.aspect_ratio}"


@dataclass
class ResidentTower:
    """A vision model loaded once, frozen, with its image processor."""

    model: torch.nn.Module
    processor: Callable[..., Any]
    """The tower's image processor: images -> a batch with ``pixel_values``."""
    path: Path
    device: torch.device
    dtype: torch.dtype
    content_hash: str
    preprocessing: dict
    has_cls: bool
    hidden_size: int
    num_layers: int
    images_forwarded: int = 0
    """Images that went through the tower since it was loaded (the cache's benchmark figure)."""

    def describe(self) -> str:
        return (
            f"vision tower {self.path} on {self.device} as {str(self.dtype).removeprefix('torch.')} "
            f"(hidden {self.hidden_size}, {self.num_layers} layers, CLS token: {self.has_cls})"
        )

    def resolve(
        self, feature_layer: int | None, drop_cls: bool | None, aspect_ratio: str = "default"
    ) -> VisionSettings:
        layer = -2 if feature_layer is None else feature_layer
        if not -(self.num_layers + 1) <= layer <= self.num_layers:
            raise Incompatible(
                f"vision feature layer {layer} is out of range for tower {self.path} "
                f"({self.num_layers} layers + embeddings)"
            )
        if aspect_ratio not in ASPECT_RATIOS:
            raise InvalidInput(f"image aspect-ratio mode {aspect_ratio!r} is not one of {', '.join(ASPECT_RATIOS)}")
        if aspect_ratio == "pad":
            self.pad_colour()  # a processor without image_mean is refused before any image is read
        return VisionSettings(layer, self.has_cls if drop_cls is None else drop_cls, aspect_ratio)

    def pad_colour(self) -> tuple[int, ...]:
        """LLaVA's canvas colour for "pad": ``tuple(int(x * 255) for x in image_processor.image_mean)``."""
        mean = getattr(self.processor, "image_mean", None)
        if not isinstance(mean, (list, tuple)) or len(mean) != 3:
            raise Incompatible(
                f"the image processor of vision tower {self.path} has no 3-channel image_mean "
                f"(got {mean!r}); image_aspect_ratio 'pad' fills the canvas with it"
            )
        return tuple(int(x * 255) for x in mean)

    def cache_key(self, image_sha256: str, size: tuple[int, int], settings: VisionSettings) -> str:
        h = hashlib.sha256(b"evalboard-vision-features/1\n")
        for part in (
            self.content_hash,
            image_sha256,
            f"{size[0]}x{size[1]}",
            json.dumps(self.preprocessing, sort_keys=True),
            settings.key(),
            str(self.dtype),
        ):
            h.update(part.encode() + b"\n")
        return h.hexdigest()

    @torch.no_grad()
    def features(self, images: Sequence[bytes], settings: VisionSettings, *, batch_size: int = 32) -> torch.Tensor:
        """``[n, patches, hidden]`` features of the encoded ``images`` (on the tower's device)."""
        out = []
        for start in range(0, len(images), batch_size):
            pil = []
            for i, data in enumerate(images[start : start + batch_size], start):
                what = f"image {i} (sha256 {hashlib.sha256(data).hexdigest()[:12]})"
                with decode_image(data, what=what) as im:
                    rgb = im.convert("RGB")
                pil.append(expand_to_square(rgb, self.pad_colour()) if settings.aspect_ratio == "pad" else rgb)
            pixels = self.processor(images=pil, return_tensors="pt")["pixel_values"]
            hidden = self.model(pixel_values=pixels.to(self.device, self.dtype), output_hidden_states=True)
            feats = hidden.hidden_states[settings.feature_layer]
            out.append(feats[:, 1:] if settings.drop_cls else feats)
            self.images_forwarded += len(pil)
        return torch.cat(out)


def expand_to_square(image: Any, fill: tuple[int, ...]) -> Any:
    """LLaVA's ``expand2square``: ``image`` pasted on a square canvas of colour ``fill``, centred on
    its short axis (offset ``(long - short) // 2``); a square image is returned as it is."""
    from PIL import Image

    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, (0, (width - height) // 2) if width > height else ((height - width) // 2, 0))
    return canvas


def _tower_hash(path: Path) -> str:
    files = [p for p in sorted(path.iterdir()) if p.is_file() and p.suffix in _WEIGHT_SUFFIXES]
    return content_hash(file_records(path, files))


def load_tower(path: str | Path, device: torch.device, dtype: torch.dtype) -> ResidentTower:
    """Load a Hugging Face vision model (SigLIP / CLIP vision config) and its image processor."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    path = Path(path)
    if not (path / "config.json").is_file():
        raise NotFound(f"no config.json in vision tower directory {path}", path=path)
    if not (path / "preprocessor_config.json").is_file():
        raise NotFound(
            "has no preprocessor_config.json: the tower's image processor is needed to prepare images", path=path
        )
    start = time.perf_counter()
    config = AutoConfig.from_pretrained(path)
    vision_config = getattr(config, "vision_config", None) or config
    with quiet_loading():  # "falling back to the PIL backend" is not news
        processor = AutoImageProcessor.from_pretrained(path)
        model = AutoModel.from_pretrained(path, dtype=dtype)
    if hasattr(model, "vision_model") and not hasattr(model, "embeddings"):
        model = model.vision_model if getattr(config, "vision_config", None) is not None else model
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    has_cls = getattr(vision_config, "model_type", "").startswith("clip")
    tower = ResidentTower(
        model,
        processor,
        path,
        device,
        dtype,
        _tower_hash(path),
        read_tower_preprocessing(path) or preprocessing_settings(processor.to_dict()),
        has_cls,
        int(vision_config.hidden_size),
        int(vision_config.num_hidden_layers),
    )
    log.info("%s loaded in %.1fs", tower.describe(), time.perf_counter() - start)
    return tower


class FeatureCache:
    """Features on disk, one safetensors file per key, bounded to ``max_bytes`` (LRU by mtime).

    Each file records, in its safetensors metadata, the key it was stored under, the tensor's
    shape and dtype and a sha256 of the key and the tensor's bytes. An entry is used only when all
    of them check out (a torn write, a flipped byte or a file copied under another key is a miss,
    logged, recomputed and replaced); nothing is ever unpickled."""

    def __init__(self, root: str | Path, max_bytes: int):
        if max_bytes < 0:
            raise InvalidInput(f"vision cache bound must be non-negative, got {max_bytes}")
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0

    def _file(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def get(self, key: str, *, dtype: torch.dtype | None = None, width: int | None = None) -> torch.Tensor | None:
        """The features stored under ``key``, or None (a miss). ``dtype`` and ``width`` (the last
        dimension) are what the caller expects; an entry that differs is a bad entry."""
        if self.max_bytes == 0:
            return None
        f = self._file(key)
        if not f.exists():
            self.misses += 1
            return None
        try:
            t = _read_entry(f, key, dtype, width)
            os.utime(f)  # recently used: evicted last
        except _BadEntry as e:
            log.warning("vision feature cache: entry %s is bad (%s); recomputing it", f, e)
            f.unlink(missing_ok=True)
            self.misses += 1
            return None
        except OSError:  # vanished (evicted by another process) or unreadable: a plain miss
            self.misses += 1
            return None
        self.hits += 1
        return t

    def put(self, key: str, features: torch.Tensor) -> None:
        if self.max_bytes == 0:
            return
        from safetensors.torch import save

        f = self._file(key)
        f.parent.mkdir(parents=True, exist_ok=True)
        t = features.detach().to("cpu").contiguous()
        meta = {
            "key": key,
            "shape": json.dumps(list(t.shape)),
            "dtype": str(t.dtype).removeprefix("torch."),
            "sha256": _entry_checksum(key, t),
        }
        try:
            write_file(f, save({"features": t}, metadata=meta))
        except (OSError, InvalidInput) as e:  # a full or read-only disk costs speed, never the evaluation
            log.warning("vision feature cache: could not write %s: %s", f, e)

    def evict(self) -> int:
        """Delete least recently used files until the cache fits its bound; returns files removed."""
        files = []
        for sub in self.root.glob("??"):
            for f in sub.glob("*.safetensors"):
                try:
                    st = f.stat()
                except OSError:
                    continue
                files.append((st.st_mtime_ns, st.st_size, f))
        total = sum(size for _, size, _ in files)
        removed = 0
        for _, size, f in sorted(files):
            if total <= self.max_bytes:
                break
            f.unlink(missing_ok=True)
            total -= size
            removed += 1
        return removed

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.root.glob("??/*.safetensors"))


class _BadEntry(Exception):
    """A cache file that is not what was stored under its key (the message says why)."""


def _entry_checksum(key: str, t: torch.Tensor) -> str:
    h = hashlib.sha256(b"evalboard-vision-cache-entry/1\n")
    h.update(f"{key}\n{str(t.dtype).removeprefix('torch.')}\n{list(t.shape)}\n".encode())
    h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def _read_entry(f: Path, key: str, dtype: torch.dtype | None, width: int | None) -> torch.Tensor:
    """The tensor of cache file ``f``, checked against its metadata and the caller's expectations."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(f), framework="pt") as fh:
            meta = fh.metadata() or {}
            names = list(fh.keys())
            if names != ["features"]:
                raise _BadEntry(f"holds tensors {names}, expected only 'features'")
            t = fh.get_tensor("features")
    except SafetensorError as e:
        raise _BadEntry(f"not a readable safetensors file: {str(e).splitlines()[0][:200]}") from None
    if "sha256" not in meta:
        raise _BadEntry("written without a checksum")
    if meta.get("key") != key:
        raise _BadEntry(f"stored under key {str(meta.get('key'))[:64]!r}, not this one")
    got_dtype = str(t.dtype).removeprefix("torch.")
    if meta.get("shape") != json.dumps(list(t.shape)) or meta.get("dtype") != got_dtype:
        raise _BadEntry(
            f"holds a {got_dtype} tensor of shape {list(t.shape)}, its record says "
            f"{meta.get('dtype')} {meta.get('shape')}"
        )
    if dtype is not None and t.dtype != dtype:
        raise _BadEntry(f"holds {got_dtype} features, the tower gives {str(dtype).removeprefix('torch.')}")
    if width is not None and (t.dim() != 2 or t.shape[-1] != width):
        raise _BadEntry(f"holds features of shape {list(t.shape)}, expected [patches, {width}]")
    if _entry_checksum(key, t) != meta["sha256"]:
        raise _BadEntry("its checksum does not match its bytes")
    return t
