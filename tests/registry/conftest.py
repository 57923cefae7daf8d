"""Fixtures for the format, scanner and audit tests.

`registry` (both SQLite and PostgreSQL) comes from `tests/conftest.py`; `sqlite_registry` here is
the fast single-backend one for tests that are about formats or findings, not the store.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.token_space import TokenSpace
from tests._infra.workspace import small_token_space


@pytest.fixture
def sqlite_registry(tmp_path: Path):
    from registry.store import Registry

    with Registry(f"sqlite:///{tmp_path / 'registry.db'}") as reg:
        yield reg


@pytest.fixture
def token_space() -> TokenSpace:
    """256 text rows, audio 256–319, image 320–383."""
    return small_token_space()
