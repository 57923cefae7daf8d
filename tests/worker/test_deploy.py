"""The deploy scripts are at least well-formed, and run the command they say they run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_slurm_script_is_valid_bash_and_requires_shared_services():
    script = DEPLOY / "slurm_workers.sbatch"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode != 0 and "EVALBOARD_DB" in done.stderr and "postgresql" in done.stderr
    text = script.read_text()
    assert "#SBATCH --gres=gpu:1" in text and "worker --device cuda:0" in text


def test_slurm_script_runs_the_worker_with_its_arguments(tmp_path):
    fake = tmp_path / "evalboard"
    fake.write_text('#!/bin/bash\necho "$@" > "$EVALBOARD_HOME/args"\n')
    fake.chmod(0o755)
    env = {
        "PATH": "/usr/bin:/bin",
        "EVALBOARD_DB": "postgresql://x@h/db",
        "MLFLOW_TRACKING_URI": "http://h:5000",
        "EVALBOARD_MODELS": "a=/m",
        "EVALBOARD": str(fake),
        "EVALBOARD_HOME": str(tmp_path),
    }
    done = subprocess.run(["bash", str(DEPLOY / "slurm_workers.sbatch"), "--max-jobs", "5"], env=env)
    assert done.returncode == 0
    assert (tmp_path / "args").read_text().split() == [
        "worker",
        "--device",
        "cuda:0",
        "--once",
        "--lease-seconds",
        "120",
        "--max-jobs",
        "5",
    ]


def test_systemd_unit_is_well_formed():
    unit = (DEPLOY / "evalboard-worker@.service").read_text()
    for needed in (
        "[Unit]",
        "[Service]",
        "[Install]",
        "worker --device cuda:%i",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
    ):
        assert needed in unit
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed; checked the sections only")
