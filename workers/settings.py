"""Worker settings, read from the environment (the app, the embedded worker and `celery -A workers worker` agree).

    REDIS_URL                    broker and result backend; unset = the app starts a private Redis (workers.embedded)
    MOE_STUDIO_QUEUE             Celery queue name (default "studio")
    MOE_STUDIO_PIPELINE          "module:function" that runs a recipe (default compressor.pipeline:run_recipe)
    MOE_STUDIO_HEARTBEAT_S       a running job stamps its row this often (default 5)
    MOE_STUDIO_STALE_AFTER_S     a running row without heartbeat for this long is "worker lost" (default 30)
    MOE_STUDIO_REAP_EVERY_S      the reaper looks this often (default 10): a killed run is failed within
                                 stale_after + reap_every + heartbeat = 45 s by default
    MOE_STUDIO_PROGRESS_EVERY_S  progress reaches the row at most this often (default 1)
    MOE_STUDIO_MAX_JOB_S         the longest job allowed (default 3 days); the Redis visibility timeout is set an hour
                                 above it so that an unacknowledged long job is never delivered twice
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise ValueError(f"{name}={raw!r} must be positive")
    return value


@dataclass(frozen=True)
class WorkerSettings:
    redis_url: str | None = None
    queue: str = "studio"
    pipeline: str = "compressor.pipeline:run_recipe"
    heartbeat_s: float = 5.0
    stale_after_s: float = 30.0
    reap_every_s: float = 10.0
    progress_every_s: float = 1.0
    max_job_s: float = 3 * 24 * 3600.0

    def __post_init__(self):
        if self.stale_after_s < 2 * self.heartbeat_s:
            raise ValueError(f"MOE_STUDIO_STALE_AFTER_S ({self.stale_after_s:g}) must be at least twice "
                             f"MOE_STUDIO_HEARTBEAT_S ({self.heartbeat_s:g}), or live runs would be reaped")
        if ":" not in self.pipeline:
            raise ValueError(f"MOE_STUDIO_PIPELINE={self.pipeline!r} must look like 'package.module:function'")

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
            pipeline=env.get("MOE_STUDIO_PIPELINE") or d.pipeline,
            heartbeat_s=_float(env, "MOE_STUDIO_HEARTBEAT_S", d.heartbeat_s),
            stale_after_s=_float(env, "MOE_STUDIO_STALE_AFTER_S", d.stale_after_s),
            reap_every_s=_float(env, "MOE_STUDIO_REAP_EVERY_S", d.reap_every_s),
            progress_every_s=_float(env, "MOE_STUDIO_PROGRESS_EVERY_S", d.progress_every_s),
            max_job_s=_float(env, "MOE_STUDIO_MAX_JOB_S", d.max_job_s),
        )
