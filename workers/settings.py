"""Worker settings, read from the environment (the app, the embedded worker and `celery -A workers worker` agree).

    REDIS_URL                    broker and result backend; unset = the app starts a private Redis (workers.embedded)
    MOE_STUDIO_QUEUE             the default Celery queue (default "cpu"): runs whose recipe says execution.device
                                 cpu (or auto, see below), and the Explore analysis and Compare jobs
    MOE_STUDIO_GPU_QUEUE         the queue of runs that need a GPU, execution.device cuda / cuda:N (default "gpu");
                                 start GPU workers with `-Q gpu` (or `-Q cpu,gpu` to serve both)
    MOE_STUDIO_AUTO_QUEUE        where execution.device auto runs go: "cpu" (the default queue, the default) or "gpu"
    MOE_STUDIO_WORKER_QUEUES     the queues the embedded worker (`python app.py`) serves, e.g. "cpu" or "cpu,gpu"
                                 (default: both when this machine has a CUDA GPU, else the default queue)
    MOE_STUDIO_PIPELINE          "module:function" that runs a recipe (default compressor.pipeline:run_recipe)
    MOE_STUDIO_HEARTBEAT_S       a running job stamps its row this often (default 5)
    MOE_STUDIO_STALE_AFTER_S     a running row without heartbeat for this long is "worker lost" (default 30)
    MOE_STUDIO_REAP_EVERY_S      the reaper looks this often (default 10): a killed run is failed within
                                 stale_after + reap_every + heartbeat = 45 s by default
    MOE_STUDIO_PROGRESS_EVERY_S  progress reaches the row at most this often (default 1)
    MOE_STUDIO_REQUEUE_AFTER_S   a queued run that no worker claimed this long after its message was sent, and whose
                                 message the broker no longer holds (a broker restart or flush), is sent again by the
                                 reaper (default 60); a run the broker never took is sent at the reaper's next round
    MOE_STUDIO_CLAIM_RETRIES     a worker whose claim of a run meets a database error tries this many more times
                                 (default 5) ...
    MOE_STUDIO_CLAIM_BACKOFF_S   ... waiting this long, then twice as long, and so on (default 0.5: 0.5 + 1 + ... + 8 s);
                                 then the task is retried by Celery (3 times, same waits) and after that the reaper's
                                 re-send takes over, so a database outage delays a run but never loses it
    MOE_STUDIO_MAX_JOB_S         the longest job allowed (default 3 days); the Redis visibility timeout is set an hour
                                 above it so that an unacknowledged long job is never delivered twice
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping


def _number(env: Mapping[str, str], name: str, default, *, cast=float, zero_ok: bool = False):
    """`env[name]` as `cast` (float seconds, or int); `default` when unset; positive (or >= 0 with `zero_ok`)."""
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = cast(raw)
    except ValueError:
        kind = "a whole number" if cast is int else "a number of seconds"
        raise ValueError(f"{name}={raw!r} is not {kind}") from None
    if value < 0 or (value == 0 and not zero_ok):
        raise ValueError(f"{name}={raw!r} must be {'zero or more' if zero_ok else 'positive'}")
    return value


def _names(raw: str | None, env: Mapping[str, str]) -> tuple[str, ...] | None:
    """"cpu,gpu" -> the queue names; the roles cpu / gpu stand for MOE_STUDIO_QUEUE / MOE_STUDIO_GPU_QUEUE."""
    if raw is None or not raw.strip():
        return None
    roles = {"cpu": env.get("MOE_STUDIO_QUEUE") or WorkerSettings.queue,
             "gpu": env.get("MOE_STUDIO_GPU_QUEUE") or WorkerSettings.gpu_queue}
    return tuple(dict.fromkeys(roles.get(n.strip(), n.strip()) for n in raw.split(",") if n.strip()))


@dataclass(frozen=True)
class WorkerSettings:
    redis_url: str | None = None
    queue: str = "cpu"
    gpu_queue: str = "gpu"
    auto_queue: str = "cpu"                 # "cpu" (= `queue`) or "gpu" (= `gpu_queue`)
    worker_queues: tuple[str, ...] | None = None   # the embedded worker's queues; None = by this machine's GPU
    pipeline: str = "compressor.pipeline:run_recipe"
    heartbeat_s: float = 5.0
    stale_after_s: float = 30.0
    reap_every_s: float = 10.0
    progress_every_s: float = 1.0
    max_job_s: float = 3 * 24 * 3600.0
    requeue_after_s: float = 60.0
    claim_retries: int = 5
    claim_backoff_s: float = 0.5

    def __post_init__(self):
        if self.stale_after_s < 2 * self.heartbeat_s:
            raise ValueError(f"MOE_STUDIO_STALE_AFTER_S ({self.stale_after_s:g}) must be at least twice "
                             f"MOE_STUDIO_HEARTBEAT_S ({self.heartbeat_s:g}), or live runs would be reaped")
        if ":" not in self.pipeline:
            raise ValueError(f"MOE_STUDIO_PIPELINE={self.pipeline!r} must look like 'package.module:function'")
        if self.gpu_queue == self.queue:
            raise ValueError(f"MOE_STUDIO_GPU_QUEUE and MOE_STUDIO_QUEUE are both {self.queue!r}; give the GPU "
                             "queue its own name so CPU workers never take a run that needs a GPU")
        if self.auto_queue not in ("cpu", "gpu"):
            raise ValueError(f"MOE_STUDIO_AUTO_QUEUE={self.auto_queue!r} must be 'cpu' (the default queue) or 'gpu'")
        unknown = set(self.worker_queues or ()) - set(self.queues)
        if unknown or self.worker_queues == ():
            raise ValueError(f"MOE_STUDIO_WORKER_QUEUES={','.join(self.worker_queues)!r} must name some of the "
                             f"studio's queues: {', '.join(self.queues)}")

    @property
    def queues(self) -> tuple[str, str]:
        """Every queue a run can be sent to: (default / CPU queue, GPU queue)."""
        return self.queue, self.gpu_queue

    def queue_for_device(self, device: str) -> str:
        """The queue of a run whose recipe says `execution.device = device`: cuda / cuda:N -> the GPU queue, cpu ->
        the default queue, auto -> the one `auto_queue` names."""
        from compressor.device import needs_gpu      # torch-free
        gpu = needs_gpu(device)
        if gpu is None:
            gpu = self.auto_queue == "gpu"
        return self.gpu_queue if gpu else self.queue

    @property
    def claim_retry_countdown_s(self) -> float:
        """How long Celery waits before it delivers a task whose claim failed every in-process try: the next
        back-off step, claim_backoff * 2^claim_retries."""
        return self.claim_backoff_s * 2 ** self.claim_retries

    @property
    def visibility_timeout_s(self) -> int:
        """Above the hard time limit of the longest job: max_job + 1 h."""
        return int(self.max_job_s + 3600)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "WorkerSettings":
        env = os.environ if env is None else env
        d = cls()
        return cls(
            redis_url=env.get("REDIS_URL") or None,
            queue=env.get("MOE_STUDIO_QUEUE") or d.queue,
            gpu_queue=env.get("MOE_STUDIO_GPU_QUEUE") or d.gpu_queue,
            auto_queue=env.get("MOE_STUDIO_AUTO_QUEUE") or d.auto_queue,
            worker_queues=_names(env.get("MOE_STUDIO_WORKER_QUEUES"), env),
            pipeline=env.get("MOE_STUDIO_PIPELINE") or d.pipeline,
            heartbeat_s=_number(env, "MOE_STUDIO_HEARTBEAT_S", d.heartbeat_s),
            stale_after_s=_number(env, "MOE_STUDIO_STALE_AFTER_S", d.stale_after_s),
            reap_every_s=_number(env, "MOE_STUDIO_REAP_EVERY_S", d.reap_every_s),
            progress_every_s=_number(env, "MOE_STUDIO_PROGRESS_EVERY_S", d.progress_every_s),
            max_job_s=_number(env, "MOE_STUDIO_MAX_JOB_S", d.max_job_s),
            requeue_after_s=_number(env, "MOE_STUDIO_REQUEUE_AFTER_S", d.requeue_after_s),
            claim_retries=_number(env, "MOE_STUDIO_CLAIM_RETRIES", d.claim_retries, cast=int, zero_ok=True),
            claim_backoff_s=_number(env, "MOE_STUDIO_CLAIM_BACKOFF_S", d.claim_backoff_s),
        )
