"""A real `mlflow server` stopped while a job is in flight: the computed result is kept in the
registry (the outbox), the worker goes on with other jobs, and once the server is back the result
is logged exactly once, without computing the evaluation again."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from evaluator.worker import Worker, WorkerConfig, WorkerHooks
from registry import queue
from tests.worker.conftest import make_stack, mlflow_runs_by_job, wait_until
from tests.worker.test_worker import enqueue_run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    def __init__(self, root: Path):
        self.root, self.port, self.proc = root, _free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        mlflow_bin = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or "mlflow"
        log = open(self.root / "mlflow-server.log", "ab")
        self.proc = subprocess.Popen(
            [
                mlflow_bin,
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination",
                str(self.root / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.root,
        )
        wait_until(self.healthy, timeout=90, what="mlflow server /health", interval=0.2)

    def healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError("mlflow server exited: " + (self.root / "mlflow-server.log").read_text()[-2000:])
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server and its uvicorn workers: our own group
            self.proc.wait(30)


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.mark.slow
def test_result_is_kept_while_mlflow_is_down_and_logged_once_after(tmp_path, workspace, mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast instead of backing off for minutes
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    stack = make_stack(
        tmp_path / "stack", f"sqlite:///{tmp_path / 'registry.db'}", workspace, mlflow_uri=mlflow_server.uri
    )
    first, second = enqueue_run(stack, workspace, options={"write_eval_json": False})
    computes: Counter[int] = Counter()
    seen_while_down = {}

    def after_compute(job) -> None:
        computes[job.id] += 1
        if job.id == first:  # the server goes away between computing and logging
            mlflow_server.stop()
        else:  # by now the first job's result waits in the outbox; bring the server back
            seen_while_down.update(job=stack.reg.get_job(id=first), pending=queue.outbox_pending(stack.reg))
            mlflow_server.start()

    config = WorkerConfig(once=True, lease_seconds=30, poll_seconds=0.1, outbox_seconds=0.5)
    w = Worker(stack.reg, stack.settings, config, hooks=WorkerHooks(after_compute=after_compute))
    assert w.run() == 0

    kept = seen_while_down["job"]
    assert kept.status == "done" and kept.outbox_state == "pending" and kept.mlflow_run_id is None
    assert kept.result["record"]["losses"]["all"] > 0 and [j.id for j in seen_while_down["pending"]] == [first]
    assert computes == {first: 1, second: 1}  # nothing computed twice
    assert w.stats.outbox == 1 and w.stats.done == 2
    jobs = {i: stack.reg.get_job(id=i) for i in (first, second)}
    assert all(j.status == "done" and j.outbox_state == "logged" and j.mlflow_run_id for j in jobs.values())
    assert mlflow_runs_by_job(mlflow_server.uri) == {first: ["FINISHED"], second: ["FINISHED"]}
    from mlflow.tracking import MlflowClient

    logged = MlflowClient(mlflow_server.uri).get_run(jobs[first].mlflow_run_id).data.metrics
    assert logged["loss_all"] == pytest.approx(kept.result["record"]["losses"]["all"])
    results = [r for r in stack.reg.list_eval_results() if r.source == "evaluator"]
    assert sorted(r.extra["job_id"] for r in results) == [first, second]
    assert {r.extra["job_id"]: r.mlflow_run_id for r in results} == {i: j.mlflow_run_id for i, j in jobs.items()}
    # flushing again finds nothing, and a reconcile leaves the FINISHED runs alone
    assert w.flush_outbox() == 0 and w.reconcile()["superseded"] == []
    stack.reg.close()
