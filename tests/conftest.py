"""Session-wide fixtures. Database part: every store test runs on a real SQLite file and on a
real PostgreSQL server started once per session (or `EVALBOARD_TEST_PG_URL`, a server whose
user may create databases)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._infra.postgres import PostgresUnavailable, create_database, drop_database, start_postgres

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _isolated_workspace(tmp_path_factory) -> Iterator[None]:
    """Every test runs in an empty workspace of its own, so nothing reads or writes a
    `.evalboard` in the repo (or a workspace config above it); tests that need a particular
    registry or MLflow store set EVALBOARD_DB / MLFLOW_TRACKING_URI / EVALBOARD_HOME on top."""
    folder = Path(os.path.realpath(tmp_path_factory.mktemp("default-workspace")))
    absent = [p for p in (REPO_ROOT / ".evalboard", REPO_ROOT / "mlruns") if not p.exists()]
    saved = os.environ.get("EVALBOARD_WORKSPACE")
    os.environ["EVALBOARD_WORKSPACE"] = str(folder)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("EVALBOARD_WORKSPACE", None)
        else:
            os.environ["EVALBOARD_WORKSPACE"] = saved
    created = [str(p) for p in absent if p.exists()]
    assert not created, f"tests created {created}: tests must keep their state in tmp folders"


def _pg_admin_url(url: str) -> str:
    """The same server's `postgres` maintenance database, from which test databases are made."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(database="postgres").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of a PostgreSQL database for the session; skipped (failed under CI=true) if none."""
    given = os.environ.get("EVALBOARD_TEST_PG_URL")
    if given:
        yield given
        return
    try:
        server = start_postgres()
    except PostgresUnavailable as e:
        reason = f"PostgreSQL unavailable: {e}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def fresh_pg_url(pg_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database for one test, dropped afterwards."""
    from sqlalchemy.engine import make_url

    name = f"test_{uuid.uuid4().hex[:16]}"
    admin = _pg_admin_url(pg_url)
    create_database(admin, name)
    try:
        yield make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    finally:
        drop_database(admin, name)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A fresh, empty registry database URL, once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    return request.getfixturevalue("fresh_pg_url")


@pytest.fixture
def registry(db_url: str):
    """A migrated `Registry` on a fresh database (both backends), closed after the test."""
    from registry.store import Registry

    with Registry(db_url) as reg:
        yield reg


@pytest.fixture(scope="session")
def session_ws(tmp_path_factory):
    """The standard workspace (`evalboard.fixtures.build_workspace`: tiny Qwen3 base, two Track B
    runs, one in a wider image range, a Track A run, a broken checkpoint, an eval set), built once
    per session. Read-only: tests that edit files take `workspace`, a private copy."""
    from evalboard.fixtures import build_workspace

    return build_workspace(Path(os.path.realpath(tmp_path_factory.mktemp("session-workspace"))))


@pytest.fixture
def workspace(session_ws, tmp_path):
    """A private, editable copy of the session workspace."""
    from tests._infra.workspace import copy_workspace

    return copy_workspace(session_ws, tmp_path / "ws")


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory):
    """`evalboard demo --no-serve --quick` run once per session (real training, evaluation and
    MLflow logging): returns (workdir, completed process)."""
    import subprocess
    import sys

    workdir = tmp_path_factory.mktemp("quick-demo") / "ws"
    proc = subprocess.run(
        [sys.executable, "-m", "evalboard.cli", "demo", "--workdir", str(workdir), "--no-serve", "--quick"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, proc
