"""ORM models (SQLAlchemy 2, typed): the runs table is the source of truth for every job.

    models        a model source the studio has seen: where it came from, its fingerprint, the inspect summary
    model_labels  the name a source (an upload's staged path) was first opened under, shown in Runs and Compare
    runs          one compression job: recipe JSON, status, live progress, times, worker, error + traceback
    artifacts     files a run produced (the checkpoint): path relative to the artifact root, bytes, sha256
    run_logs      the run's log: lifecycle events and progress messages, kept after cancel or failure

Times are timezone-aware UTC in Python; SQLite stores them as naive UTC text, PostgreSQL as timestamptz. The run
timestamps are written by the database's own clock (`storage.clock.db_now`), so workers on other machines agree.
The schema itself is created by the Alembic migrations in `storage/migrations/`, never by `create_all`.
"""
from __future__ import annotations

import enum
from datetime import datetime, timezone

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes in, aware UTC datetimes out, on every backend (SQLite has no time zones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use storage.models.utcnow()")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect):
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class RunStatus(str, enum.Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @classmethod
    def finished(cls) -> tuple[str, ...]:
        return (cls.succeeded.value, cls.failed.value, cls.cancelled.value)


class Base(DeclarativeBase):
    type_annotation_map = {dict: JSON, list: JSON, datetime: UTCDateTime}


class Model(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(1024))
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    summary: Mapped[dict] = mapped_column(default=dict)
    label: Mapped[str | None] = mapped_column(String(200))  # what people call it: an upload's file name, a hub id
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelLabel(Base):
    """The name people know a model source by (an upload's file name), one per source; the first name is kept, so
    another session opening the same file under another name does not rename earlier runs."""
    __tablename__ = "model_labels"

    source: Mapped[str] = mapped_column(String(1024), primary_key=True)
    label: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Run(Base):
    __tablename__ = "runs"
    # AUTOINCREMENT on SQLite: an id is never reused, so an artifact directory named by id never meets a stranger.
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    recipe: Mapped[dict]
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.queued.value, index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    stage: Mapped[str] = mapped_column(String(64), default="")
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer, default=0)
    loss: Mapped[float | None] = mapped_column(Float)
    eta_s: Mapped[float | None] = mapped_column(Float)
    tokens_per_s: Mapped[float | None] = mapped_column(Float)
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]  # the last time a message for this run went to the broker (database clock)
    send_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    worker: Mapped[str | None] = mapped_column(String(255))
    worker_pid: Mapped[int | None] = mapped_column(Integer)
    claim_token: Mapped[str | None] = mapped_column(String(36))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)
    metrics: Mapped[dict | None]
    stages: Mapped[list | None]
    parent_run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    tags: Mapped[list] = mapped_column(default=list, server_default="[]")
    notes: Mapped[str] = mapped_column(Text, default="", server_default="")

    artifacts: Mapped[list["Artifact"]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True, order_by="Artifact.id")
    logs: Mapped[list["RunLog"]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True, order_by="RunLog.id")

    @property
    def is_finished(self) -> bool:
        return self.status in RunStatus.finished()


class Artifact(Base):
    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(String(1024))  # relative to the artifact root, e.g. "17/checkpoint"
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    run: Mapped[Run] = relationship(back_populates="artifacts")


class RunLog(Base):
    __tablename__ = "run_logs"
    __table_args__ = (Index("ix_run_logs_run_id_id", "run_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    level: Mapped[str] = mapped_column(String(8), default="info")
    message: Mapped[str] = mapped_column(Text)

    run: Mapped[Run] = relationship(back_populates="logs")
