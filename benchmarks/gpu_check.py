"""The first run on a GPU: every figure that matters there, in one command and one JSON file.

On one GPU (under 8 minutes on an H100), with no download: a Qwen3-8B-shaped model with random
weights is built in bf16 on the card, then

- losses against float32 references on a subset: float32 logits from the model's own hidden
  states, example by example (the evaluator's exact reference), and the evaluator on a float32
  copy of the model (how much bf16 arithmetic itself moves the numbers);
- tokens/s, MFU against the card's dense bf16 peak (989 TFLOP/s on an H100 SXM) and against a
  `torch.mm` measured in the same run, the plain-forward ceiling, peak GPU memory;
- row swap time (and against the copy bandwidth), fresh load time;
- Track A: the same LLM behind a SigLIP tower and a perceiver connector (utilisation, connector
  switch), and a sweep of connector checkpoints with and without the vision-feature cache;
- a batch of the eval set's longest sequence, which must run without an out-of-memory retry.

`--preset tiny` runs the same code at toy sizes on the CPU in seconds (CI runs it so the script
cannot rot). The JSON goes to `--out` (default `benchmarks/results/gpu_check_<card>.json`) and,
as one line, to stdout.

    bash benchmarks/gpu_check.sh                  # a CUDA machine: Qwen3-8B shape, bf16
    bash benchmarks/gpu_check.sh --preset tiny    # anywhere, seconds
"""

from __future__ import annotations

import _bench_path  # noqa: F401  (first: see benchmarks/_bench_path.py)

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

from benchmarks import eval_throughput, track_a_sweep

RESULTS = Path(__file__).resolve().parent / "results"

PRESETS = {
    # eval_throughput and track_a_sweep arguments per preset
    "qwen3-8b": (
        [
            "--preset",
            "qwen3-8b",
            "--examples",
            "384",
            "--min-len",
            "64",
            "--max-len",
            "4096",
            "--naive-examples",
            "32",
            "--fp32-model-examples",
            "16",
            "--check-longest",
            "--images",
            "128",
            "--image-size",
            "224",
            "--tower-hidden",
            "768",
            "--tower-layers",
            "12",
            "--image-tokens",
            "64",
            "--answer-len",
            "32",
        ],
        [
            "--checkpoints",
            "8",
            "--images",
            "256",
            "--image-size",
            "224",
            "--tower-hidden",
            "768",
            "--tower-layers",
            "12",
        ],
    ),
    "tiny": (
        ["--preset", "tiny", "--naive-examples", "4", "--fp32-model-examples", "4", "--check-longest"],
        ["--checkpoints", "3", "--images", "6", "--image-size", "32", "--tower-hidden", "32", "--tower-layers", "1"],
    ),
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def card_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="qwen3-8b",
        help="qwen3-8b: the real shape in bf16 (needs CUDA); tiny: toy sizes, any device",
    )
    parser.add_argument("--device", default=None, help="default: cuda for qwen3-8b, cpu for tiny")
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if args.preset == "qwen3-8b" else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(
            f"--preset {args.preset} needs a CUDA device and torch sees none "
            f"(torch {torch.__version__}); run with --preset tiny on a CPU"
        )
    card = card_name(device)
    out = args.out or RESULTS / f"gpu_check_{re.sub(r'[^A-Za-z0-9]+', '_', card).strip('_').lower()}.json"
    throughput_args, sweep_args = PRESETS[args.preset]
    start = time.perf_counter()

    log(f"== evaluator figures ({args.preset} on {card}) ==")
    bench = eval_throughput.main([*throughput_args, "--device", str(device)])
    log("== Track A sweep with and without the vision-feature cache ==")
    sweep = track_a_sweep.main([*sweep_args, "--device", str(device)])
    track_a = bench.get("track_a", {})
    figures = {
        "card": card,
        "preset": args.preset,
        "torch": torch.__version__,
        "wall_s": round(time.perf_counter() - start, 1),
        # the headline figures, each also in the sections below
        "max_abs_loss_diff_vs_fp32_logits": bench.get(
            "max_abs_loss_diff_vs_fp32_logits_unbatched", bench["max_abs_loss_diff"]
        ),
        "max_abs_loss_diff_vs_fp32_model": bench.get("max_abs_loss_diff_vs_fp32_model"),
        "tokens_per_s": bench["tokens_per_s_evaluator_all_examples"],
        "mfu": bench.get("mfu_evaluator"),
        "fraction_of_peak": bench["fraction_of_peak"],
        "plain_forward_fraction_of_peak": bench["plain_forward_fraction_of_peak"],
        "peak_memory_mb": bench["peak_mb_evaluator"],
        "swap_s": bench["swap_s"],
        "swap_over_bandwidth_bound": bench["swap_over_bandwidth_bound"],
        "load_s": bench["load_s"],
        "longest_sequence": bench.get("longest_sequence"),
        "longest_batch_oom_retries": bench.get("longest_batch_oom_retries"),
        "oom_retries": bench["oom_retries"],
        "track_a_fraction_of_peak": track_a.get("fraction_of_peak"),
        "track_a_tower_forwards_per_image": sweep["tower_forwards_per_image"],
        "track_a_sweep_speedup": sweep["trackA_sweep_speedup"],
        "eval_throughput": bench,
        "track_a_sweep": sweep,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=1) + "\n")
    log(f"wrote {out}")
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
