"""Track B checkpoints: ``checkpoint_<step>/`` holding only the trained rows.

Files (README "Track B checkpoint"):
- ``trainable_rows.pt`` (or ``trainable_rows.safetensors``): the rows ``[row_start, row_end)`` of
  the input embedding and of lm_head, as ``{"embed_tokens": Tensor[n, hidden], "lm_head": Tensor[n, hidden]}``.
  Accepted variants for the embedding: ``embed_tokens(.weight)``, ``model.embed_tokens.weight``,
  ``input_embeddings``, ``embed``, ``embedding(s)``, ``wte``; for lm_head: ``lm_head(.weight)``,
  ``output_embeddings``, ``output``; optionally nested under ``state_dict``/``rows``/``trainable_rows``.
  With tied embeddings lm_head may be absent.
- ``trainable_rows.json``: ``base_model``, ``row_start``, ``row_end``, optional ``step``, ``dtype``,
  ``hidden_size``, ``tie_word_embeddings``.
- ``token_space.json``: the token space the rows were trained in (the seed requires shipping it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.errors import Incompatible, InvalidInput
from registry.files import FileRecord, content_hash, file_records
from registry.safeio import DB_INT_MAX, MAX_NAME_CHARS, check_int, check_text, load_tensors, read_json
from registry.token_space import TokenSpace

__all__ = ["TrainableRows", "RowsMeta", "ROWS_FILENAMES", "find_rows_file", "parse_step"]

ROWS_FILENAMES = ("trainable_rows.pt", "trainable_rows.safetensors", "trainable_rows.bin")
META_FILENAME = "trainable_rows.json"
TOKEN_SPACE_FILENAME = "token_space.json"

_EMBED_NAMES = (
    "embed_tokens",
    "model.embed_tokens",
    "input_embeddings",
    "input_embedding",
    "embed",
    "embedding",
    "embeddings",
    "wte",
    "transformer.wte",
    "embed_rows",
    "model.model.embed_tokens",
    "embed_tokens_rows",
    "input_embedding_rows",
    "input_embeddings_rows",
    "embedding_rows",
)
_LM_HEAD_NAMES = (
    "lm_head",
    "output_embeddings",
    "output_embedding",
    "output",
    "lm_head_rows",
    "head",
    "model.lm_head",
    "output_embedding_rows",
    "output_embeddings_rows",
    "output_rows",
)
_NESTS = ("state_dict", "rows", "trainable_rows", "weights", "model")
_STRIP_PREFIXES = ("module.", "_orig_mod.", "base_model.model.")
# Non-tensor entries a rows file may carry alongside the tensors.
_PT_META_KEYS = {
    "step",
    "global_step",
    "row_start",
    "row_end",
    "base_model",
    "hidden_size",
    "dtype",
    "meta",
    "metadata",
    "config",
    "tie_word_embeddings",
}

_META_ALIASES: dict[str, tuple[str, ...]] = {
    "base_model": ("base_model", "base_model_id", "base_llm", "base_model_name_or_path", "model_id"),
    "row_start": ("row_start", "start"),
    "row_end": ("row_end", "end"),
    "row_ranges": ("row_ranges", "row_range", "rows"),
    "step": ("step", "global_step"),
    "dtype": ("dtype", "torch_dtype"),
    "hidden_size": ("hidden_size",),
    "tie_word_embeddings": ("tie_word_embeddings", "tied", "tied_embeddings"),
    "keys": ("keys",),
}
_META_INFORMATIONAL = {
    "schema_version",
    "version",
    "created_at",
    "notes",
    "text_vocab_size",
    "vocab_size_total",
    "run",
    "run_name",
    "trainer",
    "meta",
    "metadata",
    "epoch",
}

_STEP_RE = re.compile(r"(?:checkpoint|ckpt|step)[-_]?(\d+)$")


def parse_step(name: str) -> int | None:
    """``checkpoint_7000`` / ``checkpoint-7000`` / ``checkpoint_7000.pt`` -> 7000; None when the
    name has no step or one too large to be a step (see `step_in_name_too_large`)."""
    m = _STEP_RE.search(Path(name).stem if name.endswith((".pt", ".bin")) else name)
    if not m or len(m.group(1)) > 10 or int(m.group(1)) > DB_INT_MAX:
        return None
    return int(m.group(1))


def check_step_in_name(path: Path) -> None:
    """Refuse a file or folder whose name carries a step no registry can hold (``checkpoint_2**70``)."""
    m = _STEP_RE.search(path.stem if path.name.endswith((".pt", ".bin")) else path.name)
    if m and parse_step(path.name) is None:
        raise InvalidInput(f"the step in the name {path.name[:80]!r} is larger than {DB_INT_MAX}", path=path)


def find_rows_file(ckpt_dir: Path) -> Path | None:
    """The one rows file of a checkpoint folder (None without one). Two of them (a ``.pt`` and a
    ``.safetensors``, say) are refused: which one holds the checkpoint is anybody's guess, and
    whichever were picked would be used and hashed while the other sat there unnoticed."""
    found = [p for p in (ckpt_dir / name for name in ROWS_FILENAMES) if p.exists() or p.is_symlink()]
    if len(found) > 1:
        raise InvalidInput(
            f"holds both {' and '.join(p.name for p in found)}: which one is the checkpoint is ambiguous; "
            "keep exactly one",
            path=ckpt_dir,
        )
    return found[0] if found else None


@dataclass(frozen=True)
class RowsMeta:
    """What ``trainable_rows.json`` says, with aliases resolved."""

    base_model: str
    row_start: int
    row_end: int
    step: int | None = None
    dtype: str | None = None
    hidden_size: int | None = None
    tie_word_embeddings: bool | None = None
    keys: Mapping[str, str] = field(default_factory=dict)
    info: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> RowsMeta:
        data = read_json(path)
        where = str(path)
        fields: dict[str, Any] = {}
        known = set(_META_INFORMATIONAL)
        for canonical, names in _META_ALIASES.items():
            known.update(names)
            present = [n for n in names if n in data]
            if len(present) > 1:
                raise InvalidInput(f"fields {present} are aliases of {canonical!r}; give only one", path=where)
            if present:
                fields[canonical] = data[present[0]]
        unexpected = sorted(set(data) - known)
        if unexpected:
            raise InvalidInput(
                f"unexpected field {unexpected[0]!r}; known fields: {', '.join(_META_ALIASES)}", path=where
            )
        if "row_ranges" in fields:
            start, end = _parse_row_ranges(fields.pop("row_ranges"), where)
            for key, val in (("row_start", start), ("row_end", end)):
                if key in fields and fields[key] != val:
                    raise InvalidInput(f"{key} {fields[key]} disagrees with row_ranges ({val})", path=where)
                fields[key] = val
        for required in ("base_model", "row_start", "row_end"):
            if required not in fields:
                raise InvalidInput(
                    f"missing field {required!r} (accepted names: {' / '.join(_META_ALIASES[required])})", path=where
                )
        check_text(fields["base_model"], "base_model", where, max_chars=MAX_NAME_CHARS)
        for key in ("row_start", "row_end", "step", "hidden_size"):
            if key in fields and fields[key] is not None:
                check_int(fields[key], key, where, minimum=1 if key == "hidden_size" else 0)
        for key in ("dtype",):
            if fields.get(key) is not None:
                check_text(fields[key], key, where)
        tie = fields.get("tie_word_embeddings")
        if tie is not None and not isinstance(tie, bool):
            raise InvalidInput(f"tie_word_embeddings must be true or false, got {tie!r:.80}", path=where)
        if fields["row_start"] >= fields["row_end"]:
            raise InvalidInput(
                f"row range [{fields['row_start']}, {fields['row_end']}) is empty or reversed", path=where
            )
        keys = fields.pop("keys", None) or {}
        if not isinstance(keys, dict) or not all(k in ("embed", "lm_head") for k in keys):
            raise InvalidInput("keys must map 'embed'/'lm_head' to tensor names", path=where)
        for role, name in keys.items():
            check_text(name, f"keys.{role}", where)
        info = {k: v for k, v in data.items() if k in _META_INFORMATIONAL}
        return cls(keys=keys, info=info, **fields)


def _parse_row_ranges(raw: Any, where: str) -> tuple[int, int]:
    if isinstance(raw, list) and len(raw) == 2:
        return check_int(raw[0], "row_ranges start", where), check_int(raw[1], "row_ranges end", where)
    if isinstance(raw, dict):
        spans = set()
        for name, span in raw.items():
            if isinstance(span, dict):
                span = [span.get("start"), span.get("end")]
            if not (isinstance(span, list) and len(span) == 2):
                raise InvalidInput(f"row_ranges[{name!r:.80}] must be [start, end]", path=where)
            spans.add(
                (
                    check_int(span[0], f"row_ranges[{name!r:.80}] start", where),
                    check_int(span[1], f"row_ranges[{name!r:.80}] end", where),
                )
            )
        if len(spans) != 1:
            raise InvalidInput(f"row_ranges differ between matrices ({sorted(spans)}); expected one range", path=where)
        return spans.pop()
    raise InvalidInput("row_ranges must be [start, end] or {matrix: [start, end]}", path=where)


@dataclass(frozen=True)
class TrainableRows:
    """A validated Track B checkpoint folder."""

    path: str
    step: int | None
    meta: RowsMeta
    token_space: TokenSpace | None
    embed: Any  # torch.Tensor [rows, hidden]
    lm_head: Any  # torch.Tensor [rows, hidden] or None when tied
    tied: bool
    files: tuple[FileRecord, ...]
    embed_key: str
    lm_head_key: str | None
    warnings: tuple[str, ...] = ()

    @property
    def base_model(self) -> str:
        return self.meta.base_model

    @property
    def row_start(self) -> int:
        return self.meta.row_start

    @property
    def row_end(self) -> int:
        return self.meta.row_end

    @property
    def n_rows(self) -> int:
        return self.row_end - self.row_start

    @property
    def hidden_size(self) -> int:
        return int(self.embed.shape[1])

    @property
    def dtype(self) -> str:
        return str(self.embed.dtype).removeprefix("torch.")

    @property
    def content_hash(self) -> str:
        return content_hash(self.files)

    @classmethod
    def load(cls, ckpt_dir: str | Path, *, run_token_space: TokenSpace | None = None) -> TrainableRows:
        """Read and validate everything; raises InvalidInput/Incompatible naming the file."""
        ckpt_dir = Path(ckpt_dir)
        if not ckpt_dir.is_dir():
            raise InvalidInput("is not a checkpoint folder", path=ckpt_dir)
        check_step_in_name(ckpt_dir)
        rows_file = find_rows_file(ckpt_dir)
        if rows_file is None:
            raise InvalidInput(f"has no {' / '.join(ROWS_FILENAMES)}", path=ckpt_dir)
        meta_file = ckpt_dir / META_FILENAME
        if not (meta_file.exists() or meta_file.is_symlink()):
            raise InvalidInput(f"has no {META_FILENAME} (row ranges and base model id)", path=ckpt_dir)
        meta = RowsMeta.load(meta_file)
        ts_file = ckpt_dir / TOKEN_SPACE_FILENAME
        token_space = TokenSpace.load(ts_file) if ts_file.exists() or ts_file.is_symlink() else None
        warnings = []
        if token_space is None:
            warnings.append(f"{ckpt_dir}: shipped without {TOKEN_SPACE_FILENAME}")
        step = _resolve_step(ckpt_dir, meta)
        tensors = load_tensors(rows_file)
        embed_key, embed, lm_key, lm_head = _pick_tensors(tensors, meta, rows_file)
        tied = lm_head is None
        _check_rows(rows_file, meta, embed, lm_head, token_space or run_token_space)
        files = tuple(file_records(ckpt_dir, [p for p in (rows_file, meta_file, ts_file) if p.exists()]))
        return cls(
            str(ckpt_dir), step, meta, token_space, embed, lm_head, tied, files, embed_key, lm_key, tuple(warnings)
        )

    def summary(self) -> dict[str, Any]:
        ts = self.token_space
        return {
            "kind": "checkpoint",
            "track": "B",
            "path": self.path,
            "step": self.step,
            "base_model": self.base_model,
            "row_start": self.row_start,
            "row_end": self.row_end,
            "rows": self.n_rows,
            "hidden_size": self.hidden_size,
            "dtype": self.dtype,
            "tied": self.tied,
            "embed_shape": list(self.embed.shape),
            "lm_head_shape": list(self.lm_head.shape) if self.lm_head is not None else None,
            "token_space_hash": ts.abi_hash if ts else None,
            "modalities": {r.name: [r.start, r.end] for r in ts.modalities} if ts else None,
            "content_hash": self.content_hash,
            "files": [f.to_dict() for f in self.files],
            "warnings": list(self.warnings),
        }


def _resolve_step(ckpt_dir: Path, meta: RowsMeta) -> int | None:
    from_name = parse_step(ckpt_dir.name)
    if meta.step is not None and from_name is not None and meta.step != from_name:
        raise InvalidInput(
            f"step {meta.step} in {META_FILENAME} disagrees with the folder name {ckpt_dir.name}", path=ckpt_dir
        )
    return meta.step if meta.step is not None else from_name


def _normalise_key(key: str) -> str:
    for prefix in _STRIP_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key.removesuffix(".weight")


def _flatten(tensors: Mapping[str, Any], where: Path) -> dict[str, Any]:
    import torch

    flat: dict[str, Any] = {}
    for key, value in tensors.items():
        if isinstance(value, torch.Tensor):
            flat[key] = value
        elif isinstance(value, dict) and key in _NESTS:
            flat.update(_flatten(value, where))
        elif key in _PT_META_KEYS:
            continue
        else:
            raise InvalidInput(
                f"unexpected entry {key!r} ({type(value).__name__}); expected tensors named embed_tokens / lm_head",
                path=where,
            )
    return flat


def _pick_tensors(tensors: Mapping[str, Any], meta: RowsMeta, where: Path):
    flat = _flatten(tensors, where)
    if not flat:
        raise InvalidInput("holds no tensors", path=where)
    by_norm: dict[str, str] = {}
    for key in flat:
        by_norm.setdefault(_normalise_key(key), key)

    def find(role: str, names: tuple[str, ...]) -> str | None:
        explicit = meta.keys.get(role)
        if explicit:
            if explicit not in flat:
                raise InvalidInput(f"has no tensor {explicit!r} named by trainable_rows.json keys.{role}", path=where)
            return explicit
        hits = [by_norm[n] for n in names if n in by_norm]
        if len(hits) > 1:
            raise InvalidInput(
                f"has several {role} tensors {hits}; name one in trainable_rows.json keys.{role}", path=where
            )
        return hits[0] if hits else None

    embed_key = find("embed", _EMBED_NAMES)
    lm_key = find("lm_head", _LM_HEAD_NAMES)
    if embed_key is None:
        raise InvalidInput(
            f"has no input-embedding rows (found {sorted(flat)}; expected one of {', '.join(_EMBED_NAMES[:5])}, ...)",
            path=where,
        )
    extra = sorted(set(flat) - {embed_key, lm_key})
    if extra:
        raise InvalidInput(f"has unexpected tensor {extra[0]!r} besides the embedding and lm_head rows", path=where)
    if lm_key is None and meta.tie_word_embeddings is False:
        raise InvalidInput("has no lm_head rows and trainable_rows.json says the embeddings are not tied", path=where)
    if lm_key is None and meta.tie_word_embeddings is None:
        # Whether lm_head may be left out depends on the base; a checkpoint must say it, so that
        # inspect, scan, audit and eval agree without loading the base.
        raise InvalidInput(
            "has no lm_head rows and trainable_rows.json does not declare tied embeddings; add "
            '"tie_word_embeddings": true if the base ties lm_head to the input embedding, else save the lm_head rows',
            path=where,
        )
    return embed_key, flat[embed_key], lm_key, (flat[lm_key] if lm_key else None)


def _check_rows(where: Path, meta: RowsMeta, embed, lm_head, token_space: TokenSpace | None) -> None:
    import torch

    n = meta.row_end - meta.row_start
    for label, t in (("input-embedding rows", embed), ("lm_head rows", lm_head)):
        if t is None:
            continue
        if not t.is_floating_point():
            raise InvalidInput(f"{label} have dtype {t.dtype}, expected a floating-point tensor", path=where)
        if t.dim() != 2:
            raise InvalidInput(
                f"{label}: expected a 2-D [rows, hidden] tensor, file has shape {tuple(t.shape)}", path=where
            )
        if t.shape[1] == 0:
            raise InvalidInput(f"{label}: rows of width 0, file has shape {tuple(t.shape)}", path=where)
        if t.shape[0] != n:
            raise Incompatible(
                f"{label}: expected ({n}, hidden) for rows [{meta.row_start}, {meta.row_end}), file has {tuple(t.shape)}",
                path=where,
            )
        hidden = meta.hidden_size
        if hidden is not None and t.shape[1] != hidden:
            raise Incompatible(f"{label}: expected ({n}, {hidden}), file has {tuple(t.shape)}", path=where)
        bad = ~torch.isfinite(t).all(dim=1)
        if bool(bad.any()):
            first = int(bad.nonzero()[0, 0]) + meta.row_start
            raise InvalidInput(
                f"{label} contain NaN/Inf in {int(bad.sum())} rows (first: token id {first})", path=where
            )
    if lm_head is not None and lm_head.shape[1] != embed.shape[1]:
        raise Incompatible(
            f"lm_head rows: expected ({n}, {embed.shape[1]}) like the embedding rows, file has {tuple(lm_head.shape)}",
            path=where,
        )
    if token_space is not None:
        if meta.row_end > token_space.vocab_size_total:
            raise Incompatible(
                f"row range [{meta.row_start}, {meta.row_end}) runs past the token space's vocab_size_total "
                f"{token_space.vocab_size_total}",
                path=where,
            )
        if meta.row_start < token_space.text_vocab_size:
            raise Incompatible(
                f"row range [{meta.row_start}, {meta.row_end}) overwrites text rows (text_vocab_size "
                f"{token_space.text_vocab_size})",
                path=where,
            )
