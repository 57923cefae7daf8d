"""Row statistics: per modality range, the norm statistics of the new embedding and lm_head rows
across a run's steps (trend), histograms of the new rows against the base's text rows, drift
between consecutive checkpoints, and dead or non-finite rows highlighted."""

from __future__ import annotations

import streamlit as st

from dashboard import analysis, charts, data
from dashboard.app_pages import _common as c

st.title("Row statistics")
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


b_runs = runs[runs["track"].isin(["B", "mixed"])].sort_values("run")
if b_runs.empty:
    c.empty_state("No Track B (trainable rows) runs registered yet. Register them with", "evalboard scan PATH")
    st.stop()
names = dict(zip(b_runs["run_id"], b_runs["run"]))
run_id = st.selectbox("Run", list(names), format_func=names.get, key="rowstats_run")
stats = run_stats(url, version, run_id)
if not stats:
    c.empty_state("No row statistics for this run yet; the evaluator computes them for each checkpoint it "
                  "evaluates. Queue its checkpoints on the Queue page, or run",
                  "evalboard eval --evalset NAME CHECKPOINT_DIR...")
    st.stop()

trend, drift = analysis.row_stats_tables(stats)
flagged = analysis.flagged_rows(trend)
if flagged.empty:
    st.success("No dead (all-zero) or non-finite rows in this run's checkpoints at any step.")
else:
    st.error(f"Dead or non-finite rows in this run's checkpoints at {flagged['step'].nunique()} steps:")
    st.dataframe(flagged, hide_index=True, width="stretch")
if base_zero := analysis.base_zero_rows(trend):
    st.caption(f"The frozen base's text rows include {base_zero} all-zero rows (typically padding rows). "
               "They are context for the norms below, not a problem of these checkpoints.")

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
    right.plotly_chart(charts.norm_histograms(hist["edges"], hist["counts"], "lm_head"),
                       key="rowstats_hist_lm_head")
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
