"""File index collection: ``index_nodes.created_ns``, when a node was written or last found shared.

``gc`` removes index nodes no bundle reaches once they are older than its grace period, so an
upload's nodes (written before its bundle row) and the nodes it finds already indexed and shares
are never collected under it. Rows written before this revision get 0: unreached, they go at the
next gc.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("index_nodes") as batch:
        batch.add_column(sa.Column("created_ns", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("index_nodes") as batch:
        batch.drop_column("created_ns")
