"""The registry's SQL store: one `Registry` class over SQLite (default) or PostgreSQL.

Every public method runs in `with self._session() as s:`, one transaction that commits on
success, rolls back on any error and turns `SQLAlchemyError` into `StoreError` — so a bad input
leaves the registry exactly as it was. Methods take keyword arguments and return the frozen
dataclasses of `registry/entities.py`; ORM rows never leave this package.

The class is composed of the store's parts, one module each: `catalogue` (token spaces, runs,
checkpoints, eval sets, results, row statistics), `jobs` (the queue: the dedupe rule and the SQL
of its verbs), `tables` (read-only views for the dashboard), over `_base` (engine, sessions,
helpers). `Registry` is the one door: import it from here.

Getters `get_*` raise `NotFound`; `find_*` and `get_row_stats` return None when there is nothing.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import inspect
from sqlalchemy.exc import SQLAlchemyError

from registry.engine import make_engine, mask_url, normalize_url, refuse_network_filesystem
from registry.errors import NotFound, StoreError
from registry.settings import Settings
from registry.store.catalogue import Catalogue
from registry.store.jobs import Jobs
from registry.store.tables import Tables

__all__ = ["Registry"]


class Registry(Catalogue, Jobs, Tables):
    """The catalogue of token spaces, runs, checkpoints, eval sets, results, row stats and jobs.

    `url` defaults to `settings.db_url` (itself `EVALBOARD_DB` or `sqlite:///.evalboard/registry.db`).
    Construction migrates the database to the latest schema; several processes may do so at once.
    """

    @classmethod
    def existing(cls, settings: Settings, *, hint: str) -> Registry:
        """The registry at ``settings.db_url``, refused (``NotFound``, with ``hint``) when that
        database does not exist or holds no evalboard registry: for a process that must never
        create one (a worker polling an empty registry would wait for ever)."""
        url = normalize_url(settings.db_url)
        if url.get_backend_name() == "sqlite":
            path = Path(url.database or "")
            if url.database and url.database != ":memory:":
                refuse_network_filesystem(path.absolute())
            if not url.database or url.database == ":memory:" or not path.is_file() or path.stat().st_size == 0:
                raise NotFound(f"registry database {path} does not exist; {hint}")
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                has_registry = inspect(conn).has_table("alembic_version")
        except SQLAlchemyError as e:
            first = str(getattr(e, "orig", None) or e).strip().splitlines()
            raise StoreError(
                f"registry {mask_url(url)}: cannot connect: {first[0] if first else type(e).__name__}"
            ) from None
        finally:
            engine.dispose()
        if not has_registry:
            raise NotFound(f"registry {mask_url(url)} holds no evalboard registry; {hint}")
        return cls(settings=settings)
