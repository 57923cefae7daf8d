"""Dashboard fixtures: the standard fixture workspace (tiny Qwen3, Track A/B runs, an eval set)
built once per session, scanned into a template registry populated with evaluator-style results
(decreasing losses, per-example Parquet files, MLflow ids) and row statistics; each test gets its
own copy of that registry (and of an empty MLflow store, where those ids name no run), or an
empty one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.dashboard._helpers import populate
from tests.evaluator import conftest as _evaluator

# real evaluations logged to a real MLflow store, and the empty MLflow store they start from
eval_env = _evaluator.eval_env
mlflow_template = _evaluator.mlflow_template


@pytest.fixture(scope="session")
def template_db(session_ws, tmp_path_factory) -> Path:
    from registry.scanner import scan
    from registry.store import Registry

    d = tmp_path_factory.mktemp("template")
    db = d / "registry.db"
    with Registry(f"sqlite:///{db}") as reg:
        scan(reg, [session_ws.root / "outputs", session_ws.root / "evalsets"])
        populate(reg, d)
    return db


@pytest.fixture
def populated(template_db, mlflow_template, tmp_path, monkeypatch) -> str:
    """A populated registry private to the test; its URL is in EVALBOARD_DB."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(mlflow_template, home / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    db = tmp_path / "registry.db"
    for suffix in ("", "-wal", "-shm"):  # WAL mode: committed pages may still sit in the -wal file
        src = template_db.with_name(template_db.name + suffix)
        if src.exists():
            shutil.copy(src, db.with_name(db.name + suffix))
    url = f"sqlite:///{db}"
    monkeypatch.setenv("EVALBOARD_DB", url)
    monkeypatch.setenv("EVALBOARD_HOME", str(home))
    return url


@pytest.fixture
def empty(tmp_path, monkeypatch) -> str:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    monkeypatch.setenv("EVALBOARD_DB", url)
    monkeypatch.setenv("EVALBOARD_HOME", str(tmp_path / "home"))
    return url
