"""Evaluator vs a naive loss loop: throughput, peak memory, exactness, and row swap vs base load.

Builds, in a temporary folder, a random Qwen3 with a realistic vocabulary (151,936 text rows +
32,768 modality rows), two "trainable rows" checkpoints and an eval set whose scored text is a
small minority at the end of each sequence (as in a2t / i2t data). Then, on one resident base:

- evaluator: `evaluator.loss.evaluate_loss` (length-bucketed batches, hidden states of the scored
  positions only, chunked float32 cross-entropy);
- naive: padded batches of 4 examples in input order, `model(input_ids, attention_mask,
  labels=)` with full logits, per-example losses from those logits.

How close to the machine (see benchmarks/_utilisation.py for the accounting): useful FLOPs of the
evaluation, achieved FLOP/s, that as a fraction of a large `torch.mm`'s FLOP/s measured in the same
run (`fraction_of_peak`), and the same fraction for the best plain PyTorch forward of the model on
one packed batch (`plain_forward_fraction_of_peak`, the practical ceiling); the row swap against
its bytes / the measured copy bandwidth (`swap_over_bandwidth_bound`), and swap vs a full load at
Qwen3-8B's sizes from the measured read bandwidth. The same for Track A (`track_a`): a SigLIP
tower -> perceiver connector -> the same LLM, features cached, connector checkpoints switched.

Progress goes to stderr; the last stdout line is one JSON object (targets: tokens_per_s_ratio
>= 3, peak_mem_ratio <= 0.25, max_abs_loss_diff <= 1e-4, swap_to_load_ratio <= 0.05,
fraction_of_peak >= 0.8 x plain_forward_fraction_of_peak, swap_over_bandwidth_bound <= 3).

    python benchmarks/eval_throughput.py                     # CPU, tiny model, ~3-5 minutes
    python benchmarks/eval_throughput.py --preset 8b-split   # CPU, Qwen3-8B's decoder/lm_head FLOP split
    python benchmarks/eval_throughput.py --preset qwen3-8b   # GPU: Qwen3-8B shape, bf16, MFU
"""

from __future__ import annotations

if not __package__:  # run as a script (first: see benchmarks/_bench_path.py), not imported as benchmarks.*
    import _bench_path  # noqa: F401

import argparse
import ctypes
import json
import math
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks._utilisation import (
    QWEN3_8B,
    QWEN3_8B_DIMS,
    DecoderDims,
    counted_flops,
    machine_limits,
    matmul_peak,
    plain_forward_ceiling,
    read_bandwidth,
    sync,
    useful_flops,
)
from evaluator.base_model import load_base
from evaluator.batching import (
    IGNORE_INDEX,
    MAX_PADDING,
    Example,
    needed_length,
    padded_cost,
    plan_batches,
    scored_targets,
)
from evaluator.loss import evaluate_loss
from evaluator.rows import ResidentModel, RowTensors, TokenSpaceSizes

DENSE_BF16_PEAK = {"H100": 989e12, "H200": 989e12, "H100 PCIe": 756e12, "A100": 312e12}


@dataclass(frozen=True)
class Vocab:
    """The token space: text rows (some never emitted), then audio and image rows, half each."""

    text_rows: int = 151_936  # Qwen3's embedding rows
    text_tokens: int = 151_643  # ids the Qwen3 tokenizer actually emits
    modality_rows: int = 32_768  # audio [T, T+16384), image [T+16384, T+32768)

    @property
    def pad_id(self) -> int:
        return self.text_tokens  # Qwen's <|endoftext|>, the first id past the emitted ones

    @property
    def total(self) -> int:
        return self.text_rows + self.modality_rows

    @classmethod
    def with_decoder_share(cls, dims: DecoderDims, share: float) -> Vocab:
        """Qwen's vocabulary scaled so that ``dims``' decoder holds ``share`` of a token's FLOPs."""
        qwen = cls()
        total = dims.linear_flops_per_token() * (1 - share) / share / dims.output_flops_per_position(1)
        scale = total / qwen.total
        modality = 2 * max(1, round(qwen.modality_rows * scale / 2))
        text = max(16, round(total) - modality)
        return cls(text, max(8, text - max(1, round((qwen.text_rows - qwen.text_tokens) * scale))), modality)


QWEN_VOCAB = Vocab()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    dtype: torch.dtype
    vocab: Vocab = QWEN_VOCAB

    @property
    def dims(self) -> DecoderDims:
        return DecoderDims(
            self.hidden, self.layers, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        )

    def config(self):
        from transformers import Qwen3Config

        return Qwen3Config(
            vocab_size=self.vocab.text_rows,
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            head_dim=self.head_dim,
            max_position_embeddings=4096,
            tie_word_embeddings=False,
        )


PRESETS = {
    "qwen3-8b": "Qwen3-8B's shape in bf16 (a GPU), Qwen's vocabulary; reports MFU",
    "8b-split": "CPU, float32, hidden 512 x 8 layers (or --hidden/--layers), vocabulary scaled so the "
    "decoder holds Qwen3-8B's share of a token's forward FLOPs (~90%), not the tiny model's ~15%",
    "tiny": "a few seconds anywhere: hidden 32, 1 layer, short examples (smoke tests, CI)",
}


def shape_from_args(args) -> Shape:
    if args.preset == "qwen3-8b":
        q = QWEN3_8B
        return Shape(q["hidden"], args.layers or q["layers"], 32, 8, 128, q["intermediate"], torch.bfloat16)
    hidden = args.hidden or {"8b-split": 512, "tiny": 32}.get(args.preset, 256)
    layers = args.layers or {"8b-split": 8, "tiny": 1}.get(args.preset, 2)
    shape = Shape(hidden, layers, max(1, hidden // 64), max(1, hidden // 128), 64, 3 * hidden, torch.float32)
    if args.preset == "8b-split":
        target = QWEN3_8B_DIMS.decoder_share(QWEN_VOCAB.total)
        shape = Shape(**{**shape.__dict__, "vocab": Vocab.with_decoder_share(shape.dims, target)})
    return shape


# ---------------------------------------------------------------------------------------------
# Workspace: base model on disk, two checkpoints' rows, the eval set.


def build_base(shape: Shape, device: torch.device, folder: Path, seed: int) -> None:
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):  # random weights created where they will be used
        model = Qwen3ForCausalLM._from_config(shape.config(), dtype=shape.dtype)
    model.save_pretrained(folder)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()


def write_rows(folder: Path, hidden: int, seed: int, vocab: Vocab = QWEN_VOCAB) -> Path:
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    rows = {
        "embed_tokens": torch.randn(vocab.modality_rows, hidden, generator=g) * 0.02,
        "lm_head": torch.randn(vocab.modality_rows, hidden, generator=g) * 0.02,
    }
    path = folder / f"rows_{seed}.safetensors"
    save_file(rows, path)
    return path


def read_rows(path: Path, vocab: Vocab = QWEN_VOCAB) -> RowTensors:
    from safetensors.torch import load_file

    data = load_file(path)
    return RowTensors(data["embed_tokens"], data["lm_head"], vocab.text_rows, vocab.total, str(path))


def make_eval_set(n: int, min_len: int, max_len: int, seed: int, vocab: Vocab = QWEN_VOCAB) -> list[Example]:
    """Log-uniform lengths in [min_len, max_len] (many short, some long, as in real eval sets);
    a modality prompt, then 5-15% text tokens at the end which are the scored labels."""
    rng = random.Random(seed)
    half = vocab.modality_rows // 2
    examples = []
    for i in range(n):
        length = int(round(math.exp(rng.uniform(math.log(min_len), math.log(max_len)))))
        scored = max(1, int(length * rng.uniform(0.05, 0.15)))
        task = ("a2t", "i2t")[i % 2]
        lo = vocab.text_rows + (0 if task == "a2t" else half)
        prompt = [rng.randrange(lo, lo + half) for _ in range(length - scored)]
        answer = [rng.randrange(0, vocab.text_tokens) for _ in range(scored)]
        examples.append(Example(f"ex{i:04d}", task, prompt + answer, [IGNORE_INDEX] * len(prompt) + answer))
    return examples


# ---------------------------------------------------------------------------------------------
# Measuring memory


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _release_free_heap() -> None:
    """Give freed heap pages back to the OS so the RSS baseline is what is really in use."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory above the level at entry: CUDA allocator stats, or sampled RSS on CPU."""

    def __init__(self, device: torch.device, interval_s: float = 0.002):
        self.device, self.interval_s = device, interval_s
        self.extra_bytes = 0

    @property
    def method(self) -> str:
        if self.device.type == "cuda":
            return "torch.cuda.max_memory_allocated minus memory_allocated at start"
        return (
            "process RSS from /proc/self/statm sampled every 2 ms by a thread, minus RSS at "
            "start (after malloc_trim), model already loaded"
        )

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        else:
            _release_free_heap()
            self._start = self._peak = _rss_bytes()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, _rss_bytes())
            time.sleep(self.interval_s)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.extra_bytes = torch.cuda.max_memory_allocated() - self._start
        else:
            self._stop.set()
            self._thread.join()
            self.extra_bytes = self._peak - self._start


# ---------------------------------------------------------------------------------------------
# The two loss loops


_sync = sync


def progress_printer(name: str, every_s: float = 5.0):
    last = [0.0]

    def show(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] >= every_s or done == total:
            last[0] = now
            log(f"  {name}: {done}/{total} tokens ({100 * done / total:.0f}%)")

    return show


def run_evaluator(model, examples, device):
    start = time.perf_counter()
    report = evaluate_loss(model, examples, progress=progress_printer("evaluator"))
    _sync(device)
    losses = {e.example_id: (e.loss, e.tokens) for e in report.examples}
    return losses, time.perf_counter() - start, report


@torch.no_grad()
def run_naive(model, examples, device, batch_size: int = 4, pad_id: int = QWEN_VOCAB.pad_id):
    """The loop people write first: fixed-size batches in input order, full logits."""
    losses = {}
    show = progress_printer("naive")
    total, done = sum(len(e.input_ids) for e in examples), 0
    start = time.perf_counter()
    for b in range(0, len(examples), batch_size):
        batch = examples[b : b + batch_size]
        longest = max(len(e.input_ids) for e in batch)
        ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), longest), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, e in enumerate(batch):
            n = len(e.input_ids)
            ids[row, :n], labels[row, :n], mask[row, :n] = (
                torch.tensor(e.input_ids), torch.tensor(e.labels), 1,
            )  # fmt: skip
        ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.item()
        # Per-example losses from the same logits, shifted the way HF's loss does it.
        targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
        nll = F.cross_entropy(out.logits.flatten(0, 1).float(), targets.flatten(), reduction="none").view(
            targets.shape
        )  # 0 where ignored
        counts = (targets != IGNORE_INDEX).sum(1)
        for row, e in enumerate(batch):
            c = int(counts[row])
            losses[e.example_id] = ((nll[row].sum() / c).item() if c else math.nan, c)
        del out, nll
        done += sum(len(e.input_ids) for e in batch)
        show(done, total)
    _sync(device)
    return losses, time.perf_counter() - start


def time_fresh_load(base_dir, rows_file, sizes, device, dtype, vocab: Vocab) -> tuple[float, ResidentModel]:
    """Seconds from nothing to a ready model: load the base, prepare, read and patch the rows.

    Every weight is touched at the end: safetensors maps files lazily, and a worker pays for
    the reads on its first forward pass anyway.
    """
    _sync(device)
    start = time.perf_counter()
    resident = ResidentModel(load_base(base_dir, device, dtype))
    resident.apply(sizes, read_rows(rows_file, vocab))
    for p in resident.model.parameters():
        p.view(-1)[:: max(1, 4096 // p.element_size())].sum()  # one read per 4 KiB page
    _sync(device)
    return time.perf_counter() - start, resident


@torch.no_grad()
def fp32_logit_reference(model, examples) -> dict[str, tuple[float, int]]:
    """Per-example loss with float32 logits from the model's own final hidden states.

    For a bf16 model, `labels=` rounds the logits to bf16 before the softmax (an error of
    ~1e-3 in the loss); the evaluator computes them in float32, so this is its exact reference.
    """
    device = next(model.parameters()).device
    weight = model.get_output_embeddings().weight.float()
    losses = {}
    for e in examples:
        hidden = model.model(input_ids=torch.tensor([e.input_ids], device=device)).last_hidden_state
        logits = hidden[0, :-1].float() @ weight.T
        labels = torch.tensor(e.labels[1:], device=device)
        count = int((labels != IGNORE_INDEX).sum())
        losses[e.example_id] = (F.cross_entropy(logits, labels).item() if count else math.nan, count)
    return losses


@torch.no_grad()
def fp32_model_reference(model, examples, fast: dict) -> dict:
    """The evaluator on a float32 copy of ``model`` (same weights, upcast): how far the bf16 run's
    losses are from full-precision arithmetic. Skipped when the copy does not fit."""
    device = next(model.parameters()).device
    fp32_bytes = 4 * sum(p.numel() for p in model.parameters())
    if device.type == "cuda" and torch.cuda.mem_get_info(device)[0] < 1.2 * fp32_bytes:
        return {"fp32_model_reference": f"skipped: a float32 copy needs {fp32_bytes / 2**30:.1f} GiB"}
    with torch.device(device):
        ref = type(model)._from_config(model.config, dtype=torch.float32)
    ref.load_state_dict(model.state_dict(), strict=True)
    ref.eval()
    report = evaluate_loss(ref, examples)
    exact = {e.example_id: (e.loss, e.tokens) for e in report.examples}
    del ref
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "max_abs_loss_diff_vs_fp32_model": float(f"{compare_losses(examples, fast, exact):.3g}"),
        "fp32_model_reference": f"the evaluator on a float32 copy of the model, {len(examples)} examples",
    }


def gpu_peak_flops(device: torch.device) -> tuple[str, float | None]:
    name = torch.cuda.get_device_name(device)
    for key in ("H100 PCIe", "H200", "H100", "A100"):
        if key in name:
            return name, DENSE_BF16_PEAK[key]
    return name, None


# ---------------------------------------------------------------------------------------------
# Utilisation


def count_tokens(examples) -> tuple[int, int]:
    tokens = sum(len(e.input_ids) for e in examples)
    scored = sum(1 for e in examples for label in e.labels[1:] if label != IGNORE_INDEX)
    return tokens, scored


def evaluation_flops(model, examples) -> dict[str, float]:
    """Useful FLOPs of evaluating ``examples`` on ``model`` (see benchmarks/_utilisation.py)."""
    dims = DecoderDims.from_config(model.config)
    vocab = model.get_output_embeddings().weight.shape[0]
    return useful_flops(dims, vocab, [needed_length(e) for e in examples], [scored_targets(e) for e in examples])


def ceiling(model, examples, device) -> dict:
    """The plain-forward ceiling at the eval set's median and longest lengths, scoring its share."""
    lengths = sorted(needed_length(e) for e in examples)
    tokens, scored = sum(lengths), sum(scored_targets(e) for e in examples)
    return plain_forward_ceiling(
        model,
        tokens=16384 if device.type == "cuda" else 4096,
        lengths=[lengths[len(lengths) // 2], lengths[-1]],
        scored_fraction=scored / tokens,
    )


def utilisation(flops: float, seconds: float, limits: dict, plain: dict) -> dict:
    achieved, peak = flops / seconds, limits["matmul_peak_flops_per_s"]
    return {
        "useful_flops": flops,
        "achieved_flops_per_s": achieved,
        "matmul_peak_flops_per_s": peak,
        "fraction_of_peak": round(achieved / peak, 4),
        "plain_forward_fraction_of_peak": round(plain["plain_forward_flops_per_s"] / peak, 4),
        "evaluator_over_plain_forward": round(achieved / plain["plain_forward_flops_per_s"], 3),
    }


def qwen3_8b_bytes(vocab: Vocab, itemsize: int = 2) -> tuple[int, int]:
    """(whole model, one checkpoint's rows) in bytes at Qwen3-8B's sizes with ``vocab``, bf16."""
    q = QWEN3_8B
    norms = q["layers"] * (2 * q["hidden"] + 2 * q["q_dim"] // 32) + q["hidden"]
    params = QWEN3_8B_DIMS.linear_flops_per_token() / 2 + 2 * vocab.total * q["hidden"] + norms
    return int(params * itemsize), 2 * vocab.modality_rows * q["hidden"] * itemsize


def measure_load_and_swap(
    folder, rows_files, sizes, device, dtype, vocab: Vocab, limits: dict
) -> tuple[ResidentModel, dict]:
    """Fresh loads (median of 2 after a warm-up), then row swaps on the resident base
    (median of 6, alternating checkpoints, ending on checkpoint 1); both against what the
    machine's measured bandwidths allow, here and at Qwen3-8B's sizes."""
    load_times, resident = [], None
    for _ in range(3):
        del resident  # never two copies of the base in memory
        if device.type == "cuda":
            torch.cuda.empty_cache()
        seconds, resident = time_fresh_load(folder / "base", rows_files[0], sizes, device, dtype, vocab)
        load_times.append(seconds)
    reads, applies = [], []
    for k in range(6):
        _sync(device)
        start = time.perf_counter()
        rows = read_rows(rows_files[(k + 1) % 2], vocab)
        read_done = time.perf_counter()
        resident.apply(sizes, rows)
        _sync(device)
        reads.append(read_done - start)
        applies.append(time.perf_counter() - read_done)
    load_s = statistics.median(load_times[1:])
    swap_s = statistics.median(r + a for r, a in zip(reads, applies))
    base_bytes = sum(p.numel() * p.element_size() for p in resident.model.parameters())
    rows_bytes = 2 * rows.embed.numel() * next(resident.model.parameters()).element_size()
    bound_s = rows_bytes / limits["copy_bandwidth_bytes_per_s"]
    read_bw = read_bandwidth(next((folder / "base").glob("*.safetensors")))
    model_8b, rows_8b = qwen3_8b_bytes(QWEN_VOCAB)
    load_8b_s = model_8b / read_bw["read_bandwidth_bytes_per_s"]
    swap_8b_s = swap_s * rows_8b / rows_bytes  # the measured time per byte, at 8B's row bytes
    return resident, {
        "swap_to_load_ratio": round(swap_s / load_s, 4),
        "swap_over_bandwidth_bound": round(swap_s / bound_s, 2),
        "swap_s": round(swap_s, 4),
        "swap_bound_s": round(bound_s, 5),
        "swap_read_s": round(statistics.median(reads), 4),
        "swap_apply_s": round(statistics.median(applies), 4),
        "swap_bytes": rows_bytes,
        "load_s": round(load_s, 3),
        "rows_to_model_bytes": round(rows_bytes / base_bytes, 4),
        "qwen3_8b_swap_to_load_ratio": round(swap_8b_s / load_8b_s, 4),
        "qwen3_8b_swap_to_load_ratio_at_bound": round(rows_8b / limits["copy_bandwidth_bytes_per_s"] / load_8b_s, 4),
        "qwen3_8b_rows_to_model_bytes": round(rows_8b / model_8b, 4),
        "qwen3_8b_load_s_at_read_bandwidth": round(load_8b_s, 2),
        "qwen3_8b_swap_s_estimated": round(swap_8b_s, 3),
        "read_bandwidth_bytes_per_s": read_bw["read_bandwidth_bytes_per_s"],
        "load_method": "load = from_pretrained + prepare + read and patch rows + touch every "
        "weight (median of 2 after a warm-up load); swap = read rows file + "
        "ResidentModel.apply (median of 6); swap bound = the rows' bytes in the model's dtype / copy "
        "bandwidth (one copy); Qwen3-8B: load = its bf16 bytes / read bandwidth (a lower bound), swap = "
        "the measured seconds per byte of rows x its rows' bytes (32768 rows x 4096 x 2 matrices, bf16); "
        f"{read_bw['read_bandwidth_method']}",
    }


def compare_losses(examples, fast: dict, naive: dict) -> float:
    """Largest |evaluator - naive| over the naive's examples and their token-weighted loss(all)."""
    scored = [e.example_id for e in examples if naive[e.example_id][1]]
    diffs = [abs(fast[k][0] - naive[k][0]) for k in scored]

    def overall(losses):
        pairs = [losses[e.example_id] for e in examples if losses[e.example_id][1]]
        return sum(loss * c for loss, c in pairs) / sum(c for _, c in pairs)

    return max([*diffs, abs(overall(fast) - overall(naive))])


@torch.no_grad()
def scored_nll_before(hidden, targets, weight, bias=None, *, positions_per_chunk=1024, vocab_block=None):
    """`evaluator.loss.scored_nll` as it was before its log-sum-exp went in place (`torch.logsumexp`
    allocates block-sized temporaries): part of the "before" of `batching_change`."""
    from evaluator.loss import default_vocab_block

    vocab_block = vocab_block or default_vocab_block(weight.shape[1])
    out = torch.empty(len(targets), dtype=torch.float32, device=hidden.device)
    for start in range(0, len(targets), positions_per_chunk):
        h = hidden[start : start + positions_per_chunk].float()
        t = targets[start : start + positions_per_chunk]
        lse = torch.full((len(t),), -math.inf, dtype=torch.float32, device=h.device)
        target_logit = torch.zeros(len(t), dtype=torch.float32, device=h.device)
        for v in range(0, weight.shape[0], vocab_block):
            logits = h @ weight[v : v + vocab_block].float().T
            if bias is not None:
                logits += bias[v : v + vocab_block].float()
            lse = torch.logaddexp(lse, torch.logsumexp(logits, dim=-1))
            local = t - v
            inside = (local >= 0) & (local < logits.shape[1])
            picked = logits.gather(1, local.clamp(0, logits.shape[1] - 1)[:, None])[:, 0]
            target_logit = torch.where(inside, picked, target_logit)
        out[start : start + len(t)] = lse - target_logit
    return out


@torch.no_grad()
def batch_nll_with_padding_mask(model, batch, *, positions_per_chunk=1024, vocab_block=None, inputs=None):
    """`evaluator.loss.batch_nll` as it was before it left out the padding mask of right-padded
    batches (and with the old `scored_nll`): the "before" of `batching_change`."""
    fed = inputs(model, batch) if inputs is not None else {"input_ids": batch.input_ids}
    hidden = model.get_decoder()(**fed, attention_mask=batch.attention_mask, use_cache=False).last_hidden_state
    targets = batch.labels[:, 1:]
    scored = targets != IGNORE_INDEX
    rows = torch.arange(len(batch.indices), device=scored.device)[:, None].expand_as(scored)
    head = model.get_output_embeddings()
    nll = scored_nll_before(
        hidden[:, :-1][scored],
        targets[scored],
        head.weight,
        getattr(head, "bias", None),
        positions_per_chunk=positions_per_chunk,
        vocab_block=vocab_block,
    )
    return nll, rows[scored]


def padded_tokens(examples, budget: int, max_padding: float) -> int:
    """Tokens the decoder processes (padding included) under `evaluate_loss`'s batch plan."""
    lengths = [needed_length(e) for e in examples if scored_targets(e)]
    return sum(padded_cost(lengths, b) for b in plan_batches(lengths, budget, max_padding))


def batching_change(model, examples, device, after_s: float, after: dict, budget: int) -> dict:
    """Before/after of the changes these figures asked for, timed in the same run on the same
    examples (best of 2 before, best of 3 after, alternated). Before: batches filled up to the token budget whatever their padding, the padding
    mask passed to the decoder, `torch.logsumexp` on each logits block. After: a batch closes before
    padding exceeds `MAX_PADDING` of it, right-padded batches go without the mask, the log-sum-exp
    runs in place (see `plan_batches`, `batch_nll`, `scored_nll`)."""
    before_s = math.inf
    for _ in range(2):  # alternated, best of each: other processes' load comes and goes
        start = time.perf_counter()
        report = evaluate_loss(model, examples, batch_fn=batch_nll_with_padding_mask, max_padding=1.0)
        _sync(device)
        before_s = min(before_s, time.perf_counter() - start)
        start = time.perf_counter()
        evaluate_loss(model, examples)
        _sync(device)
        after_s = min(after_s, time.perf_counter() - start)
    before = {e.example_id: (e.loss, e.tokens) for e in report.examples}
    real = sum(needed_length(e) for e in examples if scored_targets(e))
    padded_before, padded_after = padded_tokens(examples, budget, 1.0), padded_tokens(examples, budget, MAX_PADDING)
    return {
        "what": f"batches close before padding exceeds {MAX_PADDING:.0%} of their tokens (they were filled "
        "to the token budget, padding short examples to the longest), and right-padded batches go "
        "to the decoder without the padding mask (causal attention cannot see the padding), and the "
        "logits' log-sum-exp runs in place (no block-sized temporaries)",
        "evaluator_s_before": round(before_s, 3),
        "evaluator_s_after": after_s,
        "speedup": round(before_s / after_s, 3),
        "padding_share_before": round(1 - real / padded_before, 4),
        "padding_share_after": round(1 - real / padded_after, 4),
        "batches_before": report.batches,
        "max_abs_loss_diff": float(f"{compare_losses(examples, after, before):.3g}"),
    }


def longest_batch(model, examples, device) -> dict:
    """A batch budget's worth of copies of the eval set's longest example: no out-of-memory retry."""
    from evaluator.loss import auto_token_budget

    longest = max(examples, key=lambda e: len(e.input_ids))
    n = len(longest.input_ids)
    copies = max(2, min(64, auto_token_budget(model, device, n) // n))
    batch = [Example(f"long{i}", longest.task, longest.input_ids, longest.labels) for i in range(copies)]
    with PeakMemory(device) as mem:
        report = evaluate_loss(model, batch)
    return {
        "longest_sequence": n,
        "longest_batch_examples": copies,
        "longest_batch_oom_retries": report.oom_retries,
        "longest_batch_peak_mb": round(mem.extra_bytes / 2**20, 1),
        "longest_batch_max_tokens_per_batch": report.max_tokens_per_batch,
    }


# ---------------------------------------------------------------------------------------------
# Track A: tower -> connector -> the same LLM


def measure_track_a(
    args, device: torch.device, root: Path, base_dir: Path, hidden: int, limits: dict
) -> tuple[dict, float, float, dict]:
    """Track A's figures on the same random LLM: an image eval set through a SigLIP tower and a
    perceiver connector. The tower runs once (features cached); then connector checkpoints are
    switched (timed: load + apply) and the cached-feature evaluation is timed (decoder, connector
    and output projection: the part a sweep repeats per checkpoint). The tower is counted apart."""
    from benchmarks.track_a_sweep import build_workspace
    from evaluator import tracks
    from evaluator.service import EvalOptions, Evaluator

    ws = build_workspace(
        root,
        checkpoints=3,
        images=args.images,
        image_size=args.image_size,
        tower_hidden=args.tower_hidden,
        tower_layers=args.tower_layers,
        llm_dir=base_dir,
        llm_hidden=hidden,
        n_queries=args.image_tokens,
        answer_len=args.answer_len,
    )
    try:
        ev = Evaluator(ws.reg, ws.settings("home", 2 << 30))
        options = EvalOptions(device=str(device), force=True, write_eval_json=False, log_to_mlflow=False)
        log("Track A: loading the LLM and the tower, filling the feature cache ...")
        ev.compute(ws.cks[0], ws.es, options)
        track = tracks.get(ws.cks[0].track)
        swaps = []
        for k in range(6):
            ck = ws.cks[1 + k % 2]
            _sync(device)
            start = time.perf_counter()
            applied = track.apply(ev, ck, track.load(ev, ck), device, options)
            _sync(device)
            swaps.append(time.perf_counter() - start)
        ctx = applied.context
        fed = track.inputs(ev, applied, ws.es, None)
        log("Track A: evaluations with cached features ...")
        seconds = min(ev.compute(ws.cks[1 + k], ws.es, options).report.seconds for k in range(2))
        model = applied.model
        feature = next(iter(ev.features_memory.values()))[None].to(device, torch.float32)
        connector_flops = counted_flops(lambda: ctx.connector(feature)) * len(fed.examples)
        images = list({e.image_sha256: e.image for e in ev.examples_cache[(ws.es.content_hash, "images")][1]}.values())
        tower_flops = counted_flops(lambda: ctx.tower.features(images[:1], ctx.settings)) * len(images)
        _sync(device)
        start = time.perf_counter()
        ctx.tower.features(images, ctx.settings)
        _sync(device)
        tower_s = time.perf_counter() - start
        flops = evaluation_flops(model, fed.examples)
        plain = ceiling(model, fed.examples, device)
        swap_s = statistics.median(swaps)
        connector_bytes = sum(p.numel() * p.element_size() for p in ctx.connector.parameters())
        bound_s = connector_bytes / limits["copy_bandwidth_bytes_per_s"]
        tokens, scored = count_tokens(fed.examples)
        return (
            {
                "swap_over_bandwidth_bound": round(swap_s / bound_s, 1),
                "swap_s": round(swap_s, 4),
                "swap_bound_s": round(bound_s, 6),
                "swap_bytes": connector_bytes,
                "swap_method": "connector switch = track.load (torch.load weights_only, hash check) + track.apply "
                "(builder, strict load, width probe, to device), median of 6; bound = connector "
                "weights' bytes / copy bandwidth",
                "eval_s": round(seconds, 4),
                "tokens_per_s": round(tokens / seconds, 1),
                "useful_flops_split": {
                    **{k: v for k, v in flops.items() if k != "total"},
                    "connector": connector_flops,
                },
                "tower_flops": tower_flops,
                "tower_s": round(tower_s, 4),
                "tower_flops_per_s": tower_flops / tower_s,
                "plain_forward_best": plain["plain_forward_best"],
                "examples": len(fed.examples),
                "tokens": tokens,
                "scored": scored,
                "images": len(images),
                "image_tokens": args.image_tokens,
                "tower": {"hidden": args.tower_hidden, "layers": args.tower_layers, "image_size": args.image_size},
            },
            flops["total"] + connector_flops,
            seconds,
            plain,
        )
    finally:
        ws.reg.close()


# ---------------------------------------------------------------------------------------------


TRACK_A_DEFAULTS = {None: (64, 96, 192, 6, 64, 16), "tiny": (6, 32, 32, 1, 8, 4)}
"""images, image size, tower hidden, tower layers, image tokens, answer tokens."""


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda[:N]")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default=None, help="; ".join(f"{k}: {v}" for k, v in PRESETS.items())
    )
    parser.add_argument(
        "--examples",
        type=int,
        default=None,
        help="eval examples (lengths spread log-uniformly); default 256 (96 with 8b-split)",
    )
    parser.add_argument(
        "--naive-examples", type=int, default=None,
        help="examples the naive loop runs (the first N, random order); default all on CUDA, "
        "48 on CPU (32 with 8b-split), where full [tokens, 184704] logits make it take ~10 s per batch",
    )  # fmt: skip
    parser.add_argument("--layers", type=int, default=None, help="default 2 (36 with qwen3-8b, 8 with 8b-split)")
    parser.add_argument("--hidden", type=int, default=None, help="hidden size of the random Qwen3 (default 256)")
    parser.add_argument("--min-len", type=int, default=None, help="shortest example, tokens (default 32)")
    parser.add_argument("--max-len", type=int, default=None, help="longest example, tokens (default 1024)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for weights and data")
    parser.add_argument("--no-track-a", dest="track_a", action="store_false", help="skip the Track A figures")
    parser.add_argument("--images", type=int, default=None, help="Track A: images in the eval set (default 64)")
    parser.add_argument("--image-size", type=int, default=None, help="Track A: image side in pixels (default 96)")
    parser.add_argument("--tower-hidden", type=int, default=None, help="Track A: tower hidden size (default 192)")
    parser.add_argument("--tower-layers", type=int, default=None, help="Track A: tower layers (default 6)")
    parser.add_argument("--image-tokens", type=int, default=None, help="Track A: connector output tokens (default 64)")
    parser.add_argument("--answer-len", type=int, default=None, help="Track A: scored answer tokens (default 16)")
    parser.add_argument(
        "--check-longest",
        action="store_true",
        help="also run a full batch of the longest example (no out-of-memory retry expected)",
    )
    parser.add_argument(
        "--fp32-model-examples",
        type=int,
        default=0,
        help="bf16 only: compare this many examples against the evaluator on a float32 copy",
    )
    parser.add_argument("--json-out", type=Path, default=None, help="also write the JSON object to this file")
    args = parser.parse_args(argv)
    tiny = args.preset == "tiny"
    for name, default, small in (("min_len", 32, 16), ("max_len", 1024, 96)):
        if getattr(args, name) is None:
            setattr(args, name, small if tiny else default)
    if args.examples is None:  # 8b-split: ~60 MFLOP a token, fewer examples keep it to minutes on 2 cores
        args.examples = {"tiny": 8, "8b-split": 96}.get(args.preset, 256)
    if args.naive_examples is None and args.preset == "8b-split":
        args.naive_examples = 32
    names = ("images", "image_size", "tower_hidden", "tower_layers", "image_tokens", "answer_len")
    for name, default in zip(names, TRACK_A_DEFAULTS["tiny" if tiny else None]):
        if getattr(args, name) is None:
            setattr(args, name, default)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    shape = shape_from_args(args)
    vocab = shape.vocab
    sizes = TokenSpaceSizes(vocab.text_rows, vocab.total, vocab.pad_id)
    examples = make_eval_set(args.examples, args.min_len, args.max_len, args.seed, vocab)
    n_naive = args.naive_examples or (len(examples) if device.type == "cuda" else 48)
    subset = examples[:n_naive]
    n_tokens, n_scored = count_tokens(examples)
    sub_tokens, sub_scored = count_tokens(subset)
    log(
        f"device={device} threads={torch.get_num_threads()} {shape} examples={len(examples)} "
        f"tokens={n_tokens} scored={n_scored} ({100 * n_scored / n_tokens:.1f}%); "
        f"naive loop on the first {len(subset)} ({sub_tokens} tokens)"
    )
    log("measuring the matmul peak and the copy bandwidth ...")
    limits = machine_limits(device, shape.dtype)
    log(
        f"  matmul {limits['matmul_peak_flops_per_s'] / 1e9:.1f} GFLOP/s, "
        f"copy {limits['copy_bandwidth_bytes_per_s'] / 1e9:.2f} GB/s"
    )

    with tempfile.TemporaryDirectory(prefix="evalboard-bench-") as tmp:
        folder = Path(tmp)
        log("building the random base model and two checkpoints' rows ...")
        build_base(shape, device, folder / "base", args.seed)
        rows_files = [write_rows(folder, shape.hidden, args.seed + k, vocab) for k in (1, 2)]
        log("timing fresh loads and row swaps ...")
        resident, swap = measure_load_and_swap(folder, rows_files, sizes, device, shape.dtype, vocab, limits)
        model = resident.model
        log(
            f"  load {swap['load_s']:.3f}s, swap {swap['swap_s']:.4f}s ({swap['swap_over_bandwidth_bound']}x its bound)"
        )

        warm = examples[:2]  # first-call costs (thread pools, kernels) out of both timings
        evaluate_loss(model, warm)
        run_naive(model, warm, device, pad_id=vocab.pad_id)

        log("evaluator, all examples ...")
        with PeakMemory(device) as fast_mem:
            fast, fast_s, report = run_evaluator(model, examples, device)
        log(f"  {fast_s:.1f}s, {report.batches} batches, loss(all)={report.loss():.4f}")
        flops = evaluation_flops(model, examples)
        log("evaluator as it was before (batches filled to the budget, padding mask), all examples ...")
        change = batching_change(model, examples, device, fast_s, fast, report.max_tokens_per_batch)
        fast_s = change["evaluator_s_after"]  # the best of three runs, as the plain forward's best
        log(f"  {change['evaluator_s_before']:.1f}s (after: {fast_s:.1f}s)")
        log(f"evaluator, the naive loop's {len(subset)} examples ...")
        _, fast_sub_s, _ = run_evaluator(model, subset, device)
        log(f"  {fast_sub_s:.1f}s")
        log("naive loop ...")
        with PeakMemory(device) as naive_mem:
            naive, naive_s = run_naive(model, subset, device, pad_id=vocab.pad_id)
        log(f"  {naive_s:.1f}s")
        exact = naive
        if shape.dtype != torch.float32:
            log("float32-logit reference for the naive loop's examples (untimed) ...")
            exact = fp32_logit_reference(model, subset)
        log("plain forward on packed batches (the ceiling) ...")
        plain = ceiling(model, examples, device)
        naive_flops = useful_flops(
            shape.dims, vocab.total, [needed_length(e) for e in subset], [scored_targets(e) for e in subset]
        )["total"]
        log(
            f"  evaluator {flops['total'] / fast_s / 1e9:.1f} GFLOP/s, plain forward "
            f"{plain['plain_forward_flops_per_s'] / 1e9:.1f} GFLOP/s"
        )
        extra = longest_batch(model, examples, device) if args.check_longest else {}
        if args.fp32_model_examples and shape.dtype != torch.float32:
            log("evaluator on a float32 copy of the model (untimed) ...")
            extra.update(fp32_model_reference(model, examples[: args.fp32_model_examples], fast))
        del model, resident
        if device.type == "cuda":
            torch.cuda.empty_cache()
        track_a = (
            measure_track_a(args, device, folder / "trackA", folder / "base", shape.hidden, limits)
            if args.track_a
            else None
        )

    # Other processes share this machine: the peak is measured again at the end, and the higher one kept.
    limits["matmul_peak_flops_per_s_at_start"] = limits["matmul_peak_flops_per_s"]
    limits["matmul_peak_flops_per_s_at_end"] = matmul_peak(device, shape.dtype)["matmul_peak_flops_per_s"]
    limits["matmul_peak_flops_per_s"] = max(
        limits["matmul_peak_flops_per_s_at_start"], limits["matmul_peak_flops_per_s_at_end"]
    )
    peak = limits["matmul_peak_flops_per_s"]
    track_b = utilisation(flops["total"], fast_s, limits, plain)
    change["fraction_of_peak_before"] = round(flops["total"] / change["evaluator_s_before"] / peak, 4)
    change["fraction_of_peak_after"] = round(flops["total"] / fast_s / peak, 4)
    change["evaluator_s_after"] = round(fast_s, 3)
    if track_a is not None:
        figures_a, flops_a, seconds_a, plain_a = track_a
        track_a = {
            **utilisation(flops_a, seconds_a, limits, plain_a),
            **figures_a,
            "tower_fraction_of_peak": round(figures_a["tower_flops_per_s"] / peak, 4),
        }

    result = {
        "tokens_per_s_ratio": round(naive_s / fast_sub_s, 2),  # same examples, same tokens
        "peak_mem_ratio": round(fast_mem.extra_bytes / max(naive_mem.extra_bytes, 1), 4),
        "max_abs_loss_diff": float(f"{compare_losses(subset, fast, naive):.3g}"),
        "loss_reference": "the naive loop's labels= losses (per example and token-weighted all)",
        "swap_to_load_ratio": swap.pop("swap_to_load_ratio"),
        **{k: track_b[k] for k in ("useful_flops", "achieved_flops_per_s", "matmul_peak_flops_per_s",
                                   "fraction_of_peak", "plain_forward_fraction_of_peak")},
        "swap_over_bandwidth_bound": swap.pop("swap_over_bandwidth_bound"),
        "evaluator_over_plain_forward": track_b["evaluator_over_plain_forward"],
        "change": change,
        "naive_fraction_of_peak": round(naive_flops / naive_s / limits["matmul_peak_flops_per_s"], 4),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda"
        else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)",
        "mem_method": fast_mem.method,
        **({} if exact is naive else {
            "max_abs_loss_diff_vs_fp32_logits_unbatched": float(f"{compare_losses(subset, fast, exact):.3g}"),
            "bf16_note": "in bf16 the decoder's hidden states depend on the batch shape at the "
            "~1e-3 level (bf16 rounding), so no batched loop reproduces unbatched losses to 1e-4",
        }),
        "tokens_per_s_evaluator": round(sub_tokens / fast_sub_s, 1),
        "tokens_per_s_naive": round(sub_tokens / naive_s, 1),
        "tokens_per_s_evaluator_all_examples": round(n_tokens / fast_s, 1),
        "peak_mb_evaluator": round(fast_mem.extra_bytes / 2**20, 1),
        "peak_mb_naive": round(naive_mem.extra_bytes / 2**20, 1),
        **swap,
        "useful_flops_split": {k: v for k, v in flops.items() if k != "total"},
        "decoder_flop_share_per_token": round(shape.dims.decoder_share(vocab.total), 4),
        "qwen3_8b_decoder_flop_share_per_token": round(QWEN3_8B_DIMS.decoder_share(QWEN_VOCAB.total), 4),
        "qwen3_8b_text_only_decoder_flop_share_per_token": round(QWEN3_8B_DIMS.decoder_share(QWEN_VOCAB.text_rows), 4),
        "plain_forward_best": plain["plain_forward_best"],
        "plain_forward_tried": [{k: v for k, v in t.items() if k != "seconds"} for t in plain["plain_forward_tried"]],
        "limits": {k: v for k, v in limits.items() if k != "matmul_peak_flops_per_s"},
        "flops_method": "useful FLOPs: decoder matmuls (2 x weights) for every real token up to its last "
        "scored label + causal attention (QK^T, AV) + output projection at scored positions only; "
        "Track A adds the connector (torch flop counter); the tower is counted apart",
        "n_examples": len(examples),
        "n_tokens": n_tokens,
        "n_scored": n_scored,
        "n_examples_naive": len(subset),
        "n_tokens_naive": sub_tokens,
        "n_scored_naive": sub_scored,
        "loss_all": round(report.loss(), 6),
        "evaluator_batches": report.batches,
        "oom_retries": report.oom_retries,
        "max_tokens_per_batch": report.max_tokens_per_batch,
        **extra,
        "model": {"preset": args.preset, "hidden": shape.hidden, "layers": shape.layers,
                  "vocab": vocab.total, "text_rows": vocab.text_rows, "modality_rows": vocab.modality_rows,
                  "dtype": str(shape.dtype).removeprefix("torch.")},
        **({"track_a": track_a} if track_a is not None else {}),
    }  # fmt: skip
    if device.type == "cuda":
        _, peak = gpu_peak_flops(device)
        result["mfu_flops_def"] = "useful FLOPs (flops_method) / time / the card's dense bf16 peak"
        result["mfu_evaluator"] = round(track_b["achieved_flops_per_s"] / peak, 4) if peak else None
        result["mfu_naive"] = (
            round(result["naive_fraction_of_peak"] * track_b["matmul_peak_flops_per_s"] / peak, 4) if peak else None
        )
        result["gpu_peak_flops"] = peak
    line = json.dumps(result)
    if args.json_out:
        args.json_out.write_text(line + "\n")
    print(line)
    return result


if __name__ == "__main__":
    main()
