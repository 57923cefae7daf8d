"""Writing the seed formats from training code: what a trainer calls so evalboard can read its checkpoints.

    save_trainable_rows   rows you already hold -> a Track B ``checkpoint_<step>/`` folder
    save_rows_of_model    the same, the rows read off a model's input embedding and lm_head
    rows_of_model         just the reading: (embedding rows, lm_head rows or None when tied)
    save_connector        a connector module (or state dict) -> a Track A ``checkpoint_<step>.pt``

Atomic: everything is written into a hidden temporary sibling (``.checkpoint_100.<random>.tmp``),
flushed to disk, then renamed into place, so a scanner or watcher sees either no checkpoint or a
whole one, never half (hidden names are skipped by discovery). A crash leaves only the hidden
temporary, never a folder that looks like a checkpoint.

Round trip: what these write, ``registry.scanner.scan`` registers as valid, and the evaluator loads
into exactly the tensors that were passed in. Torch is imported inside the functions that need it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from registry.atomic import atomic_file as _atomic_file
from registry.atomic import atomic_folder as _atomic_folder
from registry.errors import InvalidInput
from registry.token_space import TokenSpace
from registry.trainable_rows import META_FILENAME, TOKEN_SPACE_FILENAME, parse_step

__all__ = [
    "save_trainable_rows",
    "save_rows_of_model",
    "rows_of_model",
    "save_connector",
    "atomic_folder",
    "atomic_file",
    "ROWS_FORMATS",
]

ROWS_FORMATS = ("safetensors", "pt")
EMBED_KEY, LM_HEAD_KEY = "embed_tokens", "lm_head"
CONNECTOR_MODULES = ("resampler", "projector")


# --- atomic placement: registry.atomic ---------------------------------------------------------


@contextmanager
def atomic_folder(final: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """`registry.atomic.atomic_folder`, creating the parent folders first."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _atomic_folder(final, overwrite=overwrite) as tmp:
        yield tmp


@contextmanager
def atomic_file(final: str | Path, *, overwrite: bool = False) -> Iterator[BinaryIO]:
    """`registry.atomic.atomic_file` (an open binary file), creating the parent folders first."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _atomic_file(final, overwrite=overwrite) as fh:
        yield fh


# --- Track B ------------------------------------------------------------------------------------


def _check_step(final: Path, step: int | None) -> None:
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise InvalidInput(f"step must be a non-negative integer, got {step!r}", path=final)
    named = parse_step(final.name)
    if step is not None and named is not None and named != step:
        raise InvalidInput(f"step {step} disagrees with the name {final.name}; name it checkpoint_{step}", path=final)


def _cpu_rows(label: str, t: Any, n_rows: int | None, where: Path):
    import torch

    if not isinstance(t, torch.Tensor):
        raise InvalidInput(f"{label} must be a tensor, got {type(t).__name__}", path=where)
    if t.dim() != 2 or not t.is_floating_point():
        raise InvalidInput(
            f"{label}: expected a 2-D floating-point [rows, hidden] tensor, got {t.dtype} {tuple(t.shape)}", path=where
        )
    if n_rows is not None and t.shape[0] != n_rows:
        raise InvalidInput(f"{label}: expected {n_rows} rows, got {tuple(t.shape)}", path=where)
    # A private, contiguous CPU copy: safetensors refuses views and shared storage.
    return t.detach().to("cpu", copy=True).contiguous()


def save_trainable_rows(
    ckpt_dir: str | Path,
    token_space: TokenSpace,
    *,
    embed: Any,
    lm_head: Any | None,
    base_model: str,
    step: int | None = None,
    row_start: int | None = None,
    fmt: str = "safetensors",
    trainer: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a Track B checkpoint folder: ``trainable_rows.<fmt>`` (``embed_tokens`` and
    ``lm_head``, rows ``[row_start, row_start + len(embed))``), ``trainable_rows.json`` and
    ``token_space.json``. ``lm_head=None`` means tied embeddings. ``row_start`` defaults to the
    token space's ``text_vocab_size``. ``trainer``: training settings recorded in the JSON (shown by
    the dashboard). Returns the folder."""
    final = Path(ckpt_dir)
    if fmt not in ROWS_FORMATS:
        raise InvalidInput(f"unknown rows format {fmt!r}; known: {', '.join(ROWS_FORMATS)}", path=final)
    if not isinstance(base_model, str) or not base_model.strip():
        raise InvalidInput("base_model must name the frozen base model (e.g. 'Qwen/Qwen3-8B-Base')", path=final)
    _check_step(final, step)
    start = token_space.text_vocab_size if row_start is None else row_start
    embed = _cpu_rows("embedding rows", embed, None, final)
    end = start + embed.shape[0]
    if start < 0 or end > token_space.vocab_size_total:
        raise InvalidInput(
            f"rows [{start}, {end}) fall outside the token space's {token_space.vocab_size_total} rows", path=final
        )
    head = _cpu_rows("lm_head rows", lm_head, embed.shape[0], final) if lm_head is not None else None
    if head is not None and head.shape[1] != embed.shape[1]:
        raise InvalidInput(f"lm_head rows are {head.shape[1]} wide, embedding rows {embed.shape[1]}", path=final)
    tensors = {EMBED_KEY: embed} if head is None else {EMBED_KEY: embed, LM_HEAD_KEY: head}
    meta: dict[str, Any] = {
        "base_model": base_model,
        "row_start": start,
        "row_end": end,
        "hidden_size": int(embed.shape[1]),
        "dtype": str(embed.dtype).removeprefix("torch."),
    }
    if step is not None:
        meta["step"] = step
    if head is None:
        meta["tie_word_embeddings"] = True
    if trainer:
        meta["trainer"] = dict(trainer)
    import json

    with atomic_folder(final, overwrite=overwrite) as tmp:
        token_space.save(tmp / TOKEN_SPACE_FILENAME)
        if fmt == "safetensors":
            from safetensors.torch import save_file

            save_file(tensors, str(tmp / "trainable_rows.safetensors"))
        else:
            import torch

            torch.save(tensors, tmp / "trainable_rows.pt")
        (tmp / META_FILENAME).write_text(json.dumps(meta, indent=2, allow_nan=False, default=str) + "\n")
    return final


def rows_of_model(model: Any, token_space: TokenSpace, *, row_start: int | None = None):
    """(embedding rows, lm_head rows or None when tied) ``[row_start, vocab_size_total)`` of
    ``model``, copied to the CPU. The model must already have the token space's rows (see
    ``evaluator.rows.prepare_for_token_space``)."""
    emb = model.get_input_embeddings().weight
    head_module = model.get_output_embeddings()
    head = head_module.weight if head_module is not None else None
    start = token_space.text_vocab_size if row_start is None else row_start
    end = token_space.vocab_size_total
    for label, w in (("input embedding", emb), ("lm_head", head)):
        if w is not None and w.shape[0] < end:
            raise InvalidInput(
                f"the model's {label} has {w.shape[0]} rows but the token space needs "
                f"vocab_size_total={end}; resize it to the token space before training "
                "(evaluator.rows.prepare_for_token_space)"
            )
    tied = head is None or head is emb or (head.data_ptr() == emb.data_ptr() and head.shape == emb.shape)
    with _no_grad():
        rows = emb[start:end].detach().to("cpu", copy=True)
        head_rows = None if tied or head is None else head[start:end].detach().to("cpu", copy=True)
    return rows, head_rows


@contextmanager
def _no_grad():
    import torch

    with torch.no_grad():
        yield


def save_rows_of_model(
    model: Any,
    ckpt_dir: str | Path,
    token_space: TokenSpace,
    *,
    base_model: str | None = None,
    step: int | None = None,
    row_start: int | None = None,
    fmt: str = "safetensors",
    trainer: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """`save_trainable_rows` with the rows read off ``model`` (`rows_of_model`); ``base_model``
    defaults to the id the model was loaded from (``model.config._name_or_path``)."""
    base = base_model or getattr(getattr(model, "config", None), "_name_or_path", None)
    embed, head = rows_of_model(model, token_space, row_start=row_start)
    return save_trainable_rows(
        ckpt_dir,
        token_space,
        embed=embed,
        lm_head=head,
        base_model=base or "",
        step=step,
        row_start=row_start,
        fmt=fmt,
        trainer=trainer,
        overwrite=overwrite,
    )


# --- Track A ------------------------------------------------------------------------------------


def save_connector(
    path: str | Path,
    connector: Any,
    *,
    step: int,
    base_llm: str,
    vision_tower: str,
    config: Mapping[str, Any] | None = None,
    optimizer: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a Track A ``checkpoint_<step>.pt``: the connector's weights (a module or its state
    dict; keys ``resampler.*`` and ``projector.*``), ``step``, the frozen models it plugs into, and
    ``config`` (e.g. ``connector_builder``, ``num_heads``, ``vision_feature_layer``: what rebuilds
    and feeds it). ``optimizer``: an optional optimizer state dict kept with it."""
    import torch

    final = Path(path)
    _check_step(final, step)
    if step is None:
        raise InvalidInput("step is required for a connector checkpoint", path=final)
    for label, v in (("base_llm", base_llm), ("vision_tower", vision_tower)):
        if not isinstance(v, str) or not v.strip():
            raise InvalidInput(f"{label} must name the frozen model the connector plugs into", path=final)
    state = connector.state_dict() if hasattr(connector, "state_dict") else connector
    if not isinstance(state, Mapping) or not state:
        raise InvalidInput("connector must be a module or a non-empty state dict", path=final)
    clean: dict[str, Any] = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise InvalidInput(f"connector entry {k!r} is a {type(v).__name__}, expected a tensor", path=final)
        clean[str(k)] = v.detach().to("cpu", copy=True).contiguous()
    heads = {k.removeprefix("module.").split(".", 1)[0] for k in clean}
    missing = [m for m in CONNECTOR_MODULES if m not in heads]
    if missing:
        raise InvalidInput(
            f"connector has no {missing[0]} weights (found modules {', '.join(sorted(heads))}; "
            "expected keys starting with resampler. and projector.)",
            path=final,
        )
    obj: dict[str, Any] = {
        "step": step,
        "connector": clean,
        "base_llm": base_llm,
        "vision_tower": vision_tower,
        "config": dict(config or {}),
    }
    if optimizer is not None:
        obj["optimizer"] = optimizer
    with atomic_file(final, overwrite=overwrite) as fh:
        torch.save(obj, fh)
    return final
