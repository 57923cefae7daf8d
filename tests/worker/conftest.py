"""Worker tests: a tiny real Qwen3 base, Track B checkpoints and an eval set built once per
session; each test gets its own registry (SQLite file or PostgreSQL database) and MLflow store."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from evalboard.fixtures import Workspace, build_workspace, write_trainable_rows
from registry.settings import Settings
from registry.store import Registry

EVALSET = "synthetic-a2t-i2t"
FAULT_RUNS, FAULT_STEPS = 4, 10


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Workspace:
    """Two Track B runs (the second in another token space) plus 4 runs x 10 steps for the fault test."""
    root = Path(os.path.realpath(tmp_path_factory.mktemp("worker-ws")))
    ws = build_workspace(root, steps=(100, 200), with_broken=False, with_track_a=False, with_eval_json=False)
    for r in range(FAULT_RUNS):
        run_dir = root / "fault-outputs" / f"fault_run_{r}"
        run_dir.mkdir(parents=True, exist_ok=True)
        ws.token_space.save(run_dir / "token_space.json")
        ws.checkpoints[f"fault_run_{r}"] = [
            write_trainable_rows(
                run_dir / f"checkpoint_{(s + 1) * 10}",
                ws.token_space,
                base_model=ws.base_model,
                hidden_size=64,
                step=(s + 1) * 10,
                seed=5000 + r * 100 + s,
            )
            for s in range(FAULT_STEPS)
        ]
    return ws


@dataclass
class Stack:
    """One registry + MLflow store + environment for worker subprocesses."""

    reg: Registry
    settings: Settings
    env: dict[str, str]
    home: Path

    def scan(self, *paths: Path) -> None:
        from registry.scanner import scan

        scan(self.reg, list(paths))

    def evalset(self):
        return self.reg.get_evalset(name=EVALSET)


def make_stack(tmp_path: Path, db_url: str, ws: Workspace, mlflow_uri: str | None = None) -> Stack:
    from registry.scanner import register_evalset

    home = Path(os.path.realpath(tmp_path)) / "home"
    home.mkdir(parents=True, exist_ok=True)
    mlflow_uri = mlflow_uri or f"sqlite:///{home / 'mlflow.db'}"
    env = {
        "EVALBOARD_HOME": str(home),
        "EVALBOARD_DB": db_url,
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "EVALBOARD_MODELS": f"{ws.base_model}={ws.base_dir}",
    }
    settings = Settings.from_env(env)
    reg = Registry(db_url)
    register_evalset(reg, ws.evalsets[EVALSET])
    return Stack(reg, settings, env, home)


@pytest.fixture
def stack(tmp_path, db_url, workspace):
    s = make_stack(tmp_path, db_url, workspace)
    yield s
    s.reg.close()


@pytest.fixture
def sqlite_stack(tmp_path, workspace):
    s = make_stack(tmp_path, f"sqlite:///{tmp_path / 'registry.db'}", workspace)
    yield s
    s.reg.close()


def wait_until(predicate, timeout: float = 60.0, what: str = "condition", interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def mlflow_runs_by_job(uri: str) -> dict[int, list[str]]:
    """job id -> statuses of the MLflow runs tagged with it."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments(max_results=1000)]
    out: dict[int, list[str]] = {}
    token = None
    while True:
        page = client.search_runs(exps, "tags.`evalboard.job_id` LIKE '%'", max_results=1000, page_token=token)
        for run in page:
            out.setdefault(int(run.data.tags["evalboard.job_id"]), []).append(run.info.status)
        token = page.token
        if not token:
            return out
