"""``datamon query``: read-only SQL over the views ``files``, ``bundles``, ``labels``,
``label_history`` and ``repos`` (docs/query.md). How read-only is enforced: ``meta/query.py``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from datamon.meta.query import DEFAULT_TIMEOUT_S, VIEW_COLUMNS, QueryResult

if TYPE_CHECKING:
    from datamon.api.context import Context

__all__ = ["DEFAULT_TIMEOUT_S", "VIEW_COLUMNS", "execute", "iter_query", "query", "query_df"]


def execute(
    ctx: Context, sql: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, index: bool = True
) -> QueryResult:
    """Run ``sql`` read-only; the result has ``columns`` and iterates over row tuples.

    First indexes any bundle the file index lacks (bundles made before it existed or by a FUSE
    commit): that is the only write, and it happens before the read-only query, never in it.
    Raises ``UsageError`` (exit 1) for a statement the database refuses or that times out."""
    from datamon.meta.query import pg_quick_state, run_query

    dialect = "sqlite" if ctx.meta_url.startswith("sqlite") else "postgresql"
    # On PostgreSQL both reads go through psycopg alone when they can: no SQLAlchemy to import,
    # no engine to build (SQLite has the same through ``meta/quick.py``).
    quick = pg_quick_state(ctx.meta_url) if dialect == "postgresql" else None
    unindexed = quick[0] if quick is not None else bool(ctx.meta.unindexed_bundles())
    if index and unindexed:
        from datamon.api.fileindex import index_missing

        index_missing(ctx)
        quick = None
    schemas = quick[1] if quick is not None else ctx.meta.current_schemas()
    return run_query(ctx.meta_url, dialect, sql, schemas, timeout_s)


def iter_query(ctx: Context, sql: str, **kw: Any) -> Iterator[dict[str, Any]]:
    """The rows of ``sql`` as dicts, streamed."""
    with execute(ctx, sql, **kw) as r:
        cols = r.columns
        for row in r:
            yield dict(zip(cols, row, strict=True))


def query(ctx: Context, sql: str, **kw: Any) -> list[dict[str, Any]]:
    """The rows of ``sql`` as a list of dicts."""
    return list(iter_query(ctx, sql, **kw))


def query_df(ctx: Context, sql: str, **kw: Any) -> Any:
    """The rows of ``sql`` as a pandas DataFrame (needs pandas)."""
    try:
        import pandas as pd
    except ImportError:
        from datamon.errors import UsageError

        raise UsageError("query_df needs pandas", "pip install pandas") from None
    with execute(ctx, sql, **kw) as r:
        return pd.DataFrame.from_records(list(r), columns=r.columns)
