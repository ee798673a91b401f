"""runs.tags, runs.notes and models.label: the Runs table as an experiment table, uploads shown by their name

`tags` is a JSON list of short strings and `notes` free text, both edited in the Runs tab (storage.repo.set_run_notes);
`label` is the name people know a model by (an uploaded archive's or folder's file name, the hub id, "demo"), since
staged uploads live in the cache under their sha256. Existing rows get no tags, empty notes and no label (the UI
falls back to the source's base name).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("tags", sa.JSON(), nullable=False, server_default="[]"))
    op.add_column("runs", sa.Column("notes", sa.Text(), nullable=False, server_default=""))
    op.add_column("models", sa.Column("label", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_column("label")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("notes")
        batch.drop_column("tags")
