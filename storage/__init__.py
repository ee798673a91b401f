"""Runs database and artifact directory.

    storage.db         engine and sessions from DATABASE_URL (SQLite file by default), Alembic migrations at start
    storage.models     typed ORM: Model, Run, Artifact, RunLog
    storage.repo       run verbs: create_run, mark_started, update_progress, request_cancel, reap_stale_runs, ...
    storage.catalog    models and cached analyses
    storage.artifacts  one folder per run id; checkpoint digest; download zip

No UI, Celery or torch code lives here.
"""
from .db import database_url, init_db, session_scope, studio_home
from .models import RunStatus

__all__ = ["database_url", "init_db", "session_scope", "studio_home", "RunStatus"]
