"""Finding a base model on local disk and loading it once, frozen, for evaluation.

Workers never download: a base model id resolves to a local directory through the
`EVALBOARD_MODELS` map or the Hugging Face cache (offline). A checkpoint's `base_model` is
written by whoever wrote the checkpoint, so a local folder named there is loaded only when the
user allowed it: mapped by name (`EVALBOARD_MODELS='/data/m=/data/m'`) or inside a folder allowed
for local models (`EVALBOARD_MODELS='*=/data/models'`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from registry.errors import InvalidInput, NotFound
from registry.settings import LOCAL_MODELS_KEY

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = [
    "ResidentBase",
    "resolve_base_model",
    "load_base",
    "default_dtype",
    "parse_device",
    "LOCAL_MODELS_KEY",
    "quiet_loading",
]


log = logging.getLogger(__name__)


def resolve_base_model(model_id: str, models_map: Mapping[str, str], *, cache_dir: str | Path | None = None) -> Path:
    """Local directory holding `model_id`'s weights, without touching the network.

    Tried in order: the `models_map` entry (from `EVALBOARD_MODELS`), the Hugging Face cache
    (`cache_dir`, default: the hub's own) offline, then `model_id` as a local folder, only when it
    lies inside the folder mapped under `LOCAL_MODELS_KEY` ("*"). Any other local path is refused.
    """
    if model_id in models_map and model_id != LOCAL_MODELS_KEY:
        path = Path(models_map[model_id]).expanduser()
        if not path.is_dir():
            raise NotFound(
                f"EVALBOARD_MODELS maps base model {model_id!r} to {str(path)!r}, "
                "which is not a directory; fix the entry or download the model there"
            )
        return path
    cached = _from_hf_cache(model_id, cache_dir)
    if cached is not None:
        return cached
    as_path = Path(model_id).expanduser()
    if as_path.is_dir():
        allowed = models_map.get(LOCAL_MODELS_KEY)
        real = Path(os.path.realpath(as_path))
        if allowed and real.is_relative_to(os.path.realpath(Path(allowed).expanduser())):
            return as_path
        raise InvalidInput(
            f"base model {model_id!r} is a local folder, and base models are loaded only from "
            "EVALBOARD_MODELS or the Hugging Face cache; to allow it, map it "
            f"(EVALBOARD_MODELS='{model_id}={model_id}') or allow a folder of local models "
            f"(EVALBOARD_MODELS='{LOCAL_MODELS_KEY}=/folder/holding/it')"
        )
    known = ", ".join(sorted(k for k in models_map if k != LOCAL_MODELS_KEY)) or "none"
    raise NotFound(
        f"base model {model_id!r} is not available locally: not in EVALBOARD_MODELS "
        f"(known ids: {known}), not in the Hugging Face cache. "
        f"Add it with EVALBOARD_MODELS='{model_id}=/path/to/model' (or a JSON file mapping "
        "id -> directory), or download it first with `huggingface-cli download`"
    )


def _from_hf_cache(model_id: str, cache_dir: str | Path | None) -> Path | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(snapshot_download(model_id, cache_dir=cache_dir, local_files_only=True))
    except (FileNotFoundError, HFValidationError, ValueError, OSError):
        # LocalEntryNotFoundError is a FileNotFoundError; a path-like id fails validation.
        return None


@contextmanager
def quiet_loading() -> Iterator[None]:
    """transformers' own progress bars and notices off while a model loads: our progress bars and
    our one log line say what happened."""
    import transformers

    verbosity = transformers.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.utils.logging.enable_progress_bar()


def parse_device(requested: str | None) -> torch.device | None:
    """`--device` as a torch device, or a one-line refusal naming the option (torch's own error
    for "gpu0" is a RuntimeError); None stays None (pick automatically)."""
    if requested is None:
        return None
    try:
        dev = torch.device(requested)
    except (RuntimeError, ValueError, TypeError):
        raise InvalidInput(f"--device {requested[:80]!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise InvalidInput(f"--device {requested[:80]!r}: evalboard evaluates on cpu, cuda or cuda:N")
    if dev.type == "cuda" and dev.index is not None and dev.index > 1024:
        raise InvalidInput(f"--device {requested[:80]!r}: no such CUDA device")
    return dev


def default_dtype(device: str | torch.device) -> torch.dtype:
    """bfloat16 on CUDA (how these bases are trained and served), float32 on CPU (bf16 matmuls
    on CPU are slow and we want exact reference losses there)."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


@dataclass(frozen=True)
class ResidentBase:
    """A base model loaded once, frozen, in eval mode, on `device`."""

    model: PreTrainedModel
    path: Path
    device: torch.device
    dtype: torch.dtype
    load_seconds: float

    def describe(self) -> str:
        n_params = sum(p.numel() for p in self.model.parameters())
        return (
            f"base {self.path} loaded on {self.device} as {str(self.dtype).removeprefix('torch.')} "
            f"({n_params / 1e6:.1f}M parameters) in {self.load_seconds:.1f}s"
        )


def load_base(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> ResidentBase:
    """Load the causal LM at `path` onto `device`, frozen (eval mode, no gradients).

    `dtype` defaults to `default_dtype(device)`.
    """
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not (path / "config.json").is_file():
        raise NotFound(f"no config.json in base model directory {path}", path=path)
    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInput("device 'cuda' requested but torch sees no CUDA device; use --device cpu")
    start = time.perf_counter()
    # No device_map: that needs `accelerate`, which we do not depend on; one .to() is enough.
    with quiet_loading():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, low_cpu_mem_usage=True)
    model.to(device)  # type: ignore[arg-type]  # typeshed's functools.wraps (on PreTrainedModel.to) loses `self`
    model.eval()
    model.requires_grad_(False)
    base = ResidentBase(model, path, device, dtype, time.perf_counter() - start)
    log.info(base.describe())
    return base
