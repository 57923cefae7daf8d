"""Checkpoint: one checkpoint's metadata, files and sizes, token space, eval history across eval
sets, per-example losses (distribution per task, worst examples; read from the result's MLflow
run), the paired 95% interval of its difference from another checkpoint with the examples that
moved most, row-norm statistics and links to its MLflow run and LoggedModel."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import analysis, charts, data
from dashboard.app_pages import _common as c

st.title("Checkpoint")
url, version = c.registry_url(), c.version()
runs = c.runs(url, version)
cks = c.checkpoints(url, version)

if cks.empty:
    c.empty_state("No checkpoints registered yet. Register training output folders with", "evalboard scan PATH")
    st.stop()

run_names = dict(zip(runs["run_id"], runs["run"]))
run_ids = [r for r in runs.sort_values("run")["run_id"] if r in set(cks["run_id"])]
# ?checkpoint=ID opens that checkpoint; a malformed or unknown id warns and leaves the pickers as usual
query_ck = c.query_int("checkpoint", label="checkpoint id", known={int(i) for i in cks["checkpoint_id"]})
if query_ck is not None and "checkpoint_run" not in st.session_state:
    st.session_state["checkpoint_run"] = int(cks.loc[cks["checkpoint_id"] == query_ck, "run_id"].iloc[0])
    st.session_state["checkpoint_id"] = query_ck

results = c.results(url, version)
evaluated = set(results["checkpoint_id"].dropna().astype(int))
if "checkpoint_run" not in st.session_state:  # open on a run that has results
    with_results = [r for r in run_ids if set(cks.loc[cks["run_id"] == r, "checkpoint_id"]) & evaluated]
    st.session_state["checkpoint_run"] = (with_results or run_ids)[0]

col_run, col_ck = st.columns(2)
run_id = col_run.selectbox("Run", run_ids, format_func=lambda r: run_names.get(r, f"run {r}"), key="checkpoint_run")
mine = cks[cks["run_id"] == run_id].sort_values("step")
labels = {
    int(r.checkpoint_id): f"step {r.step}"
    + ("" if r.status == "valid" else " (invalid)")
    + ("" if int(r.checkpoint_id) in evaluated else " · not evaluated")
    for r in mine.itertuples()
}
ids = list(labels)
if st.session_state.get("checkpoint_id") not in ids:  # a new run: its latest evaluated (else valid) checkpoint
    valid = mine.loc[mine["status"] == "valid", "checkpoint_id"].astype(int).tolist()
    st.session_state["checkpoint_id"] = ([i for i in valid if i in evaluated] or valid or ids)[-1]
ck_id = col_ck.selectbox("Checkpoint", ids, format_func=labels.get, key="checkpoint_id")
st.query_params["checkpoint"] = str(ck_id)

reg = c.registry()
ck = reg.get_checkpoint(id=ck_id)
if ck.status != "valid":
    st.error(f"This checkpoint is invalid: {c.md(ck.reason or 'no reason recorded')}")

st.subheader("Metadata")
st.dataframe(
    pd.DataFrame(
        [
            ("run", run_names.get(ck.run_id)),
            ("path", ck.path),
            ("step", ck.step),
            ("track", ck.track),
            ("status", ck.status),
            ("base model", ck.base_model),
            ("content hash", ck.content_hash),
            ("rows", f"{ck.row_start}–{ck.row_end}" if ck.row_start is not None else None),
            ("ships token_space.json", ck.has_token_space),
            ("registered", ck.registered_at),
        ],
        columns=["field", "value"],
    ).astype({"value": str}),
    hide_index=True,
    width="stretch",
)
if ck.meta:
    with st.expander("Checkpoint metadata (JSON)"):
        st.json(ck.meta)

st.subheader("Files")
files = pd.DataFrame(ck.files or [])
if files.empty:
    st.info("No files recorded for this checkpoint.")
else:
    if "size" in files.columns:
        files["size_mib"] = files["size"].astype(float) / 2**20
    st.dataframe(
        files,
        hide_index=True,
        width="stretch",
        column_config={"size_mib": st.column_config.NumberColumn("size (MiB)", format="%.3f")},
    )

st.subheader("Token space")
space_id = ck.token_space_id
if space_id is None:
    run_space = runs.loc[runs["run_id"] == ck.run_id, "token_space_id"].dropna()
    space_id = int(run_space.iloc[0]) if len(run_space) else None
if space_id:
    ts = reg.get_token_space(id=int(space_id))
    origin = "checkpoint" if ck.token_space_id else "run-level token_space.json"
    st.caption(
        f"ABI hash `{ts.abi_hash[:16]}` ({origin}); text vocabulary {ts.text_vocab_size}, total {ts.vocab_size_total}"
    )
    from registry.token_space import TokenSpace

    space = TokenSpace.from_dict(ts.spec)
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "range": r.name,
                    "rows": r.describe(),
                    "size": r.size,
                    "codec": r.codec,
                    "codec version": r.codec_version,
                }
                for r in space.modalities
            ]
        ),
        hide_index=True,
        width="stretch",
    )
else:
    st.info("No token space known for this checkpoint (neither its own token_space.json nor its run's).")

st.subheader("Eval history")
history = results[results["checkpoint_id"] == ck_id]
if history.empty:
    c.empty_state(
        "Not evaluated yet. Queue it on the Queue page, or run", "evalboard eval --evalset NAME CHECKPOINT_DIR..."
    )
else:
    wide = history.pivot_table(
        index=["result_id", "evalset", "source", "created_at"], columns="task", values="loss", aggfunc="first"
    )
    wide = wide[data.task_order(wide.columns)].reset_index().sort_values("created_at", ascending=False)
    st.dataframe(wide.drop(columns="result_id"), hide_index=True, width="stretch")
    computed_for = sorted(history["computed_for"].dropna().unique())
    if computed_for:
        st.caption(
            f"Computed once, for the checkpoint with the same content in {c.md(', '.join(computed_for))}: "
            "a result belongs to the content, so every checkpoint holding it shows it."
        )
    latest = history.sort_values("result_id").iloc[-1]
    extra = data.result_extra(reg, int(latest["result_id"]))
    links = data.mlflow_links(latest["mlflow_run_id"], extra, c.settings().mlflow_ui)
    if links:
        with st.container(horizontal=True):
            if "run" in links:
                st.link_button("MLflow run", links["run"], icon=":material/open_in_new:")
            if "model" in links:
                st.link_button("MLflow LoggedModel", links["model"], icon=":material/open_in_new:")
    else:
        st.caption("No MLflow run recorded for the latest result.")

    st.subheader("Per-example losses")
    shown_ids = set(history["result_id"].astype(int))  # its own results and those of the same content
    mine = {i: r for i, r in c.result_entities(url, version, (int(ck.run_id),)).items() if i in shown_ids}
    # those that can hold per-example losses first, newest first
    ordered = history.assign(_none=~data.may_have_examples(history)).sort_values(
        ["_none", "result_id"], ascending=[True, False]
    )
    result_evalset = {rid: es for rid, es in zip(ordered["result_id"].astype(int), ordered["evalset"]) if rid in mine}
    choice = st.selectbox(
        "Result",
        list(result_evalset),
        key="checkpoint_result",
        format_func=lambda i: f"{result_evalset.get(i, '?')} (result {i})",
    )
    side = c.examples(url, mine[choice])
    per_ex = data.examples_frame(side)
    if per_ex is None:
        st.info(f"This result has no per-example losses: {c.md(side.missing)}.")
    else:
        st.plotly_chart(charts.loss_distribution(per_ex), key="checkpoint_dist")
        st.caption("Worst examples")
        st.dataframe(per_ex.sort_values("loss", ascending=False).head(20), hide_index=True, width="stretch")

    st.subheader("Against another checkpoint")
    others = results[
        (results["evalset"] == result_evalset[choice])
        & results["checkpoint_id"].notna()
        & (results["checkpoint_id"] != ck_id)
    ].drop_duplicates("result_id")
    if others.empty:
        st.info("No other checkpoint has a result on this eval set.")
    else:
        others = others.assign(_other=others["run_id"] != ck.run_id).sort_values(["_other", "run", "step"])
        other_labels = {int(r.result_id): f"{r.run} @ step {r.step}" for r in others.itertuples()}
        before = (others["step"] < (ck.step if ck.step is not None else -1)).fillna(False).astype(bool)
        earlier = others[~others["_other"].astype(bool) & before]
        default = int((earlier.iloc[-1] if not earlier.empty else others.iloc[0])["result_id"])
        if st.session_state.get("checkpoint_other") not in other_labels:  # the previous step of this run
            st.session_state["checkpoint_other"] = default
        other = st.selectbox(
            "Compare with",
            list(other_labels),
            key="checkpoint_other",
            format_func=other_labels.get,
            help="B − A with B this checkpoint: negative means this checkpoint is better",
        )
        other_run = int(others.loc[others["result_id"] == other, "run_id"].iloc[0])
        other_result = c.result_entities(url, version, (other_run,))[other]
        here = f"step {ck.step}" if ck.step is not None else "this checkpoint"
        c.show_paired(c.paired(url, other_result, mine[choice]), other_labels[other], here)
        other_ex = data.examples_frame(c.examples(url, other_result))
        if per_ex is not None and other_ex is not None:
            joined, _ = analysis.compare_examples(other_ex, per_ex)
            better, worse = st.columns(2)
            better.caption(f"Most improved at {c.md(here)} (B − A most negative)")
            better.dataframe(joined.head(10), hide_index=True)
            worse.caption("Most worsened")
            worse.dataframe(joined.tail(10).iloc[::-1], hide_index=True)

st.subheader("Weight statistics")
stats = data.load_row_stats(reg, [ck_id]).get(ck_id)
if not stats:
    st.info("No weight statistics for this checkpoint yet (the evaluator computes them when it evaluates).")
elif analysis.is_module_stats({ck.step or 0: stats}):
    modules, _ = analysis.module_stats_tables({ck.step or 0: stats})
    st.dataframe(modules.drop(columns=["step"]), hide_index=True, width="stretch")
    if modules["nonfinite"].fillna(0).sum():
        st.error("Non-finite connector parameters found: see the nonfinite column.")
else:
    trend, drift = analysis.row_stats_tables({ck.step or 0: stats})
    st.dataframe(trend.drop(columns=["step"]), hide_index=True, width="stretch")
    flagged = analysis.flagged_rows(trend)
    if not flagged.empty:
        ranges = ", ".join(f"{r.range}/{r.matrix}" for r in flagged.itertuples())
        st.error(
            f"Dead (all-zero) or non-finite rows in this checkpoint ({c.md(ranges)}): see the zero_rows / "
            "nonfinite_rows columns."
        )
    else:
        st.success("No dead (all-zero) or non-finite rows in this checkpoint.")
    if base_zero := analysis.base_zero_rows(trend):
        st.caption(
            f"The row base\\_text is the frozen base's text rows, for scale: its {base_zero} all-zero "
            "rows (typically padding) are context, not a problem of this checkpoint."
        )
