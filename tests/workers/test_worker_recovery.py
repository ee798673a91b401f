"""Outages the queue alone does not survive, on both stacks the studio runs on:

- embedded-sqlite: EmbeddedServices starts a private redis-server and one worker on the SQLite file (`python app.py`);
- redis-postgresql: the system's redis-server on a private port (so that the test may crash and restart it) and
  PostgreSQL, with one external worker (`celery -A workers worker`); the test process is the app (EmbeddedServices
  with REDIS_URL set: reaper and re-send only).

Each test asserts that no run is lost and none runs twice (the executions log of the test pipeline). Timings are
shortened through the settings production reads (requeue after 2 s, reaper every 0.5 s, claim back-off 0.2 s).
Run with `-s` to see the measured delays; MOE_STUDIO_TEST_OUTAGE_S=240 keeps the broker down longer.
"""
from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import redis

from storage import db, repo
from tests.storage.databases import postgres_schema_url, studio_env
from tests.workers.cluster import FAST_TIMINGS, TEST_PIPELINE, WorkerCluster, wait_for
from tests.workers.faults import SQLITE_BUSY_S, DatabaseOutage, RedisServer, database_outage
from workers.celery_app import get_app, send_run_message
from workers.embedded import EmbeddedServices
from workers.reaper import RESENT_NOTE
from workers.service import enqueue_run

# A longer outage for a measurement, e.g. MOE_STUDIO_TEST_OUTAGE_S=240 (the worker's reconnect waits grow to 30 s).
LONG_OUTAGE_S = float(os.environ.get("MOE_STUDIO_TEST_OUTAGE_S") or 0)
TIMINGS = dict(FAST_TIMINGS, MOE_STUDIO_REQUEUE_AFTER_S="2", MOE_STUDIO_CLAIM_RETRIES="1",
               MOE_STUDIO_CLAIM_BACKOFF_S="0.2")


@dataclass
class Stack:
    kind: str
    services: EmbeddedServices          # the app
    db: DatabaseOutage                  # the workers' database, with down() / up()
    redis_server: RedisServer | None    # redis-postgresql: the broker the test crashes
    cluster: WorkerCluster | None       # redis-postgresql: the external worker

    def crash_broker(self) -> None:
        """SIGKILL the broker: its messages are gone. The embedded one is restarted by the supervisor."""
        if self.redis_server is not None:
            self.redis_server.stop()
        else:
            self.services.redis_proc.kill()
            self.services.redis_proc.wait()

    def broker_back(self, timeout: float = 30) -> float:
        """Restart the external broker (the embedded one restarts by itself); the time it answers again."""
        if self.redis_server is not None:
            self.redis_server.start()
        client = redis.Redis.from_url(self.services.redis_url, socket_connect_timeout=0.2)

        def answers() -> bool:
            try:
                return client.ping()
            except redis.exceptions.ConnectionError:
                return False
        wait_for(answers, timeout=timeout, interval=0.02, what="the broker to answer")
        client.close()
        return time.monotonic()

    def worker_log(self) -> str:
        if self.cluster is not None:
            return self.cluster.logs()
        return (self.services.log_dir / "worker.log").read_text(errors="replace")


def _stack_env(home: Path) -> dict[str, str]:
    return dict(TIMINGS, MOE_STUDIO_PIPELINE=TEST_PIPELINE, MOE_STUDIO_TEST_EXECUTIONS=str(home / "executions.log"))


@contextmanager
def embedded_stack(tmp_path: Path, *, restart_backoff_s: float = 0.5) -> Iterator[Stack]:
    home = tmp_path / "studio"
    with studio_env(home, MOE_STUDIO_SQLITE_BUSY_S=SQLITE_BUSY_S, **_stack_env(home)), \
            database_outage(db.database_url()) as outage, \
            EmbeddedServices(restart_backoff_s=restart_backoff_s) as services:
        yield Stack("embedded-sqlite", services, outage, None, None)


@contextmanager
def external_stack(tmp_path: Path, **_) -> Iterator[Stack]:
    home, server = tmp_path / "studio", RedisServer(tmp_path / "redis").start()
    try:
        with postgres_schema_url() as url, database_outage(url) as outage, studio_env(
                home, DATABASE_URL=url, REDIS_URL=server.url, MOE_STUDIO_QUEUE=f"rec-{uuid.uuid4().hex[:8]}",
                **_stack_env(home)), EmbeddedServices() as services, \
                WorkerCluster(n=1, env={"DATABASE_URL": outage.url}) as cluster:
            yield Stack("redis-postgresql", services, outage, server, cluster)
    finally:
        server.close()


@pytest.fixture(params=["embedded-sqlite", "redis-postgresql"])
def open_stack(request, tmp_path):
    """`open_stack(restart_backoff_s=...)` opens this parameter's stack (a context manager yielding a `Stack`)."""
    opener = embedded_stack if request.param == "embedded-sqlite" else external_stack
    return lambda **kw: opener(tmp_path, **kw)


def _finished(run_id: int):
    run = repo.get_run(run_id)
    return run if run.is_finished else None


def _executions() -> Counter:
    path = Path(os.environ["MOE_STUDIO_TEST_EXECUTIONS"])
    return Counter(int(line.split()[0]) for line in path.read_text().splitlines()) if path.exists() else Counter()


def _started(run_id: int) -> float | None:
    return time.monotonic() if repo.get_run(run_id).status != "queued" else None


def test_a_run_enqueued_while_the_broker_is_down_starts_once_it_is_back(open_stack):
    with open_stack(restart_backoff_s=4.0) as stack:  # embedded: the supervisor brings Redis back after 4 s
        stack.crash_broker()
        t0 = time.monotonic()
        run_id = enqueue_run({"model": "test:steps=3"})  # returns: the user is told it waits, nothing is lost
        enqueue_s = time.monotonic() - t0
        run = repo.get_run(run_id)
        assert run.status == "queued" and run.message.startswith("waiting for the broker (")
        time.sleep(LONG_OUTAGE_S)
        back = stack.broker_back()
        started = wait_for(lambda: _started(run_id), timeout=45, what="the run to start")
        run = wait_for(lambda: _finished(run_id), timeout=30, what="the run to finish")
        executions = _executions()
    print(f"\n[{stack.kind}] enqueue with the broker down took {enqueue_s:.1f} s; broker back (after at least "
          f"{LONG_OUTAGE_S:g} s) -> run started: {started - back:.1f} s")
    assert (run.status, run.attempts, run.message) == ("succeeded", 1, "succeeded"), (run.error, run.message)
    assert executions[run_id] == 1 and enqueue_s < 5
    assert started - back < 35  # a reaper round (0.5 s) plus the worker's reconnect (Celery: 2, 4, 6 ... s apart)


def test_a_broker_crash_loses_no_queued_run_and_runs_none_twice(open_stack):
    with open_stack() as stack:
        running = enqueue_run({"model": "test:steps=60,step_s=0.05"})  # 3 s; it goes on through the crash
        wait_for(lambda: repo.get_run(running).step >= 2, timeout=30, what="the first run to be running")
        waiting = [enqueue_run({"model": "test:steps=2", "seed": i}) for i in range(3)]  # messages in Redis
        stack.crash_broker()
        crashed = time.monotonic()
        back = stack.broker_back()
        runs = [wait_for(lambda i=i: _finished(i), timeout=60, what=f"run {i}") for i in [running, *waiting]]
        done = time.monotonic()
        restarts = stack.services.supervisor.restarts if stack.services.supervisor else []
        executions = _executions()
        notes = [[line.message for line in repo.get_logs(r.id)] for r in runs[1:]]
    print(f"\n[{stack.kind}] broker down for {back - crashed:.1f} s; all 4 runs done {done - back:.1f} s after it "
          f"came back; supervisor restarts: {restarts}")
    assert [r.status for r in runs] == ["succeeded"] * 4, [(r.id, r.error) for r in runs]
    assert all(executions[r.id] == 1 for r in runs) and [r.attempts for r in runs] == [1] * 4
    assert [r.send_count for r in runs[1:]] == [2] * 3  # the lost messages were sent again, once each
    assert all(RESENT_NOTE in messages for messages in notes)


def test_a_database_outage_during_the_claim_delays_the_run_but_never_loses_it(open_stack):
    with open_stack() as stack:
        run_id = repo.create_run({"model": "test:steps=2"})
        repo.mark_sent(run_id)
        with stack.db.outage(8.0):  # longer than the worker's claim retries and Celery's task retries together
            send_run_message(run_id, get_app(stack.services.settings))
            wait_for(lambda: f"run {run_id}: claim failed" in stack.worker_log(), timeout=15,
                     what="the worker to meet the outage at the claim")
        back = time.monotonic()
        run = wait_for(lambda: _finished(run_id), timeout=45, what="the run to finish")
        log, executions = stack.worker_log(), _executions()
    print(f"\n[{stack.kind}] database back -> run finished {time.monotonic() - back:.1f} s later; "
          f"messages sent for it: {run.send_count}")
    assert (run.status, run.attempts) == ("succeeded", 1), (run.error, run.message)
    assert executions[run_id] == 1
    assert "the database did not take the claim in 2 tries" in log and "Retry in" in log


def test_a_killed_embedded_worker_is_restarted_its_run_failed_and_the_next_run_completes(tmp_path):
    # Only the embedded stack has a supervisor; external workers are restarted by the operator's systemd or k8s.
    with embedded_stack(tmp_path) as stack:
        services = stack.services
        victim = enqueue_run({"model": "test:steps=400,step_s=0.05"})
        wait_for(lambda: repo.get_run(victim).step >= 2, timeout=30, what="the run to be running")
        old_pid = services.worker_proc.pid
        os.kill(old_pid, signal.SIGKILL)  # the worker's main process; its job process dies with it
        killed = time.monotonic()
        run = wait_for(lambda: _finished(victim), timeout=20, what="the dead worker's run to be failed")
        failed_s = time.monotonic() - killed
        wait_for(lambda: services.worker_proc.pid != old_pid, timeout=20, what="a new worker")
        after = enqueue_run({"model": "test:steps=2"})
        started = wait_for(lambda: _started(after), timeout=60, what="the next run to start")
        done = wait_for(lambda: _finished(after), timeout=30, what="the next run")
        restarts, executions = list(services.supervisor.restarts), _executions()
    print(f"\n[{stack.kind}] worker killed -> its run failed {failed_s:.1f} s later, next run started "
          f"{started - killed:.1f} s after the kill; supervisor restarts: {restarts}")
    assert run.status == "failed" and run.error.startswith(
        f"worker lost: the embedded worker {services.worker_node} exited with signal 9")
    assert done.status == "succeeded" and executions[after] == 1
    assert [name for name, *_ in restarts] == ["embedded worker"]
