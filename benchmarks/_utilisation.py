"""How close an evaluation comes to the machine: useful FLOPs, measured limits, a plain-forward ceiling.

Shared by `benchmarks/eval_throughput.py` and `benchmarks/gpu_check.py` (import it as
``benchmarks._utilisation`` after ``_bench_path``).

Useful FLOPs are what any correct implementation must compute, nothing more:

- decoder: ``2 x`` the matmul weights of every layer (q, k, v, o, gate, up, down) for every real
  token, plus causal attention (``QK^T`` and ``AV``: ``2 x 2 x layers x heads*head_dim x n(n+1)/2``
  for an example of ``n`` tokens). Padding is not useful, and neither are tokens after an
  example's last scored label (they cannot change its predictions);
- output projection: ``2 x hidden x vocab`` at scored positions only (unscored logits are waste);
- Track A, counted apart: the connector once per example per checkpoint, the vision tower once per
  image (counted with `torch.utils.flop_counter`, whatever their architecture).

Limits are measured in the same run, on the same device and dtype: a large ``torch.mm`` (the
matmul peak), a large tensor copy (memory bandwidth) and a file read (what a load can reach).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

QWEN3_8B = dict(hidden=4096, layers=36, q_dim=32 * 128, kv_dim=8 * 128, intermediate=12288, text_vocab=151_936)
"""Qwen3-8B's decoder dimensions (config.json of Qwen/Qwen3-8B-Base)."""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# Useful FLOPs


@dataclass(frozen=True)
class DecoderDims:
    hidden: int
    layers: int
    q_dim: int
    """heads x head_dim"""
    kv_dim: int
    """key/value heads x head_dim"""
    intermediate: int

    @classmethod
    def from_config(cls, config) -> DecoderDims:
        config = config.get_text_config() if hasattr(config, "get_text_config") else config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        return cls(
            config.hidden_size,
            config.num_hidden_layers,
            config.num_attention_heads * head_dim,
            kv_heads * head_dim,
            config.intermediate_size,
        )

    def linear_flops_per_token(self) -> float:
        """Matmul FLOPs of the decoder's linear layers for one token (no attention scores)."""
        attn = self.hidden * (2 * self.q_dim + 2 * self.kv_dim)  # q, o and k, v
        mlp = 3 * self.hidden * self.intermediate  # gate, up, down
        return 2.0 * self.layers * (attn + mlp)

    def attention_flops(self, n: int) -> float:
        """``QK^T`` and ``AV`` of one causal sequence of ``n`` tokens (only the lower triangle)."""
        return 2.0 * 2 * self.layers * self.q_dim * n * (n + 1) / 2

    def output_flops_per_position(self, vocab: int) -> float:
        return 2.0 * self.hidden * vocab

    def decoder_share(self, vocab: int) -> float:
        """Share of one token's forward FLOPs spent in the decoder (linear layers) rather than in a
        ``vocab``-row output projection, when every position is projected (a plain LM forward)."""
        d = self.linear_flops_per_token()
        return d / (d + self.output_flops_per_position(vocab))


QWEN3_8B_DIMS = DecoderDims(
    QWEN3_8B["hidden"], QWEN3_8B["layers"], QWEN3_8B["q_dim"], QWEN3_8B["kv_dim"], QWEN3_8B["intermediate"]
)


def useful_flops(dims: DecoderDims, vocab: int, lengths: Sequence[int], scored: Sequence[int]) -> dict[str, float]:
    """Useful FLOPs of evaluating sequences of ``lengths`` real tokens with ``scored`` scored labels."""
    decoder = sum(dims.linear_flops_per_token() * n for n in lengths)
    attention = sum(dims.attention_flops(n) for n in lengths)
    output = dims.output_flops_per_position(vocab) * sum(scored)
    return {
        "decoder_linear": decoder,
        "attention": attention,
        "output_projection": output,
        "total": decoder + attention + output,
    }


def counted_flops(fn: Callable[[], object]) -> float:
    """FLOPs of the matmuls, convolutions and attention ``fn()`` runs (torch's own flop counter).

    Attention runs on SDPA's math backend while counting: the counter does not know every fused
    CPU kernel, and the math backend's matmuls it counts (full ``n x n`` scores, masked or not)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


# ---------------------------------------------------------------------------------------------
# The machine's limits, measured


def best_seconds(fn: Callable[[], object], device: torch.device, repeats: int, min_s: float = 0.0) -> float:
    """Fastest of ``repeats`` timed calls (after one untimed call); keeps going until ``min_s`` has
    passed, so a fast call is timed enough times to see through noise from other processes."""
    fn()
    sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_s:
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


@torch.no_grad()
def matmul_peak(device: torch.device, dtype: torch.dtype, n: int | None = None, repeats: int = 5) -> dict:
    """FLOP/s of a large square ``torch.mm`` in ``dtype``: the peak this machine reaches in practice."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    seconds = best_seconds(lambda: torch.mm(a, b, out=out), device, repeats, min_s=2.0)
    return {
        "matmul_peak_flops_per_s": 2.0 * n**3 / seconds,
        "matmul_peak_method": f"best of >= {repeats} torch.mm of two {n}x{n} {str(dtype).removeprefix('torch.')} "
        f"matrices on {device.type}, 2n^3 FLOPs",
    }


@torch.no_grad()
def copy_bandwidth(device: torch.device, nbytes: int | None = None, repeats: int = 5) -> dict:
    """Bytes per second of a large tensor copy (``dst.copy_(src)``; each byte is read once and written once)."""
    nbytes = nbytes or (2 << 30 if device.type == "cuda" else 256 << 20)
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    seconds = best_seconds(lambda: dst.copy_(src), device, repeats, min_s=0.5)
    return {
        "copy_bandwidth_bytes_per_s": nbytes / seconds,
        "copy_bandwidth_method": f"best of >= {repeats} copies of a {nbytes >> 20} MiB tensor on {device.type} "
        "(bytes copied / s)",
    }


def read_bandwidth(path: Path, repeats: int = 3) -> dict:
    """Bytes per second reading ``path`` into memory (a model file just written, so from the page
    cache: the fastest a load can read, which makes a swap/load ratio computed with it conservative)."""
    size = path.stat().st_size
    buf = bytearray(size)
    view = memoryview(buf)

    def read() -> None:
        with open(path, "rb", buffering=0) as f:
            got = 0
            while got < size:
                n = f.readinto(view[got:])
                if not n:
                    break
                got += n

    seconds = best_seconds(read, torch.device("cpu"), repeats)
    return {
        "read_bandwidth_bytes_per_s": size / seconds,
        "read_bandwidth_method": f"best of {repeats} reads of {path.name} ({size >> 20} MiB, page cache) "
        "into a preallocated buffer",
    }


def machine_limits(device: torch.device, dtype: torch.dtype) -> dict:
    return {
        **matmul_peak(device, dtype),
        **copy_bandwidth(device),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }


# ---------------------------------------------------------------------------------------------
# The practical ceiling: a plain forward of the same model on one packed batch


@torch.no_grad()
def plain_forward_ceiling(
    model: torch.nn.Module,
    *,
    tokens: int,
    lengths: Sequence[int],
    scored_fraction: float,
    vocab_rows: int | None = None,
    repeats: int = 2,
) -> dict:
    """The best useful FLOP/s of a plain PyTorch forward of ``model`` on one packed batch.

    A packed batch has no padding: ``tokens // L`` rows of ``L`` random ids, no attention mask.
    The decoder runs on all of them, then the output projection on the last ``scored_fraction`` of
    each row (the share of positions the eval set scores), as one matmul. Tried for each ``L`` in
    ``lengths`` and each attention implementation the model offers (sdpa, eager); the fastest
    useful FLOP/s (same accounting as the evaluator's) is the ceiling.
    """
    device = next(model.parameters()).device
    dims = DecoderDims.from_config(model.config)
    head = model.get_output_embeddings().weight
    vocab = vocab_rows or head.shape[0]
    decoder = model.get_decoder()
    original = getattr(model.config, "_attn_implementation", None)
    implementations = [original] + [i for i in ("sdpa", "eager") if i != original]
    tried = []
    try:
        for impl in implementations:
            if impl != original:
                try:
                    model.set_attn_implementation(impl)
                except (AttributeError, ValueError, ImportError):
                    continue
            for length in sorted(set(lengths)):
                rows = max(1, tokens // length)
                ids = torch.randint(0, min(vocab, head.shape[0]), (rows, length), device=device)
                keep = max(1, round(length * scored_fraction))

                def forward(ids: torch.Tensor = ids, keep: int = keep) -> None:
                    hidden = decoder(input_ids=ids, use_cache=False).last_hidden_state
                    (hidden[:, -keep:].reshape(-1, hidden.shape[-1]) @ head.T).max()

                seconds = best_seconds(forward, device, repeats)
                flops = useful_flops(dims, vocab, [length] * rows, [keep] * rows)["total"]
                tried.append(
                    {
                        "attn": impl,
                        "rows": rows,
                        "length": length,
                        "seconds": round(seconds, 4),
                        "flops_per_s": flops / seconds,
                    }
                )
    finally:
        if getattr(model.config, "_attn_implementation", None) != original:
            model.set_attn_implementation(original)
    best = max(tried, key=lambda t: t["flops_per_s"])
    return {"plain_forward_flops_per_s": best["flops_per_s"], "plain_forward_best": best, "plain_forward_tried": tried}
