"""Reading untrusted files: strict JSON, hashed bytes, and tensors that cannot run code.

Every checkpoint we read was written by somebody else's training job and may be truncated,
half-synced, a Git-LFS pointer, an HTML error page or a pickle that wants to execute code.
Each reader here turns those into one-line ``InvalidInput`` errors that name the file.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

from registry.errors import InvalidInput, UnsafePickle

__all__ = [
    "sha256_file",
    "read_json",
    "canonical_json",
    "load_tensors",
    "sniff_tensor_file",
]

_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def canonical_json(obj: Any) -> str:
    """One serialisation per value: sorted keys, no whitespace, ASCII only."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _no_duplicates(path: Path):
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise InvalidInput(f"duplicate JSON key {key!r}", path=path)
            seen[key] = value
        return seen

    return hook


def _reject_constant(path: Path):
    def hook(name: str) -> float:
        raise InvalidInput(f"JSON contains {name}, which is not valid JSON; write a number or null", path=path)

    return hook


def read_json(path: str | Path, *, expect: type = dict) -> Any:
    """Parse a JSON file strictly: UTF-8 without BOM, no duplicate keys, no NaN/Infinity."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InvalidInput("file not found", path=path) from None
    except IsADirectoryError:
        raise InvalidInput("is a directory, expected a JSON file", path=path) from None
    except OSError as e:
        raise InvalidInput(f"cannot read: {e.strerror}", path=path) from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raise InvalidInput("starts with a UTF-8 byte-order mark (BOM); save it as plain UTF-8", path=path)
    if not raw.strip():
        raise InvalidInput("is empty, expected a JSON object", path=path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidInput(f"is not UTF-8 text (byte {e.start})", path=path) from None
    try:
        value = json.loads(
            text, object_pairs_hook=_no_duplicates(path), parse_constant=_reject_constant(path)
        )
    except json.JSONDecodeError as e:
        raise InvalidInput(f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}", path=path) from None
    if not isinstance(value, expect):
        raise InvalidInput(f"expected a JSON {_json_kind(expect)}, found {_json_kind(type(value))}", path=path)
    return value


def _json_kind(t: type) -> str:
    return {dict: "object", list: "array", str: "string", int: "number", float: "number"}.get(t, t.__name__)


# --- tensors --------------------------------------------------------------------------------

_ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP_MAGIC = b"PK\x05\x06"
_LFS_PREFIX = b"version https://git-lfs"
_HTML_PREFIXES = (b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")


def sniff_tensor_file(path: Path) -> str:
    """Say what a tensor file is from its first bytes: 'torch-zip', 'torch-legacy' or 'safetensors'.

    Checked before any loader runs, so a Git-LFS pointer or an HTML error page saved as `.pt`
    gets a message about what it actually is instead of an unpickling stack trace.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(64)
    except FileNotFoundError:
        raise InvalidInput("file not found", path=path) from None
    except OSError as e:
        raise InvalidInput(f"cannot read: {e.strerror}", path=path) from None
    if size == 0:
        raise InvalidInput("file is empty (0 bytes)", path=path)
    if head.startswith(_LFS_PREFIX):
        raise InvalidInput(
            "is a Git-LFS pointer, not tensor data; run `git lfs pull` to fetch the real file", path=path
        )
    stripped = head.lstrip().lower()
    if stripped.startswith(_HTML_PREFIXES):
        raise InvalidInput("is an HTML/XML page, not tensor data (a failed download?)", path=path)
    if path.suffix == ".safetensors" or _looks_like_safetensors(head, size):
        return "safetensors"
    if head.startswith(_ZIP_MAGIC) or head.startswith(_EMPTY_ZIP_MAGIC):
        return "torch-zip"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "torch-legacy"
    raise InvalidInput(
        f"is not a PyTorch or safetensors file (starts with {head[:8]!r}, {size} bytes)", path=path
    )


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 0 < n < size and head[8:9] == b"{"




def load_tensors(path: str | Path) -> dict[str, Any]:
    """Load a `.pt`/`.bin` (weights_only) or `.safetensors` file into a dict, never running code.

    `weights_only=True` is passed explicitly, which torch honours even when
    `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1` is set in the environment.
    """
    path = Path(path)
    kind = sniff_tensor_file(path)
    if kind == "safetensors":
        return _load_safetensors(path)
    return _load_torch(path, kind)


def _load_torch(path: Path, kind: str) -> dict[str, Any]:
    import torch

    if kind == "torch-zip":
        try:
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
        except zipfile.BadZipFile:
            raise InvalidInput("is truncated or corrupt (the zip archive has no central directory)", path=path) from None
        except (OSError, zipfile.LargeZipFile, EOFError) as e:
            raise InvalidInput(f"is truncated or corrupt ({e})", path=path) from None
        if bad is not None:
            raise InvalidInput(f"is corrupt (CRC mismatch in archive member {bad!r})", path=path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=(kind == "torch-zip"))
    except pickle.UnpicklingError as e:
        raise UnsafePickle(_unsafe_reason(str(e)), path=path) from None
    except (RuntimeError, EOFError, ValueError, OSError, AttributeError, ImportError, TypeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "weights_only" in msg.lower() or "unsupported global" in msg.lower():
            raise UnsafePickle(_unsafe_reason(str(e)), path=path) from None
        raise InvalidInput(f"cannot be loaded as a PyTorch file: {msg}", path=path) from None
    if not isinstance(obj, dict):
        raise InvalidInput(f"holds a {type(obj).__name__}, expected a dict of tensors", path=path)
    return obj


def _unsafe_reason(message: str) -> str:
    """Name the global a pickle asked for, from torch's weights_only error text."""
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message) or re.search(
        # torch >= 2.6 for globals of blocked modules (os, posix, subprocess, ...)
        r"unsupported GLOBAL ([\w.]+) whose module", message) or re.search(
        r"Unsupported (?:operand|class|global)[^:]*:\s*([^\s,]+)", message
    )
    what = f"it references the global {m.group(1)!r}" if m else "it needs more than plain tensors"
    return (
        f"refused to unpickle: {what}, and loading it would run code; only tensors, dicts, lists "
        "and numbers are accepted (re-save with torch.save of a plain state dict, or use .safetensors)"
    )


def _load_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise InvalidInput("safetensors file is truncated (shorter than its 8-byte header length)", path=path)
        n = int.from_bytes(head, "little")
        if n <= 1 or 8 + n > size:
            raise InvalidInput(
                f"safetensors header length {n} does not fit in the {size}-byte file (truncated or not safetensors)",
                path=path,
            )
        header_bytes = f.read(n)
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidInput("safetensors header is not valid JSON", path=path) from None
    if not isinstance(header, dict):
        raise InvalidInput("safetensors header is not a JSON object", path=path)
    data_len = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise InvalidInput(f"safetensors header entry {name!r} has no valid data_offsets", path=path)
        if offsets[1] > data_len or offsets[0] > offsets[1]:
            raise InvalidInput(
                f"safetensors tensor {name!r} ends at byte {offsets[1]} but the data section has {data_len} (truncated)",
                path=path,
            )
    try:
        return dict(load_file(str(path), device="cpu"))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise InvalidInput(f"safetensors file cannot be read: {str(e).splitlines()[0]}", path=path) from None


def is_finite_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
