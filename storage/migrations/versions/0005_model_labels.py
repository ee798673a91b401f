"""model_labels: the name an upload was opened under, one row per source (staged upload path), first name kept

`models` has one row per weights fingerprint, so its `label` was global: another session opening the same weights
under another archive (re-zipped, or a .tar.gz of it) moved the row's source and label to its own, and the runs of
the first upload lost their name; the same bytes uploaded under another name renamed every earlier run. A label
now belongs to the source a run's recipe names, and the first name given to a source is kept. Existing labels are
copied (the oldest model row of each source wins); `models.label` stays, unread.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""
from alembic import op
import sqlalchemy as sa

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_labels",
        sa.Column("source", sa.String(1024), primary_key=True),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.execute("INSERT INTO model_labels (source, label, created_at) SELECT m.source, m.label, m.created_at "
               "FROM models m WHERE m.label IS NOT NULL AND m.id = (SELECT min(m2.id) FROM models m2 "
               "WHERE m2.source = m.source AND m2.label IS NOT NULL)")


def downgrade() -> None:
    op.drop_table("model_labels")
