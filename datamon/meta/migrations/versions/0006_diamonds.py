"""Diamonds: many writers, one bundle (diamonds, their splits, and the conflicts of a commit).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "diamonds",
        sa.Column("repo_id", sa.Integer(), sa.ForeignKey("repos.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("tag", sa.Text(), nullable=False, server_default=""),
        sa.Column("created_ns", sa.BigInteger(), nullable=False),
        sa.Column("contributor_name", sa.Text(), nullable=False, server_default=""),
        sa.Column("contributor_email", sa.Text(), nullable=False, server_default=""),
        sa.Column("seq", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("ended_ns", sa.BigInteger(), nullable=True),
        sa.Column("bundle_id", sa.String(64), nullable=True),
        sa.Column("conflict_mode", sa.String(16), nullable=True),
        sa.Column("conflict_count", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("conflicts_blob", sa.Text(), nullable=True),
    )
    op.create_index("ix_diamonds_state", "diamonds", ["state"])
    op.create_table(
        "diamond_splits",
        sa.Column("repo_id", sa.Integer(), primary_key=True),
        sa.Column("diamond_id", sa.String(255), primary_key=True),
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("generation", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("tag", sa.Text(), nullable=False, server_default=""),
        sa.Column("source", sa.Text(), nullable=False, server_default=""),
        sa.Column("tree", sa.String(64), nullable=True),
        sa.Column("file_count", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("total_size", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("started_ns", sa.BigInteger(), nullable=False),
        sa.Column("ended_ns", sa.BigInteger(), nullable=True),
        sa.Column("contributor_name", sa.Text(), nullable=False, server_default=""),
        sa.Column("contributor_email", sa.Text(), nullable=False, server_default=""),
        sa.Column("host", sa.Text(), nullable=False, server_default=""),
        sa.ForeignKeyConstraint(
            ["repo_id", "diamond_id"], ["diamonds.repo_id", "diamonds.id"], ondelete="CASCADE"
        ),
    )
    op.create_table(
        "diamond_conflicts",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("repo_id", sa.Integer(), nullable=False),
        sa.Column("diamond_id", sa.String(255), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("split_id", sa.String(255), nullable=False),
        sa.Column("kind", sa.SmallInteger(), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("winner", sa.SmallInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["repo_id", "diamond_id"], ["diamonds.repo_id", "diamonds.id"], ondelete="CASCADE"
        ),
    )
    op.create_index("ix_diamond_conflicts_diamond", "diamond_conflicts", ["repo_id", "diamond_id"])


def downgrade() -> None:
    for table in ("diamond_conflicts", "diamond_splits", "diamonds"):
        op.drop_table(table)
