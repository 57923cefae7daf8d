"""The benchmark scripts still run and print their JSON figures (tiny sizes; the real figures come
from running them with their defaults, see README "Benchmarks")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "scan": (["--runs", "2", "--per-run", "5"], {"first_scan_s", "rescan_s", "checkpoints"}),
    "eval_throughput": (
        ["--examples", "6", "--max-len", "96", "--hidden", "32", "--layers", "1"],
        {"tokens_per_s_ratio", "peak_mem_ratio", "max_abs_loss_diff", "swap_to_load_ratio", "device"},
    ),
    "dashboard": (
        ["--runs", "4", "--checkpoints", "3", "--selected", "2", "--repeats", "1"],
        {"compare_render_s", "runs_render_s", "compare_cold_render_s"},
    ),
    "queue": (["--jobs", "40", "--claimers", "2"], {"sqlite_claims_per_s", "postgres_claims_per_s", "duplicates"}),
    "callback_save": (
        ["--hidden", "32", "--new-rows", "64", "--saves", "2", "--seq", "16"],
        {"save_s_median", "write_s_median", "registry_s_median", "train_step_s_median", "all_enqueued"},
    ),
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
    if name == "queue":
        assert figures["duplicates"] == 0
    if name == "eval_throughput":
        assert figures["max_abs_loss_diff"] <= 1e-4
    if name == "callback_save":
        assert figures["all_enqueued"] and figures["saves"] == 2
    if name == "track_a_sweep":
        assert figures["tower_forwards_per_image"] == 1.0 and figures["max_abs_loss_diff"] == 0.0
