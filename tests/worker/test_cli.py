"""The queue's commands as a user's shell runs them: enqueue (and its refusal), jobs, worker
(--once, --max-jobs, CPU fallback, an unusable --device, SIGTERM), and the network-filesystem check."""

from __future__ import annotations

import json
import signal
import sys

import pytest

from tests.worker._procs import FAST, run_cli, start_worker
from tests.worker.conftest import EVALSET, wait_until


def _jobs(stack, cwd) -> list[dict]:
    done = run_cli(["jobs", "--json"], stack.env, cwd)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_enqueue_jobs_and_worker_once(sqlite_stack, workspace, tmp_path):
    stack = sqlite_stack
    cks = workspace.checkpoints["stage3_token_lm_iter5"]
    done = run_cli(["enqueue", *cks, "--evalset", EVALSET, "--json"], stack.env, tmp_path)
    assert done.returncode == 0, done.stderr
    first = json.loads(done.stdout)
    assert [r["created"] for r in first] == [True, True]
    again = run_cli(["enqueue", cks[0], "--evalset", EVALSET, "--json"], stack.env, tmp_path)  # double click
    assert json.loads(again.stdout)[0] == {**first[0], "created": False}
    assert [j["status"] for j in _jobs(stack, tmp_path)] == ["queued", "queued"]

    ran = run_cli(["worker", "--once", "--max-jobs", "1", "--lease-seconds", "10"], stack.env, tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert "no GPU visible; running on the CPU" in ran.stderr
    assert sum(line.count(" done: ") for line in ran.stderr.splitlines()) == 1
    assert sorted(j["status"] for j in _jobs(stack, tmp_path)) == ["done", "queued"]
    rest = run_cli(["worker", "--once", "--lease-seconds", "10"], stack.env, tmp_path)
    assert rest.returncode == 0, rest.stderr
    rows = _jobs(stack, tmp_path)
    assert [j["status"] for j in rows] == ["done", "done"] and all(j["losses"]["all"] > 0 for j in rows)
    table = run_cli(["jobs"], stack.env, tmp_path)
    assert table.returncode == 0 and table.stdout.count(" done ") == 2


def test_enqueue_refuses_a_token_space_mismatch_with_the_audits_reason(sqlite_stack, workspace, tmp_path):
    wide = workspace.checkpoints["stage3_token_lm_wide_image"][0]
    done = run_cli(["enqueue", wide, "--evalset", EVALSET], sqlite_stack.env, tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "not queued on eval set 'synthetic-a2t-i2t'" in done.stderr and "image" in done.stderr
    assert sqlite_stack.reg.list_jobs() == []


def test_jobs_cancel_and_retry(sqlite_stack, workspace, tmp_path):
    stack = sqlite_stack
    run_cli(["enqueue", workspace.checkpoints["stage3_token_lm_iter5"][0], "--evalset", EVALSET], stack.env, tmp_path)
    (job,) = stack.reg.list_jobs()
    assert run_cli(["jobs", "cancel", job.id], stack.env, tmp_path).returncode == 0
    assert [j["status"] for j in _jobs(stack, tmp_path)] == ["cancelled"]
    assert run_cli(["jobs", "retry", job.id], stack.env, tmp_path).returncode == 0
    assert [j["status"] for j in _jobs(stack, tmp_path)] == ["queued"]
    missing = run_cli(["jobs", "cancel", "999"], stack.env, tmp_path)
    assert missing.returncode == 2 and "no job with id 999" in missing.stderr


@pytest.mark.skipif(sys.platform != "linux", reason="CUDA device check")
def test_worker_for_a_missing_device_claims_nothing(sqlite_stack, workspace, tmp_path):
    import torch

    stack = sqlite_stack
    run_cli(["enqueue", workspace.checkpoints["stage3_token_lm_iter5"][0], "--evalset", EVALSET], stack.env, tmp_path)
    missing = f"cuda:{torch.cuda.device_count() + 1}"
    done = run_cli(["worker", "--device", missing, "--once"], stack.env, tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"--device {missing}" in done.stderr
    (job,) = stack.reg.list_jobs()
    assert job.status == "queued" and job.attempts == 0
    if not torch.cuda.is_available():
        gpus = run_cli(["worker", "--gpus", "all"], stack.env, tmp_path)
        assert gpus.returncode == 2 and "--gpus all: torch sees no CUDA device" in gpus.stderr


def _stop_while_running(stack, proc):
    """Freeze the worker process (SIGSTOP) while it holds a job; returns the job it holds then,
    or None when it was caught between two jobs."""
    import os

    wait_until(lambda: stack.reg.list_jobs(status="running"), timeout=90, what="a job running", interval=0.01)
    os.kill(proc.pid, signal.SIGSTOP)
    running = stack.reg.list_jobs(status="running")
    return running[0] if running else None


def test_sigterm_finishes_the_current_job_and_claims_no_more(sqlite_stack, workspace, tmp_path):
    import os

    stack = sqlite_stack
    cks = workspace.checkpoints["fault_run_0"]
    run_cli(["enqueue", *cks, "--evalset", EVALSET], stack.env, tmp_path)
    proc = start_worker(stack.env, tmp_path / "worker.log", FAST)
    try:
        current = _stop_while_running(stack, proc)
        done_before = len(stack.reg.list_jobs(status="done"))
        proc.send_signal(signal.SIGTERM)  # delivered when the process continues
        os.kill(proc.pid, signal.SIGCONT)
        assert proc.wait(60) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    jobs = {j.id: j for j in stack.reg.list_jobs()}
    assert {j.status for j in jobs.values()} <= {"done", "queued"}
    if current is not None:
        assert jobs[current.id].status == "done"
    assert len([j for j in jobs.values() if j.status == "done"]) == done_before + (current is not None)
    assert any(j.status == "queued" for j in jobs.values())


def test_second_sigterm_releases_the_job(sqlite_stack, workspace, tmp_path):
    import os

    stack = sqlite_stack
    run_cli(["enqueue", workspace.checkpoints["stage3_token_lm_iter5"][0], "--evalset", EVALSET], stack.env, tmp_path)
    proc = start_worker(stack.env, tmp_path / "worker.log", FAST)
    try:
        assert _stop_while_running(stack, proc) is not None
        proc.send_signal(signal.SIGTERM)
        os.kill(proc.pid, signal.SIGCONT)
        # signals sent back to back may be delivered as one: wait until the first was handled
        wait_until(
            lambda: "got SIGTERM" in (tmp_path / "worker.log").read_text(),
            timeout=30,
            what="the first SIGTERM handled",
            interval=0.005,
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 130, (tmp_path / "worker.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    (job,) = stack.reg.list_jobs()
    assert job.status == "queued" and job.attempts == 0 and "interrupted" in job.last_error


def test_sqlite_registry_on_a_network_filesystem_is_refused_at_worker_startup(tmp_path, monkeypatch, capsys):
    import registry.engine as engine
    from evalboard import cli

    db = tmp_path / "nfs" / "registry.db"
    monkeypatch.setattr(engine, "_read_mounts", lambda: f"server:/export {tmp_path / 'nfs'} nfs4 rw 0 0\n")
    monkeypatch.setenv("EVALBOARD_DB", f"sqlite:///{db}")
    monkeypatch.setenv("EVALBOARD_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(sys, "argv", ["evalboard", "worker", "--once"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "nfs4 network filesystem" in err and "use PostgreSQL" in err and not db.exists()
