"""Two real Celery worker processes on the Redis at 127.0.0.1:6379 (db 15) and PostgreSQL, as in a deployment with
external workers; the test process plays the app (enqueue, reaper thread). Faults: a recipe that raises, cancel,
SIGKILL of the process running a job and of a whole worker, 20 runs at once with duplicate deliveries."""
from __future__ import annotations

import os
import signal
import statistics
import time
import uuid
import zipfile
from pathlib import Path

import pytest

from compressor.recipe import RecipeError
from storage import artifacts, db, repo
from storage.models import RunStatus
from tests.storage.databases import flushed_test_redis, postgres_schema_url, studio_env
from tests.workers.cluster import FAST_TIMINGS, TEST_PIPELINE, WorkerCluster, pid_alive, wait_for
from workers.reaper import Reaper
from workers.service import cancel_run, enqueue_run, send_run
from workers.settings import WorkerSettings


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    home = tmp_path_factory.mktemp("cluster")
    with postgres_schema_url() as db_url, studio_env(
            home, DATABASE_URL=db_url, REDIS_URL=flushed_test_redis(), MOE_STUDIO_QUEUE=f"test-{uuid.uuid4().hex[:8]}",
            MOE_STUDIO_PIPELINE=TEST_PIPELINE, MOE_STUDIO_TEST_EXECUTIONS=str(home / "executions.log"),
            **FAST_TIMINGS):
        db.init_db()
        reaper = Reaper(WorkerSettings.from_env()).start()  # the app's reaper thread
        try:
            with WorkerCluster(n=2) as workers:
                yield workers
        finally:
            reaper.stop()


def _finished(run_id: int):
    run = repo.get_run(run_id)
    return run if run.is_finished else None


def _executions() -> list[str]:
    path = Path(os.environ["MOE_STUDIO_TEST_EXECUTIONS"])
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


def test_a_run_completes_with_progress_metrics_artifact_and_log(cluster):
    run_id = enqueue_run({"model": "test:steps=5,step_s=0.05", "seed": 7})
    run = wait_for(lambda: _finished(run_id), timeout=30, what=f"run {run_id}")
    assert run.status == "succeeded", (run.error, run.traceback)
    assert (run.progress, run.attempts, run.worker in cluster.nodes) == (1.0, 1, True)
    assert run.metrics["steps"] == 5 and run.metrics["final_loss"] == pytest.approx(0.2)
    assert [s["stage"] for s in run.stages] == ["work", "export"] and run.stages[1]["eval"] == {"agreement": 1.0}
    [artifact] = repo.get_artifacts(run_id)
    assert artifact.path == f"{run_id}/checkpoint"
    assert (artifact.bytes, artifact.sha256) == artifacts.checkpoint_digest(artifacts.resolve(artifact.path))
    with zipfile.ZipFile(artifacts.build_download(run_id)) as zf:
        assert f"run-{run_id}/checkpoint/weights.bin" in zf.namelist()
        assert b"seed: 7" in zf.read(f"run-{run_id}/recipe.yaml")
    messages = [line.message for line in repo.get_logs(run_id)]
    assert messages[0] == "queued" and messages[1].startswith("started on test") and messages[-1] == "succeeded"


def test_a_recipe_that_raises_is_failed_with_error_and_traceback(cluster):
    run_id = enqueue_run({"model": "test:steps=5,fail_at=2"})
    run = wait_for(lambda: _finished(run_id), timeout=30, what=f"run {run_id}")
    assert run.status == "failed"
    assert run.error == "ValueError: tiny pipeline: planned failure at step 2"
    assert "Traceback (most recent call last)" in run.traceback and "in run_tiny" in run.traceback
    assert not artifacts.run_dir(run_id).exists()
    assert repo.get_logs(run_id)[-1].message == f"failed: {run.error}"


def test_cancel_stops_a_running_job_within_seconds_and_keeps_its_log(cluster):
    run_id = enqueue_run({"model": "test:steps=400,step_s=0.05"})
    wait_for(lambda: repo.get_run(run_id).step >= 3, timeout=30, what="the job to be running")
    assert (artifacts.run_dir(run_id) / "checkpoint" / "weights.bin").exists()
    t0 = time.monotonic()
    assert cancel_run(run_id) == "running"
    run = wait_for(lambda: _finished(run_id), timeout=10, what="the cancel to land")
    assert run.status == "cancelled" and time.monotonic() - t0 < 3.0
    assert not artifacts.run_dir(run_id).exists()
    messages = [line.message for line in repo.get_logs(run_id)]
    assert "cancel requested" in messages and messages[-1] == "cancelled; partial files removed"
    assert run.step < 400


def test_sigkill_of_the_process_running_a_job_is_reaped_and_the_worker_goes_on(cluster):
    run_id = enqueue_run({"model": "test:steps=400,step_s=0.05"})
    run = wait_for(lambda: (r := repo.get_run(run_id)).step >= 2 and r, timeout=30, what="the job to be running")
    os.kill(run.worker_pid, signal.SIGKILL)
    t0 = time.monotonic()
    run = wait_for(lambda: _finished(run_id), timeout=20, what="the reaper")
    took = time.monotonic() - t0
    settings = WorkerSettings.from_env()
    assert run.status == "failed" and run.error.startswith("worker lost: no heartbeat from")
    assert took < settings.stale_after_s + settings.reap_every_s + settings.heartbeat_s + 2.0
    # the reaper marks the run failed, then removes its folder: give the removal the moment it takes
    wait_for(lambda: not artifacts.run_dir(run_id).exists(), timeout=5, what="the reaper to remove the partial files")
    after = enqueue_run({"model": "test:steps=2"})
    assert wait_for(lambda: _finished(after), timeout=30, what="the next run").status == "succeeded"


def test_twenty_runs_at_once_all_complete_none_lost_none_twice(cluster):
    ids = [enqueue_run({"model": "test:steps=2,step_s=0.01", "seed": i}) for i in range(20)]
    for run_id in ids:  # a redelivery of every message (e.g. after a broker hiccup) must not run anything twice
        send_run(run_id)
    wait_for(lambda: all(_finished(i) for i in ids), timeout=90, interval=0.2, what="20 runs")
    runs = [repo.get_run(i) for i in ids]
    assert [r.status for r in runs] == ["succeeded"] * 20
    assert [r.attempts for r in runs] == [1] * 20
    executed = [name for name in _executions() if int(name) in ids]
    assert sorted(map(int, executed)) == sorted(ids)
    assert len({r.metrics["digest"] for r in runs}) == 20  # 20 different seeds -> 20 different results


def test_enqueue_to_start_and_progress_latency(cluster):
    delays = []
    for _ in range(5):
        run_id = enqueue_run({"model": "test:steps=1,step_s=0"})
        run = wait_for(lambda: _finished(run_id), timeout=30, what=f"run {run_id}")
        delays.append((run.started_at - run.created_at).total_seconds())
    assert statistics.median(delays) < 2.0, delays

    run_id = enqueue_run({"model": "test:steps=8,step_s=0.3"})
    seen, lags = set(), []
    while not _finished(run_id):
        message = repo.get_run(run_id).message
        if " t=" in message and message not in seen:
            seen.add(message)
            lags.append(time.time() - float(message.split(" t=")[1]))
        time.sleep(0.01)
    assert len(lags) >= 5 and statistics.median(lags) < 0.5, lags  # events 0.3 s apart, throttle 0.2 s


def test_a_killed_worker_takes_its_job_down_with_it_and_the_run_is_reaped(cluster):
    run_id = enqueue_run({"model": "test:steps=400,step_s=0.05"})
    run = wait_for(lambda: (r := repo.get_run(run_id)).step >= 2 and r, timeout=30, what="the job to be running")
    parent = cluster.procs[cluster.nodes.index(run.worker)]
    parent.send_signal(signal.SIGKILL)  # the worker's main process, not the job's
    wait_for(lambda: not pid_alive(run.worker_pid), timeout=5, what="the orphaned job process to die")
    assert wait_for(lambda: _finished(run_id), timeout=20, what="the reaper").status == "failed"
    after = enqueue_run({"model": "test:steps=2"})  # the other worker still serves the queue
    assert wait_for(lambda: _finished(after), timeout=30, what="the next run").status == "succeeded"


def test_invalid_recipes_are_refused_before_a_row_exists(cluster):
    before = len(repo.list_runs())
    with pytest.raises(RecipeError, match=r"slimming\.expert_keep_ratio: Input should be less than or equal to 1"):
        enqueue_run({"model": "demo", "slimming": {"expert_keep_ratio": 2.0}})
    with pytest.raises(RecipeError, match=r"distill\.stpes: unknown field"):
        enqueue_run({"model": "demo", "distill": {"stpes": 10}})
    assert len(repo.list_runs()) == before
    assert RunStatus.queued.value not in {r.status for r in repo.list_runs()}
