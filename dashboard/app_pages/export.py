"""Export: a report of the chosen runs as a self-contained HTML file (interactive charts, tables,
audit findings), as Markdown, as CSV, or as PDF (that HTML printed by headless Chromium) — the same
files `evalboard export` writes."""

from __future__ import annotations

from contextlib import nullcontext

import streamlit as st

from dashboard import report
from dashboard.app_pages import _common as c
from registry.errors import EvalboardError

st.title("Export")
url, version = c.registry_url(), c.version()
runs = c.runs(url, version)
if runs.empty:
    c.empty_state("No runs registered yet, so there is nothing to export. Register runs with", "evalboard scan PATH")
    st.stop()

results = c.results(url, version)
names = sorted(runs["run"])
with_results = sorted(results["run"].unique()) if not results.empty else []
chosen = st.multiselect("Runs", names, default=with_results[:10], key="export_runs")
ALL = "all eval sets"
MIME = {"html": "text/html", "md": "text/markdown", "csv": "text/csv", "pdf": "application/pdf"}
evalset = st.selectbox(
    "Eval set", [ALL, *sorted(results["evalset"].unique())] if not results.empty else [ALL], key="export_evalset"
)
fmt = st.radio(
    "Format",
    report.FORMATS,
    horizontal=True,
    key="export_format",
    format_func={"html": "HTML (interactive)", "md": "Markdown", "csv": "CSV", "pdf": "PDF (print)"}.get,
)

if st.button("Build report", type="primary", key="export_build", disabled=not chosen):
    try:
        rep = report.collect(
            c.registry(),
            chosen,
            None if evalset == ALL else evalset,
            examples=c.examples_cache(),
            mlflow_ui=c.settings().mlflow_ui,
        )
        with st.spinner("Printing the report with headless Chromium…") if fmt == "pdf" else nullcontext():
            payload = report.render(rep, fmt)
    except EvalboardError as e:  # incl. dashboard.pdf's ChromiumMissing / PrintFailed
        st.session_state.pop("export_payload", None)  # never offer an older file in its place
        st.error(c.md(e))
    else:
        st.session_state["export_payload"] = payload
        st.session_state["export_filename"] = f"evalboard_report.{fmt}"
        st.session_state["export_mime"] = MIME[fmt]

payload = st.session_state.get("export_payload")
if payload:
    name = st.session_state["export_filename"]
    st.download_button(
        f"Download {name}",
        payload,
        file_name=name,
        mime=st.session_state["export_mime"],
        key="export_download",
        icon=":material/download:",
    )
    st.caption(
        f"{len(payload if isinstance(payload, bytes) else payload.encode()) / 1024:.0f} KiB · the same file: "
        f"`evalboard export --runs NAME... --format {name.rsplit('.', 1)[1]} --out {name}`"
    )
    if name.endswith(".md"):
        with st.expander("Preview"):
            st.code(payload, language="markdown")
