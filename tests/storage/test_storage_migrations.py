"""The schema comes from the Alembic migrations, matches the ORM, and migrates once when processes start together."""
from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from storage import db
from storage.models import Base

REPO = Path(__file__).resolve().parents[2]
TABLES = {"models", "runs", "artifacts", "run_logs", "alembic_version"}


def test_migrations_create_the_orm_schema_at_head(db_url):
    engine = db.init_db(db_url)
    assert set(inspect(engine).get_table_names()) == TABLES
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "0004"
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_init_db_is_idempotent_and_keeps_rows(db_url):
    from storage import repo
    run_id = repo.create_run({"model": "demo"})
    db.dispose_all()
    db.init_db(db_url)  # a restart: migrate again, nothing lost
    assert repo.get_run(run_id).recipe == {"model": "demo"}


def test_processes_starting_together_migrate_once(db_url):
    # Fresh database: drop what the fixture made, then let two processes race to migrate it.
    engine = db.init_db(db_url)
    with engine.begin() as conn:
        for table in ["run_logs", "artifacts", "runs", "models", "alembic_version"]:
            conn.execute(text(f"DROP TABLE {table}"))
    db.dispose_all()
    code = ("import sys; from storage import db, repo; db.init_db(sys.argv[1]); "
            "print(repo.create_run({'model': 'demo'}))")
    procs = [subprocess.Popen([sys.executable, "-c", code, db_url], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    assert sorted(int(out) for out, _ in outs) == [1, 2]


@contextlib.contextmanager
def _downgraded(engine, revision: str):
    """A connection to the database migrated down to `revision` (in one transaction; migrate up after it)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(db.MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)
        yield conn


def test_0002_adds_the_send_columns_to_existing_runs_as_never_sent(db_url):
    engine = db.init_db(db_url)
    with _downgraded(engine, "0001") as conn:  # back to the first schema, with a run queued by an older studio
        conn.execute(text("INSERT INTO runs (name, recipe, status, progress, stage, step, total_steps, message, "
                          "created_at, attempts, cancel_requested) VALUES ('old', '{}', 'queued', 0, '', 0, 0, "
                          "'queued', CURRENT_TIMESTAMP, 0, false)"))
    db.migrate(engine, "head")
    from storage import repo
    [run] = repo.list_runs()
    assert (run.name, run.sent_at, run.send_count) == ("old", None, 0)
    assert repo.runs_due_for_send(older_than_s=60) == [run.id]


def test_0003_gives_existing_runs_no_tags_and_empty_notes_and_models_no_label(db_url):
    engine = db.init_db(db_url)
    with _downgraded(engine, "0002") as conn:
        conn.execute(text("INSERT INTO runs (name, recipe, status, progress, stage, step, total_steps, message, "
                          "created_at, attempts, cancel_requested, send_count) VALUES ('old', '{}', 'queued', 0, "
                          "'', 0, 0, 'queued', CURRENT_TIMESTAMP, 0, false, 0)"))
        conn.execute(text("INSERT INTO models (source, fingerprint, summary, created_at) VALUES ('demo', 'f', '{}', "
                          "CURRENT_TIMESTAMP)"))
    db.migrate(engine, "head")
    from storage import catalog, repo
    [run] = repo.list_runs()
    assert (run.name, run.tags, run.notes) == ("old", [], "")
    assert catalog.labels_by_source() == {}
    assert repo.set_run_notes(run.id, tags="a, b,a", notes="first try").tags == ["a", "b"]


def test_0004_drops_the_dead_tables_and_keeps_every_run(db_url):
    engine = db.init_db(db_url)
    with _downgraded(engine, "0003") as conn:
        assert {"analyses", "stage_metrics"} <= set(inspect(conn).get_table_names())
        conn.execute(text("INSERT INTO models (source, fingerprint, summary, created_at) VALUES ('demo', 'f', '{}', "
                          "CURRENT_TIMESTAMP)"))
        conn.execute(text("INSERT INTO runs (name, recipe, status, progress, stage, step, total_steps, message, "
                          "created_at, attempts, cancel_requested, send_count, tags, notes, model_id) VALUES ('old', "
                          "'{}', 'succeeded', 1, '', 0, 0, 'done', CURRENT_TIMESTAMP, 1, false, 1, '[]', 'n', "
                          "(SELECT id FROM models))"))
    db.migrate(engine, "head")
    assert set(inspect(engine).get_table_names()) == TABLES
    assert "model_id" not in {c["name"] for c in inspect(engine).get_columns("runs")}
    from storage import repo
    [run] = repo.list_runs()
    assert (run.name, run.status, run.notes) == ("old", "succeeded", "n")
