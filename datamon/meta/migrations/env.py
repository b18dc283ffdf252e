"""Alembic environment for datamon's metadata database.

datamon runs migrations only programmatically (``datamon.meta.migrate.ensure_schema``), passing an open
connection in ``config.attributes["connection"]``; there is no alembic.ini and no offline mode.
"""

from __future__ import annotations

from alembic import context

from datamon.meta.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "datamon migrations run through datamon.meta.migrate.ensure_schema(), not the alembic CLI"
    )

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
