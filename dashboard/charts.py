"""Pure DataFrame -> Plotly Figure functions; no Streamlit, no registry, tested on their own.

Compare may draw hundreds of runs, so loss curves are built the fast way: rows grouped once
with numpy into one `Scattergl` (WebGL) trace per run, trace dicts handed to `go.Figure` without
re-validation, short hover text. Plotly parses `<b>`-style markup in names and hover text, so
every user-controlled string is HTML-escaped before it goes into a figure.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.colors as plotly_colors
import plotly.graph_objects as go

__all__ = [
    "loss_curves",
    "INTERVAL_LABEL",
    "REGRESSION_LABEL",
    "loss_distribution",
    "example_deltas",
    "row_norm_trend",
    "norm_histograms",
    "drift_trend",
    "module_trend",
    "esc",
]

_LAYOUT = dict(
    margin=dict(l=50, r=10, t=40, b=20),
    height=420,
    hovermode="closest",
    legend=dict(font=dict(size=10), orientation="h", yanchor="top", y=-0.18),
)
_MAX_LEGEND = 30  # past this many runs a legend is noise: hover names the run instead


def esc(value: Any) -> str:
    """A user string made inert for Plotly's HTML-like text rendering."""
    return html.escape(str(value), quote=False)


def _figure(traces: list[dict], **layout: Any) -> go.Figure:
    # The dicts below are built from known-good keys; skipping plotly's per-property validation
    # is what makes 300 traces take milliseconds instead of a second.
    return go.Figure(data=traces, layout={**_LAYOUT, **layout}, _validate=False)


INTERVAL_LABEL = "95% interval"
REGRESSION_LABEL = "regression (significant at 95%)"
_PALETTE = tuple(plotly_colors.qualitative.Plotly)


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = plotly_colors.hex_to_rgb(hex_color)
    return f"rgba({r},{g},{b},{alpha})"


def loss_curves(
    df: pd.DataFrame, task: str, *, x: str = "step", x_title: str | None = None, mark_best: bool = True
) -> go.Figure:
    """Loss vs `x` for one task, one line per run, each run's best checkpoint marked.

    `df` columns: run, `x`, loss, step, evalset (rows of other tasks are ignored). Optional:
    `low` and `high`, the 95% interval of each loss (`dashboard.analysis.with_intervals`): each
    run gets a shaded band (a polygon through its points' bounds, in the run's legend group and
    colour) over the points that have one; points without stay bare. `regression` (bool): those
    points are marked "regression (significant at 95%)".
    """
    d = df[(df["task"] == task) & df[x].notna()] if "task" in df.columns else df[df[x].notna()]
    traces: list[dict] = []
    has_bands = {"low", "high"} <= set(d.columns)
    if not d.empty:
        d = d.sort_values(["run", x], kind="stable")
        runs = d["run"].to_numpy(dtype=object)
        xs = d[x].to_numpy(dtype=float)
        ys = d["loss"].to_numpy(dtype=float)
        steps = d["step"].astype("float").to_numpy()
        lows = d["low"].to_numpy(dtype=float) if has_bands else None
        highs = d["high"].to_numpy(dtype=float) if has_bands else None
        evalsets = d["evalset"].to_numpy(dtype=object) if "evalset" in d.columns else np.full(len(d), "")
        starts = np.flatnonzero(np.r_[True, runs[1:] != runs[:-1]])
        bounds = np.r_[starts, len(d)]
        show_legend = len(starts) <= _MAX_LEGEND
        best_x, best_y, best_text = [], [], []
        single_evalset = len(set(evalsets)) <= 1
        for i, lo in enumerate(starts):
            hi = bounds[i + 1]
            name = esc(runs[lo])
            color = _PALETTE[i % len(_PALETTE)]
            # Hover carries numbers only (the step as customdata); a per-point string list would
            # triple the payload and the serialisation time with hundreds of runs.
            where = esc(evalsets[lo]) if single_evalset else "%{text}"
            hover = f"<b>{name}</b><br>step %{{customdata}} · {where}<br>loss %{{y:.4f}}<extra></extra>"
            customdata: list = steps[lo:hi].tolist()
            if lows is not None and highs is not None:
                band = _band(xs[lo:hi], lows[lo:hi], highs[lo:hi], name, color)
                if band is not None:
                    traces.append(band)
                    customdata = np.stack([steps[lo:hi], lows[lo:hi], highs[lo:hi]], axis=1).tolist()
                    hover = (
                        f"<b>{name}</b><br>step %{{customdata[0]}} · {where}<br>loss %{{y:.4f}} "
                        f"[%{{customdata[1]:.4f}}, %{{customdata[2]:.4f}}]<extra></extra>"
                    )
            trace = dict(
                type="scattergl",
                mode="lines+markers",
                name=name,
                legendgroup=name,
                x=xs[lo:hi].tolist(),
                y=ys[lo:hi].tolist(),
                customdata=customdata,
                marker=dict(size=4, color=color),
                line=dict(width=1.5, color=color),
                showlegend=show_legend,
                hovertemplate=hover,
            )
            if not single_evalset:
                trace["text"] = [esc(e) for e in evalsets[lo:hi]]
            traces.append(trace)
            if mark_best:
                j = lo + int(np.nanargmin(ys[lo:hi]))
                best_x.append(xs[j])
                best_y.append(ys[j])
                best_text.append(f"{name}<br>best: step {steps[j]:.0f}")
        if mark_best and best_x:
            traces.append(
                dict(
                    type="scattergl",
                    mode="markers",
                    name="best checkpoint",
                    x=best_x,
                    y=best_y,
                    text=best_text,
                    marker=dict(symbol="star", size=11, color="black"),
                    hovertemplate="%{text}<br>loss %{y:.4f}<extra></extra>",
                )
            )
        if "regression" in d.columns:
            flagged = d[d["regression"].fillna(False).astype(bool)]
            if not flagged.empty:
                traces.append(
                    dict(
                        type="scattergl",
                        mode="markers",
                        name=REGRESSION_LABEL,
                        x=flagged[x].astype(float).tolist(),
                        y=flagged["loss"].astype(float).tolist(),
                        text=[
                            f"{esc(r)}<br>step {s:.0f}" for r, s in zip(flagged["run"], flagged["step"].astype(float))
                        ],
                        marker=dict(symbol="x", size=11, color="#d62728"),
                        hovertemplate=f"%{{text}}<br>loss %{{y:.4f}}<br>{REGRESSION_LABEL}<extra></extra>",
                    )
                )
    layout: dict[str, Any] = dict(
        title=dict(text=f"loss ({esc(task)})"),
        xaxis=dict(title=dict(text=x_title or x.replace("_", " "))),
        yaxis=dict(title=dict(text="loss")),
    )
    if any(t.get("fill") for t in traces):
        layout["legend"] = {**_LAYOUT["legend"], "title": dict(text=f"shaded: {INTERVAL_LABEL}")}
    return _figure(traces, **layout)


def _band(xs: np.ndarray, lows: np.ndarray, highs: np.ndarray, name: str, color: str) -> dict | None:
    """The run's interval band: a closed polygon along the high bounds and back along the low
    ones, over the points that have both; None when none has."""
    keep = np.isfinite(lows) & np.isfinite(highs)
    if not keep.any():
        return None
    bx, lo, hi = xs[keep].tolist(), lows[keep].tolist(), highs[keep].tolist()
    return dict(
        type="scatter",
        mode="lines",
        name=f"{name} {INTERVAL_LABEL}",
        legendgroup=name,
        showlegend=False,
        x=bx + bx[::-1],
        y=hi + lo[::-1],
        fill="toself",
        fillcolor=_rgba(color, 0.18),
        line=dict(width=0, color=color),
        hoverinfo="skip",
    )


def loss_distribution(per_example: pd.DataFrame) -> go.Figure:
    """Per-example loss distribution, one box per task. Columns: task, loss, example_id."""
    traces = []
    for task, g in per_example.groupby("task", sort=True):
        traces.append(
            dict(
                type="box",
                name=esc(task),
                y=g["loss"].astype(float).tolist(),
                text=[esc(e) for e in g["example_id"]],
                boxpoints="outliers",
                hovertemplate="%{text}<br>loss %{y:.4f}<extra></extra>",
            )
        )
    return _figure(traces, title=dict(text="per-example loss"), yaxis=dict(title=dict(text="loss")), showlegend=False)


def example_deltas(diff: pd.DataFrame, label_a: str, label_b: str) -> go.Figure:
    """Histogram of per-example loss change (B − A) per task; left of zero means B is better."""
    traces = [
        dict(type="histogram", name=esc(task), x=g["delta"].astype(float).tolist(), opacity=0.7, nbinsx=40)
        for task, g in diff.groupby("task", sort=True)
    ]
    fig = _figure(
        traces,
        title=dict(text=f"loss change {esc(label_b)} − {esc(label_a)} per example"),
        barmode="overlay",
        xaxis=dict(title=dict(text="Δ loss (negative = better)")),
        yaxis=dict(title=dict(text="examples")),
    )
    fig.add_vline(x=0, line_dash="dash", line_color="grey")
    return fig


def row_norm_trend(trend: pd.DataFrame, matrix: str) -> go.Figure:
    """Row-norm mean (line) with p5–p95 band per modality range across steps, for one matrix.

    `trend` columns: step, range, matrix, mean, p5, p95 (one row per step × range × matrix).
    """
    d = trend[trend["matrix"] == matrix].sort_values("step")
    traces: list[dict] = []
    for name, g in d.groupby("range", sort=True):
        steps = g["step"].astype(float).tolist()
        label = esc(name)
        traces.append(
            dict(
                type="scatter",
                x=steps + steps[::-1],
                y=g["p95"].tolist() + g["p5"].tolist()[::-1],
                fill="toself",
                opacity=0.2,
                line=dict(width=0),
                hoverinfo="skip",
                showlegend=False,
                name=f"{label} p5–p95",
            )
        )
        traces.append(
            dict(
                type="scatter",
                mode="lines+markers",
                name=label,
                x=steps,
                y=g["mean"].tolist(),
                hovertemplate=f"{label}<br>step %{{x}}<br>mean norm %{{y:.4f}}<extra></extra>",
            )
        )
    return _figure(
        traces,
        title=dict(text=f"{esc(matrix)} row norms"),
        xaxis=dict(title=dict(text="step")),
        yaxis=dict(title=dict(text="L2 norm")),
    )


def norm_histograms(edges: Sequence[float], counts: Mapping[str, Sequence[float]], matrix: str) -> go.Figure:
    """Histograms of row norms of each new range against the base's text rows, for one matrix.
    Counts are normalised to fractions so ranges of different sizes compare."""
    edges = np.asarray(edges, dtype=float)
    centers = ((edges[:-1] + edges[1:]) / 2).tolist() if len(edges) > 1 else []
    traces = []
    for key in sorted(counts):
        name, _, which = key.rpartition("/")
        if which != matrix:
            continue
        c = np.asarray(counts[key], dtype=float)
        total = c.sum() or 1.0
        is_base = name == "base_text"
        traces.append(
            dict(
                type="scatter",
                mode="lines",
                line=dict(shape="hvh", dash="dot" if is_base else "solid", color="grey" if is_base else None),
                name=esc("base text rows" if is_base else name),
                x=centers,
                y=(c / total).tolist(),
            )
        )
    return _figure(
        traces,
        title=dict(text=f"{esc(matrix)} row-norm histogram"),
        xaxis=dict(title=dict(text="L2 norm")),
        yaxis=dict(title=dict(text="fraction of rows")),
    )


def drift_trend(drift: pd.DataFrame) -> go.Figure:
    """Mean cosine similarity of each row to the previous checkpoint's, per range and matrix.

    `drift` columns: step, range, matrix, mean_cosine, mean_norm_change.
    """
    traces = []
    for (name, matrix), g in drift.sort_values("step").groupby(["range", "matrix"], sort=True):
        label = esc(f"{name}/{matrix}")
        traces.append(
            dict(
                type="scatter",
                mode="lines+markers",
                name=label,
                x=g["step"].tolist(),
                y=g["mean_cosine"].tolist(),
                customdata=g["mean_norm_change"].tolist(),
                hovertemplate=f"{label}<br>step %{{x}}<br>cosine %{{y:.4f}}<br>"
                "norm change %{customdata:.4f}<extra></extra>",
            )
        )
    return _figure(
        traces,
        title=dict(text="drift from the previous checkpoint"),
        xaxis=dict(title=dict(text="step")),
        yaxis=dict(title=dict(text="mean cosine to previous")),
    )


def module_trend(trend: pd.DataFrame, value: str, title: str) -> go.Figure:
    """One line per connector module: ``value`` (e.g. ``norm``, ``relative_update``) across steps.

    `trend` columns: step, module, and ``value``."""
    traces = []
    for name, g in trend.dropna(subset=[value]).sort_values("step").groupby("module", sort=True):
        label = esc(name)
        traces.append(
            dict(
                type="scatter",
                mode="lines+markers",
                name=label,
                x=g["step"].tolist(),
                y=g[value].tolist(),
                hovertemplate=f"{label}<br>step %{{x}}<br>{esc(value)} %{{y:.4g}}<extra></extra>",
            )
        )
    return _figure(
        traces,
        title=dict(text=esc(title)),
        xaxis=dict(title=dict(text="step")),
        yaxis=dict(title=dict(text=esc(value))),
    )
