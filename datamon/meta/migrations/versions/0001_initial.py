"""Initial schema: repos, bundles, labels, the object index, packs, LFS ids, locks.

Revision ID: 0001
Revises:
Create Date: 2024-06-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "repos",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("description", sa.Text(), nullable=False, server_default=""),
        sa.Column("created_ns", sa.BigInteger(), nullable=False),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "bundles",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("repo_id", sa.Integer(), sa.ForeignKey("repos.id"), nullable=False),
        sa.Column("tree", sa.String(64), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("contributor_name", sa.Text(), nullable=False),
        sa.Column("contributor_email", sa.Text(), nullable=False),
        sa.Column("created_ns", sa.BigInteger(), nullable=False),
        sa.Column("file_count", sa.BigInteger(), nullable=False),
        sa.Column("total_size", sa.BigInteger(), nullable=False),
        sa.Column("record", sa.LargeBinary(), nullable=False),
    )
    op.create_index("ix_bundles_repo_created", "bundles", ["repo_id", "created_ns"])
    op.create_table(
        "bundle_parents",
        sa.Column("bundle_id", sa.String(64), sa.ForeignKey("bundles.id"), primary_key=True),
        sa.Column("position", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("parent_id", sa.String(64), nullable=False),
    )
    op.create_table(
        "labels",
        sa.Column("repo_id", sa.Integer(), sa.ForeignKey("repos.id"), primary_key=True),
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("bundle_id", sa.String(64), sa.ForeignKey("bundles.id"), nullable=False),
        sa.Column("updated_ns", sa.BigInteger(), nullable=False),
        sa.Column("contributor", sa.Text(), nullable=False, server_default=""),
    )
    op.create_table(
        "label_history",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("repo_id", sa.Integer(), sa.ForeignKey("repos.id"), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("old_bundle_id", sa.String(64), nullable=True),
        sa.Column("new_bundle_id", sa.String(64), nullable=True),
        sa.Column("time_ns", sa.BigInteger(), nullable=False),
        sa.Column("contributor", sa.Text(), nullable=False, server_default=""),
    )
    op.create_index("ix_label_history_repo_name", "label_history", ["repo_id", "name"])
    op.create_table(
        "packs",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("object_count", sa.Integer(), nullable=False),
        sa.Column("created_ns", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "objects",
        sa.Column("key", sa.LargeBinary(32), primary_key=True),
        sa.Column("pack", sa.String(64), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("length", sa.Integer(), nullable=False),
        sa.Column("raw_length", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.SmallInteger(), nullable=False),
        sa.Column("compression", sa.SmallInteger(), nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_objects_pack", "objects", ["pack"])
    op.create_table(
        "lfs_objects",
        sa.Column("repo_id", sa.Integer(), sa.ForeignKey("repos.id"), primary_key=True),
        sa.Column("oid", sa.String(64), primary_key=True),
        sa.Column("file_key", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "locks",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("holder", sa.Text(), nullable=False),
        sa.Column("acquired_ns", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    for table in (
        "locks",
        "lfs_objects",
        "objects",
        "packs",
        "label_history",
        "labels",
        "bundle_parents",
        "bundles",
        "repos",
    ):
        op.drop_table(table)
