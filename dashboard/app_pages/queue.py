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

# -- Workers -------------------------------------------------------------------------------------
st.subheader("Workers")
workers = data.live_workers(reg)
if workers:
    st.success(
        f"{len(workers)} worker{'s' if len(workers) > 1 else ''} alive: "
        + ", ".join(f"{c.md(w.worker_id)} (seen {w.seconds_ago:.0f} s ago)" for w in workers),
        icon=":material/bolt:",
    )
else:
    st.warning(
        "No worker is running for this registry, so queued jobs wait. Start one here (a background "
        "`evalboard worker --once` on this machine: it evaluates everything queued, then exits), or "
        "run `evalboard worker` where the GPUs are.",
        icon=":material/hourglass_empty:",
    )
    if st.button("Start a local worker", key="queue_start_worker", icon=":material/play_arrow:"):
        started = data.start_local_worker(c.settings())
        st.session_state["queue_worker_started"] = started
if started := st.session_state.get("queue_worker_started"):
    st.caption(f"Started worker process {started['pid']}; its log: `{started['log']}`")

# -- Evaluate ------------------------------------------------------------------------------------
st.subheader("Evaluate")
runs = c.runs(url, version)
cks = c.checkpoints(url, version)
evalsets = reg.list_evalsets()
if not evalsets or cks.empty:
    missing = "eval sets" if not evalsets else "checkpoints"
    c.empty_state(
        f"No {missing} registered yet, so there is nothing to evaluate. Register them with",
        "evalboard scan PATH" if missing == "checkpoints" else "evalboard evalset add PATH",
    )
else:
    names = dict(zip(runs["run_id"], runs["run"]))
    run_ids = [r for r in sorted(names, key=names.get) if r in set(cks["run_id"])]
    es_by_id = {e.id: e for e in evalsets}
    col_es, col_run = st.columns(2)
    es_names = {i: e.name for i, e in es_by_id.items()}
    es_id = col_es.selectbox(
        "Eval set", list(es_by_id), format_func=lambda i: es_names.get(i, str(i)), key="eval_evalset"
    )
    pending = data.enqueueable_runs(reg, runs, es_by_id[es_id])
    if st.session_state.get("eval_run") not in run_ids and run_ids:  # open on a run with work to queue
        st.session_state["eval_run"] = next((r for r in run_ids if pending.get(r)), run_ids[0])
    run_id = col_run.selectbox(
        "Run", run_ids, key="eval_run", format_func=lambda r: f"{names.get(r)} ({pending.get(r, 0)} to evaluate)"
    )
    mine = cks[(cks["run_id"] == run_id)].sort_values("step")
    labels = {
        int(r.checkpoint_id): f"step {r.step}" + ("" if r.status == "valid" else " (invalid)")
        for r in mine.itertuples()
    }
    with st.form("evaluate_form"):
        chosen = st.multiselect(
            "Checkpoints",
            list(labels),
            format_func=labels.get,
            key="eval_checkpoints",
            placeholder="none chosen: every valid checkpoint of the run not yet evaluated",
        )
        submitted = st.form_submit_button("Enqueue", type="primary")
    if submitted:
        from registry.policy import enqueue_checkpoints

        targets = list(chosen) or data.unevaluated_checkpoints(reg, run_id, es_id)
        if not targets:
            st.info("Nothing to enqueue: every valid checkpoint of this run is evaluated or queued on this eval set.")
        checkpoints = [reg.get_checkpoint(id=ck_id) for ck_id in targets]
        decisions = enqueue_checkpoints(
            reg, checkpoints, es_by_id[es_id], models=c.settings().models, skip_evaluated=not chosen
        )
        # One message per kind of refusal (the finding codes), however many checkpoints share it;
        # the first checkpoint's full reason stands for the others (their messages differ only in path).
        by_kind: dict[tuple, tuple[list, str]] = {}
        for d in decisions:
            if d.action == "refused":
                by_kind.setdefault(d.kinds, ([], d.detail))[0].append(d.checkpoint.step)
        created = sum(d.action == "enqueued" for d in decisions)
        existing = sum(d.action == "already-queued" for d in decisions)
        evaluated = sum(d.action == "already-evaluated" for d in decisions)
        for kind, (steps, reason) in by_kind.items():
            if len(steps) == 1:
                st.error(f"Refused step {steps[0]}: {c.md(reason)}", icon=":material/block:")
            else:
                st.error(
                    f"Refused {len(steps)} checkpoints (steps {', '.join(map(str, steps))}): "
                    f"{c.md(', '.join(kind))}. For step {steps[0]}: {c.md(reason)}",
                    icon=":material/block:",
                )
        if created:
            st.success(
                f"Enqueued {created} jobs."
                + ("" if data.live_workers(reg) else " No worker is running: start one above.")
            )
        if existing:
            st.info(f"{existing} already queued (or done) for this eval set; not enqueued again.")
        if evaluated:
            st.info(f"{evaluated} already evaluated on this eval set; not enqueued again.")

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

statuses = st.multiselect(
    "Status", ["queued", "running", "done", "failed", "cancelled"], key="jobs_status", placeholder="all statuses"
)
shown = jobs[jobs["status"].isin(statuses)] if statuses else jobs
st.dataframe(
    shown,
    hide_index=True,
    width="stretch",
    column_config={
        "duration_s": st.column_config.NumberColumn("duration (s)", format="%.1f"),
        "last_error": st.column_config.TextColumn("last error", width="large"),
        "enqueued_at": st.column_config.DatetimeColumn("enqueued", format="YYYY-MM-DD HH:mm:ss"),
        "started_at": st.column_config.DatetimeColumn("started", format="YYYY-MM-DD HH:mm:ss"),
        "finished_at": st.column_config.DatetimeColumn("finished", format="YYYY-MM-DD HH:mm:ss"),
    },
)
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
    job_labels = {
        int(j.job_id): f"#{j.job_id} {j.status} · {j.run} @ {j.step} · {j.evalset}" for j in actionable.itertuples()
    }
    st.session_state["jobs_picked"] = [j for j in st.session_state.get("jobs_picked", []) if j in job_labels]
    st.multiselect("Jobs to retry or cancel", list(job_labels), format_func=job_labels.get, key="jobs_picked")
    with st.container(horizontal=True):
        st.button(
            "Retry",
            key="jobs_retry",
            on_click=_act,
            args=("retry",),
            help="failed or cancelled jobs go back to the queue with their attempts reset",
        )
        st.button(
            "Cancel",
            key="jobs_cancel",
            on_click=_act,
            args=("cancel",),
            help="only queued jobs; a running one belongs to its worker",
        )
if message := st.session_state.pop("jobs_message", None):
    st.info(message)
