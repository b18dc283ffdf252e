"""Know the data: repo schemas and the file index behind ``datamon query`` (docs/query.md).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "repo_schemas",
        sa.Column("repo_id", sa.Integer(), sa.ForeignKey("repos.id"), primary_key=True),
        sa.Column("version", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("schema", sa.Text(), nullable=False),
        sa.Column("time_ns", sa.BigInteger(), nullable=False),
        sa.Column("contributor", sa.Text(), nullable=False, server_default=""),
    )
    op.create_table(
        "index_nodes",
        sa.Column("node", sa.LargeBinary(32), primary_key=True),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "index_links",
        sa.Column("node", sa.LargeBinary(32), primary_key=True),
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("child", sa.LargeBinary(32), nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "index_files",
        sa.Column("node", sa.LargeBinary(32), primary_key=True),
        sa.Column("name", sa.Text(), primary_key=True),
        sa.Column("kind", sa.SmallInteger(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.LargeBinary(32), nullable=False),
        sa.Column("mode", sa.Integer(), nullable=False),
        sa.Column("mtime_ns", sa.BigInteger(), nullable=False),
        sa.Column("attrs", sa.Text().with_variant(JSONB(), "postgresql"), nullable=True),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "bundle_index",
        sa.Column("bundle_id", sa.String(64), primary_key=True),
        sa.Column("node", sa.LargeBinary(32), nullable=False),
    )


def downgrade() -> None:
    for table in ("bundle_index", "index_files", "index_links", "index_nodes", "repo_schemas"):
        op.drop_table(table)
