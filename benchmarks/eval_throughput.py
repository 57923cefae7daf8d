"""Evaluator vs a naive loss loop: throughput, peak memory, exactness, and row swap vs base load.

Builds, in a temporary folder, a random Qwen3 with a realistic vocabulary (151,936 text rows +
32,768 modality rows), two "trainable rows" checkpoints and an eval set whose scored text is a
small minority at the end of each sequence (as in a2t / i2t data). Then, on one resident base:

- evaluator: `evaluator.loss.evaluate_loss` (length-bucketed batches, hidden states of the scored
  positions only, chunked float32 cross-entropy);
- naive: padded batches of 4 examples in input order, `model(input_ids, attention_mask,
  labels=)` with full logits, per-example losses from those logits.

Progress goes to stderr; the last stdout line is one JSON object (targets: tokens_per_s_ratio
>= 3, peak_mem_ratio <= 0.25, max_abs_loss_diff <= 1e-4, swap_to_load_ratio <= 0.05).

    python benchmarks/eval_throughput.py                    # CPU, tiny model, ~3-5 minutes
    python benchmarks/eval_throughput.py --preset qwen3-8b  # GPU: Qwen3-8B shape, bf16, MFU
"""

from __future__ import annotations

import _bench_path  # noqa: F401  (first: see benchmarks/_bench_path.py)

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

from evaluator.base_model import load_base
from evaluator.batching import IGNORE_INDEX, Example
from evaluator.loss import evaluate_loss
from evaluator.rows import ResidentModel, RowTensors, TokenSpaceSizes

TEXT_VOCAB = 151_936  # Qwen3's embedding rows
TEXT_TOKENS = 151_643  # ids the Qwen3 tokenizer actually emits
MODALITY_ROWS = 32_768  # audio [T, T+16384), image [T+16384, T+32768)
PAD_ID = 151_643  # Qwen's <|endoftext|>
DENSE_BF16_PEAK = {"H100": 989e12, "H200": 989e12, "H100 PCIe": 756e12, "A100": 312e12}


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

    def config(self):
        from transformers import Qwen3Config

        return Qwen3Config(
            vocab_size=TEXT_VOCAB,
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            head_dim=self.head_dim,
            max_position_embeddings=4096,
            tie_word_embeddings=False,
        )


def shape_from_args(args) -> Shape:
    if args.preset == "qwen3-8b":
        return Shape(4096, args.layers or 36, 32, 8, 128, 12288, torch.bfloat16)
    hidden = args.hidden
    return Shape(hidden, args.layers or 2, max(1, hidden // 64), max(1, hidden // 128), 64, 3 * hidden, torch.float32)


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


def write_rows(folder: Path, hidden: int, seed: int) -> Path:
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    rows = {
        "embed_tokens": torch.randn(MODALITY_ROWS, hidden, generator=g) * 0.02,
        "lm_head": torch.randn(MODALITY_ROWS, hidden, generator=g) * 0.02,
    }
    path = folder / f"rows_{seed}.safetensors"
    save_file(rows, path)
    return path


def read_rows(path: Path) -> RowTensors:
    from safetensors.torch import load_file

    data = load_file(path)
    return RowTensors(data["embed_tokens"], data["lm_head"], TEXT_VOCAB, TEXT_VOCAB + MODALITY_ROWS, str(path))


def make_eval_set(n: int, min_len: int, max_len: int, seed: int) -> list[Example]:
    """Log-uniform lengths in [min_len, max_len] (many short, some long, as in real eval sets);
    a modality prompt, then 5-15% text tokens at the end which are the scored labels."""
    rng = random.Random(seed)
    half = MODALITY_ROWS // 2
    examples = []
    for i in range(n):
        length = int(round(math.exp(rng.uniform(math.log(min_len), math.log(max_len)))))
        scored = max(1, int(length * rng.uniform(0.05, 0.15)))
        task = ("a2t", "i2t")[i % 2]
        lo = TEXT_VOCAB + (0 if task == "a2t" else half)
        prompt = [rng.randrange(lo, lo + half) for _ in range(length - scored)]
        answer = [rng.randrange(0, TEXT_TOKENS) for _ in range(scored)]
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


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
def run_naive(model, examples, device, batch_size: int = 4):
    """The loop people write first: fixed-size batches in input order, full logits."""
    losses = {}
    show = progress_printer("naive")
    total, done = sum(len(e.input_ids) for e in examples), 0
    start = time.perf_counter()
    for b in range(0, len(examples), batch_size):
        batch = examples[b : b + batch_size]
        longest = max(len(e.input_ids) for e in batch)
        ids = torch.full((len(batch), longest), PAD_ID, dtype=torch.long)
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


def time_fresh_load(base_dir, rows_file, sizes, device, dtype) -> tuple[float, ResidentModel]:
    """Seconds from nothing to a ready model: load the base, prepare, read and patch the rows.

    Every weight is touched at the end: safetensors maps files lazily, and a worker pays for
    the reads on its first forward pass anyway.
    """
    _sync(device)
    start = time.perf_counter()
    resident = ResidentModel(load_base(base_dir, device, dtype))
    resident.apply(sizes, read_rows(rows_file))
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


# ---------------------------------------------------------------------------------------------
# FLOPs (GPU runs)


def loss_flops(shape: Shape, examples) -> float:
    """FLOPs the loss needs: 2 x matmul params per token for the trunk, causal attention scores
    and values, and lm_head for the scored positions only (the same figure for both loops)."""
    q_dim, kv_dim = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    per_layer = shape.hidden * (2 * q_dim + 2 * kv_dim) + 3 * shape.hidden * shape.intermediate
    total = 0.0
    for e in examples:
        n = len(e.input_ids)
        scored = sum(1 for label in e.labels[1:] if label != IGNORE_INDEX)
        total += 2 * per_layer * shape.layers * n
        total += 2 * 2 * shape.layers * q_dim * n * (n + 1) / 2  # QK^T and AV, causal
        total += 2 * shape.hidden * (TEXT_VOCAB + MODALITY_ROWS) * scored
    return total


def gpu_peak_flops(device: torch.device) -> tuple[str, float | None]:
    name = torch.cuda.get_device_name(device)
    for key in ("H100 PCIe", "H200", "H100", "A100"):
        if key in name:
            return name, DENSE_BF16_PEAK[key]
    return name, None


# ---------------------------------------------------------------------------------------------


def count_tokens(examples) -> tuple[int, int]:
    tokens = sum(len(e.input_ids) for e in examples)
    scored = sum(1 for e in examples for label in e.labels[1:] if label != IGNORE_INDEX)
    return tokens, scored


def measure_load_and_swap(folder, rows_files, sizes, device, dtype) -> tuple[ResidentModel, dict]:
    """Fresh loads (median of 2 after a warm-up), then row swaps on the resident base
    (median of 6, alternating checkpoints, ending on checkpoint 1)."""
    load_times, resident = [], None
    for _ in range(3):
        del resident  # never two copies of the base in memory
        if device.type == "cuda":
            torch.cuda.empty_cache()
        seconds, resident = time_fresh_load(folder / "base", rows_files[0], sizes, device, dtype)
        load_times.append(seconds)
    reads, applies = [], []
    for k in range(6):
        _sync(device)
        start = time.perf_counter()
        rows = read_rows(rows_files[(k + 1) % 2])
        read_done = time.perf_counter()
        resident.apply(sizes, rows)
        _sync(device)
        reads.append(read_done - start)
        applies.append(time.perf_counter() - read_done)
    load_s = statistics.median(load_times[1:])
    swap_s = statistics.median(r + a for r, a in zip(reads, applies))
    base_bytes = sum(p.numel() * p.element_size() for p in resident.model.parameters())
    rows_bytes = 2 * rows.embed.numel() * next(resident.model.parameters()).element_size()
    return resident, {
        "swap_to_load_ratio": round(swap_s / load_s, 4),
        "swap_s": round(swap_s, 4),
        "swap_read_s": round(statistics.median(reads), 4),
        "swap_apply_s": round(statistics.median(applies), 4),
        "load_s": round(load_s, 3),
        "rows_to_model_bytes": round(rows_bytes / base_bytes, 4),
        "load_method": "load = from_pretrained + prepare + read and patch rows + touch every "
        "weight (median of 2 after a warm-up load); swap = read rows file + "
        "ResidentModel.apply (median of 6)",
    }


def compare_losses(examples, fast: dict, naive: dict) -> float:
    """Largest |evaluator - naive| over the naive's examples and their token-weighted loss(all)."""
    scored = [e.example_id for e in examples if naive[e.example_id][1]]
    diffs = [abs(fast[k][0] - naive[k][0]) for k in scored]

    def overall(losses):
        pairs = [losses[e.example_id] for e in examples if losses[e.example_id][1]]
        return sum(loss * c for loss, c in pairs) / sum(c for _, c in pairs)

    return max([*diffs, abs(overall(fast) - overall(naive))])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda[:N]")
    parser.add_argument("--examples", type=int, default=256, help="eval examples (lengths spread log-uniformly)")
    parser.add_argument(
        "--naive-examples", type=int, default=None,
        help="examples the naive loop runs (the first N, random order); default all on CUDA, "
        "48 on CPU, where full [tokens, 184704] logits make it take ~10 s per batch",
    )  # fmt: skip
    parser.add_argument("--layers", type=int, default=None, help="default 2 (36 with the preset)")
    parser.add_argument("--hidden", type=int, default=256, help="hidden size of the random Qwen3")
    parser.add_argument("--min-len", type=int, default=32, help="shortest example, tokens")
    parser.add_argument("--max-len", type=int, default=1024, help="longest example, tokens")
    parser.add_argument(
        "--preset", choices=["qwen3-8b"], default=None, help="qwen3-8b: the 8B shape in bf16 (GPU), reports MFU"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed for weights and data")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the JSON object to this file")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    shape = shape_from_args(args)
    sizes = TokenSpaceSizes(TEXT_VOCAB, TEXT_VOCAB + MODALITY_ROWS, PAD_ID)
    examples = make_eval_set(args.examples, args.min_len, args.max_len, args.seed)
    n_naive = args.naive_examples or (len(examples) if device.type == "cuda" else 48)
    subset = examples[:n_naive]
    n_tokens, n_scored = count_tokens(examples)
    sub_tokens, sub_scored = count_tokens(subset)
    log(
        f"device={device} threads={torch.get_num_threads()} {shape} examples={len(examples)} "
        f"tokens={n_tokens} scored={n_scored} ({100 * n_scored / n_tokens:.1f}%); "
        f"naive loop on the first {len(subset)} ({sub_tokens} tokens)"
    )

    with tempfile.TemporaryDirectory(prefix="evalboard-bench-") as tmp:
        folder = Path(tmp)
        log("building the random base model and two checkpoints' rows ...")
        build_base(shape, device, folder / "base", args.seed)
        rows_files = [write_rows(folder, shape.hidden, args.seed + k) for k in (1, 2)]
        log("timing fresh loads and row swaps ...")
        resident, swap = measure_load_and_swap(folder, rows_files, sizes, device, shape.dtype)
    model = resident.model
    log(f"  load {swap['load_s']:.3f}s, swap {swap['swap_s']:.4f}s")

    warm = examples[:2]  # first-call costs (thread pools, kernels) out of both timings
    evaluate_loss(model, warm)
    run_naive(model, warm, device)

    log("evaluator, all examples ...")
    with PeakMemory(device) as fast_mem:
        fast, fast_s, report = run_evaluator(model, examples, device)
    log(f"  {fast_s:.1f}s, {report.batches} batches, loss(all)={report.loss():.4f}")
    log(f"evaluator, the naive loop's {len(subset)} examples ...")
    _, fast_sub_s, _ = run_evaluator(model, subset, device)
    log(f"  {fast_sub_s:.1f}s")
    log("naive loop ...")
    with PeakMemory(device) as naive_mem:
        naive, naive_s = run_naive(model, subset, device)
    log(f"  {naive_s:.1f}s")
    exact = naive
    if shape.dtype != torch.float32:
        log("float32-logit reference for the naive loop's examples (untimed) ...")
        exact = fp32_logit_reference(model, subset)

    result = {
        "tokens_per_s_ratio": round(naive_s / fast_sub_s, 2),  # same examples, same tokens
        "peak_mem_ratio": round(fast_mem.extra_bytes / max(naive_mem.extra_bytes, 1), 4),
        "max_abs_loss_diff": float(f"{compare_losses(subset, fast, naive):.3g}"),
        "loss_reference": "the naive loop's labels= losses (per example and token-weighted all)",
        "swap_to_load_ratio": swap.pop("swap_to_load_ratio"),
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
        "n_examples": len(examples),
        "n_tokens": n_tokens,
        "n_scored": n_scored,
        "n_examples_naive": len(subset),
        "n_tokens_naive": sub_tokens,
        "n_scored_naive": sub_scored,
        "loss_all": round(report.loss(), 6),
        "evaluator_batches": report.batches,
        "max_tokens_per_batch": report.max_tokens_per_batch,
        "model": {"preset": args.preset, "hidden": shape.hidden, "layers": shape.layers,
                  "vocab": TEXT_VOCAB + MODALITY_ROWS, "dtype": str(shape.dtype).removeprefix("torch.")},
    }  # fmt: skip
    if device.type == "cuda":
        _, peak = gpu_peak_flops(device)
        flops = loss_flops(shape, examples)
        result["mfu_flops_def"] = "trunk 2*params*tokens + causal attention + lm_head on scored positions"
        result["mfu_evaluator"] = round(flops / fast_s / peak, 4) if peak else None
        result["mfu_naive"] = round(loss_flops(shape, subset) / naive_s / peak, 4) if peak else None
        result["gpu_peak_flops"] = peak
    line = json.dumps(result)
    if args.json_out:
        args.json_out.write_text(line + "\n")
    print(line)
    return result


if __name__ == "__main__":
    main()
