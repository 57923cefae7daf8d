"""Queue: evaluation jobs with status, worker, attempts, durations and errors; retry and cancel;
the Evaluate form, which enqueues checkpoints against an eval set unless the audit refuses the
pair (token spaces that do not match), showing the reason."""

from __future__ import annotations

import streamlit as st

from dashboard import data
from dashboard.app_pages import _common as c
from registry.errors import EvalboardError

st.title("Queue")
url, version = c.registry_url(), c.version()
reg = c.registry()

# -- Evaluate ------------------------------------------------------------------------------------
st.subheader("Evaluate")
runs = c.runs(url, version)
cks = c.checkpoints(url, version)
evalsets = reg.list_evalsets()
if not evalsets or cks.empty:
    missing = "eval sets" if not evalsets else "checkpoints"
    c.empty_state(f"No {missing} registered yet, so there is nothing to evaluate. Register them with",
                  "evalboard scan PATH" if missing == "checkpoints" else "evalboard evalset add PATH")
else:
    names = dict(zip(runs["run_id"], runs["run"]))
    run_ids = [r for r in sorted(names, key=names.get) if r in set(cks["run_id"])]
    es_by_id = {e.id: e for e in evalsets}
    col_es, col_run = st.columns(2)
    es_names = {i: e.name for i, e in es_by_id.items()}
    es_id = col_es.selectbox("Eval set", list(es_by_id), format_func=lambda i: es_names.get(i, str(i)),
                             key="eval_evalset")
    run_id = col_run.selectbox("Run", run_ids, format_func=names.get, key="eval_run")
    mine = cks[(cks["run_id"] == run_id)].sort_values("step")
    labels = {int(r.checkpoint_id): f"step {r.step}" + ("" if r.status == "valid" else " (invalid)")
              for r in mine.itertuples()}
    with st.form("evaluate_form"):
        mode = st.radio("Checkpoints", ["all unevaluated of this run", "chosen below"], key="eval_mode",
                        horizontal=True)
        chosen = st.multiselect("Checkpoints", list(labels), format_func=labels.get, key="eval_checkpoints")
        submitted = st.form_submit_button("Enqueue", type="primary")
    if submitted:
        from registry.audit import refusals

        if mode == "chosen below":
            targets = list(chosen)
        else:
            targets = data.unevaluated_checkpoints(reg, run_id, es_id)
        if not targets:
            st.info("Nothing to enqueue: " + ("choose checkpoints." if mode == "chosen below" else
                                              "every valid checkpoint of this run is evaluated or queued."))
        evalset = es_by_id[es_id]
        created = existing = 0
        checkpoints = [reg.get_checkpoint(id=ck_id) for ck_id in targets]
        refused = refusals(reg, checkpoints, evalset)
        for ck in checkpoints:
            if ck.id in refused:
                st.error(f"Refused step {ck.step}: " + c.md("; ".join(f.message for f in refused[ck.id])),
                         icon=":material/block:")
                continue
            try:
                _, new = reg.enqueue_job(checkpoint_id=ck.id, evalset_id=es_id)
            except EvalboardError as e:
                st.error(f"Refused step {ck.step}: {c.md(e)}", icon=":material/block:")
                continue
            created += new
            existing += not new
        if created:
            st.success(f"Enqueued {created} jobs.")
        if existing:
            st.info(f"{existing} already queued (or done) for this eval set; not enqueued again.")

# -- Jobs ----------------------------------------------------------------------------------------
st.subheader("Jobs")
jobs = data.load_jobs(reg)
if jobs.empty:
    c.empty_state("No jobs yet. Enqueue checkpoints above, then start a worker with", "evalboard worker")
    st.stop()

counts = jobs["status"].value_counts()
with st.container(horizontal=True):
    for status in ("queued", "running", "done", "failed", "cancelled"):
        st.metric(status, int(counts.get(status, 0)))

statuses = st.multiselect("Status", ["queued", "running", "done", "failed", "cancelled"], key="jobs_status",
                          placeholder="all statuses")
shown = jobs[jobs["status"].isin(statuses)] if statuses else jobs
st.dataframe(shown, hide_index=True, width="stretch", column_config={
    "duration_s": st.column_config.NumberColumn("duration (s)", format="%.1f"),
    "last_error": st.column_config.TextColumn("last error", width="large"),
    "enqueued_at": st.column_config.DatetimeColumn("enqueued", format="YYYY-MM-DD HH:mm:ss"),
    "started_at": st.column_config.DatetimeColumn("started", format="YYYY-MM-DD HH:mm:ss"),
    "finished_at": st.column_config.DatetimeColumn("finished", format="YYYY-MM-DD HH:mm:ss"),
})
c.csv_download(shown, "jobs.csv", key="jobs_csv")

actionable = jobs[jobs["status"].isin(["queued", "failed", "cancelled"])]


def _act(verb: str) -> None:
    # A callback runs before the rerun, so the table above already shows the new statuses.
    picked = st.session_state.get("jobs_picked") or []
    if not picked:
        st.session_state["jobs_message"] = "Choose jobs first."
        return
    try:
        n = (data.retry_jobs if verb == "retry" else data.cancel_jobs)(c.registry(), picked)
    except EvalboardError as e:
        st.session_state["jobs_message"] = f"Could not {verb}: {c.md(e)}"
        return
    done = "put back in the queue" if verb == "retry" else "cancelled"
    st.session_state["jobs_message"] = f"{n} of {len(picked)} jobs {done}."
    st.session_state["jobs_picked"] = []


if not actionable.empty:
    job_labels = {int(j.job_id): f"#{j.job_id} {j.status} · {j.run} @ {j.step} · {j.evalset}"
                  for j in actionable.itertuples()}
    st.session_state["jobs_picked"] = [j for j in st.session_state.get("jobs_picked", []) if j in job_labels]
    st.multiselect("Jobs to retry or cancel", list(job_labels), format_func=job_labels.get, key="jobs_picked")
    with st.container(horizontal=True):
        st.button("Retry", key="jobs_retry", on_click=_act, args=("retry",),
                  help="failed or cancelled jobs go back to the queue with their attempts reset")
        st.button("Cancel", key="jobs_cancel", on_click=_act, args=("cancel",),
                  help="only queued jobs; a running one belongs to its worker")
if message := st.session_state.pop("jobs_message", None):
    st.info(message)
