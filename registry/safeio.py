"""Reading untrusted files: strict JSON, hashed bytes, and tensors that cannot run code.

Every checkpoint we read was written by somebody else's training job and may be truncated,
half-synced, a Git-LFS pointer, an HTML error page or a pickle that wants to execute code.
Each reader here turns those into one-line ``InvalidInput`` errors that name the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import stat
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

from registry.errors import InvalidInput, UnsafePickle

__all__ = [
    "sha256_file",
    "open_regular",
    "as_invalid",
    "require_regular_file",
    "check_int",
    "check_text",
    "short_repr",
    "DB_INT_MAX",
    "MAX_NAME_CHARS",
    "MAX_TEXT_CHARS",
    "read_json",
    "canonical_json",
    "load_tensors",
    "sniff_tensor_file",
]

_CHUNK = 1 << 20

DB_INT_MAX = 2**31 - 1
"""Largest integer any registry column holds on every backend (PostgreSQL INTEGER is 32-bit)."""
MAX_NAME_CHARS = 256
"""Model ids, run/eval-set/task names, codec names, hashes: longer is not a name but a payload."""
MAX_TEXT_CHARS = 8192
"""Any string inside a metadata JSON file (descriptions, notes)."""
MAX_JSON_BYTES = 16 << 20
"""Metadata JSON files are a few KB; a bigger one is not ours."""
MAX_JSON_DEPTH = 64


# --- what may be opened -----------------------------------------------------------------------

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _os_error(e: OSError, path: Path) -> InvalidInput:
    if isinstance(e, FileNotFoundError):
        return InvalidInput("file not found", path=path)
    return InvalidInput(f"cannot read: {e.strerror or type(e).__name__}", path=path)


def as_invalid(error: OSError, path: str | Path) -> InvalidInput:
    """An OSError met while reading `path` (permission denied, vanished, I/O error) as the one-line
    refusal a scan records and the CLI prints."""
    return _os_error(error, Path(error.filename) if getattr(error, "filename", None) else Path(path))


def require_regular_file(path: str | Path) -> os.stat_result:
    """The file's stat, or InvalidInput naming what it is instead (a FIFO, a device, a socket,
    a folder) or why it cannot be read. Nothing else is ever opened: reading a named pipe or a
    device blocks for ever."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise _os_error(e, path) from None
    if not stat.S_ISREG(st.st_mode):
        raise InvalidInput(f"is {_kind(st.st_mode)}, not a regular file; refused", path=path)
    return st


def open_regular(path: str | Path) -> BinaryIO:
    """Open a regular file for reading (checked before and, against a swap, after opening)."""
    path = Path(path)
    require_regular_file(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise _os_error(e, path) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise InvalidInput(f"is {_kind(st.st_mode)}, not a regular file; refused", path=path)
    return os.fdopen(fd, "rb")


def sha256_file(path: str | Path) -> str:
    """The sha256 of a regular file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open_regular(path) as f:
        try:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        except OSError as e:
            raise _os_error(e, Path(path)) from None
    return h.hexdigest()


# --- checked values ---------------------------------------------------------------------------


def short_repr(value: Any, limit: int = 80) -> str:
    """A bounded description of a value for an error message (huge ints and strings included)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, str) and len(value) > limit:
        return f"a string of {len(value)} characters"
    if isinstance(value, (list, dict)):
        text = f"a JSON {'array' if isinstance(value, list) else 'object'}"
        return text if len(repr(value)) > limit else f"{value!r}"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_int(value: Any, name: str, where: str | Path | None, *, minimum: int = 0, maximum: int = DB_INT_MAX) -> int:
    """An integer (not a bool, not a float) within [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be an integer, got {short_repr(value)}", path=where)
    if not minimum <= value <= maximum:
        raise InvalidInput(f"{name} {short_repr(value)} is outside [{minimum}, {maximum}]", path=where)
    return value


def check_text(
    value: Any, name: str, where: str | Path | None, *, max_chars: int = MAX_NAME_CHARS, allow_empty: bool = False
) -> str:
    """A string of at most `max_chars` characters (non-blank unless `allow_empty`)."""
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string, got {short_repr(value)}", path=where)
    if not allow_empty and not value.strip():
        raise InvalidInput(f"{name} must be a non-empty string", path=where)
    if len(value) > max_chars:
        raise InvalidInput(f"{name} is {len(value)} characters long; at most {max_chars} are accepted", path=where)
    return value


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
        st = os.stat(path)
    except OSError as e:
        raise _os_error(e, path) from None
    if stat.S_ISDIR(st.st_mode):
        raise InvalidInput("is a directory, expected a JSON file", path=path)
    if stat.S_ISREG(st.st_mode) and st.st_size > MAX_JSON_BYTES:
        raise InvalidInput(f"is {st.st_size} bytes; a metadata JSON file may have at most {MAX_JSON_BYTES}", path=path)
    with open_regular(path) as f:
        try:
            raw = f.read(MAX_JSON_BYTES + 1)
        except OSError as e:
            raise _os_error(e, path) from None
    if len(raw) > MAX_JSON_BYTES:
        raise InvalidInput(f"is larger than {MAX_JSON_BYTES} bytes, the limit for a metadata JSON file", path=path)
    if raw.startswith(b"\xef\xbb\xbf"):
        raise InvalidInput("starts with a UTF-8 byte-order mark (BOM); save it as plain UTF-8", path=path)
    if not raw.strip():
        raise InvalidInput("is empty, expected a JSON object", path=path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidInput(f"is not UTF-8 text (byte {e.start})", path=path) from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates(path), parse_constant=_reject_constant(path))
    except json.JSONDecodeError as e:
        raise InvalidInput(f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}", path=path) from None
    except RecursionError:
        raise InvalidInput(f"JSON is nested too deeply (more than {MAX_JSON_DEPTH} levels)", path=path) from None
    except ValueError as e:  # e.g. an integer literal with more digits than Python converts
        raise InvalidInput(f"invalid JSON: {str(e).splitlines()[0][:200]}", path=path) from None
    _check_bounds(value, path)
    if not isinstance(value, expect):
        raise InvalidInput(f"expected a JSON {_json_kind(expect)}, found {_json_kind(type(value))}", path=path)
    return value


def _check_bounds(value: Any, path: Path) -> None:
    """Depth and string lengths of parsed JSON, without recursion."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise InvalidInput(f"JSON is nested too deeply (more than {MAX_JSON_DEPTH} levels)", path=path)
        if isinstance(item, str):
            if len(item) > MAX_TEXT_CHARS:
                raise InvalidInput(
                    f"holds a string of {len(item)} characters; at most {MAX_TEXT_CHARS} are "
                    "accepted in a metadata field",
                    path=path,
                )
        elif isinstance(item, dict):
            stack.extend((k, depth + 1) for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


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
    with open_regular(path) as f:
        try:
            size = os.fstat(f.fileno()).st_size
            head = f.read(64)
        except OSError as e:
            raise _os_error(e, path) from None
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
    raise InvalidInput(f"is not a PyTorch or safetensors file (starts with {head[:8]!r}, {size} bytes)", path=path)


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
            raise InvalidInput(
                "is truncated or corrupt (the zip archive has no central directory)", path=path
            ) from None
        except (OSError, zipfile.LargeZipFile, EOFError) as e:
            raise InvalidInput(f"is truncated or corrupt ({e})", path=path) from None
        if bad is not None:
            raise InvalidInput(f"is corrupt (CRC mismatch in archive member {bad!r})", path=path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=(kind == "torch-zip"))
    except pickle.UnpicklingError as e:
        raise UnsafePickle(_unsafe_reason(str(e)), path=path) from None
    except (
        RuntimeError,
        EOFError,
        ValueError,
        OSError,
        AttributeError,
        ImportError,
        TypeError,
        KeyError,
        IndexError,
        RecursionError,
    ) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "weights_only" in msg.lower() or "unsupported global" in msg.lower():
            raise UnsafePickle(_unsafe_reason(str(e)), path=path) from None
        raise InvalidInput(f"cannot be loaded as a PyTorch file: {msg}", path=path) from None
    if not isinstance(obj, dict):
        raise InvalidInput(f"holds a {type(obj).__name__}, expected a dict of tensors", path=path)
    return obj


def _unsafe_reason(message: str) -> str:
    """Name the global a pickle asked for, from torch's weights_only error text."""
    m = (
        re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
        or re.search(
            # torch >= 2.6 for globals of blocked modules (os, posix, subprocess, ...)
            r"unsupported GLOBAL ([\w.]+) whose module",
            message,
        )
        or re.search(r"Unsupported (?:operand|class|global)[^:]*:\s*([^\s,]+)", message)
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
    except (UnicodeDecodeError, ValueError, RecursionError):
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
