"""The Celery app, built from `WorkerSettings` on first use (not at import), one per broker URL and queue.

Settings for long ML jobs (see docs/ARCHITECTURE.md and the Celery notes):
- `task_acks_late`: a job is acknowledged when it ends, so a worker lost mid-run does not lose the message;
- `worker_prefetch_multiplier=1`: a worker reserves one job at a time;
- Redis `visibility_timeout` (broker and result backend) above the longest job, so an unacknowledged running job is
  not handed to a second worker; the task is idempotent on the run id anyway (workers.job);
- `worker_max_tasks_per_child=1`: every job gets a fresh forked process, which frees all (GPU) memory when it exits;
  the parent never imports torch, so CUDA is never initialised in a process that forks.

    app = get_app()                      # REDIS_URL from the environment
    send_run_message(17, app)
"""
from __future__ import annotations

import threading

from celery import Celery, bootsteps

from compressor.quiet import silence_import_noise

from .settings import WorkerSettings

silence_import_noise()              # a worker imports transformers (and through it torchao) for every job

RUN_TASK = "workers.run_job"
# Every worker registers these, however it is started (embedded, or `celery -A workers worker` elsewhere).
TASK_MODULES = ["workers.tasks", "workers.analysis", "workers.compare_job"]

_apps: dict[tuple, Celery] = {}
_lock = threading.Lock()


class PromptRecycle(bootsteps.StartStopStep):
    """Replace a recycled pool process within `interval` seconds.

    With `worker_max_tasks_per_child=1` the process that ran a job exits, but billiard reaps it and forks its
    replacement only on a fixed 5 s timer (celery/celery#9588), so every queued job would wait ~5 s to start.
    This step runs the same `maintain_pool` on a short timer in the worker's event loop."""

    requires = {"celery.worker.components:Pool"}
    interval = 0.25

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self._entry = None

    def register_with_event_loop(self, worker, hub):
        maintain = getattr(worker.pool, "maintain_pool", None)
        if maintain is None:  # solo / threads pools recycle nothing
            return
        if self._entry is not None:  # the consumer re-registers after a broker reconnect
            self._entry.cancel()
        self._entry = hub.call_repeatedly(self.interval, maintain)


def make_app(settings: WorkerSettings) -> Celery:
    if not settings.redis_url:
        raise RuntimeError("REDIS_URL is not set. Start the studio with `python app.py` (it runs a private Redis "
                           "and worker), or point REDIS_URL at a Redis server, e.g. redis://127.0.0.1:6379/0")
    app = Celery("moe_studio", broker=settings.redis_url, backend=settings.redis_url, include=TASK_MODULES)
    transport = {"visibility_timeout": settings.visibility_timeout_s}
    app.conf.update(
        task_default_queue=settings.queue,
        task_acks_late=True,
        task_reject_on_worker_lost=False,      # a killed child is failed by the reaper, never replayed blindly
        task_track_started=True,
        task_soft_time_limit=int(settings.max_job_s),
        task_time_limit=int(settings.max_job_s + 300),
        task_serializer="json", result_serializer="json", accept_content=["json"],
        result_expires=7 * 24 * 3600,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=1,
        worker_cancel_long_running_tasks_on_connection_loss=False,  # a Redis blip must not kill a day-long job
        worker_hijack_root_logger=False,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,   # a worker waits out a broker outage of any length (default: ~50 min)
        broker_connection_timeout=5,
        task_publish_retry_policy={"max_retries": 3, "interval_start": 0, "interval_step": 0.5,
                                   "interval_max": 1},
    )
    app.steps["worker"].add(PromptRecycle)
    return app


def send_run_message(run_id: int, app: Celery | None = None, *, queue: str | None = None) -> None:
    """Queue `run_id` for a worker on `queue` (default: the app's default queue, `settings.queue`). `ignore_result`:
    nothing waits on Celery results (the runs table is the truth), so the sender subscribes to no result channel
    (which would grow without bound in a long-lived app and, with Redis away, retries for 20 s and then disables the
    result backend for the rest of the process)."""
    app = app or get_app()
    app.send_task(RUN_TASK, args=[run_id], ignore_result=True, queue=queue or app.conf.task_default_queue)


def get_app(settings: WorkerSettings | None = None) -> Celery:
    """The app for `settings` (default: from the environment), created once per broker URL and queue."""
    settings = settings or WorkerSettings.from_env()
    key = (settings.redis_url, settings.queue, settings.max_job_s)
    with _lock:
        if key not in _apps:
            _apps[key] = make_app(settings)
        return _apps[key]
