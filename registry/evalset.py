"""Eval sets: token ids already tokenized in one token space, stored as Parquet + ``manifest.json``.

Layout (README "Eval set")::

    my_evalset/
      manifest.json      {"name", "token_space_hash", "codec_versions", "tokenizer_version",
                          "token_space": {...inline token_space.json...} (optional), "description"}
      data.parquet       columns example_id (str), task (str), input_ids (list<int>), labels (list<int>)
      (more *.parquet files are concatenated in name order)

``labels`` follows the Hugging Face convention: same length as ``input_ids``, ``-100`` where a
position is not scored, and the model predicts ``labels[t]`` from positions ``< t``. So position
0 can never be scored and each example needs at least one scored label at ``t >= 1``.

The content hash covers the token-space hash and the bytes of every Parquet file, not the name or
the description: renaming an eval set keeps its hash; changing one token changes it.

Image eval sets (for vision-connector checkpoints) add, per example, the image and where it goes:

- a column ``image`` (the encoded image bytes: PNG, JPEG or WebP, the decoders `registry.images`
  allows) or ``image_path`` (a path relative to the eval-set folder; the file's bytes are hashed
  with the Parquet files);
- in ``input_ids``, exactly one placeholder id (``vision.image_token_id``, default -200, LLaVA's
  IMAGE_TOKEN_INDEX) where the image goes; the evaluator expands it to the connector's output
  tokens, and its label must be -100;
- ``manifest["vision"]``: ``{"tower": <vision tower id>, "preprocessing": {image-processor settings},
  "image_token_id": -200}`` (registry/vision.py). ``token_space_hash`` is optional for them: the ids
  are the LLM's own text ids, checked against its vocabulary at evaluation.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.atomic import write_file
from registry.errors import InvalidInput
from registry.files import FileRecord, file_records
from registry.safeio import MAX_NAME_CHARS, check_text, read_json, require_regular_file
from registry.token_space import TokenSpace
from registry.vision import VisionSpec

__all__ = ["EvalSet", "Example", "IGNORE_INDEX", "write_evalset", "MANIFEST"]

IGNORE_INDEX = -100
MANIFEST = "manifest.json"
COLUMNS = ("example_id", "task", "input_ids", "labels")
RESERVED_TASK = "all"
"""The name results use for the loss over every task; no eval-set task may take it."""
_MANIFEST_FIELDS = {
    "name",
    "token_space_hash",
    "codec_versions",
    "tokenizer_version",
    "token_space",
    "description",
    "created_at",
    "files",
    "schema_version",
    "source",
    "tasks",
    "n_examples",
    "vision",
}
IMAGE_COLUMNS = ("image", "image_path")
_HASH_ALIASES = ("token_space_hash", "token_space_abi_hash", "abi_hash")


@dataclass(frozen=True, slots=True)
class Example:
    example_id: str
    task: str
    input_ids: list[int]
    labels: list[int]
    image: bytes | None = field(default=None, repr=False)
    """The encoded image (image eval sets only)."""
    image_sha256: str | None = None
    image_size: tuple[int, int] | None = None
    """(width, height) after decoding: part of the vision-feature cache key."""

    @property
    def n_scored(self) -> int:
        return sum(1 for x in self.labels[1:] if x != IGNORE_INDEX)


@dataclass(frozen=True)
class EvalSet:
    path: str
    name: str
    token_space_hash: str | None
    """None for an image eval set that names no token space."""
    manifest: Mapping[str, Any]
    files: tuple[FileRecord, ...]
    examples: tuple[Example, ...] = field(repr=False)
    token_space: TokenSpace | None = None
    vision: VisionSpec | None = None
    """The image side (image eval sets only)."""

    @property
    def content_hash(self) -> str:
        h = hashlib.sha256(b"evalboard-evalset/1\n")
        h.update(f"token_space:{self.token_space_hash}\n".encode())
        for r in sorted(self.files, key=lambda r: r.name):
            if r.name.endswith(".parquet"):
                h.update(f"{r.name}:{r.sha256}\n".encode())
        for r in sorted(self.files, key=lambda r: r.name):  # image files (image eval sets only)
            if not r.name.endswith(".parquet") and r.name != MANIFEST:
                h.update(f"file:{r.name}:{r.sha256}\n".encode())
        if self.vision is not None:
            h.update(f"vision:{json.dumps(self.vision.to_dict(), sort_keys=True)}\n".encode())
        return h.hexdigest()

    @property
    def tasks(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for ex in self.examples:
            t = out.setdefault(ex.task, {"examples": 0, "scored_tokens": 0, "tokens": 0})
            t["examples"] += 1
            t["scored_tokens"] += ex.n_scored
            t["tokens"] += len(ex.input_ids)
        return dict(sorted(out.items()))

    def summary(self) -> dict[str, Any]:
        return {
            "kind": "evalset",
            "path": self.path,
            "name": self.name,
            "content_hash": self.content_hash,
            "token_space_hash": self.token_space_hash,
            "n_examples": len(self.examples),
            "tasks": self.tasks,
            "codec_versions": self.manifest.get("codec_versions"),
            "tokenizer_version": self.manifest.get("tokenizer_version"),
            "vision": self.vision.to_dict() if self.vision else None,
            "files": [f.to_dict() for f in self.files],
        }

    @classmethod
    def load(cls, path: str | Path, *, token_space: TokenSpace | None = None) -> EvalSet:
        """Read and validate. Token ids are checked against ``token_space`` when given, else
        against the inline token space of the manifest (whose hash must match)."""
        root, manifest_path = _locate(Path(os.path.realpath(path)))
        _inside(root, manifest_path, manifest_path)
        manifest = read_json(manifest_path)
        where = str(manifest_path)
        unexpected = sorted(set(manifest) - _MANIFEST_FIELDS - set(_HASH_ALIASES))
        if unexpected:
            raise InvalidInput(
                f"unexpected field {unexpected[0]!r}; known fields: {', '.join(sorted(_MANIFEST_FIELDS))}", path=where
            )
        name = manifest.get("name")
        if not isinstance(name, str) or not name.strip():
            raise InvalidInput("missing field 'name' (a non-empty string)", path=where)
        check_text(name, "name", where, max_chars=MAX_NAME_CHARS)
        for key in ("tokenizer_version", "description", "created_at", "source"):
            if manifest.get(key) is not None:
                check_text(
                    manifest[key],
                    key,
                    where,
                    max_chars=4096 if key == "description" else MAX_NAME_CHARS,
                    allow_empty=True,
                )
        ts_hash = next((manifest[k] for k in _HASH_ALIASES if k in manifest), None)
        if ts_hash is not None:
            check_text(ts_hash, "token_space_hash", where, max_chars=128)
        inline = manifest.get("token_space")
        inline_ts = TokenSpace.from_dict(inline, source=f"{where} (token_space)") if isinstance(inline, dict) else None
        vision = VisionSpec.parse(manifest["vision"], where) if "vision" in manifest else None
        if ts_hash is None and inline_ts is None and vision is None:
            raise InvalidInput("missing field 'token_space_hash' (the token space the ids were made in)", path=where)
        if ts_hash is not None and not isinstance(ts_hash, str):
            raise InvalidInput("token_space_hash must be a string", path=where)
        if inline_ts is not None and ts_hash is not None and inline_ts.abi_hash != ts_hash:
            raise InvalidInput(
                f"token_space_hash {ts_hash[:12]}… does not match its inline token_space ({inline_ts.abi_hash[:12]}…)",
                path=where,
            )
        ts_hash = ts_hash or (inline_ts.abi_hash if inline_ts else None)
        space = token_space or inline_ts
        parquet_files = _parquet_files(root, manifest, where)
        examples, image_files = _read_examples(parquet_files, root, vision)
        _validate(examples, space, parquet_files, vision)
        files = tuple(file_records(root, [manifest_path, *parquet_files, *image_files]))
        return cls(str(root), name, ts_hash, manifest, files, tuple(examples), space, vision)


def _inside(root: Path, f: Path, where: str | Path) -> Path:
    """`f` itself, when it (after following symlinks) lies in the eval-set folder; the same rule
    for files the manifest lists and files found by globbing."""
    if not Path(os.path.realpath(f)).is_relative_to(root):
        raise InvalidInput(
            f"file {f.name!r} lies outside the eval-set folder (it points to {os.path.realpath(f)}); refused",
            path=where,
        )
    return f


def _locate(path: Path) -> tuple[Path, Path]:
    if path.is_dir():
        return path, path / MANIFEST if (path / MANIFEST).exists() else _missing_manifest(path)
    if path.name == MANIFEST and path.exists():
        return path.parent, path
    if path.suffix == ".parquet" and path.exists():
        m = path.parent / MANIFEST
        return (path.parent, m) if m.exists() else _missing_manifest(path.parent)
    raise InvalidInput("not found (expected an eval-set folder with manifest.json and *.parquet)", path=path)


def _missing_manifest(root: Path):
    raise InvalidInput(f"has no {MANIFEST} (name, token_space_hash, codec versions)", path=root)


def _parquet_files(root: Path, manifest: Mapping[str, Any], where: str) -> list[Path]:
    listed = manifest.get("files")
    if listed is not None:
        if not isinstance(listed, list) or not all(isinstance(x, str) for x in listed):
            raise InvalidInput("files must be a list of Parquet file names", path=where)
        files = [root / x for x in listed]
        for f in files:
            _inside(root, f, where)
            if not f.exists():
                raise InvalidInput(f"lists {f.name!r}, which does not exist", path=where)
    else:
        files = [_inside(root, f, f) for f in sorted(root.glob("*.parquet"))]
    if not files:
        raise InvalidInput("has no *.parquet files: the eval set is empty", path=root)
    return files


def _read_examples(files: Sequence[Path], root: Path, vision: VisionSpec | None) -> tuple[list[Example], list[Path]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    examples: list[Example] = []
    image_files: dict[Path, None] = {}
    for f in files:
        require_regular_file(f)
        try:
            table = pq.read_table(f)
        except (pa.ArrowException, OSError) as e:
            raise InvalidInput(f"is not a readable Parquet file: {str(e).splitlines()[0]}", path=f) from None
        missing = [c for c in COLUMNS if c not in table.column_names]
        if missing:
            raise InvalidInput(f"is missing column {missing[0]!r} (needs {', '.join(COLUMNS)})", path=f)
        cols = {c: table.column(c).to_pylist() for c in COLUMNS}
        image_col = next((c for c in IMAGE_COLUMNS if c in table.column_names), None)
        if vision is not None and image_col is None:
            raise InvalidInput(
                "has no image column: an image eval set (manifest 'vision') needs 'image' (bytes) "
                "or 'image_path' (relative to the eval-set folder)",
                path=f,
            )
        images = table.column(image_col).to_pylist() if vision is not None and image_col else None
        for i in range(table.num_rows):
            ids, labels = cols["input_ids"][i], cols["labels"][i]
            if not isinstance(ids, list) or not isinstance(labels, list):
                raise InvalidInput(f"row {i}: input_ids and labels must be lists of integers", path=f)
            if any(not isinstance(x, int) for x in ids) or any(not isinstance(x, int) for x in labels):
                raise InvalidInput(f"row {i}: input_ids and labels must hold integers (no nulls or floats)", path=f)
            task = cols["task"][i]
            if not isinstance(task, str) or not task:
                raise InvalidInput(f"row {i}: task must be a non-empty string", path=f)
            check_text(task, f"row {i}: task", f, max_chars=64)
            if task == RESERVED_TASK:
                raise InvalidInput(
                    f"row {i}: task {RESERVED_TASK!r} is reserved for the loss over every task; rename the task", path=f
                )
            ex_id = cols["example_id"][i]
            if ex_id is None:
                raise InvalidInput(f"row {i}: example_id is null", path=f)
            check_text(str(ex_id), f"row {i}: example_id", f, max_chars=MAX_NAME_CHARS)
            if images is None:
                examples.append(Example(str(ex_id), task, ids, labels))
                continue
            assert image_col is not None  # `images` is read only from an image column
            data, source = _image_bytes(images[i], image_col, root, f, i)
            if source is not None:
                image_files[source] = None
            sha, size = _decode_image(data, source or f, i, str(ex_id))
            examples.append(Example(str(ex_id), task, ids, labels, data, sha, size))
    return examples, list(image_files)


def _image_bytes(value: Any, column: str, root: Path, where: Path, row: int) -> tuple[bytes, Path | None]:
    """The encoded image of one row, and the file it came from (None when inline)."""
    if value is None:
        raise InvalidInput(
            f"row {row}: {column} is null (every example of an image eval set needs an image)", path=where
        )
    if column == "image":
        if isinstance(value, dict) and isinstance(value.get("bytes"), (bytes, bytearray)):
            value = value["bytes"]  # the Hugging Face datasets Image feature: {"bytes", "path"}
        if not isinstance(value, (bytes, bytearray)) or not value:
            raise InvalidInput(f"row {row}: image must hold the encoded image bytes", path=where)
        return bytes(value), None
    if not isinstance(value, str) or not value or len(value) > 4096:
        raise InvalidInput(f"row {row}: image_path must be a path relative to the eval-set folder", path=where)
    target = root / value
    if not os.path.realpath(target).startswith(os.path.realpath(root) + os.sep):
        raise InvalidInput(f"row {row}: image_path {value!r} lies outside the eval-set folder", path=where)
    if not target.exists():
        raise InvalidInput(f"row {row}: image file {value!r} does not exist", path=where)
    return _read_image_file(target, where, row), target


_MAX_IMAGE_BYTES = 64 << 20


def _read_image_file(path: Path, where: Path, row: int) -> bytes:
    """A regular file's bytes (a FIFO or device is refused before it could block a read)."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise InvalidInput(f"row {row}: image file {path.name!r} cannot be read ({e.strerror})", path=where) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidInput(f"row {row}: image file {path.name!r} is not a regular file", path=where)
        if st.st_size > _MAX_IMAGE_BYTES:
            raise InvalidInput(
                f"row {row}: image file {path.name!r} is larger than {_MAX_IMAGE_BYTES >> 20} MiB", path=where
            )
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read()
    finally:
        os.close(fd)


def _decode_image(data: bytes, where: Path, row: int, example_id: str) -> tuple[str, tuple[int, int]]:
    """sha256 and decoded (width, height); the whole image is decoded, so a truncated file is caught."""
    from registry.images import decode_image

    with decode_image(data, what=f"row {row} (example {example_id!r})", path=where) as im:
        size = (int(im.width), int(im.height))
    return hashlib.sha256(data).hexdigest(), size


def _validate(
    examples: Sequence[Example], space: TokenSpace | None, files: Sequence[Path], vision: VisionSpec | None = None
) -> None:
    where = files[0] if len(files) == 1 else files[0].parent
    if not examples:
        raise InvalidInput("holds no examples: the eval set is empty", path=where)
    seen: set[str] = set()
    limit = space.vocab_size_total if space else None
    placeholder = vision.image_token_id if vision else None
    for ex in examples:
        label = f"example {ex.example_id!r}"
        if ex.example_id in seen:
            raise InvalidInput(f"{label} appears twice (example_id must be unique)", path=where)
        seen.add(ex.example_id)
        if not ex.input_ids:
            raise InvalidInput(f"{label} has no tokens", path=where)
        if len(ex.input_ids) != len(ex.labels):
            raise InvalidInput(
                f"{label}: input_ids has {len(ex.input_ids)} tokens but labels has {len(ex.labels)}", path=where
            )
        if ex.n_scored == 0:
            raise InvalidInput(f"{label} has no scored position (every label after the first is -100)", path=where)
        ids = ex.input_ids
        if placeholder is not None:
            at = [t for t, x in enumerate(ids) if x == placeholder]
            if len(at) != 1:
                raise InvalidInput(
                    f"{label} has {len(at)} image placeholders ({placeholder}) in input_ids; an image eval set "
                    "needs exactly one per example, where the image's features go",
                    path=where,
                )
            if ex.labels[at[0]] != IGNORE_INDEX:
                raise InvalidInput(
                    f"{label} scores the image placeholder at position {at[0]}; its label must be -100", path=where
                )
            ids = [x for x in ids if x != placeholder] or [0]
        lo = min(ids)
        hi = max(ids)
        if lo < 0 or (limit is not None and hi >= limit):
            bad = lo if lo < 0 else hi
            bound = f"[0, {limit})" if limit is not None else "non-negative"
            raise InvalidInput(f"{label} has token id {bad}, outside the token space {bound}", path=where)
        scored = [x for x in ex.labels if x != IGNORE_INDEX]
        if scored and (min(scored) < 0 or (limit is not None and max(scored) >= limit)):
            bad = min(scored) if min(scored) < 0 else max(scored)
            raise InvalidInput(f"{label} has label {bad}, outside the token space", path=where)


def write_evalset(
    out_dir: str | Path,
    name: str,
    examples: Sequence[Example | Mapping[str, Any]],
    token_space: TokenSpace | None,
    *,
    description: str | None = None,
    rows_per_file: int | None = None,
    vision: VisionSpec | Mapping[str, Any] | None = None,
) -> EvalSet:
    """Write Parquet + manifest (with the token space inline), then load it back to validate.

    With ``vision`` (an image eval set), every example carries its encoded image (``image``),
    stored in the Parquet ``image`` column; ``token_space`` may then be None."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [
        e
        if isinstance(e, Example)
        else Example(str(e["example_id"]), str(e["task"]), list(e["input_ids"]), list(e["labels"]), e.get("image"))
        for e in examples
    ]
    if vision is not None and not isinstance(vision, VisionSpec):
        vision = VisionSpec.parse(dict(vision), str(out / MANIFEST))
    if token_space is None and vision is None:
        raise InvalidInput("an eval set needs a token space (or, for images, a vision section)", path=out)
    chunk = rows_per_file or max(len(rows), 1)
    names = []
    for i in range(0, max(len(rows), 1), chunk):
        part = rows[i : i + chunk]
        columns = {
            "example_id": pa.array([r.example_id for r in part], pa.string()),
            "task": pa.array([r.task for r in part], pa.string()),
            "input_ids": pa.array([r.input_ids for r in part], pa.list_(pa.int64())),
            "labels": pa.array([r.labels for r in part], pa.list_(pa.int64())),
        }
        if vision is not None:
            columns["image"] = pa.array([r.image for r in part], pa.binary())
        fname = f"part-{i // chunk:05d}.parquet"
        pq.write_table(pa.table(columns), out / fname)
        names.append(fname)
    manifest: dict[str, Any] = {"name": name}
    if token_space is not None:
        manifest.update(
            {
                "token_space_hash": token_space.abi_hash,
                "codec_versions": token_space.codec_versions(),
                "tokenizer_version": token_space.tokenizer_version,
                "token_space": token_space.to_dict(),
            }
        )
    if vision is not None:
        manifest["vision"] = vision.to_dict()
    manifest["files"] = names
    if description:
        manifest["description"] = description
    write_file(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return EvalSet.load(out)
