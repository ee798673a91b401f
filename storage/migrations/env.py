"""Alembic environment. `storage.db.migrate()` passes an open connection in `config.attributes["connection"]`;
the `alembic -c storage/alembic.ini ...` command line opens `DATABASE_URL` (or the default SQLite file) instead."""
from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from storage.models import Base


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=Base.metadata,
                      render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    if context.is_offline_mode():
        from storage.db import database_url
        context.configure(url=database_url(), target_metadata=Base.metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from storage.db import database_url
    engine = create_engine(database_url())
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()


_main()
