"""Exact eval loss without materialising full logits.

The loss of an example is the Hugging Face `labels=` loss: the mean, over its scored positions,
of the negative log-likelihood of each target under the model's softmax. Two things make it
cheap without changing the number:

1. Only positions whose next label is scored go through lm_head. In a2t/i2t data the scored
   text is a small minority of each sequence, so gathering those hidden states first removes
   most of the lm_head work and all of the [tokens, vocab] logits.
2. The cross-entropy is computed in chunks (positions x vocabulary blocks, with a running
   log-sum-exp), in float32 for hidden states and lm_head alike, so memory is bounded whatever
   the vocabulary size and the numbers do not depend on the chunking.

Aggregates are token-weighted: loss(task) = sum of token NLLs over the task's scored tokens /
number of those tokens, which is not the mean of per-example means.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from evaluator.batching import (
    IGNORE_INDEX,
    MAX_PADDING,
    Batch,
    Example,
    check_examples,
    collate,
    needed_length,
    padded_cost,
    plan_batches,
    scored_targets,
)
from registry.errors import Incompatible

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = [
    "CPU_TOKEN_BUDGET",
    "ExampleLoss",
    "TaskLoss",
    "LossReport",
    "evaluate_loss",
    "batch_nll",
    "scored_nll",
    "default_vocab_block",
    "auto_token_budget",
    "is_out_of_memory",
]

log = logging.getLogger(__name__)

CPU_TOKEN_BUDGET = 16384
"""Padded tokens per batch on CPU, where memory is not the limit and larger batches gain little."""

ALL = "all"

BatchNll = Callable[..., tuple[torch.Tensor, torch.Tensor]]
Progress = Callable[[int, int], None]
InputsFn = Callable[["PreTrainedModel", Batch], dict[str, torch.Tensor]]
"""The decoder's inputs for a batch: ``{"input_ids": ...}`` by default; a track that feeds the LLM
more than token ids (a connector's image embeddings) returns ``{"inputs_embeds": ...}``."""


@dataclass(frozen=True)
class ExampleLoss:
    example_id: str
    task: str
    loss: float
    """Mean NLL over the example's scored tokens (NaN when it has none)."""
    tokens: int
    """Scored tokens."""
    nll_sum: float
    """The exact NLL sum over the scored tokens (``loss * tokens`` up to rounding)."""


@dataclass(frozen=True)
class TaskLoss:
    task: str
    loss: float
    """Token-weighted mean NLL over every scored token of the task's examples."""
    tokens: int
    examples: int


@dataclass(frozen=True)
class LossReport:
    tasks: dict[str, TaskLoss]
    """Per task, plus `"all"` over every scored token."""
    examples: list[ExampleLoss]
    """In the order of the input examples."""
    n_tokens: int
    """Input tokens (unpadded) that went through the model: each example up to its last
    scored label."""
    n_scored: int
    batches: int
    oom_retries: int
    max_tokens_per_batch: int
    """The batch budget at the end (after any out-of-memory back-off)."""
    seconds: float

    def loss(self, task: str = ALL) -> float:
        return self.tasks[task].loss

    def losses(self) -> dict[str, float]:
        """`{"all": ..., "a2t": ..., ...}`, the figures an `eval_step<step>.json` holds."""
        return {name: t.loss for name, t in self.tasks.items()}


@torch.no_grad()
def scored_nll(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    positions_per_chunk: int = 1024,
    vocab_block: int | None = None,
) -> torch.Tensor:
    """NLL of each target: `logsumexp(h @ W.T + b) - (h @ W.T + b)[target]`, one per row.

    `hidden` [N, H], `targets` [N], `weight` [V, H]. Computed in float32; at most
    `positions_per_chunk x vocab_block` logits exist at a time, plus (for a bf16 weight) one
    float32 copy of a `vocab_block` slice of it (default: 128 MiB worth of rows, <= 32768).
    """
    vocab_block = vocab_block or default_vocab_block(weight.shape[1])
    out = torch.empty(len(targets), dtype=torch.float32, device=hidden.device)
    vocab = weight.shape[0]
    for start in range(0, len(targets), positions_per_chunk):
        h = hidden[start : start + positions_per_chunk].float()
        t = targets[start : start + positions_per_chunk]
        lse = torch.full((len(t),), -math.inf, dtype=torch.float32, device=h.device)
        target_logit = torch.zeros(len(t), dtype=torch.float32, device=h.device)
        for v in range(0, vocab, vocab_block):
            logits = h @ weight[v : v + vocab_block].float().T
            if bias is not None:
                logits += bias[v : v + vocab_block].float()
            local = t - v
            inside = (local >= 0) & (local < logits.shape[1])
            picked = logits.gather(1, local.clamp(0, logits.shape[1] - 1)[:, None])[:, 0]
            target_logit = torch.where(inside, picked, target_logit)
            lse = torch.logaddexp(lse, _logsumexp_(logits))
            del logits
        out[start : start + len(t)] = lse - target_logit
    return out


def _logsumexp_(x: torch.Tensor) -> torch.Tensor:
    """`torch.logsumexp(x, dim=-1)` computed in place in `x` (which it overwrites): the same
    formula, max + log(sum(exp(x - max))), without the block-sized temporaries that made the
    logits' log-sum-exp cost as much as their matmul on a CPU."""
    top = x.amax(dim=-1, keepdim=True)
    top.masked_fill_(top.abs() == math.inf, 0)  # as torch.logsumexp does: no inf - inf
    return x.sub_(top).exp_().sum(dim=-1).log_().add_(top[:, 0])


def default_vocab_block(hidden_size: int) -> int:
    """lm_head rows per float32 block: 128 MiB of upcast weight, between 1024 and 32768 rows."""
    return max(1024, min(32768, (128 << 20) // (4 * hidden_size)))


def _decoder(model: PreTrainedModel) -> nn.Module:
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    return decoder if decoder is not None else model.base_model


def _check_plain_lm_head(model: PreTrainedModel) -> None:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in ("final_logit_softcapping", "logit_scale", "output_multiplier_scale"):
        if getattr(config, name, None) not in (None, 1, 1.0):
            raise Incompatible(
                f"the model's config sets {name}={getattr(config, name)}; the fast loss assumes "
                "logits = lm_head(hidden) and would not match the model's own loss"
            )


@torch.no_grad()
def batch_nll(
    model: PreTrainedModel,
    batch: Batch,
    *,
    positions_per_chunk: int = 1024,
    vocab_block: int | None = None,
    inputs: InputsFn | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """NLL of every scored target of `batch`, and which batch row it belongs to.

    Runs the decoder stack only (hidden states, no logits) on `inputs(model, batch)` (default:
    the batch's token ids), keeps the hidden state at position t when `labels[t + 1]` is scored,
    and scores those against lm_head with `scored_nll`.

    A right-padded batch goes in without its padding mask: under causal attention no real token
    sees a later position, so the mask changes nothing that is scored, while passing it makes the
    model build a [rows, 1, L, L] mask and attention compute every block above the diagonal too.
    """
    fed = inputs(model, batch) if inputs is not None else {"input_ids": batch.input_ids}
    mask = None if _right_padded(batch.attention_mask) else batch.attention_mask
    out = _decoder(model)(**fed, attention_mask=mask, use_cache=False)
    del fed
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    targets = batch.labels[:, 1:]
    scored = targets != IGNORE_INDEX
    picked = hidden[:, :-1][scored]
    del out, hidden
    rows = torch.arange(len(batch.indices), device=scored.device)[:, None].expand_as(scored)
    head = model.get_output_embeddings()
    nll = scored_nll(
        picked,
        targets[scored],
        head.weight,
        getattr(head, "bias", None),
        positions_per_chunk=positions_per_chunk,
        vocab_block=vocab_block,
    )
    return nll, rows[scored]


def _right_padded(mask: torch.Tensor) -> bool:
    """Every row is ones then zeros (what `collate` makes): padding only after the real tokens."""
    return bool((mask[:, 1:] <= mask[:, :-1]).all()) and bool(mask[:, 0].all())


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA (or any allocator) out-of-memory, whichever exception class this torch raises."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def auto_token_budget(model: PreTrainedModel, device: torch.device, max_length: int) -> int:
    """Padded tokens per batch: fixed on CPU; on CUDA a conservative estimate from free memory.

    The estimate counts the activations alive during one decoder layer (residual, q/k/v, MLP
    intermediate, with a x2 margin) plus the attention mask row per token; the out-of-memory
    back-off in `evaluate_loss` corrects it if it is still too high.
    """
    if device.type != "cuda":
        return CPU_TOKEN_BUDGET
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    itemsize = next(model.parameters()).element_size()
    hidden = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    q_kv = (heads + 2 * getattr(config, "num_key_value_heads", heads)) * head_dim
    per_token = 2 * itemsize * (4 * hidden + q_kv + 3 * config.intermediate_size) + 4 * max_length
    free, _ = torch.cuda.mem_get_info(device)
    block = default_vocab_block(hidden)
    scratch = 3 * 1024 * block * 4 + block * hidden * 4  # scored_nll logits + an upcast block
    budget = int(0.6 * max(free - scratch, 0) / per_token)
    return max(max_length, min(budget, 262144), 1024)


@torch.no_grad()
def evaluate_loss(
    model: PreTrainedModel,
    examples: Sequence[Example],
    *,
    max_tokens_per_batch: int | None = None,
    pad_token_id: int | None = None,
    positions_per_chunk: int = 1024,
    vocab_block: int | None = None,
    progress: Progress | None = None,
    batch_fn: BatchNll = batch_nll,
    inputs: InputsFn | None = None,
    placeholder_id: int | None = None,
    max_padding: float = MAX_PADDING,
) -> LossReport:
    """Eval loss of `model` on `examples`: per example, per task and over all scored tokens.

    Every figure is a token-weighted mean NLL: sum of the NLLs of the scored tokens / their
    number. For one example that is exactly the model's own `labels=` loss; for a task and for
    "all" it is the mean over every scored token they hold (long answers weigh more), not the
    mean of per-example means. Batching does not change the numbers: padding is masked out and
    each example's tokens are scored separately. Tokens after an example's last scored label
    are not run (they cannot affect its predictions).

    `max_tokens_per_batch` bounds padded tokens per forward pass (default: `auto_token_budget`);
    `max_padding` bounds the share of them that is padding (see `plan_batches`).
    On an out-of-memory error the failing batch is halved and retried, and the budget halved.
    `progress(tokens_done, tokens_total)` is called after each batch. `batch_fn` computes the
    NLLs of one batch (default `batch_nll`); tests use it to inject failures. `inputs` builds the
    decoder's inputs for a batch (see `InputsFn`); `placeholder_id` is an id in `input_ids` that
    `inputs` replaces (so it is exempt from the vocabulary check) and that is never scored.
    """
    start = time.perf_counter()
    _check_plain_lm_head(model)
    device = next(model.parameters()).device
    embedding = model.get_input_embeddings().weight
    assert isinstance(embedding, torch.Tensor)  # nn.Module types attributes as Tensor | Module
    vocab = embedding.shape[0]
    check_examples(examples, vocab, placeholder_id=placeholder_id)
    if pad_token_id is None:
        pad_token_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    # Only the tokens up to the last scored label; nothing at all for an example with no
    # scored tokens (it contributes nothing).
    lengths = [needed_length(ex) for ex in examples]
    counts = [scored_targets(ex) for ex in examples]
    todo = [i for i, c in enumerate(counts) if c]
    budget = max_tokens_per_batch or auto_token_budget(model, device, max(lengths, default=1))
    plan = plan_batches([lengths[i] for i in todo], budget, max_padding)
    queue = deque([todo[j] for j in batch] for batch in plan)
    sums = torch.zeros(len(examples), dtype=torch.float64)
    total_tokens = sum(lengths[i] for i in todo)
    done_tokens = n_batches = oom_retries = 0
    while queue:
        indices = queue.popleft()
        if len(indices) > 1 and padded_cost(lengths, indices) > budget:
            queue.extendleft(reversed(_halves(indices)))
            continue
        batch = collate(examples, indices, pad_token_id, device, lengths)
        try:
            nll, rows = batch_fn(
                model,
                batch,
                positions_per_chunk=positions_per_chunk,
                vocab_block=vocab_block,
                inputs=inputs,
            )
        except Exception as error:  # noqa: BLE001 - only out-of-memory is handled, see below
            if not is_out_of_memory(error):
                raise
            if len(indices) == 1:
                raise Incompatible(
                    f"eval example {examples[indices[0]].example_id!r} ({lengths[indices[0]]} "
                    f"tokens) does not fit in {device.type} memory even on its own"
                ) from error
            failed_cost = padded_cost(lengths, indices)
        else:
            owner = torch.as_tensor(indices, dtype=torch.long)[rows.cpu()]
            sums.index_add_(0, owner, nll.double().cpu())
            n_batches += 1
            done_tokens += batch.n_tokens
            if progress is not None:
                progress(done_tokens, total_tokens)
            continue
        # Out of memory: free what the failed attempt held (outside the except block, whose
        # traceback keeps its tensors alive), then retry the batch in two halves.
        del batch
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        oom_retries += 1
        budget = max(1, failed_cost // 2)
        log.warning(
            "out of memory on a batch of %d examples (%d padded tokens); "
            "retrying in halves with max_tokens_per_batch=%d",
            len(indices), failed_cost, budget,
        )  # fmt: skip
        queue.extendleft(reversed(_halves(indices)))
    return _report(examples, sums.tolist(), counts, lengths, n_batches, oom_retries, budget, start)


def _halves(indices: list[int]) -> list[list[int]]:
    middle = len(indices) // 2
    return [indices[:middle], indices[middle:]]


def _report(
    examples: Sequence[Example],
    sums: list[float],
    counts: list[int],
    lengths: list[int],
    n_batches: int,
    oom_retries: int,
    budget: int,
    start: float,
) -> LossReport:
    per_example = [
        ExampleLoss(ex.example_id, ex.task, s / c if c else math.nan, c, s) for ex, s, c in zip(examples, sums, counts)
    ]
    totals: dict[str, list[float]] = {}  # task -> [nll sum, tokens, examples]
    for ex, s, c in zip(examples, sums, counts):
        for name in (ex.task, ALL):
            acc = totals.setdefault(name, [0.0, 0, 0])
            acc[0] += s
            acc[1] += c
            acc[2] += 1
    tasks = {
        name: TaskLoss(name, s / c if c else math.nan, int(c), int(n))
        for name, (s, c, n) in sorted(totals.items(), key=lambda kv: (kv[0] != ALL, kv[0]))
    }
    if ALL not in tasks:
        tasks[ALL] = TaskLoss(ALL, math.nan, 0, 0)
    return LossReport(
        tasks=tasks,
        examples=per_example,
        n_tokens=sum(lengths),
        n_scored=sum(counts),
        batches=n_batches,
        oom_retries=oom_retries,
        max_tokens_per_batch=budget,
        seconds=time.perf_counter() - start,
    )
