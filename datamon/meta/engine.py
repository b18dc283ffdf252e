"""Opening the metadata database: engine options per dialect, URL masking, error translation.

SQLite gets WAL mode, ``synchronous=NORMAL``, a 30 s busy timeout and foreign keys. SQLAlchemy (not the
sqlite3 module) emits ``BEGIN``: a connection opened with the ``WRITE`` execution option starts with
``BEGIN IMMEDIATE`` so that a read-then-write transaction (a label compare-and-swap) takes the write lock
up front and waits on the busy timeout, instead of failing with SQLITE_BUSY when it tries to upgrade.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Connection, Engine, create_engine, event, exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import QueuePool, StaticPool

from datamon.errors import StoreUnavailable

SUPPORTED_DIALECTS: Final = ("sqlite", "postgresql")
# Execution options marking a connection that will write (see module docstring).
WRITE: Final[dict[str, Any]] = {"datamon_write": True}
SQLITE_BUSY_TIMEOUT_MS: Final = 30_000
# Seconds a PostgreSQL connection attempt may take (unless the URL sets ``connect_timeout``): libpq
# waits forever by default, so a firewalled host would hang a command for the OS's TCP timeout.
PG_CONNECT_TIMEOUT_S: Final = 10

_HINT: Final = (
    "check the metadata URL of your context (`datamon context get`) and that the database is reachable"
)
_URL_HINT: Final = "use sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST/DB"


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***``; never raises."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


def open_engine(url: str, *, pool_size: int = 5) -> Engine:
    """Create (but do not connect) the engine for ``url``.

    Creates the parent directory of a SQLite file. Raises ``StoreUnavailable`` for a malformed URL, an
    unsupported database, or a missing driver.
    """
    shown = mask_url(url)
    try:
        parsed = make_url(url)
    except exc.ArgumentError as e:
        raise StoreUnavailable(f"metadata database URL {shown!r} is malformed: {e}", _URL_HINT) from e
    backend = parsed.get_backend_name()
    if backend not in SUPPORTED_DIALECTS:
        raise StoreUnavailable(
            f"metadata database {shown}: {backend!r} databases are not supported", _URL_HINT
        )
    try:
        if backend == "sqlite":
            return _sqlite_engine(parsed, pool_size)
        # pool_pre_ping: a pooled connection that a server restart or an idle timeout cut is
        # replaced at checkout instead of failing the next statement.
        connect_args = {} if "connect_timeout" in parsed.query else {"connect_timeout": PG_CONNECT_TIMEOUT_S}
        return create_engine(parsed, pool_size=pool_size, pool_pre_ping=True, connect_args=connect_args)
    except ImportError as e:
        raise StoreUnavailable(
            f"metadata database {shown} needs a driver that is not installed ({e.name or e})",
            "install it with `pip install 'datamon[postgres]'`",
        ) from e
    except (exc.ArgumentError, exc.NoSuchModuleError) as e:
        raise StoreUnavailable(f"metadata database URL {shown!r} is not usable: {e}", _URL_HINT) from e
    except OSError as e:
        raise StoreUnavailable(f"cannot create the metadata database {shown}: {e}", _HINT) from e


def _sqlite_engine(url: URL, pool_size: int) -> Engine:
    database = url.database or ""
    in_memory = database in ("", ":memory:") or url.query.get("mode") == "memory"
    if in_memory:
        # Every connection to :memory: is a new empty database: share one connection.
        engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        if not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            poolclass=QueuePool,
            pool_size=pool_size,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module; _on_begin emits BEGIN.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        if not in_memory:
            cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("datamon_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


@contextmanager
def unavailable_on_error(url: str) -> Iterator[None]:
    """Turn a lost or refused database connection into ``StoreUnavailable`` naming ``url``."""
    try:
        yield
    except (exc.OperationalError, exc.InterfaceError) as e:
        detail = str(e.orig).strip().splitlines()[0] if e.orig is not None else str(e)
        raise StoreUnavailable(f"metadata database {url} is unavailable: {detail}", _HINT) from e
