"""Fitting a base model to a token space and swapping trained rows in and out of it.

The loading recipe (seeds): load the base, resize its input embedding and lm_head from
`text_vocab_size` to `vocab_size_total` rows, set `pad_token_id`, then copy the trained rows into
`[row_start, row_end)` of both matrices. Three cases are handled explicitly and reported:

- tied embeddings (lm_head shares the input embedding's storage): kept tied; a checkpoint whose
  lm_head rows differ from its embedding rows cannot be applied and is refused;
- a base matrix with more rows than `text_vocab_size` (Qwen pads its 151,643-token vocabulary to
  151,936 rows): rows from `text_vocab_size` on are not text, they are re-initialised like new ones;
- dtype: the model keeps its dtype; checkpoint rows are cast to it on copy.

New rows are initialised to the mean of the text rows `[0, text_vocab_size)`, not randomly:
deterministic, so a row still equal to the initial value can be recognised as "never trained",
and a fresh copy and a resident copy of the same base are identical before any rows are copied.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

from evaluator.base_model import ResidentBase
from registry.errors import EvalboardError, Incompatible, InvalidInput

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = [
    "TokenSpaceSizes",
    "RowTensors",
    "PrepareReport",
    "PatchReport",
    "ApplyReport",
    "prepare_for_token_space",
    "patch_rows",
    "ResidentModel",
]

log = logging.getLogger(__name__)

# Attributes set on a prepared model: which sizes it was prepared for, and the init rows.
_PREPARED_ATTR = "_evalboard_token_space"
_INIT_ATTR = "_evalboard_init_rows"


@dataclass(frozen=True)
class TokenSpaceSizes:
    """The part of a token space the model's shape depends on."""

    text_vocab_size: int
    """Rows `[0, text_vocab_size)` are the base model's text vocabulary, kept as they are."""
    vocab_size_total: int
    """Rows in the prepared embedding and lm_head: text plus every modality range."""
    pad_token_id: int | None = None
    """Written to `model.config.pad_token_id`; None leaves the config's value."""

    def __post_init__(self) -> None:
        if self.text_vocab_size <= 0:
            raise InvalidInput(f"text_vocab_size must be positive, got {self.text_vocab_size}")
        if self.vocab_size_total < self.text_vocab_size:
            raise InvalidInput(
                f"vocab_size_total ({self.vocab_size_total}) is smaller than text_vocab_size ({self.text_vocab_size})"
            )
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size_total:
            raise InvalidInput(
                f"pad_token_id {self.pad_token_id} is outside the token space [0, {self.vocab_size_total})"
            )


@dataclass(frozen=True)
class RowTensors:
    """Trained rows for `[row_start, row_end)` of the input embedding and (optionally) lm_head, as
    tensors to copy into a model (the checkpoint they come from is `registry.trainable_rows.TrainableRows`)."""

    embed: torch.Tensor
    lm_head: torch.Tensor | None
    row_start: int
    row_end: int
    source: str = ""
    """Where the rows came from (a file path), used in messages."""


@dataclass(frozen=True)
class PrepareReport:
    """What `prepare_for_token_space` did to the model."""

    text_vocab_size: int
    vocab_size_total: int
    rows_before: int
    tied: bool
    dtype: str
    pad_token_id: int | None
    already_prepared: bool
    """The model was already prepared for these sizes: nothing was touched."""
    reallocated: bool
    """New embedding / lm_head storage was allocated (rows added or removed)."""
    reinitialised_rows: int
    """Rows the base already had at or beyond `text_vocab_size`, overwritten with the init row."""
    added_rows: int
    removed_rows: int
    config_says_tied: bool | None

    def describe(self) -> str:
        if self.already_prepared:
            return (
                f"token space already prepared ({self.text_vocab_size} text rows, "
                f"{self.vocab_size_total} total): embeddings untouched"
            )
        tie = "tied (lm_head shares the input embedding)" if self.tied else "untied"
        parts = [
            f"resized embeddings from {self.rows_before} to {self.vocab_size_total} rows "
            f"({self.text_vocab_size} text rows kept, {tie}, {self.dtype})"
        ]
        if self.added_rows:
            parts.append(f"{self.added_rows} rows added")
        if self.removed_rows:
            parts.append(f"{self.removed_rows} rows beyond the token space removed")
        if self.reinitialised_rows:
            parts.append(
                f"{self.reinitialised_rows} base rows in [{self.text_vocab_size}, "
                f"{self.text_vocab_size + self.reinitialised_rows}) are past text_vocab_size "
                "(padding of the base matrix) and were re-initialised"
            )
        parts.append(f"rows [{self.text_vocab_size}, {self.vocab_size_total}) set to the mean of the text rows")
        if self.config_says_tied is not None and self.config_says_tied != self.tied:
            parts.append(
                f"note: config.tie_word_embeddings={self.config_says_tied} but the weights are "
                f"{'shared' if self.tied else 'separate'}; followed the weights"
            )
        if self.pad_token_id is not None:
            parts.append(f"pad_token_id={self.pad_token_id}")
        return "; ".join(parts) + "."


@dataclass(frozen=True)
class PatchReport:
    """What `patch_rows` copied."""

    row_start: int
    row_end: int
    source_dtype: str
    model_dtype: str
    lm_head: str
    """'copied', 'tied' (lm_head is the embedding), or 'absent'."""

    def describe(self) -> str:
        cast = f", cast {self.source_dtype} -> {self.model_dtype}" if self.source_dtype != self.model_dtype else ""
        head = {
            "copied": "embedding and lm_head",
            "tied": "embedding (lm_head tied to it)",
        }[self.lm_head]
        return f"patched rows [{self.row_start}, {self.row_end}) of {head}{cast}"


class _LMHead(Protocol):
    """An lm_head as `_matrices` checked it: a module (usually an nn.Linear) whose `weight` is a
    tensor; `bias` and `out_features` are used where it has them."""

    weight: torch.Tensor


def _matrices(model: PreTrainedModel) -> tuple[nn.Embedding, _LMHead]:
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    if not isinstance(emb, nn.Embedding):
        raise Incompatible(f"input embedding is a {type(emb).__name__}, expected nn.Embedding")
    if head is None:
        raise Incompatible(
            f"{type(model).__name__} has no lm_head (output embeddings); pass the causal LM, not its decoder stack"
        )
    if not isinstance(getattr(head, "weight", None), torch.Tensor):
        raise Incompatible(f"lm_head is a {type(head).__name__} without a weight matrix")
    return emb, head


def _is_tied(emb: nn.Embedding, head: _LMHead) -> bool:
    if head.weight is emb.weight:
        return True
    return head.weight.data_ptr() == emb.weight.data_ptr() and head.weight.shape == emb.weight.shape


def _text_config(model: PreTrainedModel):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _resized(weight: torch.Tensor, text_rows: int, total_rows: int, init_row: torch.Tensor) -> torch.Tensor:
    """`weight` with `total_rows` rows: text rows kept, the rest set to `init_row`.

    Works in place when the row count is already right (no reallocation).
    """
    if weight.shape[0] == total_rows:
        out = weight
    else:
        out = torch.empty((total_rows, *weight.shape[1:]), dtype=weight.dtype, device=weight.device)
        out[:text_rows].copy_(weight[:text_rows])
    out[text_rows:] = init_row.to(weight.dtype)
    return out


def _mean_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.mean(weight[:rows], dim=0, dtype=torch.float32)


@torch.no_grad()
def prepare_for_token_space(
    model: PreTrainedModel, text_vocab_size: int, vocab_size_total: int, pad_token_id: int | None = None
) -> PrepareReport:
    """Resize the input embedding and lm_head to `vocab_size_total` rows, in place on `model`.

    Rows `[0, text_vocab_size)` are kept; every row from `text_vocab_size` on (new rows and any
    padding rows the base already had) is set to the mean of the text rows, computed in float32,
    separately for the embedding and for lm_head. Tied matrices stay tied. `config.vocab_size` and
    `config.pad_token_id` are updated. Calling it again with the same sizes does nothing.
    """
    TokenSpaceSizes(text_vocab_size, vocab_size_total, pad_token_id)  # validates the sizes
    emb, head = _matrices(model)
    tied = _is_tied(emb, head)
    rows_before = emb.weight.shape[0]
    config_tied = getattr(_text_config(model), "tie_word_embeddings", None)
    if not tied and head.weight.shape[0] != rows_before:
        raise Incompatible(
            f"input embedding has {rows_before} rows but lm_head has {head.weight.shape[0]}; "
            "expected the same vocabulary for both"
        )
    if text_vocab_size > rows_before:
        raise Incompatible(
            f"token space says text_vocab_size={text_vocab_size} but the base embedding has only "
            f"{rows_before} rows; is this the base model the token space was made for?"
        )
    previous = getattr(model, _PREPARED_ATTR, None)
    if previous is not None and text_vocab_size > previous[0]:
        raise Incompatible(
            f"this model was prepared for text_vocab_size={previous[0]}, which overwrote the base "
            f"rows from {previous[0]} on; a token space with text_vocab_size={text_vocab_size} "
            "needs a freshly loaded base"
        )
    untouched = PrepareReport(
        text_vocab_size=text_vocab_size,
        vocab_size_total=vocab_size_total,
        rows_before=rows_before,
        tied=tied,
        dtype=str(emb.weight.dtype).removeprefix("torch."),
        pad_token_id=pad_token_id,
        config_says_tied=config_tied,
        already_prepared=True,
        reallocated=False,
        reinitialised_rows=0,
        added_rows=0,
        removed_rows=0,
    )
    _set_pad_token_id(model, pad_token_id)
    if previous == (text_vocab_size, vocab_size_total) and rows_before == vocab_size_total:
        return untouched

    emb_init = _mean_rows(emb.weight, text_vocab_size)
    emb.weight = nn.Parameter(
        _resized(emb.weight.data, text_vocab_size, vocab_size_total, emb_init), requires_grad=False
    )
    emb.num_embeddings = vocab_size_total
    head_init = emb_init
    if tied:
        head.weight = emb.weight
    else:
        head_init = _mean_rows(head.weight, text_vocab_size)
        head.weight = nn.Parameter(
            _resized(head.weight.data, text_vocab_size, vocab_size_total, head_init),
            requires_grad=False,
        )
    if hasattr(head, "bias") and head.bias is not None:
        bias = head.bias.data
        head.bias = nn.Parameter(
            _resized(bias, text_vocab_size, vocab_size_total, _mean_rows(bias, text_vocab_size)),
            requires_grad=False,
        )
    if hasattr(head, "out_features"):
        head.out_features = vocab_size_total
    _set_vocab_size(model, vocab_size_total)
    setattr(model, _PREPARED_ATTR, (text_vocab_size, vocab_size_total))
    setattr(model, _INIT_ATTR, (emb_init, head_init))
    done = replace(
        untouched,
        already_prepared=False,
        reallocated=rows_before != vocab_size_total,
        reinitialised_rows=max(0, min(rows_before, vocab_size_total) - text_vocab_size),
        added_rows=max(0, vocab_size_total - rows_before),
        removed_rows=max(0, rows_before - vocab_size_total),
    )
    return done


def _set_vocab_size(model: PreTrainedModel, vocab_size: int) -> None:
    model.config.vocab_size = vocab_size
    _text_config(model).vocab_size = vocab_size
    if hasattr(model, "vocab_size"):
        model.vocab_size = vocab_size


def _set_pad_token_id(model: PreTrainedModel, pad_token_id: int | None) -> None:
    if pad_token_id is None:
        return
    model.config.pad_token_id = pad_token_id
    _text_config(model).pad_token_id = pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = pad_token_id


def _check_rows(what: str, rows: torch.Tensor, expected: tuple[int, int]) -> None:
    if not isinstance(rows, torch.Tensor):
        raise InvalidInput(f"{what} rows: expected a tensor, got {type(rows).__name__}")
    if not rows.is_floating_point():
        raise Incompatible(f"{what} rows: expected a floating-point tensor, file has {rows.dtype}")
    if tuple(rows.shape) != expected:
        raise Incompatible(f"{what} rows: expected {expected}, file has {tuple(rows.shape)}")


@torch.no_grad()
def patch_rows(
    model: PreTrainedModel,
    embed_rows: torch.Tensor,
    lm_head_rows: torch.Tensor | None,
    row_start: int,
    row_end: int,
) -> PatchReport:
    """Copy trained rows into `[row_start, row_end)` of the input embedding and lm_head, in place.

    Rows are cast to the model's dtype and device by the copy; nothing is reallocated, so the
    cost is one copy of the rows. For tied matrices `lm_head_rows` may be None or equal to
    `embed_rows`; anything else is refused (the two cannot both be honoured).
    """
    emb, head = _matrices(model)
    n_rows, hidden = emb.weight.shape
    if not 0 <= row_start < row_end <= n_rows:
        raise Incompatible(
            f"trainable rows [{row_start}, {row_end}) do not fit the model's {n_rows} embedding "
            "rows; was the model prepared for this checkpoint's token space?"
        )
    expected = (row_end - row_start, hidden)
    _check_rows("embedding", embed_rows, expected)
    tied = _is_tied(emb, head)
    if lm_head_rows is not None:
        _check_rows("lm_head", lm_head_rows, expected)
    if tied:
        if lm_head_rows is not None and not _same_values(embed_rows, lm_head_rows):
            raise Incompatible(
                "the base model ties lm_head to the input embedding, but the checkpoint's "
                "lm_head rows differ from its embedding rows; it was trained untied and cannot "
                "be applied to this base without untying it"
            )
        lm_head = "tied"
    elif lm_head_rows is None:
        raise Incompatible(
            f"the checkpoint has no lm_head rows but the base's lm_head is not tied to the "
            f"embedding; rows [{row_start}, {row_end}) of lm_head would stay untrained"
        )
    else:
        head.weight[row_start:row_end].copy_(lm_head_rows)
        lm_head = "copied"
    emb.weight[row_start:row_end].copy_(embed_rows)
    return PatchReport(
        row_start=row_start,
        row_end=row_end,
        source_dtype=str(embed_rows.dtype).removeprefix("torch."),
        model_dtype=str(emb.weight.dtype).removeprefix("torch."),
        lm_head=lm_head,
    )


def _rows_file(source: str) -> str:
    """The rows file inside a checkpoint folder (what a refusal should name), else `source`."""
    from registry.trainable_rows import find_rows_file

    found = find_rows_file(Path(source)) if Path(source).is_dir() else None
    return str(found or source)


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.dtype == b.dtype:
        return True
    return torch.equal(a.to(b.device, torch.float32), b.to(torch.float32))


@dataclass(frozen=True)
class ApplyReport:
    """What `ResidentModel.apply` did: prepare (when the sizes changed), reset, patch."""

    prepared: PrepareReport | None
    reset_rows: int
    patch: PatchReport
    seconds: float

    def describe(self) -> str:
        parts = [self.prepared.describe()] if self.prepared else ["token space unchanged"]
        if self.reset_rows:
            parts.append(f"{self.reset_rows} rows not in this checkpoint reset to the init row")
        parts.append(self.patch.describe())
        return f"{'; '.join(p.rstrip('.') for p in parts)} ({self.seconds * 1e3:.1f} ms)."


class ResidentModel:
    """A base model kept in memory across checkpoints: prepared once per token-space shape,
    then only the trained rows are swapped.

    After `apply(sizes, rows)` the model is exactly what a fresh load + prepare + patch of the
    same checkpoint would give (rows of earlier checkpoints never leak through: rows of the
    modality range that the new checkpoint does not cover are reset to the init row).
    """

    def __init__(self, model: PreTrainedModel | ResidentBase):
        self.model: PreTrainedModel = model.model if isinstance(model, ResidentBase) else model
        self.sizes: TokenSpaceSizes | None = None
        self.rows_source: str | None = None

    def apply(self, sizes: TokenSpaceSizes, rows: RowTensors) -> ApplyReport:
        start = time.perf_counter()
        if rows.row_start < sizes.text_vocab_size:
            raise Incompatible(
                f"trainable rows start at {rows.row_start}, inside the text vocabulary "
                f"[0, {sizes.text_vocab_size}); a resident base only swaps rows at or past "
                "text_vocab_size, so base text rows are never modified"
            )
        prepared = None
        reset = 0
        same_shape = self.sizes is not None and (
            (self.sizes.text_vocab_size, self.sizes.vocab_size_total) == (sizes.text_vocab_size, sizes.vocab_size_total)
        )
        if same_shape:
            _set_pad_token_id(self.model, sizes.pad_token_id)
            reset = self._reset_uncovered(sizes, rows)
        else:
            prepared = prepare_for_token_space(
                self.model, sizes.text_vocab_size, sizes.vocab_size_total, sizes.pad_token_id
            )
        try:
            patch = patch_rows(self.model, rows.embed, rows.lm_head, rows.row_start, rows.row_end)
        except EvalboardError as e:  # the refusal names the checkpoint's rows file
            if not rows.source or e.path:
                raise
            raise type(e)(str(e), path=_rows_file(rows.source)) from None
        self.sizes, self.rows_source = sizes, rows.source
        report = ApplyReport(prepared, reset, patch, time.perf_counter() - start)
        log.info("%s: %s", rows.source or "rows", report.describe())
        return report

    @torch.no_grad()
    def _reset_uncovered(self, sizes: TokenSpaceSizes, rows: RowTensors) -> int:
        emb, head = _matrices(self.model)
        emb_init, head_init = getattr(self.model, _INIT_ATTR)
        spans = [(sizes.text_vocab_size, rows.row_start), (rows.row_end, sizes.vocab_size_total)]
        count = 0
        for lo, hi in spans:
            if hi <= lo:
                continue
            emb.weight[lo:hi] = emb_init.to(emb.weight.dtype)
            if not _is_tied(emb, head):
                head.weight[lo:hi] = head_init.to(head.weight.dtype)
            count += hi - lo
        return count
