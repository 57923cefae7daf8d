"""Compare: loss vs step per task for the chosen runs (hundreds stay usable) with each
checkpoint's 95% interval shaded, each run's best checkpoint, deltas against a baseline checkpoint
with their paired intervals, regressions (only those significant at 95%), differences between the
runs' parameters, and two checkpoints compared example by example.

Intervals need each result's per-example losses (its MLflow run's artifact, through the cache
under the evalboard home): they are computed for at most `MAX_INTERVAL_RUNS` chosen runs, once
per result id, so choosing a hundred runs costs no bootstrap at all."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import analysis, charts, data
from dashboard.app_pages import _common as c

MAX_INTERVAL_RUNS = 10

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


def selection(url: str, version: tuple, evalset: str, runs: tuple[str, ...]) -> pd.DataFrame:
    r = evalset_results(url, version, evalset)
    return r[r["run"].isin(runs)]


def entities(url: str, version: tuple, sel: pd.DataFrame) -> dict:
    return c.result_entities(url, version, tuple(sorted(sel["run_id"].dropna().astype(int).unique())))


def paired_lookup(url: str, version: tuple, sel: pd.DataFrame) -> analysis.PairedLookup:
    known = entities(url, version, sel)

    def lookup(a: int, b: int) -> data.PairedDelta | None:
        if a not in known or b not in known:
            return None
        return c.paired(url, known[a], known[b])

    return lookup


@st.cache_data(ttl=c.TTL, show_spinner="computing 95% intervals", max_entries=16)
def interval_data(url: str, version: tuple, evalset: str, runs: tuple[str, ...]) -> tuple[pd.DataFrame, dict]:
    """(loss intervals of the chosen runs' results, why some have none: reason -> count)."""
    sel = selection(url, version, evalset, runs)
    known = entities(url, version, sel)
    found = c.intervals(url, [known[i] for i in sel["result_id"].astype(int).unique() if i in known])
    return data.intervals_frame(found), data.missing_intervals(found)


@st.cache_data(ttl=c.TTL, show_spinner="testing regressions", max_entries=16)
def regression_data(url: str, version: tuple, evalset: str, runs: tuple[str, ...]) -> pd.DataFrame:
    sel = selection(url, version, evalset, runs)
    return analysis.regression_candidates(sel, paired_lookup(url, version, sel))


@st.cache_resource(ttl=c.TTL, show_spinner=False, max_entries=64)
def loss_figure(url: str, version: tuple, evalset: str, runs: tuple[str, ...], task: str, x: str, bands: bool):
    # Figures are cached as objects (cache_resource): unpickling 300 traces costs more than building them.
    r = selection(url, version, evalset, runs)
    if bands:
        r = analysis.with_intervals(r, interval_data(url, version, evalset, runs)[0])
        r = analysis.mark_regressions(r, regression_data(url, version, evalset, runs))
    return charts.loss_curves(r, task, x=x)


@st.cache_data(ttl=c.TTL, show_spinner=False, max_entries=16)
def example_options(url: str, version: tuple, evalset: str, runs: tuple[str, ...]) -> tuple[dict, dict]:
    """({result id: "run @ step N"}, {result id: run id}) of the results that may hold per-example losses."""
    sel = selection(url, version, evalset, runs)
    rows = sel[data.may_have_examples(sel)].drop_duplicates("result_id").sort_values(["run", "step"])
    ids = rows["result_id"].astype(int).tolist()
    labels = dict(zip(ids, (f"{r} @ step {s}" for r, s in zip(rows["run"], rows["step"]))))
    return labels, dict(zip(ids, rows["run_id"].astype(int).tolist()))


@st.cache_data(ttl=c.TTL, show_spinner=False, max_entries=16)
def delta_table(
    url: str, version: tuple, evalset: str, runs: tuple[str, ...], baseline: int, with_intervals: bool
) -> pd.DataFrame:
    """Each run's best against the baseline checkpoint, with the paired intervals when shown."""
    sel = selection(url, version, evalset, runs)
    deltas = analysis.deltas_vs_baseline(sel, baseline, paired_lookup(url, version, sel) if with_intervals else None)
    if not with_intervals:
        return deltas.drop(columns=["low", "high", "p", "significant", "interval"])
    return deltas.drop(columns="interval") if deltas["interval"].isna().all() else deltas


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

run_key = tuple(chosen)
sel = selection(url, version, evalset, run_key)
has_tokens = sel["tokens_seen"].notna().any()
can_intervals = len(chosen) <= MAX_INTERVAL_RUNS
with st.container(horizontal=True, vertical_alignment="bottom"):
    x_label = st.radio("x-axis", ["step", "tokens seen"] if has_tokens else ["step"], horizontal=True, key="compare_x")
    want = st.toggle(
        "95% intervals",
        value=True,
        key="compare_intervals",
        disabled=not can_intervals,
        help="bootstrap intervals from each result's per-example losses (MLflow artifacts); "
        f"computed for up to {MAX_INTERVAL_RUNS} runs at a time",
    )
x = "tokens_seen" if x_label == "tokens seen" else "step"
with_intervals = bool(want) and can_intervals

n_subset = sel.loc[sel["subset"], "result_id"].nunique()
if n_subset:
    st.caption(f"{n_subset} results are subset evaluations (max_examples); they are not comparable with full ones.")

tasks = data.task_order(sel["task"])
for row_start in range(0, len(tasks), 2):
    cols = st.columns(2)
    for col, task in zip(cols, tasks[row_start : row_start + 2]):
        col.plotly_chart(
            loss_figure(url, version, evalset, run_key, task, x, with_intervals),
            key=f"compare_chart_{task}",
            config={"displaylogo": False},
        )
if with_intervals:
    _, missing = interval_data(url, version, evalset, run_key)
    st.caption(
        f"Shaded: each checkpoint's {charts.INTERVAL_LABEL} (bootstrap over the eval set's examples, "
        f"B={c.ITERS}, seed {c.SEED}). ✕: {charts.REGRESSION_LABEL}."
    )
    for reason, n in sorted(missing.items()):
        st.caption(f"{n} result{'s' if n > 1 else ''} show{'' if n > 1 else 's'} the point only: {c.md(reason)}")
elif not can_intervals:
    st.caption(
        f"Intervals and regression tests are computed for up to {MAX_INTERVAL_RUNS} runs at a time "
        f"({len(chosen)} chosen): narrow the selection to see them."
    )


@st.cache_data(ttl=c.TTL, show_spinner=False, max_entries=16)
def tables(url: str, version: tuple, evalset: str, runs: tuple[str, ...], best_task: str, with_intervals: bool):
    """Best checkpoints and run parameters of the selection (cached: pure functions of the data
    version and the widgets)."""
    sel = selection(url, version, evalset, runs)
    if with_intervals:
        sel = analysis.with_intervals(sel, interval_data(url, version, evalset, runs)[0])
    run_rows = c.runs(url, version)
    run_rows = run_rows[run_rows["run"].isin(runs)]
    cks = c.checkpoints(url, version)
    cks = cks[cks["run_id"].isin(run_rows["run_id"])]
    meta = data.load_checkpoint_meta(c.registry(), cks.groupby("run_id")["checkpoint_id"].max().tolist())
    return analysis.best_checkpoints(sel, best_task), analysis.run_parameters(run_rows, cks, meta)


def _number_columns(df: pd.DataFrame) -> dict:
    """Losses, bounds and p with 4 decimals, differences with their sign."""
    out = {}
    for col in df.columns:
        name = str(col)
        if name.startswith("Δ") or name == "worse by":
            out[col] = st.column_config.NumberColumn(format="%+.4f")
        elif name == "p" or name.split(" ")[0] in ("loss", "low", "high", "previous"):
            out[col] = st.column_config.NumberColumn(format="%.4f")
    return out


st.subheader("Best checkpoint per run")
best_task = st.selectbox("Best by", tasks, key="compare_best_task")
best, params = tables(url, version, evalset, run_key, best_task, with_intervals)
st.dataframe(
    best.drop(columns=["checkpoint_id"]), hide_index=True, width="stretch", column_config=_number_columns(best)
)
if with_intervals:
    st.caption("low / high: the 95% interval of each loss.")
c.csv_download(best, "best_checkpoints.csv", key="compare_best_csv")

st.subheader("Regressions")
if not with_intervals:
    st.info(
        "A regression is flagged only when it is significant at 95% (the paired interval of the "
        "difference from the run's previous best excludes zero): turn on 95% intervals"
        + ("." if can_intervals else f" by choosing at most {MAX_INTERVAL_RUNS} runs.")
    )
else:
    candidates = regression_data(url, version, evalset, run_key)
    flagged = analysis.regressions(candidates)
    untested = int(candidates["interval"].notna().sum())
    if flagged.empty:
        st.success("No checkpoint is worse than its run's previous best with significance at 95%.")
    else:
        st.warning(
            f"{len(flagged)} {'checkpoint is' if len(flagged) == 1 else 'checkpoints are'} worse than "
            "their run's previous best, significant at 95% "
            "(the paired 95% interval of the difference excludes zero)."
        )
        st.dataframe(flagged, hide_index=True, width="stretch", column_config=_number_columns(flagged))
    noise = len(candidates) - len(flagged) - untested
    notes = []
    if noise:
        notes.append(f"{noise} worse point value{'s' if noise > 1 else ''} whose interval includes zero (not flagged)")
    if untested:
        notes.append(f"{untested} worse point value{'s' if untested > 1 else ''} without an interval (not flagged)")
    if notes:
        st.caption("; ".join(notes) + ".")

st.subheader("Deltas against a baseline")
st.caption(
    "Each run's best loss per task minus the baseline checkpoint's; the baseline defaults to the "
    "best checkpoint of the baseline run (negative: better than it). low / high: the paired 95% "
    "interval of the difference; significant: it excludes zero."
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
    deltas = delta_table(url, version, evalset, run_key, int(baseline), with_intervals)
    st.dataframe(
        deltas,
        hide_index=True,
        width="stretch",
        column_config={"run": st.column_config.TextColumn(pinned=True), **_number_columns(deltas)},
    )

st.subheader("Parameters and metadata")
if st.toggle("Differences only", value=True, key="compare_diff_only"):
    params = analysis.differences_only(params)
st.dataframe(params, hide_index=True, width="stretch")

st.subheader("Example by example")
ex_labels, run_of = example_options(url, version, evalset, run_key)
if not ex_labels:
    st.info(
        "None of these results kept per-example losses (the evaluator logs them to MLflow; imported "
        "eval_step*.json files do not have them)."
    )
else:
    ids = list(ex_labels)
    col_a, col_b = st.columns(2)
    a = col_a.selectbox("Checkpoint A", ids, format_func=ex_labels.get, key="compare_ex_a")
    b = col_b.selectbox("Checkpoint B", ids, index=min(1, len(ids) - 1), format_func=ex_labels.get, key="compare_ex_b")
    # only the two runs' results: choosing among hundreds of runs loads no more than these
    known = c.result_entities(url, version, tuple(sorted({run_of[a], run_of[b]})))
    side_a, side_b = c.examples(url, known[a]), c.examples(url, known[b])
    c.show_paired(c.paired(url, known[a], known[b]), ex_labels[a], ex_labels[b])
    ex_a, ex_b = data.examples_frame(side_a), data.examples_frame(side_b)
    if ex_a is not None and ex_b is not None:  # otherwise the warning above says what is missing
        joined, summary = analysis.compare_examples(ex_a, ex_b)
        st.dataframe(summary, hide_index=True)
        st.plotly_chart(charts.example_deltas(joined, ex_labels[a], ex_labels[b]), key="compare_ex_chart")
        better, worse = st.columns(2)
        better.caption("Most improved (B − A most negative)")
        better.dataframe(joined.head(10), hide_index=True)
        worse.caption("Most worsened")
        worse.dataframe(joined.tail(10).iloc[::-1], hide_index=True)
