"""Repos record their creator (contributor name and email), as bundles do.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("repos") as batch:
        batch.add_column(sa.Column("creator_name", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("creator_email", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("repos") as batch:
        batch.drop_column("creator_email")
        batch.drop_column("creator_name")
