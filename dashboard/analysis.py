"""Pure computations over the long results table (`dashboard.data.load_results`): best
checkpoints, deltas against a baseline, regressions, parameter differences, example-by-example
comparison, row-statistics tables. Shared by the pages and the exported reports.

Intervals are never computed here: callers pass them in (a table from
`dashboard.data.intervals_frame`, or a `paired` lookup built on `registry.comparison`), so the
pages can cache them per result and the functions stay testable on plain tables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from dashboard.data import PairedDelta

__all__ = [
    "with_intervals",
    "best_checkpoints",
    "deltas_vs_baseline",
    "deltas_vs_best",
    "regression_candidates",
    "regressions",
    "mark_regressions",
    "differences_only",
    "compare_examples",
    "row_stats_tables",
    "is_module_stats",
    "module_stats_tables",
]


PairedLookup = Callable[[int, int], "PairedDelta | None"]
"""``paired(a_result_id, b_result_id)``: the paired interval of ``loss(b) - loss(a)``, or None when
it is not computed (too many runs shown). The pages pass a cached lookup, reports a plain one."""


def with_intervals(results: pd.DataFrame, intervals: pd.DataFrame) -> pd.DataFrame:
    """`results` with the `low` and `high` of each (result, task) loss's 95% interval (NaN where
    the result has none). `intervals`: `dashboard.data.intervals_frame`."""
    base = results.drop(columns=[c for c in ("low", "high") if c in results.columns])
    return base.merge(intervals[["result_id", "task", "low", "high"]], on=["result_id", "task"], how="left")


def best_checkpoints(results: pd.DataFrame, task: str = "all") -> pd.DataFrame:
    """Per run (and eval set), the checkpoint with the lowest loss on `task`, plus that
    checkpoint's losses on every other task; with `low {task}` / `high {task}` (the 95% interval)
    after each loss when `results` carries intervals (`with_intervals`)."""
    cols = ["run", "evalset", "best step", "checkpoint_id", f"loss {task}", "evaluated checkpoints"]
    d = results[results["task"] == task]
    if d.empty:
        return pd.DataFrame(columns=cols)
    idx = d.groupby(["run_id", "evalset"])["loss"].idxmin()
    best = d.loc[idx, ["run_id", "run", "evalset", "step", "checkpoint_id", "result_id"]]
    n = d.groupby(["run_id", "evalset"]).size().rename("evaluated checkpoints")
    best = best.merge(n, left_on=["run_id", "evalset"], right_index=True)
    mine = results[results["result_id"].isin(best["result_id"])]
    values = ["loss", "low", "high"] if {"low", "high"} <= set(results.columns) else ["loss"]
    wide = mine.pivot_table(index="result_id", columns="task", values=values, aggfunc="first", dropna=False)
    tasks = [task] + sorted(t for t in mine["task"].unique() if t != task)
    ordered = [(v, t) for t in tasks for v in values if (v, t) in wide.columns]
    wide = wide[ordered]
    wide.columns = [f"{v} {t}" for v, t in ordered]
    best = best.merge(wide, left_on="result_id", right_index=True, how="left")
    best = best.rename(columns={"step": "best step"})
    head = ["run", "evalset", "best step", "checkpoint_id"]
    front = [f"{v} {t}" for v, t in ordered if t == task]
    rest = [f"{v} {t}" for v, t in ordered if t != task]
    best = best[head + front + ["evaluated checkpoints"] + rest]
    return best.sort_values(f"loss {task}").reset_index(drop=True)


DELTA_COLUMNS = ["run", "task", "best step", "loss", "Δ", "low", "high", "p", "significant", "interval"]


def deltas_vs_baseline(
    results: pd.DataFrame, baseline_result_id: int, paired: PairedLookup | None = None
) -> pd.DataFrame:
    """Each run's best checkpoint per task against the baseline checkpoint (same eval set): Δ =
    loss − the baseline's (negative: better), and with `paired` its paired 95% interval (low,
    high), p and whether the interval excludes zero; `interval` says why a row has none."""
    base = results[results["result_id"] == baseline_result_id]
    if base.empty:
        return pd.DataFrame(columns=DELTA_COLUMNS)
    evalset = base["evalset"].iloc[0]
    base_loss = base.set_index("task")["loss"]
    d = results[(results["evalset"] == evalset) & results["task"].isin(base_loss.index)]
    best = d.loc[d.groupby(["run", "task"])["loss"].idxmin()]
    out = pd.DataFrame(
        {
            "run": best["run"].to_numpy(),
            "task": best["task"].to_numpy(),
            "best step": best["step"].to_numpy(),
            "loss": best["loss"].to_numpy(dtype=float),
            "Δ": (best["loss"] - best["task"].map(base_loss)).to_numpy(dtype=float),
        }
    )
    intervals = [
        _interval_columns(paired, baseline_result_id, int(rid), task)
        for rid, task in zip(best["result_id"], best["task"])
        if paired is not None
    ]
    for col in ("low", "high", "p", "significant", "interval"):
        out[col] = [i[col] for i in intervals] if paired is not None else _EMPTY_INTERVAL[col]
    if paired is not None:  # the Δ of the per-example sums, the one its interval is about
        out["Δ"] = [i.get("Δ", delta) for i, delta in zip(intervals, out["Δ"])]
    order = {t: i for i, t in enumerate(sorted(out["task"].unique(), key=lambda t: (t != "all", t)))}
    out = out.assign(_t=out["task"].map(order)).sort_values(["_t", "Δ"], kind="stable").drop(columns="_t")
    return out[DELTA_COLUMNS].reset_index(drop=True)


def deltas_vs_best(results: pd.DataFrame, paired: PairedLookup | None = None, task: str = "all") -> pd.DataFrame:
    """Per eval set, `deltas_vs_baseline` against the overall best checkpoint (lowest loss on
    `task`): how far each run's best is from it, with the paired interval. `baseline` names it."""
    frames = []
    for evalset, r in results.groupby("evalset", sort=True):
        d = r[r["task"] == task]
        if d.empty:
            continue
        best = d.loc[d["loss"].idxmin()]
        table = deltas_vs_baseline(r, int(best["result_id"]), paired)
        frames.append(table.assign(evalset=evalset, baseline=f"{best['run']} @ step {best['step']}"))
    cols = ["evalset", "baseline", *DELTA_COLUMNS]
    if not frames:
        return pd.DataFrame(columns=cols)
    return pd.concat(frames, ignore_index=True)[cols]


_EMPTY_INTERVAL = {"low": np.nan, "high": np.nan, "p": np.nan, "significant": None, "interval": None}


def _interval_columns(paired: PairedLookup | None, a_id: int, b_id: int, task: str) -> dict[str, Any]:
    """low, high, p, significant ("yes"/"no") and interval (why none) of one paired delta."""
    empty = dict(_EMPTY_INTERVAL)
    if paired is None:
        return empty
    found = paired(a_id, b_id)
    if found is None:
        return empty
    d = found.tasks.get(task)
    if d is None:
        return {**empty, "interval": found.missing or f"no interval (task {task} not in both results)"}
    return {
        "Δ": d.delta,
        "low": d.low,
        "high": d.high,
        "p": d.p_value,
        "significant": "yes" if d.significant else "no",
        "interval": None,
    }


REGRESSION_COLUMNS = [
    "run",
    "evalset",
    "task",
    "step",
    "loss",
    "previous best",
    "previous best step",
    "worse by",
    "low",
    "high",
    "p",
    "significant",
    "interval",
    "result_id",
    "previous_result_id",
]


def regression_candidates(results: pd.DataFrame, paired: PairedLookup | None = None) -> pd.DataFrame:
    """Checkpoints whose loss is worse than the run's best so far (earlier steps, same eval set
    and task), each with the paired 95% interval of ``loss − previous best`` when `paired` gives
    one. Only those whose interval excludes zero are regressions (`regressions`)."""
    d = results[results["step"].notna() & results["loss"].notna()]
    d = d.sort_values(["run_id", "evalset", "task", "step"], kind="stable").reset_index(drop=True)
    if d.empty:
        return pd.DataFrame(columns=REGRESSION_COLUMNS)
    group = d.groupby(["run_id", "evalset", "task"], sort=False).ngroup().to_numpy()
    loss = d["loss"].to_numpy(dtype=float)
    previous = np.full(len(d), -1)
    best = -1
    for i in range(len(d)):
        if i == 0 or group[i] != group[i - 1]:
            best = -1
        previous[i] = best
        if best < 0 or loss[i] < loss[best]:
            best = i
    worse = (previous >= 0) & (loss > loss[np.maximum(previous, 0)])
    rows = []
    for i in np.flatnonzero(worse):
        j = previous[i]
        r, prev = d.iloc[i], d.iloc[j]
        rows.append(
            {
                "run": r["run"],
                "evalset": r["evalset"],
                "task": r["task"],
                "step": r["step"],
                "loss": r["loss"],
                "previous best": prev["loss"],
                "previous best step": prev["step"],
                "worse by": r["loss"] - prev["loss"],
                **_interval_columns(paired, int(prev["result_id"]), int(r["result_id"]), r["task"]),
                "result_id": int(r["result_id"]),
                "previous_result_id": int(prev["result_id"]),
            }
        )
    out = pd.DataFrame(rows, columns=REGRESSION_COLUMNS)
    return out.sort_values("worse by", ascending=False, kind="stable").reset_index(drop=True)


def regressions(candidates: pd.DataFrame) -> pd.DataFrame:
    """The regressions among `regression_candidates`: worse than the run's previous best with a
    paired 95% interval that excludes zero (Δ > 0 and its low bound > 0), i.e. significant at 95%.
    A point value that is worse but whose interval includes zero, or that has no interval, is
    not flagged."""
    flagged = candidates[_significantly_worse(candidates)]
    return flagged.drop(columns=["significant", "interval", "result_id", "previous_result_id"]).reset_index(drop=True)


def mark_regressions(results: pd.DataFrame, candidates: pd.DataFrame) -> pd.DataFrame:
    """`results` with a boolean `regression` column: the (result, task) rows `regressions` flags
    (what `dashboard.charts.loss_curves` marks)."""
    flagged = candidates[_significantly_worse(candidates)]
    keys = set(zip(flagged["result_id"].astype(int), flagged["task"]))
    marks = [(int(r), t) in keys for r, t in zip(results["result_id"], results["task"])]
    return results.assign(regression=marks)


def _significantly_worse(candidates: pd.DataFrame) -> pd.Series:
    return (candidates["worse by"] > 0) & (candidates["low"].astype(float) > 0)


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
