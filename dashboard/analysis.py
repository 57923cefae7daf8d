"""Pure computations over the long results table (`dashboard.data.load_results`): best
checkpoints, deltas against a baseline, regressions, parameter differences, example-by-example
comparison, row-statistics tables. Shared by the pages and the exported reports.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "best_checkpoints",
    "deltas_vs_baseline",
    "regressions",
    "differences_only",
    "compare_examples",
    "row_stats_tables",
    "is_module_stats",
    "module_stats_tables",
]


def best_checkpoints(results: pd.DataFrame, task: str = "all") -> pd.DataFrame:
    """Per run (and eval set), the checkpoint with the lowest loss on `task`, plus that
    checkpoint's losses on every other task."""
    cols = ["run", "evalset", "best step", "checkpoint_id", f"loss {task}", "evaluated checkpoints"]
    d = results[results["task"] == task]
    if d.empty:
        return pd.DataFrame(columns=cols)
    idx = d.groupby(["run_id", "evalset"])["loss"].idxmin()
    best = d.loc[idx, ["run_id", "run", "evalset", "step", "checkpoint_id", "loss", "result_id"]]
    n = d.groupby(["run_id", "evalset"]).size().rename("evaluated checkpoints")
    best = best.merge(n, left_on=["run_id", "evalset"], right_index=True)
    others = results[results["result_id"].isin(best["result_id"]) & (results["task"] != task)]
    wide = others.pivot_table(index="result_id", columns="task", values="loss", aggfunc="first")
    wide.columns = [f"loss {t}" for t in wide.columns]
    best = best.merge(wide, left_on="result_id", right_index=True, how="left")
    best = best.rename(columns={"step": "best step", "loss": f"loss {task}"})
    return best.drop(columns=["result_id", "run_id"]).sort_values(f"loss {task}").reset_index(drop=True)


def deltas_vs_baseline(results: pd.DataFrame, baseline_result_id: int) -> pd.DataFrame:
    """Each run's best loss per task minus the baseline checkpoint's loss on that task (same eval
    set as the baseline). Negative means better than the baseline."""
    base = results[results["result_id"] == baseline_result_id]
    if base.empty:
        return pd.DataFrame(columns=["run"])
    evalset = base["evalset"].iloc[0]
    base_loss = base.set_index("task")["loss"]
    d = results[(results["evalset"] == evalset) & results["task"].isin(base_loss.index)]
    best = d.groupby(["run", "task"])["loss"].min().unstack()
    delta = best - base_loss.reindex(best.columns)
    delta.columns = [f"Δ {t}" for t in delta.columns]
    best.columns = [f"best {t}" for t in best.columns]
    return best.join(delta).reset_index()


def regressions(results: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Checkpoints whose loss is worse than the run's best so far (earlier steps, same eval set
    and task) by more than `threshold` (absolute loss units)."""
    cols = ["run", "evalset", "task", "step", "loss", "previous best", "worse by"]
    d = results[results["step"].notna()].sort_values(["run_id", "evalset", "task", "step"], kind="stable")
    if d.empty:
        return pd.DataFrame(columns=cols)
    group = d.groupby(["run_id", "evalset", "task"], sort=False).ngroup()
    prev_best = d["loss"].groupby(group).cummin().groupby(group).shift()
    worse = d["loss"] - prev_best
    flagged = d.assign(**{"previous best": prev_best, "worse by": worse})[worse > threshold]
    return flagged[cols].sort_values("worse by", ascending=False).reset_index(drop=True)


def differences_only(params: pd.DataFrame, key: str = "run") -> pd.DataFrame:
    """Keep the columns whose values differ between rows (always keeping `key`)."""
    if params.empty:
        return params
    varying = [c for c in params.columns if c == key or params[c].astype(str).nunique(dropna=False) > 1]
    return params[varying]


def run_parameters(
    runs: pd.DataFrame, checkpoints: pd.DataFrame, meta: Mapping[int, Mapping[str, Any]]
) -> pd.DataFrame:
    """One row per run: its registry fields and the scalar metadata of its latest valid checkpoint."""
    counts = checkpoints.groupby("run_id").agg(n=("checkpoint_id", "size"), lo=("step", "min"), hi=("step", "max"))
    valid = checkpoints[checkpoints["status"] == "valid"].sort_values("step", kind="stable")
    last = valid.groupby("run_id").tail(1).set_index("run_id")
    rows = []
    for run_id, name, track, base, space in zip(
        runs["run_id"], runs["run"], runs["track"], runs["base_model"], runs["token_space"]
    ):
        row: dict[str, Any] = {
            "run": name,
            "track": track,
            "base model": base,
            "token space": space,
            "checkpoints": int(counts["n"].get(run_id, 0)),
        }
        if run_id in counts.index and pd.notna(counts.at[run_id, "lo"]):
            row["steps"] = f"{counts.at[run_id, 'lo']}–{counts.at[run_id, 'hi']}"
        if run_id in last.index:
            ck = last.loc[run_id]
            if pd.notna(ck["row_start"]):
                row["rows"] = f"{ck['row_start']}–{ck['row_end']}"
            row.update(_scalars(meta.get(int(ck["checkpoint_id"])) or {}, "meta."))
        rows.append(row)
    return pd.DataFrame(rows)


def _scalars(meta: Mapping[str, Any], prefix: str, depth: int = 2) -> dict[str, Any]:
    """Scalar metadata as flat columns; nested objects (a trainer's `{"lr": ..., "steps": ...}`)
    become `prefix.key.subkey`, down to `depth` levels."""
    out: dict[str, Any] = {}
    for k, v in sorted(meta.items()):
        if isinstance(v, Mapping) and depth > 1:
            out.update(_scalars(v, f"{prefix}{k}.", depth - 1))
        elif isinstance(v, (str, int, float, bool)) or v is None:
            out[f"{prefix}{k}"] = v
    return out


def compare_examples(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-example losses of checkpoint A and B joined on (task, example_id).

    Returns (examples with loss_a, loss_b, delta = b − a; summary per task with how many got
    better, worse or stayed within 1e-6).
    """
    joined = a[["task", "example_id", "loss"]].merge(
        b[["task", "example_id", "loss"]], on=["task", "example_id"], suffixes=("_a", "_b")
    )
    joined["delta"] = joined["loss_b"] - joined["loss_a"]
    joined = joined.sort_values("delta", kind="stable").reset_index(drop=True)
    summary = (
        joined.groupby("task")
        .agg(
            examples=("delta", "size"),
            better=("delta", lambda s: int((s < -1e-6).sum())),
            worse=("delta", lambda s: int((s > 1e-6).sum())),
            mean_delta=("delta", "mean"),
        )
        .reset_index()
    )
    return joined, summary


def row_stats_tables(stats_by_step: Mapping[int, Mapping[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(norm trend, drift) long tables from `row_stats.stats` of one run's checkpoints.

    Trend rows: step, range, matrix, and the summary S fields (count, mean, p5, ..., zero_rows,
    nonfinite_rows, unchanged_rows); the base's text rows appear as range "base_text".
    """
    trend, drift = [], []
    for step, stats in sorted(stats_by_step.items()):
        ranges = dict(stats.get("ranges") or {})
        if stats.get("base_text"):
            ranges[BASE_RANGE] = stats["base_text"]
        for name, per_matrix in ranges.items():
            for matrix, s in (per_matrix or {}).items():
                trend.append({"step": step, "range": name, "matrix": matrix, **(s or {})})
        for name, per_matrix in ((stats.get("drift") or {}).get("ranges") or {}).items():
            for matrix, s in (per_matrix or {}).items():
                drift.append(
                    {
                        "step": step,
                        "range": name,
                        "matrix": matrix,
                        "previous step": (stats.get("drift") or {}).get("previous_step"),
                        **(s or {}),
                    }
                )
    trend_df = pd.DataFrame(trend)
    for c in ("mean", "p5", "p95", "zero_rows", "nonfinite_rows", "unchanged_rows"):
        if c not in trend_df.columns:
            trend_df[c] = np.nan
    drift_df = pd.DataFrame(
        drift, columns=None if drift else ["step", "range", "matrix", "mean_cosine", "mean_norm_change"]
    )
    return trend_df, drift_df


def is_module_stats(stats_by_step: Mapping[int, Mapping[str, Any]]) -> bool:
    """Statistics documents of parameter modules (a connector) rather than embedding rows."""
    return any("modules" in (s or {}) for s in stats_by_step.values())


def module_stats_tables(stats_by_step: Mapping[int, Mapping[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(norm trend, drift) long tables of connector statistics: one row per (step, module)."""
    trend, drift = [], []
    for step, stats in sorted(stats_by_step.items()):
        for name, s in (stats.get("modules") or {}).items():
            trend.append({"step": step, "module": name, **{k: v for k, v in (s or {}).items() if k != "tensors"}})
        d = stats.get("drift") or {}
        for name, s in (d.get("modules") or {}).items():
            drift.append({"step": step, "module": name, "previous step": d.get("previous_step"), **(s or {})})
    trend_df = pd.DataFrame(
        trend, columns=None if trend else ["step", "module", "params", "norm", "rms", "max_abs", "nonfinite"]
    )
    drift_df = pd.DataFrame(
        drift,
        columns=None if drift else ["step", "module", "previous step", "update_norm", "relative_update", "cosine"],
    )
    return trend_df, drift_df


BASE_RANGE = "base_text"
"""The range name `row_stats_tables` gives the frozen base's text rows."""


def flagged_rows(trend: pd.DataFrame) -> pd.DataFrame:
    """Steps/ranges of the checkpoints with dead (all-zero) or non-finite rows: the same rule as
    `registry.row_health` (what `evalboard stats` says). The base's text rows are context, never
    flagged: a frozen base often has an all-zero padding row."""
    cols = ["step", "range", "matrix", "count", "zero_rows", "nonfinite_rows", "unchanged_rows"]
    if trend.empty:
        return pd.DataFrame(columns=cols)
    bad = ((trend["zero_rows"].fillna(0) > 0) | (trend["nonfinite_rows"].fillna(0) > 0)) & (
        trend["range"] != BASE_RANGE
    )
    return trend.loc[bad, cols]


def base_zero_rows(trend: pd.DataFrame) -> int:
    """All-zero rows among the base's text rows (the most in any matrix and step): shown as context."""
    base = trend[trend["range"] == BASE_RANGE] if not trend.empty else trend
    return int(base["zero_rows"].fillna(0).max()) if not base.empty else 0


def select_matching(options: Iterable[str], pattern: str) -> list[str]:
    """Options whose name contains `pattern` (case-insensitive); all when it is empty."""
    p = pattern.strip().lower()
    return [o for o in options if p in o.lower()]
