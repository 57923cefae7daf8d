"""`evalboard inspect`: decide what a path is, validate it, summarise it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from registry import tracks
from registry.errors import InvalidInput
from registry.eval_result import EvalResult
from registry.evalset import MANIFEST, EvalSet
from registry.safeio import as_invalid
from registry.token_space import TokenSpace


def inspect_path(path: str | Path) -> dict[str, Any]:
    """A JSON-able summary of whatever ``path`` is; raises InvalidInput naming the file otherwise."""
    try:
        return _inspect(Path(path))
    except OSError as e:  # a folder or file we may not read: refused like any other bad input
        raise as_invalid(e, path) from None


def _inspect(p: Path) -> dict[str, Any]:
    if not p.exists() and not p.is_symlink():
        raise InvalidInput("does not exist", path=p)
    if p.is_dir():
        if (p / MANIFEST).exists():
            return EvalSet.load(p).summary()
        track = tracks.for_dir(p)
        if track is not None:
            return track.inspect(p)
        raise InvalidInput(
            "is a folder but neither a checkpoint (trainable_rows.*, mm_projector.*) nor an eval set (manifest.json)",
            path=p,
        )
    name = p.name
    owner = tracks.for_dir(p.parent)
    if owner is not None and name in owner.file_names() and name != "token_space.json":
        return owner.inspect(p.parent)
    if name == MANIFEST or p.suffix == ".parquet":
        return EvalSet.load(p).summary()
    if name.startswith("eval_step") and p.suffix == ".json":
        res = EvalResult.load(p)
        return {"kind": "eval_result", "path": str(p), **res.to_dict()}
    if p.suffix == ".json":
        ts = TokenSpace.load(p)
        return {
            "kind": "token_space",
            "path": str(p),
            "abi_hash": ts.abi_hash,
            "file_sha256": ts.file_sha256,
            "text_vocab_size": ts.text_vocab_size,
            "vocab_size_total": ts.vocab_size_total,
            "modalities": {r.name: [r.start, r.end] for r in ts.modalities},
            "pad_token_id": ts.resolved_pad_id(),
            "codec_versions": ts.codec_versions(),
            "tokenizer": ts.tokenizer_version,
        }
    track = next((t for t in tracks.ALL if t.inspects_file(p)), None)
    if track is not None:
        return track.inspect(p)
    raise InvalidInput(
        "is not a recognised evalboard file (checkpoint, token_space.json, eval set, eval_step json)", path=p
    )
