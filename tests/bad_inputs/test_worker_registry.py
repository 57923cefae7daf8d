"""A worker never creates a registry. Given a database that does not exist (or holds no
evalboard registry) it says which one it could not find, exits 2, and leaves no file behind."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.bad_inputs._helpers import cli, refusal


def test_a_worker_given_a_missing_database_creates_none(tmp_path: Path) -> None:
    db = tmp_path / "nowhere" / "registry.db"
    proc = cli(["worker", "--once"], home=tmp_path / "home", env={"EVALBOARD_DB": f"sqlite:///{db}"}, timeout=60)
    refusal(proc, db, "does not exist", "never creates a registry")
    assert not db.exists() and not db.parent.exists()


def test_a_worker_in_an_empty_home_creates_no_registry(tmp_path: Path) -> None:
    home = tmp_path / "home"
    refusal(cli(["worker", "--once"], home=home, timeout=60), home / "registry.db", "does not exist")
    assert not (home / "registry.db").exists()


def test_a_worker_given_a_database_without_a_registry(tmp_path: Path) -> None:
    db = tmp_path / "other.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE notes (x TEXT)")
    proc = cli(["worker", "--once"], home=tmp_path / "home", env={"EVALBOARD_DB": f"sqlite:///{db}"}, timeout=60)
    refusal(proc, str(db), "holds no evalboard registry")
    with sqlite3.connect(db) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["notes"]


def test_a_worker_with_an_existing_registry_still_starts(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert cli(["runs"], home=home, timeout=60).returncode == 0  # any command but a worker creates it
    proc = cli(["worker", "--once", "--device", "cpu"], home=home, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
