"""Fixtures for the format, scanner and audit tests.

`registry` (both SQLite and PostgreSQL) comes from `tests/conftest.py`; `sqlite_registry` here is
the fast single-backend one for tests that are about formats or findings, not the store.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from evalboard.fixtures import Workspace
from registry.token_space import TokenSpace
from tests._infra.workspace import copy_workspace, session_workspace, small_token_space


@pytest.fixture(scope="session")
def session_ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """Two Track B runs (one in a wider image range), a Track A run, a broken checkpoint and
    an eval set, built once per session. Read-only: use `workspace` to edit."""
    return session_workspace(tmp_path_factory.getbasetemp())


@pytest.fixture
def workspace(session_ws: Workspace, tmp_path: Path) -> Workspace:
    """A private, editable copy of the session workspace."""
    return copy_workspace(session_ws, tmp_path / "ws")


@pytest.fixture
def sqlite_registry(tmp_path: Path):
    from registry.store import Registry

    with Registry(f"sqlite:///{tmp_path / 'registry.db'}") as reg:
        yield reg


@pytest.fixture
def token_space() -> TokenSpace:
    """256 text rows, audio 256–319, image 320–383."""
    return small_token_space()
