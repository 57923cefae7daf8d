"""Fixtures for the CLI tests: a private EVALBOARD_HOME (the workspace fixtures are in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty EVALBOARD_HOME for one test."""
    return tmp_path / "home"
