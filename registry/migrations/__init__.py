"""Alembic migrations of the registry, applied in code by `Registry.__init__` (no alembic.ini).

Several workers may start at once against a fresh database. The whole upgrade runs in one
transaction that first takes a lock (`BEGIN IMMEDIATE` on SQLite, `pg_advisory_xact_lock` on
PostgreSQL, see env.py), so the first process migrates and the others wait, then find the
database at head and do nothing.

To write a new revision by hand: copy versions/0001_initial.py, bump `revision` and set
`down_revision`; `tests/registry/test_migrations.py` checks the result matches `models.py`.
"""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

from registry.engine import mask_url
from registry.errors import StoreError

__all__ = ["alembic_config", "upgrade_to_head", "MIGRATIONS_DIR"]

MIGRATIONS_DIR = Path(__file__).resolve().parent


def alembic_config() -> Config:
    """An alembic Config pointing at this package; `attributes["connection"]` is set by callers."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


_ALEMBIC_LOCK = threading.Lock()


def upgrade_to_head(engine: Engine) -> None:
    """Bring the database to the latest revision, inside one locked transaction.

    Alembic's `context` is process-global, so registries opened from several threads at once
    migrate one after another (processes are serialised by the database lock instead)."""
    config = alembic_config()
    with _ALEMBIC_LOCK, engine.begin() as connection:
        _refuse_unknown_revision(connection, ScriptDirectory.from_config(config), mask_url(engine.url))
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def _refuse_unknown_revision(connection: Connection, scripts: ScriptDirectory, where: str) -> None:
    """A registry a newer evalboard migrated (a revision we have no script for) is refused in one
    line: upgrading evalboard is the fix; migrating or writing it with this version is not."""
    known = {s.revision for s in scripts.walk_revisions()}
    current = MigrationContext.configure(connection).get_current_heads()
    unknown = [r for r in current if r not in known]
    if unknown:
        raise StoreError(
            f"registry {where}: its schema is at revision {unknown[0]!r}, which this evalboard does not know "
            f"(it knows up to {scripts.get_current_head()!r}); it was written by a newer evalboard: upgrade evalboard"
        )
