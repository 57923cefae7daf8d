"""The worker in-process on a tiny real Qwen3: jobs end done with one FINISHED MLflow run each;
GPU faults (injected out-of-memory, non-finite loss, a fatal CUDA error) behave as documented;
a stale worker cannot add a second FINISHED run; the reconciler closes dead workers' runs."""

from __future__ import annotations

import math

import pytest
import torch

from evaluator.loss import batch_nll
from evaluator.worker import EXIT_DEVICE_FAULT, Worker, WorkerConfig, WorkerHooks, is_unrecoverable_device_error
from registry import queue
from tests.worker.conftest import mlflow_runs_by_job

RUN = "stage3_token_lm_iter5"


def enqueue_run(stack, ws, run: str = RUN, **kw) -> list[int]:
    stack.scan(ws.runs[run])
    es = stack.evalset()
    run_id = stack.reg.get_run(path=str(ws.runs[run])).id
    return [
        queue.enqueue(stack.reg, checkpoint_id=c.id, evalset_id=es.id, **kw)[0].id
        for c in stack.reg.list_checkpoints(run_id=run_id)
    ]


def inject(monkeypatch, batch_fn) -> None:
    """Fault injection: the evaluator's loss loop runs `batch_fn` per batch (it shrinks batches on
    out-of-memory, refuses non-finite losses and lets device errors through, as in production)."""
    from functools import partial

    from evaluator import loss, service

    monkeypatch.setattr(service, "evaluate_loss", partial(loss.evaluate_loss, batch_fn=batch_fn))


def worker(stack, hooks=None, **config) -> Worker:
    config = {"once": True, "lease_seconds": 30, "poll_seconds": 0.1, **config}
    return Worker(stack.reg, stack.settings, WorkerConfig(**config), hooks=hooks)


def test_worker_runs_every_job_once_with_one_base_load(stack, workspace, caplog):
    ids = enqueue_run(stack, workspace)
    w = worker(stack)
    with caplog.at_level("INFO", logger="evalboard.worker"):
        assert w.run() == 0
    jobs = [stack.reg.get_job(id=i) for i in ids]
    assert [j.status for j in jobs] == ["done"] * len(ids)
    assert all(j.mlflow_run_id and j.outbox_state == "logged" and j.duration_s > 0 for j in jobs)
    assert all(j.worker_id == w.worker_id and j.attempts == 1 for j in jobs)
    assert w.evaluator.loads == 1  # one base load, rows swapped per checkpoint
    runs = mlflow_runs_by_job(stack.settings.mlflow_uri)
    assert runs == {i: ["FINISHED"] for i in ids}
    results = [r for r in stack.reg.list_eval_results() if r.source == "evaluator"]
    assert sorted(r.extra["job_id"] for r in results) == sorted(ids)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("job ")]
    assert len(lines) == len(ids) and all("all=" in line and "a2t=" in line and "mlflow run" in line for line in lines)
    assert (
        any("no GPU visible; running on the CPU" in r.getMessage() for r in caplog.records) or torch.cuda.is_available()
    )


def _fake_oom(kind: str):
    if kind == "torch":
        return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return RuntimeError("CUDA out of memory.")  # what accelerate's memory tests raise


@pytest.mark.parametrize("kind", ["torch", "runtime"])
def test_out_of_memory_shrinks_the_batch_and_the_result_is_unchanged(sqlite_stack, workspace, kind, monkeypatch):
    stack = sqlite_stack
    first, second = enqueue_run(stack, workspace)
    assert worker(stack, max_jobs=1).run() == 0  # the reference, un-injected
    calls = {"n": 0}

    def oom_on_big_batches(model, batch, **kw):
        calls["n"] += 1
        if len(batch.indices) > 2:
            raise _fake_oom(kind)
        return batch_nll(model, batch, **kw)

    # the same checkpoint again, forced, so both numbers are for identical rows
    ref = stack.reg.get_job(id=first)
    again, _ = queue.enqueue(stack.reg, checkpoint_id=ref.checkpoint_id, evalset_id=ref.evalset_id, force=True)
    queue.cancel(stack.reg, job_id=second)
    inject(monkeypatch, oom_on_big_batches)
    assert worker(stack).run() == 0
    injected = stack.reg.get_job(id=again.id)
    assert injected.status == "done" and calls["n"] > 1
    by_job = {r.extra["job_id"]: r for r in stack.reg.list_eval_results() if r.source == "evaluator"}
    assert by_job[again.id].metrics.keys() == by_job[first].metrics.keys()
    for task, m in by_job[first].metrics.items():
        assert by_job[again.id].metrics[task]["loss"] == pytest.approx(m["loss"], rel=1e-5, abs=1e-6)
    from mlflow.tracking import MlflowClient

    params = MlflowClient(stack.settings.mlflow_uri).get_run(injected.mlflow_run_id).data.params
    assert int(params["oom_retries"]) > 0


def test_non_finite_loss_fails_the_job_as_invalid_and_logs_nothing(sqlite_stack, workspace, monkeypatch):
    stack = sqlite_stack
    (job_id, *_) = enqueue_run(stack, workspace, max_attempts=3)

    def nan_nll(model, batch, **kw):
        nll, rows = batch_nll(model, batch, **kw)
        return torch.full_like(nll, math.nan), rows

    inject(monkeypatch, nan_nll)
    assert worker(stack, max_jobs=1).run() == 0
    job = stack.reg.get_job(id=job_id)
    assert job.status == "failed" and job.attempts == 1  # invalid input: not retried
    assert job.last_error.startswith("InvalidInput:") and "non-finite loss" in job.last_error
    assert mlflow_runs_by_job(stack.settings.mlflow_uri) == {}
    assert [r for r in stack.reg.list_eval_results() if r.source == "evaluator"] == []


@pytest.mark.parametrize(
    "message", ["CUDA error: device-side assert triggered", "CUDA error: an illegal memory access was encountered"]
)
def test_unrecoverable_cuda_error_releases_the_job_and_exits_non_zero(sqlite_stack, workspace, message, monkeypatch):
    stack = sqlite_stack
    ids = enqueue_run(stack, workspace)

    def broken_device(model, batch, **kw):
        raise RuntimeError(message)

    inject(monkeypatch, broken_device)
    assert worker(stack).run() == EXIT_DEVICE_FAULT
    jobs = [stack.reg.get_job(id=i) for i in ids]
    assert [j.status for j in jobs] == ["queued", "queued"]  # released, the other never claimed
    assert jobs[0].attempts == 1 and "unrecoverable device error" in jobs[0].last_error and jobs[1].attempts == 0
    assert mlflow_runs_by_job(stack.settings.mlflow_uri) == {}


def test_device_error_classification():
    assert is_unrecoverable_device_error(RuntimeError("CUDA error: device-side assert triggered"))
    assert not is_unrecoverable_device_error(RuntimeError("CUDA out of memory. CUDA error: out of memory"))
    assert not is_unrecoverable_device_error(ValueError("CUDA error"))
    if hasattr(torch, "AcceleratorError"):
        assert is_unrecoverable_device_error(torch.AcceleratorError("anything"))


def test_a_worker_that_lost_its_lease_leaves_no_finished_run(sqlite_stack, workspace):
    """The stale worker computes while its job is re-claimed and completed by another worker:
    it ends its MLflow run FAILED and writes nothing to the job."""
    stack = sqlite_stack
    (job_id, other) = enqueue_run(stack, workspace)
    queue.cancel(stack.reg, job_id=other)
    rival: dict = {}

    def steal(job):  # while the stale worker is between compute and logging
        queue.cancel(stack.reg, job_id=job.id, running=True)
        queue.retry(stack.reg, job_id=job.id)
        rival["exit"] = worker(stack, worker_id="rival").run()

    stale = worker(stack, hooks=WorkerHooks(after_compute=steal), worker_id="stale", max_jobs=1)
    assert stale.run() == 0 and rival["exit"] == 0 and stale.stats.lost == 1
    job = stack.reg.get_job(id=job_id)
    assert job.status == "done" and job.worker_id == "rival"
    assert mlflow_runs_by_job(stack.settings.mlflow_uri) == {job_id: ["FINISHED"]}


def test_reconciler_kills_runs_left_running_by_dead_attempts(sqlite_stack, workspace):
    stack = sqlite_stack
    (job_id, _) = enqueue_run(stack, workspace)
    w = worker(stack)
    assert w.run() == 0
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(stack.settings.mlflow_uri)
    exp = client.get_run(stack.reg.get_job(id=job_id).mlflow_run_id).info.experiment_id
    # what a SIGKILLed worker leaves: a RUNNING run of an old attempt (token 0), and a duplicate FINISHED
    dead = client.create_run(exp, tags={"evalboard.job_id": str(job_id), "evalboard.fencing_token": "0"})
    dup = client.create_run(exp, tags={"evalboard.job_id": str(job_id), "evalboard.fencing_token": "0"})
    client.set_terminated(dup.info.run_id, "FINISHED")
    out = w.reconcile()
    assert out == {"killed": [dead.info.run_id], "superseded": [dup.info.run_id]}
    assert client.get_run(dead.info.run_id).info.status == "KILLED"
    assert sorted(mlflow_runs_by_job(stack.settings.mlflow_uri)[job_id]) == ["FAILED", "FINISHED", "KILLED"]
    assert w.reconcile() == {"killed": [], "superseded": []}
    del mlflow


def test_a_job_cancelled_from_the_dashboard_cannot_be_published_by_the_worker_that_held_it(sqlite_stack, workspace):
    """A worker's lease runs out (it looks dead), the job goes back to the queue and is cancelled
    on the dashboard; the worker, still alive, runs it anyway: the cancel bumped the fencing token,
    so it publishes nothing (no MLflow run, no result) and the job stays cancelled."""
    import time

    from dashboard import data

    stack = sqlite_stack
    (job_id, other) = enqueue_run(stack, workspace)
    queue.cancel(stack.reg, job_id=other)
    held = queue.claim(stack.reg, worker_id="slow", lease_seconds=0.2)
    assert held is not None and held.id == job_id
    deadline = time.monotonic() + 30
    while queue.reap_expired(stack.reg)["queued"] != [job_id]:
        assert time.monotonic() < deadline, "the lease never expired"
        time.sleep(0.05)
    assert data.cancel_jobs(stack.reg, [job_id]) == 1
    cancelled = stack.reg.get_job(id=job_id)
    assert cancelled.status == "cancelled" and cancelled.fencing_token == held.fencing_token + 1

    slow = worker(stack, worker_id="slow")
    slow.device = torch.device("cpu")
    assert slow.run_job(held) == 0 and slow.stats.lost == 1 and slow.stats.done == 0
    with pytest.raises(queue.LeaseLost):
        queue.complete(stack.reg, job_id=job_id, token=held.fencing_token)
    assert stack.reg.get_job(id=job_id).status == "cancelled"
    assert mlflow_runs_by_job(stack.settings.mlflow_uri).get(job_id, []) in ([], ["FAILED"])
    assert [r for r in stack.reg.list_eval_results() if r.source == "evaluator"] == []
