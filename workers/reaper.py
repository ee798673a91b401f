"""Faults the queue cannot see: a worker killed mid-run, and messages a broker never took or lost.

- `reap_once`: every running run whose heartbeat is older than `stale_after_s` (by the database's clock) is marked
  failed ("worker lost") and its partial files are removed.
- `Resender`: every queued run that no worker has claimed and for which the broker holds no live message is sent
  again, when it was never sent (the broker was down at enqueue) or was sent more than `requeue_after_s` ago (the
  broker restarted or was flushed, or a worker took the message and could not claim the run). A live message waits
  in the queue, or was delivered to a worker that has held it (unacknowledged, the run still queued) for less than
  `requeue_after_s` by this process's clock; one held longer belongs to a dead worker (Redis would hand it back
  only after the visibility timeout, days). A duplicate that slips through (a message taken by a worker in the
  instant between the two reads, or a dead worker's message handed back) is harmless: the claim is atomic and the
  second delivery is skipped. Every queue is watched (the default / CPU one and the GPU one), and a run is sent
  again to the queue its recipe's device needs (`workers.service.run_queue`).

Both run in the app: once at start (`EmbeddedServices`), then in a `Reaper` thread every `reap_every_s`; a worker
reaps once when it starts. So a killed run is failed within stale_after + reap_every (+ one heartbeat) seconds, and
a run enqueued while the broker was down is sent at most reap_every seconds after the broker is back.

    reaper = Reaper(WorkerSettings.from_env()).start(); ...; reaper.stop()
"""
from __future__ import annotations

import logging
import threading
import time

from storage import artifacts, repo

from .broker import BrokerUnavailable, BrokerView, read_broker
from .celery_app import get_app
from .service import run_queue, send_run, sync_run_pins
from .settings import WorkerSettings

log = logging.getLogger(__name__)
RESENT_NOTE = "sent to the broker again: no worker had claimed it and the broker held no message for it"


def reap_once(settings: WorkerSettings) -> list[int]:
    reaped = repo.reap_stale_runs(stale_after_s=settings.stale_after_s)
    for run_id in reaped:
        artifacts.remove_run_dir(run_id)
    if reaped:
        log.warning("worker lost: marked run(s) %s failed", reaped)
    return reaped


class Resender:
    """Sends the queued runs the broker does not hold; remembers since when it has seen each delivered message."""

    def __init__(self, settings: WorkerSettings):
        self.settings = settings
        self._first_seen: dict[str, float] = {}  # delivery tag -> time.monotonic() of this process
        self._lock = threading.Lock()  # the reaper thread, the supervisor and start() may call at once

    def live_run_ids(self, view: BrokerView) -> set[int]:
        """Runs with a message waiting, or delivered less than `requeue_after_s` ago (as far as we have seen)."""
        now = time.monotonic()
        self._first_seen = {tag: self._first_seen.get(tag, now) for tag in view.delivered}
        fresh = {run_id for tag, run_id in view.delivered.items()
                 if now - self._first_seen[tag] < self.settings.requeue_after_s}
        return view.waiting | fresh

    def __call__(self, *, older_than_s: float | None = None) -> list[int]:
        """Send every queued run that is due (never sent, or last sent more than `older_than_s`, default
        `requeue_after_s`, ago) and has no live message in the broker; returns their ids. Raises
        `BrokerUnavailable` when the broker does not answer (the runs sent before that are recorded)."""
        settings, sent = self.settings, []
        with self._lock:
            due = repo.runs_due_for_send(
                older_than_s=settings.requeue_after_s if older_than_s is None else older_than_s)
            if not due:
                return []
            live, app = self.live_run_ids(read_broker(settings)), get_app(settings)
            for run_id in due:
                if run_id not in live:
                    send_run(run_id, app, note=RESENT_NOTE, queue=run_queue(repo.get_run(run_id).recipe, settings))
                    sent.append(run_id)
        if sent:
            log.info("sent %d queued run(s) to the broker that it did not hold: %s", len(sent), sent)
        return sent


class Reaper:
    """A daemon thread calling `reap_once` and `resend` (a `Resender`) every `settings.reap_every_s` seconds.
    A broker outage is logged once when it starts and once when it ends, not every round."""

    def __init__(self, settings: WorkerSettings):
        self.settings = settings
        self.resend = Resender(settings)
        self.reaped: list[int] = []
        self.resent: list[int] = []
        self.broker_down = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="studio-reaper", daemon=True)

    def start(self) -> "Reaper":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def round(self) -> None:
        """One round: reap, make the studio cache's pins those of the queued and running runs, then re-send."""
        self.reaped += reap_once(self.settings)
        try:
            sync_run_pins()
        except OSError as exc:
            log.warning("cannot update the studio cache's pins: %s", exc)
        try:
            self.resent += self.resend()
        except BrokerUnavailable as exc:
            if not self.broker_down:
                log.warning("%s; queued runs wait and are sent when it is back", exc)
            self.broker_down = True
            return
        if self.broker_down:
            log.info("the broker is reachable again")
        self.broker_down = False

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.reap_every_s):
            try:
                self.round()
            except Exception:  # the database may be briefly away; try again next round
                log.warning("reaper round failed", exc_info=True)
