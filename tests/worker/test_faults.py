"""The fault test of the issue: 4 worker processes on 40 jobs, workers SIGKILLed in the middle of
a job several times and replaced. Afterwards: 40/40 done, exactly one FINISHED MLflow run per job,
none RUNNING after reconciliation, no job lost. On SQLite and on PostgreSQL."""

from __future__ import annotations

import signal

import pytest

from evaluator.worker import Worker, WorkerConfig
from registry import queue
from tests.worker._procs import start_worker
from tests.worker.conftest import FAULT_RUNS, FAULT_STEPS, make_stack, mlflow_runs_by_job, wait_until

N_WORKERS, KILLS = 4, 3


@pytest.mark.slow
def test_sigkilled_workers_lose_no_job(tmp_path, db_url, workspace):
    stack = make_stack(tmp_path, db_url, workspace)
    stack.scan(workspace.root / "fault-outputs")
    es = stack.evalset()
    cks = [c for c in stack.reg.list_checkpoints() if c.is_valid]
    assert len(cks) == FAULT_RUNS * FAULT_STEPS == 40
    ids = [
        queue.enqueue(
            stack.reg, checkpoint_id=c.id, evalset_id=es.id, max_attempts=KILLS + 3, options={"write_eval_json": False}
        )[0].id
        for c in cks
    ]
    from mlflow.tracking import MlflowClient

    MlflowClient(stack.settings.mlflow_uri).search_experiments()  # create the MLflow store once, not 4x at once

    logs = tmp_path / "logs"
    logs.mkdir()
    procs = [start_worker(stack.env, logs / f"worker-{i}.log") for i in range(N_WORKERS)]
    killed_jobs: set[int] = set()
    try:
        for k in range(KILLS):

            def running_job_of_a_live_worker():
                live = {str(p.pid): p for p in procs if p.poll() is None}
                for job in stack.reg.list_jobs(status="running"):
                    pid = (job.worker_id or "").rsplit(":", 1)[-1]
                    if pid in live and job.id not in killed_jobs:
                        return job, live[pid]
                return None

            job, victim = wait_until(
                running_job_of_a_live_worker, timeout=120, what=f"a job in flight (kill {k + 1})", interval=0.02
            )
            victim.send_signal(signal.SIGKILL)
            victim.wait(30)
            killed_jobs.add(job.id)
            procs.append(start_worker(stack.env, logs / f"worker-{N_WORKERS + k}.log"))
        wait_until(
            lambda: all(j.status == "done" for j in stack.reg.list_jobs()),
            timeout=240,
            what="all 40 jobs done",
            interval=0.2,
        )
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = [p.wait(60) for p in procs]
    assert codes.count(-signal.SIGKILL) == KILLS and all(c == 0 for c in codes if c != -signal.SIGKILL), "\n".join(
        f.read_text()[-3000:] for f in sorted(logs.iterdir())
    )

    jobs = stack.reg.list_jobs()
    assert sorted(j.id for j in jobs) == sorted(ids) and {j.status for j in jobs} == {"done"}
    assert all(j.mlflow_run_id and j.outbox_state == "logged" for j in jobs)
    assert any(stack.reg.get_job(id=i).attempts > 1 for i in killed_jobs)  # killed jobs were re-run

    Worker(stack.reg, stack.settings, WorkerConfig()).reconcile()
    runs = mlflow_runs_by_job(stack.settings.mlflow_uri)
    assert sorted(runs) == sorted(ids), "every job has its MLflow run"
    assert {i: s.count("FINISHED") for i, s in runs.items()} == dict.fromkeys(ids, 1)
    assert not any("RUNNING" in s for s in runs.values())
    assert {j.id: j.mlflow_run_id for j in jobs} == _finished_run_ids(stack.settings.mlflow_uri)
    results = [r for r in stack.reg.list_eval_results() if r.source == "evaluator"]
    assert sorted(r.extra["job_id"] for r in results) == sorted(ids)  # one registry result per job
    stack.reg.close()


def _finished_run_ids(uri: str) -> dict[int, str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments(max_results=1000)]
    runs = client.search_runs(
        exps, "attributes.status = 'FINISHED' and tags.`evalboard.job_id` LIKE '%'", max_results=1000
    )
    return {int(r.data.tags["evalboard.job_id"]): r.info.run_id for r in runs}
