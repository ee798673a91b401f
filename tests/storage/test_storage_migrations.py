"""The schema comes from the Alembic migrations, matches the ORM, and migrates once when processes start together."""
from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from storage import db
from storage.models import Base

REPO = Path(__file__).resolve().parents[2]
TABLES = {"models", "model_labels", "runs", "artifacts", "run_logs", "alembic_version"}


def test_migrations_create_the_orm_schema_at_head(db_url):
    engine = db.init_db(db_url)
    assert set(inspect(engine).get_table_names()) == TABLES
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "0005"
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
        for table in ["run_logs", "artifacts", "runs", "model_labels", "models", "alembic_version"]:
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


def _fill_every_table_at_0001(conn) -> None:
    """Two models, an analysis, three runs (the second and third made from the first, the third pointing at a model),
    stage metrics, artifacts and logs of each run, as a studio at the first migration wrote them."""
    run_cols = ("name, recipe, status, progress, stage, step, total_steps, message, created_at, attempts, "
                "cancel_requested, parent_run_id, model_id")
    conn.execute(text("INSERT INTO models (id, source, fingerprint, summary, created_at) VALUES "
                      "(1, 'demo', 'f1', '{\"layers\": 4}', CURRENT_TIMESTAMP), "
                      "(2, 'org/name', 'f2', '{}', CURRENT_TIMESTAMP)"))
    conn.execute(text("INSERT INTO analyses (model_id, data_fingerprint, settings, settings_hash, status, "
                      "created_at) VALUES (1, 'd', '{}', 'h', 'done', CURRENT_TIMESTAMP)"))
    conn.execute(text(f"INSERT INTO runs (id, {run_cols}) VALUES "
                      "(1, 'first', '{\"model\": \"demo\"}', 'succeeded', 1, 'done', 3, 3, 'done', "
                      "CURRENT_TIMESTAMP, 1, false, NULL, 1), "
                      "(2, 'again', '{\"model\": \"demo\"}', 'failed', 0.5, 'distill', 1, 3, 'boom', "
                      "CURRENT_TIMESTAMP, 1, false, 1, 1), "
                      "(3, 'queued', '{\"model\": \"org/name\"}', 'queued', 0, '', 0, 0, 'queued', "
                      "CURRENT_TIMESTAMP, 0, false, 1, 2)"))
    for run_id in (1, 2, 3):
        conn.execute(text("INSERT INTO stage_metrics (run_id, stage_index, stage, name, value) VALUES "
                          "(:r, 0, 'slim', 'ppl', 1.5)"), {"r": run_id})
        for i in range(3):
            conn.execute(text("INSERT INTO run_logs (run_id, at, level, message) VALUES "
                              "(:r, CURRENT_TIMESTAMP, 'info', :m)"), {"r": run_id, "m": f"run {run_id} line {i}"})
    for run_id, kind in ((1, "checkpoint"), (1, "zip"), (2, "checkpoint")):
        conn.execute(text("INSERT INTO artifacts (run_id, kind, path, bytes, sha256, created_at) VALUES "
                          "(:r, :k, :p, 10, 'abc', CURRENT_TIMESTAMP)"), {"r": run_id, "k": kind,
                                                                          "p": f"{run_id}/{kind}"})
    if conn.dialect.name == "postgresql":  # explicit ids do not move the serial sequences
        for table in ("models", "runs"):
            conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"))


def test_upgrading_from_the_first_migration_keeps_every_run_log_artifact_parent_and_model(db_url):
    # Issue 28: SQLite rebuilds `runs` in 0004; with foreign keys on, dropping the old table cascaded into run_logs
    # and artifacts and set every parent link to NULL. Every table is filled at 0001 and must survive to head.
    engine = db.init_db(db_url)
    with _downgraded(engine, "base"):
        pass
    db.migrate(engine, "0001")
    with engine.begin() as conn:
        _fill_every_table_at_0001(conn)
    db.dispose_all()
    engine = db.init_db(db_url)  # what the studio does when it opens an old database

    from storage import catalog, repo
    runs = {r.id: r for r in repo.list_runs()}
    assert sorted(runs) == [1, 2, 3]
    assert {i: (r.name, r.status, r.parent_run_id, r.tags, r.notes, r.send_count) for i, r in runs.items()} == {
        1: ("first", "succeeded", None, [], "", 0), 2: ("again", "failed", 1, [], "", 0),
        3: ("queued", "queued", 1, [], "", 0)}
    for run_id in (1, 2, 3):
        assert [log.message for log in repo.get_logs(run_id)][:3] == [f"run {run_id} line {i}" for i in range(3)]
    with engine.connect() as conn:
        artifacts = conn.execute(text("SELECT run_id, kind, path FROM artifacts ORDER BY id")).all()
        models = conn.execute(text("SELECT id, source, fingerprint, label FROM models ORDER BY id")).all()
        assert conn.execute(text("SELECT count(*) FROM run_logs")).scalar_one() == 9
    assert [tuple(a) for a in artifacts] == [(1, "checkpoint", "1/checkpoint"), (1, "zip", "1/zip"),
                                             (2, "checkpoint", "2/checkpoint")]
    assert [tuple(m) for m in models] == [(1, "demo", "f1", None), (2, "org/name", "f2", None)]
    assert catalog.labels_by_source() == {}
    # The foreign keys still hold after the upgrade: a new run made from run 2 links to it, deleting run 1 cascades.
    child = repo.create_run({"model": "demo"}, parent_run_id=2)
    assert child > 3 and repo.get_run(child).parent_run_id == 2
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
            assert conn.execute(text("PRAGMA foreign_key_check")).all() == []


def test_a_sqlite_studio_copies_its_database_aside_before_it_upgrades(studio_home):
    import sqlite3
    url = f"sqlite:///{studio_home / 'studio.db'}"
    engine = db._create_engine(url)
    db.migrate(engine, "0003")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO runs (name, recipe, status, progress, stage, step, total_steps, message, "
                          "created_at, attempts, cancel_requested, send_count, tags, notes) VALUES ('old', '{}', "
                          "'succeeded', 1, '', 0, 0, 'done', CURRENT_TIMESTAMP, 1, false, 1, '[]', '')"))
    engine.dispose()
    db.init_db(url)
    backup = studio_home / "studio.db.bak-0003"
    assert backup.is_file(), sorted(p.name for p in studio_home.iterdir())
    with contextlib.closing(sqlite3.connect(backup)) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0003",)]
        assert conn.execute("SELECT name FROM runs").fetchall() == [("old",)]
    db.dispose_all()
    db.init_db(url)  # already at head: no second copy
    assert sorted(p.name for p in studio_home.glob("studio.db.bak-*")) == ["studio.db.bak-0003"]


def test_0005_gives_each_labelled_source_its_first_label(db_url):
    engine = db.init_db(db_url)
    with _downgraded(engine, "0004") as conn:
        conn.execute(text("INSERT INTO models (source, fingerprint, summary, label, created_at) VALUES "
                          "('/c/uploads/a.zip', 'f1', '{}', 'first', CURRENT_TIMESTAMP), "
                          "('/c/uploads/a.zip', 'f2', '{}', 'later', CURRENT_TIMESTAMP), "
                          "('/c/uploads/b.zip', 'f3', '{}', NULL, CURRENT_TIMESTAMP), "
                          "('demo', 'f4', '{}', 'demo', CURRENT_TIMESTAMP)"))
    db.migrate(engine, "head")
    from storage import catalog
    assert catalog.labels_by_source() == {"/c/uploads/a.zip": "first", "demo": "demo"}


def test_an_upgrade_that_cannot_copy_the_database_aside_changes_nothing(studio_home):
    url = f"sqlite:///{studio_home / 'studio.db'}"
    engine = db._create_engine(url)
    db.migrate(engine, "0003")
    engine.dispose()
    (studio_home / "studio.db.bak-0003.part").mkdir()       # something in the way of the copy
    with pytest.raises(RuntimeError, match=r"cannot copy studio.db aside as studio.db.bak-0003 .* was not changed"):
        db.init_db(url)
    db.dispose_all()
    engine = db._create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "0003"
    engine.dispose()
