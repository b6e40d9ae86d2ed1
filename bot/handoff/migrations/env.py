"""Alembic environment of the handoff store.

Run programmatically by SqlHandoffStore (bot/handoff/migrate.py), which passes an open
connection in `config.attributes["connection"]`; also works from the alembic command line
for writing new revisions:
    alembic -c bot/handoff/migrations/alembic.ini -x url=sqlite:///tmp/dev.sqlite3 revision --autogenerate -m "..."
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from bot.handoff.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")


def _configure(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
        compare_type=True,
    )


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:  # the store's own connection, already in a transaction
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(_url())
    try:
        with engine.begin() as conn:
            _configure(conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
