"""Helpers for the dashboard tests: page paths and titles, evaluator-style seed data, AppTest runs."""

from __future__ import annotations

import math
from pathlib import Path

PAGES = ["runs", "compare", "checkpoint", "compatibility", "row_stats", "queue", "export"]
TITLES = {
    "runs": "Runs",
    "compare": "Compare runs",
    "checkpoint": "Checkpoint",
    "compatibility": "Compatibility",
    "row_stats": "Weight statistics",
    "queue": "Queue",
    "export": "Export",
}
ROOT = Path(__file__).resolve().parents[2]


def page_path(name: str) -> str:
    return str(ROOT / "dashboard" / "app_pages" / f"{name}.py")


def summary(mean: float, count: int = 64, zero: int = 0, nonfinite: int = 0) -> dict:
    return {
        "count": count,
        "mean": mean,
        "std": mean / 10,
        "min": mean * 0.7,
        "p5": mean * 0.8,
        "p50": mean,
        "p95": mean * 1.2,
        "max": mean * 1.4,
        "zero_rows": zero,
        "nonfinite_rows": nonfinite,
        "unchanged_rows": 0,
    }


def row_stats(step: int, i: int, previous: int | None) -> dict:
    ranges = {
        name: {"embed": summary(0.16 + 0.02 * i + k * 0.01), "lm_head": summary(0.15 + 0.03 * i)}
        for k, name in enumerate(("audio", "image"))
    }
    edges = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    counts = {
        f"{n}/{m}": [0, 5 + i, 30, 20, 9 - i] for n in ("audio", "image", "base_text") for m in ("embed", "lm_head")
    }
    drift = (
        None
        if previous is None
        else {
            "previous_step": previous,
            "ranges": {
                name: {
                    "embed": {"mean_cosine": 0.9 + 0.03 * i, "mean_norm_change": 0.01},
                    "lm_head": {"mean_cosine": 0.88 + 0.03 * i, "mean_norm_change": 0.02},
                }
                for name in ("audio", "image")
            },
        }
    )
    # the base's text rows hold one all-zero padding row, as Qwen's do: context, never an alarm
    return {
        "step": step,
        "ranges": ranges,
        "base_text": {"embed": summary(0.5, 256, zero=1), "lm_head": summary(0.45, 256, zero=1)},
        "drift": drift,
        "histograms": {"edges": edges, "counts": counts},
    }


def write_examples(path: Path, ck, evalset, means: dict[str, float], phase: int, per_task: int = 8) -> dict[str, float]:
    """A format-2 per-example file (exact NLL sums, the eval set's hash) around `means` per task;
    returns the token-weighted losses it holds per task and "all", as the evaluator records them."""
    from registry import per_example

    ids, tasks, sums, tokens = [], [], [], []
    for task, mean in means.items():
        for k in range(per_task):
            ids.append(f"{task}-{k:04d}")
            tasks.append(task)
            tokens.append(6)
            sums.append((mean + math.sin(k + phase) / 4) * 6)
    per_example.write(
        path,
        example_ids=ids,
        tasks=tasks,
        nll_sums=sums,
        tokens=tokens,
        evalset_hash=evalset.content_hash,
        evalset_name=evalset.name,
        subset="all",
        checkpoint_hash=ck.content_hash,
    )
    losses = {t: math.fsum(s for s, tt in zip(sums, tasks) if tt == t) / (6 * per_task) for t in means}
    losses["all"] = math.fsum(sums) / sum(tokens)
    return losses


def populate(reg, out_dir: Path) -> None:
    """Evaluator-style results for every valid Track B checkpoint, on the registered eval set, with
    per-example files (format 2) next to them. Their MLflow run ids name no real run, so the
    pages fall back to the local files, as they do when MLflow has not got a result."""
    evalset = reg.list_evalsets()[0]
    for run in reg.list_runs():
        if run.track != "B":
            continue
        valid = [c for c in reg.list_checkpoints(run_id=run.id) if c.status == "valid"]
        previous = None
        for i, ck in enumerate(sorted(valid, key=lambda c: c.step)):
            offset = 0.1 * run.id
            means = {"a2t": 3.2 - 0.3 * i + offset, "i2t": 3.6 - 0.25 * i + offset}
            if run.name.endswith("wide_image") and i == 2:
                means["i2t"] += 0.6  # a regression, far outside the noise
            path = out_dir / f"per_example_{ck.id}.parquet"
            losses = write_examples(path, ck, evalset, means, phase=i)
            reg.add_eval_result(
                checkpoint_id=ck.id,
                run_id=run.id,
                evalset_id=evalset.id,
                evalset_hash=evalset.content_hash,
                checkpoint_hash=ck.content_hash,
                step=ck.step,
                source="evaluator",
                metrics={t: {"loss": v, "tokens": 48 if t != "all" else 96, "examples": 8} for t, v in losses.items()},
                mlflow_run_id=f"mlflowrun{ck.id}",
                extra={
                    "per_example_path": str(path),
                    "mlflow_experiment_id": "7",
                    "mlflow_model_id": f"m-{ck.id}",
                    "tokens_seen": ck.step * 4096,
                },
            )
            reg.put_row_stats(checkpoint_id=ck.id, stats=row_stats(ck.step, i, previous))
            previous = ck.step


def run_page(name: str, timeout: float = 60):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(page_path(name), default_timeout=timeout)
    at.run()
    return at


def assert_ok(at, title: str) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == [title]


def registry_from_env():
    from registry.settings import Settings
    from registry.store import Registry

    return Registry(settings=Settings.from_env())
