"""runs.sent_at and runs.send_count: when a queued run's message last went to the broker, and how many were sent

The reaper sends a queued run again when no worker claimed it within `MOE_STUDIO_REQUEUE_AFTER_S` of `sent_at` and
the broker holds no message for it (workers.reaper). Existing rows get NULL / 0: a queued run from before this
migration counts as never sent, so it is sent at once if the broker does not have it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("runs", sa.Column("send_count", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("send_count")
        batch.drop_column("sent_at")
