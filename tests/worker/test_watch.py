"""Watch mode: checkpoints written into a watched folder while `evalboard watch` runs are each
enqueued exactly once, and only once complete, including one written slowly in pieces."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from evalboard.fixtures import write_trainable_rows
from registry.watch import Watcher, file_state
from tests.worker._procs import child_env
from tests.worker.conftest import EVALSET, wait_until


def _jobs_by_path(reg) -> dict[str, int]:
    cks = {c.id: c.path for c in reg.list_checkpoints()}
    out: dict[str, int] = {}
    for j in reg.list_jobs():
        out[cks[j.checkpoint_id]] = out.get(cks[j.checkpoint_id], 0) + 1
    return out


def test_watch_enqueues_each_checkpoint_once_and_only_when_complete(sqlite_stack, workspace, tmp_path):
    stack = sqlite_stack
    staging = tmp_path / "staging"
    for step in (10, 20):
        write_trainable_rows(
            staging / f"checkpoint_{step}",
            workspace.token_space,
            base_model=workspace.base_model,
            hidden_size=64,
            step=step,
            seed=900 + step,
        )
    run = Path(os.path.realpath(tmp_path)) / "outputs" / "live_run"
    run.mkdir(parents=True)
    workspace.token_space.save(run / "token_space.json")
    log = tmp_path / "watch.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "evalboard.cli",
            "watch",
            str(run.parent),
            "--evalset",
            EVALSET,
            "--interval",
            "0.2",
            "--settle-seconds",
            "1.5",
        ],
        cwd=str(tmp_path),
        env=child_env(stack.env),
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: "watching" in log.read_text(), timeout=60, what="the watcher to start")
        # 1. a checkpoint that appears at once (renamed into place, as careful trainers do)
        shutil.copytree(staging / "checkpoint_10", run / ".tmp_checkpoint_10")
        os.rename(run / ".tmp_checkpoint_10", run / "checkpoint_10")
        wait_until(
            lambda: _jobs_by_path(stack.reg).get(str(run / "checkpoint_10")), timeout=60, what="checkpoint_10 enqueued"
        )
        # 2. one written slowly, in pieces: after each, the watcher has seen it change and not queued it
        slow = run / "checkpoint_20"
        slow.mkdir()
        src = staging / "checkpoint_20"

        def seen_changes() -> int:
            return log.read_text().count(f"settling {slow}:")

        (slow / "trainable_rows.json").write_bytes((src / "trainable_rows.json").read_bytes())
        data = (src / "trainable_rows.pt").read_bytes()
        piece = len(data) // 6 + 1
        with open(slow / "trainable_rows.pt", "wb") as f:
            for i in range(0, len(data), piece):
                before = seen_changes()
                f.write(data[i : i + piece])
                f.flush()
                wait_until(
                    lambda seen=before: seen_changes() > seen,
                    timeout=30,
                    what="the watcher to see a piece",
                    interval=0.02,
                )
                assert str(slow) not in _jobs_by_path(stack.reg), "enqueued while still being written"
        before = seen_changes()
        (slow / "token_space.json").write_bytes((src / "token_space.json").read_bytes())
        written = time.time()
        wait_until(lambda: seen_changes() > before, timeout=30, what="the watcher to see token_space.json")
        wait_until(lambda: _jobs_by_path(stack.reg).get(str(slow)), timeout=60, what="checkpoint_20 enqueued")
        job = next(j for j in stack.reg.list_jobs() if stack.reg.get_checkpoint(id=j.checkpoint_id).path == str(slow))
        assert job.enqueued_at.timestamp() >= written + 1.0  # after the files settled, not before
        ck = stack.reg.get_checkpoint(path=str(slow))
        assert ck.is_valid and {f["name"] for f in ck.files} >= {"trainable_rows.pt", "token_space.json"}
        # 3. another watcher over the same folder handles both again: each is still enqueued once
        again = subprocess.run(
            [
                sys.executable,
                "-m",
                "evalboard.cli",
                "watch",
                str(run.parent),
                "--evalset",
                EVALSET,
                "--interval",
                "0.1",
                "--settle-seconds",
                "0.2",
                "--once",
            ],
            cwd=str(tmp_path),
            env=child_env(stack.env),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert again.returncode == 0, again.stderr[-3000:]
        assert again.stderr.count("already-queued") == 2, again.stderr[-3000:]
        assert _jobs_by_path(stack.reg) == {str(run / "checkpoint_10"): 1, str(slow): 1}
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == 0, log.read_text()[-3000:]


def test_watcher_waits_for_the_settle_time_and_required_files(sqlite_stack, workspace, tmp_path):
    """The same rules, in-process with a fake clock: no sleeping."""
    now = [0.0]
    run = Path(os.path.realpath(tmp_path)) / "run"
    run.mkdir()
    workspace.token_space.save(run / "token_space.json")
    w = Watcher(sqlite_stack.reg, [run], sqlite_stack.evalset(), settle_seconds=10, clock=lambda: now[0])
    ck = run / "checkpoint_5"
    ck.mkdir()
    (ck / "trainable_rows.pt").write_bytes(b"partial")
    from registry import tracks

    assert file_state(ck, tracks.for_dir(ck)) is None and w.poll() == []  # trainable_rows.json missing
    write_trainable_rows(ck, workspace.token_space, base_model=workspace.base_model, hidden_size=64, step=5)
    assert w.poll() == [] and w.settling  # first sighting
    now[0] = 9.9
    assert w.poll() == []  # not settled yet
    now[0] = 10.0
    (event,) = w.poll()
    assert event.action == "enqueued" and event.job_id is not None
    now[0] = 50.0
    assert w.poll() == []  # handled: unchanged files are not looked at again
    assert len(sqlite_stack.reg.list_jobs()) == 1


def test_a_slowly_written_checkpoint_leaves_no_entry_and_no_job_until_settled(sqlite_stack, workspace, tmp_path):
    """A writer that does not rename atomically (files appear and grow in place, pauses shorter
    than the settle time): nothing at all is registered, valid or invalid, and nothing is queued
    until the files have stopped changing for `settle_seconds`. Fake clock: no sleeping."""
    now = [0.0]
    src = write_trainable_rows(
        tmp_path / "staging" / "checkpoint_30",
        workspace.token_space,
        base_model=workspace.base_model,
        hidden_size=64,
        step=30,
        seed=31,
    )
    run = Path(os.path.realpath(tmp_path)) / "slow_run"
    run.mkdir()
    workspace.token_space.save(run / "token_space.json")
    w = Watcher(sqlite_stack.reg, [run], sqlite_stack.evalset(), settle_seconds=5, clock=lambda: now[0])
    ck = run / "checkpoint_30"
    ck.mkdir()
    data = (src / "trainable_rows.pt").read_bytes()
    with open(ck / "trainable_rows.pt", "wb") as f:
        (ck / "trainable_rows.json").write_bytes((src / "trainable_rows.json").read_bytes())
        for i in range(0, len(data), len(data) // 8 + 1):
            f.write(data[i : i + len(data) // 8 + 1])
            f.flush()
            assert w.poll() == []
            assert sqlite_stack.reg.list_checkpoints() == [] and sqlite_stack.reg.list_jobs() == []
            now[0] += 4.0  # each piece comes before the settle time is up
    (ck / "token_space.json").write_bytes((src / "token_space.json").read_bytes())
    assert w.poll() == [] and sqlite_stack.reg.list_checkpoints() == []
    now[0] += 4.9
    assert w.poll() == [] and sqlite_stack.reg.list_checkpoints() == []
    now[0] += 0.1
    (event,) = w.poll()
    assert event.action == "enqueued"
    (registered,) = sqlite_stack.reg.list_checkpoints()
    assert registered.is_valid and registered.path == str(ck)
    assert [j.checkpoint_id for j in sqlite_stack.reg.list_jobs()] == [registered.id]
