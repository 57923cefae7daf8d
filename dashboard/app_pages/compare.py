"""Compare: loss vs step per task for the chosen runs (hundreds stay usable), each run's best
checkpoint, deltas against a baseline checkpoint, differences between the runs' parameters,
regressions past a threshold, and two checkpoints compared example by example."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import analysis, charts, data
from dashboard.app_pages import _common as c

st.title("Compare runs")
url, version = c.registry_url(), c.version()
results = c.results(url, version)

if results.empty:
    c.empty_state(
        "No eval results yet: nothing to compare. Register runs and evaluate their checkpoints "
        "(Queue page), or import existing eval_step*.json files with",
        "evalboard scan PATH",
    )
    st.stop()


@st.cache_data(ttl=c.TTL, show_spinner=False, max_entries=8)
def evalset_results(url: str, version: tuple, evalset: str) -> pd.DataFrame:
    r = c.results(url, version)
    return r[r["evalset"] == evalset].reset_index(drop=True)


@st.cache_resource(ttl=c.TTL, show_spinner=False, max_entries=64)
def loss_figure(url: str, version: tuple, evalset: str, runs: tuple[str, ...], task: str, x: str):
    # Figures are cached as objects (cache_resource): unpickling 300 traces costs more than building them.
    r = evalset_results(url, version, evalset)
    return charts.loss_curves(r[r["run"].isin(runs)], task, x=x)


counts = results.groupby("evalset")["result_id"].nunique().sort_values(ascending=False)
evalset = st.selectbox(
    "Eval set", counts.index.tolist(), key="compare_evalset", format_func=lambda e: f"{e} ({counts.get(e, 0)} results)"
)
res = evalset_results(url, version, evalset)
all_runs = sorted(res["run"].unique())

if "compare_runs" not in st.session_state:
    st.session_state["compare_runs"] = all_runs[:5]
else:  # runs from another eval set are not options here
    st.session_state["compare_runs"] = [r for r in st.session_state["compare_runs"] if r in all_runs]


def _select_matching() -> None:
    st.session_state["compare_runs"] = analysis.select_matching(all_runs, st.session_state["compare_filter"])


with st.container(horizontal=True, vertical_alignment="bottom"):
    st.text_input("Filter runs", key="compare_filter", placeholder="substring of the run name")
    st.button("Select all matching filter", key="compare_select_all", on_click=_select_matching)
    st.button("Clear", key="compare_clear", on_click=lambda: st.session_state.update(compare_runs=[]))
chosen = st.multiselect(
    f"Runs ({len(all_runs)} with results on this eval set)",
    all_runs,
    key="compare_runs",
    placeholder="choose runs, or filter and select all matching",
)
if not chosen:
    st.info("Choose one or more runs to compare.")
    st.stop()

sel = res[res["run"].isin(chosen)]
has_tokens = sel["tokens_seen"].notna().any()
with st.container(horizontal=True, vertical_alignment="bottom"):
    x_label = st.radio("x-axis", ["step", "tokens seen"] if has_tokens else ["step"], horizontal=True, key="compare_x")
    threshold = st.number_input(
        "Regression threshold (loss)",
        min_value=0.0,
        value=0.05,
        step=0.01,
        format="%.3f",
        key="compare_threshold",
        help="flag a checkpoint worse than its run's previous best by more than this",
    )
x = "tokens_seen" if x_label == "tokens seen" else "step"

n_subset = sel.loc[sel["subset"], "result_id"].nunique()
if n_subset:
    st.caption(f"{n_subset} results are subset evaluations (max_examples); they are not comparable with full ones.")

tasks = data.task_order(sel["task"])
run_key = tuple(chosen)
for row_start in range(0, len(tasks), 2):
    cols = st.columns(2)
    for col, task in zip(cols, tasks[row_start : row_start + 2]):
        col.plotly_chart(
            loss_figure(url, version, evalset, run_key, task, x),
            key=f"compare_chart_{task}",
            config={"displaylogo": False},
        )


@st.cache_data(ttl=c.TTL, show_spinner=False, max_entries=16)
def tables(url: str, version: tuple, evalset: str, runs: tuple[str, ...], best_task: str, threshold: float):
    """Best checkpoints, regressions and run parameters of the selection (cached: pure functions
    of the data version and the widgets)."""
    r = evalset_results(url, version, evalset)
    sel = r[r["run"].isin(runs)]
    run_rows = c.runs(url, version)
    run_rows = run_rows[run_rows["run"].isin(runs)]
    cks = c.checkpoints(url, version)
    cks = cks[cks["run_id"].isin(run_rows["run_id"])]
    meta = data.load_checkpoint_meta(c.registry(), cks.groupby("run_id")["checkpoint_id"].max().tolist())
    return (
        analysis.best_checkpoints(sel, best_task),
        analysis.regressions(sel, threshold),
        analysis.run_parameters(run_rows, cks, meta),
    )


st.subheader("Best checkpoint per run")
best_task = st.selectbox("Best by", tasks, key="compare_best_task")
best, flagged, params = tables(url, version, evalset, run_key, best_task, float(threshold))
st.dataframe(
    best.drop(columns=["checkpoint_id"]),
    hide_index=True,
    width="stretch",
    column_config={
        col: st.column_config.NumberColumn(format="%.4f") for col in best.columns if col.startswith("loss ")
    },
)
c.csv_download(best, "best_checkpoints.csv", key="compare_best_csv")

st.subheader("Regressions")
if flagged.empty:
    st.success(f"No checkpoint is worse than its run's previous best by more than {threshold:.3f}.")
else:
    st.warning(f"{len(flagged)} checkpoints are worse than their run's previous best by more than {threshold:.3f}.")
    st.dataframe(flagged, hide_index=True, width="stretch")

st.subheader("Deltas against a baseline")
st.caption(
    "Each run's best loss per task minus the baseline checkpoint's; the baseline defaults to the "
    "best checkpoint of the baseline run (negative: better than it)."
)
col_run, col_step = st.columns(2)
base_run = col_run.selectbox("Baseline run", chosen, key="compare_baseline_run")
points = sel[(sel["run"] == base_run) & (sel["task"] == tasks[0])].sort_values("step")
steps = dict(zip(points["result_id"].astype(int), points["step"]))
best_id = int(points.loc[points["loss"].idxmin(), "result_id"]) if not points.empty else None
if st.session_state.get("compare_baseline") not in steps:  # a new baseline run: start from its best
    st.session_state["compare_baseline"] = best_id
baseline = col_step.selectbox(
    "Baseline checkpoint",
    list(steps),
    key="compare_baseline",
    format_func=lambda i: f"step {steps.get(i, '?')}" + (" (best)" if i == best_id else ""),
)
if baseline is not None:
    st.dataframe(
        analysis.deltas_vs_baseline(sel, baseline),
        hide_index=True,
        width="stretch",
        column_config={"run": st.column_config.TextColumn(pinned=True)},
    )

st.subheader("Parameters and metadata")
if st.toggle("Differences only", value=True, key="compare_diff_only"):
    params = analysis.differences_only(params)
st.dataframe(params, hide_index=True, width="stretch")

st.subheader("Example by example")
with_examples = sel[sel["per_example_path"].notna()].drop_duplicates("result_id").sort_values(["run", "step"])
if with_examples.empty:
    st.info(
        "None of these results kept per-example losses (the evaluator writes them; imported "
        "eval_step*.json files do not have them)."
    )
else:
    ex_labels = {int(r.result_id): f"{r.run} @ step {r.step}" for r in with_examples.itertuples()}
    paths = dict(zip(with_examples["result_id"].astype(int), with_examples["per_example_path"]))
    ids = list(ex_labels)
    col_a, col_b = st.columns(2)
    a = col_a.selectbox("Checkpoint A", ids, format_func=ex_labels.get, key="compare_ex_a")
    b = col_b.selectbox("Checkpoint B", ids, index=min(1, len(ids) - 1), format_func=ex_labels.get, key="compare_ex_b")
    ex_a, ex_b = data.load_per_example(paths[a]), data.load_per_example(paths[b])
    if ex_a is None or ex_b is None:
        st.warning("A per-example file is missing on disk (results outlive their files).")
    else:
        joined, summary = analysis.compare_examples(ex_a, ex_b)
        st.dataframe(summary, hide_index=True)
        st.plotly_chart(charts.example_deltas(joined, ex_labels[a], ex_labels[b]), key="compare_ex_chart")
        better, worse = st.columns(2)
        better.caption("Most improved (B − A most negative)")
        better.dataframe(joined.head(10), hide_index=True)
        worse.caption("Most worsened")
        worse.dataframe(joined.tail(10).iloc[::-1], hide_index=True)
