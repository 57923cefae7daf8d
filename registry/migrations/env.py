"""Alembic environment: runs on a connection handed over in `config.attributes["connection"]`
(how `registry.migrations.upgrade_to_head` calls it) or, from the alembic CLI, on
`sqlalchemy.url`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, text

from registry.models import Base

# Any constant works; it only has to be the same in every process that migrates this database.
PG_MIGRATION_LOCK = 0x65766C62  # "evlb"


def _configure_and_run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Released at commit; serialises concurrent first startups on the same database.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK})
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection)
        return
    from registry.engine import make_engine, normalize_url
    from registry.errors import InvalidInput

    url = context.config.get_main_option("sqlalchemy.url")
    if url is None:
        raise InvalidInput("alembic: no connection handed over and no sqlalchemy.url configured")
    engine = make_engine(normalize_url(url))
    try:
        with engine.begin() as connection:
            _configure_and_run(connection)
    finally:
        engine.dispose()


def run_migrations_offline() -> None:
    context.configure(
        url=context.config.get_main_option("sqlalchemy.url"),
        target_metadata=Base.metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
