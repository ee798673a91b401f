"""Real worker processes for tests: `python -m celery -A workers worker` exactly as an operator starts them.

    with WorkerCluster(n=2) as cluster:       # environment (REDIS_URL, DATABASE_URL, ...) already set
        run_id = enqueue_run({...})
        wait_for(lambda: repo.get_run(run_id).is_finished)

Timings are shortened through the same environment variables production reads, so fault tests take seconds.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, TypeVar

from storage import db
from workers.celery_app import get_app

REPO = Path(__file__).resolve().parents[2]
TEST_PIPELINE = "tests.workers.pipelines:run_tiny"
FAST_TIMINGS = {"MOE_STUDIO_HEARTBEAT_S": "0.5", "MOE_STUDIO_STALE_AFTER_S": "4", "MOE_STUDIO_REAP_EVERY_S": "0.5",
                "MOE_STUDIO_PROGRESS_EVERY_S": "0.2"}
T = TypeVar("T")


def wait_for(predicate: Callable[[], T], *, timeout: float, interval: float = 0.05, what: str = "condition") -> T:
    """Poll until `predicate()` is truthy; return it. Fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class WorkerCluster:
    """`n` worker processes with this process's environment, plus `env` (e.g. a DATABASE_URL only they use);
    `queues` names the queues they serve (`-Q`; default: none given, so the default queue)."""

    def __init__(self, n: int = 2, *, env: dict[str, str] | None = None, queues: list[str] | None = None):
        self.nodes = [f"test{i}-{uuid.uuid4().hex[:6]}@localhost" for i in range(n)]
        self.env = env or {}
        self.queue_args = ["-Q", ",".join(queues)] if queues else []
        self.procs: list[subprocess.Popen] = []
        self.log_dir = db.studio_home() / "logs"

    def __enter__(self) -> "WorkerCluster":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONPATH=str(REPO), **self.env)
        for node in self.nodes:
            with open(self.log_dir / f"{node.split('@')[0]}.log", "ab") as logf:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "celery", "-A", "workers", "worker", "--pool=prefork", "--concurrency=1",
                     "--loglevel=INFO", f"--hostname={node}", "--without-gossip", "--without-mingle",
                     *self.queue_args],
                    cwd=REPO, env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True))
        try:
            self.wait_ready(60)
        except BaseException:
            self.__exit__()
            raise
        return self

    def wait_ready(self, timeout: float) -> None:
        app, pending = get_app(), set(self.nodes)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            dead = [p.args for p in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"worker exited at start: {dead}; logs: {self.logs()[-3000:]}")
            for reply in app.control.ping(destination=list(pending), timeout=0.5):
                pending -= set(reply)
        if pending:
            raise RuntimeError(f"workers {pending} not ready after {timeout} s; logs: {self.logs()[-3000:]}")

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("test*.log")))

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait(timeout=10)
