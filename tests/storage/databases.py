"""Helpers for tests that need a studio home, a database (SQLite or PostgreSQL) or the test Redis.

- PostgreSQL: `DATABASE_URL` when it names PostgreSQL (CI sets it), else
  postgresql+psycopg://postgres@127.0.0.1:5432/test (trust auth).
  Every test gets its own schema (search_path in the URL), dropped afterwards, so runs never collide.
- Redis: TEST_REDIS_URL, default redis://127.0.0.1:6379/15 (a database number kept for tests), flushed before use.
Neither is skipped when missing: the tests fail and say what to start.
"""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import redis
from sqlalchemy import create_engine, make_url, text

PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS_TEST_DEFAULT = "redis://127.0.0.1:6379/15"
STUDIO_ENV = ("MOE_STUDIO_HOME", "MOE_STUDIO_ARTIFACTS", "DATABASE_URL", "REDIS_URL", "MOE_STUDIO_QUEUE",
              "MOE_STUDIO_PIPELINE", "MOE_STUDIO_HEARTBEAT_S", "MOE_STUDIO_STALE_AFTER_S", "MOE_STUDIO_REAP_EVERY_S",
              "MOE_STUDIO_PROGRESS_EVERY_S", "MOE_STUDIO_MAX_JOB_S", "MOE_STUDIO_TEST_EXECUTIONS",
              "MOE_STUDIO_REQUEUE_AFTER_S", "MOE_STUDIO_CLAIM_RETRIES", "MOE_STUDIO_CLAIM_BACKOFF_S",
              "MOE_STUDIO_SQLITE_BUSY_S", "MOE_STUDIO_MODEL_ROOTS")


# Read once at import: the fixtures clear DATABASE_URL for each test's private studio.
_DATABASE_URL_AT_START = os.environ.get("DATABASE_URL", "")


def postgres_base_url() -> str:
    env = _DATABASE_URL_AT_START
    return env if env.startswith("postgresql") else PG_DEFAULT


@contextmanager
def postgres_schema_url() -> Iterator[str]:
    """A fresh schema in the test database; yields a URL whose connections use it; drops it afterwards."""
    base = make_url(postgres_base_url())
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:
        admin.dispose()
        raise RuntimeError(f"PostgreSQL at {base.render_as_string()} is needed for these tests "
                           f"(set DATABASE_URL or start it): {exc}") from exc
    url = base.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        from storage import db
        db.dispose_all()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@contextmanager
def studio_env(home: Path, **extra: str) -> Iterator[None]:
    """Point every studio setting at `home` (plus `extra`) for the duration; restore the environment after."""
    saved = {k: os.environ.get(k) for k in STUDIO_ENV}
    for k in STUDIO_ENV:
        os.environ.pop(k, None)
    os.environ["MOE_STUDIO_HOME"] = str(home)
    os.environ.update(extra)
    try:
        yield
    finally:
        from storage import db
        db.dispose_all()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def redis_test_url() -> str:
    return os.environ.get("TEST_REDIS_URL") or REDIS_TEST_DEFAULT


def flushed_test_redis() -> str:
    """The test Redis database, emptied; fails with a hint when no server answers."""
    url = redis_test_url()
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.flushdb()
    except redis.exceptions.ConnectionError as exc:
        raise RuntimeError(f"Redis at {url} is needed for these tests (start redis-server or set "
                           f"TEST_REDIS_URL): {exc}") from exc
    finally:
        client.close()
    return url
