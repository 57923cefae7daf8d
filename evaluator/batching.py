"""Turning eval examples into length-bucketed, right-padded batches under a token budget.

Sorting by length before grouping keeps padding small: a batch holds sequences of similar
length, so `rows * longest` (what the forward pass pays for) is close to the real token count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from registry.errors import Incompatible, InvalidInput

__all__ = [
    "IGNORE_INDEX",
    "Example",
    "Batch",
    "scored_targets",
    "needed_length",
    "check_examples",
    "plan_batches",
    "MAX_PADDING",
    "padded_cost",
    "collate",
]

IGNORE_INDEX = -100
"""Label value of a position that is not scored (the Hugging Face convention)."""


@dataclass(frozen=True)
class Example:
    """One tokenized eval example.

    `labels` is aligned with `input_ids` (the Hugging Face `labels=` convention): `labels[t]` is
    the target predicted from positions `< t`, so `labels[0]` is never scored, and positions with
    `IGNORE_INDEX` are not scored. Usually `labels[t]` is `input_ids[t]` or `IGNORE_INDEX`.
    """

    example_id: str
    task: str
    input_ids: Sequence[int]
    labels: Sequence[int]


def scored_targets(example: Example) -> int:
    """How many tokens of `example` are scored (`labels[1:]` that are not `IGNORE_INDEX`)."""
    return sum(1 for label in example.labels[1:] if label != IGNORE_INDEX)


def needed_length(example: Example) -> int:
    """Tokens the model must see to score `example`: up to its last scored label (0 if none).

    Later tokens cannot change earlier predictions (causal attention), so they are not run.
    """
    for t in range(len(example.labels) - 1, 0, -1):
        if example.labels[t] != IGNORE_INDEX:
            return t + 1
    return 0


def check_examples(examples: Sequence[Example], vocab_size: int, *, placeholder_id: int | None = None) -> None:
    """Refuse examples the forward pass would fail on (or silently mis-score), naming the first.

    `placeholder_id` marks positions whose embedding is supplied by other means (an image's
    features): allowed in `input_ids`, never as a scored label."""
    for ex in examples:
        if ex.task == "all":
            raise InvalidInput(
                f"eval example {ex.example_id!r} has task 'all', which names the aggregate "
                "over every task; rename the task"
            )
        if len(ex.input_ids) == 0:
            raise InvalidInput(f"eval example {ex.example_id!r} has no input_ids")
        if len(ex.labels) != len(ex.input_ids):
            raise InvalidInput(
                f"eval example {ex.example_id!r}: {len(ex.labels)} labels for "
                f"{len(ex.input_ids)} input_ids; they must be aligned one to one"
            )
        ids = ex.input_ids if placeholder_id is None else [i for i in ex.input_ids if i != placeholder_id]
        low, high = (min(ids), max(ids)) if ids else (0, 0)
        scored = [label for label in ex.labels if label != IGNORE_INDEX]
        if scored:
            low, high = min(low, min(scored)), max(high, max(scored))
        if placeholder_id is not None and placeholder_id in scored:
            raise InvalidInput(
                f"eval example {ex.example_id!r} scores the image placeholder {placeholder_id} as a label"
            )
        if low < 0 or high >= vocab_size:
            bad = low if low < 0 else high
            raise Incompatible(
                f"eval example {ex.example_id!r} has token id {bad}, outside the model's "
                f"vocabulary [0, {vocab_size}); was the eval set made for this token space?"
            )


def padded_cost(lengths: Sequence[int], indices: Sequence[int]) -> int:
    """Tokens the forward pass processes for a batch: rows times the longest row."""
    return len(indices) * max(lengths[i] for i in indices)


MAX_PADDING = 0.1
"""Default share of a batch's padded tokens that may be padding (compute spent on nothing)."""


def plan_batches(
    lengths: Sequence[int], max_tokens_per_batch: int, max_padding: float = MAX_PADDING
) -> list[list[int]]:
    """Group example indices into batches whose padded size stays within the budget.

    Longest first, so an out-of-memory error (if any) shows up on the first batch. An example
    longer than the budget gets a batch of its own. A batch also closes before padding would
    exceed `max_padding` of its padded tokens (1.0: fill every batch up to the budget): an
    example much shorter than the batch's longest starts a new batch rather than being padded.
    """
    if max_tokens_per_batch <= 0:
        raise InvalidInput(f"max_tokens_per_batch must be positive, got {max_tokens_per_batch}")
    if not 0 <= max_padding <= 1:
        raise InvalidInput(f"max_padding must be between 0 and 1, got {max_padding}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    real = 0
    for i in order:
        # Descending order: the first row of a batch is its longest.
        cost = (len(batches[-1]) + 1) * lengths[batches[-1][0]] if batches else 0
        if batches and cost <= max_tokens_per_batch and real + lengths[i] >= (1 - max_padding) * cost:
            batches[-1].append(i)
            real += lengths[i]
        else:
            batches.append([i])
            real = lengths[i]
    return batches


@dataclass
class Batch:
    """Right-padded tensors for `indices` (positions in the example list)."""

    indices: list[int]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    n_tokens: int
    """Real (unpadded) tokens."""


def collate(
    examples: Sequence[Example],
    indices: Sequence[int],
    pad_token_id: int,
    device: torch.device,
    lengths: Sequence[int] | None = None,
) -> Batch:
    """Right-pad `examples[indices]` with `pad_token_id`; padding has attention 0, label ignored.

    `lengths[i]`, when given, cuts example i to its first `lengths[i]` tokens.
    """
    if lengths is None:
        lengths = [len(ex.input_ids) for ex in examples]
    longest = max(lengths[i] for i in indices)
    shape = (len(indices), longest)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros(shape, dtype=torch.long)
    n_tokens = 0
    for row, i in enumerate(indices):
        n = lengths[i]
        input_ids[row, :n] = torch.as_tensor(examples[i].input_ids[:n], dtype=torch.long)
        labels[row, :n] = torch.as_tensor(examples[i].labels[:n], dtype=torch.long)
        attention_mask[row, :n] = 1
        n_tokens += n
    return Batch(
        list(indices),
        input_ids.to(device),
        attention_mask.to(device),
        labels.to(device),
        n_tokens,
    )
