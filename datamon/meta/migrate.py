"""Bring a metadata database to the schema this datamon understands.

Opening a store happens on every CLI call, so the common case (already at head) is one plain query and
never imports Alembic; Alembic is imported only when there is something to migrate.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Final

from sqlalchemy import Connection, Engine, text

from datamon.errors import SchemaTooNew
from datamon.meta.engine import WRITE

if TYPE_CHECKING:
    from alembic.config import Config

from datamon.meta.revision import HEAD_REVISION, KNOWN_REVISIONS

__all__ = ["HEAD_REVISION", "KNOWN_REVISIONS", "current_revision", "ensure_schema"]

MIGRATIONS_DIR: Final[Path] = Path(__file__).with_name("migrations")

# Serialises concurrent first-time migrations on PostgreSQL (any constant that is ours alone).
_PG_MIGRATION_LOCK_ID: Final[int] = 0x64617461_6D6F6E  # "datamon"


def current_revision(conn: Connection) -> str | None:
    """The revision recorded in ``alembic_version``, or ``None`` for an empty database.

    Only reads; raises nothing of its own. With several rows (Alembic branches, which datamon never
    creates) an unknown revision wins, else the newest known one.
    """
    if not conn.dialect.has_table(conn, "alembic_version"):
        return None
    rows = [r[0] for r in conn.execute(text("SELECT version_num FROM alembic_version"))]
    if not rows:
        return None
    unknown = [r for r in rows if r not in KNOWN_REVISIONS]
    if unknown:
        return str(unknown[0])
    return max(rows, key=KNOWN_REVISIONS.index)


def ensure_schema(engine: Engine, url: str | None = None) -> None:
    """Make sure the database at ``engine`` has the head schema, migrating it if it is older.

    Idempotent and safe to call from several processes at once (migrations are serialised by a
    write lock on SQLite and an advisory lock on PostgreSQL). ``url`` (password masked) is only
    used in messages.

    Raises ``SchemaTooNew`` if the database was written by a newer datamon.
    """
    shown = url if url is not None else engine.url.render_as_string(hide_password=True)
    with engine.connect() as conn:
        rev = current_revision(conn)
    if rev == HEAD_REVISION:
        return
    _check_known(rev, shown)
    with engine.execution_options(**WRITE).begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK_ID})
        # Another process may have migrated while we waited for the lock.
        rev = current_revision(conn)
        if rev == HEAD_REVISION:
            return
        _check_known(rev, shown)
        _upgrade(conn, HEAD_REVISION)


def _check_known(rev: str | None, url: str) -> None:
    if rev is not None and rev not in KNOWN_REVISIONS:
        raise SchemaTooNew(
            f"metadata database {url} has schema version {rev}, newer than this datamon understands",
            "upgrade datamon (pip install -U datamon)",
        )


def alembic_config(conn: Connection | None = None) -> Config:
    """An ``alembic.config.Config`` for datamon's migrations (no alembic.ini), bound to ``conn``."""
    from alembic.config import Config

    cfg = Config()
    # ConfigParser interpolation: a literal % in the install path must be doubled.
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if conn is not None:
        cfg.attributes["connection"] = conn
    return cfg


def _upgrade(conn: Connection, revision: str) -> None:
    from alembic import command

    # ``conn`` is already inside our transaction, so Alembic runs in it and we commit.
    command.upgrade(alembic_config(conn), revision)
