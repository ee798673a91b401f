"""Celery tasks and worker hooks. Tasks take ids only and re-read their rows (workers.job does the work).

Worker hooks (connected when a worker imports this module):
- `worker_init` (the parent, before it forks): open the database and apply migrations;
- `worker_ready`: reap runs whose worker died while no app was watching, and check that the parent has not
  initialised CUDA (a forked child cannot use a CUDA context made before the fork);
- `worker_process_init` (each forked child): die with the parent (Linux), so a killed worker leaves no orphan
  job running unseen; the reaper then fails its run.

Importance analysis (`workers.analyze_model`) lives in workers/analysis.py and Compare's side-by-side generation
(`workers.compare_models`) in workers/compare_job.py; workers load them through `celery_app.TASK_MODULES`.
"""
from __future__ import annotations

import ctypes
import logging
import signal
import socket
import sys

from celery import shared_task
from celery.signals import worker_init, worker_process_init, worker_ready

from storage import db, repo

from .celery_app import RUN_TASK
from .job import ClaimUnavailable, execute_run
from .settings import WorkerSettings

log = logging.getLogger(__name__)
CLAIM_TASK_RETRIES = 3


@shared_task(name=RUN_TASK, bind=True)
def run_job(self, run_id: int) -> str:
    """Run one queued run; idempotent on `run_id` (a second delivery finds it claimed and returns "skipped").
    A claim the database refused after every in-process try is retried by Celery `CLAIM_TASK_RETRIES` times,
    `claim_retry_countdown_s` apart; after that the run is still queued and the app's reaper sends it again."""
    settings = WorkerSettings.from_env()
    try:
        return execute_run(int(run_id), worker=self.request.hostname or socket.gethostname(), settings=settings)
    except ClaimUnavailable as exc:
        log.error("%s; the task is retried in %.1f s", exc, settings.claim_retry_countdown_s)
        raise self.retry(exc=exc, countdown=settings.claim_retry_countdown_s, max_retries=CLAIM_TASK_RETRIES)


@worker_init.connect
def _open_database(**_) -> None:
    db.init_db()


@worker_ready.connect
def _reap_and_check(**_) -> None:
    settings = WorkerSettings.from_env()
    reaped = repo.reap_stale_runs(stale_after_s=settings.stale_after_s)
    if reaped:
        log.warning("marked %d run(s) failed whose worker was lost: %s", len(reaped), reaped)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        log.error("CUDA was initialised in the worker parent; forked jobs cannot use the GPU. "
                  "Do not touch torch.cuda at import time of workers.* or compressor.*")


@worker_process_init.connect
def _die_with_parent(**_) -> None:
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            log.debug("prctl(PR_SET_PDEATHSIG) unavailable")
