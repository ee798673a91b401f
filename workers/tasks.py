"""Celery tasks and worker hooks. Tasks take ids only and re-read their rows (workers.job does the work).

Worker hooks (connected when a worker imports this module):
- `worker_init` (the parent, before it forks): open the database and apply migrations, then import torch,
  transformers and the job modules (`warm_imports`) without touching CUDA, so every forked job process starts with
  them loaded instead of spending 15-30 s importing them (`MOE_STUDIO_WARM_WORKER=0` turns this off; the
  benchmark bench/first_progress.py measures both);
- `worker_ready`: reap runs whose worker died while no app was watching, and check that the parent has not
  initialised CUDA (a forked child cannot use a CUDA context made before the fork);
- `worker_process_init` (each forked child): die with the parent (Linux), so a killed worker leaves no orphan
  job running unseen; the reaper then fails its run.

Importance analysis (`workers.analyze_model`) lives in workers/analysis.py and Compare's side-by-side generation
(`workers.compare_models`) in workers/compare_job.py; workers load them through `celery_app.TASK_MODULES`.
"""
from __future__ import annotations

import ctypes
import importlib
import json
import logging
import os
import signal
import socket
import sys
import time

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


# What a job process imports on its way to its first progress event, in the order it needs them. Importing these
# creates no CUDA context (torch initialises CUDA lazily, on the first CUDA call), so forking afterwards is safe.
WARM_MODULES = ("torch", "transformers", "transformers.models.auto.modeling_auto", "compressor.sources",
                "compressor.scoring", "compressor.compare")
WARM_ENV = "MOE_STUDIO_WARM_WORKER"


def warm_imports(pipeline: str) -> list[str]:
    """Import `WARM_MODULES`, the pipeline's module (`MOE_STUDIO_PIPELINE`) and the demo family's modeling module
    in this process; returns the modules imported. A module that fails to import is logged and skipped: the job
    that needs it will report the error itself."""
    names = [*WARM_MODULES, pipeline.partition(":")[0]]
    try:
        from compressor.demo import demo_model_dir
        model_type = json.loads((demo_model_dir() / "config.json").read_text())["model_type"]
        names.append(f"transformers.models.{model_type}.modeling_{model_type}")
    except Exception:  # noqa: BLE001 - warming is an optimisation; never stop a worker for it
        log.debug("no demo model type to warm", exc_info=True)
    done = []
    for name in names:
        try:
            importlib.import_module(name)
            done.append(name)
        except Exception:  # noqa: BLE001
            log.warning("warm import of %s failed; jobs import it themselves", name, exc_info=True)
    return done


@worker_init.connect
def _open_database(**_) -> None:
    db.init_db()
    if os.environ.get(WARM_ENV, "1") == "0":
        log.info("warm imports off (%s=0): every job process imports torch itself", WARM_ENV)
        return
    t0 = time.perf_counter()
    done = warm_imports(WorkerSettings.from_env().pipeline)
    log.info("worker parent imported %d modules in %.1f s (job processes fork with them loaded)", len(done),
             time.perf_counter() - t0)


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
