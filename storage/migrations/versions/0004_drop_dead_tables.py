"""drop what nothing reads: the analyses table, the stage_metrics table and runs.model_id

Importance scores are cached on disk by what they were computed from (compressor/importance/cache.py), so the
`analyses` rows were never written outside their own test. A run's per-stage results are its `stages` JSON and the
typed result read from `metrics` (compressor/result.py), so the `stage_metrics` rows duplicated them. A run's base model
is its recipe's `model` and the fingerprint its result records; `runs.model_id` was never set.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.drop_index("ix_stage_metrics_run_id", table_name="stage_metrics")
    op.drop_table("stage_metrics")
    op.drop_index("ix_analyses_model_id", table_name="analyses")
    op.drop_table("analyses")
    if op.get_bind().dialect.name == "sqlite":
        # SQLite cannot drop a column with a foreign key in place: rebuild runs without it (batch mode copies the
        # rows, keeps AUTOINCREMENT so ids are never reused, and the foreign keys to runs.id stay).
        with op.batch_alter_table("runs", recreate="always", table_kwargs={"sqlite_autoincrement": True}) as batch:
            batch.drop_column("model_id")
    else:
        op.drop_column("runs", "model_id")       # PostgreSQL drops the column's foreign key with it


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":       # SQLite adds a column with its REFERENCES clause in place,
        op.execute("ALTER TABLE runs ADD COLUMN model_id INTEGER REFERENCES models (id) ON DELETE SET NULL")
    else:                                            # which alembic's SQLite dialect will not emit
        op.add_column("runs", sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id", ondelete="SET NULL"),
                                        nullable=True))
    op.create_table(
        "analyses",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False),
        sa.Column("data_fingerprint", sa.String(64), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("settings_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("path", sa.String(1024), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        sa.UniqueConstraint("model_id", "data_fingerprint", "settings_hash", name="uq_analyses_key"),
    )
    op.create_index("ix_analyses_model_id", "analyses", ["model_id"])
    op.create_table(
        "stage_metrics",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("stage_index", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.UniqueConstraint("run_id", "stage_index", "name", name="uq_stage_metrics_key"),
    )
    op.create_index("ix_stage_metrics_run_id", "stage_metrics", ["run_id"])
