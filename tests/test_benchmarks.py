"""The benchmark scripts still run and print their JSON figures (tiny sizes; the real figures come
from running them with their defaults, see README "Benchmarks")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

UTILISATION = {
    "useful_flops",
    "achieved_flops_per_s",
    "matmul_peak_flops_per_s",
    "fraction_of_peak",
    "plain_forward_fraction_of_peak",
    "swap_over_bandwidth_bound",
}

CASES = {
    "scan": (["--runs", "2", "--per-run", "5"], {"first_scan_s", "rescan_s", "checkpoints"}),
    "eval_throughput": (
        ["--preset", "tiny", "--examples", "6", "--naive-examples", "4"],
        {"tokens_per_s_ratio", "peak_mem_ratio", "max_abs_loss_diff", "swap_to_load_ratio", "device", *UTILISATION},
    ),
    "dashboard": (
        ["--runs", "4", "--checkpoints", "3", "--selected", "2", "--repeats", "1"],
        {"compare_render_s", "runs_render_s", "compare_cold_render_s"},
    ),
    "queue_claims": (
        ["--jobs", "40", "--claimers", "2"],
        {"sqlite_claims_per_s", "postgres_claims_per_s", "duplicates"},
    ),
    "callback_save": (
        ["--hidden", "32", "--new-rows", "64", "--saves", "2", "--seq", "16"],
        {"save_s_median", "write_s_median", "registry_s_median", "train_step_s_median", "all_enqueued"},
    ),
    "bootstrap": (["--examples", "500", "--iters", "100", "--repeats", "1"], {"bootstrap_s", "loss_interval_s"}),
    "track_a_sweep": (
        ["--checkpoints", "3", "--images", "8", "--image-size", "32", "--tower-hidden", "32", "--tower-layers", "1"],
        {"tower_forwards_per_image", "trackA_sweep_speedup", "max_abs_loss_diff"},
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_script_prints_its_figures(name):
    args, keys = CASES[name]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert keys <= set(figures), sorted(figures)
    if name == "scan":
        assert figures["checkpoints"] == 10 and figures["rescan_new"] == 0
    if name == "queue_claims":
        assert figures["duplicates"] == 0
    if name == "eval_throughput":
        assert figures["max_abs_loss_diff"] <= 1e-4
        assert UTILISATION <= set(figures["track_a"]), sorted(figures["track_a"])
        for track in (figures, figures["track_a"]):
            assert 0 < track["fraction_of_peak"] < 1.5 and track["useful_flops"] > 0
            assert track["swap_over_bandwidth_bound"] > 0
    if name == "callback_save":
        assert figures["all_enqueued"] and figures["saves"] == 2
    if name == "track_a_sweep":
        assert figures["tower_forwards_per_image"] == 1.0 and figures["max_abs_loss_diff"] == 0.0


@pytest.mark.slow
def test_gpu_check_runs_at_the_tiny_preset_and_writes_its_json(tmp_path):
    """benchmarks/gpu_check.sh is what the first GPU runs; at the tiny preset it runs anywhere."""
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--preset", "tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == printed
    assert printed["card"] == "cpu" and printed["preset"] == "tiny"
    for key in ("tokens_per_s", "fraction_of_peak", "peak_memory_mb", "swap_s", "max_abs_loss_diff_vs_fp32_logits"):
        assert printed[key] is not None, key
    assert printed["max_abs_loss_diff_vs_fp32_logits"] <= 1e-4
    assert printed["longest_batch_oom_retries"] == 0 and printed["oom_retries"] == 0
    assert printed["track_a_tower_forwards_per_image"] == 1.0


def test_the_8b_split_preset_has_qwen3_8b_decoder_share():
    """The CPU preset's vocabulary is scaled so its decoder holds Qwen3-8B's share of the FLOPs."""
    from benchmarks._utilisation import QWEN3_8B_DIMS
    from benchmarks.eval_throughput import QWEN_VOCAB, parse_args, shape_from_args

    target = QWEN3_8B_DIMS.decoder_share(QWEN_VOCAB.total)
    assert 0.89 < target < 0.91  # 92% with Qwen's text rows only, 90% with the 32768 modality rows
    for extra in ([], ["--hidden", "768", "--layers", "12"]):
        shape = shape_from_args(parse_args(["--preset", "8b-split", *extra]))
        assert abs(shape.dims.decoder_share(shape.vocab.total) - target) < 0.002
        assert shape.vocab.modality_rows % 2 == 0 and shape.vocab.pad_id < shape.vocab.text_rows


def test_useful_decoder_flops_match_torchs_flop_counter():
    """The analytic decoder count equals what torch counts for an unpadded forward (no lm_head)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from benchmarks._utilisation import DecoderDims, counted_flops, useful_flops

    config = Qwen3Config(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
    )
    model = Qwen3ForCausalLM(config).eval()
    ids = torch.randint(0, 97, (3, 20))
    with torch.no_grad():
        counted = counted_flops(lambda: model.model(input_ids=ids, use_cache=False))
    expected = useful_flops(DecoderDims.from_config(config), 97, [20] * 3, [0] * 3)
    # torch counts full (not causal) attention: QK^T and AV over all n x n pairs
    full_attention = 2 * 2 * 2 * 64 * 20 * 20 * 3
    assert counted == expected["decoder_linear"] + full_attention
