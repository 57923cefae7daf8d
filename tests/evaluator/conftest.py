"""Fixtures for evaluating real checkpoints end to end: a workspace (tiny Qwen3 base, Track A/B
runs, an eval set) built once, copied per test, scanned into a fresh registry, with a fresh
MLflow sqlite store copied from a template (creating one takes seconds: it runs migrations)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

BASE_ID = "demo/Qwen3-tiny-Base"


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(scope="session")
def track_a_ws(tmp_path_factory) -> Path:
    """Built once: base, tower, a connector run (3 checkpoints), a LLaVA-layout run, an image eval set."""
    from tests.evaluator._track_a import build_track_a_workspace

    return build_track_a_workspace(tmp_path_factory.mktemp("track-a"))


@dataclass
class EvalEnv:
    root: Path
    home: Path
    reg: object
    settings: object
    mlflow_uri: str
    evalset: object

    def checkpoint(self, run: str, step: int):
        return self.reg.get_checkpoint(path=str(self.root / "outputs" / run / f"checkpoint_{step}"))

    def env(self) -> dict[str, str]:
        """Environment for a CLI subprocess that sees the same registry, MLflow store and models."""
        import os

        return {
            **os.environ,
            "EVALBOARD_HOME": str(self.home),
            "EVALBOARD_DB": self.settings.db_url,
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "EVALBOARD_MODELS": f"{BASE_ID}={self.root / 'models' / 'tiny-qwen3'}",
        }


@pytest.fixture
def eval_env(session_ws, mlflow_template, tmp_path, monkeypatch) -> EvalEnv:
    from registry.scanner import scan
    from registry.settings import Settings
    from registry.store import Registry

    root = tmp_path / "ws"
    shutil.copytree(session_ws.root, root, symlinks=True)
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(mlflow_template, home / "mlflow.db")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    monkeypatch.setenv("EVALBOARD_HOME", str(home))
    monkeypatch.setenv("EVALBOARD_DB", f"sqlite:///{home / 'registry.db'}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("EVALBOARD_MODELS", f"{BASE_ID}={root / 'models' / 'tiny-qwen3'}")
    settings = Settings.from_env()
    reg = Registry(settings=settings)
    scan(reg, [root / "outputs", root / "evalsets"])
    es = reg.get_evalset(name="synthetic-a2t-i2t")
    yield EvalEnv(root, home, reg, settings, uri, es)
    reg.close()
