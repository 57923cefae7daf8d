"""A tiny random Qwen3 and matching checkpoints / eval examples, for the evaluator tests only.

Token space: 512 text rows, then an audio range [512, 576) and an image range [576, 640).
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from evaluator.batching import IGNORE_INDEX, Example
from evaluator.rows import RowTensors, TokenSpaceSizes

TEXT_VOCAB = 512
AUDIO = (512, 576)
IMAGE = (576, 640)
VOCAB_TOTAL = 640
PAD_ID = 0
HIDDEN = 64
SIZES = TokenSpaceSizes(TEXT_VOCAB, VOCAB_TOTAL, PAD_ID)


def tiny_config(rows: int = TEXT_VOCAB, tie: bool = False) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=rows,
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=1024,
        tie_word_embeddings=tie,
    )


def build_tiny_qwen3(
    rows: int = TEXT_VOCAB, *, tie: bool = False, seed: int = 0, dtype: torch.dtype = torch.float32
) -> Qwen3ForCausalLM:
    """A random, frozen tiny Qwen3 whose embedding has `rows` rows (more than text: padded)."""
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(tiny_config(rows, tie)).to(dtype)
    return model.eval().requires_grad_(False)


def save_tiny_qwen3(path: Path, rows: int = TEXT_VOCAB, *, tie: bool = False, seed: int = 0) -> Path:
    build_tiny_qwen3(rows, tie=tie, seed=seed).save_pretrained(path)
    return path


def random_rows(
    seed: int, row_start: int = TEXT_VOCAB, row_end: int = VOCAB_TOTAL, *, tied: bool = False
) -> RowTensors:
    """Trained-looking rows (larger than the init, so they change the losses)."""
    g = torch.Generator().manual_seed(seed)
    shape = (row_end - row_start, HIDDEN)
    embed = torch.randn(shape, generator=g) * 0.5
    lm_head = None if tied else torch.randn(shape, generator=g) * 0.5
    return RowTensors(embed, lm_head, row_start, row_end, source=f"rows-{seed}")


def make_example(example_id: str, task: str, length: int, scored: int, rng: random.Random) -> Example:
    """A modality prompt followed by `scored` text tokens at the end, which are the labels."""
    lo, hi = AUDIO if task == "a2t" else IMAGE
    prompt = [rng.randrange(lo, hi) for _ in range(length - scored)]
    answer = [rng.randrange(1, TEXT_VOCAB) for _ in range(scored)]
    labels = [IGNORE_INDEX] * len(prompt) + answer
    return Example(example_id, task, prompt + answer, labels)


def make_examples(seed: int, n: int = 12, min_len: int = 6, max_len: int = 90) -> list[Example]:
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        length = rng.randint(min_len, max_len)
        scored = rng.randint(1, max(1, length // 4))
        examples.append(make_example(f"ex{i}", ("a2t", "i2t")[i % 2], length, scored, rng))
    return examples


@torch.no_grad()
def reference_losses(model, examples: list[Example]) -> tuple[dict[str, float], dict[str, float]]:
    """The plain reference: the model's own `labels=` loss, one example at a time.

    Returns (per-example loss, per-task token-weighted loss including "all").
    """
    per_example: dict[str, float] = {}
    sums: dict[str, list[float]] = {}
    for ex in examples:
        out = model(input_ids=torch.tensor([ex.input_ids]), labels=torch.tensor([ex.labels]))
        n = sum(1 for label in ex.labels[1:] if label != IGNORE_INDEX)
        per_example[ex.example_id] = out.loss.item()
        for name in (ex.task, "all"):
            acc = sums.setdefault(name, [0.0, 0])
            acc[0] += out.loss.item() * n
            acc[1] += n
    return per_example, {name: s / n for name, (s, n) in sums.items()}
