"""Lineage: runs, their inputs and outputs.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("started_ns", sa.BigInteger(), nullable=False),
        sa.Column("ended_ns", sa.BigInteger(), nullable=False),
        sa.Column("command", sa.Text(), nullable=False),
        sa.Column("params", sa.Text(), nullable=False),
        sa.Column("contributor", sa.Text(), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("git_commit", sa.String(64), nullable=True),
        sa.Column("git_dirty", sa.SmallInteger(), nullable=True),
        sa.Column("external", sa.SmallInteger(), nullable=False),
        sa.Column("record", sa.LargeBinary(), nullable=False),
    )
    op.create_index("ix_runs_started", "runs", ["started_ns"])
    for table in ("run_inputs", "run_outputs"):
        op.create_table(
            table,
            sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.id"), primary_key=True),
            sa.Column("name", sa.String(255), primary_key=True),
            sa.Column("repo", sa.String(255), nullable=False),
            sa.Column("bundle_id", sa.String(64), nullable=False),
            sa.Column("tree", sa.String(64), nullable=False),
        )
        op.create_index(f"ix_{table}_bundle", table, ["bundle_id"])


def downgrade() -> None:
    for table in ("run_outputs", "run_inputs", "runs"):
        op.drop_table(table)
