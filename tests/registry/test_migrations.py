"""The hand-written migrations create exactly the tables of models.py, on both backends;
several processes starting at once on a fresh database all succeed; a registry a newer evalboard
migrated is refused in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from registry.engine import normalize_url
from registry.errors import StoreError
from registry.migrations import alembic_config
from registry.models import Base
from registry.store import Registry
from tests._infra.workspace import run_cli

REPO_ROOT = Path(__file__).resolve().parents[2]
HEAD = "0003"  # the newest revision in registry/migrations/versions


def _versions(url: str) -> list[str]:
    engine = create_engine(normalize_url(url))
    try:
        with engine.connect() as connection:
            return list(connection.scalars(text("SELECT version_num FROM alembic_version")))
    finally:
        engine.dispose()


def test_one_linear_history() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    assert script.get_heads() == [HEAD]


def test_migrated_schema_matches_models(registry: Registry) -> None:
    with registry.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diffs = compare_metadata(context, Base.metadata)
    assert diffs == []
    assert set(inspect(registry.engine).get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}


def test_reopening_does_not_migrate_again(db_url: str) -> None:
    Registry(db_url).close()
    with Registry(db_url) as again:
        assert again.counts() == dict.fromkeys(Base.metadata.tables, 0)
    assert _versions(db_url) == [HEAD]


def test_downgrade_to_base_and_back(registry: Registry) -> None:
    config = alembic_config()
    with registry.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
    assert set(inspect(registry.engine).get_table_names()) <= {"alembic_version"}
    with registry.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    assert registry.counts() == dict.fromkeys(Base.metadata.tables, 0)


# Each child imports everything, reports ready, then blocks on stdin: the parent releases all
# four at once, so their first-time migrations really race.
_CHILD = """
import sys
from registry.store import Registry
print("ready", flush=True)
sys.stdin.read(1)
with Registry(sys.argv[1]) as registry:
    print(sorted(registry.counts().items()), flush=True)
"""


def test_concurrent_first_startup(db_url: str) -> None:
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, db_url],
            cwd=REPO_ROOT,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(4)
    ]
    for child in children:
        assert child.stdout.readline().strip() == "ready"
    for child in children:
        child.stdin.write("go")
        child.stdin.close()
    outcomes = [(child.wait(timeout=120), child.stdout.read(), child.stderr.read()) for child in children]

    expected = str(sorted(dict.fromkeys(Base.metadata.tables, 0).items()))
    for returncode, stdout, stderr in outcomes:
        assert returncode == 0, stderr
        assert stdout.strip() == expected
    assert _versions(db_url) == [HEAD]


def test_a_registry_from_a_newer_evalboard_is_refused_in_one_line(db_url: str, tmp_path: Path) -> None:
    """A revision this version has no script for: every command says to upgrade evalboard, and the
    registry is left as the newer version wrote it."""
    Registry(db_url).close()
    engine = create_engine(normalize_url(db_url))
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0042_from_the_future'"))
    engine.dispose()

    with pytest.raises(StoreError, match="revision '0042_from_the_future'.*upgrade evalboard"):
        Registry(db_url)
    proc = run_cli(["runs"], home=tmp_path / "home", env={"EVALBOARD_DB": db_url}, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    [line] = proc.stderr.splitlines()
    assert "0042_from_the_future" in line and "upgrade evalboard" in line and f"'{HEAD}'" in line
    assert _versions(db_url) == ["0042_from_the_future"]
