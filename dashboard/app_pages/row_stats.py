"""Statistics of what was trained. Trainable rows: per modality range, the norm statistics of the new
embedding and lm_head rows across a run's steps (trend), histograms of the new rows against the
base's text rows, drift between consecutive checkpoints, and dead or non-finite rows highlighted.
Connectors: parameter norms per module across steps, and their drift."""

from __future__ import annotations

import streamlit as st

from dashboard import analysis, charts, data
from dashboard.app_pages import _common as c

st.title("Weight statistics")
url, version = c.registry_url(), c.version()
runs = c.runs(url, version)
cks = c.checkpoints(url, version)


@st.cache_data(ttl=c.TTL, show_spinner=False, max_entries=16)
def run_stats(url: str, version: tuple, run_id: int) -> dict[int, dict]:
    """{step: stats} of the run's checkpoints that have row statistics."""
    mine = c.checkpoints(url, version)
    mine = mine[(mine["run_id"] == run_id) & mine["step"].notna()]
    by_ck = data.load_row_stats(c.registry(), mine["checkpoint_id"].astype(int).tolist())
    steps = dict(zip(mine["checkpoint_id"].astype(int), mine["step"].astype(int)))
    return {steps[ck]: stats for ck, stats in by_ck.items()}


b_runs = runs.sort_values("run")
if b_runs.empty:
    c.empty_state("No runs registered yet. Register them with", "evalboard scan PATH")
    st.stop()
names = dict(zip(b_runs["run_id"], b_runs["run"]))
results = c.results(url, version)
evaluated = set(results["run"]) if not results.empty else set()
first = next((i for i, run_id in enumerate(names) if names[run_id] in evaluated), 0)  # statistics come with evaluations
run_id = st.selectbox("Run", list(names), index=first, format_func=names.get, key="rowstats_run")
stats = run_stats(url, version, run_id)
if not stats:
    c.empty_state(
        "No row statistics for this run yet; the evaluator computes them for each checkpoint it "
        "evaluates. Queue its checkpoints on the Queue page, or run",
        "evalboard eval --evalset NAME CHECKPOINT_DIR...",
    )
    st.stop()

if analysis.is_module_stats(stats):
    modules, module_drift = analysis.module_stats_tables(stats)
    broken = modules[modules["nonfinite"].fillna(0) > 0]
    if broken.empty:
        st.success("No non-finite parameters at any step.")
    else:
        st.error(f"Non-finite parameters at {broken['step'].nunique()} steps:")
        st.dataframe(broken, hide_index=True, width="stretch")
    st.subheader("Parameter norms across steps")
    left, right = st.columns(2)
    left.plotly_chart(charts.module_trend(modules, "norm", "L2 norm per module"), key="modstats_norm")
    right.plotly_chart(charts.module_trend(modules, "rms", "RMS per module"), key="modstats_rms")
    st.subheader("Drift between consecutive checkpoints")
    if module_drift.empty:
        st.info("No drift recorded (it needs two consecutive checkpoints with statistics).")
    else:
        left, right = st.columns(2)
        left.plotly_chart(
            charts.module_trend(module_drift, "relative_update", "relative update per module"), key="modstats_update"
        )
        right.plotly_chart(
            charts.module_trend(module_drift, "cosine", "cosine to the previous checkpoint"), key="modstats_cosine"
        )
    with st.expander("All statistics"):
        st.dataframe(modules, hide_index=True, width="stretch")
        c.csv_download(modules, "connector_stats.csv", key="modstats_csv")
    st.stop()

trend, drift = analysis.row_stats_tables(stats)
flagged = analysis.flagged_rows(trend)
if flagged.empty:
    st.success("No dead (all-zero) or non-finite rows in this run's checkpoints at any step.")
else:
    st.error(f"Dead or non-finite rows in this run's checkpoints at {flagged['step'].nunique()} steps:")
    st.dataframe(flagged, hide_index=True, width="stretch")
if base_zero := analysis.base_zero_rows(trend):
    st.caption(
        f"The frozen base's text rows include {base_zero} all-zero rows (typically padding rows). "
        "They are context for the norms below, not a problem of these checkpoints."
    )

st.subheader("Norms across steps")
left, right = st.columns(2)
left.plotly_chart(charts.row_norm_trend(trend, "embed"), key="rowstats_trend_embed")
right.plotly_chart(charts.row_norm_trend(trend, "lm_head"), key="rowstats_trend_lm_head")

st.subheader("Histogram against the base's text rows")
steps = sorted(stats)
step = st.select_slider("Step", steps, value=steps[-1], key="rowstats_step") if len(steps) > 1 else steps[0]
hist = stats[step].get("histograms") or {}
if hist.get("edges") and hist.get("counts"):
    left, right = st.columns(2)
    left.plotly_chart(charts.norm_histograms(hist["edges"], hist["counts"], "embed"), key="rowstats_hist_embed")
    right.plotly_chart(charts.norm_histograms(hist["edges"], hist["counts"], "lm_head"), key="rowstats_hist_lm_head")
else:
    st.info("This checkpoint's statistics have no histograms.")

st.subheader("Drift between consecutive checkpoints")
if drift.empty:
    st.info("No drift recorded (it needs two consecutive checkpoints with statistics).")
else:
    st.plotly_chart(charts.drift_trend(drift), key="rowstats_drift")

with st.expander("All statistics"):
    st.dataframe(trend, hide_index=True, width="stretch")
    c.csv_download(trend, "row_stats.csv", key="rowstats_csv")
