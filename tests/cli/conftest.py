"""Fixtures for the CLI tests: the session's tiny workspace and a private EVALBOARD_HOME."""

from __future__ import annotations

from pathlib import Path

import pytest

from evalboard.fixtures import Workspace
from tests._infra.workspace import copy_workspace, session_workspace


@pytest.fixture(scope="session")
def session_ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """Two Track B runs (one in a wider image range), a Track A run, a broken checkpoint and
    an eval set, built once per session. Read-only: use `workspace` to edit."""
    return session_workspace(tmp_path_factory.getbasetemp())


@pytest.fixture
def workspace(session_ws: Workspace, tmp_path: Path) -> Workspace:
    """A private copy of the session workspace."""
    return copy_workspace(session_ws, tmp_path / "ws")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty EVALBOARD_HOME for one test."""
    return tmp_path / "home"
