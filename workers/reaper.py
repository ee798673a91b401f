"""Faults the queue cannot see: a worker killed mid-run, and messages a broker lost.

- `reap_once`: every running run whose heartbeat is older than `stale_after_s` is marked failed ("worker lost") and
  its partial files are removed. Runs in the app (a `Reaper` thread, every `reap_every_s`) and once at worker start,
  so a killed run is failed within stale_after + reap_every (+ one heartbeat) seconds.
- `requeue_queued_runs`: at app start, send every run still "queued" in the database again. Queued runs survive a
  broker restart (the embedded Redis keeps nothing on disk) this way; a duplicate message is harmless because the
  task claims its row atomically.

    reaper = Reaper(WorkerSettings.from_env()); reaper.start(); ...; reaper.stop()
"""
from __future__ import annotations

import logging
import threading

from celery import Celery

from storage import artifacts, repo

from .celery_app import send_run_message
from .settings import WorkerSettings

log = logging.getLogger(__name__)


def reap_once(settings: WorkerSettings) -> list[int]:
    reaped = repo.reap_stale_runs(stale_after_s=settings.stale_after_s)
    for run_id in reaped:
        artifacts.remove_run_dir(run_id)
    if reaped:
        log.warning("worker lost: marked run(s) %s failed", reaped)
    return reaped


def requeue_queued_runs(app: Celery) -> list[int]:
    """Re-send every queued run; returns their ids."""
    ids = repo.queued_run_ids()
    for run_id in ids:
        send_run_message(run_id, app)
    if ids:
        log.info("re-enqueued %d queued run(s) from the database: %s", len(ids), ids)
    return ids


class Reaper:
    """A daemon thread calling `reap_once` every `settings.reap_every_s` seconds."""

    def __init__(self, settings: WorkerSettings):
        self.settings = settings
        self.reaped: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="studio-reaper", daemon=True)

    def start(self) -> "Reaper":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.reap_every_s):
            try:
                self.reaped += reap_once(self.settings)
            except Exception:  # the database may be briefly away; try again next round
                log.warning("reaper round failed", exc_info=True)
