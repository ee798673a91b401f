"""Job workers: a Celery app on Redis, the run task, the embedded Redis + worker, and the services the UI calls.

    workers.settings    WorkerSettings from the environment (REDIS_URL, timings, pipeline)
    workers.celery_app  get_app(): the Celery app, configured for long ML jobs
    workers.tasks       run_job(run_id): the Celery task (thin: it calls workers.job.execute_run)
    workers.analysis    analyze_model: the Explore tab's importance analysis job
    workers.compare_job compare_job: the Compare tab's side-by-side generation of two models
    workers.job         execute_run: claim the row, run the pipeline, record results / error / cancel
    workers.monitor     RunMonitor: heartbeat, throttled progress writes and the cancel flag of one running job
    workers.reaper      fail runs whose worker died; send queued runs the broker never took or lost
    workers.broker      which runs the broker holds a message for (the Redis queue and unacknowledged deliveries)
    workers.embedded    EmbeddedServices: private redis-server + one worker process when REDIS_URL is unset
    workers.supervisor  restart the embedded redis-server and worker when they die, with a back-off
    workers.service     enqueue_run, cancel_run, rerun, delete_run

What happens on each fault (broker down or restarted, database away during a claim, a worker or Redis killed, a
worker machine whose clock is off) and how fast the studio recovers: docs/workers.md.

Running workers separately (external mode). Give the app and every worker the same REDIS_URL, DATABASE_URL
(PostgreSQL) and artifact directory (MOE_STUDIO_HOME, or MOE_STUDIO_ARTIFACTS, on a shared disk), then on each machine:

    REDIS_URL=redis://broker:6379/0 DATABASE_URL=postgresql+psycopg://u:p@db/studio MOE_STUDIO_HOME=/shared/studio \
        celery -A workers worker --pool=prefork --concurrency=1 --loglevel=INFO --hostname=gpu1@%h -Q cpu,gpu

`-Q` names the queues a worker serves: runs whose recipe needs a GPU (execution.device cuda / cuda:N) go to `gpu`,
the rest to `cpu` (workers.settings, docs/workers.md); without `-Q` a worker serves `cpu` only.

One job per worker process (concurrency 1 per GPU); the app (`python app.py` with the same variables) starts no
Redis and no worker, but runs the reaper, which also sends queued runs the broker does not hold. docker-compose.yml does exactly this.

`celery -A workers worker` finds the app as `workers.app`, built lazily from the environment so that importing
this package never fixes REDIS_URL before the embedded broker has chosen its port.
"""
from __future__ import annotations


def __getattr__(name: str):
    if name in ("app", "celery"):
        from .celery_app import get_app
        return get_app()
    raise AttributeError(f"module 'workers' has no attribute {name!r}")
