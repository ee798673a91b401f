"""Shared fixtures: a private studio home and a migrated database, SQLite and PostgreSQL (helpers and the rules for
the PostgreSQL schema and the test Redis live in tests/storage/databases.py)."""
from __future__ import annotations

import os

# Before torch is imported anywhere: on a shared 2-core machine, OpenMP threads that spin while waiting make
# every test 3-4x slower in wall time; passive waiting changes no result.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path
from typing import Iterator

import pytest

from tests.storage.databases import postgres_schema_url, studio_env


@pytest.fixture
def studio_home(tmp_path: Path) -> Iterator[Path]:
    """A private MOE_STUDIO_HOME with every other studio setting cleared."""
    with studio_env(tmp_path / "studio"):
        yield tmp_path / "studio"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, studio_home: Path) -> Iterator[str]:
    """An empty, migrated database (SQLite file, or a private PostgreSQL schema) that is the process default."""
    from storage import db
    if request.param == "sqlite":
        url = f"sqlite:///{studio_home / 'studio.db'}"
        os.environ["DATABASE_URL"] = url
        db.init_db(url)
        yield url
        return
    with postgres_schema_url() as url:
        os.environ["DATABASE_URL"] = url
        db.init_db(url)
        yield url
