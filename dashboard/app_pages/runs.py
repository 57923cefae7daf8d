"""Runs: every registered run with its track, base model, token space, checkpoint counts, latest
and best loss per task and when it was last evaluated; filters and search."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import streamlit as st

from dashboard.app_pages import _common as c

st.title("Runs")
url, version = c.registry_url(), c.version()
table = c.runs_overview(url, version)

if table.empty:
    c.empty_state("No runs registered yet. Register training output folders with", "evalboard scan PATH")
    st.stop()

with st.container(horizontal=True):
    search = st.text_input("Search run name", key="runs_search", placeholder="substring, case-insensitive")
    bases = st.multiselect("Base model", sorted(table["base_model"].dropna().unique()), key="runs_base")
    spaces = st.multiselect("Token space", sorted(table["token_space"].dropna().unique()), key="runs_space")
    tracks = st.multiselect("Track", sorted(table["track"].dropna().unique()), key="runs_track")
    since = st.date_input("Updated since", value=None, key="runs_since")

shown = table
if search:
    shown = shown[shown["run"].str.contains(search, case=False, regex=False)]
if bases:
    shown = shown[shown["base_model"].isin(bases)]
if spaces:
    shown = shown[shown["token_space"].isin(spaces)]
if tracks:
    shown = shown[shown["track"].isin(tracks)]
if since:
    cutoff = pd.Timestamp(dt.datetime.combine(since, dt.time()), tz="UTC")
    shown = shown[shown["updated_at"] >= cutoff]

loss_cols = [col for col in shown.columns if col.startswith(("latest ", "best "))]
loss_cols = [col for col in loss_cols if col.startswith("best ")] + [
    col for col in loss_cols if col.startswith("latest ")
]
columns = [
    "run",
    "track",
    "checkpoints",
    "evaluated",
    *loss_cols,
    "latest_step",
    "token_space",
    "base_model",
    "invalid",
    "last_evaluated",
    "path",
]  # `updated_at` (the filter above) stays in the CSV
if shown["training_run"].notna().any():  # recorded by the training callbacks (evalboard.integrations)
    columns.insert(columns.index("last_evaluated") + 1, "training_run")
# A column with one value for every run shown says nothing per row: it goes into the caption, so
# the table fits (the CSV keeps every column).
same = {
    col: shown[col].iloc[0]
    for col in ("base_model", "token_space", "track", "invalid")
    if len(shown) > 1 and shown[col].nunique(dropna=False) == 1
}
labels = {"base_model": "base model", "token_space": "token space", "track": "track", "invalid": "invalid checkpoints"}
st.caption(
    f"{len(shown)} of {len(table)} runs"
    + "".join(f" · {labels[k]}: {'—' if pd.isna(v) else c.md(v)}" for k, v in same.items())
    + " · a dash: no result on that task, or not known (a Track A run has no token space)"
)
display = shown[[col for col in columns if col not in same]].copy()
# Shown as text, so a missing value reads as a dash rather than "None"; fixed-width numbers and
# ISO times still sort correctly as text. The CSV keeps the raw values.
for col in loss_cols:
    display[col] = display[col].map(lambda v: "—" if pd.isna(v) else f"{v:8.4f}")
display["last_evaluated"] = display["last_evaluated"].map(
    lambda t: "—" if pd.isna(t) else pd.Timestamp(t).strftime("%Y-%m-%d %H:%M")
)
for col in ("base_model", "token_space", "path"):
    if col in display.columns:
        display[col] = display[col].astype(object).where(display[col].notna(), "—")
st.dataframe(
    display,
    hide_index=True,
    width="stretch",
    column_config={
        "run": st.column_config.TextColumn("run", pinned=True),
        "track": st.column_config.TextColumn("track", width="small"),
        "base_model": "base model",
        "token_space": st.column_config.TextColumn("token space", help="short ABI hash", width="small"),
        "checkpoints": st.column_config.NumberColumn("ckpts", help="registered checkpoints", width="small"),
        "invalid": st.column_config.NumberColumn("invalid", width="small"),
        "latest_step": st.column_config.NumberColumn("latest step", format="%d", width="small"),
        "evaluated": st.column_config.NumberColumn("evaluated", help="checkpoints with an eval result", width="small"),
        "last_evaluated": st.column_config.TextColumn("last evaluated"),
        "training_run": st.column_config.LinkColumn(
            "training", display_text="MLflow run", help="the training's MLflow run (loss curves)"
        ),
        **{col: st.column_config.TextColumn(col, width="small") for col in loss_cols},
    },
)
c.csv_download(shown[[*columns, "updated_at"]], "runs.csv", key="runs_csv")
if not loss_cols:
    c.empty_state(
        "No eval results yet. Queue evaluations on the Queue page, or from the shell:",
        "evalboard eval --evalset NAME CHECKPOINT_DIR...",
    )
