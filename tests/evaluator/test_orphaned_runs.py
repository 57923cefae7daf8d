"""An MLflow run whose process died (`evalboard eval` SIGKILLed, not a queued job) is ended KILLED
by `evalboard jobs reconcile`, told apart from live processes by the host, pid and process start
time the run is tagged with; runs of other hosts are left alone unless named with --host-gone."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from evaluator.tracking import TAG, Tracker, owner_tags, process_start

DEADLINE_S = 240


@pytest.fixture
def tracker(mlflow_template, tmp_path) -> Tracker:
    shutil.copy(mlflow_template, tmp_path / "mlflow.db")
    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_location=(tmp_path / "artifacts").as_uri())


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _run(tracker: Tracker, exp_id: str, name: str, **tags: str) -> str:
    run_id = tracker._start_run(exp_id, name, {})
    for k, v in tags.items():
        tracker.client.set_tag(run_id, f"{TAG}{k}", v)
    return run_id


def test_reconcile_ends_the_runs_of_gone_processes_of_this_host_only(tracker):
    exp = tracker.experiment_id("orphans")
    here, dead = socket.gethostname(), str(_dead_pid())
    live = _run(tracker, exp, "live")  # tagged with this very process
    reused = _run(tracker, exp, "pid reused", pid_start="0:1")  # same pid, another process's start time
    gone = _run(tracker, exp, "gone", pid=dead, pid_start="")
    foreign = _run(tracker, exp, "other host", host="gone-host.invalid", pid=dead)
    job = _run(tracker, exp, "queued job", pid=dead, job_id="7", fencing_token="1")
    legacy = _run(tracker, exp, "no process tags")
    for key in ("host", "pid", "pid_start"):
        tracker.client.delete_tag(legacy, f"{TAG}{key}")

    out = tracker.reconcile(lambda: {7: 1}, lambda: {})

    assert sorted(out["killed"]) == sorted([reused, gone])
    status = {r: tracker.client.get_run(r).info.status for r in (live, reused, gone, foreign, job, legacy)}
    assert status == {
        live: "RUNNING",
        reused: "KILLED",
        gone: "KILLED",
        foreign: "RUNNING",  # this host cannot see that host's processes
        job: "RUNNING",  # a live lease: its worker decides
        legacy: "RUNNING",  # nothing tells whether its process lives
    }
    assert tracker.client.get_run(gone).data.tags[f"{TAG}reconciled"] == f"process {dead} on {here} is gone"
    out = tracker.reconcile(lambda: {7: 1}, lambda: {}, hosts_gone=["gone-host.invalid"])
    assert out["killed"] == [foreign] and tracker.client.get_run(foreign).info.status == "KILLED"


def test_owner_tags_name_this_process():
    tags = owner_tags()
    assert tags[f"{TAG}pid"] == str(os.getpid()) and tags[f"{TAG}host"] == socket.gethostname()
    assert tags[f"{TAG}pid_start"] == process_start(os.getpid()) and tags[f"{TAG}pid_start"]
    assert process_start(_dead_pid()) is None


class _HoldingArtifactServer(ThreadingHTTPServer):
    """An MLflow artifact endpoint that holds the first upload made while a run is RUNNING: the
    uploading process is then inside its run, which nothing but that process will end."""

    def __init__(self, mlflow_db: Path):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mlflow_db = mlflow_db
        self.held = threading.Event()
        self.release = threading.Event()

    def running_runs(self) -> list[str]:
        with sqlite3.connect(self.mlflow_db, timeout=30) as conn:
            return [r[0] for r in conn.execute("SELECT run_uuid FROM runs WHERE status = 'RUNNING'")]


class _Handler(BaseHTTPRequestHandler):
    server: _HoldingArtifactServer

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.server.running_runs() and not self.server.held.is_set():
            self.server.held.set()
            self.server.release.wait(DEADLINE_S)
        try:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        except OSError:
            pass  # the uploader was killed meanwhile

    def log_message(self, *args) -> None:
        pass


@pytest.mark.slow
def test_a_sigkilled_eval_leaves_a_run_that_reconcile_ends_killed(eval_env):
    home = eval_env.home
    server = _HoldingArtifactServer(home / "mlflow.db")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {
        **eval_env.env(),
        "EVALBOARD_ARTIFACT_LOCATION": f"http://127.0.0.1:{server.server_port}/artifacts",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    ck = eval_env.checkpoint("stage3_token_lm_iter5", 100)
    args = ["eval", ck.path, "--evalset", eval_env.evalset.name, "--max-examples", "2", "--no-eval-json"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "evalboard.cli", *args],
        cwd=eval_env.root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + DEADLINE_S
        while not server.held.wait(0.2):  # until the process is inside its RUNNING run
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the evaluation never reached its MLflow run"
        (run_id,) = server.running_runs()
        tracker = Tracker(eval_env.mlflow_uri)
        tags = tracker.client.get_run(run_id).data.tags
        assert tags[f"{TAG}pid"] == str(proc.pid) and tags[f"{TAG}host"] == socket.gethostname()
        assert tracker.reconcile(lambda: {}, lambda: {})["killed"] == []  # its process still runs

        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.release.set()
        server.shutdown()
        server.server_close()
    assert tracker.client.get_run(run_id).info.status == "RUNNING"  # what a SIGKILL leaves

    done = subprocess.run(
        [sys.executable, "-m", "evalboard.cli", "jobs", "reconcile", "--json"],
        cwd=eval_env.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["killed"] == [run_id]
    run = tracker.client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags[f"{TAG}reconciled"] == f"process {proc.pid} on {socket.gethostname()} is gone"
