"""Retention: bundle rewrites (``repo delete files``), repo renames, and the erasure queue of gc.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "bundle_rewrites",
        sa.Column("old_id", sa.String(64), primary_key=True),
        sa.Column("new_id", sa.String(64), nullable=True),
        sa.Column("repo_id", sa.Integer(), sa.ForeignKey("repos.id"), nullable=False),
        sa.Column("old_tree", sa.String(64), nullable=False),
        sa.Column("new_tree", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("time_ns", sa.BigInteger(), nullable=False),
        sa.Column("contributor", sa.Text(), nullable=False, server_default=""),
    )
    op.create_index("ix_bundle_rewrites_new", "bundle_rewrites", ["new_id"])
    op.create_index("ix_bundle_rewrites_repo", "bundle_rewrites", ["repo_id"])
    op.create_table(
        "repo_renames",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("repo_id", sa.Integer(), sa.ForeignKey("repos.id"), nullable=False),
        sa.Column("old_name", sa.String(255), nullable=False),
        sa.Column("new_name", sa.String(255), nullable=False),
        sa.Column("time_ns", sa.BigInteger(), nullable=False),
        sa.Column("contributor", sa.Text(), nullable=False, server_default=""),
    )
    op.create_index("ix_repo_renames_old", "repo_renames", ["old_name"])
    op.create_index("ix_repo_renames_repo", "repo_renames", ["repo_id"])
    op.create_table(
        "erasures",
        sa.Column("key", sa.LargeBinary(32), primary_key=True),
        sa.Column("time_ns", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    for table in ("erasures", "repo_renames", "bundle_rewrites"):
        op.drop_table(table)
