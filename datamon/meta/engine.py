"""Opening the metadata database: engine options per dialect, URL masking, error translation.

SQLite gets WAL mode, ``synchronous=NORMAL``, a 30 s busy timeout and foreign keys. SQLAlchemy (not the
sqlite3 module) emits ``BEGIN``: a connection opened with the ``WRITE`` execution option starts with
``BEGIN IMMEDIATE`` so that a read-then-write transaction (a label compare-and-swap) takes the write lock
up front and waits on the busy timeout, instead of failing with SQLITE_BUSY when it tries to upgrade.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Connection, Engine, create_engine, event, exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import QueuePool, StaticPool

from datamon.config import redact_url
from datamon.errors import IntegrityError, StoreUnavailable

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
    """``url`` with every secret (password, secret-looking query parameters) masked; never raises."""
    return redact_url(url)


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
        raise StoreUnavailable(
            f"cannot create the metadata database {shown}: {e.strerror or e}", _HINT
        ) from e


def _sqlite_engine(url: URL, pool_size: int) -> Engine:
    database = url.database or ""
    in_memory = database in ("", ":memory:") or url.query.get("mode") == "memory"
    if in_memory:
        # Every connection to :memory: is a new empty database: share one connection.
        engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        if not database.startswith("file:"):
            _create_private(Path(database))
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


DB_MODE: Final = 0o600
DIR_MODE: Final = 0o700


def _create_private(path: Path) -> None:
    """Create a new SQLite file empty with mode 0600, and missing parent directories 0700, whatever
    the umask (SQLite would create it ``0644 & ~umask``: world-writable under umask 000). Its WAL
    and shared-memory files take the database file's mode. An existing file is left alone."""
    missing = []
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
            os.chmod(d, DIR_MODE)
        except FileExistsError:
            pass
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), DB_MODE)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, DB_MODE)
    finally:
        os.close(fd)


@contextmanager
def unavailable_on_error(url: str) -> Iterator[None]:
    """Turn a lost or refused database connection into ``StoreUnavailable`` naming ``url``."""
    try:
        yield
    except exc.DBAPIError as e:
        raise translate(e, url) from e


# What SQLite says about a file that is not (or no longer) a whole database.
_DAMAGED = ("file is not a database", "database disk image is malformed", "malformed database schema")


def translate(e: exc.DBAPIError, url: str) -> Exception:
    """The ``DatamonError`` for a driver error met while using the database at ``url`` (masked):
    ``IntegrityError`` for a damaged SQLite file, ``StoreUnavailable`` for a lost or refused
    connection; other errors (a datamon bug, such as a constraint violation) are returned as they are."""
    detail = (
        str(e.orig).strip().splitlines()[0]
        if e.orig is not None and str(e.orig).strip()
        else type(e).__name__
    )
    detail = redact_url(detail)
    if any(d in detail for d in _DAMAGED):
        return IntegrityError(
            f"metadata database {url} is damaged: {detail}",
            "restore it from a backup (then `datamon admin reindex`), or move it away to start afresh",
        )
    if isinstance(e, exc.OperationalError | exc.InterfaceError) or (
        isinstance(e, exc.DatabaseError) and not isinstance(e, exc.IntegrityError | exc.ProgrammingError)
    ):
        return StoreUnavailable(f"metadata database {url} is unavailable: {detail}", _HINT)
    return e
