"""execute_run and RunMonitor in-process, on SQLite and PostgreSQL: the throttle, the heartbeat, a lost claim,
idempotency, and a claim through a database outage. (The queue itself is tested with real worker processes in
test_worker_faults.py and test_worker_recovery.py.)"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from compressor.progress import ProgressEvent
from storage import artifacts, db, repo
from tests.workers.cluster import TEST_PIPELINE
from tests.workers.faults import database_outage
from workers.job import ClaimUnavailable, claim_run, execute_run
from workers.monitor import RunMonitor
from workers.settings import WorkerSettings

SETTINGS = WorkerSettings(pipeline=TEST_PIPELINE, heartbeat_s=0.2, stale_after_s=2, progress_every_s=0.2)


def test_progress_is_throttled_and_the_last_event_is_flushed(db_url):
    run_id = repo.create_run({"model": "demo"})
    token = repo.mark_started(run_id, worker="w", pid=1)
    t0 = time.monotonic()
    with RunMonitor(run_id, token, heartbeat_s=10, progress_every_s=0.2) as mon:
        for i in range(200):  # 200 events in ~1 s
            mon.on_progress(ProgressEvent(stage="distill", step=i + 1, total=200, fraction=(i + 1) / 200,
                                          message=f"step {i + 1}"))
            time.sleep(0.005)
        elapsed = time.monotonic() - t0
    assert 1 <= mon.writes <= elapsed / 0.2 + 2
    run = repo.get_run(run_id)
    assert (run.step, run.progress, run.message) == (200, 1.0, "step 200")
    assert sum("distill" in line.message for line in repo.get_logs(run_id)) == 1  # one line per stage, not per write


def test_heartbeat_runs_while_the_pipeline_is_silent(db_url):
    run_id = repo.create_run({"model": "demo"})
    token = repo.mark_started(run_id, worker="w", pid=1)
    first = repo.get_run(run_id).heartbeat_at
    with RunMonitor(run_id, token, heartbeat_s=0.1, progress_every_s=1):
        time.sleep(0.5)
    assert (repo.get_run(run_id).heartbeat_at - first).total_seconds() >= 0.3


def test_a_reaped_run_tells_its_pipeline_to_stop(db_url):
    run_id = repo.create_run({"model": "demo"})
    token = repo.mark_started(run_id, worker="w", pid=1)
    with RunMonitor(run_id, token, heartbeat_s=0.05, progress_every_s=0.05) as mon:
        assert not mon.should_cancel()
        repo.mark_failed(run_id, error="worker lost")  # what the reaper does
        deadline = time.monotonic() + 5
        while not mon.lost and time.monotonic() < deadline:
            time.sleep(0.02)
        assert mon.lost and mon.should_cancel()


def test_execute_run_is_idempotent_on_the_run_id(db_url):
    run_id = repo.create_run({"model": "test:steps=3,step_s=0"})
    assert execute_run(run_id, worker="w1", settings=SETTINGS) == "succeeded"
    assert execute_run(run_id, worker="w2", settings=SETTINGS) == "skipped"
    run = repo.get_run(run_id)
    assert (run.status, run.attempts, run.worker) == ("succeeded", 1, "w1")
    assert execute_run(12345, worker="w1", settings=SETTINGS) == "skipped"  # deleted / unknown


def test_a_pipeline_that_cannot_be_imported_fails_the_run_with_the_reason(db_url):
    run_id = repo.create_run({"model": "demo"})
    bad = WorkerSettings(pipeline="tests.workers.pipelines:no_such_function")
    assert execute_run(run_id, worker="w", settings=bad) == "failed"
    run = repo.get_run(run_id)
    assert run.error == ("ImportError: MOE_STUDIO_PIPELINE='tests.workers.pipelines:no_such_function': "
                         "module tests.workers.pipelines has no 'no_such_function'")
    assert not artifacts.run_dir(run_id).exists()


def test_a_stored_recipe_that_no_longer_validates_fails_naming_the_field(db_url):
    run_id = repo.create_run({"model": "demo", "stages": 0})  # written by hand, bypassing enqueue_run
    assert execute_run(run_id, worker="w", settings=SETTINGS) == "failed"
    assert repo.get_run(run_id).error.startswith("RecipeError: invalid recipe: stages:")


@pytest.mark.parametrize("spec", ["compressor.pipeline.run_recipe", ""])
def test_pipeline_setting_must_name_module_and_function(spec):
    with pytest.raises(ValueError, match="must look like"):
        WorkerSettings(pipeline=spec)


@pytest.fixture
def lost_db(db_url, monkeypatch):
    """The test database reached as a worker reaches it in the fault tests, with `down()` / `up()` (faults.py)."""
    with database_outage(db_url) as outage:
        for name, value in outage.env.items():
            monkeypatch.setenv(name, value)
        db.dispose_all()
        db.init_db(outage.url)
        yield outage


def test_the_claim_is_retried_through_a_short_database_outage(lost_db, caplog):
    run_id = repo.create_run({"model": "demo"})
    settings = WorkerSettings(pipeline=TEST_PIPELINE, claim_retries=4, claim_backoff_s=0.2)  # tries for 3 s
    caplog.set_level(logging.WARNING, logger="workers.job")
    with ThreadPoolExecutor(1) as pool:
        with lost_db.outage(1.0):
            claim = pool.submit(claim_run, run_id, worker="w", settings=settings)
        token = claim.result(timeout=30)
    run = repo.get_run(run_id)
    assert token and (run.status, run.claim_token, run.attempts) == ("running", token, 1)
    assert any(f"run {run_id}: claim failed (OperationalError" in r.getMessage() for r in caplog.records)


def test_a_claim_the_database_keeps_refusing_raises_and_leaves_the_run_queued(lost_db):
    run_id = repo.create_run({"model": "test:steps=1"})
    settings = WorkerSettings(pipeline=TEST_PIPELINE, claim_retries=2, claim_backoff_s=0.1)
    with lost_db.outage(0):
        with pytest.raises(ClaimUnavailable, match=rf"run {run_id}: the database did not take the claim in 3 tries "
                                                   r"\(OperationalError"):
            execute_run(run_id, worker="w", settings=settings)
    run = repo.get_run(run_id)
    assert (run.status, run.attempts, run.claim_token) == ("queued", 0, None)
    assert execute_run(run_id, worker="w", settings=settings) == "succeeded"  # the retried task, once it is back
